"""Starting worker processes from the server without forking its threads.

The server's process is large and multi-threaded: grpc's event engine runs thread pools of
its own. An event loop's ``subprocess_exec`` (uvloop's, through libuv) starts a child with
``fork()``, which runs the ``pthread_atfork`` handlers of every library: grpc's pause its
threads in the server and start them again in the child, in the instant before that child
calls ``exec``. One of those restarted threads crashing there ended a job as "worker
crashed with SIGSEGV" before its worker had run a line (seen about once in 20 reloads).

:func:`spawn` starts the process with :class:`subprocess.Popen` instead: without a
``preexec_fn`` it uses ``vfork()`` on Linux, which runs no fork handlers and copies no page
tables, and the child does nothing but set up its file descriptors and session before
``exec``. The process is then waited for on the event loop (a pidfd, where Linux has them)
and its pipes, if any, are asyncio streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import threading
from collections.abc import Mapping, Sequence

__all__ = ["SpawnedProcess", "spawn"]


class SpawnedProcess:
    """A child process started by :func:`spawn`: its pid, pipes and exit status."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        stdin: asyncio.StreamWriter | None,
        stdout: asyncio.StreamReader | None,
    ) -> None:
        self._popen = popen
        self.stdin = stdin
        self.stdout = stdout
        self._exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._watch()

    @property
    def pid(self) -> int:
        """The child's process id (and, started in a session of its own, its group id)."""
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        """None while it runs; its exit code once reaped (negative: killed by that signal)."""
        return self._exited.result() if self._exited.done() else None

    async def wait(self) -> int:
        """Wait for the child to exit; its return code as :attr:`returncode` gives it."""
        return await asyncio.shield(self._exited)

    def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            # No pidfds (Linux before 5.3, other systems): a thread waits, as asyncio's own
            # threaded child watcher does.
            threading.Thread(
                target=self._wait_in_thread, args=(loop,), name=f"wait-{self.pid}", daemon=True
            ).start()
            return

        def readable() -> None:
            code = self._popen.poll()
            if code is None:
                return  # not reaped yet (cannot happen once the pidfd is readable)
            loop.remove_reader(pidfd)
            os.close(pidfd)
            self._set(code)

        loop.add_reader(pidfd, readable)

    def _wait_in_thread(self, loop: asyncio.AbstractEventLoop) -> None:
        code = self._popen.wait()
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(self._set, code)

    def _set(self, code: int) -> None:
        if not self._exited.done():
            self._exited.set_result(code)


async def spawn(
    command: Sequence[str],
    *,
    env: Mapping[str, str],
    stdin: int,
    stdout: int | None,
    stderr: int | None,
) -> SpawnedProcess:
    """Start ``command`` in a session of its own; see the module docstring.

    ``stdin``, ``stdout`` and ``stderr`` take what :class:`subprocess.Popen` takes: a file
    descriptor, ``subprocess.DEVNULL``, ``subprocess.STDOUT`` (for ``stderr``) or
    ``subprocess.PIPE``, which becomes the process's :attr:`SpawnedProcess.stdin` writer or
    :attr:`SpawnedProcess.stdout` reader; None inherits the server's.
    """
    # Blocks the loop until the child has called exec, as the loop's own subprocess_exec
    # does while it forks; vfork makes that wait shorter, not longer.
    popen = subprocess.Popen(  # noqa: ASYNC220
        list(command),
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        env=dict(env),
        start_new_session=True,
    )
    loop = asyncio.get_running_loop()
    writer: asyncio.StreamWriter | None = None
    reader: asyncio.StreamReader | None = None
    try:
        if popen.stdout is not None:
            stream = reader = asyncio.StreamReader()
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stream), popen.stdout)
        if popen.stdin is not None:
            # A protocol with flow control, so that drain() waits while the pipe is full.
            transport, protocol = await loop.connect_write_pipe(
                lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()), popen.stdin
            )
            writer = asyncio.StreamWriter(transport, protocol, None, loop)
    except BaseException:
        popen.kill()
        popen.wait()
        raise
    return SpawnedProcess(popen, writer, reader)
