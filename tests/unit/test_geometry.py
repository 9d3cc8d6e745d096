import numpy as np
import pytest
import torch

from medseg.errors import GeometryError
from medseg.io.geometry import align_to, from_closest_ras, to_closest_ras
from medseg.io.volume import Volume
from medseg.transforms.spatial import ResampleToSpacingd, resample, resampled_affine, target_shape


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
    flipped = Volume(img.array[::-1, :, ::-1].copy(), img.affine @ np.array(
        [[-1, 0, 0, img.shape[0] - 1], [0, 1, 0, 0], [0, 0, -1, img.shape[2] - 1], [0, 0, 0, 1]]), "f")
    np.testing.assert_array_equal(align_to(flipped, img).array, img.array)
    shifted = Volume(img.array, img.affine + np.c_[np.zeros((4, 3)), [5, 0, 0, 0]], "s")
    with pytest.raises(GeometryError):
        align_to(shifted, img)


def test_resample_there_and_back_restores_the_grid_and_a_smooth_image():
    shape, spacing, target = (40, 30, 12), (0.8, 0.8, 3.0), (2.0, 2.0, 2.0)
    size = target_shape(shape, spacing, target)
    assert size == (16, 12, 18)
    x = torch.linspace(0, 1, shape[0])[:, None, None].expand(shape)[None].contiguous()
    back = resample(resample(x, size), shape)
    assert back.shape == x.shape
    assert float((back - x).abs().max()) < 0.05  # a linear ramp survives (edges clamp)
    # The resampled grid covers the same extent: first/last voxel edges coincide.
    aff = np.diag([*spacing, 1.0])
    new = resampled_affine(aff, shape, size)
    lo_old = _world(aff, [-0.5] * 3)
    lo_new = _world(new, [-0.5] * 3)
    np.testing.assert_allclose(lo_new, lo_old, atol=1e-9)
    np.testing.assert_allclose(_world(new, np.array(size) - 0.5), _world(aff, np.array(shape) - 0.5), atol=1e-9)


def test_resample_transform_keeps_labels_integer_and_aligned():
    from monai.data import MetaTensor

    aff = np.diag([0.9, 0.9, 4.0, 1.0])
    img = MetaTensor(torch.rand(1, 30, 30, 8), affine=torch.as_tensor(aff))
    lab = MetaTensor(torch.randint(0, 4, (1, 30, 30, 8)).float(), affine=torch.as_tensor(aff))
    out = ResampleToSpacingd(["image", "label"], spacing=(1.8, 1.8, 2.0), modes=["trilinear", "nearest"])({"image": img, "label": lab})
    assert out["image"].shape == out["label"].shape == (1, 15, 15, 16)
    assert set(torch.unique(out["label"]).tolist()) <= {0.0, 1.0, 2.0, 3.0}
    np.testing.assert_allclose(np.asarray(out["image"].affine), resampled_affine(aff, (30, 30, 8), (15, 15, 16)))
