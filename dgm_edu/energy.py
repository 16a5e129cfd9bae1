"""Energy-based models: a density known up to its normaliser, trained and sampled through its score.

An energy-based model (EBM) is

    p(x) = exp(−E(x)) / Z,        Z = ∫ exp(−E(x)) dx,

and its score is ∇ log p(x) = −∇E(x), with no Z in it, so it is sampled by Langevin dynamics
(:func:`dgm_edu.scores.langevin`).

- :class:`EnergyModel`: a small ConvNet energy on the dequantized digits (or an MLP on 2D toys),
  trained by contrastive divergence with Langevin negatives from a replay buffer of persistent
  chains (Du & Mordatch 2019), with ``log_prob`` from annealed importance sampling of log Z
  (Neal 2001; :func:`ais_log_weights`). :func:`train_reference` is the book's digits recipe,
  :func:`train_toy` the 2D one, :func:`digits_figures` what the book records about a model.
- :func:`classifier_energy`: a classifier's logits read as an energy (Grathwohl et al. 2020).

The model's space: digits are dequantized, y = (x + u) / 17 in the unit box [0, 1)^64
(:func:`dgm_edu.data.dequantize`), and the energy model's density lives on that box (the network
sees 2y − 1); 2D toys live on the box ``config.bounds``. A box makes exp(−E) normalisable for any
network and gives AIS a uniform base. The samplers (training negatives, ``sample``, AIS) run in
the box's logit coordinates z, y = low + (high − low) σ(z), with the energy of the same density
there (:func:`logit_energy`): the box's walls move to infinity, so no step is clamped or
rejected at an edge, where the digits' background pixels sit.
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
    dequantize,
    digits_loader,
    quantize,
    validate_digits,
)
from dgm_edu.densities import logmeanexp
from dgm_edu.rbm import AISEstimate
from dgm_edu.runtime import budget, module_device, seed_everything
from dgm_edu.scores import box, langevin, mlp
from dgm_edu.train import History, fit, fit_toy

Fn = Callable[[torch.Tensor], torch.Tensor]
DATA = ("digits", "toy")


# =========================================================================== box coordinates
def to_box(z: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    """y = low + (high − low) σ(z): unbounded logit coordinates z onto the open box."""
    low, high = bounds
    return low + (high - low) * torch.sigmoid(z)


def from_box(y: torch.Tensor, bounds: tuple[float, float], tiny: float = 1e-6) -> torch.Tensor:
    """z = logit((y − low) / (high − low)), the fraction kept in [tiny, 1 − tiny] (the edges)."""
    low, high = bounds
    return torch.logit(((y - low) / (high - low)).clamp(tiny, 1 - tiny))


def base_energy(z: torch.Tensor) -> torch.Tensor:
    """E_0(z) = −Σ_d log σ(z_d) σ(−z_d): minus the log-density of z = logit(u), u ~ U(0, 1)^D,
    a normalised density (Z_0 = 1). ``(N, ...) -> (N,)``."""
    return -(F.logsigmoid(z) + F.logsigmoid(-z)).flatten(1).sum(-1)


def logit_energy(energy: Fn, bounds: tuple[float, float]) -> Fn:
    """The energy of the same density in logit coordinates, ``(N, ...) -> (N,)``:

        E_z(z) = E(y(z)) − log ‖dy/dz‖ = E(y(z)) + E_0(z) − D log(high − low),

    so that exp(−E_z) dz = exp(−E) dy. Dropping the constant, exp(−E_z) integrates to
    Z / (high − low)^D. A sampler in z has no walls: the box's edges are at z = ±∞, and a step of
    fixed size in z is a step of size (high − low) σ(z) σ(−z) dz in y, small near the edges
    where the dequantized digits' background lives."""

    def e_z(z: torch.Tensor) -> torch.Tensor:
        return energy(to_box(z, bounds)) + base_energy(z)

    return e_z


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

    It runs in the logit coordinates z of :func:`logit_energy`, where the uniform box is the
    normalised base exp(−E_0(z)), and the path is f_β(z) = exp(−E_0(z) − β E(y(z))), β_k = k / K:
    f_0 is the base (Z = 1) and f_1 integrates to Z / (high − low)^D, so log Z_0 = D log(high −
    low) is returned beside the weights. Each run draws z = logit(u), u ~ U(0, 1)^D, then for
    k = 1..K adds log f_k(z) − log f_{k−1}(z) = −(β_k − β_{k−1}) E(y(z)) to its log-weight and
    takes one Metropolis-adjusted Langevin (MALA) step of size ``step_size`` that leaves f_k
    invariant. Then E[w] = Z / Z_0, so Z_0 · mean(w) is an unbiased estimate of Z, and its log
    under-estimates log Z on average (Jensen).
    """
    bounds = box(bounds)  # type: ignore[assignment]
    num_betas = checks.integer(num_betas, "num_betas", low=1)
    num_runs = checks.integer(num_runs, "num_runs", low=2)
    eps = checks.real(step_size, "step_size", positive=True)
    low, high = bounds
    dim = math.prod(shape)
    betas = torch.linspace(0.0, 1.0, num_betas + 1).tolist()

    def e_and_grad(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """E(y(z)) and its z-gradient (autograd), and the z-gradient of E_0: 2σ(z) − 1."""
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            e = energy(to_box(z, bounds))  # (R,)
            (g,) = torch.autograd.grad(e.sum(), z)
        return e.detach(), g.detach(), 2 * torch.sigmoid(z.detach()) - 1

    def log_q(to: torch.Tensor, frm: torch.Tensor, grad_u: torch.Tensor) -> torch.Tensor:
        # log N(to; frm − ε ∇U(frm), 2ε I), up to the constant that cancels in the ratio
        return -(to - frm + eps * grad_u).pow(2).flatten(1).sum(-1) / (4 * eps)

    u = torch.rand((num_runs, *shape), generator=generator, device=device, dtype=dtype)
    z = torch.logit(u.clamp(1e-6, 1 - 1e-6))  # exact draws of the base, (R, ...)
    e, g, g0 = e_and_grad(z)
    log_w = torch.zeros(num_runs, dtype=torch.float64, device=device)
    accepted = 0.0
    for b_prev, b in zip(betas[:-1], betas[1:]):
        log_w += (-(b - b_prev) * e).double()  # log f_k(z) − log f_{k−1}(z)
        u_cur, grad_cur = base_energy(z) + b * e, g0 + b * g  # U_β = E_0 + β E and its gradient
        xi = torch.randn(z.shape, generator=generator, device=device, dtype=dtype)
        prop = z - eps * grad_cur + math.sqrt(2 * eps) * xi  # MALA proposal for exp(−U_β)
        e_p, g_p, g0_p = e_and_grad(prop)
        u_prop, grad_prop = base_energy(prop) + b * e_p, g0_p + b * g_p
        log_a = -(u_prop - u_cur) + log_q(z, prop, grad_prop) - log_q(prop, z, grad_cur)
        uni = torch.rand(num_runs, generator=generator, device=device, dtype=dtype)
        accept = uni.log() < log_a  # (R,)
        mask = accept.view(-1, *([1] * len(shape)))
        z = torch.where(mask, prop, z)
        g, g0 = torch.where(mask, g_p, g), torch.where(mask, g0_p, g0)
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
    weighs the energy-magnitude regulariser. ``ais_*``: the AIS behind ``log_prob``. The
    defaults are the book's digits recipe (:func:`reference_config` explains them).
    """

    data: str = "digits"
    channels: int = 32  # ConvNet width (digits)
    hidden: int = 128  # MLP width (toy)
    bounds: tuple[float, float] | None = None  # None: (0, 1) for digits, (−4, 4) for toys
    buffer_size: int = 2000
    reinit: float = 0.05
    langevin_steps: int = 40
    step_size: float = 0.1  # in logit coordinates (:func:`logit_energy`)
    noise: float = 1.0
    clip: float | None = None
    alpha: float = 1e-3
    ais_betas: int = 4000
    ais_runs: int = 100
    ais_step_size: float = 0.3  # MALA, in logit coordinates

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
        # the persistent chains (buffer_size, *shape) in logit coordinates (:func:`logit_energy`),
        # uniform on the box at the start
        u = torch.rand(c.buffer_size, *self.shape).clamp(1e-6, 1 - 1e-6)
        self.register_buffer("replay", torch.logit(u))
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

    def logit_energy(self, z: torch.Tensor) -> torch.Tensor:
        """E_z(z) = E(y(z)) + E_0(z), the energy of the same density in the logit coordinates
        of the box, where the samplers run (:func:`logit_energy`): ``(N,)``."""
        return self.energy(to_box(z, self.config.bounds)) + base_energy(z)  # type: ignore[arg-type]

    def _uniform(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Uniform draws on the box, in logit coordinates: z = logit(u), ``(n, *shape)``."""
        u = torch.rand((n, *self.shape), generator=generator, device=self.replay.device)
        return torch.logit(u.to(self.replay.dtype).clamp(1e-6, 1 - 1e-6))

    def negatives(self, n: int, *, update: bool = False) -> torch.Tensor:
        """``n`` Langevin negatives in model space, started from the replay buffer (a fraction
        ``reinit`` from uniform noise) and run in logit coordinates, where the box has no walls;
        with ``update`` the chains are written back (training only)."""
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
            self.logit_energy, start, c.langevin_steps, c.step_size, noise=c.noise, clip=c.clip
        )  # (n, *shape), z
        if update:
            self.replay[idx] = neg
        return to_box(neg, c.bounds)  # type: ignore[arg-type]

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
        from uniform noise on the box, or with ``persistent=True`` from the replay buffer, in the
        logit coordinates of :meth:`logit_energy`.
        Digits come back as int64 levels ``(n, 1, 8, 8)`` (the bin, :func:`~dgm_edu.data.quantize`);
        points as floats ``(n, 2)``. ``noise`` < 1 samples a colder copy,
        exp(−E_z / noise²) in logit coordinates."""
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
        z = langevin(
            self.logit_energy, start, steps, eps, noise=noise, clip=self.config.clip,
            generator=generator,
        )  # fmt: skip
        out = checks.finite(to_box(z, self.config.bounds), "EnergyModel samples")  # type: ignore[arg-type]
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


# =========================================================================== the recipe
def train_ebm(
    config: EnergyConfig,
    *,
    epochs: int,
    lr: float = 1e-4,
    betas: tuple[float, float] = (0.0, 0.999),
    batch_size: int = 64,
    grad_clip: float | None = None,
    checkpoint: str | Path | None = None,
    progress: bool = True,
    seed: int = 0,
    desc: str = "energy",
) -> tuple[EnergyModel, History]:
    """Train an :class:`EnergyModel` on the digits' train split with :func:`dgm_edu.train.fit`.

    Adam with β1 = ``betas[0]`` (0 by default: the CD gradient is noisy and its sign flips as the
    chains move, so momentum overshoots). The validation loss (the CD objective on the val
    split, with the buffer read only) is logged, but the last epoch is kept
    (``restore_best=False``): a CD loss is not a likelihood, and its minimum is no better model.
    """
    seed_everything(seed)
    model = EnergyModel(config)
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=betas)
    hist = fit(
        model, opt, digits_loader("train", batch_size, drop_last=True),
        digits_loader("val", 350), epochs=epochs, grad_clip=grad_clip, checkpoint=checkpoint,
        progress=progress, seed=seed, restore_best=False, desc=desc,
    )  # fmt: skip
    return model.eval(), hist


