"""Plugin code for remote workers: packed on the server, shipped through Ray, unpacked per node.

Ray refuses local paths in a task's or actor's ``runtime_env`` (only ``ray.init`` uploads
directories), and a cluster's nodes share no filesystem with the server. So the server packs
the plugin's code snapshot (the one the job was validated against, see
``synapse_server.core._plugin_code``) into a deterministic ``.tar.gz`` and puts it in the Ray
object store once per snapshot digest; a worker unpacks it into a per-node cache named by that
digest (safe extraction, the digest checked, atomic rename) and loads the plugin from there.
An unchanged plugin is never re-sent and never re-extracted; a reloaded, edited plugin has a
new digest. The live plugin directory is never read here: snapshots do not change.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import shutil
import tarfile
import tempfile
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synapse_server.core._errors import FailedPreconditionError
from synapse_server.core._plugin_code import MAX_PLUGIN_BYTES, PluginCode, code_digest, plugin_files

__all__ = ["PluginPackage", "PluginPackager", "materialize_plugin", "plugin_cache_dir"]

logger = logging.getLogger(__name__)

#: Packages kept in the object store; an older one is packed again if a job still needs it.
_MAX_PACKAGES = 16


@dataclass(frozen=True)
class PluginPackage:
    """A packed plugin snapshot: its code digest and a one-element list holding the archive's
    ObjectRef.

    The ref travels inside a list so Ray does not resolve it eagerly: a worker fetches the
    bytes only when its node has not unpacked this digest before.
    """

    sha256: str
    size: int
    archive: list[Any]


def pack_plugin(directory: Path) -> bytes:
    """A deterministic ``.tar.gz`` of ``directory`` (same content → same bytes)."""
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for relative, path in plugin_files(directory):
            info = tarfile.TarInfo(relative)
            data = path.read_bytes()
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class PluginPackager:
    """Packs plugin code snapshots and puts each into the object store once per digest.

    The most recently used ``_MAX_PACKAGES`` stay in the object store; dropping a package's
    ref never affects a worker already launched with it (Ray counts the task's reference).
    """

    def __init__(self, max_bytes: int = MAX_PLUGIN_BYTES) -> None:
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._packages: OrderedDict[str, PluginPackage] = OrderedDict()

    def package(self, code: PluginCode) -> PluginPackage:
        """The package of the snapshot ``code`` (blocking: call off the event loop)."""
        import ray

        with self._lock:
            package = self._packages.get(code.sha256)
            if package is not None:
                self._packages.move_to_end(code.sha256)
                return package
            payload = pack_plugin(code.path)
            if len(payload) > self._max_bytes:
                raise FailedPreconditionError(
                    f"plugin code {code.sha256[:12]} packs to {len(payload)} bytes, more than "
                    f"the {self._max_bytes} bytes a remote worker is sent; keep model weights "
                    "in the model registry"
                )
            package = PluginPackage(
                sha256=code.sha256, size=len(payload), archive=[ray.put(payload)]
            )
            self._packages[code.sha256] = package
            while len(self._packages) > _MAX_PACKAGES:
                self._packages.popitem(last=False)
            logger.info("shipped plugin code %s (%d bytes)", code.sha256, len(payload))
            return package


def plugin_cache_dir() -> Path:
    """Where workers unpack shipped plugins (``SYNAPSE_PLUGIN_CACHE`` or the temp dir)."""
    configured = os.environ.get("SYNAPSE_PLUGIN_CACHE")
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / "synapse-plugin-cache"


def materialize_plugin(package: PluginPackage) -> Path:
    """On a worker: the directory holding ``package``'s plugin, unpacked if not yet there.

    The directory is named by the code digest and its content checked against it, so the
    worker runs exactly the code the job was validated against.
    """
    from synapse_sdk.models import extract_archive

    target = plugin_cache_dir() / package.sha256
    if (target / "config.yaml").is_file():
        return target
    import ray

    payload = ray.get(package.archive[0])
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".staging-{package.sha256[:12]}-{uuid.uuid4().hex[:8]}"
    archive = staging.parent / f"{staging.name}.tar.gz"
    try:
        archive.write_bytes(payload)
        extract_archive(archive, staging)
        if code_digest(staging) != package.sha256:
            raise FailedPreconditionError(
                "the shipped plugin archive does not hold the code of its digest"
            )
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
