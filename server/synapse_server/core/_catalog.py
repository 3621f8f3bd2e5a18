"""The plugin catalog: which plugins and actions this server offers, and their params models.

Each plugin is loaded from a snapshot of its directory (see ``_plugin_code``): the params
model that validates a job and the code that runs it are the same bytes, in every mode, and
the live directory is read again only by the next load (a reload or a restart).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synapse_sdk.errors import (
    ActionNotFoundError,
    ParamsValidationError,
    PluginConfigError,
    PluginNotFoundError,
)
from synapse_sdk.jsonutil import gc_paused
from synapse_sdk.plugins import (
    BaseAction,
    Plugin,
    check_params_json,
    load_plugin,
    params_json_schema,
    params_model,
    plugin_directories,
    unload_plugin,
)

from synapse_server.core._errors import InvalidArgumentError
from synapse_server.core._plugin_code import (
    PluginCode,
    PluginCodeStore,
    PluginCodeUnavailableError,
)

__all__ = [
    "ActionInfo",
    "ActionKind",
    "CatalogSnapshot",
    "CheckedParams",
    "PluginCatalog",
    "PluginInfo",
]

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
class CheckedParams:
    """What checking a job's params found: the code that checked them, and warnings."""

    #: sha256 of the plugin code whose params model checked them: the code the job runs.
    sha256: str
    #: e.g. "unknown params key 'batchsize' (ignored)" (bounded, see unknown_params_warnings).
    warnings: tuple[str, ...] = ()


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
    code: Mapping[str, PluginCode]


def _at_source(error: PluginConfigError, code: PluginCode, source: Path) -> PluginConfigError:
    """The same error naming the plugin's own directory instead of its snapshot.

    The plugin is loaded from its snapshot, but the author edits the source directory: a
    message pointing into the data directory would send them to a file they never wrote.
    """
    snapshot = code.path.resolve()
    try:
        path = source / error.path.resolve().relative_to(snapshot)
    except ValueError:
        path = error.path
    message = error.message.replace(str(snapshot), str(source)).replace(str(code.path), str(source))
    return PluginConfigError(path, error.field, message)


