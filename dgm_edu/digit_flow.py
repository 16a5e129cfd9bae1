"""The flow on the 8x8 digits: checkerboard couplings, dequantization, and the book's recipe.

The digits are discrete (17 levels), a flow is a continuous density; dequantization joins the two.
With y = (x + u)/17 ∈ [0, 1)^64 and noise u ~ q(u | x) on [0, 1)^64,

    log P(x) ≥ E_q[log p((x + u)/17) − log q(u | x)] − 64 log 17,

so ``log_prob`` is a lower bound on the DISCRETE log-likelihood, in nats per image, comparable
with every other digits model of the book.

- :class:`ConvNet`, :class:`FlatMLP`: the coupling networks; :func:`coupling_stack` builds the
  checkerboard coupling flow from the layers of :mod:`dgm_edu.flows`.
- :class:`DigitFlow` (:class:`DigitFlowConfig`): uniform or variational dequantization (Ho et
  al., Flow++), logit preprocessing, ``loss``, ``log_prob``, ``sample``.
- :func:`train_reference`: the book's recipe (chapter 6).
"""

from __future__ import annotations

import math
from collections.abc import Callable
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
    dequantization_noise,
    digits_loader,
    quantize,
    to_unit,
    validate_digits,
)
from dgm_edu.densities import standard_normal_log_prob, sum_except_batch
from dgm_edu.flows import ActNorm, AffineCoupling, Flow, checkerboard_mask, zero_init
from dgm_edu.runtime import budget, module_device, seed_everything
from dgm_edu.train import History, fit


# --------------------------------------------------------------------------- coupling networks
def _hidden_layers(make: Callable[[], nn.Module], depth: int, dropout: float) -> list[nn.Module]:
    """What follows a coupling network's first layer: GELU and dropout, then ``depth − 1`` times
    ``make()``, GELU, dropout."""
    layers: list[nn.Module] = [nn.GELU(), nn.Dropout(dropout)]
    for _ in range(depth - 1):
        layers += [make(), nn.GELU(), nn.Dropout(dropout)]
    return layers


@dataclass(frozen=True)
class NetShape:
    """What a coupling network maps: ``in_ch`` maps of ``size`` x ``size`` in, ``out_ch`` out,
    through ``depth`` hidden layers of width ``hidden``."""

    in_ch: int
    hidden: int
    out_ch: int
    depth: int = 2
    size: int = 8
    dropout: float = 0.0


class ConvNet(nn.Module):
    """The coupling network for images: 3x3 convs with GELU, a zero-initialised output conv.

    Convolutions do not know where they are; a learned bias map ``(1, hidden, size, size)`` after
    the first conv tells them (the border pixels of a digit behave nothing like the centre).
    """

    def __init__(self, s: NetShape) -> None:
        super().__init__()
        self.position = nn.Parameter(torch.zeros(1, s.hidden, s.size, s.size))
        self.first = nn.Conv2d(s.in_ch, s.hidden, 3, padding=1)
        conv = lambda: nn.Conv2d(s.hidden, s.hidden, 3, padding=1)  # noqa: E731
        self.net = nn.Sequential(
            *_hidden_layers(conv, s.depth, s.dropout),
            zero_init(nn.Conv2d(s.hidden, s.out_ch, 3, padding=1)),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(self.first(h) + self.position)  # (B, out_ch, size, size)


class FlatMLP(nn.Module):
    """A coupling network that sees the whole image: flatten, MLP, reshape to ``out_ch`` maps."""

    def __init__(self, s: NetShape) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(s.in_ch * s.size * s.size, s.hidden),
            *_hidden_layers(lambda: nn.Linear(s.hidden, s.hidden), s.depth, s.dropout),
            zero_init(nn.Linear(s.hidden, s.out_ch * s.size * s.size)),
            nn.Unflatten(1, (s.out_ch, s.size, s.size)),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)  # (B, out_ch, size, size)


def coupling_stack(
    num_couplings: int,
    hidden: int,
    depth: int,
    cond_ch: int = 0,
    actnorm: bool = True,
    net: str = "conv",
    dropout: float = 0.0,
) -> Flow:
    """Checkerboard couplings on ``(B, 1, 8, 8)``, parity alternating, ActNorm before each.

    ``net`` is ``"conv"`` (3x3 convs, local) or ``"mlp"`` (sees the whole image, cheap on a CPU).
    """
    if net not in ("conv", "mlp"):
        raise ValueError(f"net must be 'conv' or 'mlp', got {net!r}")
    body = ConvNet if net == "conv" else FlatMLP
    layers: list[nn.Module] = []
    for k in range(num_couplings):
        if actnorm:
            layers.append(ActNorm(IMAGE_SHAPE))  # one scale and shift per pixel
        # in: m*x, m, cond; out: s, t
        layers.append(
            AffineCoupling(
                checkerboard_mask(8, 8, k % 2),
                body(NetShape(2 + cond_ch, hidden, 2, depth, dropout=dropout)),
            )
        )
    return Flow(layers)


