"""Synthetic abdominal CT phantoms whose true segmentation is known exactly.

Each case is an elliptic body in air (-1000 HU) with a subcutaneous fat layer,
an abdominal muscle wall, visceral fat/bowel texture, a vertebral body, and four
labelled organs shaped as randomly deformed, rotated ellipsoids:

=============  =====  ========================================
structure      label  HU (before noise); placement (patient)
=============  =====  ========================================
liver          1      ~60, right anterior superior
spleen         2      ~50, left posterior (10 HU from liver)
kidney_right   3      ~30, right posterior inferior
kidney_left    4      ~30, left posterior inferior
=============  =====  ========================================

Shapes are defined in millimetres in the patient frame, then sampled on a grid
with random anisotropic spacing (in-plane 0.6-1.0 mm, slices 1.5-5 mm), random
axis flips and optionally an oblique rotation, so affines differ case to case
while the anatomy does not depend on the grid. The label map is the exact truth
on that grid; ``voxel_counts`` are counted from it.

Cases can be written as NIfTI or as a DICOM CT series with a synthetic patient
name (``PHANTOM_PATIENT_NAME``) that tests use to check no output leaks it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.io.atomic import write_csv, write_text
from medseg.io.readers import write_label_map, write_volume
from medseg.io.volume import LPS_TO_RAS, Volume
from medseg.labels import Label, LabelTable

PHANTOM_LABELS = LabelTable(
    "abdomen_phantom",
    (
        Label(1, "liver", (221, 130, 101), "10200004"),
        Label(2, "spleen", (157, 108, 162), "78961009"),
        Label(3, "kidney_right", (185, 102, 83), "9846003"),
        Label(4, "kidney_left", (185, 102, 83), "18639004"),
    ),
)

#: The phantoms with ``small_structures=True``: the four organs and a gallbladder of about 12 mL (7-18 mL; the
#: kidneys are about 45 mL, the liver about 300 mL), so that a plan that coarsens the grid must keep a small structure.
PHANTOM_LABELS_SMALL = LabelTable(
    "abdomen_phantom_small",
    (*PHANTOM_LABELS.labels, Label(5, "gallbladder", (0, 145, 30), "28231008")),
)

#: Synthetic identifiers written into phantom DICOM headers; they must never reach outputs.
PHANTOM_PATIENT_NAME = "LEAKCHECK^PHANTOM"
PHANTOM_PATIENT_ID = "LEAKCHECK-ID"
PHANTOM_BIRTH_DATE = "19010101"

# name, label, HU, centre (mm, RAS relative to body centre), semi-axes (mm)
_ORGANS = (
    ("liver", 1, 60.0, (34.0, 5.0, 12.0), (46.0, 41.0, 38.0)),
    ("spleen", 2, 50.0, (-45.0, -14.0, 18.0), (18.0, 31.0, 29.0)),
    ("kidney_right", 3, 30.0, (39.0, -36.0, -22.0), (19.0, 17.0, 32.0)),
    ("kidney_left", 4, 30.0, (-39.0, -36.0, -20.0), (19.0, 17.0, 32.0)),
)
#: ``small_structures=True`` adds these, drawn after the organs above (so the four organs do not change): a gallbladder
#: under the liver's inferior surface (bile, ~10 HU), carving into the liver as the gallbladder fossa does.
_SMALL_ORGANS = (("gallbladder", 5, 10.0, (30.0, 22.0, -26.0), (12.0, 12.0, 20.0)),)
#: Smallest field of view (mm); cases draw theirs between this and (340, 300, 160).
FOV_MM = (240.0, 180.0, 136.0)


@dataclass
class PhantomCase:
    case_id: str
    image: Volume  # HU, float32
    labels: Volume  # uint8, same grid
    voxel_counts: dict[str, int]

    @property
    def volumes_ml(self) -> dict[str, float]:
        vv = self.labels.voxel_volume_mm3
        return {name: n * vv / 1000.0 for name, n in self.voxel_counts.items()}


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A random rotation by up to ``max_deg`` degrees about a random axis."""
    if max_deg <= 0:
        return np.eye(3)
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(-max_deg, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def make_phantom(
    seed: int,
    *,
    case_id: str | None = None,
    spacing: tuple[float, float, float] | None = None,
    flips: tuple[bool, bool, bool] | None = None,
    oblique_deg: float = 0.0,
    noise_hu: float | None = None,
    fov_mm: tuple[float, float, float] | None = None,
    small_structures: bool = False,
) -> PhantomCase:
    """Generate one phantom. Anything not given is drawn from ``seed``.

    ``fov_mm`` sets the field of view around the same anatomy (default: drawn,
    so cases differ in how much air surrounds the body). ``small_structures``
    adds a gallbladder of about 12 mL (label table ``PHANTOM_LABELS_SMALL``).
    """
    # One random stream, drawn from in a fixed order by the steps below: the anatomy depends on the seed alone.
    rng = np.random.default_rng(seed)
    grid, noise = _draw_grid(rng, seed, spacing, flips, oblique_deg, noise_hu, fov_mm)
    x, y, z = _patient_coordinates(grid)
    image, cavity = _draw_body(rng, x, y, z, grid.shape)
    organs = _ORGANS + (_SMALL_ORGANS if small_structures else ())
    labels = _draw_organs(rng, x, y, z, cavity, image, organs)
    del x, y, z, cavity

    # Scanner blur (about 1 mm) and quantum noise.
    from scipy.ndimage import gaussian_filter

    image = gaussian_filter(image, sigma=[0.6 / s for s in grid.spacing])
    image += rng.normal(0.0, noise, size=grid.shape).astype(np.float32)
    image = np.clip(np.round(image), -1024, 3071).astype(np.float32)

    case_id = case_id or f"phantom_{seed:04d}"
    counts = {name: int(np.count_nonzero(labels == lab)) for name, lab, *_ in organs}
    meta = {"phantom_seed": seed, "noise_hu": float(noise), "flips": list(grid.flips), "oblique_deg": oblique_deg}
    return PhantomCase(
        case_id,
        Volume(image, grid.affine, case_id, dict(meta)),
        Volume(labels, grid.affine, case_id, dict(meta)),
        counts,
    )


@dataclass
class _Grid:
    """Where a phantom's voxels are: its sampling and, in RAS mm, the body's centre."""

    spacing: tuple
    flips: tuple
    shape: tuple
    affine: np.ndarray  # voxel -> RAS mm
    body_centre: np.ndarray


def _draw_grid(
    rng: np.random.Generator, seed: int, spacing, flips, oblique_deg: float, noise_hu, fov_mm
) -> tuple[_Grid, float]:
    """The voxel grid (spacing, flips, field of view, oblique rotation, table position) and the noise level:
    what is given, else drawn."""
    # Draw every random choice even when overridden, so the anatomy depends on the seed alone.
    s_in, s_z = rng.uniform(0.6, 1.0), rng.uniform(1.5, 5.0)
    drawn_flips = tuple(bool(f) for f in rng.integers(0, 2, size=3))
    drawn_noise = rng.uniform(8.0, 14.0)
    drawn_fov = (
        rng.uniform(240, 340),
        rng.uniform(180, 300),
        rng.uniform(136, 160),
    )  # more or less air around the body
    spacing = tuple(float(s) for s in spacing) if spacing is not None else (s_in, s_in, s_z)
    flips = tuple(flips) if flips is not None else drawn_flips
    noise = drawn_noise if noise_hu is None else float(noise_hu)
    fov = tuple(float(f) for f in (fov_mm or drawn_fov))
    shape = tuple(int(np.ceil(f / s)) for f, s in zip(fov, spacing, strict=False))

    # Voxel -> world (RAS mm): rotate (oblique), flip axes, scale; random table position.
    oblique = _rotation(np.random.default_rng([seed, 1]), oblique_deg)  # own stream: anatomy unchanged
    direction = oblique @ np.diag([-1.0 if f else 1.0 for f in flips])
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(spacing)
    scanner_centre = rng.uniform(-60, 60, size=3)
    affine[:3, 3] = scanner_centre - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    slack = np.maximum(0.0, np.array(fov[:2]) / 2 - np.array([117.0, 89.0]))  # keep the body inside the field of view
    body_centre = scanner_centre + np.r_[rng.uniform(-slack, slack), 0.0]
    return _Grid(spacing, flips, shape, affine, body_centre), noise


def _patient_coordinates(grid: _Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patient-frame coordinates (float32 mm) of every voxel centre, relative to the body centre."""
    m = grid.affine[:3, :3].astype(np.float32)
    t = (grid.affine[:3, 3] - grid.body_centre).astype(np.float32)
    idx = [np.arange(n, dtype=np.float32) for n in grid.shape]
    x, y, z = (
        m[a, 0] * idx[0][:, None, None] + m[a, 1] * idx[1][None, :, None] + m[a, 2] * idx[2][None, None, :] + t[a]
        for a in range(3)
    )
    return x, y, z


def _draw_body(rng: np.random.Generator, x, y, z, shape: tuple) -> tuple[np.ndarray, np.ndarray]:
    """The body in air (HU, float32), before the organs, blur and noise, and the abdominal cavity's mask."""
    # Body: elliptic cylinder; fat layer, muscle wall, abdominal cavity.
    a_body, b_body = rng.uniform(98, 112), rng.uniform(74, 84)
    fat, wall = rng.uniform(5, 10), rng.uniform(5, 8)
    r_body = (x / a_body) ** 2 + (y / b_body) ** 2
    r_wall = (x / (a_body - fat)) ** 2 + (y / (b_body - fat)) ** 2
    a_cav, b_cav = a_body - fat - wall, b_body - fat - wall
    cavity = (x / a_cav) ** 2 + (y / b_cav) ** 2 <= 1

    image = np.full(shape, -1000.0, dtype=np.float32)
    image[r_body <= 1] = -100.0
    image[r_wall <= 1] = 45.0
    image[cavity] = -40.0
    # Visceral texture: smooth blobs of fat and bowel between the organs.
    for _ in range(10):
        c = rng.uniform([-a_cav * 0.7, -b_cav * 0.7, -60], [a_cav * 0.7, b_cav * 0.7, 60])
        r = rng.uniform(12, 30)
        blob = np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * r * r))
        image += (rng.uniform(-50, 60) * blob * cavity).astype(np.float32)
    # Vertebral body and paraspinal muscles.
    spine_y = -b_cav + rng.uniform(10, 14)
    image[((x / 30) ** 2 + ((y - spine_y + 4) / 14) ** 2 <= 1) & cavity] = 45.0
    image[(x**2 + (y - spine_y) ** 2 <= rng.uniform(11, 14) ** 2)] = rng.uniform(300, 450)
    return image, cavity


