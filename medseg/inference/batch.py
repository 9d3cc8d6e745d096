"""Segment many inputs with one loaded model: outputs, sidecars, DICOM SEG, failures, resume.

Called by ``medseg.api.predict``; a bad input is recorded and the rest go on.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medseg.errors import InputError, MedsegError, OutputError
from medseg.labels import LabelTable

log = logging.getLogger(__name__)
PathLike = str | os.PathLike


@dataclass
class PredictResult:
    outputs: dict = field(default_factory=dict)  # case_id -> label map path
    skipped: list = field(default_factory=list)  # case ids already done (resume)
    failures: dict = field(default_factory=dict)  # case_id -> one-line error

    @property
    def exit_code(self) -> int:
        """0 all done, 1 done with failures, 2 nothing done."""
        if not self.failures:
            return 0
        return 1 if (self.outputs or self.skipped) else 2


def expand_folders(inputs: Sequence[PathLike]) -> list:
    """Inputs with every folder of image files replaced by its cases (a DICOM folder stays one input).

    ``medseg predict --out pred imagesTs/`` as nnU-Net and TotalSegmentator users type it: each NIfTI/NRRD/MHA
    file in a folder without DICOM files is a case, and where every file carries nnU-Net's channel suffix (``case_0000``,
    ``case_0001``...) the files of one case are its channels, in order.
    """
    import re

    from medseg.io.dicom import is_dicom_folder
    from medseg.io.readers import ITK_SUFFIXES, NIFTI_SUFFIXES, case_id_for

    out: list = []
    for src in inputs:
        folder = Path(str(src))
        images = sorted(c for c in folder.iterdir() if c.is_file() and not c.name.startswith(".")
                        and c.name.lower().endswith(NIFTI_SUFFIXES + ITK_SUFFIXES)) if folder.is_dir() else []
        if not images or is_dicom_folder(folder):  # a series folder with a stray NIfTI beside its slices stays DICOM
            out.append(src)
            continue
        parts = [re.fullmatch(r"(.+)_(\d{4})", case_id_for(f)) for f in images]
        if not all(parts):
            out += images
            continue
        cases: dict[str, dict[int, Path]] = {}
        for m, f in zip(parts, images):
            cases.setdefault(m.group(1), {})[int(m.group(2))] = f
        for case, channels in cases.items():
            if sorted(channels) != list(range(len(channels))):
                raise InputError(f"case {case} has channels {sorted(channels)}; nnU-Net's naming needs _0000, _0001... without gaps",
                                 path=folder)
            out.append(",".join(str(channels[k]) for k in range(len(channels))) if len(channels) > 1 else channels[0])
        log.info("%s: %d cases (%d files)", folder, len(cases), len(images))
    return out


def _case_ids(inputs: Sequence[PathLike]) -> list[str]:
    """Case ids of the inputs, checked (length, control characters) and unique."""
    from medseg.io.readers import case_id_for
    from medseg.outputs import check_case_id

    ids = [check_case_id(case_id_for(_channel_paths(p)[0]), p) for p in inputs]
    seen: dict[str, str] = {}
    for cid, p in zip(ids, inputs):
        if cid in seen:
            raise InputError(f"inputs {seen[cid]} and {p} would both be written as case {cid!r}; rename one")
        seen[cid] = str(p)
    return ids


def _targets(out_dir: Path, name: str) -> dict:
    return {"label_map": out_dir / f"{name}.nii.gz", "sidecar": out_dir / f"{name}.json",
            "dicom_seg": out_dir / f"{name}.seg.dcm", "rtstruct": out_dir / f"{name}.rtstruct.dcm", "probabilities": out_dir / f"{name}.probabilities.nii.gz"}


def _channel_paths(src: PathLike) -> list:
    """``"t1.nii.gz,t2.nii.gz"`` (a multi-channel case) -> its channel paths; a plain path -> [path]."""
    text = str(src)
    if "," in text and not Path(text).exists():
        return [p for p in text.split(",") if p]
    return [src]


def predict_many(
    *,
    model: PathLike | Sequence[PathLike],
    inputs: Sequence[PathLike],
    out: PathLike,
    device=None,
    progress: bool = True,
    overwrite: bool = False,
    expected_labels: LabelTable | None = None,
    dicom_seg: bool = True,
    rtstruct: bool = False,
    save_probabilities: bool = False,
    **inference_overrides,
) -> PredictResult:
    """Segment every input with one loaded model (or an ensemble: several checkpoints).

    Writes, through ``medseg.outputs.write_case_outputs``, ``OUT/<name>.nii.gz``
    on the input's grid, ``OUT/<name>.seg.dcm`` for DICOM inputs (and, with
    ``rtstruct``, ``OUT/<name>.rtstruct.dcm``: contours in patient coordinates),
    ``OUT/<name>.probabilities.nii.gz`` with ``save_probabilities`` (4D, one
    volume per class, on the network's coarse grid with its own affine) and
    ``OUT/<name>.json`` (the sidecar: labels, model checksum, versions,
    settings, geometry, time, peak memory, per-structure confidence, findings
    of optional outputs that failed); then ``OUT/run.json`` and, when any case
    failed, ``OUT/failures.csv``. ``<name>`` is ``medseg.outputs.safe_name``
    of the case id (the id itself unless it has characters other than
    ``A-Za-z0-9_.-``). Cases whose output exists and was made by the same
    model are skipped unless ``overwrite``. An output path that is an input
    file, or lies inside an input folder, is refused before anything is
    written (``OutputError``).
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from medseg.checkpoint import versions
    from medseg.inference.predictor import Predictor
    from medseg.io.atomic import ensure_dir, write_csv, write_json
    from medseg.io.readers import read_volume
    from medseg.outputs import (
        already_written,
        refuse_overwriting_inputs,
        safe_name,
        write_case_outputs,
    )

    inputs = expand_folders(inputs)
    if not inputs:
        raise InputError("no inputs given; expected image files or DICOM folders")
    out_dir = Path(out)
    ids = _case_ids(inputs)
    names = {cid: safe_name(cid) for cid in ids}
    all_targets = [out_dir / "run.json", out_dir / "failures.csv"]
    all_targets += [t for cid in ids for t in _targets(out_dir, names[cid]).values()]
    refuse_overwriting_inputs(all_targets, [c for p in inputs for c in _channel_paths(p)])
    ensure_dir(out_dir)
    predictor = Predictor.from_checkpoint(model, device=device, expected_labels=expected_labels, progress=progress, **inference_overrides)
    sha = predictor.provenance["model_sha256"]
    result = PredictResult()
    run_info = {"command": "predict", "versions": versions(), "model": predictor.provenance,
                "device": str(predictor.device), "inputs": [str(p) for p in inputs], "labels": predictor.labels.to_dict(),
                "inference": predictor.inference, "preprocessing": predictor.preprocessing}
    write_json(out_dir / "run.json", run_info)

    bar = tqdm(list(zip(ids, inputs)), desc="predict", unit="case", disable=not progress)
    for cid, src in bar:
        paths = _targets(out_dir, names[cid])
        if not overwrite and already_written(paths["sidecar"], sha):
            result.skipped.append(cid)
            continue
        t0 = time.monotonic()
        try:
            channels = _channel_paths(src)
            image = read_volume(channels[0])
            labels = predictor.predict([image, *channels[1:]], keep_probabilities=save_probabilities)
            write_case_outputs(
                case_id=cid, labels=labels, image_meta=image.meta, source=str(src), table=predictor.labels,
                provenance=predictor.provenance, inference=predictor.inference, label_map=paths["label_map"],
                sidecar=paths["sidecar"], dicom_seg=paths["dicom_seg"] if dicom_seg else None,
                rtstruct=paths["rtstruct"] if rtstruct else None,
                probabilities=paths["probabilities"] if save_probabilities else None,
                versions=run_info["versions"], started=t0)
            result.outputs[cid] = paths["label_map"]
            bar.set_postfix(last=f"{time.monotonic() - t0:.1f}s")
        except OutputError as exc:
            if exc.fatal:  # full or read-only file system: every later case would fail the same way
                raise
            result.failures[cid] = str(exc)
            log.error("%s: %s", cid, exc)
        except MedsegError as exc:
            result.failures[cid] = str(exc)
            log.error("%s: %s", cid, exc)
        except Exception as exc:  # a bug must not stop the batch; it is recorded with its type
            result.failures[cid] = f"internal error {type(exc).__name__}: {exc}"
            log.exception("%s: unexpected error", cid)
    if result.failures:
        write_csv(out_dir / "failures.csv", pd.DataFrame([{"case_id": k, "error": v} for k, v in result.failures.items()]))
    return result
