"""Tests that catch the mutants of ``dgm_edu/flows.py`` that its own tests let through
(``make mutation``), each against a hand-built value or a property that defines the layer:

- the masks by hand (they are buffers: loading shipped weights restores them, so only a fresh
  model shows a wrong one) and which mask, order and class each Flow2D layer gets;
- MADE's connectivity by autograd: output i depends on EVERY input before i and on no other
  (a degree off by one keeps it causal but cuts connections);
- ActNorm's one-time initialisation (train mode, a batch of two or more) and float64 models;
- inverses that must undo their layer (the planar bisection with a large ûᵀw, conditional
  couplings through Flow), a fresh coupling flow that samples N(0, T² I) exactly.
"""

from __future__ import annotations

import pytest
import torch

from dgm_edu.flows import (
    IAF,
    MADE,
    MAF,
    ActNorm,
    AffineCoupling,
    Flow,
    Flow2D,
    Flow2DConfig,
    MaskedLinear,
    Planar,
    _mlp,
    alternating_mask,
    checkerboard_mask,
)


def _message(err, call, *args, **kwargs) -> str:
    with pytest.raises(err) as info:
        call(*args, **kwargs)
    return str(info.value)


# --------------------------------------------------------------------------- masks
def test_masks_by_hand():
    assert checkerboard_mask(2, 3).tolist() == [[[[1, 0, 1], [0, 1, 0]]]]  # parity 0 default
    assert checkerboard_mask(3, 2, 1).tolist() == [[[[0, 1], [1, 0], [0, 1]]]]
    assert alternating_mask(5).tolist() == [[1, 0, 1, 0, 1]]
    assert alternating_mask(4, 1).tolist() == [[0, 1, 0, 1]]


def test_flow2d_layers_alternate_their_masks_orders_and_classes():
    coupling = Flow2D(Flow2DConfig(kind="coupling", num_layers=3, hidden=8, dim=3))
    parities = [layer.mask.tolist() for layer in coupling.flow.layers[1::2]]
    assert parities == [[[1, 0, 1]], [[0, 1, 0]], [[1, 0, 1]]]
    assert all(isinstance(layer, ActNorm) for layer in coupling.flow.layers[0::2])
    for kind, cls in (("maf", MAF), ("iaf", IAF)):
        flow = Flow2D(Flow2DConfig(kind=kind, num_layers=4, hidden=8, dim=3)).flow
        assert all(type(layer) is cls for layer in flow.layers)
        orders = [layer.made.degrees.tolist() for layer in flow.layers]
        assert orders == [[1, 2, 3], [3, 2, 1]] * 2  # every other layer reversed
    assert _message(ValueError, Flow2D, Flow2DConfig(kind="glow")) == (
        "Unknown flow kind 'glow': expected coupling/maf/iaf/planar"
    )


# --------------------------------------------------------------------------- MADE
def _jacobian_support(made: MADE, dim: int) -> torch.Tensor:
    """(2, D, D) bool: output (k, i) depends on input j."""
    with torch.no_grad():
        for p in made.parameters():
            p.normal_()  # random nonzero weights, the zero-initialised output layer included
    x = torch.randn(dim)
    jac = torch.autograd.functional.jacobian(lambda v: made(v[None])[0], x)  # (2, D, D)
    return jac.abs() > 0


@pytest.mark.parametrize(("dim", "hidden", "num_hidden"), [(4, 12, 2), (5, 16, 1), (3, 9, 3)])
def test_made_connects_each_output_to_every_earlier_input_and_no_other(dim, hidden, num_hidden):
    torch.manual_seed(0)
    support = _jacobian_support(MADE(dim, hidden, num_hidden), dim)
    lower = torch.ones(dim, dim).tril(-1).bool()  # input j < output i
    assert torch.equal(support[0], lower) and torch.equal(support[1], lower)
    order = torch.tensor([2, 0, 3, 1])[:dim] if dim == 4 else torch.arange(dim).flip(0)
    torch.manual_seed(0)
    made = MADE(dim, hidden, num_hidden, order)
    rank = torch.empty(dim, dtype=torch.long)
    rank[order] = torch.arange(dim)
    assert torch.equal(made.degrees, rank + 1)
    assert "degrees" in made.state_dict()  # a checkpointed buffer, by that name
    support = _jacobian_support(made, dim)
    assert torch.equal(support[0], rank[:, None] > rank[None, :])


def test_made_and_maf_defaults():
    made = MADE(3, 8)
    linears = [m for m in made.net if isinstance(m, MaskedLinear)]
    assert len(linears) == 3  # two hidden layers, then the output layer
    maf = MAF(3)
    assert maf.made.net[0].out_features == 64 and maf.scale_clamp == 3.0
    assert len([m for m in maf.made.net if isinstance(m, MaskedLinear)]) == 3


def test_masked_linear_is_a_masked_affine_map():
    torch.manual_seed(0)
    mask = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    layer = MaskedLinear(2, 3, mask)
    x = torch.randn(4, 2)
    expected = x @ (layer.weight * mask).T + layer.bias
    assert torch.allclose(layer(x), expected)


