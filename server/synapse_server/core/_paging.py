"""Page sizes and page tokens shared by every listing (jobs, models, deployments).

A token is the listing's kind and the position of the last row returned, base64-encoded: it
is opaque to clients, and one listing's token is refused by another.
"""

from __future__ import annotations

import base64
import binascii

from synapse_server.core._errors import InvalidArgumentError
from synapse_server.core._limits import MAX_INT64, MAX_PAGE_TOKEN_CHARS, is_ascii_digits

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "decode_page_token",
    "encode_page_token",
    "checked_page_size",
]

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def checked_page_size(requested: int) -> int:
    """The page size to use: ``requested``, or the default for 0; out of range is an error."""
    if requested < 0 or requested > MAX_PAGE_SIZE:
        raise InvalidArgumentError(
            f"page_size must be between 0 and {MAX_PAGE_SIZE}", field="page_size"
        )
    return requested or DEFAULT_PAGE_SIZE


def encode_page_token(kind: str, position: int) -> str:
    """The token that continues a ``kind`` listing after ``position``."""
    return base64.urlsafe_b64encode(f"{kind}:{position}".encode()).decode()


def decode_page_token(kind: str, token: str) -> int:
    """The position a ``kind`` token continues after; INVALID_ARGUMENT for anything else."""
    try:
        if len(token) > MAX_PAGE_TOKEN_CHARS:
            raise ValueError("too long")
        prefix, _, value = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        # ASCII digits only (str.isdigit accepts "²", which int() then refuses), and at
        # most an int64.
        if prefix != kind or len(value) > 19 or not is_ascii_digits(value):
            raise ValueError("not a position")
        position = int(value)
        if position > MAX_INT64:
            raise ValueError("not a position")
        return position
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidArgumentError(
            "page_token is not a token this server returned", field="page_token"
        ) from None
