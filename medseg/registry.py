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
    spec: object = None  # the typed metadata, for registries that have a ``spec_type``


class Registry(Generic[T]):
    """Names -> builders. ``spec_type`` (a dataclass) types the metadata given at registration:
    an unknown key or a wrong value is an error at import time, not a silent tag."""

    def __init__(self, kind: str, entry_point_group: str | None = None, *, spec_type: type | None = None):
        self.kind = kind
        self.group = entry_point_group
        self.spec_type = spec_type
        self._entries: dict[str, Entry[T]] = {}
        self._aliases: dict[str, str] = {}  # old name -> current name
        self._plugins_loaded = False
        self.failed: dict[str, str] = {}  # plugin name -> why it could not be loaded

    def register(
        self, name: str, *, description: str = "", aliases: tuple[str, ...] = (), **tags
    ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: ``@MODELS.register("unet", description=...)``. A duplicate name raises.

        ``aliases``: former names of this entry (a checkpoint saved under an old name still loads)."""

        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries or name in self._aliases:
                owner = (
                    self._entries[name].builder.__module__
                    if name in self._entries
                    else f"alias of {self._aliases[name]!r}"
                )
                raise ValueError(f"{self.kind} {name!r} is already registered (by {owner})")
            spec = None
            if self.spec_type is not None:
                try:
                    spec = self.spec_type(**tags)
                except TypeError as exc:
                    raise ValueError(f"{self.kind} {name!r}: {exc}") from None
                tags_d = {k: getattr(spec, k) for k in tags}
            else:
                tags_d = dict(tags)
            self._entries[name] = Entry(name, fn, description, tags_d, spec)
            for old in aliases:
                self.alias(old, name)
            return fn

        return deco

    def alias(self, old: str, new: str) -> None:
        """Let ``old`` (a renamed entry's former name) resolve to ``new``; a taken name raises."""
        if old in self._entries or (old in self._aliases and self._aliases[old] != new):
            raise ValueError(f"{self.kind} alias {old!r} is already taken")
        self._aliases[old] = new

    def remove_alias(self, old: str) -> None:
        self._aliases.pop(old, None)

    def resolve(self, name: str) -> str:
        """The current name for ``name`` (itself, or what an alias points to)."""
        self._load_plugins()
        return self._aliases.get(name, name) if name not in self._entries else name

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
                    self.register(
                        ep.name,
                        description=doc[0] if doc else f"plugin {ep.value}",
                        **(tags if isinstance(tags, dict) else {}),
                    )(obj)
            except Exception as exc:  # a broken plugin must not break the others
                self.failed[ep.name] = f"{type(exc).__name__}: {exc}"
                log.warning("could not load %s plugin %r (%s): %s", self.kind, ep.name, ep.value, self.failed[ep.name])

    def reload_plugins(self) -> None:
        """Scan the entry-point group again (after installing a plugin in a running process)."""
        self._plugins_loaded = False
        self._load_plugins()

    def unregister(self, name: str) -> None:
        """Remove an entry and its aliases (tests, interactive use); unknown names are ignored."""
        self._entries.pop(name, None)
        self.failed.pop(name, None)
        for old in [a for a, n in self._aliases.items() if n == name or a == name]:
            del self._aliases[old]

    def names(self, pattern: str | None = None) -> list[str]:
        self._load_plugins()
        names = sorted(self._entries)
        return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names

    def get(self, name: str) -> Entry[T]:
        self._load_plugins()
        if name not in self._entries and name in self._aliases:
            log.info("%s %r was renamed %r", self.kind, name, self._aliases[name])
            name = self._aliases[name]
        try:
            return self._entries[name]
        except KeyError:
            if name in self.failed:
                raise UnknownComponentError(
                    f"{self.kind} plugin {name!r} is installed but failed to load: {self.failed[name]}"
                ) from None
            close = difflib.get_close_matches(name, list(self._entries), n=3)
            hint = f"did you mean {', '.join(close)}?" if close else f"available: {', '.join(sorted(self._entries))}"
            raise UnknownComponentError(f"unknown {self.kind} {name!r}; {hint}") from None

    def __contains__(self, name: str) -> bool:
        self._load_plugins()
        return name in self._entries or name in self._aliases
