"""The few log-densities that several families share, each written once.

    log N(z; μ, σ²) = −½ (log 2π + log σ² + (z − μ)² / σ²)      per coordinate
    log N(z; 0, I)  = −½ (log 2π + z²)                            per coordinate

Reductions are explicit: :func:`normal_log_prob` sums the last dimension (latent vectors);
:func:`standard_normal_log_prob` sums every dimension but the batch (images, points).
"""

from __future__ import annotations

import math

import torch

LOG_2PI = math.log(2 * math.pi)


def sum_except_batch(t: torch.Tensor) -> torch.Tensor:
    """Sum over every dimension but the first: ``(B, ...) -> (B,)``."""
    return t.reshape(t.shape[0], -1).sum(-1)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) of each item of a batch ``(B, ...) -> (B,)``."""
    return sum_except_batch(-0.5 * (z**2 + LOG_2PI))


def normal_log_prob(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; μ, diag exp(logvar)), summed over the last dimension: ``(..., D) -> (...)``."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) / logvar.exp()).sum(-1)


def logmeanexp(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """log (1/K) Σ_k exp(x_k) along ``dim``, computed stably (log-sum-exp − log K)."""
    return torch.logsumexp(x, dim) - math.log(x.shape[dim])
