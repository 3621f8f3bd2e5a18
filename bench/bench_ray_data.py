"""Ray Data benchmark: the platform's Ray Data runner vs the same pipeline written directly.

Both run on the same local Ray (started here), over the same Parquet file (``id`` and three
float32 feature columns), with the same predictor (``MLPPredictor`` of the example plugin
``batch_inference``: the MLP 3→256→256→2 built by ``examples.models``, loaded once per
actor, one torch thread per actor), the same batch size, the same actor pool
(``concurrency`` actors of one CPU each), and both write Parquet with the input's ``id``
carried, row-aligned with the input:

* **runner**: ``RayDataRunner.run`` on a ``BatchSpec``, as a dataset job on Ray runs it
  (the plugin's code shipped to the actors, reads batch-aligned and pinned to this node,
  output written here in order, progress per batch);
* **direct**: ``ray.data.read_parquet → map_batches(actor pool) → write_parquet`` with
  ordered execution (the same output contract); **direct-unordered** is the same without
  ordering, for reference.

Each round runs the three in turn (the order rotates between rounds); the report takes each
one's median over the rounds. Ratio = direct time / runner time (goal ≥ 0.9). Times per
stage: for the runner, planning the pipeline, waiting for the pool's output (read + map) and
writing; for the direct pipelines, planning and executing.

    nice -n 5 .venv/bin/python bench/bench_ray_data.py [--rows 100000] [--batch-size 1024]
        [--concurrency 2] [--rounds 3] [--warmup 0]

Prints a table and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
EXAMPLE_PLUGIN = ROOT / "examples" / "plugins" / "batch_inference"
FEATURES = ["x0", "x1", "x2"]

logger = logging.getLogger(__name__)


def _write_input(path: Path, rows: int, row_group: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    features = rng.uniform(-2, 2, size=(rows, 3)).astype(np.float32)
    columns: dict[str, Any] = {"id": np.arange(rows, dtype=np.int64)}
    columns.update({name: features[:, i] for i, name in enumerate(FEATURES)})
    pq.write_table(pa.table(columns), path, row_group_size=row_group)


def _predictor_class() -> type:
    """The example plugin's predictor, loaded as a worker loads the plugin.

    Its synthetic package is registered to be pickled by value, so the direct pipeline can
    ship the very same class to its actors (the runner ships the plugin's code instead).
    """
    import ray.cloudpickle as cloudpickle
    from synapse_sdk.plugins import load_plugin

    plugin = load_plugin(EXAMPLE_PLUGIN)
    cloudpickle.register_pickle_by_value(sys.modules[plugin.module_prefix])
    return plugin.import_module("batch_plugin.dataset").MLPPredictor  # type: ignore[no-any-return]


class _DirectMap:
    """The direct pipeline's actor: the same predictor, plus the carried ``id`` column."""

    def __init__(self, predictor: type, kwargs: dict[str, Any]) -> None:
        self._predictor = predictor(**kwargs)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        out = self._predictor({name: batch[name] for name in FEATURES})
        return {"id": batch["id"], **out}


def _run_runner(
    source_file: Path, out_dir: Path, predictor: type, kwargs: dict[str, Any], args: Any
) -> dict[str, float]:
    from synapse_sdk.datasets import BatchSpec, LocalDatasets
    from synapse_server.ray._data_runner import RayDataRunner

    datasets = LocalDatasets({"input": source_file}, output_dir=out_dir)
    spec = BatchSpec(
        source=datasets.resolve("input"),
        sink=datasets.open_sink("predictions"),
        predictor=predictor,
        predictor_kwargs=kwargs,
        batch_size=args.batch_size,
        batch_format="numpy",
        columns=tuple(FEATURES),
        carry_columns=("id",),
        concurrency=args.concurrency,
        num_cpus=1.0,
    )
    runner = RayDataRunner()
    began = time.perf_counter()
    result = runner.run(spec, lambda done: None, lambda: False)
    total = time.perf_counter() - began
    assert result.rows == args.rows, result
    timings = runner.timings
    return {
        "total": total,
        "plan": timings["plan"],
        "read+map": total - timings["plan"] - timings["write"],
        "write": timings["write"],
    }


def _run_direct(
    source_file: Path,
    out_dir: Path,
    predictor: type,
    kwargs: dict[str, Any],
    args: Any,
    *,
    ordered: bool,
) -> dict[str, float]:
    import ray
    from ray.data import ActorPoolStrategy

    began = time.perf_counter()
    dataset = ray.data.read_parquet(str(source_file)).select_columns(["id", *FEATURES])
    dataset = dataset.map_batches(
        _DirectMap,
        fn_constructor_kwargs={"predictor": predictor, "kwargs": kwargs},
        batch_size=args.batch_size,
        batch_format="numpy",
        compute=ActorPoolStrategy(size=args.concurrency),
        num_cpus=1.0,
    )
    context = dataset.context
    context.execution_options.preserve_order = ordered
    context.enable_progress_bars = False
    planned = time.perf_counter()
    dataset.write_parquet(str(out_dir))
    total = time.perf_counter() - began
    return {"total": total, "plan": planned - began, "execute": total - (planned - began)}


def _rows_written(path: Path) -> int:
    import pyarrow.parquet as pq

    files = [path] if path.is_file() else sorted(path.glob("*.parquet"))
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--concurrency", type=int, default=2, help="actors in the pool")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--warmup", type=int, default=0, help="uncounted rounds first (Ray's cold start)"
    )
    parser.add_argument("--row-group", type=int, default=10_000, help="input row group size")
    parser.add_argument("--cpus", type=int, default=None, help="CPUs of the local Ray")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    import ray

    sys.path.insert(0, str(ROOT))
    from examples.models import MLPConfig, build_model_dir

    with tempfile.TemporaryDirectory(prefix="bench-ray-data-") as tmp:
        base = Path(tmp)
        source_file = base / "input.parquet"
        _write_input(source_file, args.rows, args.row_group)
        model_dir = build_model_dir(base / "mlp", MLPConfig(hidden=256))
        # One CPU beyond the pool's: the direct pipeline's read and write tasks take one CPU
        # each and stall while the pool holds every CPU (the runner's reads take none).
        cpus = args.cpus or args.concurrency + 1
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        predictor = _predictor_class()
        kwargs = {"model_dir": str(model_dir), "feature_columns": FEATURES, "num_threads": 1}
        runs: dict[str, Callable[[Path], dict[str, float]]] = {
            "runner": lambda out: _run_runner(source_file, out, predictor, kwargs, args),
            "direct": lambda out: _run_direct(
                source_file, out, predictor, kwargs, args, ordered=True
            ),
            "direct-unordered": lambda out: _run_direct(
                source_file, out, predictor, kwargs, args, ordered=False
            ),
        }
        names = list(runs)
        samples: dict[str, list[dict[str, float]]] = {name: [] for name in names}
        for round_index in range(-args.warmup, args.rounds):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                out = base / f"out-{name}-{round_index}"
                timing = runs[name](out)
                written = out / "predictions.parquet" if name == "runner" else out
                assert _rows_written(written) == args.rows, (name, _rows_written(written))
                label = f"round {round_index + 1}" if round_index >= 0 else "warm-up"
                print(
                    f"{label} {name:17s} " + " ".join(f"{k}={v:.3f}s" for k, v in timing.items()),
                    flush=True,
                )
                if round_index >= 0:
                    samples[name].append(timing)
        ray.shutdown()

    medians = {
        name: {key: statistics.median(s[key] for s in runs_of) for key in runs_of[0]}
        for name, runs_of in samples.items()
    }
    runner_total = medians["runner"]["total"]
    print()
    print(
        f"rows={args.rows} batch_size={args.batch_size} concurrency={args.concurrency} "
        f"cpus={cpus} rounds={args.rounds} (medians)"
    )
    for name, timing in medians.items():
        stages = " ".join(f"{k}={v:.3f}s" for k, v in timing.items() if k != "total")
        rate = args.rows / timing["total"]
        print(f"  {name:17s} total={timing['total']:.3f}s ({rate:,.0f} rows/s)  {stages}")
    ratio = medians["direct"]["total"] / runner_total
    ratio_unordered = medians["direct-unordered"]["total"] / runner_total
    print(f"  ratio direct/runner = {ratio:.3f} (goal >= 0.9)")
    print(f"  ratio direct-unordered/runner = {ratio_unordered:.3f}")
    RESULTS_DIR.mkdir(exist_ok=True)
    out_file = RESULTS_DIR / f"ray_data-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    out_file.write_text(
        json.dumps(
            {
                "machine": platform.platform(),
                "cpus": os.cpu_count(),
                "args": vars(args),
                "samples": samples,
                "medians": medians,
                "ratio": ratio,
                "ratio_unordered": ratio_unordered,
            },
            indent=2,
        )
    )
    print(f"  written {out_file}")


if __name__ == "__main__":
    main()
