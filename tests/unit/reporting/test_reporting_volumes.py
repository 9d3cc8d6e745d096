"""volumes.csv on analytic shapes and against independent computations (SimpleITK on NRRD)."""

import numpy as np
import pandas as pd
import pytest

from medseg.io.volume import Volume
from medseg.labels import Label, LabelTable
from medseg.reporting.resample import image_on_label_grid
from medseg.reporting.volumes import structure_rows, volumes_frame

ONE = LabelTable("one", (Label(1, "blob"),))


def _rotation(deg_x: float, deg_z: float) -> np.ndarray:
    a, b = np.deg2rad(deg_x), np.deg2rad(deg_z)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    return rz @ rx


IDENTITY = np.eye(3)  # the default rotation (made once, as the default argument it replaces was)


def grid(spacing, flips=(False, False, False), rot=IDENTITY, fov=(80.0, 70.0, 90.0), centre=(10.0, -20.0, 30.0)):
    """A grid covering ``fov`` mm around ``centre`` (world, RAS mm)."""
    shape = tuple(int(np.ceil(f / s)) for f, s in zip(fov, spacing, strict=False))
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([-1.0 if f else 1.0 for f in flips]) @ np.diag(spacing)
    affine[:3, 3] = np.asarray(centre) - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return shape, affine


def world_coords(shape, affine):
    ijk = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"))
    return np.tensordot(affine[:3, :3], ijk, axes=1) + affine[:3, 3][:, None, None, None]


def ellipsoid(shape, affine, centre, semi, rot=IDENTITY):
    xyz = world_coords(shape, affine) - np.asarray(centre)[:, None, None, None]
    local = np.tensordot(rot.T, xyz, axes=1)
    return (sum((local[a] / semi[a]) ** 2 for a in range(3)) <= 1.0).astype(np.uint8)


SEMI = (21.0, 14.0, 30.0)
CENTRE = (12.3, -18.9, 31.7)
ANALYTIC_ML = 4.0 / 3.0 * np.pi * np.prod(SEMI) / 1000.0


@pytest.mark.parametrize(
    "flips,rot",
    [((True, False, True), np.eye(3)), ((False, True, False), _rotation(25, 35))],
    ids=["flipped", "oblique"],
)
def test_ellipsoid_volume_is_exact_count_and_converges_to_analytic(flips, rot):
    shape_rot = _rotation(10, -20)  # the ellipsoid is itself rotated in the world
    errors = []
    for spacing in [(2.0, 2.0, 5.0), (1.2, 1.2, 3.0), (0.6, 0.6, 1.5)]:
        shape, affine = grid(spacing, flips, rot)
        lab = ellipsoid(shape, affine, CENTRE, SEMI, shape_rot)
        row = structure_rows("c", Volume(lab, affine), ONE)[0]
        n = int(lab.sum())
        det = Volume(lab, affine).voxel_volume_mm3  # |det(affine[:3, :3])|
        assert det == pytest.approx(np.prod(spacing), rel=1e-12)
        assert row["status"] == "present" and row["voxel_count"] == n
        assert row["volume_mm3"] == n * det  # exactly, not approximately
        assert row["volume_ml"] == n * det / 1000.0
        # The centroid of a symmetric solid is its centre (sampling error well under a voxel).
        c = np.array([row["centroid_x_mm"], row["centroid_y_mm"], row["centroid_z_mm"]])
        assert np.abs(c - CENTRE).max() < 0.25 * max(spacing)
        errors.append(abs(row["volume_ml"] - ANALYTIC_ML) / ANALYTIC_ML)
    assert errors[-1] < 0.005, errors  # 0.6 x 0.6 x 1.5 mm: within 0.5% of 4/3 pi abc
    assert errors[-1] < errors[0], errors


def test_bbox_and_components_on_known_boxes():
    spacing = (0.8, 1.5, 2.5)
    shape, affine = grid(spacing, flips=(True, True, False))
    lab = np.zeros(shape, np.uint8)
    lab[10:20, 5:9, 3:7] = 1  # 160 voxels
    lab[30:32, 20:22, 20:22] = 1  # 8 voxels, separate
    lab[32, 22, 22] = 1  # touches the small box at a corner only: same component with 26-connectivity
    row = structure_rows("c", Volume(lab, affine), ONE)[0]
    vv = float(np.prod(spacing))
    assert row["n_components"] == 2
    assert row["largest_component_ml"] == pytest.approx(160 * vv / 1000)
    assert row["voxel_count"] == 169
    corners = np.array([affine @ [i, j, k, 1] for i in (10, 32) for j in (5, 22) for k in (3, 22)])[:, :3]
    for a, axis in enumerate("xyz"):
        assert row[f"bbox_{axis}_min_mm"] == pytest.approx(corners[:, a].min())
        assert row[f"bbox_{axis}_max_mm"] == pytest.approx(corners[:, a].max())


