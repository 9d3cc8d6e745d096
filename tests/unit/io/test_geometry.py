import numpy as np
import pytest
import torch

from medseg.errors import GeometryError
from medseg.io.geometry import align_to, from_closest_ras, to_closest_ras
from medseg.io.volume import Volume
from medseg.transforms.spatial import ResampleToSpacingd, grid_steps, resample, resampled_affine, target_shape


def _world(affine, ijk):
    return (affine @ np.r_[ijk, 1.0])[:3]


@pytest.mark.parametrize("perm,flips", [((0, 1, 2), (1, 1, 1)), ((2, 0, 1), (-1, 1, -1)), ((1, 2, 0), (-1, -1, -1))])
def test_closest_ras_round_trip_keeps_every_voxel_at_its_world_point(perm, flips):
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(5, 6, 7)).astype(np.float32)
    affine = np.eye(4)
    cols = np.diag([0.7, 1.1, 3.0])[:, list(perm)] * np.array(flips)
    affine[:3, :3] = cols
    affine[:3, 3] = [10, -20, 30]
    ras, aff_ras, ornt = to_closest_ras(arr, affine)
    # The RAS grid's axes point (positively) along x, y, z.
    assert np.all(np.diag(aff_ras[:3, :3]) > 0)
    # Same value at the same world point.
    for ijk in [(0, 0, 0), (4, 5, 6), (2, 3, 1)]:
        w = _world(affine, ijk)
        ijk_ras = np.round(np.linalg.solve(aff_ras[:3, :3], w - aff_ras[:3, 3])).astype(int)
        assert ras[tuple(ijk_ras)] == arr[ijk]
    np.testing.assert_array_equal(from_closest_ras(ras, ornt), arr)


def test_align_to_undoes_flips_and_refuses_other_grids(coarse_phantom):
    img = coarse_phantom.image
    flipped = Volume(
        img.array[::-1, :, ::-1].copy(),
        img.affine @ np.array([[-1, 0, 0, img.shape[0] - 1], [0, 1, 0, 0], [0, 0, -1, img.shape[2] - 1], [0, 0, 0, 1]]),
        "f",
    )
    np.testing.assert_array_equal(align_to(flipped, img).array, img.array)
    shifted = Volume(img.array, img.affine + np.c_[np.zeros((4, 3)), [5, 0, 0, 0]], "s")
    with pytest.raises(GeometryError):
        align_to(shifted, img)


def test_resample_there_and_back_restores_the_grid_and_a_smooth_image():
    shape, spacing, target = (40, 30, 12), (0.8, 0.8, 3.0), (2.0, 2.0, 2.0)
    size = target_shape(shape, spacing, target)
    assert size == (17, 13, 17)  # round((n - 1) * s / t) + 1, half to even (16.5 -> 16)
    steps = grid_steps(spacing, target)
    x = torch.linspace(0, 1, shape[0])[:, None, None].expand(shape)[None].contiguous()
    back = resample(resample(x, size, steps), shape, [1 / s for s in steps])
    assert back.shape == x.shape
    assert float((back - x).abs().max()) < 0.03  # a linear ramp survives (the far edge clamps)
    # The first voxel centre stays; the spacing is exactly the target.
    aff = np.diag([*spacing, 1.0])
    aff[:3, 3] = [5.0, -7.0, 11.0]
    new = resampled_affine(aff, steps)
    np.testing.assert_allclose(_world(new, [0, 0, 0]), _world(aff, [0, 0, 0]), atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(new[:3, :3], axis=0), target, atol=1e-12)


@pytest.mark.parametrize("case", ["flipped", "oblique"])
def test_resample_grid_and_values_match_monai_spacingd(case):
    """Same shape, affine and (linear) values as MONAI's Spacingd: a MONAI recipe and medseg
    put the network's windows on the same points."""
    from monai.data import MetaTensor
    from monai.transforms import Spacing

    rng = np.random.default_rng(3)
    aff = np.diag([-0.7, 0.9, 3.1, 1.0])
    if case == "oblique":
        c, s = np.cos(0.4), np.sin(0.4)
        aff[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ aff[:3, :3]
    aff[:3, 3] = [30.0, -12.0, 7.5]
    img = torch.from_numpy(rng.normal(size=(1, 37, 29, 9)).astype(np.float32))
    target = (2.5, 2.0, 1.7)
    ref = Spacing(pixdim=target, mode="bilinear", padding_mode="border")(MetaTensor(img, affine=torch.as_tensor(aff)))
    ours = ResampleToSpacingd(["image"], spacing=target)({"image": MetaTensor(img, affine=torch.as_tensor(aff))})[
        "image"
    ]
    assert tuple(ours.shape) == tuple(ref.shape)
    np.testing.assert_allclose(np.asarray(ours.affine), np.asarray(ref.affine), atol=1e-6)
    np.testing.assert_allclose(ours.numpy(), ref.numpy(), atol=1e-4)


def test_resample_transform_keeps_labels_integer_and_aligned():
    from monai.data import MetaTensor

    aff = np.diag([0.9, 0.9, 4.0, 1.0])
    img = MetaTensor(torch.rand(1, 30, 30, 8), affine=torch.as_tensor(aff))
    lab = MetaTensor(torch.randint(0, 4, (1, 30, 30, 8)).float(), affine=torch.as_tensor(aff))
    out = ResampleToSpacingd(["image", "label"], spacing=(1.8, 1.8, 2.0), modes=["trilinear", "nearest"])(
        {"image": img, "label": lab}
    )
    assert out["image"].shape == out["label"].shape == (1, 15, 15, 15)
    assert set(torch.unique(out["label"]).tolist()) <= {0.0, 1.0, 2.0, 3.0}
    np.testing.assert_allclose(np.asarray(out["image"].affine), resampled_affine(aff, (2.0, 2.0, 0.5)))
    np.testing.assert_allclose(np.asarray(out["label"].affine), np.asarray(out["image"].affine))
    # nearest: every output label is the label of the input voxel closest to its world point
    np.testing.assert_array_equal(out["label"][0, :, :, ::2].numpy(), lab[0, ::2, ::2, :].numpy())


@pytest.mark.parametrize("perm,flips", [((0, 1, 2), (-1, 1, -1)), ((2, 0, 1), (1, -1, 1)), ((1, 2, 0), (-1, -1, -1))])
def test_closest_ras_view_with_folded_flips_equals_reorient_then_resample(perm, flips):
    """The predictor never copies the full volume to reorient it: flips are folded into the
    resampling gathers. Same values and affine as reorienting first."""
    from medseg.io.geometry import closest_ras_view

    rng = np.random.default_rng(1)
    arr = rng.integers(-1000, 1000, size=(23, 17, 11)).astype(np.int16)
    affine = np.eye(4)
    affine[:3, :3] = np.diag([0.7, 1.1, 3.0])[:, list(perm)] * np.array(flips)
    affine[:3, 3] = [10, -20, 30]
    ras, aff_ras, _ = to_closest_ras(arr, affine)
    view, aff_view, _, reverse = closest_ras_view(arr[None], affine)
    np.testing.assert_allclose(aff_view, aff_ras)
    spacing, target = np.linalg.norm(aff_ras[:3, :3], axis=0), (2.0, 1.6, 2.5)
    size, steps = target_shape(ras.shape, spacing, target), grid_steps(spacing, target)
    for mode in ("trilinear", "nearest"):
        expected = resample(torch.from_numpy(ras)[None], size, steps, mode=mode)
        got = resample(view, size, steps, mode=mode, reverse=reverse)
        np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-4)
