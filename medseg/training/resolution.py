"""How coarse to train: resolution against context, for the budget and the device (``medseg plan``).

nnU-Net plans a full-resolution configuration and, when a patch covers too little of the image, a low-resolution
one (3d_lowres: the spacing raised until the patch covers enough). It decides by GPU memory and trains for days.
medseg's users have a time budget and often a CPU, where the patch is small (64^3) and steps are scarce, so the
planner weighs three things for every candidate spacing, from the full-resolution one up to the coarsest the data
allow:

- **context**: the fraction of the labelled foreground's extent that one patch spans, on its worst axis. A patch
  that sees a third of the abdomen cannot tell a left kidney from a right one, nor the liver's edge from the
  spleen's (measured: 1 x 1 x 2.45 mm CT phantoms, 64^3 patch, 4 minutes: 0.763 mean Dice; 2.5 mm: 0.958);
- **detail**: how many voxels span the thinnest structure (its thickness ``2 V / S``, the surface measured from
  voxel faces and corrected for their staircase, x 2/3). Below ``MIN_DETAIL_VOXELS`` a structure collapses when
  resampled, so such spacings are never chosen (the full resolution is always a candidate);
- **passes**: how many times the budget shows the network each voxel of the training set (optimizer steps x patch
  voxels / data voxels at that spacing). The steps come from the budget and a short timed probe of the planned
  network on this device (or, without a budget, from the schedule: epochs x iterations per epoch).

The rule, recorded in the plan with every candidate's figures: the finest candidate that the detail allows, whose
patch spans at least ``MIN_CONTEXT`` of the foreground and which the budget shows the data at least ``MIN_PASSES``
times; when no candidate has all three, the coarsest one the detail allows (it has the most context and passes).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from medseg.models import create_model

#: The thinnest structure must span at least this many voxels (its ``2 V / S`` thickness; a sphere's diameter is
#: three thicknesses, so 3 voxels of thickness keep a sphere 9 voxels across).
MIN_DETAIL_VOXELS = 3.0
#: A patch should span at least this fraction of the labelled foreground on its worst axis.
MIN_CONTEXT = 0.75
#: The budget should show the network each training voxel at least this many times.
MIN_PASSES = 40.0
#: The ratio between consecutive candidate spacings (nnU-Net's 3d_lowres steps by 1.03 to a target; medseg trains
#: every candidate it shows in ``bench_training.py --ct``, so the ladder is coarse).
LADDER_STEP = 2**0.5
#: The share of a budget the optimizer steps get (validation, data loading and checkpoints take the rest; measured on
#: the phantom demo: about 85 %).
STEP_SHARE = 0.85
#: A cascade (a low-resolution stage, then the full resolution with its prediction as extra channels, as nnU-Net's
#: 3d_cascade_fullres) is planned when the chosen spacing is at least this much coarser than the full resolution on
#: some axis, and the budget gives each stage ``MIN_PASSES``: stage 1 ``CASCADE_SHARE`` of it, stage 2 what is left
#: after stage 1 predicts the training cases (``CASCADE_STAGE2_SHARE`` of the rest).
CASCADE_MIN_RATIO = 1.5
CASCADE_SHARE = 0.5
CASCADE_STAGE2_SHARE = 0.8
#: Staircase correction: a voxelised smooth surface has on average 3/2 of its true area in voxel faces.
_FACE_AREA_EXCESS = 1.5


def structure_sizes(labels: np.ndarray, zooms) -> dict[int, dict]:
    """Each label value's volume (mL) and thickness (mm: ``2 V / S``, ``S`` from voxel faces / 1.5)."""
    from scipy import ndimage

    zooms = np.asarray(zooms, dtype=float)
    face = np.array([zooms[1] * zooms[2], zooms[0] * zooms[2], zooms[0] * zooms[1]])
    out: dict[int, dict] = {}
    values = [int(v) for v in np.unique(labels) if v > 0]
    boxes = ndimage.find_objects(labels.astype(np.int32, copy=False), max_label=max(values, default=0))
    for v in values:
        box = boxes[v - 1]
        if box is None:
            continue
        m = np.pad(labels[box] == v, 1)
        n = int(m.sum())
        area = sum(float(np.count_nonzero(np.diff(m, axis=a))) * face[a] for a in range(3)) / _FACE_AREA_EXCESS
        vol = n * float(np.prod(zooms))
        out[v] = {"volume_ml": vol / 1000.0, "thickness_mm": 2.0 * vol / area if area else 0.0}
    return out


