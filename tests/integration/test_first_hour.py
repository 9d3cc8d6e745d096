"""Issue 38's traps: inputs that gave a wrong or partial result with exit 0 to a new user.

Each test builds the input as a newcomer would meet it and asserts the right result (every case, every
patient, Dice by structure name) or a one-line refusal with exit 2, never a partial result with exit 0.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from helpers import QUICK_DEMO, label_coded, predict_argv

from medseg.cli import main
from medseg.data.phantoms import make_phantom, write_dicom_series
from medseg.errors import InputError
from medseg.inference.batch import expand_inputs
from medseg.io.readers import write_label_map, write_volume


def _coded(seed: int, case_id: str, **kw):
    case = make_phantom(seed, case_id=case_id, spacing=(1.6, 1.6, 4.0), **kw)
    return case, label_coded(case)


def _labels(path) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj)


def _direct(oracle, source, tmp_path) -> np.ndarray:
    """The labels of ``source`` predicted alone (the reference each case of a folder must equal)."""
    from medseg.api import predict

    out = tmp_path / "direct" / source.name
    result = predict(model=oracle, inputs=[source], out=out, progress=False)
    (path,) = result.outputs.values()
    return _labels(path)


def test_a_folder_of_phantom_files_is_one_case_per_file_for_a_one_channel_model(oracle_checkpoint, tmp_path, capsys):
    """`medseg phantoms` writes phantom_0000, phantom_0001...: three cases, not one case of three channels."""
    images = tmp_path / "ph" / "images"
    truth = {}
    for k in range(3):
        case, coded = _coded(20 + k, f"phantom_{k:04d}")
        write_volume(coded, images / f"phantom_{k:04d}.nii.gz")
        truth[f"phantom_{k:04d}"] = _direct(oracle_checkpoint, images / f"phantom_{k:04d}.nii.gz", tmp_path)
    out = tmp_path / "preds"
    assert main(predict_argv(oracle_checkpoint, images, out)) == 0
    assert "3 segmented, 0 already done, 0 failed" in capsys.readouterr().out
    for cid, lab in truth.items():
        np.testing.assert_array_equal(_labels(out / f"{cid}.nii.gz"), lab)
    log_lines = (out / "predict.log").read_text().splitlines()  # a log beside the outputs, as medseg run keeps
    assert sum(": segmented in " in line for line in log_lines) == 3


def test_finished_case_detection_never_swallows_another_input(oracle_checkpoint, tmp_path, capsys):
    """An --out that already holds phantom_0000 made from another file does not make this phantom_0000 'done'."""
    first, second = tmp_path / "a", tmp_path / "b"
    write_volume(_coded(31, "phantom_0000")[1], first / "phantom_0000.nii.gz")
    write_volume(_coded(32, "phantom_0000", flips=(True, False, False))[1], second / "phantom_0000.nii.gz")
    lab_a = _direct(oracle_checkpoint, first / "phantom_0000.nii.gz", tmp_path)
    lab_b = _direct(oracle_checkpoint, second / "phantom_0000.nii.gz", tmp_path)
    write_volume(_coded(33, "phantom_0001")[1], second / "phantom_0001.nii.gz")
    out = tmp_path / "preds"
    assert main(predict_argv(oracle_checkpoint, first, out)) == 0
    capsys.readouterr()
    assert main(predict_argv(oracle_checkpoint, second, out, "--overwrite")) == 0
    assert "2 segmented, 0 already done" in capsys.readouterr().out
    np.testing.assert_array_equal(_labels(out / "phantom_0000.nii.gz"), lab_b)
    # the same input again is done; the other folder's file of the same name is not
    assert main(predict_argv(oracle_checkpoint, second, out)) == 0
    assert "0 segmented, 2 already done" in capsys.readouterr().out
    assert main(predict_argv(oracle_checkpoint, first / "phantom_0000.nii.gz", out)) == 0
    assert "1 segmented, 0 already done" in capsys.readouterr().out
    np.testing.assert_array_equal(_labels(out / "phantom_0000.nii.gz"), lab_a)


def test_channel_grouping_follows_the_model(tmp_path):
    """nnU-Net's _0000/_0001 files are one case's channels only for a model that takes several."""
    folder = tmp_path / "imagesTs"
    folder.mkdir()
    for name in ("x_0000", "x_0001", "y_0000", "y_0001"):
        (folder / f"{name}.nii.gz").write_bytes(b"")
    (folder / "x.probabilities.nii.gz").write_bytes(b"")  # medseg's own probability map is not a case
    one = expand_inputs([folder], in_channels=1)
    assert [c.case_id for c in one] == ["x_0000", "x_0001", "y_0000", "y_0001"]
    two = expand_inputs([folder], in_channels=2)
    assert [(c.case_id, [p.name for p in c.channels]) for c in two] == [
        ("x", ["x_0000.nii.gz", "x_0001.nii.gz"]),
        ("y", ["y_0000.nii.gz", "y_0001.nii.gz"]),
    ]
    with pytest.raises(InputError, match=r"case x has channels \[0, 1\]; the model takes 3"):
        expand_inputs([folder], in_channels=3)
    (folder / "z.nii.gz").write_bytes(b"")
    with pytest.raises(InputError, match="z.nii.gz does not name its channel"):
        expand_inputs([folder], in_channels=2)


def test_predict_on_an_export_segments_every_patient(oracle_checkpoint, tmp_path, capsys):
    """An export folder of three patients (one series each, same grid): three cases, each its own labels and SEG."""
    import pydicom

    export = tmp_path / "EXPORT"
    truth = {}
    for k, flips in enumerate([(False, False, False), (True, False, False), (False, True, True)]):
        case, coded = _coded(40 + k, f"p{k}", flips=flips)
        series = write_dicom_series(_as_case(case, coded), export / f"patient{k}" / "study" / "series", seed=40 + k)
        truth[k] = _direct(oracle_checkpoint, series, tmp_path / str(k))
    out = tmp_path / "preds"
    assert main(predict_argv(oracle_checkpoint, export, out)) == 0
    assert "3 segmented, 0 already done, 0 failed" in capsys.readouterr().out
    sidecars = sorted(out.glob("EXPORT_se*.json"))
    assert len(sidecars) == 3
    found = set()
    for side in sidecars:
        lab = _labels(out / f"{side.stem}.nii.gz")
        match = [k for k, t in truth.items() if np.array_equal(lab, t)]
        assert len(match) == 1, side.name
        found.add(match[0])
        seg = pydicom.dcmread(out / f"{side.stem}.seg.dcm")
        series = {str(r.SeriesInstanceUID) for r in seg.ReferencedSeriesSequence}
        assert len(series) == 1  # only its own patient's slices, though all three share one grid
        colours = [tuple(item.RecommendedDisplayCIELabValue) for item in seg.SegmentSequence]
        assert len(set(colours)) == len(colours) == 4  # left and right kidney told apart (one colour in the atlas)
        assert json.loads(side.read_text())["dicom"]["series_key"] in side.stem
    assert found == {0, 1, 2}
    # a selection rule that admits none of them is one line and exit 2, not an empty success
    assert main(predict_argv(oracle_checkpoint, export, tmp_path / "none", "--modality", "MR")) == 2
    assert "no image series matches the selection rule (modality MR)" in capsys.readouterr().err


def _as_case(case, coded):
    """The phantom with its image replaced by the oracle's label-coded intensities."""
    from dataclasses import replace

    return replace(case, image=coded)


