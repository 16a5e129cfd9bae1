"""Energy-based models and score matching: an energy, its gradient (the score), and sampling by
following it.

An energy-based model (EBM) is a density known up to its normaliser,

    p(x) = exp(−E(x)) / Z,        Z = ∫ exp(−E(x)) dx,

and its score is ∇ log p(x) = −∇E(x): Z drops out of it. Everything here uses only the score:

- :func:`langevin`: unadjusted Langevin dynamics for any energy or score,
  x ← x − ε ∇E(x) + noise · √(2ε) ξ, which targets exp(−E / noise²) as ε → 0;
  :func:`annealed_langevin` runs it down a ladder of noise levels (:func:`geometric_sigmas`).
- :class:`EnergyModel`: a small ConvNet energy on the dequantized digits (or an MLP on 2D toys),
  trained by contrastive divergence with Langevin negatives from a replay buffer of persistent
  chains (Du & Mordatch 2019), with ``log_prob`` from annealed importance sampling of log Z
  (Neal 2001; :func:`ais_log_weights`).
- Score matching, which fits a score with no Z and no sampling: :func:`explicit_score_matching`
  (Hyvärinen 2005, the exact Jacobian trace), :func:`sliced_score_matching` (Song et al. 2020)
  and :func:`denoising_score_matching` (Vincent 2011).
- :class:`NoiseConditionalScore`: a score network s(x, σ) on 2D toys trained by denoising score
  matching over a geometric ladder of noise levels and sampled by annealed Langevin dynamics
  (Song & Ermon 2019).

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

Fn = Callable[[torch.Tensor], torch.Tensor]
DATA = ("digits", "toy")


# =========================================================================== Langevin dynamics
def _bounds(bounds: object, name: str = "bounds") -> tuple[float, float] | None:
    """None, or a pair ``(low, high)`` of finite numbers with low < high."""
    if bounds is None:
        return None
    if not isinstance(bounds, tuple | list) or len(bounds) != 2:
        raise TypeError(f"{name} must be None or a pair (low, high), got {bounds!r}")
    low, high = (checks.real(b, name) for b in bounds)
    if not low < high:
        raise ValueError(f"{name} must be a pair (low, high) with low < high, got {bounds!r}")
    return low, high


def energy_score(energy: Fn, *, create_graph: bool = False) -> Fn:
    """The score of an energy, s(x) = −∇_x E(x), by autograd: ``(N, ...) -> (N, ...)``.

    ``create_graph=True`` keeps the graph, so the score can be differentiated again (explicit
    score matching of an energy needs its Jacobian). Runs under ``torch.enable_grad()``: a
    score is a gradient, also when the caller samples under ``no_grad``.
    """

    def score(x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x = x if x.requires_grad else x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(energy(x).sum(), x, create_graph=create_graph)
        return -g

    return score


def langevin(
    score_or_energy: Fn,
    x0: torch.Tensor,
    steps: int,
    step_size: float,
    *,
    kind: str = "energy",
    noise: float = 1.0,
    clip: float | None = None,
    bounds: tuple[float, float] | None = None,
    generator: torch.Generator | None = None,
    return_path: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Unadjusted Langevin dynamics from ``x0 (N, ...)``: ``steps`` updates

        x ← x + ε s(x) + noise · √(2ε) ξ,      s = −∇E (``kind="energy"``) or the score itself
                                               (``kind="score"``),  ξ ~ N(0, I),  ε = step_size.

    As ε → 0 and steps → ∞ the chain's law tends to exp(−E(x) / T) with T = noise² (noise = 1:
    the model itself; noise < 1: a colder copy, the usual EBM trick). At finite ε it is biased:
    on a Gaussian of variance σ² it settles at variance T σ² / (1 − ε / (2σ²)).

    ``clip`` clamps every coordinate of the score to [−clip, clip] (the gradient-clipping trick;
    it changes the stationary law where it binds). ``bounds`` clamps the state to a box after
    every step. Returns the final state, detached, or with ``return_path=True`` also the path
    ``(steps + 1, N, ...)``. Works under ``torch.no_grad()``: the score of an energy is computed
    under ``enable_grad`` with respect to x only.
    """
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point():
        raise TypeError(f"x0 must be a float tensor (N, ...), got {type(x0).__name__}")
    steps = checks.integer(steps, "steps", low=0)
    eps = checks.real(step_size, "step_size", positive=True)
    noise = checks.real(noise, "noise", nonnegative=True)
    clip = None if clip is None else checks.real(clip, "clip", positive=True)
    bounds = _bounds(bounds)
    if kind not in ("energy", "score"):
        raise ValueError(f"kind must be 'energy' or 'score', got {kind!r}")
    score = energy_score(score_or_energy) if kind == "energy" else score_or_energy
    x = x0.detach().clone()
    path = [x] if return_path else []
    for _ in range(steps):
        s = score(x).detach()  # (N, ...)
        if clip is not None:
            s = s.clamp(-clip, clip)
        xi = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = x + eps * s + noise * math.sqrt(2 * eps) * xi  # x + ε s(x) + √(2εT) ξ
        if bounds is not None:
            x = x.clamp(*bounds)
        if return_path:
            path.append(x)
    return (x, torch.stack(path)) if return_path else x


