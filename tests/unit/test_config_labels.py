import pytest

from medseg.config import CONFIG_ROOT, config_from_dict, load_config
from medseg.data.phantoms import PHANTOM_LABELS
from medseg.errors import ConfigError
from medseg.labels import LabelTable


def test_shipped_phantom_label_table_matches_the_generator():
    table = LabelTable.from_yaml(CONFIG_ROOT / "labels" / "abdomen_phantom.yaml")
    assert table == PHANTOM_LABELS
    assert table.num_classes == 5


def test_demo_config_loads_and_resolves_its_label_table():
    cfg = load_config(CONFIG_ROOT / "training" / "phantom_demo.yaml")
    assert cfg.model.name == "unet" and cfg.preprocessing.spacing == [2.5, 2.5, 2.5]
    assert cfg.label_table().same_structures(PHANTOM_LABELS)


def test_unknown_key_is_rejected_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown key 'epochz'.*did you mean 'epochs'"):
        config_from_dict({"training": {"epochz": 3}})
    with pytest.raises(ConfigError, match="unknown key 'modle'"):
        config_from_dict({"modle": {}})


def test_wrong_types_and_values_are_rejected():
    with pytest.raises(ConfigError, match="training.epochs: expected int"):
        config_from_dict({"training": {"epochs": "ten"}})
    with pytest.raises(ConfigError, match="overlap"):
        config_from_dict({"inference": {"overlap": 1.5}})


def test_overrides_apply_before_validation():
    cfg = config_from_dict({}, overrides=["training.epochs=7", "preprocessing.spacing=[1.5, 1.5, 3]"])
    assert cfg.training.epochs == 7 and cfg.preprocessing.spacing == [1.5, 1.5, 3]
    with pytest.raises(ConfigError, match="did you mean"):
        config_from_dict({}, overrides=["training.epoch=7"])


def test_missing_label_table_names_the_known_ones(tmp_path):
    cfg = config_from_dict({"labels": "abdomen_phantm"})
    with pytest.raises(ConfigError, match="did you mean abdomen_phantom"):
        cfg.label_table()


def test_label_table_rejects_duplicates_and_background():
    with pytest.raises(ConfigError, match="duplicate"):
        LabelTable.from_dict({"name": "x", "labels": [{"index": 1, "name": "a"}, {"index": 1, "name": "b"}]})
    with pytest.raises(ConfigError, match="indices start at 1"):
        LabelTable.from_dict({"name": "x", "labels": [{"index": 0, "name": "a"}]})
