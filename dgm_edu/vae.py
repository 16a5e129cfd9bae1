"""Variational autoencoders: a latent-variable model trained by the evidence lower bound (ELBO).

The model is p(x, z) = p(z) p(x | z) with a standard normal prior p(z) = N(0, I) and a decoder
p(x | z) that is a product of 64 categoricals over the 17 grey levels, so that every bound below is
a bound on the log-likelihood of the DISCRETE digits, in nats. An encoder q(z | x) = N(mu, diag
sigma^2) amortises inference. For any q,

    log p(x) = ELBO(x) + KL(q(z|x) || p(z|x)),
    ELBO(x)  = E_q[log p(x | z)] - KL(q(z|x) || p(z)),

so the ELBO is a lower bound, and the importance-weighted bound (IWAE, Burda et al. 2016)

    L_k(x) = E[log (1/k) sum_i p(x, z_i) / q(z_i | x)],   z_i ~ q(z | x),

tightens it: L_1 = ELBO <= L_k <= L_{k+1} -> log p(x). ``log_prob`` returns L_k.

- :class:`VAE`: convolutional encoder/decoder (or fully connected ones, ``kind="mlp"``), beta as
  a config value, KL warm-up, and an optional class condition (``num_classes > 0``:
  ``loss(x, y)``, ``sample(n, y=...)``). It takes the 8x8 digits (the networks are built for
  8x8; a 28x28 batch is refused by :func:`validate_digits`).
- :func:`gaussian_kl`, :func:`reparameterize`: the two formulas the ELBO is made of.
- :func:`active_units`: the posterior-collapse diagnostic of Burda et al.;
  :func:`kl_decomposition` splits each dimension's rate into information and prior mismatch.
- :func:`train_vae`, :func:`train_reference`: the book's recipe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dgm_edu import checks
from dgm_edu.data import IMAGE_SHAPE, LEVELS, digits_loader, to_unit, validate_digits
from dgm_edu.densities import logmeanexp, normal_log_prob
from dgm_edu.runtime import budget, module_device, seed_everything
from dgm_edu.train import History, fit

KINDS = ("conv", "mlp")


@dataclass
class VAEConfig:
    latent_dim: int = 32
    channels: int = 64  # width: of the conv stacks ("conv"), of the hidden layers ("mlp")
    blocks: int = 1  # residual blocks at 8x8 in the decoder (and at each scale of the encoder)
    beta: float = 1.0  # weight of the KL term: beta = 1 is the ELBO, beta > 1 a beta-VAE
    warmup_steps: int = 0  # the KL weight ramps linearly from 0 to beta over this many steps
    dropout: float = 0.0
    num_classes: int = 0  # > 0: a class-conditional VAE, q(z | x, y) and p(x | z, y)
    levels: int = LEVELS
    # "conv": convolutional encoder and decoder; "mlp": fully connected ones (1 + blocks hidden
    # layers of `channels` units each), the control that shares no weights across positions
    kind: str = "conv"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")


# --------------------------------------------------------------------------- the two formulas
def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, diag e^logvar) || N(0, I)) per row, summed over the last dim.

    KL = ½ Σ_j (μ_j² + σ_j² − log σ_j² − 1).
    """
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).sum(-1)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """z = μ + σ ⊙ ε, σ = exp(½ logvar), ε ~ N(0, I): a sample that is differentiable in
    (μ, logvar). With ``k``, draw k samples per row: (k, B, D)."""
    shape = mu.shape if k is None else (k, *mu.shape)
    eps = torch.randn(shape, device=mu.device, dtype=mu.dtype)
    return mu + (0.5 * logvar).exp() * eps


def iwae_bound(
    log_joint, mu: torch.Tensor, logvar: torch.Tensor, k: int, chunk: int = 100
) -> torch.Tensor:
    """The importance-weighted bound with a Gaussian proposal q = N(μ, diag e^logvar), (B,):

    L_k = log (1/k) Σ_{i=1}^k p(x, z_i) / q(z_i | x),   z_i ~ q,

    computed as a logsumexp for stability. ``log_joint(z)`` maps z (m, B, D) to log p(x, z) (m, B);
    the k samples are drawn ``chunk`` at a time to bound memory.
    """
    k = checks.integer(k, "k", low=1)
    chunk = checks.integer(chunk, "chunk", low=1)
    parts = []
    for start in range(0, k, chunk):
        z = reparameterize(mu, logvar, min(chunk, k - start))  # (m, B, D)
        parts.append(log_joint(z) - normal_log_prob(z, mu, logvar))  # (m, B) log weights
    # log (1/k) Σ_i w_i; not densities.logmeanexp: the k weights come in chunks
    return torch.logsumexp(torch.cat(parts), 0) - math.log(k)


