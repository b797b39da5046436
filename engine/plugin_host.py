"""Finding plugins, loading them in isolation, and filling the registries.

Plugins come from the entry-point group ``fxopt.plugins``. Each is imported on its own: one
that raises at import is recorded (name, distribution, error) and the rest load normally, so a
broken third-party package only matters to a recipe that needs what it would have provided.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError
from .registry import Registry

ENTRY_POINT_GROUP = "fxopt.plugins"


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be imported."""

    name: str
    distribution: str
    error: str


#: the engine's own extension points: registry name → (what it holds, the hook filling it)
CORE_REGISTRIES = {
    "passes": ("pass", "fxopt_register_passes"),
    "backends": ("backend", "fxopt_register_backends"),
    "loaders": ("loader", "fxopt_register_loaders"),
    "datasets": ("dataset", "fxopt_register_datasets"),
    "tasks": ("task", "fxopt_register_tasks"),
}


@dataclass
class PluginHost:
    """The plugin manager and the registries its plugins filled.

    The engine declares its own registries (:data:`CORE_REGISTRIES`); a package that owns an
    extension point (prune's layer pruners, quantize's observers, finetune's attacks) adds its
    hooks and registry from its ``fxopt_add_hookspecs`` hook, as pytest plugins do with
    ``pytest_addhooks``, so no extension point needs an edit of the engine. A registry is an
    attribute too: ``host.passes``, ``host.attacks``.
    """

    pm: pluggy.PluginManager
    failures: list[PluginFailure] = field(default_factory=list)
    origins: dict[str, str] = field(default_factory=dict)
    tracing: bool = False
    _registries: dict[str, Registry] = field(default_factory=dict)
    #: hook name → the registry its implementations fill
    _fillers: dict[str, Registry] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, (kind, hook) in CORE_REGISTRIES.items():
            self.add_registry(name, kind, hook)

    def __getattr__(self, name: str) -> Registry:
        registries = self.__dict__.get("_registries", {})
        if name in registries:
            return registries[name]
        raise AttributeError(
            f"no registry {name!r} (registries: {', '.join(registries)}; a package adds one "
            "from its fxopt_add_hookspecs hook)"
        )

    def add_hookspecs(self, module: Any) -> None:
        """Add a package's hook specifications (its ``fxopt_*`` functions)."""
        self.pm.add_hookspecs(module)

    def add_registry(self, name: str, kind: str, hook: str) -> Registry:
        """Declare a registry filled by ``hook``; plugins already registered fill it now."""
        if name in self._registries:
            return self._registries[name]
        registry = Registry(kind)
        self._registries[name] = registry
        self._fillers[hook] = registry
        for plugin_name in list(self.origins):
            self._fill(plugin_name, hook, registry)
        return registry

    def register(self, plugin: Any, name: str, origin: str | None = None) -> None:
        """Register one plugin object and let it fill the registries."""
        self.pm.register(plugin, name=name)
        self.origins[name] = origin or name
        self._collect(name)

    def unregister(self, name: str) -> None:
        """Drop a plugin and everything it registered (used by tests and ``--plugin``)."""
        self.pm.unregister(name=name)
        origin = self.origins.pop(name)
        for registry in self.registries().values():
            registry.drop_origin(origin)

    def registries(self) -> dict[str, Registry]:
        return dict(self._registries)

    def failure_hint(self) -> str:
        """A sentence naming plugins that failed to import, for "unknown name" errors."""
        if not self.failures:
            return ""
        names = ", ".join(f"{f.name} ({f.distribution}: {f.error})" for f in self.failures)
        return f"; plugins that failed to import: {names}"

    def _collect(self, plugin_name: str) -> None:
        known = dict(self._fillers)
        # a registry this plugin adds is filled by every registered plugin, itself included
        self._call(plugin_name, "fxopt_add_hookspecs", host=self)
        for hook_name, registry in known.items():
            self._fill(plugin_name, hook_name, registry)

    def _fill(self, plugin_name: str, hook_name: str, registry: Registry) -> None:
        origin = self.origins[plugin_name]
        self._call(plugin_name, hook_name, registry=registry.registrar(origin))

    def _call(self, plugin_name: str, hook_name: str, **kwargs: Any) -> None:
        plugin = self.pm.get_plugin(plugin_name)
        caller = getattr(self.pm.hook, hook_name, None)
        if caller is None:
            return
        for impl in caller.get_hookimpls():
            if impl.plugin is plugin:
                if self.tracing:
                    sys.stderr.write(f"fxopt plugins: {hook_name} [{plugin_name}]\n")
                impl.function(**kwargs)


