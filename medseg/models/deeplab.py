"""DeepLabV3 and DeepLabV3+ (Chen et al. 2017, 2018) for 2D and 3D through one code path.

- Encoder: an atrous residual network (ResNet-18/34-style basic blocks after a
  stride-4 stem). Once the chosen ``output_stride`` (8 or 16) is reached, later
  stages stop down-sampling and dilate their convolutions instead (rate 2, then 4),
  so the receptive field keeps growing at a fixed resolution.
- ASPP head: a 1x1 branch, three 3x3 branches dilated by ``atrous_rates``
  ((6, 12, 18) at output stride 16, doubled at 8) and an image-level branch
  (global average pooling, 1x1 conv, broadcast back), concatenated and projected.
- DeepLabV3 upsamples the head's class scores (bi/tri)linearly to the input size.
- DeepLabV3+ adds the decoder: ASPP features upsampled to stride 4, concatenated
  with a 1x1-reduced low-level feature map from the first residual stage, two
  3x3 convs, classifier, upsampled 4x.

Input sizes should be divisible by ``output_stride`` (others are zero-padded and
cropped back). On small 3D patches (e.g. 64x64x48 at OS 16 -> 4x4x3 features),
rates as large as 6-18 read mostly padding: pass smaller ``atrous_rates``, e.g. (1, 2, 3).
"""

from __future__ import annotations

import torch
from monai.networks.layers.factories import Pool
from torch import nn

from medseg.errors import ConfigError
from medseg.models._blocks import ConvNormAct, PadToDivisor, ResBlock, act_layer, conv, resize
from medseg.models._registry import MODELS


class AtrousResNet(nn.Module):
    """Returns (low-level features at stride 4, high-level features at ``output_stride``)."""

    def __init__(self, spatial_dims, in_channels, *, channels, blocks, output_stride, norm, act):
        super().__init__()
        if len(channels) != len(blocks) or len(channels) < 2:
            raise ConfigError(
                f"deeplab: channels and blocks need one entry per residual stage (at least 2); "
                f"got channels {list(channels)}, blocks {list(blocks)}"
            )
        kw = dict(norm=norm, act=act)
        self.stem = nn.Sequential(
            ConvNormAct(spatial_dims, in_channels, channels[0], stride=2, **kw),
            ConvNormAct(spatial_dims, channels[0], channels[0], stride=2, **kw),
        )
        stride, dilation, cin, stages = 4, 1, channels[0], []
        for i, (c, n) in enumerate(zip(channels, blocks, strict=False)):
            s = 1
            if i > 0:
                if stride < output_stride:
                    s, stride = 2, stride * 2
                else:
                    dilation *= 2
            layer = [ResBlock(spatial_dims, cin, c, stride=s, dilation=dilation, **kw)]
            layer += [ResBlock(spatial_dims, c, c, dilation=dilation, **kw) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layer))
            cin = c
        if stride != output_stride:
            raise ConfigError(
                f"deeplab: {len(channels)} stages reach output stride {stride}, not {output_stride}; add a stage or "
                "lower output_stride"
            )
        self.stages = nn.ModuleList(stages)

    def forward(self, x):
        x = self.stem(x)
        low = x = self.stages[0](x)
        for stage in self.stages[1:]:
            x = stage(x)
        return low, x


class ASPP(nn.Module):
    def __init__(self, spatial_dims, cin, cout, rates, *, norm, act, dropout):
        super().__init__()
        kw = dict(norm=norm, act=act)
        self.branches = nn.ModuleList(
            [ConvNormAct(spatial_dims, cin, cout, 1, **kw)]
            + [ConvNormAct(spatial_dims, cin, cout, 3, dilation=int(r), **kw) for r in rates]
        )
        # image-level features: no norm (a 1-voxel map cannot be batch/instance-normalised at batch size 1)
        self.pool = nn.Sequential(
            Pool[Pool.ADAPTIVEAVG, spatial_dims](1), conv(spatial_dims, cin, cout, 1), act_layer(act)
        )
        self.project = nn.Sequential(
            ConvNormAct(spatial_dims, cout * (len(rates) + 2), cout, 1, **kw),
            nn.Dropout(dropout) if dropout else nn.Identity(),
        )

    def forward(self, x):
        pooled = self.pool(x).expand(-1, -1, *x.shape[2:])
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


