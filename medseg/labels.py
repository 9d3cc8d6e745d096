"""Label tables: which integer in a label map means which structure.

A table is stored in YAML (``configs/labels/*.yaml``)::

    name: abdomen_phantom
    labels:
      - {index: 1, name: liver, color: [220, 120, 60]}
      - {index: 2, name: spleen}

Index 0 is always background and is not listed. Checkpoints carry their table,
and a checkpoint is refused when its table does not match the one asked for.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from medseg import safe_yaml
from medseg.errors import ConfigError

_LABEL_KEYS = {"index", "name", "color", "snomed"}
#: The largest label value a table may name: DICOM SEG segment numbers and medseg's label maps are 16-bit, and a
#: network has one output per value up to the largest.
MAX_LABEL_INDEX = 65535
MAX_NAME_LENGTH = 200


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _whole(value, lo: int, hi: int, key: str, source, hint: str = "") -> int:
    """``value`` as a whole number in ``lo..hi``; anything else is a ``ConfigError`` naming ``key``."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}: {_shown(value)} is not a whole number; expected {lo}-{hi}", path=source)
    if not lo <= value <= hi:
        raise ConfigError(f"{key}: {value} is out of range; expected {lo}-{hi}{hint}", path=source)
    return value


def _label_name(value, key: str, source) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ConfigError(f"{key}: {_shown(value)}; expected the structure's name as text", path=source)
    name = str(value)
    if not name.strip() or name.strip() in (".", ".."):
        raise ConfigError(f"{key}: {_shown(value)} cannot name a structure; give it letters or digits", path=source)
    if len(name) > MAX_NAME_LENGTH or any(ord(ch) < 32 or 127 <= ord(ch) < 160 for ch in name):
        raise ConfigError(
            f"{key}: {_shown(value)} is longer than {MAX_NAME_LENGTH} characters or holds control characters",
            path=source,
        )
    return name


@dataclass(frozen=True)
class Label:
    index: int
    name: str
    color: tuple[int, int, int] | None = None
    snomed: str | None = None


