"""The SDE view of diffusion: forward and reverse-time SDEs, the probability-flow ODE, and the
exact likelihood it gives (Song et al. 2021).

A forward SDE dx = f(x, s) ds + g(s) dW on s in [0, 1] turns data into noise. Two families:

- :class:`VPSDE` (variance preserving), f = −½ β(s) x, g = √β(s), whose marginal is
  q(x_s | x_0) = N(√ᾱ(s) x_0, (1 − ᾱ(s)) I) with ᾱ(s) = exp(−∫_0^s β): the continuous-time DDPM
  (chapter 7's :class:`~dgm_edu.diffusion.Diffusion` at s = t/T);
- :class:`VESDE` (variance exploding), f = 0, g = √(dσ²/ds), σ(s) = σ_min (σ_max/σ_min)^s,
  with q(x_s | x_0) = N(x_0, (σ(s)² − σ_min²) I): the noise ladder of annealed Langevin.

Anderson (1982): the reverse-time process dx = [f − g² ∇log p_s(x)] ds + g dW̄ (s running
backwards) has the same marginals p_s, and so does the deterministic probability-flow ODE
dx/ds = f − ½ g² ∇log p_s(x). A trained ε-predictor gives the score,
∇log p_s(x) ≈ −ε̂(x, s) / √(1 − ᾱ(s)) (:func:`score_of`). Samplers:
:func:`reverse_sde_sample` (Euler–Maruyama, optionally with Langevin corrector steps: the
predictor–corrector sampler) and :func:`probability_flow_sample` (Euler or Heun on the ODE).

The ODE is a continuous normalizing flow, so the instantaneous change of variables (Chen et al.
2018) gives its density exactly: d log p(x(s)) / ds = −∇·F(x(s), s), so
log p_{s0}(x) = log p_{s1}(x(s1)) + ∫_{s0}^{s1} ∇·F ds (:func:`ode_log_likelihood`), with the
divergence exact (D backward passes) or by Hutchinson's estimator vᵀ(∂F/∂x)v (Grathwohl et al.
2019). :func:`diffusion_ode_nll` turns it into nats per image of the discrete digits.

Conventions: a score is a function ``score(x, s)`` of states ``x (N, ...)`` and times
``s (N,)``; a drift ``F(x, s)`` likewise; every sampler returns ``(x, nfe)``, nfe being the number
of score (or drift) evaluations.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from dgm_edu import checks
from dgm_edu.data import NUM_PIXELS, dequantization_noise, to_signed, validate_digits
from dgm_edu.densities import standard_normal_log_prob, sum_except_batch
from dgm_edu.diffusion import Diffusion

Fn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x (N, ...), s (N,)) -> (N, ...)
BIN = 2 / 16  # the digits' grid -1, -1 + 2/16, ..., 1 in model space: one level's bin width


def _col(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(N,) or () -> (N, 1, ..., 1), to broadcast against x (N, ...)."""
    return v.reshape(-1, *([1] * (x.dim() - 1)))


