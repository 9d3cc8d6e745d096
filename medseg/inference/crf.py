"""Dense-CRF refinement of class scores, mean-field with local-window messages (ConvCRF style), pure torch.

DeepLab v1/v2 sharpened its coarse score maps with a fully connected CRF
(Kraehenbuehl & Koltun 2011). ConvCRF (Teichmann & Cipolla 2018) keeps the
same Gibbs energy but lets each voxel exchange messages only with neighbours
within a ``kernel_size`` window, which is a handful of shifted tensor products:
no compiled extension, any device, 2D or 3D. (MONAI's ``CRF`` block needs a
compiled C++/CUDA extension that the PyPI wheel lacks.)

Energy: unary = the network's scores; pairwise = Potts compatibility with the
kernel ``k(i, j) = w_appearance * exp(-|p_i - p_j|^2 / 2 theta_alpha^2 - |I_i - I_j|^2 / 2 theta_beta^2)
+ w_smoothness * exp(-|p_i - p_j|^2 / 2 theta_gamma^2)``, positions ``p`` in voxels
(or mm when ``spacing`` is given) and intensities ``I`` in the image's own units.
Each mean-field step: ``Q = softmax(scores + sum_j k(., j) Q_j)``.

Cost per iteration: ``(kernel_size ** d - 1) / 2`` window offsets (each offset
pair shares one kernel evaluation), each a few element-wise ops on a
``(N, C, *spatial)`` tensor. Memory: about four such tensors, plus the window kernels (one channel per
offset) while they fit in 128 MB; larger volumes recompute them every step.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

#: Kernels are kept across iterations while they take at most this many elements (128 MB float32).
_CACHE_ELEMENTS = 2**25


def _check_shapes(scores: torch.Tensor, image: torch.Tensor, kernel_size: int) -> None:
    """``crf_refine``'s arguments: a ``ValueError`` naming what does not fit."""
    if scores.ndim not in (4, 5):
        raise ValueError(f"crf_refine: scores must be (N, C, H, W) or (N, C, H, W, D), got shape {tuple(scores.shape)}")
    if image.ndim != scores.ndim or image.shape[0] != scores.shape[0] or image.shape[2:] != scores.shape[2:]:
        raise ValueError(
            f"crf_refine: image {tuple(image.shape)} must be (N, K, *spatial) on the scores' grid {tuple(scores.shape)}"
        )
    if kernel_size < 3 or kernel_size % 2 == 0:
        raise ValueError(f"crf_refine: kernel_size must be odd and >= 3, got {kernel_size}")


def crf_refine(
    scores: torch.Tensor,
    image: torch.Tensor,
    *,
    iterations: int = 5,
    kernel_size: int = 5,
    theta_alpha: float = 2.0,
    theta_beta: float = 0.05,
    theta_gamma: float = 1.0,
    w_appearance: float = 0.5,
    w_smoothness: float = 0.25,
    spacing=None,
) -> torch.Tensor:
    """Refine class scores with a mean-field dense CRF guided by ``image``; returns scores of the same shape.

    Args:
        scores: ``(N, C, *spatial)`` logits (2D or 3D spatial). Their softmax is the initial
            belief; the returned tensor's softmax is the refined belief (take ``argmax(1)`` for labels).
        image: ``(N, K, *spatial)`` guide image on the same grid (any number of channels),
            in the units ``theta_beta`` is given in (the predictor's window-normalised [0, 1] image).
        iterations: mean-field steps (0 returns ``scores`` unchanged).
        kernel_size: odd window width in voxels along every axis.
        theta_alpha / theta_gamma: spatial widths of the appearance / smoothness kernels
            (voxels, or mm when ``spacing`` is given).
        theta_beta: intensity width of the appearance kernel.
        w_appearance / w_smoothness: kernel weights (0 switches a kernel off).
        spacing: optional voxel size per spatial axis, so that thetas are in mm.

    Runs on the tensors' device and dtype (computed in float32 at least); wrap in
    ``torch.no_grad()`` at inference (it is differentiable otherwise).
    """
    _check_shapes(scores, image, kernel_size)
    if iterations <= 0:
        return scores
    d = scores.ndim - 2
    spacing = [1.0] * d if spacing is None else [float(s) for s in spacing]
    if len(spacing) != d:
        raise ValueError(f"crf_refine: spacing needs {d} values, got {spacing}")

    dtype = torch.promote_types(scores.dtype, torch.float32)
    unary = scores.to(dtype)
    img = image.to(device=scores.device, dtype=dtype)
    r = kernel_size // 2
    size = scores.shape[2:]
    pad = [r] * (2 * d)
    img_p = F.pad(img, pad, mode="replicate")
    valid = F.pad(torch.ones((1, 1, *size), device=scores.device, dtype=dtype), pad)  # 0 outside the volume

    def window(t: torch.Tensor, off) -> torch.Tensor:  # t padded by r: the neighbour at offset ``off`` of every voxel
        return t[(slice(None), slice(None), *(slice(r + o, r + o + s) for o, s in zip(off, size, strict=False)))]

    # Half of the offsets: k(i, i+o) == k(i+o, i), so each kernel is computed once per step and used both ways.
    offsets = [o for o in itertools.product(range(-r, r + 1), repeat=d) if o > (0,) * d]

    def kernel(off) -> torch.Tensor:  # k(i, i+off) at every i; 0 where i+off is outside the volume
        dist2 = sum((o * s) ** 2 for o, s in zip(off, spacing, strict=False))
        k = w_smoothness * torch.exp(torch.tensor(-dist2 / (2 * theta_gamma**2), dtype=dtype))
        if w_appearance:
            diff2 = (window(img_p, off) - img).square().sum(1, keepdim=True)
            k = k + w_appearance * torch.exp(-dist2 / (2 * theta_alpha**2) - diff2 / (2 * theta_beta**2))
        return k * window(valid, off)

    n_voxels = img.shape[0] * img[0, 0].numel()
    cached = [kernel(o) for o in offsets] if n_voxels * len(offsets) <= _CACHE_ELEMENTS else None

    logits = unary
    centre = (slice(None), slice(None), *(slice(r, r + s) for s in size))
    for _ in range(iterations):
        q = torch.softmax(logits, dim=1)
        q_p = F.pad(q, pad)
        msg_p = torch.zeros_like(q_p)
        msg = msg_p[centre]
        for i, off in enumerate(offsets):
            k = cached[i] if cached is not None else kernel(off)
            msg.addcmul_(k, window(q_p, off))  # from i+off to i
            window(msg_p, off).addcmul_(k, q)  # from i to i+off: the same kernel value
        logits = unary + msg  # Potts: a label gains what its neighbours believe in it
    return logits.to(scores.dtype)
