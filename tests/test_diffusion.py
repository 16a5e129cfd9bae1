"""Checks of dgm_edu.diffusion against independent computations (closed forms, Bayes' rule, MC)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dgm_edu.data import LEVELS, load_digits
from dgm_edu.diffusion import (
    Diffusion,
    DiffusionConfig,
    FlowMatching,
    cosine_schedule,
    digits_to_model,
    linear_schedule,
)

SCHEDULES = {"linear": linear_schedule, "cosine": cosine_schedule}


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
        per_pixel = torch.exp(-model.decoder_term(digits_to_model(images)) / 64)  # (17,)
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
