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

from medseg.errors import ConfigError

_LABEL_KEYS = {"index", "name", "color", "snomed"}


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
                raise ConfigError(f"label table {self.name!r}: index {lab.index} for {lab.name!r}; indices start at 1 (0 is background)")
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
        if not isinstance(data, dict) or "labels" not in data:
            raise ConfigError(f"{source}: expected a mapping with 'name' and 'labels'")
        unknown = set(data) - {"name", "labels"}
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {sorted(unknown)}; expected 'name' and 'labels'")
        labels = []
        for item in data["labels"]:
            if not isinstance(item, dict) or "index" not in item or "name" not in item:
                raise ConfigError(f"{source}: each label needs 'index' and 'name', found {item!r}")
            bad = set(item) - _LABEL_KEYS
            if bad:
                raise ConfigError(f"{source}: unknown label key(s) {sorted(bad)}; allowed: {sorted(_LABEL_KEYS)}")
            color = tuple(int(c) for c in item["color"]) if item.get("color") is not None else None
            labels.append(Label(int(item["index"]), str(item["name"]), color, item.get("snomed")))
        return cls(str(data.get("name", "unnamed")), tuple(sorted(labels, key=lambda lab: lab.index)))

    @classmethod
    def from_yaml(cls, path: str | Path) -> "LabelTable":
        import yaml

        from medseg import safe_yaml

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
