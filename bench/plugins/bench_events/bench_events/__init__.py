"""Actions used by bench/bench_progress.py."""
