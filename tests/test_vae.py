"""Tests of dgm_edu.vae: each checks a value against an independent computation."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical, Normal, kl_divergence

from dgm_edu.data import from_unit, load_digits
from dgm_edu.densities import normal_log_prob
from dgm_edu.vae import (
    VAE,
    VAEConfig,
    active_units,
    categorical_log_prob,
    gaussian_kl,
    iwae_bound,
    kl_decomposition,
    reference_config,
    reparameterize,
    train_reference,
)

SMALL = VAEConfig(latent_dim=4, channels=8)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    return load_digits("test")[0][:16]


def test_gaussian_kl_matches_closed_form_of_torch_and_monte_carlo():
    # catches a wrong sign, a missing 1/2, or sigma used where sigma^2 belongs
    mu = torch.tensor([[0.5, -1.0, 2.0]])
    logvar = torch.tensor([[0.3, -1.2, 0.8]])
    kl = gaussian_kl(mu, logvar)
    q, p = Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)
    assert torch.allclose(kl, kl_divergence(q, p).sum(-1), atol=1e-6)
    z = q.sample((400_000,))  # (S, 1, 3)
    mc = (q.log_prob(z) - p.log_prob(z)).sum(-1).mean(0)
    assert torch.allclose(kl, mc, atol=0.02), (kl, mc)


def test_gaussian_kl_of_standard_normal_with_itself_is_zero():
    zeros = torch.zeros(5, 7)
    assert torch.equal(gaussian_kl(zeros, zeros), torch.zeros(5))
    assert gaussian_kl(torch.zeros(1, 2), torch.tensor([[0.1, 0.0]])).item() > 0


def test_reparameterized_sample_has_right_mean_and_variance():
    # catches exp(logvar) used as the std (variance would be squared) or a missing 0.5
    mu = torch.tensor([1.0, -2.0])
    logvar = torch.tensor([math.log(4.0), math.log(0.25)])
    z = reparameterize(mu, logvar, k=200_000)  # (k, 2)
    assert torch.allclose(z.mean(0), mu, atol=0.02)
    assert torch.allclose(z.var(0), logvar.exp(), rtol=0.02)
    # and it is differentiable in (mu, logvar): dE[z]/dmu = 1
    mu_ = mu.clone().requires_grad_()
    reparameterize(mu_, logvar, k=10).sum().backward()
    assert torch.allclose(mu_.grad, torch.full((2,), 10.0))


def test_normal_log_prob_matches_torch():
    z, mu, logvar = torch.randn(3, 5), torch.randn(3, 5), torch.randn(3, 5)
    ref = Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(-1)
    assert torch.allclose(normal_log_prob(z, mu, logvar), ref, atol=1e-5)


def test_decoder_likelihood_sums_to_one_over_the_17_levels():
    # catches a softmax over the wrong axis, or raw logits used as log-probabilities
    model = VAE(SMALL).eval()
    logits = model.decode(torch.randn(1, 4)).detach()  # (1, 17, 8, 8)
    x0 = torch.randint(0, 17, (1, 1, 8, 8))
    # make every pixel except (3, 5) certain (prob 1 at x0's level), so p(x | z) = p_{3,5}(x_{3,5})
    pinned = torch.full_like(logits, -1e4).scatter(1, x0, 0.0)
    pinned[..., 3, 5] = logits[..., 3, 5]
    xs = x0.repeat(17, 1, 1, 1)
    xs[:, 0, 3, 5] = torch.arange(17)  # all 17 values of that pixel
    probs = torch.stack([categorical_log_prob(pinned, x[None]) for x in xs]).exp()
    assert torch.allclose(probs.sum(), torch.tensor(1.0), atol=1e-5)
    assert torch.allclose(probs.squeeze(), logits[0, :, 3, 5].softmax(0), atol=1e-5)


def test_iwae_converges_to_closed_form_on_linear_gaussian_model():
    # z ~ N(0, 1), x | z ~ N(a z + b, s^2)  =>  p(x) = N(b, a^2 + s^2) exactly.
    # catches a dropped log q or log p(z) term, or a missing - log k.
    a, b, s = 1.5, 0.3, 0.5
    x = torch.tensor([-1.0, 0.2, 2.5])  # (B,)
    exact = Normal(b, math.sqrt(a * a + s * s)).log_prob(x)
    # a deliberately imperfect proposal: the exact posterior's mean shifted, its std inflated
    post_var = 1.0 / (1.0 + a * a / s**2)
    mu = (post_var * a * (x - b) / s**2 + 0.3)[:, None]  # (B, 1)
    logvar = torch.full_like(mu, math.log(2.0 * post_var))

    def log_joint(z):  # (m, B, 1) -> (m, B)
        return Normal(0.0, 1.0).log_prob(z).sum(-1) + Normal(a * z + b, s).log_prob(x[:, None]).sum(
            -1
        )

    torch.manual_seed(1)
    l1 = torch.stack([iwae_bound(log_joint, mu, logvar, k=1) for _ in range(2000)]).mean(0)
    lk = iwae_bound(log_joint, mu, logvar, k=100_000, chunk=10_000)
    assert (l1 < exact - 0.05).all()  # the ELBO has a visible gap
    assert torch.allclose(lk, exact, atol=2e-3), (lk, exact)


def test_iwae_with_one_sample_equals_the_elbo_in_expectation(digits):
    # the ELBO uses the analytic KL, IWAE-1 the Monte-Carlo log p(z) - log q(z|x): same mean
    model = VAE(SMALL).eval()
    x = digits[:4]
    reps = x.repeat(3000, 1, 1, 1)  # (3000 * 4, 1, 8, 8): 3000 independent draws per image
    with torch.no_grad():
        elbo = model.elbo(reps).view(3000, 4).mean(0)
        iwae1 = model.log_prob(reps, k=1).view(3000, 4).mean(0)
    assert torch.allclose(elbo, iwae1, atol=0.3), (elbo, iwae1)


def test_iwae_bound_is_non_decreasing_in_k(digits):
    model = VAE(SMALL).eval()
    with torch.no_grad():  # a decoder that depends strongly on z: a wide gap to close
        model.decoder.inp.weight *= 30.0
    bounds = []
    for k in (1, 10, 100, 1000):
        torch.manual_seed(0)
        bounds.append(model.log_prob(digits[:8].repeat(3, 1, 1, 1), k=k).mean().item())
    assert all(lo <= hi for lo, hi in zip(bounds, bounds[1:])), bounds


def test_loss_is_negative_elbo_with_beta_weighted_kl(digits):
    # catches beta ignored, or the KL added with the wrong sign
    model = VAE(VAEConfig(latent_dim=4, channels=8, beta=3.0)).eval()
    torch.manual_seed(0)
    rec, kl = model.elbo_terms(digits)
    torch.manual_seed(0)
    assert torch.allclose(model.loss(digits), -(rec - 3.0 * kl).mean())
    assert (kl > 0).all()


def test_kl_warmup_ramps_linearly_and_counts_steps(digits):
    model = VAE(VAEConfig(latent_dim=4, channels=8, beta=2.0, warmup_steps=10)).train()
    weights = []
    for _ in range(12):
        weights.append(model.kl_weight())
        model.loss(digits)
    assert weights[0] == pytest.approx(0.2) and weights[4] == pytest.approx(1.0)
    assert weights[9:] == [2.0, 2.0, 2.0]
    assert model.eval().kl_weight() == 2.0  # evaluation always uses the full beta


def test_conditional_vae_uses_the_label():
    model = VAE(VAEConfig(latent_dim=4, channels=8, num_classes=10)).eval()
    x, y = load_digits("val")
    x, y = x[:8], y[:8]
    z = torch.randn(8, 4)
    assert not torch.allclose(model.decode(z, y), model.decode(z, (y + 1) % 10))
    assert not torch.allclose(model.encode(x, y)[0], model.encode(x, (y + 1) % 10)[0])
    assert torch.isfinite(model.loss(x, y))
    assert model.sample(5, y=3).shape == (5, 1, 8, 8)
    with pytest.raises(ValueError, match="needs labels"):
        model.loss(x)


def test_sample_draws_from_the_decoder_distribution():
    # with a fixed z, the empirical level frequencies of a pixel match softmax(logits)
    model = VAE(SMALL).eval()
    z = torch.randn(1, 4).expand(10_000, 4)
    xs = model.sample(10_000, z=z)
    assert xs.dtype == torch.int64 and xs.min() >= 0 and xs.max() <= 16
    freq = torch.bincount(xs[:, 0, 2, 2], minlength=17).float() / 10_000
    probs = model.decode(z[:1])[0, :, 2, 2].softmax(0)
    assert torch.allclose(freq, probs, atol=0.02)


def test_active_units_finds_a_collapsed_dimension(digits):
    model = VAE(SMALL).eval()
    with torch.no_grad():
        head = model.encoder.net[-1]  # Linear -> (mu, logvar)
        head.weight[:2] *= 100.0  # dims 0, 1: the mean varies strongly with x
        head.weight[2:4] = 0.0  # dims 2, 3: the mean is the same for every x (collapsed)
    n, var = active_units(model.train(), digits)
    assert n == 2 and (var[2:] < 1e-10).all()
    assert model.training  # the caller's mode is restored


def test_random_model_fails_the_fast_mode_threshold():
    # the chapter's assert (test -ELBO < 106.5 nats) must not pass at random initialisation
    x, _ = load_digits("test")
    model = VAE(reference_config()).eval()
    with torch.no_grad():
        assert -model.elbo(x).mean().item() > 106.5


def test_works_under_autocast_and_rejects_unit_floats(digits):
    model = VAE(SMALL)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.loss(digits)
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    with pytest.raises(ValueError, match="integer levels"):
        model.loss(digits.float() / 16)


# --------------------------------------------------------------------------- the ELBO, by hand
def _large_kl_model() -> VAE:
    """A VAE whose posterior means are far from 0: a KL of tens of nats per image."""
    model = VAE(SMALL).eval()
    with torch.no_grad():
        head = model.encoder.net[-1]  # Linear -> (mu, logvar)
        head.weight[:4] *= 200.0
        head.bias[:4] += 3.0
    return model


def test_elbo_is_reconstruction_minus_kl_on_a_model_with_a_large_kl(digits):
    # catches: rec + kl, reparameterize(logvar, mu), the KL of the wrong distribution
    model = _large_kl_model()
    x = digits[:8]
    with torch.no_grad():
        mu, logvar = model.encode(x)
        q = Normal(mu, (0.5 * logvar).exp())
        kl = kl_divergence(q, Normal(0.0, 1.0)).sum(-1)  # (8,), torch's closed form
        torch.manual_seed(3)
        z = mu + (0.5 * logvar).exp() * torch.randn(mu.shape)  # the reparameterized draw
        logits = model.decode(z).permute(0, 2, 3, 1)  # (8, 8, 8, 17): a categorical per pixel
        rec = Categorical(logits=logits).log_prob(x[:, 0]).sum((1, 2))  # (8,)
        torch.manual_seed(3)
        elbo = model.elbo(x)
        torch.manual_seed(3)
        rec_lib, kl_lib = model.elbo_terms(x)
    assert kl.min() > 20, kl  # large enough that rec + kl and rec - kl are far apart
    torch.testing.assert_close(kl_lib, kl, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(rec_lib, rec, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(elbo, rec - kl, atol=1e-3, rtol=1e-5)


def test_reconstruct_is_the_mode_of_the_decoder_at_the_posterior_mean(digits):
    # catches: a sampled z (or logvar) in place of mu, the argmax over the wrong axis
    model = _large_kl_model()
    x = digits[:8]
    with torch.no_grad():
        mu, _ = model.encode(x)
        want = model.decode(mu).argmax(1, keepdim=True)  # (8, 1, 8, 8)
    got = model.reconstruct(x)
    assert got.dtype == torch.int64 and got.shape == (8, 1, 8, 8)
    assert torch.equal(got, want)
    assert torch.equal(model.reconstruct(x), got)  # deterministic: no sampling
    # a decoder that copies its input back: pin the decoder's logits to the digits themselves
    model.decode = lambda z, y=None: (
        torch.nn.functional.one_hot(x[:, 0], 17).permute(0, 3, 1, 2) * 50.0
    )
    assert torch.equal(model.reconstruct(x), x)


def test_the_encoder_sees_the_levels_on_the_unit_grid_and_they_round_trip(digits):
    model = VAE(SMALL).eval()
    seen = []
    model.encoder.net[0].register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    model.encode(digits)
    torch.testing.assert_close(seen[0], digits.float() / 16, rtol=0, atol=0)
    assert torch.equal(from_unit(seen[0]), digits)  # levels -> [0, 1] -> levels: the identity


# --------------------------------------------------------------------------- the contract
def test_labels_are_checked_where_they_enter():
    model = VAE(VAEConfig(latent_dim=4, channels=8, num_classes=10)).eval()
    x, y = load_digits("val")
    x, y = x[:8], y[:8]
    with pytest.raises(TypeError, match=r"^y must hold integer classes, got dtype torch.float32$"):
        model.loss(x, torch.full((8,), 3.7))  # used to be truncated to 3
    with pytest.raises(
        ValueError, match=r"^y must hold classes in \[0, 10\), got values in \[0, 10\]$"
    ):
        model.log_prob(x, torch.tensor([0, 1, 2, 3, 4, 5, 6, 10]), k=2)
    with pytest.raises(
        TypeError, match=r"^y must be an int or an \(n,\) integer tensor of classes"
    ):
        model.sample(4, y=3.7)
    with pytest.raises(ValueError, match=r"^y must have shape \(4,\), one class per item"):
        model.sample(4, y=y)
    unconditional = VAE(SMALL)
    with pytest.raises(ValueError, match=r"^y was given but this model is unconditional"):
        unconditional.sample(4, y=3)
    with pytest.raises(ValueError, match=r"^y was given but this model is unconditional"):
        unconditional.loss(x, y)


def test_conditional_sample_without_labels_stratifies_the_classes():
    model = VAE(VAEConfig(latent_dim=4, channels=8, num_classes=10)).eval()
    torch.manual_seed(0)
    drawn = model.sample(25, mode=True)
    torch.manual_seed(0)
    assert torch.equal(drawn, model.sample(25, y=torch.arange(25) % 10, mode=True))
    torch.manual_seed(0)
    assert not torch.equal(drawn, model.sample(25, y=torch.zeros(25, dtype=torch.long), mode=True))


def test_sample_zero_and_bad_arguments():
    for config in (SMALL, VAEConfig(latent_dim=4, channels=8, num_classes=10)):
        s = VAE(config).sample(0)
        assert s.shape == (0, 1, 8, 8) and s.dtype == torch.int64
    model = VAE(SMALL)
    with pytest.raises(ValueError, match=r"^n must be a non-negative int, got -1$"):
        model.sample(-1)
    with pytest.raises(TypeError, match=r"^n must be a non-negative int, got 2.0 \(float\)$"):
        model.sample(2.0)
    with pytest.raises(ValueError, match=r"^z must be a tensor of shape \(3, 4\), got \(3, 5\)$"):
        model.sample(3, z=torch.zeros(3, 5))
    with pytest.raises(ValueError, match=r"^k must be an int >= 1, got 0$"):
        model.log_prob(load_digits("val")[0][:2], k=0)


def test_log_prob_keeps_gradients_and_loss_is_the_negative_elbo(digits):
    model = VAE(SMALL).eval()
    model.log_prob(digits[:4], k=3).sum().backward()
    assert model.decoder.inp.weight.grad.abs().sum() > 0
    torch.manual_seed(1)
    loss = model.loss(digits)
    torch.manual_seed(1)
    assert torch.equal(loss, -model.elbo(digits).mean())  # beta = 1, eval mode: the -ELBO


def test_digits_of_other_dtypes_give_the_same_loss_and_other_sizes_are_refused(digits):
    model = VAE(SMALL).eval()
    torch.manual_seed(0)
    want = model.loss(digits)
    for dtype in (torch.float32, torch.uint8, torch.int32):  # used to fail in gather
        torch.manual_seed(0)
        assert torch.equal(model.loss(digits.to(dtype)), want)
    with pytest.raises(
        ValueError, match=r"Expected digits of shape \(N, 1, 8, 8\), got \(2, 1, 28, 28\)"
    ):
        model.loss(torch.zeros(2, 1, 28, 28, dtype=torch.long))


# --------------------------------------------------------------------------- kl_decomposition
def _quadrature(mu: torch.Tensor, logvar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """I(x; z_j) and KL(q_agg(z_j) || N(0, 1)) per dim by the trapezoid rule on a fine 1D grid."""
    grid = torch.linspace(-14.0, 14.0, 40_001, dtype=torch.float64)  # (G,)
    mu, sd = mu.double(), (0.5 * logvar.double()).exp()
    comp = Normal(mu[:, :, None], sd[:, :, None]).log_prob(grid).exp()  # (N, D, G) densities
    agg = comp.mean(0)  # (D, G)
    prior = Normal(0.0, 1.0).log_prob(grid).exp()  # (G,)
    tiny = 1e-300  # 0 log 0 = 0
    info = torch.trapezoid(comp * ((comp + tiny).log() - (agg + tiny).log()), grid).mean(0)
    mismatch = torch.trapezoid(agg * ((agg + tiny).log() - prior.log()), grid)
    return info, mismatch


def test_kl_decomposition_matches_quadrature_and_sums_to_the_average_kl():
    torch.manual_seed(3)
    mu = torch.randn(6, 3) * torch.tensor([2.0, 0.3, 0.0])  # spread, little spread, none
    logvar = torch.randn(6, 3) * 0.5 - torch.tensor([2.0, 1.0, 0.5])
    info, mismatch = kl_decomposition(mu, logvar, samples=4000,
                                      generator=torch.Generator().manual_seed(0))  # fmt: skip
    q_info, q_mismatch = _quadrature(mu, logvar)
    assert torch.allclose(info.double(), q_info, atol=0.03), (info, q_info)
    assert torch.allclose(mismatch.double(), q_mismatch, atol=0.03), (mismatch, q_mismatch)
    per_dim_kl = gaussian_kl(mu[..., None], logvar[..., None]).mean(0)  # (D,)
    assert torch.allclose(q_info + q_mismatch, per_dim_kl.double(), atol=1e-4)  # the identity
    assert torch.allclose(info + mismatch, per_dim_kl, atol=0.05)


def test_kl_decomposition_limits():
    # every image has the same posterior: no information, all the KL is the prior mismatch
    mu, logvar = torch.full((5, 2), 0.7), torch.full((5, 2), -1.5)
    info, mismatch = kl_decomposition(mu, logvar, samples=2000)
    assert torch.allclose(info, torch.zeros(2), atol=1e-6)
    assert torch.allclose(mismatch, gaussian_kl(mu[:1, :, None], logvar[:1, :, None])[0],
                          atol=0.05)  # fmt: skip
    # two images whose codes are narrow and far apart: z tells which, I = log 2 nats
    mu, logvar = torch.tensor([[-3.0], [3.0]]), torch.full((2, 1), -6.0)
    info, _ = kl_decomposition(mu, logvar, samples=500)
    assert info.item() == pytest.approx(math.log(2), abs=1e-3)
    # codes that match the prior exactly: q(z_j | x) = N(0, 1) for every x
    info, mismatch = kl_decomposition(torch.zeros(4, 3), torch.zeros(4, 3), samples=10)
    assert torch.allclose(info, torch.zeros(3)) and torch.allclose(mismatch, torch.zeros(3))
    with pytest.raises(ValueError, match=r"mu and logvar must both be \(N, D\)"):
        kl_decomposition(torch.zeros(4), torch.zeros(4))


# --------------------------------------------------------------------------- the MLP control
def test_mlp_vae_is_a_fully_connected_model_with_the_reference_budget(monkeypatch):
    conv, mlp = VAE(reference_config()), VAE(reference_config("mlp"))
    n_conv, n_mlp = (sum(p.numel() for p in m.parameters()) for m in (conv, mlp))
    assert (n_conv, n_mlp) == (153_713, 154_480)  # the numbers reference_config documents
    assert not any(isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)
                   for m in mlp.modules())  # fmt: skip
    # the same recipe for both: train_vae gets identical arguments but for the config
    calls = []
    monkeypatch.setattr("dgm_edu.vae.train_vae", lambda cfg, **kw: calls.append((cfg, kw)))
    train_reference(kind="conv", seed=4)
    train_reference(kind="mlp", seed=4)
    (c_cfg, c_kw), (m_cfg, m_kw) = calls
    assert c_kw == m_kw and c_kw["seed"] == 4
    assert (c_cfg.kind, m_cfg.kind) == ("conv", "mlp")
    same = {k: v for k, v in vars(c_cfg).items() if k not in ("kind", "channels")}
    assert same == {k: v for k, v in vars(m_cfg).items() if k not in ("kind", "channels")}
    with pytest.raises(ValueError, match="kind must be one of"):
        VAEConfig(kind="resnet")


def test_mlp_vae_decoder_is_a_distribution_and_sees_every_pixel(digits):
    model = VAE(VAEConfig(latent_dim=4, channels=16, kind="mlp")).eval()
    with torch.no_grad():
        logits = model.decode(torch.randn(3, 5, 4))  # (..., B, D) -> (..., B, 17, 8, 8)
        assert logits.shape == (3, 5, 17, 8, 8)
        assert torch.allclose(logits.softmax(-3).sum(-3), torch.ones(3, 5, 8, 8), atol=1e-5)
        # the one-sample ELBO is the decoder's log-probability of x at z minus the analytic KL
        torch.manual_seed(1)
        rec, kl = model.elbo_terms(digits)
        torch.manual_seed(1)
        mu, logvar = model.encode(digits)
        z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
        ref = Categorical(logits=model.decode(z).permute(0, 2, 3, 1)).log_prob(digits[:, 0])
        assert torch.allclose(rec, ref.sum((1, 2)), atol=1e-4)
        # a change in one corner pixel moves the code: the first layer sees all 64 pixels
        x2 = digits.clone()
        x2[:, 0, 7, 7] = 16 - x2[:, 0, 7, 7]
        assert not torch.allclose(model.encode(x2)[0], mu)
