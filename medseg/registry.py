"""A small generic registry: names -> builder functions, with lazy plugin loading.

Third-party packages add entries through the entry-point group given to the
registry (``medseg.models`` for models). The entry point's name is the entry's
name and its object a builder callable::

    [project.entry-points."medseg.models"]
    my_net = "my_pkg.nets:build_my_net"

(the builder's docstring's first line becomes the description; an optional
``medseg_tags`` dict attribute on it gives tags such as ``dims`` and
``divisor``). An entry point may instead name a module that registers its
builders with the decorator on import. Nothing is imported until a name is
asked for or the list is requested, and listing never builds anything. A plugin
that fails to load is logged and remembered by name (``failed``); asking for it
says why. Importable without torch.
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
from dataclasses import dataclass, field
from typing import Callable, Generic, TypeVar

from medseg.errors import UnknownComponentError

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    builder: Callable[..., T]
    description: str = ""
    tags: dict = field(default_factory=dict)


class Registry(Generic[T]):
    def __init__(self, kind: str, entry_point_group: str | None = None):
        self.kind = kind
        self.group = entry_point_group
        self._entries: dict[str, Entry[T]] = {}
        self._plugins_loaded = False
        self.failed: dict[str, str] = {}  # plugin name -> why it could not be loaded

    def register(self, name: str, *, description: str = "", **tags) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: ``@MODELS.register("unet", description=...)``. A duplicate name raises."""

        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered (by {self._entries[name].builder.__module__})")
            self._entries[name] = Entry(name, fn, description, dict(tags))
            return fn

        return deco

    def _load_plugins(self) -> None:
        if self._plugins_loaded or not self.group:
            return
        self._plugins_loaded = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=self.group):
            try:
                obj = ep.load()
                if callable(obj) and not any(e.builder is obj for e in self._entries.values()):
                    doc = (obj.__doc__ or "").strip().splitlines()
                    tags = getattr(obj, "medseg_tags", None)
                    self.register(ep.name, description=doc[0] if doc else f"plugin {ep.value}", **(tags if isinstance(tags, dict) else {}))(obj)
            except Exception as exc:  # a broken plugin must not break the others
                self.failed[ep.name] = f"{type(exc).__name__}: {exc}"
                log.warning("could not load %s plugin %r (%s): %s", self.kind, ep.name, ep.value, self.failed[ep.name])

    def reload_plugins(self) -> None:
        """Scan the entry-point group again (after installing a plugin in a running process)."""
        self._plugins_loaded = False
        self._load_plugins()

    def unregister(self, name: str) -> None:
        """Remove an entry (tests, interactive use); unknown names are ignored."""
        self._entries.pop(name, None)
        self.failed.pop(name, None)

    def names(self, pattern: str | None = None) -> list[str]:
        self._load_plugins()
        names = sorted(self._entries)
        return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names

    def get(self, name: str) -> Entry[T]:
        self._load_plugins()
        try:
            return self._entries[name]
        except KeyError:
            if name in self.failed:
                raise UnknownComponentError(f"{self.kind} plugin {name!r} is installed but failed to load: {self.failed[name]}") from None
            close = difflib.get_close_matches(name, list(self._entries), n=3)
            hint = f"did you mean {', '.join(close)}?" if close else f"available: {', '.join(sorted(self._entries))}"
            raise UnknownComponentError(f"unknown {self.kind} {name!r}; {hint}") from None

    def __contains__(self, name: str) -> bool:
        self._load_plugins()
        return name in self._entries
