"""The per-case stages, shared by every engine: read (scan -> select -> convert), segment, write.

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

from medseg.errors import MedsegError, OutputError
from medseg.runner.rundir import RUN_LOG, RunDir, now, peak_rss_mb, reset_peak_rss

log = logging.getLogger(RUN_LOG)


class CaseFailure(Exception):
    def __init__(self, stage: str, message: str):
        self.stage = stage
        self.message = message
        super().__init__(f"{stage}: {message}")


@contextlib.contextmanager
def stage(name: str, case_id: str):
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
    pipeline: object  # runner.pipeline.Pipeline
    config_sha256: str
    model_path: str
    model_sha256: str
    labels: dict  # the checkpoint's label table
    engine: str = "local"
    device: str = ""
    pacs: dict | None = None  # PACS input: endpoint, cache folder and limit, modalities (medseg.pacs.query.PacsInput.context)
    uid_seed: str = ""  # hash of the model and the settings that shape outputs: deterministic SEG/RTSTRUCT UIDs

    @property
    def rundir(self) -> RunDir:
        return RunDir(self.root)

    def label_table(self):
        from medseg.labels import LabelTable

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
    rd.write_state(case.case_id, {"status": "running", "attempt": attempt, "started": now(), "source": case.source,
                                  "kind": case.kind, "fingerprint": case.fingerprint, "config_sha256": ctx.config_sha256,
                                  "engine": ctx.engine, **where()})
    return attempt


def fail(ctx: RunContext, case, exc: CaseFailure, *, attempt: int, started: str, t0: float) -> dict:
    rec = {"status": "failed", "stage": exc.stage, "error": exc.message, "attempt": attempt, "started": started,
           "finished": now(), "seconds": round(time.monotonic() - t0, 3), "source": case.source, "kind": case.kind,
           "fingerprint": case.fingerprint, "config_sha256": ctx.config_sha256, "engine": ctx.engine, **where()}
    ctx.rundir.write_state(case.case_id, rec)
    log.info("%s failed in %s: %s", case.case_id, exc.stage, exc.message)
    release_study(ctx, case)
    return {**rec, "case_id": case.case_id}


def _study_cache(ctx: RunContext):
    from medseg.pacs.retrieve import StudyCache

    return StudyCache(ctx.pacs["cache"], ctx.pacs.get("max_bytes"))


def retrieve(ctx: RunContext, case) -> None:
    """PACS input: fetch the case's study into the cache (``case.source``) unless it is there already."""
    if not case.remote or ctx.pacs is None:
        return
    with stage("retrieve", case.case_id):
        _study_cache(ctx).get(ctx.pacs["endpoint"], case.remote, case.case_id, modalities=ctx.pacs.get("modalities") or ())


def release_study(ctx: RunContext, case) -> None:
    """PACS input: the run is finished with the case's study; the cache may evict it."""
    if case.remote and ctx.pacs is not None:
        with contextlib.suppress(Exception):  # bookkeeping only: never fail a case over it
            _study_cache(ctx).consume(case.case_id)


def export_path(ctx: RunContext, case_id: str) -> Path:
    from medseg.io.paths import safe_name

    return ctx.rundir.root / "export" / f"{safe_name(case_id)}.json"


_KEPT_PREDICTORS: dict | None = None  # while keep_predictors() is active: loaded predictors by model and settings


@contextlib.contextmanager
def keep_predictors():
    """Inside this block ``load_predictor`` loads each (model checksum, device, inference settings) once and
    hands the same predictor to every later run in this process (``medseg listen``: one model load for its
    lifetime, however many studies it runs). Outside it every run loads its own, as before."""
    global _KEPT_PREDICTORS
    previous, _KEPT_PREDICTORS = _KEPT_PREDICTORS, {}
    try:
        yield _KEPT_PREDICTORS
    finally:
        _KEPT_PREDICTORS = previous


def load_predictor(ctx: RunContext):
    import json

    from medseg.inference.predictor import Predictor

    pred = ctx.pipeline.stages["predict"]
    device = ctx.device or pred.device or None
    key = (ctx.model_path, ctx.model_sha256, device, json.dumps(pred.inference, sort_keys=True, default=str))
    kept = _KEPT_PREDICTORS
    if kept is not None and key in kept:
        return kept[key]
    predictor = Predictor.from_checkpoint(ctx.model_path, device=device, progress=False, **pred.inference)
    if kept is not None:
        kept[key] = predictor
    return predictor


