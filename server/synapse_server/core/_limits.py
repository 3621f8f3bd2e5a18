"""Bounds on what a caller may send, and the one parser of numeric ids.

Every id, name and short text a request carries is checked against these bounds at the
service boundary, before any work is done with it: an over-long value is refused with
INVALID_ARGUMENT naming the field and its bound, never looked up, stored, logged or copied
into an error message.

Numeric ids are ASCII decimal digits only. ``str.isdigit`` and ``int()`` accept every Unicode
digit (``"²".isdigit()`` is true and ``int("١٢") == 12``), so neither is used on its own.
"""

from __future__ import annotations

from synapse_server.core._errors import InvalidArgumentError, quoted

__all__ = [
    "MAX_ID_CHARS",
    "MAX_INT64",
    "MAX_NAME_CHARS",
    "MAX_PAGE_TOKEN_CHARS",
    "MAX_PATH_CHARS",
    "MAX_TEXT_CHARS",
    "check_length",
    "is_ascii_digits",
    "parse_id",
]

#: Job ids, request ids, worker ids, model ids in text form, correlation ids.
MAX_ID_CHARS = 128
#: Plugin codes, action names, model and deployment names, tensor names, frameworks.
MAX_NAME_CHARS = 256
#: Page tokens (the server's own are about 30 characters).
MAX_PAGE_TOKEN_CHARS = 512
#: Infer's route inside an application, a deployment's route prefix.
MAX_PATH_CHARS = 2048
#: Free text a caller stores: a model's description, a cancellation reason.
MAX_TEXT_CHARS = 65536
MAX_INT64 = (1 << 63) - 1


def check_length(value: str, field: str, limit: int) -> None:
    """InvalidArgumentError naming ``field`` when ``value`` is longer than ``limit`` characters."""
    if len(value) > limit:
        raise InvalidArgumentError(
            f"{field} is {len(value)} characters long; at most {limit} are allowed", field=field
        )


def is_ascii_digits(text: str) -> bool:
    """True when ``text`` is one or more of the ASCII digits 0-9 and nothing else."""
    return text.isascii() and text.isdigit()


def parse_id(text: str, field: str) -> int:
    """A positive int64 id written in ASCII decimal digits; InvalidArgumentError otherwise."""
    if len(text) > 19 or not is_ascii_digits(text) or not 0 < int(text) <= MAX_INT64:
        raise InvalidArgumentError(
            f"{field} must be a positive integer in ASCII digits, got {quoted(text)}",
            field=field,
        )
    return int(text)