def _draw_organs(
    rng: np.random.Generator, x, y, z, cavity: np.ndarray, image: np.ndarray, organs=_ORGANS
) -> np.ndarray:
    """The label map (uint8) of ``organs``, painted into ``image`` with their HU as they are drawn."""
    labels = np.zeros(image.shape, dtype=np.uint8)
    for _name, lab, hu, centre, semi in organs:
        c = np.asarray(centre) + rng.uniform(-6, 6, size=3)
        s = np.asarray(semi) * rng.uniform(0.85, 1.15, size=3)
        rot = _rotation(rng, 15.0).astype(np.float32)
        px, py, pz = (
            (rot[a, 0] * (x - c[0]) + rot[a, 1] * (y - c[1]) + rot[a, 2] * (z - c[2])) / s[a] for a in range(3)
        )
        bumps = np.zeros_like(px)
        for _ in range(3):
            w = rng.normal(size=3) * 2.0
            bumps += np.cos(w[0] * px + w[1] * py + w[2] * pz + rng.uniform(0, 2 * np.pi))
        mask = (px**2 + py**2 + pz**2 <= (1.0 + 0.07 * bumps) ** 2) & cavity
        labels[mask] = lab
        image[mask] = hu + rng.uniform(-4, 4)
        del px, py, pz, bumps
    return labels


