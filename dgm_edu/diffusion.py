"""Diffusion models: DDPM, DDIM, classifier-free guidance, and the variational bound.

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
When the step in log-SNR is small, w_t is about half of it, so the bound is uniform in log-SNR
over ||eps - epshat||^2 (Kingma et al. 2021). Training samples t by importance: it starts from the
proposal w_t / W (W = sum_t w_t) and adapts it to each log-SNR bin's running share of the loss,
mixed with 10% spread evenly over the bins; every term is divided by its proposal probability,
so the loss stays an unbiased estimator of the sum.

- :func:`linear_schedule`, :func:`cosine_schedule`; the networks are in :mod:`dgm_edu.unet`;
  :class:`Denoiser`: what diffusion and flow matching (:mod:`dgm_edu.flow_matching`) share.
- :class:`Diffusion`: ``loss``, ``sample`` (ancestral), ``ddim_sample`` (any step count, eta),
  classifier-free guidance (``y``, ``guidance``), ``log_prob`` (the bound), ``posterior``;
  ``abar_at``, ``beta_at`` and ``predict_at`` at continuous times s = t/T (the SDE view,
  :mod:`dgm_edu.sde`).
- :func:`train_reference`, :func:`train_toy`: the book's recipes (``train_toy`` trains either).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dgm_edu import checks
from dgm_edu.data import (
    IMAGE_SHAPE,
    LEVELS,
    NUM_CLASSES,
    digits_loader,
    from_signed,
    to_signed,
    validate_digits,
)
from dgm_edu.runtime import budget, module_device, seed_everything
from dgm_edu.train import History, fit, fit_toy
from dgm_edu.unet import MLP, UNet

Pair = tuple[torch.Tensor, torch.Tensor]
Samples = torch.Tensor | Pair  # the samples, or (samples, the path of states) with return_path
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


SCHEDULES = {"linear": linear_schedule, "cosine": cosine_schedule}


@dataclass
class DiffusionConfig:
    data: str = "digits"  # "digits" (8x8, U-Net) or "toy" (points in R^dim, MLP)
    dim: int = 2  # "toy" only: the dimension of the points (2 for the 2D toys, 16 for latents)
    schedule: str = "linear"  # "linear" or "cosine"
    T: int = 1000
    channels: int = 64  # U-Net width (digits) or MLP width (toy)
    num_classes: int = 0  # > 0: class-conditional, trained with label dropout for guidance
    p_uncond: float = 0.2  # probability of dropping the label during training (CFG)
    dropout: float = 0.0  # in the U-Net's residual blocks (1000 training images overfit)
    head: str = "eps"  # "eps": the net predicts eps; "levels": logits over the 17 levels (below)
    bound_samples: int = 64  # timesteps per image in log_prob's stratified estimator
    proposal_bins: int = 32  # log-SNR bins of the adaptive importance sampler over t
    weighting: str = "bound"  # training loss: "bound" (the ELBO's w_t) or "simple" (L_simple)

    def __post_init__(self) -> None:
        if self.data not in ("digits", "toy"):
            raise ValueError(f"data must be 'digits' or 'toy', got {self.data!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be 'linear' or 'cosine', got {self.schedule!r}")
        if self.head not in ("eps", "levels") or (self.head == "levels" and self.data != "digits"):
            raise ValueError(f"head must be 'eps', or 'levels' for digits; got {self.head!r}")
        if self.weighting not in ("bound", "simple"):
            raise ValueError(f"weighting must be 'bound' or 'simple', got {self.weighting!r}")
        for name, low in (("T", 2), ("num_classes", 0), ("bound_samples", 1), ("proposal_bins", 1)):
            checks.integer(getattr(self, name), name, low=low)
        checks.integer(self.dim, "dim", low=1)
        if self.data == "digits" and self.dim != 2:
            raise ValueError(
                f"dim sets the points' dimension of data='toy'; data='digits' needs the "
                f"default dim=2, got dim={self.dim}"
            )
        if not 0 <= checks.real(self.p_uncond, "p_uncond") < 1:
            raise ValueError(f"p_uncond must lie in [0, 1), got {self.p_uncond}")


class Denoiser(nn.Module):
    """What Diffusion and FlowMatching share: the network, the data space, labels and guidance.

    ``config.data="digits"``: a U-Net on the 8x8 digits only (levels in, validated; levels out);
    ``"toy"``: an MLP on points ``(B, dim)``, dim = ``config.dim`` (2 for the 2D toys, the
    VAE's latent dimension for latent diffusion). Labels: a class-conditional model
    (``num_classes`` = K > 0) takes classes in [0, K). Trained with label dropout
    (``p_uncond > 0``), ``y=None`` means p(x) (the null label) everywhere; with ``p_uncond = 0``
    it has no p(x) of its own, so ``loss`` and ``log_prob`` need y and sampling stratifies the
    classes (:mod:`dgm_edu.checks`).
    """

    def __init__(self, config: DiffusionConfig, out_per_channel: int = 1) -> None:
        super().__init__()
        self.config = c = config
        if c.data == "digits":
            self.shape: tuple[int, ...] = IMAGE_SHAPE
            self.net: nn.Module = UNet(out_per_channel, c.channels, c.num_classes, c.dropout)
        else:  # "toy": the config refuses anything else
            self.shape = (c.dim,)  # points (B, dim)
            self.net = MLP(c.dim, c.channels, c.num_classes)  # (B, dim) -> (B, dim)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:  # digits: levels 0..16 -> grid -1..1
        if self.config.data == "digits":
            return to_signed(validate_digits(x))
        return checks.points(x, self.config.dim, "x").float()  # (B, dim)

    def _decode(self, x: torch.Tensor) -> torch.Tensor:  # digits: the nearest level, int64
        x = checks.finite(x, f"{type(self).__name__} samples")
        return checks.levels_out(from_signed(x)) if self.config.data == "digits" else x

    def _labels(
        self, y: torch.Tensor | int | None, n: int, *, sampling: bool = False
    ) -> torch.Tensor | None:
        c = self.config  # checked labels, int64 on the model's device (rules: the class doc)
        conditional_only = c.num_classes > 0 and c.p_uncond == 0
        if y is None and conditional_only and not sampling:
            raise ValueError(
                "y is required: this model is class-conditional without label dropout "
                "(p_uncond=0), so it has no unconditional p(x)"
            )
        dev, stratify = module_device(self), sampling and conditional_only
        return checks.labels(y, n, c.num_classes, dev, stratify=stratify)

    def _guidance(self, guidance: float, y: torch.Tensor | None) -> float:
        """A finite guidance weight; != 1 needs labels and a model trained with label dropout."""
        guidance = checks.real(guidance, "guidance")
        if guidance != 1.0 and (y is None or self.config.p_uncond == 0):
            raise ValueError(
                f"guidance={guidance} mixes the predictions with and without the label: it needs "
                "labels y and a class-conditional model trained with label dropout (p_uncond > 0)"
            )
        return guidance

    def _drop_labels(self, y: torch.Tensor | None) -> torch.Tensor | None:
        if y is None or not self.training:
            return y
        drop = torch.rand(y.shape, device=y.device) < self.config.p_uncond
        return torch.where(drop, torch.full_like(y, self.config.num_classes), y)

    def _noise(self, n: int, start: torch.Tensor | None, name: str) -> torch.Tensor:
        """Where a sampler starts, ``(n, *shape)``: N(0, I) noise, or ``start`` when given."""
        if start is None:
            return torch.randn(n, *self.shape, device=module_device(self))
        if not isinstance(start, torch.Tensor) or tuple(start.shape) != (n, *self.shape):
            got = tuple(start.shape) if isinstance(start, torch.Tensor) else type(start).__name__
            raise ValueError(f"{name} must be a tensor of shape {(n, *self.shape)}, got {got}")
        return start.to(module_device(self))


class Diffusion(Denoiser):
    """DDPM with eps-prediction: ``loss(x[, y])``, ``sample``, ``ddim_sample``, ``log_prob``.

    ``head="levels"`` (digits only) lets the network output logits over the 17 levels per pixel and
    adds the exact log-likelihood of x_t under each level g_k, -(x_t - sqrt(abar_t) g_k)^2 / (2(1 -
    abar_t)), before the softmax; xhat_0 is the mean level and eps is read off x_t. At low noise the
    likelihood term dominates and xhat_0 snaps to the grid, which is what makes the bound tight.
    """

    def __init__(self, config: DiffusionConfig | None = None) -> None:
        c = config or DiffusionConfig()
        super().__init__(c, LEVELS if c.head == "levels" else 1)
        abar = SCHEDULES[c.schedule](c.T)  # (T+1,)
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

    def posterior(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> Pair:
        """Mean and variance of q(x_{t-1} | x_t, x_0) (Ho et al. 2020, eq. 7)."""
        ab, ab_prev = self._bcast(self.abar, t), self._bcast(self.abar, t - 1)
        beta = self._bcast(self.beta, t)  # 1 - abar_t / abar_{t-1}, computed in float64
        # mu = [sqrt(abar_{t-1}) beta_t x_0 + sqrt(alpha_t) (1 - abar_{t-1}) x_t] / (1 - abar_t)
        mean = (ab_prev.sqrt() * beta * x0 + (1 - beta).sqrt() * (1 - ab_prev) * xt) / (1 - ab)
        return mean, beta * (1 - ab_prev) / (1 - ab)

    # ------------------------------------------------------------------ continuous time
    def _grid(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Where continuous times s (B,) in [0, 1] fall on the steps: (k, frac) with s T = k + frac,
        k in [0, T-1]; times within 1e-4 of a step snap to it, so s = t/T lands on t exactly."""
        T = self.config.T
        u = s.double().clamp(0, 1) * T
        u = torch.where((u - u.round()).abs() < 1e-4, u.round(), u)
        k = u.floor().clamp(max=T - 1)
        return k.long(), (u - k).float()

    def _continuous_times(self, s: torch.Tensor | float, n: int | None = None) -> torch.Tensor:
        """Times s as a float tensor (n,) on the model's device, checked to lie in [0, 1]."""
        s = torch.as_tensor(s, dtype=torch.float32, device=self.abar.device)
        if s.dim() == 0 and n is not None:
            s = s.expand(n)
        if s.dim() != 1 or (n is not None and len(s) != n):
            want = "(B,)" if n is None else f"({n},)"
            raise ValueError(f"s must be a float or a tensor of shape {want}, got {tuple(s.shape)}")
        if s.device.type != "meta" and ((s < 0) | (s > 1) | s.isnan()).any():
            raise ValueError("s must hold continuous times in [0, 1] (s = t / T)")
        return s

    def abar_at(self, s: torch.Tensor | float) -> torch.Tensor:
        """abar(s) at continuous times s = t/T in [0, 1], (B,): log abar linearly interpolated
        between the steps, abar(s) = abar_k^(1 - f) abar_{k+1}^f with s T = k + f; abar(t/T) is
        exactly ``abar[t]``."""
        k, f = self._grid(self._continuous_times(s))
        return self.abar[k] ** (1 - f) * self.abar[k + 1] ** f

    def beta_at(self, s: torch.Tensor | float) -> torch.Tensor:
        """beta(s) = -d log abar / ds at continuous times s (B,): on [k/T, (k+1)/T) the constant
        slope -T log(abar_{k+1} / abar_k) = -T log(1 - beta_{k+1}) of :meth:`abar_at`."""
        k, _ = self._grid(self._continuous_times(s))
        return -self.config.T * torch.log1p(-self.beta[k + 1])

    # ------------------------------------------------------------------ the network's prediction
    def _predict(
        self, xt: torch.Tensor, s: torch.Tensor, ab: torch.Tensor, y: torch.Tensor | None
    ) -> Pair:
        """(epshat, xhat_0) from the net at times s (B,) in [0, 1], abar broadcast (B, 1, ...)."""
        out = self.net(xt, s, y)
        if self.config.head == "eps":
            eps = out.float()
            return eps, (xt - (1 - ab).sqrt() * eps) / ab.sqrt()
        # logits_k = net_k - (x_t - sqrt(abar) g_k)^2 / (2 (1 - abar)), per pixel, grey levels g_k
        g = self.levels.view(1, LEVELS, 1, 1)  # k = 0..16
        logits = out.float() - (xt - ab.sqrt() * g) ** 2 / (2 * (1 - ab))  # (B, 17, 8, 8)
        x0 = (logits.softmax(1) * g).sum(1, keepdim=True)  # (B, 1, 8, 8)
        return (xt - ab.sqrt() * x0) / (1 - ab).sqrt(), x0

    def predict(self, xt: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> Pair:
        """(epshat, xhat_0) at integer times t (B,)."""
        return self._predict(xt, t.float() / self.config.T, self._bcast(self.abar, t), y)

    def predict_at(
        self, xt: torch.Tensor, s: torch.Tensor | float, y: torch.Tensor | None = None
    ) -> Pair:
        """(epshat, xhat_0) at continuous times s = t/T in [0, 1], a float or (B,), with
        abar(s) from :meth:`abar_at`; at s = t/T it is :meth:`predict` at t. The network was
        trained at the T steps only: between them it interpolates (the SDE view,
        :mod:`dgm_edu.sde`).
        """
        s = self._continuous_times(s, len(xt))
        ab = self.abar_at(s).view(-1, *([1] * len(self.shape)))  # (B, 1, ...)
        return self._predict(xt, s, ab, y)

    def guided_eps(
        self, xt: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None, guidance: float
    ) -> Pair:
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
        """Importance distribution q_t over t = 0..T and the weights w_t / q_t, (T+1,) each.

        Within a log-SNR bin q_t is proportional to w_t; across bins it is 10% uniform in log-SNR
        and 90% proportional to each bin's running share of the bound (a variant of Nichol &
        Dhariwal 2021, who track each t's root-mean-square loss instead).
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
        self,
        x0: torch.Tensor,
        y: torch.Tensor | None = None,
        u: torch.Tensor | None = None,
        *,
        track: bool = False,
    ) -> torch.Tensor:
        """One-sample estimate of sum_{t=2}^T L_{t-1} = E_{t ~ q} (w_t / q_t) ||eps - epshat||^2.

        ``track=True`` (``loss`` in train mode) also updates each bin's running share of the bound.
        """
        t, ratio = self._sample_t(len(x0), u)
        eps = torch.randn_like(x0)
        eps_hat, _ = self.predict(self.q_sample(x0, t, eps), t, y)
        terms = ratio * (eps - eps_hat).float().pow(2).flatten(1).sum(1)  # (B,)
        if track:  # track each bin's share of the bound, sum_{t in bin} w_t l_t
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

    def simple_term(self, x0: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """L_simple (Ho et al. 2020): ‖eps − epshat‖² at t ~ U{1, ..., T}, unweighted, (B,)."""
        t = torch.randint(1, self.config.T + 1, (len(x0),), device=x0.device)
        eps = torch.randn_like(x0)
        eps_hat, _ = self.predict(self.q_sample(x0, t, eps), t, y)
        return (eps - eps_hat).float().pow(2).flatten(1).sum(1)

    def loss(self, x: torch.Tensor, y: torch.Tensor | int | None = None) -> torch.Tensor:
        """The training objective: ``weighting="bound"``, the bound's diffusion term (nats/image
        for digits), importance-sampled over t; ``"simple"``, L_simple (:meth:`simple_term`).

        Train mode has two side effects: each label is replaced by the null label with probability
        ``p_uncond`` (classifier-free guidance), and (``"bound"`` only) the running share of the
        bound per log-SNR bin (``bin_loss``, which the importance sampler follows) is updated.
        Eval mode: the validation objective, no side effects; ``y=None`` gives the unconditional
        term.
        """
        x0 = self._encode(x)
        y = self._drop_labels(self._labels(y, len(x0)))
        if self.config.weighting == "simple":
            return self.simple_term(x0, y).mean()
        return self.diffusion_term(x0, y, track=self.training).mean()

    def prior_term(self, x0: torch.Tensor) -> torch.Tensor:
        """KL(q(x_T | x_0) || N(0, I)), (B,)."""
        ab = self.abar[-1]
        mean2, var = ab * x0.pow(2), 1 - ab
        return 0.5 * (mean2 + var - 1 - var.log()).flatten(1).sum(1)

    def decoder_term(
        self, x0: torch.Tensor, y: torch.Tensor | None = None, *, x1: torch.Tensor | None = None
    ) -> torch.Tensor:
        """L_0 = -log p(x_0 | x_1): N(xhat_0, beta_1) integrated over each level's bin, (B,).

        x_1 ~ q(x_1 | x_0) is drawn here, or given as ``x1`` (model space, the shape of x_0)."""
        t = torch.ones(len(x0), dtype=torch.long, device=x0.device)
        if x1 is None:
            x1 = self.q_sample(x0, t, torch.randn_like(x0))
        elif not isinstance(x1, torch.Tensor) or x1.shape != x0.shape:
            got = tuple(x1.shape) if isinstance(x1, torch.Tensor) else type(x1).__name__
            raise ValueError(
                f"x1 must be a tensor of the shape of x0, {tuple(x0.shape)}, got {got}"
            )
        _, mean = self.predict(x1, t, y)
        std = self.beta[1].sqrt()
        normal = torch.distributions.Normal(mean, std, validate_args=False)
        # the edge bins reach to -inf and +inf
        hi = torch.where(x0 > 1 - HALF_BIN, torch.inf, x0 + HALF_BIN)
        lo = torch.where(x0 < -1 + HALF_BIN, -torch.inf, x0 - HALF_BIN)
        mass = (normal.cdf(hi) - normal.cdf(lo)).clamp(min=1e-12)
        return -mass.log().flatten(1).sum(1)

    def log_prob(self, x: torch.Tensor, y: torch.Tensor | int | None = None) -> torch.Tensor:
        """Minus the variational bound on the discrete data, nats per image, (B,).

        Estimator: ``bound_samples`` = K timesteps per image, stratified over the importance
        distribution q (t_k = the q-quantile at u_k = (k + U)/K), one eps each, plus one decoder
        sample: unbiased for the bound. Keeps gradients: wrap it in ``torch.no_grad()`` to
        evaluate (K + 1 network passes per image). No side effects in either mode.
        """
        if self.config.data != "digits":
            raise ValueError("log_prob is defined for the discrete digits only (data='digits')")
        x0 = self._encode(x)
        y = self._labels(y, len(x0))
        K = self.config.bound_samples
        diff = torch.zeros(len(x0), device=x0.device)
        for k in range(K):
            u = (k + torch.rand(len(x0), device=x0.device)) / K
            diff = diff + self.diffusion_term(x0, y, u) / K
        return -(self.prior_term(x0) + diff + self.decoder_term(x0, y))

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        y: torch.Tensor | int | None = None,
        guidance: float = 1.0,
        return_path: bool = False,
    ) -> Samples:
        """Ancestral sampling, t = T..1: x_{t-1} = posterior mean(xhat_0, x_t) + sqrt(beta~_t) z."""
        return self.ddim_sample(
            n, steps=self.config.T, eta=1.0, y=y, guidance=guidance, return_path=return_path
        )

    @torch.no_grad()
    def ddim_sample(
        self,
        n: int,
        *,
        steps: int | None = None,
        eta: float = 0.0,
        y: torch.Tensor | int | None = None,
        guidance: float = 1.0,
        return_path: bool = False,
        x_T: torch.Tensor | None = None,
    ) -> Samples:
        """DDIM (Song et al. 2021) on ``steps`` evenly spaced times in [1, T] (default min(50, T));
        eta=1 and steps=T is DDPM.

        x_s = sqrt(abar_s) xhat_0 + sqrt(1 - abar_s - sigma^2) epshat + sigma z,
        sigma = eta sqrt((1 - abar_s)/(1 - abar_t)) sqrt(1 - abar_t/abar_s), eta >= 0.
        """
        n, T = checks.count(n), self.config.T
        steps = checks.steps(min(50, T) if steps is None else steps, high=T)
        eta = checks.real(eta, "eta", nonnegative=True)
        y = self._labels(y, n, sampling=True)
        guidance = self._guidance(guidance, y)
        x = self._noise(n, x_T, "x_T")
        # the time grid is plain ints: no data-dependent control flow on the device (meta-safe)
        times = torch.linspace(T, 0, steps + 1).round().long().tolist()
        path = [x]
        for t, s in zip(times[:-1], times[1:]):
            tt = torch.full((n,), t, dtype=torch.long, device=x.device)
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


REFERENCE_BATCH_SIZE = 64  # the recipe's training batches: 16 steps per epoch of 1000 images


def reference_ema() -> float:
    """The recipe's Polyak decay d: 0.998 in full mode (a time constant of 500 steps, about 31
    epochs of 16 batches), 0.9 in fast mode (whose 2 epochs are 32 steps in all)."""
    return budget(fast=0.9, full=0.998)


def train_reference(
    *, checkpoint: str | Path | None = None, progress: bool = True, seed: int = 0
) -> tuple[Diffusion, History]:
    """Train the book's digits model: Adam with a cosine learning-rate decay, and the best epoch
    chosen on the unconditional diffusion term of an exponential moving average of the weights
    (Polyak averaging with decay :func:`reference_ema`), which is also the model returned."""
    seed_everything(seed)
    model = Diffusion(reference_config())
    epochs = budget(fast=2, full=200)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    train = digits_loader("train", REFERENCE_BATCH_SIZE, labels=True)
    val = digits_loader("val", 350)  # no labels: loss(x) is the unconditional diffusion term
    hist = fit(
        model, opt, train, val, epochs=epochs, checkpoint=checkpoint, progress=progress,
        seed=seed, scheduler=sched, grad_clip=1.0, desc="diffusion",
        ema=reference_ema(),  # θ̄ ← d θ̄ + (1 − d) θ after every step
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
    """Chapter 7's toy recipe for a 2D diffusion or flow-matching ``model``: the shared toy fit,
    :func:`dgm_edu.train.fit_toy`, on ``n`` points of ``data.toy_2d(name)``, with Adam (lr 3e-3)
    annealed to 0 by a cosine schedule, batches of 512, ``budget(fast=80, full=300)`` epochs."""
    epochs = budget(fast=80, full=300) if epochs is None else epochs
    return fit_toy(
        model, name, n=n, epochs=epochs, batch_size=512, lr=3e-3, schedule="cosine", seed=seed,
        checkpoint=checkpoint, progress=progress,
    )  # fmt: skip
