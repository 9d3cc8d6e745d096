"""Model-folder JSON (nnU-Net plans.json/dataset.json, MONAI bundle configs) is read with the YAML reader's
size, depth and value limits: one line naming the file, never a RecursionError (issue 34)."""

from __future__ import annotations

import json

import pytest

from medseg import safe_json, safe_yaml
from medseg.errors import CheckpointError, ConfigError, MedsegError

DEEP = "[" * 200_000 + "]" * 200_000  # 400 kB; json.loads recurses once per level


def test_limits_and_errors_are_one_line_naming_the_file(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text(DEEP)
    with pytest.raises(safe_json.UnsafeJSONError, match=f"nested more than {safe_yaml.MAX_DEPTH} levels") as exc:
        safe_json.load_file(path)
    assert str(exc.value).startswith(f"{path}: ") and "\n" not in str(exc.value)
    path.write_text("[" + ",".join(["0"] * (safe_yaml.MAX_NODES + 1)) + "]")
    with pytest.raises(safe_json.UnsafeJSONError, match="more than 200000 values"):
        safe_json.load_file(path)
    with open(path, "wb") as fh:  # a sparse file: refused by its size, before reading
        fh.truncate(safe_yaml.MAX_BYTES + 1)
    with pytest.raises(safe_json.UnsafeJSONError, match="larger than 4 MiB"):
        safe_json.load_file(path)
    path.write_text('{"a": [1, 2')
    with pytest.raises(CheckpointError, match=r"not valid JSON \(.*line 1") as exc:
        safe_json.load_file(path, error=CheckpointError)
    assert str(exc.value).startswith(str(path))
    path.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(ConfigError, match="not UTF-8"):
        safe_json.load_file(path)
    with pytest.raises(ConfigError, match="cannot read"):
        safe_json.load_file(tmp_path / "missing.json")


def test_brackets_inside_strings_do_not_count():
    text = json.dumps({"name": "[" * 500 + '\\"{' * 100, "nested": [[[{"a": [1]}]]]})
    assert safe_json.loads(text) == json.loads(text)
    deep_ok = "[" * safe_yaml.MAX_DEPTH + "]" * safe_yaml.MAX_DEPTH
    assert safe_json.loads(deep_ok) == json.loads(deep_ok)


def _nnunet_folder(root, plans_text: str, dataset_text: str | None = None):
    folder = root / "Dataset900_T" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(plans_text)
    (folder / "dataset.json").write_text(
        dataset_text or json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1}})
    )
    return folder


@pytest.mark.parametrize("which", ["plans.json", "dataset.json"])
def test_nnunet_folder_with_deep_json_gives_one_line(tmp_path, which):
    from medseg.adapters.nnunet.folder import load_nnunet_folder

    folder = _nnunet_folder(
        tmp_path, DEEP if which == "plans.json" else "{}", DEEP if which == "dataset.json" else None
    )
    with pytest.raises(MedsegError, match="nested more than") as exc:
        load_nnunet_folder(folder)
    assert str(exc.value).startswith(str(folder / which)) and "\n" not in str(exc.value)


def test_monai_bundle_with_deep_json_gives_one_line(tmp_path):
    pytest.importorskip("monai")
    from medseg.adapters.monai_bundle.bundle import load_bundle

    (tmp_path / "configs").mkdir()
    (tmp_path / "models").mkdir()
    (tmp_path / "configs" / "metadata.json").write_text("{}")
    (tmp_path / "configs" / "inference.json").write_text('{"network_def": ' + DEEP + "}")
    with pytest.raises(ConfigError, match="nested more than") as exc:
        load_bundle(tmp_path)
    assert str(exc.value).startswith(str(tmp_path / "configs" / "inference.json"))


def test_cli_reports_a_deep_plans_json_in_one_line(tmp_path, capsys):
    from medseg.cli import main

    folder = _nnunet_folder(tmp_path, DEEP)
    code = main(["models", "import", str(folder), "--out", str(tmp_path / "m.pt")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "plans.json" in err and "nested more than" in err, err


def test_training_data_dataset_json_is_bounded_too(tmp_path):
    from medseg.data.dataset_import import manifest_from_folder
    from medseg.data.label_sources import read_dataset_json
    from medseg.errors import InputError

    (tmp_path / "dataset.json").write_text('{"labels": ' + DEEP + "}")
    with pytest.raises(safe_json.UnsafeJSONError, match="nested more than"):
        manifest_from_folder(tmp_path, tmp_path / "m.csv")
    with pytest.raises(safe_json.UnsafeJSONError, match="nested more than"):
        read_dataset_json(tmp_path / "dataset.json")
    (tmp_path / "dataset.json").write_text('{"labels": ')
    with pytest.raises(InputError, match="dataset.json: not valid JSON"):
        read_dataset_json(tmp_path / "dataset.json")
