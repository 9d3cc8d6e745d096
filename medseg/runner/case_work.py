"""The per-case work of a run, shared by every engine: read (scan -> select -> convert), segment, write.

(Stage *settings* are in ``medseg.runner.settings``, stage *types* in its ``STAGE_TYPES``; this module is the
code that runs the built-in per-case stages, then the plugins' ``run_case``, on one case.)

``read_case`` runs in reader threads (local engine) or in a Ray actor;
``segment`` needs the loaded model; ``write_case`` writes the case's outputs
(label map, DICOM SEG and sidecar through ``medseg.inference.outputs.write_case_outputs``,
then volumes rows, QC montage, metrics rows) and then, last, its ``done``
state record. A problem in any stage raises ``CaseFailure`` with the stage's
name and a one-line reason; the engines record it and go on. A full or
read-only file system (a fatal ``OutputError``) stops the run instead: every
later case would fail the same way, and the rerun after freeing space resumes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import medseg
from medseg.errors import InputError, MedsegError, OutputError
from medseg.inference.outputs import expected_for_model, plain, write_case_outputs
from medseg.io.atomic import write_json
from medseg.io.dicom.geometry import GeometryPolicy
from medseg.io.dicom.select import SelectionRule, select
from medseg.io.dicom.series import scan_inventory, volume_from_candidate
from medseg.io.geometry import align_to
from medseg.io.paths import safe_name
from medseg.io.readers import read_volume, write_volume
from medseg.io.volume import same_grid
from medseg.labels import LabelTable
from medseg.pacs.export import export_case
from medseg.pacs.retrieve import StudyCache
from medseg.reporting import quality  # qc, qc_reasons (issue 33); the cohort adds its own in write_cohort
from medseg.reporting.metrics import DEFAULT_NSD_TOLERANCE_MM, metric_rows
from medseg.reporting.qc import write_montage
from medseg.reporting.volumes import structure_rows
from medseg.runner.inputs import content_sha256
from medseg.runner.model import predictor_info
from medseg.runner.rundir import RUN_LOG, RunDir, now, peak_rss_mb, reset_peak_rss
from medseg.runner.settings import stage_type

log = logging.getLogger(RUN_LOG)


class CaseFailure(Exception):  # noqa: N818 (control flow: ends one case's stages, recorded in failures.csv)
    def __init__(self, stage: str, message: str):
        self.stage = stage
        self.message = message
        super().__init__(f"{stage}: {message}")


@contextlib.contextmanager
def in_stage(name: str, case_id: str):
    """Any problem inside the block becomes ``CaseFailure(name, one line)``; a fatal ``OutputError`` passes."""
    try:
        yield
    except CaseFailure:
        raise
    except OutputError as exc:
        if exc.fatal:
            raise
        raise CaseFailure(name, " ".join(str(exc).split())) from None
    except MedsegError as exc:
        raise CaseFailure(name, " ".join(str(exc).split())) from None
    except Exception as exc:  # noqa: BLE001 (a bug must not stop the batch: recorded with its type, traceback in run.log)
        log.error("%s: internal error in %s:\n%s", case_id, name, traceback.format_exc())
        first = (str(exc).splitlines() or [""])[0]
        raise CaseFailure(name, f"internal error {type(exc).__name__}: {first}") from None


@dataclass
class RunContext:
    """Everything a worker needs about the run (picklable: sent to Ray actors)."""

    root: str
    pipeline: object  # runner.settings.Pipeline
    config_sha256: str
    model_path: str
    model_sha256: str
    labels: dict  # the checkpoint's label table
    engine: str = "local"
    device: str = ""
    pacs: dict | None = (
        None  # PACS input: endpoint, cache folder and limit, modalities (medseg.pacs.source.PacsInput.context)
    )
    uid_seed: str = ""  # hash of the model and the settings that shape outputs: deterministic SEG/RTSTRUCT UIDs

    @property
    def rundir(self) -> RunDir:
        return RunDir(self.root)

    def label_table(self):
        return LabelTable.from_dict(self.labels, source=self.model_path)


@dataclass
class Loaded:
    case: object
    image: object  # Volume
    input_sha256: str
    outputs: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    attempt: int = 1
    started: str = ""


def where() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def mark_running(ctx: RunContext, case) -> int:
    """Write the ``running`` record; returns the attempt number."""
    rd = ctx.rundir
    prev = rd.read_state(case.case_id) or {}
    attempt = int(prev.get("attempt") or 0) + 1
    rd.write_state(
        case.case_id,
        {
            "status": "running",
            "attempt": attempt,
            "started": now(),
            "source": case.source,
            "kind": case.kind,
            "fingerprint": case.fingerprint,
            "config_sha256": ctx.config_sha256,
            "engine": ctx.engine,
            **where(),
        },
    )
    return attempt


def fail(ctx: RunContext, case, exc: CaseFailure, *, attempt: int, started: str, t0: float) -> dict:
    rec = {
        "status": "failed",
        "stage": exc.stage,
        "error": exc.message,
        "attempt": attempt,
        "started": started,
        "finished": now(),
        "seconds": round(time.monotonic() - t0, 3),
        "source": case.source,
        "kind": case.kind,
        "fingerprint": case.fingerprint,
        "config_sha256": ctx.config_sha256,
        "engine": ctx.engine,
        **where(),
    }
    ctx.rundir.write_state(case.case_id, rec)
    log.info("%s failed in %s: %s", case.case_id, exc.stage, exc.message)
    release_study(ctx, case)
    return {**rec, "case_id": case.case_id}


def _study_cache(ctx: RunContext) -> StudyCache:
    return StudyCache(ctx.pacs["cache"], ctx.pacs.get("max_bytes"))


def retrieve(ctx: RunContext, case) -> None:
    """PACS input: fetch the case's study into the cache (``case.source``) unless it is there already."""
    if not case.remote or ctx.pacs is None:
        return
    with in_stage("retrieve", case.case_id):
        _study_cache(ctx).get(
            ctx.pacs["endpoint"], case.remote, case.case_id, modalities=ctx.pacs.get("modalities") or ()
        )


