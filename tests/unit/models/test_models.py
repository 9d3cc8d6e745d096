import pytest
import torch

from medseg.errors import ConfigError, UnknownComponentError
from medseg.inference.crf import crf_refine
from medseg.models import MODELS, create_model, list_models, model_info, param_count
from medseg.models.slicewise import SliceWise

FAMILIES = {
    "unet",
    "unet_classic",
    "unet_attention",
    "unet_plain",
    "fcn32s",
    "fcn16s",
    "fcn8s",
    "deeplabv3",
    "deeplabv3plus",
}


def test_listing_includes_every_family_and_builds_nothing(monkeypatch):
    built = []
    monkeypatch.setattr(torch.nn.Module, "__init__", lambda self, *a, **k: built.append(self))
    assert FAMILIES <= set(list_models())
    assert list_models("unet*") == ["unet", "unet_attention", "unet_classic", "unet_plain"]
    info = model_info("unet_classic", params=False)
    assert info["dims"] == (2, 3) and info["divisor"] == 16 and "channels" in info["options"]
    assert built == []


def test_classic_unet_is_the_2015_network_at_default_width():
    info = model_info("unet_classic")
    assert info["options"]["channels"] == (64, 128, 256, 512, 1024)
    # Ronneberger et al.'s U-Net with BN and 2x2 up-convolutions: ~31.0M parameters in 2D
    assert 30.9e6 < info["params"][2] < 31.1e6
    assert info["params"][3] > 2.5 * info["params"][2]  # 3x3x3 kernels


def _plain_unet_params(cin, k, feats, kvol=27):
    """nnU-Net's PlainConvUNet counted by hand: conv weights (no bias before the norm), affine instance norms,
    transposed convs kernel = stride = 2 with bias, a 1x1 segmentation layer with bias per decoder stage."""
    n, prev = 0, cin
    for f in feats:  # encoder: two conv-norm-act per stage
        n += prev * f * kvol + 2 * f + f * f * kvol + 2 * f
        prev = f
    for lo, hi in zip(feats[::-1], feats[-2::-1], strict=False):  # decoder, lowest resolution first
        n += lo * hi * (8 if kvol == 27 else 4) + hi  # transposed conv
        n += 2 * hi * hi * kvol + 2 * hi + hi * hi * kvol + 2 * hi  # two conv-norm-act on the concatenation
        n += hi * k + k  # segmentation layer
    return n


def test_plain_unet_is_nnunets_network():
    info = model_info("unet_plain")
    assert info["options"]["channels"] == (32, 64, 128, 256, 320, 320) and info["divisor"] == 32
    assert info["params"][3] == _plain_unet_params(1, 2, (32, 64, 128, 256, 320, 320))
    assert info["params"][2] == _plain_unet_params(1, 2, (32, 64, 128, 256, 320, 320), kvol=9)
    net = create_model("unet_plain", spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8, 16))
    mods = list(net.modules())
    assert not any(isinstance(m, (torch.nn.MaxPool3d, torch.nn.AvgPool3d, torch.nn.BatchNorm3d)) for m in mods)
    norms = [m for m in mods if isinstance(m, torch.nn.InstanceNorm3d)]
    assert len(norms) == 2 * 3 + 2 * 2 and all(m.affine for m in norms)
    acts = [m for m in mods if isinstance(m, torch.nn.LeakyReLU)]
    assert len(acts) == len(norms) and all(m.negative_slope == 0.01 for m in acts)
    assert [stage[0][0].stride for stage in net.encoder] == [(1, 1, 1), (2, 2, 2), (2, 2, 2)]  # strided convs down
    ups = [m for m in mods if isinstance(m, torch.nn.ConvTranspose3d)]
    assert [(u.kernel_size, u.stride) for u in ups] == [((2, 2, 2), (2, 2, 2))] * 2
    convs = [m for m in mods if isinstance(m, torch.nn.Conv3d) and m.kernel_size == (3, 3, 3)]
    # He initialisation for LeakyReLU(0.01): weight std = sqrt(2 / (1 + 0.01^2) / fan_in)
    w = convs[-1].weight.detach()
    assert abs(float(w.std()) / (2 / 1.0001 / w[0].numel()) ** 0.5 - 1) < 0.1


