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

from medseg.inference.channels_last import channels_last_network
from medseg.inference.labels_from_scores import first_argmax
from medseg.inference.sliding_window import to_layout

ANISO_THRESHOLD = 3  # nnunetv2.configuration.ANISO_THRESHOLD


# -------------------------------- resampling (preprocessing/resampling/default_resampling.py)
def _resize(image: np.ndarray, shape, order: int, output=None) -> np.ndarray:
    """``skimage.transform.resize(image, shape, order, mode='edge', anti_aliasing=False)`` for float64 input:
    ``scipy.ndimage.zoom`` on the pixel grid (``grid_mode``), edge mode 'nearest', clipped to the input's range.

    ``output`` (a dtype, float32 or float64): the result's dtype. ``zoom`` interpolates in float64 whatever the
    input's float dtype (its spline prefilter converts exactly) and rounds once on storing, so a float32 image
    resized straight to a float32 result equals the float64 route cast to float32, without the two float64
    copies of the whole image (tests/external/test_nnunet_functions.py)."""
    from scipy import ndimage as ndi

    factors = np.divide(image.shape, shape)
    out = ndi.zoom(
        image, [1 / f for f in factors], output=output, order=order, mode="nearest", cval=0.0, grid_mode=True
    )
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


def resample(
    data: np.ndarray,
    new_shape,
    current_spacing,
    new_spacing,
    *,
    order: int = 3,
    order_z: int = 0,
    force_separate_z=False,
    separate_z_anisotropy_threshold=ANISO_THRESHOLD,
    is_seg: bool = False,
):
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
    # float32/float64 resize straight to their own dtype (the same values, no float64 copy of the image); float16
    # and the separate-axis route go through float64 as nnU-Net does
    direct = not do_sep and data.dtype in (np.float32, np.float64)
    if not direct:
        data = data.astype(float, copy=False)
    for c in range(data.shape[0]):
        if not do_sep:
            out[c] = _resize(data[c], new_shape, order, output=out.dtype if direct else None)
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

            scale = [float(o) / n for o, n in zip(here.shape, new_shape, strict=False)]
            grid = np.mgrid[: new_shape[0], : new_shape[1], : new_shape[2]].astype(float)
            coords = np.array([s * (g + 0.5) - 0.5 for s, g in zip(scale, grid, strict=False)])
            out[c] = map_coordinates(here, coords, order=order_z, mode="nearest")
        else:
            out[c] = here
    return out


def compute_new_shape(old_shape, old_spacing, new_spacing):
    return np.array([int(round(i / j * k)) for i, j, k in zip(old_spacing, new_spacing, old_shape, strict=False)])


# -------------------------------- cropping (preprocessing/cropping/cropping.py)
def nonzero_mask(data: np.ndarray, fill_holes: bool = True) -> np.ndarray:
    """``create_nonzero_mask``. ``fill_holes=False`` leaves the holes open: the same bounding box (a hole lies
    inside the foreground's box), so the same crop, for callers that do not normalise within the mask."""
    from scipy.ndimage import binary_fill_holes

    mask = data[0] != 0
    for c in range(1, data.shape[0]):
        mask |= data[c] != 0
    return binary_fill_holes(mask) if fill_holes else mask


def bbox_of(mask: np.ndarray) -> list[list[int]]:
    """``get_bbox_from_mask``: half-open per axis; the whole axis where the mask is empty."""
    out = []
    for ax in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != ax)
        hit = np.where(mask.any(axis=other))[0]
        out.append([int(hit[0]), int(hit[-1]) + 1] if hit.size else [0, mask.shape[ax]])
    return out


# -------------------------------- normalisation (preprocessing/normalization/)
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