def release_study(ctx: RunContext, case) -> None:
    """PACS input: the run is finished with the case's study; the cache may evict it."""
    if case.remote and ctx.pacs is not None:
        with contextlib.suppress(Exception):  # bookkeeping only: never fail a case over it
            _study_cache(ctx).consume(case.case_id)


def export_path(ctx: RunContext, case_id: str) -> Path:
    return ctx.rundir.root / "export" / f"{safe_name(case_id)}.json"


# -- read ----------------------------------------------------------------------------------------------------
def _read_dicom(ctx: RunContext, case):
    st = ctx.pipeline.stages
    scan, sel = st.get("scan"), st.get("select")
    policy = GeometryPolicy(
        irregular="resample" if scan and scan.resample_irregular else "refuse",
        tilt="refuse" if scan and scan.refuse_tilt else "resample",
    )
    with in_stage("scan", case.case_id):
        inv = scan_inventory(case.source, policy=policy)
    with in_stage("select", case.case_id):
        rule = (
            SelectionRule(
                modalities=tuple(sel.modalities), min_slices=sel.min_slices, description=sel.description or None
            )
            if sel
            else None
        )
        chosen, record = select(inv.candidates, rule, folder=case.source)
        log.info("%s: series %s (%s)", case.case_id, chosen.key, record["reason"])
    with in_stage("convert", case.case_id):
        return volume_from_candidate(chosen, case.source, selection=record)


def _keep_converted(ctx: RunContext, case, image) -> dict:
    """The convert stage's ``write_nifti``: the selected stack as ``cases/<id>/image.nii.gz`` (+ ``image.json``)."""
    with in_stage("convert", case.case_id):
        cdir = ctx.rundir.case_dir(case.case_id)
        target = write_volume(image, cdir / "image.nii.gz")
        write_json(
            cdir / "image.json",
            {
                "medseg_version": medseg.__version__,
                "output": target.name,
                **image.meta["dicom"],
                "shape": list(image.shape),
                "spacing_mm": list(image.spacing),
                "affine_ras": image.affine.tolist(),
            },
        )
        return {"image": ctx.rundir.rel(target), "image_sidecar": ctx.rundir.rel(cdir / "image.json")}


def read_case(ctx: RunContext, case) -> Loaded:
    """Hash and read one input (DICOM: scan -> select -> convert); no model needed."""
    t0 = time.monotonic()
    with in_stage("read", case.case_id):
        if case.error:
            raise InputError(case.error, path=case.source or None)
    retrieve(ctx, case)
    with in_stage("read", case.case_id):
        if not case.source or not os.path.exists(case.source):
            raise InputError("no such file or folder", path=case.source or case.case_id)
        sha = content_sha256(case.source)
    outputs = {}
    if case.kind == "dicom":
        image = _read_dicom(ctx, case)
        conv = ctx.pipeline.stages.get("convert")
        if conv is not None and conv.write_nifti:
            outputs.update(_keep_converted(ctx, case, image))
    else:
        with in_stage("read", case.case_id):
            image = read_volume(case.source)
    return Loaded(case, image, sha, outputs, {"read": round(time.monotonic() - t0, 3)})


