"""Energy-based models and score matching (dgm_edu.energy), each against an independent value.

- Langevin dynamics on Gaussian energies settles at the closed-form stationary law of the
  discretised chain (the variance σ²/(1 − ε/(2σ²)) in 1D, a discrete Lyapunov equation in 2D);
- denoising score matching is minimised by the analytic score of a noisy Gaussian mixture, and
  its excess over the minimum is ½ E‖s − s*‖² (Vincent 2011);
- the sliced objective equals the explicit (Hyvärinen) one in expectation, the exact Jacobian
  trace equals autograd's Jacobian, and the explicit objective of a linear score on Gaussian
  data has a closed form minimised at the true parameters;
- AIS: log Z of a Gaussian energy in closed form, and of the toy EnergyModel by grid quadrature;
- annealed Langevin with an oracle score reaches a mixture's weights (a single level does not);
- the replay buffer: moved by training, untouched in eval mode, kept by a checkpoint;
- logit coordinates: exp(−E_z) carries the box's mass (quadrature), and the model's own
  Langevin negatives reach a known Gaussian on the box;
- a classifier read as an energy: −logsumexp and −logit by direct sums, softmax recovered;
- the recipe's figures against a direct computation, the ablations registered one change each,
  the fast recipes train;
- argument checks name the argument.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dgm_edu import energy as en
from dgm_edu import scores as sc
from dgm_edu.data import LEVELS, load_digits, toy_2d
from dgm_edu.train import fit, fit_toy, load_checkpoint, load_model_state, save_checkpoint

DIGITS = load_digits("val")[0]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# =========================================================================== Langevin
def test_langevin_on_a_1d_gaussian_reaches_the_discretised_chains_mean_and_variance():
    """E = (x − μ)²/(2σ²): x' = x − ε(x − μ)/σ² + noise √(2ε) ξ is an AR(1) chain whose
    stationary law is N(μ, T σ² / (1 − ε/(2σ²))), T = noise² (solve v = (1 − ε/σ²)² v + 2εT)."""
    mu, var, eps = 1.5, 0.5, 0.1

    def energy(x):
        return ((x - mu) ** 2 / (2 * var)).sum(-1)

    x0 = torch.zeros(40_000, 1, dtype=torch.float64)
    for noise in (1.0, 0.5):
        x = sc.langevin(energy, x0, 300, eps, noise=noise, generator=_gen())
        want = noise**2 * var / (1 - eps / (2 * var))  # 0.556 at noise 1; the exact law has 0.5
        assert abs(float(x.mean()) - mu) < 0.015
        assert abs(float(x.var()) - want) < 0.03 * want, (noise, float(x.var()), want)
    # the same chain from its score, −∇E: identical draws
    score = lambda x: -(x - mu) / var  # noqa: E731
    a = sc.langevin(energy, x0[:100], 20, eps, generator=_gen(3))
    b = sc.langevin(score, x0[:100], 20, eps, kind="score", generator=_gen(3))
    torch.testing.assert_close(a, b)


def test_langevin_on_a_correlated_2d_gaussian_matches_the_lyapunov_solution():
    """x' = x − ε A (x − μ) + √(2ε) ξ, A = Σ⁻¹: stationary covariance C solves
    C = (I − εA) C (I − εA)ᵀ + 2ε I, solved here by vectorising (a linear system)."""
    mu = torch.tensor([-1.0, 2.0], dtype=torch.float64)
    sigma = torch.tensor([[1.0, 0.6], [0.6, 0.8]], dtype=torch.float64)
    a_mat, eps = torch.linalg.inv(sigma), 0.15

    def energy(x):
        d = x - mu
        return 0.5 * ((d @ a_mat) * d).sum(-1)

    m = np.eye(2) - eps * a_mat.numpy()
    lhs = np.eye(4) - np.kron(m, m)  # vec(C) = (M ⊗ M) vec(C) + 2ε vec(I)
    cov_want = np.linalg.solve(lhs, 2 * eps * np.eye(2).ravel()).reshape(2, 2)
    x = sc.langevin(energy, torch.zeros(40_000, 2, dtype=torch.float64), 400, eps, generator=_gen())
    torch.testing.assert_close(x.mean(0), mu, atol=0.02, rtol=0)
    np.testing.assert_allclose(np.cov(x.T.numpy()), cov_want, atol=0.03)
    assert not np.allclose(cov_want, sigma.numpy(), atol=0.03)  # the check sees ε's bias


def test_langevin_path_bounds_and_clip():
    def steep(x):
        return (100.0 * x).sum(-1)  # ∇E = 100 everywhere

    x0 = torch.full((5, 2), 0.5)
    x = sc.langevin(steep, x0, 1, 0.01, noise=0.0, clip=0.3)
    torch.testing.assert_close(x, x0 - 0.01 * 0.3)  # the score clamped to −0.3 per coordinate
    x, path = sc.langevin(steep, x0, 50, 0.01, bounds=(0.0, 1.0), return_path=True)
    assert path.shape == (51, 5, 2) and torch.equal(path[0], x0) and torch.equal(path[-1], x)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    with torch.no_grad():  # a sampler runs under no_grad: the score is taken under enable_grad
        assert not sc.langevin(steep, x0, 2, 0.01).requires_grad


# =========================================================================== score matching
PI = torch.tensor([0.3, 0.7], dtype=torch.float64)
MU = torch.tensor([[-2.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
S2 = torch.tensor([0.25, 0.5], dtype=torch.float64)


def _mixture(n: int, gen: torch.Generator) -> torch.Tensor:
    k = torch.multinomial(PI, n, replacement=True, generator=gen)
    z = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    return MU[k] + S2[k].sqrt()[:, None] * z


def _noisy_mixture_score(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """∇ log Σ_k π_k N(x; μ_k, (s_k² + σ²) I), by the responsibilities."""
    v = S2 + sigma**2  # (K,)
    d = x[:, None, :] - MU  # (N, K, 2)
    logp = PI.log() - d.pow(2).sum(-1) / (2 * v) - v.log()  # (N, K), 2D: −(D/2) log v = −log v
    r = torch.softmax(logp, -1)  # (N, K)
    return (r[..., None] * (-d / v[:, None])).sum(1)  # (N, 2)


def test_denoising_score_matching_is_minimised_by_the_noisy_mixture_score():
    """DSM(s) − DSM(s*) = ½ E‖s − s*‖² over the noisy data, s* = ∇ log p_σ (Vincent 2011):
    checked with common random numbers for two perturbations s* + δh."""
    sigma, delta = 0.5, 0.3
    x = _mixture(200_000, _gen(0))

    def dsm(score):
        return float(sc.denoising_score_matching(score, x, sigma, generator=_gen(1)).mean())

    x_noisy = x + sigma * torch.randn(x.shape, generator=_gen(1), dtype=x.dtype)  # the same x̃
    best = dsm(lambda z: _noisy_mixture_score(z, sigma))
    const = torch.tensor([1.0, -1.0], dtype=torch.float64) / math.sqrt(2)
    for h, h_sq in (
        (lambda z: const.expand_as(z), 1.0),
        (lambda z: z, float(x_noisy.pow(2).sum(-1).mean())),
    ):
        for sign in (1, -1):
            excess = (
                dsm(lambda z, h=h, sign=sign: _noisy_mixture_score(z, sigma) + sign * delta * h(z))
                - best
            )
            assert excess > 0
            assert abs(excess - 0.5 * delta**2 * h_sq) < 0.1 * 0.5 * delta**2 * h_sq, (excess, h_sq)
    # the clean data's score is not the optimum at σ = 0.5
    assert dsm(lambda z: _noisy_mixture_score(z, 0.0)) > best + 0.01
    # one level per item equals the scalar level
    per_item = torch.full((len(x),), sigma, dtype=x.dtype)
    s = lambda z: _noisy_mixture_score(z, sigma)  # noqa: E731
    torch.testing.assert_close(
        sc.denoising_score_matching(s, x[:100], per_item[:100], generator=_gen(2)),
        sc.denoising_score_matching(s, x[:100], sigma, generator=_gen(2)),
    )


def _toy_score(x: torch.Tensor) -> torch.Tensor:
    """A fixed nonlinear, non-conservative score field on R³."""
    g = _gen(7)
    a = torch.randn(3, 3, generator=g, dtype=x.dtype)
    b = torch.randn(3, 3, generator=g, dtype=x.dtype)
    return -x @ a.T + torch.tanh(x @ b.T)


def test_explicit_trace_matches_the_autograd_jacobian():
    x = torch.randn(6, 3, generator=_gen(), dtype=torch.float64)
    got = sc.explicit_score_matching(_toy_score, x)
    for i in range(len(x)):
        jac = torch.autograd.functional.jacobian(lambda z: _toy_score(z[None])[0], x[i])
        want = 0.5 * _toy_score(x[i : i + 1]).pow(2).sum() + torch.trace(jac)
        torch.testing.assert_close(got[i], want)


def test_sliced_and_explicit_score_matching_agree_in_expectation():
    """E_v[vᵀ∇s v + ½ (vᵀs)²] = tr ∇s + ½‖s‖² for v ~ N(0, I): each point, many projections."""
    x = torch.randn(16, 3, generator=_gen(), dtype=torch.float64)
    explicit = sc.explicit_score_matching(_toy_score, x)  # (16,)
    reps = 20_000  # the same points, one projection each: one backward pass in all
    for vr in (False, True):
        sliced = sc.sliced_score_matching(
            _toy_score, x.repeat(reps, 1), variance_reduced=vr, generator=_gen(1)
        ).view(reps, 16)
        se = sliced.std(0) / math.sqrt(reps)
        assert ((sliced.mean(0) - explicit).abs() < 4 * se + 1e-9).all(), (vr, sliced.mean(0))
    assert not torch.allclose(explicit, 0.5 * _toy_score(x).pow(2).sum(-1))  # the trace matters
    k = sc.sliced_score_matching(_toy_score, x, 3, generator=_gen(2))
    assert k.shape == (16,) and torch.isfinite(k).all()


def test_explicit_score_matching_of_a_linear_score_has_its_closed_form_minimum():
    """s(x) = −(x − m)/v on N(μ, σ² I): J = Σ_d [(σ² + (μ_d − m_d)²)/(2v²) − 1/v], minimised at
    m = μ, v = σ² (with the value −D/(2σ²))."""
    mu, var = torch.tensor([0.5, -1.0], dtype=torch.float64), 0.7
    x = mu + math.sqrt(var) * torch.randn(100_000, 2, generator=_gen(), dtype=torch.float64)
    for m_shift, v in ((0.0, var), (0.3, var), (0.0, 1.2), (-0.2, 0.4)):
        m = mu + m_shift
        got = float(sc.explicit_score_matching(lambda z, m=m, v=v: -(z - m) / v, x).mean().detach())
        want = float(((var + (mu - m) ** 2) / (2 * v**2) - 1 / v).sum())
        assert abs(got - want) < 0.02, (m_shift, v, got, want)
        assert want >= -2 / (2 * var) - 1e-12
    # the energy route: explicit SM through energy_score keeps the graph for the trace
    energy = lambda z: ((z - mu) ** 2).sum(-1) / (2 * var)  # noqa: E731
    via_energy = sc.explicit_score_matching(sc.energy_score(energy, create_graph=True), x[:50])
    direct = sc.explicit_score_matching(lambda z: -(z - mu) / var, x[:50])
    torch.testing.assert_close(via_energy, direct)


def test_explicit_score_matching_trains_the_parameters():
    w = torch.tensor(0.5, requires_grad=True)
    x = torch.randn(64, 2, generator=_gen())
    sc.explicit_score_matching(lambda z: -w * z, x).mean().backward()
    # J(w) = ½ w² E‖x‖² − 2w, so dJ/dw = w E‖x‖² − 2
    torch.testing.assert_close(w.grad, 0.5 * x.pow(2).sum(-1).mean() - 2)


# =========================================================================== AIS
def test_ais_recovers_the_log_normaliser_of_a_gaussian_energy():
    mu, sd = 0.5, 0.7

    def energy(x):
        return ((x - mu) ** 2).sum(-1) / (2 * sd**2)

    log_w, log_z0, acc = en.ais_log_weights(
        energy, (1,), (-6.0, 6.0), num_betas=200, num_runs=200, step_size=0.05,
        dtype=torch.float64, generator=_gen(),
    )  # fmt: skip
    assert log_z0 == pytest.approx(math.log(12.0)) and 0.3 < acc < 1.0
    est = en.ais_estimate(log_w, log_z0)
    exact = math.log(math.sqrt(2 * math.pi) * sd)  # the box holds 7.9 sd each side
    assert est.log_z_low - 0.01 <= exact <= est.log_z_high + 0.01, (est, exact)
    assert abs(est.log_z - exact) < 0.05


def _toy_ebm(seed: int = 0) -> en.EnergyModel:
    torch.manual_seed(seed)
    model = en.EnergyModel(
        en.EnergyConfig(data="toy", hidden=32, buffer_size=64, langevin_steps=5, ais_betas=300,
                        ais_runs=200, ais_step_size=0.05)
    ).double()  # fmt: skip
    with torch.no_grad():
        model.net.net[-1].weight.mul_(8.0)  # several nats of structure over the box
    return model


def test_ais_log_z_of_the_toy_energy_model_matches_grid_quadrature():
    model = _toy_ebm()
    g = torch.linspace(-4, 4, 801, dtype=torch.float64)
    mid, cell = (g[1:] + g[:-1]) / 2, (8 / 800) ** 2  # midpoints of a 800 x 800 grid
    pts = torch.cartesian_prod(mid, mid)
    with torch.no_grad():
        e = model.energy(pts)
    exact = float(torch.logsumexp(-e, 0)) + math.log(cell)  # log ∫_box exp(−E)
    assert float(e.max() - e.min()) > 3  # not a flat energy
    est = model.ais_log_partition(generator=_gen())
    assert est.log_z_low - 0.02 <= exact <= est.log_z_high + 0.02, (est, exact)
    # log_prob is the normalised density on the box: it integrates to about 1, and is −inf off it
    with torch.no_grad():
        lp = model.log_prob(pts.float())
    total = float(torch.logsumexp(lp.double(), 0)) + math.log(cell)
    assert abs(total) < 0.05, total
    assert model.log_prob(torch.tensor([[5.0, 0.0]], dtype=torch.float64)).item() == -math.inf


def test_digits_log_prob_is_the_dequantized_density_minus_log_z_and_the_bin_volume():
    torch.manual_seed(0)
    model = en.EnergyModel(en.EnergyConfig(channels=4, buffer_size=8, ais_betas=20, ais_runs=8))
    x = DIGITS[:5]
    torch.manual_seed(1)
    lp = model.log_prob(x)
    torch.manual_seed(1)
    y = (x.float() + torch.rand(x.shape)) / LEVELS  # the same dequantization draw
    want = -model.energy(y) - model.log_partition() - 64 * math.log(LEVELS)
    torch.testing.assert_close(lp, want)
    assert model.log_partition() == model.log_partition()  # cached, deterministic


# =========================================================================== annealed Langevin
def test_geometric_sigmas():
    s = sc.geometric_sigmas(3.0, 0.01, 10)
    assert s.shape == (10,) and s[0] == pytest.approx(3.0) and s[-1] == pytest.approx(0.01)
    ratios = s[1:] / s[:-1]
    torch.testing.assert_close(ratios, torch.full_like(ratios, float(ratios[0])))
    assert sc.geometric_sigmas(2.0, 2.0, 1).tolist() == [2.0]


def test_annealed_langevin_with_an_oracle_score_reaches_the_mixture_weights():
    """Two far-apart modes, weights 0.2 / 0.8. Annealing from large σ gets the weights right; a
    single small level from the same start keeps each chain in the basin it starts in."""
    pi, mu, s2 = torch.tensor([0.2, 0.8]), torch.tensor([-3.0, 3.0]), 0.09

    def score(x, sigma):  # ∇ log Σ_k π_k N(x; μ_k, s² + σ²), x (N, 1), sigma (N,)
        v = s2 + sigma[:, None] ** 2  # (N, 1)
        logp = pi.log() - (x - mu) ** 2 / (2 * v)  # (N, 2)
        r = torch.softmax(logp, -1)
        return (r * (-(x - mu) / v)).sum(-1, keepdim=True)

    sigmas = sc.geometric_sigmas(6.0, 0.05, 10)
    x0 = 6.0 * torch.randn(20_000, 1, generator=_gen())
    x = sc.annealed_langevin(score, x0, sigmas, 100, 2e-4, generator=_gen(1))
    right = x[:, 0] > 0
    assert abs(float(right.float().mean()) - 0.8) < 0.03
    assert abs(float(x[right].var()) - s2) < 0.02  # within a mode: the data's variance
    single = sc.annealed_langevin(score, x0, sigmas[-1:], 1000, 2e-4, generator=_gen(1))
    assert abs(float((single[:, 0] > 0).float().mean()) - 0.8) > 0.15


def test_noise_conditional_score_learns_a_gaussian():
    """1500 DSM steps (fit_toy) on N(μ, 0.25 I): annealed Langevin samples have its moments."""
    torch.manual_seed(0)
    mu = torch.tensor([1.0, -0.5])
    data = mu + 0.5 * torch.randn(4096, 2)
    model = sc.NoiseConditionalScore(
        sc.ScoreConfig(hidden=64, sigma_max=2.0, sigma_min=0.05, num_levels=8, steps_per_level=50,
                       epsilon=1e-3)
    )  # fmt: skip
    fit_toy(model, data, steps=1500, batch_size=1024, lr=3e-3, schedule="cosine", progress=False,
            device="cpu")  # fmt: skip
    x = model.sample(2000, generator=_gen())
    torch.testing.assert_close(x.mean(0), mu, atol=0.06, rtol=0)
    torch.testing.assert_close(x.std(0), torch.full((2,), 0.5), atol=0.06, rtol=0)


# =========================================================================== the replay buffer
def test_training_moves_the_replay_buffer_and_eval_leaves_it():
    model = _toy_ebm().float()
    x = toy_2d("ring8", 16, seed=0)
    before = model.replay.clone()
    model.eval()
    model.loss(x)
    assert torch.equal(model.replay, before)
    model.train()
    model.loss(x)
    moved = (model.replay != before).any(-1)
    assert int(moved.sum()) == 16  # one distinct chain per item of the batch


def test_the_replay_buffer_survives_a_checkpoint_round_trip(tmp_path):
    source = _toy_ebm(0).float().train()
    x = toy_2d("ring8", 32, seed=0)
    for _ in range(3):
        source.loss(x)
    assert "replay" in source.state_dict()
    save_checkpoint(tmp_path / "ebm.pt", {"model": source.state_dict()})
    fresh = _toy_ebm(1).float().train()
    assert not torch.equal(fresh.replay, source.replay)
    load_model_state(fresh, load_checkpoint(tmp_path / "ebm.pt")["model"])
    assert torch.equal(fresh.replay, source.replay)
    torch.manual_seed(5)
    a = source.loss(x)
    torch.manual_seed(5)
    b = fresh.loss(x)
    assert torch.equal(a, b) and torch.equal(source.replay, fresh.replay)


def test_fit_validates_the_langevin_loss_with_input_gradients_only():
    """fit's validation gives the EBM input gradients (needs_input_grad) and no parameter ones."""
    model = _toy_ebm().float()
    x = toy_2d("ring8", 64, seed=0)
    val = [(toy_2d("ring8", 32, seed=1),)]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    hist = fit(model, opt, [(x[:32],), (x[32:],)], val, epochs=2, progress=False, device="cpu")
    assert len(hist.val_loss) == 2 and all(math.isfinite(v) for v in hist.val_loss)
    assert all(p.requires_grad for p in model.parameters())  # unfrozen after validation


