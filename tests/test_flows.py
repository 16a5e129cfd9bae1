"""Tests of dgm_edu.flows and dgm_edu.digit_flow: invertibility, log-determinants,
normalisation, dequantization bounds, and the sampling and input checks."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch.autograd.functional import jacobian

from dgm_edu.data import LEVELS, NUM_PIXELS, load_digits, quantize, toy_2d
from dgm_edu.densities import standard_normal_log_prob
from dgm_edu.digit_flow import ConvNet, DigitFlow, DigitFlowConfig, NetShape, coupling_stack
from dgm_edu.flows import (
    IAF,
    MADE,
    MAF,
    ActNorm,
    AffineCoupling,
    Flow2D,
    Flow2DConfig,
    MaskedLinear,
    Planar,
    _mlp,
    alternating_mask,
    checkerboard_mask,
)


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """A few raw test digits (loading the data set once per module: it is slow on a busy CPU)."""
    return load_digits("test")[0][:8]


def _randomise(module: torch.nn.Module, std: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """Give every parameter random values (the zero-initialised output layers make identities)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    for m in module.modules():
        if isinstance(m, ActNorm):
            m.initialized.fill_(True)
    return module.double().eval()


def _layers() -> dict[str, tuple[torch.nn.Module, tuple[int, ...], int]]:
    """name -> (layer in float64 with random weights, input shape, conditioning channels)."""
    return {
        "coupling-2d": (
            _randomise(AffineCoupling(alternating_mask(2, 1), _mlp(4, 16, 4))),
            (2,),
            0,
        ),
        "coupling-6d": (
            _randomise(AffineCoupling(alternating_mask(6, 0), _mlp(12, 16, 12))),
            (6,),
            0,
        ),
        "coupling-conv": (
            _randomise(
                AffineCoupling(checkerboard_mask(8, 8, 1), ConvNet(NetShape(2, 8, 2))), std=0.2
            ),
            (1, 8, 8),
            0,
        ),
        "coupling-conv-cond": (
            _randomise(
                AffineCoupling(checkerboard_mask(8, 8, 0), ConvNet(NetShape(5, 8, 2))), std=0.2
            ),
            (1, 8, 8),
            3,
        ),
        "actnorm-vec": (_randomise(ActNorm(5)), (5,), 0),
        "actnorm-img": (_randomise(ActNorm(2)), (2, 4, 4), 0),
        "actnorm-pixel": (_randomise(ActNorm((2, 4, 4))), (2, 4, 4), 0),
        "maf": (_randomise(MAF(5, 16)), (5,), 0),
        "maf-reversed": (_randomise(MAF(5, 16, reverse=True)), (5,), 0),
        "iaf": (_randomise(IAF(5, 16)), (5,), 0),
        "planar": (_randomise(Planar(2), std=1.0), (2,), 0),
        "stack-conv": (_randomise(coupling_stack(3, 8, 2), std=0.2), (1, 8, 8), 0),
        "stack-mlp": (_randomise(coupling_stack(3, 16, 2, net="mlp"), std=0.1), (1, 8, 8), 0),
    }


LAYER_NAMES = list(_layers())


def _inputs(shape, cond_ch, batch=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *shape, generator=g, dtype=torch.float64)
    cond = (
        torch.randn(batch, cond_ch, *shape[1:], generator=g, dtype=torch.float64)
        if cond_ch
        else None
    )
    return x, cond


# --------------------------------------------------------------------------- invertibility
@pytest.mark.parametrize("name", LAYER_NAMES)
def test_inverse_of_forward_is_identity(name):
    # catches: inverse that uses exp(s) instead of exp(-s), a net fed the unmasked half, a MAF/IAF
    # inverse with too few passes, a wrong bisection bracket in the planar inverse
    layer, shape, cond_ch = _layers()[name]
    x, cond = _inputs(shape, cond_ch)
    with torch.no_grad():
        z, _ = layer(x, cond)
        assert (z - x).abs().max() > 1e-2  # the layer does something
        assert torch.allclose(layer.inverse(z, cond), x, atol=1e-5, rtol=0)
        assert torch.allclose(layer(layer.inverse(x, cond), cond)[0], x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["coupling", "maf", "iaf", "planar"])
