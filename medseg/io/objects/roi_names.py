"""ROI names as hospitals write them -> structures of a label table.

Clinicians and planning systems name one structure in many ways: ``Lt Lung``,
``Lung_L``, ``LUNG LEFT``, ``lung_left``. Names are compared by a *key*
(``name_key``): lower case, punctuation dropped, CamelCase and digits split
into words, side words unified (``l``/``lt``/``left``/``sin`` -> ``left``,
``r``/``rt``/``right``/``dx`` -> ``right``), word order ignored. Names whose
words differ (``External`` for ``body``) come from the synonyms file
``medseg/resources/roi_synonyms.yaml`` (canonical name -> variants), read with
``importlib.resources`` so it ships with the package; pass ``synonyms=`` to use
another mapping.

A name matches a table structure when its key equals the key of the
structure's name or of one of that structure's synonyms. Anything else is
*unmapped* and reported by the callers, never guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

from medseg import safe_yaml
from medseg.errors import ConfigError
from medseg.labels import Label, LabelTable

_SIDE = {
    "l": "left",
    "lt": "left",
    "left": "left",
    "sin": "left",
    "links": "left",
    "gauche": "left",
    "r": "right",
    "rt": "right",
    "right": "right",
    "dx": "right",
    "rechts": "right",
    "droit": "right",
}
SYNONYMS_RESOURCE = "resources/roi_synonyms.yaml"


def name_key(name: str) -> str:
    """The comparison key of a ROI or structure name (see the module docstring)."""
    s = re.sub(r"([a-z])([A-Z])", r"\1 \2", str(name))  # CamelCase -> words
    s = re.sub(r"([A-Za-z])(\d)|(\d)([A-Za-z])", lambda m: " ".join(g for g in m.groups() if g), s)
    words = [w for w in re.split(r"[^0-9a-z]+", s.lower()) if w]
    return " ".join(sorted(_SIDE.get(w, w) for w in words))


def usable_name(name: str, number: int, what: str = "ROI") -> str:
    """``name``, or ``'unnamed ROI <number>'`` when it has no letter or digit (``''``, ``'..'``, ``'***'``).

    Such a name has an empty key: it would become a structure ``roi`` that no ROI matches, and its contours
    would be lost. Callers record a finding when the name is replaced.
    """
    return str(name) if name_key(name) else f"unnamed {what} {number}"


def snake_name(name: str) -> str:
    """A structure name for an unknown ROI name: lower-case snake case (``'GTV 1'`` -> ``'gtv_1'``)."""
    s = re.sub(r"[^0-9a-z]+", "_", str(name).strip().lower()).strip("_")
    return s or "roi"


@lru_cache(maxsize=1)
def default_synonyms() -> dict[str, tuple[str, ...]]:
    """The packaged synonyms: canonical name -> variants."""
    text = files("medseg").joinpath(SYNONYMS_RESOURCE).read_text(encoding="utf-8")
    data = safe_yaml.load(text) or {}
    return _check_synonyms(data, source=SYNONYMS_RESOURCE)


def load_synonyms(path) -> dict[str, tuple[str, ...]]:
    """A user synonyms file (same format as the packaged one)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("ROI synonyms file not found", path=p)
    return _check_synonyms(safe_yaml.load_file(p) or {}, source=str(p))


def _check_synonyms(data, *, source: str) -> dict[str, tuple[str, ...]]:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping 'canonical name: [variants]'")
    out: dict[str, tuple[str, ...]] = {}
    owner: dict[str, str] = {}
    for canonical, variants in data.items():
        if variants is None:
            variants = []
        if not isinstance(variants, list):
            raise ConfigError(f"{source}: {canonical!r} must map to a list of names, found {variants!r}")
        out[str(canonical)] = tuple(str(v) for v in variants)
        for v in [str(canonical), *out[str(canonical)]]:
            k = name_key(v)
            if owner.setdefault(k, str(canonical)) != str(canonical):
                raise ConfigError(f"{source}: {v!r} is listed under both {owner[k]!r} and {canonical!r}")
    return out


def canonical_name(name: str, synonyms: dict | None = None) -> str:
    """The canonical structure name for a ROI name: the synonyms' canonical name, else its snake-case form."""
    syn = default_synonyms() if synonyms is None else synonyms
    k = name_key(name)
    for canonical, variants in syn.items():
        if k == name_key(canonical) or any(k == name_key(v) for v in variants):
            return canonical
    return snake_name(name)


@dataclass
class NameMatcher:
    """Maps ROI names to the labels of one table (``match`` returns a ``Label`` or None)."""

    table: LabelTable
    synonyms: dict | None = None

    def __post_init__(self) -> None:
        syn = default_synonyms() if self.synonyms is None else self.synonyms
        self._keys: dict[str, Label] = {}
        for lab in self.table.labels:
            names = [lab.name]
            for canonical, variants in syn.items():
                if name_key(canonical) == name_key(lab.name):
                    names += [canonical, *variants]
            for n in names:
                self._keys.setdefault(name_key(n), lab)

    def match(self, name: str) -> Label | None:
        return self._keys.get(name_key(name))


def table_from_names(
    names,
    *,
    name: str = "roi_names",
    colors: dict | None = None,
    codes: dict | None = None,
    synonyms: dict | None = None,
) -> LabelTable:
    """A label table from ROI names: canonical names (synonyms applied), one label each, sorted by name.

    ``colors``/``codes`` map a ROI name to its display colour / SNOMED code; the first one seen for a structure is kept.
    """
    colors, codes = colors or {}, codes or {}
    found: dict[str, tuple] = {}
    for n in names:
        c = canonical_name(n, synonyms)
        if c not in found:
            found[c] = (colors.get(n), codes.get(n))
        else:
            col, code = found[c]
            found[c] = (col or colors.get(n), code or codes.get(n))
    labels = tuple(Label(i, c, _rgb(found[c][0]), found[c][1]) for i, c in enumerate(sorted(found), start=1))
    return LabelTable(name, labels)


def _rgb(color) -> tuple[int, int, int] | None:
    """A display colour (an ROIDisplayColor triple) as three whole numbers."""
    if color is None:
        return None
    r, g, b = (int(v) for v in color)
    return (r, g, b)
