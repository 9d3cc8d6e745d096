"""TotalSegmentator's model folders run as one medseg model, the way TotalSegmentator runs them.

TotalSegmentator (github.com/wasserth/TotalSegmentator) keeps its weights as nnU-Net v2 result
folders under ``~/.totalsegmentator/nnunet/results`` (or ``$TOTALSEG_HOME_DIR/nnunet/results``):
``DatasetNNN_.../nnUNetTrainer...__nnUNetPlans__3d_fullres/``. Its ``total`` task is five such
models ("parts", datasets 291..295, 1.5 mm) whose outputs are merged into one label map; ``--fast``
is one model (297, 3 mm). ``--model`` may name that ``results`` folder, the folder above it
(``~/.totalsegmentator`` / ``$TOTALSEG_HOME_DIR`` or its ``nnunet``), any folder holding the
``DatasetNNN_*`` folders, or one ``DatasetNNN_*`` folder of a one-part task. The first task in
``TASKS`` whose parts are all present runs (``total`` before ``total_fast``: TotalSegmentator's
default); a folder holding some but not all parts of a task is refused with one line naming the
missing datasets.

What is reproduced, with where TotalSegmentator does it (``totalsegmentator/``, 2.x):

- ``python_api.py`` ``totalsegmentator()`` / ``map_tasks_config.py`` ``TASK_CONFIGS``: the part
  dataset ids and the spacing of each task (``total``: 291..295 at 1.5 mm, trainer
  ``nnUNetTrainerNoMirroring``; ``--fast``: 297 at 3 mm), fold 0 only (``folds: [0]``), no test-time
  mirroring (``tta=False``);
- ``nnunet.py`` ``nnUNet_predict_image()``:
  the input as float64 (``get_fdata``) reoriented to the closest canonical (RAS) orientation
  (``alignment.as_closest_canonical`` = ``nibabel.as_closest_canonical``: axis permutation/flips
  only, no reslicing); resampled with ``resampling.change_spacing(img, spacing, order=1,
  dtype=np.int32)``: ``scipy.ndimage.zoom(data, zooms / spacing, order=1, mode="nearest")`` on the
  header zooms (float32), then cast to int32 (truncation), the affine's columns divided by the zoom;
  not resampled (and not cast) when the zooms already equal the spacing;
  nnU-Net (``nnUNetv2_predict``) on that image with ``tile_step_size=0.8`` (TotalSegmentator's step
  for ``total``/``total_v3``/``total_mr``), each part in its order; the image split into three
  overlapping slabs along the last axis (margin 20) when it has more than 512*512*900 voxels
  and more than 200 slices and the task has several parts, and put back together as it does;
  the merge: each part's labels mapped through a lookup table to the combined numbering and copied
  where non-zero (``np.copyto(seg_combined, mapped, where=mapped != 0)``: a later part overwrites an
  earlier one where it labels a voxel); back to the input's shape with
  ``change_spacing(pred, spacing, input_shape, order=0, dtype=np.uint8, force_affine=input_affine)``
  (``ndimage.zoom`` order 0) and ``alignment.undo_canonical`` (the inverse reorientation), so the
  label map lies exactly on the input's grid;
- ``map_to_binary.py``: the combined numbering. TotalSegmentator's ``class_map["total"]`` is its
  parts' class maps (``class_map_5_parts``, keyed by part) one after the other: a part's label ``k``
  becomes ``k + (number of labels of the parts before it)``. medseg derives names and numbers from the
  ``dataset.json`` of each part present (never from a list of its own), which gives the same table
  for TotalSegmentator's weights.

Each part is an nnU-Net folder run by ``medseg.adapters.nnunet.predictor`` (its faithful
nnU-Net inference); what is not reproduced: TotalSegmentator's optional steps (``--roi_subset``
cropping, ``--body_seg``, ``--remove_small_blobs``, ``--higher_order_resampling``), which are off by
default for ``total``; DICOM input is read by medseg, not by dcm2niix.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from medseg.adapters.nnunet.folder import load_nnunet_folder
from medseg.adapters.nnunet.predictor import NnunetOptions, NnunetPredictor, folder_sha256
from medseg.errors import CheckpointError, ConfigError, GeometryError
from medseg.inference.predictor import ChannelReader, resolve_device
from medseg.io.volume import Volume
from medseg.labels import Label, LabelTable
from medseg.provenance import peak_rss_mb


@dataclass(frozen=True)
class Task:
    name: str
    parts: tuple[int, ...]  # dataset ids, in TotalSegmentator's part order
    spacing: float  # mm, all three axes
    trainer: str  # the trainer TotalSegmentator's weights were trained with (preferred when several are present)


#: TotalSegmentator's tasks that merge parts or resample (map_tasks_config.TASK_CONFIGS, "sub_modes"),
#: in the order medseg picks the first complete one.
TASKS: tuple[Task, ...] = (
    Task("total", (291, 292, 293, 294, 295), 1.5, "nnUNetTrainerNoMirroring"),
    Task("total_v3", (831, 832, 833, 834, 835), 1.5, "nnUNetTrainerNoMirroring"),
    Task("total_mr", (850, 851), 1.5, "nnUNetTrainer_2000epochs_NoMirroring"),
    Task("total_fast", (297,), 3.0, "nnUNetTrainer_4000epochs_NoMirroring"),
    Task("total_v3_fast", (836,), 3.0, "nnUNetTrainer_4000epochs_NoMirroring"),
    Task("total_mr_fast", (852,), 3.0, "nnUNetTrainer_2000epochs_NoMirroring"),
)
KNOWN_IDS = {i for t in TASKS for i in t.parts}
#: nnunet.py nnUNet_predict_image: step_size 0.8 for "total", "total_v3", "total_mr"; tta=False.
TILE_STEP = 0.8
#: nnunet.py: the triple split of big images (nr_voxels_thr, the slice count, margin).
SPLIT_VOXELS = 512 * 512 * 900
SPLIT_MIN_SLICES = 200
SPLIT_MARGIN = 20
_DATASET = re.compile(r"^Dataset(\d{3})_")


# ----------------------------------------------------------------------------------------- the layout
def _results_root(p: Path) -> Path:
    """The folder holding the ``DatasetNNN_*`` folders: ``p``, or its ``nnunet/results`` / ``results``."""
    for sub in (p / "nnunet" / "results", p / "results"):
        if sub.is_dir():
            return sub
    return p


def _datasets(path) -> dict[int, Path]:
    """Known TotalSegmentator dataset ids -> their ``DatasetNNN_*`` folders under ``path`` (or ``path`` itself)."""
    p = Path(path)
    m = _DATASET.match(p.name)
    if m and int(m.group(1)) in KNOWN_IDS:
        return {int(m.group(1)): p}
    root = _results_root(p)
    out: dict[int, Path] = {}
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return {}
    for d in entries:
        m = _DATASET.match(d.name)
        if m and int(m.group(1)) in KNOWN_IDS and d.is_dir():
            out.setdefault(int(m.group(1)), d)
    return out


def _model_folders(dataset_dir: Path) -> list[Path]:
    return sorted(
        d for d in dataset_dir.glob("*__*__*") if (d / "plans.json").is_file() and (d / "dataset.json").is_file()
    )


def is_totalseg_folder(path) -> bool:
    """Cheap: a folder holding (or being) a ``DatasetNNN_*`` folder of a TotalSegmentator task with a model inside."""
    p = Path(path)
    if not p.is_dir() or (p / "plans.json").is_file():
        return False
    return any(_model_folders(d) for d in _datasets(p).values())


def resolve(path) -> tuple[Task, list[Path]]:
    """The task to run and its parts' nnU-Net model folders, in part order; one-line refusals otherwise."""
    p = Path(path)
    found = {i: d for i, d in _datasets(p).items() if _model_folders(d)}
    if not found:
        raise CheckpointError(
            "no TotalSegmentator model here (expected DatasetNNN_*/Trainer__Plans__3d_fullres/ folders "
            "as under ~/.totalsegmentator/nnunet/results)",
            path=p,
        )
    task = next((t for t in TASKS if all(i in found for i in t.parts)), None)
    if task is None:
        t = next(t for t in TASKS if any(i in found for i in t.parts))
        missing = [i for i in t.parts if i not in found]
        raise CheckpointError(
            f"TotalSegmentator task {t.name!r} needs the datasets {list(t.parts)}; {missing} are missing: download "
            "them (TotalSegmentator's totalseg_download_weights) or copy their DatasetNNN_* folders here",
            path=p,
        )
    folders = []
    for i in task.parts:
        models = _model_folders(found[i])
        if len(models) > 1:
            preferred = [m for m in models if m.name.split("__")[0] == task.trainer]
            if len(preferred) != 1:
                raise CheckpointError(
                    f"{found[i].name} holds several models ({[m.name for m in models]}); keep the one "
                    f"TotalSegmentator runs ({task.trainer}__nnUNetPlans__3d_fullres)",
                    path=found[i],
                )
            models = preferred
        folders.append(models[0])
    return task, folders


