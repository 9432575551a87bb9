"""Plugin manager: entry-point group ``mpcore``, an allow-list, validation, and the registry.

``MPCORE_PLUGINS`` (comma-separated entry-point names) restricts which installed plugins load;
unset loads all, empty loads none. A plugin that raises on import, or implements a hook that
:mod:`mpcore.hookspecs` does not define, is reported by name and the rest still load.
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
}


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
    _state = state
    return state


def registry(kind: str, state: PluginState | None = None) -> dict[str, Registered]:
    """Name -> Registered for one kind (a key of :data:`KINDS`); first registration wins."""
    state = state or load_plugins()
    found: dict[str, Registered] = {}
    hook = getattr(state.manager.hook, KINDS[kind])
    for impl in hook.get_hookimpls():  # pluggy keeps them in registration order
        plugin_name = state.manager.get_name(impl.plugin)
        dist, version = state.sources.get(plugin_name, (None, None))

        def register(spec: Any, _plugin=plugin_name, _dist=dist, _version=version) -> None:
            if spec.name not in found:
                found[spec.name] = Registered(spec, _plugin, _dist, _version)

        impl.function(register=register)
    return found


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
