"""The introduction's models: baselines and mixtures, the first models to wear the library's face.

- :class:`UniformPixels`: every one of the 17^64 images equally likely (64 ln 17 = 181.3 nats).
- :class:`PixelMixture`: a mixture of K products of per-pixel categoricals. With K = 1 it is the
  independent-pixel baseline, which also has a closed-form maximum-likelihood fit (counting).
- :class:`GaussianMixture`: a diagonal Gaussian mixture for the 2D toys.

Every model exposes ``loss(x)``, ``log_prob(x)`` and ``sample(n)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dgm_edu.data import LEVELS, NUM_PIXELS, digits_loader, validate_digits
from dgm_edu.runtime import budget, seed_everything
from dgm_edu.train import History, fit


class UniformPixels(nn.Module):
    """The uniform distribution over 17-level 8x8 images: log p(x) = -64 ln 17."""

    def __init__(self) -> None:
        super().__init__()
        # an empty buffer, so that .to(device) tells sample() where to draw
        self.register_buffer("_device_anchor", torch.empty(0), persistent=False)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        x = validate_digits(x)
        return torch.full((x.shape[0],), -NUM_PIXELS * math.log(LEVELS), device=x.device)

    def sample(self, n: int) -> torch.Tensor:
        return torch.randint(0, LEVELS, (n, 1, 8, 8), device=self._device_anchor.device)


@dataclass
class PixelMixtureConfig:
    num_components: int = 1  # K; K = 1 is the independent-pixel model
    num_pixels: int = NUM_PIXELS
    levels: int = LEVELS


class PixelMixture(nn.Module):
    r"""p(x) = \sum_k \pi_k \prod_d \mathrm{Cat}(x_d \mid \theta_{k,d}) (gradient ascent)."""

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
        r"""Closed-form MLE of the independent-pixel model (K=1), with add-alpha smoothing:
        \theta_{d,v} = (\#\{x_d = v\} + \alpha) / (N + 17\alpha)."""
        x = validate_digits(x).flatten(1)  # (N, 64)
        counts = F.one_hot(x, LEVELS).sum(0).double()  # (64, 17)
        probs = (counts + alpha) / (x.shape[0] + LEVELS * alpha)
        model = cls(PixelMixtureConfig(num_components=1))
        with torch.no_grad():
            model.pixel_logits.copy_(probs.log().float().unsqueeze(0))
        return model

    def component_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x | k) for every component: ``(N, K)``."""
        x = validate_digits(x).flatten(1)  # (N, D)
        log_theta = self.pixel_logits.log_softmax(-1)  # (K, D, L)
        onehot = F.one_hot(x, self.config.levels).to(log_theta.dtype)  # (N, D, L)
        # log p(x|k) = sum_d log theta_{k,d,x_d}
        return torch.einsum("ndl,kdl->nk", onehot, log_theta)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) in nats per image: ``(N,)``."""
        log_pi = self.mix_logits.log_softmax(0)  # (K,)
        return torch.logsumexp(log_pi + self.component_log_probs(x), dim=1)

    def loss(self, x: torch.Tensor, *_: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood, nats per image, averaged over the batch."""
        return -self.log_prob(x).mean()

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """``(n, 1, 8, 8)`` int64: pick a component, then every pixel independently."""
        k = torch.multinomial(self.mix_logits.softmax(0), n, replacement=True)  # (n,)
        probs = self.pixel_logits.softmax(-1)[k]  # (n, D, L)
        pixels = torch.multinomial(probs.flatten(0, 1), 1).view(n, -1)  # (n, D)
        return pixels.view(n, 1, 8, 8)


@dataclass
class GaussianMixtureConfig:
    num_components: int = 8
    dim: int = 2
    init_scale: float = 2.0  # spread of the initial means


class GaussianMixture(nn.Module):
    r"""p(x) = \sum_k \pi_k \mathcal{N}(x \mid \mu_k, \mathrm{diag}(\sigma_k^2)), for 2D toys."""

    def __init__(self, config: GaussianMixtureConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or GaussianMixtureConfig()
        self.mix_logits = nn.Parameter(torch.zeros(c.num_components))  # (K,)
        self.means = nn.Parameter(c.init_scale * torch.randn(c.num_components, c.dim))  # (K, D)
        self.log_stds = nn.Parameter(torch.zeros(c.num_components, c.dim))  # (K, D)

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Place the means on K distinct random data points (a standard, robust start)."""
        idx = torch.randperm(len(x), generator=generator)[: self.config.num_components]
        self.means.copy_(x[idx])

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.config.dim:
            raise ValueError(
                f"Expected points of shape (N, {self.config.dim}), got {tuple(x.shape)}"
            )
        z = (x[:, None, :] - self.means) / self.log_stds.exp()  # (N, K, D)
        # log N(x | mu, sigma^2) = -1/2 z^2 - log sigma - 1/2 log 2 pi, summed over dimensions
        log_normal = (-0.5 * z**2 - self.log_stds - 0.5 * math.log(2 * math.pi)).sum(-1)  # (N, K)
        return torch.logsumexp(self.mix_logits.log_softmax(0) + log_normal, dim=1)  # (N,)

    def loss(self, x: torch.Tensor, *_: torch.Tensor) -> torch.Tensor:
        return -self.log_prob(x).mean()

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        k = torch.multinomial(self.mix_logits.softmax(0), n, replacement=True)  # (n,)
        eps = torch.randn(n, self.config.dim, device=self.means.device)
        return self.means[k] + self.log_stds.exp()[k] * eps


def train_reference(
    *, checkpoint: str | None = None, progress: bool = True, seed: int = 0
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
