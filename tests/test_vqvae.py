"""The VQ-VAE family against independent computations: brute-force nearest codes, autograd for
the straight-through estimator, the EMA step in closed form, perplexities of hand-made
histograms, the two-stage bound against the exact log-likelihood of an enumerable model, and
the two-stage recipe resumed after a kill in either stage."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from dgm_edu import train
from dgm_edu.autoregressive import GatedPixelCNN, PixelCNNConfig
from dgm_edu.data import load_digits
from dgm_edu.diffusion import Diffusion, DiffusionConfig
from dgm_edu.latent_diffusion import (
    encode_latents,
    latent_diffusion_bound,
    latent_diffusion_terms,
    train_latent_diffusion,
)
from dgm_edu.vae import VAE, VAEConfig, categorical_log_prob
from dgm_edu.vqvae import (
    VQVAE,
    TwoStage,
    TwoStageConfig,
    VectorQuantizer,
    VQVAEConfig,
    code_histogram,
    perplexity,
    train_reference,
)

X, _ = load_digits("val")


pytestmark = pytest.mark.usefixtures("one_thread")  # bit-identical resumes


def _rows_of(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """For each row of a, whether it is exactly one of the rows of b."""
    return (a[:, None] == b[None]).all(-1).any(1)


# --------------------------------------------------------------------------- the quantizer
@pytest.mark.parametrize("ema", [True, False])
def test_the_quantizer_returns_the_nearest_code(ema):
    torch.manual_seed(0)
    q = VectorQuantizer(7, 3, ema=ema)
    z = torch.randn(5, 4, 3)  # (..., D)
    codes = q.assign(z)
    assert codes.shape == (5, 4) and codes.dtype == torch.long
    e = q.codebook.detach()
    for i, j in itertools.product(range(5), range(4)):  # brute force over every code
        dist = [sum((z[i, j, d] - e[k, d]).item() ** 2 for d in range(3)) for k in range(7)]
        assert codes[i, j].item() == min(range(7), key=dist.__getitem__)
    z_st, codes2, _ = q(z)
    assert torch.equal(codes2, codes)
    torch.testing.assert_close(z_st, e[codes], rtol=0, atol=1e-6)  # the value of z_q


def test_the_straight_through_gradient_is_the_identity_on_the_encoder_side():
    torch.manual_seed(0)
    q = VectorQuantizer(5, 4, ema=False)
    z = torch.randn(6, 4, requires_grad=True)
    upstream = torch.randn(6, 4)
    z_st, codes, losses = q(z)
    (grad,) = torch.autograd.grad((z_st * upstream).sum(), z, retain_graph=True)
    assert torch.equal(grad, upstream)  # ∂z_st/∂z = I: the decoder's gradient, unchanged
    # the commitment loss reaches z only, the codebook loss the codebook only
    e = q.codebook
    g_z, g_e = torch.autograd.grad(losses["commitment"].sum(), (z, e), allow_unused=True)
    torch.testing.assert_close(g_z, 2 * (z - e[codes]).detach())
    assert g_e is None or not g_e.any()
    g_z, g_e = torch.autograd.grad(losses["codebook"].sum(), (z, e), allow_unused=True)
    assert g_z is None or not g_z.any()
    expected = torch.zeros_like(e).index_add_(0, codes, 2 * (e[codes] - z).detach())
    torch.testing.assert_close(g_e, expected)
    torch.testing.assert_close(losses["commitment"], (z - e[codes]).pow(2).sum(1).detach())


def test_the_ema_update_equals_its_closed_form_on_a_fixed_assignment():
    torch.manual_seed(0)
    K, D, gamma, eps = 4, 3, 0.9, 0.5  # a large epsilon: the smoothing shows
    q = VectorQuantizer(K, D, ema=True, decay=gamma, epsilon=eps)
    N0, m0 = q.cluster_size.clone(), q.embed_sum.clone()
    z = torch.randn(6, D)
    codes = torch.tensor([0, 0, 1, 3, 3, 3])  # code 2 unused
    q.ema_update(z, codes)
    n = torch.tensor([2.0, 1.0, 0.0, 3.0])
    s = torch.stack([z[:2].sum(0), z[2], torch.zeros(D), z[3:].sum(0)])
    N = gamma * N0 + (1 - gamma) * n
    m = gamma * m0 + (1 - gamma) * s
    total = N.sum()
    e = m / ((N + eps) / (total + K * eps) * total)[:, None]
    torch.testing.assert_close(q.cluster_size, N)
    torch.testing.assert_close(q.embed_sum, m)
    torch.testing.assert_close(q.codebook, e)
    with pytest.raises(ValueError, match="ema=True"):
        VectorQuantizer(K, D, ema=False).ema_update(z, codes)


def test_perplexity_is_exp_entropy_of_the_histogram():
    assert perplexity(torch.ones(8)) == pytest.approx(8.0)  # uniform: K
    assert perplexity(torch.tensor([0.0, 5.0, 0.0])) == pytest.approx(1.0)  # one code: 1
    counts = torch.tensor([2.0, 1.0, 1.0, 0.0])
    p = [0.5, 0.25, 0.25]
    assert perplexity(counts) == pytest.approx(math.exp(-sum(pi * math.log(pi) for pi in p)))
    codes = torch.tensor([[0, 0], [1, 2]])
    assert torch.equal(code_histogram(codes, 4), counts)


def test_dead_code_restart_revives_an_unused_code():
    torch.manual_seed(0)
    q = VectorQuantizer(3, 2, ema=True, restart_after=2)
    q.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [50.0, 50.0]]))  # code 2: far away
    q.embed_sum.copy_(q.codebook)
    z = torch.randn(10, 2) * 0.3 + torch.tensor([0.5, 0.5])
    q.update(z, q.assign(z))
    assert (q.assign(z) != 2).all()  # one idle update: not yet
    assert q.unused.tolist() == [0, 0, 1]  # the used codes' counters stay at 0
    q.update(z, q.assign(z))
    assert q.unused[2] == 0
    # code 2 now sits on one of the encoder outputs (distance 0 to it), so it is used again
    assert _rows_of(q.codebook[2:3], z).all()
    assert (q.assign(z) == 2).any()


def test_the_first_training_batch_initialises_the_codes_from_the_data():
    torch.manual_seed(0)
    model = VQVAE(VQVAEConfig(num_codes=8, code_dim=4, grid=2, channels=8, ema=False))
    x = X[:16]
    z = model.encode_continuous(x).detach().reshape(-1, 4)  # 64 encoder outputs
    before = model.quantizer.codebook.detach().clone()
    model.eval()
    model.loss(x)  # eval mode: no side effects
    assert not model.quantizer.initialised and torch.equal(model.quantizer.codebook, before)
    assert not _rows_of(before, z).any()
    model.train()
    model.loss(x)
    assert model.quantizer.initialised
    codes = model.quantizer.codebook.detach()
    assert _rows_of(codes, z).all() and len(codes.unique(dim=0)) == 8  # 8 distinct outputs
    model.loss(X[16:32])  # later batches leave the codes to training
    assert torch.equal(model.quantizer.codebook, codes)


# --------------------------------------------------------------------------- the models
def _tiny(grid: int, K: int, seed: int = 0) -> TwoStage:
    torch.manual_seed(seed)
    cfg = TwoStageConfig(
        vqvae=VQVAEConfig(num_codes=K, code_dim=3, grid=grid, channels=8),
        prior_channels=8,
        prior_layers=2,
    )
    model = TwoStage(cfg).eval()
    with torch.no_grad():  # move every weight off its initialisation: a non-trivial prior
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape))
    return model


@pytest.mark.parametrize(("grid", "K"), [(1, 2), (2, 2), (1, 5)])
def test_two_stage_bound_is_below_the_exact_log_likelihood_by_enumeration(grid, K):
    """With few enough code grids (K^{g²}) the exact log p(x) = log Σ_z p(x|z) p(z) is a sum."""
    model = _tiny(grid, K)
    x = X[:12]
    grids = torch.tensor(list(itertools.product(range(K), repeat=grid * grid))).view(
        -1, grid, grid
    )  # every code grid z, (K^{g²}, g, g)
    with torch.no_grad():
        log_pz = model.prior.log_prob(grids[:, None])  # (Z,)
        assert torch.logsumexp(log_pz, 0).item() == pytest.approx(0.0, abs=1e-5)  # normalised
        logits = model.vqvae.decode(grids)  # (Z, 17, 8, 8)
        log_px_z = torch.stack([categorical_log_prob(logits, xi[None]) for xi in x])  # (B, Z)
        exact = torch.logsumexp(log_px_z + log_pz, 1)  # (B,)
        bound = model.log_prob(x)
        z_star = model.vqvae.encode(x)
        idx = torch.stack([(grids == zs).flatten(1).all(1).nonzero()[0, 0] for zs in z_star])
        by_hand = log_px_z[torch.arange(len(x)), idx] + log_pz[idx]
    torch.testing.assert_close(bound, by_hand, rtol=1e-5, atol=1e-4)
    assert (bound <= exact + 1e-5).all()
    assert (exact - bound).max() > 1e-3  # not equal: the other codes carry mass


def test_vqvae_log_prob_is_the_bound_with_a_uniform_prior():
    model = _tiny(2, 3).vqvae
    x = X[:5]
    with torch.no_grad():
        rec = categorical_log_prob(model.decode(model.encode(x)), x)
        assert torch.allclose(model.log_prob(x), rec - 4 * math.log(3))
        grids = torch.tensor(list(itertools.product(range(3), repeat=4))).view(-1, 2, 2)
        logits = model.decode(grids)
        exact = torch.stack(
            [torch.logsumexp(categorical_log_prob(logits, xi[None]), 0) for xi in x]
        ) - 4 * math.log(3)
    assert (model.log_prob(x) <= exact + 1e-5).all()


def test_the_code_prior_is_chapter_5s_pixelcnn_and_normalised_over_code_grids():
    model = _tiny(2, 3)
    assert isinstance(model.prior, GatedPixelCNN)
    assert model.prior.config == PixelCNNConfig(
        height=2, width=2, levels=3, channels=8, num_layers=2, kernel_size=3
    )
    grids = torch.tensor(list(itertools.product(range(3), repeat=4))).view(-1, 1, 2, 2)
    with torch.no_grad():
        total = torch.logsumexp(model.prior.log_prob(grids), 0)
    assert total.item() == pytest.approx(0.0, abs=1e-5)


def test_two_stage_loss_trains_the_prior_only_and_sample_decodes_prior_codes():
    model = _tiny(2, 4).train()
    assert not model.vqvae.training  # frozen: stays in eval mode
    model.loss(X[:8]).backward()
    assert all(p.grad is None for p in model.vqvae.parameters())
    assert all(p.grad is not None for p in model.prior.parameters())
    model.eval()
    torch.manual_seed(3)
    s = model.sample(4)
    torch.manual_seed(3)
    codes = model.prior.sample(4)[:, 0]
    assert torch.equal(s, model.vqvae.sample(4, codes=codes))


def test_vqvae_loss_is_its_terms_and_configs_are_checked():
    torch.manual_seed(0)
    model = VQVAE(VQVAEConfig(num_codes=6, code_dim=4, grid=4, channels=8, ema=False, beta=0.5))
    model.eval()
    x = X[:6]
    t = model.loss_terms(x)
    z, e = t["z"], model.quantizer.codebook
    zq = e[model.encode(x)]
    commit = (z - zq).pow(2).sum(-1).flatten(1).sum(1)
    rec = categorical_log_prob(model.decode(model.encode(x)), x)
    torch.testing.assert_close(t["nll"], -rec)
    torch.testing.assert_close(model.loss(x), (-rec + commit + 0.5 * commit).mean())
    for bad, match in [
        ({"grid": 3}, "grid must be one of"),
        ({"num_codes": 1}, "num_codes must be an int >= 2"),
        ({"decay": 1.0}, r"decay must lie in \[0, 1\)"),
        ({"beta": -1.0}, "beta must be a finite number >= 0"),
    ]:
        with pytest.raises(ValueError, match=match):
            VQVAEConfig(**bad)
    with pytest.raises(ValueError, match="prior_kind must be one of"):
        TwoStageConfig(prior_kind="transformer")
    assert TwoStageConfig(vqvae={"grid": 2}).vqvae == VQVAEConfig(grid=2)  # a manifest's dict
    with pytest.raises(ValueError, match=r"codes must have shape \(B, 4, 4\)"):
        model.decode(torch.zeros(2, 2, 2, dtype=torch.long))


# --------------------------------------------------------------------------- latent diffusion
@pytest.mark.parametrize("d", [2, 16])  # the book's "vae-2d" and its reference "vae"
def test_the_latent_diffusion_bound_is_the_sum_of_its_parts(d):
    torch.manual_seed(0)
    vae = VAE(VAEConfig(latent_dim=d, channels=8)).eval()
    diff = Diffusion(DiffusionConfig(data="toy", channels=16, T=20, dim=d)).eval()
    x = X[:6]
    with torch.no_grad():
        torch.manual_seed(1)
        bound = latent_diffusion_bound(vae, diff, x)
        torch.manual_seed(1)
        t = latent_diffusion_terms(vae, diff, x)
        # the parts again, independently: the same draws, from each family's public face
        torch.manual_seed(1)
        mu, logvar = vae.encode(x)
        z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
        eps1 = torch.randn_like(z)
        rec = categorical_log_prob(vae.decode(z), x)
        var = (0.5 * logvar).exp() ** 2
        log_q = (-0.5 * (math.log(2 * math.pi) + var.log() + (z - mu) ** 2 / var)).sum(1)
        ab1 = diff.abar[1]
        z1 = ab1.sqrt() * z + (1 - ab1).sqrt() * eps1
        _, z0_hat = diff.predict(z1, torch.ones(6, dtype=torch.long))
        b1 = torch.tensor(1e-4)  # beta_1 of the linear schedule (Ho et al.: 1e-4 to 0.02)
        dec = 0.5 * (math.log(2 * math.pi) + b1.log() + (z - z0_hat) ** 2 / b1).sum(1)
        abT = diff.abar[-1]
        kl_T = 0.5 * (abT * z**2 + (1 - abT) - 1 - (1 - abT).log()).sum(1)
    torch.testing.assert_close(t["z"], z)
    torch.testing.assert_close(t["reconstruction"], rec)
    torch.testing.assert_close(t["entropy"], -log_q)
    torch.testing.assert_close(t["decoder"], dec)
    torch.testing.assert_close(t["prior_T"], kl_T)
    parts = t["reconstruction"] + t["entropy"] - t["prior_T"] - t["diffusion"] - t["decoder"]
    torch.testing.assert_close(bound, parts)
    assert (t["diffusion"] > 0).all() and torch.isfinite(bound).all()
    torch.manual_seed(1)
    two = latent_diffusion_bound(vae, diff, x, draws=2)
    torch.manual_seed(1)
    one_a, one_b = latent_diffusion_bound(vae, diff, x), latent_diffusion_bound(vae, diff, x)
    torch.testing.assert_close(two, (one_a + one_b) / 2)
    # the second stage's data: draws from q(z | x), the reparameterised Gaussian
    g = torch.Generator().manual_seed(5)
    zs = encode_latents(vae, x, draws=3, generator=g)
    mu, logvar = vae.encode(x)
    eps = torch.randn((3, 6, d), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(zs, (mu + (0.5 * logvar).exp() * eps).reshape(18, d).detach())
    other = 18 - d  # a VAE of another latent dimension is refused, with the fix in the message
    with pytest.raises(ValueError, match=rf"latent dimension \({other},\).*dim={other}"):
        latent_diffusion_bound(VAE(VAEConfig(latent_dim=other, channels=8)), diff, x)


def test_the_latent_recipe_builds_its_diffusion_in_the_vaes_latent_dimension():
    # the default config follows the VAE's latent_dim; a config of another dim is refused
    # before any training, with the fix in the message
    torch.manual_seed(0)
    vae = VAE(VAEConfig(latent_dim=16, channels=8)).eval()
    with pytest.raises(ValueError, match=r"latent dimension \(16,\), got \(2,\).*dim=16"):
        train_latent_diffusion(vae, config=DiffusionConfig(data="toy", T=20), epochs=1)
    model, hist = train_latent_diffusion(vae, draws=1, epochs=1, progress=False)
    assert model.config == DiffusionConfig(data="toy", channels=96, dim=16)
    assert hist.epochs_run == 1 and math.isfinite(hist.val_loss[-1])


# --------------------------------------------------------------------------- the recipe
TINY = TwoStageConfig(
    vqvae=VQVAEConfig(num_codes=8, code_dim=4, grid=4, channels=8, restart_after=5),
    prior_channels=8,
    prior_layers=2,
)


def _run(ckpt, monkeypatch=None, kill_at: int | None = None):
    """The recipe (2 + 2 epochs); ``kill_at``: interrupt the run in its kill_at-th epoch."""
    if kill_at is not None:
        real, calls = train._train_epoch, []

        def killed(*args, **kwargs):
            calls.append(1)
            if len(calls) == kill_at:
                raise KeyboardInterrupt  # as a Ctrl-C mid-epoch: the last checkpoint stays
            return real(*args, **kwargs)

        monkeypatch.setattr(train, "_train_epoch", killed)
        with pytest.raises(KeyboardInterrupt):
            train_reference(checkpoint=ckpt, progress=False, config=TINY, epochs=(2, 2))
        monkeypatch.setattr(train, "_train_epoch", real)
    return train_reference(checkpoint=ckpt, progress=False, config=TINY, epochs=(2, 2))


def _same(a, b) -> None:
    assert [s for s, _, _ in a] == [s for s, _, _ in b] == [2, 4]
    for (_, ma, ha), (_, mb, hb) in zip(a, b, strict=True):
        assert type(ma) is type(mb)
        for (k, va), vb in zip(ma.state_dict().items(), mb.state_dict().values(), strict=True):
            assert torch.equal(va, vb), k
        assert ha.train_loss == hb.train_loss and ha.val_loss == hb.val_loss


@pytest.mark.parametrize("kill_at", [2, 4], ids=["in-stage-1", "in-stage-2"])
def test_a_run_killed_in_either_stage_resumes_bit_identical(kill_at, tmp_path, monkeypatch):
    reference = _run(None)
    resumed = _run(tmp_path / "vq.pt", monkeypatch, kill_at)
    assert (tmp_path / "vq-ae.pt").exists() and (tmp_path / "vq-prior.pt").exists()
    _same(reference, resumed)
    assert isinstance(resumed[0][1], VQVAE) and isinstance(resumed[1][1], TwoStage)
    # the stage-2 model carries the stage-1 autoencoder unchanged
    for k, v in resumed[0][1].state_dict().items():
        assert torch.equal(v, resumed[1][1].vqvae.state_dict()[k]), k


def test_the_registry_entry_names_the_recipe_s_stages():
    """``weights.obtain_stages("vqvae")``: "vqvae@60" is the autoencoder, "vqvae" the two-stage
    model; the stops are the recipe's cumulative full-mode epochs."""
    from dgm_edu import weights
    from dgm_edu.vqvae import FULL_EPOCHS

    rec = weights.recipe("vqvae")
    assert rec.stages == (FULL_EPOCHS[0], sum(FULL_EPOCHS))
    assert rec.chapter == "09_discrete_latents"