def _times(s: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """A time, float or (N,), as a tensor (N,) in x's dtype and device."""
    s = torch.as_tensor(s, dtype=x.dtype, device=x.device)
    return s.expand(len(x)) if s.dim() == 0 else s


# =========================================================================== forward SDEs
class SDE:
    """The face of a forward SDE dx = f(x, s) ds + g(s) dW, s in [0, 1]: ``drift`` f, ``diffusion``
    g, ``marginal`` (mean, std) of q(x_s | x_0), and the prior at s = 1 it ends in."""

    def drift(self, x: torch.Tensor, s: torch.Tensor | float) -> torch.Tensor:
        raise NotImplementedError

    def diffusion(self, s: torch.Tensor | float) -> torch.Tensor:
        raise NotImplementedError

    def marginal(
        self, x0: torch.Tensor, s: torch.Tensor | float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def prior_std(self) -> float:
        """The standard deviation of the prior N(0, std² I) the samplers start from at s = 1."""
        raise NotImplementedError

    def prior_sample(
        self, shape: tuple[int, ...], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """x_1 ~ N(0, prior_std² I) of ``shape`` (N, ...), float32 on the CPU."""
        return self.prior_std() * torch.randn(shape, generator=generator)

    def prior_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log N(x; 0, prior_std² I) per item, (N, ...) -> (N,)."""
        sd = self.prior_std()
        return standard_normal_log_prob(x / sd) - x[0].numel() * math.log(sd)

    def langevin_alpha(self, s: float, ds: float) -> float:
        """The factor α of the corrector's step size (Song et al. 2021, alg. 4 and 5): 1 here."""
        return 1.0


class VPSDE(SDE):
    """dx = −½ β(s) x ds + √β(s) dW, with ᾱ(s) = exp(−∫_0^s β) and β(s) = −d log ᾱ / ds.

    ``schedule`` is a :class:`~dgm_edu.diffusion.Diffusion` (its ``abar_at`` and ``beta_at``: log
    ᾱ piecewise linear between the model's T steps) or a function ᾱ(s) of times (N,), with
    ``beta`` given or taken from ᾱ by autograd. :meth:`linear` is Song et al.'s continuous
    schedule β(s) = β_min + s (β_max − β_min). The attributes ``abar(s)`` and ``beta(s)`` are
    these two functions of times s (N,).
    """

    def __init__(self, schedule: Diffusion | Fn, beta: Callable | None = None) -> None:
        if isinstance(schedule, Diffusion):
            self.abar, self.beta = schedule.abar_at, schedule.beta_at  # type: ignore[assignment]
        elif callable(schedule):
            self.abar = schedule  # type: ignore[assignment]
            if beta is not None and not callable(beta):
                raise TypeError(f"beta must be None or a function of s, got {type(beta).__name__}")
            self.beta = beta or self._beta_by_autograd  # type: ignore[assignment]
        else:
            raise TypeError(
                f"schedule must be a Diffusion or a function abar(s), got {type(schedule).__name__}"
            )

    @classmethod
    def linear(cls, beta_min: float = 0.1, beta_max: float = 20.0) -> VPSDE:
        """β(s) = β_min + s (β_max − β_min); log ᾱ(s) = −β_min s − ½ (β_max − β_min) s²."""
        lo = checks.real(beta_min, "beta_min", positive=True)
        hi = checks.real(beta_max, "beta_max", positive=True)
        return cls(
            lambda s: torch.exp(-lo * s - 0.5 * (hi - lo) * s**2), lambda s: lo + s * (hi - lo)
        )

    def _beta_by_autograd(self, s: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            s = s.detach().clone().requires_grad_(True)
            (d,) = torch.autograd.grad(self.abar(s).log().sum(), s)
        return -d

    def drift(self, x: torch.Tensor, s: torch.Tensor | float) -> torch.Tensor:
        """f(x, s) = −½ β(s) x."""
        return -0.5 * _col(self.beta(_times(s, x)), x).to(x.dtype) * x

    def diffusion(self, s: torch.Tensor | float) -> torch.Tensor:
        """g(s) = √β(s)."""
        s = torch.as_tensor(s)
        return self.beta(s if s.is_floating_point() else s.float()).sqrt()

    def marginal(
        self, x0: torch.Tensor, s: torch.Tensor | float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean √ᾱ(s) x_0 (N, ...) and std √(1 − ᾱ(s)) (N, 1, ...) of q(x_s | x_0)."""
        ab = _col(self.abar(_times(s, x0)), x0).to(x0.dtype)
        return ab.sqrt() * x0, (1 - ab).sqrt()

    def prior_std(self) -> float:
        return 1.0

    def langevin_alpha(self, s: float, ds: float) -> float:
        """α = ᾱ(s) / ᾱ(s − ds): the one-step α_t of DDPM (Song et al. 2021, alg. 5)."""
        a = self.abar(torch.tensor([s, max(s - ds, 0.0)]))
        return float(a[0] / a[1])


class VESDE(SDE):
    """dx = √(dσ²/ds) dW with σ(s) = σ_min (σ_max/σ_min)^s, so dσ²/ds = 2 σ(s)² log(σ_max/σ_min)
    and q(x_s | x_0) = N(x_0, (σ(s)² − σ_min²) I); the prior is N(0, σ_max² I)."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 10.0) -> None:
        self.sigma_min = checks.real(sigma_min, "sigma_min", positive=True)
        self.sigma_max = checks.real(sigma_max, "sigma_max", positive=True)
        if not self.sigma_min < self.sigma_max:
            raise ValueError(f"need sigma_min < sigma_max, got {sigma_min} and {sigma_max}")

    def sigma(self, s: torch.Tensor | float) -> torch.Tensor:
        """σ(s) = σ_min (σ_max/σ_min)^s."""
        s = torch.as_tensor(s)
        s = s if s.is_floating_point() else s.float()
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** s

    def drift(self, x: torch.Tensor, s: torch.Tensor | float) -> torch.Tensor:
        return torch.zeros_like(x)

    def diffusion(self, s: torch.Tensor | float) -> torch.Tensor:
        """g(s) = σ(s) √(2 log(σ_max/σ_min))."""
        return self.sigma(s) * math.sqrt(2 * math.log(self.sigma_max / self.sigma_min))

    def marginal(
        self, x0: torch.Tensor, s: torch.Tensor | float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean x_0 and std √(σ(s)² − σ_min²) (N, 1, ...)."""
        sig = _col(self.sigma(_times(s, x0)), x0).to(x0)
        return x0, (sig**2 - self.sigma_min**2).clamp(min=0).sqrt()

    def prior_std(self) -> float:
        return self.sigma_max


# =========================================================================== scores
def score_of(model: Diffusion, y: torch.Tensor | int | None = None, guidance: float = 1.0) -> Fn:
    """The score of a trained diffusion model, s(x, s) = −ε̂(x, s) / √(1 − ᾱ(s)), on model-space
    states x (N, 1, 8, 8) at continuous times s (N,) (:meth:`Diffusion.predict_at`).

    ``y``: classes (an int, or (N,) for batches of N); ``guidance`` w != 1 mixes the conditional
    and unconditional predictions, ε̂ = ε̂_u + w (ε̂_c − ε̂_u), as ``guided_eps`` does (two network
    passes per score). Call ``model.eval()`` first: dropout would make the score random.
    """
    if not isinstance(model, Diffusion):
        raise TypeError(f"model must be a dgm_edu.diffusion.Diffusion, got {type(model).__name__}")
    c = model.config
    guidance = checks.real(guidance, "guidance")
    if guidance != 1.0 and (y is None or c.p_uncond == 0):
        raise ValueError(
            f"guidance={guidance} needs labels y and a model trained with label dropout "
            "(p_uncond > 0)"
        )
    if y is None and c.num_classes > 0 and c.p_uncond == 0:
        raise ValueError("y is required: this model has no unconditional score (p_uncond=0)")
    checks.labels(y, len(y) if isinstance(y, torch.Tensor) else 1, c.num_classes)  # check early

    def score(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        labels = checks.labels(y, len(x), c.num_classes, x.device)
        eps, _ = model.predict_at(x, s, labels)
        if labels is not None and guidance != 1.0:
            eps_u, _ = model.predict_at(x, s, None)
            eps = eps_u + guidance * (eps - eps_u)  # classifier-free guidance
        return -eps / _col((1 - model.abar_at(s)).sqrt(), x)  # −ε̂ / σ(s)

    return score


def probability_flow_drift(score: Fn, sde: SDE) -> Fn:
    """F(x, s) = f(x, s) − ½ g(s)² ∇log p_s(x): the velocity of the probability-flow ODE."""

    def drift(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        g2 = _col(sde.diffusion(s), x).to(x) ** 2
        return sde.drift(x, s) - 0.5 * g2 * score(x, s)

    return drift


# =========================================================================== samplers
def time_grid(s_start: float, s_end: float, steps: int, grid: str = "uniform") -> list[float]:
    """``steps + 1`` times from s_start to s_end (either order): evenly spaced (``"uniform"``) or
    evenly spaced in log s (``"log"``, s > 0: small steps where the low-noise dynamics are fast)."""
    steps = checks.steps(steps)
    a, b = checks.real(s_start, "s_start"), checks.real(s_end, "s_end")
    if grid == "uniform":
        return torch.linspace(a, b, steps + 1, dtype=torch.float64).tolist()
    if grid == "log":
        if min(a, b) <= 0:
            raise ValueError(f"grid='log' needs times > 0, got {a} and {b}")
        return torch.logspace(math.log10(a), math.log10(b), steps + 1, dtype=torch.float64).tolist()
    raise ValueError(f"grid must be 'uniform' or 'log', got {grid!r}")


def _check_states(x: object, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2 or not len(x):
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a float tensor (N, ...) of N >= 1 states, got {got}")
    return x


def _check_fns(score: object, sde: object) -> None:
    if not callable(score):
        raise TypeError(f"score must be a function score(x, s), got {type(score).__name__}")
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a VPSDE or a VESDE, got {type(sde).__name__}")


def _check_run(x: object, s_min: float, name: str = "x_T") -> tuple[torch.Tensor, float]:
    x = _check_states(x, name)
    s_min = checks.real(s_min, "s_min")
    if not 0 < s_min < 1:
        raise ValueError(f"s_min must lie in (0, 1), got {s_min}")
    return x, s_min


def _randn(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """N(0, I) noise like x, drawn on the generator's device (CPU by default) and moved to x's."""
    dev = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype).to(x.device)


@torch.no_grad()
def reverse_sde_sample(
    score: Fn,
    sde: SDE,
    x_T: torch.Tensor,
    steps: int,
    *,
    corrector_steps: int = 0,
    snr: float = 0.16,
    s_min: float = 1e-3,
    grid: str = "uniform",
    generator: torch.Generator | None = None,
    return_path: bool = False,
) -> tuple[torch.Tensor, int] | tuple[torch.Tensor, int, torch.Tensor]:
    """Euler–Maruyama on the reverse-time SDE from s = 1 to ``s_min``, ``steps`` steps of h:

        x ← x − h [f(x, s) − g(s)² ∇log p_s(x)] + g(s) √h z,     z ~ N(0, I)

    (the last step adds no noise: it returns its mean, as Song et al. do). With
    ``corrector_steps`` = M > 0 each predictor step is followed by M Langevin steps at the new
    time, x ← x + ε ∇log p + √(2ε) z, with ε = 2 α (r ‖z‖ / ‖∇log p‖)², r = ``snr``, the norms
    averaged over the batch (one ε per step, as in Song et al.'s code; per item, ‖∇log p‖ near a
    mode can be near 0 in low dimension and the step explode)
    (predictor–corrector, Song et al. 2021, alg. 4 and 5). Returns ``(x, nfe)``, nfe = steps (1 +
    M) score evaluations; ``return_path=True`` adds the states after each predictor step,
    (steps + 1, N, ...).
    """
    _check_fns(score, sde)
    x, s_min = _check_run(x_T, s_min)
    M = checks.integer(corrector_steps, "corrector_steps", low=0)
    snr = checks.real(snr, "snr", positive=True)
    times = time_grid(1.0, s_min, steps, grid)
    path, nfe = [x], 0
    for i, (s, s_next) in enumerate(zip(times[:-1], times[1:])):
        h, sv = s - s_next, _times(s, x)
        g = _col(sde.diffusion(sv), x).to(x)
        mean = x - h * (sde.drift(x, sv) - g**2 * score(x, sv))  # a step backwards in time
        nfe += 1
        x = mean if i == len(times) - 2 else mean + g * math.sqrt(h) * _randn(x, generator)
        for _ in range(M):  # Langevin corrector at s_next: ε = 2 α (r ‖z‖ / ‖score‖)²
            grad, z = score(x, _times(s_next, x)), _randn(x, generator)
            nfe += 1
            ratio = z.flatten(1).norm(dim=1).mean() / grad.flatten(1).norm(dim=1).mean()
            eps = 2 * sde.langevin_alpha(s_next, h) * (snr * ratio.item()) ** 2
            x = x + eps * grad + math.sqrt(2 * eps) * z
        path.append(x)
    return (x, nfe, torch.stack(path)) if return_path else (x, nfe)


@torch.no_grad()
def probability_flow_sample(
    score: Fn,
    sde: SDE,
    x_T: torch.Tensor,
    steps: int,
    *,
    method: str = "heun",
    s_min: float = 1e-3,
    grid: str = "uniform",
    return_path: bool = False,
) -> tuple[torch.Tensor, int] | tuple[torch.Tensor, int, torch.Tensor]:
    """Integrate the probability-flow ODE dx/ds = f − ½ g² ∇log p_s from s = 1 to ``s_min``:
    deterministic, so x_T fixes the sample. ``method="euler"`` (nfe = steps) or ``"heun"``
    (the trapezoidal predictor–corrector, second order, nfe = 2 steps). Returns ``(x, nfe)``;
    ``return_path=True`` adds the states, (steps + 1, N, ...)."""
    _check_fns(score, sde)
    x, s_min = _check_run(x_T, s_min)
    x, nfe, path = _integrate(
        probability_flow_drift(score, sde), x, time_grid(1.0, s_min, steps, grid), method
    )
    return (x, nfe, torch.stack(path)) if return_path else (x, nfe)


def _integrate(F: Fn, x: torch.Tensor, times: list[float], method: str):
    if method not in ("heun", "euler"):
        raise ValueError(f"method must be 'heun' or 'euler', got {method!r}")
    path, nfe = [x], 0
    for s, s_next in zip(times[:-1], times[1:]):
        h, k1 = s_next - s, F(x, _times(s, x))  # h < 0 going from 1 down to s_min
        x_euler = x + h * k1
        if method == "euler":
            x, nfe = x_euler, nfe + 1
        else:  # Heun: average the slopes at both ends
            x, nfe = x + 0.5 * h * (k1 + F(x_euler, _times(s_next, x))), nfe + 2
        path.append(x)
    return x, nfe, path


# =========================================================================== the ODE likelihood
def drift_divergence(
    drift: Fn,
    x: torch.Tensor,
    s: torch.Tensor | float,
    *,
    method: str = "hutchinson",
    v: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """F(x, s) (N, ...) and its divergence ∇·F = tr(∂F/∂x) per item (N,), detached.

    ``"exact"``: D vector-Jacobian products, one per coordinate (items must not interact, as in
    eval mode). ``"hutchinson"``: tr J = E[vᵀ J v] for Rademacher or Gaussian probes ``v``
    (P, N, ...), averaged over the P probes; one vector-Jacobian product each.
    """
    if method not in ("hutchinson", "exact"):
        raise ValueError(f"divergence must be 'hutchinson' or 'exact', got {method!r}")
    if method == "hutchinson" and (v is None or v.shape[1:] != x.shape):
        raise ValueError(f"hutchinson needs probes v of shape (P, *{tuple(x.shape)})")
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        f = drift(x, _times(s, x))  # (N, ...)
        div = torch.zeros(len(x), dtype=x.dtype, device=x.device)
        if method == "exact":
            flat, D = f.flatten(1), x[0].numel()
            for i in range(D):  # ∂F_i/∂x_i, summed over i
                (gi,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)
                div = div + gi.flatten(1)[:, i]
        else:
            for p in range(len(v)):  # (vᵀ J) v, one VJP per probe
                (vj,) = torch.autograd.grad(f, x, v[p], retain_graph=p < len(v) - 1)
                div = div + sum_except_batch(vj * v[p]) / len(v)
    return f.detach(), div.detach()


def ode_log_likelihood(
    drift: Fn,
    x: torch.Tensor,
    s0: float,
    s1: float,
    steps: int,
    *,
    divergence: str = "hutchinson",
    probes: int = 1,
    generator: torch.Generator | None = None,
    prior_log_prob: Callable[[torch.Tensor], torch.Tensor] | None = None,
    method: str = "heun",
    grid: str = "uniform",
) -> torch.Tensor:
    """log p_{s0}(x) per item (N,) for the flow dx/ds = F(x, s), by the instantaneous change of
    variables (Chen et al. 2018):

        log p_{s0}(x) = log p_{s1}(x(s1)) + ∫_{s0}^{s1} ∇·F(x(s), s) ds,

    (x, ∫∇·F) integrated together from s0 to s1 in ``steps`` Heun (2 steps drift evaluations) or
    Euler steps. The divergence is ``"exact"`` (D backward passes per evaluation) or
    ``"hutchinson"`` with ``probes`` Rademacher vectors drawn once from ``generator`` and kept
    along the path (Grathwohl et al. 2019): unbiased for the integral of the trace. The prior
    p_{s1} is ``prior_log_prob`` (default N(0, I)). The result is detached.
    """
    x = _check_states(x, "x")
    if not callable(drift):
        raise TypeError(f"drift must be a function F(x, s), got {type(drift).__name__}")
    if divergence not in ("hutchinson", "exact"):
        raise ValueError(f"divergence must be 'hutchinson' or 'exact', got {divergence!r}")
    s0, s1 = checks.real(s0, "s0"), checks.real(s1, "s1")
    if not 0 <= s0 < s1 <= 1:
        raise ValueError(f"need 0 <= s0 < s1 <= 1, got s0={s0}, s1={s1}")
    if method not in ("heun", "euler"):
        raise ValueError(f"method must be 'heun' or 'euler', got {method!r}")
    P = checks.integer(probes, "probes", low=1)
    v = None
    if divergence == "hutchinson":  # Rademacher ±1, fixed along the path
        dev = generator.device if generator is not None else x.device
        v = torch.randint(0, 2, (P, *x.shape), generator=generator, device=dev)
        v = (2 * v - 1).to(x)
    times = time_grid(s0, s1, steps, grid)
    x, logdet = x.detach(), torch.zeros(len(x), dtype=x.dtype, device=x.device)
    for s, s_next in zip(times[:-1], times[1:]):
        h = s_next - s
        k1, d1 = drift_divergence(drift, x, s, method=divergence, v=v)
        if method == "euler":
            x, logdet = x + h * k1, logdet + h * d1
            continue
        k2, d2 = drift_divergence(drift, x + h * k1, s_next, method=divergence, v=v)
        x, logdet = x + 0.5 * h * (k1 + k2), logdet + 0.5 * h * (d1 + d2)
    prior = standard_normal_log_prob(x) if prior_log_prob is None else prior_log_prob(x)
    return prior + logdet


def diffusion_ode_nll(
    model: Diffusion,
    x_levels: torch.Tensor,
    *,
    y: torch.Tensor | int | None = None,
    steps: int = 40,
    probes: int = 1,
    dequantization: str = "gaussian",
    divergence: str = "hutchinson",
    grid: str = "log",
    s_min: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """An estimate of −log P(x) in nats per image of the DISCRETE digits ``x_levels`` (N, 1, 8, 8),
    from the probability-flow ODE of ``model`` (eval mode during the call), (N,).

    ``"gaussian"`` (default): the bound log P(x_0) ≥ E_q[log p(x_0 | x_1) + log p^ODE_{s_1}(x_1)
    − log q(x_1 | x_0)], one draw x_1 = √ᾱ_1 x_0 + √(1 − ᾱ_1) ε (q: the forward process at t = 1),
    p(x_0 | x_1) the model's own decoder (:meth:`Diffusion.decoder_term`), and p^ODE_{s_1} the
    ODE density at s_1 = 1/T, integrated from s_1 to 1 with an N(0, I) prior. Chapter 7's bound
    has the same decoder; the ODE density replaces its prior and diffusion terms.

    ``"uniform"`` (Song et al. 2021): y = x_0 + u · 2/16, u ~ U(−½, ½)^64 (the bin around each
    level), and log P(x) ≥ E_u[log p^ODE_{s_min}(y)] + 64 log(2/16) (Jensen). Any s_min gives a
    bound, since p^ODE_{s_min} is a density on R^64. Song et al. evaluate it at the smallest time,
    which is pessimistic here: with the levels head the model's density at s = 1/T piles up within
    a few √(1 − ᾱ_1) = 0.01 of the grid points (the noise it was trained to remove), a sixth of
    the half bin, so most of a level's bin, where the uniform y falls, has almost no density (and
    the ODE is stiff there); the Gaussian bound's decoder instead integrates each bin exactly.
    ``s_min`` (default 0.01, where √(1 − ᾱ) is about a third of a bin) smooths the peaks.

    One draw per image (ε or u, then ``probes`` Hutchinson vectors, in that order from
    ``generator``); network evaluations: 2 ``steps`` (Heun) for the ODE, + 1 for the decoder.
    ``grid="log"`` spaces the steps evenly in log s, where the dynamics near s_1 need it.
    """
    if not isinstance(model, Diffusion) or model.config.data != "digits":
        raise TypeError("model must be a dgm_edu.diffusion.Diffusion on the digits")
    if dequantization not in ("gaussian", "uniform"):
        raise ValueError(f"dequantization must be 'gaussian' or 'uniform', got {dequantization!r}")
    x0 = to_signed(validate_digits(x_levels)).to(model.abar.device)  # (N, 1, 8, 8) on the grid
    T, dev = model.config.T, x0.device
    labels = checks.labels(y, len(x0), model.config.num_classes, dev)
    drift = probability_flow_drift(score_of(model, labels), VPSDE(model))
    gdev = generator.device if generator is not None else dev
    was_training = model.training
    model.eval()
    try:
        if dequantization == "gaussian":
            if s_min is not None:
                raise ValueError("s_min is for dequantization='uniform' (gaussian uses s_1 = 1/T)")
            ab1 = model.abar[1]
            eps = torch.randn(x0.shape, generator=generator, device=gdev).to(dev)
            x1 = ab1.sqrt() * x0 + (1 - ab1).sqrt() * eps  # x_1 ~ q(x_1 | x_0)
            # log q(x_1 | x_0) = log N(ε; 0, I) − ½ D log(1 − ᾱ_1)
            log_q = standard_normal_log_prob(eps) - 0.5 * NUM_PIXELS * torch.log(1 - ab1)
            log_ode = ode_log_likelihood(
                drift, x1, 1 / T, 1.0, steps, divergence=divergence, probes=probes,
                generator=generator, grid=grid,
            )  # fmt: skip
            with torch.no_grad():
                decoder = model.decoder_term(x0, labels, x1=x1)  # −log p(x_0 | x_1)
            return decoder - log_ode + log_q
        s_lo = 0.01 if s_min is None else checks.real(s_min, "s_min")
        if not 0 < s_lo < 1:
            raise ValueError(f"s_min must lie in (0, 1), got {s_lo}")
        u = dequantization_noise(x0.to(gdev), generator).to(dev) - 0.5  # U(−½, ½) per pixel
        log_ode = ode_log_likelihood(
            drift, x0 + u * BIN, s_lo, 1.0, steps, divergence=divergence, probes=probes,
            generator=generator, grid=grid,
        )  # fmt: skip
        return -(log_ode + NUM_PIXELS * math.log(BIN))
    finally:
        model.train(was_training)
