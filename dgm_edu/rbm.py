"""Restricted Boltzmann machines: energy, free energy, Gibbs sampling, CD/PCD, exact log Z and AIS.

A Bernoulli-Bernoulli RBM over visible units v ∈ {0,1}^V and hidden units h ∈ {0,1}^H has the
energy

    E(v, h) = −vᵀ W h − bᵀ v − cᵀ h,        p(v, h) = e^{−E(v,h)} / Z.

Summing out the hidden units gives the free energy F(v) = −bᵀ v − Σ_j softplus(c_j + vᵀ W_{:,j}),
so log p(v) = −F(v) − log Z. Both conditionals factorise: p(h_j = 1 | v) = σ(c_j + vᵀ W_{:,j})
and p(v_i = 1 | h) = σ(b_i + W_{i,:} h).

The model sees the digits through the fixed binarization rule :func:`dgm_edu.data.binarize`
(level >= 8 -> 1). :meth:`RBM.sample` returns binary images as raw levels 0 and 16, so
``log_prob(sample(n))`` scores exactly the images that were drawn. The digits are square images of
``num_visible`` = s² pixels (64: the 8x8 digits; 784: MNIST at 17 levels).

Training: :meth:`RBM.loss` in train mode is a *surrogate* whose gradient is the CD-k (or PCD-k)
estimate of the NLL gradient, ``mean F(v_data) - mean F(v_negative)`` with the negatives detached.
Its value is not a likelihood, and it advances the persistent chains (PCD). In eval mode ``loss``
returns the exact NLL with no side effects, so the trainer's validation curve, early stopping and
best-epoch restore all use the real likelihood. The RBM is unconditional: a label ``y`` is refused.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from dgm_edu import checks
from dgm_edu.data import NUM_PIXELS, binarize, digits_loader, load_digits, square_image_shape
from dgm_edu.densities import logmeanexp
from dgm_edu.runtime import budget, module_device, seed_everything
from dgm_edu.train import History, fit

BINARY_LEVEL = 16  # a sampled "on" pixel is returned as this raw level (binarize(16) == 1)


@dataclass
class RBMConfig:
    num_visible: int = NUM_PIXELS  # V
    num_hidden: int = 20  # H; log Z is exact (hidden enumeration) up to max_exact_hidden
    k: int = 1  # Gibbs steps per negative sample (CD-k / PCD-k)
    persistent: bool = True  # PCD: keep the negative chains between updates
    num_chains: int = 100  # number of persistent chains (PCD only)
    init_std: float = 0.01  # W ~ N(0, init_std^2)
    max_exact_hidden: int = 20  # above this, log_prob uses an AIS estimate of log Z
    ais_betas: int = 10_000  # AIS settings used by log_prob when H > max_exact_hidden
    ais_runs: int = 100


class AISEstimate(NamedTuple):
    """log Z from annealed importance sampling, with log(Z_hat -/+ 3 standard errors)."""

    log_z: float
    log_z_low: float  # -inf when 3 standard errors exceed the estimate itself
    log_z_high: float


def binary_states(
    n: int,
    start: int = 0,
    end: int | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Rows ``start..end-1`` of the table of all 2^n binary vectors: ``(end - start, n)``.

    Row r holds the bits of the integer r, least significant bit first.
    """
    end = 2**n if end is None else end
    idx = torch.arange(start, end, device=device)  # (S,)
    bits = torch.arange(n, device=device)  # (n,)
    return ((idx[:, None] >> bits) & 1).to(dtype)


