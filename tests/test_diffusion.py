"""Checks of dgm_edu.diffusion against independent computations (closed forms, Bayes' rule, MC)."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from dgm_edu.data import LEVELS, load_digits, to_signed, toy_2d
from dgm_edu.diffusion import (
    Diffusion,
    DiffusionConfig,
    cosine_schedule,
    linear_schedule,
)
from dgm_edu.flow_matching import FlowMatching

SCHEDULES = {"linear": linear_schedule, "cosine": cosine_schedule}


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """A few raw test digits (int64 levels 0..16)."""
    return load_digits("test")[0][:8]


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedules_monotone_in_unit_interval(name):
    # catches: cumprod of beta instead of 1 - beta, a schedule that does not start at abar_0 = 1
    abar = SCHEDULES[name](1000)
    assert abar[0] == 1.0
    assert ((abar[1:] > 0) & (abar[1:] < 1)).all()
    assert (abar[1:] < abar[:-1]).all()  # strictly decreasing
    assert abar[-1] < 1e-3  # x_T is (almost) pure noise


@pytest.mark.parametrize("name", SCHEDULES)
def test_forward_process_step_by_step_matches_closed_form(name):
    # catches: sqrt dropped in q_sample, (1 - abar) in place of sqrt(1 - abar), an off-by-one in t
    torch.manual_seed(0)
    T, n = 40, 40_000
    model = Diffusion(DiffusionConfig(data="toy", schedule=name, T=T))
    model.abar = SCHEDULES[name](T).float()
    abar = SCHEDULES[name](T).double()
    betas = 1 - abar[1:] / abar[:-1]  # beta_t = 1 - abar_t / abar_{t-1}
    x0 = torch.tensor([1.5, -0.5]).expand(n, 2)
    x = x0.double()
    for t in [1, 7, 20, T]:
        x = x0.double()
        for s in range(1, t + 1):  # x_s = sqrt(1 - beta_s) x_{s-1} + sqrt(beta_s) z
            x = (1 - betas[s - 1]).sqrt() * x + betas[s - 1].sqrt() * torch.randn_like(x)
        closed = model.q_sample(x0, torch.full((n,), t), torch.randn(n, 2))
        for sample in (x.float(), closed):
            se = 4 / math.sqrt(n)
            assert torch.allclose(sample.mean(0), abar[t].sqrt().float() * x0[0], atol=4 * se)
            assert torch.allclose(sample.var(0), (1 - abar[t]).float().expand(2), atol=8 * se)


def test_posterior_matches_bayes_rule():
    # catches: swapped coefficients of x_0 and x_t, a variance of beta_t instead of beta~_t
    model = Diffusion(DiffusionConfig(data="toy", schedule="linear"))
    torch.manual_seed(1)
    x0, xt = torch.randn(6, 2), torch.randn(6, 2)
    t = torch.tensor([2, 10, 100, 400, 800, 1000])
    mean, var = model.posterior(x0, xt, t)
    abar = linear_schedule(1000)
    for i in range(6):
        ab, ab_prev = abar[t[i]], abar[t[i] - 1]
        alpha = ab / ab_prev
        # prior q(x_{t-1}|x_0) = N(sqrt(ab_prev) x0, 1 - ab_prev); likelihood q(x_t|x_{t-1})
        # = N(sqrt(alpha) x_{t-1}, 1 - alpha): precisions add, means are precision-weighted
        prec = 1 / (1 - ab_prev) + alpha / (1 - alpha)
        mu = (
            ab_prev.sqrt() * x0[i].double() / (1 - ab_prev)
            + alpha.sqrt() * xt[i].double() / (1 - alpha)
        ) / prec
        assert torch.allclose(mean[i].double(), mu, rtol=2e-3, atol=1e-4)  # float32 buffers
        assert torch.allclose(var[i].double().squeeze(), 1 / prec, rtol=2e-3)


class OracleEps(nn.Module):
    """eps(x_t, t) = (x_t - sqrt(abar_t) x*) / sqrt(1 - abar_t): exact for one data point."""

    def __init__(self, point: torch.Tensor, abar: torch.Tensor, T: int) -> None:
        super().__init__()
        self.point, self.abar, self.T, self.dummy = point, abar, T, nn.Parameter(torch.zeros(1))

    def forward(self, x, t, y=None):
        ab = self.abar[(t * self.T).round().long()].view(-1, *([1] * (x.dim() - 1)))
        return (x - ab.sqrt() * self.point) / (1 - ab).sqrt()


@pytest.mark.parametrize("steps", [1, 10, 50])
def test_ddim_with_oracle_recovers_the_point(steps):
    # catches: a wrong DDIM update (e.g. sqrt(abar) vs abar), reversed time grid, an eta leak
    model = Diffusion(DiffusionConfig(data="toy", schedule="linear"))
    point = torch.tensor([1.3, -0.7])
    model.net = OracleEps(point, model.abar, model.config.T)
    torch.manual_seed(0)
    x_T = torch.randn(64, 2)
    out, path = model.ddim_sample(64, steps=steps, eta=0.0, x_T=x_T, return_path=True)
    assert torch.allclose(out, point.expand(64, 2), atol=1e-3)
    # with the oracle every DDIM state keeps the same implied noise:
    # x_s = sqrt(abar_s) x* + sqrt(1 - abar_s) eps_T (catches a wrong intermediate update)
    abar = model.abar.double()
    eps_T = (x_T.double() - abar[-1].sqrt() * point) / (1 - abar[-1]).sqrt()
    times = torch.linspace(model.config.T, 0, steps + 1).round().long()
    for k in range(1, steps):
        s = times[k]
        expected = abar[s].sqrt() * point + (1 - abar[s]).sqrt() * eps_T
        assert torch.allclose(path[k].double(), expected, atol=1e-3)


def test_ddpm_ancestral_step_is_the_posterior():
    # DDIM with eta=1 on all T steps is ancestral sampling: one step from T to T-1 must be
    # N(posterior mean, beta~_T) (catches a wrong sigma formula or a missing noise term).
    model = Diffusion(DiffusionConfig(data="toy", schedule="linear", T=10))
    point = torch.tensor([0.8, -1.2])
    model.net = OracleEps(point, model.abar, 10)
    torch.manual_seed(0)
    n = 40_000
    x_T = torch.full((n, 2), 0.3)
    _, path = model.ddim_sample(n, steps=10, eta=1.0, x_T=x_T, return_path=True)
    mean, var = model.posterior(point.expand(n, 2), x_T, torch.full((n,), 10))
    se = var[0].sqrt().item() / math.sqrt(n)
    assert torch.allclose(path[1].mean(0), mean[0], atol=5 * se)
    assert torch.allclose(path[1].var(0), var[0].expand(2), rtol=0.03)


def test_bound_term_equals_gaussian_kl():
    # L_{t-1} = KL(q(x_{t-1}|x_t,x_0) || N(mu(xhat_0, x_t), beta~_t)) = w_t ||eps - epshat||^2
    # (catches a wrong weight w_t, e.g. SNR_t / SNR_{t-1} or a missing 1/2)
    model = Diffusion(DiffusionConfig(data="toy", schedule="cosine"))
    torch.manual_seed(2)
    x0, eps, eps_hat = torch.randn(5, 2), torch.randn(5, 2), torch.randn(5, 2)
    t = torch.tensor([2, 50, 300, 700, 990])
    xt = model.q_sample(x0, t, eps)
    ab = model.abar[t][:, None]
    x0_hat = (xt - (1 - ab).sqrt() * eps_hat) / ab.sqrt()
    mu_q, var = model.posterior(x0, xt, t)
    mu_p, _ = model.posterior(x0_hat, xt, t)
    kl = ((mu_q - mu_p) ** 2 / (2 * var)).sum(1)  # KL between Gaussians of equal variance
    ours = model.w[t] * (eps - eps_hat).pow(2).sum(1)
    assert torch.allclose(ours, kl, rtol=2e-3)


def test_discretized_decoder_sums_to_one_over_levels():
    # catches: edge bins that do not reach +-inf, a bin width of 2/17 instead of 2/16
    model = Diffusion(DiffusionConfig(data="digits", T=20))
    images = torch.arange(LEVELS).view(-1, 1, 1, 1).expand(LEVELS, 1, 8, 8)
    for centre in (0.37, 1.2, -1.3):  # inside the range, and beyond either end
        mean = torch.full((LEVELS, 1, 8, 8), centre)
        model.predict = lambda xt, t, y=None, mean=mean: (None, mean)
        per_pixel = torch.exp(-model.decoder_term(to_signed(images)) / 64)  # (17,)
        assert torch.allclose(per_pixel.sum(), torch.tensor(1.0), atol=1e-5)
        expected = min(max(round((centre + 1) / 2 * 16), 0), LEVELS - 1)
        assert per_pixel.argmax() == expected


def test_flow_matching_euler_with_oracle_velocity_reaches_the_point():
    # the OT path's velocity field for one data point x1 is (x1 - (1 - s) x) / (1 - (1 - s) t);
    # catches a sampler that integrates the wrong way in time or a wrong step size
    fm = FlowMatching(DiffusionConfig(data="toy"), sigma_min=1e-3)
    point = torch.tensor([-1.0, 2.0])

    class Oracle(nn.Module):
        def forward(self, x, t, y=None):
            return (point - (1 - 1e-3) * x) / (1 - (1 - 1e-3) * t[:, None])

    fm.net = Oracle()
    fm.register_parameter("dummy", nn.Parameter(torch.zeros(1)))
    out = fm.sample(32, steps=20)
    assert torch.allclose(out, point.expand(32, 2), atol=5e-3)


def test_bound_finite_and_decreases_as_a_tiny_model_trains():
    # catches: a bound that ignores the network, a sign error, NaNs in the decoder
    torch.manual_seed(0)
    x, _ = load_digits("train")
    x = x[:32]
    model = Diffusion(
        DiffusionConfig(
            data="digits", schedule="linear", channels=8, head="levels", bound_samples=8
        )
    )

    def bound():
        torch.manual_seed(123)
        return -model.log_prob(x).mean().item()

    before = bound()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(30):
        loss = model.loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = bound()
    assert math.isfinite(before) and math.isfinite(after)
    assert after < before - 5, (before, after)
    assert after > 0  # a bound on -log of a discrete probability is non-negative


def test_works_under_autocast_and_classifier_free_guidance():
    model = Diffusion(
        DiffusionConfig(data="digits", channels=16, num_classes=10, head="levels", T=20)
    )
    x = torch.randint(0, LEVELS, (4, 1, 8, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(model.loss(x, torch.arange(4)))
    out = model.ddim_sample(4, steps=5, y=3, guidance=2.0)
    assert out.dtype == torch.int64 and out.min() >= 0 and out.max() <= LEVELS - 1


def test_importance_sampler_is_unbiased_for_any_bin_shares():
    # sum_t q_t (w_t / q_t) f(t) = sum_t w_t f(t) exactly, and t ~ q in distribution
    # (catches an unnormalised q, or weights w_t / q_t computed for another q)
    model = Diffusion(DiffusionConfig(data="toy", schedule="linear"))
    torch.manual_seed(0)
    model.bin_loss.uniform_(0.01, 10.0)
    q, ratio = model.proposal()
    assert torch.allclose(q.sum(), torch.tensor(1.0), atol=1e-5) and (q >= 0).all()
    f = torch.rand(len(q), dtype=torch.float64)
    assert torch.allclose(
        (q.double() * ratio.double() * f).sum(), (model.w.double() * f).sum(), rtol=1e-4
    )
    t, r = model._sample_t(200_000)
    assert torch.allclose(r, ratio[t])
    freq = torch.bincount(model.bin_of_t[t], minlength=len(model.bin_loss)).double() / len(t)
    q_bin = torch.zeros_like(freq).index_add_(0, model.bin_of_t, q.double())
    assert torch.allclose(freq, q_bin, atol=3e-3)


# --------------------------------------------------------------------------- the bound's parts
def test_linear_schedule_runs_from_beta_1_to_beta_T():
    # catches: the end points swapped (abar still decreases to ~0, so the tests above pass)
    abar = linear_schedule(1000)
    betas = 1 - abar[1:] / abar[:-1]  # beta_t = 1 - abar_t / abar_{t-1}, t = 1..T
    assert torch.allclose(betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), rtol=1e-9)
    model = Diffusion(DiffusionConfig(data="toy", T=1000))
    assert model.beta[1].item() == pytest.approx(1e-4, rel=1e-3)
    assert model.beta[1000].item() == pytest.approx(0.02, rel=1e-4)


def test_cosine_schedule_matches_its_formula():
    # abar_t = f(t) / f(0), f(t) = cos^2((t/T + s) / (1 + s) * pi/2), while no beta is clipped
    T, s = 100, 0.008
    abar = cosine_schedule(T)
    f = [math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2 for t in range(T + 1)]
    for t in (0, 1, 10, 50, 90):
        assert abar[t].item() == pytest.approx(f[t] / f[0], rel=1e-12)


def test_prior_term_is_the_gaussian_kl_summed_over_pixels(digits):
    # KL(q(x_T | x_0) || N(0, I)) from torch.distributions, pixel by pixel, summed per image;
    # T = 50 leaves abar_T ~ 0.6, so the KL is large (catches a mean over pixels for the sum)
    model = Diffusion(DiffusionConfig(data="digits", channels=8, T=50))
    x0 = to_signed(digits[:3]).double()
    ab = linear_schedule(50)[-1]
    q = torch.distributions.Normal(ab.sqrt() * x0, (1 - ab).sqrt())
    expected = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0))
    expected = expected.flatten(1).sum(1)  # (3,)
    assert (expected > 5).all()
    assert torch.allclose(model.prior_term(x0.float()).double(), expected, rtol=1e-5)


class FixedLogits(nn.Module):
    """A 'network' that returns fixed logits over the 17 levels, whatever its input."""

    def __init__(self, out: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("out", out)

    def forward(self, x, t, y=None):
        return self.out


def test_levels_head_identity_on_the_digits_path():
    # the levels head: logits_k = net_k - (x_t - sqrt(abar_t) v_k)^2 / (2 (1 - abar_t)),
    # xhat_0 = sum_k softmax(logits)_k v_k, eps = (x_t - sqrt(abar_t) xhat_0) / sqrt(1 - abar_t);
    # recomputed here in float64 (catches eps divided by (1 - abar) instead of its square root)
    torch.manual_seed(0)
    model = Diffusion(DiffusionConfig(data="digits", channels=8, head="levels"))
    t = torch.tensor([1, 10, 200, 900])
    out = torch.randn(4, LEVELS, 8, 8)
    model.net = FixedLogits(out)
    xt = torch.randn(4, 1, 8, 8)
    eps, x0 = model.predict(xt, t)
    ab = model.abar[t].double().view(-1, 1, 1, 1)  # (4, 1, 1, 1): the model's own schedule
    v = torch.linspace(-1, 1, LEVELS, dtype=torch.float64).view(1, LEVELS, 1, 1)
    logits = out.double() - (xt.double() - ab.sqrt() * v) ** 2 / (2 * (1 - ab))
    x0_ref = (logits.softmax(1) * v).sum(1, keepdim=True)
    eps_ref = (xt.double() - ab.sqrt() * x0_ref) / (1 - ab).sqrt()
    assert torch.allclose(x0.double(), x0_ref, atol=1e-5)
    assert torch.allclose(eps.double(), eps_ref, rtol=1e-3, atol=1e-4)
    # and x_t = sqrt(abar) xhat_0 + sqrt(1 - abar) eps: the two predictions describe one x_t
    assert torch.allclose(ab.sqrt() * x0.double() + (1 - ab).sqrt() * eps.double(), xt.double(),
                          atol=1e-5)  # fmt: skip


def test_ddim_on_the_digits_path_with_an_oracle(digits):
    # the digits sampler clamps xhat_0 to [-1, 1] and reads eps off x_t again; with an oracle the
    # clamp changes nothing, so every state keeps the noise it started with (catches a digits
    # eps recomputed without the square root of abar_t) and the sample is the digit itself
    model = Diffusion(DiffusionConfig(data="digits", channels=8))
    point = to_signed(digits[:1])[0]  # (1, 8, 8) on the grid -1..1
    model.net = OracleEps(point, model.abar, model.config.T)
    torch.manual_seed(0)
    x_T = torch.randn(6, 1, 8, 8)
    out, path = model.ddim_sample(6, steps=10, eta=0.0, x_T=x_T, return_path=True)
    assert torch.equal(out, digits[:1].expand(6, 1, 8, 8))
    abar = model.abar.double()
    eps_T = (x_T.double() - abar[-1].sqrt() * point) / (1 - abar[-1]).sqrt()
    times = torch.linspace(model.config.T, 0, 11).round().long()
    for k in range(1, 10):
        expected = abar[times[k]].sqrt() * point + (1 - abar[times[k]]).sqrt() * eps_T
        assert torch.allclose(path[k].double(), expected, atol=1e-3), k


def test_digits_round_trip_through_the_model_space():
    # the model's preprocessing, levels -> the grid -1..1, and its decoding, the nearest level,
    # are inverses, also off the grid by less than half a bin (catches the way back without its
    # +1, a grid of 17 instead of 16 steps, or a decoder that floors)
    model = Diffusion(DiffusionConfig(data="digits", channels=8, T=20))
    levels = torch.arange(LEVELS).view(-1, 1, 1, 1).expand(LEVELS, 1, 8, 8)
    grid = model._encode(levels)
    assert torch.allclose(grid[:, 0, 0, 0], torch.linspace(-1, 1, LEVELS))
    assert torch.equal(model._decode(grid), levels)
    wiggle = (torch.rand(grid.shape) - 0.5) * 0.99 / (LEVELS - 1)  # within half a bin (1/16)
    assert torch.equal(model._decode(grid + wiggle), levels)
    assert torch.equal(model._decode(grid.double()), levels)


class Recorder(nn.Module):
    """Wraps a network and keeps the labels that each call received."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.seen = net, []

    def forward(self, x, t, y=None):
        self.seen.append(None if y is None else y.clone())
        return self.net(x, t, y)