def test_plain_unet_deep_supervision_lists_the_scales_in_training_only():
    net = create_model("unet_plain", spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8, 8, 8))
    x = torch.randn(2, 1, 32, 16, 24)
    outs = net.train()(x)
    assert [tuple(o.shape) for o in outs] == [(2, 3, 32, 16, 24), (2, 3, 16, 8, 12), (2, 3, 8, 4, 6)]
    with torch.no_grad():
        full = net.eval()(x)
    assert isinstance(full, torch.Tensor) and torch.allclose(
        full, outs[0].detach(), atol=1e-5
    )  # instance norm: same in both modes
    net_plain = create_model(
        "unet_plain", spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8, 8, 8), deep_supervision=False
    )
    net_plain.load_state_dict(net.state_dict())  # the same weights load with or without deep supervision
    assert isinstance(net_plain.train()(x), torch.Tensor)
    # sizes off the divisor: padded, and every scale cropped back to its share
    odd = net.train()(torch.randn(1, 1, 20, 33, 7))
    assert [tuple(o.shape[2:]) for o in odd] == [(20, 33, 7), (10, 17, 4), (5, 9, 2)]


@pytest.mark.parametrize("name", ["unet_classic", "unet_attention"])
def test_classic_unets_offer_deep_supervision_and_he_init(name):
    net = create_model(
        name, spatial_dims=2, in_channels=1, out_channels=3, channels=(4, 8, 8, 8), deep_supervision=True, init="he"
    )
    outs = net.train()(torch.randn(2, 1, 32, 16))
    assert [tuple(o.shape) for o in outs] == [(2, 3, 32, 16), (2, 3, 16, 8), (2, 3, 8, 4)]
    assert isinstance(net.eval()(torch.randn(2, 1, 32, 16)), torch.Tensor)
    with pytest.raises(ConfigError, match="init must be"):
        create_model(name, spatial_dims=2, in_channels=1, out_channels=3, channels=(4, 8), init="xavier")


def test_param_count_matches_a_real_build():
    kw = {"channels": (4, 8), "blocks": (1, 1), "output_stride": 8, "aspp_channels": 8}
    real = sum(
        p.numel() for p in create_model("deeplabv3", spatial_dims=2, in_channels=1, out_channels=2, **kw).parameters()
    )
    with torch.device("meta"):
        meta = create_model("deeplabv3", spatial_dims=2, in_channels=1, out_channels=2, **kw)
    assert sum(p.numel() for p in meta.parameters()) == real
    assert param_count("unet", 3) == sum(
        p.numel() for p in create_model("unet", spatial_dims=3, in_channels=1, out_channels=2).parameters()
    )


@pytest.mark.parametrize("dims,shape", [(3, (1, 1, 32, 32, 16)), (2, (2, 1, 32, 32))])
def test_unet_builds_in_2d_and_3d_and_keeps_spatial_size(dims, shape):
    net = create_model("unet", spatial_dims=dims, in_channels=1, out_channels=5, channels=(8, 16, 32), strides=(2, 2))
    with torch.no_grad():
        out = net(torch.zeros(shape))
    assert out.shape == (shape[0], 5, *shape[2:])


@pytest.mark.parametrize(
    "name,kw",
    [
        ("fcn8s", {"channels": (4, 4, 4, 4, 4), "convs": (1,) * 5, "head_channels": 4}),
        ("unet_attention", {"channels": (4, 4, 4)}),
    ],
)
def test_sizes_off_the_divisor_are_padded_and_cropped_back(name, kw):
    net = create_model(name, spatial_dims=3, in_channels=1, out_channels=2, **kw).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 20, 33, 7)).shape == (1, 2, 20, 33, 7)


def test_deeplab_output_stride_sets_the_feature_resolution():
    for os_ in (8, 16):
        net = create_model(
            "deeplabv3plus",
            spatial_dims=2,
            in_channels=1,
            out_channels=2,
            output_stride=os_,
            channels=(4, 8, 8, 8),
            blocks=(1, 1, 1, 1),
            aspp_channels=8,
            low_level_channels=4,
        )
        low, high = net.encoder(torch.zeros(1, 1, 64, 64))
        assert low.shape[-1] == 16 and high.shape[-1] == 64 // os_
    with pytest.raises(ConfigError, match="output_stride must be 8 or 16"):
        create_model("deeplabv3", spatial_dims=2, in_channels=1, out_channels=2, output_stride=32)


