"""Batch inference benchmark: the example action run through the platform vs a plain torch loop.

For each input count (default 10k and 100k) the same inputs, the same MLP (built by
``examples.models``: safetensors weights), the same batch size and the same torch thread count
are used twice:

* **platform**: a real SynapseServer (worker processes, SQLite, gRPC), by default in a
  process of its own started as ``synapse serve`` (``--server thread``: in a thread of the
  bench's process); the model is registered once through ``ModelService``; the clock runs
  from ``run_action`` to the parsed result in the client, so it includes job start (the
  job's worker process is forked by the plugin's fork server, which the warm-up job
  starts), params transfer, model
  download/cache, per-batch progress reporting and result transfer (GetJobResult for large
  results);
* **baseline**: in this process, the model loaded once by the plugin's own loader
  (``batch_plugin._model_files.load_model_dir``) and the same batching code
  (``batch_plugin._batching.run_batches``) over the same inputs.

Throughput ratio = baseline time / platform time (goal ≥ 0.9).

With ``--source dataset`` the inputs are a Parquet file (``id`` and a 3-wide ``features``
column) instead of inline JSON:

* **platform**: the file is uploaded once (not timed); the clock runs from the submit of
  ``batch_inference_dataset`` over the stored dataset to the output file downloaded
  (``JobHandle.download_output``): job start, the worker's copy of the dataset, model
  download/cache and load, reading, inference, writing and uploading the output, the output's
  download;
* **baseline**: in this process, the same file read with ``pyarrow`` batch by batch, the same
  model (loaded once, outside the clock, as in the inline case) with the same batch size and
  thread count, the predictions written with a ``ParquetWriter``.

The two output files are compared (ids in order, predictions equal). Goal: ratio ≥ 0.9 at
100k rows and ≥ 0.95 at 1M.

    .venv/bin/python bench/bench_batch_inference.py [--counts 10000,100000] [--batch-size 256]
    .venv/bin/python bench/bench_batch_inference.py --source dataset --counts 100000,1000000

Prints a table and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib.util
import json
import logging
import os
import platform
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
EXAMPLE_PLUGINS = ROOT / "examples" / "plugins"
BATCH_PLUGIN = EXAMPLE_PLUGINS / "batch_inference" / "batch_plugin"

logger = logging.getLogger(__name__)


def _load_plugin_module(name: str) -> Any:
    """A module of the batch plugin, by file (its package is not importable from here)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BATCH_PLUGIN / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def _server(kind: str, data_dir: Path) -> Iterator[str]:
    """A server with the example plugins on the embedded store; yields its address.

    ``process``: ``synapse serve`` in a process of its own, as users run it. ``thread``: a
    SynapseServer on an event loop in a thread of this process, which then shares the GIL
    with the bench's client (its event stream, the output's download).
    """
    if kind == "process":
        from bench_infer import start_server, stop_server

        data_dir.mkdir(parents=True, exist_ok=True)
        proc, address = start_server(data_dir, None, EXAMPLE_PLUGINS)
        try:
            yield address
        finally:
            stop_server(proc)
        return

    from synapse_server.app import SynapseServer
    from synapse_server.settings import ServerSettings

    settings = ServerSettings(
        listen_address="127.0.0.1:0", data_dir=data_dir, plugin_dirs=[EXAMPLE_PLUGINS]
    )
    server = SynapseServer(settings)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(60)
    try:
        yield server.address
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(1.0), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def _run_job(client: Any, params: dict[str, Any]) -> tuple[Any, Any]:
    handle = client.run_action("batch-inference", "batch_inference", params)
    return handle, handle.result(timeout=600)


