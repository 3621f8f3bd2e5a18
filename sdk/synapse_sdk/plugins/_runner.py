"""``run_action``: the one entry point every runner (console, harness, platform) uses."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from synapse_sdk._json import is_plain_json, to_jsonable
from synapse_sdk.errors import (
    ActionCancelledError,
    ActionFailedError,
)
from synapse_sdk.events import ErrorInfo
from synapse_sdk.plugins._action import BaseAction, resolve_params_model, validate_params
from synapse_sdk.runtime import RunContext, run_context

logger = logging.getLogger(__name__)

__all__ = ["params_json_schema", "params_model", "run_action"]


def params_model(action_cls: type[BaseAction[Any]]) -> type[BaseModel]:
    """The pydantic model an action validates its params with."""
    _check_action_class(action_cls)
    return resolve_params_model(action_cls)


def params_json_schema(action_cls: type[BaseAction[Any]]) -> dict[str, Any]:
    """The JSON Schema of an action's params (what the platform's ListActions publishes)."""
    return params_model(action_cls).model_json_schema()


def run_action(
    action_cls: type[BaseAction[Any]],
    params: Mapping[str, Any] | BaseModel | None,
    ctx: RunContext | None = None,
) -> dict[str, Any]:
    """Validate ``params``, run the action inside ``ctx`` and return its JSON-ready result.

    Raises :class:`ParamsValidationError` for bad params (before anything runs),
    :class:`ActionCancelledError` when the run was cancelled, and :class:`ActionFailedError`
    for any other failure, carrying the original exception's type, message and traceback
    (and chained to it with ``__cause__``). A result that is not a dict is returned as
    ``{"result": value}``. Holds no global state: concurrent runs in threads or processes only
    share what their ``ctx`` objects share.
    """
    _check_action_class(action_cls)
    model = resolve_params_model(action_cls)
    validated = validate_params(model, params, action_cls.action_name or action_cls.__name__)
    ctx = ctx if ctx is not None else RunContext(action_name=action_cls.action_name or None)
    with run_context(ctx):
        try:
            action = action_cls(validated)
            raw = action.run()
            result = raw if isinstance(raw, Mapping) else {"result": raw}
            if is_plain_json(result):
                # Already JSON data (a dict of lists of floats, say): no converted copy needed.
                return dict(result)
            return _as_dict(to_jsonable(result, "result"))
        except (ActionCancelledError, ActionFailedError):
            raise
        except Exception as exc:
            logger.debug("action %s failed", action_cls.__name__, exc_info=True)
            raise ActionFailedError(ErrorInfo.from_exception(exc)) from exc


def _as_dict(value: Any) -> dict[str, Any]:
    # to_jsonable keeps a mapping a dict; this narrows the type for callers.
    assert isinstance(value, dict)
    return value


def _check_action_class(action_cls: object) -> None:
    if not (isinstance(action_cls, type) and issubclass(action_cls, BaseAction)):
        raise TypeError(f"expected a BaseAction subclass, got {action_cls!r}")