def foreground_extent(labels: np.ndarray, zooms) -> np.ndarray:
    """The labelled foreground's bounding box in mm, per voxel axis (zeros when nothing is labelled)."""
    axes = [np.flatnonzero(np.any(labels > 0, axis=tuple(b for b in range(3) if b != a))) for a in range(3)]
    if any(ax.size == 0 for ax in axes):
        return np.zeros(3)
    return np.array([(ax[-1] - ax[0] + 1) * float(z) for ax, z in zip(axes, zooms, strict=True)])


@dataclass
class Candidate:
    """One spacing the planner considered, with the figures it decided by."""

    spacing: list[float]
    patch: list[int]
    context: float  # fraction of the foreground's extent a patch spans, worst axis
    detail: float  # voxels across the thinnest structure
    passes: float | None  # times the budget shows each training voxel (None: unknown)
    verdict: str = ""
    reasons: list[str] = field(default_factory=list)
    model: dict = field(default_factory=dict)  # the model section planned for this patch

    def row(self) -> dict:
        return asdict(self)


def ladder(full: np.ndarray, *, coarsest: float) -> list[np.ndarray]:
    """Candidate spacings: the full resolution, then the finer axes raised step by step (nnU-Net's 3d_lowres keeps
    the coarse axis until the others reach it), up to ``coarsest`` mm, which is always the last candidate."""
    full = np.asarray(full, dtype=float)
    out = [full]
    t = float(full.min()) * LADDER_STEP
    while t < coarsest / 1.15:  # a step within 15 % of the coarsest adds a candidate that says nothing new
        out.append(np.maximum(full, t))
        t *= LADDER_STEP
    if coarsest > float(full.max()) * 1.03 or coarsest > float(full.min()) * 1.03:
        out.append(np.maximum(full, coarsest))
    unique: list[np.ndarray] = []
    for s in out:
        s = np.round(s, 2)
        if not any(np.allclose(s, u) for u in unique):
            unique.append(s)
    return unique


def coarsest_spacing(fp: dict, patch_voxels: int) -> float:
    """The coarsest spacing worth considering: the detail limit of the thinnest structure, and no coarser than the
    spacing at which one patch spans the whole median image. Without label maps (no structure sizes) only the full
    resolution is considered."""
    finest = float(np.min(fp["spacing_median"]))
    thin = fp.get("thinnest_mm")
    if not thin:
        return finest
    extent = np.asarray(fp.get("extent_mm_median") or np.array(fp["shape_median"]) * np.array(fp["spacing_median"]))
    whole = float(extent.max()) / patch_voxels ** (1 / 3)
    return max(min(whole, float(thin) / MIN_DETAIL_VOXELS), finest)


def assess(spacing: np.ndarray, patch: np.ndarray, fp: dict, *, iterations: float | None, per_step: int) -> Candidate:
    """The figures of one candidate: context, detail and (when ``iterations`` is known) passes."""
    fg = np.asarray(fp.get("foreground_extent_mm_median") or [0, 0, 0], dtype=float)
    span = np.asarray(patch) * spacing
    context = float(np.min(np.minimum(1.0, span / np.where(fg > 0, fg, span)))) if fg.any() else 1.0
    thin = fp.get("thinnest_mm")
    detail = float(thin) / float(spacing.max()) if thin else float("inf")
    passes = None
    if iterations:
        extent = np.asarray(fp.get("extent_mm_median") or np.array(fp["shape_median"]) * np.array(fp["spacing_median"]))
        data_voxels = max(1, int(fp.get("n_train") or fp.get("n_cases") or 1)) * float(
            np.prod(np.ceil(extent / spacing))
        )
        passes = float(iterations) * per_step * float(np.prod(patch)) / data_voxels
    return Candidate(
        [round(float(s), 3) for s in spacing],
        [int(p) for p in patch],
        round(context, 3),
        round(detail, 2),
        None if passes is None else round(passes, 1),
    )