def test_fcn_variants_differ_only_in_fused_skips():
    kw = {"channels": (4, 4, 4, 4, 4), "convs": (1,) * 5, "head_channels": 4}
    skips = {
        v: len(create_model(f"fcn{v}s", spatial_dims=2, in_channels=1, out_channels=2, **kw).skip_scores)
        for v in (32, 16, 8)
    }
    assert skips == {32: 0, 16: 1, 8: 2}


def test_unknown_name_suggests_close_matches():
    with pytest.raises(UnknownComponentError, match="did you mean unet"):
        create_model("unte", spatial_dims=3, in_channels=1, out_channels=2)


def test_unknown_option_names_the_accepted_ones():
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['depth'\].*channels"):
        create_model("unet", spatial_dims=3, in_channels=1, out_channels=2, depth=4)


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        MODELS.register("unet")(lambda **kw: None)


def test_slicewise_runs_a_2d_model_on_each_slice_independently():
    net2d = create_model("unet_classic", spatial_dims=2, in_channels=1, out_channels=3, channels=(4, 8)).eval()
    vol = torch.randn(2, 1, 16, 12, 5)
    with torch.no_grad():
        out = SliceWise(net2d)(vol)
        assert out.shape == (2, 3, 16, 12, 5)
        assert torch.allclose(out[1, :, :, :, 3], net2d(vol[1:2, :, :, :, 3])[0], atol=1e-5)
        out_y = SliceWise(net2d, axis=3)(vol[..., :4].expand(-1, -1, -1, -1, 4).contiguous())
        assert out_y.shape == (2, 3, 16, 12, 4)


def test_slicewise_keeps_every_deep_supervision_scale_slice_by_slice():
    net2d = create_model("unet_plain", spatial_dims=2, in_channels=1, out_channels=3, channels=(4, 8, 8))
    vol = torch.randn(2, 1, 16, 12, 5)
    outs = SliceWise(net2d).train()(vol)
    assert [tuple(o.shape) for o in outs] == [(2, 3, 16, 12, 5), (2, 3, 8, 6, 5)]
    assert torch.allclose(outs[1][1, :, :, :, 3], net2d(vol[1:2, :, :, :, 3])[1][0], atol=1e-5)
    assert SliceWise(net2d).eval()(vol).shape == (2, 3, 16, 12, 5)


def _brute_force_crf(scores, image, iterations, r, ta, tb, tg, wa, ws):
    import itertools
    import math

    h, w = scores.shape[2:]
    logits = scores.clone()
    for _ in range(iterations):
        q = logits.softmax(1)
        msg = torch.zeros_like(q)
        for i, j, di, dj in itertools.product(range(h), range(w), range(-r, r + 1), range(-r, r + 1)):
            a, b = i + di, j + dj
            if (di, dj) == (0, 0) or not (0 <= a < h and 0 <= b < w):
                continue
            d2, g2 = di * di + dj * dj, float((image[0, :, i, j] - image[0, :, a, b]).square().sum())
            k = ws * math.exp(-d2 / (2 * tg**2)) + wa * math.exp(-d2 / (2 * ta**2) - g2 / (2 * tb**2))
            msg[0, :, i, j] += k * q[0, :, a, b]
        logits = scores + msg
    return logits


def test_crf_matches_the_mean_field_update_computed_voxel_by_voxel():
    g = torch.Generator().manual_seed(0)
    scores, image = torch.randn(1, 3, 6, 7, generator=g), torch.rand(1, 2, 6, 7, generator=g)
    kw = dict(theta_alpha=1.5, theta_beta=0.3, theta_gamma=1.0, w_appearance=0.7, w_smoothness=0.4)
    got = crf_refine(scores, image, iterations=2, kernel_size=5, **kw)
    want = _brute_force_crf(scores, image, 2, 2, 1.5, 0.3, 1.0, 0.7, 0.4)
    assert torch.allclose(got, want, atol=1e-5)


