"""Quality verdicts per structure, without ground truth: ``qc`` and ``qc_reasons`` in ``volumes.csv``.

Every row of ``volumes.csv`` gets ``qc`` (``pass`` / ``review`` / ``fail``) and
``qc_reasons``: short ``;``-separated codes with the numbers that triggered
them, e.g. ``low_confidence(0.62<0.80); fragmented(largest 41%)``. The verdict
is the worst severity among the reasons (no reason: ``pass``). Signals, all
available without a reference segmentation:

=====================  ======================================================================
code                   signal
=====================  ======================================================================
low_confidence         mean winning softmax probability inside the structure (predict sidecar
                       ``confidence``)
pass_disagreement      Dice between test-time mirrored passes (predict sidecar ``pass_agreement``,
                       only when ``inference.tta_flips`` mirrors)
fragmented             share of the volume in the largest connected component
cut_by_fov             ``touches_border``: the volume is a lower bound
wrong_side             a left/right structure whose centroid lies on the other side of the body's
                       midline (RAS+: +x is the patient's **right**; see ``medseg.reporting.volumes``)
volume_outlier         the cohort's robust z or a reference range (``medseg.reporting.cohort``)
volume_unusual         outside the range of the training cases' volumes (input profile)
position_unusual       centroid's left-right distance from the midline outside its training range
                       (input profile: a mirrored image, a liver found on the left)
intensity_unusual      the structure's median intensity outside its training range (input profile)
absent_usually_present absent here, present in most cases of the cohort
not_ct / not_mr / intensity / fov / spacing / body_shape / noise
                       the input unlike the model's training data (case level: every row of the case)
nothing_found          no structure found in the whole image
=====================  ======================================================================

Every threshold is a field of ``Thresholds`` below, with the reason for its value.

The input check compares an image with an *input profile* of the training data
(``training_profile``: per-image statistics and per-structure volume/intensity
ranges over the training cases). A checkpoint that stores one under
``input_profile`` is checked against it (``expected_from_checkpoint``); one
that does not is checked against what its preprocessing implies (a CT
intensity scheme expects Hounsfield units with air; the training spacing).

Reading a checkpoint is not this module's (reporting loads no model code): callers pass what the model expects
(``expected``, from ``medseg.inference.outputs.expected_for_model``), or that function itself (``expected_of``).

Entry points: ``assess_case`` (one case's rows, at predict/report time),
``add_cohort_verdicts`` (the long table, after ``cohort.add_outlier_flags``),
``verdicts_by_structure`` (for the DICOM SR writer).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from medseg.io.readers import case_id_for
from medseg.io.volume import Volume
from medseg.reporting.volumes import structure_rows

PASS, REVIEW, FAIL = "pass", "review", "fail"
_RANK = {PASS: 0, REVIEW: 1, FAIL: 2}
PROFILE_SCHEMA = "medseg.input_profile/1"
COLUMNS = ["confidence", "pass_agreement", "midline_x_mm", "qc", "qc_reasons"]


@dataclass(frozen=True)
class Thresholds:
    """Every threshold of the verdicts, with why it has its value.

    Measured with ``benchmarks/bench_qc.py`` (held-out and degraded phantoms, other anatomy and
    modality; results under ``benchmarks/results/``): failures are structures with Dice < 0.8.
    """

    #: Mean winning probability below which a structure is reviewed / failed. A trained network is
    #: >0.9 sure inside structures it segments well; the boundary voxels alone pull a small
    #: structure to ~0.85. Below 0.80 a sizeable share of its voxels were near-ties.
    confidence_review: float = 0.80
    confidence_fail: float = 0.60
    #: Dice between mirrored test-time passes: a network that is right is right in every mirror;
    #: 0.90 is below what a well-segmented organ reaches (boundary voxels only).
    agreement_review: float = 0.90
    agreement_fail: float = 0.75
    #: Share of the volume in the largest 26-connected component. Networks leave specks (a few
    #: voxels) on good segmentations: 0.90 tolerates them; below 0.60 the structure is in pieces.
    largest_share_review: float = 0.90
    largest_share_fail: float = 0.60
    #: A structure cut by the field of view has a volume that is only a lower bound: review.
    border_is_review: bool = True
    #: The centroid must be this far (mm) on the wrong side of the midline to be called wrong-side:
    #: structures near the midline (pancreas head, bladder) and a midline estimate off by a few
    #: mm must not trip it. Kidneys lie 35-60 mm from the midline.
    side_margin_mm: float = 15.0
    #: Cohort outliers (|robust z| > cohort.Z_THRESHOLD or outside a reference range): review;
    #: beyond this |z| it is a fail (volume several times off: a leak or a missed half).
    outlier_fail_z: float = 10.0
    #: Absent in a case while present in at least this share of the cohort (at least ``min_cases``).
    absent_present_share: float = 0.8
    min_cases: int = 5
    #: Training-range checks widen the training cases' [min, max] by this share of the range (and
    #: by at least the floors below) before a value is unusual; a value beyond ``far`` times that
    #: widening is a fail.
    range_margin: float = 0.25
    far: float = 3.0
    #: Volume against the training cases' [min, max]: review outside [min / 1.5, max x 1.5], fail outside
    #: [min / 3, max x 3]. Ratios, not differences: organ volumes vary by a factor (body size), and a few
    #: training cases do not span the population's range.
    volume_factor_review: float = 1.5
    volume_factor_fail: float = 3.0
    intensity_floor_hu: float = 30.0  # per-structure median intensity (HU for CT models)
    position_floor_mm: float = 15.0  # centroid's left-right distance from the midline
    #: Image statistics (body percentiles, HU) outside the training range by this much: review,
    #: ``far`` times as much: fail (a +1024 HU intercept error, an MR given to a CT model).
    image_intensity_floor_hu: float = 60.0
    #: Field of view / body size: below ``fov_review`` (``fov_fail``) x the training minimum, or
    #: above 1/``fov_review`` x the training maximum, along any axis.
    fov_review: float = 0.8
    fov_fail: float = 0.5
    #: Width/depth ratio of the body outside the training range by this share: another body part
    #: (a head is narrower than deep; an abdomen wider).
    body_aspect_margin: float = 0.2
    #: Image noise over this multiple of the training maximum: review.
    noise_review: float = 2.5
    #: A voxel size this many times coarser than the model's along an axis: review (detail lost).
    spacing_review: float = 3.0
    #: HU below which a CT image must have voxels (air at -1000, fat at -100): an image without any
    #: is not in Hounsfield units (an MR, a missing rescale intercept).
    ct_min_below_hu: float = -200.0
    #: An MR model's input whose 1st percentile is below this is in Hounsfield units (air at -1000), not MR signal.
    mr_p01_above: float = -500.0


THRESHOLDS = Thresholds()

_SIDE = re.compile(r"(?:^|[_\s-])(left|right|lt|rt|l|r|sin|dx)(?:$|[_\s-])")
_LEFT = {"left", "lt", "l", "sin"}


def side_of(name: str) -> str | None:
    """``"left"``, ``"right"`` or None from a structure name (``kidney_left``, ``Lt_Lung``, ``lung_r``...)."""
    m = _SIDE.search(str(name).lower())
    if not m:
        return None
    return "left" if m.group(1) in _LEFT else "right"


# -- input profile ------------------------------------------------------------------------------


def _ras_axes(affine: np.ndarray) -> np.ndarray:
    """For each RAS axis, the array axis closest to it."""
    import nibabel as nib

    return nib.orientations.io_orientation(affine)[:, 0].astype(int).argsort()


def _sub(a: np.ndarray, target: int = 2_000_000) -> tuple[np.ndarray, int]:
    step = max(1, int(np.ceil((a.size / target) ** (1 / 3))))
    return a[::step, ::step, ::step], step


def body_mask(image: np.ndarray, ct: bool | None = None) -> np.ndarray:
    """Voxels of the body: above -500 HU for CT (air below), else above the mean of the 2nd and 98th percentiles' lower
    third."""
    a = np.asarray(image, dtype=np.float32)
    finite = np.isfinite(a)
    vals = a[finite]
    if vals.size == 0:
        return np.zeros(a.shape, bool)
    if ct is None:
        ct = float(vals.min()) < -500
    if ct:
        return finite & (a > -500)
    lo, hi = np.percentile(vals, [2, 98])
    return finite & (a > lo + (hi - lo) / 3)


def input_profile(image, *, ct: bool | None = None) -> dict:
    """Statistics of one image (a ``Volume``): spacing, field of view and body extent per RAS axis (mm),
    body width/depth ratio, intensity percentiles (whole image and body), noise (robust SD of
    neighbour differences inside the body)."""
    arr = np.asarray(image.array)
    affine = image.affine
    axes = _ras_axes(affine)
    spacing = np.asarray(image.spacing, dtype=float)[axes]
    shape = np.asarray(arr.shape[:3], dtype=float)[axes]
    sub, step = _sub(arr)
    sub = np.asarray(sub, dtype=np.float32)
    finite = sub[np.isfinite(sub)]
    prof = {f"spacing_{a}_mm": float(s) for a, s in zip("xyz", spacing, strict=False)}
    prof.update({f"fov_{a}_mm": float(n * s) for a, n, s in zip("xyz", shape, spacing, strict=False)})
    if finite.size == 0:
        return prof
    p = np.percentile(finite, [0, 1, 50, 99])
    prof.update(image_min=float(p[0]), image_p01=float(p[1]), image_p50=float(p[2]), image_p99=float(p[3]))
    body = body_mask(sub, ct)
    if body.any():
        bvals = sub[body]
        b = np.percentile(bvals, [5, 50, 95])
        prof.update(body_p05=float(b[0]), body_p50=float(b[1]), body_p95=float(b[2]), body_fraction=float(body.mean()))
        idx = np.nonzero(body)
        sub_spacing = np.asarray(image.spacing, dtype=float) * step
        ext = [(int(idx[ax].max()) - int(idx[ax].min()) + 1) * sub_spacing[ax] for ax in range(3)]
        ext = np.asarray(ext)[axes]
        prof.update({f"body_{a}_mm": float(e) for a, e in zip("xyz", ext, strict=False)})
        prof["body_aspect"] = float(ext[0] / ext[1]) if ext[1] > 0 else float("nan")
        # noise: differences of neighbours along array axis 0 on a few full-resolution slices, inside the body
        ks = np.linspace(0, arr.shape[2] - 1, 5)[1:-1].round().astype(int) if arr.shape[2] > 2 else [0]
        diffs = []
        for k in sorted(set(int(k) for k in ks)):
            sl = np.asarray(arr[:, :, k], dtype=np.float32)
            m = body_mask(sl, ct)
            d = np.diff(sl, axis=0)[m[1:] & m[:-1]]
            diffs.append(d[np.isfinite(d)])
        dv = np.concatenate(diffs) if diffs else np.zeros(0)
        if dv.size > 100:
            prof["noise"] = float(1.4826 * np.median(np.abs(dv - np.median(dv))) / np.sqrt(2))
    return prof


def training_profile(cases, table=None, *, modality: str = "CT") -> dict:
    """The input profile of a training set: ``cases`` yields ``(image Volume, label Volume or None)``.

    Per image statistic its [min, max] over the cases; per structure of ``table`` the [min, max] of
    its volume (mL) and median intensity, and the share of cases where it is present. Plain JSON:
    store it in a checkpoint as ``input_profile`` (``expected_from_checkpoint`` reads it).
    """
    ct = modality.upper() == "CT"
    stats: dict[str, list] = {}
    per: dict[str, dict[str, list]] = {}
    n = 0
    for image, labels in cases:
        n += 1
        for k, v in input_profile(image, ct=ct).items():
            stats.setdefault(k, []).append(v)
        if labels is not None and table is not None:
            mid = midline_x(image, labels)
            for r in structure_rows("", labels, table, image):
                s = per.setdefault(
                    r["structure"], {"volume_ml": [], "intensity_median": [], "midline_offset_mm": [], "present": []}
                )
                found = r["status"] != "absent"
                s["present"].append(found)
                if found:
                    s["volume_ml"].append(r["volume_ml"])
                    if mid is not None:
                        s["midline_offset_mm"].append(r["centroid_x_mm"] - mid)
                    if r.get("intensity_median") is not None:
                        s["intensity_median"].append(r["intensity_median"])
    rng = {k: [float(np.nanmin(v)), float(np.nanmax(v))] for k, v in stats.items() if np.isfinite(v).any()}
    structures = {}
    for name, s in per.items():
        entry = {"present_share": float(np.mean(s["present"]))}
        for k in ("volume_ml", "intensity_median", "midline_offset_mm"):
            if s[k]:
                entry[k] = [float(min(s[k])), float(max(s[k]))]
        structures[name] = entry
    return {
        "schema": PROFILE_SCHEMA,
        "modality": modality.upper(),
        "n_cases": n,
        "image": rng,
        "structures": structures,
    }


def expected_from_checkpoint(ckpt: dict) -> dict:
    """What a checkpoint expects of its inputs: its stored ``input_profile`` when it has one, else
    the modality its intensity scheme implies (``ct_*``: CT) and its training spacing."""
    prof = dict(ckpt.get("input_profile") or {})
    pre = ckpt.get("preprocessing") or {}
    scheme = str(pre.get("intensity", ""))
    prof.setdefault("modality", "CT" if scheme.startswith("ct") else "MR" if scheme == "zscore" else "")
    if pre.get("spacing"):
        prof["model_spacing_mm"] = [float(s) for s in pre["spacing"]]
    return prof


def _widen(lo: float, hi: float, floor: float, th: Thresholds) -> float:
    return max(th.range_margin * (hi - lo), floor)


def _range_check(value, rng, floor: float, th: Thresholds, fmt: str = "{:.0f}") -> tuple[str, str] | None:
    """``(severity, "value<lo"/"value>hi")`` when ``value`` lies outside ``rng`` widened; else None."""
    if value is None or rng is None or not np.isfinite(value):
        return None
    lo, hi = rng
    w = _widen(lo, hi, floor, th)
    if lo - w <= value <= hi + w:
        return None
    far = value < lo - th.far * w or value > hi + th.far * w
    text = (
        f"{fmt.format(value)}<{fmt.format(lo - w)}" if value < lo - w else f"{fmt.format(value)}>{fmt.format(hi + w)}"
    )
    return (FAIL if far else REVIEW), text


def input_reasons(image, expected: dict | None, th: Thresholds = THRESHOLDS) -> list[tuple[str, str]]:
    """Case-level ``(severity, reason)`` pairs for an input unlike the model's training data."""
    if image is None or not expected:
        return []
    ct = str(expected.get("modality", "")).upper() == "CT"
    prof = input_profile(image, ct=ct if expected.get("modality") else None)
    out: list[tuple[str, str]] = []
    if ct and prof.get("image_min") is not None and prof["image_min"] > th.ct_min_below_hu:
        out.append((FAIL, f"not_ct(min {prof['image_min']:.0f}>{th.ct_min_below_hu:.0f} HU)"))
    mr = str(expected.get("modality", "")).upper() == "MR"
    if mr and prof.get("image_p01") is not None and prof["image_p01"] < th.mr_p01_above:
        out.append((FAIL, f"not_mr(p01 {prof['image_p01']:.0f}<{th.mr_p01_above:.0f}: Hounsfield units?)"))
    spacing = expected.get("model_spacing_mm")
    if spacing:
        coarsest = max(spacing)
        for a in "xyz":
            v = prof.get(f"spacing_{a}_mm")
            if v is not None and v > th.spacing_review * coarsest:
                out.append((REVIEW, f"spacing({a} {v:.1f}>{th.spacing_review * coarsest:.1f} mm)"))
    ranges = expected.get("image") or {}
    if ranges:
        floor = th.image_intensity_floor_hu if ct else 0.0
        for k in ("body_p05", "body_p50", "body_p95"):
            if ct and k in ranges:
                hit = _range_check(prof.get(k), ranges[k], floor, th)
                # the tails (p05, p95) move with noise, which ``noise`` judges: they count only when far off
                if hit and (k == "body_p50" or hit[0] == FAIL):
                    out.append((hit[0], f"intensity({k} {hit[1]})"))
        for a in "xyz":
            for key in (f"fov_{a}_mm", f"body_{a}_mm"):
                v, r = prof.get(key), ranges.get(key)
                if v is None or r is None:
                    continue
                if v < th.fov_fail * r[0]:
                    out.append((FAIL, f"fov({key} {v:.0f}<{th.fov_fail * r[0]:.0f})"))
                elif v < th.fov_review * r[0] or v > r[1] / th.fov_review:
                    out.append((REVIEW, f"fov({key} {v:.0f} vs {r[0]:.0f}-{r[1]:.0f})"))
        r, v = ranges.get("body_aspect"), prof.get("body_aspect")
        if r is not None and v is not None and np.isfinite(v):
            if v < r[0] * (1 - th.body_aspect_margin) or v > r[1] * (1 + th.body_aspect_margin):
                out.append((REVIEW, f"body_shape(width/depth {v:.2f} vs {r[0]:.2f}-{r[1]:.2f})"))
        r, v = ranges.get("noise"), prof.get("noise")
        if r is not None and v is not None and r[1] > 0 and v > th.noise_review * r[1]:
            out.append((REVIEW, f"noise({v:.0f}>{th.noise_review * r[1]:.0f})"))
    return out


