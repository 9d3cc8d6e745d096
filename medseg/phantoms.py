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
) -> PhantomCase:
    """Generate one phantom. Anything not given is drawn from ``seed``.

    ``fov_mm`` widens (or narrows) the field of view around the same anatomy,
    e.g. to make a CT-sized volume that is mostly air for benchmarks.
    """
    rng = np.random.default_rng(seed)
    # Draw every random choice even when overridden, so the anatomy depends on the seed alone.
    s_in, s_z = rng.uniform(0.6, 1.0), rng.uniform(1.5, 5.0)
    drawn_flips = tuple(bool(f) for f in rng.integers(0, 2, size=3))
    drawn_noise = rng.uniform(8.0, 14.0)
    spacing = tuple(float(s) for s in spacing) if spacing is not None else (s_in, s_in, s_z)
    flips = tuple(flips) if flips is not None else drawn_flips
    noise = drawn_noise if noise_hu is None else float(noise_hu)
    shape = tuple(int(np.ceil(f / s)) for f, s in zip(fov_mm or FOV_MM, spacing))

    # Voxel -> world (RAS mm): rotate (oblique), flip axes, scale; random table position.
    oblique = _rotation(np.random.default_rng([seed, 1]), oblique_deg)  # own stream: anatomy unchanged
    direction = oblique @ np.diag([-1.0 if f else 1.0 for f in flips])
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(spacing)
    scanner_centre = rng.uniform(-60, 60, size=3)
    affine[:3, 3] = scanner_centre - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    body_centre = scanner_centre + np.r_[rng.uniform(-10, 10, size=2), 0.0]

    # Patient-frame coordinates of every voxel centre, relative to the body centre.
    m = affine[:3, :3].astype(np.float32)
    t = (affine[:3, 3] - body_centre).astype(np.float32)
    idx = [np.arange(n, dtype=np.float32) for n in shape]
    x, y, z = (
        m[a, 0] * idx[0][:, None, None] + m[a, 1] * idx[1][None, :, None] + m[a, 2] * idx[2][None, None, :] + t[a]
        for a in range(3)
    )

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

    labels = np.zeros(shape, dtype=np.uint8)
    for name, lab, hu, centre, semi in _ORGANS:
        c = np.asarray(centre) + rng.uniform(-6, 6, size=3)
        s = np.asarray(semi) * rng.uniform(0.85, 1.15, size=3)
        rot = _rotation(rng, 15.0).astype(np.float32)
        px, py, pz = ((rot[a, 0] * (x - c[0]) + rot[a, 1] * (y - c[1]) + rot[a, 2] * (z - c[2])) / s[a] for a in range(3))
        bumps = np.zeros_like(px)
        for _ in range(3):
            w = rng.normal(size=3) * 2.0
            bumps += np.cos(w[0] * px + w[1] * py + w[2] * pz + rng.uniform(0, 2 * np.pi))
        mask = (px**2 + py**2 + pz**2 <= (1.0 + 0.07 * bumps) ** 2) & cavity
        labels[mask] = lab
        image[mask] = hu + rng.uniform(-4, 4)
        del px, py, pz, bumps

    # Scanner blur (about 1 mm) and quantum noise.
    from scipy.ndimage import gaussian_filter

    image = gaussian_filter(image, sigma=[0.6 / s for s in spacing])
    image += rng.normal(0.0, noise, size=shape).astype(np.float32)
    image = np.clip(np.round(image), -1024, 3071).astype(np.float32)

    case_id = case_id or f"phantom_{seed:04d}"
    counts = {name: int(np.count_nonzero(labels == lab)) for name, lab, *_ in _ORGANS}
    meta = {"phantom_seed": seed, "noise_hu": float(noise), "flips": list(flips), "oblique_deg": oblique_deg}
    return PhantomCase(
        case_id,
        Volume(image, affine, case_id, dict(meta)),
        Volume(labels, affine, case_id, dict(meta)),
        counts,
    )