def test_label_dropout_drops_p_uncond_of_the_labels_in_training_only():
    # catches: the dropout inverted (1 - p_uncond dropped), dropping in eval mode, or dropping
    # to a class other than the null token
    torch.manual_seed(0)
    model = Diffusion(DiffusionConfig(data="toy", T=20, channels=16, num_classes=3, p_uncond=0.3))
    model.net = Recorder(model.net)
    n = 20_000
    x, y = toy_2d("ring8", n), torch.randint(0, 3, (n,))
    model.train().loss(x, y)
    seen = model.net.seen[-1]
    dropped = seen == 3
    assert abs(dropped.float().mean().item() - 0.3) < 0.015  # 4.7 standard errors
    assert torch.equal(seen[~dropped], y[~dropped])
    model.eval().loss(x, y)
    assert torch.equal(model.net.seen[-1], y)


def test_flow_matching_loss_is_its_formula():
    # E ||v(x_t, t) - (x_1 - (1 - s) x_0)||^2 with x_t = (1 - (1 - s) t) x_0 + t x_1, the same
    # noise and times (fixed seed), recomputed here; sigma_min = 0.1 so that every s shows
    fm = FlowMatching(DiffusionConfig(data="toy", channels=16), sigma_min=0.1).eval()
    x1 = toy_2d("ring8", 64)
    torch.manual_seed(5)
    got = fm.loss(x1)
    torch.manual_seed(5)
    x0, t = torch.randn(64, 2), torch.rand(64)
    xt = (1 - 0.9 * t[:, None]) * x0 + t[:, None] * x1
    with torch.no_grad():
        expected = (fm.net(xt, t) - (x1 - 0.9 * x0)).pow(2).sum(1).mean()
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert got.requires_grad