def midline_x(image=None, labels=None) -> float | None:
    """The body's midline as a RAS x (mm): the centre of the body mask's left-right extent in the
    image; without an image, the centroid of all labelled voxels (biased towards a large lateral organ)."""
    if image is not None:
        arr = np.asarray(image.array)
        sub, step = _sub(arr)
        m = body_mask(np.asarray(sub, dtype=np.float32))
        if m.any():
            ijk = np.stack(np.nonzero(m)).astype(np.float64) * step
            x = image.affine[0, :3] @ ijk + image.affine[0, 3]
            lo, hi = np.percentile(x, [1, 99])  # the body's left-right extent (robust to a stray table voxel)
            return float((lo + hi) / 2)
    if labels is not None:
        lab = np.asarray(labels.array)
        sub, step = _sub(lab)
        ijk = np.stack(np.nonzero(sub > 0)).astype(np.float64) * step
        if ijk.size:
            return float((labels.affine[0, :3] @ ijk + labels.affine[0, 3]).mean())
    return None


# -- verdicts -----------------------------------------------------------------------------------


def _num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


def row_reasons(row: dict, th: Thresholds = THRESHOLDS, expected: dict | None = None) -> list[tuple[str, str]]:
    """``(severity, reason)`` for one row from its own columns (no cohort): confidence, mirrored-pass
    agreement, fragmentation, border, wrong side and, with ``expected``, the training ranges."""
    out: list[tuple[str, str]] = []
    status = row.get("status")
    if status in (None, "absent"):
        return out
    if status == "below_min_size":
        out.append((REVIEW, "below_min_size"))
    if status == "not_in_label_table":
        out.append((REVIEW, "not_in_label_table"))
    c = _num(row.get("confidence"))
    if c is not None and c < th.confidence_review:
        out.append(
            (
                FAIL if c < th.confidence_fail else REVIEW,
                f"low_confidence({c:.2f}<{th.confidence_fail if c < th.confidence_fail else th.confidence_review:.2f})",
            )
        )
    g = _num(row.get("pass_agreement"))
    if g is not None and g < th.agreement_review:
        out.append(
            (
                FAIL if g < th.agreement_fail else REVIEW,
                "pass_disagreement(dice "
                f"{g:.2f}<{th.agreement_fail if g < th.agreement_fail else th.agreement_review:.2f})",
            )
        )
    vol, big = _num(row.get("volume_ml")), _num(row.get("largest_component_ml"))
    if vol and big is not None:
        share = big / vol
        if share < th.largest_share_review:
            n = row.get("n_components")
            out.append(
                (
                    FAIL if share < th.largest_share_fail else REVIEW,
                    f"fragmented(largest {100 * share:.0f}%, {n} parts)",
                )
            )
    border = row.get("touches_border")
    if th.border_is_review and border is not None and _num(border) is not None and bool(border):
        out.append((REVIEW, "cut_by_fov"))
    side, mid, cx = side_of(row.get("structure", "")), _num(row.get("midline_x_mm")), _num(row.get("centroid_x_mm"))
    if side and mid is not None and cx is not None:
        offset = cx - mid  # RAS+: +x is the patient's right
        wrong = offset < -th.side_margin_mm if side == "right" else offset > th.side_margin_mm
        if wrong:
            out.append(
                (
                    FAIL,
                    f"wrong_side({side} structure {abs(offset):.0f} mm {'left' if offset < 0 else 'right'} of midline)",
                )
            )
    s = ((expected or {}).get("structures") or {}).get(row.get("structure"))
    if s:
        rng = s.get("volume_ml")
        if rng and vol is not None and rng[0] > 0:
            lo, hi = rng[0] / th.volume_factor_review, rng[1] * th.volume_factor_review
            if not lo <= vol <= hi:
                far = vol < rng[0] / th.volume_factor_fail or vol > rng[1] * th.volume_factor_fail
                out.append(
                    (
                        FAIL if far else REVIEW,
                        f"volume_unusual({vol:.0f}{'<' if vol < lo else '>'}{lo if vol < lo else hi:.0f} mL)",
                    )
                )
        hit = _range_check(_num(row.get("intensity_median")), s.get("intensity_median"), th.intensity_floor_hu, th)
        if hit:
            out.append((hit[0], f"intensity_unusual(median {hit[1]})"))
        if mid is not None and cx is not None:
            hit = _range_check(cx - mid, s.get("midline_offset_mm"), th.position_floor_mm, th)
            if hit:
                out.append((hit[0], f"position_unusual(x from midline {hit[1]} mm)"))
    return out


