"""The cases of a run: from a folder (one image file or DICOM sub-folder per case) or a manifest CSV.

Each case gets a cheap fingerprint up front (sizes and modification times of
its files: no pixel data is read before the run starts); the content hash
(``input_sha256``) is computed while the case is read and stored in its state
record.

Listing never stops the run for one case's sake: a file inside a case folder
that cannot be examined (a dangling link, a symlink loop, no permission) is
hashed as "unreadable" and left to the readers, which skip it as ``predict``
does; a case whose listing fails as a whole carries the error and fails alone.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from medseg.data.manifest import image_columns
from medseg.errors import ConfigError, InputError
from medseg.io.atomic import unescape_frame
from medseg.io.dicom.series import is_dicom_folder
from medseg.io.paths import check_case_id
from medseg.io.readers import case_id_for
from medseg.pacs import query as q
from medseg.pacs.retrieve import StudyCache
from medseg.runner.rundir import MARKER

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass
class Case:
    case_id: str
    source: str  # absolute path of the image file or DICOM folder
    kind: str  # "dicom" (a folder) or "image" (a file)
    label: str = ""  # reference label map (manifests with a label column)
    split: str = ""
    fingerprint: str = ""
    error: str = ""  # a problem found while listing: the case fails in its read stage with this line
    remote: str = ""  # PACS input: the StudyInstanceUID to retrieve into ``source`` (in memory only, never written)
    channels: tuple = ()  # a multi-channel manifest's further image files (image_1, image_2...), in channel order
    query_row: int | None = None  # PACS input with an id list: the row of the list that found the study


def _files_of(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    out = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [Path(root) / f for f in sorted(files) if not f.startswith(".")]
    return out


def fingerprint(path: str | os.PathLike) -> str:
    """sha256 over (relative name, size, mtime) of the input's files; "missing" when it does not exist.

    A file that cannot be examined (dangling link, symlink loop) counts with its errno instead.
    """
    p = Path(path)
    if not p.exists():
        return "missing"
    h = hashlib.sha256()
    for f in _files_of(p):
        name = f.relative_to(p) if p.is_dir() else f.name
        try:
            st = f.stat()
            h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        except OSError as exc:
            h.update(f"{name}\0unreadable\0{exc.errno}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def content_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, or over (relative name, sha256) of every file of a folder."""
    p = Path(path)
    outer = hashlib.sha256()
    for f in _files_of(p):
        h = hashlib.sha256()
        try:
            with open(f, "rb") as fh:
                while block := fh.read(chunk):
                    h.update(block)
            digest = h.hexdigest()
        except OSError as exc:
            if p.is_file():
                raise
            digest = f"unreadable:{exc.errno}"  # a dangling link or loop inside a folder: the readers skip it too
        if p.is_file():
            return digest
        outer.update(f"{f.relative_to(p)}\0{digest}\n".encode("utf-8", "surrogateescape"))
    return outer.hexdigest()


def _check_id(cid: str, where) -> str:
    """Bounded length, no control characters or path separators, not '.'-hidden, not a run-level name."""
    check_case_id(cid, where)
    if cid.startswith(".") or cid in ("_train", "_plan"):
        raise InputError(f"case id {cid!r} cannot name files; use letters, digits, '-', '_' and '.'", path=where)
    return cid


def _is_image(p: Path) -> bool:
    return p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES)


def from_folder(folder: Path) -> tuple[list[Case], list[str]]:
    """One case per image file and per sub-folder (a DICOM series folder); returns ``(cases, ignored names)``."""
    cases, ignored = [], []
    for child in sorted(folder.iterdir()):
        if child.name.startswith("."):
            continue
        if (child / MARKER).is_file():  # a run directory (e.g. --out inside the input folder) is not a case
            ignored.append(child.name)
            continue
        if _is_image(child):
            cases.append(Case(_check_id(case_id_for(child), child), str(child.resolve()), "image"))
        elif child.is_dir():
            cases.append(Case(_check_id(child.name, child), str(child.resolve()), "dicom"))
        else:
            ignored.append(child.name)
    if not cases:
        if is_dicom_folder(folder):  # the folder itself is one DICOM case
            return [Case(_check_id(folder.resolve().name, folder), str(folder.resolve()), "dicom")], []
        raise InputError(
            "no cases found; expected image files (.nii.gz, .nrrd, .mha) and/or one sub-folder of "
            "DICOM files per case, or a manifest .csv",
            path=folder,
        )
    return cases, ignored