@dataclass(frozen=True)
class LabelTable:
    name: str
    labels: tuple[Label, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        seen_idx, seen_name = set(), set()
        for lab in self.labels:
            if lab.index <= 0:
                raise ConfigError(
                    f"label table {self.name!r}: index {lab.index} for {lab.name!r}; indices start at 1 (0 is "
                    "background)"
                )
            if lab.index > MAX_LABEL_INDEX:
                raise ConfigError(
                    f"label table {self.name!r}: index {lab.index} for {lab.name!r}; at most {MAX_LABEL_INDEX} "
                    "(label maps and DICOM SEG are 16-bit): renumber the labels"
                )
            if lab.index in seen_idx or lab.name in seen_name:
                raise ConfigError(f"label table {self.name!r}: duplicate index or name ({lab.index}, {lab.name!r})")
            seen_idx.add(lab.index)
            seen_name.add(lab.name)

    @property
    def num_classes(self) -> int:
        """Network output channels: background plus the largest index."""
        return max((lab.index for lab in self.labels), default=0) + 1

    @property
    def names(self) -> list[str]:
        return [lab.name for lab in self.labels]

    def by_name(self, name: str) -> Label:
        for lab in self.labels:
            if lab.name == name:
                return lab
        close = difflib.get_close_matches(name, self.names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(self.names)}"
        raise ConfigError(f"no structure {name!r} in label table {self.name!r}{hint}")

    def to_dict(self) -> dict:
        out = []
        for lab in self.labels:
            d = {"index": lab.index, "name": lab.name}
            if lab.color is not None:
                d["color"] = list(lab.color)
            if lab.snomed is not None:
                d["snomed"] = lab.snomed
            out.append(d)
        return {"name": self.name, "labels": out}

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "label table") -> "LabelTable":
        """A table from its mapping (``to_dict``'s form); every problem is one ``ConfigError`` naming ``source``
        and the label's key (``labels[2].index: 'one' is not a whole number``), never a ``ValueError``."""
        if not isinstance(data, dict) or "labels" not in data:
            raise ConfigError("expected a mapping with 'name' and 'labels'", path=source)
        unknown = set(data) - {"name", "labels"}
        if unknown:
            raise ConfigError(f"unknown key(s) {sorted(map(str, unknown))}; expected 'name' and 'labels'", path=source)
        items = data["labels"]
        if not isinstance(items, (list, tuple)):
            raise ConfigError(
                f"'labels' is {type(items).__name__}; expected a list of {{index, name}} entries", path=source
            )
        labels = []
        for i, item in enumerate(items):
            where = f"labels[{i}]"
            if not isinstance(item, dict) or "index" not in item or "name" not in item:
                raise ConfigError(f"{where}: each label needs 'index' and 'name', found {_shown(item)}", path=source)
            bad = set(item) - _LABEL_KEYS
            if bad:
                raise ConfigError(
                    f"{where}: unknown label key(s) {sorted(map(str, bad))}; allowed: {sorted(_LABEL_KEYS)}",
                    path=source,
                )
            index = _whole(
                item["index"], 1, MAX_LABEL_INDEX, f"{where}.index", source, " (indices start at 1; 0 is background)"
            )
            name = _label_name(item["name"], f"{where}.name", source)
            color = item.get("color")
            if color is not None:
                if not isinstance(color, (list, tuple)) or len(color) != 3:
                    raise ConfigError(
                        f"{where}.color: {_shown(color)}; expected [red, green, blue] as three whole numbers 0-255",
                        path=source,
                    )
                color = tuple(_whole(c, 0, 255, f"{where}.color", source) for c in color)
            snomed = item.get("snomed")
            if snomed is not None and (isinstance(snomed, bool) or not isinstance(snomed, (str, int))):
                raise ConfigError(
                    f"{where}.snomed: {_shown(snomed)}; expected a SNOMED code such as 10200004", path=source
                )
            labels.append(Label(index, name, color, None if snomed is None else str(snomed)))
        name = data.get("name", "unnamed")
        if not isinstance(name, (str, int)) or isinstance(name, bool):
            raise ConfigError(f"name: {_shown(name)}; expected text", path=source)
        return cls(str(name), tuple(sorted(labels, key=lambda lab: lab.index)))

    @classmethod
    def from_yaml(cls, path: str | Path) -> "LabelTable":
        p = Path(path)
        if not p.is_file():
            raise ConfigError("label table not found", path=p)
        try:
            data = safe_yaml.load_file(p)
        except yaml.YAMLError as exc:
            raise ConfigError(f"not valid YAML ({exc})", path=p) from None
        return cls.from_dict(data, source=str(p))

    def same_structures(self, other: "LabelTable") -> bool:
        """True when both tables map the same indices to the same names."""
        return [(lab.index, lab.name) for lab in self.labels] == [(lab.index, lab.name) for lab in other.labels]


#: Distinct display colours (RGB) for structures whose table gives none, or gives one another structure already has.
PALETTE = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (170, 110, 40),
)


def display_colors(table: LabelTable) -> dict[int, tuple[int, int, int]]:
    """Index -> RGB for QC pictures, SEG and RTSTRUCT: the table's colour, unless an earlier structure has it
    (atlases give left and right kidney one colour; a reader must tell them apart), then a palette colour not yet
    used."""
    out: dict[int, tuple[int, int, int]] = {}
    used: set = set()
    spare = [c for c in PALETTE if c not in {lab.color for lab in table.labels}]
    for n, lab in enumerate(table.labels):
        color = tuple(int(c) for c in lab.color) if lab.color is not None else None
        if color is None or color in used:
            free = [c for c in spare if c not in used]
            color = free[0] if free else PALETTE[n % len(PALETTE)]
        used.add(color)
        out[lab.index] = color  # type: ignore[assignment]
    return out
