"""The progress benchmark runs end to end on a tiny workload (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_progress.py"


def test_bench_progress_smoke(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--events",
            "20",
            "--subscribers",
            "1,3",
            "--many-jobs",
            "2x2x20",
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "events/s, 3 subscriber(s)" in done.stdout
    report = json.loads(out.read_text())
    rows = report["throughput"]
    assert [(row["jobs"], row["subscribers"]) for row in rows] == [(1, 1), (1, 3), (2, 2)]
    for row in rows:
        expected = row["jobs"] * row["subscribers"] * 20
        assert row["synapse"]["delivered"] == expected == row["baseline"]["delivered"]
        assert row["ratio"] > 0
    assert report["latency_s"]["synapse"]["median"] > 0