def _verdict(reasons: list[tuple[str, str]]) -> tuple[str, str]:
    if not reasons:
        return PASS, ""
    worst = max((r[0] for r in reasons), key=_RANK.__getitem__)
    order = sorted(reasons, key=lambda r: -_RANK[r[0]])
    return worst, "; ".join(dict.fromkeys(r[1] for r in order))


def _parse(qc: str, reasons: str) -> list[tuple[str, str]]:
    """Existing reasons of a row (their severity is the row's verdict: only the worst is kept)."""
    if not isinstance(reasons, str) or not reasons.strip():
        return []
    sev = qc if qc in _RANK else REVIEW
    return [(sev, r.strip()) for r in reasons.split(";") if r.strip()]


def assess_case(
    rows: list[dict],
    *,
    image=None,
    labels=None,
    confidence: dict | None = None,
    agreement: dict | None = None,
    expected: dict | None = None,
    th: Thresholds = THRESHOLDS,
) -> list[dict]:
    """Add ``confidence``, ``pass_agreement``, ``midline_x_mm``, ``qc`` and ``qc_reasons`` to one case's
    ``volumes.csv`` rows (in place; returned).

    ``image``/``labels``: Volumes on one grid (the image gives the midline and the input check);
    ``confidence``/``agreement``: ``{structure: value}`` from the predict sidecar; ``expected``: the
    model's input profile (``expected_from_checkpoint``).
    """
    mid = midline_x(image, labels) if (image is not None or labels is not None) else None
    case_level = input_reasons(image, expected, th)
    if rows and all(r.get("status") == "absent" for r in rows):
        case_level.append((REVIEW, "nothing_found"))
    per_row = []
    for r in rows:
        name = r.get("structure")
        if confidence and confidence.get(name) is not None:
            r["confidence"] = float(confidence[name])
        if agreement and agreement.get(name) is not None:
            r["pass_agreement"] = float(agreement[name])
        if mid is not None:
            r["midline_x_mm"] = mid
        per_row.append(row_reasons(r, th, expected))
    flipped = mirrored_structures(rows, expected, th)
    for r, reasons in zip(rows, per_row, strict=False):
        extra = (
            [(REVIEW, f"mirrored_anatomy({', '.join(flipped)} on the other side)")]
            if flipped and side_of(r.get("structure", ""))
            else []
        )
        r["qc"], r["qc_reasons"] = _verdict(reasons + extra + case_level)
    return rows


