"""DICOM reading on real-world and hostile inputs the tests build.

- oblique series whose ImagePositionPatient is rounded in the header (as scanners write it) are read, and
  equal SimpleITK's ImageSeriesReader; the same series with a missing slice is still refused;
- a DICOMDIR is used (its files have no extension, may be missing or renamed to lower case);
- MONOCHROME1 is inverted to MONOCHROME2 sense by GDCM's rule, equal to SimpleITK, and recorded;
- a header that claims more pixels than allowed is refused with one line naming the file, before decoding;
- dangling links, link loops and FIFOs inside a scanned folder are listed and the scan goes on.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

from medseg.data.phantoms import make_phantom, write_dicom_series
from medseg.errors import ConfigError, GeometryError, InputError
from medseg.io.dicom.convert import convert_folder
from medseg.io.dicom.geometry import GeometryPolicy
from medseg.io.dicom.series import read_dicom_series, scan_inventory
from medseg.io.geometry import align_to
from medseg.io.readers import read_volume
from medseg.provenance import peak_rss_mb, reset_peak_rss

sitk = pytest.importorskip("SimpleITK")
sys.path.insert(0, str(Path(__file__).parent))
from test_dicom_sitk_agreement import assert_same_as_sitk, sitk_series  # noqa: E402


def _rotation(axis, angle) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def mr_series(
    folder,
    *,
    n=20,
    step=7.0,
    decimals=2,
    angle=0.3,
    drop=(),
    reverse=False,
    flip=False,
    photometric="MONOCHROME2",
    bits_stored=12,
    signed=False,
    slope=1.0,
    intercept=0.0,
    seed=0,
    positions=None,
) -> Path:
    """An oblique MR series of ``n`` 12 x 10 slices, ImagePositionPatient written with ``decimals`` decimals.

    ``reverse`` numbers instances against the slice normal; ``flip`` negates the row direction (the normal
    turns round); ``drop`` leaves slices out; ``positions`` (offsets along the normal, mm) replaces k * step.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rot = _rotation([1.0, 0.5, 0.2], angle)
    row, col = rot[:, 0] * (-1 if flip else 1), rot[:, 1]
    normal = np.cross(row, col)
    origin = np.array([-100.123456, -80.654321, 40.987654])
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    rng = np.random.default_rng(seed)
    offsets = np.arange(n) * step if positions is None else np.asarray(positions, float)
    lo, hi = (-(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1) if signed else (0, (1 << bits_stored) - 1)
    for k, off in enumerate(offsets):
        if k in drop:
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.StudyDate, ds.StudyTime, ds.StudyID = (
            "Test^Rounding",
            "R1",
            "20260101",
            "120000",
            "1",
        )
        ds.Modality, ds.SeriesNumber = "MR", 1
        ds.InstanceNumber = (len(offsets) - k) if reverse else k + 1
        ds.Rows, ds.Columns = 12, 10
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = (
            16,
            bits_stored,
            bits_stored - 1,
            int(signed),
        )
        ds.ImagePositionPatient = [f"{v:.{decimals}f}" for v in origin + off * normal]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row, *col)]
        ds.PixelSpacing = ["1.5", "1.25"]
        ds.SliceThickness = f"{abs(step):g}"
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
        pixels = rng.integers(lo, hi + 1, (12, 10))
        ds.PixelData = pixels.astype(np.int16 if signed else np.uint16).tobytes()
        pydicom.dcmwrite(folder / f"{rng.integers(0, 2**40):010x}", ds, enforce_file_format=True)
    return folder


def gap_spread(folder) -> float:
    """Largest relative deviation of a slice gap from the median gap, from the files themselves."""
    dss = [pydicom.dcmread(f, stop_before_pixels=True) for f in Path(folder).iterdir()]
    iop = np.array(dss[0].ImageOrientationPatient, float)
    d = np.sort([np.dot(np.array(ds.ImagePositionPatient, float), np.cross(iop[:3], iop[3:])) for ds in dss])
    gaps = np.diff(d)
    return float(np.max(np.abs(gaps - np.median(gaps))) / np.median(gaps))