def write_dicom_series(case: PhantomCase, folder: str | os.PathLike, *, seed: int = 0) -> Path:
    """Write ``case.image`` as a CT series, one file per slice, under ``folder``.

    File names are random and InstanceNumbers follow slice position, so readers
    must sort by geometry. Pixel data is stored as unsigned HU + 1024 with
    RescaleIntercept -1024.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vol = case.image
    lps = LPS_TO_RAS @ vol.affine  # the same matrix converts both ways
    sx, sy, sz = vol.spacing
    row_cos = lps[:3, 0] / sx
    col_cos = lps[:3, 1] / sy
    study_uid, series_uid, for_uid = generate_uid(), generate_uid(), generate_uid()
    rng = np.random.default_rng(seed)
    normal = np.cross(row_cos, col_cos)
    positions = [lps[:3, :3] @ np.array([0.0, 0.0, k]) + lps[:3, 3] for k in range(vol.shape[2])]
    rank = np.argsort(np.argsort([p @ normal for p in positions]))

    for k in range(vol.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.PatientName = PHANTOM_PATIENT_NAME
        ds.PatientID = PHANTOM_PATIENT_ID
        ds.PatientBirthDate = PHANTOM_BIRTH_DATE
        ds.PatientSex = "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, for_uid
        ds.StudyDate = ds.SeriesDate = "20260101"
        ds.Modality = "CT"
        ds.SeriesDescription = "synthetic abdomen phantom"
        ds.SeriesNumber, ds.InstanceNumber = 1, int(rank[k]) + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in positions[k]]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row_cos, *col_cos)]
        ds.PixelSpacing = [f"{sy:.6f}", f"{sx:.6f}"]  # row spacing, column spacing
        ds.SliceThickness = f"{sz:.6f}"
        ds.Rows, ds.Columns = vol.shape[1], vol.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
        ds.WindowCenter, ds.WindowWidth = "40", "400"
        pixels = np.clip(vol.array[:, :, k].T + 1024, 0, 65535).astype(np.uint16)
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        name = f"{rng.integers(0, 2**48):012x}"  # no extension, random order
        pydicom.dcmwrite(folder / name, ds, enforce_file_format=True)
    return folder


def write_cohort(
    out_dir: str | os.PathLike,
    n_cases: int,
    *,
    seed: int = 0,
    split: str = "train",
    dicom: bool = False,
    prefix: str = "phantom",
    manifest_name: str = "manifest.csv",
) -> Path:
    """Write ``n_cases`` phantoms (NIfTI image + label, optional DICOM) and a manifest CSV.

    The manifest has ``case_id, image, label, split`` (paths relative to it) plus
    the true volume of every structure in mL (``true_<structure>_ml``).
    """
    import pandas as pd

    from medseg.io.atomic import write_csv
    from medseg.io.readers import write_label_map, write_volume

    out = Path(out_dir)
    rows = []
    for n in range(n_cases):
        case = make_phantom(seed + n, case_id=f"{prefix}_{seed + n:04d}")
        img_path = out / "images" / f"{case.case_id}.nii.gz"
        lab_path = out / "labels" / f"{case.case_id}.nii.gz"
        write_volume(case.image, img_path, dtype=np.int16)
        write_label_map(case.labels, lab_path)
        row = {
            "case_id": case.case_id,
            "image": str(img_path.relative_to(out)),
            "label": str(lab_path.relative_to(out)),
            "split": split,
        }
        if dicom:
            dcm = write_dicom_series(case, out / "dicom" / case.case_id, seed=seed + n)
            row["dicom"] = str(dcm.relative_to(out))
        row.update({f"true_{k}_ml": v for k, v in case.volumes_ml.items()})
        rows.append(row)
    manifest = out / manifest_name
    write_csv(manifest, pd.DataFrame(rows))
    return manifest
