"""Energy-based models: a density known up to its normaliser, trained and sampled through its score.

An energy-based model (EBM) is

    p(x) = exp(−E(x)) / Z,        Z = ∫ exp(−E(x)) dx,

and its score is ∇ log p(x) = −∇E(x), with no Z in it, so it is sampled by Langevin dynamics
(:func:`dgm_edu.scores.langevin`).

- :class:`EnergyModel`: a small ConvNet energy on the dequantized digits (or an MLP on 2D toys),
  trained by contrastive divergence with Langevin negatives from a replay buffer of persistent
  chains (Du & Mordatch 2019), with ``log_prob`` from annealed importance sampling of log Z
  (Neal 2001; :func:`ais_log_weights`).

The model's space: digits are dequantized, y = (x + u) / 17 in the unit box [0, 1)^64
(:func:`dgm_edu.data.dequantize`), and the energy model's density lives on that box (the network
sees 2y − 1); 2D toys live on the box ``config.bounds``. A box makes exp(−E) normalisable for any
network, gives AIS a uniform base, and Langevin steps are clamped to it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from dgm_edu import checks
from dgm_edu.data import IMAGE_SHAPE, LEVELS, dequantize, quantize, validate_digits
from dgm_edu.densities import logmeanexp
from dgm_edu.rbm import AISEstimate
from dgm_edu.runtime import module_device
from dgm_edu.scores import box, langevin, mlp

Fn = Callable[[torch.Tensor], torch.Tensor]
DATA = ("digits", "toy")


# =========================================================================== AIS for an energy
def ais_log_weights(
    energy: Fn,
    shape: tuple[int, ...],
    bounds: tuple[float, float],
    *,
    num_betas: int = 200,
    num_runs: int = 64,
    step_size: float = 0.01,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, float, float]:
    """Annealed importance sampling (Neal 2001) from the uniform density on the box to
    exp(−E) on it. Returns the ``(R,)`` float64 log-weights, log Z_0 and the mean acceptance.

    The path f_β(x) = exp(−β E(x)) on the box [low, high]^D, β_k = k / K: f_0 is uniform, with
    Z_0 = (high − low)^D. Each run draws x ~ U(box), then for k = 1..K adds
    log f_k(x) − log f_{k−1}(x) = −(β_k − β_{k−1}) E(x) to its log-weight and takes one
    Metropolis-adjusted Langevin (MALA) step that leaves f_k invariant (proposals that leave the
    box are rejected: f is zero there). Then E[w] = Z / Z_0, so Z_0 · mean(w) is an unbiased
    estimate of Z, and its log under-estimates log Z on average (Jensen).
    """
    low, high = box(bounds)  # type: ignore[misc]
    num_betas = checks.integer(num_betas, "num_betas", low=1)
    num_runs = checks.integer(num_runs, "num_runs", low=2)
    eps = checks.real(step_size, "step_size", positive=True)
    dim = math.prod(shape)
    betas = torch.linspace(0.0, 1.0, num_betas + 1).tolist()

    def e_and_grad(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            e = energy(z)  # (R,)
            (g,) = torch.autograd.grad(e.sum(), z)
        return e.detach(), g.detach()

    def log_q(to: torch.Tensor, frm: torch.Tensor, g: torch.Tensor, beta: float) -> torch.Tensor:
        # log N(to; frm − ε β ∇E(frm), 2ε I), up to the constant that cancels in the ratio
        return -(to - frm + eps * beta * g).pow(2).flatten(1).sum(-1) / (4 * eps)

    u = torch.rand((num_runs, *shape), generator=generator, device=device, dtype=dtype)
    x = low + (high - low) * u  # exact draws of the uniform base, (R, ...)
    e, g = e_and_grad(x)
    log_w = torch.zeros(num_runs, dtype=torch.float64, device=device)
    accepted = 0.0
    for b_prev, b in zip(betas[:-1], betas[1:]):
        log_w += (-(b - b_prev) * e).double()  # log f_k(x) − log f_{k−1}(x)
        xi = torch.randn(x.shape, generator=generator, device=device, dtype=dtype)
        prop = x - eps * b * g + math.sqrt(2 * eps) * xi  # MALA proposal for exp(−β E)
        inside = ((prop >= low) & (prop <= high)).flatten(1).all(-1)  # (R,)
        e_p, g_p = e_and_grad(prop.clamp(low, high))
        log_a = -b * (e_p - e) + log_q(x, prop, g_p, b) - log_q(prop, x, g, b)
        uni = torch.rand(num_runs, generator=generator, device=device, dtype=dtype)
        accept = inside & (uni.log() < log_a)  # (R,)
        mask = accept.view(-1, *([1] * len(shape)))
        x, g = torch.where(mask, prop, x), torch.where(mask, g_p, g)
        e = torch.where(accept, e_p, e)
        accepted += float(accept.double().mean())
    return log_w, dim * math.log(high - low), accepted / num_betas


def ais_estimate(log_w: torch.Tensor, log_z0: float) -> AISEstimate:
    """log Ẑ = log Z_0 + log mean(w), with log(Ẑ (1 ∓ 3 s)), s = sd(w / mean w) / √R the
    relative standard error of the mean weight (the lower end is −inf when 3 s >= 1)."""
    log_mean = float(logmeanexp(log_w))
    rel = float((log_w - log_mean).exp().std()) / math.sqrt(len(log_w))
    low = math.log(1 - 3 * rel) if rel < 1 / 3 else -math.inf
    return AISEstimate(
        log_z0 + log_mean, log_z0 + log_mean + low, log_z0 + log_mean + math.log(1 + 3 * rel)
    )


# =========================================================================== the energy model
@dataclass
class EnergyConfig:
    """An :class:`EnergyModel`; every field is checked here.

    ``data``: "digits" (a ConvNet on the dequantized 8x8 digits, the unit box) or "toy" (an MLP
    on 2D points in the box ``bounds``). Training: ``langevin_steps`` of size ``step_size`` with
    noise scale ``noise`` and score clip ``clip`` from a replay buffer of ``buffer_size``
    persistent chains, a fraction ``reinit`` restarted from uniform noise each time; ``alpha``
    weighs the energy-magnitude regulariser. ``ais_*``: the AIS behind ``log_prob``.
    """

    data: str = "digits"
    channels: int = 32  # ConvNet width (digits)
    hidden: int = 128  # MLP width (toy)
    bounds: tuple[float, float] | None = None  # None: (0, 1) for digits, (−4, 4) for toys
    buffer_size: int = 1000
    reinit: float = 0.05
    langevin_steps: int = 20
    step_size: float = 1e-3
    noise: float = 1.0
    clip: float | None = None
    alpha: float = 0.1
    ais_betas: int = 500
    ais_runs: int = 100
    ais_step_size: float = 1e-4

    def __post_init__(self) -> None:
        if self.data not in DATA:
            raise ValueError(f"data must be one of {DATA}, got {self.data!r}")
        for name, low in (("channels", 1), ("hidden", 1), ("buffer_size", 1)):
            checks.integer(getattr(self, name), name, low=low)
        checks.integer(self.langevin_steps, "langevin_steps", low=1)
        checks.integer(self.ais_betas, "ais_betas", low=1)
        checks.integer(self.ais_runs, "ais_runs", low=2)
        if not 0 <= checks.real(self.reinit, "reinit") <= 1:
            raise ValueError(f"reinit must lie in [0, 1], got {self.reinit}")
        for name in ("step_size", "ais_step_size"):
            checks.real(getattr(self, name), name, positive=True)
        checks.real(self.noise, "noise", nonnegative=True)
        checks.real(self.alpha, "alpha", nonnegative=True)
        if self.clip is not None:
            checks.real(self.clip, "clip", positive=True)
        default = (0.0, 1.0) if self.data == "digits" else (-4.0, 4.0)
        self.bounds = box(default if self.bounds is None else tuple(self.bounds))
        if self.data == "digits" and self.bounds != (0.0, 1.0):
            raise ValueError(f"bounds must be (0, 1) for digits (the unit box), got {self.bounds}")


class _ConvEnergy(nn.Module):
    """E(y) for digits ``(N, 1, 8, 8)`` in [0, 1]: three smooth (SiLU) convolutions, a read-out."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1), nn.SiLU(),  # (N, c, 8, 8)
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.SiLU(),  # (N, 2c, 4, 4)
            nn.Conv2d(2 * c, 2 * c, 3, stride=2, padding=1), nn.SiLU(),  # (N, 2c, 2, 2)
            nn.Flatten(), nn.Linear(8 * c, 1),  # (N, 1)
        )  # fmt: skip

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.net(2 * y - 1).squeeze(-1)  # the network sees the signed box [−1, 1]