def test_the_shipped_two_stage_models_reproduce_their_manifest_figures():
    """The manifest's test figures of "vqvae" (deterministic) and "latent-diffusion" (fixed
    seeds, 64 draws), measured again from the shipped weights; and the latent prior is fitted to
    the shipped "vae": its bound must beat the same network at random initialisation."""
    from dgm_edu import weights
    from dgm_edu.latent_diffusion import digits_figures as latent_figures
    from dgm_edu.vqvae import digits_figures

    got = digits_figures(weights.load("vqvae"))
    want = weights.entry("vqvae")["figures"]
    for key in ("test_nll_nats", "test_distortion_nats", "test_rate_nats", "perplexity"):
        assert got[key] == pytest.approx(want[key], abs=2e-3), key
    vae, prior = weights.load("vae"), weights.load("latent-diffusion")
    got = latent_figures(vae, prior)
    want = weights.entry("latent-diffusion")["figures"]
    assert got["test_nll_nats"] == pytest.approx(want["test_nll_nats"], abs=2e-3)
    assert got["test_gaussian_prior_nll_nats"] == pytest.approx(
        want["test_gaussian_prior_nll_nats"], abs=2e-3
    )
    # an independent check of the VAE half: the manifest's ELBO figure of "vae" is an IWAE-1000
    # bound, which must lie below (better than) the ELBO with the same prior
    assert weights.entry("vae")["figures"]["test_nll_nats"] < got["test_gaussian_prior_nll_nats"]
    torch.manual_seed(0)
    random_prior = Diffusion(prior.config).eval()
    worse = latent_figures(vae, random_prior, full=False)
    assert "test_nll_nats" not in worse and worse["check_nll_nats"] > got["test_nll_nats"] + 20