def _read_dicom(ctx: RunContext, case):
    from medseg.io.dicom.geometry import GeometryPolicy
    from medseg.io.dicom.select import SelectionRule, select
    from medseg.io.dicom.series import scan_inventory, volume_from_candidate

    st = ctx.pipeline.stages
    scan, sel = st.get("scan"), st.get("select")
    policy = GeometryPolicy(irregular="resample" if scan and scan.resample_irregular else "refuse",
                            tilt="refuse" if scan and scan.refuse_tilt else "resample")
    with stage("scan", case.case_id):
        inv = scan_inventory(case.source, policy=policy)
    with stage("select", case.case_id):
        rule = SelectionRule(modalities=tuple(sel.modalities), min_slices=sel.min_slices,
                             description=sel.description or None) if sel else None
        chosen, record = select(inv.candidates, rule, folder=case.source)
        log.info("%s: series %s (%s)", case.case_id, chosen.key, record["reason"])
    with stage("convert", case.case_id):
        return volume_from_candidate(chosen, case.source, selection=record)


def read_case(ctx: RunContext, case) -> Loaded:
    """Hash and read one input (DICOM: scan -> select -> convert); no model needed."""
    from medseg.runner.inputs import content_sha256

    t0 = time.monotonic()
    with stage("read", case.case_id):
        from medseg.errors import InputError

        if case.error:
            raise InputError(case.error, path=case.source or None)
    retrieve(ctx, case)
    with stage("read", case.case_id):
        if not case.source or not os.path.exists(case.source):
            raise InputError("no such file or folder", path=case.source or case.case_id)
        sha = content_sha256(case.source)
    outputs = {}
    if case.kind == "dicom":
        image = _read_dicom(ctx, case)
        conv = ctx.pipeline.stages.get("convert")
        if conv is not None and conv.write_nifti:
            with stage("convert", case.case_id):
                import medseg
                from medseg.io.atomic import write_json
                from medseg.io.readers import write_volume

                cdir = ctx.rundir.case_dir(case.case_id)
                target = write_volume(image, cdir / "image.nii.gz")
                write_json(cdir / "image.json", {"medseg_version": medseg.__version__, "output": target.name,
                                                 **image.meta["dicom"], "shape": list(image.shape),
                                                 "spacing_mm": list(image.spacing), "affine_ras": image.affine.tolist()})
                outputs.update(image=ctx.rundir.rel(target), image_sidecar=ctx.rundir.rel(cdir / "image.json"))
    else:
        with stage("read", case.case_id):
            from medseg.io.readers import read_volume

            image = read_volume(case.source)
    return Loaded(case, image, sha, outputs, {"read": round(time.monotonic() - t0, 3)})


def segment(predictor, loaded: Loaded):
    """Run the network; the peak-memory window covers this case's inference."""
    reset_peak_rss()
    t0 = time.monotonic()
    with stage("predict", loaded.case.case_id):
        channels = getattr(loaded.case, "channels", ())  # a multi-channel manifest: the further channels, read by the predictor
        labels = predictor.predict([loaded.image, *channels] if channels else loaded.image)
    loaded.seconds["predict"] = round(time.monotonic() - t0, 3)
    labels.meta["peak_rss_mb"] = peak_rss_mb()
    return labels


