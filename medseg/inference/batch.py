"""Segment many inputs with one loaded model: outputs, sidecars, DICOM SEG, failures, resume.

Called by ``medseg.api.predict``; a bad input is recorded and the rest go on.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from medseg.errors import InputError, MedsegError
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


def _case_ids(inputs: Sequence[PathLike]) -> list[str]:
    from medseg.io.readers import case_id_for

    ids = [case_id_for(_channel_paths(p)[0]) for p in inputs]
    seen: dict[str, str] = {}
    for cid, p in zip(ids, inputs):
        if cid in seen:
            raise InputError(f"inputs {seen[cid]} and {p} would both be written as case {cid!r}; rename one")
        seen[cid] = str(p)
    return ids


def _channel_paths(src: PathLike) -> list:
    """``"t1.nii.gz,t2.nii.gz"`` (a multi-channel case) -> its channel paths; a plain path -> [path]."""
    text = str(src)
    if "," in text and not Path(text).exists():
        return [p for p in text.split(",") if p]
    return [src]


def _already_done(target: Path, sidecar: Path, model_sha) -> bool:
    if not (target.exists() and sidecar.exists()):
        return False
    try:
        return json.loads(sidecar.read_text()).get("model", {}).get("model_sha256") == model_sha
    except (OSError, ValueError):
        return False


def _write_probabilities(probs, path: Path) -> Path:
    import nibabel as nib

    from medseg.io.atomic import atomic_path

    array, affine = probs
    with atomic_path(path) as tmp:
        nib.save(nib.Nifti1Image(array.astype("float32"), affine), str(tmp))
    return path


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
    save_probabilities: bool = False,
    **inference_overrides,
) -> PredictResult:
    """Segment every input with one loaded model (or an ensemble: several checkpoints).

    Writes ``OUT/<case_id>.nii.gz`` on the input's grid, ``OUT/<case_id>.json``
    (labels, model checksum, versions, settings, geometry, time, peak memory,
    per-structure confidence), ``OUT/<case_id>.seg.dcm`` for DICOM inputs,
    ``OUT/<case_id>.probabilities.nii.gz`` with ``save_probabilities`` (4D,
    one volume per class, on the network's coarse grid with its own affine),
    ``OUT/run.json`` and, when any case failed, ``OUT/failures.csv``. Cases
    whose output exists and was made by the same model are skipped unless
    ``overwrite``.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    import medseg
    from medseg.checkpoint import versions
    from medseg.inference.predictor import Predictor
    from medseg.io.atomic import write_csv, write_json
    from medseg.io.readers import read_volume, write_label_map

    if not inputs:
        raise InputError("no inputs given; expected image files or DICOM folders")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = _case_ids(inputs)
    predictor = Predictor.from_checkpoint(model, device=device, expected_labels=expected_labels, progress=progress, **inference_overrides)
    sha = predictor.provenance["model_sha256"]
    result = PredictResult()
    run_info = {"command": "predict", "versions": versions(), "model": predictor.provenance,
                "device": str(predictor.device), "inputs": [str(p) for p in inputs], "labels": predictor.labels.to_dict(),
                "inference": predictor.inference, "preprocessing": predictor.preprocessing}
    write_json(out_dir / "run.json", run_info)

    bar = tqdm(list(zip(ids, inputs)), desc="predict", unit="case", disable=not progress)
    for cid, src in bar:
        target, sidecar = out_dir / f"{cid}.nii.gz", out_dir / f"{cid}.json"
        if not overwrite and _already_done(target, sidecar, sha):
            result.skipped.append(cid)
            continue
        t0 = time.monotonic()
        try:
            channels = _channel_paths(src)
            image = read_volume(channels[0])
            labels = predictor.predict([image, *channels[1:]], keep_probabilities=save_probabilities)
            outputs = {"label_map": target.name}
            if save_probabilities:
                outputs["probabilities"] = _write_probabilities(labels.meta.pop("probabilities"), out_dir / f"{cid}.probabilities.nii.gz").name
            if dicom_seg and image.meta.get("format") == "dicom":
                from medseg.io.seg import write_dicom_seg

                seg_path = write_dicom_seg(labels, src, predictor.labels, out_dir / f"{cid}.seg.dcm", software_version=medseg.__version__)
                outputs["dicom_seg"] = seg_path.name
            write_label_map(labels, target)
            # The sidecar is written last: its presence marks the case as done.
            write_json(sidecar, {
                "case_id": cid, "source": str(src), "outputs": outputs, "labels": predictor.labels.to_dict(), "model": predictor.provenance,
                "inference": predictor.inference, "shape": list(labels.shape), "affine": labels.affine.tolist(),
                "spacing_mm": list(labels.spacing), "input_format": image.meta.get("format"),
                "dicom": image.meta.get("dicom"),  # pseudonymised keys, geometry findings and actions, series selection
                "seconds_total": round(time.monotonic() - t0, 3), **labels.meta, "versions": run_info["versions"],
            })
            result.outputs[cid] = target
            bar.set_postfix(last=f"{time.monotonic() - t0:.1f}s")
        except MedsegError as exc:
            result.failures[cid] = str(exc)
            log.error("%s: %s", cid, exc)
        except Exception as exc:  # a bug must not stop the batch; it is recorded with its type
            result.failures[cid] = f"internal error {type(exc).__name__}: {exc}"
            log.exception("%s: unexpected error", cid)
    if result.failures:
        write_csv(out_dir / "failures.csv", pd.DataFrame([{"case_id": k, "error": v} for k, v in result.failures.items()]))
    return result
