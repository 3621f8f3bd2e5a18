"""Plugin code for remote workers: packed on the server, shipped through Ray, unpacked per node.

Ray refuses local paths in a task's or actor's ``runtime_env`` (only ``ray.init`` uploads
directories), and a cluster's nodes share no filesystem with the server. So the server packs a
plugin directory into a deterministic ``.tar.gz``, names it by its sha256 and puts it in the
Ray object store once per content; a worker unpacks it into a per-node cache keyed by that
digest (safe extraction, atomic rename) and loads the plugin from there. Unchanged plugins are
never re-sent and never re-extracted; a changed plugin gets a new digest.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import shutil
import tarfile
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synapse_server.core._errors import FailedPreconditionError

__all__ = ["PluginPackage", "PluginPackager", "materialize_plugin", "plugin_cache_dir"]

logger = logging.getLogger(__name__)

#: Plugins bigger than this are refused: model weights belong in the model registry.
MAX_PLUGIN_BYTES = 100 << 20
_SKIP_DIRS = frozenset({"__pycache__", ".git", ".venv", ".mypy_cache", ".pytest_cache"})
_SKIP_SUFFIXES = (".pyc", ".pyo")


@dataclass(frozen=True)
class PluginPackage:
    """A packed plugin: its digest and a one-element list holding the archive's ObjectRef.

    The ref travels inside a list so Ray does not resolve it eagerly: a worker fetches the
    bytes only when its node has not unpacked this digest before.
    """

    sha256: str
    size: int
    archive: list[Any]


def _files(directory: Path) -> list[Path]:
    found: list[Path] = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
        for name in sorted(files):
            if not name.endswith(_SKIP_SUFFIXES):
                found.append(Path(root) / name)
    return found


def pack_plugin(directory: Path) -> bytes:
    """A deterministic ``.tar.gz`` of ``directory`` (same content → same bytes)."""
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path in _files(directory):
            info = tarfile.TarInfo(path.relative_to(directory).as_posix())
            data = path.read_bytes()
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class PluginPackager:
    """Packs plugin directories and puts each distinct content into the object store once.

    A cheap fingerprint (relative path, size, mtime of every file) decides whether the
    directory must be packed again; the digest of the packed bytes decides whether Ray needs
    a new object.
    """

    def __init__(self, max_bytes: int = MAX_PLUGIN_BYTES) -> None:
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._by_dir: dict[Path, tuple[tuple[Any, ...], PluginPackage]] = {}
        self._by_sha: dict[str, PluginPackage] = {}

    def package(self, directory: Path) -> PluginPackage:
        """The package of ``directory`` (blocking: call off the event loop)."""
        import ray

        directory = directory.resolve()
        fingerprint = tuple(
            (p.relative_to(directory).as_posix(), st.st_size, st.st_mtime_ns)
            for p in _files(directory)
            for st in (p.stat(),)
        )
        with self._lock:
            cached = self._by_dir.get(directory)
            if cached is not None and cached[0] == fingerprint:
                return cached[1]
            payload = pack_plugin(directory)
            if len(payload) > self._max_bytes:
                raise FailedPreconditionError(
                    f"plugin directory {directory.name!r} packs to {len(payload)} bytes, more "
                    f"than the {self._max_bytes} bytes a remote worker is sent; keep model "
                    "weights in the model registry"
                )
            sha = hashlib.sha256(payload).hexdigest()
            package = self._by_sha.get(sha)
            if package is None:
                package = PluginPackage(sha256=sha, size=len(payload), archive=[ray.put(payload)])
                self._by_sha[sha] = package
                logger.info("shipped plugin %s (%d bytes, sha256 %s)", directory, len(payload), sha)
            self._by_dir[directory] = (fingerprint, package)
            return package


def plugin_cache_dir() -> Path:
    """Where workers unpack shipped plugins (``SYNAPSE_PLUGIN_CACHE`` or the temp dir)."""
    configured = os.environ.get("SYNAPSE_PLUGIN_CACHE")
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / "synapse-plugin-cache"


def materialize_plugin(package: PluginPackage) -> Path:
    """On a worker: the directory holding ``package``'s plugin, unpacked if not yet there."""
    from synapse_sdk.models import extract_archive

    target = plugin_cache_dir() / package.sha256
    if (target / "config.yaml").is_file():
        return target
    import ray

    payload = ray.get(package.archive[0])
    if hashlib.sha256(payload).hexdigest() != package.sha256:
        raise FailedPreconditionError("the shipped plugin archive does not match its digest")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".staging-{package.sha256[:12]}-{uuid.uuid4().hex[:8]}"
    archive = staging.parent / f"{staging.name}.tar.gz"
    try:
        archive.write_bytes(payload)
        extract_archive(archive, staging)
        try:
            # Atomic: concurrent workers on one node race here and exactly one rename wins.
            staging.rename(target)
        except OSError:
            if not (target / "config.yaml").is_file():
                raise
    finally:
        archive.unlink(missing_ok=True)
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target
