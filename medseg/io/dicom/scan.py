"""Walk a folder tree and read DICOM headers only (no pixel data).

Every file ends up either in a series (grouped by study and series UID) or in
the list of files that were not used, with the reason. Nothing stops the scan:
a truncated file, a text file, a dangling or looping symbolic link, a link to
a folder (not followed), a folder that cannot be listed, a FIFO or a header
that claims more pixels than allowed is recorded and the walk goes on.

A DICOMDIR is used: the files it references (by ReferencedFileID, relative to
its folder; the names need no extension and are matched case-insensitively,
as ISO 9660 media are often copied in lower case) are scanned, and what it
references but is missing is reported on its line. When a folder is scanned,
files the DICOMDIR does not list are scanned too, so a stale index hides
nothing; when a DICOMDIR file itself is given, only what it references is read.

Memory: before any pixel data is decoded, a header's Rows x Columns x frames is
checked against ``max_voxels()`` (``MEDSEG_MAX_VOXELS``, default 2**30) and,
where the transfer syntax allows, its bytes against the file size
(uncompressed: the file must hold them; RLE: at most 64:1; deflate: at most
1032:1; other codecs: at most 1000:1 once over 256 MiB; encapsulated: at least
8 bytes per frame). A file that fails is listed
with the reason and never decoded.

Each image frame becomes one ``SliceInfo``: a classic file is one frame, an
enhanced multi-frame object gives one per frame from its per-frame (or shared)
functional groups. Patient identifiers are kept apart in
``SeriesInfo.identifiers`` and only leave this module when a caller asks.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

#: Most voxels one file or one stack may claim (before anything is decoded); MEDSEG_MAX_VOXELS overrides.
from medseg.io.limits import MAX_VOXELS as DEFAULT_MAX_VOXELS  # noqa: F401  (one limit for every reader)
from medseg.io.limits import max_voxels
from medseg.progress import progress_bar as tqdm

if TYPE_CHECKING:
    from pydicom import Dataset
    from pydicom.uid import UID

log = logging.getLogger(__name__)

#: The most a lossless codec can shrink pixel data (claimed bytes per file byte), where that is bounded:
#: RLE (PackBits) codes 128 equal bytes in 2; zlib's deflate at most 1032:1.
_MAX_RATIO = {"1.2.840.10008.1.2.5": 64, "1.2.840.10008.1.2.1.99": 1032}
#: Other codecs (JPEG family, JPEG 2000) have no hard bound; above _PLAUSIBLE_BYTES (256 MiB) of claimed
#: pixel data a ratio over _PLAUSIBLE_RATIO is refused: no real CT/MR image of that size compresses so far.
_PLAUSIBLE_BYTES, _PLAUSIBLE_RATIO = 2**28, 1000
#: Default salt of the pseudonymous study/series keys; set MEDSEG_KEY_SALT for a site-specific one.
DEFAULT_SALT = "medseg-v1"
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"

#: Modalities of objects that are not images to segment (skipped with the reason).
NON_IMAGE_MODALITIES = {
    "SR": "structured report",
    "RTSTRUCT": "RT structure set",
    "RTPLAN": "RT plan",
    "RTDOSE": "RT dose grid",
    "RTRECORD": "RT treatment record",
    "SEG": "segmentation object",
    "PR": "presentation state",
    "KO": "key object selection",
    "ECG": "waveform",
    "HD": "waveform",
    "DOC": "encapsulated document",
    "REG": "registration",
    "FID": "fiducials",
    "RWV": "real world value map",
    "PLAN": "plan",
}
#: Words in a SOP class name that mark a non-image object (when the modality does not say).
NON_IMAGE_SOP_WORDS = (
    "SR Storage",
    "Structure Set",
    "Plan Storage",
    "Segmentation",
    "Presentation State",
    "Key Object",
    "Waveform",
    "Encapsulated",
    "Dose",
    "Registration",
    "Raw Data",
    "Treatment Record",
    "Fiducials",
    "Surface",
    "Document",
)
#: Series-level metadata copied to inventories and sidecars (nothing that identifies a person).
SAFE_TAGS = (
    "Modality",
    "SeriesDescription",
    "SeriesNumber",
    "Manufacturer",
    "ManufacturerModelName",
    "BodyPartExamined",
    "ConvolutionKernel",
    "KVP",
    "ContrastBolusAgent",
    "MagneticFieldStrength",
    "EchoTime",
    "RepetitionTime",
    "FlipAngle",
    "SliceThickness",
    "ScanningSequence",
    "ImageType",
)
IDENTIFYING_TAGS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "AccessionNumber",
    "StudyDate",
    "StudyInstanceUID",
    "SeriesInstanceUID",
)


@dataclass
class SliceInfo:
    """One image frame: where it is, how to decode it, and what tells it apart from its neighbours."""

    path: Path
    frame: int | None  # frame index inside a multi-frame file; None for a classic single-frame file
    sop_uid: str
    rows: int
    cols: int
    iop: tuple | None = None  # 6 direction cosines (row direction, column direction), LPS
    ipp: tuple | None = None  # position of the first voxel, LPS mm
    ipp_quantum: float | None = None  # 10**-decimals of the ImagePositionPatient text (header rounding), mm
    pixel_spacing: tuple | None = None  # (row spacing, column spacing) mm
    thickness: float | None = None
    slope: float = 1.0
    intercept: float = 0.0
    instance_number: int | None = None
    image_type: tuple = ()
    split_keys: dict = field(default_factory=dict)  # echo, temporal position, acquisition, stack
    photometric: str = "MONOCHROME2"  # MONOCHROME1 frames are inverted when decoded


@dataclass
class SeriesInfo:
    study_uid: str
    series_uid: str
    study_key: str
    series_key: str
    modality: str = ""
    sop_class: str = ""
    transfer_syntaxes: set = field(default_factory=set)
    files: list = field(default_factory=list)
    slices: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)  # SAFE_TAGS of the first file
    identifiers: dict = field(default_factory=dict)  # IDENTIFYING_TAGS: only output on explicit request
    not_image: str | None = None  # why this series is not an image series to segment
    non_image_files: list = field(default_factory=list)  # (path, reason)
    spacing_between_slices: float | None = None


@dataclass
class ScanResult:
    root: Path
    series: dict = field(default_factory=dict)  # (study_uid, series_uid) -> SeriesInfo
    skipped: list = field(default_factory=list)  # (path, reason) of files that are in no series
    n_files: int = 0


def pseudonym(uid: str, *, prefix: str, salt: str | None = None) -> str:
    """A stable, non-reversible key for a UID: salted SHA-256, 10 hex digits."""
    salt = salt if salt is not None else os.environ.get("MEDSEG_KEY_SALT", DEFAULT_SALT)
    return prefix + hashlib.sha256(f"{salt}\x00{uid}".encode()).hexdigest()[:10]


def iter_files(folder: Path, problems: list | None = None):
    """Every regular file under ``folder`` in a stable order (hidden files included; links to files followed).

    Nothing here raises: a dangling link, a link loop, a link to a folder (not followed, so a link to
    ``/`` cannot make the scan walk the whole disk), a folder that cannot be listed and anything that
    is not a regular file (FIFO, socket, device: opening one could block) is appended to ``problems``
    as ``(path, reason)`` and left out.
    """
    problems = [] if problems is None else problems

    def onerror(exc: OSError) -> None:
        problems.append((Path(exc.filename or folder), f"cannot list folder ({exc.strerror or exc}): skipped"))

    for root, dirs, files in os.walk(folder, onerror=onerror):
        dirs.sort()
        for name in list(dirs):
            path = Path(root) / name
            if os.path.islink(path):  # os.walk does not descend into it; say so
                problems.append((path, _dir_link_problem(path)))
        for name in sorted(files):
            path = Path(root) / name
            try:
                st = os.stat(path)
            except OSError as exc:
                problems.append((path, _link_problem(path, exc)))
                continue
            if not stat.S_ISREG(st.st_mode):
                problems.append((path, "not a regular file (FIFO, socket or device): skipped"))
                continue
            yield path


def _dir_link_problem(path: Path) -> str:
    try:
        target = path.resolve(strict=True)
        here = path.parent.resolve(strict=True)
    except (OSError, RuntimeError):
        return "symbolic link loop: not followed"
    if target == here or target in here.parents:
        return "symbolic link loop (it points to a folder that contains it): not followed"
    return "symbolic link to a folder: not followed (give that folder itself to read it)"


def _link_problem(path: Path, exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symbolic link loop (the link resolves to itself): skipped"
    if os.path.islink(path) and exc.errno == errno.ENOENT:
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        return f"dangling symbolic link (its target {target!r} does not exist): skipped"
    return f"cannot read ({exc.strerror or exc}): skipped"


def read_dicomdir(path: Path) -> tuple[list[Path], str]:
    """The files a DICOMDIR references that exist, and a one-line account of it (never raises).

    References are resolved relative to the DICOMDIR's folder, case-insensitively when the exact
    name is absent; a reference that leaves that folder is not followed.
    """
    import pydicom

    base = path.parent
    try:
        ds = pydicom.dcmread(path, force=True)
        if "DirectoryRecordSequence" not in ds:
            return [], "DICOMDIR index: no directory records (not a DICOMDIR): nothing referenced"
        records = ds.get("DirectoryRecordSequence") or []
        ids = []
        for rec in records:
            ref = rec.get("ReferencedFileID")
            if ref is None:
                continue
            ids.append([str(ref)] if isinstance(ref, str) else [str(v) for v in ref])
    except Exception as exc:  # pydicom raises many types on corrupt files
        return (
            [],
            f"DICOMDIR index: unreadable ({type(exc).__name__}: {' '.join(str(exc).split())[:120]}); the folder is "
            "scanned instead",
        )
    found, missing, outside = [], [], []
    for parts in ids:
        rel = "/".join(parts)
        if any(p in ("", ".", "..") or "/" in p or "\\" in p for p in parts) or Path(parts[0]).is_absolute():
            outside.append(rel)
            continue
        target = _resolve_case_insensitive(base, parts)
        if target is None:
            missing.append(rel)
        else:
            found.append(target)
    note = f"DICOMDIR index: used; {len(ids)} file(s) referenced, {len(found)} found"
    if missing:
        note += f", {len(missing)} missing (e.g. {missing[0]})"
    if outside:
        note += f", {len(outside)} pointing outside its folder not followed (e.g. {outside[0][:80]})"
    return found, note


def _resolve_case_insensitive(base: Path, parts: list) -> Path | None:
    cur = base
    for _i, part in enumerate(parts):
        nxt = cur / part
        if not os.path.lexists(nxt):
            try:
                match = [n for n in os.listdir(cur) if n.upper() == part.upper()]
            except OSError:
                return None
            if not match:
                return None
            nxt = cur / sorted(match)[0]
        cur = nxt
    return cur if cur.is_file() else None


def is_dicomdir_file(path: Path) -> bool:
    return Path(path).name.upper() == "DICOMDIR" and Path(path).is_file()


def _check_claimed_size(ds, pixel_offset: int, size: int, limit: int) -> str | None:
    """Why the pixel data this header claims must not be decoded (None when it may)."""

    def g(kw):
        return _tag_value(ds, kw)

    rows, cols = _int(g("Rows")) or 0, _int(g("Columns")) or 0
    frames = _int(g("NumberOfFrames"))
    frames = 1 if frames is None else frames
    samples = _int(g("SamplesPerPixel")) or 1
    bits = _int(g("BitsAllocated")) or 8
    if frames < 1:
        return f"header claims {frames} frames: not an image, not decoded"
    voxels = rows * cols * frames
    if voxels > limit:
        return (
            f"header claims {cols} x {rows} pixels x {frames} frame(s) = {voxels:,} voxels, more than the limit "
            f"of {limit:,} (MEDSEG_MAX_VOXELS): refused before decoding"
        )
    nbytes = (voxels * samples * bits + 7) // 8
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    ratio = _MAX_RATIO.get(str(ts)) if ts is not None else None
    # Deflate compresses the whole dataset, so the reader's position says nothing: count the whole file.
    held = size if ts is not None and ts.is_deflated else max(size - pixel_offset, 0)
    if ratio and ts is not None and nbytes > ratio * held + 4096:  # (a ratio implies a transfer syntax)
        return (
            f"header claims {nbytes:,} bytes of pixel data, more than {ts.name} can code in the "
            f"{held:,} bytes the file holds: refused before decoding"
        )
    if ts is not None and ts.is_encapsulated and nbytes > _PLAUSIBLE_BYTES and nbytes > _PLAUSIBLE_RATIO * held:
        return (
            f"header claims {nbytes:,} bytes of pixel data from {held:,} compressed bytes (over "
            f"{_PLAUSIBLE_RATIO}:1; images with noise, as CT and MR have, do not compress so far): refused "
            "before decoding"
        )
    if ts is not None and ts.is_encapsulated and frames > max(size - pixel_offset, 0) // 8:
        return (
            f"header claims {frames:,} compressed frames, more than the {size - pixel_offset:,} bytes of "
            "pixel data can hold: refused before decoding"
        )
    return None


def looks_like_dicom(path: Path) -> str | None:
    """None when the file may be DICOM; otherwise the reason it is not."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        return f"cannot open ({exc.strerror})"
    if len(head) == 132 and head[128:132] == b"DICM":
        return None
    # Files without the 128-byte preamble (old exports) start with a group 0x0002/0x0008 tag.
    if len(head) >= 8 and head[:2] in (b"\x02\x00", b"\x08\x00", b"\x00\x08"):
        return None
    return "not DICOM (no DICM marker at byte 128)"


