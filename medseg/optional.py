"""The one way medseg imports an optional third-party package: at the top of the module, loaded on first use.

>>> ray = optional_import("ray", extra="ray", purpose="the Ray engine")   # at module top; nothing imported yet
>>> ray.init(...)                                                          # imported here, or one line:
OptionalDependencyError: the Ray engine needs ray; install it with: pip install 'medseg[ray]'

In the spirit of MONAI's ``monai.utils.optional_import``: the dependency is written where a reader looks for
it (the top of the file) and a missing package is one line with the install command, raised where the
package is first used (so ``medseg --help`` and commands that do not need it never pay for it).
``available(name)`` asks without importing. Own modules (``medseg.*``) are never imported through this
helper: they are imported at the top of the file, in the order written in ``.importlinter``.
"""

from __future__ import annotations

import importlib
import importlib.util
import types

from medseg.errors import OptionalDependencyError

__all__ = ["optional_import", "available"]


class _Deferred(types.ModuleType):
    """A module that imports ``name`` on its first attribute access (then behaves as that module)."""

    def __init__(self, name: str, hint: str):
        super().__init__(name)
        self.__dict__["_medseg_hint"] = hint
        self.__dict__["_medseg_module"] = None

    def _load(self):
        mod = self.__dict__["_medseg_module"]
        if mod is None:
            try:
                mod = importlib.import_module(self.__name__)
            except ImportError as e:
                raise OptionalDependencyError(self.__dict__["_medseg_hint"]) from e
            self.__dict__["_medseg_module"] = mod
        return mod

    def __getattr__(self, attr: str):
        return getattr(self._load(), attr)

    def __dir__(self):
        return dir(self._load())

    def __repr__(self) -> str:
        state = "loaded" if self.__dict__["_medseg_module"] is not None else "not loaded yet"
        return f"<optional module {self.__name__!r} ({state})>"


def optional_import(name: str, *, extra: str | None = None, purpose: str | None = None, pip: str | None = None):
    """``name`` as a module object that is imported when first used.

    ``extra``: the medseg extra that installs it (``pip install 'medseg[EXTRA]'``); ``pip``: the pip
    requirement when no extra does; ``purpose``: what needs it, for the one-line error.
    """
    top = name.split(".")[0]
    install = f"pip install 'medseg[{extra}]'" if extra else f"pip install '{pip or top}'"
    hint = f"{purpose or 'this'} needs {top}; install it with: {install}"
    return _Deferred(name, hint)


def available(name: str) -> bool:
    """Whether ``name`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False
