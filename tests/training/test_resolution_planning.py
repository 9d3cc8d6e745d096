"""The planner weighs resolution against context (medseg.training.resolution): figures on shapes whose answer is
known, and the choice on fingerprints of a CT abdomen and of an MR head."""

import numpy as np
import pytest
from helpers import fingerprint

from medseg.config import config_from_dict
from medseg.training import resolution
from medseg.training.planning import plan_config


def _ct_abdomen(**extra) -> dict:
    """A fingerprint like the CT phantoms at native spacing: 0.78 mm in-plane, 4.5 mm slices (p10 2.5), a 312 x 250
    x 150 mm field of view, a 143 x 104 x 108 mm labelled foreground, the thinnest structure 9 mm thick."""
    fp = fingerprint([0.78, 0.78, 4.5], [400, 320, 33], p10=[0.62, 0.62, 2.53], modality="CT")
    fp.update(
        extent_mm_median=[312.0, 250.0, 150.0],
        foreground_extent_mm_median=[143.0, 104.0, 108.0],
        thinnest_mm=9.0,
        n_train=8,
        foreground={"p00_5": -50.0, "p99_5": 100.0, "mean": 40.0, "std": 20.0},
    )
    fp.update(extra)
    return fp


def test_a_sphere_has_its_volume_and_two_thirds_of_its_radius_as_thickness():
    zooms = (0.8, 0.9, 1.5)
    idx = np.indices((80, 80, 50)).astype(float)
    centre = np.array([40, 40, 25])
    r = 20.0  # mm
    d2 = sum(((idx[a] - centre[a]) * zooms[a]) ** 2 for a in range(3))
    labels = (d2 <= r * r).astype(np.uint8)
    labels[5:9, 5:9, 5:7] = 2  # a 3.2 x 3.6 x 3 mm box
    sizes = resolution.structure_sizes(labels, zooms)
    assert sizes[1]["volume_ml"] == pytest.approx(4 / 3 * np.pi * r**3 / 1000, rel=0.02)
    assert sizes[1]["thickness_mm"] == pytest.approx(2 * r / 3, rel=0.1)  # staircase-corrected faces
    assert sizes[2]["volume_ml"] == pytest.approx(3.2 * 3.6 * 3.0 / 1000, rel=1e-6)
    np.testing.assert_allclose(resolution.foreground_extent(labels == 1, zooms), [2 * r] * 3, atol=1.5)
    np.testing.assert_allclose(
        resolution.foreground_extent(labels, zooms)[:2], [61 * 0.8, 58 * 0.9], atol=1e-6
    )  # box to sphere


def test_ladder_runs_from_full_resolution_to_the_coarsest_and_raises_the_fine_axes_first():
    steps = resolution.ladder(np.array([1.0, 1.0, 2.5]), coarsest=3.0)
    assert [list(s) for s in steps] == [[1.0, 1.0, 2.5], [1.41, 1.41, 2.5], [2.0, 2.0, 2.5], [3.0, 3.0, 3.0]]


def test_ct_abdomen_on_a_cpu_trains_coarser_than_full_resolution_and_says_why():
    fp = _ct_abdomen()
    cfg = plan_config(fp, gpu=False, min_spacing=1.0)
    res = fp["resolution"]
    cands = res["candidates"]
    assert cands[0]["spacing"] == [1.0, 1.0, 2.53] and cands[0]["context"] < 0.5  # 64 mm of a 143 mm foreground
    chosen = cands[res["chosen"]]
    assert cfg["preprocessing"]["spacing"] == chosen["spacing"] and max(chosen["spacing"]) > 1.9
    assert chosen["context"] >= resolution.MIN_CONTEXT and chosen["detail"] >= resolution.MIN_DETAIL_VOXELS
    assert "patch spans 45% of the foreground" in cands[0]["verdict"]
    assert "coarser than the full resolution" in fp["spacing_reason"]
    assert cfg["training"]["patch_size"] == chosen["patch"] == cfg["inference"]["roi_size"]
    assert cfg["model"]["kwargs"] == chosen["model"]["kwargs"]


