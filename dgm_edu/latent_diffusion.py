"""Latent diffusion: chapter 7's diffusion model as the prior of chapter 3's VAE.

A VAE's Gaussian prior p(z) = N(0, I) rarely matches the aggregate posterior, the codes the
encoder actually uses; a diffusion model fitted to those codes replaces it (Vahdat et al. 2021;
Rombach et al. 2022 train it on the latents of a frozen autoencoder, as here). The model is
p(x, z) = p_diff(z) p(x | z), and with the VAE's encoder q(z | x) as the proposal,

    log p(x) ≥ E_q[log p(x | z) − log q(z | x) + log p_diff(z)],

where log p_diff(z) is itself bounded by the diffusion's variational bound on CONTINUOUS data,

    −log p_diff(z) ≤ KL(q(z_T | z) ‖ N(0, I)) + Σ_{t=2}^T L_{t−1} + L_0,
    L_0 = −log N(z; ẑ_0(z_1), β_1 I),

(chapter 7's L_0 integrates over the bin of a grey level; a latent has no bins). Substituting
gives one lower bound on log p(x) of the discrete digits, in nats, comparable with the VAE's.

The families are used through their public faces only: :class:`~dgm_edu.vae.VAE` (``encode``,
``decode``) and :class:`~dgm_edu.diffusion.Diffusion` (``q_sample``, ``predict``,
``prior_term``, ``diffusion_term``). The VAE may have any ``latent_dim`` = D: the diffusion is
chapter 7's point model on points of R^D, ``DiffusionConfig(data="toy", dim=D)`` (the book's
reference VAE "vae" has D = 16, its "vae-2d" D = 2).

- :func:`latent_diffusion_terms`, :func:`latent_diffusion_bound`: the bound, term by term.
- :func:`encode_latents`, :func:`train_latent_diffusion`: the second stage's data and recipe.
- :func:`digits_figures`: the test bound of the pair, for the reference weights' manifest.
- :class:`LatentDiffusion`: the pair with the library's face (``log_prob``, ``sample``), as the
  benchmark scores it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dgm_edu import checks
from dgm_edu.data import IMAGE_SHAPE, load_digits, validate_digits
from dgm_edu.densities import normal_log_prob
from dgm_edu.diffusion import Diffusion, DiffusionConfig
from dgm_edu.runtime import budget, module_device, seed_everything
from dgm_edu.train import History, fit_toy
from dgm_edu.vae import VAE, categorical_log_prob, reparameterize


def _check_pair(vae: VAE, diffusion: nn.Module) -> None:
    d = vae.config.latent_dim
    shape = tuple(getattr(diffusion, "shape", ()))
    if shape != (d,):
        raise ValueError(
            f"diffusion must model points of the VAE's latent dimension ({d},), got {shape}: "
            f"build it with DiffusionConfig(data='toy', dim={d})"
        )


def latent_diffusion_terms(vae: VAE, diffusion: Diffusion, x: torch.Tensor) -> dict[str, Any]:
    """The parts of the bound (module doc) with one draw z ~ q(z | x), each (B,), nats:

    ``"reconstruction"`` log p(x | z), ``"entropy"`` −log q(z | x), and the diffusion's three
    costs ``"prior_T"`` KL(q(z_T | z) ‖ N(0, I)), ``"diffusion"`` Σ_{t≥2} L_{t−1} (one
    importance-sampled t, unbiased) and ``"decoder"`` L_0; also ``"z"`` (B, D). Keeps gradients.
    """
    _check_pair(vae, diffusion)
    x = validate_digits(x, IMAGE_SHAPE, vae.config.levels)
    mu, logvar = (t.float() for t in vae.encode(x))  # (B, D) each
    z = reparameterize(mu, logvar)  # (B, D): one draw from q(z | x)
    t1 = torch.ones(len(z), dtype=torch.long, device=z.device)
    z1 = diffusion.q_sample(z, t1, torch.randn_like(z))  # z_1 ~ q(z_1 | z_0)
    _, z0_hat = diffusion.predict(z1, t1)  # the mean of p(z_0 | z_1)
    log_beta1 = diffusion.beta[1].log().expand_as(z)
    return {
        "reconstruction": categorical_log_prob(vae.decode(z), x),  # log p(x | z)
        "entropy": -normal_log_prob(z, mu, logvar),  # −log q(z | x)
        "prior_T": diffusion.prior_term(z),  # KL(q(z_T | z_0) ‖ N(0, I))
        "diffusion": diffusion.diffusion_term(z),  # Σ_{t=2}^T L_{t−1}
        "decoder": -normal_log_prob(z, z0_hat, log_beta1),  # L_0 = −log N(z; ẑ_0, β_1 I)
        "z": z,
    }


def latent_diffusion_bound(
    vae: VAE, diffusion: Diffusion, x: torch.Tensor, draws: int = 1
) -> torch.Tensor:
    """The lower bound on log p(x), nats per image (B,), averaged over ``draws`` one-sample
    estimates: reconstruction + entropy − (prior_T + diffusion + decoder)."""
    draws = checks.integer(draws, "draws", low=1)
    total = 0.0
    for _ in range(draws):
        t = latent_diffusion_terms(vae, diffusion, x)
        total = total + t["reconstruction"] + t["entropy"]
        total = total - (t["prior_T"] + t["diffusion"] + t["decoder"])
    return total / draws


class LatentDiffusion(nn.Module):
    """A frozen VAE with a diffusion prior over its latents, wearing the families' face.

    ``log_prob(x)``: the bound of the module doc, nats per image (B,), averaged over ``draws``
    z ~ q(z | x); ``sample(n)``: z from the prior (DDIM with ``steps`` steps, or ancestral
    sampling with ``steps=None``), then x ~ p(x | z). Both parts are taken as given (the
    reference weights "vae" and "latent-diffusion"); nothing here trains them.
    """

    def __init__(self, vae: VAE, prior: Diffusion, draws: int = 16, steps: int | None = 50) -> None:
        super().__init__()
        _check_pair(vae, prior)
        self.vae, self.prior = vae, prior
        self.draws = checks.integer(draws, "draws", low=1)
        self.steps = None if steps is None else checks.integer(steps, "steps", low=1)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """The lower bound on log p(x), (B,) nats, with ``self.draws`` draws per image."""
        return latent_diffusion_bound(self.vae, self.prior, x, draws=self.draws)

    @torch.no_grad()
    def sample(self, n: int, *, y: torch.Tensor | int | None = None) -> torch.Tensor:
        """n digits (n, 1, 8, 8) int64: z from the diffusion prior, then x ~ p(x | z)."""
        n = checks.count(n)
        checks.labels(y, n, 0)
        if self.steps is None:
            z = self.prior.sample(n)  # ancestral, T steps
        else:
            z = self.prior.ddim_sample(n, steps=self.steps, eta=0.0)  # (n, D)
        return self.vae.sample(n, z=z.float())


@torch.no_grad()
def encode_latents(
    vae: VAE, x: torch.Tensor, draws: int = 1, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``draws`` samples z ~ q(z | x) of each image: the second stage's data, (draws N, D)."""
    draws = checks.integer(draws, "draws", low=1)
    was = vae.training
    vae.eval()
    mu, logvar = (t.float().cpu() for t in vae.encode(x.to(module_device(vae))))
    vae.train(was)
    eps = torch.randn((draws, *mu.shape), generator=generator)
    return (mu + (0.5 * logvar).exp() * eps).reshape(-1, mu.shape[-1])