# ----------------------------------------------------------------------------------------- labels
def combined_labels(task: Task, parts) -> tuple[LabelTable, list[np.ndarray]]:
    """One table for the merged map and, per part, the lookup table of its label values into it:
    part ``n``'s label ``k`` becomes ``k + (labels of parts 1..n-1)`` (TotalSegmentator's ``class_map``
    for its task is its parts' maps one after the other)."""
    labels, luts, seen, offset = [], [], {}, 0
    for model in parts:
        table = model.labels.table
        if model.labels.regions:
            raise CheckpointError(
                "part has region-based labels; TotalSegmentator's parts label one class per voxel", path=model.folder
            )
        lut = np.zeros(table.num_classes, dtype=np.int64)
        for lab in table.labels:
            if lab.name in seen:
                raise CheckpointError(
                    f"label {lab.name!r} is named by two parts ({seen[lab.name]} and "
                    f"{model.folder.parent.name}); TotalSegmentator's parts name distinct structures",
                    path=model.folder,
                )
            seen[lab.name] = model.folder.parent.name
            lut[lab.index] = lab.index + offset
            labels.append(Label(lab.index + offset, lab.name))
        offset += len(table.labels)
        luts.append(lut)
    return LabelTable(f"totalsegmentator_{task.name}", tuple(labels)), luts


