"""medseg's fast nnU-Net preprocessing (``resample: "torch"``, the fast preset): the same crop, normalisation and
target grid as ``inference.preprocess``, computed slab by slab from the image in its stored type.

nnU-Net's preprocessing (``DefaultPreprocessor.run_case_npy``) converts the whole image to float32, normalises it,
and resamples it with a third-order spline (``skimage``/``scipy.ndimage.zoom``), whose prefilter holds a float64
copy of the whole image: on a 512 x 512 x 240 int16 CT, 0.25 GB of input becomes 1 GB of float32 and 2 GB of float64,
and the spline costs 2.7 s on 2 cores. Here:

- the non-zero crop is found slab by slab (no full-size mask; holes need no filling: a hole lies inside the
  foreground's bounding box, so the box is the same), which is all the crop needs where no channel normalises within
  the mask (``applies``; otherwise the caller keeps nnU-Net's route);
- each output slab along the first axis reads only the input rows it interpolates from, converts them to float32,
  normalises them (``normalize_channel``'s arithmetic; ``ZScoreNormalization``'s mean and standard deviation are
  computed first over the crop, slab by slab in float64), and resamples them with PyTorch: in-plane bilinear
  (``F.interpolate``, the pixel-grid convention of ``zoom(grid_mode=True, mode="nearest")``), then linear along the
  first axis -- or nearest where nnU-Net resamples that axis separately with ``order_z=0`` (anisotropic data);
- memory: the input as read, the network-grid result and one slab (tens of MB), whatever the image's length.

Linear instead of the third-order spline: the network input differs by the spline's overshoot near edges, and the
labels agree with the faithful path to the fraction printed by benchmarks/bench_nnunet.py ("fast vs faithful").
"""

from __future__ import annotations

import numpy as np

from medseg.adapters.nnunet.inference import ANISO_THRESHOLD, compute_new_shape, separate_z

#: Voxels (of one channel) per slab, of the output and of the input rows it reads: 4M float32 = 16 MB each.
SLAB_VOXELS = 1 << 22


def applies(model) -> bool:
    """The fast route reproduces nnU-Net's crop and normalisation where no channel normalises within the non-zero
    mask, on 3D configurations (a 2D model's resampling keeps nnU-Net's route)."""
    conf = model.conf
    return not any(bool(u) for u in conf["use_mask_for_norm"]) and len(conf["patch_size"]) == 3


def nonzero_bbox(data: np.ndarray, rows: int = 16) -> list[list[int]]:
    """``bbox_of(nonzero_mask(data))`` without a full-size mask: ``data`` ``(C, X, Y, Z)`` scanned ``rows`` of the first
    axis at a time (half-open per axis; the whole axis where nothing is non-zero)."""
    n0 = data.shape[1]
    hit0 = np.zeros(n0, dtype=bool)
    plane = np.zeros(data.shape[2:], dtype=bool)
    for s in range(0, n0, rows):
        block = np.zeros((min(rows, n0 - s), *data.shape[2:]), dtype=bool)
        for c in range(data.shape[0]):
            block |= data[c, s : s + rows] != 0
        hit0[s : s + rows] = block.any(axis=(1, 2))
        plane |= block.any(axis=0)
    out = []
    for hit in (hit0, plane.any(axis=1), plane.any(axis=0)):
        idx = np.flatnonzero(hit)
        out.append([int(idx[0]), int(idx[-1]) + 1] if idx.size else [0, hit.size])
    return out


def _scheme_params(channel: np.ndarray, scheme: str, props: dict, rows: int) -> tuple:
    """What ``normalize_channel`` needs to normalise slab by slab: (kind, a, b)."""
    eps = 1e-8
    if scheme == "CTNormalization":
        return ("ct", props, None)
    if scheme == "NoNormalization":
        return ("none", None, None)
    n = channel.shape[0]
    if scheme == "RescaleTo01Normalization":
        lo = min(float(channel[s : s + rows].min()) for s in range(0, n, rows))
        hi = max(float(channel[s : s + rows].max()) for s in range(0, n, rows))
        return ("affine", lo, max(hi - lo, eps))
    if scheme == "ZScoreNormalization":
        total = total_sq = 0.0
        for s in range(0, n, rows):
            block = channel[s : s + rows].astype(np.float64)
            total += float(block.sum())
            total_sq += float(np.square(block).sum())
        mean = total / channel.size
        std = float(np.sqrt(max(total_sq / channel.size - mean * mean, 0.0)))
        return ("affine", mean, max(std, eps))
    raise ValueError(scheme)


def _normalise(t, params) -> None:
    kind, a, b = params
    if kind == "ct":
        t.clamp_(a["percentile_00_5"], a["percentile_99_5"])
        t.sub_(a["mean"]).div_(max(a["std"], 1e-8))
    elif kind == "affine":
        t.sub_(a).div_(b)


