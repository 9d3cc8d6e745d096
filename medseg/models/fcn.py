"""Fully convolutional networks FCN-32s / 16s / 8s (Long, Shelhamer & Darrell 2015), 2D and 3D.

A VGG-style encoder (stages of 3x3 conv-norm-act, each followed by 2x max-pooling)
ends in convolutional "fc6/fc7" layers and a 1x1 classifier at stride 32. Its
class scores are upsampled with learned transposed convolutions (initialised to
(bi/tri)linear interpolation) and, for 16s and 8s, fused by addition with
class scores read off pool4 (stride 16) and pool3 (stride 8); those skip scorers
start at zero, as in the paper, so training starts from the coarser net.

Defaults follow VGG-16 (64-128-256-512-512, 2-2-3-3-3 convs) with batch norm
(the paper predates it; from-scratch training needs it) and a 1024-wide head
(4096 and 7x7 in the paper, which in 3D would be ~700M parameters). Input sizes
must be divisible by ``2 ** len(channels)`` (32 by default; other sizes are
zero-padded and cropped back).
"""

from __future__ import annotations

from torch import nn

from medseg.errors import ConfigError
from medseg.models._blocks import ConvNormAct, PadToDivisor, conv, max_pool, up_conv
from medseg.models._registry import MODELS


class FCN(PadToDivisor):
    def __init__(
        self,
        spatial_dims,
        in_channels,
        out_channels,
        *,
        output_stride=32,
        channels,
        convs,
        head_channels,
        norm="batch",
        act="relu",
        dropout=0.0,
        deep_supervision=False,
    ):
        super().__init__()
        self.deep_supervision = bool(deep_supervision)
        channels, convs = tuple(int(c) for c in channels), tuple(int(n) for n in convs)
        n_skips = {32: 0, 16: 1, 8: 2}[output_stride]
        if len(convs) != len(channels):
            raise ConfigError(
                f"fcn: need one conv count per stage: {len(channels)} channels, {len(convs)} conv counts; "
                f"give convs with {len(channels)} entries"
            )
        if len(channels) < n_skips + 1:
            raise ConfigError(
                f"fcn{output_stride}s fuses {n_skips} earlier stage(s), so it needs at least {n_skips + 1} stages; got "
                f"channels {list(channels)}"
            )
        self.divisor = 2 ** len(channels)
        stages, cin = [], in_channels
        for c, n in zip(channels, convs, strict=False):
            layers = [ConvNormAct(spatial_dims, cin if i == 0 else c, c, norm=norm, act=act) for i in range(n)]
            stages.append(nn.Sequential(*layers, max_pool(spatial_dims)))
            cin = c
        self.stages = nn.ModuleList(stages)
        self.head = nn.Sequential(
            ConvNormAct(spatial_dims, cin, head_channels, norm=norm, act=act),
            nn.Dropout(dropout) if dropout else nn.Identity(),
            ConvNormAct(spatial_dims, head_channels, head_channels, 1, norm=norm, act=act),
            nn.Dropout(dropout) if dropout else nn.Identity(),
            conv(spatial_dims, head_channels, out_channels, 1),
        )
        # skip scorers for pool4, pool3 (the stages before the last), zero-initialised
        self.skip_scores = nn.ModuleList(conv(spatial_dims, channels[-2 - i], out_channels, 1) for i in range(n_skips))
        for s in self.skip_scores:
            nn.init.zeros_(s.weight)
            nn.init.zeros_(s.bias)
        self.skip_up = nn.ModuleList(
            up_conv(spatial_dims, out_channels, out_channels, 2, bilinear_init=True) for _ in range(n_skips)
        )
        self.final_up = up_conv(
            spatial_dims, out_channels, out_channels, 2 ** (len(channels) - n_skips), bilinear_init=True
        )

    def forward(self, x):
        if not (self.deep_supervision and self.training):
            return super().forward(x)
        size = x.shape[2:]
        if any(s % self.divisor for s in size):
            raise ConfigError(
                f"fcn with deep supervision trains on patches divisible by {self.divisor}; got {list(size)}: "
                f"set training.patch_size to multiples of {self.divisor} or model.kwargs.deep_supervision: false"
            )
        return self._forward(x, all_scales=True)

    def _forward(self, x, all_scales=False):
        pools = []
        for stage in self.stages:
            x = stage(x)
            pools.append(x)
        score = self.head(x)
        scores = [score]
        for i, (scorer, up) in enumerate(zip(self.skip_scores, self.skip_up, strict=False)):
            score = up(score) + scorer(pools[-2 - i])
            scores.append(score)
        out = self.final_up(score)
        # deep supervision: the fused score maps at strides 8, 16 (and the head's at 32), highest resolution first
        return [out, *scores[::-1]] if all_scales else out


def _builder(output_stride: int):
    def build(
        *,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: tuple[int, ...] = (64, 128, 256, 512, 512),
        convs: tuple[int, ...] = (2, 2, 3, 3, 3),
        head_channels: int = 1024,
        norm: str = "batch",
        act: str = "relu",
        dropout: float = 0.0,
        deep_supervision: bool = False,
    ):
        return FCN(
            spatial_dims,
            in_channels,
            out_channels,
            output_stride=output_stride,
            channels=channels,
            convs=convs,
            head_channels=head_channels,
            norm=norm,
            act=act,
            dropout=dropout,
            deep_supervision=deep_supervision,
        )

    build.__name__ = f"fcn{output_stride}s"
    return build


_TINY = {"channels": (4, 4, 8, 8, 8), "convs": (1, 1, 1, 1, 1), "head_channels": 8}
_FUSES = {
    32: "stride-32 scores upsampled 32x",
    16: "stride-32 scores fused with pool4 scores, upsampled 16x",
    8: "scores fused with pool4 and pool3 scores, upsampled 8x",
}
for _os in (32, 16, 8):
    MODELS.register(
        f"fcn{_os}s",
        description=f"FCN-{_os}s: VGG-style encoder, {_FUSES[_os]}",
        dims=(2, 3),
        divisor=32,
        family="fcn",
        tiny=_TINY,
        deep_supervision=True,
    )(_builder(_os))