def test_flow2d_inverse(kind):
    model = _randomise(Flow2D(Flow2DConfig(kind=kind, num_layers=4, hidden=16)), std=0.3)
    x, _ = _inputs((2,), 0, batch=16)
    with torch.no_grad():
        z, _ = model.flow(x)
        assert torch.allclose(model.flow.inverse(z), x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("deq", ["uniform", "variational"])
def test_digitflow_inverse_and_preprocessing(deq):
    cfg = DigitFlowConfig(
        dequantization=deq, num_couplings=3, hidden=8, depth=2, deq_couplings=2, deq_hidden=4
    )
    model = _randomise(DigitFlow(cfg), std=0.1)
    g = torch.Generator().manual_seed(0)
    y = torch.rand(5, 1, 8, 8, generator=g, dtype=torch.float64)
    with torch.no_grad():
        s, _ = model._to_logit(y)
        assert torch.allclose(model._from_logit(s), y, atol=1e-10)
        z, _ = model.flow(s)
        assert torch.allclose(model.flow.inverse(z), s, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- log-determinants
def _autograd_logdet(fn, x: torch.Tensor) -> torch.Tensor:
    """log|det J| of fn at each example, from the full (D x D) autograd Jacobian."""
    out = []
    for xi in x:
        # (*shape, *shape)
        jac = jacobian(lambda v: fn(v.unsqueeze(0)).squeeze(0), xi, vectorize=False)
        d = xi.numel()
        out.append(torch.linalg.slogdet(jac.reshape(d, d))[1])
    return torch.stack(out)


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_logdet_matches_autograd_jacobian(name):
    # catches: a dropped or wrongly signed log-scale, the log-det summed over the masked half,
    # ActNorm's log-det not multiplied by the number of pixels, a planar log-det without |.|
    layer, shape, cond_ch = _layers()[name]
    x, cond = _inputs(shape, cond_ch, batch=3)
    _, logdet = layer(x, cond)
    c = cond

    def fn(v):
        cc = None if c is None else c[: v.shape[0]]
        return layer(v, cc)[0]

    if cond is not None:  # one example at a time, each with its own conditioning
        expected = torch.stack(
            [
                _autograd_logdet(lambda v, i=i: layer(v, cond[i : i + 1])[0], x[i : i + 1])[0]
                for i in range(len(x))
            ]
        )
    else:
        expected = _autograd_logdet(fn, x)
    assert torch.allclose(logdet, expected, atol=1e-8), (logdet, expected)


def test_logit_preprocessing_logdet():
    # catches: the Jacobian of the logit/scaling preprocessing dropped or missing (1 - 2 alpha)
    model = DigitFlow(DigitFlowConfig(dequantization="uniform", num_couplings=1, hidden=4)).double()
    y = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    _, logdet = model._to_logit(y)
    assert torch.allclose(logdet, _autograd_logdet(lambda v: model._to_logit(v)[0], y))


def test_variational_dequantizer_log_q(digits):
    # log q(u|x) = log N(eps) - log|det du/deps|, with the Jacobian from autograd
    # catches: a missing sigmoid Jacobian, the coupling log-det added instead of subtracted
    cfg = DigitFlowConfig(num_couplings=1, hidden=4, deq_couplings=2, deq_hidden=4)
    model = _randomise(DigitFlow(cfg), std=0.2)
    x = digits[:2]
    torch.manual_seed(3)
    u, log_q = model.dequantize(x)
    torch.manual_seed(3)
    eps = torch.randn(x.shape, dtype=torch.float64)
    cond = x.double() / 16 - 0.5
    for i in range(2):
        fn = lambda e, i=i: torch.sigmoid(model.deq_flow(e, cond[i : i + 1])[0])
        assert torch.allclose(fn(eps[i : i + 1]), u[i : i + 1])
        ld = _autograd_logdet(fn, eps[i : i + 1])[0]
        expected = standard_normal_log_prob(eps[i : i + 1])[0] - ld
        assert torch.allclose(log_q[i], expected, atol=1e-8)


def test_maf_jacobian_is_triangular_in_its_order():
    # catches: a MADE mask with >= instead of > at the output (z_i would see x_i), no mask at all
    for layer, order in [(MAF(5, 16), range(5)), (MAF(5, 16, reverse=True), range(4, -1, -1))]:
        layer = _randomise(layer)
        x = torch.randn(1, 5, dtype=torch.float64)
        jac = jacobian(lambda v, f=layer: f(v)[0], x)[0, :, 0]  # (5, 5)
        perm = list(order)
        jp = jac[perm][:, perm]  # rows/cols in the autoregressive order
        assert torch.allclose(jp.triu(1), torch.zeros_like(jp))
        assert (jp.tril(-1).abs() > 1e-6).any()  # and it does depend on earlier coordinates


@pytest.mark.parametrize(
    "dim, hidden, num_hidden, order",
    [(5, 8, 1, None), (6, 12, 3, [5, 4, 3, 2, 1, 0]), (7, 20, 2, [3, 0, 6, 1, 5, 2, 4])],
)
def test_made_connectivity_is_the_autoregressive_order(dim, hidden, num_hidden, order):
    # Independent of the degree rule: the product of the 0/1 masks counts the paths from input d
    # to each output; output i must reach exactly the inputs before i in the order, all of them.
    # catches: >= at the output (x_i reaches mu_i), > in a hidden layer or hidden degrees that
    # skip a value (earlier inputs cut off), a mask built on the identity order, not ``order``
    made = MADE(dim, hidden, num_hidden, order)
    masks = [m.mask for m in made.net if isinstance(m, MaskedLinear)]
    assert len(masks) == num_hidden + 1
    paths = masks[0]  # (H, D)
    for mask in masks[1:]:
        paths = mask @ paths  # (out, D): number of paths from input d
    rank = torch.empty(dim, dtype=torch.long)
    rank[torch.as_tensor(order if order is not None else range(dim))] = torch.arange(dim)
    before = rank[:, None] > rank[None, :]  # (D, D): input d comes before input i
    assert torch.equal(paths > 0, before.repeat(2, 1))  # mu rows, then alpha rows


def test_actnorm_data_dependent_init():
    layer = ActNorm(3).train()
    x = torch.randn(256, 3, 4, 4) * torch.tensor([2.0, 0.5, 3.0]).view(1, 3, 1, 1) + 1.0
    z, _ = layer(x)
    assert torch.allclose(z.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(z.std((0, 2, 3)), torch.ones(3), atol=1e-4)
    pixel = ActNorm((3, 4, 4)).train()  # one loc/scale per channel and position
    z, _ = pixel(x)
    assert torch.allclose(z.mean(0), torch.zeros(3, 4, 4), atol=1e-5)
    assert torch.allclose(z.std(0), torch.ones(3, 4, 4), atol=1e-4)


# --------------------------------------------------------------------------- normalisation
@pytest.mark.parametrize("kind", ["coupling", "maf", "iaf", "planar"])
def test_2d_density_integrates_to_one(kind):
    # catches: any log-det with the wrong sign or a wrong factor (the integral moves off 1)
    model = _randomise(Flow2D(Flow2DConfig(kind=kind, num_layers=3, hidden=16)), std=0.3)
    lim, n = 10.0, 300
    xs = torch.linspace(-lim, lim, n, dtype=torch.float64)
    xx, yy = torch.meshgrid(xs, xs, indexing="xy")
    grid = torch.stack([xx.flatten(), yy.flatten()], 1)
    with torch.no_grad():
        dens = model.log_prob(grid).exp()
    cell = (xs[1] - xs[0]) ** 2
    assert abs(float(dens.sum() * cell) - 1.0) < 5e-3


def test_1d_flow_density_integrates_to_one():
    model = _randomise(Flow2D(Flow2DConfig(kind="maf", num_layers=2, hidden=8, dim=1)), std=0.5)
    xs = torch.linspace(-30, 30, 20001, dtype=torch.float64).unsqueeze(1)
    with torch.no_grad():
        dens = model.log_prob(xs).exp()
    assert abs(float(torch.trapezoid(dens, xs[:, 0])) - 1.0) < 1e-4


# --------------------------------------------------------------------------- dequantization bound
def _factorised_model(deq: str) -> DigitFlow:
    """A DigitFlow whose flow is one per-pixel affine map (couplings zero = identity), so that the
    discrete probability of an image is a product of per-pixel CDF differences."""
    cfg = DigitFlowConfig(
        dequantization=deq, num_couplings=2, hidden=4, depth=1, deq_couplings=2, deq_hidden=4
    )
    model = DigitFlow(cfg).double().eval()
    if deq == "variational":
        _randomise(model.deq_flow, std=0.2, seed=1)
    with torch.no_grad():
        for i, layer in enumerate(a for a in model.flow.layers if isinstance(a, ActNorm)):
            layer.loc.fill_(0.3 * (i + 1))
            layer.log_scale.fill_(0.4 - 0.2 * i)
            layer.initialized.fill_(True)
    return model


def _exact_log_prob(model: DigitFlow, x: torch.Tensor) -> torch.Tensor:
    """log P(x) = sum_d log[Phi(z(hi_d)) - Phi(z(lo_d))] for the factorised model."""
    edges = torch.arange(LEVELS + 1, dtype=torch.float64) / LEVELS  # bin edges in y
    edges = edges.clamp(1e-12, 1 - 1e-12)
    z_edges = []
    for e in edges:
        y = torch.full((1, 1, 8, 8), float(e), dtype=torch.float64)
        with torch.no_grad():
            z_edges.append(model.flow(model._to_logit(y)[0])[0][0, 0, 0, 0])
    cdf = torch.special.ndtr(torch.stack(z_edges))  # (18,)
    cdf[0], cdf[-1] = 0.0, 1.0
    log_bin = (cdf[1:] - cdf[:-1]).log()  # (17,) log P(level)
    return log_bin[x.flatten(1)].sum(1)


@pytest.mark.parametrize("deq", ["uniform", "variational"])
def test_dequantized_bound_below_discrete_log_likelihood(deq, digits):
    # catches: a missing -64 log 17, a dropped logit Jacobian, a dropped log q(u|x): each moves
    # the bound above the exact discrete log-likelihood or far below it
    model = _factorised_model(deq)
    x = digits[:6]
    torch.manual_seed(0)
    with torch.no_grad():
        bound = model.log_prob(x, num_samples=200)
    exact = _exact_log_prob(model, x)
    assert (bound <= exact).all(), (bound, exact)
    # a bound, not a number off by a constant (the random q of the variational case is poor)
    assert (exact - bound < (25 if deq == "uniform" else 80)).all(), (bound, exact)


def test_uniform_bound_equals_quadrature(digits):
    # E_u[log p_Y((x+u)/17)] - 64 log 17 by 1D quadrature of log(d/dy CDF), independent of log-dets
    model = _factorised_model("uniform")
    x = digits[:3]
    n = 400
    per_level = []
    for k in range(LEVELS):
        y = ((k + (torch.arange(n, dtype=torch.float64) + 0.5) / n) / LEVELS).requires_grad_()
        yy = y.view(-1, 1, 1, 1).expand(n, 1, 8, 8)
        z = model.flow(model._to_logit(yy)[0])[0][:, 0, 0, 0]
        (grad,) = torch.autograd.grad(torch.special.ndtr(z).sum(), y)
        per_level.append(grad.log().mean())  # midpoint rule for int_0^1 log p_Y du
    per_level = torch.stack(per_level).detach()
    expected = per_level[x.flatten(1)].sum(1) - NUM_PIXELS * math.log(LEVELS)
    torch.manual_seed(0)
    with torch.no_grad():
        bound = model.log_prob(x, num_samples=400)
    assert torch.allclose(bound, expected, atol=0.15), (bound, expected)


def test_log_prob_validates_raw_digits():
    model = DigitFlow(DigitFlowConfig(num_couplings=1, hidden=4))
    with pytest.raises(ValueError):
        model.log_prob(torch.rand(2, 1, 8, 8))  # [0,1] floats instead of levels


# --------------------------------------------------------------------------- the face (issue 24)
def _small_digit_flow(deq: str = "uniform") -> DigitFlow:
    cfg = DigitFlowConfig(
        dequantization=deq, num_couplings=2, hidden=4, depth=1, deq_couplings=2, deq_hidden=4
    )
    return DigitFlow(cfg)


@pytest.mark.parametrize("deq", ["uniform", "variational"])
def test_loss_is_minus_the_one_sample_bound(deq, digits):
    # loss(x) = -mean of the one-sample bound: log_prob(x, num_samples=1) on the same noise
    model = _randomise(_small_digit_flow(deq), std=0.1).float()
    torch.manual_seed(0)
    loss = model.loss(digits)
    torch.manual_seed(0)
    assert loss.item() == pytest.approx(-model.log_prob(digits, num_samples=1).mean().item())
    flow2d = _randomise(Flow2D(Flow2DConfig(num_layers=2, hidden=8)), std=0.3).float()
    x = toy_2d("moons", 16)
    assert flow2d.loss(x).item() == pytest.approx(-flow2d.log_prob(x).mean().item(), rel=1e-6)


@pytest.mark.parametrize("deq", ["uniform", "variational"])
def test_levels_round_trip_through_the_dequantized_logit_space(deq):
    # levels -> y = (x + u) / 17 -> s = logit(alpha + (1 - 2 alpha) y) -> back -> floor(17 y)
    # is the identity for every level and every u the dequantizer draws (catches noise outside
    # [0, 1), a /16 for /17, a rounding decoder)
    model = _randomise(_small_digit_flow(deq), std=0.1).float()
    x = torch.arange(LEVELS).repeat(4).view(-1, 1, 1, 1).expand(-1, 1, 8, 8).contiguous()
    for seed in range(3):
        torch.manual_seed(seed)
        with torch.no_grad():
            u, _ = model.dequantize(x)
        assert (u >= 0).all() and (u < 1).all()
        s, _ = model._to_logit((x + u) / LEVELS)
        assert torch.equal(quantize(model._from_logit(s)), x)


def test_sample_arguments_are_checked():
    digit = _small_digit_flow()
    flow2d = Flow2D(Flow2DConfig(num_layers=2, hidden=8))
    for model in (digit, flow2d):
        for kwargs, err, message in [
            (dict(n=-1), ValueError, "n must be a non-negative int, got -1"),
            (dict(n=2.0), TypeError, "n must be a non-negative int, got 2.0"),
            (dict(n=2, temperature=float("nan")), ValueError, "finite number > 0, got nan"),
            (dict(n=2, temperature=0), ValueError, "temperature must be a finite number > 0"),
            (dict(n=2, temperature=-1), ValueError, "temperature must be a finite number > 0"),
            (dict(n=2, y=1), ValueError, "y was given but this model is unconditional"),
        ]:
            with pytest.raises(err, match=message):
                model.sample(**kwargs)
        with pytest.raises(TypeError, match="positional argument"):
            model.sample(2, 0.5)  # temperature is keyword-only
    assert digit.sample(0).shape == (0, 1, 8, 8) and digit.sample(0).dtype == torch.int64
    assert flow2d.sample(0).shape == (0, 2)
    s = digit.sample(5, temperature=0.7)
    assert s.dtype == torch.int64 and s.min() >= 0 and s.max() <= LEVELS - 1


def test_digit_flow_inputs_are_checked(digits):
    model = _small_digit_flow()
    with pytest.raises(ValueError, match="y was given but this model is unconditional"):
        model.loss(digits, torch.arange(len(digits)))
    with pytest.raises(ValueError, match="num_samples must be an int >= 1, got 0"):
        model.log_prob(digits, num_samples=0)
    # the config has no image size: DigitFlow is 8x8 only, and says so
    mnist = torch.randint(0, LEVELS, (2, 1, 28, 28))
    message = re.escape("Expected digits of shape (N, 1, 8, 8), got (2, 1, 28, 28)")
    for method in (model.loss, model.log_prob):
        with pytest.raises(ValueError, match=message):
            method(mnist)
    for kwargs, message in [
        (dict(dequantization="none"), "dequantization must be 'uniform' or 'variational'"),
        (dict(net="resnet"), "net must be 'conv' or 'mlp', got 'resnet'"),
        (dict(alpha=0.5), re.escape("alpha must lie in (0, 0.5), got 0.5")),
    ]:
        with pytest.raises(ValueError, match=message):
            DigitFlowConfig(**kwargs)
    assert torch.equal(  # whole-number floats and other integer dtypes are the same digits
        _bound(model, digits.to(torch.uint8)), _bound(model, digits.float())
    )


def _bound(model: DigitFlow, x: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(0)
    with torch.no_grad():
        return model.log_prob(x)


def test_log_prob_keeps_gradients_and_a_diverged_sample_is_refused(digits):
    model = _small_digit_flow("variational")
    lp = model.log_prob(digits[:3], num_samples=2)
    assert lp.requires_grad
    lp.sum().backward()
    assert all(p.grad is not None for p in model.deq_flow.parameters())
    with torch.no_grad():
        model.flow.layers[0].loc.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="DigitFlow samples is not finite"):
        model.sample(2)


def test_sample_decodes_to_the_bin_of_the_inverse_logit():
    # a fresh DigitFlow is the identity (zero couplings, ActNorm not yet initialised), so a sample
    # is x = floor(17 y), y = (sigmoid(z) - alpha) / (1 - 2 alpha), z ~ N(0, T^2): recomputed here
    # (catches a decoder that rounds 16 y, or one that ignores the temperature)
    model = _small_digit_flow().eval()
    a = model.config.alpha
    for temperature in (1.0, 2.5):
        torch.manual_seed(0)
        got = model.sample(500, temperature=temperature)
        torch.manual_seed(0)
        z = temperature * torch.randn(500, 1, 8, 8)
        y = (torch.sigmoid(z) - a) / (1 - 2 * a)
        assert torch.equal(got, (y * LEVELS).floor().clamp(0, LEVELS - 1).long())
