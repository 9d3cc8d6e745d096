"""Segment many inputs with one loaded model: outputs, sidecars, DICOM SEG, failures, resume.

Called by ``medseg.api.predict``; a bad input is recorded and the rest go on.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from medseg.command_log import command_log
from medseg.errors import InputError, MedsegError, OutputError
from medseg.inference.load import load_predictor
from medseg.inference.outputs import already_written, write_case_outputs
from medseg.io.atomic import ensure_dir, write_csv, write_json
from medseg.io.dicom.select import Candidate, SelectionRule, select
from medseg.io.dicom.series import (
    GeometryPolicy,
    is_dicom_folder,
    no_images_error,
    scan_inventory,
    volume_from_candidate,
)
from medseg.io.paths import check_case_id, refuse_overwriting_inputs, safe_name
from medseg.io.readers import ITK_SUFFIXES, NIFTI_SUFFIXES, case_id_for, read_volume
from medseg.labels import LabelTable
from medseg.models import checkpoint
from medseg.progress import progress_bar as tqdm

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


@dataclass
class PredictOptions:
    """The settings of one ``medseg predict`` request, built once by the command line (or ``medseg.api.predict`` from
    its keywords) and read by ``predict_many``: the device, which image series of a DICOM folder count, which outputs
    to write, and ``inference``: changes to the model's inference settings (``sw_batch_size=8, amp="off",
    tta_flips=[2]``...; which keys apply depends on the model's format, each says)."""

    device: str | None = None
    progress: bool = True
    overwrite: bool = False
    expected_labels: LabelTable | None = None  # refuse a model trained for another label table
    dicom_seg: bool = True
    rtstruct: bool = False
    save_probabilities: bool = False
    sr: bool = True  # with the SEG of a DICOM case, its TID 1500 measurement report
    modalities: Sequence[str] = ()  # DICOM series selection: only these modalities...
    min_slices: int = 1  # ... stacks of at least this many slices ...
    series_description: str | None = None  # ... whose description matches this regular expression
    resample_irregular: bool = False  # geometry policy: interpolate irregular series (default: refuse them)
    refuse_tilt: bool = False  # geometry policy: refuse gantry-tilted series (default: resample them)
    inference: dict = field(default_factory=dict)

    def selection_rule(self) -> SelectionRule | None:
        return selection_rule(self.modalities, self.min_slices, self.series_description)

    def geometry_policy(self) -> GeometryPolicy:
        return geometry_policy(self.resample_irregular, self.refuse_tilt)


def selection_rule(modalities: Sequence[str], min_slices: int, description: str | None) -> SelectionRule | None:
    """Which image series of a DICOM folder count (predict and convert): None when nothing narrows them."""
    if not (modalities or int(min_slices) > 1 or description):
        return None
    return SelectionRule(modalities=tuple(modalities), min_slices=int(min_slices), description=description)


def geometry_policy(resample_irregular: bool, refuse_tilt: bool) -> GeometryPolicy:
    """What is done with DICOM series on irregular or tilted grids (predict, scan and convert)."""
    return GeometryPolicy(
        irregular="resample" if resample_irregular else "refuse", tilt="refuse" if refuse_tilt else "resample"
    )


#: nnU-Net's channel suffix: ``case_0000`` is channel 0 of ``case``.
_CHANNEL_SUFFIX = re.compile(r"(.+)_(\d{4})")


@dataclass
class CaseInput:
    """One case to segment: its id, its channel files (or DICOM folder) and, for one stack of a DICOM folder
    that holds several, the planned candidate to decode (so the folder is scanned once, not once per case)."""

    case_id: str
    channels: list  # paths: channel 0 first (a DICOM folder is one channel)
    stack: Candidate | None = None  # the stack to decode when the folder holds several admitted stacks
    selection: dict | None = None  # how the stack was chosen (recorded in the sidecar)
    error: InputError | None = None  # found while listing: the case fails alone with it
    n_series: int = 1  # image series the DICOM folder holds (recorded in the sidecar)

    @property
    def stack_key(self) -> str | None:
        """The chosen stack's key when this case is one of several in its DICOM folder."""
        return self.stack.key if self.stack is not None else None

    @property
    def source(self) -> str:
        return ",".join(str(c) for c in self.channels)

    def read(self):
        """The reference volume (channel 0)."""
        if self.error is not None:
            raise self.error
        if self.stack is not None:
            vol = volume_from_candidate(self.stack, str(self.channels[0]), selection=self.selection)
            vol.meta["n_image_series_in_folder"] = self.n_series
            return vol
        return read_volume(self.channels[0])


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        c
        for c in folder.iterdir()
        if c.is_file()
        and not c.name.startswith(".")
        and c.name.lower().endswith(NIFTI_SUFFIXES + ITK_SUFFIXES)
        and not c.name.lower().endswith(_DERIVED_SUFFIXES)
    )


