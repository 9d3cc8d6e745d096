"""Training/inference configs: YAML -> dataclasses, strictly.

Unknown keys are rejected with a "did you mean" hint, types are checked, and
``--set section.key=value`` overrides are applied before validation. The
resolved config is saved with every output (run directory, checkpoint).
Configs never evaluate code or name import paths: models are chosen by
registry name, label tables by path or by name under ``configs/labels``.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from medseg import safe_yaml
from medseg.errors import ConfigError
from medseg.labels import LabelTable

#: The packaged config folder (label tables, model presets, training recipes); ``configs/`` in a checkout links to it.
CONFIG_ROOT = Path(__file__).resolve().parent / "resources" / "configs"


@dataclass
class ModelConfig:
    name: str = "unet"
    spatial_dims: int = 3
    kwargs: dict = field(default_factory=dict)


@dataclass
class PreprocessingConfig:
    """Applied identically in training and inference (the checkpoint stores it)."""

    spacing: list = field(default_factory=lambda: [2.5, 2.5, 2.5])  # mm, target grid
    # a registered scheme: ct_window | ct_clip_zscore | zscore | plugins (medseg/transforms/intensity.py)
    intensity: str = "ct_window"
    window: list = field(default_factory=lambda: [-200.0, 250.0])  # HU, for ct_window
    clip: list = field(default_factory=list)  # HU [low, high], for ct_clip_zscore
    mean: float = 0.0  # foreground mean after clipping, for ct_clip_zscore
    std: float = 1.0  # foreground std after clipping, for ct_clip_zscore
    foreground_hu: float = -500.0  # training crops to the body: voxels above this HU
    crop_margin: int = 12  # voxels of surroundings kept around the body, so patches also show air beyond it


@dataclass
class AugmentationConfig:
    affine_prob: float = 0.2  # chance of a small rotation + scaling per patch
    rotate_deg: float = 10.0
    scale: float = 0.1
    flip_axes: list = field(default_factory=list)  # never axis 0 (L-R) when labels have sides
    intensity: bool = True  # scale, shift, noise, gamma


@dataclass
class TrainingConfig:
    epochs: int = 60
    max_minutes: float = 0.0  # 0: no wall-clock budget
    patch_size: list = field(default_factory=lambda: [64, 64, 48])
    batch_size: int = 2
    samples_per_image: int = 2
    pos_fraction: float = 0.67  # share of patches centred on a labelled voxel
    learning_rate: float = 3e-3
    weight_decay: float = 1e-5
    val_every: int = 5  # epochs between validations (runs without a budget)
    iterations_per_epoch: int = 250  # optimizer steps per epoch, whatever the number of cases (nnU-Net's 250)
    val_interval: float = 0.1  # with max_minutes: validate about every this fraction of the budget (and at the end)
    seed: int = 0
    num_workers: int = 0
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    loss: str = "dice_ce"  # a registered loss: dice_ce | dice | ce | plugins (medseg/training/losses.py)
    optimizer: str = "adamw"  # adamw | sgd (nesterov, momentum 0.99)
    schedule: str = "poly"  # poly | cosine
    amp: str = "auto"  # auto: bf16 on CPUs with native bf16 and on CUDA; bf16 | fp16 | off
    adversarial_weight: float = 0.0  # > 0 adds a discriminator's loss (medseg/training/adversarial.py)
    adversarial_lr: float = 1e-4


@dataclass
class InferenceConfig:
    """Sliding-window settings; each speed switch has a safe default (see benchmarks/bench_inference.py)."""

    roi_size: list = field(default_factory=lambda: [64, 64, 48])
    overlap: float = 0.25
    sw_batch_size: int = 4  # windows per forward pass
    blend: str = "gaussian"
    amp: str = "auto"  # auto: fp16 on CUDA, bf16 on CPUs with native bf16, else off; or bf16 / fp16 / off
    channels_last: bool = True  # channels-last memory layout for the network's convolutions
    skip_background: bool = True  # windows whose voxels are all at/below the intensity window's floor are not run
    tta_flips: list = field(
        default_factory=list
    )  # spatial axes (0, 1, 2 in RAS order) to mirror; never mirror L-R for lateral labels
    label_chunk: int = 1 << 20  # boundary voxels interpolated per step when mapping scores back (bounds memory)
    crf_iterations: int = 0  # > 0: dense-CRF refinement of the scores, guided by the image (medseg/inference/crf.py)


@dataclass
class CascadeConfig:
    """A two-stage cascade (nnU-Net's ``3d_cascade_fullres``), trained by ``medseg train`` when a config has this
    section (``medseg.training.cascade``) and used by ``medseg predict`` as one model (one checkpoint file).

    Stage 1 trains at ``lowres_spacing`` (coarser: a patch covers more of the body); its prediction, one indicator
    channel per structure (background left out), resampled to the full-resolution grid, is given to stage 2 as extra
    input channels after the image's own. Stage 2 trains at ``preprocessing.spacing``. Both stages share ``model``,
    ``training`` and ``inference``, and one budget (``training.max_minutes``).

    - ``lowres_spacing``: stage 1's target spacing in mm, 3 values, none finer than ``preprocessing.spacing``;
      empty: twice ``preprocessing.spacing``.
    - ``lowres_share``: the fraction of ``training.max_minutes`` stage 1 trains for, in (0, 1); predicting the
      training cases with stage 1 and stage 2's training share the rest. Without a budget each stage trains
      ``training.epochs`` epochs.
    - ``lowres_patch_size``: stage 1's ``training.patch_size`` (and ``inference.roi_size``); empty: the same as
      stage 2's.
    - ``prior_corruption``: the chance, per training patch of stage 2, that its prior channels are perturbed
      (each structure's channel dilated, eroded or dropped), as nnU-Net's cascade augmentation does, so stage 2
      does not copy a prior that on new images is less exact than on the cases stage 1 trained on; in [0, 1].
    """

    lowres_spacing: list = field(default_factory=list)
    lowres_share: float = 0.5
    lowres_patch_size: list = field(default_factory=list)
    prior_corruption: float = 0.3

    def stage1_spacing(self, full_spacing) -> list[float]:
        """``lowres_spacing``, or twice ``full_spacing`` when it is empty."""
        return [float(s) for s in self.lowres_spacing] or [2.0 * float(s) for s in full_spacing]


@dataclass
class Config:
    #: The label table: a name under ``configs/labels``, a path, or the table itself
    #: (``{name:, labels: [{index:, name:}, ...]}``, as ``medseg plan`` writes it).
    #: No default: names in outputs come from the data, never from a fallback.
    labels: typing.Any = None
    model: ModelConfig = field(default_factory=ModelConfig)
    preprocessing: PreprocessingConfig = field(default_factory=PreprocessingConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    #: A two-stage cascade (``CascadeConfig``); None (no section): one stage.
    cascade: CascadeConfig | None = None

    def to_dict(self) -> dict:
        """The config as plain data; a config without a cascade has no ``cascade`` key (as before the section)."""
        d = dataclasses.asdict(self)
        if d.get("cascade") is None:
            d.pop("cascade", None)
        return d

    def label_table(self, base: Path | None = None) -> LabelTable:
        """The config's label table; a ``ConfigError`` when it has none (never a default table)."""
        if self.labels is None or self.labels == "":
            raise ConfigError(
                "the config has no label table ('labels:'); run `medseg plan MANIFEST --out CONFIG` "
                "(it writes the table from the data set), or add `labels: TABLE.yaml` to the config"
            )
        if isinstance(self.labels, dict):
            return LabelTable.from_dict(self.labels, source="config labels")
        return LabelTable.from_yaml(resolve_label_table_path(str(self.labels), base))


def resolve_label_table_path(ref: str, base: Path | None = None) -> Path:
    """A label table given as a path (relative to ``base``) or as a name in ``configs/labels``."""
    candidates = []
    p = Path(ref)
    if base is not None and not p.is_absolute():
        candidates.append(base / p)
    candidates += [p, CONFIG_ROOT / "labels" / f"{ref}.yaml"]
    for c in candidates:
        if c.is_file():
            return c
    known = sorted(f.stem for f in (CONFIG_ROOT / "labels").glob("*.yaml"))
    close = difflib.get_close_matches(ref, known, n=3)
    hint = f"did you mean {', '.join(close)}?" if close else f"known names: {', '.join(known) or 'none'}"
    raise ConfigError(f"label table {ref!r} not found as a file or as a name in configs/labels; {hint}")


_UNIONS = (typing.Union, types.UnionType)


def build_dataclass(cls, data, where: str):
    """A dataclass from a mapping, strictly: unknown keys ("did you mean"), wrong types -> ``ConfigError``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, found {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), sorted(names), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; allowed: {', '.join(sorted(names))}"
            if "inference" in names and key in {f.name for f in dataclasses.fields(InferenceConfig)}:
                stage = where.rsplit(".", 1)[-1].rsplit(" ", 1)[-1]  # "x.yaml: stages.predict" -> "predict"
                hint = f"; it is an inference setting: {stage}.inference.{key} (--set {stage}.inference.{key}=VALUE)"
            raise ConfigError(f"{where}: unknown key {key!r}{hint}")
        kwargs[key] = _coerce(hints[key], value, f"{where}.{key}")
    return cls(**kwargs)


def _coerce(tp, value, where: str):
    optional = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) in _UNIONS else []
    if len(optional) == 1 and dataclasses.is_dataclass(optional[0]):  # an optional section: null or a mapping
        return None if value is None else build_dataclass(optional[0], value, where)
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, where)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, bool):
        value = "on" if value else "off"  # YAML 1.1 reads a bare off/no as false: `amp: off` means the string
    if tp in (int, str, bool, float):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: expected {tp.__name__}, found {value!r}")
        return value
    if tp is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, found {value!r}")
        return list(value)
    if tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, found {value!r}")
        return dict(value)
    return value


def _parse_scalar(text: str):
    try:
        return safe_yaml.load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply ``section.key=value`` strings (values parsed as YAML) to a raw config dict."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected section.key=value")
        dotted, raw = item.split("=", 1)
        node = data
        parts = dotted.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = _parse_scalar(raw)
    return data


def config_from_dict(data: dict | None, *, source: str = "config", overrides: list[str] | None = None) -> Config:
    data = apply_overrides(dict(data or {}), overrides)
    cfg = build_dataclass(Config, data, source)
    _validate(cfg, source)
    return cfg


def load_config(path: str | Path, *, overrides: list[str] | None = None) -> Config:
    p = Path(path)
    if not p.is_file():
        raise ConfigError("config file not found", path=p)
    try:
        data = safe_yaml.load_file(p) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML ({str(exc).splitlines()[0]})", path=p) from None
    return config_from_dict(data, source=str(p), overrides=overrides)


def _validate(cfg: Config, source: str) -> None:
    sd = cfg.model.spatial_dims
    checks = [
        (
            cfg.labels is None or isinstance(cfg.labels, (str, dict)),
            "labels must be a label table name, a path, or a mapping {name:, labels: [...]}",
        ),
        (sd in (2, 3), f"model.spatial_dims must be 2 or 3, found {sd}"),
        (len(cfg.preprocessing.spacing) == 3, "preprocessing.spacing needs 3 values (mm)"),
        (all(float(s) > 0 for s in cfg.preprocessing.spacing), "preprocessing.spacing values must be > 0"),
        (
            cfg.training.optimizer in ("adamw", "sgd"),
            f"training.optimizer must be adamw or sgd, found {cfg.training.optimizer!r}",
        ),
        (
            cfg.training.schedule in ("poly", "cosine"),
            f"training.schedule must be poly or cosine, found {cfg.training.schedule!r}",
        ),
        (
            cfg.training.amp in ("auto", "bf16", "fp16", "off"),
            f"training.amp must be auto, bf16, fp16 or off, found {cfg.training.amp!r}",
        ),
        (
            len(cfg.preprocessing.window) == 2 and cfg.preprocessing.window[0] < cfg.preprocessing.window[1],
            "preprocessing.window must be [low, high] HU with low < high",
        ),
        (len(cfg.training.patch_size) == 3, "training.patch_size needs 3 values"),
        (len(cfg.inference.roi_size) == 3, "inference.roi_size needs 3 values"),
        (0 <= cfg.inference.overlap < 1, "inference.overlap must be in [0, 1)"),
        (cfg.training.epochs >= 1, "training.epochs must be >= 1"),
        (cfg.training.iterations_per_epoch >= 1, "training.iterations_per_epoch must be >= 1"),
        (0 < cfg.training.val_interval <= 1, "training.val_interval must be in (0, 1] (a fraction of the budget)"),
        (0 < cfg.training.pos_fraction <= 1, "training.pos_fraction must be in (0, 1]"),
        (cfg.inference.blend in ("gaussian", "constant"), "inference.blend must be 'gaussian' or 'constant'"),
        (
            cfg.inference.amp in ("auto", "bf16", "fp16", "off"),
            f"inference.amp must be auto, bf16, fp16 or off, found {cfg.inference.amp!r}",
        ),
        (all(a in (0, 1, 2) for a in cfg.inference.tta_flips), "inference.tta_flips lists spatial axes 0, 1, 2"),
        (
            cfg.inference.label_chunk >= 1 and cfg.inference.sw_batch_size >= 1,
            "inference.label_chunk and sw_batch_size must be >= 1",
        ),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(f"{source}: {msg}")
    if cfg.cascade is not None:
        _validate_cascade(cfg, cfg.cascade, source)
    # training.loss and preprocessing.intensity are checked where losses and preprocessing are built
    # (medseg.training.losses.check_loss_name, medseg.transforms.intensity.check_preprocessing; medseg train and
    # plan call both before any work): config is a leaf, so inference and reporting load no training code.


def _validate_cascade(cfg: Config, c: CascadeConfig, source: str) -> None:
    """The ``cascade`` section ``c`` of ``cfg``: a coarser stage-1 spacing, a share of the budget, a 3D model."""
    full = [float(s) for s in cfg.preprocessing.spacing]
    low = c.lowres_spacing
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in [*low, *c.lowres_patch_size])
    checks = [
        (numbers, "cascade.lowres_spacing and cascade.lowres_patch_size hold numbers"),
        (len(low) in (0, 3), f"cascade.lowres_spacing needs 3 values (mm) or none (twice the spacing), found {low}"),
        (
            not numbers or all(float(a) >= b for a, b in zip(low, full, strict=False)),
            f"cascade.lowres_spacing {low} must be no finer than preprocessing.spacing {full} on every axis",
        ),
        (
            not numbers or not low or any(float(a) > b for a, b in zip(low, full, strict=False)),
            f"cascade.lowres_spacing {low} equals preprocessing.spacing: stage 1 would see no more than stage 2",
        ),
        (0 < c.lowres_share < 1, f"cascade.lowres_share must be in (0, 1), found {c.lowres_share}"),
        (
            len(c.lowres_patch_size) in (0, 3),
            f"cascade.lowres_patch_size needs 3 values or none (training.patch_size), found {c.lowres_patch_size}",
        ),
        (0 <= c.prior_corruption <= 1, f"cascade.prior_corruption must be in [0, 1], found {c.prior_corruption}"),
        (cfg.model.spatial_dims == 3, "a cascade needs a 3D model (model.spatial_dims: 3)"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(f"{source}: {msg}")
