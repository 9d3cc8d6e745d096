"""U-Net (MONAI's residual UNet) for 2D and 3D through one code path.

Input sizes must be divisible by the product of ``strides``.
"""

from __future__ import annotations

from medseg.models import MODELS


@MODELS.register(
    "unet",
    description="Residual U-Net (MONAI UNet): encoder-decoder with skip connections",
    dims=(2, 3),
    divisor=8,
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
    from monai.networks.nets import UNet

    if len(strides) != len(channels) - 1:
        from medseg.errors import ConfigError

        raise ConfigError(f"unet: need one stride per down-sampling step: {len(channels)} channels need {len(channels) - 1} strides, got {len(strides)}")
    return UNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=tuple(channels),
        strides=tuple(strides),
        num_res_units=num_res_units,
        norm=norm,
        dropout=dropout,
    )