# --------------------------------------------------------------------------- networks
class _Block(nn.Module):
    """A residual 3x3 conv block at fixed resolution: x + conv(act(conv(act(x))))."""

    def __init__(self, ch: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.GELU(),
            nn.Conv2d(ch, ch, 3, padding=1),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Conv2d(ch, ch, 3, padding=1),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.net(h)


class Encoder(nn.Module):
    """q(z | x[, y]): (B, 1, 8, 8) in [0, 1] -> mu, logvar, each (B, D)."""

    def __init__(self, c: VAEConfig) -> None:
        super().__init__()
        ch = c.channels
        self.net = nn.Sequential(
            nn.Conv2d(1 + c.num_classes, ch, 3, padding=1),  # (B, ch, 8, 8)
            *[_Block(ch, c.dropout) for _ in range(c.blocks)],
            nn.GELU(),
            nn.Conv2d(ch, 2 * ch, 4, stride=2, padding=1),  # (B, 2ch, 4, 4)
            nn.Flatten(),
            nn.GELU(),
            nn.Dropout(c.dropout),
            nn.Linear(2 * ch * 16, 2 * c.latent_dim),  # (B, 2D)
        )

    def forward(self, x: torch.Tensor, y1h: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        if y1h is not None:  # the label as constant extra input planes
            x = torch.cat([x, y1h[:, :, None, None].expand(-1, -1, 8, 8)], 1)
        mu, logvar = self.net(x).chunk(2, dim=-1)
        return mu, logvar


class Decoder(nn.Module):
    """p(x | z[, y]): (..., D) -> logits (..., 17, 8, 8), a categorical per pixel."""

    def __init__(self, c: VAEConfig) -> None:
        super().__init__()
        ch = c.channels
        self.ch = ch
        self.inp = nn.Linear(c.latent_dim + c.num_classes, 2 * ch * 16)
        self.net = nn.Sequential(
            nn.GELU(),
            nn.ConvTranspose2d(2 * ch, ch, 4, stride=2, padding=1),  # (B, ch, 8, 8)
            *[_Block(ch, c.dropout) for _ in range(c.blocks)],
            nn.GELU(),
            nn.Conv2d(ch, c.levels, 1),  # (B, 17, 8, 8): 17 logits per pixel
        )

    def forward(self, z: torch.Tensor, y1h: torch.Tensor | None) -> torch.Tensor:
        lead = z.shape[:-1]
        if y1h is not None:
            z = torch.cat([z, y1h.expand(*lead, -1)], -1)
        h = self.inp(z.reshape(-1, z.shape[-1])).view(-1, 2 * self.ch, 4, 4)
        return self.net(h).view(*lead, -1, 8, 8)


class MLPEncoder(nn.Module):
    """q(z | x[, y]) without convolutions: (B, 1, 8, 8) in [0, 1] -> mu, logvar, each (B, D)."""

    def __init__(self, c: VAEConfig) -> None:
        super().__init__()
        h, layers = c.channels, [nn.Linear(64 + c.num_classes, c.channels)]  # (B, h)
        for _ in range(c.blocks):
            layers += [nn.GELU(), nn.Dropout(c.dropout), nn.Linear(h, h)]
        self.net = nn.Sequential(
            *layers, nn.GELU(), nn.Dropout(c.dropout), nn.Linear(h, 2 * c.latent_dim)
        )

    def forward(self, x: torch.Tensor, y1h: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        h = x.flatten(1)  # (B, 64): every pixel its own input, no position is shared
        if y1h is not None:
            h = torch.cat([h, y1h], 1)  # (B, 64 + K)
        mu, logvar = self.net(h).chunk(2, dim=-1)
        return mu, logvar


class MLPDecoder(nn.Module):
    """p(x | z[, y]) without convolutions: (..., D) -> logits (..., 17, 8, 8)."""

    def __init__(self, c: VAEConfig) -> None:
        super().__init__()
        h, layers = c.channels, [nn.Linear(c.latent_dim + c.num_classes, c.channels)]
        for _ in range(c.blocks):
            layers += [nn.GELU(), nn.Dropout(c.dropout), nn.Linear(h, h)]
        self.levels = c.levels
        self.net = nn.Sequential(*layers, nn.GELU(), nn.Linear(h, c.levels * 64))  # 17 x 64

    def forward(self, z: torch.Tensor, y1h: torch.Tensor | None) -> torch.Tensor:
        lead = z.shape[:-1]
        if y1h is not None:
            z = torch.cat([z, y1h.expand(*lead, -1)], -1)
        return self.net(z).view(*lead, self.levels, 8, 8)


def categorical_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x | z) = Σ_pixels log softmax(logits)[x], in nats.

    logits (..., 17, 8, 8) and x (B, 1, 8, 8) -> (...,), summed over the 64 pixels.
    """
    logp = logits.float().log_softmax(-3)  # normalised over the 17 levels
    idx = x.expand(*logits.shape[:-3], 1, 8, 8)  # (..., 1, 8, 8) level indices
    return logp.gather(-3, idx).flatten(-3).sum(-1)


# --------------------------------------------------------------------------- the model
class VAE(nn.Module):
    """A VAE on the raw 17-level digits, categorical decoder, optionally class-conditional."""

    def __init__(self, config: VAEConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or VAEConfig()
        conv = c.kind == "conv"
        self.encoder = Encoder(c) if conv else MLPEncoder(c)
        self.decoder = Decoder(c) if conv else MLPDecoder(c)
        # training steps taken: drives the KL warm-up schedule, moves and saves with the model
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    # ---- helpers
    def _onehot(self, y: torch.Tensor | int | None, n: int) -> torch.Tensor | None:
        """Labels (an int or (n,) ints in [0, K), see checks.labels) -> one-hot (n, K) floats;
        None for an unconditional VAE, which refuses labels."""
        y = checks.labels(y, n, self.config.num_classes, module_device(self))
        if y is None:
            if self.config.num_classes:
                raise ValueError(
                    "A conditional VAE needs labels y: call loss(x, y) / log_prob(x, y)"
                )
            return None
        return F.one_hot(y, self.config.num_classes).float()

    def _digits(self, x: torch.Tensor) -> torch.Tensor:
        """Raw digits, checked once where they enter: int64 levels (B, 1, 8, 8)."""
        return validate_digits(x, IMAGE_SHAPE, self.config.levels)

    def encode(
        self, x: torch.Tensor, y: torch.Tensor | int | None = None
    ) -> tuple[torch.Tensor, ...]:
        """Raw digits -> (mu, logvar) of q(z | x), each (B, D)."""
        x = self._digits(x)
        return self.encoder(to_unit(x, self.config.levels), self._onehot(y, len(x)))

    def decode(self, z: torch.Tensor, y: torch.Tensor | int | None = None) -> torch.Tensor:
        """Latents (..., B, D) -> logits (..., B, 17, 8, 8) of p(x | z)."""
        return self.decoder(z, self._onehot(y, z.shape[-2]))

    def kl_weight(self) -> float:
        """beta, ramped linearly from 0 over ``warmup_steps`` training steps."""
        c = self.config
        if c.warmup_steps <= 0 or not self.training or self.step.is_meta:
            return c.beta  # (on the meta device, shapes only, the step count is unknown)
        return c.beta * min(1.0, (self.step.item() + 1) / c.warmup_steps)

    # ---- the objective
    def elbo_terms(
        self, x: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction E_q[log p(x|z)] with one sample, KL(q(z|x) || p(z))), each (B,)."""
        x = self._digits(x)
        mu, logvar = self.encode(x, y)  # (B, D) each
        z = reparameterize(mu, logvar)  # (B, D)
        rec = categorical_log_prob(self.decode(z, y), x)  # (B,)
        return rec, gaussian_kl(mu.float(), logvar.float())

    def elbo(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The ELBO per image (B,), nats: a single-sample estimate of a lower bound on log P(x)."""
        rec, kl = self.elbo_terms(x, y)
        return rec - kl

    def loss(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """−(E_q[log p(x|z)] − w KL), averaged over the batch, w = β (after warm-up).

        Side effect in train mode: the step counter (the ``step`` buffer, which drives the KL
        warm-up) advances by one. In eval mode w = β and nothing changes (ε is still drawn).
        """
        rec, kl = self.elbo_terms(x, y)
        w = self.kl_weight()
        if self.training:
            self.step += 1
        return -(rec - w * kl).mean()

    # ---- likelihood
    def log_prob(
        self, x: torch.Tensor, y: torch.Tensor | None = None, k: int = 100, chunk: int = 100
    ) -> torch.Tensor:
        """The IWAE bound L_k per image (B,), nats, a lower bound on log P(x) (k = 1: the ELBO).

        It keeps gradients, like every family's ``log_prob``: to evaluate, wrap the call in
        ``torch.no_grad()`` (with k samples per image the graph is k times the ELBO's).
        """
        k = checks.integer(k, "k", low=1)
        x = self._digits(x)
        mu, logvar = (t.float() for t in self.encode(x, y))  # (B, D)

        def log_joint(z: torch.Tensor) -> torch.Tensor:  # log p(x|z) + log p(z): (m, B)
            zero = torch.zeros_like(z)
            return categorical_log_prob(self.decode(z, y), x) + normal_log_prob(z, zero, zero)

        return iwae_bound(log_joint, mu, logvar, k, chunk)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The most likely level of each pixel under p(x | z = μ(x)): raw digits (B, 1, 8, 8)."""
        mu, _ = self.encode(x, y)  # (B, D)
        logits = checks.finite(self.decode(mu, y), "the decoder's logits")  # (B, 17, 8, 8)
        return checks.levels_out(logits.argmax(-3, keepdim=True), self.config.levels)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        y: torch.Tensor | int | None = None,
        z: torch.Tensor | None = None,
        mode: bool = False,
    ) -> torch.Tensor:
        """n digits (n, 1, 8, 8) int64: z ~ N(0, I) (or the given z (n, D)), then x ~ p(x | z).

        ``y``: a class (int) or labels (n,) for a conditional VAE; without it the classes are
        stratified, 0, 1, ..., K−1 in turn (a sample of p(x) with p(y) uniform). An unconditional
        VAE refuses ``y``. ``mode=True`` shows the most likely level of each pixel instead.
        """
        n = checks.count(n)
        c, dev = self.config, module_device(self)
        y = checks.labels(y, n, c.num_classes, dev, stratify=True)
        if z is None:
            z = torch.randn(n, c.latent_dim, device=dev)
        elif not isinstance(z, torch.Tensor) or tuple(z.shape) != (n, c.latent_dim):
            got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"z must be a tensor of shape ({n}, {c.latent_dim}), got {got}")
        if n == 0:
            return torch.zeros(0, *IMAGE_SHAPE, dtype=torch.long, device=dev)
        logits = self.decode(z.to(dev), y).float()  # (n, 17, 8, 8)
        logits = checks.finite(logits, "the decoder's logits")
        if mode:
            x = logits.argmax(1, keepdim=True)
        else:
            probs = logits.softmax(1).permute(0, 2, 3, 1).reshape(-1, c.levels)  # (n 64, 17)
            x = torch.multinomial(probs, 1).view(n, *IMAGE_SHAPE)
        return checks.levels_out(x, c.levels)


@torch.no_grad()
def active_units(
    model: VAE, x: torch.Tensor, y: torch.Tensor | None = None, threshold: float = 0.01
) -> tuple[int, torch.Tensor]:
    """Latent dims that the encoder uses (Burda et al. 2016): A_j = Cov_x(E_q[z_j | x]) > 0.01.

    A collapsed dim has q(z_j | x) = p(z_j) for every x, so its posterior mean does not vary.
    Returns (number active, per-dim variance (D,)). The encoder runs in eval mode (no dropout);
    the model's mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    mu, _ = model.encode(x, y)
    model.train(was_training)
    var = mu.float().var(0)
    return int((var > threshold).sum()), var


@torch.no_grad()
def kl_decomposition(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    samples: int = 64,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split each latent dim's average rate into information and prior mismatch: two (D,).

    With x uniform over the N rows of ``mu``, ``logvar`` (N, D) (the posteriors q(z | x_n) of N
    images) and the aggregate posterior q̄(z_j) = (1/N) Σ_n q(z_j | x_n), per dimension j
    (Hoffman and Johnson 2016):

        (1/N) Σ_n KL(q(z_j | x_n) ‖ p(z_j)) = I(x; z_j) + KL(q̄(z_j) ‖ p(z_j)),

    I(x; z_j) = E_n E_{q(z_j | x_n)}[log q(z_j | x_n) − log q̄(z_j)]: the nats z_j carries about
    which image it encodes (at most log N); KL(q̄ ‖ p) = E_{q̄}[log q̄(z_j) − log p(z_j)]: how far
    the codes as a whole sit from the prior. Both are estimated with ``samples`` draws from each
    q(z_j | x_n); their sum estimates the closed-form average KL. Returns (I, KL(q̄ ‖ p)).
    """
    samples = checks.integer(samples, "samples", low=1)
    if mu.dim() != 2 or mu.shape != logvar.shape:
        raise ValueError(
            f"mu and logvar must both be (N, D), got {tuple(mu.shape)} and {tuple(logvar.shape)}"
        )
    mu, logvar = mu.double(), logvar.double()
    std = (0.5 * logvar).exp()
    info = torch.zeros(mu.shape[1], dtype=torch.float64, device=mu.device)
    mismatch = torch.zeros_like(info)
    for _ in range(samples):
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device="cpu")
        z = mu + std * eps.to(mu.device)  # (N, D): one draw from each q(z | x_n)
        log_q = normal_log_prob(z[..., None], mu[..., None], logvar[..., None])  # (N, D)
        # log q̄(z_n) = log (1/N) Σ_m q(z_n | x_m): component m of every row, (N, N, D) -> (N, D)
        log_agg = logmeanexp(
            normal_log_prob(z[:, None, :, None], mu[None, :, :, None], logvar[None, :, :, None]),
            1,
        )
        zero = torch.zeros_like(z[..., None])
        log_p = normal_log_prob(z[..., None], zero, zero)  # (N, D): log N(z_j; 0, 1)
        info += (log_q - log_agg).mean(0) / samples
        mismatch += (log_agg - log_p).mean(0) / samples
    return info.float(), mismatch.float()


# --------------------------------------------------------------------------- recipes
def train_vae(
    config: VAEConfig,
    *,
    epochs: int,
    lr: float = 2e-3,
    weight_decay: float = 0.0,
    batch_size: int = 64,
    patience: int | None = None,
    shift_prob: float = 0.0,
    checkpoint: str | Path | None = None,
    progress: bool = True,
    seed: int = 0,
) -> tuple[VAE, History]:
    """Train a :class:`VAE` on the digits' train split with early stopping on val (-ELBO).

    Labels are fed to the model when ``config.num_classes > 0``. Cosine-annealed AdamW.
    ``shift_prob`` > 0: each training image is moved by one pixel with that probability
    (:class:`dgm_edu.data.RandomShifts`); validation images are never moved.
    """
    seed_everything(seed)
    model = VAE(config)
    labels = config.num_classes > 0
    train_dl = digits_loader("train", batch_size, labels=labels, shift_prob=shift_prob)
    val_dl = digits_loader("val", 350, labels=labels)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    hist = fit(
        model,
        opt,
        train_dl,
        val_dl,
        epochs=epochs,
        patience=patience,
        checkpoint=checkpoint,
        progress=progress,
        seed=seed,
        scheduler=sched,
        desc="vae",
    )
    model.eval()
    return model, hist


def reference_config(kind: str = "conv") -> VAEConfig:
    """The book's reference VAE (its numbers are in chapters/03_vae.md and benchmarks/vae.py).

    ``kind="mlp"`` is its fully connected control: two hidden layers of 108 units, which gives
    it as many parameters as the convolutional reference (154,480 against 153,713).
    """
    return VAEConfig(
        latent_dim=16,
        channels=32 if kind == "conv" else 108,
        blocks=1,
        beta=1.0,
        warmup_steps=budget(fast=50, full=300),
        dropout=budget(fast=0.0, full=0.2),
        kind=kind,
    )


REFERENCE_SHIFT_PROB = 0.5  # the recipe's augmentation: half the training images moved one pixel


def reference_epochs() -> int:
    """The recipe's cosine schedule: 8 epochs in fast mode, 300 in full mode (without the
    shifts, the best validation epoch comes near 30 and longer schedules only overfit)."""
    return budget(fast=8, full=300)


def train_reference(
    *,
    checkpoint: str | Path | None = None,
    progress: bool = True,
    seed: int = 0,
    kind: str = "conv",
    epochs: int | None = None,
    shift_prob: float = REFERENCE_SHIFT_PROB,
) -> tuple[VAE, History]:
    """The book's reference recipe: fast mode trains for seconds, full mode for minutes.

    ``kind="mlp"`` trains the fully connected control with the same recipe: the same optimiser,
    schedule, epochs, batches and shifts, so the same number of optimiser steps. ``epochs``
    replaces :func:`reference_epochs` (the best validation epoch is still the one kept);
    ``shift_prob=0`` trains without the augmentation (chapter 3's control).
    """
    return train_vae(
        reference_config(kind),
        epochs=reference_epochs() if epochs is None else epochs,
        batch_size=budget(fast=32, full=64),
        weight_decay=budget(fast=0.0, full=0.05),
        shift_prob=shift_prob,
        checkpoint=checkpoint,
        progress=progress,
        seed=seed,
    )
