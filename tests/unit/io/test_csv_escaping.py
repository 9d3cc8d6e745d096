"""CSV cells a spreadsheet would evaluate (``=HYPERLINK(...)``, ``+``, ``-``, ``@``, tab, CR) are written inert."""

from __future__ import annotations

import numpy as np
import pandas as pd

HOSTILE = ['=HYPERLINK("http://evil.example/","x")', "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1:A2)", "\tx", "\rx"]


def test_write_csv_quotes_formula_cells_and_keeps_numbers(tmp_path):
    from medseg.io.atomic import write_csv

    frame = pd.DataFrame(
        {
            "case_id": HOSTILE + ["plain", "-3.5"],
            "volume_ml": [-3.5, 1.0, -0.25, 2.0, 3.0, -1e-3, 4.0, 5.0],
            "count": pd.array([-1, 2, 3, 4, 5, 6, 7, None], dtype="Int64"),
            "=evil_ml": ["'=already", "''@twice", "a", "b", "c", "d", "e", None],
        }
    )
    before = frame.copy()
    write_csv(tmp_path / "t.csv", frame)
    pd.testing.assert_frame_equal(frame, before)  # the caller's frame is not changed
    back = pd.read_csv(tmp_path / "t.csv", dtype={"case_id": str})
    for cell in back["case_id"][: len(HOSTILE)]:
        assert cell.startswith("'") and cell[1] in "=+-@\t\r", repr(cell)
    assert back["case_id"].tolist() == ["'" + h for h in HOSTILE] + ["plain", "-3.5"]
    assert back["volume_ml"].dtype == np.float64 and back["volume_ml"].tolist() == frame["volume_ml"].tolist()
    assert back["count"].tolist()[:7] == [-1, 2, 3, 4, 5, 6, 7] and np.isnan(back["count"].iloc[7])
    assert list(back.columns)[-1] == "'=evil_ml"  # header cells are evaluated too
    assert back["'=evil_ml"].tolist()[:2] == ["''=already", "'''@twice"]


def test_escaping_round_trips_through_the_manifest_readers(tmp_path):
    """A manifest medseg writes with a formula-like case id or path reads back as it was."""
    from medseg.io.atomic import escape_cell, unescape_cell, unescape_frame, write_csv

    values = HOSTILE + ["'=quoted", "''-x", "-3.5", "'-3.5", "plain", ""]
    assert [unescape_cell(escape_cell(v)) for v in values] == values
    assert len({escape_cell(v) for v in values}) == len(values)  # no two cells collide
    write_csv(tmp_path / "m.csv", pd.DataFrame({"case_id": values, "image": ["-img.nii.gz"] * len(values)}))
    back = unescape_frame(pd.read_csv(tmp_path / "m.csv", dtype=str, keep_default_na=False))
    assert back["case_id"].tolist() == values and set(back["image"]) == {"-img.nii.gz"}


def test_report_writes_formula_like_names_and_ids_inert(tmp_path):
    import nibabel as nib

    from medseg.api import report
    from medseg.labels import Label, LabelTable

    lab = np.zeros((8, 8, 8), np.uint8)
    lab[2:5, 2:5, 2:5] = 1
    case = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(lab, np.eye(4)), str(case))
    table = LabelTable(name="t", labels=(Label(1, '=HYPERLINK("http://evil.example/","x")'),))
    out = report(labels=[case], out=tmp_path / "rep", label_table=table, case_ids=["@SUM(1+1)"], qc=False, html=False)
    for name in ("volumes.csv", "volumes_wide.csv", "summary.csv"):
        text = (out.parent / name).read_text()
        for line in text.splitlines():
            for cell in line.split(","):
                assert not cell.lstrip('"').startswith(("=", "@", "+")), (name, line)
    rows = pd.read_csv(out)
    assert rows["case_id"].tolist() == ["'@SUM(1+1)"]
    assert rows["structure"].tolist() == ['\'=HYPERLINK("http://evil.example/","x")']
    assert rows["volume_ml"].tolist() == [27 / 1000]
