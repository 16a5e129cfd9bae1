r"""Metrics shared by every chapter.

Nats per image and bits per dimension
-------------------------------------
A model's log-likelihood of one 8x8 image, :math:`\log p(x)`, is measured in nats (natural log).
The negative log-likelihood (NLL) per image is :math:`-\log p(x)`. Dividing by the number of
dimensions D = 64 and by ln 2 gives bits per dimension:

.. math:: \mathrm{bpd} = \frac{-\log p(x)}{D \ln 2}.

The uniform distribution over 17 levels costs 64 ln 17 = 181.3 nats per image, i.e. log2 17 = 4.09
bits per dimension; every model in the book should beat it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from dgm_edu.data import NUM_PIXELS, RING_STD, ring_centres


def nats_to_bpd(nats_per_image: float, dims: int = NUM_PIXELS) -> float:
    """NLL in nats per image -> bits per dimension."""
    return nats_per_image / (dims * math.log(2))


def bpd_to_nats(bpd: float, dims: int = NUM_PIXELS) -> float:
    """Bits per dimension -> NLL in nats per image."""
    return bpd * dims * math.log(2)


@torch.no_grad()
def evaluate_nll(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    batch_size: int = 256,
) -> float:
    """Mean of ``-log_prob(x)`` over ``images``, in nats per image.

    ``model`` is a model with ``log_prob`` (or a function that returns per-image log-probs).
    The images are moved to the model's device batch by batch.
    """
    log_prob = model.log_prob if hasattr(model, "log_prob") else model
    device = _device_of(model)
    was_training = getattr(model, "training", False)
    if isinstance(model, nn.Module):
        model.eval()
    total = 0.0
    for i in range(0, len(images), batch_size):
        total += -log_prob(images[i : i + batch_size].to(device)).double().sum().item()
    if isinstance(model, nn.Module):
        model.train(was_training)
    return total / len(images)


def _device_of(model: object) -> torch.device:
    if isinstance(model, nn.Module):
        for t in list(model.parameters()) + list(model.buffers()):
            return t.device
    return torch.device("cpu")


def mode_coverage(
    samples: torch.Tensor,
    centres: torch.Tensor | None = None,
    std: float = RING_STD,
    num_std: float = 3.0,
    min_count: int = 1,
) -> tuple[int, float]:
    """Count the modes that a 2D sample covers.

    Each sample is assigned to its nearest centre; it is *high quality* when it lies within
    ``num_std`` standard deviations of that centre. A mode is covered when at least ``min_count``
    high-quality samples land on it. Returns ``(modes_covered, fraction_high_quality)``.
    """
    centres = ring_centres() if centres is None else centres
    d = torch.cdist(samples.float(), centres.float())  # (N, K)
    dist, nearest = d.min(dim=1)
    good = dist <= num_std * std
    counts = torch.bincount(nearest[good], minlength=len(centres))
    return int((counts >= min_count).sum()), float(good.float().mean())


def nearest_neighbours(
    queries: torch.Tensor, reference: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distance from each query image to its nearest reference image, and its index.

    Images are compared as flat vectors of their levels. Returns ``(distances (N,), index (N,))``.
    """
    q = queries.flatten(1).float()
    r = reference.flatten(1).float()
    dist, idx = torch.cdist(q, r).min(dim=1)
    return dist, idx
