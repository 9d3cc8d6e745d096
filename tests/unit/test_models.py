import pytest
import torch

from medseg.errors import ConfigError, UnknownComponentError
from medseg.models import MODELS, create_model, list_models, model_info


def test_listing_does_not_build_and_includes_unet():
    assert "unet" in list_models()
    assert list_models("une*") == ["unet"]
    info = model_info("unet")
    assert info["dims"] == (2, 3) and "channels" in info["options"]


@pytest.mark.parametrize("dims,shape", [(3, (1, 1, 32, 32, 16)), (2, (2, 1, 32, 32))])
def test_unet_builds_in_2d_and_3d_and_keeps_spatial_size(dims, shape):
    net = create_model("unet", spatial_dims=dims, in_channels=1, out_channels=5, channels=(8, 16, 32), strides=(2, 2))
    with torch.no_grad():
        out = net(torch.zeros(shape))
    assert out.shape == (shape[0], 5, *shape[2:])


def test_unknown_name_suggests_close_matches():
    with pytest.raises(UnknownComponentError, match="did you mean unet"):
        create_model("unte", spatial_dims=3, in_channels=1, out_channels=2)


def test_unknown_option_names_the_accepted_ones():
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['depth'\].*channels"):
        create_model("unet", spatial_dims=3, in_channels=1, out_channels=2, depth=4)


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        MODELS.register("unet")(lambda **kw: None)
