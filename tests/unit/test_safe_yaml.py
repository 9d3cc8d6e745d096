"""medseg.safe_yaml: plain YAML loads as before; aliases, huge inputs and deep nesting are refused with one line."""

import pytest
import yaml

from medseg import safe_yaml
from medseg.config import apply_overrides
from medseg.errors import ConfigError


def test_plain_yaml_loads_like_safe_load():
    text = "name: x\nstages:\n  predict: {model: a.pt, inference: {tta_flips: [0, 2]}}\nlist: [1, 2.5, null, true]\n"
    assert safe_yaml.load(text) == yaml.safe_load(text)


def test_aliases_and_merge_keys_are_refused():
    with pytest.raises(ConfigError, match="aliases"):
        safe_yaml.load("a: &x [1, 2]\nb: *x\n")
    with pytest.raises(ConfigError, match="aliases"):
        safe_yaml.load("base: &b {x: 1}\nother:\n  <<: *b\n  y: 2\n")


def test_size_nodes_and_depth_are_bounded(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="nested"):
        safe_yaml.load("[" * 5000 + "]" * 5000)
    monkeypatch.setattr(safe_yaml, "MAX_NODES", 1000)
    with pytest.raises(ConfigError, match="more than 1000"):
        safe_yaml.load("[" + ",".join(["1"] * 2000) + "]")
    big = tmp_path / "big.yaml"
    big.write_text("x: " + "a" * (safe_yaml.MAX_BYTES + 1))
    with pytest.raises(ConfigError, match="larger than") as exc:
        safe_yaml.load_file(big)
    assert str(big) in str(exc.value)


def test_set_values_are_parsed_safely():
    assert apply_overrides({}, ["a.b=[1, 2]", "a.c=hello"]) == {"a": {"b": [1, 2], "c": "hello"}}
    with pytest.raises(ConfigError, match="aliases"):
        apply_overrides({}, ["a.b=[&x [1,2], *x, *x]"])
