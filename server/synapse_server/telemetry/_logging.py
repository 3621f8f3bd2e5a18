"""Log formatting: today's text lines or one JSON object per line, with the ids in scope.

The ids a line is about (the job, the request, the trace) come from where the line is logged:
``log_context`` binds a job id or request id for the current task (a ContextVar, so every
asyncio task and gRPC call has its own), and the current OpenTelemetry span gives the trace
id. A ``logging`` call's ``extra`` fields of the same names win over both.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any, Literal

__all__ = [
    "JOB_LOG_LOGGER",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "JsonFormatter",
    "TEXT_FORMAT",
    "bind_log_context",
    "configure_logging",
    "forward_job_logs",
    "log_context",
    "log_handler",
]

logger = logging.getLogger(__name__)

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[str, ...] = ("text", "json")
LOG_LEVELS: tuple[str, ...] = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: The text format (what ``synapse serve`` has always printed).
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: The logger that job log events are forwarded to (see :func:`forward_job_logs`).
JOB_LOG_LOGGER = "synapse_server.job_log"
# A forwarded job log line carries at most this much of the job's text.
_MAX_FORWARDED_CHARS = 2048

_context: ContextVar[Mapping[str, str] | None] = ContextVar("synapse_log_context", default=None)

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_RECORD_FIELDS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)
_CONTEXT_FIELDS = ("job_id", "request_id")


def bind_log_context(**ids: str) -> None:
    """Bind ids (``job_id``, ``request_id``) to every line logged from the current context on.

    For a task or gRPC call that is about one job or request from its start: each has a
    context of its own, so nothing needs undoing.
    """
    current = _context.get()
    _context.set({**current, **ids} if current else dict(ids))


@contextlib.contextmanager
def log_context(**ids: str) -> Iterator[None]:
    """Bind ids to the lines logged inside the block (see :func:`bind_log_context`)."""
    current = _context.get()
    token = _context.set({**current, **ids} if current else dict(ids))
    try:
        yield
    finally:
        _context.reset(token)


def _trace_ids() -> tuple[str, str] | None:
    try:
        from opentelemetry import trace
    except ImportError:  # pragma: no cover - the API is a dependency
        return None
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return f"{span_context.trace_id:032x}", f"{span_context.span_id:016x}"


class _ContextFilter(logging.Filter):
    """Puts the ids in scope on each record as it is emitted (before any hand-off)."""

    def filter(self, record: logging.LogRecord) -> bool:
        ids = _context.get()
        if ids:
            for key, value in ids.items():
                if not hasattr(record, key):
                    setattr(record, key, value)
        if not hasattr(record, "trace_id"):
            found = _trace_ids()
            if found is not None:
                record.trace_id, record.span_id = found
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message``, the ids in
    scope (``job_id``, ``request_id``, ``trace_id``, ``span_id``) and ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_FIELDS and not key.startswith("_") and value is not None:
                entry[key] = value if isinstance(value, str | int | float | bool) else str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(
    level: str = "INFO",
    log_format: str = "text",
    stream: IO[str] | None = None,
    *,
    text_format: str = TEXT_FORMAT,
) -> logging.Handler:
    """Log to ``stream`` (stderr) at ``level`` in ``log_format``; replaces earlier handlers.

    ``text_format`` is the ``logging`` format of the text lines.

    Raises ValueError for an unknown level or format (the message names the choices).
    """
    name = level.strip().upper()
    if name not in LOG_LEVELS:
        raise ValueError(f"log level {level[:20]!r} is not one of {', '.join(LOG_LEVELS)}")
    handler = log_handler(log_format, stream, text_format=text_format)
    logging.basicConfig(level=name, handlers=[handler], force=True)
    return handler


def log_handler(
    log_format: str = "text", stream: IO[str] | None = None, *, text_format: str = TEXT_FORMAT
) -> logging.Handler:
    """A handler writing to ``stream`` (stderr) in ``log_format``, with the ids in scope.

    Raises ValueError for an unknown format.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format[:20]!r} is not one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(_ContextFilter())
    formatter = JsonFormatter() if log_format == "json" else logging.Formatter(text_format)
    handler.setFormatter(formatter)
    return handler


_JOB_LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def forward_job_logs(
    job_id: str, plugin: str, action: str, entries: list[tuple[str, str, Any]]
) -> None:
    """Log a job's log events (``(level, event, data)``) on the server, with the job's id.

    One line per event on the :data:`JOB_LOG_LOGGER` logger at the event's level; the event
    name and data are cut to a bounded length (they are the plugin's text).
    """
    forward = logging.getLogger(JOB_LOG_LOGGER)
    for level_name, event, data in entries:
        level = _JOB_LOG_LEVELS.get(level_name, logging.INFO)
        if not forward.isEnabledFor(level):
            continue
        text = event if data in (None, {}, "") else f"{event} {_compact(data)}"
        if len(text) > _MAX_FORWARDED_CHARS:
            text = text[: _MAX_FORWARDED_CHARS - 3] + "..."
        forward.log(
            level,
            "job %s: %s",
            job_id,
            text,
            extra={"job_id": job_id, "plugin": plugin, "action": action},
        )


def _compact(data: Any) -> str:
    try:
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str)
    except (TypeError, ValueError):
        return str(data)