def _cohort(tmp_path, n: int = 2):
    """A folder as `medseg phantoms` lays it out (images/, labels/, manifest.csv, manifest_labels.yaml),
    oracle-coded."""
    import yaml

    from medseg.data.phantoms import PHANTOM_LABELS

    root = tmp_path / "ph"
    for k in range(n):
        case, coded = _coded(60 + k, f"phantom_{k:04d}")
        write_volume(coded, root / "images" / f"phantom_{k:04d}.nii.gz")
        write_label_map(case.labels, root / "labels" / f"phantom_{k:04d}.nii.gz")
    (root / "manifest.csv").write_text("case_id,image,label,split\n")
    (root / "manifest_labels.yaml").write_text(yaml.safe_dump(PHANTOM_LABELS.to_dict(), sort_keys=False))
    return root


def test_report_and_evaluate_take_folders_and_skip_probability_maps(oracle_checkpoint, tmp_path, capsys):
    import pandas as pd

    root = _cohort(tmp_path)
    preds = tmp_path / "preds"
    assert main(predict_argv(oracle_checkpoint, root / "images", preds, "--save-probabilities")) == 0
    assert len(list(preds.glob("*.probabilities.nii.gz"))) == 2
    assert (
        main(
            [
                "report",
                "--labels",
                str(preds),
                "--images",
                str(root / "images"),
                "--out",
                str(tmp_path / "rep"),
                "--no-qc",
            ]
        )
        == 0
    )
    vols = pd.read_csv(tmp_path / "rep" / "volumes.csv")
    assert sorted(vols["case_id"].unique()) == ["phantom_0000", "phantom_0001"]
    assert {"liver", "spleen", "kidney_left", "kidney_right"} <= set(vols["structure"])
    assert vols["intensity_mean"].notna().any()
    # without --images: the image each label map was predicted from (its sidecar's source)
    assert main(["report", "--labels", str(preds), "--out", str(tmp_path / "rep2"), "--no-qc"]) == 0
    again = pd.read_csv(tmp_path / "rep2" / "volumes.csv")
    assert np.allclose(again["intensity_mean"].dropna(), vols["intensity_mean"].dropna())
    capsys.readouterr()
    assert (
        main(["evaluate", "--pred", str(preds), "--ref", str(root / "labels"), "--out", str(tmp_path / "m.csv")]) == 0
    )
    assert "Dice (mean over 2 case(s)): liver 0.9" in capsys.readouterr().out
    metrics = pd.read_csv(tmp_path / "m.csv")
    assert len(metrics) == 8 and metrics["dice"].min() > 0.8
    # references that carry no names, and no --label-table: one line, exit 2, not a value-by-value guess
    (root / "manifest_labels.yaml").unlink()
    assert (
        main(["evaluate", "--pred", str(preds), "--ref", str(root / "labels"), "--out", str(tmp_path / "m2.csv")]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert "carries no label names" in err and "--label-table" in err and len(err.splitlines()) == 1
    assert (
        main(
            [
                "evaluate",
                "--pred",
                str(preds),
                "--ref",
                str(root / "labels"),
                "--out",
                str(tmp_path / "m2.csv"),
                "--label-table",
                "abdomen_phantom",
            ]
        )
        == 0
    )


def test_evaluate_against_a_converted_rtstruct_compares_structures_by_name(oracle_checkpoint, tmp_path, capsys):
    """convert numbers an RTSTRUCT's structures alphabetically; evaluate must match them by name (not Dice 0.0)."""
    import pandas as pd
    import yaml

    from medseg.data.phantoms import PHANTOM_LABELS
    from medseg.io.objects.rtstruct import write_rtstruct

    case, coded = _coded(70, "ct")
    export = tmp_path / "export"
    series = write_dicom_series(_as_case(case, coded), export / "series", seed=70)
    (export / "rt").mkdir()
    write_rtstruct(case.labels, series, PHANTOM_LABELS, export / "rt" / "truth.dcm", software_version="test")
    assert main(["convert", str(export), "--out", str(tmp_path / "conv"), "--no-progress"]) == 0
    (ref,) = (tmp_path / "conv").glob("*.label.nii.gz")
    own = yaml.safe_load(next((tmp_path / "conv").glob("*.labels.yaml")).read_text())
    assert [lab["name"] for lab in own["labels"]] == sorted(PHANTOM_LABELS.names)  # its own (alphabetical) numbering
    conversion = pd.read_csv(tmp_path / "conv" / "conversion.csv")
    assert "converted_to_label_map" in set(conversion["status"]) and "skipped" not in set(conversion["status"])
    assert main(predict_argv(oracle_checkpoint, series, tmp_path / "preds")) == 0
    capsys.readouterr()
    assert (
        main(
            [
                "evaluate",
                "--pred",
                str(tmp_path / "preds" / "series.nii.gz"),
                "--ref",
                str(ref),
                "--out",
                str(tmp_path / "m.csv"),
            ]
        )
        == 0
    )
    metrics = pd.read_csv(tmp_path / "m.csv").set_index("structure")
    assert sorted(metrics.index) == sorted(PHANTOM_LABELS.names)
    assert metrics["dice"].min() > 0.8, metrics["dice"]
    # --label-table numbers the converted structures as the user's table does: value for value equal to the truth
    assert (
        main(
            [
                "convert",
                str(export),
                "--out",
                str(tmp_path / "conv2"),
                "--no-progress",
                "--label-table",
                "abdomen_phantom",
            ]
        )
        == 0
    )
    (numbered,) = (tmp_path / "conv2").glob("*.label.nii.gz")
    lab, truth = _labels(numbered), case.labels.array
    for item in PHANTOM_LABELS.labels:
        k = item.index
        dice = 2 * np.sum((lab == k) & (truth == k)) / (np.sum(lab == k) + np.sum(truth == k))
        assert dice > 0.85, (item.name, dice)


def test_demo_runs_again_into_its_own_folder_and_refuses_a_foreign_one_before_work(tmp_path, capsys):
    """`make demo` twice: the second run reuses the finished demo; other settings make it anew; a folder that is
    not a demo's is refused in one line before any phantom is drawn."""
    import time

    from medseg.api import DEMO_DONE as DONE
    from medseg.api import _prepare_demo as _prepare

    out = tmp_path / "demo_out"
    args = ["demo", "--out", str(out), *QUICK_DEMO]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "mean Dice" in first and (out / DONE).is_file()
    assert main(args) == 0
    second = capsys.readouterr().out
    assert "reusing the finished demo" in second and "mean Dice" in second
    metrics = [line for line in first.splitlines() if line.startswith("mean Dice")]
    assert metrics == [line for line in second.splitlines() if line.startswith("mean Dice")]
    # other settings: medseg's own output is made anew (its parts cleared), never refused
    assert _prepare(out, {"n_train": 4}) is None and not (out / "model").exists() and not (out / DONE).exists()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.docx").write_text("not medseg's")
    t0 = time.monotonic()
    assert main(["demo", "--out", str(foreign), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert time.monotonic() - t0 < 5 and len(err.splitlines()) == 1 and "--out NEW" in err
    assert (foreign / "thesis.docx").read_text() == "not medseg's"


def test_predict_takes_the_geometry_option_its_error_suggests(oracle_checkpoint, tmp_path, capsys):
    case, coded = _coded(80, "gap")
    series = write_dicom_series(_as_case(case, coded), tmp_path / "gap", seed=80, drop_slices=(7,))
    assert main(predict_argv(oracle_checkpoint, series, tmp_path / "a")) == 2
    assert "--resample-irregular" in capsys.readouterr().err
    assert main(predict_argv(oracle_checkpoint, series, tmp_path / "b", "--resample-irregular")) == 0
    side = json.loads((tmp_path / "b" / "gap.json").read_text())
    assert side["dicom"]["selection"]["chosen"] == side["dicom"]["key"]


def test_inventory_and_conversion_record_each_series_source_folder_without_identifiers(tmp_path):
    import pandas as pd
    import pydicom

    from medseg.api import convert_dicom, scan_dicom

    case = make_phantom(90, case_id="src", spacing=(3.0, 3.0, 6.0))
    export = tmp_path / "export"
    tmp_series = write_dicom_series(case, tmp_path / "tmp", seed=90)
    name = str(pydicom.dcmread(next(tmp_series.iterdir()), stop_before_pixels=True).PatientName)
    folder = export / f"{name.replace('^', '_')} study" / "CT"  # exports name folders after the patient
    folder.parent.mkdir(parents=True)
    tmp_series.rename(folder)
    _, series_csv, _ = scan_dicom(folder=export, out=tmp_path / "inventory.csv", progress=False)
    inv = pd.read_csv(series_csv, dtype=str, keep_default_na=False)
    assert inv["source_folder"].tolist() == ["<redacted>_<redacted> study/CT"]  # LEAKCHECK_PHANTOM: both parts
    assert "leakcheck" not in series_csv.read_text().lower()
    convert_dicom(folder=export, out=tmp_path / "conv", progress=False)
    conv = pd.read_csv(tmp_path / "conv" / "conversion.csv", dtype=str, keep_default_na=False)
    assert conv["source_folder"].tolist() == inv["source_folder"].tolist()
    _, series_csv, _ = scan_dicom(folder=export, out=tmp_path / "with_ids.csv", progress=False, with_identifiers=True)
    assert pd.read_csv(series_csv)["source_folder"].tolist() == [str(folder.relative_to(export))]


def test_the_validation_cases_drawn_from_training_rows_are_named(caplog):
    import pandas as pd

    from medseg.training.loop import split_cases

    df = pd.DataFrame({"case_id": [f"c{k}" for k in range(10)], "split": ["train"] * 10})
    with caplog.at_level("WARNING", logger="medseg"):
        _, val = split_cases(df, seed=3)
    (line,) = [r.getMessage() for r in caplog.records if "no split=val rows" in r.getMessage()]
    assert all(cid in line for cid in val["case_id"]) and len(val) == 2


def test_evaluate_pairs_predictions_with_converted_labels_by_series(oracle_checkpoint, tmp_path, capsys):
    """Two patients' RTSTRUCTs converted into one folder (named by study and series keys) against predictions
    named by case: paired by the series each was made on, whatever the names' order; Dice by name."""
    import pandas as pd

    from medseg.data.phantoms import PHANTOM_LABELS
    from medseg.io.objects.rtstruct import write_rtstruct

    export = tmp_path / "export"
    for k, seed in enumerate((91, 92)):
        case, coded = _coded(seed, f"p{k}", flips=[(False, False, False), (True, False, True)][k])
        series = write_dicom_series(_as_case(case, coded), export / f"patient{k}" / "ct", seed=seed)
        write_rtstruct(case.labels, series, PHANTOM_LABELS, export / f"patient{k}" / "rt.dcm", software_version="test")
    assert main(["convert", str(export), "--out", str(tmp_path / "conv"), "--no-progress"]) == 0
    assert main(predict_argv(oracle_checkpoint, export, tmp_path / "preds", "--no-sr")) == 0
    capsys.readouterr()
    assert (
        main(
            [
                "evaluate",
                "--pred",
                str(tmp_path / "preds"),
                "--ref",
                str(tmp_path / "conv"),
                "--out",
                str(tmp_path / "m.csv"),
            ]
        )
        == 0
    )
    metrics = pd.read_csv(tmp_path / "m.csv")
    assert len(metrics) == 8 and metrics["dice"].min() > 0.8, metrics[["case_id", "structure", "dice"]]
    # given in opposite orders (the order pairs them wrong): the series still pairs them right
    preds = sorted((tmp_path / "preds").glob("*.nii.gz"))
    refs = sorted((tmp_path / "conv").glob("*.label.nii.gz"))
    for order in (refs, refs[::-1]):
        assert (
            main(["evaluate", "--pred", *map(str, preds), "--ref", *map(str, order), "--out", str(tmp_path / "o.csv")])
            == 0
        )
        assert pd.read_csv(tmp_path / "o.csv")["dice"].min() > 0.8
