"""Turn the frames of one DICOM series into regular 3D stacks, recording every decision.

Checks, in this order, each recorded as a ``Finding`` with the action taken:

==========================  =================================================================
kind                        action
==========================  =================================================================
no_geometry                 excluded (frames without position/orientation/pixel spacing)
localizer                   excluded (ImageType LOCALIZER frames)
mixed_orientation/size      split into one stack per orientation / matrix size
duplicate_instance          dropped (the same SOPInstanceUID more than once)
duplicate_positions         split by echo / temporal position / stack / acquisition, else refused
missing_slices              refused, or resampled (``irregular="resample"``)
uneven_spacing              refused, or resampled (``irregular="resample"``)
spacing_rounding            accepted (gaps vary, but no more than the header's rounding of positions explains)
spacing_jitter              accepted_with_warning (within tolerance, above header rounding)
gantry_tilt                 resampled onto an orthogonal grid (default), or refused
non_collinear               refused (positions do not lie on one line)
thickness_differs_from_step accepted (the spacing is the step between positions)
single_slice                accepted_with_warning (slice spacing from SliceThickness)
monochrome1                 inverted (MONOCHROME1 frames are turned into MONOCHROME2 sense on decoding)
==========================  =================================================================

Slice spacing rule
------------------
Slices are sorted by their position ``d`` along the slice normal; ``m`` is the
median gap between neighbours and the grid is ``d_0 + k * step`` with ``step``
from the first to the last slice. Scanners write ImagePositionPatient as
decimal text rounded to ``q`` mm (``q`` is read from the number of decimals in
the header, e.g. 0.01 for ``"-112.35"``); each component is then off by up to
``q/2``, so a position along the normal ``n`` is off by up to ``q/2 * |n|_1``
(``|n|_1`` = sum of the absolute components: 1 for an axial stack, up to
sqrt(3) for an oblique one), a gap by ``q * |n|_1`` and a gap's difference
from the median gap by ``2 q |n|_1``. The stack is one regular grid when

* every gap satisfies ``|gap - m| <= min(max(5% * m, 0.1 mm, 2 q |n|_1), 25% * m)``, and
* every slice satisfies ``|d_k - (d_0 + k * step)| <= min(max(5% * m, 0.1 mm, q |n|_1), 25% * m)``.

The 25 % cap means no rounding or tolerance can hide a missing slice (a gap of
2 m deviates by 100 %) or a slice half a step out of place. Deviations within
the rounding bound are recorded as ``spacing_rounding: accepted``; larger ones
within tolerance as ``spacing_jitter: accepted_with_warning``; anything else is
``missing_slices`` (every odd gap a whole multiple of ``m``) or
``uneven_spacing``, refused unless ``irregular="resample"``. The in-plane checks
(positions off one line, gantry tilt) also allow the rounding: in-plane drift
below ``2 q sqrt(3)`` is rounding, not tilt.

The reference tools: dicom2nifti (``common.validate_slice_increment``) refuses
when any increment vector differs from the first one by more than
``0.1 mm + 5 %`` per component (``numpy.allclose(rtol=0.05, atol=0.1)``);
dcm2niix warns "Interslice distance varies" when any neighbour distance
differs from the first one by more than 0.2 mm and still converts (with an
equidistant ``_Eq`` copy in recent versions); ITK/SimpleITK's
``ImageSeriesReader`` never refuses: it warns above a relative non-uniformity
of 1e-4 and takes the spacing as the first-to-last distance / (n - 1), as
medseg does, so an accepted stack has SimpleITK's geometry.

No pixel data is touched here; ``StackPlan`` says which frames to decode, in
which order, and how to resample them (``medseg.io.dicom.pixels``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

#: Relative deviation of a slice gap from the step that is still one regular grid (dicom2nifti's ``rtol``).
SPACING_TOLERANCE = 0.05
#: Absolute deviation (mm) still accepted, for thin slices where 5 % is below header precision (dicom2nifti's ``atol``).
SPACING_TOLERANCE_MM = 0.1
#: Nothing above this fraction of the step is ever accepted, whatever the rounding: a missing slice (a gap of
#: twice the step, deviation 100 %) or a slice half a step off stays refused.
MAX_SPACING_TOLERANCE = 0.25
#: Position differences below this are header rounding (mm), not findings.
POSITION_TOLERANCE_MM = 0.01

#: What medseg does with MONOCHROME1 (minimum sample displayed as white), the finding's detail.
MONOCHROME1_RULE = (
    "{n} of {m} frame(s) are MONOCHROME1 (lowest value shown white); stored values inverted over the "
    "BitsStored range (unsigned: 2**BitsStored - 1 - v, signed: -1 - v) before RescaleSlope/Intercept, "
    "as GDCM/SimpleITK do, so higher values are brighter as in MONOCHROME2"
)

_SPLIT_KEYS = (
    ("echo", "echo number"),
    ("temporal", "temporal position"),
    ("stack", "stack id"),
    ("acquisition", "acquisition number"),
    ("trigger", "trigger time"),
)


@dataclass
class Finding:
    kind: str
    action: (
        str  # refused | split | resampled | excluded | dropped | accepted | accepted_with_warning | skipped | inverted
    )
    detail: str

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.kind}: {self.action} ({self.detail})"


@dataclass
class GeometryPolicy:
    irregular: str = "refuse"  # missing slices / uneven spacing: "refuse" or "resample"
    tilt: str = "resample"  # gantry tilt: "resample" (orthogonal grid, as dcm2niix) or "refuse"
    spacing_tolerance: float = SPACING_TOLERANCE  # relative to the step
    spacing_tolerance_mm: float = SPACING_TOLERANCE_MM  # absolute floor of the spacing tolerance
    position_tolerance_mm: float = POSITION_TOLERANCE_MM

    def __post_init__(self):
        if self.irregular not in ("refuse", "resample") or self.tilt not in ("refuse", "resample"):
            raise ValueError(f"irregular/tilt must be 'refuse' or 'resample', got {self.irregular!r}/{self.tilt!r}")


@dataclass
class StackPlan:
    slices: list  # SliceInfo, sorted along the slice normal
    lps: np.ndarray  # output grid: voxel -> LPS mm
    shape: tuple
    findings: list = field(default_factory=list)
    refused: str | None = None
    label: str = ""  # "" for the whole series, else what this part was split by
    step: float | None = None  # slice step found (mm)
    interp: tuple | None = None  # (lo, hi, weight) per output slice, when resampled along the normal
    inplane_shift: np.ndarray | None = None  # (n_source, 2) voxel shifts that undo gantry tilt
    orientation: str = ""

    @property
    def n_slices(self) -> int:
        return int(self.shape[2])


def orientation_name(iop) -> str:
    normal = np.cross(np.asarray(iop[:3]), np.asarray(iop[3:]))
    axis = int(np.argmax(np.abs(normal)))
    if abs(normal[axis]) < np.cos(np.deg2rad(1.0)):
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def plan_series(slices: list, *, policy: GeometryPolicy | None = None, spacing_between: float | None = None):
    """Plan the stacks of one series. Returns ``(plans, series_findings)``; each plan carries both."""
    policy = policy or GeometryPolicy()
    findings: list[Finding] = []
    usable = [s for s in slices if s.iop is not None and s.ipp is not None and s.pixel_spacing is not None]
    if len(usable) < len(slices):
        findings.append(
            Finding(
                "no_geometry",
                "excluded",
                f"{len(slices) - len(usable)} of {len(slices)} frames lack "
                "ImagePositionPatient/ImageOrientationPatient/PixelSpacing",
            )
        )
    loc = [s for s in usable if "LOCALIZER" in s.image_type]
    if loc and len(loc) < len(usable):
        findings.append(Finding("localizer", "excluded", f"{len(loc)} localizer/scout frame(s) (ImageType LOCALIZER)"))
        usable = [s for s in usable if "LOCALIZER" not in s.image_type]
    elif loc:
        findings.append(
            Finding(
                "localizer",
                "skipped",
                f"all {len(loc)} frame(s) are localizer/scout images (ImageType LOCALIZER): not segmented",
            )
        )
        return [], findings
    if not usable:
        return [], findings

    groups: list[list] = []
    for s in usable:
        for g in groups:
            ref = g[0]
            if (s.rows, s.cols) == (ref.rows, ref.cols) and (
                (s.iop == ref.iop and s.pixel_spacing == ref.pixel_spacing)  # the usual case, fast
                or (
                    np.allclose(s.iop, ref.iop, atol=1e-3)
                    and np.allclose(s.pixel_spacing, ref.pixel_spacing, atol=1e-4)
                )
            ):
                g.append(s)
                break
        else:
            groups.append([s])
    if len(groups) > 1:
        groups.sort(key=len, reverse=True)
        desc = ", ".join(f"{len(g)} x {orientation_name(g[0].iop)} {g[0].cols}x{g[0].rows}" for g in groups)
        orients = {tuple(np.round(g[0].iop, 3)) for g in groups}
        if len(orients) > 1:
            findings.append(Finding("mixed_orientation", "split", f"{len(groups)} stacks: {desc}"))
        if len(orients) < len(groups):
            findings.append(Finding("mixed_size", "split", f"{len(groups)} stacks: {desc}"))

    plans = []
    for gi, group in enumerate(groups):
        label = f"part{gi + 1}" if len(groups) > 1 else ""
        for sub_label, sub, sub_findings, refused in _split_duplicates(group, policy):
            full = "-".join(x for x in (label, sub_label) if x)
            plan = _plan_stack(sub, policy, spacing_between, refused)
            plan.label = full
            plan.findings = findings + sub_findings + plan.findings
            n_mono1 = sum(getattr(s, "photometric", "") == "MONOCHROME1" for s in plan.slices)
            if n_mono1:
                plan.findings.append(
                    Finding("monochrome1", "inverted", MONOCHROME1_RULE.format(n=n_mono1, m=len(plan.slices)))
                )
            plans.append(plan)
    return plans, findings


def spacing_tolerances(step: float, rounding: float, policy: GeometryPolicy) -> tuple[float, float, float]:
    """``(gap tolerance, grid tolerance, rounding bound of a gap's deviation)`` in mm (see the module docstring).

    ``rounding`` is ``q * |n|_1``: the most header rounding can move a gap.
    """
    floor = max(policy.spacing_tolerance * step, policy.spacing_tolerance_mm)
    cap = MAX_SPACING_TOLERANCE * step
    return min(max(floor, 2.0 * rounding), cap), min(max(floor, rounding), cap), 2.0 * rounding


def _quantum(slices) -> float:
    """The coarsest rounding of ImagePositionPatient in these slices (mm); 0 when unknown (binary values)."""
    qs = [s.ipp_quantum for s in slices if getattr(s, "ipp_quantum", None)]
    return float(max(qs)) if qs else 0.0


def _normal(iop) -> np.ndarray:
    return np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float))


def _split_duplicates(group: list, policy: GeometryPolicy):
    """Yield (label, slices, findings, refusal) for one orientation group, resolving shared positions."""
    findings: list[Finding] = []
    normal = _normal(group[0].iop)

    def n_dups(items) -> int:
        d = np.sort(np.array([np.dot(s.ipp, normal) for s in items]))
        return int(np.sum(np.diff(d) < policy.position_tolerance_mm)) if len(d) > 1 else 0

    if not n_dups(group):
        yield "", group, findings, None
        return
    seen, unique = set(), []
    for s in group:
        if s.sop_uid not in seen:
            seen.add(s.sop_uid)
            unique.append(s)
    if len(unique) < len(group):
        findings.append(
            Finding(
                "duplicate_instance",
                "dropped",
                f"{len(group) - len(unique)} file(s) repeat an instance already read (same SOPInstanceUID)",
            )
        )
        group = unique
        if not n_dups(group):
            yield "", group, findings, None
            return
    n = n_dups(group)
    for key, name in _SPLIT_KEYS:
        values = [s.split_keys.get(key) for s in group]
        distinct = sorted(set(values), key=lambda v: (v is None, _sortable(v)))
        if len(distinct) < 2 or None in distinct:
            continue
        parts = [[s for s in group if s.split_keys.get(key) == v] for v in distinct]
        if all(n_dups(p) == 0 for p in parts):
            findings.append(
                Finding(
                    "duplicate_positions",
                    "split",
                    f"{n} slice(s) share a position with another; split by {name} into {len(parts)} volumes",
                )
            )
            for v, p in zip(distinct, parts, strict=False):
                yield f"{key}{v}", p, list(findings), None
            return
    reason = (
        f"two or more slices share a position ({n} duplicate position(s), not told apart by echo, temporal "
        "position, stack or acquisition number); expected one slice per position"
    )
    findings.append(Finding("duplicate_positions", "refused", reason))
    yield "", group, findings, reason


def _sortable(v):
    try:
        return (0, float(v), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(v))


def _plan_stack(slices: list, policy: GeometryPolicy, spacing_between: float | None, refused: str | None) -> StackPlan:
    """One stack's plan: its slices sorted along the normal, the grid, and every geometry finding."""
    first = slices[0]
    iop = np.asarray(first.iop, dtype=np.float64)
    row_cos, col_cos = iop[:3], iop[3:]
    normal = np.cross(row_cos, col_cos)
    dr, dc = first.pixel_spacing  # row spacing (between rows), column spacing
    pos = np.array([s.ipp for s in slices], dtype=np.float64)
    d = pos @ normal
    order = np.argsort(d, kind="stable")
    slices, pos, d = [slices[i] for i in order], pos[order], d[order]
    findings: list[Finding] = []
    interp: tuple | None = None
    shift: np.ndarray | None = None
    n_out = len(slices)
    thickness = first.thickness

    if len(slices) == 1:
        step = float(thickness or spacing_between or 1.0)
        source = "SliceThickness" if thickness else ("SpacingBetweenSlices" if spacing_between else "a default of 1 mm")
        findings.append(
            Finding("single_slice", "accepted_with_warning", f"one slice; slice spacing {step:g} mm from {source}")
        )
    else:
        q = _quantum(slices)
        step, n_out, interp, refused = _plan_spacing(d, normal, q, policy, refused, findings)
        if not refused:
            shift, refused = _plan_tilt(pos, d, normal, (row_cos, col_cos), (dr, dc), step, q, policy, findings)
        if not refused and thickness and abs(thickness - step) > policy.spacing_tolerance * abs(step):
            findings.append(
                Finding(
                    "thickness_differs_from_step",
                    "accepted",
                    f"SliceThickness {thickness:g} mm, step between positions {step:.4f} mm: spacing set to the step",
                )
            )

    lps = np.eye(4)
    lps[:3, 0] = row_cos * dc
    lps[:3, 1] = col_cos * dr
    lps[:3, 2] = normal * step
    lps[:3, 3] = pos[0]
    return StackPlan(
        slices=slices,
        lps=lps,
        shape=(first.cols, first.rows, n_out),
        findings=findings,
        refused=refused,
        step=step,
        interp=interp,
        inplane_shift=shift,
        orientation=orientation_name(iop),
    )


def _plan_spacing(
    d: np.ndarray, normal: np.ndarray, q: float, policy: GeometryPolicy, refused: str | None, findings: list
) -> tuple[float, int, tuple | None, str | None]:
    """The slice step along the normal from the sorted positions ``d`` (mm), checked against a regular grid:
    ``(step, output slices, interpolation or None, refusal or None)``; findings are appended to ``findings``."""
    gaps = np.diff(d)
    med = float(np.median(gaps))
    step = float((d[-1] - d[0]) / (len(d) - 1))
    rounding = q * float(np.abs(normal).sum())  # the most header rounding can change one gap (mm)
    tol, tol_pos, round_gap = spacing_tolerances(med, rounding, policy)
    tol_abs = policy.position_tolerance_mm
    dev = np.abs(gaps - med)
    off_grid = np.abs(d - (d[0] + step * np.arange(len(d))))
    if refused:
        pass
    elif dev.max() <= tol and off_grid.max() <= tol_pos:
        if dev.max() > tol_abs and dev.max() <= round_gap:
            findings.append(
                Finding(
                    "spacing_rounding",
                    "accepted",
                    f"slice gaps vary by up to {dev.max():.4f} mm around {med:.4f} mm, within the "
                    f"rounding of positions to {q:g} mm in the header",
                )
            )
        elif dev.max() > tol_abs:
            findings.append(
                Finding(
                    "spacing_jitter",
                    "accepted_with_warning",
                    f"slice gaps vary by up to {dev.max():.4f} mm around {med:.4f} mm (tolerance {tol:.3f} mm)",
                )
            )
    else:
        return _plan_irregular(d, gaps, med, step, tol, tol_pos, policy, findings)
    return step, len(d), None, refused


def _plan_irregular(
    d: np.ndarray,
    gaps: np.ndarray,
    med: float,
    step: float,
    tol: float,
    tol_pos: float,
    policy: GeometryPolicy,
    findings: list,
) -> tuple[float, int, tuple | None, str | None]:
    """Slices off a regular grid (missing slices, uneven spacing): refused, or resampled when ``policy`` says so.
    Returns as ``_plan_spacing``; the step becomes the median gap ``med``."""
    dev = np.abs(gaps - med)
    off_grid = np.abs(d - (d[0] + step * np.arange(len(d))))
    mult = gaps / med
    missing = np.all((dev <= tol) | ((np.abs(mult - np.round(mult)) * med <= tol) & (np.round(mult) >= 2)))
    if dev.max() <= tol:
        kind = "uneven_spacing"
        what = (
            f"uneven slice spacing: slices drift from a regular grid by up to {off_grid.max():.3f} mm "
            f"(step {step:.3f} mm, tolerance {tol_pos:.3f} mm)"
        )
    elif missing:
        n_missing = int(np.sum(np.round(mult) - 1))
        kind = "missing_slices"
        what = (
            f"missing slice(s): uneven slice spacing (gaps {gaps.min():.3f}-{gaps.max():.3f} mm, "
            f"step {med:.3f} mm; {n_missing} slice(s) missing at {int(np.sum(dev > tol))} place(s))"
        )
    else:
        kind = "uneven_spacing"
        what = (
            f"uneven slice spacing (gaps {gaps.min():.3f}-{gaps.max():.3f} mm, median {med:.3f} mm, "
            f"tolerance {tol:.3f} mm)"
        )
    n_fill = int(round((d[-1] - d[0]) / med)) + 1 if med > 0 and np.isfinite(d).all() else -1
    if policy.irregular == "resample" and not 0 < n_fill <= 4 * len(d):
        refused = (
            f"{what}; the regular grid would need {n_fill} slices for {len(d)} source slices: "
            "too sparse to interpolate; expected a regular stack"
        )
        findings.append(Finding(kind, "refused", refused))
        return med, len(d), None, refused
    if policy.irregular == "resample":
        step = med
        n_out = n_fill
        target = d[0] + step * np.arange(n_out)
        hi = np.clip(np.searchsorted(d, target, side="left"), 1, len(d) - 1)
        lo = hi - 1
        w = np.clip((target - d[lo]) / (d[hi] - d[lo]), 0.0, 1.0)
        findings.append(
            Finding(kind, "resampled", f"{what}; linearly interpolated onto {n_out} slices {step:.3f} mm apart")
        )
        return step, n_out, (lo, hi, w), None
    refused = (
        f"{what}; expected a regular stack. Re-export the complete series, or convert with "
        "--resample-irregular to interpolate onto a regular grid"
    )
    findings.append(Finding(kind, "refused", what))
    return med, len(d), None, refused


def _plan_tilt(
    pos: np.ndarray,
    d: np.ndarray,
    normal: np.ndarray,
    cosines: tuple,
    spacing: tuple,
    step: float,
    q: float,
    policy: GeometryPolicy,
    findings: list,
) -> tuple[np.ndarray | None, str | None]:
    """In-plane drift of each slice relative to the first (zero unless the gantry was tilted): accepted when
    below 0.1 voxel, else undone by per-slice in-plane shifts or refused as ``policy`` says. Returns
    ``(shifts or None, refusal or None)``; findings are appended to ``findings``."""
    row_cos, col_cos = cosines
    dr, dc = spacing
    tol_abs = policy.position_tolerance_mm
    t = (pos - pos[0]) - np.outer(d - d[0], normal)
    dd = d - d[0]
    v = (dd @ t) / float(dd @ dd)
    resid = np.linalg.norm(t - np.outer(dd, v), axis=1).max()
    drift = float(np.linalg.norm(v) * dd[-1])
    inplane_rounding = 2.0 * q * np.sqrt(3.0)  # in-plane offset rounding can fake, first to last
    if resid > max(tol_abs, policy.spacing_tolerance * abs(step), inplane_rounding):
        refused = f"slice positions do not lie on one line (off by up to {resid:.3f} mm); expected one stack"
        findings.append(Finding("non_collinear", "refused", refused))
        return None, refused
    if drift > max(tol_abs, inplane_rounding):
        angle = float(np.degrees(np.arctan(np.linalg.norm(v))))
        what = f"slices are not stacked along their normal (gantry tilt {angle:.2f} deg, drift {drift:.2f} mm)"
        if drift < 0.1 * min(dr, dc):
            findings.append(Finding("gantry_tilt", "accepted_with_warning", f"{what}; below 0.1 voxel"))
        elif policy.tilt == "resample":
            shift = np.stack([(t @ row_cos) / dc, (t @ col_cos) / dr], axis=1)
            findings.append(
                Finding(
                    "gantry_tilt",
                    "resampled",
                    f"{what}; each slice shifted in-plane onto an "
                    "orthogonal grid (linear interpolation, outside filled with the minimum)",
                )
            )
            return shift, None
        else:
            refused = f"{what}; expected an orthogonal stack (convert with tilt correction)"
            findings.append(Finding("gantry_tilt", "refused", what))
            return None, refused
    return None, None