def test_the_thinnest_structure_caps_how_coarse_a_plan_goes():
    thin = _ct_abdomen(thinnest_mm=4.5)  # a 4.5 mm thick structure: 1.5 mm at the most
    plan_config(thin, gpu=False, min_spacing=1.0)
    spacings = [max(c["spacing"]) for c in thin["resolution"]["candidates"]]
    assert max(spacings) <= 2.53 + 1e-6  # nothing coarser than the full resolution's slice spacing is offered
    chosen = thin["resolution"]["candidates"][thin["resolution"]["chosen"]]
    assert max(chosen["spacing"]) <= 2.53 + 1e-6


def test_a_small_budget_moves_the_plan_coarser_and_a_large_one_finer(monkeypatch):
    monkeypatch.setattr(resolution, "probe_seconds_per_step", lambda *a, **k: 0.25)
    monkeypatch.setattr("medseg.training.planning.probe_seconds_per_step", lambda *a, **k: 0.25)
    short, long = _ct_abdomen(), _ct_abdomen()
    short_cfg = plan_config(short, gpu=False, budget_minutes=2)
    long_cfg = plan_config(long, gpu=False, budget_minutes=120)
    s = short["resolution"]["candidates"][short["resolution"]["chosen"]]
    ln = long["resolution"]["candidates"][long["resolution"]["chosen"]]
    assert max(s["spacing"]) > max(ln["spacing"])
    assert long["resolution"]["seconds_per_step"] == 0.25 and long["resolution"]["budget_minutes"] == 120
    assert s["passes"] < ln["passes"]
    # two hours buy a cascade: stage 1 at the chosen spacing, stage 2 at the full resolution; two minutes do not
    assert "cascade" not in short_cfg and "no cascade" in short["resolution"]["cascade_reason"]
    full = long["resolution"]["candidates"][0]
    assert long_cfg["cascade"]["lowres_spacing"] == ln["spacing"]
    assert (
        long_cfg["preprocessing"]["spacing"] == full["spacing"] and long_cfg["training"]["patch_size"] == full["patch"]
    )
    config_from_dict({**long_cfg, "labels": "abdomen_phantom"}, source="plan")  # the trainer accepts it


def test_without_structure_sizes_only_the_full_resolution_is_considered():
    fp = fingerprint([0.8, 0.8, 5.0], [512, 512, 60], p10=[0.7, 0.7, 2.5])
    cfg = plan_config(fp, memory_gb=1.0, min_spacing=0.5, gpu=False)
    assert cfg["preprocessing"]["spacing"] == [0.8, 0.8, 2.5]
    assert len(fp["resolution"]["candidates"]) == 1


def test_an_mr_head_with_thin_tissue_stays_at_full_resolution():
    fp = fingerprint([2.0, 2.0, 2.0], [104, 120, 96])
    fp.update(foreground_extent_mm_median=[140.0, 175.0, 120.0], thinnest_mm=3.5, n_train=2)
    cfg = plan_config(fp, gpu=False)
    assert cfg["preprocessing"]["spacing"] == [2.0, 2.0, 2.0]


def test_medseg_plan_prints_the_candidates_and_records_them(tiny_cohort, tmp_path):
    import json

    from helpers import medseg_cli

    out = tmp_path / "plan.yaml"
    r = medseg_cli("plan", str(tiny_cohort), "--out", str(out), "--budget-minutes", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resolution for 1 min on the cpu" in r.stdout and "s per step measured" in r.stdout
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("  ") and " mm, patch " in ln]
    res = json.loads((tmp_path / "plan.fingerprint.json").read_text())["resolution"]
    assert len(lines) == len(res["candidates"]) >= 2
    assert sum(ln.endswith("-> chosen") for ln in lines) == 1
    assert res["seconds_per_step"] > 0 and res["budget_minutes"] == 1