class ConstantVelocity(nn.Module):
    """v(x, t, y) = a_y for a label, a_u under the null label: Euler integrates it exactly."""

    a_u = torch.tensor([1.0, -1.0])
    a = torch.tensor([[2.0, 0.5], [-1.0, 3.0]])

    def forward(self, x, t, y=None):
        return self.a_u.expand_as(x) if y is None else self.a[y]


def test_guided_flow_matching_sampler_mixes_the_velocities():
    # x_1 = x_0 + v_u + w (v_c - v_u) for a constant field (catches the guidance condition
    # inverted, and guidance applied to the unconditional velocity the wrong way round)
    fm = FlowMatching(DiffusionConfig(data="toy", num_classes=2))
    fm.net = ConstantVelocity()
    fm.register_parameter("dummy", nn.Parameter(torch.zeros(1)))
    y, x_0 = torch.tensor([0, 1, 0, 1]), torch.zeros(4, 2)
    a_u, a_y = ConstantVelocity.a_u, ConstantVelocity.a[y]
    for w in (1.0, 3.0, 0.0):
        out = fm.sample(4, y=y, guidance=w, steps=5, z_0=x_0)
        assert torch.allclose(out, a_u + w * (a_y - a_u), atol=1e-6), w
    assert torch.allclose(fm.sample(4, steps=5, z_0=x_0), a_u.expand(4, 2))  # y=None: p(x)