def reference_config(**overrides: object) -> EnergyConfig:
    """The book's digits EBM: ``overrides`` replace fields (the ablations change one each).

    Langevin at temperature 1 (``noise`` = 1, so the negatives sample exp(−E), the density that
    ``log_prob`` reports), in logit coordinates with step 0.1 (noise of 0.11 in y mid-box, less
    near the edges; 0.01 mixes too slowly, see ``ABLATIONS``), 40 steps per batch from a buffer
    of 2000 persistent chains (each is revisited every ~30 batches, so it runs about a thousand
    steps over training), 5 % restarted from uniform noise. α = 0.001: a larger α holds the
    energies too close to 0 to separate data from noise by the ~100 nats a good model needs.
    AIS: MALA step 0.3 in logit coordinates over 4000 intermediate distributions, where log Ẑ
    has converged (16000 moves it by less than its spread over seeds); fast mode uses 200.
    These are :class:`EnergyConfig`'s defaults.
    """
    settings: dict[str, object] = {"data": "digits", "ais_betas": budget(fast=200, full=4000)}
    return EnergyConfig(**(settings | overrides))  # type: ignore[arg-type]


def train_reference(
    *,
    checkpoint: str | Path | None = None,
    progress: bool = True,
    seed: int = 0,
    epochs: int | None = None,
    **overrides: object,
) -> tuple[EnergyModel, History]:
    """The book's reference recipe (:func:`reference_config`, :func:`train_ebm`): fast mode
    trains for seconds, full mode for a few minutes on one core. ``epochs`` replaces the
    budget's; ``overrides`` replace config fields (the chapter's ablations)."""
    return train_ebm(
        reference_config(**overrides),
        epochs=budget(fast=2, full=60) if epochs is None else epochs,
        lr=1e-3,
        checkpoint=checkpoint,
        progress=progress,
        seed=seed,
    )