def geometric_sigmas(sigma_max: float, sigma_min: float, num: int) -> torch.Tensor:
    """The noise ladder σ_1 > ... > σ_L, geometric: σ_i = σ_max (σ_min / σ_max)^((i−1)/(L−1)),
    so that neighbouring levels overlap the same amount everywhere (Song & Ermon 2019). ``(L,)``."""
    hi = checks.real(sigma_max, "sigma_max", positive=True)
    lo = checks.real(sigma_min, "sigma_min", positive=True)
    num = checks.integer(num, "num", low=1)
    if lo > hi:
        raise ValueError(f"sigma_min must be <= sigma_max, got {lo} > {hi}")
    if num == 1:
        return torch.tensor([hi])
    return torch.exp(torch.linspace(math.log(hi), math.log(lo), num))


def annealed_langevin(
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    sigmas: torch.Tensor,
    steps_per_level: int,
    epsilon: float,
    *,
    denoise: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Annealed Langevin dynamics (Song & Ermon 2019, algorithm 1) with a score ``s(x, σ)``.

    For each level σ_i of the decreasing ladder ``sigmas``, ``steps_per_level`` Langevin steps
    on the noisy density p_σi with step α_i = ε σ_i² / σ_L² (ε = ``epsilon``): the step shrinks
    with the noise, so every level takes steps of the same size relative to its width. Large σ
    fill the low-density regions where a single-level score is wrong; small σ refine.
    ``denoise`` ends with one Tweedie step x + σ_L² s(x, σ_L), which removes the last level's
    noise. ``score`` is called with ``x (N, ...)`` and ``σ (N,)``; returns the final state.
    """
    if not isinstance(sigmas, torch.Tensor) or sigmas.dim() != 1 or len(sigmas) == 0:
        raise TypeError("sigmas must be a non-empty 1-D tensor of noise levels")
    if not bool((sigmas > 0).all()) or not bool((sigmas[1:] <= sigmas[:-1]).all()):
        raise ValueError("sigmas must be positive and decreasing (largest first)")
    steps_per_level = checks.integer(steps_per_level, "steps_per_level", low=1)
    eps = checks.real(epsilon, "epsilon", positive=True)
    x = x0.detach().clone()
    last = float(sigmas[-1])
    for sigma in sigmas.tolist():
        alpha = eps * sigma**2 / last**2  # α_i = ε σ_i² / σ_L²
        level = torch.full((len(x),), sigma, device=x.device, dtype=x.dtype)  # (N,)
        x = langevin(
            lambda z, level=level: score(z, level), x, steps_per_level, alpha,
            kind="score", generator=generator,
        )  # fmt: skip
    if denoise:
        level = torch.full((len(x),), last, device=x.device, dtype=x.dtype)
        x = x + last**2 * score(x, level).detach()  # E[x_0 | x] = x + σ² ∇ log p_σ(x)  (Tweedie)
    return x.detach()


# =========================================================================== score matching
def _flat(x: torch.Tensor, name: str = "x") -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 2:
        what = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"{name} must be a float tensor (N, D) of flat points, got {what}")
    return x


def explicit_score_matching(score: Fn, x: torch.Tensor) -> torch.Tensor:
    """Hyvärinen's (2005) objective per item, ``(N, D) -> (N,)``:

        J(x) = ½ ‖s(x)‖² + tr ∇_x s(x),

    whose mean equals ½ E‖s(x) − ∇ log p(x)‖² minus a constant of the data (integration by
    parts), so it fits a score without Z. The trace is exact: one backward pass per dimension,
    D of them, which is why it is for small D (the toys). Differentiable in the parameters.
    """
    x = _flat(x).detach().requires_grad_(True)
    with torch.enable_grad():
        s = score(x)  # (N, D)
        trace = torch.zeros(len(x), device=x.device, dtype=x.dtype)
        for d in range(x.shape[1]):  # ∂s_d / ∂x_d, summed over the items it is independent in
            (g,) = torch.autograd.grad(s[:, d].sum(), x, create_graph=True)
            trace = trace + g[:, d]
    return 0.5 * s.pow(2).sum(-1) + trace


def sliced_score_matching(
    score: Fn,
    x: torch.Tensor,
    num_projections: int = 1,
    *,
    variance_reduced: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sliced score matching (Song, Garg, Shi & Ermon 2020) per item, ``(N, D) -> (N,)``:

        J(x) = E_v[ vᵀ ∇_x s(x) v + ½ (vᵀ s(x))² ],        v ~ N(0, I),

    which equals Hyvärinen's objective in expectation over v (E[v vᵀ] = I), with one
    Jacobian-vector product per projection instead of D backward passes. ``variance_reduced``
    replaces ½ (vᵀ s)² by its expectation ½ ‖s‖² (SSM-VR). Averaged over ``num_projections``.
    """
    x = _flat(x).detach().requires_grad_(True)
    k = checks.integer(num_projections, "num_projections", low=1)
    with torch.enable_grad():
        s = score(x)  # (N, D)
        total = torch.zeros(len(x), device=x.device, dtype=x.dtype)
        for _ in range(k):
            v = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            (jv,) = torch.autograd.grad((s * v).sum(), x, create_graph=True)  # vᵀ∇s, (N, D)
            half = 0.5 * s.pow(2).sum(-1) if variance_reduced else 0.5 * (s * v).sum(-1) ** 2
            total = total + (jv * v).sum(-1) + half
    return total / k


def denoising_score_matching(
    score: Fn,
    x: torch.Tensor,
    sigma: float | torch.Tensor,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Denoising score matching (Vincent 2011) per item, ``(N, D) -> (N,)``:

        J(x) = ½ ‖s(x̃) + (x̃ − x) / σ²‖²,     x̃ = x + σ z,  z ~ N(0, I),

    the regression of s(x̃) onto the score of the noising kernel, ∇ log q(x̃ | x) = −(x̃ − x)/σ².
    Its minimiser is the score of the noisy data, ∇ log p_σ(x̃), and it differs from
    ½ E‖s − ∇ log p_σ‖² by a constant. ``sigma`` is a number or one level per item ``(N,)``;
    ``score`` is called on x̃. With z = (x̃ − x)/σ this is ε-prediction: s = −ε̂ / σ.
    """
    x = _flat(x)
    if isinstance(sigma, torch.Tensor):
        if sigma.shape != (len(x),) or (not sigma.is_meta and not bool((sigma > 0).all())):
            raise ValueError(f"sigma must be a number > 0 or an ({len(x)},) tensor of them")
        sig = sigma.to(x)[:, None]  # (N, 1)
    else:
        sig = torch.tensor(checks.real(sigma, "sigma", positive=True), dtype=x.dtype)
    z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    x_noisy = x + sig * z  # x̃ = x + σ z
    return 0.5 * (score(x_noisy) + z / sig).pow(2).sum(-1)  # (x̃ − x)/σ² = z/σ


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
    low, high = _bounds(bounds)  # type: ignore[misc]
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
        self.bounds = _bounds(default if self.bounds is None else tuple(self.bounds))
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


def _mlp(dim_in: int, hidden: int, dim_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(dim_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
        nn.Linear(hidden, dim_out),
    )  # fmt: skip


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
        self.net = _mlp(2, hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)  # (N,)


# =========================================================================== noise-conditional
@dataclass
class ScoreConfig:
    """A :class:`NoiseConditionalScore` on 2D toys; every field is checked here.

    The ladder: ``num_levels`` geometric levels from ``sigma_max`` (about the largest distance
    between data points) down to ``sigma_min``. Sampling: ``steps_per_level`` Langevin steps per
    level with α_i = ``epsilon`` σ_i² / σ_L².
    """

    hidden: int = 128
    sigma_max: float = 3.0
    sigma_min: float = 0.01
    num_levels: int = 10
    steps_per_level: int = 100
    epsilon: float = 2e-5

    def __post_init__(self) -> None:
        checks.integer(self.hidden, "hidden", low=1)
        checks.integer(self.steps_per_level, "steps_per_level", low=1)
        geometric_sigmas(self.sigma_max, self.sigma_min, self.num_levels)  # checks the three
        checks.real(self.epsilon, "epsilon", positive=True)


class NoiseConditionalScore(nn.Module):
    """A noise-conditional score network s(x, σ) ≈ ∇ log p_σ(x) on 2D toys (Song & Ermon 2019).

    s(x, σ) = MLP(x, log σ) / σ: the score of p_σ scales as 1/σ, so the network's output stays of
    order one at every level. Trained by denoising score matching at a level drawn uniformly
    from the ladder per point, weighted by λ(σ) = σ² so that every level contributes alike;
    sampled by :func:`annealed_langevin` down the ladder (the ``sigmas`` buffer).
    """

    def __init__(self, config: ScoreConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or ScoreConfig()
        self.net = _mlp(3, c.hidden, 2)
        self.register_buffer("sigmas", geometric_sigmas(c.sigma_max, c.sigma_min, c.num_levels))

    def score(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """s(x, σ) for points ``x (N, 2)`` and levels ``σ (N,)``: ``(N, 2)``."""
        h = torch.cat([x, sigma.log()[:, None].to(x)], -1)  # (N, 3)
        return self.net(h) / sigma[:, None]

    def loss(self, x: torch.Tensor, y: None = None) -> torch.Tensor:
        """Σ-weighted denoising score matching, a scalar: mean over points of
        σ² · ½ ‖s(x̃, σ) + (x̃ − x)/σ²‖², σ drawn from the ladder per point. No side effects."""
        x = checks.points(x, 2, "x").to(self.sigmas.dtype)
        checks.labels(y, len(x), 0)
        level = self.sigmas[torch.randint(0, len(self.sigmas), (len(x),), device=x.device)]
        per_item = denoising_score_matching(lambda z: self.score(z, level), x, level)
        return (level.pow(2) * per_item).mean()  # λ(σ) = σ²

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        y: None = None,
        steps: int | None = None,
        epsilon: float | None = None,
        denoise: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``n`` points ``(n, 2)`` by annealed Langevin from N(0, σ_1² I): ``steps`` per level
        and ``epsilon`` default to the config's."""
        n = checks.count(n)
        checks.labels(y, n, 0)
        c = self.config
        steps = checks.steps(c.steps_per_level if steps is None else steps)
        eps = checks.real(c.epsilon if epsilon is None else epsilon, "epsilon", positive=True)
        ladder = geometric_sigmas(c.sigma_max, c.sigma_min, c.num_levels)  # (L,) on the CPU
        start = float(ladder[0]) * torch.randn(
            (n, 2), generator=generator, device=self.sigmas.device, dtype=self.sigmas.dtype
        )
        out = annealed_langevin(
            self.score, start, ladder, steps, eps, denoise=denoise, generator=generator
        )
        return checks.finite(out, "NoiseConditionalScore samples")
