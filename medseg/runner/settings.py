"""Pipeline files (``pipelines/*.yaml``) -> checked settings: one ``*Settings`` dataclass per stage, strictly checked.

Names: a ``*Settings`` dataclass holds one stage's YAML keys; a ``Stage`` is a stage *type* (its settings
class, its rank, and for plugins what it does per case), registered in ``STAGE_TYPES``; the per-case run
code of the built-in stages is in ``medseg.runner.case_work``.

A pipeline is a name, an ``input`` section (which manifest column holds the
images, which split to process) and an ordered mapping of ``stages``. Stage
names and keys are checked like training configs (unknown ones are refused
with a "did you mean"), ``--set`` overrides are applied first
(``predict.model=best.pt`` is short for ``stages.predict.model=best.pt``), and
every file a stage names must exist: all of this before any case starts.

Relative paths are tried against the working directory, then against the
pipeline file's folder (and, for ``train.config``, ``configs/training``).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import yaml

from medseg import safe_yaml
from medseg.adapters.nnunet.predictor import NNUNET_OPTIONS
from medseg.config import CONFIG_ROOT, InferenceConfig, apply_overrides, build_dataclass
from medseg.errors import ConfigError
from medseg.inference.load import is_external_model
from medseg.inference.predictor import NONFINITE_POLICIES, PREDICTOR_OPTIONS
from medseg.pacs.endpoints import parse_endpoint
from medseg.registry import Registry
from medseg.resources import find_pipeline, packaged_pipelines


@dataclass
class InputSettings:
    column: str = "image"  # manifest column holding the image file or DICOM folder (e.g. "dicom")
    label_column: str = "label"  # manifest column with reference label maps (evaluate)
    split: str = ""  # process only manifest rows of this split (e.g. "test"); empty: all rows


@dataclass
class ScanSettings:
    """Header-only scan of each DICOM folder and the geometry policy of its stacks."""

    resample_irregular: bool = False  # interpolate missing slices / uneven spacing (default: refuse)
    refuse_tilt: bool = False  # refuse gantry tilt (default: resample onto an orthogonal grid)


@dataclass
class SelectSettings:
    """Which image stack of a DICOM folder to segment (the largest that matches)."""

    modalities: list = field(default_factory=list)  # e.g. [CT]; empty: any
    min_slices: int = 1
    description: str = ""  # regular expression searched in SeriesDescription


@dataclass
class ConvertSettings:
    write_nifti: bool = True  # keep the selected DICOM stack as cases/<id>/image.nii.gz (+ .json)


@dataclass
class PlanSettings:
    """Dataset fingerprint of the training cases by medseg plan's planner (fingerprint.json, plan.json); optionally
    picks the spacing."""

    spacing: str = "config"  # config: keep the training config's spacing; median: the training images' median spacing


@dataclass
class TrainSettings:
    config: str = "phantom_demo"  # training recipe: a YAML path or a name in configs/training
    overrides: dict = field(default_factory=dict)  # nested settings merged into it, e.g. {training: {epochs: 2}}


@dataclass
class PredictSettings:
    model: str = ""  # checkpoint (.pt); empty when a train stage makes it
    device: str = ""  # cpu, cuda, cuda:1; empty: cuda when available
    dicom_seg: bool = True  # write cases/<id>/seg.dcm for DICOM inputs
    rtstruct: bool = False  # write cases/<id>/rtstruct.dcm (RT Structure Set) for DICOM inputs
    sr: bool = True  # write cases/<id>/sr.dcm (TID 1500 measurement report referencing the SEG) for DICOM inputs
    inference: dict = field(default_factory=dict)  # overrides of the checkpoint's inference settings


@dataclass
class EvaluateSettings:
    surface: bool = True  # HD95, ASSD, NSD besides overlap and volume errors
    nsd_tolerance_mm: float = 0.0  # 0: the default tolerance


@dataclass
class ReportSettings:
    qc: bool = True  # montage per case (qc/<id>.png)
    html: bool = True  # report.html (needs qc)
    intensities: bool = True  # intensity statistics per structure from the image
    min_size_ml: float = 0.0  # 0: off; smaller structures get status below_min_size
    window: list = field(default_factory=list)  # QC grey window [low, high]; empty: automatic
    reference_ranges: str = ""  # CSV/YAML of reference volume ranges for the outlier flags
    longitudinal: str = ""  # longitudinal.csv: "dicom" (patients and dates from the series' headers) or a manifest
    #                         .csv with case_id, subject and date columns; empty: off (medseg.reporting.longitudinal)

    #: Settings that only change the cohort tables, not any case's outputs.
    AGGREGATE_ONLY = ("html", "reference_ranges", "longitudinal")


@dataclass
class ExportSettings:
    """Send each case's DICOM results to a PACS (STOW-RS or C-STORE; medseg.pacs.export)."""

    destination: str = ""  # dicomweb+http://HOST:PORT/dicom-web or dimse://AET@HOST:PORT[?calling=MEDSEG]
    send: list = field(default_factory=lambda: ["dicom_seg", "rtstruct"])  # which of the case's objects (those written)
    retries: int = 3  # per object, after the first attempt
    backoff_s: float = 2.0  # wait before retry n: backoff_s * 2**(n-1) seconds, at most 60

    #: Settings that do not change what a case sends (a rerun with other values redoes nothing).
    AGGREGATE_ONLY = ("retries", "backoff_s")