def write_dicom_series(
    case: PhantomCase,
    folder: str | os.PathLike,
    *,
    seed: int = 0,
    instance_order: str = "position",
    slice_thickness: float | None = None,
    drop_slices: tuple = (),
    duplicate_slices: tuple = (),
    tilt_deg: float = 0.0,
    position_jitter_mm: float = 0.0,
    study_uid: str | None = None,
    series_uid: str | None = None,
    series_description: str = "synthetic abdomen phantom",
    series_number: int = 1,
    modality: str = "CT",
    transfer_syntax: str | None = None,
    enhanced: bool = False,
) -> Path:
    """Write ``case.image`` as a CT series, one file per slice, under ``folder``.

    File names are random and InstanceNumbers follow slice position, so readers
    must sort by geometry. Pixel data is stored as unsigned HU + 1024 with
    RescaleIntercept -1024.

    The keywords make the defects real exports have (all off by default):
    ``instance_order="reversed"`` numbers instances against the slice normal;
    ``slice_thickness`` writes a SliceThickness other than the step;
    ``drop_slices``/``duplicate_slices`` leave out or repeat (with a new
    SOPInstanceUID) slices by index; ``tilt_deg`` shifts each slice along the
    column direction as a tilted gantry does, keeping the orientation;
    ``position_jitter_mm`` moves slices randomly along the normal;
    ``study_uid``/``series_uid``/``series_description``/``series_number``/``modality``
    make another series or study; ``transfer_syntax`` compresses the pixel data
    ("rle", "jpeg-ls", "deflate", "jpeg-lossless", "jpeg2000" or a UID);
    ``enhanced`` writes one Enhanced CT multi-frame file instead.
    """
    import pydicom
    from pydicom.uid import CTImageStorage, EnhancedCTImageStorage, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vol = case.image
    sx, sy, sz = vol.spacing
    series = _SeriesHeader(
        study_uid or generate_uid(),
        series_uid or generate_uid(),
        generate_uid(),
        modality,
        series_description,
        series_number,
        vol.shape,
    )
    rng = np.random.default_rng(seed)
    positions, rank, (row_cos, col_cos) = _series_geometry(vol, seed, tilt_deg, position_jitter_mm, instance_order)
    thickness = sz if slice_thickness is None else float(slice_thickness)

    if enhanced:
        _write_enhanced_ct(
            series.dataset(EnhancedCTImageStorage),
            folder / f"{rng.integers(0, 2**48):012x}",
            positions,
            row_cos,
            col_cos,
            (sy, sx),
            thickness,
            [_stored(vol, k) for k in range(vol.shape[2])],
        )
        return folder
    copies = [k for k in range(vol.shape[2]) if k not in set(drop_slices)] + [int(k) for k in duplicate_slices]
    for k in copies:
        ds = series.dataset(CTImageStorage)
        _fill_slice(ds, vol, k, int(rank[k]) + 1, positions[k], (row_cos, col_cos), thickness, tilt_deg)
        if transfer_syntax:
            _encode(ds, transfer_syntax, _stored(vol, k))
        name = f"{rng.integers(0, 2**48):012x}"  # no extension, random order
        pydicom.dcmwrite(folder / name, ds, enforce_file_format=True)
    return folder


