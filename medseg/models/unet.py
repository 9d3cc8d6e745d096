"""U-Net family for 2D and 3D through one code path.

- ``unet``: MONAI's residual U-Net (residual units in every stage, strided convs);
  the default of the training configs.
- ``unet_classic``: the original U-Net (Ronneberger et al. 2015): two 3x3
  conv-BN-ReLU per stage, 2x max-pooling down, 2x2 transposed convolutions up,
  skip connections by concatenation; 64-128-256-512-1024 at default width.
- ``unet_attention``: the same network with attention gates on the skip
  connections (Oktay et al. 2018): the decoder signal decides which skip voxels pass.

Depth is ``len(channels) - 1`` down-sampling steps; input sizes must be divisible
by ``2 ** (len(channels) - 1)`` (other sizes are zero-padded and cropped back).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from medseg.errors import ConfigError
from medseg.models._blocks import ConvNormAct, DoubleConv, PadToDivisor, conv, max_pool, pad_to_multiples, up_conv
from medseg.models._registry import MODELS


class AttentionGate(nn.Module):
    """Additive attention: ``skip * sigmoid(psi(relu(Wg g + Wx skip)))``, one weight per voxel."""

    def __init__(self, spatial_dims: int, channels: int, inter: int, norm="batch"):
        super().__init__()
        self.wg = ConvNormAct(spatial_dims, channels, inter, 1, norm=norm, act=None)
        self.wx = ConvNormAct(spatial_dims, channels, inter, 1, norm=norm, act=None)
        self.psi = nn.Sequential(ConvNormAct(spatial_dims, inter, 1, 1, norm=norm, act=None), nn.Sigmoid())

    def forward(self, g: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return skip * self.psi(torch.relu(self.wg(g) + self.wx(skip)))


class UNet(PadToDivisor):
    def __init__(
        self,
        spatial_dims,
        in_channels,
        out_channels,
        *,
        channels,
        norm="batch",
        act="relu",
        dropout=0.0,
        attention=False,
        deep_supervision=False,
        init="default",
    ):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) < 2:
            raise ConfigError(
                f"unet: channels needs at least 2 stages (one down-sampling), got {list(channels)}; e.g. [32, 64, 128, "
                "256]"
            )
        self.divisor = 2 ** (len(channels) - 1)
        kw = dict(norm=norm, act=act)
        self.stem = DoubleConv(spatial_dims, in_channels, channels[0], **kw)
        self.down = nn.ModuleList(
            nn.Sequential(
                max_pool(spatial_dims),
                DoubleConv(
                    spatial_dims, channels[i - 1], channels[i], dropout=dropout if i == len(channels) - 1 else 0.0, **kw
                ),
            )
            for i in range(1, len(channels))
        )
        self.up = nn.ModuleList(
            up_conv(spatial_dims, channels[i], channels[i - 1]) for i in range(len(channels) - 1, 0, -1)
        )
        self.gates = nn.ModuleList(
            (
                AttentionGate(spatial_dims, channels[i - 1], max(1, channels[i - 1] // 2), norm=norm)
                if attention
                else nn.Identity()
            )
            for i in range(len(channels) - 1, 0, -1)
        )
        self.decode = nn.ModuleList(
            DoubleConv(spatial_dims, 2 * channels[i - 1], channels[i - 1], **kw)
            for i in range(len(channels) - 1, 0, -1)
        )
        self.head = conv(spatial_dims, channels[0], out_channels, 1)
        self.attention = attention
        self.deep_supervision = bool(deep_supervision)
        # deep supervision: 1x1 heads on the decoder stages below full resolution (1/2, 1/4, ...)
        self.aux_heads = (
            nn.ModuleList(conv(spatial_dims, channels[i - 1], out_channels, 1) for i in range(2, len(channels)))
            if deep_supervision
            else nn.ModuleList()
        )
        if init == "he":
            self.apply(_he_init)
        elif init != "default":
            raise ConfigError(f"unet: init must be 'default' or 'he', got {init!r}")

    def forward(self, x):
        if not (self.deep_supervision and self.training):
            return super().forward(x)
        outs = self._forward(x, all_scales=True)
        if all(s % self.divisor == 0 for s in x.shape[2:]):
            return outs
        raise ConfigError(
            f"unet: deep supervision in training needs patch sizes divisible by {self.divisor}, got {list(x.shape[2:])}"
        )

    def _forward(self, x, all_scales=False):
        skips = [self.stem(x)]
        for down in self.down:
            skips.append(down(skips[-1]))
        x = skips.pop()
        outs = []
        for up, gate, decode in zip(self.up, self.gates, self.decode, strict=False):
            x = up(x)
            skip = skips.pop()
            if self.attention:
                skip = gate(x, skip)
            x = decode(torch.cat([skip, x], dim=1))
            outs.append(x)
        if not all_scales:
            return self.head(x)
        # full resolution first, then 1/2, 1/4, ... (the decoder's outputs in reverse order of computation)
        return [self.head(outs[-1])] + [h(o) for h, o in zip(self.aux_heads, outs[-2::-1], strict=False)]


def _he_init(module: nn.Module) -> None:
    """Kaiming-normal weights (gain for ReLU), zero biases, for convs and transposed convs."""
    if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)


@functools.cache
def _padded_monai_unet():
    """MONAI's ``UNet`` (same modules and state dict) that zero-pads inputs to a multiple of its strides' product and
    crops back.

    MONAI's network fails on sizes its strides do not divide (a 88-voxel patch at 4 strides of 2);
    every other family in the registry pads, so a planned patch or window fits any depth.
    """
    from monai.networks.nets import UNet as MonaiUNet

    class PaddedUNet(MonaiUNet):
        def divisors(self, ndim: int) -> list[int]:
            """Per spatial axis: the product of the strides along it (a stride may be an int or one per axis)."""
            return [math.prod(s if isinstance(s, int) else int(s[a]) for s in self.strides) for a in range(ndim)]

        @property
        def divisor(self) -> int:
            return math.lcm(*self.divisors(self.dimensions))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            size = x.shape[2:]
            padded = pad_to_multiples(x, self.divisors(len(size)))
            y = super().forward(padded)
            return y if padded is x else y[(slice(None), slice(None), *(slice(0, n) for n in size))]

    return PaddedUNet


@MODELS.register(
    "unet",
    description="Residual U-Net (MONAI UNet): residual units, strided convs, skip connections",
    dims=(2, 3),
    divisor=8,
    family="unet",
    tiny={"channels": (4, 8, 8, 8)},
)
def unet(
    *,
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    channels: tuple[int, ...] = (16, 32, 64, 128),
    strides: tuple[int, ...] = (2, 2, 2),
    num_res_units: int = 1,
    norm: str = "instance",
    dropout: float = 0.0,
):
    if len(strides) != len(channels) - 1:
        raise ConfigError(
            f"unet: need one stride per down-sampling step: {len(channels)} channels need {len(channels) - 1} strides, "
            f"got {len(strides)}"
        )
    return _padded_monai_unet()(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=tuple(channels),
        strides=tuple(strides),
        num_res_units=num_res_units,
        norm=norm,
        dropout=dropout,
    )


@MODELS.register(
    "unet_classic",
    description="Original U-Net: double conv-BN-ReLU stages, max-pool down, transposed-conv up (64..1024)",
    dims=(2, 3),
    divisor=16,
    family="unet",
    tiny={"channels": (4, 4, 8, 8, 8)},
)
def unet_classic(
    *,
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    channels: tuple[int, ...] = (64, 128, 256, 512, 1024),
    norm: str = "batch",
    act: str = "relu",
    dropout: float = 0.0,
    deep_supervision: bool = False,
    init: str = "default",
):
    return UNet(
        spatial_dims,
        in_channels,
        out_channels,
        channels=channels,
        norm=norm,
        act=act,
        dropout=dropout,
        deep_supervision=deep_supervision,
        init=init,
    )


@MODELS.register(
    "unet_attention",
    description="Attention U-Net: the classic U-Net with attention gates on the skip connections",
    dims=(2, 3),
    divisor=16,
    family="unet",
    tiny={"channels": (4, 4, 8, 8, 8)},
)
def unet_attention(
    *,
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    channels: tuple[int, ...] = (64, 128, 256, 512, 1024),
    norm: str = "batch",
    act: str = "relu",
    dropout: float = 0.0,
    deep_supervision: bool = False,
    init: str = "default",
):
    return UNet(
        spatial_dims,
        in_channels,
        out_channels,
        channels=channels,
        norm=norm,
        act=act,
        dropout=dropout,
        attention=True,
        deep_supervision=deep_supervision,
        init=init,
    )
