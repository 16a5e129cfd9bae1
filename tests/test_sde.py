"""Checks of dgm_edu.sde against closed forms: Gaussian data under the VP and VE SDEs stays
Gaussian at every time, so its exact score (the ORACLE) and its exact log-density are known, and a
sampler or the ODE likelihood driven by it must reproduce them."""

from __future__ import annotations

import math

import pytest
import torch

from dgm_edu.data import LEVELS, NUM_PIXELS, load_digits, to_signed
from dgm_edu.densities import standard_normal_log_prob
from dgm_edu.diffusion import Diffusion, DiffusionConfig
from dgm_edu.sde import (
    VESDE,
    VPSDE,
    diffusion_ode_nll,
    drift_divergence,
    ode_log_likelihood,
    probability_flow_drift,
    probability_flow_sample,
    reverse_sde_sample,
    score_of,
    time_grid,
)

MU = torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64)  # data N(MU, SD² I) in 4D
SD = 0.5
SDES = {"vp": VPSDE.linear(), "ve": VESDE(0.01, 5.0)}


def _variance(sde, s) -> torch.Tensor:
    """Var of x_s for x_0 ~ N(MU, SD² I): (mean scale)² SD² + std², (N, 1)."""
    x = MU.expand(len(s), -1)
    mean, std = sde.marginal(x, s)
    return (mean[:, :1] / MU[0]) ** 2 * SD**2 + std**2


def _oracle(sde):
    """The exact score of the Gaussian marginal, −(x − m(s)) / v(s), and its log-density."""

    def score(x, s):
        mean, _ = sde.marginal(MU.to(x).expand_as(x), s)
        return -(x - mean) / _variance(sde, s).to(x)

    def log_prob(x, s):
        mean, _ = sde.marginal(MU.to(x).expand_as(x), s)
        v = _variance(sde, torch.full((len(x),), s)).to(x)
        return (-0.5 * ((x - mean) ** 2 / v + torch.log(2 * math.pi * v))).sum(1)

    return score, log_prob


def _start(sde, n, seed=0):
    """x_1 drawn from the exact marginal at s = 1, float64."""
    g = torch.Generator().manual_seed(seed)
    s = torch.ones(n, dtype=torch.float64)
    mean, _ = sde.marginal(MU.expand(n, -1), s)
    return mean + _variance(sde, s).sqrt() * torch.randn(n, 4, generator=g, dtype=torch.float64)


def _check_moments(x, tol_var=0.0):
    """Mean within 4 standard errors of MU, variance within 4 SE (+ a known bias) of SD²."""
    n = len(x)
    se_mean, se_var = SD / math.sqrt(n), SD**2 * math.sqrt(2 / n)
    assert (x.mean(0) - MU).abs().max() < 4 * se_mean, x.mean(0)
    assert (x.var(0) - SD**2).abs().max() < 4 * se_var + tol_var * SD**2, x.var(0)


# --------------------------------------------------------------------------- forward SDEs
@pytest.mark.parametrize("name", SDES)
def test_forward_sde_simulation_reaches_the_closed_form_marginal(name):
    # catches: a wrong drift or diffusion coefficient, sqrt dropped in g, sigma(s) not geometric
    # VE with sigma_min = 0.3: the marginal's −σ_min² is then visible
    sde, n, steps = {"vp": SDES["vp"], "ve": VESDE(0.3, 5.0)}[name], 20_000, 400
    g = torch.Generator().manual_seed(1)
    x = 0.7 + 0.3 * torch.randn(n, 1, generator=g, dtype=torch.float64)  # 1D N(0.7, 0.3²)
    h = 0.6 / steps
    for k in range(steps):  # Euler–Maruyama of dx = f ds + g dW up to s = 0.6
        s = torch.full((n,), k * h, dtype=torch.float64)
        gs = sde.diffusion(s).to(x).view(-1, 1)
        x = x + h * sde.drift(x, s) + gs * math.sqrt(h) * torch.randn(n, 1, generator=g).to(x)
    s = torch.full((n,), 0.6, dtype=torch.float64)
    mean, std = sde.marginal(torch.full((n, 1), 0.7, dtype=torch.float64), s)
    scale = mean[0, 0] / 0.7
    var = scale**2 * 0.3**2 + std[0, 0] ** 2
    assert abs(x.mean() - mean[0, 0]) < 4 * math.sqrt(var / n)
    assert abs(x.var() / var - 1) < 4 * math.sqrt(2 / n) + 0.01  # + EM's O(h) bias


