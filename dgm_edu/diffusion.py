r"""Diffusion models (DDPM, DDIM, classifier-free guidance) and flow matching.

The forward process adds Gaussian noise in T steps, q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1},
beta_t I), with alpha_t = 1 - beta_t. Its marginal has a closed form::

    q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I),   abar_t = prod_{s <= t} alpha_s,

so x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps with eps ~ N(0, I). A network predicts eps from
(x_t, t); eps, x_0 and v = sqrt(abar) eps - sqrt(1 - abar) x_0 are linear functions of each other
given x_t, so any of them defines the same reverse model (Ho et al. 2020; Salimans & Ho 2022).

The variational bound (Ho et al. 2020, eq. 5) on the DISCRETE digits, in nats, is::

    -log p(x_0) <= KL(q(x_T|x_0) || N(0,I)) + sum_{t=2}^T L_{t-1} + L_0,
    L_{t-1} = KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t))
            = 1/2 (SNR_{t-1} - SNR_t) ||x_0 - xhat_0||^2 = w_t ||eps - epshat||^2,
    w_t     = 1/2 (SNR_{t-1} / SNR_t - 1),     SNR_t = abar_t / (1 - abar_t),

with the reverse variance fixed to the posterior variance, and L_0 = -log of a discretized Gaussian
(Ho et al. 2020, eq. 13) at t = 1, so the number is a bound on the 17-level data, not a density.
Since w_t is about half the step in log-SNR, the bound is uniform in log-SNR over
||eps - epshat||^2 (Kingma et al. 2021): we sample t with probability w_t / W and weight by
W = sum_t w_t, which is both the training loss and a low-variance, unbiased estimator of the sum.

- :func:`linear_schedule`, :func:`cosine_schedule`; :class:`UNet` (8x8 digits), :class:`MLP` (2D).
- :class:`Diffusion`: ``loss``, ``sample`` (ancestral), ``ddim_sample`` (any step count, eta),
  classifier-free guidance (``y``, ``guidance``), ``log_prob`` (the bound), ``posterior``.
- :class:`FlowMatching`: the conditional optimal-transport path and an Euler ODE sampler.
- :func:`train_reference`, :func:`train_toy`: the book's recipes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dgm_edu.data import LEVELS, NUM_CLASSES, digits_loader, make_loader, toy_2d, validate_digits
from dgm_edu.runtime import budget
from dgm_edu.train import History, fit

HALF_BIN = 1.0 / (LEVELS - 1)  # digits live on the grid -1, -1 + 2/16, ..., 1: half a bin is 1/16


# --------------------------------------------------------------------------- schedules
def linear_schedule(T: int = 1000, beta_1: float = 1e-4, beta_T: float = 0.02) -> torch.Tensor:
    """abar_t for t = 0..T (abar_0 = 1), with beta_t linear from beta_1 to beta_T (Ho et al.)."""
    betas = torch.linspace(beta_1, beta_T, T, dtype=torch.float64)
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])


def cosine_schedule(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """abar_t = f(t)/f(0), f(t) = cos^2((t/T + s)/(1 + s) pi/2), betas clipped (Nichol 2021)."""
    f = torch.cos((torch.arange(T + 1, dtype=torch.float64) / T + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])


# --------------------------------------------------------------------------- networks
def time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of t in [0, 1] (scaled by 1000), (B,) -> (B, dim)."""
    freqs = torch.exp(-math.log(10_000) * torch.arange(dim // 2, device=t.device) / (dim // 2))
    angles = 1000 * t.float()[:, None] * freqs[None]  # (B, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class Conditioning(nn.Module):
    """Embeds the time and, optionally, the class; class index ``num_classes`` means 'no label'."""

    def __init__(self, dim: int, num_classes: int = 0) -> None:
        super().__init__()
        self.dim = dim
        self.time = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.label = nn.Embedding(num_classes + 1, dim) if num_classes else None
        self.num_classes = num_classes

    def forward(self, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        emb = self.time(time_embedding(t, self.dim))  # (B, dim)
        if self.label is not None:
            if y is None:
                y = torch.full_like(t, self.num_classes, dtype=torch.long)
            emb = emb + self.label(y)
        return emb


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, plus the embedding as a per-channel shift, twice; a skip path."""

    def __init__(self, c_in: int, c_out: int, emb: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.norm1, self.conv1 = nn.GroupNorm(8, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(8, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.silu(self.norm1(h))) + self.emb(emb)[:, :, None, None]
        return self.skip(h) + self.conv2(self.dropout(F.silu(self.norm2(out))))


class UNet(nn.Module):
    """A two-resolution U-Net for 8x8 images: 8x8 -> 4x4 -> 8x8 with skip connections."""

    def __init__(
        self, out_channels: int = 1, ch: int = 64, num_classes: int = 0, dropout: float = 0.0
    ) -> None:
        super().__init__()
        e = 2 * ch
        block = lambda c_in, c_out: ResBlock(c_in, c_out, e, dropout)  # noqa: E731
        self.cond = Conditioning(e, num_classes)
        self.inp = nn.Conv2d(1, ch, 3, padding=1)
        self.down = nn.ModuleList([block(ch, ch), block(ch, ch)])
        self.pool = nn.Conv2d(ch, 2 * ch, 3, stride=2, padding=1)
        self.mid = nn.ModuleList([block(2 * ch, 2 * ch), block(2 * ch, 2 * ch)])
        self.unpool = nn.Sequential(
            nn.Upsample(scale_factor=2), nn.Conv2d(2 * ch, ch, 3, padding=1)
        )
        self.up = nn.ModuleList([block(2 * ch, ch), block(2 * ch, ch)])
        self.out = nn.Sequential(
            nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, out_channels, 3, padding=1)
        )
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        emb = self.cond(t, y)  # (B, 2ch)
        h = self.inp(x)  # (B, ch, 8, 8)
        skips = []
        for block in self.down:
            h = block(h, emb)
            skips.append(h)
        h = self.pool(h)  # (B, 2ch, 4, 4)
        for block in self.mid:
            h = block(h, emb)
        h = self.unpool(h)  # (B, ch, 8, 8)
        for block in self.up:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)  # (B, out_channels, 8, 8)


class MLP(nn.Module):
    """The 2D-toy network: h <- SiLU(Linear(h) + embed(t, y)), three times, then a read-out."""

    def __init__(self, dim: int = 2, hidden: int = 128, num_classes: int = 0) -> None:
        super().__init__()
        self.cond = Conditioning(hidden, num_classes)
        self.layers = nn.ModuleList(
            [nn.Linear(dim, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)]
        )
        self.out = nn.Linear(hidden, dim)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        emb, h = self.cond(t, y), x  # (B, hidden), (B, dim)
        for layer in self.layers:
            h = F.silu(layer(h) + emb)  # the time (and label) enter every layer
        return self.out(h)  # (B, dim)


# --------------------------------------------------------------------------- data <-> model space
def digits_to_model(x: torch.Tensor) -> torch.Tensor:
    """Raw levels 0..16 -> floats on the grid -1..1, (B, 1, 8, 8)."""
    return validate_digits(x).float() / (LEVELS - 1) * 2 - 1


def model_to_digits(x: torch.Tensor) -> torch.Tensor:
    """Floats in model space -> the nearest level 0..16 (int64)."""
    return ((x.float() + 1) / 2 * (LEVELS - 1)).round().clamp(0, LEVELS - 1).long()


@dataclass
class DiffusionConfig:
    data: str = "digits"  # "digits" (8x8, U-Net) or "toy" (2D points, MLP)
    schedule: str = "linear"  # "linear" or "cosine"
    T: int = 1000
    channels: int = 64  # U-Net width (digits) or MLP width (toy)
    num_classes: int = 0  # > 0: class-conditional, trained with label dropout for guidance
    p_uncond: float = 0.2  # probability of dropping the label during training (CFG)
    dropout: float = 0.0  # in the U-Net's residual blocks (1000 training images overfit)
    head: str = "eps"  # "eps": the net predicts eps; "levels": logits over the 17 levels (below)
    bound_samples: int = 64  # timesteps per image in log_prob's stratified estimator
    proposal_bins: int = 32  # log-SNR bins of the adaptive importance sampler over t


class _Denoiser(nn.Module):
    """What Diffusion and FlowMatching share: the network, the data space and label dropout."""

    def _setup(self, c: DiffusionConfig, out_per_channel: int = 1) -> None:
        if c.data == "digits":
            self.shape = (1, 8, 8)
            self.net = UNet(out_per_channel, c.channels, c.num_classes, c.dropout)
        elif c.data == "toy":
            self.shape = (2,)
            self.net = MLP(2, c.channels, c.num_classes)
        else:
            raise ValueError(f"Unknown data {c.data!r}: expected 'digits' or 'toy'")

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return digits_to_model(x) if self.config.data == "digits" else x.float()

    def _decode(self, x: torch.Tensor) -> torch.Tensor:
        return model_to_digits(x) if self.config.data == "digits" else x

    def _drop_labels(self, y: torch.Tensor | None) -> torch.Tensor | None:
        if y is None or not self.training:
            return y
        drop = torch.rand(y.shape, device=y.device) < self.config.p_uncond
        return torch.where(drop, torch.full_like(y, self.config.num_classes), y)

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _labels(self, n: int, y: torch.Tensor | int | None) -> torch.Tensor | None:
        if isinstance(y, int):
            y = torch.full((n,), y, dtype=torch.long)
        return None if y is None else y.to(self._device())


class Diffusion(_Denoiser):
    """DDPM with eps-prediction: ``loss(x[, y])``, ``sample``, ``ddim_sample``, ``log_prob``.

    ``head="levels"`` (digits only) lets the network output logits over the 17 levels per pixel and
    adds the exact log-likelihood of x_t under each level, -(x_t - sqrt(abar_t) v_k)^2 / (2(1 -
    abar_t)), before the softmax; xhat_0 is the mean level and eps is read off x_t. At low noise the
    likelihood term dominates and xhat_0 snaps to the grid, which is what makes the bound tight.
    """

    def __init__(self, config: DiffusionConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or DiffusionConfig()
        if c.head not in {"eps", "levels"} or (c.head == "levels" and c.data != "digits"):
            raise ValueError(f"head must be 'eps', or 'levels' for digits; got {c.head!r}")
        self._setup(c, LEVELS if c.head == "levels" else 1)
        abar = {"linear": linear_schedule, "cosine": cosine_schedule}[c.schedule](c.T)  # (T+1,)
        snr = abar / (1 - abar)
        # w_t = 1/2 (SNR_{t-1}/SNR_t - 1) for t = 2..T; w_0 = w_1 = 0 (t=1 is the decoder's)
        w = torch.zeros(c.T + 1, dtype=torch.float64)
        w[2:] = 0.5 * (snr[1:-1] / snr[2:] - 1)
        self.register_buffer("abar", abar.float())
        self.register_buffer("beta", torch.cat([torch.zeros(1), 1 - abar[1:] / abar[:-1]]).float())
        self.register_buffer("w", w.float())
        # log-SNR bins for the importance sampler: equal shares of W = sum_t w_t
        cdf = (w.cumsum(0) / w.sum()).float()
        bins = c.proposal_bins
        self.register_buffer("bin_of_t", (cdf * bins).clamp(max=bins - 1e-3).long())
        self.register_buffer("bin_loss", torch.ones(bins))  # running share of the bound per bin
        self.register_buffer("levels", torch.linspace(-1, 1, LEVELS))

    # ------------------------------------------------------------------ the forward process
    def _bcast(self, a: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return a[t].view(-1, *([1] * len(self.shape)))  # (B,) -> (B, 1, ...)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (model space)."""
        ab = self._bcast(self.abar, t)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * eps

    def posterior(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> tuple:
        r"""Mean and variance of q(x_{t-1} | x_t, x_0) (Ho et al. 2020, eq. 7)."""
        ab, ab_prev = self._bcast(self.abar, t), self._bcast(self.abar, t - 1)
        beta = self._bcast(self.beta, t)  # 1 - abar_t / abar_{t-1}, computed in float64
        # mu = [sqrt(abar_{t-1}) beta_t x_0 + sqrt(alpha_t) (1 - abar_{t-1}) x_t] / (1 - abar_t)
        mean = (ab_prev.sqrt() * beta * x0 + (1 - beta).sqrt() * (1 - ab_prev) * xt) / (1 - ab)
        return mean, beta * (1 - ab_prev) / (1 - ab)

    # ------------------------------------------------------------------ the network's prediction
    def predict(self, xt: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> tuple:
        """(epshat, xhat_0) at integer times t (B,)."""
        out = self.net(xt, t.float() / self.config.T, y)
        ab = self._bcast(self.abar, t)
        if self.config.head == "eps":
            eps = out.float()
            return eps, (xt - (1 - ab).sqrt() * eps) / ab.sqrt()
        # logits_k = net_k - (x_t - sqrt(abar) v_k)^2 / (2 (1 - abar)), per pixel, over k = 0..16
        v = self.levels.view(1, LEVELS, 1, 1)
        logits = out.float() - (xt - ab.sqrt() * v) ** 2 / (2 * (1 - ab))  # (B, 17, 8, 8)
        x0 = (logits.softmax(1) * v).sum(1, keepdim=True)  # (B, 1, 8, 8)
        return (xt - ab.sqrt() * x0) / (1 - ab).sqrt(), x0

    def guided_eps(self, xt: torch.Tensor, t: torch.Tensor, y, guidance: float) -> tuple:
        """Classifier-free guidance: eps = eps_u + w (eps_c - eps_u) (Ho & Salimans 2022)."""
        eps, x0 = self.predict(xt, t, y)
        if y is None or guidance == 1.0:
            return eps, x0
        eps_u, _ = self.predict(xt, t, None)
        eps = eps_u + guidance * (eps - eps_u)
        ab = self._bcast(self.abar, t)
        return eps, (xt - (1 - ab).sqrt() * eps) / ab.sqrt()

    # ------------------------------------------------------------------ training and the bound
    def proposal(self) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Importance distribution q_t over t = 0..T and the weights w_t / q_t, (T+1,) each.

        Within a log-SNR bin q_t is proportional to w_t; across bins it is 10% uniform in log-SNR
        and 90% proportional to each bin's running share of the bound (Nichol & Dhariwal 2021).
        Any such q gives an unbiased estimate; a good q only lowers the variance.
        """
        nb = len(self.bin_loss)
        share = 0.1 / nb + 0.9 * self.bin_loss / self.bin_loss.sum()  # (nb,)
        w_bin = torch.zeros(nb, device=self.w.device).index_add_(0, self.bin_of_t, self.w)
        q = self.w / w_bin[self.bin_of_t].clamp(min=1e-30) * share[self.bin_of_t]  # (T+1,)
        q = q / q.sum()  # bins without any w_t > 0 (t = 0, 1) get nothing
        ratio = torch.where(q > 0, self.w / q.clamp(min=1e-30), torch.zeros_like(q))
        return q, ratio

    def _sample_t(self, n: int, u: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """t ~ q by inverting its CDF at uniforms u (B,); returns t and w_t / q_t."""
        u = torch.rand(n, device=self.w.device) if u is None else u
        q, ratio = self.proposal()
        cdf = q.cumsum(0)
        t = torch.searchsorted(cdf, u.clamp(max=1 - 1e-6) * cdf[-1]).clamp(2, self.config.T)
        return t, ratio[t]

    def diffusion_term(
        self, x0: torch.Tensor, y=None, u: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One-sample estimate of sum_{t=2}^T L_{t-1} = E_{t ~ q} (w_t / q_t) ||eps - epshat||^2."""
        t, ratio = self._sample_t(len(x0), u)
        eps = torch.randn_like(x0)
        eps_hat, _ = self.predict(self.q_sample(x0, t, eps), t, y)
        terms = ratio * (eps - eps_hat).float().pow(2).flatten(1).sum(1)  # (B,)
        if self.training:  # track each bin's share of the bound, sum_{t in bin} w_t l_t
            # = q(bin) E_q[(w_t / q_t) l_t | bin]
            with torch.no_grad():
                nb, b = len(self.bin_loss), self.bin_of_t[t]
                q, _ = self.proposal()
                q_bin = torch.zeros(nb, device=q.device).index_add_(0, self.bin_of_t, q)
                est = torch.zeros(nb, device=q.device).index_add_(0, b, terms * q_bin[b])
                cnt = torch.zeros(nb, device=q.device).index_add_(0, b, torch.ones_like(terms))
                seen = cnt > 0
                new = torch.where(seen, est / cnt.clamp(min=1), self.bin_loss)
                self.bin_loss.lerp_(new, 0.05 * seen.float())
        return terms

    def loss(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The bound's diffusion term (nats/image for digits), importance-sampled over t."""
        return self.diffusion_term(self._encode(x), self._drop_labels(y)).mean()

    def prior_term(self, x0: torch.Tensor) -> torch.Tensor:
        """KL(q(x_T | x_0) || N(0, I)), (B,)."""
        ab = self.abar[-1]
        mean2, var = ab * x0.pow(2), 1 - ab
        return 0.5 * (mean2 + var - 1 - var.log()).flatten(1).sum(1)

    def decoder_term(self, x0: torch.Tensor, y=None) -> torch.Tensor:
        """L_0 = -log p(x_0 | x_1): N(xhat_0, beta_1) integrated over each level's bin, (B,)."""
        t = torch.ones(len(x0), dtype=torch.long, device=x0.device)
        _, mean = self.predict(self.q_sample(x0, t, torch.randn_like(x0)), t, y)
        std = self.beta[1].sqrt()
        normal = torch.distributions.Normal(mean, std, validate_args=False)
        # the edge bins reach to -inf and +inf
        hi = torch.where(x0 > 1 - HALF_BIN, torch.inf, x0 + HALF_BIN)
        lo = torch.where(x0 < -1 + HALF_BIN, -torch.inf, x0 - HALF_BIN)
        mass = (normal.cdf(hi) - normal.cdf(lo)).clamp(min=1e-12)
        return -mass.log().flatten(1).sum(1)

    @torch.no_grad()
    def log_prob(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Minus the variational bound on the discrete data, nats per image, (B,).

        Estimator: ``bound_samples`` = K timesteps per image, stratified in log-SNR
        (u_k = (k + U)/K), one eps each, plus one decoder sample: unbiased for the bound.
        """
        if self.config.data != "digits":
            raise ValueError("log_prob is defined for the discrete digits only")
        x0 = digits_to_model(x)
        K = self.config.bound_samples
        diff = torch.zeros(len(x0), device=x0.device)
        for k in range(K):
            u = (k + torch.rand(len(x0), device=x0.device)) / K
            diff += self.diffusion_term(x0, y, u) / K
        return -(self.prior_term(x0) + diff + self.decoder_term(x0, y))

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, n: int, y=None, guidance: float = 1.0, return_path: bool = False):
        """Ancestral sampling, t = T..1: x_{t-1} = posterior mean(xhat_0, x_t) + sqrt(beta~_t) z."""
        return self.ddim_sample(
            n, self.config.T, eta=1.0, y=y, guidance=guidance, return_path=return_path
        )

    @torch.no_grad()
    def ddim_sample(
        self,
        n: int,
        steps: int = 50,
        eta: float = 0.0,
        y=None,
        guidance: float = 1.0,
        return_path: bool = False,
        x_T: torch.Tensor | None = None,
    ):
        r"""DDIM (Song et al. 2021) on ``steps`` evenly spaced times; eta=1 and steps=T is DDPM.

        x_s = sqrt(abar_s) xhat_0 + sqrt(1 - abar_s - sigma^2) epshat + sigma z,
        sigma = eta sqrt((1 - abar_s)/(1 - abar_t)) sqrt(1 - abar_t/abar_s).
        """
        dev, y = self._device(), self._labels(n, y)
        # the time grid is plain ints: no data-dependent control flow on the device (meta-safe)
        times = torch.linspace(self.config.T, 0, steps + 1).round().long().tolist()
        x = torch.randn(n, *self.shape, device=dev) if x_T is None else x_T.to(dev)
        path = [x]
        for t, s in zip(times[:-1], times[1:]):
            tt = torch.full((n,), t, dtype=torch.long, device=dev)
            eps, x0 = self.guided_eps(x, tt, y, guidance)
            if self.config.data == "digits":
                x0 = x0.clamp(-1, 1)
                eps = (x - self.abar[t].sqrt() * x0) / (1 - self.abar[t]).sqrt()
            ab_t, ab_s = self.abar[t], self.abar[s]
            sigma = eta * ((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)).sqrt()
            x = ab_s.sqrt() * x0 + (1 - ab_s - sigma**2).clamp(min=0).sqrt() * eps
            if s > 0:
                x = x + sigma * torch.randn_like(x)
            path.append(x)
        out = self._decode(x)
        return (out, torch.stack(path)) if return_path else out


class FlowMatching(_Denoiser):
    r"""Flow matching with the conditional OT path (Lipman et al. 2023; Liu et al. 2023).

    x_t = (1 - (1 - sigma_min) t) x_0 + t x_1, x_0 ~ N(0, I) noise, x_1 data; the network v(x_t, t)
    regresses the path's velocity u = x_1 - (1 - sigma_min) x_0; sampling integrates dx/dt = v.
    """

    def __init__(self, config: DiffusionConfig | None = None, sigma_min: float = 1e-3) -> None:
        super().__init__()
        self.config = config or DiffusionConfig()
        self.sigma_min = sigma_min
        self._setup(self.config, 1)

    def loss(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        x1 = self._encode(x)
        x0 = torch.randn_like(x1)
        t = torch.rand(len(x1), device=x1.device)
        tb = t.view(-1, *([1] * len(self.shape)))
        xt = (1 - (1 - self.sigma_min) * tb) * x0 + tb * x1
        u = x1 - (1 - self.sigma_min) * x0
        return (self.net(xt, t, self._drop_labels(y)).float() - u).pow(2).flatten(1).sum(1).mean()

    @torch.no_grad()
    def sample(
        self,
        n: int,
        steps: int = 50,
        y=None,
        guidance: float = 1.0,
        return_path: bool = False,
        x_0: torch.Tensor | None = None,
    ):
        """Euler steps x <- x + v(x, t) dt from t = 0 (noise) to t = 1 (data)."""
        dev, y = self._device(), self._labels(n, y)
        x = torch.randn(n, *self.shape, device=dev) if x_0 is None else x_0.to(dev)
        path = [x]
        for i in range(steps):
            t = torch.full((n,), i / steps, device=dev)
            v = self.net(x, t, y).float()
            if y is not None and guidance != 1.0:
                v_u = self.net(x, t, None).float()
                v = v_u + guidance * (v - v_u)
            x = x + v / steps
            path.append(x)
        out = self._decode(x)
        return (out, torch.stack(path)) if return_path else out


# --------------------------------------------------------------------------- recipes
def reference_config() -> DiffusionConfig:
    """The book's digits model: class-conditional U-Net, 'levels' head, linear schedule."""
    return DiffusionConfig(
        data="digits",
        schedule="linear",
        channels=32,
        num_classes=NUM_CLASSES,
        head="levels",
        dropout=0.2,
    )


def train_reference(
    *, checkpoint: str | Path | None = None, progress: bool = True, seed: int = 0
) -> tuple[Diffusion, History]:
    """Train the book's digits model; validation (early stopping) scores the unconditional bound."""
    torch.manual_seed(seed)
    model = Diffusion(reference_config())
    epochs = budget(fast=2, full=70)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    train = digits_loader("train", 64, labels=True)
    val = digits_loader("val", 350)  # no labels: loss(x) is the unconditional diffusion term
    hist = fit(
        model, opt, train, val, epochs=epochs, checkpoint=checkpoint, progress=progress,
        seed=seed, scheduler=sched, grad_clip=1.0, desc="diffusion",
    )  # fmt: skip
    return model, hist


def train_toy(
    model: nn.Module,
    name: str = "ring8",
    *,
    n: int = 8192,
    epochs: int | None = None,
    checkpoint: str | Path | None = None,
    progress: bool = True,
    seed: int = 0,
) -> History:
    """Train a 2D diffusion or flow-matching model on one of ``data.toy_2d``'s toys."""
    epochs = budget(fast=80, full=300) if epochs is None else epochs
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    loader = make_loader(toy_2d(name, n, seed=seed), batch_size=512, shuffle=True)
    return fit(
        model, opt, loader, epochs=epochs, checkpoint=checkpoint, progress=progress, seed=seed,
        scheduler=sched, desc=f"toy-{name}",
    )  # fmt: skip
