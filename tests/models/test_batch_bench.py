"""The batch inference benchmark runs end to end on a tiny workload (no timing is asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_batch_inference.py"


def test_bench_batch_inference_smoke() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--counts", "20,300", "--repeats", "1", "--batch-size", "64"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # Both counts were checked against the plain loop's predictions inside the bench, and the
    # overhead fit was printed from them.
    assert '"inputs": 20,' in done.stdout and '"inputs": 300,' in done.stdout
    assert "platform overhead ~" in done.stdout and "300 inputs: ratio 0.9 needs" in done.stdout


def test_bench_batch_inference_dataset_smoke() -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--source",
            "dataset",
            "--counts",
            "50,700",
            "--repeats",
            "1",
            "--batch-size",
            "64",
            # The other server kind than the inline test's, and the baseline writing as the
            # platform does.
            "--server",
            "thread",
            "--baseline-encoding",
            "platform",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # Both outputs were compared with the plain loop's file inside the bench.
    assert '"source": "dataset", "inputs": 50,' in done.stdout
    assert '"inputs": 700,' in done.stdout and '"downloaded":' in done.stdout
    assert '"baseline_encoding": "platform"' in done.stdout
