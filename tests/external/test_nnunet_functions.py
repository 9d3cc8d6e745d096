"""medseg's copies of nnU-Net's array steps against nnunetv2's own functions, on random data (fast; needs nnunetv2).

Resampling (isotropic, the separate low-resolution axis on either end, forced,
float16 logits), crop to non-zero, each normalisation scheme (z-score with and
without the non-zero mask), the Gaussian, the window steps and padding.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("nnunetv2", reason="nnunetv2 is not installed (test-only: see the nnunet extra in pyproject.toml)")

from medseg.adapters.nnunet import inference as nn  # noqa: E402


@pytest.mark.parametrize(
    "shape, cur, new, kw",
    [
        ((1, 20, 24, 18), [2.0, 2.0, 2.0], [1.5, 2.5, 1.0], {"order": 3, "force_separate_z": None}),
        (
            (2, 7, 30, 28),
            [6.0, 1.0, 1.0],
            [3.0, 1.5, 1.5],
            {"order": 3, "order_z": 0, "force_separate_z": None},
        ),  # slices first
        (
            (1, 26, 22, 6),
            [0.8, 0.8, 5.0],
            [1.6, 1.6, 2.0],
            {"order": 3, "order_z": 0, "force_separate_z": None},
        ),  # slices last
        (
            (1, 10, 12, 14),
            [1.0, 1.0, 1.0],
            [1.0, 3.5, 3.5],
            {"order": 3, "order_z": 0, "force_separate_z": None},
        ),  # target anisotropic
        ((1, 10, 12, 14), [1.0, 1.0, 4.0], [1.0, 1.0, 2.0], {"order": 1, "order_z": 0, "force_separate_z": True}),
        ((1, 10, 12, 14), [1.0, 1.0, 4.0], [1.0, 1.0, 2.0], {"order": 1, "order_z": 0, "force_separate_z": False}),
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_resampling_equals_nnunet(shape, cur, new, kw, dtype):
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape, resample_data_or_seg_to_shape

    rng = np.random.default_rng(0)
    data = (rng.normal(size=shape) * 3).astype(dtype)
    new_shape = compute_new_shape(shape[1:], cur, new)
    assert list(nn.compute_new_shape(shape[1:], cur, new)) == list(new_shape)
    ref = resample_data_or_seg_to_shape(data.copy(), new_shape, cur, new, is_seg=False, **kw)
    ours = nn.resample(data.copy(), new_shape, cur, new, is_seg=False, **kw)
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    np.testing.assert_array_equal(ours, ref)


def test_crop_to_nonzero_equals_nnunet():
    from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero

    data = np.zeros((2, 20, 22, 24), np.float32)
    data[0, 3:15, 5:9, 2:20] = 1
    data[1, 4:6, 2:4, 10:12] = 2
    data[0, 6:8, 6:8, 8:12] = 0  # a hole inside the body: filled, as nnU-Net fills it
    cropped, seg, bbox = crop_to_nonzero(data.copy())
    mask = nn.nonzero_mask(data)
    assert nn.bbox_of(mask) == [list(map(int, b)) for b in bbox]
    sl = tuple(slice(a, b) for a, b in nn.bbox_of(mask))
    np.testing.assert_array_equal(mask[sl], seg[0] >= 0)


@pytest.mark.parametrize(
    "scheme, use_mask",
    [
        ("CTNormalization", False),
        ("ZScoreNormalization", False),
        ("ZScoreNormalization", True),
        ("RescaleTo01Normalization", False),
        ("NoNormalization", False),
    ],
)
def test_normalisation_equals_nnunet(scheme, use_mask):
    import nnunetv2.preprocessing.normalization.default_normalization_schemes as schemes

    rng = np.random.default_rng(1)
    img = rng.normal(100, 50, size=(12, 14, 16)).astype(np.float32)
    img[:3] = 0  # zero background (MR-like)
    mask = img != 0
    seg = np.where(mask, 0, -1).astype(np.int8)
    props = {"mean": 90.0, "std": 40.0, "percentile_00_5": 10.0, "percentile_99_5": 200.0}
    ref = getattr(schemes, scheme)(use_mask_for_norm=use_mask, intensityproperties=props).run(img.copy(), seg)
    ours = nn.normalize_channel(img.copy(), scheme, use_mask, props, mask)
    np.testing.assert_array_equal(ours, ref)
    if use_mask:
        assert (ours[~mask] == 0).all()


@pytest.mark.parametrize(
    "tile, image",
    [((12, 80, 96), (12, 69, 83)), ((64, 64, 64), (150, 64, 97)), ((40, 48), (41, 200)), ((40, 48), (30, 20))],
)
def test_gaussian_steps_and_padding_equal_nnunet(tile, image):
    import torch
    from acvl_utils.cropping_and_padding.padding import pad_nd_image
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window

    g = compute_gaussian(tile, sigma_scale=1.0 / 8, value_scaling_factor=10, device=torch.device("cpu"))
    assert torch.equal(nn.gaussian(tile), g)
    padded_size = [max(i, t) for i, t in zip(image, tile, strict=False)]
    assert nn.steps_for(padded_size, tile, 0.5) == compute_steps_for_sliding_window(padded_size, tile, 0.5)
    x = torch.randn(1, *image) if len(tile) == len(image) else torch.randn(2, 5, *image)  # 2D: a stack of slices
    ref, ref_sl = pad_nd_image(x, tile, "constant", {"value": 0}, True, None)
    ours, sl = nn.pad_to(x, tile)
    assert torch.equal(ours, ref) and tuple(sl) == tuple(ref_sl[1:])


def test_float32_resampling_makes_no_float64_copy_of_the_image():
    """The float32 route gives nnU-Net's values (test_resampling_equals_nnunet) without converting the whole image
    to float64 first: the traced peak stays under 7 image sizes (the float64 route took 10)."""
    import tracemalloc

    data = np.random.default_rng(0).normal(size=(1, 64, 160, 160)).astype(np.float32)
    tracemalloc.start()
    try:
        out = nn.resample(data, [40, 100, 100], [1.0, 0.8, 0.8], [1.6, 1.28, 1.28])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.dtype == np.float32 and out.shape == (1, 40, 100, 100)
    assert peak < 7 * data.nbytes, peak / data.nbytes


def test_preprocessing_in_place_equals_the_copy_and_leaves_no_trace_on_a_kept_input():
    from types import SimpleNamespace

    rng = np.random.default_rng(1)
    data = np.zeros((1, 30, 40, 50), np.float32)
    data[0, 2:28, 5:35, 4:46] = rng.normal(40, 200, size=(26, 30, 42))
    model = SimpleNamespace(
        plans={"transpose_forward": [0, 1, 2]},
        conf={"spacing": [2.0, 1.5, 1.5], "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False]},
    )
    model.plans["foreground_intensity_properties_per_channel"] = {
        "0": {"percentile_00_5": -300.0, "percentile_99_5": 400.0, "mean": 30.0, "std": 150.0}
    }
    kept = data.copy()
    ref, props = nn.preprocess(data, [1.0, 0.8, 0.8], model)
    np.testing.assert_array_equal(data, kept)  # the default leaves the caller's array as it was
    ours, props2 = nn.preprocess(data, [1.0, 0.8, 0.8], model, inplace=True)
    np.testing.assert_array_equal(ours, ref)
    assert props2 == props and not np.array_equal(data, kept)  # ... and inplace used it