# -- segment -------------------------------------------------------------------------------------------------
def segment(predictor, loaded: Loaded):
    """Run the network; the peak-memory window covers this case's inference."""
    reset_peak_rss()
    t0 = time.monotonic()
    with in_stage("predict", loaded.case.case_id):
        channels = getattr(
            loaded.case, "channels", ()
        )  # a multi-channel manifest: the further channels, read by the predictor
        labels = predictor.predict([loaded.image, *channels] if channels else loaded.image)
    loaded.seconds["predict"] = round(time.monotonic() - t0, 3)
    labels.meta["peak_rss_mb"] = peak_rss_mb()
    labels.meta.update(getattr(predictor, "startup", None) or {})  # runner.model.load_predictor's start-up figures
    return labels


# -- write ---------------------------------------------------------------------------------------------------
@dataclass
class _Writing:
    """One case's write: what every write step needs, and what they have written so far."""

    ctx: RunContext
    info: dict  # predictor_info(): model provenance, inference settings, versions
    loaded: Loaded
    labels: object  # Volume
    table: LabelTable
    cdir: Path
    outputs: dict
    assessed: list = field(default_factory=list)  # the rows the writer measured for the sidecar and the SR
    side: dict = field(default_factory=dict)  # the predictions' sidecar

    @property
    def cid(self) -> str:
        return self.loaded.case.case_id


def _write_predictions(w: _Writing, *, t0: float) -> None:
    """Label map, sidecar and (DICOM inputs) SEG / RTSTRUCT / SR through ``write_case_outputs``."""
    case, rd, pred, cdir = w.loaded.case, w.ctx.rundir, w.ctx.pipeline.stages["predict"], w.cdir
    dicom = case.kind == "dicom"
    with in_stage("predict", w.cid):
        w.side = write_case_outputs(
            case_id=w.cid,
            labels=w.labels,
            image_meta=w.loaded.image.meta,
            source=case.source,
            table=w.table,
            provenance=w.info["model"],
            inference=w.info["inference"],
            label_map=cdir / "labels.nii.gz",
            sidecar=cdir / "labels.json",
            dicom_seg=cdir / "seg.dcm" if pred.dicom_seg and dicom else None,
            rtstruct=cdir / "rtstruct.dcm" if pred.rtstruct and dicom else None,
            sr=cdir / "sr.dcm" if pred.sr and pred.dicom_seg and dicom else None,
            image=w.loaded.image,
            versions=w.info.get("versions"),
            started=t0,
            uid_seed=w.ctx.uid_seed or None,
            assessed=w.assessed,
        )
        w.outputs["labels"] = rd.rel(cdir / w.side["outputs"]["label_map"])
        for kind in ("dicom_seg", "rtstruct", "sr"):
            if kind in w.side["outputs"]:
                w.outputs[kind] = rd.rel(cdir / w.side["outputs"][kind])
        w.outputs["labels_sidecar"] = rd.rel(cdir / "labels.json")


def _structure_rows(w: _Writing, rep) -> list:
    """Volumes (and intensities) per structure with their quality flags; reused from the writer when it measured
    them."""
    if w.assessed and rep.intensities and not rep.min_size_ml:  # measured once, for the sidecar, the SR and here
        return [dict(r) for r in w.assessed]
    image, labels = w.loaded.image, w.labels
    rows = structure_rows(
        w.cid, labels, w.table, image if rep.intensities else None, min_size_ml=rep.min_size_ml or None
    )
    model_path = w.info["model"].get("model_path")
    quality.assess_case(
        rows,
        image=image,
        labels=labels,
        confidence=labels.meta.get("confidence"),
        agreement=labels.meta.get("pass_agreement"),
        expected=expected_for_model(model_path) if isinstance(model_path, str) else None,
    )
    return rows


def _write_report(w: _Writing) -> None:
    """``volumes.json`` and the QC montage."""
    rep, rd = w.ctx.pipeline.stages["report"], w.ctx.rundir
    with in_stage("report", w.cid):
        rows = _structure_rows(w, rep)
        for row in rows:
            row.update(
                source_labels=w.outputs["labels"],
                source_image=w.loaded.case.source,
                intensity_sampling="same grid" if rep.intensities else "",
                model=w.info["model"].get("model_name", ""),
                model_sha256=w.ctx.model_sha256,
            )
        w.outputs["volumes"] = rd.rel(write_json(w.cdir / "volumes.json", plain(rows)))
        if rep.qc:
            png = write_montage(
                rd.qc_path(w.cid),
                w.labels.array,
                w.labels.affine,
                w.table,
                w.loaded.image.array if rep.intensities else None,
                rows=rows,
                title=w.cid,
                window=tuple(rep.window) if rep.window else None,
            )
            if png is not None:
                w.outputs["qc"] = rd.rel(png)


