"""Removing what a killed job worker left in its scratch directory (``core._scratch``)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from synapse_server.core._scratch import (
    SCRATCH_ENV,
    job_scratch_prefix,
    remove_job_scratch,
    scratch_parent,
)


def _dir(parent: Path, name: str) -> Path:
    path = parent / name
    (path / "nested").mkdir(parents=True)
    (path / "nested" / "dataset.parquet").write_bytes(b"x" * 1000)
    return path


def test_only_the_jobs_own_directories_go(tmp_path: Path) -> None:
    env = {SCRATCH_ENV: str(tmp_path)}
    assert scratch_parent(env) == tmp_path
    mine = [_dir(tmp_path, job_scratch_prefix("abc") + suffix) for suffix in ("x1", "y2")]
    longer = _dir(tmp_path, job_scratch_prefix("abcd") + "z")  # another job whose id starts so
    other = _dir(tmp_path, "unrelated")
    assert remove_job_scratch("abc", env) == 2
    assert not any(path.exists() for path in mine)
    assert longer.exists() and other.exists()
    assert remove_job_scratch("abc", env) == 0  # nothing left: a no-op


def test_files_links_and_pattern_characters_are_left_alone(tmp_path: Path) -> None:
    env = {SCRATCH_ENV: str(tmp_path)}
    target = _dir(tmp_path, "elsewhere")
    (tmp_path / (job_scratch_prefix("j") + "file")).write_text("not a directory")
    (tmp_path / (job_scratch_prefix("j") + "link")).symlink_to(target)
    assert remove_job_scratch("j", env) == 0
    assert (target / "nested" / "dataset.parquet").exists()
    # An id with glob characters matches itself only, not as a pattern.
    victim = _dir(tmp_path, job_scratch_prefix("ab") + "1")
    assert remove_job_scratch("a*", env) == 0 and remove_job_scratch("[a]b", env) == 0
    assert victim.exists()
    assert remove_job_scratch("", env) == 0


def test_the_default_parent_is_the_temp_directory() -> None:
    assert scratch_parent({}) == Path(tempfile.gettempdir())