def train_toy(
    name: str = "ring8",
    *,
    checkpoint: str | Path | None = None,
    progress: bool = True,
    seed: int = 0,
    epochs: int | None = None,
) -> tuple[EnergyModel, History]:
    """An :class:`EnergyModel` (MLP energy) on the 2D toy ``name``, fitted by ``fit_toy``:
    temperature-1 Langevin in logit coordinates of the box (−4, 4)², 8192 points, batches of 256.
    The last epoch is kept (a CD loss is no likelihood)."""
    seed_everything(seed)
    model = EnergyModel(
        EnergyConfig(data="toy", hidden=128, buffer_size=2000, langevin_steps=40,
                     step_size=1e-3, alpha=1e-3, ais_betas=500,
                     ais_runs=500, ais_step_size=0.05)
    )  # fmt: skip
    hist = fit_toy(
        model, name, epochs=budget(fast=3, full=100) if epochs is None else epochs,
        batch_size=256, optimizer=torch.optim.Adam(model.parameters(), 3e-3, betas=(0.0, 0.999)),
        val=512, restore_best=False, seed=seed, checkpoint=checkpoint, progress=progress,
        desc=f"energy-{name}",
    )  # fmt: skip
    return model.eval(), hist


# =========================================================================== a classifier's energy
def classifier_energy(
    logits_fn: Fn,
) -> tuple[Fn, Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]]:
    """A classifier read as an energy-based model (Grathwohl et al. 2020, JEM).

    With logits f(x) ``(N, C)``, define p(x, y) = exp(f(x)[y]) / Z, i.e.

        E(x, y) = −f(x)[y],     E(x) = −log Σ_y exp(f(x)[y])   (the marginal over y),

    so that p(y | x) = exp(−E(x, y)) / exp(−E(x)) = softmax(f(x))[y]: the classifier itself,
    unchanged by the shift of logits that a softmax ignores but E(x) does not. Returns
    ``(E_x, E_xy)``: ``E_x(x) -> (N,)`` and ``E_xy(x, y)`` -> ``(N,)`` for labels ``y (N,)``, or
    ``(N, C)`` (every class) for ``y=None``.
    """
    if not callable(logits_fn):
        raise TypeError(f"logits_fn must map inputs to (N, C) logits, got {logits_fn!r}")

    def e_x(x: torch.Tensor) -> torch.Tensor:
        return -torch.logsumexp(logits_fn(x), dim=-1)  # −log Σ_y exp f(x)[y], (N,)

    def e_xy(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        logits = logits_fn(x)  # (N, C)
        if y is None:
            return -logits
        y = checks.labels(y, len(logits), logits.shape[-1])
        return -logits.gather(-1, y.view(-1, 1).to(logits.device)).squeeze(-1)  # −f(x)[y]

    return e_x, e_xy


# =========================================================================== figures
# What breaks without each trick: the reference recipe with one change (dgm_edu.weights trains
# each as long as its baseline, the reference's first stage "energy@20").
ABLATIONS: dict[str, dict[str, object]] = {
    "no-noise": {"noise": 0.0},  # gradient descent on E: negatives collapse into minima
    "no-reg": {"alpha": 0.0},  # nothing pins the energies' level: they drift
    "small-step": {"step_size": 0.01},  # chains that barely move: the negatives lag the model
}


def digits_figures(
    model: EnergyModel, *, ais_seeds: int = 5, samples: int = 1000
) -> dict[str, object]:
    """What the book records about a digits :class:`EnergyModel` (fixed seeds, test split).

    Always (cheap, deterministic): the mean energy of the dequantized test images (``e_test``),
    of uniform noise (``e_noise``) and of the replay buffer's chains (``e_buffer``), and the gap
    ``e_test − e_buffer`` (negative when the data sit below the model's samples, as they should
    not for long: at the maximum-likelihood optimum the gradients of the two match). With
    ``ais_seeds`` > 0: the test NLL estimate −E − log Ẑ − 64 log 17 for ``ais_seeds``
    independent AIS runs of log Z (``log_z_runs``; ``test_nll_nats`` uses seed 0, as
    :meth:`EnergyModel.log_partition` does, and ``nll_low``/``nll_high`` span the seeds), the
    mean MALA acceptance, and with ``samples`` > 0 the FID of that many Langevin samples.
    """
    from dgm_edu.data import load_digits
    from dgm_edu.metrics import fid

    x, _ = load_digits("test")
    c, dim = model.config, math.prod(model.shape)
    out: dict[str, object] = {}
    with torch.no_grad():
        y = dequantize(x, generator=torch.Generator().manual_seed(0)).to(model.replay)
        noise = torch.rand((1000, *model.shape), generator=torch.Generator().manual_seed(1))
        energies = {
            "e_test": model.energy(y),
            "e_noise": model.energy(noise.to(model.replay)),
            "e_buffer": model.energy(to_box(model.replay, c.bounds)),  # type: ignore[arg-type]
        }
    finite = all(bool(torch.isfinite(e).all()) for e in energies.values())
    out["finite"] = finite
    for key, e in energies.items():
        out[key] = round(float(e.double().mean()), 4) if finite else None
    out["e_gap"] = round(out["e_test"] - out["e_buffer"], 4) if finite else None  # type: ignore[operator]
    if not finite:
        return out
    if ais_seeds > 0:
        runs, accept = [], []
        for seed in range(ais_seeds):
            gen = torch.Generator(device=model.replay.device).manual_seed(seed)
            log_w, log_z0, acc = ais_log_weights(
                model.energy, model.shape, c.bounds,  # type: ignore[arg-type]
                num_betas=c.ais_betas, num_runs=c.ais_runs, step_size=c.ais_step_size,
                device=model.replay.device, dtype=model.replay.dtype, generator=gen,
            )  # fmt: skip
            runs.append(ais_estimate(log_w, log_z0).log_z)
            accept.append(acc)
        nll = [out["e_test"] + lz + dim * math.log(LEVELS) for lz in runs]  # type: ignore[operator]
        out |= {
            "test_nll_nats": round(nll[0], 4),
            "nll_low": round(min(nll), 4),
            "nll_high": round(max(nll), 4),
            "log_z_runs": [round(v, 4) for v in runs],
            "ais_acceptance": round(sum(accept) / len(accept), 4),
        }
    if samples > 0:
        s = model.sample(samples, generator=torch.Generator().manual_seed(0))
        out["test_fid"] = round(fid(s, x), 3)
    out["estimator"] = (
        f"AIS estimate (stochastic, not a bound): −E of one dequantization draw − log Ẑ "
        f"(AIS from the uniform box, {c.ais_betas} betas, {c.ais_runs} runs, MALA step "
        f"{c.ais_step_size} in logit coordinates; seed 0, spread over {ais_seeds} seeds) "
        f"− 64 log 17"
    )
    return out