def test_crf_removes_isolated_speckle_but_keeps_an_intensity_edge():
    # two halves of a 3D image with different intensity; truth follows the edge; the scores add speckle
    image = torch.zeros(1, 1, 12, 12, 8)
    image[:, :, 6:] = 1.0
    truth = (image[0, 0] > 0.5).long()
    scores = torch.stack([1.0 - 2 * truth.float(), 2 * truth.float() - 1.0])[None]  # confident, correct
    noisy = scores.clone()
    flips = torch.rand(truth.shape, generator=torch.Generator().manual_seed(1)) < 0.1
    noisy[0, :, flips] *= -0.5  # wrong but less confident
    before = (noisy.argmax(1)[0] == truth).float().mean()
    after = (crf_refine(noisy, image, iterations=5, kernel_size=3).argmax(1)[0] == truth).float().mean()
    assert before < 0.95 and after == 1.0
    assert torch.equal(crf_refine(noisy, image, iterations=0), noisy)


def test_crf_checks_its_inputs():
    with pytest.raises(ValueError, match="scores' grid"):
        crf_refine(torch.zeros(1, 2, 4, 4), torch.zeros(1, 1, 4, 5))
    with pytest.raises(ValueError, match="odd"):
        crf_refine(torch.zeros(1, 2, 4, 4), torch.zeros(1, 1, 4, 4), kernel_size=4)


def test_every_model_preset_names_a_model_and_its_options(tmp_path):
    from medseg.config import TrainingConfig
    from medseg.models.presets import list_model_presets, load_model_preset

    names = list_model_presets()
    assert {"unet_classic_small", "unet_plain_small", "fcn8s_small", "deeplabv3_small", "deeplabv3plus_small"} <= set(
        names
    )
    fields = set(TrainingConfig.__dataclass_fields__)
    for name in names:
        p = load_model_preset(name)
        assert p["model"]["name"] in list_models() and p["model"]["spatial_dims"] in (2, 3)
        assert set(p["training"]) <= fields
    (tmp_path / "bad.yaml").write_text("name: fcn8s\nkwargs: {depth: 3}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: model 'fcn8s' has no option\(s\) \['depth'\]"):
        load_model_preset("bad", root=tmp_path)
    with pytest.raises(ConfigError, match="did you mean fcn8s_small"):
        load_model_preset("fcn8s_smal")


def test_a_preset_carries_its_family_training_recipe(tmp_path):
    from medseg.config import config_from_dict
    from medseg.models.presets import load_model_preset, preset_overrides

    (tmp_path / "sgd.yaml").write_text(
        "name: unet_plain\nspatial_dims: 2\nkwargs: {channels: [8, 16]}\n"
        "training: {learning_rate: 0.01, optimizer: sgd}\n"
    )
    p = load_model_preset("sgd", root=tmp_path)
    assert p == {
        "model": {"name": "unet_plain", "spatial_dims": 2, "kwargs": {"channels": [8, 16]}},
        "training": {"learning_rate": 0.01, "optimizer": "sgd"},
    }
    cfg = config_from_dict({"training": {"epochs": 3, "learning_rate": 0.5}}, overrides=preset_overrides(p))
    assert (cfg.model.name, cfg.model.spatial_dims, cfg.model.kwargs) == ("unet_plain", 2, {"channels": [8, 16]})
    assert (cfg.training.learning_rate, cfg.training.optimizer, cfg.training.epochs) == (0.01, "sgd", 3)
    assert load_model_preset("deeplabv3plus_small")["training"] == {}
    (tmp_path / "typo.yaml").write_text("name: fcn8s\ntraining: {learnig_rate: 0.01}\n")
    with pytest.raises(
        ConfigError, match=r"typo.yaml: training: unknown key 'learnig_rate'; did you mean 'learning_rate'"
    ):
        load_model_preset("typo", root=tmp_path)
    (tmp_path / "type.yaml").write_text("name: fcn8s\ntraining: {epochs: many}\n")
    with pytest.raises(ConfigError, match="type.yaml: training.epochs: expected int"):
        load_model_preset("type", root=tmp_path)


