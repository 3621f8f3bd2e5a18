"""A job worker's scratch directory, chosen and removed by whoever launches it
(``core._scratch``), and the output file a worker names in it for the server to copy."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

import pytest
from synapse_server.core import InvalidArgumentError
from synapse_server.core._scratch import (
    SCRATCH_ENV,
    _ScratchReader,
    new_job_scratch,
    open_scratch_file,
    remove_scratch,
    scratch_file_chunks,
)


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


def _read(fd: int) -> bytes:
    with os.fdopen(fd, "rb") as fh:
        return fh.read()


def _refused(scratch: Path, name: str) -> str:
    with pytest.raises(InvalidArgumentError) as err:
        open_scratch_file(scratch, name)
    assert err.value.field == "info.local_file"
    return str(err.value)


def test_a_plain_file_in_the_scratch_directory_is_opened(tmp_path: Path) -> None:
    (tmp_path / "output-1.parquet").write_bytes(b"PAR1 rows PAR1")
    assert _read(open_scratch_file(tmp_path, "output-1.parquet")) == b"PAR1 rows PAR1"


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "/etc/passwd", "x\0y"])
def test_only_a_plain_name_is_accepted(tmp_path: Path, name: str) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "b").write_text("in a subdirectory")
    message = _refused(tmp_path, name)
    assert "plain file name" in message
    assert name not in message or name in ("", ".")  # the name is never echoed


def test_what_the_worker_could_point_elsewhere_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("the server's file")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "link").symlink_to(secret)
    os.link(secret, scratch / "hard")  # a hard link to a file the job could not read
    (scratch / "dir").mkdir()
    assert "no such file" in _refused(scratch, "link")
    assert "hard links" in _refused(scratch, "hard")
    assert "not a regular file" in _refused(scratch, "dir")
    assert "no such file" in _refused(scratch, "missing")
    # The scratch directory itself swapped for a symlink to another directory.
    moved = tmp_path / "moved"
    scratch.rename(moved)
    scratch.symlink_to(moved)
    (moved / "plain").write_text("x")
    assert "scratch directory" in _refused(scratch, "plain")
    assert "scratch directory" in _refused(tmp_path / "gone", "plain")
    assert secret.read_text() == "the server's file"


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    started = time.monotonic()
    assert "not a regular file" in _refused(tmp_path, "pipe")
    assert time.monotonic() - started < 5  # opening a FIFO for reading would block


def test_no_descriptor_is_left_open_by_a_refusal(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    os.mkfifo(tmp_path / "pipe")
    before = len(os.listdir("/proc/self/fd"))
    for name in ("dir", "pipe", "missing", ".."):
        _refused(tmp_path, name)
    assert len(os.listdir("/proc/self/fd")) == before


def test_the_chunks_open_the_file_only_when_read_and_close_it(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    (tmp_path / "f").write_bytes(data)

    async def collect() -> list[bytes]:
        before = len(os.listdir("/proc/self/fd"))  # with the event loop's own
        never_read = scratch_file_chunks(tmp_path, "f")
        assert len(os.listdir("/proc/self/fd")) == before  # nothing opened yet
        del never_read
        chunks = [c async for c in scratch_file_chunks(tmp_path, "f", chunk_size=100_000)]
        # Dropped after one chunk: closed when the generator is.
        partial = scratch_file_chunks(tmp_path, "f", chunk_size=100_000)
        await anext(partial)
        await partial.aclose()
        with pytest.raises(InvalidArgumentError):
            await anext(scratch_file_chunks(tmp_path, "missing"))
        assert len(os.listdir("/proc/self/fd")) == before
        return chunks

    chunks = asyncio.run(collect())
    assert b"".join(chunks) == data and len(chunks) == 3


def test_a_file_that_grows_is_read_up_to_its_size_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "growing"
    path.write_bytes(b"a" * 250_000)

    async def collect() -> bytes:
        out = b""
        async for chunk in scratch_file_chunks(tmp_path, "growing", chunk_size=100_000):
            out += chunk
            if len(out) < 1_000_000:  # the worker keeps writing (a bounded test either way)
                with path.open("ab") as fh:
                    fh.write(b"b" * 100_000)
        return out

    assert asyncio.run(collect()) == b"a" * 250_000


def test_a_close_waits_for_the_read_in_flight_off_the_event_loop(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 10)
    reader = _ScratchReader(tmp_path, "f")
    reader.open()
    fd = reader._fd
    assert fd is not None

    async def scenario() -> None:
        reader._lock.acquire()  # a read in flight in a thread
        started = time.monotonic()
        reader.close_soon()
        assert time.monotonic() - started < 1  # the loop did not wait for it
        os.fstat(fd)  # still open: the read may still use it
        reader._lock.release()
        for _ in range(500):
            if reader._fd is None:
                break
            await asyncio.sleep(0.01)

    asyncio.run(scenario())
    assert reader._fd is None and reader.read(10) == b""
    with pytest.raises(OSError):
        os.fstat(fd)