def mirrored_structures(rows: list[dict], expected: dict | None, th: Thresholds = THRESHOLDS) -> list[str]:
    """Structures that always lie on one side in the training data (their midline offsets all beyond
    ``side_margin_mm`` on one side) and lie across the midline here: an image mirrored left-right
    (a wrong header) or mirrored anatomy. Then no left/right label of the case can be trusted."""
    found = []
    structures = (expected or {}).get("structures") or {}
    for r in rows:
        rng = (structures.get(r.get("structure")) or {}).get("midline_offset_mm")
        mid, cx = _num(r.get("midline_x_mm")), _num(r.get("centroid_x_mm"))
        if not rng or mid is None or cx is None or r.get("status") == "absent":
            continue
        off = cx - mid  # crossed the midline although every training case has it beyond the margin on one side
        if (rng[0] > th.side_margin_mm and off < 0) or (rng[1] < -th.side_margin_mm and off > 0):
            found.append(str(r.get("structure")))
    return found


def add_cohort_verdicts(df, th: Thresholds = THRESHOLDS):
    """``qc``/``qc_reasons`` on a long table (a copy), adding the cohort's signals to what ``assess_case``
    found: volume outliers (``cohort.add_outlier_flags`` columns) and structures absent in a case
    while present in most. Rows never assessed get their row-level reasons here."""
    import pandas as pd

    df = df.copy(deep=False)  # copy-on-write (pandas 3): only the two columns written below are new
    for col in ("qc", "qc_reasons"):
        if col not in df.columns:
            df[col] = pd.NA
    present_share = {}
    for s, part in df.groupby("structure"):
        cases = part["case_id"].nunique()
        if cases >= th.min_cases:
            present_share[s] = float((part["status"] != "absent").mean())
    qcs, texts = [], []
    for row in _records(df):
        if isinstance(row.get("qc"), str) and row["qc"] in _RANK:
            reasons = _parse(row["qc"], row.get("qc_reasons"))
        else:
            reasons = row_reasons(row, th)
        if row.get("outlier") is True or (
            row.get("outlier") is not None and not pd.isna(row.get("outlier")) and bool(row["outlier"])
        ):
            z = _num(row.get("robust_z"))
            if row.get("outlier_basis") == "reference_range":
                reasons.append((REVIEW, f"volume_outlier({row.get('volume_ml'):.0f} mL outside reference range)"))
            else:
                sev = FAIL if z is not None and abs(z) > th.outlier_fail_z else REVIEW
                reasons.append((sev, f"volume_outlier(z={z:.1f})" if z is not None else "volume_outlier"))
        share = present_share.get(row.get("structure"))
        if row.get("status") == "absent" and share is not None and share >= th.absent_present_share:
            reasons.append((REVIEW, f"absent_usually_present({100 * share:.0f}% of cases)"))
        q, t = _verdict(reasons)
        qcs.append(q)
        texts.append(t)
    df["qc"] = qcs
    df["qc_reasons"] = texts
    return df


