"""QC pictures: one PNG montage per case, label contours over the image.

One row per structure found (up to ``max_rows``), three panels: axial,
coronal and sagittal slices through the structure's centroid. Every
structure's contour is drawn in its label-table colour on every panel; the
row's own structure gets a thicker line.

Layout: the volume is first permuted/flipped losslessly to the closest RAS
orientation (``medseg.io.geometry.to_closest_ras``; an oblique grid is shown
in its own slices, which are the closest to true axial/coronal/sagittal), then
shown in the radiological convention: axial and coronal with the patient's
right on the left of the picture, anterior up (axial) or superior up
(coronal); sagittal with anterior on the left, superior up. Pixels keep their
physical aspect ratio (from the voxel spacing).

Grey levels: a CT soft-tissue window (level 40, width 400 HU) when the image
looks like CT (minimum below -500), else its 1st-99th percentiles; without an
image the panels show the label map alone on black.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medseg.io.atomic import atomic_path
from medseg.io.geometry import to_closest_ras
from medseg.io.volume import Volume
from medseg.labels import PALETTE, LabelTable, display_colors
from medseg.reporting.volumes import structure_rows

CT_WINDOW = (40.0, 400.0)  # level, width (HU)


def colour_of(table: LabelTable, index: int) -> tuple[float, float, float]:
    """The structure's display colour (``medseg.labels.display_colors``: distinct, as in the SEG and RTSTRUCT)."""
    r, g, b = display_colors(table).get(index) or PALETTE[index % len(PALETTE)]
    return (r / 255.0, g / 255.0, b / 255.0)


def grey_window(image: np.ndarray | None, window: tuple[float, float] | None = None) -> tuple[float, float]:
    """``(vmin, vmax)`` for display; see the module docstring."""
    if window is not None:
        level, width = window
        return level - width / 2, level + width / 2
    if image is None:
        return 0.0, 1.0
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return 0.0, 1.0
    if finite.min() < -500:
        level, width = CT_WINDOW
        return level - width / 2, level + width / 2
    lo, hi = np.percentile(finite, [1, 99])
    return float(lo), float(hi if hi > lo else lo + 1)


def _panels(
    lab: np.ndarray, img: np.ndarray | None, spacing, ijk
) -> list[tuple[str, np.ndarray, np.ndarray | None, float]]:
    """``(title, labels2d, image2d, aspect)`` for the three views, oriented for display (origin lower)."""
    i, j, k = ijk
    sx, sy, sz = spacing
    views = [
        ("axial", lambda a: a[:, :, k].T[:, ::-1], sy / sx),  # rows y (A up), columns x (patient right on the left)
        ("coronal", lambda a: a[:, j, :].T[:, ::-1], sz / sx),  # rows z (S up), columns x
        ("sagittal", lambda a: a[i, :, :].T[:, ::-1], sz / sy),  # rows z, columns y (anterior on the left)
    ]
    return [(name, f(lab), f(img) if img is not None else None, aspect) for name, f, aspect in views]


def write_montage(
    path: str | os.PathLike,
    labels: np.ndarray,
    affine: np.ndarray,
    table: LabelTable,
    image: np.ndarray | None = None,
    *,
    rows: list[dict] | None = None,
    title: str = "",
    window: tuple[float, float] | None = None,
    max_rows: int = 24,
    dpi: int = 80,
) -> Path | None:
    """Write the montage PNG for one case (``labels``/``image`` on one grid); None when no structure is found.

    ``rows``: this case's ``volumes.csv`` rows (for the centroids and names); computed when not given.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if rows is None:
        rows = structure_rows("", Volume(labels, affine), table)
    found = [r for r in rows if r.get("voxel_count") and r["voxel_count"] > 0][:max_rows]
    if not found:
        return None
    lab_ras, aff_ras, ornt = to_closest_ras(np.asarray(labels), affine)
    img_ras = to_closest_ras(np.asarray(image, dtype=np.float32), affine)[0] if image is not None else None
    spacing = np.linalg.norm(aff_ras[:3, :3], axis=0)
    vmin, vmax = grey_window(img_ras, window)
    inv = np.linalg.inv(aff_ras)
    indices = sorted({int(r["label"]) for r in found})

    fig, axes = plt.subplots(len(found), 3, figsize=(9, 3.0 * len(found)), squeeze=False)
    for row_i, r in enumerate(found):
        centre = inv @ np.array([r["centroid_x_mm"], r["centroid_y_mm"], r["centroid_z_mm"], 1.0])
        ijk = [int(np.clip(round(c), 0, n - 1)) for c, n in zip(centre[:3], lab_ras.shape, strict=False)]
        for col, (view, lab2d, img2d, aspect) in enumerate(_panels(lab_ras, img_ras, spacing, ijk)):
            ax = axes[row_i, col]
            if img2d is not None:
                ax.imshow(
                    np.nan_to_num(img2d, nan=vmin),
                    cmap="gray",
                    vmin=vmin,
                    vmax=vmax,
                    origin="lower",
                    aspect=aspect,
                    interpolation="nearest",
                )
            else:
                ax.imshow(np.zeros(lab2d.shape), cmap="gray", vmin=0, vmax=1, origin="lower", aspect=aspect)
            for index in indices:
                m = lab2d == index
                if m.any() and not m.all():
                    ax.contour(
                        m.astype(np.float32),
                        levels=[0.5],
                        colors=[colour_of(table, index)],
                        linewidths=2.0 if index == int(r["label"]) else 0.8,
                    )
            ax.set_xticks([])
            ax.set_yticks([])
            if row_i == 0:
                ax.set_title(view, fontsize=10)
        axes[row_i, 0].set_ylabel(f"{r['structure']}\n{r['volume_ml']:.1f} mL ({r['status']})", fontsize=9)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    out = Path(path)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return out


def distribution_png(
    values_by_structure: dict[str, "np.ndarray"], flagged: dict[str, "np.ndarray"], *, dpi: int = 80
) -> bytes:
    """A small strip + box plot per structure (volumes in mL; flagged cases in red), as PNG bytes."""
    import io

    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = list(values_by_structure)
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(2.2 * max(1, len(names)), 2.8), squeeze=False)
    for ax, name in zip(axes[0], names, strict=False):
        v = np.asarray(values_by_structure[name], dtype=float)
        bad = np.asarray(flagged.get(name, np.zeros(v.size, bool)), dtype=bool)
        if v.size:
            ax.boxplot(v, widths=0.5, showfliers=False)
            jitter = 1 + (np.random.default_rng(0).random(v.size) - 0.5) * 0.3
            ax.scatter(jitter[~bad], v[~bad], s=12, color="tab:blue", zorder=3)
            ax.scatter(jitter[bad], v[bad], s=20, color="tab:red", zorder=4)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_ylabel("mL", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    plt.close(fig)
    return buf.getvalue()
