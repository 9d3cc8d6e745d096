import numpy as np
import pytest

from medseg.data.phantoms import PHANTOM_LABELS, make_phantom


def test_same_seed_same_case_and_truth_counts_match_label_map(coarse_phantom):
    again = make_phantom(11, spacing=(1.6, 1.6, 4.0), flips=(True, False, True))
    np.testing.assert_array_equal(again.image.array, coarse_phantom.image.array)
    for lab in PHANTOM_LABELS.labels:
        assert coarse_phantom.voxel_counts[lab.name] == np.count_nonzero(coarse_phantom.labels.array == lab.index)
        assert coarse_phantom.voxel_counts[lab.name] > 0


def test_hu_values_are_realistic_with_low_liver_spleen_contrast(coarse_phantom):
    img, lab = coarse_phantom.image.array, coarse_phantom.labels.array
    means = {lb.name: img[lab == lb.index].mean() for lb in PHANTOM_LABELS.labels}
    assert means["liver"] == pytest.approx(60, abs=8)
    assert means["spleen"] == pytest.approx(50, abs=8)
    assert means["kidney_right"] == pytest.approx(30, abs=8)
    assert abs(means["liver"] - means["spleen"]) < 20
    assert img.min() <= -990  # air outside the body
    assert img[img > 200].size > 0  # bone


def test_organ_volume_does_not_depend_on_the_grid():
    fine = make_phantom(3, spacing=(0.8, 0.8, 1.5))
    coarse = make_phantom(3, spacing=(1.0, 1.0, 5.0), flips=(True, True, True))
    for name in fine.volumes_ml:
        assert coarse.volumes_ml[name] == pytest.approx(fine.volumes_ml[name], rel=0.04), name


def test_random_cases_vary_spacing_flips_and_stay_in_range():
    cases = [make_phantom(s) for s in range(6)]
    spacings = [c.image.spacing for c in cases]
    assert all(0.6 <= s[0] <= 1.0 and s[0] == pytest.approx(s[1]) and 1.5 <= s[2] <= 5.0 for s in spacings)
    signs = {tuple(np.sign(np.diag(c.image.affine)[:3])) for c in cases}
    assert len(signs) > 1  # not all identity orientation
    for c in cases:  # organs lie fully inside the field of view
        lab = c.labels.array
        assert not (lab[[0, -1]].any() or lab[:, [0, -1]].any() or lab[:, :, [0, -1]].any())
    assert len({c.volumes_ml["liver"] for c in cases}) == len(cases)


def test_right_kidney_lies_on_the_patients_right(coarse_phantom):
    """RAS+ (NIfTI): +x points to the patient's right; DICOM's LPS+ points it left."""
    lab, aff = coarse_phantom.labels.array, coarse_phantom.labels.affine

    def centroid_x(index):
        ijk = np.argwhere(lab == index).mean(axis=0)
        return (aff @ np.r_[ijk, 1.0])[0]

    assert centroid_x(3) > centroid_x(4)


def test_cohort_drawn_in_threads_equals_the_serial_one(tmp_path, monkeypatch):
    """write_cohort's threads must not share random state or mix up rows: the same files and manifest as one thread."""
    import nibabel as nib
    import pandas as pd

    import medseg.data.phantoms as ph

    real = ph.make_phantom
    monkeypatch.setattr(
        ph, "make_phantom", lambda seed, case_id, **kw: real(seed, case_id=case_id, spacing=(4.0, 4.0, 5.0), **kw)
    )
    serial = pd.read_csv(ph.write_cohort(tmp_path / "serial", 5, seed=40, workers=1))
    threaded = pd.read_csv(ph.write_cohort(tmp_path / "threaded", 5, seed=40, workers=3))
    pd.testing.assert_frame_equal(serial, threaded)
    assert list(threaded["case_id"]) == [f"phantom_{n:04d}" for n in range(40, 45)]
    assert threaded["true_liver_ml"].nunique() == 5  # five different cases, not one five times
    for kind in ("image", "label"):
        for rel in serial[kind]:
            a, b = nib.load(tmp_path / "serial" / rel), nib.load(tmp_path / "threaded" / rel)
            np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
            np.testing.assert_array_equal(a.affine, b.affine)
