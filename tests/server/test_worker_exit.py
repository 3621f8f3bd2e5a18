"""The worker process ends with ``exit_process``: fast, but nothing it owes is lost."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)


def test_exit_process_joins_threads_and_flushes_output(tmp_path: Path) -> None:
    marker = tmp_path / "thread-done"
    script = textwrap.dedent(
        f"""
        import logging, threading, time
        from pathlib import Path
        from synapse_server.worker.__main__ import exit_process

        logging.basicConfig(level=logging.INFO, format="%(message)s")

        def late_writer():
            time.sleep(0.3)
            Path({str(marker)!r}).write_text("done")

        threading.Thread(target=late_writer).start()
        print("stdout line", end="")  # block-buffered into a pipe: only a flush sends it
        logging.getLogger("w").info("log line")
        exit_process(7)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=50
    )
    assert done.returncode == 7
    assert done.stdout == "stdout line"
    assert "log line" in done.stderr
    assert marker.read_text() == "done"  # the non-daemon thread was joined, not killed
