"""Batch inference actions (``BaseInferenceAction``) and their step context."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synapse_sdk.errors import ModelBackendUnavailableError
from synapse_sdk.events import LogLevel
from synapse_sdk.plugins._action import BaseAction, P
from synapse_sdk.plugins._models import ModelPath
from synapse_sdk.plugins.enums import PluginCategory
from synapse_sdk.plugins.steps import BaseStepContext, StepOutcome
from synapse_sdk.runtime import ModelBackend, current_context

if TYPE_CHECKING:
    from synapse_sdk.datasets import BatchFormat, BatchResult

logger = logging.getLogger(__name__)

#: The least time between two ``"batch"`` progress reports of :meth:`map_batches`.
_BATCH_PROGRESS_INTERVAL_S = 0.1

__all__ = ["BaseInferenceAction", "InferenceContext", "InferenceProgressCategories"]


@dataclass(frozen=True)
class InferenceProgressCategories:
    """Progress categories of an inference run."""

    MODEL_LOAD: str = "model_load"
    INFERENCE: str = "inference"
    POSTPROCESS: str = "postprocess"


@dataclass
class InferenceContext(BaseStepContext):
    """State shared by the steps of a step-based inference run (fields as documented)."""

    params: dict[str, Any] = field(default_factory=dict)
    model_id: int | None = None
    model: dict[str, Any] | None = None
    model_path: str | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    batch_size: int = 1
    processed_count: int = 0


class BaseInferenceAction(BaseAction[P]):
    """Base class of batch inference actions.

    Simple mode: override :meth:`execute`. Step mode: register steps in ``setup_steps``; the
    run builds an :class:`InferenceContext` from the params (:meth:`create_context`), resolves
    the model under ``MODEL_LOAD`` when a ``model_id`` is given (:meth:`prepare_context`) and
    returns the context's ``results`` and ``processed_count`` with each step's outcome.
    Model helpers go to the run's model backend (the platform's, or a local one).
    """

    category = PluginCategory.NEURAL_NET
    progress = InferenceProgressCategories()

    # Model helpers -------------------------------------------------------------------------

    def _model_backend(self, operation: str) -> ModelBackend:
        backend = current_context().model_backend
        if backend is None:
            raise ModelBackendUnavailableError(operation)
        return backend

    def get_model(self, model_id: int | str) -> dict[str, Any]:
        """Model metadata by id (name, file, ...)."""
        return self._model_backend("get_model").get_model(model_id)

    def download_model(self, model_id: int | str, output_dir: str | Path | None = None) -> Path:
        """Download and extract the model's artifacts; returns the directory."""
        return Path(self._model_backend("download_model").download_model(model_id, output_dir))

    def load_model(self, model_id: int | str) -> dict[str, Any]:
        """Model metadata with ``path``: a local directory usable as ``str`` or with ``/``."""
        info = dict(self._model_backend("load_model").load_model(model_id))
        if "path" not in info:
            raise KeyError(f"the model backend returned no 'path' for model {model_id!r}")
        info["path"] = ModelPath(info["path"])
        return info

    def infer(self, model: Any, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Run inference on ``inputs``; override with your model's logic."""
        raise NotImplementedError(f"{type(self).__name__} must override infer()")

    def _postprocess(self, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Post-process inference results; identity unless overridden (used by simple mode)."""
        return results

    # Step mode -----------------------------------------------------------------------------

    # Datasets ------------------------------------------------------------------------------

    def map_batches(
        self,
        *,
        dataset: str,
        predictor: type,
        predictor_kwargs: Mapping[str, Any] | None = None,
        batch_size: int = 1024,
        batch_format: BatchFormat = "numpy",
        columns: Sequence[str] | None = None,
        carry_columns: Sequence[str] = (),
        output: str = "predictions",
        concurrency: int = 1,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
    ) -> BatchResult:
        """Map ``predictor`` over ``dataset`` in batches and write job output ``output``.

        ``predictor`` is a callable class: ``predictor(**predictor_kwargs)`` loads the model
        once, and calling it with a batch returns a mapping of column name to one value per
        input row. The output is row-aligned with the input, in input order, with
        ``carry_columns`` first. Progress (rows done of the dataset's rows) is reported in
        category ``"batch"`` as batches finish: the first batch at once, then at most every
        0.1 s, and the last always.
        Raises :class:`~synapse_sdk.datasets.DatasetsUnavailableError` where the run context
        has no dataset resolver, and ``ActionCancelledError`` once the run is cancelled.
        """
        from synapse_sdk.datasets import BatchSpec, DatasetsUnavailableError, LocalBatchRunner

        ctx = current_context()
        if ctx.datasets is None:
            raise DatasetsUnavailableError()
        source = ctx.datasets.resolve(dataset)
        sink = ctx.datasets.open_sink(output)
        spec = BatchSpec(
            source=source,
            sink=sink,
            predictor=predictor,
            predictor_kwargs=dict(predictor_kwargs or {}),
            batch_size=batch_size,
            batch_format=batch_format,
            columns=None if columns is None else tuple(columns),
            carry_columns=tuple(carry_columns),
            concurrency=concurrency,
            num_cpus=num_cpus,
            num_gpus=num_gpus,
        )
        runner = ctx.batch_runner if ctx.batch_runner is not None else LocalBatchRunner()
        total = source.num_rows
        # Rows of the latest report and when it went out. A report per batch (thousands a
        # second for a small model) is more than a progress bar shows and cost the batch
        # loop 2-3% of its time, building events the worker then coalesces away.
        reported = [-1, float("-inf")]

        def report(done: int) -> None:
            reported[:] = [done, time.monotonic()]
            self.set_progress(done, total, "batch")

        def on_batch(done: int) -> None:
            # An empty dataset has no batches; set_progress needs a positive total.
            done = min(done, total)
            if total <= 0 or done == reported[0]:
                return  # (more rows than the dataset said: it stays at total, once)
            if done == total or time.monotonic() - reported[1] >= _BATCH_PROGRESS_INTERVAL_S:
                report(done)

        result = runner.run(spec, on_batch, self.is_cancelled)
        # The rows the run ended at are always reported, whatever the interval held back.
        if total > 0 and reported[0] != min(result.rows, total):
            report(min(result.rows, total))
        return result

    def create_context(self) -> InferenceContext:
        """Build the step context from params: ``model_id`` (or ``model``), ``requests`` (or
        ``inputs``) and ``batch_size``. Override to fill it differently."""
        params = self.params.model_dump()
        model_id = params.get("model_id", params.get("model"))
        requests = params.get("requests")
        if requests is None:
            requests = params.get("inputs")
        return InferenceContext(
            params=params,
            model_id=model_id,
            requests=list(requests or []),
            batch_size=int(params.get("batch_size") or 1),
        )

    def prepare_context(self, context: BaseStepContext) -> None:
        """Resolve ``model`` and ``model_path`` with :meth:`load_model` before the steps."""
        if not isinstance(context, InferenceContext) or context.model_id is None:
            return
        if current_context().model_backend is None:
            self.log(
                "model_backend_unavailable",
                {"model_id": context.model_id, "detail": "model_path left unset"},
                level=LogLevel.WARNING,
            )
            return
        self.set_progress(0, 1, self.progress.MODEL_LOAD)
        info = self.load_model(context.model_id)
        context.model = info
        context.model_path = info["path"]
        self.set_progress(1, 1, self.progress.MODEL_LOAD)

    def build_result(self, context: BaseStepContext, outcomes: list[StepOutcome]) -> dict[str, Any]:
        """Step outcomes plus the context's ``results`` and ``processed_count``."""
        result = super().build_result(context, outcomes)
        if isinstance(context, InferenceContext):
            result["results"] = context.results
            result["processed_count"] = context.processed_count
        return result