class DeepLab(PadToDivisor):
    def __init__(
        self,
        spatial_dims,
        in_channels,
        out_channels,
        *,
        plus,
        output_stride,
        channels,
        blocks,
        atrous_rates,
        aspp_channels,
        low_level_channels,
        norm,
        act,
        dropout,
    ):
        super().__init__()
        if output_stride not in (8, 16):
            raise ConfigError(f"deeplab: output_stride must be 8 or 16, got {output_stride}")
        channels, blocks = tuple(int(c) for c in channels), tuple(int(b) for b in blocks)
        rates = tuple(atrous_rates) if atrous_rates is not None else tuple(r * 16 // output_stride for r in (6, 12, 18))
        self.divisor = output_stride
        self.plus = plus
        kw = dict(norm=norm, act=act)
        self.encoder = AtrousResNet(
            spatial_dims, in_channels, channels=channels, blocks=blocks, output_stride=output_stride, **kw
        )
        self.aspp = ASPP(spatial_dims, channels[-1], aspp_channels, rates, dropout=dropout, **kw)
        if plus:
            self.reduce = ConvNormAct(spatial_dims, channels[0], low_level_channels, 1, **kw)
            self.decoder = nn.Sequential(
                ConvNormAct(spatial_dims, aspp_channels + low_level_channels, aspp_channels, **kw),
                ConvNormAct(spatial_dims, aspp_channels, aspp_channels, **kw),
            )
        else:
            self.decoder = ConvNormAct(spatial_dims, aspp_channels, aspp_channels, **kw)
        self.classifier = conv(spatial_dims, aspp_channels, out_channels, 1)

    def _forward(self, x):
        size = x.shape[2:]
        low, high = self.encoder(x)
        y = self.aspp(high)
        if self.plus:
            y = self.decoder(torch.cat([resize(y, low.shape[2:]), self.reduce(low)], dim=1))
        else:
            y = self.decoder(y)
        return resize(self.classifier(y), size)


_TINY = {"channels": (4, 8, 8, 8), "blocks": (1, 1, 1, 1), "aspp_channels": 8, "atrous_rates": (1, 2, 3)}


@MODELS.register(
    "deeplabv3",
    description="DeepLabV3: atrous residual encoder (output stride 8/16) + ASPP with image pooling",
    dims=(2, 3),
    divisor=16,
    family="deeplab",
    tiny=_TINY,
)
def deeplabv3(
    *,
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    output_stride: int = 16,
    channels: tuple[int, ...] = (64, 128, 256, 512),
    blocks: tuple[int, ...] = (2, 2, 2, 2),
    atrous_rates: tuple[int, ...] | None = None,
    aspp_channels: int = 256,
    norm: str = "batch",
    act: str = "relu",
    dropout: float = 0.1,
):
    return DeepLab(
        spatial_dims,
        in_channels,
        out_channels,
        plus=False,
        output_stride=output_stride,
        channels=channels,
        blocks=blocks,
        atrous_rates=atrous_rates,
        aspp_channels=aspp_channels,
        low_level_channels=0,
        norm=norm,
        act=act,
        dropout=dropout,
    )


@MODELS.register(
    "deeplabv3plus",
    description="DeepLabV3+: DeepLabV3 + decoder fusing stride-4 low-level features",
    dims=(2, 3),
    divisor=16,
    family="deeplab",
    tiny={**_TINY, "low_level_channels": 4},
)
def deeplabv3plus(
    *,
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    output_stride: int = 16,
    channels: tuple[int, ...] = (64, 128, 256, 512),
    blocks: tuple[int, ...] = (2, 2, 2, 2),
    atrous_rates: tuple[int, ...] | None = None,
    aspp_channels: int = 256,
    low_level_channels: int = 48,
    norm: str = "batch",
    act: str = "relu",
    dropout: float = 0.1,
):
    return DeepLab(
        spatial_dims,
        in_channels,
        out_channels,
        plus=True,
        output_stride=output_stride,
        channels=channels,
        blocks=blocks,
        atrous_rates=atrous_rates,
        aspp_channels=aspp_channels,
        low_level_channels=low_level_channels,
        norm=norm,
        act=act,
        dropout=dropout,
    )