def test_border_absent_and_min_size_statuses_keep_measurements():
    table = LabelTable("t", (Label(1, "cut"), Label(2, "gone"), Label(3, "speck")))
    shape, affine = grid((2.0, 2.0, 2.0))
    lab = ellipsoid(
        shape, affine, (10.0 + 40.0, -20.0, 30.0), (15.0, 10.0, 10.0)
    )  # centre on the +x face: half cut off
    lab[20, 20, 20] = 3
    df = volumes_frame(structure_rows("c", Volume(lab, affine), table, min_size_ml=0.05)).set_index("structure")
    assert df.loc["cut", "status"] == "touches_border" and bool(df.loc["cut", "touches_border"])
    assert (
        df.loc["cut", "volume_mm3"] == int((lab == 1).sum()) * Volume(lab, affine).voxel_volume_mm3 > 0
    )  # measured, a lower bound
    assert (
        df.loc["gone", "status"] == "absent" and df.loc["gone", "volume_ml"] == 0 and df.loc["gone", "voxel_count"] == 0
    )
    for col in ["intensity_mean", "centroid_x_mm", "bbox_z_max_mm", "largest_component_ml", "touches_border"]:
        assert pd.isna(df.loc["gone", col]), col  # empty cells, not 0
    assert df.loc["speck", "status"] == "below_min_size" and df.loc["speck", "volume_ml"] == pytest.approx(0.008)
    assert not bool(df.loc["speck", "touches_border"])


def test_image_on_another_grid_is_resampled_linearly():
    """A linear ramp is reproduced exactly by trilinear interpolation, so the mean is known."""
    lab_shape, lab_aff = grid((1.0, 1.0, 2.0), flips=(True, False, False), rot=_rotation(0, 20))
    img_shape, img_aff = grid((1.7, 1.3, 2.9), fov=(60.0, 50.0, 70.0), centre=(12.0, -18.0, 30.0))
    ramp = lambda xyz: 3.0 * xyz[0] - 2.0 * xyz[1] + 0.5 * xyz[2] + 7.0  # noqa: E731
    image = Volume(ramp(world_coords(img_shape, img_aff)).astype(np.float32), img_aff)
    lab = ellipsoid(lab_shape, lab_aff, CENTRE, (12.0, 10.0, 16.0))
    lab[0:3, 0:3, 0:3] = 1  # a corner of the label grid that the image does not cover
    labels = Volume(lab, lab_aff)
    arr, method = image_on_label_grid(image, labels)
    assert method == "linear"
    row = structure_rows("c", labels, ONE, arr)[0]
    inside = np.isfinite(arr) & (lab == 1)
    expected = ramp(world_coords(lab_shape, lab_aff)[:, inside]).mean()
    assert row["intensity_mean"] == pytest.approx(expected, abs=1e-3)
    assert row["intensity_coverage"] == pytest.approx(inside.sum() / lab.sum())
    assert 0.9 < row["intensity_coverage"] < 1.0
    near, method = image_on_label_grid(image, labels, order=0)
    assert method == "nearest" and np.isfinite(near[lab == 1]).sum() == inside.sum()


def test_many_labels_nrrd_lps_against_simpleitk(tmp_path):
    """Volumes, centroids and intensity means agree with SimpleITK's own filters on an NRRD with
    a non-RAS, non-axis-aligned direction (read through medseg's reader)."""
    import SimpleITK as sitk

    from medseg.io.readers import read_volume

    rng = np.random.default_rng(3)
    arr = np.zeros((40, 50, 30), np.uint8)  # ITK (z, y, x) order
    table = LabelTable("many", tuple(Label(i, f"s{i}") for i in range(1, 13)))
    for i in range(1, 12):  # label 12 stays absent
        z0, y0, x0 = rng.integers(0, 30), rng.integers(0, 40), rng.integers(0, 20)
        arr[z0 : z0 + rng.integers(2, 10), y0 : y0 + rng.integers(2, 10), x0 : x0 + rng.integers(2, 10)] = i
    intens = rng.normal(40, 20, size=arr.shape).astype(np.float32)
    direction = _rotation(20, 110) @ np.diag([1.0, -1.0, 1.0])
    for name, data in (("lab.nrrd", arr), ("img.nrrd", intens)):
        img = sitk.GetImageFromArray(data)
        img.SetSpacing((0.7, 1.1, 2.3))
        img.SetOrigin((-31.0, 12.5, 140.0))
        img.SetDirection(tuple(direction.ravel()))
        sitk.WriteImage(img, str(tmp_path / name))
    lab_img, int_img = sitk.ReadImage(str(tmp_path / "lab.nrrd")), sitk.ReadImage(str(tmp_path / "img.nrrd"))
    shape_f = sitk.LabelShapeStatisticsImageFilter()
    shape_f.Execute(lab_img)
    stats_f = sitk.LabelStatisticsImageFilter()
    stats_f.Execute(int_img, lab_img)

    labels, image = read_volume(tmp_path / "lab.nrrd"), read_volume(tmp_path / "img.nrrd")
    df = volumes_frame(structure_rows("c", labels, table, image)).set_index("label")
    for i in range(1, 12):
        if i not in shape_f.GetLabels():
            continue  # overwritten by a later box
        assert df.loc[i, "volume_mm3"] == pytest.approx(shape_f.GetPhysicalSize(i), rel=1e-9)
        lps = np.array(shape_f.GetCentroid(i))
        ras = [df.loc[i, f"centroid_{a}_mm"] for a in "xyz"]
        np.testing.assert_allclose(ras, lps * [-1, -1, 1], atol=1e-6)  # RAS+ = LPS with x and y negated
        assert df.loc[i, "intensity_mean"] == pytest.approx(stats_f.GetMean(i), rel=1e-6)
    assert df.loc[12, "status"] == "absent"