def test_cd_loss_gradient_is_data_term_minus_model_term_plus_the_regulariser():
    model = _toy_ebm().float().eval()
    x = toy_2d("ring8", 8, seed=0)
    torch.manual_seed(3)
    model.loss(x).backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch.manual_seed(3)
    neg = model.negatives(8)
    e_pos, e_neg = model.energy(x), model.energy(neg)
    alpha = model.config.alpha
    (e_pos.mean() - e_neg.mean() + alpha * (e_pos**2 + e_neg**2).mean()).backward()
    for g, p in zip(got, model.parameters()):
        torch.testing.assert_close(g, p.grad)


# =========================================================================== argument checks
@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"data": "images"}, "data"),
        ({"buffer_size": 0}, "buffer_size"),
        ({"reinit": 1.5}, "reinit"),
        ({"step_size": 0.0}, "step_size"),
        ({"noise": -1.0}, "noise"),
        ({"alpha": -0.1}, "alpha"),
        ({"langevin_steps": 0}, "langevin_steps"),
        ({"ais_runs": 1}, "ais_runs"),
        ({"clip": 0.0}, "clip"),
        ({"data": "toy", "bounds": (1.0, -1.0)}, "bounds"),
        ({"data": "digits", "bounds": (-1.0, 1.0)}, "bounds"),
    ],
)
def test_energy_config_names_the_bad_field(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        en.EnergyConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"sigma_min": 5.0}, "sigma_min"),
        ({"sigma_max": 0.0}, "sigma_max"),
        ({"num_levels": 0}, "num"),
        ({"epsilon": -1.0}, "epsilon"),
        ({"steps_per_level": 0}, "steps_per_level"),
    ],
)
def test_score_config_names_the_bad_field(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        sc.ScoreConfig(**kwargs)


def test_samplers_and_losses_name_the_bad_argument():
    def energy(x):
        return x.pow(2).sum(-1)

    x0 = torch.zeros(4, 2)
    for kwargs, name in (
        ({"steps": -1}, "steps"), ({"step_size": 0.0}, "step_size"), ({"noise": -1.0}, "noise"),
        ({"kind": "grad"}, "kind"), ({"clip": -1.0}, "clip"), ({"bounds": (1.0, 0.0)}, "bounds"),
    ):  # fmt: skip
        args = {"steps": 2, "step_size": 0.1} | kwargs
        with pytest.raises((ValueError, TypeError), match=name):
            sc.langevin(energy, x0, **args)
    with pytest.raises(TypeError, match="x0"):
        sc.langevin(energy, torch.zeros(4, 2, dtype=torch.long), 2, 0.1)
    with pytest.raises(ValueError, match="sigmas"):
        sc.annealed_langevin(lambda x, s: x, x0, torch.tensor([0.1, 1.0]), 2, 0.1)
    with pytest.raises(ValueError, match="num_projections"):
        sc.sliced_score_matching(lambda x: x, x0, 0)
    with pytest.raises(ValueError, match="sigma"):
        sc.denoising_score_matching(lambda x: x, x0, 0.0)
    with pytest.raises(TypeError, match="x"):
        sc.explicit_score_matching(lambda x: x, torch.zeros(4))
    model = en.EnergyModel(en.EnergyConfig(channels=4, buffer_size=8))
    for kwargs, name in (({"steps": 0}, "steps"), ({"step_size": -1.0}, "step_size"),
                         ({"noise": float("nan")}, "noise"), ({"y": 0}, "y")):  # fmt: skip
        with pytest.raises((ValueError, TypeError), match=name):
            model.sample(2, **kwargs)
    with pytest.raises(ValueError, match="Expected integer levels"):
        model.loss(DIGITS[:2] / 16.0)


# =========================================================================== logit coordinates
def test_logit_coordinates_carry_the_same_density_by_quadrature():
    """∫ exp(−E_z(z)) dz = ∫_box exp(−E(y)) dy / (high − low)^D (1D, trapezoid on a wide grid),
    base_energy is the log-density of logit(U(0, 1)), and to_box/from_box invert each other."""
    bounds = (-2.0, 3.0)

    def energy(y):
        return (2 * (y - 0.5) ** 2 + torch.sin(3 * y)).sum(-1)

    z = torch.linspace(-40, 40, 400_001, dtype=torch.float64)[:, None]
    ez = en.logit_energy(energy, bounds)(z)
    lhs = torch.trapezoid(torch.exp(-ez), z[:, 0])
    y = torch.linspace(*bounds, 200_001, dtype=torch.float64)[:, None]
    rhs = torch.trapezoid(torch.exp(-energy(y)), y[:, 0]) / (bounds[1] - bounds[0])
    torch.testing.assert_close(lhs, rhs, rtol=1e-6, atol=0)
    base = torch.trapezoid(torch.exp(-en.base_energy(z)), z[:, 0])
    torch.testing.assert_close(base, torch.tensor(1.0, dtype=torch.float64), rtol=1e-6, atol=0)
    pts = torch.tensor([[-1.9], [0.0], [2.5]], dtype=torch.float64)
    torch.testing.assert_close(en.to_box(en.from_box(pts, bounds), bounds), pts)


class _Well(torch.nn.Module):
    def __init__(self, m: torch.Tensor, s: float) -> None:
        super().__init__()
        self.m, self.s = m, s

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return ((y - self.m) ** 2).sum(-1) / (2 * self.s**2)


def test_model_langevin_in_logit_coordinates_samples_a_known_density_on_the_box():
    """A toy EnergyModel whose energy is replaced by a Gaussian well, E = ‖y − m‖²/(2 s²) in
    the box (−4, 4)²: its negatives (persistent chains, noise 1) reach N(m, s²) (8 s deep
    inside the box, so the box does not truncate it). Unadjusted Langevin is biased by O(step):
    at step 0.005 the std comes out 2-5% wide over seeds, at 0.0025 about half that, so the test
    uses the smaller step, and seeds before the buffer is drawn (independent of test order)."""
    m, s = torch.tensor([1.0, -0.5]), 0.4
    torch.manual_seed(0)
    model = en.EnergyModel(
        en.EnergyConfig(data="toy", buffer_size=4000, langevin_steps=50, step_size=0.0025,
                        reinit=0.0)
    )  # fmt: skip
    model.net = _Well(m, s)
    for _ in range(60):
        neg = model.negatives(4000, update=True)
    torch.testing.assert_close(neg.mean(0), m, atol=0.03, rtol=0)
    torch.testing.assert_close(neg.std(0), torch.full((2,), s), atol=0.03, rtol=0)


# =========================================================================== a classifier's energy
def test_classifier_energy_is_minus_logsumexp_and_minus_the_logit():
    """E(x) = −log Σ_y exp f(x)[y] and E(x, y) = −f(x)[y], checked by a direct sum; and
    p(y | x) = exp(E(x) − E(x, y)) is the softmax of the logits."""
    w = torch.randn(5, 3, generator=_gen(), dtype=torch.float64)

    def logits(x):
        return x @ w.T + 2.0  # (N, 5); the shift changes E(x) but not p(y | x)

    x = torch.randn(7, 3, generator=_gen(1), dtype=torch.float64)
    e_x, e_xy = en.classifier_energy(logits)
    f = logits(x)
    want = -torch.log(torch.exp(f).sum(-1))
    torch.testing.assert_close(e_x(x), want)
    y = torch.tensor([0, 4, 2, 2, 1, 3, 0])
    torch.testing.assert_close(e_xy(x, y), -f[torch.arange(7), y])
    torch.testing.assert_close(e_xy(x), -f)
    p = torch.exp(e_x(x)[:, None] - e_xy(x))  # (7, 5)
    torch.testing.assert_close(p, torch.softmax(f, -1))
    torch.testing.assert_close(p.sum(-1), torch.ones(7, dtype=torch.float64))
    with pytest.raises(ValueError, match="y"):
        e_xy(x, torch.full((7,), 5))
    with pytest.raises(TypeError, match="logits_fn"):
        en.classifier_energy(3.0)


def test_the_digits_feature_net_read_as_an_energy_prefers_digits_to_noise():
    from dgm_edu.features import load_feature_net

    net = load_feature_net()
    e_x, _ = en.classifier_energy(net)
    noise = torch.randint(0, LEVELS, (200, 1, 8, 8), generator=_gen())
    with torch.no_grad():
        assert float(e_x(DIGITS[:200]).mean()) < float(e_x(noise).mean())


# =========================================================================== the recipe's figures
def test_digits_figures_record_the_energies_and_the_nll_estimate():
    torch.manual_seed(0)
    model = en.EnergyModel(en.EnergyConfig(channels=4, buffer_size=16, ais_betas=20, ais_runs=8))
    model.eval()
    fig = en.digits_figures(model, ais_seeds=2, samples=0)
    x = load_digits("test")[0]
    y = (x.float() + torch.rand(x.shape, generator=_gen())) / LEVELS
    with torch.no_grad():
        e_test = float(model.energy(y).double().mean())
        e_buf = float(model.energy(torch.sigmoid(model.replay)).double().mean())
    assert fig["e_test"] == pytest.approx(e_test, abs=1e-4)
    assert fig["e_buffer"] == pytest.approx(e_buf, abs=1e-4)
    assert fig["e_gap"] == pytest.approx(e_test - e_buf, abs=2e-4)
    log_z = model.ais_log_partition(generator=_gen(0)).log_z
    assert fig["log_z_runs"][0] == pytest.approx(log_z, abs=1e-4)
    assert fig["test_nll_nats"] == pytest.approx(e_test + log_z + 64 * math.log(LEVELS), abs=1e-3)
    assert fig["nll_low"] <= fig["test_nll_nats"] <= fig["nll_high"]
    assert "AIS estimate" in fig["estimator"]
    with torch.no_grad():
        model.net.net[-1].bias.fill_(float("nan"))
    bad = en.digits_figures(model, ais_seeds=1, samples=0)
    assert bad["finite"] is False and bad["e_test"] is None and "test_nll_nats" not in bad


# =========================================================================== the recipes
def test_each_ablation_is_registered_and_changes_one_field_of_the_reference():
    from dgm_edu import weights

    registered = {n.removeprefix("energy-") for n in weights.RECIPES if n.startswith("energy-")}
    assert registered - {"toy"} == set(en.ABLATIONS)
    ref = en.reference_config()
    for change in en.ABLATIONS.values():
        cfg = en.reference_config(**change)
        differ = [k for k in vars(ref) if getattr(cfg, k) != getattr(ref, k)]
        assert differ == list(change)


def test_fast_recipes_train_and_move_the_energies(monkeypatch):
    """Fast mode: the digits recipe lowers the data's energy below uniform noise's; the toy
    recipes return trained models in eval mode."""
    monkeypatch.setenv("DGM_EDU_FAST", "1")
    model, hist = en.train_reference(progress=False, epochs=1)
    assert not model.training and hist.epochs_run == 1
    fig = en.digits_figures(model, ais_seeds=0, samples=0)
    assert fig["e_test"] < fig["e_noise"] - 10
    toy, hist = en.train_toy(progress=False, epochs=1)
    assert not toy.training and toy.config.data == "toy" and hist.epochs_run == 1
    nc, hist = sc.train_toy(progress=False, epochs=2)
    assert not nc.training and len(hist.val_loss) == 2 and hist.val_loss[-1] < hist.val_loss[0]