def _series_geometry(vol: Volume, seed: int, tilt_deg: float, jitter_mm: float, instance_order: str):
    """Each slice's position (LPS mm), its InstanceNumber rank (0-based) and the row and column cosines."""
    lps = LPS_TO_RAS @ vol.affine  # the same matrix converts both ways
    sx, sy, sz = vol.spacing
    row_cos = lps[:3, 0] / sx
    col_cos = lps[:3, 1] / sy
    positions, rank = _slice_positions(
        lps, (row_cos, col_cos), sz, vol.shape[2], seed=seed, tilt_deg=tilt_deg, jitter_mm=jitter_mm
    )
    if instance_order == "reversed":
        rank = len(rank) - 1 - rank
    return positions, rank, (row_cos, col_cos)


def _fill_slice(ds, vol: Volume, k: int, number: int, position, cosines: tuple, thickness: float, tilt_deg: float):
    """Give one CT slice's dataset its InstanceNumber, geometry, rescale, window and (uncompressed) pixels."""
    row_cos, col_cos = cosines
    sx, sy, _ = vol.spacing
    ds.InstanceNumber = number
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row_cos, *col_cos)]
    ds.PixelSpacing = [f"{sy:.6f}", f"{sx:.6f}"]  # row spacing, column spacing
    ds.SliceThickness = f"{thickness:.6f}"
    if tilt_deg:
        ds.GantryDetectorTilt = f"{tilt_deg:.4f}"
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    ds.PixelData = _stored(vol, k).tobytes()


