"""Generative adversarial networks: a generator and a discriminator playing a two-player game.

The generator G maps noise z ~ N(0, I) to a sample; the discriminator D (the *critic* in WGAN)
scores how real a sample looks. With D = σ(ℓ), ℓ the logit, the game of Goodfellow et al. (2014) is

    min_G max_D  E_{x ~ p_data}[log D(x)] + E_z[log(1 − D(G(z)))].

For a fixed G the best discriminator is D*(x) = p_data(x) / (p_data(x) + p_g(x)), and against it
the generator minimises 2 JS(p_data || p_g) − log 4.

Three generator/discriminator objectives live here (``GANConfig.loss``):

* ``"minimax"``: the generator minimises E log(1 − D(G(z))) (saturates early);
* ``"nonsaturating"``: it minimises −E log D(G(z)) instead (same fixed point);
* ``"wgan-gp"``: a critic f estimates the Wasserstein-1 distance, max_f E f(x) − E f(G(z)),
  kept 1-Lipschitz by a gradient penalty.

A GAN is an *implicit* model: it can sample but has no density, so it has **no** ``log_prob``.
Judge it with :mod:`dgm_edu.metrics` (``fid``, ``kid``, ``precision_recall``, ``mode_coverage``).

How it plugs into the shared trainer: :meth:`GAN.train_step` takes a batch and the dict
``{"generator": opt_g, "discriminator": opt_d}`` and does one round of the game;
:func:`dgm_edu.train.fit` calls it instead of its default step. :meth:`GAN.loss` is what ``fit``
reports as the validation loss: the discriminator's loss on held-out real data against fresh
fakes (for WGAN-GP, the critic's loss without the penalty). It tells you whether the discriminator
is winning or memorising the training set; it is **not** a measure of sample quality, so train GANs
with ``restore_best=False`` and no early stopping. ``loss`` has no side effects in either mode
(it only draws fresh noise).

Labels follow the library's contract (:mod:`dgm_edu.checks`): a conditional GAN
(``num_classes > 0``) takes ``loss(x, y)``, ``(x, y)`` batches and ``sample(n, y=...)``; sampled
without ``y`` it stratifies the classes 0, 1, ..., K−1. An unconditional GAN refuses labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dgm_edu import checks
from dgm_edu.data import IMAGE_SHAPE, dequantize, quantize, validate_digits
from dgm_edu.runtime import module_device

LOSSES = ("minimax", "nonsaturating", "wgan-gp")


@dataclass
class GANConfig:
    # (C, H, W) images of raw levels 0..16: (1, 8, 8) digits, (1, 28, 28) MNIST at 17 levels
    # (arch="mlp"); or (D,) points, e.g. (2,) for the 2D toys
    data_shape: tuple[int, ...] = IMAGE_SHAPE
    arch: str = "mlp"  # "mlp", or "conv" (images only)
    latent_dim: int = 16
    hidden: int = 256  # MLP width; conv nets use hidden // 4 and hidden // 2 channels
    loss: str = "nonsaturating"  # one of LOSSES
    gp_weight: float = 10.0  # lambda of the gradient penalty (wgan-gp only)
    critic_steps: int = 1  # discriminator updates per generator update
    num_classes: int = 0  # > 0: class-conditional G(z, y) and D(x, y)

    def __post_init__(self) -> None:
        self.data_shape = tuple(self.data_shape)
        if len(self.data_shape) not in (1, 3):
            raise ValueError(
                f"data_shape must be (D,) for points or (C, H, W) for images, got {self.data_shape}"
            )
        if self.loss not in LOSSES:
            raise ValueError(f"Unknown loss {self.loss!r}: expected one of {LOSSES}")
        if self.arch not in ("mlp", "conv"):
            raise ValueError(f"Unknown arch {self.arch!r}: expected 'mlp' or 'conv'")
        if self.arch == "conv" and self.data_shape != IMAGE_SHAPE:
            raise ValueError(f"arch='conv' needs data_shape {IMAGE_SHAPE}, got {self.data_shape}")

    @property
    def is_image(self) -> bool:
        """Images ``(C, H, W)`` of raw levels (any size), rather than ``(D,)`` points."""
        return len(self.data_shape) == 3


# --------------------------------------------------------------------------- the losses
# D outputs a logit l, D(x) = sigmoid(l); log D = -softplus(-l) and log(1 - D) = -softplus(l).
def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """−E[log D(x)] − E[log(1 − D(G(z)))]: binary cross-entropy, real = 1, fake = 0."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_loss(fake_logits: torch.Tensor, kind: str = "nonsaturating") -> torch.Tensor:
    """The generator's objective from the discriminator's logits on fakes ``(N,)``.

    minimax: E log(1 − D), gradient in the logit −D (vanishes as D -> 0);
    non-saturating: −E log D, gradient −(1 − D) (large when D -> 0);
    wgan-gp: −E f(G(z)) (the logit is the critic's value).
    """
    if kind == "minimax":
        return -F.softplus(fake_logits).mean()
    if kind == "nonsaturating":
        return F.softplus(-fake_logits).mean()
    if kind == "wgan-gp":
        return -fake_logits.mean()
    raise ValueError(f"Unknown loss {kind!r}: expected one of {LOSSES}")


