"""nnU-Net's plain convolutional U-Net (``unet_plain``), for 2D and 3D.

The network of nnU-Net's default configurations (Isensee et al. 2021; the
``PlainConvUNet`` of MIC-DKFZ's dynamic_network_architectures), written here on
medseg's shared blocks:

- every stage: two 3x3(x3) conv -> InstanceNorm (affine) -> LeakyReLU(0.01), the
  first conv strided for down-sampling (stride 1 in the first stage, 2 after);
  no pooling;
- decoder: a transposed convolution (kernel = stride) up, concatenation with the
  skip, two conv-norm-act blocks, and a 1x1 segmentation layer per decoder stage;
- features 32 doubling per stage up to a cap (320 in 3D in nnU-Net);
- He initialisation for LeakyReLU(0.01) (nnU-Net's ``InitWeights_He(1e-2)``);
- deep supervision: in ``train()`` mode with ``deep_supervision=True`` the forward
  returns a list of logits, one per decoder stage, full resolution first
  ([1, 1/2, 1/4, ...], ``len(channels) - 1`` of them); in ``eval()`` mode (and with
  ``deep_supervision=False``) only the full-resolution logits. Train it with
  ``medseg.training.losses.segmentation_loss``, which gives the scales nnU-Net's
  weights (1/2**i, lowest resolution 0, normalised).

Input sizes must be divisible by ``2 ** (len(channels) - 1)``; other sizes are
zero-padded and the outputs cropped back (each scale to its share of the size).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from medseg.errors import ConfigError
from medseg.models._blocks import ConvNormAct, conv, pad_to_multiples
from medseg.models._registry import MODELS

_NORM = ("instance", {"affine": True})
_ACT = ("leakyrelu", {"negative_slope": 0.01, "inplace": True})


def he_init(module: nn.Module, negative_slope: float = 0.01) -> None:
    """nnU-Net's initialisation: Kaiming-normal weights for leaky ReLU, zero biases (convs and transposed convs)."""
    if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        nn.init.kaiming_normal_(module.weight, a=negative_slope)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class _Stage(nn.Sequential):
    """``n`` conv-norm-act blocks, the first one strided. (nnU-Net gives these convs a bias; a bias right
    before instance norm is cancelled by it, so they have none here.)"""

    def __init__(self, spatial_dims, cin, cout, n, *, stride, norm, act):
        super().__init__(
            *(
                ConvNormAct(
                    spatial_dims, cin if i == 0 else cout, cout, stride=stride if i == 0 else 1, norm=norm, act=act
                )
                for i in range(n)
            )
        )


class PlainConvUNet(nn.Module):
    def __init__(
        self,
        spatial_dims,
        in_channels,
        out_channels,
        *,
        channels,
        strides=None,
        n_conv=2,
        n_conv_decoder=2,
        norm=_NORM,
        act=_ACT,
        deep_supervision=True,
    ):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) < 2:
            raise ConfigError(
                f"unet_plain: channels needs at least 2 stages (one down-sampling), got {list(channels)}; "
                "e.g. [32, 64, 128, 256]"
            )
        strides = (1,) + (2,) * (len(channels) - 1) if strides is None else tuple(int(s) for s in strides)
        if len(strides) != len(channels) or any(s not in (1, 2) for s in strides):
            raise ConfigError(
                f"unet_plain: strides needs one entry (1 or 2) per stage ({len(channels)}), got {list(strides)}"
            )
        self.strides = strides
        self.divisor = math.prod(strides)
        self.deep_supervision = bool(deep_supervision)
        cins = (in_channels,) + channels[:-1]
        self.encoder = nn.ModuleList(
            _Stage(spatial_dims, ci, co, n_conv, stride=s, norm=norm, act=act)
            for ci, co, s in zip(cins, channels, strides, strict=False)
        )
        from monai.networks.layers.factories import Conv

        convt = Conv[Conv.CONVTRANS, spatial_dims]
        # decoder stages in order of computation: lowest resolution first
        self.up = nn.ModuleList(
            convt(channels[i], channels[i - 1], strides[i], stride=strides[i], bias=True)
            for i in range(len(channels) - 1, 0, -1)
        )
        self.decoder = nn.ModuleList(
            _Stage(spatial_dims, 2 * channels[i - 1], channels[i - 1], n_conv_decoder, stride=1, norm=norm, act=act)
            for i in range(len(channels) - 1, 0, -1)
        )
        # one segmentation layer per decoder stage (always built, so weights load with or without deep supervision)
        self.seg = nn.ModuleList(
            conv(spatial_dims, channels[i - 1], out_channels, 1) for i in range(len(channels) - 1, 0, -1)
        )
        self.apply(he_init)

    def forward(self, x: torch.Tensor):
        size = x.shape[2:]
        x = pad_to_multiples(x, [self.divisor] * len(size))
        outs = self._forward(x, all_scales=self.deep_supervision and self.training)
        outs = [self._crop(o, size, x.shape[2:]) for o in outs]
        return outs if self.deep_supervision and self.training else outs[0]

    @staticmethod
    def _crop(y, size, padded):
        if tuple(padded) == tuple(size):
            return y
        keep = [int(math.ceil(s * o / p)) for s, o, p in zip(size, y.shape[2:], padded, strict=False)]
        return y[(slice(None), slice(None), *(slice(0, k) for k in keep))]

    def _forward(self, x, *, all_scales: bool) -> list[torch.Tensor]:
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = skips.pop()
        outs = []
        last = len(self.decoder) - 1
        for s, (up, dec, seg) in enumerate(zip(self.up, self.decoder, self.seg, strict=False)):
            x = dec(torch.cat([up(x), skips.pop()], dim=1))
            if all_scales or s == last:
                outs.append(seg(x))
        return outs[::-1]  # full resolution first


@MODELS.register(
    "unet_plain",
    description="nnU-Net's plain conv U-Net: conv-InstanceNorm-LeakyReLU x2 per stage, strided convs down, "
    "transposed convs up, deep supervision in training",
    dims=(2, 3),
    divisor=32,
    family="unet",
    deep_supervision=True,
    tiny={"channels": (4, 8, 8, 8, 8, 8)},
)
def unet_plain(
    *,
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    channels: tuple[int, ...] = (32, 64, 128, 256, 320, 320),
    strides: tuple[int, ...] | None = None,
    n_conv: int = 2,
    deep_supervision: bool = True,
):
    """``channels``: features per stage (nnU-Net: 32 doubling to 320 in 3D, 512 in 2D); ``strides``: per stage,
    1 or 2 (default 1, then 2); ``n_conv``: conv blocks per stage, encoder and decoder."""
    return PlainConvUNet(
        spatial_dims,
        in_channels,
        out_channels,
        channels=channels,
        strides=strides,
        n_conv=n_conv,
        n_conv_decoder=n_conv,
        deep_supervision=deep_supervision,
    )
