"""Fuzz: hostile label tables and RTSTRUCT contours (issue 34).

Seeded and bounded. Every case either reads, or raises a ``MedsegError`` whose message is one line naming
the file; never another exception. Peak memory (tracemalloc: numpy's buffers are traced) stays under a
fixed bound whatever the coordinates or values claim.
"""

from __future__ import annotations

import random
import tracemalloc

import numpy as np
import pydicom
import pytest
import yaml

from medseg.errors import MedsegError
from medseg.labels import LabelTable

N_TABLES, N_CONTOURS, SEED = 400, 12, 23
PEAK_LIMIT_MB = 400

HOSTILE = [
    None,
    "",
    " ",
    "..",
    "one",
    '=HYPERLINK("x")',
    -1,
    0,
    1,
    2,
    65535,
    65536,
    2**31 - 1,
    2**63,
    -(2**63),
    1.5,
    float("nan"),
    float("inf"),
    True,
    [],
    {},
    [1, 2],
    [255, 0, 0],
    ["red", 0, 0],
    [256, 0, 0],
    [-1, 0, 0],
    [1, 2, 3, 4],
    "x" * 5000,
    "\x00",
    "\u202e",
    {"a": 1},
]
KEYS = ["index", "name", "color", "snomed"]


def _table(rng: random.Random) -> dict:
    labels = []
    for k in range(rng.randint(0, 5)):
        item = {"index": k + 1, "name": f"s{k}"}
        for key in rng.sample(KEYS + ["extra"], rng.randint(0, 3)):
            item[key] = rng.choice(HOSTILE)
        if rng.random() < 0.1:
            item = rng.choice(HOSTILE)
        labels.append(item)
    data = {"name": rng.choice(["t", *HOSTILE[:6]]), "labels": labels}
    if rng.random() < 0.1:
        data["unknown"] = 1
    if rng.random() < 0.05:
        data = rng.choice(HOSTILE)
    return data


def test_fuzzed_label_tables_read_or_refuse_in_one_line(tmp_path):
    rng = random.Random(SEED)
    refused = read = 0
    for n in range(N_TABLES):
        path = tmp_path / f"t{n}.yaml"
        try:
            path.write_text(yaml.safe_dump(_table(rng), allow_unicode=True))
        except yaml.YAMLError:
            continue
        try:
            table = LabelTable.from_yaml(path)
        except MedsegError as exc:
            msg = str(exc)
            assert "\n" not in msg and path.name in msg, msg
            refused += 1
            continue
        assert all(isinstance(lab.index, int) and 1 <= lab.index <= 65535 for lab in table.labels)
        assert all(isinstance(lab.name, str) and lab.name for lab in table.labels)
        assert all(
            lab.color is None or (len(lab.color) == 3 and all(0 <= c <= 255 for c in lab.color)) for lab in table.labels
        )
        read += 1
    assert refused > 50 and read > 20, (refused, read)  # both paths exercised


@pytest.fixture(scope="module")
def rtstruct(tmp_path_factory):
    from medseg.data.phantoms import PHANTOM_LABELS, make_phantom, write_dicom_series
    from medseg.io.dicom.series import read_dicom_series
    from medseg.io.objects.rtstruct import write_rtstruct

    tmp = tmp_path_factory.mktemp("rt")
    case = make_phantom(3, fov_mm=(120.0, 100.0, 60.0), spacing=(2.0, 2.0, 4.0))
    folder = write_dicom_series(case, tmp / "ct")
    labels = read_dicom_series(folder).with_array(case.labels.array)
    return folder, write_rtstruct(labels, folder, PHANTOM_LABELS, tmp / "rs.dcm")


HOSTILE_COORDS = [0.0, -0.0, 1e-9, 1e3, -1e3, 2e8, -2e8, 1e12, -1e12, 1e300, float("nan"), float("inf"), float("-inf")]


def _mutate(ds, rng: random.Random) -> None:
    items = [c for roi in ds.ROIContourSequence for c in getattr(roi, "ContourSequence", [])]
    for item in rng.sample(items, min(len(items), rng.randint(1, 4))):
        pts = [float(v) for v in item.ContourData]
        action = rng.randrange(5)
        if action == 0:  # far or non-finite coordinates
            for _ in range(rng.randint(1, 3)):
                pts[rng.randrange(len(pts))] = rng.choice(HOSTILE_COORDS)
        elif action == 1:  # a ragged point list
            pts = pts[: max(1, len(pts) - rng.randint(1, 2))]
        elif action == 2:  # one point, or a degenerate line
            pts = pts[:3] * rng.randint(1, 3)
        elif action == 3:
            item.NumberOfContourPoints = rng.choice([0, 1, 10**9])
        else:
            item.ContourGeometricType = rng.choice(["POINT", "OPEN_PLANAR", "OPEN_NONPLANAR", "", "CLOSED_PLANAR"])
        item.ContourData = [f"{v:.6g}"[:16] if np.isfinite(v) else str(v) for v in pts]
    if rng.random() < 0.2:
        ds.StructureSetROISequence[rng.randrange(len(ds.StructureSetROISequence))].ROIName = rng.choice(
            ["", "..", " ", "x" * 64]
        )


def test_fuzzed_rtstruct_contours_read_or_refuse_in_bounded_memory(rtstruct, tmp_path):
    from medseg.io.dicom.series import scan_inventory
    from medseg.io.objects.rtstruct import read_rtstruct

    folder, path = rtstruct
    inventory = scan_inventory(folder)  # scanned once: the fuzz is of the contours, not of the series
    rng = random.Random(SEED)
    outcomes = {"read": 0, "refused": 0}
    peak_mb = 0.0
    for n in range(N_CONTOURS):
        ds = pydicom.dcmread(path)
        _mutate(ds, rng)
        target = tmp_path / f"rs{n}.dcm"
        ds.save_as(target)
        tracemalloc.start()
        try:
            res = read_rtstruct(target, folder, inventory=inventory)
            assert res.labels.shape == tuple(res.labels.shape) and res.labels.array.dtype.kind in "iu"
            outcomes["read"] += 1
        except MedsegError as exc:
            assert "\n" not in str(exc), str(exc)
            outcomes["refused"] += 1
        finally:
            peak_mb = max(peak_mb, tracemalloc.get_traced_memory()[1] / 1e6)
            tracemalloc.stop()
    assert peak_mb < PEAK_LIMIT_MB, peak_mb
    assert outcomes["read"] > 0, outcomes