def kinds(vol) -> dict:
    return {f["kind"]: f["action"] for f in vol.meta["dicom"]["findings"]}


# ---------------------------------------------------------------- slice spacing vs header rounding

ROUNDED = {
    "thin_2_decimals": dict(step=0.625, decimals=2),
    "ge_like_1_decimal": dict(step=7.0, decimals=1),
    "reversed_order_flipped_normal": dict(step=0.625, decimals=2, reverse=True, flip=True),
    "negative_step_1_decimal": dict(step=-3.0, decimals=1, reverse=True),
}


@pytest.mark.parametrize("variant", list(ROUNDED))
def test_rounded_oblique_positions_are_read_as_simpleitk_reads_them(tmp_path, variant):
    folder = mr_series(tmp_path / variant, **ROUNDED[variant])
    assert gap_spread(folder) > 0.01  # the old 1 % rule refused these
    vol = read_dicom_series(folder)
    assert_same_as_sitk(vol, sitk_series(folder))
    assert kinds(vol) in ({}, {"spacing_rounding": "accepted"})  # below 0.01 mm no finding; never a warning
    assert vol.spacing[2] == pytest.approx(abs(ROUNDED[variant]["step"]), rel=2e-3)


@pytest.mark.parametrize("variant", list(ROUNDED))
def test_missing_slice_in_a_rounded_oblique_series_is_still_refused(tmp_path, variant):
    folder = mr_series(tmp_path / variant, drop=(9,), **ROUNDED[variant])
    with pytest.raises(GeometryError, match="missing slice"):
        read_dicom_series(folder)
    vol = read_dicom_series(folder, policy=GeometryPolicy(irregular="resample"))
    assert vol.shape[2] == 20 and kinds(vol)["missing_slices"] == "resampled"


def test_gaps_within_tolerance_that_drift_off_the_grid_are_refused(tmp_path):
    # Nine gaps 4 % long, one right, nine 4 % short: each gap passes the 5 % rule, but the middle
    # slices sit 1.8 mm (0.36 step) away from where a regular grid puts them.
    offsets = np.concatenate([[0.0], np.cumsum([5.2] * 9 + [5.0] + [4.8] * 9)])
    folder = mr_series(tmp_path / "drift", step=5.0, decimals=4, positions=offsets)
    with pytest.raises(GeometryError, match="drift from a regular grid"):
        read_dicom_series(folder)


def test_jitter_beyond_rounding_but_within_tolerance_is_a_warning(tmp_path):
    offsets = np.arange(20) * 5.0 + np.where(np.arange(20) == 7, 0.15, 0.0)  # one slice 3 % off, 4 decimals
    vol = read_dicom_series(mr_series(tmp_path / "j", step=5.0, decimals=4, positions=offsets))
    assert kinds(vol) == {"spacing_jitter": "accepted_with_warning"}


# ---------------------------------------------------------------- DICOMDIR


def _fileset(src: Path, dest: Path) -> Path:
    from pydicom.fileset import FileSet

    fs = FileSet()
    for f in sorted(src.iterdir()):
        ds = pydicom.dcmread(f)
        ds.StudyTime, ds.StudyID = "120000", "1"
        fs.add(ds)
    fs.write(dest)
    return dest


@pytest.fixture(scope="module")
def dicomdir_case():
    return make_phantom(11, spacing=(8.0, 8.0, 10.0))