def _axis(n_in: int, n_out: int, nearest: bool):
    """Source rows and weights along one axis: ``zoom``'s pixel grid (order 1, edges clamped), or the order-0
    ``map_coordinates`` of nnU-Net's separate axis (``floor(c + 0.5)``)."""
    c = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    if nearest:
        i = np.clip(np.floor(c + 0.5), 0, n_in - 1).astype(np.int64)
        return i, i, np.zeros(n_out, dtype=np.float32)
    c = np.clip(c, 0, n_in - 1)
    i0 = np.floor(c).astype(np.int64)
    return i0, np.minimum(i0 + 1, n_in - 1), (c - i0).astype(np.float32)


def _in_plane(t, shape, nearest: tuple[bool, bool]):
    """``t`` ``(rows, Y, X)`` float32 resampled to ``shape`` in its last two axes (bilinear, or nearest along an axis
    that ``nearest`` marks)."""
    import torch
    import torch.nn.functional as F

    if tuple(t.shape[1:]) == tuple(shape):
        return t
    if not any(nearest):
        return F.interpolate(t[:, None], size=tuple(shape), mode="bilinear", align_corners=False)[:, 0]
    for ax, (n_out, near) in enumerate(zip(shape, nearest, strict=True), start=1):
        i0, i1, w = (torch.from_numpy(v) for v in _axis(t.shape[ax], n_out, near))
        lo = t.index_select(ax, i0)
        if near:
            t = lo
            continue
        view = [1, 1, 1]
        view[ax] = -1
        t = torch.lerp(lo, t.index_select(ax, i1), w.view(view))
    return t


def resample_slabs(data: np.ndarray, out: np.ndarray, params: list, nearest: tuple[bool, bool, bool]) -> None:
    """``data`` ``(C, X, Y, Z)`` (any real dtype, the crop of the image as read) normalised with ``params`` (one per
    channel) and resampled into ``out`` ``(C, X', Y', Z')`` float32, slab by slab along the first axis."""
    import torch

    n_in, n_out = data.shape[1], out.shape[1]
    r0, r1, w = _axis(n_in, n_out, nearest[0])
    # output rows per slab: SLAB_VOXELS output voxels, and as many input voxels (a strong reduction along the first
    # axis reads several input rows per output row)
    rows_in = -(-n_in // n_out) + 1
    step = max(1, min(SLAB_VOXELS // max(1, out[0, :1].size), SLAB_VOXELS // max(1, rows_in * data[0, :1].size)))
    dst = torch.from_numpy(out)
    with torch.inference_mode():
        for s in range(0, n_out, step):
            e = min(n_out, s + step)
            lo, hi = int(r0[s:e].min()), int(r1[s:e].max()) + 1
            for c in range(data.shape[0]):
                block = torch.from_numpy(np.asarray(data[c, lo:hi], dtype=np.float32))
                _normalise(block, params[c])
                plane = _in_plane(block, out.shape[2:], nearest[1:])
                a = plane.index_select(0, torch.from_numpy(r0[s:e] - lo))
                if nearest[0]:
                    dst[c, s:e] = a
                else:
                    b = plane.index_select(0, torch.from_numpy(r1[s:e] - lo))
                    dst[c, s:e] = torch.lerp(a, b, torch.from_numpy(w[s:e]).view(-1, 1, 1))


def preprocess_fast(channels: np.ndarray, spacing_xyz, model) -> tuple[np.ndarray, dict]:
    """``inference.preprocess`` for ``channels`` ``(C, x, y, z)`` as read (any real dtype; not copied) with the file's
    spacing: the network input ``(C, ...)`` float32 in nnU-Net's order and the properties ``export`` needs.
    Only where ``applies(model)``."""
    plans, conf = model.plans, model.conf
    tf = plans.get("transpose_forward", [0, 1, 2])
    spacing = list(spacing_xyz)[::-1]  # nnU-Net's (z, y, x)
    data = channels.transpose(0, 3, 2, 1).transpose([0, *[i + 1 for i in tf]])  # views
    original_spacing = [spacing[i] for i in tf]
    shape_before = data.shape[1:]
    bbox = nonzero_bbox(data)
    data = data[(slice(None), *(slice(a, b) for a, b in bbox))]
    target = list(conf["spacing"])
    new_shape = [int(s) for s in compute_new_shape(data.shape[1:], original_spacing, target)]
    props_all = plans.get("foreground_intensity_properties_per_channel", {})
    params = [
        _scheme_params(data[c], conf["normalization_schemes"][c], props_all.get(str(c), {}), 16)
        for c in range(data.shape[0])
    ]
    kw = conf.get("resampling_fn_data_kwargs", {})
    do_sep, axis = separate_z(
        kw.get("force_separate_z"),
        original_spacing,
        target,
        kw.get("separate_z_anisotropy_threshold", ANISO_THRESHOLD),
    )
    nearest = tuple(bool(do_sep and a == axis and int(kw.get("order_z", 0)) == 0) for a in range(3))
    out = np.empty((data.shape[0], *new_shape), dtype=np.float32)
    resample_slabs(data, out, params, nearest)  # type: ignore[arg-type]
    props = {
        "spacing": spacing,
        "shape_before_cropping": shape_before,
        "bbox": bbox,
        "shape_after_cropping": tuple(int(s) for s in data.shape[1:]),
        "network_spacing": target,
    }
    return out, props