def test_log_prob_keeps_gradients_and_has_no_side_effects(digits):
    # the bin statistics move in loss, in train mode only (the documented side effect)
    model = Diffusion(DiffusionConfig(data="digits", channels=8, T=50, bound_samples=2)).train()
    before = model.bin_loss.clone()
    lp = model.log_prob(digits[:2])
    assert lp.requires_grad and lp.shape == (2,)
    lp.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert torch.equal(model.bin_loss, before)
    model.eval().loss(digits[:4])
    assert torch.equal(model.bin_loss, before)
    model.train().loss(digits[:4])
    assert not torch.equal(model.bin_loss, before)


# --------------------------------------------------------------------------- arguments (issue 24)
def _tiny(**kw) -> Diffusion:
    return Diffusion(DiffusionConfig(**{"data": "digits", "channels": 8, "T": 50, **kw}))


def test_ddim_steps_must_lie_in_one_to_T():
    # steps > T made a 0/0 on the last step (every pixel -9223372036854775808); 0 or -1 noise
    model = _tiny()
    for steps in (100, 51, 0, -1):
        with pytest.raises(
            ValueError, match=re.escape(f"steps must be an int in [1, 50], got {steps}")
        ):
            model.ddim_sample(4, steps=steps)
    with pytest.raises(TypeError, match="steps must be an int, got 2.5"):
        model.ddim_sample(4, steps=2.5)
    out = model.ddim_sample(2, steps=50)
    assert out.dtype == torch.int64 and out.min() >= 0 and out.max() <= LEVELS - 1
    fm = FlowMatching(DiffusionConfig(data="toy", channels=16))
    for steps in (0, -1):
        with pytest.raises(ValueError, match=f"steps must be an int >= 1, got {steps}"):
            fm.sample(4, steps=steps)