def _records(df, chunk: int = 10_000):
    """``df.to_dict("records")``, a chunk of rows at a time: 1,000,000 rows as dicts at once take several GB."""
    for start in range(0, len(df), chunk):
        yield from df.iloc[start : start + chunk].to_dict("records")


def verdicts_by_structure(rows) -> dict[str, str]:
    """``{structure: "pass" | "review" | "fail"}`` from ``volumes.csv`` rows (dicts or a DataFrame);
    several cases: the worst. Rows without a verdict are judged from their own columns."""
    records = rows.to_dict("records") if hasattr(rows, "to_dict") else list(rows)
    out: dict[str, str] = {}
    for r in records:
        q = r.get("qc")
        if not (isinstance(q, str) and q in _RANK):
            q = _verdict(row_reasons(r))[0]
        name = str(r.get("structure"))
        if name not in out or _RANK[q] > _RANK[out[name]]:
            out[name] = q
    return out


def thresholds_dict(th: Thresholds = THRESHOLDS) -> dict:
    return asdict(th)


# -- from files (``medseg report``) -------------------------------------------------------------


def _sidecar(label_path) -> dict:
    p = Path(label_path).parent / f"{case_id_for(label_path)}.json"
    try:
        side = json.loads(p.read_text())
    except (OSError, ValueError):
        return {}
    return side if isinstance(side, dict) else {}