def _slice_positions(
    lps: np.ndarray, cosines: tuple, sz: float, n: int, *, seed: int, tilt_deg: float, jitter_mm: float
) -> tuple[list, np.ndarray]:
    """Each slice's ImagePositionPatient (LPS mm; shifted by the gantry tilt, jittered along the normal) and its
    rank along the normal."""
    row_cos, col_cos = cosines
    normal = np.cross(row_cos, col_cos)
    positions = [lps[:3, :3] @ np.array([0.0, 0.0, k]) + lps[:3, 3] for k in range(n)]
    if tilt_deg:
        positions = [p + col_cos * k * sz * np.tan(np.deg2rad(tilt_deg)) for k, p in enumerate(positions)]
    if jitter_mm:
        jitter = np.random.default_rng([seed, 2]).uniform(-jitter_mm, jitter_mm, len(positions))
        positions = [p + normal * j for p, j in zip(positions, jitter, strict=False)]
    rank = np.argsort(np.argsort([p @ normal for p in positions]))
    return positions, rank


@dataclass
class _SeriesHeader:
    """What every file of a phantom series shares: identifiers, UIDs and the pixel format."""

    study_uid: str
    series_uid: str
    for_uid: str
    modality: str
    series_description: str
    series_number: int
    shape: tuple

    def dataset(self, sop_class):
        """A new instance's dataset (a new SOPInstanceUID) of SOP class ``sop_class``, without geometry or pixels."""
        from pydicom.dataset import Dataset, FileMetaDataset
        from pydicom.uid import ExplicitVRLittleEndian, generate_uid

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.PatientName = PHANTOM_PATIENT_NAME
        ds.PatientID = PHANTOM_PATIENT_ID
        ds.PatientBirthDate = PHANTOM_BIRTH_DATE
        ds.PatientSex = "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = (
            self.study_uid,
            self.series_uid,
            self.for_uid,
        )
        ds.StudyDate = ds.SeriesDate = "20260101"
        ds.Modality = self.modality
        ds.SeriesDescription = self.series_description
        ds.SeriesNumber = self.series_number
        ds.Rows, ds.Columns = self.shape[1], self.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        return ds


def _stored(vol: Volume, k: int) -> np.ndarray:
    """Slice ``k`` as stored: unsigned HU + 1024, rows x columns."""
    return np.ascontiguousarray(np.clip(vol.array[:, :, k].T + 1024, 0, 65535).astype(np.uint16))


def _encode(ds, syntax: str, pixels: np.ndarray) -> None:
    """Compress ``ds``'s pixel data in place (test data for the readers' decoders)."""
    import pydicom.uid as u

    names = {
        "rle": u.RLELossless,
        "jpeg-ls": u.JPEGLSLossless,
        "deflate": u.DeflatedExplicitVRLittleEndian,
        "jpeg-lossless": u.JPEGLosslessSV1,
        "jpeg2000": u.JPEG2000Lossless,
    }
    uid = names[syntax] if syntax in names else u.UID(syntax)
    if uid == u.DeflatedExplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = uid
    elif uid in (u.JPEGLosslessSV1, u.JPEG2000Lossless):  # no pydicom encoder: let GDCM encode, keep its stream
        import tempfile

        import pydicom
        import SimpleITK as sitk

        with tempfile.TemporaryDirectory() as tmp:
            w = sitk.ImageFileWriter()
            w.SetImageIO("GDCMImageIO")
            w.SetFileName(f"{tmp}/x.dcm")
            w.UseCompressionOn()
            w.SetCompressor("JPEG" if uid == u.JPEGLosslessSV1 else "JPEG2000")
            w.Execute(sitk.GetImageFromArray(pixels[None]))
            coded = pydicom.dcmread(f"{tmp}/x.dcm")
        ds.PixelData = coded.PixelData
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = coded.file_meta.TransferSyntaxUID
    else:
        ds.compress(uid)