class EnergyModel(nn.Module):
    """p(y) = exp(−E(y)) / Z on a box: a ConvNet energy on dequantized digits, or an MLP on toys.

    Trained by contrastive divergence (Du & Mordatch 2019): the maximum-likelihood gradient is
    ∇θ(−log p(y)) = ∇θ E(y) − E_p[∇θ E], a data term minus a model term, the shape of the RBM's
    CD gradient; the model term is estimated with Langevin negatives drawn from a replay buffer
    of persistent chains (the ``replay`` buffer, saved in checkpoints). ``needs_input_grad``:
    the validation loss runs Langevin, so :func:`dgm_edu.train.fit` gives it input gradients.
    """

    needs_input_grad = True

    def __init__(self, config: EnergyConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or EnergyConfig()
        self.shape: tuple[int, ...] = IMAGE_SHAPE if c.data == "digits" else (2,)
        self.net = _ConvEnergy(c.channels) if c.data == "digits" else _MLPEnergy(c.hidden)
        # the persistent chains (buffer_size, *shape), uniform on the box at the start
        low, high = c.bounds  # type: ignore[misc]
        self.register_buffer("replay", low + (high - low) * torch.rand(c.buffer_size, *self.shape))
        self._log_z_cache: tuple[tuple, float] | None = None

    # ------------------------------------------------------------------ energy and data space
    def energy(self, y: torch.Tensor) -> torch.Tensor:
        """E(y) in model space (dequantized digits in the unit box, or points): ``(N,)``."""
        return self.net(y)

    def _model_space(self, x: torch.Tensor, y: object = None) -> torch.Tensor:
        """Raw digits -> dequantized y in [0, 1) (fresh noise); points -> checked floats."""
        if self.config.data == "digits":
            x = validate_digits(x)
            out = dequantize(x).to(self.replay.dtype)
        else:
            out = checks.points(x, 2, "x").to(self.replay.dtype)
        checks.labels(y, len(out), 0)  # unconditional: refuses a label
        return out

    def _uniform(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        low, high = self.config.bounds  # type: ignore[misc]
        u = torch.rand((n, *self.shape), generator=generator, device=self.replay.device)
        return low + (high - low) * u.to(self.replay.dtype)

    def negatives(self, n: int, *, update: bool = False) -> torch.Tensor:
        """``n`` Langevin negatives started from the replay buffer (a fraction ``reinit`` from
        uniform noise); with ``update`` the chains are written back (training only)."""
        c, size = self.config, self.config.buffer_size
        dev = self.replay.device
        if n <= size:  # distinct chains
            idx = torch.randperm(size, device=dev)[:n]
        else:
            idx = torch.randint(0, size, (n,), device=dev)
        start = self.replay[idx]  # (n, *shape)
        fresh = torch.rand(n, device=dev) < c.reinit  # (n,) restart these from noise
        start = torch.where(fresh.view(-1, *([1] * len(self.shape))), self._uniform(n), start)
        neg = langevin(
            self.energy, start, c.langevin_steps, c.step_size,
            noise=c.noise, clip=c.clip, bounds=c.bounds,
        )  # fmt: skip
        if update:
            self.replay[idx] = neg
        return neg

    # ------------------------------------------------------------------ the face
    def loss(self, x: torch.Tensor, y: None = None) -> torch.Tensor:
        """Contrastive divergence with the energy-magnitude regulariser, a scalar:

            mean E(y⁺) − mean E(y⁻) + α mean(E(y⁺)² + E(y⁻)²),

        y⁺ the dequantized batch, y⁻ Langevin negatives from the replay buffer (detached). Its
        gradient estimates the NLL gradient plus the regulariser's; its value is not a
        likelihood. Side effects in train mode: the negatives are written back into the replay
        buffer. Eval mode: the same quantity with the buffer left as it is (read only).
        """
        pos = self._model_space(x, y)  # (N, *shape)
        neg = self.negatives(len(pos), update=self.training)
        e_pos, e_neg = self.energy(pos), self.energy(neg)  # (N,), (N,)
        reg = self.config.alpha * (e_pos.pow(2) + e_neg.pow(2)).mean()
        return e_pos.mean() - e_neg.mean() + reg

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        y: None = None,
        steps: int = 200,
        step_size: float | None = None,
        noise: float = 1.0,
        persistent: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``n`` samples by ``steps`` Langevin steps (``step_size``: the config's by default)
        from uniform noise on the box, or with ``persistent=True`` from the replay buffer.
        Digits come back as int64 levels ``(n, 1, 8, 8)`` (the bin, :func:`~dgm_edu.data.quantize`);
        points as floats ``(n, 2)``. ``noise`` < 1 samples the colder exp(−E / noise²)."""
        n = checks.count(n)
        checks.labels(y, n, 0)
        steps = checks.steps(steps)
        eps = self.config.step_size if step_size is None else step_size
        eps = checks.real(eps, "step_size", positive=True)
        noise = checks.real(noise, "noise", nonnegative=True)
        if persistent:
            idx = torch.randint(0, self.config.buffer_size, (n,), device=self.replay.device)
            start = self.replay[idx]
        else:
            start = self._uniform(n, generator)
        out = langevin(
            self.energy, start, steps, eps, noise=noise, clip=self.config.clip,
            bounds=self.config.bounds, generator=generator,
        )  # fmt: skip
        out = checks.finite(out, "EnergyModel samples")
        if self.config.data == "digits":
            return checks.levels_out(quantize(out))
        return out

    def log_prob(self, x: torch.Tensor, y: None = None) -> torch.Tensor:
        """An estimate of log p per item, nats, ``(N,)``; gradients flow through −E.

        Digits: the discrete log-likelihood's dequantization bound with one noise draw u and
        the AIS estimate of log Z (:meth:`log_partition`),

            log P(x) ≥ E_u[−E((x + u)/17)] − log Z − 64 log 17,

        so the number is a stochastic estimate, not a bound: one u per image, and log Ẑ tends to
        under-estimate log Z, which makes the reported log-likelihood optimistic. Toys: the
        density −E(x) − log Ẑ on the box (−inf outside it). On the meta device log Z is skipped.
        """
        pos = self._model_space(x, y)
        lp = -self.energy(pos)  # (N,)
        if self.config.data == "digits":
            lp = lp - math.prod(self.shape) * math.log(LEVELS)
        else:
            low, high = self.config.bounds  # type: ignore[misc]
            inside = ((pos >= low) & (pos <= high)).all(-1)
            lp = torch.where(inside, lp, torch.full_like(lp, -math.inf))
        if pos.is_meta:
            return lp
        return lp - self.log_partition()

    # ------------------------------------------------------------------ the partition function
    def ais_log_partition(
        self,
        num_betas: int | None = None,
        num_runs: int | None = None,
        *,
        step_size: float | None = None,
        generator: torch.Generator | None = None,
    ) -> AISEstimate:
        """log Z by AIS from the uniform density on the box (:func:`ais_log_weights`), with its
        ±3 standard-error band (:func:`ais_estimate`); the config's settings by default."""
        c = self.config
        log_w, log_z0, _ = ais_log_weights(
            self.energy, self.shape, c.bounds,  # type: ignore[arg-type]
            num_betas=c.ais_betas if num_betas is None else num_betas,
            num_runs=c.ais_runs if num_runs is None else num_runs,
            step_size=c.ais_step_size if step_size is None else step_size,
            device=self.replay.device, dtype=self.replay.dtype, generator=generator,
        )  # fmt: skip
        return ais_estimate(log_w, log_z0)

    @torch.no_grad()
    def log_partition(self) -> float:
        """The AIS estimate of log Z with a fixed seed (0), cached until a parameter changes."""
        key = tuple((p.data_ptr(), p._version, p.device) for p in self.parameters())
        if self._log_z_cache is None or self._log_z_cache[0] != key:
            gen = torch.Generator(device=module_device(self)).manual_seed(0)
            self._log_z_cache = (key, self.ais_log_partition(generator=gen).log_z)
        return self._log_z_cache[1]


class _MLPEnergy(nn.Module):
    """E(x) for 2D points: a two-hidden-layer SiLU MLP with a scalar read-out."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.net = mlp(2, hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)  # (N,)