def test_vp_beta_integrates_to_log_abar_and_the_model_times_match_its_steps():
    # catches: beta(s) off by a factor T or a step, abar_at interpolating abar instead of log abar
    model = Diffusion(DiffusionConfig(data="digits", channels=8, T=50))
    sde = VPSDE(model)
    t = torch.arange(51)
    assert torch.equal(model.abar_at(t / 50), model.abar)
    s = (torch.arange(50 * 40) + 0.5) / (50 * 40)  # midpoints of a fine grid (beta is a step fn)
    integral = torch.cat([torch.zeros(1), (sde.beta(s).double() / 2000).cumsum(0)])[::40]
    assert torch.allclose(-integral, model.abar.double().log(), atol=1e-5)
    cos = Diffusion(DiffusionConfig(data="digits", channels=8, T=50, schedule="cosine"))
    for t in (10, 49):  # a quarter of the way from t to t + 1: geometric, not linear, in abar
        mid = cos.abar_at(torch.tensor([(t + 0.25) / 50]))
        assert torch.allclose(mid, cos.abar[t] ** 0.75 * cos.abar[t + 1] ** 0.25, rtol=1e-6)
    assert (cos.abar_at(torch.tensor([49.5 / 50])) < 0.5 * (cos.abar[49] + cos.abar[50])).all()
    # the continuous linear schedule against its closed form, and autograd's beta against it
    lin = VPSDE.linear(0.1, 20.0)
    auto = VPSDE(lin.abar)
    s = torch.linspace(0, 1, 11)
    assert torch.allclose(auto.beta(s), lin.beta(s), atol=1e-4)
    assert torch.allclose(lin.abar(s).log(), -(0.1 * s + 9.95 * s**2))
    for sde in SDES.values():  # at s = 0 the marginal is the data itself
        x0 = torch.randn(3, 4)
        mean, std = sde.marginal(x0, 0.0)
        assert torch.allclose(mean, x0) and (std == 0).all()