#: Files medseg itself writes beside label maps that are not images to segment.
_DERIVED_SUFFIXES = (".probabilities.nii.gz", ".probabilities.nii", ".label.nii.gz")


def _grouped_channels(folder: Path, images: list[Path], in_channels: int) -> list[CaseInput]:
    """nnU-Net's ``case_0000``, ``case_0001``... files as the channels of ``case``, checked against the model."""
    parts = [_CHANNEL_SUFFIX.fullmatch(case_id_for(f)) for f in images]
    unnamed = [f.name for f, m in zip(images, parts, strict=False) if m is None]
    if unnamed:
        raise InputError(
            f"the model takes {in_channels} image channels per case, but {unnamed[0]} does not name its "
            f"channel; name each case's files CASE_0000 ... CASE_{in_channels - 1:04d} as nnU-Net does, or "
            "give one case's channel files comma-separated",
            path=folder,
        )
    cases: dict[str, dict[int, Path]] = {}
    for m, f in zip(parts, images, strict=False):
        if m is not None:  # (every name matched: checked above)
            cases.setdefault(m.group(1), {})[int(m.group(2))] = f
    out = []
    for case, channels in cases.items():
        if sorted(channels) != list(range(in_channels)):
            raise InputError(
                f"case {case} has channels {sorted(channels)}; the model takes {in_channels} "
                f"(nnU-Net's naming: _0000 ... _{in_channels - 1:04d}, without gaps)",
                path=folder,
            )
        out.append(CaseInput(case, [channels[k] for k in range(in_channels)]))
    return out


def _dicom_cases(folder: Path, rule: SelectionRule | None, policy: GeometryPolicy | None = None) -> list[CaseInput]:
    """A DICOM folder (scanned once, header-only): one case, or one case per image series the rule admits when
    it holds several (an export of several patients or studies); a folder with nothing admitted fails as one case."""
    inv = scan_inventory(folder, policy=policy)
    cands = inv.candidates
    if not cands:
        return [CaseInput(folder.name, [folder], error=no_images_error(inv, folder))]
    matching = [c for c in cands if (rule or SelectionRule()).matches(c)]
    if not matching:
        return [CaseInput(folder.name, [folder], error=_no_match(cands, rule, folder))]
    by_series: dict[str, list] = {}
    for c in matching:
        by_series.setdefault(c.series.series_key, []).append(c)
    if len(by_series) == 1:  # one series (maybe split into parts): the rule picks its stack, as before
        chosen, record = select(cands, rule, folder=folder)
        if len(cands) > 1:
            log.warning(
                "%s holds %d image stacks; segmenting %s: %s",
                folder.name,
                len(cands),
                chosen.describe(),
                record["reason"],
            )
        return [CaseInput(folder.name, [folder], stack=chosen, selection=record, n_series=len(by_series))]
    out = []
    for key, stacks in sorted(by_series.items()):
        chosen, record = select(stacks, None, folder=folder)
        record = {
            **record,
            "rule": (rule or SelectionRule()).describe(),
            "reason": f"one case per image series: the folder holds {len(by_series)} series the rule admits",
        }
        out.append(CaseInput(f"{folder.name}_{key}", [folder], stack=chosen, selection=record, n_series=len(by_series)))
    log.warning(
        "%s holds %d image series; segmenting each as its own case (%s)",
        folder.name,
        len(by_series),
        ", ".join(c.case_id for c in out),
    )
    return out


def _no_match(cands: list, rule: SelectionRule | None, folder: Path) -> InputError:
    try:
        select(cands, rule, folder=folder)
    except InputError as exc:
        return exc
    return InputError("no image series matches the selection rule", path=folder)


def expand_inputs(
    inputs: Sequence[PathLike],
    *,
    in_channels: int = 1,
    rule: SelectionRule | None = None,
    policy: GeometryPolicy | None = None,
) -> list[CaseInput]:
    """The cases of ``inputs``: files, comma-separated channel files, folders of image files, DICOM folders.

    A folder of NIfTI/NRRD/MHA files (without DICOM files) is one case per file when the model takes one channel
    (``phantom_0000.nii.gz``, ``phantom_0001.nii.gz`` are two cases); when it takes several, nnU-Net's
    ``case_0000``, ``case_0001``... files are one case's channels, checked against the model's channel count.
    Probability maps medseg wrote (``*.probabilities.nii.gz``) are not cases. A DICOM folder holding several
    image series that the selection ``rule`` admits (an export of several patients) is one case per series.
    """
    out: list[CaseInput] = []
    for src in inputs:
        channels = _channel_paths(src)
        folder = Path(str(src))
        if len(channels) > 1:
            out.append(CaseInput(_channels_id(channels), channels))
            continue
        if not folder.is_dir():
            out.append(CaseInput(case_id_for(src), [src]))
            continue
        images = _image_files(folder)
        if is_dicom_folder(folder) or not images:  # a series folder with a stray NIfTI beside its slices stays DICOM
            out += (
                _dicom_cases(folder, rule, policy) if is_dicom_folder(folder) else [CaseInput(case_id_for(src), [src])]
            )
            continue
        if in_channels > 1:
            out += _grouped_channels(folder, images, in_channels)
        else:
            out += [CaseInput(case_id_for(f), [f]) for f in images]
        log.info("%s: %d files", folder, len(images))
    return out