def from_manifest(path: Path, column: str, label_column: str, split: str) -> list[Case]:
    import pandas as pd

    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:  # noqa: BLE001 (any parser error means the user's file is not CSV)
        raise InputError(f"cannot read as CSV ({str(exc).splitlines()[0]})", path=path) from None
    df = unescape_frame(df)  # the quote write_csv puts before a formula-like id or path
    for col in ("case_id", column):
        if col not in df.columns:
            raise ConfigError(
                f"manifest has no column {col!r} (columns: {', '.join(df.columns)}); "
                f"set the image column with --set input.column=NAME",
                path=path,
            )
    if split:
        if "split" not in df.columns:
            raise ConfigError(f"input.split is {split!r} but the manifest has no 'split' column", path=path)
        df = df[df["split"] == split]
        if df.empty:
            raise InputError(f"no rows with split {split!r}", path=path)
    dups = sorted(df.loc[df["case_id"].duplicated(), "case_id"].unique())
    if dups:
        raise InputError(f"duplicate case_id(s) {dups[:5]}; each case must appear once", path=path)

    def resolve(rel: str) -> str:
        if not rel:
            return ""
        p = Path(rel) if Path(rel).is_absolute() else path.parent / rel
        return str(p.resolve())

    extra = image_columns(df)[1:] if column == "image" else []  # the channels training stacked: image, image_1, ...
    cases = []
    for _, row in df.iterrows():
        src = resolve(row[column])
        kind = "dicom" if src and Path(src).is_dir() else "image"
        cases.append(
            Case(
                _check_id(row["case_id"], path),
                src,
                kind,
                label=resolve(row.get(label_column, "")),
                split=row.get("split", ""),
                channels=tuple(resolve(row[c]) for c in extra),
            )
        )
    return cases


def from_pacs(pacs, pipe) -> list[Case]:
    """One case per study the query finds (``pacs``: ``medseg.pacs.source.PacsInput``); an id-list row that finds
    nothing becomes a case that fails with that reason. Case ids and fingerprints are salted hashes of the
    StudyInstanceUID; ``source`` is the study's folder in the cache, filled when the case is read."""
    if pipe.has("train"):
        raise ConfigError("the train stage needs a manifest .csv as --input, not a PACS")
    result = q.find_studies(pacs.endpoint, pacs.filters, pacs.id_list)
    cache = StudyCache(pacs.cache_dir, pacs.cache_max_bytes)
    cache.cleanup()  # retrievals of runs that were killed
    cases = [
        Case(
            _check_id(hit.key, pacs.endpoint.display),
            str(cache.path(hit.key)),
            "dicom",
            fingerprint=q.hashed(hit.study_uid, "fp"),
            remote=hit.study_uid,
            query_row=hit.query_row,
        )
        for hit in result.studies
    ]
    for m in result.missing:
        cases.append(
            Case(
                m.key,
                "",
                "dicom",
                fingerprint="missing",
                query_row=m.query_row,
                error=f"row {m.query_row} of the id list: no study with this {m.keyword} on {pacs.endpoint.display}",
            )
        )
    if not cases:
        raise InputError(
            f"{pacs.endpoint.display}: the query found no study; check the query keys "
            f"({', '.join(pacs.filters) or 'none'})"
        )
    return cases


def discover(input_path, pipe, pacs=None) -> tuple[list[Case], list[str]]:
    """The run's cases with fingerprints, and the names in a folder that are not cases.

    ``pacs`` (``medseg.pacs.source.PacsInput``): the input is a PACS endpoint; one case per study found.
    """
    if pacs is not None:
        return from_pacs(pacs, pipe), []
    p = Path(input_path)
    if not p.exists():
        raise InputError("input not found; expected a folder of cases or a manifest .csv", path=p)
    if p.is_file() and p.suffix.lower() == ".csv":
        cases, ignored = from_manifest(p, pipe.input.column, pipe.input.label_column, pipe.input.split), []
    elif p.is_dir():
        if pipe.has("train"):
            raise ConfigError(
                "the train stage needs a manifest .csv as --input (with image, label and split columns)", path=p
            )
        cases, ignored = from_folder(p)
    else:
        raise InputError("input is neither a folder nor a manifest .csv", path=p)
    if pipe.has("evaluate"):
        missing = [c.case_id for c in cases if not c.label]
        if missing:
            raise ConfigError(
                f"the evaluate stage needs a reference label per case (manifest column "
                f"{pipe.input.label_column!r}); none for {missing[:5]}",
                path=p,
            )
    for c in cases:
        try:
            c.fingerprint = fingerprint(c.source) if c.source else "missing"
            for extra in c.channels:
                c.fingerprint = hashlib.sha256(
                    f"{c.fingerprint}\0{fingerprint(extra) if extra else 'missing'}".encode()
                ).hexdigest()
            if c.label:
                c.fingerprint = hashlib.sha256(f"{c.fingerprint}\0{fingerprint(c.label)}".encode()).hexdigest()
        except OSError as exc:  # this case cannot be listed: it fails alone, in its read stage
            c.fingerprint = "unreadable"
            c.error = f"cannot list the case's files ({exc.strerror or type(exc).__name__})"
    return cases, ignored
