"""Planar contours <-> voxel masks on one slice (the geometry under RTSTRUCT reading and writing).

Filling (``fill_polygons``)
---------------------------
A voxel belongs to a structure when its *centre* lies inside the slice's
contours by the even-odd rule over all of that structure's contours on the
slice (so a contour inside another is a hole, a contour inside a hole an
island), or lies *on* a contour (within ``ON_CONTOUR_TOL`` voxel). The second
clause is what lets medseg read contours drawn through the centres of a
structure's edge voxels, as OpenCV's ``findContours`` (rt-utils, many scripts)
writes them: by the centre rule alone their edge voxels would fall out.

Extraction (``mask_contours``)
------------------------------
Contours are traced by marching squares (contourpy, a matplotlib dependency)
at ``level`` on the padded 0/1 mask: each contour crosses every segment
between an inside and an outside voxel centre at ``1 - level`` voxel from the
inside one (0.5: half-way), so for any level strictly between 0 and 1 filling it
back by the rule above gives exactly the mask (no voxel centre is on or across
a line). Holes come out as separate contours; collinear points are dropped.
The polygons cut the corners of the voxel staircase (a lone voxel becomes a
diamond of half its area), so a contour-based area is smaller than the voxel
count by about ``perimeter_in_voxels / 8`` voxels per slice (more above 0.5): see
``medseg.io.objects.rtstruct`` for what that means for volumes.
"""

from __future__ import annotations

import numpy as np

#: A voxel centre this close (in voxels) to a contour counts as on it (inside).
ON_CONTOUR_TOL = 1e-3


def fill_polygons(polygons: list, shape: tuple[int, int]) -> np.ndarray:
    """Boolean mask ``shape`` of the voxels inside ``polygons`` (each ``(n, 2)`` in voxel coordinates (a, b)).

    Even-odd over all polygons together; centres on an edge are inside (module docstring).
    """
    n0, n1 = int(shape[0]), int(shape[1])
    out = np.zeros((n0, n1), dtype=bool)
    polys = [np.asarray(p, dtype=np.float64) for p in polygons if len(p) >= 3]
    polys = [p for p in polys if np.isfinite(p).all()]  # a NaN/Inf point has no place on the grid
    if not polys:
        return out
    a0 = np.concatenate([p[:, 0] for p in polys])
    b0 = np.concatenate([p[:, 1] for p in polys])
    a1 = np.concatenate([np.roll(p[:, 0], -1) for p in polys])
    b1 = np.concatenate([np.roll(p[:, 1], -1) for p in polys])
    eps = ON_CONTOUR_TOL
    # Interior: scan lines at integer a; crossings by the half-open rule, so each vertex counts once.
    lo, hi = max(0, int(np.ceil(min(a0.min(), a1.min())))), min(n0 - 1, int(np.floor(max(a0.max(), a1.max()))))
    moving = a0 != a1
    e_a0, e_b0, e_a1, e_b1 = a0[moving], b0[moving], a1[moving], b1[moving]
    e_min, e_max = np.minimum(e_a0, e_a1), np.maximum(e_a0, e_a1)
    for a in range(lo, hi + 1):
        sel = (e_min <= a) & (a < e_max)
        if not sel.any():
            continue
        t = (a - e_a0[sel]) / (e_a1[sel] - e_a0[sel])
        xs = np.sort(e_b0[sel] + t * (e_b1[sel] - e_b0[sel]))
        for xa, xb in zip(xs[0::2], xs[1::2], strict=False):
            j0, j1 = max(0, int(np.ceil(xa - eps))), min(n1 - 1, int(np.floor(xb + eps)))
            if j1 >= j0:
                out[a, j0 : j1 + 1] = True
    # On the contour: every voxel centre that an edge passes through (within eps), on the rows of the image only
    # (unclipped, one edge to a point 1e8 voxels away would enumerate 1e8 rows).
    amin, amax = np.minimum(a0, a1), np.maximum(a0, a1)
    rows_lo = np.ceil(np.clip(amin - eps, -1.0, n0)).astype(np.int64).clip(0, None)
    rows_hi = np.floor(np.clip(amax + eps, -1.0, n0)).astype(np.int64).clip(None, n0 - 1)
    count = np.maximum(rows_hi - rows_lo + 1, 0)
    if count.sum():
        e = np.repeat(np.arange(len(a0)), count)
        rows = rows_lo[e] + (np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count))
        flat = np.abs(a1[e] - a0[e]) < eps
        t = np.where(flat, 0.0, (rows - a0[e]) / np.where(flat, 1.0, a1[e] - a0[e]))
        cols = b0[e] + t * (b1[e] - b0[e])
        hit = ~flat & (np.abs(cols - np.round(cols)) < eps)
        _mark(out, rows[hit], np.round(cols[hit]).astype(np.int64))
        for k in np.flatnonzero(flat):  # edges along a scan line: every centre between their ends
            r = int(rows[k])
            if 0 <= r < n0:
                bl, bh = sorted((b0[e[k]], b1[e[k]]))
                j0, j1 = max(0, int(np.ceil(bl - eps))), min(n1 - 1, int(np.floor(bh + eps)))
                if j1 >= j0:
                    out[r, j0 : j1 + 1] = True
    return out


def _mark(out: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> None:
    ok = (rows >= 0) & (rows < out.shape[0]) & (cols >= 0) & (cols < out.shape[1])
    out[rows[ok], cols[ok]] = True


def polygon_area(p: np.ndarray) -> float:
    """Signed shoelace area of a closed polygon ``(n, 2)`` (first point not repeated)."""
    x, y = p[:, 0], p[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _drop_collinear(p: np.ndarray) -> np.ndarray:
    if len(p) <= 3:
        return p
    prev, nxt = np.roll(p, 1, axis=0), np.roll(p, -1, axis=0)
    cross = (p[:, 0] - prev[:, 0]) * (nxt[:, 1] - p[:, 1]) - (p[:, 1] - prev[:, 1]) * (nxt[:, 0] - p[:, 0])
    keep = np.abs(cross) > 1e-9
    return p[keep] if keep.sum() >= 3 else p


def mask_contours(mask: np.ndarray, *, level: float = 0.5) -> list[np.ndarray]:
    """Closed contours ``(n, 2)`` in voxel coordinates (a, b) of a 2D mask (marching squares at ``level``)."""
    import contourpy

    m = np.asarray(mask, dtype=np.float64)
    if not m.any():
        return []
    nz = np.argwhere(m)
    (a_lo, b_lo), (a_hi, b_hi) = nz.min(axis=0), nz.max(axis=0)
    crop = np.pad(m[a_lo : a_hi + 1, b_lo : b_hi + 1], 1)
    gen = contourpy.contour_generator(z=crop, line_type="Separate")
    out = []
    for line in gen.lines(level):
        pts = np.asarray(line, dtype=np.float64)
        if len(pts) > 1 and np.allclose(pts[0], pts[-1]):
            pts = pts[:-1]
        if len(pts) < 3:
            continue
        # contourpy gives (x = column of z = b, y = row of z = a); undo the crop and the padding.
        poly = np.stack([pts[:, 1] + a_lo - 1, pts[:, 0] + b_lo - 1], axis=1)
        out.append(_drop_collinear(poly))
    return out