#: Binary (US) tags among those read per file; every other tag read per file is a text value.
_US_TAGS = {"Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "BitsStored", "PixelRepresentation"}
_TAGS: dict = {}


def _tag_value(ds, keyword: str):
    """A header value without pydicom's full value conversion (the scan's hot path).

    Text values come back as ``str`` or a list of ``str`` (multi-valued); US values as ``int``.
    Elements pydicom has already converted are returned as they are.
    """
    from pydicom.dataelem import RawDataElement

    tag = _TAGS.get(keyword)
    if tag is None:
        from pydicom.datadict import tag_for_keyword

        tag = _TAGS[keyword] = tag_for_keyword(keyword)
    elem = ds._dict.get(tag)
    if elem is None:
        return None
    if not isinstance(elem, RawDataElement):
        return elem.value
    raw = elem.value
    if raw is None or len(raw) == 0:
        return None
    if keyword in _US_TAGS:
        return int.from_bytes(raw[:2], "little" if elem.is_little_endian else "big")
    text = raw.decode("latin-1").strip("\x00 ")
    parts = [p.strip("\x00 ") for p in text.split("\\")]
    return parts if len(parts) > 1 else parts[0]


def _floats(value, n: int) -> tuple | None:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def _quantum(value) -> float | None:
    """The rounding step of decimal-string values (``"12.35"`` -> 0.01); None when not written as text."""
    from decimal import Decimal, InvalidOperation

    exps = []
    for v in _as_list(value) or ():
        text = getattr(v, "original_string", v)
        if not isinstance(text, str):
            return None
        try:
            exp = Decimal(text.strip()).as_tuple().exponent
        except (InvalidOperation, ValueError):
            return None
        if not isinstance(exp, int):
            return None
        exps.append(min(max(exp, -12), 3))
    return 10.0 ** min(exps) if exps else None


def _num(value, default=None):
    try:
        return float(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def _int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _group(item, seq: str, tag: str):
    """``item.seq[0].tag`` or None."""
    s = item.get(seq) if item is not None else None
    if not s:
        return None
    return s[0].get(tag)


def _frames_from_functional_groups(ds, path: Path, base: dict) -> list[SliceInfo]:
    shared = ds.SharedFunctionalGroupsSequence[0] if ds.get("SharedFunctionalGroupsSequence") else None
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    n = _int(ds.get("NumberOfFrames")) or len(per_frame)
    out = []
    for f in range(n):
        item = per_frame[f] if f < len(per_frame) else None

        def pick(seq, tag, item=item):
            v = _group(item, seq, tag)
            return v if v is not None else _group(shared, seq, tag)

        keys = {
            "stack": pick("FrameContentSequence", "StackID"),
            "temporal": pick("FrameContentSequence", "TemporalPositionIndex"),
            "echo": pick("MREchoSequence", "EffectiveEchoTime"),
        }
        out.append(
            SliceInfo(
                path=path,
                frame=f,
                sop_uid=f"{base['sop_uid']}#{f}",
                rows=base["rows"],
                cols=base["cols"],
                iop=_floats(pick("PlaneOrientationSequence", "ImageOrientationPatient"), 6),
                ipp=_floats(pick("PlanePositionSequence", "ImagePositionPatient"), 3),
                ipp_quantum=_quantum(pick("PlanePositionSequence", "ImagePositionPatient")),
                pixel_spacing=_floats(pick("PixelMeasuresSequence", "PixelSpacing"), 2),
                thickness=_num(pick("PixelMeasuresSequence", "SliceThickness")),
                slope=_num(pick("PixelValueTransformationSequence", "RescaleSlope"), base["slope"]),
                intercept=_num(pick("PixelValueTransformationSequence", "RescaleIntercept"), base["intercept"]),
                instance_number=f + 1,
                image_type=base["image_type"],
                photometric=base["photometric"],
                split_keys={k: str(v) for k, v in keys.items() if v is not None},
            )
        )
    return out


def _slices(ds, path: Path) -> list[SliceInfo]:
    def g(kw):
        return _tag_value(ds, kw)

    base = {
        "sop_uid": str(g("SOPInstanceUID") or path.name),
        "rows": _int(g("Rows")) or 0,
        "cols": _int(g("Columns")) or 0,
        "slope": _num(g("RescaleSlope"), 1.0),
        "intercept": _num(g("RescaleIntercept"), 0.0),
        "image_type": tuple(str(v).upper() for v in _as_list(g("ImageType")) or ()),
        "photometric": str(g("PhotometricInterpretation") or "MONOCHROME2").strip().upper(),
    }
    if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
        return _frames_from_functional_groups(ds, path, base)
    keys = {
        "echo": g("EchoNumbers"),
        "temporal": g("TemporalPositionIdentifier"),
        "acquisition": g("AcquisitionNumber"),
        "trigger": g("TriggerTime"),
    }
    return [
        SliceInfo(
            path=path,
            frame=None,
            sop_uid=base["sop_uid"],
            rows=base["rows"],
            cols=base["cols"],
            iop=_floats(_as_list(g("ImageOrientationPatient")), 6),
            ipp=_floats(_as_list(g("ImagePositionPatient")), 3),
            ipp_quantum=_quantum(g("ImagePositionPatient")),
            pixel_spacing=_floats(_as_list(g("PixelSpacing")), 2),
            thickness=_num(g("SliceThickness")),
            slope=base["slope"],
            intercept=base["intercept"],
            instance_number=_int(g("InstanceNumber")),
            image_type=base["image_type"],
            split_keys={k: str(v) for k, v in keys.items() if v not in (None, "")},
            photometric=base["photometric"],
        )
    ]


def _as_list(value):
    return [value] if isinstance(value, str | int | float) else value


def _why_not_image(ds, modality: str, sop_name: str) -> str | None:
    if modality in NON_IMAGE_MODALITIES:
        return f"{modality} ({NON_IMAGE_MODALITIES[modality]}): not an image to segment, skipped"
    for word in NON_IMAGE_SOP_WORDS:
        if word.lower() in sop_name.lower():
            return f"{sop_name}: not an image to segment, skipped"
    if not _tag_value(ds, "Rows") or not _tag_value(ds, "Columns"):
        return f"{sop_name or 'object'} without a pixel matrix (no Rows/Columns): skipped"
    if (_int(_tag_value(ds, "SamplesPerPixel")) or 1) != 1:
        return f"colour image ({ds.get('PhotometricInterpretation', '?')}): not a CT/MR intensity image, skipped"
    return None


def scan_folder(folder: str | os.PathLike, *, progress: bool = False, salt: str | None = None) -> ScanResult:
    """Read the header of every file under ``folder`` (or that a DICOMDIR file references); never raises on a bad
    file."""
    given = Path(folder)
    limit = max_voxels()  # a bad MEDSEG_MAX_VOXELS is one ConfigError here, not one per file
    problems: list = []
    if is_dicomdir_file(given):
        root = given.parent
        indexes, files = [given], []
    else:
        root = given
        files = list(iter_files(root, problems))
        indexes = [f for f in files if f.name.upper() == "DICOMDIR"]
    result = ScanResult(root=root)
    result.skipped.extend(problems)
    files = _with_indexed_files(files, indexes, result)
    result.n_files = len(files) + len(indexes)
    for path in tqdm(files, desc="scan", unit="file", disable=not progress):
        _scan_file(path, result, limit, salt)
    for info in result.series.values():
        result.skipped.extend(info.non_image_files)
        if not info.slices and info.non_image_files:
            info.not_image = info.non_image_files[0][1]
    return result


def _with_indexed_files(files: list, indexes: list, result: ScanResult) -> list:
    """``files`` and every file a DICOMDIR of ``indexes`` references (once each), less the indexes themselves;
    each index's note goes to ``result.skipped``."""
    listed = {os.path.normcase(os.path.abspath(f)) for f in files}
    for index in indexes:
        refs, note = read_dicomdir(index)
        result.skipped.append((index, note))
        for ref in refs:
            key = os.path.normcase(os.path.abspath(ref))
            if key not in listed:
                listed.add(key)
                files.append(ref)
    done = {os.path.normcase(os.path.abspath(f)) for f in indexes}
    return [f for f in files if os.path.normcase(os.path.abspath(f)) not in done]


@dataclass
class _Header:
    """What ``scan_folder`` keeps of one file's header."""

    ds: Dataset  # without pixel data
    modality: str
    sop_name: str
    study_uid: str
    series_uid: str
    why_not: str | None  # why the file is not an image to segment (None: it is)
    slices: list  # its frames (empty when not an image)
    transfer_syntax: UID | None


def _scan_file(path: Path, result: ScanResult, limit: int, salt: str | None) -> None:
    """Add one file to its series in ``result``, or to ``result.skipped`` with the reason."""
    reason = looks_like_dicom(path)
    if reason:
        result.skipped.append((path, reason))
        return
    try:
        head = _read_header(path, limit)
    except Exception as exc:  # pydicom raises many types on corrupt files
        result.skipped.append(
            (path, f"unreadable DICOM header ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})")
        )
        return
    if isinstance(head, str):
        result.skipped.append((path, head))
        return
    ds = head.ds
    key = (head.study_uid, head.series_uid)
    info = result.series.get(key)
    if info is None:
        info = SeriesInfo(
            head.study_uid,
            head.series_uid,
            pseudonym(head.study_uid, prefix="st", salt=salt),
            pseudonym(head.series_uid, prefix="se", salt=salt),
            modality=head.modality,
            sop_class=head.sop_name,
            meta={t: _plain(v) for t in SAFE_TAGS if (v := _get(ds, t)) not in (None, "")},
            identifiers={t: str(_get(ds, t, "")) for t in IDENTIFYING_TAGS},
            spacing_between_slices=_num(_get(ds, "SpacingBetweenSlices")),
        )
        result.series[key] = info
    info.files.append(path)
    ts = head.transfer_syntax
    info.transfer_syntaxes.add(ts.name if ts else "unknown")
    if head.why_not:
        info.non_image_files.append((path, head.why_not))
    info.slices.extend(head.slices)


def _read_header(path: Path, limit: int) -> _Header | str:
    """The header of one file, or why the file is not used (a DICOMDIR, no DICOM object, too large, truncated).
    A corrupt header raises whatever pydicom raises."""
    import pydicom
    from pydicom.uid import UID

    with open(path, "rb") as fh:
        ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True)
        pixel_offset, size = fh.tell(), os.fstat(fh.fileno()).st_size
    sop_class = str(_tag_value(ds, "SOPClassUID") or getattr(ds.get("file_meta"), "MediaStorageSOPClassUID", ""))
    if sop_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        return "DICOMDIR index under another name: not used (only files named DICOMDIR are)"
    if "SOPClassUID" not in ds and "Modality" not in ds and "Rows" not in ds:
        return "not a DICOM object (no SOPClassUID, Modality or Rows)"
    modality = str(_tag_value(ds, "Modality") or "")
    sop_name = UID(sop_class).name if sop_class else ""
    study_uid = str(_tag_value(ds, "StudyInstanceUID") or "unknown-study")
    series_uid = str(_tag_value(ds, "SeriesInstanceUID") or "unknown-series")
    why_not = _why_not_image(ds, modality, sop_name)
    too_big = None if why_not else _check_claimed_size(ds, pixel_offset, size, limit)
    if too_big:
        return too_big
    short = None if why_not else _truncated_by(ds, pixel_offset, size)
    if short:
        return f"truncated: the file ends {short} bytes before its pixel data does"
    slices = [] if why_not else _slices(ds, path)
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return _Header(ds, modality, sop_name, study_uid, series_uid, why_not, slices, ts)


def _truncated_by(ds, pixel_offset: int, size: int) -> int | None:
    """Bytes missing from uncompressed pixel data (None when complete or not checkable)."""
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is not None and (ts.is_compressed or ts.is_deflated):
        return None
    try:

        def g(kw, d=None):
            return _tag_value(ds, kw) or d

        n = (
            int(g("Rows"))
            * int(g("Columns"))
            * int(g("SamplesPerPixel", 1))
            * int(g("NumberOfFrames", 1))
            * int(g("BitsAllocated"))
            + 7
        ) // 8
    except (AttributeError, TypeError, ValueError):
        return None
    missing = pixel_offset + 8 + n - size  # 8: the shortest element header
    return missing if missing > 0 else None


def _get(ds, keyword: str, default=None):
    """``ds.get(keyword)``, or ``default`` when a corrupt element cannot be converted (an unknown VR, ...)."""
    try:
        return ds.get(keyword, default)
    except Exception:  # pydicom raises many types on corrupt elements
        return default


def _plain(value):
    """A header value as str/float/list of those (JSON- and CSV-friendly)."""
    from pydicom.multival import MultiValue

    if isinstance(value, MultiValue | list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, int | float):
        return value
    try:
        return float(value) if type(value).__name__ in ("DSfloat", "IS", "DSdecimal") else str(value)
    except (TypeError, ValueError):
        return str(value)
