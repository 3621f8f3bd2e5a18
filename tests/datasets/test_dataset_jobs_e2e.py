"""Dataset jobs through a real server in local mode: the example ``batch_inference_dataset``
action over an uploaded Parquet file, its output downloaded and checked row by row; outputs
kept only for jobs that succeed; another tenant's dataset; a dataset larger than the
worker's memory limit."""

from __future__ import annotations

import os
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from synapse_client import (
    Client,
    JobCancelledError,
    JobFailedError,
    OutputNotFoundError,
    ProgressEvent,
)
from synapse_sdk.models import pack_path

from tests.conftest import RunningServer, make_settings

torch = pytest.importorskip("torch")
from examples.models import MLPConfig, build_model_dir, reference_outputs  # noqa: E402

pytestmark = pytest.mark.timeout(300)

EXAMPLE_PLUGINS = Path(__file__).resolve().parents[2] / "examples" / "plugins"
TOY_PLUGINS = Path(__file__).resolve().parent / "plugins"
TOKENS = {"token-alice": "alice", "token-bob": "bob"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    data = tmp_path_factory.mktemp("dataset-jobs")
    running = RunningServer(
        make_settings(data, plugin_dirs=[EXAMPLE_PLUGINS, TOY_PLUGINS], tokens=TOKENS)
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model_dir(tmp_path_factory.mktemp("mlp") / "mlp", MLPConfig(hidden=32))


def _register(client: Client, model_dir: Path, tmp: Path) -> int:
    archive, fmt = pack_path(model_dir, tmp)
    return client.register_model(archive, "mlp", archive_format=fmt.value).id


def _features_table(rows: int, seed: int) -> tuple[pa.Table, np.ndarray]:
    rng = np.random.default_rng(seed)
    features = rng.uniform(-2, 2, size=(rows, 3)).astype(np.float32)
    # Ids in no particular order: the output must carry them in the input's order.
    ids = rng.permutation(rows).astype(np.int64) * 7 + 3
    table = pa.table(
        {
            "x0": features[:, 0],
            "id": ids,
            "x1": features[:, 1],
            "x2": features[:, 2],
            "features": pa.FixedSizeListArray.from_arrays(pa.array(features.reshape(-1)), 3),
        }
    )
    return table, features


def test_batch_inference_over_an_uploaded_parquet_file(
    server: RunningServer, model_dir: Path, tmp_path: Path
) -> None:
    table, features = _features_table(5003, seed=1)
    source = tmp_path / "rows.parquet"
    # Several row groups, none a multiple of the batch size.
    pq.write_table(table, source, row_group_size=1200)
    expected = np.array(reference_outputs(model_dir, features.tolist()), dtype=np.float32)
    with Client(server.address, token="token-alice", timeout=60) as client:
        model_id = _register(client, model_dir, tmp_path)
        dataset = client.upload_dataset(source, name="rows")
        assert dataset.num_rows == 5003 and [c.name for c in dataset.columns][:2] == ["x0", "id"]
        for ref, feature_columns in ((dataset.id, ["x0", "x1", "x2"]), ("rows", ["features"])):
            handle = client.run_action(
                "batch-inference",
                "batch_inference_dataset",
                {
                    "model_id": model_id,
                    "dataset": ref,
                    "batch_size": 700,
                    "feature_columns": feature_columns,
                },
            )
            events = list(handle.events())
            result = handle.result(timeout=120)
            assert result == {"output": "predictions", "rows": 5003, "batches": 8}
            batches = [
                e.payload
                for e in events
                if isinstance(e.payload, ProgressEvent) and e.payload.category == "batch"
            ]
            # Per batch (the worker may coalesce a fast run of them), ending at every row.
            assert batches and batches[-1].current == 5003 and batches[-1].total == 5003
            assert [b.current for b in batches] == sorted({b.current for b in batches})
            outputs = handle.outputs()
            assert [(o.name, o.job_id, o.num_rows) for o in outputs] == [
                ("predictions", handle.id, 5003)
            ]
            out = tmp_path / f"out-{handle.id}.parquet"
            info = handle.download_output(out)
            assert info.id == outputs[0].id and out.stat().st_size == info.size_bytes
            written = pq.read_table(out)
            assert written.column_names == ["id", "prediction"]
            assert written.column("id").to_numpy().tolist() == table.column("id").to_pylist()
            got = np.asarray(written.column("prediction").to_pylist(), dtype=np.float32)
            np.testing.assert_allclose(got, expected, atol=1e-5)
        # The outputs are datasets of the tenant too, by name.
        assert len(list(client.list_datasets(name="predictions"))) == 2
        with pytest.raises(OutputNotFoundError, match="no output 'other'"):
            handle.download_output(tmp_path / "x.parquet", "other")
        assert not (tmp_path / "x.parquet").exists()


def test_another_tenants_dataset_fails_the_job_as_not_found(
    server: RunningServer, model_dir: Path, tmp_path: Path
) -> None:
    table, _ = _features_table(50, seed=2)
    pq.write_table(table, tmp_path / "a.parquet")
    with Client(server.address, token="token-alice", timeout=60) as alice:
        private = alice.upload_dataset(tmp_path / "a.parquet", name="alice-only")
    with Client(server.address, token="token-bob", timeout=60) as bob:
        model_id = _register(bob, model_dir, tmp_path)
        for ref in (private.id, "alice-only"):
            handle = bob.run_action(
                "batch-inference",
                "batch_inference_dataset",
                {"model_id": model_id, "dataset": ref, "feature_columns": ["features"]},
            )
            with pytest.raises(JobFailedError) as info:
                handle.result(timeout=120)
            assert info.value.error_type == "synapse_sdk.datasets.DatasetNotFoundError"
            assert f"dataset {ref!r} not found" in info.value.message
            assert handle.outputs() == []


def _staged_rows(server: RunningServer) -> set[str]:
    store = server.server._dataset_store
    assert store is not None
    return server.call(store.staged_jobs())  # type: ignore[no-any-return]


def test_outputs_are_kept_only_when_the_job_succeeds(server: RunningServer, tmp_path: Path) -> None:
    rows = 300
    pq.write_table(
        pa.table({"id": np.arange(rows), "x": np.arange(rows, dtype=np.float64)}),
        tmp_path / "x.parquet",
    )
    blobs = server.settings.artifacts_root / "sha256"
    with Client(server.address, token="token-alice", timeout=60) as client:
        dataset = client.upload_dataset(tmp_path / "x.parquet", name="xs")
        before = sorted(blobs.rglob("*"))

        failed = client.run_action(
            "dataset-toy", "copy_then", {"dataset": dataset.id, "then": "fail"}
        )
        with pytest.raises(JobFailedError, match="failing after the output was written"):
            failed.result(timeout=120)
        assert failed.outputs() == []

        written = tmp_path / "written"
        waiting = client.run_action(
            "dataset-toy",
            "copy_then",
            {"dataset": dataset.id, "then": "wait", "written": str(written)},
        )
        deadline = time.monotonic() + 60
        while not written.exists():
            assert time.monotonic() < deadline, "the output was never written"
            time.sleep(0.05)
        assert _staged_rows(server) == {waiting.id}  # staged, not visible
        assert waiting.outputs() == []
        waiting.cancel()
        with pytest.raises(JobCancelledError):
            waiting.result(timeout=120)
        assert waiting.outputs() == []
        assert _staged_rows(server) == set()
        assert sorted(blobs.rglob("*")) == before
        assert not [d for d in client.list_datasets() if d.job_id in (failed.id, waiting.id)]

        ok = client.run_action("dataset-toy", "copy_then", {"dataset": "xs"})
        assert ok.result(timeout=120)["rows"] == rows
        out = tmp_path / "doubled.parquet"
        ok.download_output(out, "doubled")
        written_table = pq.read_table(out)
        assert written_table.column("id").to_pylist() == list(range(rows))
        assert written_table.column("doubled").to_pylist() == [2.0 * i for i in range(rows)]


def _scratch_dirs(job_id: str) -> list[Path]:
    return sorted(Path(tempfile.gettempdir()).glob(f"synapse-job-{job_id}-*"))


def _kill_dataset_jobs(server: RunningServer, tmp_path: Path, jobs: int) -> None:
    """Run ``jobs`` dataset jobs, kill each worker once its output is written, and check
    that its scratch directory (dataset copy, output) is gone when the job has failed."""
    rows = 300
    source = tmp_path / "x.parquet"
    pq.write_table(
        pa.table({"id": np.arange(rows), "x": np.arange(rows, dtype=np.float64)}), source
    )
    with Client(server.address, token="token-alice", timeout=60) as client:
        dataset = client.upload_dataset(source, name="killed")
        for attempt in range(jobs):
            written = tmp_path / f"pid-{attempt}"
            handle = client.run_action(
                "dataset-toy",
                "copy_then",
                {"dataset": dataset.id, "then": "hang", "written": str(written)},
            )
            deadline = time.monotonic() + 60
            while not (written.exists() and written.read_text()):
                assert time.monotonic() < deadline, "the job never wrote its output"
                time.sleep(0.02)
            scratch = _scratch_dirs(handle.id)
            assert len(scratch) == 1 and any(scratch[0].iterdir()), scratch
            os.kill(int(written.read_text()), signal.SIGKILL)
            with pytest.raises(JobFailedError, match="killed"):
                handle.result(timeout=120)
            # Removed before the job's end was stored: no wait needed.
            assert _scratch_dirs(handle.id) == []


def test_a_killed_workers_scratch_directory_is_removed(
    server: RunningServer, tmp_path: Path
) -> None:
    # A worker killed outright cannot remove its dataset copy and outputs; whoever reaps it
    # does. Forked workers (the default): ten killed jobs leave nothing behind.
    _kill_dataset_jobs(server, tmp_path, jobs=10)


def test_a_killed_spawned_workers_scratch_directory_is_removed(
    server_factory: Callable[..., Any], tmp_path: Path
) -> None:
    # The same for a worker started as a process of its own (no fork servers).
    server = server_factory(plugin_dirs=[TOY_PLUGINS], tokens=TOKENS, warm_workers=0)
    _kill_dataset_jobs(server, tmp_path, jobs=2)


def test_a_dataset_larger_than_the_worker_memory_limit(
    server_factory: Callable[..., Any], tmp_path: Path
) -> None:
    limit_mb = 640
    width, rows = 256, 800_000  # 800 MiB of float32 features, more than the limit
    server = server_factory(plugin_dirs=[EXAMPLE_PLUGINS], worker_memory_limit_mb=limit_mb)
    model_dir = build_model_dir(tmp_path / "wide", MLPConfig(in_features=width, hidden=16))
    source = tmp_path / "wide.parquet"
    rng = np.random.default_rng(5)
    schema = pa.schema([("id", pa.int64()), ("features", pa.list_(pa.float32(), width))])
    probe_rows = [0, 123_457, rows - 1]
    probes: list[np.ndarray] = []
    with pq.ParquetWriter(source, schema, compression="none") as writer:
        step = 32_000
        for start in range(0, rows, step):
            block = rng.standard_normal((step, width), dtype=np.float32)
            probes += [block[i - start] for i in probe_rows if start <= i < start + step]
            writer.write_table(
                pa.table(
                    {
                        "id": np.arange(start, start + step, dtype=np.int64),
                        "features": pa.FixedSizeListArray.from_arrays(
                            pa.array(block.reshape(-1)), width
                        ),
                    },
                    schema=schema,
                )
            )
    assert source.stat().st_size > limit_mb * 1024 * 1024
    with Client(server.address, timeout=300) as client:
        model_id = _register(client, model_dir, tmp_path)
        dataset = client.upload_dataset(source, name="wide")
        source.unlink()  # the test's own copy is no longer needed
        handle = client.run_action(
            "batch-inference",
            "batch_inference_dataset",
            {
                "model_id": model_id,
                "dataset": dataset.id,
                "batch_size": 2048,
                "feature_columns": ["features"],
                "num_threads": 1,
            },
        )
        assert handle.result(timeout=280)["rows"] == rows
        out = tmp_path / "wide-out.parquet"
        handle.download_output(out)
    written = pq.read_table(out)
    assert written.num_rows == rows
    assert written.column("id").to_numpy().tolist() == list(range(rows))
    expected = reference_outputs(model_dir, [p.tolist() for p in probes])
    got = written.column("prediction").take(probe_rows).to_pylist()
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-4)


def test_the_async_client_uploads_lists_downloads_and_fetches_outputs(
    server: RunningServer, tmp_path: Path
) -> None:
    import asyncio

    from synapse_client import AsyncClient, NotFoundError

    rows = 500
    source = tmp_path / "async.parquet"
    pq.write_table(pa.table({"id": np.arange(rows), "x": np.ones(rows)}), source)

    async def scenario() -> None:
        async with AsyncClient(server.address, token="token-alice", timeout=60) as client:
            dataset = await client.upload_dataset(source, "async-rows", format="parquet")
            assert (await client.get_dataset(dataset.id)) == dataset
            listed = [d.id async for d in client.list_datasets(name="async-rows")]
            assert listed == [dataset.id]
            await client.download_dataset(dataset.id, tmp_path / "copy.parquet")
            assert (tmp_path / "copy.parquet").read_bytes() == source.read_bytes()
            handle = await client.run_action("dataset-toy", "copy_then", {"dataset": dataset.id})
            assert (await handle.result(timeout=120))["rows"] == rows
            [output] = await handle.outputs()
            assert output.name == "doubled" and output.job_id == handle.id
            info = await handle.download_output(tmp_path / "out.parquet")
            assert info == output
            assert (
                pq.read_table(tmp_path / "out.parquet").column("doubled").to_pylist()
                == [2.0] * rows
            )
            await client.delete_dataset(dataset.id)
            with pytest.raises(NotFoundError):
                await client.get_dataset(dataset.id)

    asyncio.run(scenario())


def _run_features_job(
    server: RunningServer, model_dir: Path, tmp_path: Path, rows: int, seed: int, name: str
) -> tuple[Any, Any, Any]:
    """Upload ``rows`` feature rows as dataset ``name``, run ``batch_inference_dataset`` over
    them and download its output, checked against the reference model: (handle, dataset,
    output)."""
    table, features = _features_table(rows, seed=seed)
    source = tmp_path / "rows.parquet"
    pq.write_table(table, source)
    expected = np.array(reference_outputs(model_dir, features.tolist()), dtype=np.float32)
    with Client(server.address, token="token-alice", timeout=60) as client:
        model_id = _register(client, model_dir, tmp_path)
        dataset = client.upload_dataset(source, name=name)
        handle = client.run_action(
            "batch-inference",
            "batch_inference_dataset",
            {"model_id": model_id, "dataset": dataset.id, "feature_columns": ["features"]},
        )
        assert handle.result(timeout=120)["rows"] == rows
        out = tmp_path / "out.parquet"
        output = handle.download_output(out)
    got = np.asarray(pq.read_table(out).column("prediction").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    return handle, dataset, output


def test_a_local_worker_hands_its_output_over_by_file(
    server: RunningServer, model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker on the server's machine names its finished output file and the server copies
    it from the job's scratch directory: no chunk of the output crosses gRPC, and the output
    is the reference's."""
    from synapse_server.grpc import _servicers

    opened: list[tuple[Path, str]] = []
    streamed: list[str] = []
    real_open, real_chunks = _servicers.scratch_file_chunks, _servicers.upload_chunks

    def recording_open(scratch: Path, name: str) -> Any:
        opened.append((Path(scratch), name))
        return real_open(scratch, name)

    def recording_chunks(stream: Any, rpc: str) -> Any:
        streamed.append(rpc)
        return real_chunks(stream, rpc)

    monkeypatch.setattr(_servicers, "scratch_file_chunks", recording_open)
    monkeypatch.setattr(_servicers, "upload_chunks", recording_chunks)
    handle, _, output = _run_features_job(server, model_dir, tmp_path, 1500, 9, "handed-over")
    assert streamed == []
    assert len(opened) == 1
    scratch, name = opened[0]
    assert scratch.name.startswith(f"synapse-job-{handle.id}-")
    assert name.startswith("output-") and name.endswith(".parquet")
    # The job ended: its scratch directory (and the worker's file) is gone, the copy stays.
    assert not scratch.exists()
    assert output.num_rows == 1500


def test_a_local_worker_copies_the_dataset_from_the_store(
    server: RunningServer, model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker on the server's machine reads the stored file, not a download through the
    server; the job's output is the same as a downloading worker's (the other tests)."""
    from synapse_server.core.datasets import DatasetRegistryService

    downloaded: list[str] = []
    real = DatasetRegistryService.download

    async def counting(self: Any, tenant: str, dataset_id: str, chunk_size: int = 0) -> Any:
        downloaded.append(dataset_id)
        return await real(self, tenant, dataset_id, chunk_size)

    monkeypatch.setattr(DatasetRegistryService, "download", counting)
    _, dataset, output = _run_features_job(server, model_dir, tmp_path, 2000, 5, "local-rows")
    assert dataset.id not in downloaded
    assert downloaded == [output.id]  # the output's own download, by the client