def test_dicomdir_is_used_and_its_files_need_no_extension(tmp_path, dicomdir_case):
    media = _fileset(write_dicom_series(dicomdir_case, tmp_path / "src"), tmp_path / "cd")
    files = [p for p in media.rglob("*") if p.is_file() and p.name != "DICOMDIR"]
    assert files and all(p.suffix == "" for p in files)
    write_dicom_series(make_phantom(12, spacing=(8.0, 8.0, 10.0)), media / "not_indexed", series_description="extra")
    n = dicomdir_case.image.shape[2]

    by_folder = scan_inventory(media)
    note = dict((p.name, r) for p, r in by_folder.scan.skipped)["DICOMDIR"]
    assert note == f"DICOMDIR index: used; {n} file(s) referenced, {n} found"
    assert len(by_folder.entries) == 2  # files the index does not list are still scanned

    vol = read_volume(media / "DICOMDIR")  # the DICOMDIR file itself: only what it references
    assert vol.meta["n_image_series_in_folder"] == 1
    np.testing.assert_array_equal(align_to(vol, dicomdir_case.image).array, dicomdir_case.image.array)

    from medseg.io.dicom.monai_reader import MedsegDicomReader

    reader = MedsegDicomReader()
    assert reader.verify_suffix(str(media / "DICOMDIR")) and not reader.verify_suffix(str(next(iter(files))))
    array, meta = reader.get_data(reader.read(str(media / "DICOMDIR")))
    np.testing.assert_array_equal(array, vol.array)


def test_dicomdir_reports_missing_files_and_finds_lower_case_copies(tmp_path, dicomdir_case):
    media = _fileset(write_dicom_series(dicomdir_case, tmp_path / "src"), tmp_path / "cd")
    # A copy of the medium in lower case (as Windows/Linux mounts of ISO 9660 often give).
    lower = tmp_path / "copy"
    for p in sorted(media.rglob("*")):
        rel = p.relative_to(media)
        target = lower / (Path(*[part.lower() for part in rel.parts]) if p.name != "DICOMDIR" else rel)
        if p.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(p, target)
    vol = read_dicom_series(lower / "DICOMDIR")
    np.testing.assert_array_equal(align_to(vol, dicomdir_case.image).array, dicomdir_case.image.array)

    victim = sorted(p for p in (lower / "pt000000").rglob("*") if p.is_file())[3]
    victim.unlink()
    inv = scan_inventory(lower / "DICOMDIR")
    note = dict((p.name, r) for p, r in inv.scan.skipped)["DICOMDIR"]
    assert "1 missing (e.g. PT000000/" in note
    with pytest.raises(GeometryError):  # the gap it leaves is refused as for any series
        read_dicom_series(lower / "DICOMDIR")


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")  # '..' is what the test writes
def test_dicomdir_references_leaving_its_folder_are_not_followed(tmp_path, dicomdir_case):
    media = _fileset(write_dicom_series(dicomdir_case, tmp_path / "src"), tmp_path / "cd")
    ds = pydicom.dcmread(media / "DICOMDIR")
    image = next(r for r in ds.DirectoryRecordSequence if r.DirectoryRecordType == "IMAGE")
    image.ReferencedFileID = ["..", "src", sorted(p.name for p in (tmp_path / "src").iterdir())[0]]
    ds.save_as(media / "DICOMDIR")
    note = dict((p.name, r) for p, r in scan_inventory(media / "DICOMDIR").scan.skipped)["DICOMDIR"]
    assert "1 pointing outside its folder not followed" in note


# ---------------------------------------------------------------- MONOCHROME1


@pytest.mark.parametrize(
    "bits,signed,slope,intercept", [(12, False, 2.0, -100.0), (16, False, 1.0, 0.0), (16, True, 1.0, 0.0)]
)
def test_monochrome1_is_inverted_like_simpleitk_and_recorded(tmp_path, bits, signed, slope, intercept):
    kw = dict(n=4, step=3.0, decimals=4, bits_stored=bits, signed=signed, slope=slope, intercept=intercept, seed=5)
    mono2 = read_dicom_series(mr_series(tmp_path / "m2", **kw))
    folder = mr_series(tmp_path / "m1", photometric="MONOCHROME1", **kw)
    mono1 = read_dicom_series(folder)
    stored = (mono2.array - intercept) / slope
    inverted = (-1 - stored) if signed else ((1 << bits) - 1 - stored)
    np.testing.assert_allclose(mono1.array, inverted * slope + intercept)
    assert_same_as_sitk(mono1, sitk_series(folder))
    assert kinds(mono1)["monochrome1"] == "inverted"
    assert "monochrome1" not in kinds(mono2)


# ---------------------------------------------------------------- memory a header may claim


