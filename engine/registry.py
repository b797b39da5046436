"""Name → object registries filled by plugins.

A registry never overwrites: two plugins claiming one name is a packaging bug that would
otherwise surface as "my pass silently does something else", so it is refused with both
origins named. Lookups of unknown names suggest the closest registered one.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from .errors import PluginError, RecipeError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered object and the plugin it came from."""

    name: str
    obj: T
    origin: str


class Registry(Generic[T]):
    """Registered objects of one kind (``pass``, ``backend``, ...), keyed by name."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, obj: T, *, origin: str = "<direct>") -> None:
        if name in self._entries:
            first = self._entries[name].origin
            raise PluginError(
                f"{self.kind} {name!r} is registered twice: by {first} and by {origin}",
                fix=f"uninstall one of the two plugins, or rename the {self.kind} in one of them",
            )
        self._entries[name] = Entry(name, obj, origin)

    def drop_origin(self, origin: str) -> None:
        """Forget everything one plugin registered."""
        self._entries = {n: e for n, e in self._entries.items() if e.origin != origin}

    def registrar(self, origin: str) -> Registrar[T]:
        """The handle a plugin's ``fxopt_register_*`` hook receives, stamped with its origin."""
        return Registrar(self, origin)

    def get(self, name: str, *, file: str | None = None, field: str | None = None) -> T:
        return self.entry(name, file=file, field=field).obj

    def entry(self, name: str, *, file: str | None = None, field: str | None = None) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise RecipeError(
                f"unknown {self.kind} {name!r}{self.suggestion(name)}",
                file=file,
                field=field,
                fix=f"`optimize passes` lists every registered {self.kind}",
            ) from None

    def suggestion(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self._entries), n=1, cutoff=0.5)
        if close:
            return f"; did you mean {close[0]!r}?"
        known = ", ".join(sorted(self._entries)) or "none"
        return f" (registered: {known})"

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return sorted(self._entries)


@dataclass(frozen=True)
class Registrar(Generic[T]):
    """A registry seen from one plugin: everything it registers records that plugin."""

    registry: Registry[T]
    origin: str

    def register(self, name: str, obj: T) -> None:
        self.registry.register(name, obj, origin=self.origin)
