"""Checkpoints that carry everything needed to use them later.

A checkpoint is a ``torch.save`` of a plain dict: the weights plus the model's
registry name and arguments, the label table, the preprocessing and inference
settings, the full training config, the data manifest's hash, versions, and the
sha256 of the weights. Everything but the weights is plain Python data, so it
loads with ``torch.load(weights_only=True)``: a checkpoint cannot run code.
"""

from __future__ import annotations

import hashlib
import os
import platform
import zipfile
from pathlib import Path

from medseg import __version__
from medseg.errors import CheckpointError, ConfigError
from medseg.io.atomic import atomic_path
from medseg.labels import LabelTable
from medseg.models._registry import create_volume_model
from medseg.provenance import file_sha256, to_plain  # noqa: F401  (file_sha256: part of this module's API)

FORMAT_VERSION = 1
_REQUIRED = ("format_version", "state_dict", "model", "labels", "preprocessing", "inference")
_MODEL_KEYS = ("name", "spatial_dims", "kwargs", "out_channels")
#: Label maps are written as uint8/uint16: no checkpoint may have more classes than uint16 holds.
MAX_CLASSES = 1 << 16


def weights_sha256(state_dict) -> str:
    """Hash of the weights alone (names and raw bytes), independent of the file's other content."""
    import torch

    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def versions() -> dict:
    import monai
    import numpy
    import torch

    return {
        k: str(v)
        for k, v in {
            "medseg": __version__,
            "monai": monai.__version__,
            "torch": torch.__version__,
            "numpy": numpy.__version__,
            "python": platform.python_version(),
        }.items()
    }


def save_checkpoint(
    path: str | os.PathLike, model, *, config, label_table, extra: dict | None = None, in_channels: int = 1
) -> Path:
    import torch

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = to_plain(
        {
            "format_version": FORMAT_VERSION,
            "weights_sha256": weights_sha256(state),
            "model": {
                "name": config.model.name,
                "spatial_dims": config.model.spatial_dims,
                "kwargs": dict(config.model.kwargs),
                "in_channels": int(in_channels),
                "out_channels": label_table.num_classes,
            },
            "labels": label_table.to_dict(),
            "preprocessing": dict(vars(config.preprocessing)),
            "inference": dict(vars(config.inference)),
            "config": config.to_dict(),
            "versions": versions(),
            **(extra or {}),
        },
        keep_tensors=True,
    )
    payload["state_dict"] = state
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def _not_found_hint(p: Path) -> str:
    """What to pass instead of a model path that is not a checkpoint file."""
    if p.is_dir() and (p / "best.pt").is_file():
        return f"is a training run folder, not a checkpoint; pass its best checkpoint: --model {p / 'best.pt'}"
    if p.is_dir():
        return (
            "is a folder but not a model medseg knows (a medseg checkpoint .pt, an nnU-Net v2 "
            "DatasetXXX/Trainer__Plans__configuration folder, TotalSegmentator's results folder or a MONAI bundle)"
        )
    if "totalseg" in p.name.lower() or "nnunet" in str(p).lower() or p.name.startswith("Dataset"):
        return (
            "not found; TotalSegmentator keeps its weights under ~/.totalsegmentator/nnunet/results "
            "($TOTALSEG_HOME_DIR/nnunet/results): get them there with TotalSegmentator's totalseg_download_weights "
            "on a machine with network access and copy that folder here (medseg downloads nothing)"
        )
    return "checkpoint not found; pass a .pt file from medseg train (RUN/best.pt) or a model folder"


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load and check a checkpoint (weights only: no code is executed)."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(_not_found_hint(p), path=p)
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        why = next((ln for ln in lines if "Unsupported global" in ln), lines[0] if lines else type(exc).__name__)
        raise CheckpointError(
            f"not a readable medseg checkpoint ({why[:160]}); medseg loads checkpoints with weights_only=True "
            "and accepts only files written by medseg train",
            path=p,
        ) from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in _REQUIRED):
        missing = [k for k in _REQUIRED if not isinstance(ckpt, dict) or k not in ckpt]
        raise CheckpointError(f"not a medseg checkpoint: missing {missing}", path=p)
    if ckpt["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint format {ckpt['format_version']} is newer than this medseg reads ({FORMAT_VERSION}); upgrade "
            "medseg",
            path=p,
        )
    _check_model_and_labels(ckpt, p)
    ckpt["file_sha256"] = file_sha256(p)
    ckpt["path"] = str(p)
    return ckpt


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _check_model_and_labels(ckpt: dict, p: Path) -> None:
    """The network's declared shape and the label table must agree before anything is built:
    one output channel per class (background + the largest label index)."""
    m = ckpt["model"]
    if not isinstance(m, dict) or any(k not in m for k in _MODEL_KEYS) or not isinstance(m.get("kwargs"), dict):
        raise CheckpointError(
            f"not a medseg checkpoint: its 'model' entry needs {list(_MODEL_KEYS)} (kwargs a mapping)", path=p
        )
    out, inp = m["out_channels"], m.get("in_channels", 1)
    if not _positive_int(out) or not _positive_int(inp) or not _positive_int(m["spatial_dims"]):
        raise CheckpointError(
            f"model declares in_channels={inp!r}, out_channels={out!r}, spatial_dims={m['spatial_dims']!r}; "
            "expected positive whole numbers: the checkpoint is damaged",
            path=p,
        )
    try:
        labels = LabelTable.from_dict(ckpt["labels"], source="its label table")
    except (ConfigError, TypeError, ValueError) as exc:
        raise CheckpointError(f"unusable label table ({str(exc)[:200]})", path=p) from None
    n = labels.num_classes
    if n > MAX_CLASSES:
        raise CheckpointError(
            f"label table's largest index is {n - 1}; label maps hold at most {MAX_CLASSES - 1}", path=p
        )
    if n != out:
        more = "more" if n > out else "fewer"
        raise CheckpointError(
            f"label table {labels.name!r} needs {n} output channels (background + largest index {n - 1}) but the "
            f"network has {out}: {more} labels than the network can predict; the checkpoint is inconsistent (use the "
            "table it was trained with, or retrain)",
            path=p,
        )


def build_model(ckpt: dict):
    """The checkpoint's network with its weights loaded, in eval mode."""
    m = ckpt["model"]
    model = create_volume_model(
        m["name"],
        spatial_dims=m["spatial_dims"],
        in_channels=m["in_channels"],
        out_channels=m["out_channels"],
        **m["kwargs"],
    )
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"weights do not fit model {m['name']!r}: {str(exc).splitlines()[0]}", path=ckpt.get("path")
        ) from None
    return model.eval()


def saved_with_marker(path, marker: str) -> bool:
    """Cheap: whether ``path`` is a ``torch.save`` zip whose pickle holds ``marker`` in its first 256 bytes (the first
    key of the saved dict: how the portable and cascade formats are told from a plain checkpoint without loading)."""
    try:
        p = Path(path)
        if not p.is_file() or not zipfile.is_zipfile(p):
            return False
        with zipfile.ZipFile(p) as z:
            name = next((n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if name is None:
                return False
            with z.open(name) as f:
                return marker.encode() in f.read(256)
    except (OSError, ValueError, zipfile.BadZipFile):
        return False
