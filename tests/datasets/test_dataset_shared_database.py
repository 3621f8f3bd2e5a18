"""Datasets with two servers on one PostgreSQL database and one artifacts directory: a dataset
uploaded through one server is read through the other, and a job's output too."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from synapse_client import Client, NotFoundError

from tests._postgres import PostgresCluster
from tests.conftest import RunningServer

pytestmark = pytest.mark.timeout(180)

TOY_PLUGINS = Path(__file__).resolve().parent / "plugins"


def test_two_servers_share_datasets_and_job_outputs(
    server_factory: Callable[..., RunningServer],
    postgres_cluster: PostgresCluster,
    tmp_path: Path,
) -> None:
    common = {
        "database_url": postgres_cluster.database("datasets"),
        "artifacts_dir": tmp_path / "artifacts",
        "server_secret": "shared-secret-of-the-servers",
        "plugin_dirs": [TOY_PLUGINS],
    }
    a, b = server_factory(**common), server_factory(**common)
    source = tmp_path / "x.parquet"
    pq.write_table(pa.table({"id": np.arange(40), "x": np.arange(40, dtype=float)}), source)
    with Client(a.address, timeout=60) as on_a, Client(b.address, timeout=60) as on_b:
        dataset = on_a.upload_dataset(source, "shared-xs")
        assert on_b.get_dataset(dataset.id) == dataset
        assert [d.id for d in on_b.list_datasets(name="shared-xs")] == [dataset.id]
        on_b.download_dataset(dataset.id, tmp_path / "copy.parquet")
        assert (tmp_path / "copy.parquet").read_bytes() == source.read_bytes()

        job = on_a.run_action("dataset-toy", "copy_then", {"dataset": "shared-xs"})
        assert job.result(timeout=120)["rows"] == 40
        on_b.job(job.id).download_output(tmp_path / "out.parquet")
        assert pq.read_table(tmp_path / "out.parquet").column("doubled").to_pylist() == [
            2.0 * i for i in range(40)
        ]

        on_b.delete_dataset(dataset.id)
        with pytest.raises(NotFoundError):
            on_a.get_dataset(dataset.id)
