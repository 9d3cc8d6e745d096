"""nnU-Net v2's inference, step for step, on medseg volumes.

Each function follows the nnunetv2 2.x function named in its docstring where it
changes what a voxel becomes: axis order (SimpleITK's ``(z, y, x)``) and
``transpose_forward``/``transpose_backward``; crop to the non-zero region (holes
filled); the normalisation schemes; resampling to the target spacing (third-order
spline in float64 like skimage's ``resize``, the low-resolution axis of
anisotropic data separately with order 0); padding to the patch; the Gaussian
weights (sigma 1/8 of the patch, scaled to 10, accumulated in float16 as nnU-Net
does); mirroring over the checkpoint's axes; fold averaging; resampling of the
logits back; argmax or region painting; uncropping.

Nothing here imports nnunetv2: the tests compare it with nnunetv2 itself.
"""

from __future__ import annotations

import itertools
from copy import deepcopy

import numpy as np

ANISO_THRESHOLD = 3  # nnunetv2.configuration.ANISO_THRESHOLD


# ---------------------------------------------------------------- resampling (preprocessing/resampling/default_resampling.py)
def _resize(image: np.ndarray, shape, order: int) -> np.ndarray:
    """``skimage.transform.resize(image, shape, order, mode='edge', anti_aliasing=False)`` for float64 input:
    ``scipy.ndimage.zoom`` on the pixel grid (``grid_mode``), edge mode 'nearest', clipped to the input's range."""
    from scipy import ndimage as ndi

    factors = np.divide(image.shape, shape)
    out = ndi.zoom(image, [1 / f for f in factors], order=order, mode="nearest", cval=0.0, grid_mode=True)
    if order > 0:
        np.clip(out, image.min(), image.max(), out=out)
    return out


def _lowres_axis(spacing):
    return np.where(max(spacing) / np.array(spacing) == 1)[0]


def separate_z(force_separate_z, current_spacing, new_spacing, threshold=ANISO_THRESHOLD):
    """``determine_do_sep_z_and_axis``: whether (and along which axis) to resample separately."""
    def aniso(sp):
        return (np.max(sp) / np.min(sp)) > threshold

    if force_separate_z is not None:
        do, axis = bool(force_separate_z), (_lowres_axis(current_spacing) if force_separate_z else None)
    elif aniso(current_spacing):
        do, axis = True, _lowres_axis(current_spacing)
    elif aniso(new_spacing):
        do, axis = True, _lowres_axis(new_spacing)
    else:
        do, axis = False, None
    if axis is not None:
        if len(axis) in (2, 3):
            return False, None
        axis = int(axis[0])
    return do, axis


def resample(data: np.ndarray, new_shape, current_spacing, new_spacing, *, order: int = 3, order_z: int = 0,
             force_separate_z=False, separate_z_anisotropy_threshold=ANISO_THRESHOLD, is_seg: bool = False):
    """``resample_data_or_seg_to_shape`` -> ``resample_data_or_seg`` (data, not segmentations): output
    in the input's dtype (float16 logits stay float16), computed in float64."""
    if is_seg:
        raise ValueError("segmentation resampling is not needed for inference")
    do_sep, axis = separate_z(force_separate_z, current_spacing, new_spacing, separate_z_anisotropy_threshold)
    shape = np.array(data[0].shape)
    new_shape = np.array([int(s) for s in new_shape])
    if not np.any(shape != new_shape):
        return data
    out = np.zeros((data.shape[0], *new_shape), dtype=data.dtype)
    data = data.astype(float, copy=False)
    for c in range(data.shape[0]):
        if not do_sep:
            out[c] = _resize(data[c], new_shape, order)
            continue
        shape_2d = np.delete(new_shape, axis)
        tmp = deepcopy(new_shape)
        tmp[axis] = shape[axis]
        here = np.zeros(tmp)
        for k in range(shape[axis]):
            idx = [slice(None)] * 3
            idx[axis] = k
            here[tuple(idx)] = _resize(data[c][tuple(idx)], shape_2d, order)
        if shape[axis] != new_shape[axis]:
            from scipy.ndimage import map_coordinates

            scale = [float(o) / n for o, n in zip(here.shape, new_shape)]
            grid = np.mgrid[:new_shape[0], :new_shape[1], :new_shape[2]].astype(float)
            coords = np.array([s * (g + 0.5) - 0.5 for s, g in zip(scale, grid)])
            out[c] = map_coordinates(here, coords, order=order_z, mode="nearest")
        else:
            out[c] = here
    return out


def compute_new_shape(old_shape, old_spacing, new_spacing):
    return np.array([int(round(i / j * k)) for i, j, k in zip(old_spacing, new_spacing, old_shape)])


