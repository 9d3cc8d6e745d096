"""The documented, keyword-only functions users call; the CLI is a thin shell over these.

- ``train(config=, manifest=, out=)``          -> a run directory with ``best.pt``
- ``predict(model=, inputs=, out=)``           -> one label map (+ JSON sidecar) per input
- ``report(labels=, images=, label_table=, out=)`` -> ``volumes.csv``
- ``evaluate(pred=, ref=, label_table=, out=)``  -> ``metrics.csv``

Errors in the user's input raise ``medseg.MedsegError`` subclasses with a
one-line message naming the file.
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


def train(*, config: PathLike, manifest: PathLike, out: PathLike, overrides: Sequence[str] | None = None, progress: bool = True, device=None):
    """Train a model from a YAML config and a data manifest; returns a ``TrainResult``."""
    from medseg.config import load_config
    from medseg.training.loop import train as _train

    cfg = load_config(config, overrides=list(overrides or []))
    table = cfg.label_table(base=Path(config).parent)
    return _train(config=cfg, manifest=manifest, out_dir=out, label_table=table, progress=progress, device=device)


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


def predict(
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


def _label_table(label_table: LabelTable | PathLike | None, fallback_sidecar: Path | None = None) -> LabelTable:
    import json

    from medseg.config import resolve_label_table_path

    if isinstance(label_table, LabelTable):
        return label_table
    if label_table is not None:
        return LabelTable.from_yaml(resolve_label_table_path(str(label_table)))
    if fallback_sidecar is not None and fallback_sidecar.is_file():
        return LabelTable.from_dict(json.loads(fallback_sidecar.read_text())["labels"], source=str(fallback_sidecar))
    raise InputError("no label table: pass --label-table (a YAML file or a name in configs/labels)")


def _sidecar_of(path: PathLike) -> Path:
    from medseg.io.readers import case_id_for

    return Path(path).parent / f"{case_id_for(path)}.json"


def report(
    *,
    labels: Sequence[PathLike],
    out: PathLike,
    images: Sequence[PathLike] | None = None,
    label_table: LabelTable | PathLike | None = None,
    case_ids: Sequence[str] | None = None,
) -> Path:
    """Write ``OUT/volumes.csv``: one row per case x structure (see ``medseg.reporting.volumes``).

    Without ``label_table`` the table is taken from the first label map's JSON
    sidecar (as ``predict`` writes it). Provenance columns (model checksum,
    medseg version) come from the sidecars when present.
    """
    import json

    import medseg
    from medseg.io.atomic import write_csv
    from medseg.io.geometry import align_to
    from medseg.io.readers import case_id_for, read_volume
    from medseg.io.volume import same_grid
    from medseg.reporting.volumes import structure_rows, volumes_frame

    if not labels:
        raise InputError("no label maps given")
    if images is not None and len(images) != len(labels):
        raise InputError(f"{len(labels)} label maps but {len(images)} images; give one image per label map, in the same order")
    table = _label_table(label_table, _sidecar_of(labels[0]))
    ids = list(case_ids) if case_ids else [case_id_for(p) for p in labels]
    rows = []
    for i, (cid, lab_path) in enumerate(zip(ids, labels)):
        lab = read_volume(lab_path)
        img = read_volume(images[i]) if images is not None else None
        if img is not None and not same_grid(lab, img):
            img = align_to(img, lab)  # same points in another axis order (DICOM vs NIfTI); else GeometryError
        sidecar = _sidecar_of(lab_path)
        model_sha = ""
        if sidecar.is_file():
            try:
                model_sha = json.loads(sidecar.read_text()).get("model", {}).get("model_sha256", "")
            except ValueError:
                pass
        for row in structure_rows(cid, lab, table, img):
            row.update(source_labels=str(lab_path), source_image=str(images[i]) if images is not None else "", model_sha256=model_sha)
            rows.append(row)
    path = Path(out) / "volumes.csv"
    write_csv(path, volumes_frame(rows, {"label_table": table.name, "medseg_version": medseg.__version__}))
    return path


def evaluate(
    *,
    pred: Sequence[PathLike],
    ref: Sequence[PathLike],
    out: PathLike,
    label_table: LabelTable | PathLike | None = None,
    case_ids: Sequence[str] | None = None,
) -> Path:
    """Write ``metrics.csv`` (Dice and volume error per case x structure); ``out`` is a file or folder."""
    import pandas as pd

    from medseg.io.atomic import write_csv
    from medseg.io.geometry import align_to
    from medseg.io.readers import case_id_for, read_volume
    from medseg.io.volume import same_grid
    from medseg.reporting.metrics import COLUMNS, metric_rows

    if len(pred) != len(ref) or not pred:
        raise InputError(f"{len(pred)} predictions and {len(ref)} references; give them in pairs, in the same order")
    table = _label_table(label_table, _sidecar_of(pred[0]))
    ids = list(case_ids) if case_ids else [case_id_for(p) for p in pred]
    rows = []
    for cid, p, r in zip(ids, pred, ref):
        pv, rv = read_volume(p), read_volume(r)
        if not same_grid(rv, pv):
            rv = align_to(rv, pv)
        rows += metric_rows(cid, pv, rv, table)
    target = Path(out)
    if target.suffix.lower() != ".csv":
        target = target / "metrics.csv"
    write_csv(target, pd.DataFrame(rows, columns=COLUMNS))
    return target
