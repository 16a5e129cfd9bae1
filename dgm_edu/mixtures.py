"""The introduction's models: baselines and mixtures, the first models to wear the library's face.

- :class:`UniformPixels`: every one of the 17^64 images equally likely (64 ln 17 = 181.3 nats).
- :class:`PixelMixture`: a mixture of K products of per-pixel categoricals. With K = 1 it is the
  independent-pixel baseline, which also has a closed-form maximum-likelihood fit (counting).
- :class:`GaussianMixture`: a diagonal Gaussian mixture for the 2D toys, fitted by gradient ascent
  or by expectation-maximisation (:meth:`GaussianMixture.em_step`).
- :class:`TrainingSetLookup`: a mixture of N jitter kernels, one on each training image: the
  model that copies (chapter 10), fitted by storing its images.

Every model exposes ``log_prob(x)`` and ``sample(n)``, and all but the lookup a ``loss(x)``, and
follows the library's contract (:mod:`dgm_edu.checks`): all are unconditional, so a label ``y``
is refused; ``log_prob`` keeps gradients; ``loss`` is the NLL, the same in train and eval mode,
with no side effects; ``sample(0)`` returns an empty batch. The digit models take square images
of any size their config names (8x8 by default, 28x28 MNIST with ``num_pixels=784``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dgm_edu import checks
from dgm_edu.data import (
    IMAGE_SHAPE,
    LEVELS,
    NUM_PIXELS,
    digits_loader,
    square_image_shape,
    validate_digits,
)
from dgm_edu.densities import normal_log_prob
from dgm_edu.runtime import budget, module_device, seed_everything
from dgm_edu.train import History, fit


class UniformPixels(nn.Module):
    """The uniform distribution over L-level images of D pixels: log p(x) = -D ln L
    (8x8 digits: -64 ln 17 = -181.3 nats)."""

    def __init__(self, shape: tuple[int, int, int] = IMAGE_SHAPE, levels: int = LEVELS) -> None:
        super().__init__()
        self.shape, self.levels = tuple(shape), levels
        # a model without parameters: an empty buffer, so that .to(device) moves the model and
        # module_device (the one way to find a model's device) tells sample() where to draw
        self.register_buffer("_device_anchor", torch.empty(0), persistent=False)

    def log_prob(self, x: torch.Tensor, y: None = None) -> torch.Tensor:
        """log p(x) = -D ln L for every image: ``(N,)`` nats."""
        x = validate_digits(x, self.shape, self.levels)
        checks.labels(y, len(x), 0)
        log_p = -math.prod(self.shape) * math.log(self.levels)  # -D ln L
        return torch.full((x.shape[0],), log_p, device=x.device)

    @torch.no_grad()
    def sample(self, n: int, *, y: None = None) -> torch.Tensor:
        """``(n, *shape)`` int64 levels, each pixel uniform on 0..L-1."""
        n = checks.count(n)
        checks.labels(y, n, 0)
        x = torch.randint(0, self.levels, (n, *self.shape), device=module_device(self))
        return checks.levels_out(x, self.levels)


@dataclass
class PixelMixtureConfig:
    num_components: int = 1  # K; K = 1 is the independent-pixel model
    num_pixels: int = NUM_PIXELS  # D of square images: 64 (8x8 digits), 784 (28x28 MNIST)
    levels: int = LEVELS

    def __post_init__(self) -> None:
        square_image_shape(self.num_pixels)  # refuses a pixel count that is not s * s

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """The shape of the digits the model takes: ``(1, s, s)`` with s² = ``num_pixels``."""
        return square_image_shape(self.num_pixels)


class PixelMixture(nn.Module):
    """p(x) = Σ_k π_k Π_d Cat(x_d; θ_{k,d}), fitted by gradient ascent on the log-likelihood."""

    def __init__(self, config: PixelMixtureConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or PixelMixtureConfig()
        self.mix_logits = nn.Parameter(torch.zeros(c.num_components))  # (K,)
        # small random logits break the symmetry between components
        self.pixel_logits = nn.Parameter(
            0.1 * torch.randn(c.num_components, c.num_pixels, c.levels)
        )

    @classmethod
    def fit_counts(cls, x: torch.Tensor, alpha: float = 1.0) -> PixelMixture:
        """Closed-form MLE of the independent-pixel model (K=1) of 8x8 digits, with add-alpha
        smoothing: θ_{d,v} = (#{x_d = v} + α) / (N + 17 α)."""
        x = validate_digits(x).flatten(1)  # (N, 64)
        alpha = checks.real(alpha, "alpha", nonnegative=True)
        counts = F.one_hot(x, LEVELS).sum(0).double()  # (64, 17)
        probs = (counts + alpha) / (x.shape[0] + LEVELS * alpha)
        model = cls(PixelMixtureConfig(num_components=1))
        with torch.no_grad():
            model.pixel_logits.copy_(probs.log().float().unsqueeze(0))
        return model

    def _levels(self, x: torch.Tensor) -> torch.Tensor:
        """Raw digits ``(N, 1, s, s)`` -> their checked int64 levels, flat: ``(N, D)``."""
        c = self.config
        return validate_digits(x, c.image_shape, c.levels).flatten(1)

    def component_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x | k) for every component: ``(N, K)``."""
        x = self._levels(x)  # (N, D)
        log_theta = self.pixel_logits.log_softmax(-1)  # (K, D, L)
        onehot = F.one_hot(x, self.config.levels).to(log_theta.dtype)  # (N, D, L)
        # log p(x|k) = sum_d log theta_{k,d,x_d}
        return torch.einsum("ndl,kdl->nk", onehot, log_theta)

    def log_prob(self, x: torch.Tensor, y: None = None) -> torch.Tensor:
        """log p(x) = log Σ_k π_k p(x | k) in nats per image: ``(N,)``."""
        log_p_k = self.component_log_probs(x)  # (N, K)
        checks.labels(y, len(log_p_k), 0)
        log_pi = self.mix_logits.log_softmax(0)  # (K,)
        return torch.logsumexp(log_pi + log_p_k, dim=1)

    def loss(self, x: torch.Tensor, y: None = None) -> torch.Tensor:
        """Negative log-likelihood, nats per image, averaged over the batch (the same in train
        and eval mode; no side effects)."""
        return -self.log_prob(x, y).mean()

    @torch.no_grad()
    def sample(self, n: int, *, y: None = None) -> torch.Tensor:
        """``(n, 1, s, s)`` int64: pick a component, then every pixel independently."""
        n = checks.count(n)
        checks.labels(y, n, 0)
        c = self.config
        if n == 0:
            return torch.zeros(0, *c.image_shape, dtype=torch.long, device=module_device(self))
        k = torch.multinomial(self.mix_logits.softmax(0), n, replacement=True)  # (n,)
        probs = self.pixel_logits.softmax(-1)[k]  # (n, D, L)
        pixels = torch.multinomial(probs.flatten(0, 1), 1).view(n, -1)  # (n, D)
        return checks.levels_out(pixels.view(n, *c.image_shape), c.levels)


@dataclass
class GaussianMixtureConfig:
    num_components: int = 8
    dim: int = 2
    init_scale: float = 2.0  # spread of the initial means


class GaussianMixture(nn.Module):
    """p(x) = Σ_k π_k N(x; μ_k, diag σ_k²), for the 2D toys."""

    def __init__(self, config: GaussianMixtureConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or GaussianMixtureConfig()
        self.mix_logits = nn.Parameter(torch.zeros(c.num_components))  # (K,)
        self.means = nn.Parameter(c.init_scale * torch.randn(c.num_components, c.dim))  # (K, D)
        self.log_stds = nn.Parameter(torch.zeros(c.num_components, c.dim))  # (K, D)

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Place the means on K distinct random data points (a standard, robust start)."""
        x = checks.points(x, self.config.dim)
        k = self.config.num_components
        if len(x) < k:
            raise ValueError(f"points must hold at least num_components = {k} points, got {len(x)}")
        idx = torch.randperm(len(x), generator=generator)[:k]
        self.means.copy_(x[idx])

    def log_prob(self, x: torch.Tensor, y: None = None) -> torch.Tensor:
        """log p(x) = log Σ_k π_k N(x; μ_k, diag σ_k²) of points ``(N, D)``: ``(N,)`` nats."""
        x = checks.points(x, self.config.dim)
        checks.labels(y, len(x), 0)
        # log N(x; μ_k, diag σ_k²), log σ² = 2 log σ: (N, 1, D) against (K, D) -> (N, K)
        log_normal = normal_log_prob(x[:, None, :], self.means, 2 * self.log_stds)
        return torch.logsumexp(self.mix_logits.log_softmax(0) + log_normal, dim=1)  # (N,)

    def loss(self, x: torch.Tensor, y: None = None) -> torch.Tensor:
        """Negative log-likelihood per point, averaged (train and eval mode alike)."""
        return -self.log_prob(x, y).mean()

    @torch.no_grad()
    def em_step(self, x: torch.Tensor, min_std: float = 1e-3) -> float:
        """One expectation-maximisation step on points ``(N, D)``, in place (Dempster et al., 1977).

        E-step: responsibilities r_nk = π_k N(x_n; μ_k, σ_k²) / Σ_j π_j N(x_n; μ_j, σ_j²).
        M-step: with N_k = Σ_n r_nk, π_k = N_k / N, μ_k = Σ_n r_nk x_n / N_k and
        σ_kd² = Σ_n r_nk (x_nd − μ_kd)² / N_k, floored at ``min_std``². Returns the mean
        log-likelihood of ``x`` under the parameters *before* the step; it never decreases from
        one step to the next (up to the floor and rounding), which is how convergence is seen.
        """
        x = checks.points(x, self.config.dim)
        min_std = checks.real(min_std, "min_std", positive=True)
        log_normal = normal_log_prob(x[:, None, :], self.means, 2 * self.log_stds)  # (N, K)
        log_joint = self.mix_logits.log_softmax(0) + log_normal  # log π_k N(x_n | k): (N, K)
        log_px = torch.logsumexp(log_joint, dim=1, keepdim=True)  # (N, 1)
        r = (log_joint - log_px).exp()  # responsibilities (N, K), rows sum to 1
        n_k = r.sum(0).clamp_min(1e-12)  # (K,)
        means = (r.T @ x) / n_k[:, None]  # (K, D)
        var = (r.T @ x**2) / n_k[:, None] - means**2  # E_r[x²] − μ²: (K, D)
        self.mix_logits.copy_((n_k / len(x)).log())  # log π_k (already normalised)
        self.means.copy_(means)
        self.log_stds.copy_(0.5 * var.clamp_min(min_std**2).log())
        return float(log_px.mean())

    @torch.no_grad()
    def sample(self, n: int, *, y: None = None) -> torch.Tensor:
        """``(n, D)`` points: pick a component k ~ π, then x = μ_k + σ_k ε, ε ~ N(0, I)."""
        n = checks.count(n)
        checks.labels(y, n, 0)
        if n == 0:
            return torch.zeros(0, self.config.dim, device=module_device(self))
        k = torch.multinomial(self.mix_logits.softmax(0), n, replacement=True)  # (n,)
        eps = torch.randn(n, self.config.dim, device=module_device(self))
        return checks.finite(self.means[k] + self.log_stds.exp()[k] * eps, "the samples")