def _bomb(
    path: Path, *, rows=65535, cols=65535, frames=None, syntax=JPEG2000Lossless, payload=b"\xff\x4f\xff\x51" * 64
):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "MR"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing = [0, 0, 0], [1, 0, 0, 0, 1, 0], [1, 1]
    if frames is not None:
        ds.NumberOfFrames = frames
    ds.PixelData = encapsulate([payload]) if syntax.is_encapsulated else payload
    ds["PixelData"].VR = "OB"
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def test_a_header_claiming_65535_squared_pixels_is_refused_naming_the_file(tmp_path):
    bomb = _bomb(tmp_path / "case" / "bomb.dcm")
    with pytest.raises(InputError) as err:
        read_dicom_series(bomb.parent)
    msg = str(err.value)
    assert "\n" not in msg and "bomb.dcm" in msg and "65535 x 65535" in msg and "MEDSEG_MAX_VOXELS" in msg
    with pytest.raises(InputError, match="bomb.dcm"):
        convert_folder(bomb.parent, tmp_path / "out")


@pytest.mark.parametrize(
    "kw,words",
    [
        (dict(rows=4096, cols=4096, syntax=RLELossless), "more than RLE Lossless can code"),
        (dict(rows=1, cols=1, frames=10**8), "compressed frames"),
        (dict(rows=32768, cols=32768), "do not compress so far"),  # under the voxel limit, 2 GiB from 300 bytes
        (dict(rows=4096, cols=4096, syntax=DeflatedExplicitVRLittleEndian, payload=b"\0" * 64), "more than Deflated"),
        (dict(rows=4096, cols=4096, syntax=ExplicitVRLittleEndian, payload=b"\0" * 64), "truncated"),
    ],
)
def test_claims_the_file_cannot_hold_are_refused_before_decoding(tmp_path, kw, words):
    bomb = _bomb(tmp_path / "b" / "f", **kw)
    reasons = dict((p.name, r) for p, r in scan_inventory(bomb.parent).scan.skipped)
    assert words in reasons["f"]


def test_voxel_limit_is_configurable_for_files_and_stacks(tmp_path, monkeypatch):
    folder = mr_series(tmp_path / "s", n=20, step=3.0, decimals=4)  # 20 x 12 x 10 = 2400 voxels
    monkeypatch.setenv("MEDSEG_MAX_VOXELS", "2000")  # every file passes (120), the stack does not
    with pytest.raises(InputError, match=r"2,400 voxels\) is larger than the limit of 2,000"):
        read_dicom_series(folder)
    monkeypatch.setenv("MEDSEG_MAX_VOXELS", "100")  # now each file is refused on its own
    with pytest.raises(InputError, match="more than the limit of 100"):
        read_dicom_series(folder)
    monkeypatch.setenv("MEDSEG_MAX_VOXELS", "lots")
    with pytest.raises(ConfigError, match="MEDSEG_MAX_VOXELS"):
        read_dicom_series(folder)
    monkeypatch.delenv("MEDSEG_MAX_VOXELS")
    assert read_dicom_series(folder).shape == (10, 12, 20)