def test_sampler_options_are_keyword_only():
    # Diffusion.sample(4, 50) took 50 for a label, FlowMatching.sample(4, 50) for a step count
    with pytest.raises(TypeError, match="positional argument"):
        _tiny(num_classes=10).sample(4, 3)
    with pytest.raises(TypeError, match="positional argument"):
        FlowMatching(DiffusionConfig(data="toy")).sample(4, 50)
    with pytest.raises(TypeError, match="positional argument"):
        _tiny().ddim_sample(4, 10)


def test_sampler_numbers_are_checked():
    model = _tiny(num_classes=10)
    cases = [
        (dict(n=-1), ValueError, "n must be a non-negative int, got -1"),
        (dict(n=2.0), TypeError, "n must be a non-negative int, got 2.0"),
        (dict(n="3"), TypeError, "n must be a non-negative int, got '3'"),
        (dict(n=2, eta=-0.5), ValueError, "eta must be a finite number >= 0, got -0.5"),
        (dict(n=2, eta=float("nan")), ValueError, "eta must be a finite number >= 0, got nan"),
        (dict(n=2, y=1, guidance=float("inf")), ValueError, "guidance must be a finite number"),
        (dict(n=2, guidance=2.0), ValueError, "guidance=2.0 mixes the predictions"),
        (dict(n=2, x_T=torch.zeros(3, 1, 8, 8)), ValueError,
         re.escape("x_T must be a tensor of shape (2, 1, 8, 8), got (3, 1, 8, 8)")),
    ]  # fmt: skip
    for kwargs, err, message in cases:
        with pytest.raises(err, match=message):
            model.ddim_sample(steps=2, **kwargs)
    no_dropout = _tiny(num_classes=10, p_uncond=0.0)
    with pytest.raises(ValueError, match="guidance=3.0 mixes the predictions"):
        no_dropout.ddim_sample(2, steps=2, y=1, guidance=3.0)  # its null label is untrained
    for m in (model, FlowMatching(DiffusionConfig(data="toy"))):
        out = m.sample(0)
        assert out.shape == (0, *m.shape) and out.dtype == m.sample(1).dtype


