"""Builders of good and hostile archives for the model tests."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path


def make_tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]], gz: bool) -> Path:
    """A tar(.gz) with (name, data) files or prepared TarInfo entries."""
    with tarfile.open(path, "w:gz" if gz else "w") as tar:
        for item in members:
            if isinstance(item, tarfile.TarInfo):
                tar.addfile(item)
            else:
                name, data = item
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def link_info(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    """A tar symlink (SYMTYPE) or hard link (LNKTYPE) entry."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def make_zip(path: Path, members: list[tuple[str, bytes]], symlinks: dict[str, str] | None = None):
    """A zip with files and, optionally, unix symlink entries."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path