def critic_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """WGAN critic: E f(G(z)) − E f(x), minus the Wasserstein estimate."""
    return fake_scores.mean() - real_scores.mean()


def gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor, *args) -> torch.Tensor:
    """WGAN-GP penalty E_x̂ (‖∇_x̂ f(x̂)‖₂ − 1)².

    x̂ = ε x + (1 − ε) x̃, ε ~ U[0, 1] per example, on straight lines between real and fake
    points. ``args`` (labels) are passed on to ``critic``.
    """
    eps = torch.rand(len(real), *([1] * (real.dim() - 1)), device=real.device, dtype=real.dtype)
    x_hat = (eps * real + (1 - eps) * fake).detach().requires_grad_(True)
    scores = critic(x_hat, *args)  # (N,)
    # create_graph: the penalty itself is differentiated when the critic is updated
    (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).square().mean()


def optimal_discriminator(p_data: torch.Tensor, p_g: torch.Tensor) -> torch.Tensor:
    """D*(x) = p_data(x) / (p_data(x) + p_g(x)), from the two densities at the same points."""
    return p_data / (p_data + p_g)


# --------------------------------------------------------------------------- the networks
class Generator(nn.Module):
    """z ``(N, latent)`` (and labels ``(N,)``) -> a point in model space, shape ``data_shape``."""

    def __init__(self, c: GANConfig) -> None:
        super().__init__()
        self.config = c
        d_in, h = c.latent_dim + c.num_classes, c.hidden
        if c.arch == "mlp":
            self.net = nn.Sequential(
                nn.Linear(d_in, h), nn.ReLU(),
                nn.Linear(h, h), nn.ReLU(),
                nn.Linear(h, math.prod(c.data_shape)),
            )  # fmt: skip
        else:  # (N, d_in) -> (N, 2w, 4, 4) -> upsample -> (N, w, 8, 8) -> (N, 1, 8, 8)
            w = h // 4
            self.net = nn.Sequential(
                nn.Linear(d_in, 2 * w * 16), nn.ReLU(), nn.Unflatten(1, (2 * w, 4, 4)),
                nn.Upsample(scale_factor=2), nn.Conv2d(2 * w, w, 3, padding=1), nn.ReLU(),
                nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, 1, 3, padding=1),
            )  # fmt: skip

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.config.num_classes:
            z = torch.cat([z, F.one_hot(y, self.config.num_classes).to(z.dtype)], dim=1)
        out = self.net(z).view(len(z), *self.config.data_shape)
        # images live in (-1, 1) (see GAN.to_model_space); toy points are unbounded
        return torch.tanh(out) if self.config.is_image else out