def load_plugins(*, entry_points: bool = True, only: Sequence[str] | None = None) -> PluginHost:
    """Create a host and load the plugins of the ``fxopt.plugins`` entry-point group.

    With ``FXOPT_DISABLE_PLUGIN_AUTOLOAD=1`` only fxopt's built-ins and the plugins named in
    ``only`` (``--plugin NAME``, like pytest's ``-p``) load; ``FXOPT_TRACE_PLUGINS=1``
    traces every hook call on stderr.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    host = PluginHost(pm)
    if os.environ.get("FXOPT_TRACE_PLUGINS") == "1":
        pm.trace.root.setwriter(lambda text: sys.stderr.write(f"fxopt plugins: {text}"))
        pm.enable_tracing()
        host.tracing = True
    if not entry_points:
        return host
    autoload = os.environ.get("FXOPT_DISABLE_PLUGIN_AUTOLOAD") != "1"
    wanted = set(only or ())
    found = sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=_builtin_first)
    unknown = wanted - {ep.name for ep in found}
    if unknown:
        raise PluginError(
            f"no installed plugin is named {', '.join(sorted(unknown))}",
            field="--plugin",
            fix=f"installed plugins: {', '.join(ep.name for ep in found)}",
        )
    for ep in found:
        if not (autoload or _is_builtin(ep) or ep.name in wanted):
            continue
        _load_one(host, ep)
    return host


def _load_one(host: PluginHost, ep: md.EntryPoint) -> None:
    """Import and register one plugin; any failure is recorded, not raised (clashes are)."""
    dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist else "unknown distribution"

    def fail(message: str) -> None:
        host.failures.append(PluginFailure(ep.name, dist, message))

    try:
        plugin = ep.load()
    except Exception as exc:  # a broken plugin must not take the others down
        return fail(f"{type(exc).__name__}: {exc}")
    if host.pm.is_registered(plugin):
        return None
    wanted = getattr(plugin, "FXOPT_HOOKSPEC_VERSION", hookspecs.HOOKSPEC_VERSION)
    if wanted != hookspecs.HOOKSPEC_VERSION:
        return fail(
            f"built for hookspec version {wanted}, this fxopt has version "
            f"{hookspecs.HOOKSPEC_VERSION}; install a release of the plugin made for it"
        )
    name = ep.name if host.pm.get_plugin(ep.name) is None else f"{dist}:{ep.name}"
    try:
        host.register(plugin, name=name, origin=f"{dist} [{ep.name}]")
        host.pm.check_pending()
    except pluggy.PluginValidationError as exc:
        with contextlib.suppress(ValueError, KeyError):
            host.unregister(name)
        return fail(
            f"its hooks do not match this fxopt's hookspecs (built for another version?): {exc}"
        )
    except PluginError:
        raise
    except Exception as exc:
        with contextlib.suppress(ValueError):
            host.unregister(name)
        return fail(f"its registration hook raised {type(exc).__name__}: {exc}")
    return None


def _is_builtin(ep: md.EntryPoint) -> bool:
    return ep.dist is not None and ep.dist.name == "fxopt"


def _builtin_first(ep: md.EntryPoint) -> tuple[int, str]:
    """Built-ins load first, so a clash is reported against the third-party plugin."""
    return (0 if _is_builtin(ep) else 1, ep.name)
