"""Normalizing flows: exact likelihood through invertible maps.

A flow is an invertible map f from data x to noise z = f(x) with a simple base density
p_Z = N(0, I). The change of variables gives the exact density

    log p_X(x) = log p_Z(f(x)) + log abs(det ∂f/∂x).

Every layer here has the same face: ``forward(x, cond=None) -> (z, logdet)`` (data -> noise, with
the per-example log abs(det J)) and ``inverse(z, cond=None) -> x`` (noise -> data).

- :class:`AffineCoupling` (RealNVP), masks as buffers: checkerboard for images, alternating for 2D.
- :class:`MAF` and :class:`IAF`: affine autoregressive layers on a :class:`MADE` network. MAF
  evaluates densities in one pass and samples in D passes; IAF is the other way round.
- :class:`ActNorm` (Glow): a per-channel affine map with data-dependent initialisation.
- :class:`Planar` (Rezende & Mohamed): a one-unit residual map for the 2D intuition.
- :class:`Flow`: a stack of layers. :class:`Flow2D`: a density on the 2D toys; :func:`train_toy`.

The flow on the 8x8 digits (``DigitFlow``, with dequantization) is built from these layers in
:mod:`dgm_edu.digit_flow`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from dgm_edu import checks
from dgm_edu.densities import standard_normal_log_prob, sum_except_batch
from dgm_edu.runtime import budget, module_device, module_dtype, seed_everything
from dgm_edu.train import History, fit_toy

Layer = TypeVar("Layer", bound=nn.Module)


def zero_init(layer: Layer) -> Layer:
    """Zero a layer's weight and bias and return it: an output layer that makes its coupling (or
    MADE) layer start as the identity map."""
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


# --------------------------------------------------------------------------- masks
def checkerboard_mask(height: int, width: int, parity: int = 0) -> torch.Tensor:
    """``(1, 1, H, W)`` mask with 1 where ``(row + col) % 2 == parity``."""
    rows = torch.arange(height).view(-1, 1)
    cols = torch.arange(width).view(1, -1)
    return ((rows + cols) % 2 == parity).float().view(1, 1, height, width)


def alternating_mask(dim: int, parity: int = 0) -> torch.Tensor:
    """``(1, D)`` mask with 1 on the coordinates ``i % 2 == parity`` (for vector data)."""
    return (torch.arange(dim) % 2 == parity).float().view(1, dim)


# --------------------------------------------------------------------------- coupling
class AffineCoupling(nn.Module):
    """RealNVP affine coupling with a fixed binary mask m (a buffer):

        z = m ⊙ x + (1 − m) ⊙ (x ⊙ exp(s(m ⊙ x)) + t(m ⊙ x)),    log abs(det J) = Σ_i (1 − m_i) s_i.

    The masked half passes through unchanged, so ∂z/∂x is triangular (in an order that lists the
    masked coordinates first) and its determinant is the product of the diagonal,
    Π_i exp((1 − m_i) s_i). ``net`` maps ``cat([m*x, m, cond], dim=1)`` to ``2C`` channels
    (``s`` and ``t``); its last layer starts at zero, so the layer starts as the identity.
    """

    def __init__(self, mask: torch.Tensor, net: nn.Module, scale_clamp: float = 3.0) -> None:
        super().__init__()
        self.register_buffer("mask", mask)  # (1, C) or (1, C, H, W)
        self.net = net
        self.scale_clamp = scale_clamp

    def _scale_shift(
        self, x: torch.Tensor, cond: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.mask
        h = [x * m, m.expand_as(x).to(x.dtype)] + ([] if cond is None else [cond])
        s, t = self.net(torch.cat(h, dim=1)).chunk(2, dim=1)  # each like x
        # a soft clamp, s in (-c, c), keeps exp(s) from exploding early in training
        s = self.scale_clamp * torch.tanh(s / self.scale_clamp)
        return (1 - m) * s, (1 - m) * t

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self._scale_shift(x, cond)
        return x * torch.exp(s) + t, sum_except_batch(s)

    def inverse(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        # m*z = m*x, so the net sees the same input as in forward
        s, t = self._scale_shift(z, cond)
        return (z - t) * torch.exp(-s)


# --------------------------------------------------------------------------- ActNorm
class ActNorm(nn.Module):
    """Affine map z = (x − b) exp(−log σ) with data-dependent initialisation (Glow).

    ``shape`` is the shape of b and σ: an int ``C`` gives one pair per channel (Glow's ActNorm);
    a tuple such as ``(1, 8, 8)`` gives one pair per pixel. The parameters are shared over the
    remaining dimensions, so log abs(det J) = −Σ log σ × (the entries each parameter acts on). On
    the first training batch (train mode, a batch of two or more) b and σ are set to that batch's
    mean and std, so the output starts standardised: a one-time side effect of ``forward``.
    """

    def __init__(self, shape: int | tuple[int, ...]) -> None:
        super().__init__()
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.loc = nn.Parameter(torch.zeros(shape))
        self.log_scale = nn.Parameter(torch.zeros(shape))
        self.register_buffer("initialized", torch.tensor(False))

    def _view(self, p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # (1, *shape, 1, ...): broadcast over the batch and the trailing dimensions
        return p.view(1, *p.shape, *([1] * (x.dim() - 1 - p.dim())))

    @torch.no_grad()
    def _initialise(self, x: torch.Tensor) -> None:
        flat = x.reshape(x.shape[0], *self.loc.shape, -1)  # (B, *shape, rest)
        flat = flat.movedim(0, -2).flatten(-2)  # (*shape, B * rest)
        self.loc.copy_(flat.mean(-1))
        self.log_scale.copy_(flat.std(-1).clamp_min(1e-3).log())
        self.initialized.fill_(True)

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and not x.is_meta and not bool(self.initialized) and x.shape[0] > 1:
            self._initialise(x)
        z = (x - self._view(self.loc, x)) * torch.exp(-self._view(self.log_scale, x))
        shared = x[0].numel() // self.loc.numel()  # entries that each parameter acts on
        logdet = -self.log_scale.sum() * shared
        return z, logdet.expand(x.shape[0]).to(z.dtype)

    def inverse(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return z * torch.exp(self._view(self.log_scale, z)) + self._view(self.loc, z)


# --------------------------------------------------------------------------- MADE, MAF, IAF
class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (a buffer)."""

    def __init__(self, in_features: int, out_features: int, mask: torch.Tensor) -> None:
        super().__init__(in_features, out_features)
        self.register_buffer("mask", mask)  # (out, in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """Masked autoencoder (Germain et al.): output ``i`` depends only on inputs before ``i``.

    ``order`` is a permutation of ``range(D)``: input ``order[k]`` is the ``k``-th in the
    autoregressive order. Each unit gets a degree; a weight is kept when the degree of its output
    unit is >= (hidden) or > (output) the degree of its input unit. Returns ``(B, 2, D)``.
    """

    def __init__(
        self, dim: int, hidden: int, num_hidden: int = 2, order: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        order = torch.arange(dim) if order is None else torch.as_tensor(order)
        deg_in = torch.empty(dim, dtype=torch.long)
        deg_in[order] = torch.arange(1, dim + 1)  # degree of input i = its rank in the order
        self.register_buffer("degrees", deg_in)
        degs = [deg_in]
        for _ in range(num_hidden):
            degs.append(torch.arange(hidden) % max(dim - 1, 1) + 1)  # degrees 1..D-1, cyclic
        layers: list[nn.Module] = []
        for d_in, d_out in zip(degs[:-1], degs[1:]):
            layers += [
                MaskedLinear(len(d_in), len(d_out), (d_out[:, None] >= d_in[None]).float()),
                nn.GELU(),
            ]
        # output unit (k, i) sees hidden units of degree < deg(i): strict inequality
        d_out = deg_in.repeat(2)
        last = MaskedLinear(len(degs[-1]), 2 * dim, (d_out[:, None] > degs[-1][None]).float())
        self.net = nn.Sequential(*layers, zero_init(last))
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(-1, 2, self.dim)  # (B, 2, D): shift, log-scale


class MAF(nn.Module):
    """Masked autoregressive flow layer (Papamakarios et al.), data -> noise in ONE pass:

        z_i = (x_i − μ_i(x_<i)) exp(−α_i(x_<i)),    log abs(det J) = −Σ_i α_i.

    The inverse (sampling) is sequential: D passes, each fixing one more coordinate.
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 64,
        num_hidden: int = 2,
        reverse: bool = False,
        scale_clamp: float = 3.0,
    ) -> None:
        super().__init__()
        order = torch.arange(dim).flip(0) if reverse else torch.arange(dim)
        self.made = MADE(dim, hidden, num_hidden, order)
        self.dim = dim
        self.scale_clamp = scale_clamp

    def _shift_logscale(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, alpha = self.made(h).unbind(1)  # (B, D) each
        return mu, self.scale_clamp * torch.tanh(alpha / self.scale_clamp)

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mu, alpha = self._shift_logscale(x)
        return (x - mu) * torch.exp(-alpha), -alpha.sum(1)

    def inverse(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        x = torch.zeros_like(z)
        for _ in range(self.dim):  # pass k makes the k-th coordinate (in the order) exact
            mu, alpha = self._shift_logscale(x)
            x = z * torch.exp(alpha) + mu
        return x


class IAF(MAF):
    """Inverse autoregressive flow layer (Kingma et al.): the MAF map used the other way round.

    Sampling (noise -> data) is ONE pass, x_i = z_i exp(α_i(z_<i)) + μ_i(z_<i); density
    evaluation (data -> noise) needs D sequential passes. log abs(det J) = −Σ_i α_i(z_<i) for the
    data -> noise direction.
    """

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.zeros_like(x)
        for _ in range(self.dim):
            mu, alpha = self._shift_logscale(z)
            z = (x - mu) * torch.exp(-alpha)
        _, alpha = self._shift_logscale(z)
        return z, -alpha.sum(1)

    def inverse(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        mu, alpha = self._shift_logscale(z)
        return z * torch.exp(alpha) + mu


# --------------------------------------------------------------------------- planar
class Planar(nn.Module):
    """Planar flow f(x) = x + û tanh(wᵀx + b) (Rezende & Mohamed, 2015):

        log abs(det J) = log abs(1 + tanh'(wᵀx + b) ûᵀw).

    û = u + (softplus(wᵀu) − 1 − wᵀu) w / ‖w‖² guarantees ûᵀw ≥ −1, so the map is invertible.
    The inverse has no closed form: the scalar a = wᵀx solves the monotone equation
    a + ûᵀw tanh(a + b) = wᵀy, found by bisection.
    """

    def __init__(self, dim: int = 2) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(dim) * 0.5)
        self.u = nn.Parameter(torch.randn(dim) * 0.5)
        self.b = nn.Parameter(torch.zeros(()))

    def u_hat(self) -> torch.Tensor:
        wu = self.w @ self.u
        return self.u + (F.softplus(wu) - 1 - wu) * self.w / (self.w @ self.w)

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        u = self.u_hat()
        a = x @ self.w + self.b  # (B,)
        z = x + u * torch.tanh(a).unsqueeze(1)
        # tanh'(a) = 1 - tanh(a)^2
        logdet = torch.log(torch.abs(1 + (1 - torch.tanh(a) ** 2) * (u @ self.w)))
        return z, logdet

    @torch.no_grad()
    def inverse(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        u = self.u_hat()
        uw, target = u @ self.w, z @ self.w  # (), (B,)
        lo, hi = target - uw.abs() - 1, target + uw.abs() + 1  # |tanh| < 1 brackets the root
        for _ in range(200):  # bisection halves the bracket: exact to float64 well before 200
            mid = (lo + hi) / 2
            above = mid + uw * torch.tanh(mid + self.b) > target
            hi, lo = torch.where(above, mid, hi), torch.where(above, lo, mid)
        a = (lo + hi) / 2
        return z - u * torch.tanh(a + self.b).unsqueeze(1)


# --------------------------------------------------------------------------- stacks
class Flow(nn.Module):
    """A composition f = f_K ∘ … ∘ f_1; the log-determinants add up (chain rule)."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, ld = layer(x, cond)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        for layer in reversed(self.layers):
            z = layer.inverse(z, cond)
        return z

    @torch.no_grad()
    def trajectory(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[x, f_1(x), f_2(f_1(x)), ...]``: the data after each layer (for plots)."""
        out = [x]
        for layer in self.layers:
            x, _ = layer(x)
            out.append(x)
        return out


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_dim, hidden),
        nn.GELU(),
        nn.Linear(hidden, hidden),
        nn.GELU(),
        zero_init(nn.Linear(hidden, out_dim)),
    )


@dataclass
class Flow2DConfig:
    kind: str = "coupling"  # "coupling" (RealNVP), "maf", "iaf" or "planar"
    num_layers: int = 8
    hidden: int = 64
    dim: int = 2


class Flow2D(nn.Module):
    """A flow density on R^D (default 2D) with a standard normal base.

    ``log_prob(x)`` is exact and keeps gradients; ``loss(x) = −mean log_prob(x)``; in train mode
    the coupling flow's ActNorm layers initialise from the first batch they see (once).
    """

    def __init__(self, config: Flow2DConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or Flow2DConfig()
        layers: list[nn.Module] = []
        for k in range(c.num_layers):
            if c.kind == "coupling":
                layers += [
                    ActNorm(c.dim),
                    AffineCoupling(
                        alternating_mask(c.dim, k % 2), _mlp(2 * c.dim, c.hidden, 2 * c.dim)
                    ),
                ]
            elif c.kind in ("maf", "iaf"):
                cls = MAF if c.kind == "maf" else IAF
                layers.append(cls(c.dim, c.hidden, reverse=k % 2 == 1))
            elif c.kind == "planar":
                layers.append(Planar(c.dim))
            else:
                raise ValueError(f"Unknown flow kind {c.kind!r}: expected coupling/maf/iaf/planar")
        self.flow = Flow(layers)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) = log N(f(x); 0, I) + log abs(det ∂f/∂x), per point: ``(B, D) -> (B,)``."""
        x = checks.points(x, self.config.dim, "x").to(module_dtype(self))  # (B, D)
        z, logdet = self.flow(x)
        return standard_normal_log_prob(z) + logdet

    def loss(self, x: torch.Tensor, y: torch.Tensor | int | None = None) -> torch.Tensor:
        """Negative log-likelihood, nats per point, averaged over the batch. The model is
        unconditional: a ``y`` is refused."""
        x = checks.points(x, self.config.dim, "x")
        checks.labels(y, len(x), 0)
        return -self.log_prob(x).mean()

    @torch.no_grad()
    def sample(
        self, n: int, *, y: torch.Tensor | int | None = None, temperature: float = 1.0
    ) -> torch.Tensor:
        """``(n, D)`` points x = f⁻¹(z), z ~ N(0, T² I) with T the ``temperature`` (finite, > 0).
        The model is unconditional: a ``y`` is refused."""
        n, temperature = checks.count(n), checks.temperature(temperature)
        checks.labels(y, n, 0)
        dtype = next(self.parameters()).dtype
        z = temperature * torch.randn(n, self.config.dim, device=module_device(self), dtype=dtype)
        return checks.finite(self.flow.inverse(z), "Flow2D samples")


def train_toy(
    name: str,
    *,
    kind: str = "coupling",
    num_layers: int = 8,
    checkpoint: str | Path | None = None,
    progress: bool = True,
    seed: int = 0,
) -> tuple[Flow2D, History]:
    """Fit a :class:`Flow2D` to one of ``data.toy_2d``'s toys by maximum likelihood (chapter 6).

    The recipe builds the flow and hands it to the shared toy fit, :func:`dgm_edu.train.fit_toy`:
    ``budget(fast=2000, full=8000)`` points of ``toy_2d(name, seed=seed)``, Adam (lr 5e-3)
    annealed to 0 by a cosine schedule, batches of 128, ``budget(fast=20, full=150)`` epochs.
    """
    seed_everything(seed)
    model = Flow2D(Flow2DConfig(kind=kind, num_layers=num_layers, hidden=64))
    hist = fit_toy(
        model, name, n=budget(fast=2000, full=8000), epochs=budget(fast=20, full=150),
        batch_size=128, lr=5e-3, schedule="cosine", seed=seed, checkpoint=checkpoint,
        progress=progress, device="cpu", desc=f"flow-{name}",
    )  # fmt: skip
    return model.eval(), hist
