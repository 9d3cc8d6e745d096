"""Segment many inputs with one loaded model: outputs, sidecars, failures, resume.

Called by ``medseg.api.predict``; a bad input is recorded and the rest go on.
"""

from __future__ import annotations

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

    ids = [case_id_for(p) for p in inputs]
    seen: dict[str, str] = {}
    for cid, p in zip(ids, inputs):
        if cid in seen:
            raise InputError(f"inputs {seen[cid]} and {p} would both be written as case {cid!r}; rename one")
        seen[cid] = str(p)
    return ids


def predict_many(
    *,
    model: PathLike,
    inputs: Sequence[PathLike],
    out: PathLike,
    device=None,
    progress: bool = True,
    overwrite: bool = False,
    expected_labels: LabelTable | None = None,
) -> PredictResult:
    """Segment every input with one loaded model; a bad input is recorded and the rest go on.

    Writes ``OUT/<case_id>.nii.gz`` on the input's grid, ``OUT/<case_id>.json``
    (labels, model checksum, versions, geometry, timing), ``OUT/run.json`` and,
    when any case failed, ``OUT/failures.csv``. Cases whose output exists and
    was made by the same model file are skipped unless ``overwrite``.
    """
    import json

    import pandas as pd
    from tqdm.auto import tqdm

    from medseg.checkpoint import versions
    from medseg.inference.predictor import Predictor
    from medseg.io.atomic import write_csv, write_json
    from medseg.io.readers import read_volume, write_label_map

    if not inputs:
        raise InputError("no inputs given; expected image files or DICOM folders")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = _case_ids(inputs)
    predictor = Predictor.from_checkpoint(model, device=device, expected_labels=expected_labels)
    sha = predictor.provenance["model_sha256"]
    result = PredictResult()
    run_info = {"command": "predict", "versions": versions(), "model": predictor.provenance,
                "device": str(predictor.device), "inputs": [str(p) for p in inputs], "labels": predictor.labels.to_dict(),
                "inference": predictor.inference, "preprocessing": predictor.preprocessing}
    write_json(out_dir / "run.json", run_info)

    bar = tqdm(list(zip(ids, inputs)), desc="predict", unit="case", disable=not progress)
    for cid, src in bar:
        target, sidecar = out_dir / f"{cid}.nii.gz", out_dir / f"{cid}.json"
        if not overwrite and target.exists() and sidecar.exists():
            try:
                done = json.loads(sidecar.read_text()).get("model", {}).get("model_sha256") == sha
            except (OSError, ValueError):
                done = False
            if done:
                result.skipped.append(cid)
                continue
        t0 = time.monotonic()
        try:
            image = read_volume(src)
            labels = predictor.predict(image)
            write_label_map(labels, target)
            write_json(sidecar, {
                "case_id": cid, "source": str(src), "labels": predictor.labels.to_dict(), "model": predictor.provenance,
                "shape": list(labels.shape), "affine": labels.affine.tolist(), "spacing_mm": list(labels.spacing),
                "input_format": image.meta.get("format"), "seconds": round(time.monotonic() - t0, 3), "versions": run_info["versions"],
            })
            result.outputs[cid] = target
        except MedsegError as exc:
            result.failures[cid] = str(exc)
            log.error("%s: %s", cid, exc)
        except Exception as exc:  # a bug must not stop the batch; it is recorded with its type
            result.failures[cid] = f"internal error {type(exc).__name__}: {exc}"
            log.exception("%s: unexpected error", cid)
    if result.failures:
        write_csv(out_dir / "failures.csv", pd.DataFrame([{"case_id": k, "error": v} for k, v in result.failures.items()]))
    return result
