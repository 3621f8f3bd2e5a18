"""Model archives: detect, pack, inspect and safely extract zip and tar(.gz) files.

A model archive comes from someone else's machine, so extraction treats it as hostile: every
member name is checked before anything is written (no absolute paths, no ``..``), links may only
point inside the target directory, device files and FIFOs are refused, and the member count and
the total uncompressed size are capped so an archive bomb fails fast instead of filling the disk.
Every failure is an :class:`ArchiveError` subclass naming the archive and the member.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO

from synapse_sdk.errors import SynapseError

__all__ = [
    "ArchiveError",
    "ArchiveFormat",
    "ArchiveLimitError",
    "CorruptArchiveError",
    "ExtractionLimits",
    "UnsafeArchiveError",
    "UnsupportedArchiveError",
    "detect_archive_format",
    "extract_archive",
    "inspect_archive",
    "pack_path",
    "sha256_file",
]

logger = logging.getLogger(__name__)

_COPY_CHUNK = 1024 * 1024


class ArchiveFormat(StrEnum):
    """Container formats a model artifact may use."""

    ZIP = "zip"
    TAR = "tar"
    TAR_GZ = "tar_gz"

    @classmethod
    def parse(cls, value: str | ArchiveFormat) -> ArchiveFormat:
        """Accept ``zip``, ``tar``, ``tar_gz``, ``tar.gz`` or ``tgz`` in any case."""
        if isinstance(value, ArchiveFormat):
            return value
        key = value.strip().lower().replace(".", "_").replace("-", "_")
        if key == "tgz":
            key = "tar_gz"
        try:
            return cls(key)
        except ValueError:
            raise UnsupportedArchiveError(
                f"unsupported archive format {value!r}; expected one of zip, tar, tar_gz"
            ) from None

    @property
    def suffix(self) -> str:
        """The file name suffix conventionally used for this format."""
        return {ArchiveFormat.ZIP: ".zip", ArchiveFormat.TAR: ".tar"}.get(self, ".tar.gz")


class ArchiveError(SynapseError, ValueError):
    """A model archive cannot be used. Subclasses say why."""


class UnsupportedArchiveError(ArchiveError):
    """The file is not a zip, tar or gzip-compressed tar archive (or names another format)."""


class CorruptArchiveError(ArchiveError):
    """The archive is truncated, has bad checksums or cannot be parsed."""


class UnsafeArchiveError(ArchiveError):
    """A member would be written outside the target, or is a device/FIFO/unsupported entry."""


class ArchiveLimitError(ArchiveError):
    """The archive exceeds the member-count or uncompressed-size limit (archive-bomb guard)."""


@dataclass(frozen=True)
class ExtractionLimits:
    """Caps applied while inspecting or extracting an archive."""

    max_total_bytes: int = 20 * 1024**3
    max_members: int = 100_000


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_COPY_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def detect_archive_format(path: str | Path) -> ArchiveFormat:
    """Format of ``path`` from its leading bytes (never from its name)."""
    with open(path, "rb") as fh:
        head = fh.read(512)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return ArchiveFormat.ZIP
    if head[:2] == b"\x1f\x8b":
        return ArchiveFormat.TAR_GZ
    if len(head) >= 262 and head[257:262] == b"ustar":
        return ArchiveFormat.TAR
    raise UnsupportedArchiveError(
        f"{Path(path).name}: not a zip, tar or tar.gz archive (unrecognised file header)"
    )


_ARCHIVE_SUFFIXES = {
    ".zip": ArchiveFormat.ZIP,
    ".tar": ArchiveFormat.TAR,
    ".tar.gz": ArchiveFormat.TAR_GZ,
    ".tgz": ArchiveFormat.TAR_GZ,
}


def pack_path(source: str | Path, workdir: str | Path) -> tuple[Path, ArchiveFormat]:
    """Make ``source`` uploadable: an archive file is used as is, a directory is packed.

    A directory becomes ``<workdir>/<name>.tar.gz`` with member names relative to it. A file is
    accepted only with an archive suffix (``.zip``, ``.tar``, ``.tar.gz``, ``.tgz``) whose content
    matches: a bare ``model.pt`` is itself a zip file, so guessing from content alone would
    upload the weights file as if it were the model directory.
    """
    src = Path(source)
    if src.is_dir():
        out = Path(workdir) / f"{src.name or 'model'}.tar.gz"
        with tarfile.open(out, "w:gz", compresslevel=6) as tar:
            for child in sorted(src.rglob("*")):
                rel = child.relative_to(src).as_posix()
                tar.add(child, arcname=rel, recursive=False)
        return out, ArchiveFormat.TAR_GZ
    if not src.is_file():
        raise FileNotFoundError(f"{src}: no such file or directory")
    lowered = src.name.lower()
    for suffix, fmt in _ARCHIVE_SUFFIXES.items():
        if lowered.endswith(suffix):
            detected = detect_archive_format(src)
            if detected is not fmt:
                raise UnsupportedArchiveError(
                    f"{src.name}: named like a {fmt.value} archive "
                    f"but its content is {detected.value}"
                )
            return src, fmt
    raise UnsupportedArchiveError(
        f"{src.name}: pass a model directory (packed for you) or a .zip, .tar or .tar.gz archive"
    )


def _normalise(archive: str, raw: str) -> str:
    """Member name as a safe relative POSIX path, or UnsafeArchiveError."""
    name = raw.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: member {raw!r} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UnsafeArchiveError(f"{archive}: member {raw!r} escapes the target directory ('..')")
    return "/".join(parts)


def _within(root: str, path: str) -> bool:
    return path == root or path.startswith(root + os.sep)


class _Walker:
    """One pass over an archive: validates every member and, with a root, writes it there.

    Without a root (inspection) member data is still read to the end so that bad CRCs, a
    truncated gzip stream and lying size headers are found.
    """

    def __init__(
        self, path: Path, fmt: ArchiveFormat, limits: ExtractionLimits, root: Path | None
    ) -> None:
        self.path = path
        self.fmt = fmt
        self.limits = limits
        self.label = path.name
        self.root = os.path.realpath(root) if root is not None else None
        self.members = 0
        self.total = 0

    # -- accounting -----------------------------------------------------------------------

    def _count_member(self, raw: str) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            raise ArchiveLimitError(
                f"{self.label}: more than {self.limits.max_members} members (at {raw!r})"
            )

    def _count_bytes(self, n: int, raw: str) -> None:
        self.total += n
        if self.total > self.limits.max_total_bytes:
            raise ArchiveLimitError(
                f"{self.label}: uncompressed size exceeds {self.limits.max_total_bytes} bytes "
                f"(at {raw!r})"
            )

    # -- writing ----------------------------------------------------------------------------

    def _target(self, name: str, raw: str) -> str:
        assert self.root is not None
        dest = os.path.join(self.root, name)
        parent = os.path.dirname(dest)
        os.makedirs(parent, exist_ok=True)
        if not _within(self.root, os.path.realpath(parent)):
            raise UnsafeArchiveError(
                f"{self.label}: member {raw!r} would be written outside the target (via a link)"
            )
        return dest

    def _copy(self, src: IO[bytes], name: str, raw: str, mode: int) -> None:
        if self.root is None:
            while chunk := src.read(_COPY_CHUNK):
                self._count_bytes(len(chunk), raw)
            return
        dest = self._target(name, raw)
        if os.path.islink(dest) or os.path.isdir(dest):
            raise UnsafeArchiveError(f"{self.label}: member {raw!r} conflicts with a link or dir")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(dest, flags, 0o600)
        with os.fdopen(fd, "wb") as out:
            while chunk := src.read(_COPY_CHUNK):
                self._count_bytes(len(chunk), raw)
                out.write(chunk)
        # Keep the owner's read/write and the exec bits; never setuid/setgid or world-write.
        os.chmod(dest, (mode & 0o755) | 0o600)

    def _mkdir(self, name: str, raw: str) -> None:
        if self.root is None or not name:
            return
        dest = self._target(name, raw)
        if os.path.islink(dest):
            raise UnsafeArchiveError(f"{self.label}: directory {raw!r} conflicts with a link")
        os.makedirs(dest, exist_ok=True)

    def _symlink(self, name: str, raw: str, target: str) -> None:
        target = target.replace("\\", "/")
        if target.startswith("/") or not target:
            raise UnsafeArchiveError(f"{self.label}: link {raw!r} points to {target!r}")
        lexical = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
        if lexical == ".." or lexical.startswith("../"):
            raise UnsafeArchiveError(
                f"{self.label}: link {raw!r} -> {target!r} points outside the target directory"
            )
        if self.root is None:
            return
        dest = self._target(name, raw)
        resolved = os.path.realpath(os.path.join(os.path.dirname(dest), target))
        if not _within(self.root, resolved):
            raise UnsafeArchiveError(
                f"{self.label}: link {raw!r} -> {target!r} points outside the target directory"
            )
        if os.path.lexists(dest):
            raise UnsafeArchiveError(f"{self.label}: link {raw!r} conflicts with another member")
        os.symlink(target, dest)

    def _hardlink(self, name: str, raw: str, target: str, mode: int) -> None:
        source_name = _normalise(self.label, target)
        if self.root is None:
            return
        source = os.path.realpath(os.path.join(self.root, source_name))
        if not _within(self.root, source):
            raise UnsafeArchiveError(
                f"{self.label}: hard link {raw!r} -> {target!r} points outside the target"
            )
        if not os.path.isfile(source):
            raise CorruptArchiveError(
                f"{self.label}: hard link {raw!r} refers to {target!r}, "
                "which is not an earlier file member"
            )
        # A copy, not os.link: the extracted tree must not share inodes with anything.
        with open(source, "rb") as src:
            self._copy(src, name, raw, mode)

    # -- formats ----------------------------------------------------------------------------

    def run(self) -> None:
        try:
            if self.fmt is ArchiveFormat.ZIP:
                self._run_zip()
            else:
                self._run_tar()
        except ArchiveError:
            raise
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as exc:
            raise CorruptArchiveError(
                f"{self.label}: corrupt {self.fmt.value} archive: {exc}"
            ) from exc
        except OSError as exc:
            if exc.filename is None and exc.errno is None:
                # gzip and zipfile report damaged streams as plain OSErrors without a path.
                raise CorruptArchiveError(
                    f"{self.label}: corrupt {self.fmt.value} archive: {exc}"
                ) from exc
            raise
        if self.root is not None:
            self._check_links_after()

    def _run_zip(self) -> None:
        if not zipfile.is_zipfile(self.path):
            raise CorruptArchiveError(f"{self.label}: corrupt zip archive (no central directory)")
        with zipfile.ZipFile(self.path) as zf:
            for info in zf.infolist():
                raw = info.filename
                self._count_member(raw)
                name = _normalise(self.label, raw)
                mode = (info.external_attr >> 16) & 0xFFFF
                if stat.S_ISLNK(mode):
                    self._symlink(name, raw, zf.read(info).decode("utf-8", "replace"))
                elif info.is_dir():
                    self._mkdir(name, raw)
                elif mode and stat.S_IFMT(mode) and not stat.S_ISREG(mode):
                    raise UnsafeArchiveError(
                        f"{self.label}: member {raw!r} is a device, FIFO or socket entry"
                    )
                else:
                    if info.file_size > self.limits.max_total_bytes - self.total:
                        self._count_bytes(info.file_size, raw)
                    with zf.open(info) as src:
                        self._copy(src, name, raw, mode & 0o777 or 0o644)

    def _run_tar(self) -> None:
        # The format was already checked against the file's magic bytes.
        with tarfile.open(self.path, "r:*") as tf:
            for member in tf:
                raw = member.name
                self._count_member(raw)
                name = _normalise(self.label, raw)
                if member.isreg():
                    # Refuse on the header's size before decompressing anything.
                    if member.size > self.limits.max_total_bytes - self.total:
                        self._count_bytes(member.size, raw)
                    src = tf.extractfile(member)
                    if src is None:  # pragma: no cover - isreg() members always have data
                        raise CorruptArchiveError(f"{self.label}: no data for {raw!r}")
                    with src:
                        self._copy(src, name, raw, member.mode)
                elif member.isdir():
                    self._mkdir(name, raw)
                elif member.issym():
                    self._symlink(name, raw, member.linkname)
                elif member.islnk():
                    self._hardlink(name, raw, member.linkname, member.mode)
                else:
                    raise UnsafeArchiveError(
                        f"{self.label}: member {raw!r} is a device, FIFO or unsupported entry"
                    )

    def _check_links_after(self) -> None:
        """Links were checked one by one; a later member may have changed what they resolve to."""
        assert self.root is not None
        for dirpath, dirnames, filenames in os.walk(self.root):
            for entry in dirnames + filenames:
                path = os.path.join(dirpath, entry)
                if os.path.islink(path) and not _within(self.root, os.path.realpath(path)):
                    rel = os.path.relpath(path, self.root)
                    raise UnsafeArchiveError(
                        f"{self.label}: link {rel!r} resolves outside the target directory"
                    )


def _resolve_format(path: Path, fmt: ArchiveFormat | str | None) -> ArchiveFormat:
    detected = detect_archive_format(path)
    if fmt is None:
        return detected
    declared = ArchiveFormat.parse(fmt)
    if declared is not detected:
        raise UnsupportedArchiveError(
            f"{path.name}: declared as {declared.value} but the content is {detected.value}"
        )
    return declared


def inspect_archive(
    path: str | Path,
    fmt: ArchiveFormat | str | None = None,
    limits: ExtractionLimits | None = None,
) -> tuple[ArchiveFormat, int, int]:
    """Validate an archive without writing anything: ``(format, members, uncompressed bytes)``.

    Applies the same rules as :func:`extract_archive`, reading all data so corruption shows up.
    """
    p = Path(path)
    resolved = _resolve_format(p, fmt)
    walker = _Walker(p, resolved, limits or ExtractionLimits(), None)
    walker.run()
    return resolved, walker.members, walker.total


def extract_archive(
    path: str | Path,
    dest: str | Path,
    fmt: ArchiveFormat | str | None = None,
    limits: ExtractionLimits | None = None,
) -> Path:
    """Extract ``path`` into the directory ``dest`` (created if missing) and return it.

    ``fmt`` is checked against the file's content when given. On an error ``dest`` may hold a
    partial tree: callers extract into a fresh staging directory and move it into place.
    """
    p = Path(path)
    resolved = _resolve_format(p, fmt)
    target = Path(dest)
    target.mkdir(parents=True, exist_ok=True)
    _Walker(p, resolved, limits or ExtractionLimits(), target).run()
    logger.debug("extracted %s (%s) into %s", p.name, resolved.value, target)
    return target
