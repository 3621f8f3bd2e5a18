"""The worker memory watch counts anonymous and shared memory, not the pages of a file the
worker maps (a dataset streamed through a memory map), which the kernel drops at will."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

from synapse_server.core._memory import resident_bytes

MIB = 1024 * 1024


def _statm_resident() -> int:
    with open(f"/proc/{os.getpid()}/statm", "rb") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_mapped_file_pages_do_not_count_anonymous_memory_does(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    with open(path, "wb") as fh:
        fh.truncate(96 * MIB)
    before, statm_before = resident_bytes(os.getpid()), _statm_resident()
    assert before is not None
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        # Touch every page, as a reader streaming the file through the map does.
        touched = sum(mapped[i] for i in range(0, len(mapped), mmap.PAGESIZE))
        assert touched == 0
        during, statm_during = resident_bytes(os.getpid()), _statm_resident()
    assert during is not None
    assert statm_during - statm_before > 64 * MIB  # the whole resident set grew by the file
    assert during - before < 16 * MIB  # what the watch counts did not
    hoard = bytearray(64 * MIB)  # written pages of anonymous memory: counted
    after = resident_bytes(os.getpid())
    assert after is not None and after - before > 48 * MIB
    del hoard