class TrainingSetLookup(nn.Module):
    """Pick a stored training image, jitter each pixel: a Parzen window on the grey levels.

        p(x) = (1/N) Σ_n Π_d k_τ(x_d | c_nd),   k_τ(v | c) = e^{−|v − c|/τ} / Σ_v' e^{−|v' − c|/τ},

    a mixture of N equally weighted components, one product of discrete kernels centred on each
    training image c_n (Parzen, 1962). It is the model that copies: with a narrow kernel (small
    ``tau``) its samples are near-copies of the training images, so they look perfect and score
    near the floor of FID, while a new digit, far from every stored one in some pixels, pays for
    it in log-likelihood (chapter 10).

    ``images`` are raw digits ``(N, C, H, W)``, stored as the buffer ``centres``; ``tau`` > 0 is
    the kernel's width in levels. There is no ``loss``: the model is fitted by storing the images,
    and ``tau`` is chosen on held-out data (on its own training images the likelihood grows
    without bound as τ → 0, each image being its own component).
    """

    def __init__(self, images: torch.Tensor, tau: float = 0.7, *, levels: int = LEVELS) -> None:
        super().__init__()
        self.tau = checks.real(tau, "tau", positive=True)
        self.levels = checks.integer(levels, "levels", low=2)
        ok = isinstance(images, torch.Tensor) and images.dim() == 4
        self.shape = tuple(images.shape[1:]) if ok else IMAGE_SHAPE  # (C, H, W)
        centres = validate_digits(images, self.shape, self.levels)  # (N, C, H, W) int64
        # created on the default device (a meta-device build stays there), then filled
        self.register_buffer("centres", torch.empty(centres.shape, dtype=torch.long))
        self.centres.copy_(centres)

    def kernel_log_table(self) -> torch.Tensor:
        """log k_τ(v | c) for every centre level c (row) and level v (column): ``(L, L)``, each
        row normalised over v."""
        v = torch.arange(self.levels, dtype=torch.float32, device=module_device(self))
        return (-(v[None, :] - v[:, None]).abs() / self.tau).log_softmax(1)  # row c: −|v − c|/τ

    def log_prob(self, x: torch.Tensor, y: None = None) -> torch.Tensor:
        """log p(x) = logsumexp_n Σ_d log k_τ(x_d | c_nd) − log N, nats per image: ``(M,)``."""
        x = validate_digits(x, self.shape, self.levels).flatten(1)  # (M, D)
        checks.labels(y, len(x), 0)
        table = self.kernel_log_table()[self.centres.flatten(1)]  # (N, D, L): log k(· | c_nd)
        onehot = F.one_hot(x, self.levels).to(table.dtype)  # (M, D, L)
        per_centre = torch.einsum("mdl,ndl->mn", onehot, table)  # (M, N): Σ_d log k(x_d | c_nd)
        return torch.logsumexp(per_centre, dim=1) - math.log(len(self.centres))

    @torch.no_grad()
    def sample(self, n: int, *, y: None = None) -> torch.Tensor:
        """``(n, C, H, W)`` int64: pick a training image uniformly, then draw every pixel from
        the kernel centred on its level."""
        n = checks.count(n)
        checks.labels(y, n, 0)
        device = module_device(self)
        if n == 0:
            return torch.zeros(0, *self.shape, dtype=torch.long, device=device)
        pick = torch.randint(len(self.centres), (n,), device=device)  # the component of each
        probs = self.kernel_log_table().exp()[self.centres[pick].flatten(1)]  # (n, D, L)
        pixels = torch.multinomial(probs.flatten(0, 1), 1).view(n, *self.shape)
        return checks.levels_out(pixels, self.levels)


def train_reference(
    *, checkpoint: str | Path | None = None, progress: bool = True, seed: int = 0
) -> tuple[PixelMixture, History]:
    """The introduction's reference model: a 20-component pixel mixture fitted by gradient ascent
    on the log-likelihood (Adam on the train split, early stopping on the validation split)."""
    seed_everything(seed)
    model = PixelMixture(PixelMixtureConfig(num_components=20))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    history = fit(
        model,
        optimizer,
        digits_loader("train", batch_size=100),
        digits_loader("val", 350),
        epochs=budget(fast=25, full=100),
        patience=10,
        checkpoint=checkpoint,
        progress=progress,
        seed=seed,
        desc="pixel mixture",
    )
    return model, history
