import pytest
import torch

from medseg.errors import ConfigError, UnknownComponentError
from medseg.models import MODELS, create_model, list_models, model_info, param_count
from medseg.models.crf import crf_refine
from medseg.models.slicewise import SliceWise

FAMILIES = {"unet", "unet_classic", "unet_attention", "fcn32s", "fcn16s", "fcn8s", "deeplabv3", "deeplabv3plus"}


def test_listing_includes_every_family_and_builds_nothing(monkeypatch):
    built = []
    monkeypatch.setattr(torch.nn.Module, "__init__", lambda self, *a, **k: built.append(self))
    assert FAMILIES <= set(list_models())
    assert list_models("unet*") == ["unet", "unet_attention", "unet_classic"]
    info = model_info("unet_classic", params=False)
    assert info["dims"] == (2, 3) and info["divisor"] == 16 and "channels" in info["options"]
    assert built == []


def test_classic_unet_is_the_2015_network_at_default_width():
    info = model_info("unet_classic")
    assert info["options"]["channels"] == (64, 128, 256, 512, 1024)
    # Ronneberger et al.'s U-Net with BN and 2x2 up-convolutions: ~31.0M parameters in 2D
    assert 30.9e6 < info["params"][2] < 31.1e6
    assert info["params"][3] > 2.5 * info["params"][2]  # 3x3x3 kernels


def test_param_count_matches_a_real_build():
    kw = {"channels": (4, 8), "blocks": (1, 1), "output_stride": 8, "aspp_channels": 8}
    real = sum(p.numel() for p in create_model("deeplabv3", spatial_dims=2, in_channels=1, out_channels=2, **kw).parameters())
    with torch.device("meta"):
        meta = create_model("deeplabv3", spatial_dims=2, in_channels=1, out_channels=2, **kw)
    assert sum(p.numel() for p in meta.parameters()) == real
    assert param_count("unet", 3) == sum(p.numel() for p in create_model("unet", spatial_dims=3, in_channels=1, out_channels=2).parameters())


@pytest.mark.parametrize("dims,shape", [(3, (1, 1, 32, 32, 16)), (2, (2, 1, 32, 32))])
def test_unet_builds_in_2d_and_3d_and_keeps_spatial_size(dims, shape):
    net = create_model("unet", spatial_dims=dims, in_channels=1, out_channels=5, channels=(8, 16, 32), strides=(2, 2))
    with torch.no_grad():
        out = net(torch.zeros(shape))
    assert out.shape == (shape[0], 5, *shape[2:])


@pytest.mark.parametrize("name,kw", [("fcn8s", {"channels": (4, 4, 4, 4, 4), "convs": (1,) * 5, "head_channels": 4}),
                                     ("unet_attention", {"channels": (4, 4, 4)})])
def test_sizes_off_the_divisor_are_padded_and_cropped_back(name, kw):
    net = create_model(name, spatial_dims=3, in_channels=1, out_channels=2, **kw).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 20, 33, 7)).shape == (1, 2, 20, 33, 7)


def test_deeplab_output_stride_sets_the_feature_resolution():
    for os_ in (8, 16):
        net = create_model("deeplabv3plus", spatial_dims=2, in_channels=1, out_channels=2, output_stride=os_,
                           channels=(4, 8, 8, 8), blocks=(1, 1, 1, 1), aspp_channels=8, low_level_channels=4)
        low, high = net.encoder(torch.zeros(1, 1, 64, 64))
        assert low.shape[-1] == 16 and high.shape[-1] == 64 // os_
    with pytest.raises(ConfigError, match="output_stride must be 8 or 16"):
        create_model("deeplabv3", spatial_dims=2, in_channels=1, out_channels=2, output_stride=32)


def test_fcn_variants_differ_only_in_fused_skips():
    kw = {"channels": (4, 4, 4, 4, 4), "convs": (1,) * 5, "head_channels": 4}
    skips = {v: len(create_model(f"fcn{v}s", spatial_dims=2, in_channels=1, out_channels=2, **kw).skip_scores) for v in (32, 16, 8)}
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
    from medseg.models.presets import list_model_presets, load_model_preset

    names = list_model_presets()
    assert {"unet_classic_small", "fcn8s_small", "deeplabv3_small", "deeplabv3plus_small"} <= set(names)
    for name in names:
        p = load_model_preset(name)
        assert p["name"] in list_models() and p["spatial_dims"] in (2, 3)
    (tmp_path / "bad.yaml").write_text("name: fcn8s\nkwargs: {depth: 3}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: model 'fcn8s' has no option\(s\) \['depth'\]"):
        load_model_preset("bad", root=tmp_path)
    with pytest.raises(ConfigError, match="did you mean fcn8s_small"):
        load_model_preset("fcn8s_smal")