def test_labels_are_checked_where_they_enter(digits):
    cond, plain = _tiny(num_classes=10), _tiny()
    fm = FlowMatching(DiffusionConfig(data="digits", channels=8, num_classes=10))
    x, y10 = digits[:2], torch.tensor([3, 10])  # 10 = num_classes: the internal null token
    in_range = re.escape("y must hold classes in [0, 10), got values in [3, 10]")
    for call in (
        lambda: cond.loss(x, y10),
        lambda: cond.log_prob(x, y10),
        lambda: cond.ddim_sample(2, steps=2, y=y10),
        lambda: fm.loss(x, y10),
        lambda: fm.sample(2, steps=2, y=y10),
    ):
        with pytest.raises(ValueError, match=in_range):
            call()
    with pytest.raises(TypeError, match="y must hold integer classes, got dtype torch.float32"):
        cond.loss(x, torch.tensor([3.7, 1.0]))
    with pytest.raises(TypeError, match="y must be an int or an .n,. integer tensor"):
        cond.ddim_sample(2, steps=2, y=3.7)
    unconditional = "y was given but this model is unconditional"
    for call in (
        lambda: plain.loss(x, torch.tensor([1, 2])),
        lambda: plain.log_prob(x, torch.tensor([1, 2])),
        lambda: plain.sample(2, y=1),
        lambda: plain.ddim_sample(2, steps=2, y=1),
        lambda: FlowMatching(DiffusionConfig(data="toy")).sample(2, y=1),
    ):
        with pytest.raises(ValueError, match=unconditional):
            call()


def test_y_none_means_p_x_for_dropout_models_and_stratifies_without_dropout(digits):
    dropout = _tiny(num_classes=10)  # p_uncond = 0.2: y=None is the (trained) null label
    dropout.net = Recorder(dropout.net)
    dropout.ddim_sample(3, steps=2)
    assert all(y is None for y in dropout.net.seen)
    strict = _tiny(num_classes=3, p_uncond=0.0)  # no p(x) of its own: classes in turn
    strict.net = Recorder(strict.net)
    strict.ddim_sample(5, steps=2)
    assert all(torch.equal(y, torch.tensor([0, 1, 2, 0, 1])) for y in strict.net.seen)
    for call in (lambda: strict.loss(digits[:2]), lambda: strict.log_prob(digits[:2])):
        with pytest.raises(ValueError, match="y is required: this model is class-conditional"):
            call()


def test_digits_of_another_size_are_refused():
    # the config has no image size: the digits models are 8x8 only, and say so
    mnist = torch.randint(0, LEVELS, (2, 1, 28, 28))
    message = re.escape("Expected digits of shape (N, 1, 8, 8), got (2, 1, 28, 28)")
    for model in (_tiny(), FlowMatching(DiffusionConfig(data="digits", channels=8))):
        with pytest.raises(ValueError, match=message):
            model.loss(mnist)
    with pytest.raises(ValueError, match=message):
        _tiny().log_prob(mnist)


