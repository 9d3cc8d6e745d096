"""The outputs of one predicted case, written in one place for ``medseg predict`` and ``medseg run``.

``write_case_outputs`` writes, in this order:

1. the label map (atomically): the result that must never be lost;
2. optional outputs: the DICOM SEG and the RT Structure Set (DICOM inputs), the class probabilities.
   One that fails (highdicom refusing a header, a slice off the grid) becomes
   a *finding* in the sidecar and one warning line; the case still succeeds;
3. the JSON sidecar, last: its presence marks the case as written
   (``already_written`` is the skip rule of ``medseg predict``).

Sidecar schema (``SIDECAR_SCHEMA``), the same for both commands: ``case_id``,
``source``, ``outputs`` (output kind -> file name, relative to the sidecar's
folder: ``label_map``, ``dicom_seg``, ``rtstruct``, ``probabilities``), ``findings`` (the
predictor's findings about the input, e.g. non-finite voxels, followed by
``{"kind": "output_not_written", "output", "error"}`` for each optional
output that failed), ``labels``, ``model``, ``inference``, ``shape``,
``affine``, ``spacing_mm``, ``input_format``, ``dicom`` (pseudonymised keys and
geometry findings; null for image files), ``versions``, ``seconds_total`` and
the predictor's per-case figures (``seconds``, ``seconds_read``, ``seconds_windows``, ``peak_rss_mb``,
``confidence``, ...); ``medseg predict`` adds the process's start-up figures: ``seconds_startup`` (from process
start until the model was loaded: interpreter, imports, model) and ``seconds_model_load``.

Case ids become file names through ``medseg.io.paths`` (``check_case_id``, ``safe_name``,
``refuse_overwriting_inputs``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path

import nibabel as nib
import pydicom

import medseg
from medseg.errors import OutputError
from medseg.io.atomic import atomic_path, write_json
from medseg.io.objects import seg as seg_objects  # (module attribute: a test replaces write_dicom_seg)
from medseg.io.objects.rtstruct import write_rtstruct
from medseg.io.objects.sr import write_measurement_report
from medseg.io.readers import write_label_map
from medseg.models import checkpoint
from medseg.provenance import to_plain
from medseg.reporting.quality import (
    assess_prediction,
    expected_from_checkpoint,
    sidecar_verdicts,
    verdicts_by_structure,
)

log = logging.getLogger(__name__)

SIDECAR_SCHEMA = "medseg.case/1"


# -- the writer ----------------------------------------------------------------------------------


def already_written(
    sidecar: str | os.PathLike, model_sha256: str, *, source: str | None = None, stack: str | None = None
) -> bool:
    """The skip rule: a sidecar (written last) made by the same model from the same input, with its label map present.

    ``source`` (the case's files, comma-separated): an output of the same name made from another input (a case
    of another folder, or the channel group of a different reading) is not this case's, and is not skipped.
    ``stack``: the DICOM stack key when a folder holds several series (each its own case).
    """
    p = Path(sidecar)
    try:
        side = json.loads(p.read_text())
        label_map = p.parent / side["outputs"]["label_map"]
        made_from = str(side.get("source", ""))
        made_key = ((side.get("dicom") or {}).get("key")) if stack else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    if source is not None and _resolved(made_from) != _resolved(source):
        return False
    if stack is not None and made_key != stack:
        return False
    return label_map.is_file() and (side.get("model") or {}).get("model_sha256") == model_sha256


def _resolved(source: str) -> list[str]:
    """The channel files of a sidecar's ``source`` as absolute paths (a relative path from another cwd compares
    equal)."""
    return [os.path.abspath(part) for part in str(source).split(",") if part]


def plain(obj):
    """Numpy values and arrays -> plain Python (for JSON): ``medseg.provenance.to_plain``."""
    return to_plain(obj)


_EXPECTED_CACHE: dict[str, dict] = {}


def expected_for_model(model_path) -> dict:
    """What a medseg checkpoint file expects of its inputs (``medseg.reporting.quality.expected_from_checkpoint``;
    cached); {} when it cannot be read. The input check of the quality verdicts: ``medseg predict`` and ``run`` pass
    it to ``medseg.reporting.quality``, ``medseg report`` passes this function (reporting loads no checkpoint)."""
    key = str(model_path or "")
    if key not in _EXPECTED_CACHE:
        expected = {}
        if key and Path(key).is_file():
            try:
                expected = expected_from_checkpoint(checkpoint.load_checkpoint(key))
            except Exception:  # noqa: BLE001 (not a medseg checkpoint, unreadable: no input check)
                expected = {}
        _EXPECTED_CACHE[key] = expected
    return _EXPECTED_CACHE[key]


def _write_probabilities(probs, path: Path) -> Path:
    array, affine = probs
    with atomic_path(path) as tmp:
        nib.save(nib.Nifti1Image(array.astype("float32"), affine), str(tmp))
    return path


#: Header values that identify a person; never copied from an error message into a sidecar or log.
_IDENTIFYING = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "OtherPatientIDs",
    "OtherPatientNames",
    "AccessionNumber",
    "IssuerOfPatientID",
    "PatientAddress",
    "PatientTelephoneNumbers",
)


def _identifiers(dicom_folder) -> list[str]:
    """The identifying header values of a DICOM folder's first readable file (and a PN's components)."""
    for root, _dirs, files in os.walk(dicom_folder):
        for name in sorted(files):
            try:
                ds = pydicom.dcmread(Path(root) / name, stop_before_pixels=True, specific_tags=list(_IDENTIFYING))
            except Exception:  # noqa: BLE001 (not DICOM, unreadable: try the next file)
                continue
            values = set()
            for kw in _IDENTIFYING:
                v = ds.get(kw)
                items = v if isinstance(v, (list, tuple, pydicom.multival.MultiValue)) else [v]
                for item in items:
                    s = str(item or "").strip()
                    if s:
                        values.add(s)
                        values.update(part for part in re.split(r"[\\^=]", s) if len(part.strip()) >= 3)
            return sorted(values, key=len, reverse=True)
    return []


def _scrub(text: str, secrets: list[str]) -> str:
    for s in secrets:
        text = re.sub(re.escape(s), "<redacted>", text, flags=re.IGNORECASE)
    return text


def _optional(kind: str, case_id: str, findings: list, write, *, dicom_folder=None):
    """Run one optional writer; a failure (other than a full or read-only disk) becomes a finding.

    The error text is kept (one line, 500 characters), with any identifying
    header value of ``dicom_folder`` replaced by ``<redacted>``: a library's
    message may quote the very PatientName it refused.
    """
    try:
        return write()
    except OutputError as exc:
        if exc.fatal:
            raise
        error = str(exc)
    except Exception as exc:  # highdicom / pydicom refusals, off-grid slices: the label map is already safe
        log.debug("%s: %s failed", case_id, kind, exc_info=True)
        error = f"{type(exc).__name__}: {exc}"
    if dicom_folder is not None:
        try:
            error = _scrub(error, _identifiers(dicom_folder))
        except Exception:  # noqa: BLE001 (cannot check the header: keep only the error's type)
            error = error.split(":", 1)[0]
    error = " ".join(error.split())[:500]
    findings.append({"kind": "output_not_written", "output": kind, "error": error})
    log.warning("%s: %s not written: %s", case_id, kind.replace("_", " "), error)
    return None


def _write_sr(rows, table, seg: Path, path: Path, provenance: dict, uid_seed, modality):
    return write_measurement_report(
        seg,
        rows,
        table,
        path,
        software_version=medseg.__version__,
        model_sha256=str(provenance.get("model_sha256", "")),
        uid_seed=uid_seed,
        modality=str(modality or ""),
        verdicts=verdicts_by_structure(rows),
    )


def _assessed(case_id, labels, table, image, provenance, findings) -> list[dict] | None:
    """The case's structure rows with their quality verdicts (``medseg.reporting.quality``), for the sidecar and
    the SR; a failure is a finding, never a lost case."""
    path = (provenance or {}).get("model_path")
    try:
        return assess_prediction(
            case_id, labels, table, image, expected=expected_for_model(path) if isinstance(path, str) else None
        )
    except Exception as exc:  # noqa: BLE001 (verdicts are an optional output)
        findings.append(
            {"kind": "qc", "action": "skipped", "detail": f"quality verdicts not computed: {type(exc).__name__}: {exc}"}
        )
        return None


def _sidecar_qc(rows) -> dict | None:
    return sidecar_verdicts(rows) if rows is not None else None


def write_case_outputs(
    *,
    case_id: str,
    labels,
    image_meta: dict,
    source: str,
    table,
    provenance: dict,
    inference: dict,
    label_map: str | os.PathLike,
    sidecar: str | os.PathLike,
    dicom_seg: str | os.PathLike | None = None,
    rtstruct: str | os.PathLike | None = None,
    probabilities: str | os.PathLike | None = None,
    versions: dict | None = None,
    started: float | None = None,
    uid_seed: str | None = None,
    sr: str | os.PathLike | None = None,
    image=None,
    assessed: list | None = None,
) -> dict:
    """Write one case's outputs (label map, then optional ones, then the sidecar); returns the sidecar dict.

    ``labels``: the label map Volume (``labels.meta`` holds the predictor's
    figures; ``"probabilities"`` there is written to ``probabilities`` when a
    path is given). ``dicom_seg`` / ``rtstruct``: paths of the SEG / RT Structure
    Set, written when ``source`` is a DICOM folder (contour findings, e.g. dropped
    fragments, join the sidecar's findings). ``uid_seed``: makes their UIDs deterministic (the same case,
    model and settings give the same objects again; ``medseg run`` passes a hash of the model and
    settings). ``sr``: path of the TID 1500 measurement report (``medseg.io.objects.sr``), written when the SEG was:
    volumes and, for CT with ``image`` (the input Volume), the mean and SD of HU per structure. ``image_meta``:
    the input volume's ``meta``. ``assessed`` (a list): receives the case's structure rows with their quality
    verdicts, as measured for the sidecar and the SR (``medseg run``'s report stage reuses them). An
    ``OutputError`` on the label map or the sidecar is raised; optional outputs
    fail softly (see the module docstring).
    """
    label_map, sidecar = Path(label_map), Path(sidecar)
    meta = dict(labels.meta)
    probs = meta.pop("probabilities", None)
    write_label_map(labels, label_map)
    outputs, findings = {"label_map": _relative(label_map, sidecar)}, list(meta.pop("findings", None) or [])
    rows = _assessed(case_id, labels, table, image, provenance, findings)
    if assessed is not None and rows is not None:  # the caller's report reuses them instead of measuring again
        assessed.extend(rows)
    if image_meta.get("format") == "dicom":
        _write_dicom_objects(
            outputs,
            findings,
            case_id=case_id,
            labels=labels,
            image_meta=image_meta,
            source=source,
            table=table,
            provenance=provenance,
            sidecar=sidecar,
            rows=rows,
            dicom_seg=dicom_seg,
            rtstruct=rtstruct,
            sr=sr,
            uid_seed=uid_seed,
        )
    if probabilities is not None and probs is not None:
        _write_optional_probabilities(outputs, findings, case_id, probs, Path(probabilities), sidecar)
    record = _sidecar_record(
        case_id=case_id,
        source=source,
        outputs=outputs,
        findings=findings,
        table=table,
        provenance=provenance,
        inference=inference,
        labels=labels,
        image_meta=image_meta,
        meta=meta,
        versions=versions,
        rows=rows,
        started=started,
    )
    write_json(sidecar, record)  # last: its presence marks the case as written
    return record


def _write_optional_probabilities(outputs: dict, findings: list, case_id: str, probs, path: Path, sidecar: Path):
    """Write the probabilities (softly: a failure is a finding) and name them in ``outputs`` when written."""
    written = _optional("probabilities", case_id, findings, lambda: _write_probabilities(probs, path))
    if written is not None:
        outputs["probabilities"] = _relative(written, sidecar)


def _sidecar_record(
    *,
    case_id,
    source,
    outputs,
    findings,
    table,
    provenance,
    inference,
    labels,
    image_meta,
    meta,
    versions,
    rows,
    started,
) -> dict:
    """The case's sidecar: outputs, findings, labels, model, inference figures, grid, versions, QC and timing."""
    return plain(
        {
            "schema": SIDECAR_SCHEMA,
            "case_id": case_id,
            "source": str(source),
            "outputs": outputs,
            "findings": findings,
            "labels": table.to_dict(),
            "model": provenance,
            "inference": inference,
            "shape": list(labels.shape),
            "affine": labels.affine.tolist(),
            "spacing_mm": list(labels.spacing),
            "input_format": image_meta.get("format"),
            "dicom": image_meta.get("dicom"),
            **meta,
            "versions": checkpoint.versions() if versions is None else versions,
            "qc": _sidecar_qc(rows),
            "seconds_total": round(time.monotonic() - started, 3) if started is not None else None,
        }
    )


def _relative(path: Path, sidecar: Path) -> str:
    """An output's name in the sidecar: relative to the sidecar's folder."""
    return os.path.relpath(path, sidecar.parent)


def _write_dicom_objects(
    outputs: dict,
    findings: list,
    *,
    case_id: str,
    labels,
    image_meta: dict,
    source: str,
    table,
    provenance: dict,
    sidecar: Path,
    rows,
    dicom_seg,
    rtstruct,
    sr,
    uid_seed,
) -> None:
    """The DICOM SEG (and the SR that references it) and the RT Structure Set of a DICOM case, each optional: what is
    written joins ``outputs``, what fails ``findings``."""
    series_key = (image_meta.get("dicom") or {}).get("series_key")  # the series read, of those in the folder
    if dicom_seg is not None:
        seg = _optional(
            "dicom_seg",
            case_id,
            findings,
            lambda: seg_objects.write_dicom_seg(
                labels,
                source,
                table,
                dicom_seg,
                software_version=medseg.__version__,
                uid_seed=uid_seed,
                series_key=series_key,
            ),
            dicom_folder=source,
        )
        if seg is not None:
            outputs["dicom_seg"] = _relative(Path(seg), sidecar)
            if sr is not None and rows is not None:
                report = _optional(
                    "sr",
                    case_id,
                    findings,
                    lambda: _write_sr(
                        rows, table, Path(seg), Path(sr), provenance, uid_seed, image_meta.get("modality")
                    ),
                    dicom_folder=source,
                )
                if report is not None:
                    outputs["sr"] = _relative(Path(report), sidecar)
    if rtstruct is not None:
        rt = _optional(
            "rtstruct",
            case_id,
            findings,
            lambda: write_rtstruct(
                labels,
                source,
                table,
                rtstruct,
                software_version=medseg.__version__,
                findings=findings,
                uid_seed=uid_seed,
                series_uid=series_key,
            ),
            dicom_folder=source,
        )
        if rt is not None:
            outputs["rtstruct"] = _relative(Path(rt), sidecar)