def _stages(handle: Any, started: float, total: float) -> dict[str, float]:
    """Seconds from the submit to each stage, from the job's stored event times.

    ``queued``: the job is stored (PENDING); ``running``: its worker (forked from the fork
    server) fetched the assignment and opened its event stream; ``model_loaded``: the
    action's first progress; ``inferred``: its last inference progress; ``finished``: the
    terminal event is stored; ``result``: the client holds the parsed result.
    """
    from synapse_client import JobState, ProgressEvent, StateChangedEvent, TerminalEvent

    marks: dict[str, float] = {}
    for event in handle.events(follow=False):
        at = round(event.time.timestamp() - started, 3) if event.time is not None else -1.0
        payload = event.payload
        if isinstance(payload, StateChangedEvent):
            marks["running" if payload.state is JobState.RUNNING else "queued"] = at
        elif isinstance(payload, ProgressEvent):
            marks.setdefault("model_loaded", at)
            if payload.category == "inference":
                marks["inferred"] = at
        elif isinstance(payload, TerminalEvent):
            marks["finished"] = at
    marks["result"] = round(total, 3)
    return marks


def _write_rows(path: Path, count: int) -> None:
    """``count`` rows of ``id`` (int64) and ``features`` (3 float32) as Parquet."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(count)
    features = rng.uniform(-1, 1, size=(count, 3)).astype(np.float32)
    table = pa.table(
        {
            "id": np.arange(count, dtype=np.int64),
            "features": pa.FixedSizeListArray.from_arrays(pa.array(features.reshape(-1)), 3),
        }
    )
    pq.write_table(table, path)


def _plain_parquet_loop(
    module: Any, source: Path, out: Path, batch_size: int, encoding: str = "pyarrow"
) -> int:
    """The baseline: read ``source`` batch by batch, infer, write ``out``; the rows written.

    ``encoding``: ``pyarrow`` writes with pyarrow's defaults (a dictionary for every column),
    as a plain loop would; ``platform`` skips the dictionary of floating-point columns as the
    platform's writer does (``synapse_sdk.datasets._pipeline.dictionary_columns``).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from synapse_sdk.datasets._pipeline import dictionary_columns

    rows = 0
    writer: Any = None
    try:
        for batch in pq.ParquetFile(source).iter_batches(batch_size=batch_size):
            flat = batch.column("features").flatten().to_numpy()
            # A copy: Arrow buffers are read-only (torch warns on them); 12 bytes a row.
            x = torch.from_numpy(flat.reshape(batch.num_rows, -1).copy())
            with torch.no_grad():
                predictions = module(x).numpy()
            table = pa.RecordBatch.from_arrays(
                [
                    batch.column("id"),
                    pa.FixedSizeListArray.from_arrays(
                        pa.array(predictions.reshape(-1)), predictions.shape[1]
                    ),
                ],
                names=["id", "prediction"],
            )
            if writer is None:
                dictionary = dictionary_columns(table.schema) if encoding == "platform" else True
                writer = pq.ParquetWriter(out, table.schema, use_dictionary=dictionary)
            writer.write_batch(table)
            rows += batch.num_rows
    finally:
        if writer is not None:
            writer.close()
    return rows


def _run_dataset_job(
    client: Any, params: dict[str, Any], out: Path, started: float
) -> tuple[Any, dict[str, float]]:
    """Submit, follow the job's events live (as a progress bar would), download the output.

    The stages are seconds from the submit (event times): ``queued``, ``running``, the first
    and last ``batch`` progress, ``finished`` (terminal event stored), ``downloaded``. They
    come from the live stream: a finished job's stored history keeps fewer progress events.
    """
    from synapse_client import JobState, ProgressEvent, StateChangedEvent, TerminalEvent

    handle = client.run_action("batch-inference", "batch_inference_dataset", params)
    marks: dict[str, float] = {}
    for event in handle.events():
        at = round(event.time.timestamp() - started, 3) if event.time is not None else -1.0
        payload = event.payload
        if isinstance(payload, StateChangedEvent):
            marks["running" if payload.state is JobState.RUNNING else "queued"] = at
        elif isinstance(payload, ProgressEvent) and payload.category == "batch":
            marks.setdefault("first_batch", at)
            marks["last_batch"] = at
        elif isinstance(payload, TerminalEvent):
            marks["finished"] = at
    result = handle.result(timeout=1200)
    handle.download_output(out)
    marks["downloaded"] = round(time.time() - started, 3)
    marks["rows"] = result["rows"]
    return handle, marks