# -------------------------------- the whole preprocessing (DefaultPreprocessor.run_case_npy)
def preprocess(
    data: np.ndarray, spacing, model, *, fill_holes: bool = True, inplace: bool = False
) -> tuple[np.ndarray, dict]:
    """``data``: ``(C, ...)`` in nnU-Net's reader order, ``spacing`` likewise. Returns the network input
    and the properties export needs. ``fill_holes=False`` (medseg's fast path) skips filling the holes of the
    non-zero mask where no channel normalises within it: same crop, same result, less time. ``inplace``: a
    float32 ``data`` that the caller gives up is normalised where it lies instead of in a copy (one image's
    worth of memory less at the peak)."""
    plans, conf = model.plans, model.conf
    tf = plans.get("transpose_forward", [0, 1, 2])
    data = data.astype(np.float32, copy=not inplace).transpose([0, *[i + 1 for i in tf]])
    original_spacing = [spacing[i] for i in tf]
    shape_before = data.shape[1:]
    mask = nonzero_mask(data, fill_holes=fill_holes or any(bool(u) for u in conf["use_mask_for_norm"]))
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
        data[c] = normalize_channel(
            data[c],
            conf["normalization_schemes"][c],
            bool(conf["use_mask_for_norm"][c]),
            props_all.get(str(c), {}),
            mask,
        )
    data = resample(data, new_shape, original_spacing, target, **conf.get("resampling_fn_data_kwargs", {}))
    props = {
        "spacing": list(spacing),
        "shape_before_cropping": shape_before,
        "bbox": bbox,
        "shape_after_cropping": tuple(int(s) for s in mask.shape),
        "network_spacing": target,
    }
    return data.astype(np.float32, copy=False), props


