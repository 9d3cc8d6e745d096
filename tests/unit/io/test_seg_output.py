"""DICOM SEG written for a DICOM series lands on the same voxels as the NIfTI label map."""

import numpy as np
import pydicom
import pytest

from medseg.data.phantoms import PHANTOM_LABELS, make_phantom, write_dicom_series
from medseg.io.geometry import align_to
from medseg.io.objects.seg import write_dicom_seg
from medseg.io.readers import read_volume


@pytest.mark.parametrize("flips,oblique", [((True, False, True), 0.0), ((False, True, False), 20.0)])
def test_seg_frames_match_the_label_map_slice_by_slice(tmp_path, flips, oblique):
    import highdicom as hd

    case = make_phantom(61, spacing=(2.0, 2.0, 4.0), flips=flips, oblique_deg=oblique)
    folder = write_dicom_series(case, tmp_path / "series")
    image = read_volume(folder)
    labels = align_to(case.labels, image)  # truth on the DICOM grid
    path = write_dicom_seg(labels, folder, PHANTOM_LABELS, tmp_path / "case.seg.dcm", software_version="test")

    seg = hd.seg.segread(path)
    assert [s.segment_label for s in seg.SegmentSequence] == PHANTOM_LABELS.names
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    inv = np.linalg.inv(labels.affine)
    checked = 0
    for f in sorted(folder.iterdir()):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        ijk = inv @ np.r_[np.diag([-1, -1, 1]) @ np.array(ds.ImagePositionPatient, float), 1.0]
        k = int(round(ijk[2]))
        expected = labels.array[:, :, k].T  # rows x columns of this slice
        if not expected.any():
            continue
        got = seg.get_pixels_by_source_instance(
            [ds.SOPInstanceUID], combine_segments=True, assert_missing_frames_are_empty=True
        )[0]
        np.testing.assert_array_equal(got, expected)
        checked += 1
    assert checked >= 5


def test_seg_for_a_grid_it_does_not_match_is_refused(tmp_path):
    from medseg.errors import InputError

    case = make_phantom(62, spacing=(2.0, 2.0, 4.0))
    folder = write_dicom_series(case, tmp_path / "s")
    other = make_phantom(62, spacing=(3.0, 3.0, 5.0)).labels
    with pytest.raises(InputError, match="no slice"):
        write_dicom_seg(other, folder, PHANTOM_LABELS, tmp_path / "x.seg.dcm", software_version="test")