class PluginCatalog:
    """Plugins discovered in the configured directories; :meth:`reload` rescans them.

    Each plugin is imported from a snapshot of its directory in ``code_store``, taken when it
    is loaded; :meth:`code` tells where the snapshot of a plugin (or of a job's digest) is. The
    server imports plugin modules only to read their params models and schemas; actions
    themselves run in worker processes, from the same snapshot.
    """

    def __init__(
        self,
        plugin_dirs: Iterable[Path],
        supported_modes: Iterable[str],
        *,
        code_store: PluginCodeStore,
    ) -> None:
        self._dirs = [Path(d) for d in plugin_dirs]
        self._modes = tuple(supported_modes)
        self._code_store = code_store
        self._lock = threading.Lock()
        self._plugins: dict[str, Plugin] = {}
        self._infos: dict[str, PluginInfo] = {}
        self._code: dict[str, PluginCode] = {}
        # Digests installed before the current ones: a job validated against them just before
        # a reload may not be stored yet, so the next collection keeps them (see collect).
        self._previous: frozenset[str] = frozenset()

    @property
    def plugin_dirs(self) -> list[Path]:
        """The directories scanned for plugins."""
        return list(self._dirs)

    @property
    def code_store(self) -> PluginCodeStore:
        """Where the plugins' code snapshots are kept."""
        return self._code_store

    def reload(self) -> None:
        """Rescan the plugin directories; a malformed plugin raises and keeps the old catalog."""
        self.install(self.scan())

    def scan(self) -> CatalogSnapshot:
        """Snapshot and load the plugin directories without changing the catalog (slow).

        Each plugin directory is copied into the code store (:meth:`PluginCodeStore.take`)
        and imported from the copy; a copy whose digest was loaded before reuses its
        modules, an edited plugin gets a new digest and is imported anew. A malformed plugin
        raises (its errors name the plugin's own directory). :meth:`install` makes the result
        current; the two are separate so that a server can switch its catalog and its
        workers in one step.
        """
        plugins: dict[str, Plugin] = {}
        code: dict[str, PluginCode] = {}
        sources: dict[str, Path] = {}
        try:
            for source in plugin_directories(self._dirs):
                snapshot = self._code_store.take(source)
                try:
                    plugin = load_plugin(snapshot.path)
                except BaseException as exc:
                    if snapshot.sha256 not in self._current_digests():
                        # The modules the failed import left behind; a later load of the
                        # same digest then starts clean.
                        unload_plugin(snapshot.path)
                    if isinstance(exc, PluginConfigError):
                        raise _at_source(exc, snapshot, source) from exc
                    raise
                if plugin.code in plugins:
                    raise PluginConfigError(
                        source / "config.yaml",
                        "code",
                        f"plugin code '{plugin.code}' is already used by {sources[plugin.code]}",
                    )
                plugins[plugin.code], code[plugin.code] = plugin, snapshot
                sources[plugin.code] = source
            infos = {name: self._info(plugin) for name, plugin in plugins.items()}
        except BaseException:
            # What this scan imported and the catalog does not use would otherwise stay in
            # sys.modules.
            current = self._current_digests()
            for name, snapshot in code.items():
                if snapshot.sha256 not in current:
                    unload_plugin(plugins[name])
            raise
        return CatalogSnapshot(plugins=plugins, infos=infos, code=code)

    def _current_digests(self) -> set[str]:
        with self._lock:
            return {c.sha256 for c in self._code.values()}

    def install(self, snapshot: CatalogSnapshot) -> None:
        """Make a :meth:`scan` result the current catalog."""
        with self._lock:
            replaced = self._plugins
            self._previous = frozenset(c.sha256 for c in self._code.values())
            self._plugins = dict(snapshot.plugins)
            self._infos = dict(snapshot.infos)
            self._code = dict(snapshot.code)
        kept = {plugin.module_prefix for plugin in snapshot.plugins.values()}
        for plugin in replaced.values():
            if plugin.module_prefix not in kept:
                # Classes already handed out keep working; the modules just stop being
                # reachable, so reloads of edited plugins do not accumulate them.
                unload_plugin(plugin)
        listing = ", ".join(f"{c} ({snapshot.code[c].sha256[:12]})" for c in sorted(snapshot.code))
        logger.info("plugin catalog: %d plugin(s): %s", len(snapshot.code), listing)

    def code(self, plugin: str, sha256: str = "") -> PluginCode:
        """The code snapshot of ``plugin`` with digest ``sha256`` (the loaded one when empty).

        A job runs the digest recorded when it was submitted, which outlives a reload for as
        long as some unfinished job refers to it. Raises :class:`PluginCodeUnavailableError`
        when that snapshot is gone or, without a digest, the plugin is not loaded.
        """
        with self._lock:
            current = self._code.get(plugin)
        if current is not None and (not sha256 or current.sha256 == sha256):
            return current
        if not sha256:
            raise PluginCodeUnavailableError(f"plugin {plugin!r} is not loaded on this server")
        kept = self._code_store.get(sha256)
        if kept is None:
            raise PluginCodeUnavailableError(
                f"the code of plugin {plugin!r} this job was submitted with (sha256 "
                f"{sha256[:12]}) is no longer kept; submit the job again"
            )
        return kept

    def collect(self, in_use: Collection[str]) -> list[str]:
        """Remove code snapshots nothing refers to; the digests removed (blocking).

        Kept: the loaded plugins', those loaded before the last install (a job validated
        against them may still be on its way into the store) and ``in_use`` (the digests
        of unfinished jobs).
        """
        with self._lock:
            keep = {c.sha256 for c in self._code.values()} | self._previous | set(in_use)
        return self._code_store.collect(keep)

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

    def check_params_json(self, code: str, action: str, params_json: str) -> CheckedParams:
        """Check params given as JSON object text against the action's model.

        Returns the sha256 of the plugin code whose model checked them (the code the job
        must run, see :meth:`code`) and the warnings about them: each key the model ignores
        (a misspelled one would otherwise be dropped without a word). Nothing else is kept:
        the validated params are dropped while collection is still paused, so large params
        cost one parse and no collector pass over their objects.
        Raises InvalidArgumentError (not a JSON object), ParamsValidationError per bad field
        (an unknown key too, when the model forbids extra keys).
        """
        with self._lock:
            plugin, snapshot = self._plugins.get(code), self._code.get(code)
        if plugin is None or snapshot is None:
            raise PluginNotFoundError(f"plugin {code!r} not found")
        model = params_model(plugin.action(action).load())
        try:
            with gc_paused():
                warnings = check_params_json(model, params_json, action)
        except ParamsValidationError:
            raise
        except ValueError as exc:  # not JSON, or not an object
            raise InvalidArgumentError(f"params_json is {exc}", field="params_json") from None
        return CheckedParams(snapshot.sha256, tuple(warnings))