# -------------------------------- sliding window (inference/sliding_window_prediction.py, predict_from_raw_data.py)
def gaussian(tile, sigma_scale=1.0 / 8, value_scaling_factor=10):
    """``compute_gaussian`` in float16 (nnU-Net's default dtype)."""
    import torch
    from scipy.ndimage import gaussian_filter

    tmp = np.zeros(tile)
    tmp[tuple(i // 2 for i in tile)] = 1
    g = gaussian_filter(tmp, [i * sigma_scale for i in tile], 0, mode="constant", cval=0)
    g /= np.max(g) / value_scaling_factor
    g = torch.from_numpy(g).to(dtype=torch.float16)
    zero = g == 0
    g[zero] = torch.min(g[~zero])
    return g


def steps_for(image_size, tile, step=0.5):
    steps = []
    for i, k in zip(image_size, tile, strict=False):
        n = int(np.ceil((i - k) / (k * step))) + 1
        actual = (i - k) / (n - 1) if n > 1 else 99999999999
        steps.append([int(np.round(actual * j)) for j in range(n)])
    return steps


def pad_to(x, shape):
    """``pad_nd_image(x, patch, 'constant', value 0)``: content centred, the odd voxel above. Returns (padded,
    slicer)."""
    import torch.nn.functional as F

    old = x.shape[-len(shape) :]
    new = [max(s, o) for s, o in zip(shape, old, strict=False)]
    below = [(n - o) // 2 for n, o in zip(new, old, strict=False)]
    above = [(n - o) // 2 + (n - o) % 2 for n, o in zip(new, old, strict=False)]
    # one slice per axis after the channels (a 2D patch on a 3D image leaves the slice axis whole)
    slicer = (slice(None),) * (x.ndim - 1 - len(shape)) + tuple(
        slice(b, b + o) for b, o in zip(below, old, strict=False)
    )
    if any(below) or any(above):
        pad = [v for b, a in zip(reversed(below), reversed(above), strict=False) for v in (b, a)]
        x = F.pad(x, pad, "constant", 0)
    return x, slicer


def _slicers(image_size, patch, step=0.5):
    if len(patch) < len(image_size):  # 2D network on a 3D image: slice by slice along the first axis
        steps = steps_for(image_size[1:], patch, step)
        return [
            (slice(None), d, *[slice(s, s + t) for s, t in zip((sx, sy), patch, strict=False)])
            for d in range(image_size[0])
            for sx in steps[0]
            for sy in steps[1]
        ]
    steps = steps_for(image_size, patch, step)
    return [
        (slice(None), *[slice(s, s + t) for s, t in zip(c, patch, strict=False)]) for c in itertools.product(*steps)
    ]


def mirror_combinations(mirror_axes, mirror=True) -> list[tuple]:
    """The flips nnU-Net averages over (``_internal_maybe_mirror_and_predict``): every non-empty combination of
    the checkpoint's axes (``mirror=True``: 7 for three axes), each axis alone (``"single"``: medseg's cheaper
    TTA) or none (``False``). Axes in the network input's order (batch and channel first)."""
    if not mirror_axes or mirror is False or mirror is None:
        return []
    axes = [m + 2 for m in mirror_axes]
    if mirror == "single":
        return [(a,) for a in axes]
    return [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]


def _mirror_predict(net, x, mirror_axes, mirror=True, amp_dtype=None, channels_last=False, cast_weights=False):
    """The network's logits on ``x`` averaged over ``mirror_combinations``; float32 (the network's dtype).

    ``cast_weights``: the network's weights are already in ``amp_dtype``; the input is cast to it (no autocast)."""
    import torch

    def run(t):
        t = to_layout(t, channels_last)
        if amp_dtype is None:
            out = net(t)
        elif cast_weights:
            out = net(t.to(amp_dtype))
        else:
            with torch.autocast(device_type=t.device.type, dtype=amp_dtype):
                out = net(t)
        # float32 and channels-first: the flips, sums and the stitching below run on the usual layout (a few
        # class channels to convert, against every later step striding across them)
        return out.to(torch.float32, memory_format=torch.contiguous_format)

    pred = run(x)
    combos = mirror_combinations(mirror_axes, mirror)
    for ax in combos:
        pred += torch.flip(run(torch.flip(x, ax)), ax)
    if combos:
        pred /= len(combos) + 1
    return pred


#: Constant windows are recognised with this tolerance (the third-order resampling leaves rounding noise).
_CONSTANT_TOL = 1e-5


class _Windows:
    """The running sums of one network's windows: Gaussian-weighted logits and weights, the constant windows'
    cache (``skip_constant``) and the windows waiting for the next batch."""

    def __init__(self, run, shape, heads: int, patch, acc_dtype, *, batch: int, device):
        import torch

        self.run, self.batch, self.device, self.acc_dtype = run, batch, device, acc_dtype
        self.logits = torch.zeros((heads, *shape), dtype=acc_dtype)
        self.weight = torch.zeros(shape, dtype=acc_dtype)
        g = gaussian(tuple(patch))
        if acc_dtype != torch.half:
            g = g.to(acc_dtype)
        self.g = g
        self.cache: dict = {}
        self.pending: list = []
        self.n_run = self.n_reused = self.n_skipped = 0

    def add(self, sl, pred) -> None:
        import torch

        pred = pred.to("cpu", self.acc_dtype if self.acc_dtype != torch.half else pred.dtype)
        pred *= self.g
        self.logits[sl] += pred
        self.weight[sl[1:]] += self.g

    def flush(self) -> None:
        import torch

        if not self.pending:
            return
        tiles = torch.cat([t for _, t, _ in self.pending]).to(self.device)
        preds = self.run(tiles)
        for (sl, _, key), p in zip(self.pending, preds, strict=False):
            if key is not None:
                self.cache[key] = p.clone()
            self.add(sl, p)
        self.n_run += len(self.pending)
        self.pending.clear()

    def visit(self, sl, tile, *, skip_constant: bool, air_below: float | None) -> bool:
        """Skip, reuse or queue the window ``sl`` (``tile``: its input); True when it was queued to run."""
        import torch

        key = None
        if skip_constant or air_below is not None:
            lo, hi = float(tile.min()), float(tile.max())
            if air_below is not None and hi < air_below:
                self.n_skipped += 1
                return False
            if skip_constant and hi - lo <= _CONSTANT_TOL:
                key = round(lo, 4)
                if key in self.cache:
                    self.add(sl, self.cache[key].clone())
                    self.n_reused += 1
                    return False
                if any(k == key for _, _, k in self.pending):
                    self.flush()  # its twin is about to run: reuse it
                    self.add(sl, self.cache[key].clone())
                    self.n_reused += 1
                    return False
        self.pending.append((sl, torch.clone(tile, memory_format=torch.contiguous_format), key))
        if len(self.pending) >= self.batch:
            self.flush()
        return True

    def finish(self, heads: int, background):
        """The averaged logits (``background`` where only skipped windows lay); refuses infinite ones."""
        import torch

        self.flush()
        logits, weight = self.logits, self.weight
        if self.n_skipped:
            empty = weight == 0
            weight[empty] = 1
            if background is not None:
                bg = torch.as_tensor(background, dtype=self.acc_dtype)
                for c in range(heads):
                    logits[c][empty] = bg[c]
        torch.div(logits, weight, out=logits)
        if torch.any(torch.isinf(logits)):
            raise FloatingPointError("infinite logits (float16 overflow), as nnU-Net would report")
        return logits

    def record(self, stats: dict | None) -> None:
        if stats is not None:
            stats["windows_run"] = stats.get("windows_run", 0) + self.n_run
            stats["windows_reused"] = stats.get("windows_reused", 0) + self.n_reused
            stats["windows_skipped"] = stats.get("windows_skipped", 0) + self.n_skipped


def sliding_window_logits(
    net,
    data,
    patch,
    heads: int,
    mirror_axes,
    *,
    step=0.5,
    device="cpu",
    progress=None,
    mirror=True,
    batch: int = 1,
    amp_dtype=None,
    logits_dtype=None,
    skip_constant: bool = False,
    air_below: float | None = None,
    background=None,
    stats: dict | None = None,
    channels_last: bool = False,
    cast_weights: bool = False,
):
    """``predict_sliding_window_return_logits``: the logits of one network on ``(C, ...)`` data (float16 by default).

    The defaults are nnU-Net's steps. medseg's faster paths (each off by default):

    - ``batch``: windows per forward pass (each window's result is the same up to float rounding);
    - ``amp_dtype``: autocast dtype for the network (``torch.bfloat16``...; nnU-Net: none on the CPU);
    - ``mirror``: ``"single"`` mirrors each axis alone instead of every combination, ``False`` not at all;
    - ``logits_dtype``: accumulate in this dtype (``torch.float32``; nnU-Net: float16);
    - ``channels_last``: windows in channels-last layout (the network's weights too: ``prepare_model``);
    - ``cast_weights``: with ``amp_dtype``, the network runs wholly in that dtype (weights cast by the caller,
      normalisations included) instead of under autocast, which on a CPU converts the activations to float32
      and back around every normalisation layer;
    - ``skip_constant``: a window whose input is one value everywhere (air clipped to the CT floor, zero
      background, padding) gives the same network output wherever it lies: it runs once per value and is
      reused -- no label change;
    - ``air_below``: windows whose every (normalised) voxel is below this value are not run at all; voxels that
      only such windows cover get ``background`` logits (a vector of ``heads`` values).
    """
    import torch

    batch = max(1, int(batch))
    acc_dtype = logits_dtype or torch.half
    with torch.inference_mode():
        x, revert = pad_to(data, patch)
        slicers = _slicers(x.shape[1:], patch, step)
        windows = _Windows(
            lambda tiles: _mirror_predict(net, tiles, mirror_axes, mirror, amp_dtype, channels_last, cast_weights),
            x.shape[1:],
            heads,
            patch,
            acc_dtype,
            batch=batch,
            device=device,
        )
        if hasattr(net, "expect_calls"):  # compile="auto" weighs the passes to come (at most: windows may be skipped)
            net.expect_calls(-(-len(slicers) // batch) * (1 + len(mirror_combinations(mirror_axes, mirror))))
        for n, sl in enumerate(slicers):
            if windows.visit(sl, x[sl][None], skip_constant=skip_constant, air_below=air_below) and progress:
                progress(n + 1, len(slicers))
        logits = windows.finish(heads, background)
        windows.record(stats)
        return logits[(slice(None), *revert)]


def air_threshold(model, air_hu: float) -> float | None:
    """The normalised value of ``air_hu`` for a one-channel CT model (``CTNormalization``): a window entirely below
    it is air. None for other schemes (windows of zero background are constant: ``skip_constant`` covers them)."""
    conf = model.conf
    if list(conf["normalization_schemes"]) != ["CTNormalization"]:
        return None
    props = model.plans.get("foreground_intensity_properties_per_channel", {}).get("0")
    if not props:
        return None
    lo = float(props["percentile_00_5"])
    if air_hu <= lo:  # air is clipped to the floor: windows of it are constant (reused, not skipped)
        return None
    return (min(air_hu, float(props["percentile_99_5"])) - props["mean"]) / max(props["std"], 1e-8)


def background_logits(model) -> list:
    """Logits that decode to background: class 0 wins (softmax), every region off (sigmoid)."""
    lab = model.labels
    if lab.regions:
        return [-20.0] * lab.heads
    return [20.0] + [0.0] * (lab.heads - 1)


def in_dtype(net, dtype):
    """``net`` with its weights in ``dtype``: itself when they already are, else a converted copy (the loaded network
    is left as it is; ``NnunetPredictor`` keeps the copy for its later cases)."""
    import copy

    if next(net.parameters()).dtype == dtype:
        return net
    return copy.deepcopy(net).to(dtype=dtype)


#: ``compile="auto"`` compiles a network once the eager seconds it has spent (this case and earlier ones of the same
#: predictor) plus those its passes still expected in this case would take (its first pass's seconds times the
#: passes: windows times mirrorings) reach this: inductor takes 5-15 s to compile an nnU-Net network on a 2-core CPU
#: and saves 30-50% of each later pass (full-width PlainConvUNet, 48x128x160 window: bf16 0.99 s eager, 0.69 s
#: compiled; float32 3.04 s, 1.46 s), so the compile is paid only where the passes repay it. A full-width network on
#: a CT-sized case is compiled from its second pass; a narrow one in float32 (512 passes of 0.17 s) too; the same
#: narrow network cast to bf16 (0.045 s a pass, 23 s a case) from its second case in a batch.
COMPILE_WORTH_S = 45.0
#: Where the caller gives no expectation (``expect_calls``), a network whose first pass took this long is compiled.
COMPILE_AFTER_S = 0.5


def compiled(net, *, when="always"):
    """``net`` run through ``torch.compile`` (inductor, weights frozen as constants), compiled for the window shape it
    gets: on its first call (``when="always"`` or ``True``), or (``when="auto"``) once its eager seconds so far plus
    its first call's seconds times the calls still expected (``expect_calls``) reach ``COMPILE_WORTH_S`` (without
    an expectation: once its first call took ``COMPILE_AFTER_S``). Where compiling or running the compiled code fails
    (no C++ compiler on the server, an unsupported operator...), the eager network from then on, with one warning. Same
    arithmetic as ``net`` up to the order of floating-point operations (tests/external/test_nnunet_fast_paths.py)."""
    import time

    import torch

    class CompiledNetwork(torch.nn.Module):
        def __init__(self, net, when):
            super().__init__()
            self.net = net
            self.when = when
            self.failed: str | None = None  # why the compiled network is not used
            self.eager_s: float | None = None  # the first forward pass's seconds (when="auto")
            self.spent_s = 0.0  # seconds of every eager forward pass so far
            self.calls_left: int | None = None  # forward passes still to come in this case (expect_calls)
            object.__setattr__(self, "_compiled", None)  # not a submodule: parameters() are the network's

        def expect_calls(self, n: int) -> None:
            """The number of forward passes the caller is about to make (``when="auto"`` weighs them)."""
            self.calls_left = int(n)

        def _use_compiled(self) -> bool:
            if self.failed is not None:
                return False
            if self.when == "always" or self._compiled is not None:
                return True
            if self.eager_s is None:
                return False
            if self.calls_left is None:
                return self.eager_s >= COMPILE_AFTER_S
            return self.spent_s + self.eager_s * self.calls_left >= COMPILE_WORTH_S  # this call included

        def forward(self, x):
            use = self._use_compiled()
            if self.calls_left:
                self.calls_left -= 1
            if use:
                import torch._inductor.config as inductor_config

                try:
                    # freezing is read when the graph is compiled (first call, recompiles): patched around every call
                    with inductor_config.patch(freezing=True):
                        if self._compiled is None:
                            object.__setattr__(self, "_compiled", torch.compile(self.net, dynamic=False))
                        return self._compiled(x)
                except Exception as exc:  # noqa: BLE001 - any compiler failure falls back to the same network, eager
                    self.failed = (f"{type(exc).__name__}: {exc}".splitlines() or [""])[0][:300]
                    import logging

                    logging.getLogger("medseg").warning(
                        "torch.compile failed (%s); the network runs uncompiled (slower, same labels). Install a C++ "
                        "compiler (g++) or set the 'compile' option to false",
                        self.failed,
                    )
            t0 = time.perf_counter()
            out = self.net(x)
            dt = time.perf_counter() - t0
            self.spent_s += dt
            if self.eager_s is None:
                self.eager_s = dt
            return out

    if when is True:  # the ``compile`` option's own values: True or "auto"
        when = "always"
    if when not in ("always", "auto"):
        raise ValueError(f"when={when!r}: expected 'always' (or True) or 'auto'")
    return CompiledNetwork(net, when)


def predict_logits(nets, data, model, *, step=0.5, device="cpu", mirror=True, **fast):
    """``predict_logits_from_preprocessed_data``: the folds' logits, averaged (float16 unless ``logits_dtype``).
    ``fast``: medseg's switches of ``sliding_window_logits`` (default off: nnU-Net's steps)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(data))
    total = None
    axes = model.mirror_axes if mirror else None
    compile_net = fast.pop("compile", False)
    if fast.get("air_below") is not None and fast.get("background") is None:
        fast["background"] = background_logits(model)
    with torch.inference_mode():
        for net in nets:
            net = net.to(device).eval()
            if fast.get("cast_weights") and fast.get("amp_dtype") is not None:
                net = in_dtype(net, fast["amp_dtype"])
            if fast.get("channels_last"):  # in place (NnunetPredictor passes its own laid-out copies: a no-op)
                net = channels_last_network(net)
            if compile_net and not hasattr(net, "failed"):  # NnunetPredictor passes them compiled already
                net = compiled(net, when=compile_net)
            p = sliding_window_logits(
                net,
                x,
                list(model.conf["patch_size"]),
                model.labels.heads,
                axes,
                step=step,
                device=device,
                mirror=mirror,
                **fast,
            )
            total = p if total is None else total.__iadd__(p)
        if len(nets) > 1:
            total /= len(nets)
    return total


# -------------------------------- export (inference/export_prediction.py)
def export(logits, props: dict, model, *, probabilities: bool = False):
    """``convert_predicted_logits_to_segmentation_with_correct_shape``: the label map (and, if asked,
    the class probabilities) in the reader's array order, full input shape."""
    import torch

    plans, conf = model.plans, model.conf
    tf = plans.get("transpose_forward", [0, 1, 2])
    tb = plans.get("transpose_backward", [0, 1, 2])
    spacing_t = [props["spacing"][i] for i in tf]
    current = props["network_spacing"]
    resampled = resample(
        logits.numpy() if hasattr(logits, "numpy") else logits,
        props["shape_after_cropping"],
        current,
        spacing_t,
        **conf.get("resampling_fn_probabilities_kwargs", {}),
    )
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
    dtype = np.uint8 if max(lab.table.num_classes - 1, 0) < 255 else np.uint16

    if not lab.regions:  # argmax slab by slab: the running maximum of one slab at a time, not of the image
        r = np.asarray(resampled)
        seg = np.empty(r.shape[1:], dtype=dtype)
        for k in range(0, r.shape[1], 16):
            seg[k : k + 16] = first_argmax(r[:, k : k + 16]).numpy()
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


# -------------------------------- medseg's label-only export
def _linear_axis(n_in: int, n_out: int, nearest: bool):
    """Source indices and weights of ``skimage.transform.resize`` (order 1, edge mode: ``scipy.ndimage.zoom`` on the
    pixel grid) along one axis, or of the order-0 ``map_coordinates`` nnU-Net uses on the separate axis."""
    import torch

    if n_in == n_out:
        i = torch.arange(n_out)
        return i, i, torch.zeros(n_out)
    c = (torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5
    if nearest:
        i = torch.floor(c + 0.5).clamp(0, n_in - 1).long()
        return i, i, torch.zeros(n_out)
    c = c.clamp(0, n_in - 1)
    i0 = torch.floor(c).long()
    return i0, (i0 + 1).clamp(max=n_in - 1), (c - i0).float()


def _decide(scores, lab):
    """Labels from scores ``(heads, N)``: argmax, or the regions painted in ``regions_class_order`` (sigmoid > 0.5
    is logit > 0)."""
    import torch

    if not lab.regions:
        return first_argmax(scores)
    out = torch.zeros(scores.shape[1:], dtype=torch.long)
    for i, c in enumerate(lab.regions_class_order):
        out[scores[i] > 0] = c
    return out


#: Where more output voxels of a slab than this share lie between network voxels of different labels (an untrained or
#: noisy network), ``labels_only`` interpolates the slab's scores separably instead of voxel by voxel: the per-voxel
#: gathers then cost more than resampling whole slabs. 5 classes from a 67x205x205 grid to 200x513x513 on 2 cores, 94%
#: of the voxels undecided: 11.3 s by voxel (0.23 us each), 2.9 s by slab; a trained network leaves a few percent
#: undecided.
DENSE_SHARE = 0.2
#: Output voxels times score channels per slab of ``labels_only`` (16 MB of float32 scores per slab).
_SLAB_VOXELS = 1 << 22


def _decide_dense(seg, undecided, scores, axes, lab, s: int, e: int) -> None:
    """``seg`` (output rows ``s:e`` of the first axis) completed where ``undecided`` (a mask of its shape) by
    interpolating ``scores`` along each axis in turn (``torch.lerp`` between the two source rows; the order-0 axis has
    weight 0): the last axis on the network's grid (only the source rows these output rows read), then the first
    axis and the second; only the undecided voxels are written."""
    import torch

    (a0, a1, wa), (b0, b1, wb), (c0, c1, wc) = axes
    lo, hi = int(a0[s:e].min()), int(a1[s:e].max()) + 1
    rows = scores[:, lo:hi]
    along_z = torch.lerp(rows.index_select(3, c0), rows.index_select(3, c1), wc[None, None, None, :])
    t = torch.lerp(
        along_z.index_select(1, a0[s:e] - lo), along_z.index_select(1, a1[s:e] - lo), wa[s:e][None, :, None, None]
    )
    t = torch.lerp(t.index_select(2, b0), t.index_select(2, b1), wb[None, None, :, None])
    seg[undecided] = _decide(t.reshape(scores.shape[0], -1), lab).reshape(seg.shape).to(seg.dtype)[undecided]


def _decide_points(seg, undecided, scores, axes, lab, s: int, chunk: int) -> None:
    """``seg`` (output rows from ``s`` of the first axis) completed where ``undecided``, voxel by voxel, ``chunk``
    voxels at a time: the 2x2x2 neighbours' scores weighted (order 1; weight 0 along an order-0 axis)."""
    import torch

    (a0, a1, wa), (b0, b1, wb), (c0, c1, wc) = axes
    _, Y, Z = seg.shape
    flat = seg.view(-1)
    where = undecided.view(-1).nonzero().squeeze(1)
    for k in range(0, where.numel(), chunk):
        idx = where[k : k + chunk]
        iz, rest = idx % Z, idx // Z
        iy, ix = rest % Y, rest // Y + s
        acc = torch.zeros((scores.shape[0], idx.numel()), dtype=torch.float32)
        for xi, xw in ((a0[ix], 1.0 - wa[ix]), (a1[ix], wa[ix])):
            for yi, yw in ((b0[iy], 1.0 - wb[iy]), (b1[iy], wb[iy])):
                for zi, zw in ((c0[iz], 1.0 - wc[iz]), (c1[iz], wc[iz])):
                    acc.addcmul_(scores[:, xi, yi, zi], (xw * yw * zw)[None])
        flat[idx] = _decide(acc, lab).to(flat.dtype)


def _label_cells(scores, in_shape, axes, lab):
    """The network grid's label where a voxel and its upper neighbours (along the interpolated axes) agree, else
    the ``mixed`` marker (255 for small label sets, -1 for others); returns (cells, mixed)."""
    import torch

    coarse = _decide(scores.reshape(scores.shape[0], -1), lab).reshape(in_shape)
    small = lab.table.num_classes < 255
    dtype, mixed = (torch.uint8, 255) if small else (torch.int32, -1)
    coarse = coarse.to(dtype)
    lo = hi = coarse
    for a, (_i0, _i1, w) in enumerate(axes):
        if bool((w > 0).any()) and coarse.shape[a] > 1:
            nxt_lo = torch.cat([lo.narrow(a, 1, lo.shape[a] - 1), lo.narrow(a, lo.shape[a] - 1, 1)], dim=a)
            nxt_hi = torch.cat([hi.narrow(a, 1, hi.shape[a] - 1), hi.narrow(a, hi.shape[a] - 1, 1)], dim=a)
            lo, hi = torch.minimum(lo, nxt_lo), torch.maximum(hi, nxt_hi)
    return torch.where(lo == hi, lo, torch.full_like(lo, mixed)), mixed


def labels_only(
    logits,
    props: dict,
    model,
    *,
    chunk: int = 1 << 20,
    dense_share: float = DENSE_SHARE,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """The label map of ``export`` without resampling every class's scores to the full grid.

    nnU-Net resamples each head's logits (order 1 in plane, the separate axis order 0) and then decides per voxel.
    Linear interpolation is a convex combination of the 2x2x2 neighbouring grid values: where all of them decide
    the same label (argmax, or region painting: every channel keeps its sign), every point between them does too.
    So the label is looked up from the network grid there, and the scores are interpolated only for output voxels
    whose neighbours disagree (near boundaries), ``chunk`` voxels at a time, or, in a slab where more than
    ``dense_share`` of the voxels disagree, for the whole slab (``_decide_dense``). Slab by slab along the first
    axis (``_SLAB_VOXELS`` scores a slab): memory beyond the label map is a slab's, whatever the image's size.
    Differences from ``export``: float32 instead of float16 rounding of the resampled scores (near-ties).
    Returns the label map in the reader's order, written into ``out`` (zeros of that shape and uint8/uint16, any
    memory layout: medseg's ``(x, y, z)`` map transposed) when given; the caller falls back to ``export`` for
    anything but order-1 probability resampling."""
    import torch

    plans, conf = model.plans, model.conf
    tf = plans.get("transpose_forward", [0, 1, 2])
    tb = plans.get("transpose_backward", [0, 1, 2])
    kw = conf.get("resampling_fn_probabilities_kwargs", {})
    spacing_t = [props["spacing"][i] for i in tf]
    scores = logits if isinstance(logits, torch.Tensor) else torch.from_numpy(np.asarray(logits))
    in_shape = tuple(scores.shape[1:])
    out_shape = tuple(int(s) for s in props["shape_after_cropping"])
    do_sep, axis = separate_z(
        kw.get("force_separate_z"),
        props["network_spacing"],
        spacing_t,
        kw.get("separate_z_anisotropy_threshold", ANISO_THRESHOLD),
    )
    lab = model.labels
    axes = [
        _linear_axis(i, o, nearest=bool(do_sep and a == axis and kw.get("order_z", 0) == 0))
        for a, (i, o) in enumerate(zip(in_shape, out_shape, strict=False))
    ]
    cells, mixed = _label_cells(scores, in_shape, axes, lab)
    (a0, _, _), (b0, _, _), (c0, _, _) = axes
    along_z = cells.index_select(2, c0)
    sc = scores.float() if scores.dtype != torch.float32 else scores
    out_dtype = np.uint8 if max(lab.table.num_classes - 1, 0) < 255 else np.uint16
    shape_before = tuple(int(s) for s in props["shape_before_cropping"])
    if out is None:
        out = np.zeros(tuple(shape_before[i] for i in tb), dtype=out_dtype)
    full = out.transpose(np.argsort(tb))  # the network's order: out is full.transpose(tb)
    if full.shape != shape_before:
        raise ValueError(f"out has shape {out.shape}; expected {tuple(shape_before[i] for i in tb)}")
    crop = full[tuple(slice(a, b) for a, b in props["bbox"])]
    X, Y, Z = out_shape
    rows = max(1, _SLAB_VOXELS // max(1, scores.shape[0] * Y * Z))
    for s in range(0, X, rows):
        e = min(X, s + rows)
        seg = along_z.index_select(0, a0[s:e]).index_select(1, b0)
        undecided = seg == mixed
        n = int(undecided.sum())
        if n > dense_share * seg.numel():
            _decide_dense(seg, undecided, sc, axes, lab, s, e)
        elif n:
            _decide_points(seg, undecided, sc, axes, lab, s, chunk)
        crop[s:e] = seg.numpy()
    return out


def labels_only_applies(model) -> bool:
    """``labels_only`` reproduces order-1 resampling of the scores (nnU-Net's default) on 3D grids."""
    kw = model.conf.get("resampling_fn_probabilities_kwargs", {})
    return int(kw.get("order", 1)) == 1 and int(kw.get("order_z", 0)) in (0, 1) and len(model.conf["patch_size"]) == 3