def choose(cands: list[Candidate]) -> int:
    """The index of the chosen candidate (see the module docstring); fills in each one's verdict and reasons."""
    feasible = [i for i, c in enumerate(cands) if i == 0 or c.detail >= MIN_DETAIL_VOXELS]
    for i, c in enumerate(cands):
        if i not in feasible:
            c.reasons.append(f"the thinnest structure would span {c.detail:.2g} voxels (< {MIN_DETAIL_VOXELS:g})")
        if c.context < MIN_CONTEXT:
            c.reasons.append(f"a patch spans {c.context:.0%} of the foreground (< {MIN_CONTEXT:.0%})")
        if c.passes is not None and c.passes < MIN_PASSES:
            c.reasons.append(f"the budget shows each training voxel {c.passes:.3g} times (< {MIN_PASSES:g})")
    good = [i for i in feasible if not cands[i].reasons]
    chosen = good[0] if good else feasible[-1]
    for i, c in enumerate(cands):
        if i == chosen:
            c.verdict = "chosen"
            if not good:
                c.reasons.insert(0, "no candidate has enough context, detail and passes: the coarsest detail allows")
        elif i not in feasible:
            c.verdict = "rejected: too coarse for the thinnest structure"
        elif i < chosen:
            c.verdict = "rejected: " + ("; ".join(c.reasons) or "finer, but not better")
        else:
            c.verdict = "rejected: coarser than needed"
    return chosen


def probe_seconds_per_step(model_cfg: dict, patch, *, batch: int, in_channels: int, out_channels: int) -> float:
    """Seconds per optimizer step of the planned network on this device: a few timed steps on random data."""
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = create_model(
        model_cfg.get("name", "unet"),
        spatial_dims=int(model_cfg.get("spatial_dims", 3)),
        in_channels=in_channels,
        out_channels=out_channels,
        **(model_cfg.get("kwargs") or {}),
    ).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    x = torch.randn(batch, in_channels, *[int(p) for p in patch], device=device)
    y = torch.randint(0, out_channels, (batch, *[int(p) for p in patch]), device=device)
    times = []
    for _ in range(4):
        t0 = time.perf_counter()
        out = net(x)
        out = out[0] if isinstance(out, (list, tuple)) else out
        loss = torch.nn.functional.cross_entropy(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return float(min(times[1:]))  # the first step pays one-time costs; the fastest of the rest is the least noisy


def cascade_plan(cands: list[Candidate], chosen: int) -> tuple[dict | None, str]:
    """The ``cascade`` config section (or None) for the chosen candidate, and why."""
    low, full = cands[chosen], cands[0]
    ratio = max(a / b for a, b in zip(low.spacing, full.spacing, strict=True))
    if chosen == 0 or ratio < CASCADE_MIN_RATIO:
        return None, "no cascade: the chosen spacing is the full resolution or close to it"
    if low.passes is None or full.passes is None:
        return None, "no cascade: the budget is unknown"
    p1 = low.passes * CASCADE_SHARE
    p2 = full.passes * (1 - CASCADE_SHARE) * CASCADE_STAGE2_SHARE
    if min(p1, p2) < MIN_PASSES:
        return None, (
            f"no cascade: the budget would show stage 1 the data {p1:.3g} times and the full-resolution stage "
            f"{p2:.3g} times (< {MIN_PASSES:g})"
        )
    section = {"lowres_spacing": list(low.spacing), "lowres_share": CASCADE_SHARE, "lowres_patch_size": list(low.patch)}
    return section, (
        f"cascade: stage 1 at {low.spacing} mm ({p1:.3g} passes), then the full resolution {full.spacing} mm with "
        f"its prediction as extra channels ({p2:.3g} passes)"
    )
