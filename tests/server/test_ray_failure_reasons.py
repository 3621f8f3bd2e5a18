"""The reason a job gets when its Ray worker dies, from the exception Ray raised.

Ray's exceptions are built here the way Ray builds them (``ActorDiedError`` from an
``ActorDiedErrorContext``), with the cause sentences Ray 2.60 produced in a real cluster for
each way a worker can end (see ``synapse_server.ray._failures``). The same endings are
produced for real, in both Ray modes, in tests/ray_modes/test_ray_modes.py.
"""

from __future__ import annotations

import pytest

rex = pytest.importorskip("ray.exceptions")
from ray._raylet import ActorID  # noqa: E402
from ray.core.generated.common_pb2 import ActorDiedErrorContext  # noqa: E402
from synapse_server.ray._failures import describe_ray_failure  # noqa: E402

# Ray's advice after an unexpected worker exit: it mentions nodes, the OOM killer and SIGSEGV
# whatever really happened, so a reason must never be read from it.
_ADVICE = (
    ". Some common causes include: (1) the process was killed by the OOM killer due to high "
    "memory usage, (2) ray stop --force was called, or (3) the worker crashed unexpectedly due "
    "to SIGSEGV or another unexpected error. If the process was killed by the kernel OOM "
    "killer (verifiable by checking for OOM in dmesg of the OOMing node), consider enabling "
    "resource isolation via --enable-resource-isolation to prevent node deaths by resource "
    "contention and significant loss of progress by uninformed kernel OOM killing."
)
_WORKER_DIED = "The actor is dead because its worker process has died. Worker exit type: "


def _actor_died(cause: str) -> BaseException:
    return rex.ActorDiedError(
        ActorDiedErrorContext(
            error_message=cause,
            actor_id=ActorID.from_random().binary(),
            pid=4242,
            node_ip_address="10.1.2.3",
            class_name="IsolatedWorkerActor",
            name="synapse-job-abc",
        )
    )


@pytest.mark.parametrize(
    ("cause", "expected"),
    [
        (
            # os._exit(3), a segfault and SIGKILL all read like this: the raylet only saw the
            # worker's connection close.
            _WORKER_DIED + "SYSTEM_ERROR Worker exit detail: Worker unexpectedly exits with a "
            "connection error code 2. End of file" + _ADVICE,
            "the Ray worker process died unexpectedly: it exited, crashed",
        ),
        (
            _WORKER_DIED + "SYSTEM_ERROR Worker exit detail: Worker exits unexpectedly. Worker "
            "exits with an exit code 3.",
            "the Ray worker process exited with code 3",
        ),
        (
            _WORKER_DIED + "SYSTEM_ERROR Worker exit detail: Worker exits unexpectedly. Worker "
            "exits with an exit code 1. The process receives a SIGTERM.",
            "the Ray worker process received SIGTERM and exited",
        ),
        (
            _WORKER_DIED + "NODE_OUT_OF_MEMORY Worker exit detail: Task was killed due to the "
            "node running low on memory.",
            "Ray killed the worker process because its node ran out of memory",
        ),
        (
            "The actor is dead because it was killed by `ray.kill`.",
            "the Ray actor running the worker was killed (ray.kill)",
        ),
        (
            "The actor died because its node has died. Node Id: 0123abcd",
            "the Ray node running the worker died",
        ),
        (
            "The actor is dead because its owner has died. Owner Id: 01 Owner Ip address: x",
            "the server's Ray driver, which owns the worker actor, died",
        ),
    ],
    ids=["unexpected", "exit-code", "sigterm", "oom", "ray-kill", "node-died", "owner-died"],
)
def test_an_actor_death_is_named_by_its_cause(cause: str, expected: str) -> None:
    reason = describe_ray_failure(_actor_died(cause))
    assert reason.startswith(expected), reason
    # Only the cause sentence counts: a process that died is not a node that died.
    if "node" not in expected:
        assert "node died" not in reason and "node running the worker died" not in reason
    # Operators' details (pid, address) stay in the server log, out of the job's reason.
    assert "4242" not in reason and "10.1.2.3" not in reason


def test_an_unknown_actor_cause_is_quoted_briefly() -> None:
    reason = describe_ray_failure(_actor_died("The actor is dead because " + "x" * 5000))
    assert reason.startswith("the Ray worker actor died: The actor is dead because xxx")
    assert len(reason) < 300


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (rex.WorkerCrashedError(), "the Ray worker process died unexpectedly"),
        (rex.NodeDiedError("node gone"), "the Ray node running the worker died"),
        (rex.OutOfMemoryError("oom"), "Ray killed the worker process because its node ran out"),
        (rex.TaskCancelledError(), "the Ray task running the worker was cancelled"),
    ],
    ids=["task-worker-died", "node-died", "oom", "cancelled"],
)
def test_a_task_failure_is_named(exc: BaseException, expected: str) -> None:
    assert describe_ray_failure(exc).startswith(expected)