def test_a_diverged_sampler_is_refused_not_cast():
    # a NaN cast to int64 came back as -9223372036854775808 in every pixel
    model = _tiny()
    model.net = FixedLogits(torch.full((1, 1, 8, 8), float("nan")))
    with pytest.raises(FloatingPointError, match="Diffusion samples is not finite"):
        model.ddim_sample(1, steps=3)


def test_configs_are_checked():
    for kwargs, message in [
        (dict(data="mnist"), "data must be 'digits' or 'toy', got 'mnist'"),
        (dict(schedule="sigmoid"), "schedule must be 'linear' or 'cosine', got 'sigmoid'"),
        (dict(data="toy", head="levels"), "head must be 'eps', or 'levels' for digits"),
        (dict(T=1), re.escape("T must be an int >= 2, got 1")),
        (dict(p_uncond=1.0), re.escape("p_uncond must lie in [0, 1), got 1.0")),
        (dict(data="toy", dim=0), re.escape("dim must be an int >= 1, got 0")),
        (dict(dim=16), "data='digits' needs the default dim=2, got dim=16"),
    ]:
        with pytest.raises(ValueError, match=message):
            DiffusionConfig(**kwargs)


def test_the_toy_recipe_is_the_shared_toy_fit_it_was_written_as():
    """train_toy (the toy weights' recipe) through fit_toy is, bit for bit, the hand-written fit:
    n points of seed s, batches of 512, Adam 3e-3 with a cosine schedule over the epochs."""
    from dgm_edu.data import make_loader
    from dgm_edu.diffusion import train_toy
    from dgm_edu.train import fit

    torch.set_num_threads(1)

    def tiny() -> FlowMatching:
        torch.manual_seed(0)
        return FlowMatching(DiffusionConfig(data="toy", channels=16))

    model, ref = tiny(), tiny()
    hist = train_toy(model, "moons", n=1100, epochs=2, seed=5, progress=False)
    opt = torch.optim.Adam(ref.parameters(), lr=3e-3)
    ref_hist = fit(
        ref, opt, make_loader(toy_2d("moons", 1100, seed=5), batch_size=512), epochs=2, seed=5,
        scheduler=torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=2), progress=False,
    )  # fmt: skip
    assert hist.train_loss == ref_hist.train_loss and hist.epochs_run == 2
    for (k, a), b in zip(model.state_dict().items(), ref.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_simple_weighting_is_the_unweighted_eps_error_at_uniform_t():
    # L_simple (Ho et al. 2020): t ~ U{1..T}, ||eps - epshat||^2 summed per item, no w_t
    torch.manual_seed(0)
    model = Diffusion(DiffusionConfig(data="toy", channels=16, T=50, weighting="simple")).eval()
    x = torch.randn(64, 2)
    torch.manual_seed(1)
    got = model.loss(x)
    torch.manual_seed(1)
    t = torch.randint(1, 51, (64,))
    eps = torch.randn(64, 2)
    ab = model.abar[t].view(-1, 1)
    with torch.no_grad():
        eps_hat = model.net(ab.sqrt() * x + (1 - ab).sqrt() * eps, t.float() / 50, None)
    assert torch.allclose(got, (eps - eps_hat).pow(2).sum(1).mean(), rtol=1e-5)
    assert model.bin_loss.eq(1).all()  # no running shares: the proposal is not used
    with pytest.raises(ValueError, match="weighting must be 'bound' or 'simple'"):
        DiffusionConfig(weighting="elbo")


# --------------------------------------------------------------------------- points in R^d
class GaussianOracle(nn.Module):
    """The optimal eps-predictor for data x_0 ~ N(0, I_d): x_t ~ N(0, I) at every t, and
    E[eps | x_t] = sqrt(1 - abar_t) x_t (eps and x_t: jointly Gaussian, Cov = sqrt(1 - abar_t))."""

    def __init__(self, abar: torch.Tensor, T: int) -> None:
        super().__init__()
        self.abar, self.T = abar, T

    def forward(self, x, t, y=None):
        return (1 - self.abar[(t * self.T).round().long()]).sqrt()[:, None] * x  # (B, d)


def test_a_d_dim_point_model_has_the_gaussian_bound_in_closed_form():
    """dim=16: the width, KL(q(x_T | x_0) ‖ N(0, I)) against torch's d-dim Gaussian KL, and the
    bound's terms with the optimal model on N(0, I_d) data against a hand computation."""
    d, n = 16, 16384
    torch.manual_seed(0)
    model = Diffusion(DiffusionConfig(data="toy", dim=d, channels=16)).eval()  # untrained
    assert model.net.layers[0].in_features == model.net.out.out_features == d
    x0 = torch.randn(n, d)
    # KL at T, one d-dim Gaussian (not a sum over coordinates by hand)
    abT = linear_schedule(1000)[-1]
    eye = torch.eye(d, dtype=torch.float64)
    q_T = torch.distributions.MultivariateNormal(abT.sqrt() * x0[:5].double(), (1 - abT) * eye)
    std = torch.distributions.MultivariateNormal(torch.zeros(d, dtype=torch.float64), eye)
    kl = torch.distributions.kl_divergence(q_T, std)  # (5,)
    torch.testing.assert_close(model.prior_term(x0[:5]).double(), kl, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"shape \(N, 16\), got \(4, 2\)"):
        model.loss(torch.randn(4, 2))

    # the optimal model on x_0 ~ N(0, I_d): every term's expectation in closed form, per dim,
    #   E KL_T = -1/2 log(1 - abar_T);  E L_{t-1} = w_t E‖eps - sqrt(1 - abar_t) x_t‖² / d
    #   = w_t abar_t;  E L_0 = 1/2 (log 2 pi beta_1 + 1), as xhat_0 = sqrt(abar_1) x_1 and
    #   E (x_0 - sqrt(abar_1) x_1)² = 1 - abar_1 = beta_1
    model.net = GaussianOracle(model.abar, 1000)
    ab, w = linear_schedule(1000), model.w.double()
    per_dim = (
        -0.5 * (1 - ab[-1]).log()
        + (w[2:] * ab[2:]).sum()
        + 0.5 * (math.log(2 * math.pi * (1 - ab[1])) + 1)
    )
    u = (torch.arange(n) + torch.rand(n)) / n  # stratified over the importance proposal
    t1 = torch.ones(n, dtype=torch.long)
    with torch.no_grad():
        x1 = model.q_sample(x0, t1, torch.randn_like(x0))
        _, x0_hat = model.predict(x1, t1)
        beta_1 = model.beta[1]
        dec = 0.5 * (math.log(2 * math.pi) + beta_1.log() + (x0 - x0_hat) ** 2 / beta_1).sum(1)
        bound = model.prior_term(x0) + model.diffusion_term(x0, u=u) + dec  # (n,), nats
    se = bound.std().item() / math.sqrt(n)  # the stratified u only makes this conservative
    assert abs(bound.mean().item() - d * per_dim.item()) < 4 * se  # 30.1 nats: 1.884 per dim
    assert 4 * se < 0.05 * d * (w[2:] * ab[2:]).sum()  # sees a 5% error in the sum of L_{t-1}
    # no model beats the entropy of N(0, I_d), 1/2 log(2 pi e) per dim; the fixed reverse
    # variance beta~_t (optimal for a point mass, not for N(0, I)) costs this one 0.46 of it
    assert 0.4 < per_dim - 0.5 * math.log(2 * math.pi * math.e) < 0.5

    # DDIM (eta = 0) with the oracle is linear: x_s = (sqrt(abar_s abar_t) + sqrt((1 - abar_s)
    # (1 - abar_t))) x_t, so the samples are x_T times the product over the steps
    x_T = torch.randn(6, d)
    times = torch.linspace(1000, 0, 11).round().long()
    gain = torch.ones((), dtype=torch.float64)
    for t, s in zip(times[:-1], times[1:]):
        gain = gain * ((ab[s] * ab[t]).sqrt() + ((1 - ab[s]) * (1 - ab[t])).sqrt())
    out = model.ddim_sample(6, steps=10, eta=0.0, x_T=x_T)
    torch.testing.assert_close(out.double(), gain * x_T.double(), rtol=1e-4, atol=1e-5)
    assert out.shape == (6, d) and model.sample(3).shape == (3, d)


def test_flow_matching_takes_points_in_r_d():
    # the shared Denoiser: the OT-path oracle velocity in R^5 carries every start to the point
    fm = FlowMatching(DiffusionConfig(data="toy", dim=5), sigma_min=1e-3)
    point = torch.arange(5.0) - 2

    class Oracle(nn.Module):
        def forward(self, x, t, y=None):
            return (point - (1 - 1e-3) * x) / (1 - (1 - 1e-3) * t[:, None])

    fm.net = Oracle()
    fm.register_parameter("dummy", nn.Parameter(torch.zeros(1)))
    torch.testing.assert_close(fm.sample(8, steps=20), point.expand(8, 5), atol=5e-3, rtol=0)
    fm2 = FlowMatching(DiffusionConfig(data="toy", dim=5, channels=8))
    x = torch.randn(4, 5)
    torch.manual_seed(3)
    got = fm2.loss(x)
    torch.manual_seed(3)
    eps, t = torch.randn(4, 5), torch.rand(4)
    zt = (1 - (1 - 1e-3) * t[:, None]) * eps + t[:, None] * x
    with torch.no_grad():
        want = (fm2.net(zt, t, None) - (x - (1 - 1e-3) * eps)).pow(2).sum(1).mean()
    torch.testing.assert_close(got.detach(), want)
