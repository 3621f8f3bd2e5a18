"""Plugin discovery: a directory with ``config.yaml``, a module, or a ``.py`` file.

Isolation: a plugin directory is imported as a synthetic package with a unique, deterministic
name, ``_synapse_plugin_<code>_<hash of the resolved directory>``, whose search path is the
plugin directory. Its packages become subpackages of that name, so two plugins that both ship a
package called ``plugin`` never share modules, and sys.path is never changed. The name depends
only on the code and the directory, so another process that loads the same directory gets the
same module names (pickled classes of a plugin resolve there too). Consequence for authors:
inside a plugin package, import your own modules relatively (``from .models import Net``).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.machinery
import importlib.util
import inspect
import logging
import re
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from synapse_sdk.errors import ActionNotFoundError, PluginConfigError, PluginNotFoundError
from synapse_sdk.plugins._action import BaseAction
from synapse_sdk.plugins.enums import PluginCategory

logger = logging.getLogger(__name__)

__all__ = [
    "ActionSpec",
    "Plugin",
    "discover_plugins",
    "load_plugin",
    "plugin_directories",
    "unload_plugin",
]

CONFIG_FILE = "config.yaml"
_ENTRYPOINT = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*([:.][A-Za-z_][\w]*)$")
_import_lock = threading.RLock()


@dataclass
class ActionSpec:
    """One action of a plugin, as declared in ``config.yaml`` (or found in a module)."""

    name: str
    entrypoint: str
    method: str = "local"
    description: str = ""
    action_class: type[BaseAction[Any]] | None = field(default=None, repr=False)

    def load(self) -> type[BaseAction[Any]]:
        """The action class (imported when the plugin was loaded)."""
        if self.action_class is None:
            raise ActionNotFoundError(self.name, "(unloaded plugin)")
        return self.action_class


@dataclass
class Plugin:
    """A loaded plugin: its identity, where it lives and its actions by name."""

    code: str
    name: str
    version: str
    category: PluginCategory | None
    path: Path | None
    actions: dict[str, ActionSpec]
    description: str = ""
    module_prefix: str = ""

    def action(self, name: str) -> ActionSpec:
        """The action called ``name``; raises :class:`ActionNotFoundError` listing the others."""
        try:
            return self.actions[name]
        except KeyError:
            raise ActionNotFoundError(name, self.code, list(self.actions)) from None

    def get_action_class(self, name: str) -> type[BaseAction[Any]]:
        """The class of the action called ``name``."""
        return self.action(name).load()

    def import_module(self, name: str) -> ModuleType:
        """Import a module of this plugin by its name inside the plugin (``pkg.models``)."""
        if not self.module_prefix:
            return importlib.import_module(name)
        with _import_lock:
            return importlib.import_module(f"{self.module_prefix}.{name}")


class _ActionConfig(BaseModel):
    # Every key is declared: a misspelled one (`metod: task`) fails the load, naming it,
    # rather than leaving the action on a default without a word.
    model_config = ConfigDict(extra="forbid")

    entrypoint: str = Field(min_length=1)
    method: str = Field(default="local", min_length=1)
    description: str = ""
    # Ray resources of the action's workers in task and job mode (params may override them;
    # the Ray executors check the values, see synapse_server.ray._executors).
    num_cpus: Any = None
    num_gpus: Any = None
    memory: Any = None
    resources: Any = None

    @field_validator("entrypoint")
    @classmethod
    def _check_entrypoint(cls, value: str) -> str:
        if not _ENTRYPOINT.match(value):
            raise ValueError(f"'{value}' is not of the form 'module:Class' or 'module.Class'")
        return value


class _PluginConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    category: PluginCategory
    description: str = ""
    actions: dict[str, _ActionConfig] = Field(min_length=1)
    # serve.deployment options of the plugin's serve application (checked when deploying).
    serve: dict[str, Any] | None = None

    @field_validator("version", mode="before")
    @classmethod
    def _version_to_str(cls, value: Any) -> Any:
        # YAML reads `version: 1.0` as a float; treat it as the string it looks like.
        return (
            str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
        )


_MAX_KEY_CHARS = 64


def _unknown_key_message(loc: tuple[int | str, ...]) -> str:
    """``unknown key 'metod' (did you mean 'method'?); an action's keys are: ...``."""
    key = str(loc[-1])
    model: type[BaseModel] = _PluginConfig if len(loc) == 1 else _ActionConfig
    known = list(model.model_fields)
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    shown = key if len(key) <= _MAX_KEY_CHARS else key[:_MAX_KEY_CHARS] + "..."
    what = "a plugin" if model is _PluginConfig else "an action"
    return f"unknown key {shown!r}{hint}; the keys of {what} are: {', '.join(known)}"