# --------------------------------------------------------------------------- the digit flow
@dataclass
class DigitFlowConfig:
    dequantization: str = "variational"  # "variational" or "uniform"
    net: str = "conv"  # coupling networks: "conv" (3x3 convs) or "mlp" (sees the whole image)
    num_couplings: int = 8
    hidden: int = 32  # channels (conv) or units (mlp) of each coupling network
    depth: int = 2  # hidden layers per coupling network
    dropout: float = 0.0  # dropout in the main flow's coupling networks (a regulariser)
    deq_couplings: int = 4  # couplings of the variational dequantizer q(u|x)
    deq_hidden: int = 16
    alpha: float = 0.05  # logit preprocessing squashes y into [alpha, 1 - alpha]
    eval_samples: int = 4  # dequantization samples averaged by log_prob

    def __post_init__(self) -> None:
        if self.dequantization not in ("uniform", "variational"):
            raise ValueError(
                f"dequantization must be 'uniform' or 'variational', got {self.dequantization!r}"
            )
        if self.net not in ("conv", "mlp"):
            raise ValueError(f"net must be 'conv' or 'mlp', got {self.net!r}")
        if not 0 < self.alpha < 0.5:
            raise ValueError(f"alpha must lie in (0, 0.5), got {self.alpha}")
        checks.integer(self.eval_samples, "eval_samples", low=1)


