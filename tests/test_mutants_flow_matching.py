"""Tests that catch the mutants of ``dgm_edu/flow_matching.py`` that its own tests let through
(``make mutation``): the loss and the guided Euler sampler replayed from their formulas with the
same random draws, the path that ``return_path`` returns, a conditional-only model sampling
p(x) by stratified classes, the constructor's refusals (exact messages, the boundaries of
sigma_min), and the meta device."""

from __future__ import annotations

import pytest
import torch

from dgm_edu.data import load_digits
from dgm_edu.diffusion import DiffusionConfig
from dgm_edu.flow_matching import FlowMatching

X, Y = (t[:4] for t in load_digits("val"))


def _message(err, call, *args, **kwargs) -> str:
    with pytest.raises(err) as info:
        call(*args, **kwargs)
    return str(info.value)


def _fm(sigma_min: float = 1e-3, **config) -> FlowMatching:
    torch.manual_seed(0)
    base = {"data": "toy", "channels": 16, "num_classes": 3, "p_uncond": 0.2}
    model = FlowMatching(DiffusionConfig(**(base | config)), sigma_min=sigma_min).eval()
    with torch.no_grad():
        for p in model.net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("data", ["toy", "digits"])
def test_loss_is_its_formula_with_the_labels(data):
    model = _fm(data=data, channels=8 if data == "digits" else 16, sigma_min=0.1)
    x = X if data == "digits" else torch.randn(4, 2)
    y = torch.tensor([0, 1, 2, 0])
    torch.manual_seed(3)
    got = model.loss(x, y)
    torch.manual_seed(3)
    x1 = model._encode(x)
    x0 = torch.randn_like(x1)
    t = torch.rand(4)
    tb = t.view(-1, *[1] * (x1.dim() - 1))
    xt = (1 - 0.9 * tb) * x0 + tb * x1  # (1 − (1 − σ_min) t) x_0 + t x_1
    u = x1 - 0.9 * x0
    v = model.net(xt, t, y)
    assert v.shape == x1.shape  # one velocity per coordinate
    assert got.item() == pytest.approx((v - u).pow(2).flatten(1).sum(1).mean().item(), rel=1e-5)


def test_guided_euler_steps_replayed_and_the_path():
    model = _fm()
    x_0, y = torch.randn(3, 2), torch.tensor([2, 0, 1])
    out, path = model.sample(3, y=y, steps=4, guidance=2.0, z_0=x_0, return_path=True)
    x = x_0
    for i in range(4):
        t = torch.full((3,), i / 4)
        v_c, v_u = model.net(x, t, y), model.net(x, t, None)
        x = x + (v_u + 2.0 * (v_c - v_u)) / 4  # v = v_u + w (v_c − v_u), dt = 1/4
    assert path.shape == (5, 3, 2) and torch.equal(path[0], x_0)
    assert torch.allclose(path[-1], x, atol=1e-5) and torch.equal(out, path[-1])


def test_a_conditional_only_model_samples_p_x_by_stratified_classes():
    model = _fm(p_uncond=0.0)
    x_0 = torch.randn(3, 2)
    a = model.sample(3, z_0=x_0, steps=3)
    b = model.sample(3, y=torch.tensor([0, 1, 2]), z_0=x_0, steps=3)
    assert torch.equal(a, b)


def test_constructor_and_sampler_refusals():
    FlowMatching(DiffusionConfig(data="toy"), sigma_min=0.0)  # 0 is allowed: the OT path
    for sigma, message in [(1.0, "sigma_min must lie in [0, 1), got 1.0"),
                           (1.5, "sigma_min must lie in [0, 1), got 1.5"),
                           (-0.1, "sigma_min must lie in [0, 1), got -0.1")]:  # fmt: skip
        assert _message(ValueError, FlowMatching, DiffusionConfig(data="toy"), sigma) == message
    assert _message(TypeError, FlowMatching, DiffusionConfig(data="toy"), "a") == (
        "sigma_min must be a real number, got 'a' (str)"
    )
    assert _message(ValueError, FlowMatching, DiffusionConfig(head="levels")) == (
        "FlowMatching regresses a velocity: head must be 'eps', got 'levels'"
    )
    assert _message(ValueError, _fm().sample, 2, z_0=torch.zeros(2, 3)) == (
        "z_0 must be a tensor of shape (2, 2), got (2, 3)"
    )


def test_the_meta_device():
    model = _fm().to("meta")
    pts = torch.zeros(3, 2, device="meta")
    assert model.loss(pts, torch.zeros(3, dtype=torch.long, device="meta")).is_meta
    assert model.sample(2, steps=2).is_meta
    assert model.sample(2, y=1, guidance=2.0, steps=2).is_meta
