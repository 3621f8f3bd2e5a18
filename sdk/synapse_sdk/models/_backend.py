"""The platform-backed :class:`~synapse_sdk.runtime.ModelBackend`.

``get_model``, ``download_model`` and ``load_model`` of an action reach the server's
``ModelService`` over gRPC (through a :class:`ModelSource`), so they work in a worker on
another machine without a shared file system. Downloads are verified against the model's
sha256; ``load_model`` extracts each archive once per machine into a :class:`ModelCache`.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Protocol

from synapse_sdk.errors import ModelNotFoundError
from synapse_sdk.models._archive import ExtractionLimits, extract_archive
from synapse_sdk.models._cache import ModelCache, fetch_verified
from synapse_sdk.runtime import PlatformInfo

__all__ = ["ModelSource", "PlatformModelBackend", "WritableBytes", "parse_model_id"]

logger = logging.getLogger(__name__)

_REFERENCE_PREFIX = "synapse://models/"


class WritableBytes(Protocol):
    """Anything with ``write(bytes)``: a file or a hashing wrapper."""

    def write(self, data: bytes, /) -> int: ...


class ModelSource(Protocol):
    """Where model metadata and archive bytes come from (the platform's ModelService)."""

    def get_model(self, model_id: int) -> dict[str, Any]:
        """Metadata dict (``name``, ``file``, ``sha256``, ``archive_format`` ...).

        Raises :class:`ModelNotFoundError` for an unknown id.
        """
        ...

    def download_archive(self, model_id: int, out: WritableBytes) -> dict[str, Any]:
        """Write the model's archive bytes to ``out``; return its metadata dict."""
        ...


def parse_model_id(model_id: int | str) -> int:
    """A model id from an int, a decimal string or a ``synapse://models/<id>`` reference."""
    if isinstance(model_id, bool):
        raise ModelNotFoundError(model_id, "not a model id")
    if isinstance(model_id, int):
        value = model_id
    else:
        text = str(model_id).strip()
        if text.startswith(_REFERENCE_PREFIX):
            text = text[len(_REFERENCE_PREFIX) :]
        # ASCII digits only: str.isdigit and int() accept any Unicode digit ("١٢" is 12).
        if not (text.isascii() and text.isdigit()) or len(text) > 19:
            raise ModelNotFoundError(text[:64], "not a model id or synapse://models/<id> reference")
        value = int(text)
    if value <= 0:
        raise ModelNotFoundError(model_id, "model ids are positive integers")
    return value


class PlatformModelBackend:
    """Model helpers of a run, served by the platform; see the module docstring."""

    def __init__(
        self,
        source: ModelSource,
        cache: ModelCache | None = None,
        limits: ExtractionLimits | None = None,
    ) -> None:
        self._source = source
        self._limits = limits or (cache.limits if cache is not None else ExtractionLimits())
        self._cache = cache if cache is not None else ModelCache(limits=self._limits)

    @classmethod
    def from_platform(
        cls,
        platform: PlatformInfo,
        cache_dir: str | Path | None = None,
        limits: ExtractionLimits | None = None,
    ) -> PlatformModelBackend:
        """A backend talking to the server described by ``platform`` (a run's PlatformInfo)."""
        from synapse_sdk.models._client_source import ClientModelSource

        cache = ModelCache(cache_dir, limits)
        return cls(ClientModelSource.connect(platform), cache, limits)

    @property
    def cache(self) -> ModelCache:
        """The per-machine cache ``load_model`` extracts into."""
        return self._cache

    def get_model(self, model_id: int | str) -> dict[str, Any]:
        """The model's metadata dict, with ``name`` and ``file`` (``synapse://models/<id>``)."""
        return self._source.get_model(parse_model_id(model_id))

    def download_model(self, model_id: int | str, output_dir: str | Path | None = None) -> Path:
        """Download, verify and extract the model; returns the directory it was extracted to.

        Without ``output_dir`` a fresh temporary directory is used. With one, the archive's
        top-level entries are moved into it (replacing entries of the same name) only after
        the whole archive extracted cleanly, so a failed download leaves it untouched.
        """
        mid = parse_model_id(model_id)
        info = self._source.get_model(mid)
        if output_dir is None:
            target = Path(tempfile.mkdtemp(prefix=f"synapse-model-{mid}-"))
        else:
            target = Path(output_dir).expanduser()
            target.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".synapse-download-", dir=target))
        try:
            archive = fetch_verified(
                lambda out: self._source.download_archive(mid, out),
                staging / "archive",
                info["sha256"],
                f"model {mid}",
            )
            tree = extract_archive(archive, staging / "tree", info["archive_format"], self._limits)
            for entry in tree.iterdir():
                dest = target / entry.name
                if dest.is_dir() and not dest.is_symlink():
                    shutil.rmtree(dest)
                elif dest.exists() or dest.is_symlink():
                    dest.unlink()
                os.replace(entry, dest)
        except BaseException:
            if output_dir is None:
                shutil.rmtree(target, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        logger.info("downloaded model %d into %s", mid, target)
        return target

    def load_model(self, model_id: int | str) -> dict[str, Any]:
        """The metadata dict plus ``path``: the model's extracted directory in the cache.

        The archive is downloaded only when this machine's cache has no copy of it.
        """
        mid = parse_model_id(model_id)
        info = self._source.get_model(mid)
        path = self._cache.ensure(
            info["sha256"],
            info["archive_format"],
            lambda out: self._source.download_archive(mid, out),
            label=f"model {mid}",
        )
        return {**info, "path": str(path)}
