"""The plugin catalog: which plugins and actions this server offers, and their params models."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synapse_sdk.errors import ActionNotFoundError, ParamsValidationError, PluginNotFoundError
from synapse_sdk.jsonutil import gc_paused
from synapse_sdk.plugins import (
    BaseAction,
    Plugin,
    discover_plugins,
    params_json_schema,
    params_model,
    validate_params_json,
)

from synapse_server.core._errors import InvalidArgumentError

__all__ = ["ActionInfo", "ActionKind", "CatalogSnapshot", "PluginCatalog", "PluginInfo"]

logger = logging.getLogger(__name__)

#: ``config.yaml`` action methods that are serve deployments rather than runnable jobs.
_SERVE_METHODS = frozenset({"serve", "restapi"})


class ActionKind:
    """How an action is invoked: run as a job, or deployed and called with Infer."""

    JOB = "job"
    SERVE = "serve"


@dataclass(frozen=True, slots=True)
class ActionInfo:
    """What ListActions tells about one action."""

    name: str
    description: str
    kind: str
    default_mode: str
    supported_modes: tuple[str, ...]
    params_schema: dict[str, Any]
    progress_categories: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """What ListActions tells about one plugin."""

    code: str
    name: str
    version: str
    category: str
    description: str
    actions: tuple[ActionInfo, ...]


def _progress_categories(action_cls: type[BaseAction[Any]]) -> tuple[str, ...]:
    progress = getattr(action_cls, "progress", None)
    if progress is None:
        return ()
    values = [
        getattr(progress, name)
        for name in dir(progress)
        if name.isupper() and isinstance(getattr(progress, name), str)
    ]
    return tuple(sorted(set(values)))


def _describe(action_cls: type[BaseAction[Any]], fallback: str) -> str:
    doc = (action_cls.__doc__ or "").strip()
    return fallback or doc.split("\n\n", 1)[0].strip()


@dataclass(frozen=True, slots=True)
class CatalogSnapshot:
    """Plugins loaded by :meth:`PluginCatalog.scan`, not yet installed."""

    plugins: Mapping[str, Plugin]
    infos: Mapping[str, PluginInfo]


class PluginCatalog:
    """Plugins discovered in the configured directories; :meth:`reload` rescans them.

    The server imports plugin modules only to read their params models and schemas; actions
    themselves run in worker processes.
    """

    def __init__(self, plugin_dirs: Iterable[Path], supported_modes: Iterable[str]) -> None:
        self._dirs = [Path(d) for d in plugin_dirs]
        self._modes = tuple(supported_modes)
        self._lock = threading.Lock()
        self._plugins: dict[str, Plugin] = {}
        self._infos: dict[str, PluginInfo] = {}

    @property
    def plugin_dirs(self) -> list[Path]:
        """The directories scanned for plugins."""
        return list(self._dirs)

    def reload(self, *, fresh: bool = False) -> None:
        """Rescan the plugin directories; a malformed plugin raises and keeps the old catalog.

        ``fresh`` imports the plugins' code again from disk (see ``load_plugin``), for a
        reload after plugins were edited; otherwise modules imported before are reused.
        """
        self.install(self.scan(fresh=fresh))

    def scan(self, *, fresh: bool = False) -> CatalogSnapshot:
        """Load the plugin directories without changing the catalog (slow: imports).

        A malformed plugin raises. :meth:`install` makes the result current; the two are
        separate so that a server can switch its catalog and its workers in one step.
        """
        plugins = discover_plugins(self._dirs, fresh=fresh)
        infos = {code: self._info(plugin) for code, plugin in plugins.items()}
        return CatalogSnapshot(plugins=plugins, infos=infos)

    def install(self, snapshot: CatalogSnapshot) -> None:
        """Make a :meth:`scan` result the current catalog."""
        with self._lock:
            self._plugins = dict(snapshot.plugins)
            self._infos = dict(snapshot.infos)
        codes = sorted(snapshot.plugins)
        logger.info("plugin catalog: %d plugin(s): %s", len(codes), ", ".join(codes))

    def _info(self, plugin: Plugin) -> PluginInfo:
        actions = []
        for name, spec in sorted(plugin.actions.items()):
            action_cls = spec.load()
            kind = ActionKind.SERVE if spec.method in _SERVE_METHODS else ActionKind.JOB
            default_mode = spec.method if spec.method in self._modes else self._modes[0]
            if kind == ActionKind.JOB and spec.method and spec.method not in self._modes:
                # Said out loud: the plugin asked for a mode this server cannot offer (e.g.
                # Ray is not installed), so its jobs run in the first mode that exists.
                logger.warning(
                    "plugin %s action %s: method %r is not available on this server; "
                    "its default mode is %r",
                    plugin.code,
                    spec.name,
                    spec.method,
                    default_mode,
                )
            actions.append(
                ActionInfo(
                    name=name,
                    description=_describe(action_cls, spec.description),
                    kind=kind,
                    default_mode=default_mode if kind == ActionKind.JOB else "",
                    supported_modes=self._modes if kind == ActionKind.JOB else (),
                    params_schema=params_json_schema(action_cls),
                    progress_categories=_progress_categories(action_cls),
                )
            )
        category = plugin.category.value if plugin.category is not None else ""
        return PluginInfo(
            code=plugin.code,
            name=plugin.name,
            version=plugin.version,
            category=category,
            description=plugin.description,
            actions=tuple(actions),
        )

    def plugins(self, code: str = "") -> list[PluginInfo]:
        """All plugins sorted by code, or just ``code`` (PluginNotFoundError if unknown)."""
        with self._lock:
            if code:
                if code not in self._infos:
                    raise PluginNotFoundError(f"plugin {code!r} not found")
                return [self._infos[code]]
            return [self._infos[c] for c in sorted(self._infos)]

    def plugin(self, code: str) -> Plugin:
        """The loaded plugin ``code``."""
        with self._lock:
            plugin = self._plugins.get(code)
        if plugin is None:
            raise PluginNotFoundError(f"plugin {code!r} not found")
        return plugin

    def action(self, code: str, action: str) -> ActionInfo:
        """The description of ``action`` of plugin ``code`` (NOT_FOUND errors if unknown)."""
        info = self.plugins(code)[0]
        for candidate in info.actions:
            if candidate.name == action:
                return candidate
        raise ActionNotFoundError(action, code, [a.name for a in info.actions])

    def check_params_json(self, code: str, action: str, params_json: str) -> None:
        """Check params given as JSON object text against the action's model.

        Nothing is kept: the validated params are dropped while collection is still paused,
        so large params cost one parse and no collector pass over their objects.
        Raises InvalidArgumentError (not a JSON object), ParamsValidationError per bad field.
        """
        model = params_model(self.plugin(code).action(action).load())
        try:
            with gc_paused():
                validate_params_json(model, params_json, action)
        except ParamsValidationError:
            raise
        except ValueError as exc:  # not JSON, or not an object
            raise InvalidArgumentError(f"params_json is {exc}", field="params_json") from None