def load_plugin(path_or_module: str | Path, *, fresh: bool = False) -> Plugin:
    """Load a plugin from a directory with ``config.yaml``, a ``.py`` file, or a module name.

    A directory's ``config.yaml`` is validated (errors name the file and field) and each
    action's entrypoint imported and checked to be a ``BaseAction`` subclass. A module or file
    plugin's actions are the ``BaseAction`` subclasses it defines, keyed by ``action_name``.

    A plugin's modules are imported once per process and reused by later loads. ``fresh=True``
    imports a directory or file plugin's modules again from disk, so edits since the first load
    take effect (a plugin named by module is ``importlib.reload``-ed, its submodules are not);
    classes from the earlier load keep working for whoever still holds them.
    """
    candidate = Path(path_or_module)
    if candidate.is_dir():
        directory = candidate.resolve()
        if fresh:
            _forget(_package_name(_config_code(directory), directory))
        return _load_directory(directory)
    if candidate.is_file() and candidate.suffix == ".py":
        path = candidate.resolve()
        if fresh:
            _forget(_package_name(path.stem, path))
        return _load_file(path)
    if isinstance(path_or_module, Path) or "/" in str(path_or_module):
        raise PluginNotFoundError(f"no plugin at '{path_or_module}': no such directory or file")
    try:
        with _import_lock:
            module = importlib.import_module(str(path_or_module))
            if fresh:
                module = importlib.reload(module)
    except ModuleNotFoundError as exc:
        raise PluginNotFoundError(
            f"no plugin '{path_or_module}': not a directory, .py file or importable module ({exc})"
        ) from exc
    return _plugin_from_module(module, code=module.__name__, path=_module_path(module))


def _forget(prefix: str) -> None:
    """Drop the modules of one plugin package from ``sys.modules`` (see ``fresh``)."""
    with _import_lock:
        for name in [n for n in sys.modules if n == prefix or n.startswith(prefix + ".")]:
            del sys.modules[name]
        # The import system caches directory listings: files added since would not be found.
        importlib.invalidate_caches()


