"""Model helpers shared by actions: the ``path`` type and a local-directory model backend."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from synapse_sdk.errors import ModelNotFoundError

logger = logging.getLogger(__name__)

__all__ = ["LocalModelBackend", "ModelPath"]


class ModelPath(str):
    """A model's local directory: a ``str`` that also supports ``/`` like ``pathlib.Path``.

    The reference document uses ``model['path']`` both as a string
    (``model['path'] + '/model.pt'``, ``f'{model_path}/model.pt'``) and as a path
    (``model_info['path'] / 'model.pt'``, ``Path(model_info['path'])``). A ``str`` subclass
    with ``/`` returning :class:`pathlib.Path` makes every one of those lines work unchanged.
    """

    __slots__ = ()

    def __truediv__(self, other: str | Path) -> Path:  # type: ignore[override]
        return Path(self) / other

    def __rtruediv__(self, other: str | Path) -> Path:
        return Path(other) / Path(self)

    @property
    def path(self) -> Path:
        """This directory as a :class:`pathlib.Path`."""
        return Path(self)


class LocalModelBackend:
    """Model backend over local directories: each model id maps to a directory of artifacts.

    Build it from an explicit mapping ``{model_id: directory}`` and/or a ``root`` directory in
    which model ``<id>`` lives at ``root/<id>``. Used by local runs (``synapse plugin run
    --models-dir``) and by tests; the platform passes its own backend instead.
    """

    def __init__(
        self,
        models: Mapping[int | str, str | Path] | None = None,
        root: str | Path | None = None,
    ) -> None:
        self._models = {str(key): Path(value) for key, value in (models or {}).items()}
        self._root = Path(root) if root is not None else None

    @property
    def root(self) -> Path | None:
        """The directory in which model ``<id>`` lives at ``root/<id>``, if one was given."""
        return self._root

    def _directory(self, model_id: int | str) -> Path:
        key = str(model_id)
        directory = self._models.get(key)
        if (
            directory is None
            and self._root is not None
            and "/" not in key
            and key not in {"", ".", ".."}
        ):
            directory = self._root / key
        if directory is None or not directory.is_dir():
            where = f" (looked in {directory})" if directory is not None else ""
            raise ModelNotFoundError(model_id, f"no local model directory{where}")
        return directory.resolve()

    def get_model(self, model_id: int | str) -> dict[str, Any]:
        """Metadata: ``id``, ``name``, ``file`` (the directory) and ``files`` (its entries)."""
        directory = self._directory(model_id)
        return {
            "id": model_id,
            "name": directory.name,
            "file": str(directory),
            "files": sorted(p.name for p in directory.iterdir()),
        }

    def download_model(self, model_id: int | str, output_dir: str | Path | None = None) -> Path:
        """Copy the model's files into ``output_dir`` (a new temporary directory if None)."""
        source = self._directory(model_id)
        target = (
            Path(output_dir)
            if output_dir is not None
            else Path(tempfile.mkdtemp(prefix=f"synapse-model-{model_id}-"))
        )
        shutil.copytree(source, target, dirs_exist_ok=True)
        return target

    def load_model(self, model_id: int | str) -> dict[str, Any]:
        """Metadata plus ``path``: the model's directory, used in place (nothing to download)."""
        info = self.get_model(model_id)
        info["path"] = ModelPath(self._directory(model_id))
        return info
