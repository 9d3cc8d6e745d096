"""Every registered model, in every dimensionality it declares, honours the model contract.

Parametrized over ``list_models()`` at collection time: a new model file (or an
installed plugin) is enrolled without editing this test. Models are built at
the width given by their ``tiny`` tag (default width when they have none) and at
their default depth, so the registry's ``divisor`` applies. Models with deep
supervision may return a list of logits in training (full resolution first); in
eval mode every model returns one tensor.
"""

import pytest
import torch

from medseg.models import create_model, list_models, model_info

CASES = [(name, d) for name in list_models() for d in model_info(name, params=False)["dims"]]
ODD = {2: (3, 1), 3: (1, 3, 1)}  # size = divisor x a small odd factor, different per axis to catch axis mix-ups


def _build(name, dims, out_channels=3, in_channels=2):
    info = model_info(name, params=False)
    torch.manual_seed(0)
    return create_model(
        name, spatial_dims=dims, in_channels=in_channels, out_channels=out_channels, **info.get("tiny", {})
    ), info["divisor"]


@pytest.mark.parametrize("name,dims", CASES, ids=[f"{n}-{d}d" for n, d in CASES])
def test_forward_backward_shape_and_eval_determinism(name, dims):
    net, divisor = _build(name, dims)
    shape = (2, 2, *(divisor * f for f in ODD[dims]))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))

    net.train()
    y = net(x)
    # deep supervision: a list of logits, full resolution first, each scale no larger than the one before
    outs = list(y) if isinstance(y, (list, tuple)) else [y]
    assert outs[0].shape == (2, 3, *shape[2:]), f"{name} {dims}D: output {tuple(outs[0].shape)} for input {shape}"
    for hi, lo in zip(outs, outs[1:], strict=False):
        assert lo.shape[:2] == (2, 3) and all(b <= a for a, b in zip(hi.shape[2:], lo.shape[2:], strict=False)), (
            f"{name}: scales not in decreasing size"
        )
        assert any(b < a for a, b in zip(hi.shape[2:], lo.shape[2:], strict=False)), (
            f"{name}: two deep-supervision outputs at the same size"
        )
    assert all(torch.isfinite(o).all() for o in outs)
    sum(o.float().square().mean() for o in outs).backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads), f"{name}: some parameters get no gradient"
    assert any(g.abs().sum() > 0 for g in grads)

    net.eval()
    with torch.no_grad():
        a, b = net(x), net(x)
    assert isinstance(a, torch.Tensor), f"{name}: eval mode must return one tensor (full-resolution logits)"
    assert torch.equal(a, b), f"{name} {dims}D is not deterministic in eval mode"
    with torch.no_grad():  # a sample's output does not depend on the rest of the batch in eval mode
        assert torch.allclose(net(x[:1]), a[:1], atol=1e-4)  # float noise only; batch statistics would differ by O(1)


@pytest.mark.parametrize("name", list_models())
def test_info_describes_the_model(name):
    info = model_info(name)
    assert info["description"]
    assert set(info["dims"]) <= {2, 3} and info["dims"]
    assert isinstance(info["divisor"], int) and info["divisor"] >= 1
    assert all(isinstance(n, int) and n > 0 for n in info["params"].values() if n is not None)
