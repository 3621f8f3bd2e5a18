"""Exit codes of every ``synapse`` subcommand."""

from __future__ import annotations

__all__ = ["EXIT_CANCELLED", "EXIT_FAILED", "EXIT_OK", "EXIT_USAGE"]

EXIT_OK = 0
#: The action, job or request failed (a one-line reason is printed on stderr).
EXIT_FAILED = 1
#: Bad usage or input: unknown action, invalid params or JSON, not found.
EXIT_USAGE = 2
#: Cancelled by the user (Ctrl-C), as shells report SIGINT.
EXIT_CANCELLED = 130