def _same_outputs(a: Path, b: Path) -> None:
    import numpy as np
    import pyarrow.parquet as pq

    left, right = pq.read_table(a), pq.read_table(b)
    assert left.column("id").equals(right.column("id")), "ids differ"
    lp = left.column("prediction").combine_chunks().flatten().to_numpy()
    rp = right.column("prediction").combine_chunks().flatten().to_numpy()
    assert np.allclose(lp, rp, atol=1e-5), "predictions differ"


def _dataset_rows(
    args: argparse.Namespace, client: Any, model: Any, module: Any, work: Path
) -> list[dict[str, Any]]:
    """The ``--source dataset`` figures, one row per count."""
    rows: list[dict[str, Any]] = []
    for count in [int(c) for c in args.counts.split(",")]:
        source = work / f"rows-{count}.parquet"
        _write_rows(source, count)
        dataset = client.upload_dataset(source, f"bench-{count}")
        params = {
            "model_id": model.id,
            "dataset": dataset.id,
            "batch_size": args.batch_size,
            "feature_columns": ["features"],
            "num_threads": args.threads,
        }
        base_times, plat_times = [], []
        stages: list[dict[str, float]] = []
        for attempt in range(args.repeats):
            base_out = work / f"baseline-{count}-{attempt}.parquet"
            t, written = _timed(
                functools.partial(
                    _plain_parquet_loop,
                    module,
                    source,
                    base_out,
                    args.batch_size,
                    args.baseline_encoding,
                )
            )
            assert written == count
            base_times.append(t)
            plat_out = work / f"platform-{count}-{attempt}.parquet"
            started = time.time()
            t, (_, marks) = _timed(
                functools.partial(_run_dataset_job, client, params, plat_out, started)
            )
            plat_times.append(t)
            assert marks.pop("rows") == count
            stages.append(marks)
            _same_outputs(base_out, plat_out)
        base, plat = min(base_times), min(plat_times)
        rows.append(
            {
                "source": "dataset",
                "inputs": count,
                "batch_size": args.batch_size,
                "threads": args.threads,
                "dataset_bytes": dataset.size_bytes,
                "baseline_s": round(base, 3),
                "baseline_encoding": args.baseline_encoding,
                "platform_s": round(plat, 3),
                "baseline_items_per_s": round(count / base),
                "platform_items_per_s": round(count / plat),
                "throughput_ratio": round(base / plat, 3),
                "platform_stages_s": stages[plat_times.index(plat)],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print/write its figures."""
    parser = argparse.ArgumentParser(description="batch inference: platform vs plain torch")
    parser.add_argument(
        "--source",
        choices=("inline", "dataset"),
        default="inline",
        help="inputs as inline JSON params (batch_inference) or a stored Parquet dataset "
        "(batch_inference_dataset)",
    )
    parser.add_argument("--counts", default="10000,100000")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2, help="best of N for both sides")
    parser.add_argument(
        "--server",
        choices=("process", "thread"),
        default="process",
        help="the server in a process of its own (as users run it) or in a thread of the "
        "bench's process",
    )
    parser.add_argument(
        "--baseline-encoding",
        choices=("pyarrow", "platform"),
        default="pyarrow",
        help="the dataset baseline's Parquet writer: pyarrow's defaults (a plain loop), or "
        "no dictionary for floating-point columns, as the platform writes its outputs",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import torch
    from synapse_client import Client

    sys.path.insert(0, str(ROOT))
    from synapse_sdk.models import pack_path

    from examples.models import MLPConfig, build_model_dir

    batching = _load_plugin_module("_batching")
    model_files = _load_plugin_module("_model_files")
    torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        work = Path(tmp)
        os.environ["SYNAPSE_MODEL_CACHE"] = str(work / "cache")
        model_dir = build_model_dir(work / "mlp", MLPConfig(hidden=args.hidden))
        archive, fmt = pack_path(model_dir, work)
        with _server(args.server, work / "data") as address:
            # Job messages echo their params: 100k inputs are ~5 MB, over gRPC's 4 MB default.
            options = (("grpc.max_receive_message_length", 64 << 20),)
            with Client(address, timeout=600, channel_options=options) as client:
                model = client.register_model(archive, "bench-mlp", archive_format=fmt.value)
                # Warm the worker-side cache and imports once, outside the measurements.
                client.run_action(
                    "batch-inference",
                    "batch_inference",
                    {"model_id": model.id, "inputs": [{"data": [1, 2, 3]}]},
                ).result(timeout=300)
                module = model_files.load_model_dir(model_dir)
                if args.source == "dataset":
                    rows = _dataset_rows(args, client, model, module, work)
                # The inline JSON figures (the dataset ones were measured above instead).
                inline_counts = [int(c) for c in args.counts.split(",")]
                for count in inline_counts if args.source == "inline" else []:
                    rng = random.Random(count)
                    inputs = [
                        {"data": [rng.uniform(-1, 1) for _ in range(3)]} for _ in range(count)
                    ]
                    params = {
                        "model_id": model.id,
                        "inputs": inputs,
                        "batch_size": args.batch_size,
                        "num_threads": args.threads,
                    }
                    base_times, plat_times = [], []
                    stages: list[dict[str, float]] = []
                    for _ in range(args.repeats):
                        t, expected = _timed(
                            functools.partial(batching.run_batches, module, inputs, args.batch_size)
                        )
                        base_times.append(t)
                        started = time.time()
                        t, (handle, result) = _timed(functools.partial(_run_job, client, params))
                        plat_times.append(t)
                        stages.append(_stages(handle, started, t))
                        assert result["processed_count"] == count
                        assert result["results"][-1]["prediction"] == expected[-1]["prediction"]
                    base, plat = min(base_times), min(plat_times)
                    rows.append(
                        {
                            "inputs": count,
                            "batch_size": args.batch_size,
                            "threads": args.threads,
                            "baseline_s": round(base, 3),
                            "platform_s": round(plat, 3),
                            "baseline_items_per_s": round(count / base),
                            "platform_items_per_s": round(count / plat),
                            "throughput_ratio": round(base / plat, 3),
                            # Where the best platform run's time went (server event times).
                            "platform_stages_s": stages[plat_times.index(plat)],
                        }
                    )
                    print(json.dumps(rows[-1]), flush=True)
    RESULTS_DIR.mkdir(exist_ok=True)
    kind = "batch_inference" if args.source == "inline" else "batch_inference_dataset"
    out = RESULTS_DIR / f"{kind}-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    out.write_text(
        json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(), "rows": rows}, indent=2)
    )
    print(f"{'inputs':>8} {'baseline s':>11} {'platform s':>11} {'ratio':>6}")
    for row in rows:
        print(
            f"{row['inputs']:>8} {row['baseline_s']:>11} {row['platform_s']:>11} "
            f"{row['throughput_ratio']:>6}"
        )
    for line in _overhead_lines(rows):
        print(line)
    return 0


def _overhead_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The platform's overhead (platform - baseline) fitted as ``fixed + per_input * n``.

    From the smallest and largest count measured. The ratio reaches 0.9 once the action's
    own compute is at least 9x the overhead, which tells for which models it does.
    """
    if len(rows) < 2:
        return []
    small, large = min(rows, key=lambda r: r["inputs"]), max(rows, key=lambda r: r["inputs"])
    if small["inputs"] == large["inputs"]:
        return []

    def overhead(row: dict[str, Any]) -> float:
        return float(row["platform_s"]) - float(row["baseline_s"])

    per_input = (overhead(large) - overhead(small)) / (large["inputs"] - small["inputs"])
    fixed = overhead(small) - per_input * small["inputs"]
    lines = [
        f"platform overhead ~ {fixed * 1e3:.0f} ms per job + {per_input * 1e6:.2f} us per input"
    ]
    for row in (small, large):
        n = row["inputs"]
        needed = 9 * (fixed / n + per_input)
        have = float(row["baseline_s"]) / n
        lines.append(
            f"  {n} inputs: ratio 0.9 needs >= {needed * 1e6:.1f} us of compute per input "
            f"(this model: {have * 1e6:.1f} us)"
        )
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
