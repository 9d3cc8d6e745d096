import numpy as np
import pytest
import torch
from helpers import fingerprint

from medseg.config import load_config
from medseg.training.planning import plan, plan_config
from medseg.transforms.intensity import NormalizeIntensityByPresetd, floor_value, normalize


def test_plan_reads_the_phantoms_as_ct_and_writes_a_valid_config(tiny_cohort, tmp_path):
    out, fp = plan(tiny_cohort, tmp_path / "planned.yaml", min_spacing=2.0, memory_gb=0.5)
    assert fp["modality"] == "CT" and fp["n_cases"] == 3
    assert fp["spacing_median"] == pytest.approx([3.0, 3.0, 5.0])
    # Foreground HU of the phantoms: organs 30-60 HU with noise.
    assert 0 < fp["foreground"]["p00_5"] < 30 < 60 < fp["foreground"]["p99_5"] < 110
    cfg = load_config(out)
    assert cfg.preprocessing.intensity == "ct_clip_zscore"
    assert cfg.preprocessing.spacing == [3.0, 3.0, 5.0]
    assert all(p % 8 == 0 for p in cfg.training.patch_size) and cfg.inference.roi_size == cfg.training.patch_size


def test_anisotropic_spacing_and_memory_budget_shape_the_patch():
    fp = fingerprint([0.8, 0.8, 5.0], [512, 512, 60], p10=[0.7, 0.7, 2.5])
    cfg = plan_config(fp, memory_gb=1.0, min_spacing=0.5)
    assert cfg["preprocessing"]["spacing"] == [0.8, 0.8, 2.5]  # coarse axis: its 10th percentile
    assert "axis z" in fp["spacing_reason"] and "10th percentile" in fp["spacing_reason"]  # medseg plan prints why
    iso = {**fp, "spacing_median": [1.0, 1.0, 1.2]}
    plan_config(iso, memory_gb=1.0, min_spacing=0.5)
    assert iso["spacing_reason"] == "the median spacing of the training cases"
    assert cfg["preprocessing"]["intensity"] == "zscore"
    small = plan_config(fp, memory_gb=0.1, min_spacing=0.5)["training"]["patch_size"]
    big = plan_config(fp, memory_gb=8.0, min_spacing=0.5)["training"]["patch_size"]
    assert np.prod(small) < np.prod(big) and max(big) <= 128


def test_intensity_presets_and_their_keyed_wrapper_agree():
    x = torch.tensor([[[[-1000.0, 0.0, 40.0, 3000.0]]]])
    ct = {"intensity": "ct_clip_zscore", "clip": [-100.0, 200.0], "mean": 50.0, "std": 25.0}
    np.testing.assert_allclose(normalize(x, ct).flatten().numpy(), [-6.0, -2.0, -0.4, 6.0])
    assert floor_value(ct) == pytest.approx(-6.0)
    np.testing.assert_allclose(
        normalize(x, {"intensity": "ct_window", "window": [-200, 250]}).flatten().numpy(), [0, 200 / 450, 240 / 450, 1]
    )
    mr = normalize(torch.tensor([[[[0.0, 10.0, 20.0, 30.0]]]]), {"intensity": "zscore"})
    assert mr[0, 0, 0, 1:].mean().abs() < 1e-6  # statistics over the non-zero voxels
    assert floor_value({"intensity": "zscore"}) is None
    keyed = NormalizeIntensityByPresetd("image", ct)({"image": x})["image"]
    torch.testing.assert_close(torch.as_tensor(keyed), normalize(x, ct))
