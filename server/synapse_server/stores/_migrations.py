"""Numbered schema migrations, the same shape for every store backend.

A backend lists its migrations in order, numbered from 1 without gaps, and records each one
it applies in its database's ``schema_migrations`` table (version, name, applied time), so a
database says which schema it has. A released migration is never edited: a schema change is
a new migration at the end of the list.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Migration", "StoreSchemaError", "checked_migrations"]

C = TypeVar("C")


class StoreSchemaError(RuntimeError):
    """The database's schema is not one this server can use (e.g. a newer release wrote it).

    Raised when the stores open, before anything is read or written; the message says which
    version the database has and which this server knows.
    """


@dataclass(frozen=True)
class Migration(Generic[C]):
    """One step of a backend's schema: ``apply`` runs it on an open connection (``C``) inside
    the transaction that records it."""

    version: int
    name: str
    apply: Callable[[C], None]


def checked_migrations(migrations: Sequence[Migration[C]]) -> tuple[Migration[C], ...]:
    """``migrations`` as a tuple, after checking they are numbered 1, 2, ... in order."""
    for expected, migration in enumerate(migrations, start=1):
        if migration.version != expected:
            raise ValueError(
                f"migration {migration.name!r} is numbered {migration.version}, expected {expected}"
            )
    return tuple(migrations)