# --------------------------------------------------------------------------- ActNorm
def test_actnorm_initialises_once_from_a_training_batch_of_two_or_more():
    torch.manual_seed(0)
    x = torch.randn(2, 3) * 4 + 1
    norm = ActNorm(3)
    norm.train()(x[:1])  # one example: no statistics, no initialisation
    assert not bool(norm.initialized) and torch.equal(norm.loc, torch.zeros(3))
    norm.eval()(x)  # eval mode: no initialisation
    assert not bool(norm.initialized)
    z, logdet = norm.train()(x)  # a batch of two: standardised
    assert bool(norm.initialized)
    assert torch.allclose(z.mean(0), torch.zeros(3), atol=1e-5)
    assert torch.allclose(z.std(0), torch.ones(3), atol=1e-4)
    loc = norm.loc.detach().clone()
    norm(torch.randn(5, 3) * 100)  # later batches leave it as it is
    assert torch.equal(norm.loc.detach(), loc)
    wide = ActNorm(3)  # (B, C) with C > 1 but a batch of one: still nothing
    wide.train()(torch.randn(1, 3))
    assert not bool(wide.initialized)


def test_actnorm_and_couplings_in_float64():
    _, logdet = ActNorm(3).eval()(torch.randn(2, 3, dtype=torch.float64))
    assert logdet.dtype == torch.float64  # log |det| in the output's dtype
    norm = ActNorm((1, 2, 2)).double().train()
    x = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    z, logdet = norm(x)
    assert z.dtype == logdet.dtype == torch.float64 and logdet.shape == (3,)
    for kind in ("coupling", "maf"):  # float32 points in, float64 out
        flow = Flow2D(Flow2DConfig(kind=kind, num_layers=2, hidden=8)).double()
        assert flow.log_prob(torch.randn(4, 2)).dtype == torch.float64
        assert flow.sample(3).dtype == torch.float64


# --------------------------------------------------------------------------- inverses
def test_planar_inverse_with_a_large_u_dot_w():
    torch.manual_seed(0)
    layer = Planar(2)
    with torch.no_grad():
        layer.w.copy_(torch.tensor([1.0, 0.5]))
        layer.u.copy_(torch.tensor([3.0, 2.0]))  # ûᵀw = 4: the root is up to 4 from wᵀy
        layer.b.fill_(0.3)
    x = torch.linspace(-6, 6, 25)[:, None] * torch.tensor([1.0, -0.7])
    y, _ = layer(x)
    assert torch.allclose(layer.inverse(y), x, atol=1e-5)
    assert Planar().w.shape == (2,)
    big = Planar(4000)
    assert abs(big.w.detach().std().item() - 0.5) < 0.03
    assert abs(big.u.detach().std().item() - 0.5) < 0.03


def test_a_conditional_coupling_flow_inverts_with_its_condition():
    torch.manual_seed(0)
    layers = [AffineCoupling(alternating_mask(2, k % 2), _mlp(2 * 2 + 1, 8, 4)) for k in range(2)]
    flow = Flow(layers)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x, cond = torch.randn(6, 2), torch.randn(6, 1)
    z, _ = flow(x, cond)
    assert torch.allclose(flow.inverse(z, cond), x, atol=1e-5)


def test_trajectory_lists_the_data_after_each_layer():
    torch.manual_seed(0)
    flow = Flow2D(Flow2DConfig(kind="planar", num_layers=3)).flow
    x = torch.randn(5, 2)
    path = flow.trajectory(x)
    assert len(path) == 4 and torch.equal(path[0], x)
    h = x
    for layer, after in zip(flow.layers, path[1:], strict=True):
        h, _ = layer(h)
        assert torch.allclose(after, h)


# --------------------------------------------------------------------------- Flow2D's face
def test_a_fresh_coupling_flow_samples_the_scaled_base():
    """Zero-initialised couplings and uninitialised ActNorms are the identity: x = z."""
    flow = Flow2D(Flow2DConfig(num_layers=2, hidden=8))
    torch.manual_seed(0)
    assert abs(flow.sample(20000).std().item() - 1.0) < 0.02  # temperature 1 by default
    assert abs(flow.sample(20000, temperature=0.5).std().item() - 0.5) < 0.01


def test_flow2d_messages_name_x_and_refuse_labels():
    flow = Flow2D(Flow2DConfig(num_layers=1, hidden=8))
    assert _message(ValueError, flow.loss, torch.zeros(3, 3)) == (
        "x must be a non-empty batch of shape (N, 2), got (3, 3)"
    )
    assert _message(ValueError, flow.log_prob, torch.zeros(3)) == (
        "x must be a non-empty batch of shape (N, 2), got (3,)"
    )
    assert _message(ValueError, flow.loss, torch.zeros(3, 2), torch.zeros(3, dtype=torch.long)) == (
        "y was given but this model is unconditional (num_classes=0): expected y=None"
    )
    with torch.no_grad():
        flow.flow.layers[0].log_scale.fill_(float("nan"))
    with pytest.raises(FloatingPointError) as info:
        flow.sample(2)
    assert str(info.value).startswith("Flow2D samples is not finite (NaN or inf)")
    meta = Flow2D(Flow2DConfig(num_layers=1, hidden=8)).to("meta")
    assert meta.sample(3).device.type == "meta"