def expand_folders(inputs: Sequence[PathLike], in_channels: int = 1) -> list:
    """``expand_inputs`` as plain inputs: a path per case, several channels comma-separated."""
    return [c.channels[0] if len(c.channels) == 1 else c.source for c in expand_inputs(inputs, in_channels=in_channels)]


def _channels_id(channels: list) -> str:
    """A multi-channel case's id: ``case`` for nnU-Net's ``case_0000,case_0001``, else the first file's name."""
    ids = [case_id_for(c) for c in channels]
    parts = [m for m in (_CHANNEL_SUFFIX.fullmatch(i) for i in ids) if m is not None]
    if len(parts) == len(ids) and len({m.group(1) for m in parts}) == 1:
        return parts[0].group(1)
    return ids[0]


def _check_case_ids(cases: list[CaseInput]) -> list[str]:
    """Case ids of the inputs, checked (length, control characters) and unique."""
    seen: dict[str, str] = {}
    for c in cases:
        check_case_id(c.case_id, c.channels[0])
        if c.case_id in seen:
            raise InputError(
                f"inputs {seen[c.case_id]} and {c.source} would both be written as case {c.case_id!r}; rename one"
            )
        seen[c.case_id] = c.source
    return [c.case_id for c in cases]


def _targets(out_dir: Path, name: str) -> dict:
    return {
        "label_map": out_dir / f"{name}.nii.gz",
        "sidecar": out_dir / f"{name}.json",
        "sr": out_dir / f"{name}.sr.dcm",
        "dicom_seg": out_dir / f"{name}.seg.dcm",
        "rtstruct": out_dir / f"{name}.rtstruct.dcm",
        "probabilities": out_dir / f"{name}.probabilities.nii.gz",
    }


def _channel_paths(src: PathLike) -> list:
    """``"t1.nii.gz,t2.nii.gz"`` (a multi-channel case) -> its channel paths; a plain path -> [path]."""
    text = str(src)
    if "," in text and not Path(text).exists():
        return [p for p in text.split(",") if p]
    return [src]


def _segment(
    cases: list[CaseInput],
    predictor,
    out_dir: Path,
    names: dict,
    outputs: dict,
    *,
    overwrite: bool,
    progress: bool,
    versions: dict,
    startup: dict | None = None,
) -> PredictResult:
    """Segment and write each case; a bad case is recorded and the others go on (a full disk stops them all).
    ``startup``: the process's start-up figures, recorded in each sidecar."""
    sha = predictor.provenance["model_sha256"]
    result = PredictResult()
    bar = tqdm(cases, desc="predict", unit="case", disable=not progress)
    for case in bar:
        cid = case.case_id
        paths = _targets(out_dir, names[cid])
        if not overwrite and already_written(paths["sidecar"], sha, source=case.source, stack=case.stack_key):
            result.skipped.append(cid)
            log.info("%s: already segmented by this model from this input", cid)
            continue
        t0 = time.monotonic()
        try:
            image = case.read()
            labels = predictor.predict([image, *case.channels[1:]], keep_probabilities=outputs["probabilities"])
            labels.meta.update(startup or {})
            write_case_outputs(
                case_id=cid,
                labels=labels,
                image_meta=image.meta,
                source=case.source,
                table=predictor.labels,
                provenance=predictor.provenance,
                inference=predictor.inference,
                label_map=paths["label_map"],
                sidecar=paths["sidecar"],
                dicom_seg=paths["dicom_seg"] if outputs["dicom_seg"] else None,
                rtstruct=paths["rtstruct"] if outputs["rtstruct"] else None,
                probabilities=paths["probabilities"] if outputs["probabilities"] else None,
                sr=paths["sr"] if outputs["sr"] else None,
                image=image,
                versions=versions,
                started=t0,
            )
            result.outputs[cid] = paths["label_map"]
            bar.set_postfix(last=f"{time.monotonic() - t0:.1f}s")
            log.info("%s: segmented in %.1f s -> %s", cid, time.monotonic() - t0, paths["label_map"].name)
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
    return result


