"""A fork server that died (SIGKILL) before a launch: the launch fails with ForkServerError
and the server already reads as gone, so the executor starts the job on a new fork server
instead of failing it (the write can lose the race with the reader's end of file)."""

from __future__ import annotations

import asyncio
import signal
import sys

import pytest
from synapse_server.core._standby import ForkServer, ForkServerError

pytestmark = pytest.mark.asyncio


@pytest.mark.timeout(60)
@pytest.mark.parametrize("attempt", range(5))
async def test_a_launch_on_a_killed_fork_server_fails_and_reads_it_gone(attempt: int) -> None:
    # A stand-in that never answers: only its pipes and its death matter here.
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import time; time.sleep(60)",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    wait = process.wait

    async def slow_wait() -> int:
        # The reader learns of the exit late: the launch's write fails first.
        await asyncio.sleep(0.5)
        return await wait()

    process.wait = slow_wait  # type: ignore[method-assign]
    server = ForkServer("plugin", process)  # type: ignore[arg-type]
    server._ready.set()  # as if it had reported ready
    process.send_signal(signal.SIGKILL)
    await asyncio.sleep(0.05 * attempt)  # before and after the reader may have seen it
    with pytest.raises(ForkServerError):
        await server.start("job-1", "credential", "", {})
    assert not server.alive
    await wait()