def test_bomb_through_the_command_line_is_one_line_exit_2_and_small(tmp_path):
    bomb = _bomb(tmp_path / "case" / "bomb.dcm")
    code = (
        "import resource, subprocess, sys; r = subprocess.run([sys.executable, '-m', 'medseg', 'convert', sys.argv[1], "
        "'--out', sys.argv[2], '--no-progress'], capture_output=True, text=True); "
        "print(r.returncode); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.stderr.write(r.stderr)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(bomb.parent), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    rc, peak_kb = (int(v) for v in r.stdout.split())
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert rc == 2 and "Traceback" not in r.stderr
    assert len(lines) == 1 and "bomb.dcm" in lines[0] and "65535 x 65535" in lines[0]
    assert peak_kb < 2 * 1024 * 1024  # the CLI process stayed under 2 GB


# ---------------------------------------------------------------- links and special files


def test_link_loops_dangling_links_and_fifos_are_listed_and_the_scan_goes_on(tmp_path, dicomdir_case):
    folder = write_dicom_series(dicomdir_case, tmp_path / "case")
    other = write_dicom_series(make_phantom(12, spacing=(8.0, 8.0, 10.0)), tmp_path / "elsewhere")
    os.symlink("nowhere", folder / "dangling")
    os.symlink("self_loop", folder / "self_loop")
    os.symlink(".", folder / "back_to_the_folder")
    os.symlink(folder.parent, folder / "up")  # a loop through the parent
    os.symlink(other, folder / "linked_series")  # a link to a folder is not walked (it could be "/")
    os.symlink(next(other.iterdir()), folder / "linked_file")  # a link to a file is read
    os.mkfifo(folder / "pipe")  # opening it would block the scan forever
    inv = scan_inventory(folder)
    reasons = {str(Path(p).relative_to(folder)): r for p, r in inv.scan.skipped}
    assert reasons["dangling"].startswith("dangling symbolic link")
    assert reasons["self_loop"].startswith("symbolic link loop")
    assert reasons["back_to_the_folder"].startswith("symbolic link loop") and reasons["up"].startswith(
        "symbolic link loop"
    )
    assert reasons["linked_series"].startswith("symbolic link to a folder: not followed")
    assert reasons["pipe"].startswith("not a regular file")
    assert len(inv.entries) == 2 and sorted(len(e.series.files) for e in inv.entries) == [
        1,
        dicomdir_case.image.shape[2],
    ]
    vol = read_dicom_series(folder)
    np.testing.assert_array_equal(align_to(vol, dicomdir_case.image).array, dicomdir_case.image.array)
    assert {"dangling", "self_loop", "pipe", "up"} <= set(inv.tables()[1].file)


# ---------------------------------------------------------------- corrupted bytes


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about every corrupted value it reads
@pytest.mark.parametrize("syntax", [None, "jpeg-lossless"])  # native (pydicom) and the GDCM fallback path
def test_randomly_corrupted_series_give_one_line_errors_or_volumes(tmp_path, syntax):
    import time

    base = write_dicom_series(make_phantom(3, spacing=(16.0, 16.0, 20.0)), tmp_path / "base", transfer_syntax=syntax)
    rng = np.random.default_rng(2026)
    outcomes = {"volume": 0, "error": 0}
    reset_peak_rss()  # this test's own peak, not the pytest process's, which earlier tests set
    baseline = peak_rss_mb()
    start = time.monotonic()
    for i in range(40):
        case = tmp_path / f"c{i}"
        shutil.copytree(base, case)
        for f in rng.choice(sorted(case.iterdir()), size=int(rng.integers(1, 4)), replace=False):
            data = bytearray(f.read_bytes())
            for _ in range(int(rng.integers(1, 20))):
                data[int(rng.integers(128, len(data)))] = int(rng.integers(0, 256))
            if rng.random() < 0.2:
                data = data[: int(rng.integers(0, len(data)))]
            f.write_bytes(bytes(data))
        try:
            vol = read_dicom_series(case)
            assert np.isfinite(vol.array).all()
            outcomes["volume"] += 1
        except (InputError, GeometryError) as exc:  # anything else is a bug and fails the test with its traceback
            assert "\n" not in str(exc) and str(case) in str(exc)
            outcomes["error"] += 1
        shutil.rmtree(case)
    assert outcomes["volume"] and outcomes["error"]  # the corruption hit both headers and pixels
    assert time.monotonic() - start < 60
    grown = peak_rss_mb() - baseline  # MB: reading the 40 corrupted series grew this process by under 512 MB
    assert grown < 512, grown


def test_resampling_refuses_grids_far_larger_than_the_series(tmp_path):
    # Four slices 1 mm apart and one 10 m away: "resample" would need 10,004 slices, interpolated from 5.
    folder = mr_series(tmp_path / "far", step=1.0, decimals=2, positions=[0.0, 1.0, 2.0, 3.0, 10003.0])
    with pytest.raises(GeometryError, match="too sparse to interpolate"):
        read_dicom_series(folder, policy=GeometryPolicy(irregular="resample"))