def process_seconds() -> float | None:
    """Seconds since this process started (Linux ``/proc``: 10 ms resolution), None where that cannot be read.

    ``medseg predict`` records it when the model is loaded (``seconds_startup`` in ``run.json`` and each sidecar):
    interpreter start, imports and model loading, the cost paid before the first case that a small network feels."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return round(max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")), 3)
    except (OSError, ValueError, IndexError):
        return None


def _run_info(predictor, cases: list[CaseInput]) -> dict[str, Any]:
    """What ``OUT/run.json`` records of the run: versions, model, device, inputs, labels and settings."""
    return {
        "command": "predict",
        "versions": checkpoint.versions(),
        "model": predictor.provenance,
        "device": str(predictor.device),
        "inputs": [c.source for c in cases],
        "labels": predictor.labels.to_dict(),
        "inference": predictor.inference,
        "preprocessing": predictor.preprocessing,
    }


def _wanted_outputs(opts: PredictOptions) -> dict[str, bool]:
    """Which optional outputs each case gets (the SR only with the SEG it measures)."""
    return {
        "dicom_seg": opts.dicom_seg,
        "rtstruct": opts.rtstruct,
        "probabilities": opts.save_probabilities,
        "sr": opts.sr and opts.dicom_seg,
    }


def predict_many(
    *,
    model: PathLike | Sequence[PathLike],
    inputs: Sequence[PathLike],
    out: PathLike,
    options: PredictOptions | None = None,
) -> PredictResult:
    """Segment every input with one loaded model (or an ensemble: several checkpoints), as ``options`` say.

    Writes, through ``medseg.inference.outputs.write_case_outputs``, ``OUT/<name>.nii.gz``
    on the input's grid, ``OUT/<name>.seg.dcm`` for DICOM inputs (and, with
    ``rtstruct``, ``OUT/<name>.rtstruct.dcm``: contours in patient coordinates),
    ``OUT/<name>.probabilities.nii.gz`` with ``save_probabilities`` (4D, one
    volume per class, on the network's coarse grid with its own affine) and
    ``OUT/<name>.json`` (the sidecar: labels, model checksum, versions,
    settings, geometry, time, peak memory, per-structure confidence, findings
    of optional outputs that failed); then ``OUT/run.json`` and, when any case
    failed, ``OUT/failures.csv``. ``<name>`` is ``medseg.io.paths.safe_name``
    of the case id (the id itself unless it has characters other than
    ``A-Za-z0-9_.-``). Cases whose output exists and was made by the same
    model are skipped unless ``overwrite``. An output path that is an input
    file, or lies inside an input folder, is refused before anything is
    written (``OutputError``).
    """
    opts = options or PredictOptions()
    if not inputs:
        raise InputError("no inputs given; expected image files or DICOM folders")
    out_dir = Path(out)
    given = [c for p in inputs for c in _channel_paths(p)]
    refuse_overwriting_inputs([out_dir / "run.json", out_dir / "failures.csv"], given)  # before the model loads
    t_load = time.monotonic()
    predictor = load_predictor(
        model, device=opts.device, expected_labels=opts.expected_labels, progress=opts.progress, **opts.inference
    )
    startup = {"seconds_startup": process_seconds(), "seconds_model_load": round(time.monotonic() - t_load, 3)}
    cases = expand_inputs(
        inputs, in_channels=predictor.in_channels, rule=opts.selection_rule(), policy=opts.geometry_policy()
    )
    if not cases:
        raise InputError("no images found in the inputs; expected image files or DICOM folders")
    ids = _check_case_ids(cases)
    names = {cid: safe_name(cid) for cid in ids}
    all_targets = [t for cid in ids for t in _targets(out_dir, names[cid]).values()]
    refuse_overwriting_inputs(all_targets, [c for case in cases for c in case.channels])
    ensure_dir(out_dir)
    sha = predictor.provenance["model_sha256"]
    run_info = {**_run_info(predictor, cases), **startup}
    write_json(out_dir / "run.json", run_info)
    outputs = _wanted_outputs(opts)
    with command_log(out_dir / "predict.log"):
        log.info("predict: %d case(s) in %d input(s), model %s", len(cases), len(inputs), sha[:12])
        result = _segment(
            cases,
            predictor,
            out_dir,
            names,
            outputs,
            overwrite=opts.overwrite,
            progress=opts.progress,
            versions=run_info["versions"],
            startup=startup,
        )
        log.info(
            "predict: %d segmented, %d already done, %d failed",
            len(result.outputs),
            len(result.skipped),
            len(result.failures),
        )
    if result.failures:
        write_csv(
            out_dir / "failures.csv", pd.DataFrame([{"case_id": k, "error": v} for k, v in result.failures.items()])
        )
    return result
