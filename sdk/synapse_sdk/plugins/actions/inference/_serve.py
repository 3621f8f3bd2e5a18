"""``BaseServeDeployment``: the plugin author's side of a Ray Serve deployment.

A serve plugin subclasses :class:`BaseServeDeployment`, implements ``_get_model`` and its
endpoint methods (FastAPI-decorated as in the reference document), and is deployed by
``BaseDeploymentAction.deploy()``. Nothing here imports Ray at module import: ``deploy()``
applies ``@serve.multiplexed`` / ``@serve.ingress`` when it builds the deployment.

How the platform's ``Infer`` reaches an endpoint (the request's method and path select the
route, a JSON object payload becomes keyword arguments, binary tensors arrive as numpy
arrays) is described in ``synapse_sdk.serving._replica``, which does that work for each
replica; the messages themselves are the versioned contract of :mod:`synapse_sdk.serving`.

An endpoint that yields (a generator function, async or blocking) streams: the platform's
``InferStream`` sends each item as it is produced, and the caller's deadline or cancellation
closes the generator (its ``finally`` blocks run). ``Infer`` refuses such an endpoint with
FAILED_PRECONDITION; ``InferStream`` on an endpoint that returns answers one item.

An endpoint marked with :func:`~synapse_sdk.serving._batching.batched` (exported as
``synapse_sdk.plugins.actions.inference.batched``) takes batches: concurrent requests for the
same model are grouped into one call, with the sizes of the ``serve:`` options
``max_batch_size``, ``batch_wait_timeout_s`` and ``max_concurrent_batches`` (see
``synapse_sdk.serving._batching``). Ray Serve's own ``@serve.batch`` works on an endpoint
too, written with the same list-of-requests annotations.

The model of a request is named by a signed multiplexed model id minted by the server
(see :mod:`synapse_sdk.serving.model_ids`); ``get_model()`` verifies it, and
``@serve.multiplexed`` loads each model once per replica (its loader holds one lock and
re-checks the cache, so concurrent first requests for a model load it once) and evicts the
least recently used beyond ``max_models_per_replica``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from synapse_sdk.plugins._action import BaseAction
from synapse_sdk.runtime import RunContext, current_context
from synapse_sdk.serving._batching import BatchSettings
from synapse_sdk.serving._replica import ReplicaRuntime, ServeReplicaConfig
from synapse_sdk.serving.model_ids import ServeModelIdError

logger = logging.getLogger(__name__)

__all__ = ["BaseServeDeployment", "ServeInferParams"]


class ServeInferParams(BaseModel):
    """Params of a serve entrypoint run as an action (the reference ``infer_remote`` params).

    ``json`` is the request body (called ``json_body`` in Python, as ``json`` would shadow a
    pydantic method); ``timeout`` is the Infer deadline in seconds.
    """

    model_config = ConfigDict(populate_by_name=True)

    model: int | str | None = None
    method: str = "post"
    json_body: Any = Field(alias="json")
    path: str = "/"
    timeout: float | None = Field(default=None, gt=0)


class BaseServeDeployment(BaseAction[ServeInferParams]):
    """Base class of Ray Serve inference deployments (see the module docstring).

    Built two ways: by Ray Serve with the platform address (``backend_url``), as a replica;
    or by the action runner with params, as the ``inference`` action, whose ``execute`` calls
    :meth:`infer_remote` (the platform's ``Infer``).
    """

    action_name: ClassVar[str] = "inference"
    #: The FastAPI app whose routes decorate the endpoint methods (optional).
    app: ClassVar[Any] = None
    #: LRU size of the per-replica model cache (``@serve.multiplexed``).
    max_models_per_replica: ClassVar[int] = 3
    #: Set by ``deploy()`` on the class it deploys.
    _synapse_replica_config: ClassVar[ServeReplicaConfig | None] = None
    #: How ``@batched`` endpoints are batched; set by ``deploy()`` when configured.
    _synapse_batching: ClassVar[BatchSettings | None] = None

    def __init__(self, backend_url: str | Mapping[str, Any] | BaseModel | None = None) -> None:
        if isinstance(backend_url, str):
            super().__init__(ServeInferParams.model_construct())
            self.backend_url: str | None = backend_url
        else:
            super().__init__(backend_url)
            self.backend_url = None
        # Kept for code written against the reference SDK; models are cached by
        # @serve.multiplexed, never in this dict.
        self._model_cache: dict[str, Any] = {}
        self._synapse_replica = ReplicaRuntime(self)

    # Plugin API ---------------------------------------------------------------------------

    async def _get_model(self, model_info: dict[str, Any]) -> Any:
        """Build the model object from its artifacts (``model_info['path']`` is a Path)."""
        raise NotImplementedError(f"{type(self).__name__} must implement _get_model()")

    async def get_model(self) -> Any:
        """The model named by the current request, loaded once per replica (LRU-cached).

        Raises :class:`ServeModelIdError` when the request's model id is missing, forged,
        expired or minted for another tenant or application.
        """
        from ray import serve

        token = serve.get_multiplexed_model_id()
        self._synapse_replica.claims(token)
        loader = getattr(self, "_synapse_multiplexed_load", None)
        if loader is None or not getattr(loader, "_serve_multiplexed_function", False):
            raise RuntimeError(
                f"{type(self).__name__} was not deployed by BaseDeploymentAction.deploy() "
                "(no multiplexed model loader)"
            )
        return await loader(token)

    def execute(self) -> Any:
        """As an action: forward the params to the deployed endpoint through ``Infer``."""
        return type(self).infer_remote(self.params.model_dump(by_alias=False), self.run_context)

    @classmethod
    def infer_remote(cls, params: Mapping[str, Any], ctx: RunContext | None = None) -> Any:
        """Call the deployed endpoint through the platform's ``Infer`` and return its answer.

        ``params``: ``model`` (model id), ``method`` (default ``post``), ``json`` (the body),
        optional ``path`` and ``timeout`` (seconds). The deployment is found by this plugin's
        code and ``action_name``. Needs a platform (``ctx.platform``): the run's server address
        and credential.
        """
        run = ctx if ctx is not None else current_context()
        values = dict(params)
        parsed = ServeInferParams.model_validate(values)
        platform = run.platform
        if platform is None:
            raise ServeModelIdError(
                "infer_remote needs the platform (run the action with --server, or use "
                "synapse_client.Client.infer)"
            )
        if not run.plugin_code:
            raise ValueError("infer_remote needs the plugin code of the run to find the deployment")
        with platform.client(timeout=None) as client:
            answer = client.infer(
                plugin=run.plugin_code,
                action=cls.action_name,
                model=parsed.model,
                json=parsed.json_body,
                method=parsed.method,
                path=parsed.path,
                timeout=parsed.timeout,
            )
        return answer.json

    # The platform's calls (method names are the contract of synapse_sdk.serving.wire) ---

    async def _synapse_load_model(self, token: str) -> Any:
        """Load one model (``deploy()`` wraps this with ``@serve.multiplexed``)."""
        return await self._synapse_replica.load_model(token)

    async def _synapse_replica_info(self) -> dict[str, Any]:
        """This replica's ``ReplicaInfo`` (for DeploymentService, which checks who owns an
        application and which models are loaded)."""
        return self._synapse_replica.info()

    async def _synapse_infer(self, message: Any) -> dict[str, Any]:
        """Answer one Infer request message with a reply message (``ServeRequest`` /
        ``ServeReply`` wire forms)."""
        return await self._synapse_replica.infer(message)

    async def _synapse_infer_group(
        self, messages: Any, waited_s: Any = 0.0
    ) -> list[dict[str, Any]]:
        """Answer a list of Infer request messages for one model with a list of reply
        messages, in order (protocol 1.2: the server's group of concurrent calls, gathered
        for ``waited_s``)."""
        return await self._synapse_replica.infer_group(messages, waited_s)

    async def _synapse_infer_stream(self, message: Any) -> AsyncIterator[dict[str, Any]]:
        """Answer one InferStream request message with a reply message per item the
        endpoint yields (protocol 1.1)."""
        async with contextlib.aclosing(self._synapse_replica.stream(message)) as replies:
            async for reply in replies:
                yield reply