class Stage:
    """A pipeline stage type: its settings dataclass, its place in the order, and (plugins) what it does per case.

    Built-in stages are run by the runner itself (``medseg.runner.case_work``). A
    plugin stage subclasses this, sets ``name``, ``settings`` (a dataclass whose
    fields are the YAML keys) and ``rank`` (built-ins: scan 10, select 20,
    convert 30, plan 40, train 50, predict 60, evaluate 70, report 80, export 95; a plugin
    runs on each case after the built-in per-case stages, in rank order), and
    implements ``run_case``. Register it with ``@register_stage`` or through the
    ``medseg.stages`` entry-point group (``my_stage = "my_pkg.stages:MyStage"``).
    """

    name: ClassVar[str] = ""
    settings: ClassVar[type] = object
    rank: ClassVar[int] = 90
    per_case: ClassVar[bool] = True
    builtin: ClassVar[bool] = False

    def run_case(self, settings, *, case_id: str, labels, image, table, case_dir: Path) -> dict:
        """Do the stage's work for one segmented case; return ``{output kind: path}`` of the files written in
        ``case_dir``."""
        return {}


#: Pipeline stage types by name; plugins through the ``medseg.stages`` entry-point group.
STAGE_TYPES: Registry = Registry("pipeline stage", entry_point_group="medseg.stages")


def register_stage(cls: type[Stage]) -> type[Stage]:
    """Class decorator: register a ``Stage`` subclass under ``cls.name`` (a duplicate name raises)."""
    if not dataclasses.is_dataclass(cls.settings):
        raise TypeError(f"stage {cls.name!r}: settings must be a dataclass")
    doc = (cls.__doc__ or "").strip().splitlines()
    STAGE_TYPES.register(cls.name, description=doc[0] if doc else cls.name)(cls)
    return cls


def stage_type(name: str) -> Stage:
    return STAGE_TYPES.get(name).builder()


def stage_order() -> list[str]:
    """Every registered stage name, in run order."""
    return sorted(STAGE_TYPES.names(), key=lambda n: (stage_type(n).rank, n))


def _builtin(name: str, settings: type, rank: int, per_case: bool, doc: str) -> None:
    register_stage(
        type(
            f"{name.title()}StageType",
            (Stage,),
            {"name": name, "settings": settings, "rank": rank, "per_case": per_case, "builtin": True, "__doc__": doc},
        )
    )


for _args in (
    ("scan", ScanSettings, 10, True, "header-only scan of each DICOM folder"),
    ("select", SelectSettings, 20, True, "which image stack of a DICOM folder to segment"),
    ("convert", ConvertSettings, 30, True, "keep the selected stack as NIfTI"),
    ("plan", PlanSettings, 40, False, "data set fingerprint of the training cases"),
    ("train", TrainSettings, 50, False, "train once per run"),
    ("predict", PredictSettings, 60, True, "segment each case (label map, SEG, RTSTRUCT, sidecar)"),
    ("evaluate", EvaluateSettings, 70, True, "metrics against the reference labels"),
    ("report", ReportSettings, 80, True, "volumes per structure, QC montages, cohort tables"),
    ("export", ExportSettings, 95, True, "send each case's SEG / RTSTRUCT to a PACS (STOW-RS or C-STORE)"),
):
    _builtin(*_args)


TOP_KEYS = ("name", "description", "input", "stages")