@pytest.mark.parametrize("head", ["levels", "eps"])
def test_predict_at_integer_times_is_predict(head):
    # catches: predict_at passing another time or another abar to the network's head
    torch.manual_seed(0)
    model = Diffusion(DiffusionConfig(channels=8, T=50, head=head, num_classes=10)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    xt, t, y = torch.randn(6, 1, 8, 8), torch.tensor([1, 2, 17, 25, 49, 50]), torch.arange(6)
    for a, b in zip(model.predict(xt, t, y), model.predict_at(xt, t / 50, y)):
        assert torch.equal(a, b)
    eps_a, _ = model.predict_at(xt, (t - 0.5) / 50, y)  # between steps: a different prediction
    assert not torch.allclose(eps_a, model.predict(xt, t, y)[0])


# --------------------------------------------------------------------------- samplers
@pytest.mark.parametrize("name", SDES)
def test_reverse_sde_with_the_oracle_score_reaches_the_data(name):
    # catches: the sign of g² score, noise without sqrt(h), the time grid run the wrong way
    sde = SDES[name]
    score, _ = _oracle(sde)
    x, nfe = reverse_sde_sample(score, sde, _start(sde, 20_000), 400, s_min=1e-3)
    assert nfe == 400
    _check_moments(x, tol_var=0.01)


@pytest.mark.parametrize("name", SDES)
def test_predictor_corrector_with_the_oracle_score_reaches_the_data(name):
    # catches: a corrector step size off the SNR rule, noise sqrt(eps) in place of sqrt(2 eps)
    sde = SDES[name]
    score, _ = _oracle(sde)
    g = torch.Generator().manual_seed(3)
    x, nfe = reverse_sde_sample(
        score, sde, _start(sde, 20_000), 150, corrector_steps=2, snr=0.05, generator=g
    )
    assert nfe == 150 * 3
    _check_moments(x, tol_var=0.01)  # unadjusted Langevin: variance bias about snr² = 0.25%


@pytest.mark.parametrize("name", SDES)
@pytest.mark.parametrize("method", ["heun", "euler"])
def test_probability_flow_with_the_oracle_score_reaches_the_data(name, method):
    # catches: the 1/2 in f - g²/2 score, a Heun step that is not the trapezoid
    sde = SDES[name]
    score, _ = _oracle(sde)
    steps = 100 if method == "heun" else 800
    x, nfe = probability_flow_sample(score, sde, _start(sde, 20_000), steps, method=method)
    assert nfe == (2 * steps if method == "heun" else steps)
    _check_moments(x, tol_var=0.01)


def test_probability_flow_is_the_exact_transport_of_a_gaussian():
    # the ODE maps x_1 to x_0 affinely: (x_0 − MU) = (x_1 − m_1) √(v_0 / v_1), to ~1e-4 with Heun
    sde = SDES["vp"]
    score, _ = _oracle(sde)
    x1 = _start(sde, 50)
    s1 = torch.ones(50, dtype=torch.float64)
    m1, _ = sde.marginal(MU.expand(50, -1), s1)
    x0, _ = probability_flow_sample(score, sde, x1, 400, s_min=1e-3)
    s0 = torch.full((50,), 1e-3, dtype=torch.float64)
    m0, _ = sde.marginal(MU.expand(50, -1), s0)
    expected = m0 + (x1 - m1) * (_variance(sde, s0) / _variance(sde, s1)).sqrt()
    assert torch.allclose(x0, expected, atol=1e-4)


# --------------------------------------------------------------------------- the ODE likelihood
def _nonlinear_drift():
    torch.manual_seed(0)
    W1, W2 = torch.randn(4, 16, dtype=torch.float64), torch.randn(16, 4, dtype=torch.float64) / 4

    def drift(x, s):
        return torch.tanh(x @ W1 + s.view(-1, 1)) @ W2 - 0.3 * x

    return drift


def test_divergence_equals_the_autograd_jacobian_trace():
    # catches: a VJP read off the wrong coordinate, probes not averaged, v J v with v unsquared
    drift = _nonlinear_drift()
    x, s = torch.randn(5, 4, dtype=torch.float64), torch.full((5,), 0.3, dtype=torch.float64)
    trace = torch.stack(
        [torch.autograd.functional.jacobian(lambda z: drift(z, s[:1]), xi[None])[0, :, 0].trace()
         for xi in x]
    )  # fmt: skip
    f, exact = drift_divergence(drift, x, s, method="exact")
    assert torch.allclose(f, drift(x, s)) and torch.allclose(exact, trace)
    g = torch.Generator().manual_seed(0)
    P = 4000
    v = (2 * torch.randint(0, 2, (P, 5, 4), generator=g) - 1).double()
    _, hutch = drift_divergence(drift, x, s, method="hutchinson", v=v)
    per_probe = torch.stack(  # each probe's estimate, for the standard error
        [drift_divergence(drift, x, s, method="hutchinson", v=v[p : p + 1])[1] for p in range(50)]
    )
    se = per_probe.std(0) / math.sqrt(P)
    assert ((hutch - trace).abs() < 4 * se + 1e-9).all()
    assert torch.allclose(per_probe.mean(0), trace, atol=float(6 * per_probe.std(0).max() / 7))


def _full_oracle(sde):
    """Data N(MU, C) with a full covariance C: x_s ~ N(a MU, a² C + σ² I), (a, σ) the marginal's
    scale and std, so the score's Jacobian is not diagonal (Hutchinson's probes then vary)."""
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(7)).double())
    C = q @ torch.diag(torch.tensor([0.05, 0.2, 0.6, 1.5]).double()) @ q.T

    def moments(s):  # s a float
        mean, std = sde.marginal(MU[None], torch.full((1,), s, dtype=torch.float64))
        a = mean[0, 0] / MU[0]
        return mean[0], a**2 * C + std[0, 0] ** 2 * torch.eye(4, dtype=torch.float64)

    def score(x, s):  # all items share one time here
        mean, cov = moments(float(s[0]))
        return -torch.linalg.solve(cov, (x - mean).T).T

    def log_prob(x, s):
        mean, cov = moments(s)
        return torch.distributions.MultivariateNormal(mean, cov).log_prob(x)

    return score, log_prob, C