@pytest.mark.parametrize("name,strides", [("fcn8s", (8, 16, 32)), ("fcn16s", (16, 32)), ("fcn32s", (32,))])
def test_fcn_deep_supervision_returns_its_score_maps_in_training_only(name, strides):
    kw = dict(
        spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 4, 8, 8, 8), convs=(1, 1, 1, 1, 1), head_channels=8
    )
    net = create_model(name, deep_supervision=True, **kw).train()
    outs = net(torch.randn(1, 1, 64, 64, 32))
    assert [tuple(o.shape[2:]) for o in outs] == [(64, 64, 32)] + [(64 // s, 64 // s, 32 // s) for s in strides]
    net.eval()  # inference: the full-resolution logits only, padded sizes cropped back
    assert net(torch.randn(1, 1, 60, 64, 30)).shape == (1, 3, 60, 64, 30)
    plain = create_model(name, **kw).train()
    torch.manual_seed(0)
    x = torch.randn(1, 1, 64, 64, 32)
    plain.load_state_dict(net.state_dict())  # same weights: the full-resolution output is the same computation
    net.train()
    torch.testing.assert_close(net(x)[0], plain(x))


@pytest.mark.parametrize("dims,factor", [(2, 2), (2, 16), (3, 2), (3, 8), (3, 32)])
def test_fcn_upsampling_equals_the_transposed_convolution_it_replaces(dims, factor):
    """The sub-pixel form of FCN's upsampling layers gives torch's conv_transpose numbers and gradients."""
    from medseg.models._blocks import SubpixelConvTranspose2d, SubpixelConvTranspose3d, up_conv

    torch.manual_seed(factor)
    layer = up_conv(dims, 3, 3, factor, bilinear_init=True).double()
    assert isinstance(layer, SubpixelConvTranspose3d if dims == 3 else SubpixelConvTranspose2d)
    with torch.no_grad():
        layer.weight.add_(0.1 * torch.randn_like(layer.weight))  # not only the symmetric bilinear start
    x = torch.randn(2, 3, *[3, 4, 2][:dims], dtype=torch.float64, requires_grad=True)
    out = layer(x)
    fn = torch.nn.functional.conv_transpose3d if dims == 3 else torch.nn.functional.conv_transpose2d
    ref = fn(x, layer.weight, None, stride=factor, padding=factor // 2)
    assert out.shape == ref.shape == (2, 3, *[factor * n for n in [3, 4, 2][:dims]])
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    gx, gw = torch.autograd.grad((out * g).sum(), (x, layer.weight))
    rx, rw = torch.autograd.grad((ref * g).sum(), (x, layer.weight))
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)
    # a state dict from torch's own layer loads unchanged (checkpoints written before stay valid)
    plain = (torch.nn.ConvTranspose3d if dims == 3 else torch.nn.ConvTranspose2d)(
        3, 3, 2 * factor, stride=factor, padding=factor // 2, bias=False
    )
    layer.load_state_dict(plain.double().state_dict())
    torch.testing.assert_close(layer(x), plain(x))


def test_unet_pads_sizes_its_strides_do_not_divide_and_matches_monai_where_they_do():
    from monai.networks.nets import UNet

    from medseg.models import input_divisor

    kw = {"channels": (4, 8, 8, 8, 8), "strides": (2, 2, 2, 2), "num_res_units": 1}
    net = create_model("unet", spatial_dims=3, in_channels=1, out_channels=3, **kw).eval()
    assert input_divisor("unet", **kw) == net.divisor == 16 and input_divisor("unet") == 8
    ref = UNet(3, 1, 3, **kw).eval()
    ref.load_state_dict(net.state_dict())  # the same modules: checkpoints of either load in the other
    x = torch.randn(1, 1, 32, 48, 40)
    torch.testing.assert_close(net(x[..., :32]), ref(x[..., :32]))
    odd = x[..., :36, :]  # 36 and 40 are not multiples of 16: padded with zeros, then cropped back
    padded = torch.nn.functional.pad(odd, (0, 8, 0, 12, 0, 0))
    torch.testing.assert_close(net(odd), ref(padded)[..., :32, :36, :40])