def _write_enhanced_ct(ds, path: Path, positions, row_cos, col_cos, pixel_spacing, thickness, frames) -> None:
    """One Enhanced CT object: shared orientation/spacing/rescale, per-frame positions, frames in random order."""
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    def item(**kw) -> Dataset:
        d = Dataset()
        for k, v in kw.items():
            setattr(d, k, v)
        return d

    order = np.random.default_rng(len(frames)).permutation(len(frames))
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.NumberOfFrames = len(frames)
    shared = item(
        PlaneOrientationSequence=Sequence([item(ImageOrientationPatient=[f"{v:.8f}" for v in (*row_cos, *col_cos)])]),
        PixelMeasuresSequence=Sequence(
            [item(PixelSpacing=[f"{v:.6f}" for v in pixel_spacing], SliceThickness=f"{thickness:.6f}")]
        ),
        PixelValueTransformationSequence=Sequence([item(RescaleIntercept="-1024", RescaleSlope="1", RescaleType="HU")]),
    )
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PerFrameFunctionalGroupsSequence = Sequence(
        [
            item(
                PlanePositionSequence=Sequence([item(ImagePositionPatient=[f"{v:.6f}" for v in positions[k]])]),
                FrameContentSequence=Sequence([item(StackID="1", InStackPositionNumber=int(k) + 1)]),
            )
            for k in order
        ]
    )
    ds.PixelData = b"".join(frames[k].tobytes() for k in order)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def write_cohort(
    out_dir: str | os.PathLike,
    n_cases: int,
    *,
    seed: int = 0,
    split: str = "train",
    dicom: bool = False,
    prefix: str = "phantom",
    manifest_name: str = "manifest.csv",
    workers: int | None = None,
    small_structures: bool = False,
) -> Path:
    """Write ``n_cases`` phantoms (NIfTI image + label, optional DICOM) and a manifest CSV.

    The manifest has ``case_id, image, label, split`` (paths relative to it) plus
    the true volume of every structure in mL (``true_<structure>_ml``). The
    phantoms' label table is written beside it as ``<manifest stem>_labels.yaml``
    (where ``medseg plan`` looks for a data set's table).

    Cases are made by ``workers`` threads (default: one per CPU, at most 4; each
    holds one phantom, up to about 1 GB while it is drawn; numpy and zlib run
    outside the GIL). Every case depends on its seed alone, so the cohort is
    the same whatever the number.
    """
    import pandas as pd
    import yaml

    out = Path(out_dir)
    jobs = [(out, seed + n, f"{prefix}_{seed + n:04d}", split, dicom, small_structures) for n in range(n_cases)]
    cpus = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )  # Linux: the CPUs this process may use
    workers = max(1, min(workers or min(cpus, 4), n_cases))
    if workers == 1:
        rows = [_write_case(*job) for job in jobs]
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers) as pool:
            rows = list(pool.map(lambda job: _write_case(*job), jobs))
    manifest = out / manifest_name
    write_csv(manifest, pd.DataFrame(rows))
    write_text(
        manifest.with_name(manifest.stem + "_labels.yaml"),
        "# written by medseg phantoms: the phantoms' structures\n"
        + yaml.safe_dump((PHANTOM_LABELS_SMALL if small_structures else PHANTOM_LABELS).to_dict(), sort_keys=False),
    )
    return manifest


def _write_case(out: Path, seed: int, case_id: str, split: str, dicom: bool, small: bool = False) -> dict:
    """One phantom's files and its manifest row."""
    case = make_phantom(seed, case_id=case_id, small_structures=small)
    img_path = out / "images" / f"{case.case_id}.nii.gz"
    lab_path = out / "labels" / f"{case.case_id}.nii.gz"
    write_volume(case.image, img_path, dtype=np.int16)
    write_label_map(case.labels, lab_path)
    row: dict[str, str | float] = {
        "case_id": case.case_id,
        "image": str(img_path.relative_to(out)),
        "label": str(lab_path.relative_to(out)),
        "split": split,
    }
    if dicom:
        row["dicom"] = str(write_dicom_series(case, out / "dicom" / case.case_id, seed=seed).relative_to(out))
    row.update({f"true_{k}_ml": v for k, v in case.volumes_ml.items()})
    return row