def merge(part_maps, luts, dtype=np.uint8) -> np.ndarray:
    """TotalSegmentator's merge: each part's map through its lookup table, copied where non-zero, in part order
    (a later part overwrites an earlier one where it labels a voxel)."""
    out = np.zeros(part_maps[0].shape, dtype=dtype)
    for seg, lut in zip(part_maps, luts, strict=False):
        mapped = lut.astype(dtype)[np.asarray(seg)]
        np.copyto(out, mapped, where=mapped != 0)
    return out


# ----------------------------------------------------------------------------------------- geometry
def _zooms(affine) -> np.ndarray:
    """The header zooms nibabel gives for ``affine`` (column lengths, stored as float32 in NIfTI)."""
    return np.linalg.norm(np.asarray(affine)[:3, :3], axis=0).astype(np.float32)


def canonical(array: np.ndarray, affine) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``nibabel.as_closest_canonical``: (array, affine, orientation) with axes permuted/flipped to RAS."""
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation

    ornt = io_orientation(affine)
    if np.array_equal(ornt, [[0, 1], [1, 1], [2, 1]]):
        return array, np.asarray(affine, dtype=np.float64), ornt
    return apply_orientation(array, ornt), np.asarray(affine) @ inv_ornt_aff(ornt, array.shape), ornt


def undo_canonical(array: np.ndarray, ornt) -> np.ndarray:
    """``alignment.undo_canonical``: the inverse of ``canonical`` on the array."""
    from nibabel.orientations import apply_orientation, axcodes2ornt, ornt_transform

    if np.array_equal(ornt, [[0, 1], [1, 1], [2, 1]]):
        return array
    return apply_orientation(array, ornt_transform(axcodes2ornt("RAS"), ornt))


def to_spacing(data: np.ndarray, affine, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """``change_spacing(img, spacing, order=1, dtype=np.int32)`` (``resample_img``: ``ndimage.zoom`` with
    ``mode="nearest"``): the image on the ``spacing`` grid and its affine."""
    from scipy import ndimage

    zooms = _zooms(affine)
    new = np.array([spacing] * 3, dtype=np.float64)
    if np.array_equal(zooms, new):
        return data, np.asarray(affine, dtype=np.float64)
    zoom = zooms / new
    out = ndimage.zoom(np.asarray(data, dtype=np.float64), zoom, mode="nearest", order=1).astype(np.int32)
    new_affine = np.array(affine, dtype=np.float64)
    for i in range(3):
        new_affine[:3, i] = new_affine[:3, i] / zoom[i]
    return out, new_affine


def to_shape(labels: np.ndarray, shape) -> np.ndarray:
    """``change_spacing(pred, spacing, target_shape, order=0, dtype=np.uint8)``: nearest neighbour onto ``shape``."""
    from scipy import ndimage

    zoom = np.array(shape) / np.array(labels.shape)
    if np.all(zoom == 1):
        return labels
    out = ndimage.zoom(labels, zoom, mode="nearest", order=0)
    if out.shape != tuple(shape):
        raise GeometryError(f"resampling back gave shape {out.shape}, expected {tuple(shape)} (internal error)")
    return out


def slabs(n: int) -> list[tuple[slice, slice, slice]]:
    """nnunet.py's triple split along the last axis: (input slab, part of its prediction kept, where it goes)."""
    third, m = n // 3, SPLIT_MARGIN
    return [
        (slice(0, third + m), slice(0, third), slice(0, third)),
        (slice(third + 1 - m, third * 2 + m), slice(m - 1, m - 1 + third), slice(third, third * 2)),
        (slice(third * 2 + 1 - m, n), slice(m - 1, None), slice(third * 2, n)),
    ]