class DigitFlow(nn.Module):
    """A checkerboard coupling flow for the 17-level 8x8 digits (this size only: the couplings,
    masks and per-pixel ActNorm are built for (1, 8, 8); other sizes are refused on input).

    Preprocessing (its log-Jacobian is part of the density): y = (x + u)/17 ∈ [0, 1)^64,
    s = logit(α + (1 − 2α) y), z = f(s). The density of y is

        log p(y) = log N(f(s); 0, I) + log abs(det ∂f/∂s) + Σ_i log((1 − 2α) / (p_i (1 − p_i)))

    with p_i = α + (1 − 2α) y_i. Dequantization: ``"uniform"`` draws u ~ U[0, 1)^64 (log q = 0);
    ``"variational"`` draws u = σ(g(ε; x)) with a conditional coupling flow g and ε ~ N(0, I)
    (Ho et al., Flow++).

    Train mode: the first batch initialises the ActNorm layers (once); dropout is active.
    """

    def __init__(self, config: DigitFlowConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or DigitFlowConfig()
        self.flow = coupling_stack(c.num_couplings, c.hidden, c.depth, net=c.net, dropout=c.dropout)
        if c.dequantization == "variational":
            # q(u|x): couplings on noise whose networks also see the image x (1 channel)
            self.deq_flow = coupling_stack(
                c.deq_couplings, c.deq_hidden, 2, cond_ch=1, actnorm=False, net=c.net
            )

    # -- preprocessing
    def _to_logit(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.config.alpha
        p = a + (1 - 2 * a) * y
        s = torch.log(p) - torch.log1p(-p)
        # ds/dy = (1 - 2a) / (p (1 - p))
        logdet = sum_except_batch(math.log(1 - 2 * a) - torch.log(p) - torch.log1p(-p))
        return s, logdet

    def _from_logit(self, s: torch.Tensor) -> torch.Tensor:
        a = self.config.alpha
        return (torch.sigmoid(s) - a) / (1 - 2 * a)

    # -- dequantization
    def dequantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw u ~ q(u | x) on [0, 1)^64 for int64 levels ``x``; return ``(u, log q(u | x))``.

        Variational: log q(u | x) = log N(ε; 0, I) − log abs(det ∂v/∂ε) − Σ_i log σ'(v_i), with
        v = g(ε; x) and u = σ(v).
        """
        dtype = next(self.parameters()).dtype
        if self.config.dequantization == "uniform":
            u = dequantization_noise(x).to(dtype)  # u ~ U[0, 1)^64: log q = 0
            return u, torch.zeros(x.shape[0], dtype=dtype, device=x.device)
        eps = torch.randn(x.shape, dtype=dtype, device=x.device)  # (B, 1, 8, 8)
        cond = to_unit(x).to(dtype) - 0.5  # (B, 1, 8, 8): the image conditions the couplings
        v, logdet = self.deq_flow(eps, cond)
        u = torch.sigmoid(v)
        # log sigma'(v) = log sigma(v) + log sigma(-v)
        log_dsig = sum_except_batch(F.logsigmoid(v) + F.logsigmoid(-v))
        return u, standard_normal_log_prob(eps) - logdet - log_dsig

    def log_density(self, y: torch.Tensor) -> torch.Tensor:
        """Continuous log-density of ``y`` in ``[0,1)^64`` (``(B, 1, 8, 8)`` floats), per image."""
        s, ld_pre = self._to_logit(y)
        z, ld_flow = self.flow(s)
        return standard_normal_log_prob(z) + ld_flow + ld_pre

    def elbo(self, x: torch.Tensor) -> torch.Tensor:
        """One-sample dequantization bound (nats/image) for int64 levels ``x``:
        log p((x + u)/17) − log q(u | x) − 64 log 17, u ~ q(u | x)."""
        u, log_q = self.dequantize(x)
        y = (x.to(u.dtype) + u) / LEVELS  # the dequantized image in [0, 1)^64
        return self.log_density(y) - log_q - NUM_PIXELS * math.log(LEVELS)

    # -- the model face
    def log_prob(self, x: torch.Tensor, num_samples: int | None = None) -> torch.Tensor:
        """Lower bound on the discrete log-likelihood log P(x), nats/image, ``(B,)``:

            log P(x) ≥ E_q(u|x)[log p((x + u)/17) − log q(u | x)] − 64 log 17.

        Estimator: the mean of ``num_samples`` (default ``config.eval_samples``) independent
        one-sample bounds, an unbiased estimate of the bound (not of log P itself). Keeps
        gradients (wrap it in ``torch.no_grad()`` to evaluate).
        """
        x = validate_digits(x)
        k = self.config.eval_samples if num_samples is None else num_samples
        k = checks.integer(k, "num_samples", low=1)
        return torch.stack([self.elbo(x) for _ in range(k)]).mean(0)

    def loss(self, x: torch.Tensor, y: torch.Tensor | int | None = None) -> torch.Tensor:
        """Negative one-sample bound, mean over the batch (nats/image). Unconditional: a ``y`` is
        refused. Train mode: the first batch initialises the ActNorm layers (once)."""
        x = validate_digits(x)
        checks.labels(y, len(x), 0)
        return -self.elbo(x).mean()

    @torch.no_grad()
    def sample(
        self, n: int, *, y: torch.Tensor | int | None = None, temperature: float = 1.0
    ) -> torch.Tensor:
        """Draw ``n`` digits ``(n, 1, 8, 8)`` int64 levels: z ~ N(0, T² I) with T the
        ``temperature`` (finite, > 0), y = f⁻¹(z) through the inverse logit, x = ⌊17 y⌋."""
        n, temperature = checks.count(n), checks.temperature(temperature)
        checks.labels(y, n, 0)
        dtype = next(self.parameters()).dtype
        z = temperature * torch.randn(n, *IMAGE_SHAPE, device=module_device(self), dtype=dtype)
        y01 = checks.finite(self._from_logit(self.flow.inverse(z)), "DigitFlow samples")
        return checks.levels_out(quantize(y01))  # the bin each dequantized value falls in


REFERENCE_SHIFT_PROB = 0.3  # the recipe's augmentation: 30% of the training images moved one pixel
REFERENCE_BATCH_SIZE = 64  # the recipe's training batches: 16 steps per epoch of 1000 images


def reference_ema() -> float:
    """The recipe's Polyak decay d (chapter 5): 0.998 in full mode, a time constant of 500 steps
    (about 31 epochs of 16 batches); 0.9 in fast mode, whose 4 epochs are 64 steps in all."""
    return budget(fast=0.9, full=0.998)


def train_reference(
    *,
    checkpoint: str | Path | None = None,
    progress: bool = True,
    seed: int = 0,
    dequantization: str = "variational",
    shift_prob: float = REFERENCE_SHIFT_PROB,
) -> tuple[DigitFlow, History]:
    """The book's recipe: a DigitFlow with Adam and cosine decay over 240 epochs, each training
    image moved by one pixel with probability ``shift_prob`` (:class:`dgm_edu.data.RandomShifts`;
    0 turns the augmentation off), and an exponential moving average of the weights (decay
    :func:`reference_ema`), which is what is validated, early-stopped (patience 20) and
    returned."""
    seed_everything(seed)
    cfg = budget(
        fast=DigitFlowConfig(
            dequantization=dequantization, num_couplings=4, hidden=16, deq_couplings=2, deq_hidden=8
        ),
        full=DigitFlowConfig(dequantization=dequantization),
    )
    model = DigitFlow(cfg)
    epochs = budget(fast=4, full=240)
    opt = torch.optim.Adam(model.parameters(), lr=budget(fast=3e-3, full=2e-3))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    hist = fit(
        model,
        opt,
        digits_loader("train", REFERENCE_BATCH_SIZE, shift_prob=shift_prob),
        digits_loader("val", 350),
        epochs=epochs,
        patience=budget(fast=None, full=20),
        grad_clip=50.0,
        ema=reference_ema(),  # θ̄ ← d θ̄ + (1 − d) θ after every step
        checkpoint=checkpoint,
        seed=seed,
        progress=progress,
        scheduler=sched,
        desc=f"flow ({dequantization})",
    )
    return model, hist
