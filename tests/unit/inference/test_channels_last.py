"""Channels-last inference: layout-keeping instance norms give instance norm's values without leaving the layout."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import profile

from medseg.inference.channels_last import (
    MIN_CHANNELS,
    LayoutInstanceNorm,
    channels_last_network,
    layout_instance_norms,
)


def _norm_input(shape, fmt, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * 3 + 1.5).contiguous(memory_format=fmt)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("channels", [MIN_CHANNELS, 6])
def test_layout_norm_gives_instance_norm_in_the_input_layout(dims, batch, channels):
    cls, fmt = (
        (torch.nn.InstanceNorm3d, torch.channels_last_3d)
        if dims == 3
        else (torch.nn.InstanceNorm2d, torch.channels_last)
    )
    ref = cls(channels, affine=True, eps=1e-5)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 2.0)
        ref.bias.normal_()
    x = _norm_input((batch, channels, *([9, 10, 11][:dims])), fmt)
    got = LayoutInstanceNorm(ref)(x)
    torch.testing.assert_close(got, ref(x), rtol=1e-4, atol=1e-4)
    # one wide image: the batch-norm route keeps channels-last, where instance norm hands back channels-first
    # (narrow layers and batches of several images take instance norm itself)
    keeps = batch == 1 and channels >= MIN_CHANNELS
    assert got.is_contiguous(memory_format=fmt) == keeps and not ref(x).is_contiguous(memory_format=fmt)
    plain = LayoutInstanceNorm(cls(channels))  # without affine parameters
    torch.testing.assert_close(plain(x), cls(channels)(x), rtol=1e-4, atol=1e-4)


def test_replacement_keeps_parameters_and_running_stat_norms_and_covers_shared_modules():
    encoder = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.InstanceNorm3d(4, affine=True))
    net = torch.nn.Sequential(encoder, torch.nn.InstanceNorm3d(4, track_running_stats=True), torch.nn.Conv3d(4, 2, 1))
    net.add_module("decoder", torch.nn.Sequential())
    net.decoder.add_module("encoder", encoder)  # shared, as nnU-Net's decoder holds its encoder
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert layout_instance_norms(net) == 1  # the shared norm once (one module, seen once); running stats stay
    assert isinstance(encoder[1], LayoutInstanceNorm) and net.decoder.encoder[1] is encoder[1]
    assert isinstance(net[1], torch.nn.InstanceNorm3d)
    after = net.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert layout_instance_norms(net) == 0  # idempotent


def _copies(net, x) -> int:
    with torch.inference_mode(), profile() as prof:
        net(x)
    return sum(e.count for e in prof.key_averages() if e.key == "aten::copy_")


def test_channels_last_network_keeps_the_logits_and_drops_the_norms_layout_copies():
    torch.manual_seed(0)
    c = MIN_CHANNELS
    block = [
        torch.nn.Conv3d(1, c, 3, padding=1),
        torch.nn.InstanceNorm3d(c, affine=True),
        torch.nn.LeakyReLU(0.01),
        torch.nn.Conv3d(c, c, 3, padding=1),
        torch.nn.InstanceNorm3d(c, affine=True),
        torch.nn.LeakyReLU(0.01),
        torch.nn.Conv3d(c, 3, 1),
    ]
    ref_net = torch.nn.Sequential(*block).eval()
    x = torch.randn(1, 1, 12, 16, 20)
    with torch.inference_mode():
        ref = ref_net(x)
    import copy

    plain_cl = copy.deepcopy(ref_net).to(memory_format=torch.channels_last_3d)  # layout only: norms copy out and back
    net = channels_last_network(copy.deepcopy(ref_net))
    xc = x.contiguous(memory_format=torch.channels_last_3d)
    with torch.inference_mode():
        got = net(xc)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    assert all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in net.parameters() if p.ndim == 5)
    # each plain instance norm copies its input out of the layout and back; the layout-keeping ones do not
    assert _copies(net, xc) + 2 * 2 <= _copies(plain_cl, xc)


def _wide_net(first: int):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv3d(1, first, 3, padding=1),
        torch.nn.InstanceNorm3d(first, affine=True),
        torch.nn.LeakyReLU(0.01),
        torch.nn.Conv3d(first, MIN_CHANNELS, 3, padding=1),
        torch.nn.InstanceNorm3d(MIN_CHANNELS),
        torch.nn.LeakyReLU(0.01),
        torch.nn.Conv3d(MIN_CHANNELS, 3, 1),
    )


def test_channels_last_training_gives_the_same_loss_and_gradients():
    import copy

    from medseg.inference.channels_last import channels_last_training
    from medseg.inference.sliding_window import to_layout

    ref_net = _wide_net(MIN_CHANNELS)
    net = copy.deepcopy(ref_net)
    cpu = torch.device("cpu")
    assert channels_last_training(net, device=cpu, batch_size=1, amp_dtype=torch.bfloat16)
    x, y = torch.randn(1, 1, 10, 12, 14), torch.randint(0, 3, (1, 10, 12, 14))
    losses = []
    for model, inp in ((ref_net, x), (net, to_layout(x, True))):
        model.train()
        loss = torch.nn.functional.cross_entropy(model(inp), y)  # float32 here: the comparison is the layout, not bf16
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    for (name, a), b in zip(ref_net.named_parameters(), net.parameters(), strict=False):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-5, msg=name)
    assert net.state_dict().keys() == ref_net.state_dict().keys()


@pytest.mark.parametrize(
    ("first", "device", "batch", "amp", "world", "converted"),
    [
        (MIN_CHANNELS, "cpu", 1, torch.bfloat16, 1, True),
        (MIN_CHANNELS // 2, "cpu", 1, torch.bfloat16, 1, False),  # a narrow norm would take the copying path: no gain
        (MIN_CHANNELS, "cpu", 2, torch.bfloat16, 1, False),  # batches of two: instance norm itself
        (MIN_CHANNELS, "cpu", 1, None, 1, False),  # float32: not measured to pay
        (MIN_CHANNELS, "cuda", 1, torch.bfloat16, 1, False),
        (MIN_CHANNELS, "cpu", 1, torch.bfloat16, 2, False),
    ],
)
def test_channels_last_training_only_where_it_was_measured_to_pay(first, device, batch, amp, world, converted):
    from medseg.inference.channels_last import channels_last_training

    net = _wide_net(first)
    got = channels_last_training(net, device=torch.device(device), batch_size=batch, amp_dtype=amp, world=world)
    assert got == converted
    assert any(isinstance(m, LayoutInstanceNorm) for m in net.modules()) == converted