def train_latent_diffusion(
    vae: VAE,
    *,
    config: DiffusionConfig | None = None,
    draws: int = 16,
    epochs: int | None = None,
    checkpoint: str | Path | None = None,
    progress: bool = True,
    seed: int = 0,
) -> tuple[Diffusion, History]:
    """Fit chapter 7's point diffusion to the frozen VAE's latents of the train split (``draws``
    samples z ~ q(z | x) per image), validated on the val split's (one each); the toy recipe's
    optimiser and cosine schedule. ``config`` defaults to ``DiffusionConfig(data="toy",
    channels=96, dim=D)`` with D the VAE's ``latent_dim`` (width 128 gave the same test bound,
    −93.1 to −93.4 nats, at 1.7x the bytes); a given one must have ``dim=D``."""
    d = vae.config.latent_dim
    config = config or DiffusionConfig(data="toy", channels=96, dim=d)
    _check_pair(vae, Diffusion(dataclasses.replace(config, T=2)))  # cheap: the shape only
    g = seed_everything(seed)
    z_train = encode_latents(vae, load_digits("train")[0], draws, g)  # (draws N, D)
    z_val = encode_latents(vae, load_digits("val")[0], 1, g)  # (N_val, D)
    seed_everything(seed)
    model = Diffusion(config)
    hist = fit_toy(
        model, z_train, val=z_val, epochs=budget(fast=20, full=300) if epochs is None else epochs,
        batch_size=512, lr=3e-3, schedule="cosine", seed=seed, checkpoint=checkpoint,
        progress=progress, desc="latent-diffusion",
    )  # fmt: skip
    return model.eval(), hist


@torch.no_grad()
def digits_figures(vae: VAE, diffusion: Diffusion, full: bool = True) -> dict[str, Any]:
    """Test figures of the pair (fixed seeds): ``test_nll_nats``, the bound with 64 draws
    z ~ q(z | x) per image (only when ``full``), and ``check_nll_nats``, the same with 4 draws
    (cheap: the test suite recomputes it); each beside the same VAE's ELBO with its N(0, I) prior
    on the same number of draws (``*_gaussian_prior_nll_nats``), the comparison the prior is for.
    One draw's diffusion term (one timestep) has a standard deviation of about 33 nats per image,
    so 64 draws of the 447 test images put the mean's standard error near 0.2 nats."""
    from dgm_edu.metrics import nats_to_bpd

    x, _ = load_digits("test")
    vae.eval(), diffusion.eval()
    out: dict[str, Any] = {}
    for key, draws in (("test", 64 if full else 0), ("check", 4)):
        if not draws:
            continue
        seed_everything(0)
        nll = -latent_diffusion_bound(vae, diffusion, x, draws=draws).double().mean().item()
        seed_everything(0)
        elbo = torch.stack([vae.elbo(x) for _ in range(draws)]).double().mean().item()
        out[f"{key}_nll_nats"] = round(nll, 4)
        out[f"{key}_gaussian_prior_nll_nats"] = round(-elbo, 4)
    if full:
        out["test_bpd"] = round(nats_to_bpd(out["test_nll_nats"]), 4)
    out["estimator"] = (
        "bound: the VAE's ELBO with the diffusion's bound on log p(z), 64 draws z ~ q(z|x) per "
        "image (check: 4 draws); upper bound on the NLL"
    )
    return out
