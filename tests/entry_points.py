"""Plugins installed for one test: entry points added to the group, as a package would."""

from __future__ import annotations

import importlib.metadata as md

from fxopt.engine import plugin_host


def with_entry_points(monkeypatch, **plugins: str) -> None:
    """Add entry points (name -> module) to the group, as an installed package would."""
    real = md.entry_points

    def entry_points(**kwargs):
        found = list(real(**kwargs))
        if kwargs.get("group") == plugin_host.ENTRY_POINT_GROUP:
            found += [
                md.EntryPoint(name, value, plugin_host.ENTRY_POINT_GROUP)
                for name, value in plugins.items()
            ]
        return found

    monkeypatch.setattr(plugin_host.md, "entry_points", entry_points)
