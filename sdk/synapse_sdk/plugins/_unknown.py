"""Params keys an action's params model ignores: a misspelled key is reported, not dropped.

A pydantic model ignores input keys it has no field for (``extra="ignore"``, the default), so
``{"batchsize": 8}`` for a field ``batch_size`` validates and the action silently runs with
the default. :func:`unknown_params_keys` finds such keys, in nested models too, and
:func:`unknown_params_warnings` words them, bounded, for a job's warnings. A model that
declares ``extra="forbid"`` rejects them instead (a ``ParamsValidationError`` naming each
key); one with ``extra="allow"`` accepts them (they are the action's to read).
"""

from __future__ import annotations

import logging
import typing
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import AliasChoices, AliasPath, BaseModel, RootModel

logger = logging.getLogger(__name__)

__all__ = ["MAX_WARNED_KEYS", "unknown_params_keys", "unknown_params_warnings"]

#: At most this many unknown keys are named, one warning each; the rest are counted.
MAX_WARNED_KEYS = 10
#: A key longer than this is cut in its warning (keys come from callers).
MAX_KEY_CHARS = 64

T = TypeVar("T")


def _per_model(compute: Callable[[type[BaseModel]], T]) -> Callable[[type[BaseModel]], T]:
    """Cache ``compute`` per model class without keeping the class alive: a reloaded plugin's
    old classes must be free to go."""
    cache: weakref.WeakKeyDictionary[type[BaseModel], T] = weakref.WeakKeyDictionary()

    def cached(model: type[BaseModel]) -> T:
        try:
            return cache[model]
        except KeyError:
            value = cache[model] = compute(model)
            return value

    return cached


def _accepted_keys(model: type[BaseModel]) -> dict[str, str]:
    """Input key -> field name, for every key the model reads (names and aliases)."""
    config = model.model_config
    by_name = bool(config.get("populate_by_name") or config.get("validate_by_name"))
    keys: dict[str, str] = {}
    for name, info in model.model_fields.items():
        aliases: list[str] = []
        alias = info.validation_alias
        if isinstance(alias, str):
            aliases.append(alias)
        elif isinstance(alias, AliasChoices):
            for choice in alias.choices:
                if isinstance(choice, str):
                    aliases.append(choice)
                elif isinstance(choice, AliasPath) and isinstance(choice.path[0], str):
                    aliases.append(choice.path[0])
        elif isinstance(alias, AliasPath) and isinstance(alias.path[0], str):
            aliases.append(alias.path[0])
        elif info.alias is not None:
            aliases.append(info.alias)
        for key in aliases:
            keys[key] = name
        if not aliases or by_name:
            keys[name] = name
    return keys


def _holds_model(annotation: Any) -> bool:
    """Whether a value of this type may contain a pydantic model (else no recursion)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True
    return any(_holds_model(arg) for arg in typing.get_args(annotation))


def _checkable(model: type[BaseModel]) -> bool:
    """False when the model's own keys cannot be judged: it accepts extras itself, forbids
    them (validation already named them), or a model validator running before the fields
    may read keys that are not fields."""
    if issubclass(model, RootModel):
        return False
    if model.model_config.get("extra") in ("allow", "forbid"):
        return False
    decorators = model.__pydantic_decorators__.model_validators.values()
    return not any(d.info.mode in ("before", "wrap") for d in decorators)


@dataclass(frozen=True, slots=True)
class _ModelKeys:
    """What the walk needs to know of one model class, computed once."""

    #: The input keys the model reads; None when its own keys are not judged.
    accepted: frozenset[str] | None
    #: (input key, field name) of the fields whose values may hold models.
    nested: tuple[tuple[str, str], ...]


@_per_model
def _model_keys(model: type[BaseModel]) -> _ModelKeys:
    accepted = _accepted_keys(model)
    nested_fields = {
        name for name, info in model.model_fields.items() if _holds_model(info.annotation)
    }
    return _ModelKeys(
        accepted=frozenset(accepted) if _checkable(model) else None,
        nested=tuple((key, name) for key, name in accepted.items() if name in nested_fields),
    )


class _Found:
    """The unknown keys seen: the first ``keep`` paths, and how many there were in all."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.paths: list[str] = []
        self.count = 0

    def add(self, path: list[str | int], key: str) -> None:
        self.count += 1
        if len(self.paths) < self.keep:
            self.paths.append(".".join([*(str(p) for p in path), key]))


