"""Scores and sampling by following them: Langevin dynamics, score matching and noise-conditional
score models.

The score of a density is s(x) = ∇_x log p(x). For an energy-based model p(x) = exp(−E(x)) / Z it is
−∇E(x), and Z drops out of it; everything in this module uses only the score:

- :func:`langevin`: unadjusted Langevin dynamics for any energy or score,
  x ← x + ε s(x) + noise · √(2ε) ξ, which targets exp(−E / noise²) as ε → 0;
  :func:`annealed_langevin` runs it down a ladder of noise levels (:func:`geometric_sigmas`).
- Score matching, which fits a score with no Z and no sampling: :func:`explicit_score_matching`
  (Hyvärinen 2005, the exact Jacobian trace), :func:`sliced_score_matching` (Song et al. 2020)
  and :func:`denoising_score_matching` (Vincent 2011).
- :class:`NoiseConditionalScore`: a score network s(x, σ) on 2D toys trained by denoising score
  matching over a geometric ladder of noise levels and sampled by annealed Langevin dynamics
  (Song & Ermon 2019).

The energy-based model that uses these samplers is :mod:`dgm_edu.energy`; the SDE view that
joins them to diffusion is :mod:`dgm_edu.sde`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from dgm_edu import checks
from dgm_edu.runtime import budget, seed_everything

if TYPE_CHECKING:
    from dgm_edu.train import History

Fn = Callable[[torch.Tensor], torch.Tensor]


# =========================================================================== Langevin dynamics
def box(bounds: object, name: str = "bounds") -> tuple[float, float] | None:
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
    bounds = box(bounds)
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
        self.net = mlp(3, c.hidden, 2)
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


def mlp(dim_in: int, hidden: int, dim_out: int) -> nn.Sequential:
    """A two-hidden-layer SiLU MLP ``(N, dim_in) -> (N, dim_out)``: smooth, so its input gradients
    (scores, Langevin steps) are smooth too."""
    return nn.Sequential(
        nn.Linear(dim_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
        nn.Linear(hidden, dim_out),
    )  # fmt: skip


def train_toy(
    name: str = "ring8",
    *,
    checkpoint: str | Path | None = None,
    progress: bool = True,
    seed: int = 0,
    epochs: int | None = None,
) -> tuple[NoiseConditionalScore, History]:
    """A :class:`NoiseConditionalScore` fitted to the 2D toy ``name`` by its σ²-weighted
    denoising score-matching loss (:func:`~dgm_edu.train.fit_toy`, 8192 points, batches of 512,
    cosine-annealed Adam, 600 epochs: the small levels' scores need the long run to separate
    the modes); fast mode trains for seconds."""
    from dgm_edu.train import fit_toy

    seed_everything(seed)
    # the ladder stops at σ = 0.05 (half the ring8 modes' width), sampled with ε = 1e-4
    model = NoiseConditionalScore(ScoreConfig(sigma_max=3.0, sigma_min=0.05, epsilon=1e-4))
    hist = fit_toy(
        model, name, epochs=budget(fast=20, full=600) if epochs is None else epochs,
        batch_size=512, lr=3e-3, schedule="cosine", val=1024, seed=seed,
        checkpoint=checkpoint, progress=progress, desc=f"score-{name}",
    )  # fmt: skip
    return model.eval(), hist