@dataclass
class Pipeline:
    name: str
    description: str
    input: InputSettings
    stages: dict  # stage name -> settings dataclass, in run order
    source: str = ""

    def has(self, stage: str) -> bool:
        return stage in self.stages

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "input": dataclasses.asdict(self.input),
            "stages": {k: dataclasses.asdict(v) for k, v in self.stages.items()},
        }

    def case_config_sha256(self, model_sha256: str, *, exclude: tuple = ()) -> str:
        """Hash of everything that shapes a case's outputs: per-case stage settings and the model checksum.

        ``exclude``: stage names left out (the UIDs of a case's SEG / RTSTRUCT hash only the stages that shape them).
        """
        parts = {}
        for name, st in self.stages.items():
            if not stage_type(name).per_case or name in exclude:
                continue
            d = dataclasses.asdict(st)
            for k in getattr(st, "AGGREGATE_ONLY", ()) + (("model", "device") if name == "predict" else ()):
                d.pop(k, None)
            parts[name] = d
        parts["input"] = {"column": self.input.column, "label_column": self.input.label_column}
        blob = json.dumps({"stages": parts, "model_sha256": model_sha256}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()


def _unknown(key: str, known, where: str, what: str) -> ConfigError:
    close = difflib.get_close_matches(str(key), list(known), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(known)}"
    return ConfigError(f"{where}: unknown {what} {key!r}{hint}")


def _expand_overrides(overrides, stage_names) -> list[str]:
    out = []
    for item in overrides or []:
        head = item.split("=", 1)[0].strip().split(".")[0]
        if head in STAGE_TYPES:
            if head not in stage_names:
                raise ConfigError(
                    f"override {item!r}: this pipeline has no stage {head!r} (stages: {', '.join(stage_names)})"
                )
            item = "stages." + item.strip()
        out.append(item)
    return out


def resolve_path(ref: str, base: Path | None, extra: tuple[Path, ...] = ()) -> Path | None:
    """``ref`` as given (absolute or against the working directory), else against ``base``, else ``extra`` folders."""
    p = Path(ref).expanduser()
    candidates = [p] + ([] if p.is_absolute() else [b / p for b in ([base] if base else []) + list(extra)])
    for c in candidates:
        if c.exists():
            return c.resolve()
    return None


def pipeline_from_dict(
    data: dict, *, source: str = "pipeline", overrides: list[str] | None = None, base: Path | None = None
) -> Pipeline:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with {', '.join(TOP_KEYS)}")
    data = json.loads(json.dumps(data))  # a deep copy
    raw_stages = data.get("stages")
    if not isinstance(raw_stages, dict) or not raw_stages:
        raise ConfigError(
            f"{source}: 'stages' must be a non-empty mapping of stage name -> settings "
            f"(stages: {', '.join(stage_order())})"
        )
    data = apply_overrides(data, _expand_overrides(overrides, list(raw_stages)))
    for key in data:
        if key not in TOP_KEYS:
            raise _unknown(key, TOP_KEYS, source, "key")
    stages = {}
    for name, settings in data["stages"].items():
        if name not in STAGE_TYPES:
            raise _unknown(name, stage_order(), f"{source}: stages", "stage")
        stages[name] = build_dataclass(stage_type(name).settings, settings or {}, f"{source}: stages.{name}")
    pipe = Pipeline(
        name=str(data.get("name") or Path(source).stem),
        description=str(data.get("description") or ""),
        input=build_dataclass(InputSettings, data.get("input") or {}, f"{source}: input"),
        stages=stages,
        source=source,
    )
    _validate(pipe, source, base)
    return pipe


def load_pipeline(path, *, overrides: list[str] | None = None) -> Pipeline:
    p = Path(path)
    if not p.is_file():
        packaged = find_pipeline(str(path)) if len(Path(str(path)).parts) == 1 else None
        if packaged is None:
            raise ConfigError(
                f"pipeline file not found, and not a packaged pipeline name ({', '.join(packaged_pipelines())})", path=p
            )
        p = packaged
    try:
        data = safe_yaml.load_file(p) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML ({str(exc).splitlines()[0]})", path=p) from None
    return pipeline_from_dict(data, source=str(p), overrides=overrides, base=p.parent.resolve())


def _validate(pipe: Pipeline, source: str, base: Path | None) -> None:
    names = list(pipe.stages)
    ranks = [stage_type(n).rank for n in names]
    for (a, ra), (b, rb) in zip(zip(names, ranks, strict=False), zip(names[1:], ranks[1:], strict=False), strict=False):
        if rb < ra:
            raise ConfigError(f"{source}: stage {b!r} must come before {a!r} (order: {' -> '.join(stage_order())})")
    plugins = [n for n in names if not stage_type(n).builtin]
    if plugins and "predict" not in pipe.stages:
        raise ConfigError(f"{source}: stage(s) {plugins} run on segmented cases and need a 'predict' stage")
    st = pipe.stages
    for needs in ("evaluate", "report"):
        if needs in st and "predict" not in st:
            raise ConfigError(f"{source}: stage {needs!r} needs a 'predict' stage before it")
    if "predict" in st:
        pred = st["predict"]
        if "train" in st:
            if pred.model:
                raise ConfigError(
                    f"{source}: stages.predict.model is set but the train stage makes the model; remove one"
                )
        elif not pred.model:
            raise ConfigError(f"{source}: stages.predict.model: no checkpoint given; add --set predict.model=PATH.pt")
        else:
            found = resolve_path(pred.model, base)
            if found is None or not (
                found.is_file() or is_external_model(found)
            ):  # a checkpoint, or a model folder of another tool
                raise ConfigError("stages.predict.model: checkpoint file not found", path=pred.model)
            pred.model = str(found)
        # nnU-Net model folders also take their own switches (mirror, preset, export...; medseg.inference.load)
        allowed = list(
            dict.fromkeys(
                [f.name for f in dataclasses.fields(InferenceConfig)] + list(PREDICTOR_OPTIONS) + list(NNUNET_OPTIONS)
            )
        )
        if pred.inference.get("nonfinite", "refuse") not in NONFINITE_POLICIES:
            raise ConfigError(
                f"{source}: stages.predict.inference.nonfinite must be one of "
                f"{', '.join(NONFINITE_POLICIES)}, found {pred.inference['nonfinite']!r}"
            )
        for key in pred.inference:
            if key not in allowed:
                raise _unknown(key, allowed, f"{source}: stages.predict.inference", "key")
    if "train" in st:
        found = resolve_path(st["train"].config, base, (CONFIG_ROOT / "training",))
        if found is None and not Path(st["train"].config).suffix:
            found = resolve_path(st["train"].config + ".yaml", base, (CONFIG_ROOT / "training",))
        if found is None or not found.is_file():
            raise ConfigError(
                "stages.train.config: training config not found (a YAML path or a name in configs/training)",
                path=st["train"].config,
            )
        st["train"].config = str(found)
    if "plan" in st and st["plan"].spacing not in ("config", "median"):
        raise ConfigError(f"{source}: stages.plan.spacing must be 'config' or 'median', found {st['plan'].spacing!r}")
    if "report" in st:
        rep = st["report"]
        if rep.reference_ranges:
            found = resolve_path(rep.reference_ranges, base)
            if found is None or not found.is_file():
                raise ConfigError("stages.report.reference_ranges: file not found", path=rep.reference_ranges)
            rep.reference_ranges = str(found)
        if rep.window and (len(rep.window) != 2 or not float(rep.window[0]) < float(rep.window[1])):
            raise ConfigError(f"{source}: stages.report.window must be [low, high] with low < high")
        if rep.min_size_ml < 0:
            raise ConfigError(f"{source}: stages.report.min_size_ml must be >= 0")
    if "export" in st:
        _validate_export(st, source)
    if "select" in st and st["select"].description:
        try:
            re.compile(st["select"].description)
        except re.error as exc:
            raise ConfigError(f"{source}: stages.select.description is not a regular expression ({exc})") from None


def _validate_export(st: dict, source: str) -> None:
    ex = st["export"]
    if not ex.destination:
        raise ConfigError(
            f"{source}: stages.export.destination: no destination given; add --set "
            "export.destination=dicomweb+http://HOST:PORT/dicom-web (or dimse://AET@HOST:PORT)"
        )
    parse_endpoint(ex.destination, what=f"{source}: stages.export.destination")
    known = ("dicom_seg", "rtstruct", "sr")
    send = [ex.send] if isinstance(ex.send, str) else list(ex.send)
    for kind in send:
        if kind not in known:
            raise _unknown(kind, known, f"{source}: stages.export.send", "object")
    if not send:
        raise ConfigError(f"{source}: stages.export.send is empty; name dicom_seg, rtstruct and/or sr")
    pred = st.get("predict")

    def writes(kind: str) -> bool:  # the SR references the SEG: written only with it
        return bool(getattr(pred, kind, False)) and (kind != "sr" or bool(pred.dicom_seg))

    if pred is not None and not any(writes(k) for k in send):
        raise ConfigError(
            f"{source}: stages.export sends {', '.join(send)} but the predict stage writes none of them; "
            f"set predict.{'dicom_seg' if send[0] == 'sr' else send[0]}=true"
        )
    if ex.retries < 0 or ex.backoff_s < 0:
        raise ConfigError(f"{source}: stages.export.retries and backoff_s must be >= 0")
    ex.send = send