class Discriminator(nn.Module):
    """A point ``data_shape`` (and labels) -> one logit (or critic value) per example ``(N,)``.

    Conditional: a projection discriminator (Miyato & Koyama, 2018),
    ℓ(x, y) = wᵀ h(x) + e_yᵀ h(x), with e_y a learned class embedding.
    """

    def __init__(self, c: GANConfig) -> None:
        super().__init__()
        self.config = c
        h = c.hidden
        if c.arch == "mlp":
            self.body = nn.Sequential(
                nn.Flatten(), nn.Linear(math.prod(c.data_shape), h), nn.LeakyReLU(0.2),
                nn.Linear(h, h), nn.LeakyReLU(0.2),
            )  # fmt: skip
        else:  # (N, 1, 8, 8) -> (N, w, 8, 8) -> (N, 2w, 4, 4) -> (N, h)
            w = h // 4
            self.body = nn.Sequential(
                nn.Conv2d(1, w, 3, padding=1), nn.LeakyReLU(0.2),
                nn.Conv2d(w, 2 * w, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
                nn.Flatten(), nn.Linear(2 * w * 16, h), nn.LeakyReLU(0.2),
            )  # fmt: skip
        self.head = nn.Linear(h, 1)
        self.embed = nn.Embedding(c.num_classes, h) if c.num_classes else None

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.body(x)  # (N, H)
        out = self.head(h).squeeze(1)  # (N,)
        if self.embed is not None:
            out = out + (self.embed(y) * h).sum(dim=1)  # projection term e_y^T h(x)
        return out


# --------------------------------------------------------------------------- the model
class GAN(nn.Module):
    """Generator + discriminator, with the library face ``loss``, ``sample`` and ``train_step``.

    Digits: raw levels are dequantized, ``u = (x + U[0,1)) / 17`` (:func:`dgm_edu.data.dequantize`),
    and mapped to ``2u - 1`` in [-1, 1), where the generator's tanh lives; :meth:`sample` maps back
    to the bin ``floor(17 u)`` (:func:`dgm_edu.data.quantize`). So the discriminator never sees
    the 17 discrete levels that the generator cannot produce exactly.
    """

    optimizer_names = ("generator", "discriminator")  # the keys train_step reads; fit checks them

    def __init__(self, config: GANConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or GANConfig()
        self.generator = Generator(c)
        self.discriminator = Discriminator(c)

    # ---- data <-> model space
    def to_model_space(self, x: torch.Tensor) -> torch.Tensor:
        """Raw digits -> dequantized values in [-1, 1); 2D toy points pass through as floats."""
        if not self.config.is_image:
            return checks.points(x, self.config.data_shape[0]).float()  # the nets' float32
        # u = (x + U[0,1)) / 17 in [0, 1), then 2u - 1: (N, C, H, W)
        return 2 * dequantize(validate_digits(x, self.config.data_shape)) - 1

    def to_data_space(self, v: torch.Tensor) -> torch.Tensor:
        """Generator output -> raw-digit int levels 0..16 (images) or float points (toys)."""
        if not self.config.is_image:
            return v.float()
        return quantize((v.float() + 1) / 2)  # u = (v + 1) / 2 -> its bin floor(17 u)

    # ---- the game
    def _latent(self, n: int, like: torch.Tensor) -> torch.Tensor:
        return torch.randn(n, self.config.latent_dim, device=like.device)

    def _labels(self, y: object, n: int) -> tuple[torch.Tensor, ...]:
        """Labels checked where they enter (:func:`dgm_edu.checks.labels`): ``(y,)`` for a
        conditional GAN, which needs them; ``()`` for an unconditional one, which refuses them."""
        y = checks.labels(y, n, self.config.num_classes, module_device(self))
        if y is not None:
            return (y,)
        if self.config.num_classes:
            raise ValueError(
                "A conditional GAN needs labels y: call loss(x, y), train on (x, y) batches "
                "(labels=True loaders), or pass y to decode"
            )
        return ()

    def generate(self, z: torch.Tensor, *y: torch.Tensor) -> torch.Tensor:
        """G(z, y) in model space (differentiable)."""
        return self.generator(z, *y)

    def d_loss(self, real: torch.Tensor, fake: torch.Tensor, *y: torch.Tensor) -> torch.Tensor:
        """The discriminator's (critic's) training loss on model-space real and fake batches."""
        real_out, fake_out = self.discriminator(real, *y), self.discriminator(fake, *y)
        if self.config.loss == "wgan-gp":
            penalty = gradient_penalty(self.discriminator, real, fake, *y)
            return critic_loss(real_out, fake_out) + self.config.gp_weight * penalty
        return discriminator_loss(real_out, fake_out)

    def train_step(self, batch: tuple[torch.Tensor, ...], optimizers) -> dict[str, float]:
        """One round of the game: ``critic_steps`` discriminator updates, one generator update.

        ``optimizers = {"generator": ..., "discriminator": ...}``. Returns the per-batch logs that
        :func:`dgm_edu.train.fit` averages per epoch: ``loss`` (= the discriminator's loss),
        ``d_loss``, ``g_loss``, and the mean discriminator outputs ``d_real`` and ``d_fake``
        (probabilities, or critic values for WGAN-GP).
        """
        opt_g, opt_d = optimizers["generator"], optimizers["discriminator"]
        y = self._labels(batch[1] if len(batch) > 1 else None, len(batch[0]))
        real = self.to_model_space(batch[0])
        n = len(real)
        for _ in range(self.config.critic_steps):
            with torch.no_grad():
                fake = self.generate(self._latent(n, real), *y)
            d_loss = self.d_loss(real, fake, *y)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
        # generator step: gradients flow through D into G; only G's optimizer steps
        fake_out = self.discriminator(self.generate(self._latent(n, real), *y), *y)
        g_loss = generator_loss(fake_out, self.config.loss)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        with torch.no_grad():
            real_out = self.discriminator(real, *y)
        squash = (lambda t: t) if self.config.loss == "wgan-gp" else torch.sigmoid
        return {
            "loss": d_loss.item(),
            "d_loss": d_loss.item(),
            "g_loss": g_loss.item(),
            "d_real": squash(real_out).mean().item(),
            "d_fake": squash(fake_out.detach()).mean().item(),
        }

    def loss(self, x: torch.Tensor, y: torch.Tensor | int | None = None) -> torch.Tensor:
        """The discriminator's loss on ``x`` (held-out real data) against fresh generator samples.

        What ``fit`` reports as the validation loss. Cross-entropy for minimax/non-saturating (log 4
        = 1.386 when D cannot tell real from fake, near 0 when it wins); for WGAN-GP the critic loss
        without the penalty (minus the Wasserstein estimate). A GAN has no likelihood: this is a
        diagnostic of the game, not of sample quality. No side effects in either mode: training
        happens in :meth:`train_step`.
        """
        real = self.to_model_space(x)
        labels = self._labels(y, len(real))
        fake = self.generate(self._latent(len(real), real), *labels)
        real_out, fake_out = self.discriminator(real, *labels), self.discriminator(fake, *labels)
        if self.config.loss == "wgan-gp":
            return critic_loss(real_out, fake_out)
        return discriminator_loss(real_out, fake_out)

    @torch.no_grad()
    def sample(self, n: int, *, y: torch.Tensor | int | None = None) -> torch.Tensor:
        """``n`` samples: raw-digit int levels ``(n, C, H, W)``, or toy points ``(n, D)``.

        A conditional GAN takes ``y``, a class (int) or labels ``(n,)``; without it the classes
        are stratified, 0, 1, ..., K−1 in turn. An unconditional GAN refuses ``y``.
        """
        n = checks.count(n)
        c, dev = self.config, module_device(self)
        y = checks.labels(y, n, c.num_classes, dev, stratify=True)
        if n == 0:
            dtype = torch.long if c.is_image else torch.float32
            return torch.zeros(0, *c.data_shape, dtype=dtype, device=dev)
        z = torch.randn(n, c.latent_dim, device=dev)
        return self.decode(z, y)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, y: torch.Tensor | int | None = None) -> torch.Tensor:
        """Given latents ``(N, latent)`` (and labels, for a conditional GAN), the samples in data
        space: checked finite, and for images int levels on the grid 0..16."""
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[1] != self.config.latent_dim:
            got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(
                f"z must be a tensor of shape (N, {self.config.latent_dim}), got {got}"
            )
        v = checks.finite(self.generate(z, *self._labels(y, len(z))), "the generator's output")
        out = self.to_data_space(v)
        return checks.levels_out(out) if self.config.is_image else out


def make_optimizers(
    model: GAN, lr: float = 2e-4, betas=(0.5, 0.999), lr_d: float | None = None
) -> dict[str, torch.optim.Optimizer]:
    """Adam for each player, with the DCGAN settings (beta1 = 0.5) by default.

    ``lr_d`` gives the discriminator its own learning rate (default: the same ``lr``).
    """
    lr_d = lr if lr_d is None else lr_d
    return {
        "generator": torch.optim.Adam(model.generator.parameters(), lr=lr, betas=betas),
        "discriminator": torch.optim.Adam(model.discriminator.parameters(), lr=lr_d, betas=betas),
    }


# --------------------------------------------------------------------------- reference recipes
RING_CONFIG = GANConfig(data_shape=(2,), hidden=128, latent_dim=2)
DIGITS_CONFIG = GANConfig(arch="conv", hidden=64, latent_dim=16)


def train_reference(
    *,
    checkpoint: str | Path | None = None,
    progress: bool = True,
    seed: int = 0,
    data: str = "digits",
    config: GANConfig | None = None,
    epochs: int | None = None,
):
    """The book's recipes: ``data="digits"`` (the benchmark) or ``data="ring8"`` (the 2D toy).

    Non-saturating loss, Adam(beta1=0.5) for both players, no early stopping and no best-epoch
    restore (the validation loss is the discriminator's, not a quality measure). The ring is the
    shared toy fit, :func:`dgm_edu.train.fit_toy` (2000 points, 500 for validation). ``config``
    overrides the architecture/loss (the chapter uses it for the conditional GAN). ``epochs``
    overrides the budget: with a ``checkpoint`` a call with ``epochs=k`` trains up to epoch k and
    a later call resumes from there, which is how :func:`dgm_edu.train.fit_stages` looks at a run
    part-way through, e.g. ``fit_stages(partial(train_reference, data="ring8"), [10, 50, 400],
    checkpoint=...)``. Returns ``(model, history)``.
    """
    from dgm_edu.data import digits_loader
    from dgm_edu.runtime import budget, seed_everything
    from dgm_edu.train import fit, fit_toy

    if data not in ("digits", "ring8"):
        raise ValueError(f"Unknown data {data!r}: expected 'digits' or 'ring8'")
    seed_everything(seed)
    config = config or (RING_CONFIG if data == "ring8" else DIGITS_CONFIG)
    model = GAN(config)
    betas = (0.5, 0.9) if config.loss == "wgan-gp" else (0.5, 0.999)
    run = {"checkpoint": checkpoint, "progress": progress, "seed": seed, "restore_best": False}
    if data == "ring8":
        history = fit_toy(
            model, "ring8", n=2000, val=500, batch_size=128,
            epochs=budget(fast=20, full=400) if epochs is None else epochs,
            optimizer=make_optimizers(model, lr=1e-3, betas=betas), desc="gan-ring8", **run,
        )  # fmt: skip
    else:
        labels = config.num_classes > 0
        history = fit(
            model, make_optimizers(model, lr=5e-4, betas=betas),
            digits_loader("train", 64, labels=labels, drop_last=True),
            digits_loader("val", 350, labels=labels),
            epochs=budget(fast=10, full=300) if epochs is None else epochs, desc="gan-digits",
            **run,
        )  # fmt: skip
    model.eval()
    return model, history