# ----------------------------------------------------------------------------------------- the predictor
def folder_hash(parts) -> str:
    h = hashlib.sha256()
    for model in parts:
        h.update(model.folder.parent.name.encode())
        h.update(folder_sha256(model).encode())
    return h.hexdigest()


def load_parts(path, *, folds=None, checkpoint="final"):
    """(task, [NnunetModel per part]) after every check; fold 0 by default (TotalSegmentator's ``folds=[0]``),
    else every fold present."""
    task, folders = resolve(path)
    parts = []
    for folder in folders:
        use = folds
        if use is None and (folder / "fold_0").is_dir():
            use = ["0"]
        model = load_nnunet_folder(folder, folds=use, checkpoint=checkpoint)
        if model.in_channels != 1:
            raise CheckpointError(
                f"part takes {model.in_channels} image channels; TotalSegmentator's parts take one image", path=folder
            )
        if len(model.conf["patch_size"]) != 3:
            raise CheckpointError(
                f"part is a {len(model.conf['patch_size'])}D configuration ({model.configuration}); "
                "TotalSegmentator's parts are 3d_fullres",
                path=folder,
            )
        parts.append(model)
    return task, parts


@dataclass(frozen=True)
class TotalsegOptions:
    """The options of a TotalSegmentator model: nnU-Net's (``NNUNET_OPTIONS``) for every part, on
    TotalSegmentator's settings (tile step 0.8, no mirroring) that the options given override."""

    nnunet: NnunetOptions

    @classmethod
    def parse(cls, inference: Mapping[str, Any] | None = None) -> "TotalsegOptions":
        overrides = dict(inference or {})
        part_opts = {"overlap": round(1.0 - TILE_STEP, 10), "mirror": False, **overrides}
        return cls(
            NnunetOptions.parse(
                part_opts, model_kind="TotalSegmentator models", follows="TotalSegmentator's own inference"
            )
        )


