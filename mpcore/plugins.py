"""Plugin manager: entry-point group ``mpcore``, an allow-list, validation, and the registry.

``MPCORE_PLUGINS`` (comma-separated entry-point names) restricts which installed plugins load;
unset loads all, empty loads none; a name there that is not installed is reported as failed. A
plugin that raises on import, implements a hook that :mod:`mpcore.hookspecs` does not define, or
whose ``register_*`` hook raises, is reported by name (``failed``) and the rest still load. Two
plugins registering the same name give a warning naming both distributions and the one used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from mpcore import hookspecs

ENTRY_POINT_GROUP = "mpcore"
ALLOW_ENV = "MPCORE_PLUGINS"
KINDS = {
    "backbone": "register_backbones",
    "flow": "register_flow_estimators",
    "discriminator": "register_discriminators",
    "metric": "register_metrics",
    "guidance": "register_guidances",
}
BUILTIN_PLUGIN = "mpcore"
"""Name of mpcore's own plugin (MotionPrompt's guidance registration, :mod:`mpcore.builtin`): always loaded,
whatever ``MPCORE_PLUGINS`` says, as the first plugin (a third-party name clash warns and MotionPrompt wins)."""


@dataclass
class Registered:
    spec: Any
    plugin: str
    distribution: str | None
    version: str | None


@dataclass
class PluginState:
    manager: pluggy.PluginManager
    failed: dict[str, str] = field(default_factory=dict)
    """Plugin name -> error message of plugins that could not load."""
    sources: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    """Plugin name -> (distribution, version)."""
    warnings: list[str] = field(default_factory=list)
    """Duplicate registrations (which one is used)."""


_state: PluginState | None = None


def _new_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager("mpcore")
    manager.add_hookspecs(hookspecs)
    return manager


def register_plugin(state: PluginState, plugin: object, name: str, dist: str | None = None, version: str | None = None) -> bool:
    """Register one plugin object; reject it (and record why) if it has unknown or invalid hooks."""
    try:
        state.manager.register(plugin, name=name)
        state.manager.check_pending()
    except pluggy.PluginValidationError as error:
        if state.manager.is_registered(plugin):
            state.manager.unregister(plugin)
        state.failed[name] = f"invalid hook implementation: {error}"
        return False
    state.sources[name] = (dist, version)
    return True


def load_plugins(reload: bool = False) -> PluginState:
    """Load (once) every allowed entry point of the ``mpcore`` group."""
    global _state
    if _state is not None and not reload:
        return _state
    state = PluginState(_new_manager())
    allow = os.environ.get(ALLOW_ENV)
    allowed = None if allow is None else {n.strip() for n in allow.split(",") if n.strip()}
    from mpcore import builtin

    try:
        own_version = metadata.version("mpcore")
    except metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
        own_version = None
    register_plugin(state, builtin, BUILTIN_PLUGIN, "mpcore", own_version)
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if allowed is not None and entry_point.name not in allowed:
            continue
        dist = entry_point.dist.name if entry_point.dist else None
        version = entry_point.dist.version if entry_point.dist else None
        try:
            module = entry_point.load()
        except Exception as error:  # a broken plugin must not take the others down
            state.failed[entry_point.name] = f"{type(error).__name__}: {error}"
            continue
        register_plugin(state, module, entry_point.name, dist, version)
    if allowed is not None:
        installed = {entry_point.name for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP)}
        for name in sorted(allowed - installed):
            state.failed[name] = (f"named in {ALLOW_ENV} but not installed (installed plugins: "
                                  f"{', '.join(sorted(installed)) or 'none'})")
    for kind in KINDS:  # run every register hook once now: a raising plugin is dropped and reported
        registry(kind, state)
    state.warnings = _duplicates(state)
    _state = state
    return state


def _call_hook(state: PluginState, impl: Any, hook_name: str, **kwargs: Any) -> bool:
    """Call one plugin's hook; if it raises, unregister that plugin and record why (False)."""
    plugin_name = state.manager.get_name(impl.plugin)
    try:
        impl.function(**kwargs)
    except Exception as error:  # a broken plugin must not take the others down
        state.failed[plugin_name] = f"{hook_name} raised {type(error).__name__}: {error}"
        state.manager.unregister(impl.plugin)
        return False
    return True


def registry(kind: str, state: PluginState | None = None) -> dict[str, Registered]:
    """Name -> Registered for one kind (a key of :data:`KINDS`); first registration wins."""
    return {name: found[0] for name, found in _registrations(kind, state or load_plugins()).items()}


def _registrations(kind: str, state: PluginState) -> dict[str, list[Registered]]:
    """Name -> every registration of that name, in plugin registration order."""
    found: dict[str, list[Registered]] = {}
    hook = getattr(state.manager.hook, KINDS[kind])
    for impl in hook.get_hookimpls():  # pluggy keeps them in registration order
        plugin_name = state.manager.get_name(impl.plugin)
        dist, version = state.sources.get(plugin_name, (None, None))
        mine: list[Registered] = []

        def register(spec: Any, _plugin=plugin_name, _dist=dist, _version=version, _mine=mine) -> None:
            _mine.append(Registered(spec, _plugin, _dist, _version))

        if _call_hook(state, impl, KINDS[kind], register=register):  # a raising hook adds nothing
            for item in mine:
                found.setdefault(item.spec.name, []).append(item)
    return found


def _duplicates(state: PluginState) -> list[str]:
    """One warning per name registered by more than one plugin: who registers it and who wins."""
    warnings = []
    for kind in KINDS:
        for name, found in _registrations(kind, state).items():
            if len(found) > 1:
                owners = [f"plugin {item.plugin} " + (f"from {item.distribution}" if item.distribution else "(in-process)")
                          for item in found]
                warnings.append(f"{kind} {name!r} is registered by {' and '.join(owners)}; using {owners[0]}")
    return warnings


def register_commands(state: PluginState, cli: Any) -> dict[str, str]:
    """Let every plugin add its commands to the click group ``cli``; one whose hook raises is dropped and
    reported. Returns command name -> the plugin that added it."""
    added: dict[str, str] = {}
    for impl in state.manager.hook.register_commands.get_hookimpls():
        before = set(cli.commands)
        if _call_hook(state, impl, "register_commands", cli=cli):
            added.update({name: state.manager.get_name(impl.plugin) for name in set(cli.commands) - before})
    return added


def get(kind: str, name: str) -> Registered:
    """The registered spec of ``kind`` called ``name``, or an error listing the installed ones."""
    found = registry(kind)
    if name not in found:
        installed = ", ".join(sorted(found)) or "none"
        state = load_plugins()
        hint = ""
        if state.failed:
            hint = "; plugins that failed to load: " + ", ".join(f"{k} ({v})" for k, v in state.failed.items())
        raise UnknownPluginError(
            f"unknown {kind} {name!r}; installed: {installed}{hint}. "
            f"Install a plugin that provides it (pip install mp-plugin-...), or check {ALLOW_ENV}."
        )
    return found[name]


class UnknownPluginError(LookupError):
    pass