def _write_metrics(w: _Writing) -> None:
    """``metrics.json`` against the case's reference label map."""
    ev = w.ctx.pipeline.stages["evaluate"]
    with in_stage("evaluate", w.cid):
        ref = read_volume(w.loaded.case.label)
        if not same_grid(ref, w.labels):
            ref = align_to(ref, w.labels)
        rows = metric_rows(
            w.cid,
            w.labels,
            ref,
            w.table,
            surface=ev.surface,
            nsd_tolerance_mm=ev.nsd_tolerance_mm or DEFAULT_NSD_TOLERANCE_MM,
        )
        w.outputs["metrics"] = w.ctx.rundir.rel(write_json(w.cdir / "metrics.json", plain(rows)))


def _run_plugins(w: _Writing) -> None:
    """Plugin stages, in order, on the written case."""
    for name, settings in w.ctx.pipeline.stages.items():
        kind = stage_type(name)
        if kind.builtin or not kind.per_case:
            continue
        with in_stage(name, w.cid):
            written = (
                kind.run_case(
                    settings, case_id=w.cid, labels=w.labels, image=w.loaded.image, table=w.table, case_dir=w.cdir
                )
                or {}
            )
            w.outputs.update({f"{name}.{k}": w.ctx.rundir.rel(Path(v)) for k, v in written.items()})


def _export(w: _Writing) -> None:
    """Send what the case wrote to the PACS (last)."""
    ex, rd = w.ctx.pipeline.stages["export"], w.ctx.rundir
    with in_stage("export", w.cid):
        record = export_path(w.ctx, w.cid)
        export_case(
            ex.destination,
            {k: (rd.root / w.outputs[k]) if k in w.outputs else None for k in ex.send},
            record_path=record,
            case_id=w.cid,
            retries=ex.retries,
            backoff_s=ex.backoff_s,
            base=rd.root,
        )
        w.outputs["export"] = rd.rel(record)


def write_case(ctx: RunContext, predictor_info: dict, loaded: Loaded, labels, *, t0: float) -> dict:
    """Write the case's outputs, then its ``done`` record (returned)."""
    case, st = loaded.case, ctx.pipeline.stages
    w = _Writing(
        ctx, predictor_info, loaded, labels, ctx.label_table(), ctx.rundir.case_dir(case.case_id), dict(loaded.outputs)
    )
    t1 = time.monotonic()
    _write_predictions(w, t0=t0)
    if "report" in st:
        _write_report(w)
    if "evaluate" in st:
        _write_metrics(w)
    _run_plugins(w)
    if "export" in st:  # last: what is sent is what the case wrote
        _export(w)
    seconds = {**loaded.seconds, "write": round(time.monotonic() - t1, 3)}
    rec = {
        "status": "done",
        "stage": "",
        "error": "",
        "attempt": loaded.attempt,
        "started": loaded.started,
        "finished": now(),
        "seconds": round(time.monotonic() - t0, 3),
        "stage_seconds": seconds,
        "peak_rss_mb": labels.meta.get("peak_rss_mb"),
        "source": case.source,
        "kind": case.kind,
        "fingerprint": case.fingerprint,
        "input_sha256": loaded.input_sha256,
        "config_sha256": ctx.config_sha256,
        "model_sha256": ctx.model_sha256,
        "outputs": w.outputs,
        "findings": w.side["findings"],
        "engine": ctx.engine,
        **where(),
    }
    ctx.rundir.write_state(w.cid, rec)  # last: its presence marks the case as done
    log.info("%s done in %.2f s (peak %.0f MB)", w.cid, rec["seconds"], rec["peak_rss_mb"] or 0)
    release_study(ctx, case)
    return {**rec, "case_id": w.cid}


def process_case(ctx: RunContext, predictor, case) -> dict:
    """All stages of one case in this thread (the Ray engine's unit of work); returns its state record."""
    t0, started = time.monotonic(), now()
    attempt = mark_running(ctx, case)
    try:
        loaded = read_case(ctx, case)
        loaded.attempt, loaded.started = attempt, started
        labels = segment(predictor, loaded)
        return write_case(ctx, predictor_info(predictor), loaded, labels, t0=t0)
    except CaseFailure as exc:
        return fail(ctx, case, exc, attempt=attempt, started=started, t0=t0)
