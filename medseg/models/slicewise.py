"""Run a 2D model on 3D volumes slice by slice (nnU-Net's "2d" configuration).

``SliceWise(net2d)`` is a module that takes ``(N, C, X, Y, Z)`` and applies the
2D network to every slice along ``axis`` (the last, axial one by default) as one
batch of ``N * Z`` images, returning ``(N, out, X, Y, Z)``. The 3D training loop
and the 3D sliding-window inferer then handle a 2D model unchanged: a training
patch becomes a batch of its slices, and an inference window a stack of
independently segmented slices. Its weights are the 2D network's (``state_dict``
keys are prefixed with ``net.``).

    net = SliceWise(create_model("unet_classic", spatial_dims=2, in_channels=1, out_channels=5))

A 2D model with deep supervision (``unet_plain`` in training) returns a list of
scales; each comes back as a volume with the slice axis kept at full size.

Note that batch-norm statistics are then taken over all slices of a batch
(correlated neighbours): use a slice-sampling loader for faithful 2D training.
"""

from __future__ import annotations

import torch
from torch import nn


class SliceWise(nn.Module):
    def __init__(self, net: nn.Module, axis: int = -1):
        super().__init__()
        if axis not in (-1, -2, -3, 2, 3, 4):
            raise ValueError(
                f"SliceWise: axis must be a spatial axis of (N, C, X, Y, Z) (2, 3, 4 or -3, -2, -1), got {axis}"
            )
        self.net = net
        self.axis = axis % 5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"SliceWise expects a (N, C, X, Y, Z) volume batch, got shape {tuple(x.shape)}")
        n, c = x.shape[:2]
        # (N, C, a, b, S) -> (N * S, C, a, b)
        v = x.movedim(self.axis, 2)  # (N, C, S, a, b)
        s, rest = v.shape[2], v.shape[3:]
        y = self.net(v.transpose(1, 2).reshape(n * s, c, *rest))
        if isinstance(y, (list, tuple)):  # deep supervision: every scale back to (N, out, X, Y, Z) order
            return [self._unfold(o, n, s) for o in y]
        return self._unfold(y, n, s)

    def _unfold(self, y: torch.Tensor, n: int, s: int) -> torch.Tensor:
        y = y.reshape(n, s, *y.shape[1:]).transpose(1, 2)  # (N, out, S, a, b)
        return y.movedim(2, self.axis)
