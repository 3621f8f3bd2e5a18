"""A :class:`ModelSource` over the platform's gRPC ModelService (via ``synapse_client``).

Imported lazily by ``PlatformModelBackend.from_platform`` so that plain SDK use (local runs,
tests with a fake backend) never loads grpc.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from synapse_sdk.errors import ModelNotFoundError
from synapse_sdk.models._cache import ModelIntegrityError
from synapse_sdk.runtime import PlatformInfo

if TYPE_CHECKING:
    from synapse_sdk.models._backend import WritableBytes

__all__ = ["ClientModelSource"]

logger = logging.getLogger(__name__)


class ClientModelSource:
    """Model metadata and archives fetched with a ``synapse_client.Client``."""

    def __init__(self, client: Any) -> None:
        self._client = client

    @classmethod
    def connect(cls, platform: PlatformInfo) -> ClientModelSource:
        """A source with its own client channel to the server ``platform`` names."""
        return cls(platform.client())

    def get_model(self, model_id: int) -> dict[str, Any]:
        """The model's metadata dict; ModelNotFoundError for an unknown id."""
        from synapse_client import NotFoundError

        try:
            info = self._client.get_model(model_id)
        except NotFoundError as exc:
            raise ModelNotFoundError(model_id) from exc
        return dict(info.to_dict())

    def download_archive(self, model_id: int, out: WritableBytes) -> dict[str, Any]:
        """Stream the archive into ``out`` (checked against the model's sha256)."""
        from synapse_client import DataLossError, NotFoundError

        try:
            info = self._client.download_model(model_id, out)
        except NotFoundError as exc:
            raise ModelNotFoundError(model_id) from exc
        except DataLossError as exc:
            raise ModelIntegrityError(f"model {model_id}: {exc}") from exc
        return dict(info.to_dict())

    def close(self) -> None:
        """Close the client channel."""
        self._client.close()
