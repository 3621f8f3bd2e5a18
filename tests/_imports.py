"""What the source files of a package import, read from their syntax trees (nothing is run,
so imports inside functions are seen too)."""

from __future__ import annotations

import ast
from pathlib import Path


def imported_modules(root: Path) -> dict[str, set[str]]:
    """Every ``.py`` file under ``root`` (relative path) with the absolute names it imports.

    ``from package import name`` counts as ``package.name``: a name may be a module, and a
    private one is private either way. Relative imports stay inside their own package and
    are left out.
    """
    found: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
        found[str(path.relative_to(root.parent))] = names
    return found


def offending(
    imports: dict[str, set[str]], *, packages: tuple[str, ...], private_only: bool
) -> dict[str, list[str]]:
    """The files importing ``packages`` (or only their ``_private`` parts) and what they import."""
    bad: dict[str, list[str]] = {}
    for file, names in imports.items():
        hits = sorted(
            name
            for name in names
            if name.split(".")[0] in packages
            and (not private_only or any(part.startswith("_") for part in name.split(".")[1:]))
        )
        if hits:
            bad[file] = hits
    return bad