# ---------------------------------------------------------------- cropping (preprocessing/cropping/cropping.py)
def nonzero_mask(data: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_fill_holes

    mask = data[0] != 0
    for c in range(1, data.shape[0]):
        mask |= data[c] != 0
    return binary_fill_holes(mask)


def bbox_of(mask: np.ndarray) -> list[list[int]]:
    """``get_bbox_from_mask``: half-open per axis; the whole axis where the mask is empty."""
    out = []
    for ax in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != ax)
        hit = np.where(mask.any(axis=other))[0]
        out.append([int(hit[0]), int(hit[-1]) + 1] if hit.size else [0, mask.shape[ax]])
    return out


# ---------------------------------------------------------------- normalisation (preprocessing/normalization/)
def normalize_channel(image: np.ndarray, scheme: str, use_mask: bool, props: dict, mask: np.ndarray) -> np.ndarray:
    eps = 1e-8
    image = image.astype(np.float32, copy=False)
    if scheme == "CTNormalization":
        np.clip(image, props["percentile_00_5"], props["percentile_99_5"], out=image)
        image -= props["mean"]
        image /= max(props["std"], eps)
    elif scheme == "ZScoreNormalization":
        if use_mask:
            mean, std = image[mask].mean(), image[mask].std()
            image[mask] = (image[mask] - mean) / max(std, eps)
        else:
            mean, std = image.mean(), image.std()
            image -= mean
            image /= max(std, eps)
    elif scheme == "RescaleTo01Normalization":
        image -= image.min()
        image /= np.clip(image.max(), a_min=eps, a_max=None)
    elif scheme != "NoNormalization":
        raise ValueError(scheme)
    return image


# ---------------------------------------------------------------- the whole preprocessing (DefaultPreprocessor.run_case_npy)
def preprocess(data: np.ndarray, spacing, model) -> tuple[np.ndarray, dict]:
    """``data``: ``(C, ...)`` in nnU-Net's reader order, ``spacing`` likewise. Returns the network input
    and the properties export needs."""
    plans, conf = model.plans, model.conf
    tf = plans.get("transpose_forward", [0, 1, 2])
    data = data.astype(np.float32).transpose([0, *[i + 1 for i in tf]])
    original_spacing = [spacing[i] for i in tf]
    shape_before = data.shape[1:]
    mask = nonzero_mask(data)
    bbox = bbox_of(mask)
    sl = tuple(slice(a, b) for a, b in bbox)
    data = data[(slice(None), *sl)]
    mask = mask[sl]
    target = list(conf["spacing"])
    if len(target) < data.ndim - 1:
        target = [original_spacing[0]] + target
    new_shape = compute_new_shape(data.shape[1:], original_spacing, target)
    props_all = plans.get("foreground_intensity_properties_per_channel", {})
    for c in range(data.shape[0]):
        data[c] = normalize_channel(data[c], conf["normalization_schemes"][c], bool(conf["use_mask_for_norm"][c]),
                                    props_all.get(str(c), {}), mask)
    data = resample(data, new_shape, original_spacing, target, **conf.get("resampling_fn_data_kwargs", {}))
    props = {"spacing": list(spacing), "shape_before_cropping": shape_before, "bbox": bbox,
             "shape_after_cropping": tuple(int(s) for s in mask.shape), "network_spacing": target}
    return data.astype(np.float32, copy=False), props