@pytest.mark.parametrize("name", SDES)
def test_ode_log_likelihood_of_gaussian_data_is_the_closed_form(name):
    # catches: a sign of the divergence integral, the prior taken at the wrong end, Euler's error
    sde = SDES[name]
    score, log_prob, C = _full_oracle(sde)
    drift = probability_flow_drift(score, sde)
    g = torch.Generator().manual_seed(2)
    x = MU + torch.randn(8, 4, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(C).T
    prior = lambda z: log_prob(z, 1.0)  # noqa: E731
    for s0 in (0.0, 0.2):
        ll = ode_log_likelihood(drift, x, s0, 1.0, 400, divergence="exact", prior_log_prob=prior)
        assert (ll - log_prob(x, s0)).abs().max() < 1e-3
    errors = [  # Heun is second order: halving the step divides the error by about 4
        (ode_log_likelihood(drift, x, 0.0, 1.0, k, divergence="exact", prior_log_prob=prior)
         - log_prob(x, 0.0)).abs().max() for k in (100, 200)
    ]  # fmt: skip
    assert 3 < errors[0] / errors[1] < 5
    # Euler is first order: visibly off at few steps
    ll = ode_log_likelihood(drift, x, 0.0, 1.0, 20, divergence="exact", prior_log_prob=prior,
                            method="euler")  # fmt: skip
    assert (ll - log_prob(x, 0.0)).abs().max() > 1e-2
    g = torch.Generator().manual_seed(0)  # Hutchinson: unbiased, within the standard error
    reps = torch.stack(
        [ode_log_likelihood(drift, x, 0.0, 1.0, 50, probes=1, generator=g, prior_log_prob=prior)
         for _ in range(100)]
    )  # fmt: skip
    exact50 = ode_log_likelihood(drift, x, 0.0, 1.0, 50, divergence="exact", prior_log_prob=prior)
    se = reps.std(0) / math.sqrt(len(reps))
    assert reps.std(0).min() > 0.01  # the probes do vary
    assert ((reps.mean(0) - exact50).abs() < 4 * se).all()
    four = ode_log_likelihood(drift, x, 0.0, 1.0, 50, probes=400, generator=g, prior_log_prob=prior)
    assert ((four - exact50).abs() < 4 * reps.std(0) / math.sqrt(400)).all()


def test_time_grid_and_arguments_are_checked():
    assert time_grid(1.0, 0.01, 2, "log") == pytest.approx([1.0, 0.1, 0.01])
    assert time_grid(0.0, 1.0, 4) == pytest.approx([0, 0.25, 0.5, 0.75, 1])
    sde = SDES["vp"]
    score, _ = _oracle(sde)
    x = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="steps"):
        reverse_sde_sample(score, sde, x, 0)
    with pytest.raises(ValueError, match="method"):
        probability_flow_sample(score, sde, x, 5, method="rk45")
    with pytest.raises(ValueError, match="s_min"):
        probability_flow_sample(score, sde, x, 5, s_min=0.0)
    with pytest.raises(ValueError, match="x_T"):
        reverse_sde_sample(score, sde, torch.zeros(3), 5)
    with pytest.raises(ValueError, match="divergence"):
        ode_log_likelihood(score, x, 0.0, 1.0, 5, divergence="trace")
    with pytest.raises(ValueError, match="s0"):
        ode_log_likelihood(score, x, 0.5, 0.2, 5)
    with pytest.raises(ValueError, match="grid"):
        time_grid(1.0, 0.1, 3, "cosine")
    with pytest.raises(ValueError, match="sigma_min"):
        VESDE(1.0, 0.5)
    with pytest.raises(TypeError, match="schedule"):
        VPSDE(3)
    with pytest.raises(TypeError, match="sde"):
        probability_flow_sample(score, "vp", x, 5)
    with pytest.raises(ValueError, match="probes"):
        ode_log_likelihood(score, x, 0.0, 1.0, 5, probes=0)


