"""``medseg models import PATH --out MODEL.pt``: an nnU-Net v2 (or TotalSegmentator) folder as one portable file.

The folders are built in nnU-Net's layout by test_totalseg_layout.make_part (seeded PlainConvUNet weights);
the file must load with ``torch.load(weights_only=True)`` and ``medseg predict --model FILE`` must give the
label maps the folder gives.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip(
    "dynamic_network_architectures", reason="nnU-Net networks need dynamic_network_architectures (the nnunet extra)"
)

from test_totalseg_layout import PARTS, make_part, make_total  # noqa: E402  (same folder: built the same way)

from medseg.cli import main  # noqa: E402


def _nnunet_folder(root: Path) -> Path:
    """A plain nnU-Net folder with two folds (other weights each)."""
    folder = make_part(root, "Dataset501_Phantom", ["liver", "spleen", "kidney_left"], seed=11, trainer="nnUNetTrainer")
    other = make_part(
        root / "tmp", "Dataset501_Phantom", ["liver", "spleen", "kidney_left"], seed=12, trainer="nnUNetTrainer"
    )
    shutil.copytree(other / "fold_0", folder / "fold_1")
    shutil.rmtree(root / "tmp")
    return folder


def _image(tmp: Path, seed=4, flips=(True, False, False)) -> Path:
    import nibabel as nib

    from medseg.data.phantoms import make_phantom

    case = make_phantom(seed, spacing=(1.6, 1.6, 2.0), flips=flips, fov_mm=(70.0, 60.0, 50.0), noise_hu=0)
    path = tmp / "ct.nii.gz"
    nib.save(nib.Nifti1Image(case.image.array.astype(np.float32), case.image.affine), str(path))
    return path


def _one_error_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1, err
    return err[0]


def test_import_writes_plain_data_and_predict_gives_the_folders_labels(tmp_path, capsys):
    import nibabel as nib
    import torch

    from medseg.inference.load import load_predictor

    folder = _nnunet_folder(tmp_path / "models")
    out = tmp_path / "model.pt"
    assert main(["models", "import", str(folder), "--out", str(out)]) == 0
    data = torch.load(out, map_location="cpu", weights_only=True)  # plain data and tensors only
    assert data["kind"] == "nnunet" and list(data["models"][0]["folds"]) == ["0", "1"]
    m = data["models"][0]
    assert m["dataset"] == json.loads((folder / "dataset.json").read_text())
    assert m["plans"] == json.loads((folder / "plans.json").read_text())
    ck = torch.load(folder / "fold_1" / "checkpoint_final.pth", weights_only=False)
    for k, v in ck["network_weights"].items():
        assert torch.equal(m["folds"]["1"]["network_weights"][k], v)
    assert [lab["name"] for lab in data["labels"]["labels"]] == ["liver", "spleen", "kidney_left"]
    from medseg.inference import load as external

    summary = external.run_summary(out)  # what medseg run records of its model
    assert summary["path"] == str(out) and summary["labels"] == data["labels"]

    image = _image(tmp_path)
    ref = load_predictor(folder, device="cpu").predict(str(image))
    assert len(np.unique(ref.array)) >= 2, "the folder's model predicts one class: the comparison would prove nothing"
    assert main(["predict", "--model", str(out), str(image), "--out", str(tmp_path / "pred"), "--no-progress"]) == 0
    written = [p for p in (tmp_path / "pred").glob("*.nii.gz")]
    assert len(written) == 1
    np.testing.assert_array_equal(np.asarray(nib.load(str(written[0])).dataobj), ref.array)
    side = json.loads(next(p for p in (tmp_path / "pred").glob("*.json") if p.name != "run.json").read_text())
    assert [lab["name"] for lab in side["labels"]["labels"]] == ["liver", "spleen", "kidney_left"]
    assert side["model"]["model_path"] == str(out) and side["model"]["imported_from"]["name"] == folder.name


def test_existing_out_is_refused_unless_force_and_the_write_is_atomic(tmp_path, capsys):
    from medseg.io.atomic import TMP_PREFIX

    folder = _nnunet_folder(tmp_path / "models")
    out = tmp_path / "model.pt"
    out.write_bytes(b"keep me")
    assert main(["models", "import", str(folder), "--out", str(out), "--folds", "0"]) == 2
    line = _one_error_line(capsys)
    assert str(out) in line and "--force" in line and out.read_bytes() == b"keep me"
    assert main(["models", "import", str(folder), "--out", str(out), "--folds", "0", "--force"]) == 0
    assert out.stat().st_size > 1000 and not [p for p in tmp_path.iterdir() if p.name.startswith(TMP_PREFIX)]


def test_bad_folders_are_refused_with_one_line_naming_them(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["models", "import", str(empty), "--out", str(tmp_path / "a.pt")]) == 2
    line = _one_error_line(capsys)
    assert str(empty) in line and "nnU-Net v2 trained-model folder" in line
    folder = _nnunet_folder(tmp_path / "models")
    plans = json.loads((folder / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"] = "my_lab.nets.FancyUNet"
    (folder / "plans.json").write_text(json.dumps(plans))
    assert main(["models", "import", str(folder), "--out", str(tmp_path / "b.pt")]) == 2
    line = _one_error_line(capsys)
    assert str(folder) in line and "FancyUNet" in line and not (tmp_path / "b.pt").exists()
    plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"] = (
        "dynamic_network_architectures.architectures.unet.PlainConvUNet"
    )
    plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"] = [8, 16, 32]
    (folder / "plans.json").write_text(json.dumps(plans))  # plans that do not match the weights
    assert main(["models", "import", str(folder), "--out", str(tmp_path / "b.pt")]) == 2
    line = _one_error_line(capsys)
    assert (
        str(folder) in line
        and "do not fit the network plans.json describes" in line
        and not (tmp_path / "b.pt").exists()
    )
    home = make_total(tmp_path / "ts", weights=False, skip=(294,))
    assert main(["models", "import", str(home), "--out", str(tmp_path / "c.pt")]) == 2
    assert "[294] are missing" in _one_error_line(capsys)


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_tampered_file_with_a_pickled_payload_is_refused_and_never_runs(tmp_path, capsys):
    import torch

    from medseg.adapters.portable import MARKER

    marker = tmp_path / "payload_ran"
    bad = tmp_path / "model.pt"
    torch.save({MARKER: 1, "kind": "nnunet", "models": [{"evil": _Payload(marker)}]}, bad)
    image = _image(tmp_path)
    assert main(["predict", "--model", str(bad), str(image), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    line = _one_error_line(capsys)
    assert "not a readable imported model" in line and "never runs code" in line
    assert not marker.exists()


def test_models_listing_and_one_model_still_work(capsys):
    assert main(["models"]) == 0
    assert "unet" in capsys.readouterr().out
    assert main(["models", "unet"]) == 0
    assert "options:" in capsys.readouterr().out
    assert main(["models", "unet", "somewhere"]) == 2
    assert "medseg models import" in _one_error_line(capsys)


@pytest.mark.slow
def test_totalsegmentator_folder_imports_as_one_file(tmp_path):
    import torch

    from medseg.inference.load import load_predictor

    home = make_total(tmp_path / "ts")
    out = tmp_path / "total.pt"
    from medseg import api

    api.import_model(home, out=out)
    data = torch.load(out, weights_only=True)
    assert data["kind"] == "totalsegmentator" and [m["dir"].split("/")[0] for m in data["models"]] == [
        v[0] for v in PARTS.values()
    ]
    image = _image(tmp_path, seed=9, flips=(False, True, True))
    a = load_predictor(home, device="cpu", overlap=0.5)
    b = load_predictor(out, device="cpu", overlap=0.5)
    assert a.labels.to_dict() == b.labels.to_dict() and b.provenance["model_path"] == str(out)
    ra, rb = a.predict(str(image)), b.predict(str(image))
    assert len(np.unique(ra.array)) >= 2
    np.testing.assert_array_equal(ra.array, rb.array)