def _config_code(directory: Path) -> str:
    """The ``code`` of a plugin directory's config, read without validating the rest."""
    try:
        raw = yaml.safe_load((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return ""  # _load_directory reports the problem with its file and field
    code = raw.get("code") if isinstance(raw, dict) else None
    return code if isinstance(code, str) else ""


def plugin_directories(dirs: Iterable[str | Path]) -> list[Path]:
    """The plugin directories in ``dirs``: each dir that has ``config.yaml``, else its subdirs
    that do (sorted). A dir that does not exist raises :class:`PluginNotFoundError`."""
    found: list[Path] = []
    for raw in dirs:
        root = Path(raw)
        if not root.is_dir():
            raise PluginNotFoundError(f"plugin directory '{root}' does not exist")
        if (root / CONFIG_FILE).is_file():
            found.append(root)
        else:
            found.extend(sorted(p for p in root.iterdir() if (p / CONFIG_FILE).is_file()))
    return found


def discover_plugins(dirs: Iterable[str | Path], *, fresh: bool = False) -> dict[str, Plugin]:
    """Load every plugin in ``dirs`` (see :func:`plugin_directories`).

    A malformed plugin raises (nothing is skipped silently); two plugins with the same code
    raise :class:`PluginConfigError` naming both. ``fresh`` is passed to :func:`load_plugin`.
    """
    found: dict[str, Plugin] = {}
    for directory in plugin_directories(dirs):
        plugin = load_plugin(directory, fresh=fresh)
        previous = found.get(plugin.code)
        if previous is not None:
            raise PluginConfigError(
                directory / CONFIG_FILE,
                "code",
                f"plugin code '{plugin.code}' is already used by {previous.path}",
            )
        found[plugin.code] = plugin
    return found


def unload_plugin(plugin: Plugin | str | Path) -> None:
    """Drop a directory or file plugin's modules from ``sys.modules``.

    ``plugin`` is a loaded :class:`Plugin` or the path it was (or failed to be) loaded from.
    Objects already created from those modules (classes, instances) keep working; the next
    load imports the modules again. A plugin named by module is left alone: its modules are
    ordinary ones, shared with whoever imported them.
    """
    if isinstance(plugin, Plugin):
        if plugin.module_prefix:
            _forget(plugin.module_prefix)
        elif plugin.path is not None and plugin.path.suffix == ".py":
            _forget(_package_name(plugin.path.stem, plugin.path))
        return
    candidate = Path(plugin).resolve()
    if candidate.is_dir():
        _forget(_package_name(_config_code(candidate), candidate))
    elif candidate.suffix == ".py":
        _forget(_package_name(candidate.stem, candidate))


def _load_directory(directory: Path) -> Plugin:
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise PluginNotFoundError(f"'{directory}' is not a plugin: it has no {CONFIG_FILE}")
    try:
        raw = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise PluginConfigError(config_path, "(document)", f"invalid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise PluginConfigError(config_path, "(document)", "expected a mapping at the top level")
    try:
        config = _PluginConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field_path = ".".join(str(part)[:_MAX_KEY_CHARS] for part in first["loc"]) or "(document)"
        more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
        message = (
            _unknown_key_message(first["loc"])
            if first["type"] == "extra_forbidden"
            else str(first["msg"])
        )
        raise PluginConfigError(config_path, field_path, f"{message}{more}") from None

    prefix = _package_name(config.code, directory)
    with _import_lock:
        if prefix not in sys.modules:
            spec = importlib.machinery.ModuleSpec(prefix, None, is_package=True)
            spec.submodule_search_locations = [str(directory)]
            package = importlib.util.module_from_spec(spec)
            sys.modules[prefix] = package
        actions: dict[str, ActionSpec] = {}
        for action_name, action_config in config.actions.items():
            field_name = f"actions.{action_name}.entrypoint"
            action_cls = _import_entrypoint(
                prefix, action_config.entrypoint, config_path, field_name
            )
            actions[action_name] = ActionSpec(
                name=action_name,
                entrypoint=action_config.entrypoint,
                method=action_config.method,
                description=action_config.description,
                action_class=action_cls,
            )
    logger.debug("loaded plugin %s from %s as %s", config.code, directory, prefix)
    return Plugin(
        code=config.code,
        name=config.name,
        version=config.version,
        category=config.category,
        path=directory,
        actions=actions,
        description=config.description,
        module_prefix=prefix,
    )


def _import_entrypoint(
    prefix: str, entrypoint: str, config_path: Path, field_name: str
) -> type[BaseAction[Any]]:
    if ":" in entrypoint:
        module_name, _, attr = entrypoint.partition(":")
    else:
        module_name, _, attr = entrypoint.rpartition(".")
    try:
        module = importlib.import_module(f"{prefix}.{module_name}")
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").removeprefix(prefix + ".")
        raise PluginConfigError(
            config_path, field_name, f"cannot import module '{module_name}' ({missing} not found)"
        ) from exc
    except Exception as exc:
        raise PluginConfigError(
            config_path,
            field_name,
            f"importing module '{module_name}' raised {type(exc).__name__}: {exc}",
        ) from exc
    target = getattr(module, attr, None)
    if target is None:
        raise PluginConfigError(
            config_path, field_name, f"module '{module_name}' has no attribute '{attr}'"
        )
    if not (inspect.isclass(target) and issubclass(target, BaseAction)):
        raise PluginConfigError(
            config_path, field_name, f"'{entrypoint}' is not a BaseAction subclass"
        )
    return target


def _load_file(path: Path) -> Plugin:
    name = _package_name(path.stem, path)
    with _import_lock:
        module = sys.modules.get(name)
        if module is None:
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None:
                raise PluginNotFoundError(f"cannot import '{path}' as a module")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
    return _plugin_from_module(module, code=path.stem, path=path)


def _plugin_from_module(module: ModuleType, code: str, path: Path | None) -> Plugin:
    actions: dict[str, ActionSpec] = {}
    for _, value in inspect.getmembers(module, inspect.isclass):
        if not issubclass(value, BaseAction) or value.__module__ != module.__name__:
            continue
        action_name = value.__dict__.get("action_name") or ""
        if not action_name:
            continue
        if action_name in actions:
            raise PluginConfigError(
                path or Path(module.__name__),
                "action_name",
                f"two classes declare action_name '{action_name}': "
                f"{actions[action_name].entrypoint} and {module.__name__}:{value.__name__}",
            )
        actions[action_name] = ActionSpec(
            name=action_name,
            entrypoint=f"{module.__name__}:{value.__name__}",
            description=(inspect.getdoc(value) or "").split("\n", 1)[0],
            action_class=value,
        )
    if not actions:
        raise PluginNotFoundError(
            f"module '{module.__name__}' defines no BaseAction subclass with an action_name"
        )
    categories = {spec.load().category for spec in actions.values()} - {None}
    category = next(iter(categories)) if len(categories) == 1 else None
    return Plugin(
        code=getattr(module, "PLUGIN_CODE", code),
        name=getattr(module, "PLUGIN_NAME", code),
        version=str(getattr(module, "__version__", "0.0.0")),
        category=PluginCategory(category) if category is not None else None,
        path=path,
        actions=actions,
        description=(inspect.getdoc(module) or "").split("\n", 1)[0],
        module_prefix="",
    )


def _module_path(module: ModuleType) -> Path | None:
    file = getattr(module, "__file__", None)
    return Path(file) if file else None


def _package_name(code: str, location: Path) -> str:
    digest = hashlib.sha256(str(location).encode("utf-8")).hexdigest()[:12]
    safe = re.sub(r"\W", "_", code)
    return f"_synapse_plugin_{safe}_{digest}"