# The walk runs over every item of large params (100k batch inputs): the path is one list
# pushed and popped, and a string only for a key that is reported.


def _walk(model: BaseModel, data: Mapping[str, Any], path: list[str | int], found: _Found) -> None:
    keys = _model_keys(type(model))
    if keys.accepted is not None and not keys.accepted.issuperset(data):
        for key in data:
            if key not in keys.accepted:
                found.add(path, key)
    for key, name in keys.nested:
        if key in data:
            path.append(key)
            _descend(getattr(model, name, None), data[key], path, found)
            path.pop()


def _descend(validated: Any, raw: Any, path: list[str | int], found: _Found) -> None:
    """Follow ``validated`` (built from ``raw``) to the models inside it."""
    if isinstance(validated, BaseModel):
        if isinstance(raw, Mapping):
            _walk(validated, raw, path, found)
    elif isinstance(validated, list | tuple):
        if isinstance(raw, list | tuple) and len(raw) == len(validated):
            _descend_items(validated, raw, path, found)
    elif isinstance(validated, Mapping) and isinstance(raw, Mapping):
        for key, item in validated.items():
            if key in raw:
                path.append(key)
                _descend(item, raw[key], path, found)
                path.pop()


def _descend_items(
    validated: list[Any] | tuple[Any, ...],
    raw: list[Any] | tuple[Any, ...],
    path: list[str | int],
    found: _Found,
) -> None:
    # The common case inline, a list of models of one class built from JSON objects: about a
    # third of the cost of the general path per item (measured on 100k items).
    model_type: type | None = None
    keys: _ModelKeys | None = None
    for index, item in enumerate(validated):
        source = raw[index]
        if type(source) is not dict or not isinstance(item, BaseModel):
            path.append(index)
            _descend(item, source, path, found)
            path.pop()
            continue
        if type(item) is not model_type:
            model_type, keys = type(item), _model_keys(type(item))
        assert keys is not None
        accepted = keys.accepted
        if (accepted is not None and not accepted.issuperset(source)) or keys.nested:
            path.append(index)
            _walk(item, source, path, found)
            path.pop()


def _collect(validated: BaseModel, params: Mapping[str, Any], keep: int) -> _Found:
    found = _Found(keep)
    _walk(validated, params, [], found)
    return found


def unknown_params_keys(
    validated: BaseModel, params: Mapping[str, Any], limit: int = 1000
) -> list[str]:
    """The keys of ``params`` that validating them into ``validated`` ignored, as dotted paths
    (``batchsize``, ``inputs.0.tensr``), in input order; the first ``limit`` of them.

    Only models that ignore extra keys (pydantic's default) report them; nested models are
    followed through lists, tuples and dicts. Fields of other types (``dict[str, Any]``)
    take any keys and are not looked into.
    """
    return _collect(validated, params, limit).paths


def _shown_key(path: str) -> str:
    cut = path if len(path) <= MAX_KEY_CHARS else path[:MAX_KEY_CHARS] + "..."
    # Keys come from callers: control characters are escaped, not printed.
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in cut)


def unknown_params_warnings(validated: BaseModel, params: Mapping[str, Any]) -> list[str]:
    """One warning per unknown key of ``params`` (see :func:`unknown_params_keys`),
    ``unknown params key 'batchsize' (ignored)``: at most :data:`MAX_WARNED_KEYS`, each key
    cut at :data:`MAX_KEY_CHARS`, then one that counts the rest."""
    found = _collect(validated, params, MAX_WARNED_KEYS)
    warnings = [f"unknown params key '{_shown_key(p)}' (ignored)" for p in found.paths]
    rest = found.count - len(found.paths)
    if rest > 0:
        warnings.append(f"{rest} more unknown params key{'s' if rest > 1 else ''} (ignored)")
    return warnings