# --------------------------------------------------------------------------- the diffusion model
@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    # cosine: its beta_1 (2e-3) is large enough that sqrt(abar_1) and abar_1 differ visibly
    model = Diffusion(DiffusionConfig(channels=8, T=50, num_classes=10, schedule="cosine")).eval()
    with torch.no_grad():  # perturb: a fresh net's zero output layer would hide mistakes
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_score_of_is_minus_eps_over_sigma_with_guidance(tiny):
    x, s, y = torch.randn(4, 1, 8, 8), torch.tensor([0.1, 0.3, 0.5, 0.9]), torch.arange(4)
    sigma = (1 - tiny.abar_at(s)).sqrt().view(-1, 1, 1, 1)
    with torch.no_grad():
        eps_c, eps_u = tiny.predict_at(x, s, y)[0], tiny.predict_at(x, s)[0]
        assert torch.allclose(score_of(tiny, y)(x, s), -eps_c / sigma)
        assert torch.allclose(score_of(tiny)(x, s), -eps_u / sigma)
        guided = -(eps_u + 3.0 * (eps_c - eps_u)) / sigma
        assert torch.allclose(score_of(tiny, y, guidance=3.0)(x, s), guided, atol=1e-5)
    with pytest.raises(ValueError, match="guidance"):
        score_of(tiny, None, guidance=2.0)


def _counting(model):
    calls = []
    handle = model.net.register_forward_hook(lambda *a: calls.append(1))
    return calls, handle


@pytest.mark.parametrize("div", ["hutchinson", "exact"])
def test_gaussian_dequantized_ode_nll_is_its_decomposition(tiny, div):
    # catches: log q with the wrong variance, the decoder at another x_1, the ODE run backwards
    x = load_digits("test")[0][:3]
    calls, handle = _counting(tiny)
    try:
        nll = diffusion_ode_nll(
            tiny, x, steps=3, divergence=div, generator=torch.Generator().manual_seed(5)
        )
    finally:
        handle.remove()
    assert len(calls) == 2 * 3 + 1  # Heun: 2 per step, + the decoder
    g = torch.Generator().manual_seed(5)  # the same draws, in the documented order
    x0 = to_signed(x)
    eps = torch.randn(x0.shape, generator=g)
    ab1 = tiny.abar[1]
    x1 = ab1.sqrt() * x0 + (1 - ab1).sqrt() * eps
    var = (1 - ab1).double()
    log_q = -0.5 * (x1 - ab1.sqrt() * x0).double() ** 2 / var - 0.5 * torch.log(2 * math.pi * var)
    drift = probability_flow_drift(score_of(tiny), VPSDE(tiny))
    log_ode = ode_log_likelihood(drift, x1, 1 / 50, 1.0, 3, divergence=div, generator=g, grid="log")
    with torch.no_grad():
        decoder = tiny.decoder_term(x0, x1=x1)
    expected = decoder - log_ode + log_q.flatten(1).sum(1).float()
    assert torch.isfinite(nll).all()
    assert torch.allclose(nll, expected, atol=1e-3)


def test_uniform_dequantized_ode_nll_is_its_formula(tiny):
    x = load_digits("test")[0][:3]
    nll = diffusion_ode_nll(
        tiny, x, steps=2, dequantization="uniform", generator=torch.Generator().manual_seed(1)
    )
    g = torch.Generator().manual_seed(1)
    u = torch.rand(x.shape, generator=g) - 0.5
    y = to_signed(x) + u * 2 / (LEVELS - 1)
    drift = probability_flow_drift(score_of(tiny), VPSDE(tiny))
    log_ode = ode_log_likelihood(drift, y, 0.01, 1.0, 2, generator=g, grid="log")
    assert torch.allclose(nll, -(log_ode + NUM_PIXELS * math.log(2 / 16)), atol=1e-3)
    with pytest.raises(ValueError, match="dequantization"):
        diffusion_ode_nll(tiny, x, dequantization="variational")


def test_samplers_run_on_the_diffusion_model_and_count_evaluations(tiny):
    sde, score = VPSDE(tiny), score_of(tiny, 3, guidance=2.0)
    xT = torch.randn(4, 1, 8, 8)
    calls, handle = _counting(tiny)
    try:
        x, nfe = reverse_sde_sample(score, sde, xT, 4, corrector_steps=1, s_min=1 / 50)
        assert nfe == 8 and len(calls) == 2 * nfe  # guidance: two network passes per score
        x, nfe, path = probability_flow_sample(score, sde, xT, 3, s_min=1 / 50, return_path=True)
        assert nfe == 6 and path.shape == (4, 4, 1, 8, 8) and torch.equal(path[-1], x)
    finally:
        handle.remove()
    assert torch.isfinite(x).all()
    assert standard_normal_log_prob(x).shape == (4,)
