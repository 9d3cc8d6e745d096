"""YAML for files and values users hand to medseg: plain data, bounded in size.

``yaml.safe_load`` refuses code but not expansion: nine nested aliases in a
507-byte pipeline file (a "billion laughs") expand to 4-6 GB. Configs,
pipelines, label tables and ``--set`` values never need aliases, so this
loader refuses them (and merge keys ``<<: *x``, which are aliases) outright,
and it bounds the input's size, its number of nodes and its nesting depth.
Every limit breach is a ``ConfigError`` (one line, exit 2); a syntax error is
still a ``yaml.YAMLError`` for the caller to word.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from yaml.events import AliasEvent

from medseg.errors import ConfigError

MAX_BYTES = 4 * 2**20  # the largest shipped file is a few kB
MAX_NODES = 200_000
MAX_DEPTH = 64


class UnsafeYAMLError(ConfigError):
    """The YAML uses aliases or exceeds a size limit."""


class SafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` without aliases, with node-count and depth limits."""

    def __init__(self, stream):
        super().__init__(stream)
        self._nodes = 0
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(AliasEvent):
            mark = self.peek_event().start_mark
            raise UnsafeYAMLError(f"YAML aliases (*name) are not allowed (line {mark.line + 1}); write the values out")
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise UnsafeYAMLError(f"YAML has more than {MAX_NODES} values")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise UnsafeYAMLError(f"YAML is nested more than {MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load(text: str | bytes, *, source: str | Path | None = None):
    """Parse one YAML document of plain data; ``source`` names the file in errors."""
    if len(text) > MAX_BYTES:
        raise UnsafeYAMLError(f"YAML is larger than {MAX_BYTES // 2**20} MiB", path=source)
    loader = SafeLoader(text)
    try:
        return loader.get_single_data()
    except UnsafeYAMLError as exc:
        if source is not None and exc.path is None:
            raise UnsafeYAMLError(str(exc), path=source) from None
        raise
    finally:
        loader.dispose()


def read_bounded(path: str | Path, *, kind: str, too_large: type[ConfigError], error: type = ConfigError) -> bytes:
    """The bytes of a user's file, refusing one larger than ``MAX_BYTES`` before reading it (one line, ``too_large``);
    an OS error is one line too (``error``). Shared by the YAML and JSON readers."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise error(f"cannot read ({exc.strerror or exc})", path=p) from None
    if size > MAX_BYTES:
        raise too_large(f"{kind} is larger than {MAX_BYTES // 2**20} MiB", path=p)
    try:
        return p.read_bytes()
    except OSError as exc:
        raise error(f"cannot read ({exc.strerror or exc})", path=p) from None


def load_file(path: str | Path):
    """Read and parse a YAML file, refusing one larger than ``MAX_BYTES`` before reading it."""
    data = read_bounded(path, kind="YAML", too_large=UnsafeYAMLError)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", path=Path(path)) from None
    return load(text, source=Path(path))
