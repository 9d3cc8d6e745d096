"""Header-only scan vs reading with pixels, in files/s, on a generated DICOM export.

    .venv/bin/python benchmarks/bench_dicom_scan.py [--files 2000] [--matrix 512] [--repeat 3] [--smoke]

Writes ``--files`` CT slices (``--matrix`` squared, uncompressed, random file
names, 4 series) to a temporary folder, then times, each best of ``--repeat``:

* ``medseg scan (headers)``: ``medseg.io.dicom.series.scan_inventory`` (walk, headers, grouping, geometry plans);
* ``pydicom headers``: ``dcmread(stop_before_pixels=True)`` per file;
* ``pydicom with pixels``: ``dcmread`` + ``pixel_array`` per file (what a reader that decodes everything does);
* ``medseg read (pixels)``: ``read_dicom_series`` of the largest series, counted over that series' files.

The target (issue 3) is a header scan at least 3x faster than reading with pixels.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def make_export(root: Path, n_files: int, matrix: int, n_series: int = 4) -> None:
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    from medseg.data.phantoms import PHANTOM_PATIENT_NAME

    rng = np.random.default_rng(0)
    per = [n_files // n_series + (i < n_files % n_series) for i in range(n_series)]
    pixels = rng.integers(0, 2000, size=(matrix, matrix), dtype=np.uint16).tobytes()
    study = generate_uid()
    for s, n in enumerate(per):
        series = generate_uid()
        folder = root / f"series{s}"
        folder.mkdir(parents=True)
        for k in range(n):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
            ds.PatientName, ds.PatientID = PHANTOM_PATIENT_NAME, "BENCH"
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study, series, "CT"
            ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = f"bench {s}", s + 1, k + 1
            ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
            ds.ImagePositionPatient = ["-200", "-200", f"{k * 1.25:.3f}"]
            ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
            ds.PixelSpacing, ds.SliceThickness = ["0.78", "0.78"], "1.25"
            ds.Rows = ds.Columns = matrix
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
            ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
            ds.PixelData = pixels
            pydicom.dcmwrite(folder / f"{rng.integers(0, 2**48):012x}", ds, enforce_file_format=True)


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--matrix", type=int, default=512)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument(
        "--smoke",
        action="store_true",
        help="the smallest setting (40 files of 64x64, once): a test that the script runs",
    )
    args = p.parse_args()
    if args.smoke:
        args.files, args.matrix, args.repeat = 40, 64, 1

    import pydicom

    from medseg.io.dicom.scan import iter_files
    from medseg.io.dicom.series import read_dicom_series, scan_inventory

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        make_export(root, args.files, args.matrix)
        files = list(iter_files(root))
        print(
            f"wrote {len(files)} files ({args.matrix}x{args.matrix}, uncompressed) in {time.perf_counter() - t0:.1f} s"
        )
        for f in files:  # warm the page cache so both sides read from memory
            f.read_bytes()

        def headers():
            for f in files:
                pydicom.dcmread(f, stop_before_pixels=True)

        def with_pixels():
            for f in files:
                _ = pydicom.dcmread(f).pixel_array

        largest = max((root / d for d in sorted(p.name for p in root.iterdir())), key=lambda d: len(list(d.iterdir())))
        n_largest = len(list(largest.iterdir()))
        rows = [
            ("medseg scan (headers)", len(files), best(lambda: scan_inventory(root), args.repeat)),
            ("pydicom headers", len(files), best(headers, args.repeat)),
            ("pydicom with pixels", len(files), best(with_pixels, args.repeat)),
            ("medseg read (pixels)", n_largest, best(lambda: read_dicom_series(largest), args.repeat)),
        ]
    print(f"\n{'method':<24}{'files':>7}{'seconds':>10}{'files/s':>10}")
    for name, n, t in rows:
        print(f"{name:<24}{n:>7}{t:>10.2f}{n / t:>10.0f}")
    scan_rate, pix_rate = rows[0][1] / rows[0][2], rows[2][1] / rows[2][2]
    print(f"\nmedseg scan vs pydicom with pixels: {scan_rate / pix_rate:.1f}x faster (target >= 3x)")


if __name__ == "__main__":
    main()
