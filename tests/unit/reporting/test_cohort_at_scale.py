"""Cohort tables of many cases (issue 35): built case by case in bounded memory, and byte for byte the tables of
the rows in one list.

``medseg run`` reads each done case's ``volumes.json`` in turn (``RunDir.done_json``) into
``volumes.rows_frame``, which holds at most a chunk of rows as dicts; 10,000 cases x 100 structures as one list of
dicts took several GB. The tables written from it must not change by a byte.
"""

from __future__ import annotations

import json
import tracemalloc
from types import SimpleNamespace

import numpy as np
import pandas as pd

from medseg.data.phantoms import PHANTOM_LABELS, make_phantom
from medseg.reporting.report import write_cohort
from medseg.reporting.volumes import rows_frame, structure_rows
from medseg.runner.rundir import RunDir


def _case_rows(n: int) -> list[list[dict]]:
    """Real rows (present, absent, touching the border) of ``n`` small phantoms, each case's labels thinned
    differently so that the statuses and columns vary between cases."""
    out = []
    for i in range(n):
        ph = make_phantom(300 + i % 3, case_id=f"c{i}", spacing=(8.0, 8.0, 8.0), fov_mm=(160.0, 160.0, 128.0))
        lab = ph.labels
        if i % 2:  # drop one structure: an absent row, without the columns of a found one
            lab = type(lab)(np.where(lab.array == 1 + i % 4, 0, lab.array), lab.affine, lab.source, lab.meta)
        rows = structure_rows(f"c{i}", lab, PHANTOM_LABELS, ph.image)
        for r in rows:
            r.update(source_labels=f"cases/c{i}/labels.nii.gz", model="unet", model_sha256="ab" * 32)
        out.append(json.loads(json.dumps(rows)))  # as read back from volumes.json
    return out


def test_tables_from_the_chunked_frame_are_the_tables_of_the_list(tmp_path):
    per_case = _case_rows(12)
    flat = [r for rows in per_case for r in rows]
    write_cohort(tmp_path / "list", flat, PHANTOM_LABELS, html=False)
    write_cohort(tmp_path / "chunks", rows_frame(iter(per_case), chunk_rows=7), PHANTOM_LABELS, html=False)
    for name in ("volumes.csv", "volumes_wide.csv", "summary.csv"):
        assert (tmp_path / "chunks" / name).read_bytes() == (tmp_path / "list" / name).read_bytes(), name
    frame = pd.read_csv(tmp_path / "chunks" / "volumes.csv")
    assert len(frame) == len(flat) and frame["case_id"].nunique() == 12
    assert {"present", "absent"} <= set(frame["status"])


def _synthetic(n_cases: int, n_structures: int = 100):
    """Rows shaped like ``volumes.json``'s: a few text cells and twenty numbers."""
    for i in range(n_cases):
        yield [
            {
                "case_id": f"case{i:05d}",
                "structure": f"s{j:03d}",
                "label": j + 1,
                "status": "present",
                "spacing_mm": "4x4x4",
                **{f"value_{k:02d}": float(i * j + k) for k in range(20)},
            }
            for j in range(n_structures)
        ]


def _peak(build) -> float:
    tracemalloc.start()
    try:
        frame = build()
        assert len(frame) == 3_000
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_rows_frame_holds_a_chunk_of_dicts_not_the_cohort():
    """The dicts of all rows at once and the frame, against the frame twice (pd.concat's copy) and a chunk."""
    all_at_once = _peak(lambda: pd.DataFrame([r for rows in _synthetic(30) for r in rows]))
    chunked = _peak(lambda: rows_frame(_synthetic(30), chunk_rows=300))
    assert chunked < all_at_once / 2, (chunked, all_at_once)
    assert rows_frame(iter([])) is None and rows_frame(iter([[]])) is None


def test_done_json_reads_done_cases_lazily_in_input_order(tmp_path):
    rd = RunDir(tmp_path)
    for cid, status in (("b", "done"), ("a", "failed"), ("c", "done")):
        rd.write_state(cid, {"status": status, "outputs": {"volumes": f"cases/{cid}.json"}})
        (tmp_path / "cases").mkdir(exist_ok=True)
        (tmp_path / "cases" / f"{cid}.json").write_text(json.dumps([{"case_id": cid}]))
    ids: list = []
    rows = rd.done_json([SimpleNamespace(case_id=c) for c in ("c", "a", "b", "missing")], "volumes", ids)
    assert ids == []  # nothing read before it is consumed
    assert list(rows) == [[{"case_id": "c"}], [{"case_id": "b"}]]
    assert ids == ["c", "b"]
