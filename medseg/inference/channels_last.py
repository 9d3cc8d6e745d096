"""Channels-last inference without the normalisation round trips.

PyTorch's instance normalisation makes its input contiguous (channels first) before it normalises, so in a
network laid out channels-last every instance norm copies its input out of that layout and the next convolution
copies it back. On a 2-core CPU a full-width nnU-Net window (48x128x160, bf16) spent 0.45 s of its 1.16 s in those
copies. With one image in the batch, instance normalisation *is* batch normalisation with the batch's own
statistics, which PyTorch computes in the channels-last layout itself: the same window then took 0.61-0.72 s
against 0.98-1.07 s in the usual layout, with no compile (benchmarks/results/2026-12-01_channels_last_norm.txt).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medseg.inference.sliding_window import prepare_model

_INSTANCE_NORMS = (torch.nn.InstanceNorm2d, torch.nn.InstanceNorm3d)
#: PyTorch's channels-last batch norm runs across the channels in vectors of 16; under that it falls to a scalar
#: loop (bf16, 8 channels, 300,000 voxels: 6.9 ms against 1.4 ms for instance norm with its two copies and 0.6 ms
#: channels-first; from 16 channels on it matches channels-first: 0.34-0.69 ms), so narrower layers keep instance norm.
MIN_CHANNELS = 16


class LayoutInstanceNorm(torch.nn.Module):
    """An instance normalisation (its own weight, bias and eps, no running statistics) that keeps its input's memory
    layout: batch normalisation with the batch's statistics when the batch holds one image of ``MIN_CHANNELS`` or
    more channels, PyTorch's instance norm otherwise. The statistics are summed in another order than instance
    norm's (float32 logits of a full-width window moved by 2e-4), so it is for the reduced-precision paths, not for
    nnU-Net's own arithmetic."""

    def __init__(self, norm: torch.nn.Module):
        super().__init__()
        self.register_parameter("weight", norm.weight)  # the same parameters: state_dict keys unchanged
        self.register_parameter("bias", norm.bias)
        self.eps = float(norm.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 1 and x.shape[1] >= MIN_CHANNELS:
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        return F.instance_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)


def layout_instance_norms(model: torch.nn.Module) -> int:
    """Replace, in place, each instance normalisation of ``model`` that normalises by its input's own statistics
    with a ``LayoutInstanceNorm`` (those with running statistics stay); the number replaced. Idempotent; a module
    shared by two parents (nnU-Net's decoder holds its encoder) is replaced under both."""
    done = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, _INSTANCE_NORMS) and not child.track_running_stats:
                setattr(parent, name, LayoutInstanceNorm(child))
                done += 1
    return done


def channels_last_network(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` (converted in place) with its instance norms layout-keeping and its weights channels-last."""
    layout_instance_norms(model)
    return prepare_model(model, channels_last=True)


def channels_last_training(
    model: torch.nn.Module, *, device: torch.device, batch_size: int, amp_dtype, world: int = 1
) -> bool:
    """Lay ``model`` out for training in channels-last with layout-keeping instance norms (in place) where that was
    measured to pay: on a CPU, one image a step, reduced precision, one process. True when converted (the caller then
    feeds channels-last batches). Only networks whose every instance norm has ``MIN_CHANNELS`` or more channels: under
    that the norm falls back to the copying path and the layout costs more than it saves. Measured (bf16, batch 1):
    nnU-Net's plain U-Net 16..256 on 80x80x96, 2 threads, 0.50 s a step against 0.66-0.86 s; on 96x96x64, one
    thread, the FCN-8s preset 0.237 against 0.292 s, the DeepLabV3 preset 0.181 against 0.202 s; the classic U-Net
    preset (8-channel first stage) 10% slower if forced, so it is left alone, as is MONAI's residual U-Net (its last
    up-convolution normalises the class channels; little to gain: 0.92-0.98x if forced). The parameters and their
    state_dict keys stay as they were (checkpoints unchanged). Results:
    benchmarks/results/2026-12-01_training_channels_last.txt."""
    if device.type != "cpu" or batch_size != 1 or amp_dtype is None or world != 1:
        return False
    norms = [m for m in model.modules() if isinstance(m, _INSTANCE_NORMS) and not m.track_running_stats]
    if not norms or min(m.num_features for m in norms) < MIN_CHANNELS:
        return False
    channels_last_network(model)
    return True
