"""What happened to a job's Ray worker, in one short sentence, from the error Ray raised.

Ray's exceptions carry their cause as text only: an :class:`ActorDiedError` is built from the
GCS's ``ActorDiedErrorContext`` (reason ``WORKER_DIED``, ``NODE_DIED``, ``RAY_KILL``...,
worker exit type and detail), but keeps just the message it formats from it. So the cause is
read back from that message: only from the sentence that states the cause (the line starting
with "The actor"), never by searching the whole text, whose boilerplate mentions nodes, the OOM
killer and SIGSEGV whatever the cause was.

What Ray can and cannot tell (measured with Ray 2.60):

- a worker process that ends through Python (``sys.exit``, an uncaught SIGTERM) reports its
  exit code: "Worker exits with an exit code 3.", "The process receives a SIGTERM.";
- one that ends below Python (``os._exit``, a segmentation fault, SIGKILL) is seen by the
  raylet only as a closed connection ("connection error code 2. End of file"): Ray does not
  know whether it exited, crashed or was killed, and neither does the reason;
- a task-mode worker that dies raises :class:`WorkerCrashedError` with no detail at all.
"""

from __future__ import annotations

import re

__all__ = ["describe_ray_failure"]

# Ray's texts are long; the parts quoted in a reason are cut to this many characters.
_QUOTE_LIMIT = 200

_UNEXPECTED = (
    "died unexpectedly: it exited, crashed (for example a segmentation fault) or was killed "
    "(Ray does not report which, nor the exit code or signal; the worker's log on its node "
    "has its last output)"
)

_EXIT_TYPE = re.compile(r"Worker exit type:\s*([A-Z_]+)")
_EXIT_DETAIL = re.compile(r"Worker exit detail:\s*(.*)", re.DOTALL)
_EXIT_CODE = re.compile(r"exits? with an exit code (-?\d+)")
_SIGNAL = re.compile(r"receives? a (SIG[A-Z0-9]+)")
# Where Ray's generic advice starts inside an exit detail.
_BOILERPLATE = re.compile(r"\.\s+(Some common causes|There are some potential root causes)")


def _quote(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _QUOTE_LIMIT else line[: _QUOTE_LIMIT - 1] + "…"


def _cause_line(message: str) -> str:
    """The sentence of an actor error that says why the actor died ("The actor is dead ...")."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for line in lines[1:]:
        if line.startswith("The actor"):
            return line
    return lines[-1] if len(lines) > 1 else ""


def _worker_died(cause: str) -> str:
    """The reason for "its worker process has died", from the exit type and detail."""
    exit_type_match = _EXIT_TYPE.search(cause)
    exit_type = exit_type_match.group(1) if exit_type_match else ""
    detail_match = _EXIT_DETAIL.search(cause)
    detail = detail_match.group(1) if detail_match else ""
    detail = _BOILERPLATE.split(detail, maxsplit=1)[0]
    if exit_type == "NODE_OUT_OF_MEMORY":
        return "Ray killed the worker process because its node ran out of memory"
    if "exit_actor()" in detail:
        return "the Ray worker process ended itself (ray.actor.exit_actor was called)"
    signal_match = _SIGNAL.search(detail)
    if signal_match:
        return f"the Ray worker process received {signal_match.group(1)} and exited"
    code_match = _EXIT_CODE.search(detail)
    if code_match:
        return f"the Ray worker process exited with code {code_match.group(1)}"
    if exit_type in ("INTENDED_SYSTEM_EXIT", "INTENDED_USER_EXIT"):
        return f"Ray stopped the worker process ({_quote(detail) or exit_type})"
    return f"the Ray worker process {_UNEXPECTED}"


def _actor_died(exc: BaseException) -> str:
    """The reason for an actor (job mode) that died, from its cause sentence."""
    message = str(exc)
    if getattr(exc, "_actor_init_failed", False):
        return f"the Ray worker actor failed to start: {_quote(message.splitlines()[0])}"
    if getattr(exc, "_preempted", False):
        return "the Ray node running the worker was preempted (drained by the autoscaler)"
    cause = _cause_line(message)
    if "killed by `ray.kill`" in cause:
        return "the Ray actor running the worker was killed (ray.kill)"
    if "its node has died" in cause:
        return "the Ray node running the worker died"
    if "its owner has died" in cause:
        return "the server's Ray driver, which owns the worker actor, died"
    if "references to the actor were removed" in cause:
        return "the Ray worker actor was released by its owner before the job ended"
    if "its worker process has died" in cause:
        return _worker_died(cause)
    if "never ran" in message:
        return "the Ray worker actor was cancelled before it started"
    if cause:
        return f"the Ray worker actor died: {_quote(cause)}"
    return "the Ray worker actor died (Ray gave no cause)"


def describe_ray_failure(exc: BaseException) -> str:
    """A short reason for a job whose Ray worker (task or actor) failed with ``exc``."""
    from ray import exceptions as rex

    first_line = _quote((str(exc).strip().splitlines() or [""])[0])
    if isinstance(exc, rex.TaskCancelledError):
        return "the Ray task running the worker was cancelled"
    if isinstance(exc, rex.NodeDiedError):
        return "the Ray node running the worker died"
    if isinstance(exc, rex.OutOfMemoryError):
        return "Ray killed the worker process because its node ran out of memory"
    if isinstance(exc, rex.WorkerCrashedError):
        return f"the Ray worker process {_UNEXPECTED}"
    if isinstance(exc, rex.RuntimeEnvSetupError):
        return f"could not set up the plugin's runtime environment: {first_line}"
    if isinstance(exc, rex.ActorUnavailableError):
        return f"the Ray worker actor became unreachable: {first_line}"
    if isinstance(exc, rex.RayActorError):
        return _actor_died(exc)
    if isinstance(exc, rex.RayTaskError):
        inner: BaseException = getattr(exc, "cause", None) or exc
        message = _quote((str(inner).strip().splitlines() or [""])[-1])
        return f"the Ray worker failed: {type(inner).__name__}: {message}"
    return f"the Ray worker failed: {type(exc).__name__}: {first_line}"
