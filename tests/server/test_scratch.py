"""A job worker's scratch directory, chosen and removed by whoever launches it
(``core._scratch``)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from synapse_server.core._scratch import SCRATCH_ENV, new_job_scratch, remove_scratch


def test_each_launch_gets_its_own_path_under_the_scratch_parent(tmp_path: Path) -> None:
    env = {SCRATCH_ENV: str(tmp_path / "scratch")}
    first, second = new_job_scratch("abc", env), new_job_scratch("abc", env)
    assert first != second  # a job that runs again never shares (or loses) a directory
    assert first.parent == second.parent == tmp_path / "scratch"
    assert first.name.startswith("synapse-job-abc-") and not first.exists()
    # Without the variable: TMPDIR as the worker's tempfile would read it, else the default.
    assert new_job_scratch("j", {"TMPDIR": str(tmp_path)}).parent == tmp_path
    assert new_job_scratch("j", {}).parent == Path(tempfile.gettempdir())


def test_removing_takes_the_directory_and_nothing_else(tmp_path: Path) -> None:
    scratch = new_job_scratch("abc", {SCRATCH_ENV: str(tmp_path)})
    (scratch / "nested").mkdir(parents=True)
    (scratch / "nested" / "dataset.parquet").write_bytes(b"x" * 1000)
    neighbour = new_job_scratch("abc", {SCRATCH_ENV: str(tmp_path)})
    neighbour.mkdir()
    assert remove_scratch(scratch) is True
    assert not scratch.exists() and neighbour.exists()
    assert remove_scratch(scratch) is False  # already gone: a no-op
    assert remove_scratch(None) is False and remove_scratch("") is False


def test_a_link_or_a_file_at_the_path_is_left_alone(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    (target / "keep").mkdir(parents=True)
    link = tmp_path / "synapse-job-x-link"
    link.symlink_to(target)
    file = tmp_path / "synapse-job-x-file"
    file.write_text("not a directory")
    assert remove_scratch(link) is False and remove_scratch(file) is False
    assert (target / "keep").exists() and file.exists()