class TotalSegmentatorPredictor(ChannelReader):
    """TotalSegmentator's task as one ``Predictor``: reorient, resample, nnU-Net per part, merge, back to the input
    grid."""

    def __init__(
        self,
        task: Task,
        parts,
        *,
        device=None,
        progress: bool = False,
        options: TotalsegOptions | None = None,
        path=None,
    ):
        options = options if options is not None else TotalsegOptions.parse()
        self.task = task
        self.parts = parts
        self.device = resolve_device(device)
        self.progress = progress
        self.in_channels = 1
        self.labels, self.luts = combined_labels(task, parts)
        self.predictors = [
            NnunetPredictor(m, device=self.device, progress=False, options=options.nnunet) for m in parts
        ]
        self.inference = {**self.predictors[0].inference, "engine": "totalsegmentator"}
        self.inference.pop("roi_size", None)
        self.preprocessing = {
            "intensity": "nnunet",
            "reorient": "RAS (closest canonical)",
            "spacing": [task.spacing] * 3,
            "resample_order": 1,
            "resampled_dtype": "int32",
        }
        self.provenance = {
            "model_path": str(path if path is not None else parts[0].folder.parent.parent),
            "model_sha256": folder_hash(parts),
            "weights_sha256": None,
            "model_name": f"totalsegmentator:{task.name}",
            "format": "totalsegmentator",
            "task": task.name,
            "parts": [
                {
                    "dataset": m.folder.parent.name,
                    "model": m.folder.name,
                    "folds": list(m.folds),
                    "checkpoint": m.checkpoint,
                }
                for m in parts
            ],
            "in_channels": 1,
            "trained_with": {},
        }

    def _label_dtype(self):
        return np.uint8 if self.labels.num_classes - 1 < 256 else np.uint16

    def _predict_parts(self, data: np.ndarray, affine) -> np.ndarray:
        """Every part on one image (canonical, resampled), merged."""
        maps = []
        for pred in self.predictors:
            maps.append(pred.predict(Volume(data, affine, "")).array)
        return merge(maps, self.luts, self._label_dtype())

    def predict(self, source, *, keep_probabilities: bool = False) -> Volume:
        if keep_probabilities:
            raise ConfigError(
                "TotalSegmentator models give one merged label map, no class probabilities; drop --save-probabilities"
            )
        t0 = time.monotonic()
        findings: list = []
        volume, channels = self.read(source, findings)
        data = np.asarray(channels[0], dtype=np.float64)  # get_fdata()
        del channels
        shape_in = data.shape
        data, affine_c, ornt = canonical(data, volume.affine)
        shape_c = data.shape
        data, affine_r = to_spacing(data, affine_c, self.task.spacing)
        t1 = time.monotonic()
        ss = data.shape
        if len(self.parts) > 1 and int(np.prod(ss)) > SPLIT_VOXELS and ss[2] > SPLIT_MIN_SLICES:
            seg = np.zeros(ss, dtype=self._label_dtype())
            for src, keep, dst in slabs(ss[2]):
                seg[:, :, dst] = self._predict_parts(np.ascontiguousarray(data[:, :, src]), affine_r)[:, :, keep]
        else:
            seg = self._predict_parts(data, affine_r)
        t_parts = time.monotonic() - t1
        del data
        seg = undo_canonical(to_shape(seg, shape_c), ornt)
        labels = np.ascontiguousarray(seg)
        if labels.shape != tuple(shape_in):
            raise GeometryError(
                f"prediction shape {labels.shape} differs from the input's {shape_in} (internal error)",
                path=volume.source or None,
            )
        counts = {lab.name: int((labels == lab.index).sum()) for lab in self.labels.labels}
        meta = {
            "seconds": round(time.monotonic() - t0, 3),
            "seconds_windows": round(t_parts, 3),
            "network_grid": [int(s) for s in ss],
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "confidence": {lab.name: None for lab in self.labels.labels},
            "voxels": counts,
            "findings": findings,
            "engine": "totalsegmentator",
        }
        return Volume(labels, volume.affine.copy(), volume.source, meta)


def from_folder(
    path, *, device=None, progress=False, folds=None, checkpoint="final", expected_labels=None, **inference
):
    """The ``totalsegmentator`` format's loader: the task's predictor, its options (``TotalsegOptions``) checked
    first."""
    options = TotalsegOptions.parse(inference)
    task, parts = load_parts(path, folds=folds, checkpoint=checkpoint)
    pred = TotalSegmentatorPredictor(task, parts, device=device, progress=progress, options=options, path=path)
    if expected_labels is not None and not pred.labels.same_structures(expected_labels):
        raise CheckpointError(
            f"model segments {pred.labels.names} but {expected_labels.names} was asked for", path=Path(path)
        )
    return pred


def run_summary(path) -> dict:
    """What ``medseg run`` records of its model (the parts are loaded and checked, weights-only)."""
    task, parts = load_parts(path)
    table, _ = combined_labels(task, parts)
    return {
        "path": str(path),
        "file_sha256": folder_hash(parts),
        "weights_sha256": None,
        "model": {"name": f"totalsegmentator:{task.name}"},
        "labels": table.to_dict(),
    }
