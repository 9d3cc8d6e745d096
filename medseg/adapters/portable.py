"""``medseg models import``: a model folder of another tool as one portable medseg file.

An nnU-Net v2 trained-model folder (``plans.json``, ``dataset.json``, ``fold_N/checkpoint_*.pth``) or a
TotalSegmentator results folder (its task's parts, see ``medseg.adapters.totalseg``) is read and
checked as ``medseg predict --model DIR`` reads it, and written as one ``torch.save`` file of plain data:

    {"medseg_external_model": 1, "kind": "nnunet" | "totalsegmentator", "labels": {...},
     "source": {"name", "sha256"}, "versions": {...},
     "models": [{"dir": "DatasetNNN_X/Trainer__Plans__conf", "plans": {...}, "dataset": {...},
                 "configuration": str, "trainer": str, "checkpoint": "checkpoint_final.pth",
                 "folds": {"0": {"network_weights": {name: tensor},
                                 "inference_allowed_mirroring_axes": [...] | None}}}]}

It loads with ``torch.load(weights_only=True)`` (tensors, dicts, lists, strings, numbers: nothing in it
can run code; the numpy scalars of nnU-Net's training log are not carried over). ``medseg predict --model
FILE.pt`` recreates the folder layout in a temporary folder and runs it through the same code as the
folder itself (``nnunet_predictor`` / ``totalseg``), so the labels are those of the folder; the
provenance names the file and its sha256.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from medseg.adapters import totalseg
from medseg.adapters.nnunet import predictor as nnunet_predictor
from medseg.adapters.nnunet.folder import load_nnunet_folder
from medseg.errors import CheckpointError, OutputError
from medseg.inference.load import detect
from medseg.io.atomic import atomic_path
from medseg.models.checkpoint import saved_with_marker, versions
from medseg.provenance import file_sha256, to_plain

MARKER = "medseg_external_model"
FORMAT_VERSION = 1
KINDS = ("nnunet", "totalsegmentator")


def is_portable_file(path) -> bool:
    """Cheap: a ``torch.save`` zip whose pickle starts with the marker key (reads a few hundred bytes)."""
    return saved_with_marker(path, MARKER)


def _model_entry(model, dir_name: str) -> dict:
    model.networks()  # the weights must fit the network plans.json describes (else one line naming the folder)
    folds = {}
    for fold, state in zip(model.folds, model.weights, strict=False):
        folds[str(fold)] = {
            "network_weights": {k: v.detach().cpu().clone() for k, v in state.items()},
            "inference_allowed_mirroring_axes": list(model.mirror_axes) if model.mirror_axes is not None else None,
        }
    return {
        "dir": dir_name,
        "plans": model.plans,
        "dataset": model.dataset,
        "configuration": model.configuration,
        "trainer": model.trainer,
        "checkpoint": model.checkpoint,
        "folds": folds,
    }


def import_model(path, out, *, folds=None, checkpoint: str = "final", force: bool = False) -> Path:
    """Write the model folder ``path`` as the portable file ``out`` (atomic; an existing ``out`` is refused
    unless ``force``). Returns ``out``."""
    import torch

    src, target = Path(path), Path(out)
    fmt = detect(src)
    if fmt is None or fmt.name not in KINDS:
        what = f"a {fmt.name} folder" if fmt is not None else "not a model folder medseg recognises"
        raise CheckpointError(
            f"{what}; medseg models import takes an nnU-Net v2 trained-model folder (plans.json, "
            "dataset.json, fold_N/) or TotalSegmentator's results folder",
            path=src,
        )
    if target.exists() and not force:
        raise OutputError("exists; give another --out, or --force to replace it", path=target)
    if target.resolve() == src.resolve() or src.resolve() in target.resolve().parents:
        raise OutputError("--out lies inside the model folder being imported; write it elsewhere", path=target)
    if fmt.name == "nnunet":
        model = load_nnunet_folder(src, folds=folds, checkpoint=checkpoint)
        entries = [_model_entry(model, f"{src.parent.name or 'Dataset'}/{src.name}")]
        labels, sha = model.labels.table, nnunet_predictor.folder_sha256(model)
    else:
        task, parts = totalseg.load_parts(src, folds=folds, checkpoint=checkpoint)
        entries = [_model_entry(m, f"{m.folder.parent.name}/{m.folder.name}") for m in parts]
        labels, _ = totalseg.combined_labels(task, parts)
        sha = totalseg.folder_hash(parts)
    payload = to_plain(
        {
            MARKER: FORMAT_VERSION,
            "kind": fmt.name,
            "labels": labels.to_dict(),
            "source": {"name": src.resolve().name, "sha256": sha},
            "versions": versions(),
            "models": entries,
        },
        keep_tensors=True,
    )
    with atomic_path(target) as tmp:
        torch.save(payload, tmp)
    return target


def _load(path) -> dict:
    import torch

    p = Path(path)
    try:
        data = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # refusal or damage -> one line
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        why = next((ln for ln in lines if "Unsupported global" in ln), lines[0] if lines else type(exc).__name__)
        raise CheckpointError(
            f"not a readable imported model ({why[:160]}); medseg loads it weights-only and never runs "
            "code from it: import the folder again with medseg models import",
            path=p,
        ) from None
    if not isinstance(data, dict) or data.get(MARKER) is None:
        raise CheckpointError("not a model written by medseg models import", path=p)
    if data[MARKER] > FORMAT_VERSION:
        raise CheckpointError(
            f"imported-model format {data[MARKER]} is newer than this medseg reads ({FORMAT_VERSION}); upgrade medseg",
            path=p,
        )
    if data.get("kind") not in KINDS or not isinstance(data.get("models"), list) or not data["models"]:
        raise CheckpointError(
            f"imported model of unknown kind {data.get('kind')!r} or without models; import the folder again", path=p
        )
    return data


def _materialise(data: dict, root: Path, path) -> Path:
    """The folder layout again (json files and weights-only checkpoints) under ``root``; returns the model path."""
    import torch

    for m in data["models"]:
        rel = Path(str(m.get("dir", "")))
        if rel.is_absolute() or ".." in rel.parts or len(rel.parts) != 2:
            raise CheckpointError(f"imported model names a bad folder {str(rel)!r}; import the folder again", path=path)
        d = root / rel
        d.mkdir(parents=True, exist_ok=True)
        (d / "plans.json").write_text(json.dumps(m["plans"]))
        (d / "dataset.json").write_text(json.dumps(m["dataset"]))
        name = str(m.get("checkpoint", "checkpoint_final.pth"))
        if name not in ("checkpoint_final.pth", "checkpoint_best.pth"):
            raise CheckpointError(f"imported model names checkpoint {name!r}; import the folder again", path=path)
        for fold, f in m["folds"].items():
            if not str(fold).isdigit() and fold != "all":
                raise CheckpointError(f"imported model has a bad fold name {fold!r}", path=path)
            (d / f"fold_{fold}").mkdir(exist_ok=True)
            torch.save(
                {
                    "network_weights": f["network_weights"],
                    "trainer_name": m["trainer"],
                    "init_args": {"configuration": m["configuration"]},
                    "inference_allowed_mirroring_axes": f.get("inference_allowed_mirroring_axes"),
                },
                d / f"fold_{fold}" / name,
            )
    if data["kind"] == "nnunet":
        return root / Path(str(data["models"][0]["dir"]))
    return root


def _checkpoint_kind(data: dict) -> str:
    return "best" if str(data["models"][0].get("checkpoint")) == "checkpoint_best.pth" else "final"


def predictor(path, *, device=None, progress=False, folds=None, checkpoint="final", expected_labels=None, **inference):
    """The imported model's predictor: the same code as for its folder, on the folder recreated from the file."""
    data = _load(path)
    if checkpoint != "final" and checkpoint != _checkpoint_kind(data):
        raise CheckpointError(
            f"this file holds the {_checkpoint_kind(data)} checkpoint only; import the folder again "
            f"with --checkpoint {checkpoint}",
            path=path,
        )
    with tempfile.TemporaryDirectory(prefix="medseg-import-") as tmp:
        folder = _materialise(data, Path(tmp), path)
        from_folder = nnunet_predictor.from_folder if data["kind"] == "nnunet" else totalseg.from_folder
        pred = from_folder(
            folder,
            device=device,
            progress=progress,
            folds=folds,
            checkpoint=_checkpoint_kind(data),
            expected_labels=expected_labels,
            **inference,
        )
    pred.provenance.update(
        {
            "model_path": str(path),
            "model_sha256": file_sha256(path),
            "imported_from": data["source"],
            "format": f"{pred.provenance.get('format', data['kind'])} (imported)",
        }
    )
    return pred


def run_summary(path) -> dict:
    """What ``medseg run`` records of an imported model: its folder's summary, with this file's path and hash."""
    data = _load(path)
    with tempfile.TemporaryDirectory(prefix="medseg-import-") as tmp:
        folder = _materialise(data, Path(tmp), path)
        summary = nnunet_predictor.run_summary if data["kind"] == "nnunet" else totalseg.run_summary
        out = summary(folder)
    out.update({"path": str(path), "file_sha256": file_sha256(path)})
    return out
