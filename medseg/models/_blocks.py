"""Building blocks shared by the model families, for 2D and 3D through one code path.

Every block takes ``spatial_dims`` and picks its layers from MONAI's
dimension-aware factories (``Conv``, ``Pool``, ``get_norm_layer``,
``get_act_layer``), so a family written once serves both 2D and 3D.
``norm`` and ``act`` are MONAI layer names: ``"batch"``, ``"instance"``,
``("group", {"num_groups": 8})``, ``"relu"``, ``("leakyrelu", {"negative_slope": 0.01})``...
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv, Pool
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from torch import nn


def conv(spatial_dims: int, cin: int, cout: int, kernel: int = 3, *, stride: int = 1, dilation: int = 1, bias: bool = True) -> nn.Module:
    """A "same" convolution (padding keeps the size at stride 1)."""
    return Conv[Conv.CONV, spatial_dims](cin, cout, kernel, stride=stride, padding=dilation * (kernel - 1) // 2, dilation=dilation, bias=bias)


def norm_layer(norm, spatial_dims: int, channels: int) -> nn.Module:
    return nn.Identity() if norm in (None, "none", "") else get_norm_layer(norm, spatial_dims, channels)


def act_layer(act) -> nn.Module:
    return nn.Identity() if act in (None, "none", "") else get_act_layer(act)


class ConvNormAct(nn.Sequential):
    """conv -> norm -> act. The conv has no bias when a norm follows it."""

    def __init__(self, spatial_dims, cin, cout, kernel=3, *, stride=1, dilation=1, norm="batch", act="relu"):
        has_norm = norm not in (None, "none", "")
        super().__init__(
            conv(spatial_dims, cin, cout, kernel, stride=stride, dilation=dilation, bias=not has_norm),
            norm_layer(norm, spatial_dims, cout),
            act_layer(act),
        )


class DoubleConv(nn.Sequential):
    """The U-Net stage: two 3x3 conv-norm-act (the second may be followed by dropout)."""

    def __init__(self, spatial_dims, cin, cout, *, norm="batch", act="relu", dropout=0.0):
        layers = [ConvNormAct(spatial_dims, cin, cout, norm=norm, act=act), ConvNormAct(spatial_dims, cout, cout, norm=norm, act=act)]
        if dropout:
            layers.append(nn.Dropout(dropout))
        super().__init__(*layers)


class ResBlock(nn.Module):
    """Basic residual block (ResNet-18/34 style): two 3x3 convs and a projection shortcut when the shape changes."""

    def __init__(self, spatial_dims, cin, cout, *, stride=1, dilation=1, norm="batch", act="relu", dropout=0.0):
        super().__init__()
        self.body = nn.Sequential(
            ConvNormAct(spatial_dims, cin, cout, stride=stride, dilation=dilation, norm=norm, act=act),
            nn.Dropout(dropout) if dropout else nn.Identity(),
            ConvNormAct(spatial_dims, cout, cout, dilation=dilation, norm=norm, act=None),
        )
        self.skip = nn.Identity() if (cin == cout and stride == 1) else ConvNormAct(spatial_dims, cin, cout, 1, stride=stride, norm=norm, act=None)
        self.act = act_layer(act)

    def forward(self, x):
        return self.act(self.body(x) + self.skip(x))


def max_pool(spatial_dims: int, k: int = 2) -> nn.Module:
    return Pool[Pool.MAX, spatial_dims](k)


def up_conv(spatial_dims: int, cin: int, cout: int, factor: int = 2, *, bilinear_init: bool = False) -> nn.Module:
    """Learned upsampling by ``factor`` with a transposed convolution whose output is exactly ``factor`` x the input.

    ``bilinear_init`` starts it as (bi/tri)linear interpolation, channel to channel,
    as FCN does for its score upsampling (needs ``cin == cout``).
    """
    k, pad = (2 * factor, factor // 2) if bilinear_init else (factor, 0)  # both give exactly factor x n
    layer = Conv[Conv.CONVTRANS, spatial_dims](cin, cout, k, stride=factor, padding=pad, bias=not bilinear_init)
    if bilinear_init:
        with torch.no_grad():
            layer.weight.zero_()
            kern = _linear_kernel(k, factor, spatial_dims)
            for c in range(min(cin, cout)):
                layer.weight[c, c] = kern
    return layer


def _linear_kernel(k: int, factor: int, spatial_dims: int) -> torch.Tensor:
    center = factor - 0.5  # k == 2 * factor (even)
    og = 1 - torch.abs(torch.arange(k, dtype=torch.float32) - center) / factor
    kern = og
    for _ in range(spatial_dims - 1):
        kern = kern[..., None] * og
    return kern


def resize(x: torch.Tensor, size) -> torch.Tensor:
    """(Bi/tri)linear resize of a 2D or 3D feature map to ``size``."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    mode = "bilinear" if x.ndim == 4 else "trilinear"
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False)


class PadToDivisor(nn.Module):
    """Base for networks that need sizes divisible by ``self.divisor``: pads the input with zeros and crops the output.

    Subclasses implement ``_forward``. Sizes already divisible pass through untouched,
    so at the registry's divisor nothing is padded.
    """

    divisor: int = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        target = [int(math.ceil(s / self.divisor) * self.divisor) for s in size]
        if list(size) == target:
            return self._forward(x)
        pad = []
        for s, t in zip(reversed(size), reversed(target)):
            pad += [0, t - s]
        y = self._forward(F.pad(x, pad))
        return y[(slice(None), slice(None), *(slice(0, s) for s in size))]

    def _forward(self, x):  # pragma: no cover - abstract
        raise NotImplementedError
