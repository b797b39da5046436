"""Finding plugins, loading them in isolation, and filling the registries.

Plugins come from the entry-point group ``fxopt.plugins``. Each is imported on its own: one
that raises at import is recorded (name, distribution, error) and the rest load normally, so a
broken third-party package only matters to a recipe that needs what it would have provided.
"""

from __future__ import annotations

import importlib.metadata as md
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .registry import Registry

ENTRY_POINT_GROUP = "fxopt.plugins"


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be imported."""

    name: str
    distribution: str
    error: str


@dataclass
class PluginHost:
    """The plugin manager and the registries its plugins filled."""

    pm: pluggy.PluginManager
    passes: Registry = field(default_factory=lambda: Registry("pass"))
    backends: Registry = field(default_factory=lambda: Registry("backend"))
    loaders: Registry = field(default_factory=lambda: Registry("loader"))
    datasets: Registry = field(default_factory=lambda: Registry("dataset"))
    attacks: Registry = field(default_factory=lambda: Registry("attack"))
    failures: list[PluginFailure] = field(default_factory=list)
    origins: dict[str, str] = field(default_factory=dict)

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
        return {
            "passes": self.passes,
            "backends": self.backends,
            "loaders": self.loaders,
            "datasets": self.datasets,
            "attacks": self.attacks,
        }

    def failure_hint(self) -> str:
        """A sentence naming plugins that failed to import, for "unknown name" errors."""
        if not self.failures:
            return ""
        names = ", ".join(f"{f.name} ({f.distribution}: {f.error})" for f in self.failures)
        return f"; plugins that failed to import: {names}"

    def _collect(self, plugin_name: str) -> None:
        plugin = self.pm.get_plugin(plugin_name)
        origin = self.origins[plugin_name]
        hooks = {
            "fxopt_register_passes": self.passes,
            "fxopt_register_backends": self.backends,
            "fxopt_register_loaders": self.loaders,
            "fxopt_register_datasets": self.datasets,
            "fxopt_register_attacks": self.attacks,
        }
        for hook_name, registry in hooks.items():
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                if impl.plugin is plugin:
                    impl.function(registry=registry.registrar(origin))


def load_plugins(*, entry_points: bool = True) -> PluginHost:
    """Create a host and load every plugin of the ``fxopt.plugins`` entry-point group."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    host = PluginHost(pm)
    if entry_points:
        for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=_builtin_first):
            dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist else "unknown distribution"
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken plugin must not take the others down
                host.failures.append(PluginFailure(ep.name, dist, f"{type(exc).__name__}: {exc}"))
                continue
            if host.pm.is_registered(plugin):
                continue
            name = ep.name if host.pm.get_plugin(ep.name) is None else f"{dist}:{ep.name}"
            host.register(plugin, name=name, origin=f"{dist} [{ep.name}]")
    return host


def _builtin_first(ep: md.EntryPoint) -> tuple[int, str]:
    """Built-ins load first, so a clash is reported against the third-party plugin."""
    is_builtin = ep.dist is not None and ep.dist.name == "fxopt"
    return (0 if is_builtin else 1, ep.name)