def assess_from_files(
    rows: list[dict],
    label_path,
    labels,
    image_array=None,
    th: Thresholds = THRESHOLDS,
    expected_of: Callable[[str], dict] | None = None,
) -> list[dict]:
    """``assess_case`` for a label map on disk: confidence, pass agreement and the model (for the input
    check) from its predict sidecar, when there is one; ``image_array`` on the label map's grid.
    ``expected_of``: what the model at a path expects of its inputs (``medseg.inference.outputs.expected_for_model``);
    None: no input check."""
    side = _sidecar(label_path)
    model = side.get("model") or {}
    path = model.get("model_path")
    expected = expected_of(path) if isinstance(path, str) and expected_of is not None else {}
    image = Volume(np.asarray(image_array), labels.affine) if image_array is not None else None
    return assess_case(
        rows,
        image=image,
        labels=labels,
        confidence=side.get("confidence"),
        agreement=side.get("pass_agreement"),
        expected=expected,
        th=th,
    )


def assess_prediction(
    case_id: str, labels, table, image=None, expected: dict | None = None, th: Thresholds = THRESHOLDS
) -> list[dict]:
    """One predicted case's ``volumes.csv`` rows with verdicts, from what ``write_case_outputs`` holds: the label
    map (its ``meta`` has the predictor's ``confidence`` / ``pass_agreement``), the input image and what the model
    expects of its inputs (``expected``, for the input check). For the sidecar (``sidecar_verdicts``) and the SR
    (``verdicts_by_structure``)."""
    rows = structure_rows(case_id, labels, table, image)
    meta = getattr(labels, "meta", None) or {}
    return assess_case(
        rows,
        image=image,
        labels=labels,
        confidence=meta.get("confidence"),
        agreement=meta.get("pass_agreement"),
        expected=expected,
        th=th,
    )


def sidecar_verdicts(rows) -> dict[str, dict]:
    """``{structure: {"qc": ..., "qc_reasons": ...}}`` for a predict sidecar (the case's own signals, no cohort)."""
    records = rows.to_dict("records") if hasattr(rows, "to_dict") else list(rows)
    return {str(r["structure"]): {"qc": r.get("qc"), "qc_reasons": r.get("qc_reasons") or ""} for r in records}
