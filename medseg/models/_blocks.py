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


def conv(
    spatial_dims: int, cin: int, cout: int, kernel: int = 3, *, stride: int = 1, dilation: int = 1, bias: bool = True
) -> nn.Module:
    """A "same" convolution (padding keeps the size at stride 1)."""
    return Conv[Conv.CONV, spatial_dims](
        cin, cout, kernel, stride=stride, padding=dilation * (kernel - 1) // 2, dilation=dilation, bias=bias
    )


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
        layers = [
            ConvNormAct(spatial_dims, cin, cout, norm=norm, act=act),
            ConvNormAct(spatial_dims, cout, cout, norm=norm, act=act),
        ]
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
        self.skip = (
            nn.Identity()
            if (cin == cout and stride == 1)
            else ConvNormAct(spatial_dims, cin, cout, 1, stride=stride, norm=norm, act=None)
        )
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
    trans = SubpixelConvTranspose3d if spatial_dims == 3 else SubpixelConvTranspose2d
    layer = (
        trans(cin, cout, k, stride=factor, padding=pad, bias=not bilinear_init)
        if bilinear_init and factor % 2 == 0
        else Conv[Conv.CONVTRANS, spatial_dims](cin, cout, k, stride=factor, padding=pad, bias=not bilinear_init)
    )
    if bilinear_init:
        with torch.no_grad():
            layer.weight.zero_()
            kern = _linear_kernel(k, factor, spatial_dims)
            for c in range(min(cin, cout)):
                layer.weight[c, c] = kern
    return layer


def subpixel_conv_transpose(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, factor: int
) -> torch.Tensor:
    """``conv_transpose(x, weight, stride=factor, padding=factor // 2)`` for kernels of ``2 * factor``, as a sub-pixel
    convolution.

    Each output voxel of such a transposed convolution sums exactly two input samples
    per axis (kernel taps ``r`` and ``r + factor``, ``r`` its phase). So it equals a
    convolution with a 2-wide kernel into ``cout * factor**d`` channels (one per phase),
    rearranged into space and cropped by ``factor // 2``: the same numbers (up to
    float rounding), but one dense matrix product instead of a scatter over a
    ``(2 * factor)**d`` kernel, which CPU libraries run slowly for large factors
    (FCN-32s's 64^3 kernel in 3D).
    """
    d = x.ndim - 2
    f = factor
    cin, cout = weight.shape[:2]
    # taps: a = 0 reads input i - 1 (kernel index r + f), a = 1 reads input i (kernel index r)
    w = weight.reshape(cin, cout, *[2, f] * d)  # kernel index t = b * f + r, b = 1 - a
    w = w.flip(dims=tuple(2 + 2 * j for j in range(d)))  # b -> a
    # (cin, cout, a1, r1, a2, r2, ...) -> (cout, r1, r2, ..., cin, a1, a2, ...)
    perm = [1] + [3 + 2 * j for j in range(d)] + [0] + [2 + 2 * j for j in range(d)]
    w = w.permute(*perm).reshape(cout * f**d, cin, *[2] * d)
    b = None if bias is None else bias.repeat_interleave(f**d)
    conv_fn = F.conv3d if d == 3 else F.conv2d
    y = conv_fn(F.pad(x, [1, 1] * d), w, b)  # (N, cout * f^d, n1 + 1, ...)
    n = y.shape[2:]
    y = y.reshape(y.shape[0], cout, *[f] * d, *n)
    # (N, cout, r1.., m1..) -> (N, cout, m1, r1, m2, r2, ...)
    perm = [0, 1] + [p for j in range(d) for p in (2 + d + j, 2 + j)]
    y = y.permute(*perm).reshape(y.shape[0], cout, *[m * f for m in n])
    h = f // 2
    return y[(slice(None), slice(None), *(slice(h, h + (m - 1) * f) for m in n))]


class _Subpixel:
    """``forward`` by ``subpixel_conv_transpose``; mixed into torch's ConvTranspose layers (same parameters and state
    dict).

    Only for kernel ``2 * stride`` and padding ``stride // 2`` with an even stride (FCN's upsampling layers).
    """

    def forward(self, x, output_size=None):
        if output_size is not None:  # pragma: no cover - never used by medseg's models
            return super().forward(x, output_size)
        return subpixel_conv_transpose(x, self.weight, self.bias, self.stride[0])


class SubpixelConvTranspose3d(_Subpixel, nn.ConvTranspose3d):
    """``nn.ConvTranspose3d`` computed as a sub-pixel convolution."""


class SubpixelConvTranspose2d(_Subpixel, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` computed as a sub-pixel convolution."""


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


def pad_to_multiples(x: torch.Tensor, divisors) -> torch.Tensor:
    """``x`` zero-padded at the far end of each spatial axis to a multiple of that axis's divisor (``x`` itself when it
    is one)."""
    size = x.shape[2:]
    target = [int(math.ceil(s / d) * d) for s, d in zip(size, divisors, strict=False)]
    if list(size) == target:
        return x
    pad = []
    for s, t in zip(reversed(size), reversed(target), strict=False):
        pad += [0, t - s]
    return F.pad(x, pad)


class PadToDivisor(nn.Module):
    """Base for networks that need sizes divisible by ``self.divisor``: pads the input with zeros and crops the output.

    Subclasses implement ``_forward``. Sizes already divisible pass through untouched,
    so at the registry's divisor nothing is padded.
    """

    divisor: int = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        padded = pad_to_multiples(x, [self.divisor] * len(size))
        y = self._forward(padded)
        return y if padded is x else y[(slice(None), slice(None), *(slice(0, s) for s in size))]

    def _forward(self, x):  # pragma: no cover - abstract
        raise NotImplementedError
