"""The SDK's error hierarchy.

Every error says what went wrong in its ``str()`` and carries the details as attributes, so a
runner (console, test harness, platform worker) can report it without parsing messages. The
platform maps these types to wire status codes in one place.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from synapse_sdk.events import ErrorInfo

if TYPE_CHECKING:
    from pydantic import ValidationError

logger = logging.getLogger(__name__)

__all__ = [
    "ActionCancelledError",
    "ActionFailedError",
    "ActionNotFoundError",
    "FieldViolation",
    "ModelBackendUnavailableError",
    "ModelNotFoundError",
    "ParamsValidationError",
    "PluginConfigError",
    "PluginNotFoundError",
    "ProgressError",
    "ResultNotSerializableError",
    "StepRegistryError",
    "SynapseError",
]


class SynapseError(Exception):
    """Base class of every error the SDK raises on purpose."""


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One invalid field: its dotted path (``inputs.0.data``) and what is wrong with it."""

    field: str
    description: str

    def __str__(self) -> str:
        return f"{self.field}: {self.description}"


class ParamsValidationError(SynapseError, ValueError):
    """The params given to an action do not match its params model."""

    def __init__(self, violations: Sequence[FieldViolation], action: str | None = None) -> None:
        self.violations = list(violations)
        self.action = action
        where = f" for action '{action}'" if action else ""
        details = "; ".join(str(v) for v in self.violations) or "no details"
        super().__init__(f"invalid params{where}: {details}")

    @classmethod
    def from_pydantic(
        cls, error: ValidationError, action: str | None = None
    ) -> ParamsValidationError:
        """Build from pydantic's error, one violation per bad field, with dotted field paths."""
        violations = []
        for item in error.errors():
            path = ".".join(str(part) for part in item.get("loc", ())) or "(params)"
            violations.append(FieldViolation(field=path, description=str(item.get("msg", ""))))
        return cls(violations, action=action)


class PluginConfigError(SynapseError, ValueError):
    """A plugin's ``config.yaml`` (or its layout) is malformed; names the file and the field."""

    def __init__(self, path: str | Path, field: str, message: str) -> None:
        self.path = Path(path)
        self.field = field
        self.message = message
        super().__init__(f"{self.path}: field '{field}': {message}")


class PluginNotFoundError(SynapseError, LookupError):
    """No plugin at the given path or module name."""


class ActionNotFoundError(SynapseError, LookupError):
    """The plugin has no action of that name."""

    def __init__(self, action: str, plugin: str, available: Sequence[str] = ()) -> None:
        self.action = action
        self.plugin = plugin
        self.available = list(available)
        choices = ", ".join(sorted(self.available)) or "none"
        super().__init__(f"plugin '{plugin}' has no action '{action}' (available: {choices})")


class ActionFailedError(SynapseError):
    """An action failed. ``error`` keeps the original exception's type, message and traceback.

    ``step`` names the failing step of a step-based run; ``rollback_errors`` lists the rollbacks
    that raised afterwards, which never replace the original failure.
    """

    def __init__(
        self,
        error: ErrorInfo,
        step: str | None = None,
        rollback_errors: Sequence[tuple[str, ErrorInfo]] = (),
    ) -> None:
        self.error = error
        self.step = step
        self.rollback_errors = list(rollback_errors)
        where = f" in step '{step}'" if step else ""
        text = f"action failed{where}: {error.type}: {error.message}"
        if self.rollback_errors:
            failed = ", ".join(
                f"'{name}' ({info.type}: {info.message})" for name, info in (self.rollback_errors)
            )
            text += f" (rollback also failed for {failed})"
        super().__init__(text)


class ActionCancelledError(SynapseError):
    """The run was cancelled; raised by the runner, or by plugin code via ``raise_if_cancelled``."""

    def __init__(self, message: str = "action cancelled", step: str | None = None) -> None:
        self.step = step
        super().__init__(message)


class ModelNotFoundError(SynapseError, ValueError):
    """No model with this id. A ``ValueError`` too, as the reference document catches that."""

    def __init__(self, model_id: int | str, detail: str = "") -> None:
        self.model_id = model_id
        super().__init__(f"model {model_id!r} not found" + (f": {detail}" if detail else ""))


class ModelBackendUnavailableError(SynapseError, RuntimeError):
    """Model helpers were called in a run that has no model backend."""

    def __init__(self, operation: str) -> None:
        self.operation = operation
        super().__init__(
            f"{operation}() needs a model backend, but this run has none: run the action through "
            "the platform, or pass a model backend (e.g. RunContext(model_backend=...), "
            "ActionEnvironment(model_backend=...) or `synapse plugin run --models-dir DIR`)"
        )


class ProgressError(SynapseError, ValueError):
    """``set_progress`` was called with impossible numbers."""


class StepRegistryError(SynapseError, ValueError):
    """A step registry operation is invalid (duplicate or unknown name, bad weight)."""


class ResultNotSerializableError(SynapseError, TypeError):
    """A result, step data, log or metric value cannot be represented as JSON."""

    def __init__(self, key: str, value_type: str) -> None:
        self.key = key
        self.value_type = value_type
        super().__init__(f"value at '{key}' is not JSON-serialisable (type {value_type})")