def test_the_latent_diffusion_pair_wears_the_family_face():
    """LatentDiffusion.log_prob is the bound averaged over its draws (same seed, same numbers),
    sample draws z by the prior's DDIM (or ancestral) sampler and decodes them with the VAE."""
    from dgm_edu.latent_diffusion import LatentDiffusion

    torch.manual_seed(0)
    vae = VAE(VAEConfig(latent_dim=3, channels=8)).eval()
    prior = Diffusion(DiffusionConfig(data="toy", dim=3, channels=8, T=20)).eval()
    pair = LatentDiffusion(vae, prior, draws=3, steps=5)
    x = X[:6]
    torch.manual_seed(1)
    got = pair.log_prob(x)
    torch.manual_seed(1)
    want = latent_diffusion_bound(vae, prior, x, draws=3)
    torch.testing.assert_close(got, want)
    torch.manual_seed(2)
    s = pair.sample(4)
    torch.manual_seed(2)
    z = prior.ddim_sample(4, steps=5, eta=0.0)
    torch.testing.assert_close(s, vae.sample(4, z=z.float()))
    torch.manual_seed(3)
    s = LatentDiffusion(vae, prior, steps=None).sample(4)
    torch.manual_seed(3)
    torch.testing.assert_close(s, vae.sample(4, z=prior.sample(4).float()))
    with pytest.raises(ValueError, match=r"latent dimension \(3,\)"):
        LatentDiffusion(vae, Diffusion(DiffusionConfig(data="toy", channels=8, T=20)))
    with pytest.raises(ValueError, match="draws"):
        LatentDiffusion(vae, prior, draws=0)