class RBM(nn.Module):
    """A Bernoulli-Bernoulli RBM on binarized 8x8 digits, trained by CD-k or PCD-k."""

    def __init__(self, config: RBMConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or RBMConfig()
        self.W = nn.Parameter(c.init_std * torch.randn(c.num_visible, c.num_hidden))  # (V, H)
        self.b = nn.Parameter(torch.zeros(c.num_visible))  # visible biases (V,)
        self.c = nn.Parameter(torch.zeros(c.num_hidden))  # hidden biases (H,)
        # PCD's persistent negative chains (num_chains, V): a buffer, so it moves and checkpoints
        chains = torch.bernoulli(torch.full((c.num_chains, c.num_visible), 0.5))
        self.register_buffer("chains", chains)
        # AIS base model: independent Bernoulli visibles with these logits (set from the data)
        self.register_buffer("base_logits", torch.zeros(c.num_visible))
        self._log_z_cache: tuple[tuple, float] | None = None

    # ------------------------------------------------------------------ energies
    def energy(self, v: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """E(v, h) = −vᵀ W h − bᵀ v − cᵀ h for binary ``v (N, V)``, ``h (N, H)``: ``(N,)``."""
        return -((v @ self.W) * h).sum(-1) - v @ self.b - h @ self.c

    def free_energy(self, v: torch.Tensor) -> torch.Tensor:
        """F(v) = −log Σ_h e^{−E(v,h)} = −bᵀ v − Σ_j softplus(c_j + vᵀ W_{:,j}): ``(N,)``.

        Then p(v) = e^{−F(v)} / Z: the hidden units are summed out in closed form.
        """
        return -(v @ self.b) - F.softplus(v @ self.W + self.c).sum(-1)

    # ------------------------------------------------------------------ conditionals and Gibbs
    def p_h_given_v(self, v: torch.Tensor) -> torch.Tensor:
        """p(h_j = 1 | v) = σ(c_j + vᵀ W_{:,j}): ``(N, V) -> (N, H)``."""
        return torch.sigmoid(v @ self.W + self.c)

    def p_v_given_h(self, h: torch.Tensor) -> torch.Tensor:
        """p(v_i = 1 | h) = σ(b_i + W_{i,:} h): ``(N, H) -> (N, V)``."""
        return torch.sigmoid(h @ self.W.T + self.b)

    @torch.no_grad()
    def gibbs_step(
        self, v: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One block Gibbs sweep v -> h ~ p(h|v) -> v' ~ p(v|h). Returns ``(v', p(v'=1|h))``."""
        h = torch.bernoulli(self.p_h_given_v(v), generator=generator)  # (N, H)
        pv = self.p_v_given_h(h)  # (N, V)
        return torch.bernoulli(pv, generator=generator), pv

    @torch.no_grad()
    def gibbs_chain(
        self, v: torch.Tensor, steps: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Run ``steps`` Gibbs sweeps from binary ``v (N, V)``; return the final ``(N, V)``."""
        for _ in range(steps):
            v, _ = self.gibbs_step(v, generator)
        return v

    # ------------------------------------------------------------------ the face
    @property
    def image_shape(self) -> tuple[int, int, int]:
        """The shape ``(1, s, s)`` of the digits this RBM takes, s² = ``num_visible``."""
        return square_image_shape(self.config.num_visible)

    def _visible(self, x: torch.Tensor, y: None = None) -> torch.Tensor:
        """Raw digits ``(N, 1, s, s)`` -> binary visible vectors ``(N, V)`` (params' dtype)."""
        v = binarize(x, self.image_shape).flatten(1).to(self.W.dtype)
        checks.labels(y, len(v), 0)  # unconditional: refuses a label
        return v

    def loss(self, x: torch.Tensor, y: None = None) -> torch.Tensor:
        """Train mode: the CD/PCD surrogate; eval mode: the exact (or AIS) NLL, nats per image.

        The NLL gradient is E_data[∇F(v)] − E_model[∇F(v)]. CD-k replaces the model expectation
        by chains started at the data and run k steps; PCD-k continues the persistent chains by k
        steps. ``F(v_data).mean() - F(v_neg).mean()`` with ``v_neg`` detached has exactly that
        gradient, but its value is not a likelihood.

        Side effects in train mode: the k Gibbs sweeps draw random numbers and, with PCD, move
        the persistent chains (the ``chains`` buffer). Eval mode has none.
        """
        if not self.training:
            return -self.log_prob(x, y).mean()
        return self.contrastive_loss(self._visible(x, y))

    def contrastive_loss(self, v0: torch.Tensor) -> torch.Tensor:
        """The CD-k / PCD-k surrogate for binary data ``v0 (N, V)``: a scalar.

        Advances the persistent chains (PCD) or chains started at ``v0`` (CD) by k Gibbs sweeps.
        """
        start = self.chains if self.config.persistent else v0
        v_neg = self.gibbs_chain(start, self.config.k)  # (M, V), sampled without grad
        if self.config.persistent:
            self.chains.copy_(v_neg)
        # grad = E_data[grad F] - E_neg[grad F]  ~=  grad of the NLL, F(v) + log Z
        return self.free_energy(v0).mean() - self.free_energy(v_neg).mean()

    def log_prob(self, x: torch.Tensor, y: None = None) -> torch.Tensor:
        """log p(x) = −F(v) − log Z of the binarized digits ``(N, 1, s, s)``: ``(N,)`` nats.

        log Z is exact (hidden enumeration) when ``num_hidden <= max_exact_hidden``; otherwise it
        is an AIS estimate (:meth:`ais_log_partition`, a stochastic estimate that tends to
        *under*-estimate log Z, so the reported log-likelihood is then optimistic).
        Gradients flow through −F(v) (log Z is a constant here: it is computed without them).
        On the ``meta`` device (shape checks only) log Z is not computed.
        """
        v = self._visible(x, y)
        if v.is_meta:
            return -self.free_energy(v)
        # in the weights' dtype even under torch.autocast: a bf16 free energy is off by tenths
        # of a nat (v already has the weights' dtype: float32, or float64 for a float64 RBM)
        with torch.autocast(v.device.type, enabled=False):
            return (-self.free_energy(v).double() - self.log_partition()).to(v.dtype)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        y: None = None,
        steps: int = 1000,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``n`` images ``(n, 1, s, s)`` int64, levels 0 or 16, after ``steps`` >= 1 Gibbs sweeps
        from uniform noise (``steps=0`` would return the noise itself, so it is refused)."""
        n = checks.count(n)
        checks.labels(y, n, 0)
        steps = checks.steps(steps)
        shape = self.image_shape
        v = torch.bernoulli(
            torch.full((n, self.config.num_visible), 0.5, device=module_device(self)),
            generator=generator,
        )
        v = self.gibbs_chain(v, steps, generator)
        return checks.levels_out((v * BINARY_LEVEL).long().view(n, *shape))

    # ------------------------------------------------------------------ the partition function
    @torch.no_grad()
    def log_partition(self) -> float:
        """log Z: exact if H <= ``max_exact_hidden``, else AIS. Cached until a parameter changes."""
        params = (self.W, self.b, self.c, self.base_logits)
        key = tuple((p.data_ptr(), p._version, p.device) for p in params)  # in-place updates bump
        if self._log_z_cache is None or self._log_z_cache[0] != key:
            c = self.config
            if c.num_hidden <= c.max_exact_hidden:
                value = self.exact_log_partition()
            else:
                gen = torch.Generator(device=module_device(self)).manual_seed(0)
                value = self.ais_log_partition(c.ais_betas, c.ais_runs, generator=gen).log_z
            self._log_z_cache = (key, value)
        return self._log_z_cache[1]

    @torch.no_grad()
    def exact_log_partition(self, chunk: int = 2**14) -> float:
        """log Z by enumerating the 2^H hidden states (float64, in chunks):

        log Z = log Σ_h exp(cᵀ h + Σ_i softplus(b_i + W_{i,:} h)).
        """
        H = self.config.num_hidden
        W, b, c = (p.detach().double() for p in (self.W, self.b, self.c))
        parts = []
        for start in range(0, 2**H, chunk):
            h = binary_states(H, start, min(start + chunk, 2**H), dtype=W.dtype, device=W.device)
            # -F_hidden(h) = c^T h + sum_i softplus(b_i + W_{i,:} h)       (S,)
            parts.append(torch.logsumexp(h @ c + F.softplus(h @ W.T + b).sum(-1), 0))
        return float(torch.logsumexp(torch.stack(parts), 0))

    def _log_f(self, v: torch.Tensor, beta: float) -> torch.Tensor:
        """Unnormalised log-marginal of the AIS path at inverse temperature β: ``(N,)``.

        The path anneals the *joint* energy, E_β(v, h) = (1 − β) E_0(v, h) + β E(v, h) with
        E_0(v, h) = −b_A·v, so the hidden units of ``ais_intermediate(β)`` are summed out:

        log f(v; β) = ((1 − β) b_A + β b)·v + Σ_j softplus(β (c_j + v·W_j))

        (β softplus(x) would be the geometric path of the *marginals*; this one is not that.)
        """
        lin = v @ ((1 - beta) * self.base_logits + beta * self.b)
        return lin + F.softplus(beta * (v @ self.W + self.c)).sum(-1)

    @torch.no_grad()
    def ais_intermediate(self, beta: float) -> RBM:
        """The RBM at inverse temperature β on the AIS path, a copy with

        W_β = β W,   c_β = β c,   b_β = (1 − β) b_A + β b      (b_A = ``base_logits``).

        Its free energy is −log f(v; β) (:meth:`_log_f`), and its block Gibbs sweep is the one
        that :meth:`ais_log_weights` takes at β. β = 0 gives the base model (independent visibles
        with logits b_A, hidden units that are fair coins); β = 1 gives this RBM.
        """
        beta = checks.real(beta, "beta")
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        other = copy.deepcopy(self)
        other.W.mul_(beta)
        other.c.mul_(beta)
        other.b.copy_((1 - beta) * self.base_logits + beta * self.b)
        return other

    @torch.no_grad()
    def ais_log_weights(
        self, num_betas: int = 1000, num_runs: int = 100, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, float]:
        """The log importance weights of ``num_runs`` independent AIS runs, ``(R,)`` float64, and
        log Z_0. Each run's exp(log Z_0 + log w_r) is an unbiased estimate of Z.

        Base p_0: independent Bernoulli visibles with logits ``base_logits`` b_A, times 2^H hidden
        states that do not interact, so log Z_0 = Σ_i softplus(b_{A,i}) + H log 2. The runs move
        through the RBMs ``ais_intermediate(β_k)``, β_k = k / K (K = ``num_betas``): each run
        draws v ~ p_0, adds log f_{β_k}(v) − log f_{β_{k−1}}(v) to its log-weight (:meth:`_log_f`),
        then takes one block Gibbs sweep of the RBM at β_k, which leaves its distribution, and so
        f_{β_k}, invariant.
        """
        num_betas = checks.integer(num_betas, "num_betas", low=1)
        num_runs = checks.integer(num_runs, "num_runs", low=2)
        betas = torch.linspace(0.0, 1.0, num_betas + 1).tolist()
        dev = module_device(self)
        base = self.base_logits
        p0 = torch.sigmoid(base).expand(num_runs, -1).contiguous()  # (R, V)
        v = torch.bernoulli(p0, generator=generator)  # exact samples of p_0
        log_w = torch.zeros(num_runs, dtype=torch.float64, device=dev)
        for b_prev, b_next in zip(betas[:-1], betas[1:]):
            log_w += (self._log_f(v, b_next) - self._log_f(v, b_prev)).double()
            # the block Gibbs sweep of the RBM at b_next (W, c scaled; visible biases mixed):
            # h ~ sigma(beta (c + vW)),  v ~ sigma((1 - beta) b_A + beta (b + W h))
            h = torch.bernoulli(torch.sigmoid(b_next * (v @ self.W + self.c)), generator=generator)
            logits = (1 - b_next) * base + b_next * (h @ self.W.T + self.b)
            v = torch.bernoulli(torch.sigmoid(logits), generator=generator)
        log_z0 = float(F.softplus(base.double()).sum()) + self.config.num_hidden * math.log(2)
        return log_w, log_z0

    @torch.no_grad()
    def ais_log_partition(
        self, num_betas: int = 1000, num_runs: int = 100, generator: torch.Generator | None = None
    ) -> AISEstimate:
        """Annealed importance sampling (Neal 2001; Salakhutdinov & Murray 2008) for log Z.

        log Ẑ = log Z_0 + log (1/R) Σ_r w_r from :meth:`ais_log_weights`. E[Ẑ] = Z, so by
        Jensen E[log Ẑ] <= log Z: log Ẑ tends to *under*-estimate log Z.

        The error bars are log(Ẑ (1 ∓ 3 s)), s = sd(w / mean w) / √R the relative standard error
        of the mean weight (the lower one is −inf when 3 s >= 1).
        """
        log_w, log_z0 = self.ais_log_weights(num_betas, num_runs, generator)
        num_runs = len(log_w)
        log_mean = float(logmeanexp(log_w))  # log (1/R) Σ_r w_r
        # standard error of the mean weight, relative to the mean: sd(w / mean w) / sqrt(R)
        rel = float((log_w - log_mean).exp().std()) / math.sqrt(num_runs)
        low = math.log(1 - 3 * rel) if rel < 1 / 3 else -math.inf
        return AISEstimate(
            log_z0 + log_mean, log_z0 + log_mean + low, log_z0 + log_mean + math.log(1 + 3 * rel)
        )

    # ------------------------------------------------------------------ helpers
    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor, alpha: float = 1.0) -> RBM:
        """Set the visible biases (and the AIS base) to the smoothed log-odds of the data:
        b_i = log (n_i + α) / (N − n_i + α), n_i the images with pixel i on (Hinton's guide)."""
        v = self._visible(x)
        alpha = checks.real(alpha, "alpha", positive=True)  # 0 would give -inf biases
        on = v.sum(0)
        logits = ((on + alpha) / (len(v) - on + alpha)).log()
        self.b.copy_(logits)
        self.base_logits.copy_(logits)
        return self

    @torch.no_grad()
    def pseudo_log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """Besag's pseudo-log-likelihood Σ_i log p(v_i | v_{−i}), every pixel: ``(N,)``.

        p(v_i | v_{−i}) = σ(F(v with bit i flipped) − F(v)) needs no log Z.
        """
        v = self._visible(x)  # (N, V)
        fv = self.free_energy(v)  # (N,)
        eye = torch.eye(v.shape[1], dtype=v.dtype, device=v.device)  # (V, V)
        flipped = (v[:, None, :] - eye).abs()  # (N, V, V): row i has bit i flipped
        f_flip = self.free_energy(flipped.flatten(0, 1)).view(v.shape)  # (N, V)
        return F.logsigmoid(f_flip - fv[:, None]).sum(-1)


# --------------------------------------------------------------------------- baseline and recipe
def bernoulli_baseline_nll(alpha: float = 1.0) -> float:
    """Test NLL (nats/image) of independent Bernoulli pixels fit on train (add-alpha smoothing)."""
    v_train = binarize(load_digits("train")[0]).flatten(1)  # (N, 64)
    v_test = binarize(load_digits("test")[0]).flatten(1)
    p = (v_train.sum(0) + alpha) / (len(v_train) + 2 * alpha)  # (64,)
    ll = v_test @ p.log() + (1 - v_test) @ (1 - p).log()
    return float(-ll.double().mean())


def train_reference(
    *, checkpoint: str | Path | None = None, progress: bool = True, seed: int = 0
) -> tuple[RBM, History]:
    """The book's RBM: 20 hidden units (exact log Z), PCD-1 with 100 chains, minibatches of 10,
    SGD with momentum 0.9, weight decay 1e-4 and a cosine-decayed learning rate (0.01 -> 2e-4).
    Fast mode: 16 hidden units and 8 epochs.

    Validation loss is the exact NLL, so ``fit`` keeps the epoch with the best validation NLL.
    """
    seed_everything(seed)
    epochs = budget(fast=8, full=100)
    config = RBMConfig(num_hidden=budget(fast=16, full=20), k=1, persistent=True, num_chains=100)
    model = RBM(config).init_from_data(load_digits("train")[0])
    lr = 0.01
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=lr / 50)
    loaders = digits_loader("train", batch_size=10), digits_loader("val", batch_size=350)
    run = dict(checkpoint=checkpoint, progress=progress, seed=seed, desc="rbm")
    history = fit(model, opt, *loaders, epochs=epochs, scheduler=sched, **run)
    return model, history