# ---------------------------------------------------------------- sliding window (inference/sliding_window_prediction.py, predict_from_raw_data.py)
def gaussian(tile, sigma_scale=1. / 8, value_scaling_factor=10):
    """``compute_gaussian`` in float16 (nnU-Net's default dtype)."""
    import torch
    from scipy.ndimage import gaussian_filter

    tmp = np.zeros(tile)
    tmp[tuple(i // 2 for i in tile)] = 1
    g = gaussian_filter(tmp, [i * sigma_scale for i in tile], 0, mode="constant", cval=0)
    g /= (np.max(g) / value_scaling_factor)
    g = torch.from_numpy(g).to(dtype=torch.float16)
    zero = g == 0
    g[zero] = torch.min(g[~zero])
    return g


def steps_for(image_size, tile, step=0.5):
    steps = []
    for i, k in zip(image_size, tile):
        n = int(np.ceil((i - k) / (k * step))) + 1
        actual = (i - k) / (n - 1) if n > 1 else 99999999999
        steps.append([int(np.round(actual * j)) for j in range(n)])
    return steps


def pad_to(x, shape):
    """``pad_nd_image(x, patch, 'constant', value 0)``: content centred, the odd voxel above. Returns (padded, slicer)."""
    import torch.nn.functional as F

    old = x.shape[-len(shape):]
    new = [max(s, o) for s, o in zip(shape, old)]
    below = [(n - o) // 2 for n, o in zip(new, old)]
    above = [(n - o) // 2 + (n - o) % 2 for n, o in zip(new, old)]
    # one slice per axis after the channels (a 2D patch on a 3D image leaves the slice axis whole)
    slicer = (slice(None),) * (x.ndim - 1 - len(shape)) + tuple(slice(b, b + o) for b, o in zip(below, old))
    if any(below) or any(above):
        pad = [v for b, a in zip(reversed(below), reversed(above)) for v in (b, a)]
        x = F.pad(x, pad, "constant", 0)
    return x, slicer


def _slicers(image_size, patch):
    if len(patch) < len(image_size):  # 2D network on a 3D image: slice by slice along the first axis
        steps = steps_for(image_size[1:], patch)
        return [(slice(None), d, *[slice(s, s + t) for s, t in zip((sx, sy), patch)])
                for d in range(image_size[0]) for sx in steps[0] for sy in steps[1]]
    steps = steps_for(image_size, patch)
    return [(slice(None), *[slice(s, s + t) for s, t in zip(c, patch)]) for c in itertools.product(*steps)]


def _mirror_predict(net, x, mirror_axes):
    import torch

    pred = net(x)
    if mirror_axes:
        axes = [m + 2 for m in mirror_axes]
        combos = [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]
        for ax in combos:
            pred += torch.flip(net(torch.flip(x, ax)), ax)
        pred /= (len(combos) + 1)
    return pred


def sliding_window_logits(net, data, patch, heads: int, mirror_axes, *, step=0.5, device="cpu", progress=None):
    """``predict_sliding_window_return_logits``: float16 logits of one network on ``(C, ...)`` data."""
    import torch

    with torch.inference_mode():
        x, revert = pad_to(data, patch)
        slicers = _slicers(x.shape[1:], patch)
        logits = torch.zeros((heads, *x.shape[1:]), dtype=torch.half)
        weight = torch.zeros(x.shape[1:], dtype=torch.half)
        g = gaussian(tuple(patch))
        for n, sl in enumerate(slicers):
            tile = torch.clone(x[sl][None], memory_format=torch.contiguous_format).to(device)
            pred = _mirror_predict(net, tile, mirror_axes)[0].to("cpu")
            pred *= g
            logits[sl] += pred
            weight[sl[1:]] += g
            if progress:
                progress(n + 1, len(slicers))
        torch.div(logits, weight, out=logits)
        if torch.any(torch.isinf(logits)):
            raise FloatingPointError("infinite logits (float16 overflow), as nnU-Net would report")
        return logits[(slice(None), *revert)]


def predict_logits(nets, data, model, *, step=0.5, device="cpu", mirror=True):
    """``predict_logits_from_preprocessed_data``: the folds' logits, averaged (float16)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(data))
    total = None
    axes = model.mirror_axes if mirror else None
    with torch.inference_mode():
        for net in nets:
            net = net.to(device).eval()
            p = sliding_window_logits(net, x, list(model.conf["patch_size"]), model.labels.heads, axes, step=step, device=device)
            total = p if total is None else total.__iadd__(p)
        if len(nets) > 1:
            total /= len(nets)
    return total


# ---------------------------------------------------------------- export (inference/export_prediction.py)
def export(logits, props: dict, model, *, probabilities: bool = False):
    """``convert_predicted_logits_to_segmentation_with_correct_shape``: the label map (and, if asked,
    the class probabilities) in the reader's array order, full input shape."""
    import torch

    plans, conf = model.plans, model.conf
    tf = plans.get("transpose_forward", [0, 1, 2])
    tb = plans.get("transpose_backward", [0, 1, 2])
    spacing_t = [props["spacing"][i] for i in tf]
    current = props["network_spacing"]
    resampled = resample(logits.numpy() if hasattr(logits, "numpy") else logits, props["shape_after_cropping"], current,
                         spacing_t, **conf.get("resampling_fn_probabilities_kwargs", {}))
    lab = model.labels
    t = torch.from_numpy(np.asarray(resampled))
    probs = None
    if lab.regions or probabilities:
        probs = (torch.sigmoid if lab.regions else (lambda v: torch.softmax(v, 0)))(t.float())
    if lab.regions:
        seg = np.zeros(t.shape[1:], dtype=np.uint16)
        p = probs.numpy()
        for i, c in enumerate(lab.regions_class_order):
            seg[p[i] > 0.5] = c
    else:
        seg = np.asarray(resampled).argmax(0)
    dtype = np.uint8 if max(lab.table.num_classes - 1, 0) < 255 else np.uint16
    full = np.zeros(props["shape_before_cropping"], dtype=dtype)
    sl = tuple(slice(a, b) for a, b in props["bbox"])
    full[sl] = seg
    full = full.transpose(tb)
    if not probabilities:
        return full, None
    pfull = np.zeros((probs.shape[0], *props["shape_before_cropping"]), dtype=np.float32)
    if not lab.regions:
        pfull[0] = 1
    pfull[(slice(None), *sl)] = probs.numpy()
    return full, pfull.transpose([0] + [i + 1 for i in tb])
