"""Dynamic batching: our Infer with batching against without, and against Ray Serve's
``@serve.batch`` through a DeploymentHandle, on the same model in the same run.

One run: the bench starts a local Ray and ``synapse serve`` (a subprocess) connected to it,
registers a model, and deploys the bench plugin (``bench/plugins/bench_batch``) twice through
its deployment action: ``bench-batched`` with ``max_batch_size`` 32 and
``batch_wait_timeout_s`` 0.005, and ``bench-plain`` with no batching settings (its
``@batched`` endpoint then runs once per request). The model stands for an accelerator: each
call holds it alone for a fixed 20 ms plus a matrix product per row (see the plugin), so that
batching matters as it does on a GPU. Three paths call it:

- ``batched``: ``synapse_client.Client.infer`` on ``bench-batched`` (one shared channel);
- ``plain``: the same on ``bench-plain``;
- ``serve_batch``: a ``DeploymentHandle`` from this driver on ``bench-batched``'s
  ``serve_batched`` method, the same model behind Ray Serve's ``@serve.batch`` with the same
  settings (the handle's default options; no client, server or authentication in its path).

Figures: calls per second at 32 and 128 concurrent callers (threads), p50/p99 latency of
sequential calls; ratios batched/plain and batched/serve_batch. With ``--rounds N`` the paths
are measured N times in a rotated order and each figure is the median over the rounds.
Usage::

    .venv/bin/python bench/bench_batching.py [--seconds 5] [--calls 300] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_infer import (  # noqa: E402  (the repository root is put on sys.path above)
    _free_port,
    _median_figures,
    latency,
    start_ray,
    start_server,
    stop_server,
    throughput,
)

BATCHED_APP = "bench-batched"
PLAIN_APP = "bench-plain"
BATCH = {"max_batch_size": 32, "batch_wait_timeout_s": 0.005}
# Room for every caller in the replica, so that neither application refuses or queues in
# Serve's router: what differs is batching alone.
ONGOING = {"max_ongoing_requests": 256, "max_queued_requests": 4096}
ROW = [0.01 * i for i in range(64)]
CONCURRENCY = (32, 128)


def main() -> int:
    """Run the benchmark; prints the figures and writes JSON to bench/results/."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per throughput figure")
    parser.add_argument("--max-calls", type=int, default=20000, help="cap per throughput figure")
    parser.add_argument("--calls", type=int, default=300, help="sequential calls for latency")
    parser.add_argument("--rounds", type=int, default=1, help="rounds; figures are medians")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import ray
    from ray import serve
    from synapse_client import Client

    tmp = Path(tempfile.mkdtemp(prefix="bench-batching-"))
    proc = None
    try:
        gcs = start_ray(_free_port(), _free_port())
        proc, address = start_server(tmp, gcs, ROOT / "bench" / "plugins")
        client = Client(address, timeout=120)
        (tmp / "model").mkdir()
        (tmp / "model" / "weights.txt").write_text("the bench's model is in its plugin\n")
        archive = shutil.make_archive(str(tmp / "model"), "zip", tmp / "model")
        model_id = client.register_model(archive, "bench-batch-model").id
        for app, options in ((BATCHED_APP, {**BATCH, **ONGOING}), (PLAIN_APP, ONGOING)):
            client.run_action(
                "bench-batch",
                "deploy",
                {"app_name": app, "model": model_id, "overrides": options},
                mode="local",
            ).result(timeout=300)
        expected: list[float] = []

        def _check(path: str, got: Any) -> None:
            # A batch's matrix product may round differently in the last bits than one row's.
            same = len(got) == len(expected) and all(
                abs(a - b) <= 1e-9 for a, b in zip(got, expected, strict=True)
            )
            if not same:
                raise RuntimeError(f"{path} answered {str(got)[:200]}")

        def ours(app: str) -> Any:
            def call() -> None:
                answer = client.infer(app, model=model_id, json={"row": ROW}, timeout=60)
                _check(app, answer.json)

            return call

        handle = serve.get_app_handle(BATCHED_APP).options(method_name="serve_batched")

        def serve_batch_call() -> None:
            _check("serve_batched", handle.remote(ROW).result(timeout_s=60))

        expected.extend(client.infer(PLAIN_APP, model=model_id, json={"row": ROW}).json)
        paths = {
            "batched": ours(BATCHED_APP),
            "plain": ours(PLAIN_APP),
            "serve_batch": serve_batch_call,
        }
        for call in paths.values():  # warm: models loaded, routers know their replicas
            for _ in range(20):
                call()
        names = list(paths)
        per_round: list[dict[str, dict[str, Any]]] = []
        for index in range(args.rounds):
            figures: dict[str, dict[str, Any]] = {name: {} for name in names}
            order = names[index % len(names) :] + names[: index % len(names)]
            for name in order:
                figures[name]["latency"] = latency(paths[name], args.calls)
                for concurrency in CONCURRENCY:
                    figures[name][f"c{concurrency}"] = throughput(
                        paths[name], concurrency, args.seconds, args.max_calls
                    )
            per_round.append(figures)
        results = {name: _median_figures([r[name] for r in per_round]) for name in names}
        ratios: dict[str, float] = {}
        for other in ("plain", "serve_batch"):
            for concurrency in CONCURRENCY:
                key = f"c{concurrency}"
                ratios[f"calls/s at {concurrency}, batched / {other}"] = (
                    results["batched"][key]["calls_per_s"] / results[other][key]["calls_per_s"]
                )
            ratios[f"p50, batched / {other}"] = (
                results["batched"]["latency"]["p50_ms"] / results[other]["latency"]["p50_ms"]
            )
        print(f"{'path':<12} {'p50 ms':>8} {'p99 ms':>8} {'c32 calls/s':>12} {'c128 calls/s':>13}")
        for name, fig in results.items():
            print(
                f"{name:<12} {fig['latency']['p50_ms']:>8.2f} {fig['latency']['p99_ms']:>8.2f} "
                f"{fig['c32']['calls_per_s']:>12.0f} {fig['c128']['calls_per_s']:>13.0f}"
            )
        for label, value in ratios.items():
            print(f"{label}: {value:.2f}")
        report = {
            "bench": "batching",
            "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "settings": {**BATCH, **ONGOING, "rounds": args.rounds, "seconds": args.seconds},
            "results": results,
            "ratios": ratios,
        }
        out_dir = ROOT / "bench" / "results"
        out_dir.mkdir(exist_ok=True)
        out = out_dir / f"batching-{int(time.time())}.json"
        out.write_text(json.dumps(report, indent=2))
        print(f"figures written to {out}")
        client.close()
    finally:
        if proc is not None:
            stop_server(proc)
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