def write_case(ctx: RunContext, predictor_info: dict, loaded: Loaded, labels, *, t0: float) -> dict:
    """Write the case's outputs, then its ``done`` record (returned)."""
    from medseg.inference.outputs import plain, write_case_outputs
    from medseg.io.atomic import write_json

    case, rd, st = loaded.case, ctx.rundir, ctx.pipeline.stages
    cid, cdir, table = case.case_id, rd.case_dir(case.case_id), ctx.label_table()
    outputs = dict(loaded.outputs)
    t1 = time.monotonic()
    assessed: list = []  # the rows the writer measured for the sidecar and the SR
    with stage("predict", cid):
        side = write_case_outputs(
            case_id=cid, labels=labels, image_meta=loaded.image.meta, source=case.source, table=table,
            provenance=predictor_info["model"], inference=predictor_info["inference"],
            label_map=cdir / "labels.nii.gz", sidecar=cdir / "labels.json",
            dicom_seg=cdir / "seg.dcm" if st["predict"].dicom_seg and case.kind == "dicom" else None,
            rtstruct=cdir / "rtstruct.dcm" if st["predict"].rtstruct and case.kind == "dicom" else None,
            sr=cdir / "sr.dcm" if st["predict"].sr and st["predict"].dicom_seg and case.kind == "dicom" else None,
            image=loaded.image, versions=predictor_info.get("versions"), started=t0, uid_seed=ctx.uid_seed or None,
            assessed=assessed)
        outputs["labels"] = rd.rel(cdir / side["outputs"]["label_map"])
        for kind in ("dicom_seg", "rtstruct", "sr"):
            if kind in side["outputs"]:
                outputs[kind] = rd.rel(cdir / side["outputs"][kind])
        outputs["labels_sidecar"] = rd.rel(cdir / "labels.json")
    if "report" in st:
        rep = st["report"]
        with stage("report", cid):
            if assessed and rep.intensities and not rep.min_size_ml:  # measured once, for the sidecar, the SR and here
                rows = [dict(r) for r in assessed]
            else:
                from medseg.reporting.volumes import structure_rows

                rows = structure_rows(cid, labels, table, loaded.image if rep.intensities else None,
                                      min_size_ml=rep.min_size_ml or None)
                from medseg.reporting import quality  # qc, qc_reasons (issue 33); the cohort adds its own in write_cohort

                model_path = predictor_info["model"].get("model_path")
                quality.assess_case(rows, image=loaded.image, labels=labels, confidence=labels.meta.get("confidence"),
                                    agreement=labels.meta.get("pass_agreement"),
                                    expected=quality.expected_for_model(model_path) if isinstance(model_path, str) else None)
            for row in rows:
                row.update(source_labels=outputs["labels"], source_image=case.source,
                           intensity_sampling="same grid" if rep.intensities else "",
                           model=predictor_info["model"].get("model_name", ""), model_sha256=ctx.model_sha256)
            outputs["volumes"] = rd.rel(write_json(cdir / "volumes.json", plain(rows)))
            if rep.qc:
                from medseg.reporting.qc import write_montage

                png = write_montage(rd.qc_path(cid), labels.array, labels.affine, table,
                                    loaded.image.array if rep.intensities else None, rows=rows, title=cid,
                                    window=tuple(rep.window) if rep.window else None)
                if png is not None:
                    outputs["qc"] = rd.rel(png)
    if "evaluate" in st:
        ev = st["evaluate"]
        with stage("evaluate", cid):
            from medseg.io.geometry import align_to
            from medseg.io.readers import read_volume
            from medseg.io.volume import same_grid
            from medseg.reporting.metrics import DEFAULT_NSD_TOLERANCE_MM, metric_rows

            ref = read_volume(case.label)
            if not same_grid(ref, labels):
                ref = align_to(ref, labels)
            rows = metric_rows(cid, labels, ref, table, surface=ev.surface,
                               nsd_tolerance_mm=ev.nsd_tolerance_mm or DEFAULT_NSD_TOLERANCE_MM)
            outputs["metrics"] = rd.rel(write_json(cdir / "metrics.json", plain(rows)))
    from medseg.runner.pipeline import stage_type

    for name, settings in st.items():  # plugin stages, in order, on the written case
        kind = stage_type(name)
        if kind.builtin or not kind.per_case:
            continue
        with stage(name, cid):
            written = kind.run_case(settings, case_id=cid, labels=labels, image=loaded.image, table=table, case_dir=cdir) or {}
            outputs.update({f"{name}.{k}": rd.rel(Path(v)) for k, v in written.items()})
    if "export" in st:  # last: what is sent is what the case wrote
        ex = st["export"]
        with stage("export", cid):
            from medseg.pacs.export import export_case

            record = export_path(ctx, cid)
            export_case(ex.destination, {k: (rd.root / outputs[k]) if k in outputs else None for k in ex.send},
                        record_path=record, case_id=cid, retries=ex.retries, backoff_s=ex.backoff_s, base=rd.root)
            outputs["export"] = rd.rel(record)
    seconds = {**loaded.seconds, "write": round(time.monotonic() - t1, 3)}
    rec = {"status": "done", "stage": "", "error": "", "attempt": loaded.attempt, "started": loaded.started,
           "finished": now(), "seconds": round(time.monotonic() - t0, 3), "stage_seconds": seconds,
           "peak_rss_mb": labels.meta.get("peak_rss_mb"), "source": case.source, "kind": case.kind,
           "fingerprint": case.fingerprint, "input_sha256": loaded.input_sha256, "config_sha256": ctx.config_sha256,
           "model_sha256": ctx.model_sha256, "outputs": outputs, "findings": side["findings"], "engine": ctx.engine,
           **where()}
    rd.write_state(cid, rec)  # last: its presence marks the case as done
    log.info("%s done in %.2f s (peak %.0f MB)", cid, rec["seconds"], rec["peak_rss_mb"] or 0)
    release_study(ctx, case)
    return {**rec, "case_id": cid}


def predictor_info(predictor) -> dict:
    from medseg.models.checkpoint import versions

    return {"model": dict(predictor.provenance), "inference": dict(predictor.inference), "versions": versions()}


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
