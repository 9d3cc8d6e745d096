"""Segmentation loss for one output or for deep-supervision outputs at several resolutions.

Models with deep supervision (``unet_plain`` in ``train()`` mode) return a list of
logits, full resolution first, then 1/2, 1/4, ... (one per decoder stage). The
loss of such a list is nnU-Net's (``DeepSupervisionWrapper``): the target is
down-sampled (nearest) to each output's grid, and the per-scale losses are
combined with weights ``1 / 2**i`` where the lowest resolution gets 0, normalised
to sum to 1 (4 outputs: 8/14, 4/14, 2/14, 0).

    loss = segmentation_loss(loss_fn, model(x), y)
    logits = full_resolution(outputs)   # what the adversarial term and metrics need
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from medseg.errors import ConfigError, UnknownComponentError
from medseg.registry import Registry


def deep_supervision_weights(n: int) -> list[float]:
    """nnU-Net's weights for ``n`` outputs, highest resolution first: 1/2**i, the last 0, normalised to sum 1."""
    if n < 1:
        raise ValueError("deep supervision needs at least one output")
    w = [1.0 / 2**i for i in range(n)]
    if n > 1:
        w[-1] = 0.0
    total = sum(w)
    return [x / total for x in w]


def downsample_target(target: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The label map ``target`` (N, 1, *spatial) on the grid ``size`` by nearest-neighbour sampling (voxel centres)."""
    if tuple(target.shape[2:]) == tuple(size):
        return target
    out = F.interpolate(torch.as_tensor(target).float(), size=tuple(size), mode="nearest-exact")
    return out.to(target.dtype)


def full_resolution(outputs) -> torch.Tensor:
    """The full-resolution logits of a model's output (the tensor itself, or the first of a list)."""
    return outputs if isinstance(outputs, torch.Tensor) else outputs[0]


def segmentation_loss(loss_fn: Callable, outputs, target: torch.Tensor) -> torch.Tensor:
    """``loss_fn(outputs, target)`` for a tensor; for a list/tuple (highest resolution first) the
    deep-supervision sum of ``loss_fn`` over the scales with ``deep_supervision_weights``.

    Outputs are cast to float32 (autocast may give bf16). A zero-weight scale is still
    evaluated (times 0), so every parameter takes part in the graph (DistributedDataParallel
    requires it).
    """
    if isinstance(outputs, torch.Tensor):
        return loss_fn(outputs.float(), target)
    outputs = list(outputs)
    weights = deep_supervision_weights(len(outputs))
    total = None
    for w, out in zip(weights, outputs, strict=False):
        term = w * loss_fn(out.float(), downsample_target(target, out.shape[2:]))
        total = term if total is None else total + term
    return total


# --- the loss itself, chosen by name (``training.loss``) --------------------------------------------

#: Training losses by name; plugins through the ``medseg.losses`` entry-point group. A builder takes no
#: arguments and returns ``loss(logits [B, C, ...], target [B, 1, ...] class indices) -> scalar``.
LOSSES: Registry = Registry("loss", entry_point_group="medseg.losses")


@LOSSES.register("dice_ce", description="Dice + cross-entropy, softmax over classes (nnU-Net's and MONAI's default)")
def dice_ce():
    from monai.losses import DiceCELoss

    return DiceCELoss(to_onehot_y=True, softmax=True)


@LOSSES.register("dice", description="soft Dice over the foreground and background classes, softmax")
def dice():
    from monai.losses import DiceLoss

    return DiceLoss(to_onehot_y=True, softmax=True)


@LOSSES.register("ce", description="cross-entropy over classes")
def ce():
    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target[:, 0].long())

    return loss


def check_loss_name(name: str, source: str = "config") -> None:
    """Refuse an unknown ``training.loss`` in one line with the registry's "did you mean" (before any work)."""
    try:
        LOSSES.get(name)
    except UnknownComponentError as exc:
        raise ConfigError(f"{source}: training.loss: {exc}") from None


def build_loss(name: str) -> Callable:
    """The loss registered as ``name`` (an unknown name: ``UnknownComponentError`` with close matches)."""
    return LOSSES.get(name).builder()
