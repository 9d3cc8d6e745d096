"""Careless label tables give one line naming the file and the key; nameless ROIs and segments keep their
contours (issue 34)."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from medseg.errors import ConfigError
from medseg.labels import LabelTable

BAD_ENTRIES = [
    ("{index: one, name: liver}", r"labels\[0\]\.index: 'one' is not a whole number"),
    ("{index: 1, name: liver, color: [red, 0, 0]}", r"labels\[0\]\.color: 'red' is not a whole number"),
    ("{index: 1, name: liver, color: [300, 0, 0]}", r"labels\[0\]\.color: 300 is out of range; expected 0-255"),
    ("{index: 1, name: liver, color: red}", r"labels\[0\]\.color: 'red'; expected \[red, green, blue\]"),
    ("{index: 1.5, name: liver}", r"labels\[0\]\.index: 1.5 is not a whole number"),
    ("{index: true, name: liver}", r"labels\[0\]\.index: True is not a whole number"),
    ("{index: [1], name: liver}", r"labels\[0\]\.index: \[1\] is not a whole number"),
    ("{index: 2147483647, name: liver}", r"labels\[0\]\.index: 2147483647 is out of range; expected 1-65535"),
    ("{index: 0, name: liver}", r"indices start at 1"),
    ("{index: 1, name: {a: b}}", r"labels\[0\]\.name: \{'a': 'b'\}; expected the structure's name as text"),
    ("{index: 1, name: '..'}", r"labels\[0\]\.name: '\.\.' cannot name a structure"),
    ("{index: 1, name: ''}", r"labels\[0\]\.name: '' cannot name a structure"),
    ("{index: 1, name: liver, snomed: [1]}", r"labels\[0\]\.snomed: \[1\]; expected a SNOMED code"),
]


@pytest.mark.parametrize("entry,message", BAD_ENTRIES)
def test_label_table_yaml_errors_name_the_file_and_key(tmp_path, entry, message):
    path = tmp_path / "table.yaml"
    path.write_text(
        f"name: t\nlabels:\n  - {{index: 2, name: spleen}}\n  - {entry}\n".replace("labels[0]", "labels[1]")
    )
    with pytest.raises(ConfigError, match=message.replace(r"labels\[0\]", r"labels\[1\]")) as exc:
        LabelTable.from_yaml(path)
    assert str(exc.value).startswith(f"{path}: ") and "\n" not in str(exc.value)


def test_label_table_whole_document_errors(tmp_path):
    path = tmp_path / "t.yaml"
    for text, message in (
        ("name: t\nlabels: liver\n", "'labels' is str; expected a list"),
        ("name: [t]\nlabels: []\n", r"name: \['t'\]; expected text"),
        ("name: t\nlabels:\n  - liver\n", r"labels\[0\]: each label needs 'index' and 'name'"),
    ):
        path.write_text(text)
        with pytest.raises(ConfigError, match=message):
            LabelTable.from_yaml(path)
    path.write_text("name: t\nlabels:\n  - {index: '3', name: 7, color: [1, 2.0, 3], snomed: 10200004}\n")
    lab = LabelTable.from_yaml(path).labels[0]  # whole numbers written as text or 2.0 are fine
    assert (lab.index, lab.name, lab.color, lab.snomed) == (3, "7", (1, 2, 3), "10200004")


def test_report_cli_gives_one_line_for_a_careless_table(tmp_path, capsys):
    import nibabel as nib

    from medseg.cli import main

    lab = np.zeros((4, 4, 4), np.uint8)
    lab[1, 1, 1] = 1
    nib.save(nib.Nifti1Image(lab, np.eye(4)), str(tmp_path / "c.nii.gz"))
    (tmp_path / "t.yaml").write_text("name: t\nlabels:\n  - {index: one, name: liver}\n")
    code = main(
        [
            "report",
            "--labels",
            str(tmp_path / "c.nii.gz"),
            "--label-table",
            str(tmp_path / "t.yaml"),
            "--out",
            str(tmp_path / "r"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert str(tmp_path / "t.yaml") in err and "labels[0].index" in err


def _phantom_rtstruct(tmp_path):
    from medseg.data.phantoms import PHANTOM_LABELS, make_phantom, write_dicom_series
    from medseg.io.dicom.series import read_dicom_series
    from medseg.io.objects.rtstruct import write_rtstruct

    case = make_phantom(3, fov_mm=(120.0, 100.0, 60.0), spacing=(2.0, 2.0, 4.0), flips=(False, False, False))
    folder = write_dicom_series(case, tmp_path / "ct")
    labels = read_dicom_series(folder).with_array(case.labels.array)
    return folder, labels, pydicom.dcmread(write_rtstruct(labels, folder, PHANTOM_LABELS, tmp_path / "rs.dcm"))


def test_nameless_rois_keep_their_contours(tmp_path):
    from medseg.io.objects.rtstruct import read_rtstruct

    folder, labels, ds = _phantom_rtstruct(tmp_path)
    rois = ds.StructureSetROISequence
    first, second = int(rois[0].ROINumber), int(rois[1].ROINumber)
    rois[0].ROIName, rois[1].ROIName = "", ".."
    path = tmp_path / "nameless.dcm"
    ds.save_as(path)
    res = read_rtstruct(path, folder)
    assert "roi" not in res.table.names  # no structure that nothing fills
    assert {f"unnamed_roi_{first}", f"unnamed_roi_{second}"} <= set(res.table.names)
    for n in (first, second):
        rec = next(r for r in res.rois if r["number"] == n)
        assert rec["status"] == "mapped" and rec["voxels"] > 0, rec
        assert (res.labels.array == res.table.by_name(f"unnamed_roi_{n}").index).any()
    renamed = [f for f in res.findings if f["kind"] == "unnamed_roi"]
    assert len(renamed) == 2 and renamed[0]["action"] == "renamed" and "''" in renamed[0]["detail"]


def test_nameless_seg_segment_keeps_its_pixels(tmp_path):
    from medseg.io.objects.seg import read_dicom_seg, write_dicom_seg

    folder, labels, _ = _phantom_rtstruct(tmp_path)
    labels = labels.with_array((labels.array == 1).astype(np.uint8))
    ds = pydicom.dcmread(
        write_dicom_seg(
            labels,
            folder,
            LabelTable.from_dict({"name": "p", "labels": [{"index": 1, "name": "liver"}]}),
            tmp_path / "seg.dcm",
            software_version="t",
        )
    )
    ds.SegmentSequence[0].SegmentLabel = "--"
    ds.save_as(tmp_path / "nameless.dcm")
    res = read_dicom_seg(tmp_path / "nameless.dcm", folder)
    assert res.table.names == ["unnamed_segment_1"]
    assert res.rois[0]["voxels"] == int((labels.array == 1).sum()) > 0
    assert any(f["kind"] == "unnamed_segment" for f in res.findings)
