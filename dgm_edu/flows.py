r"""Normalizing flows: exact likelihood through invertible maps.

A flow is an invertible map :math:`f` from data :math:`x` to noise :math:`z = f(x)` with a simple
base density :math:`p_Z = \mathcal N(0, I)`. The change of variables gives the exact density

.. math:: \log p_X(x) = \log p_Z(f(x)) + \log \left|\det \frac{\partial f}{\partial x}\right|.

Every layer here has the same face: ``forward(x, cond=None) -> (z, logdet)`` (data -> noise, with
the per-example :math:`\log|\det J|`) and ``inverse(z, cond=None) -> x`` (noise -> data).

- :class:`AffineCoupling` (RealNVP), masks as buffers: checkerboard for images, alternating for 2D.
- :class:`MAF` and :class:`IAF`: affine autoregressive layers on a :class:`MADE` network. MAF
  evaluates densities in one pass and samples in D passes; IAF is the other way round.
- :class:`ActNorm` (Glow): a per-channel affine map with data-dependent initialisation.
- :class:`Planar` (Rezende & Mohamed): a one-unit residual map for the 2D intuition.
- :class:`Flow`: a stack of layers. :class:`Flow2D`: a density on the 2D toys.
- :class:`DigitFlow`: a conv coupling flow on the 8x8 digits with uniform or variational
  dequantization; ``log_prob`` is a lower bound on the DISCRETE log-likelihood in nats/image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dgm_edu.data import (
    LEVELS,
    NUM_PIXELS,
    dequantize,
    digits_loader,
    make_loader,
    toy_2d,
    validate_digits,
)
from dgm_edu.runtime import budget, seed_everything
from dgm_edu.train import History, fit

LOG_2PI = math.log(2 * math.pi)


def sum_except_batch(t: torch.Tensor) -> torch.Tensor:
    """Sum every dimension but the first: ``(B, ...) -> (B,)``."""
    return t.flatten(1).sum(1)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    r""":math:`\log \mathcal N(z; 0, I) = -\tfrac12 \sum_i (z_i^2 + \log 2\pi)`, per example."""
    return sum_except_batch(-0.5 * (z**2 + LOG_2PI))


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
    r"""RealNVP affine coupling with a fixed binary mask :math:`m` (a buffer).

    .. math:: z = m \odot x + (1 - m) \odot \left(x \odot e^{s(m \odot x)} + t(m \odot x)\right),
       \qquad \log|\det J| = \sum_i (1 - m_i)\, s_i.

    The masked half passes through unchanged, so :math:`\partial z / \partial x` is triangular (in
    an order that lists the masked coordinates first) and its determinant is the product of the
    diagonal, :math:`\prod_i e^{(1-m_i) s_i}`. ``net`` maps ``cat([m*x, m, cond], dim=1)`` to
    ``2C`` channels (``s`` and ``t``); its last layer starts at zero, so the layer starts as the
    identity.
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
    r"""Affine map :math:`z = (x - b) e^{-\log\sigma}` with data-dependent init (Glow).

    ``shape`` is the shape of :math:`b` and :math:`\sigma`: an int ``C`` gives one pair per channel
    (Glow's ActNorm); a tuple such as ``(1, 8, 8)`` gives one pair per pixel. The parameters are
    shared over the remaining dimensions, so
    :math:`\log|\det J| = -\sum \log\sigma \times` (entries each parameter acts on). On the
    first training batch :math:`b` and :math:`\sigma` are set to that batch's mean and std, so
    the output starts standardised.
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
    r"""Masked autoencoder (Germain et al.): output ``i`` depends only on inputs before ``i``.

    ``order`` is a permutation of ``range(D)``: input ``order[k]`` is the ``k``-th in the
    autoregressive order. Each unit gets a degree; a weight is kept when the degree of its output
    unit is >= (hidden) or > (output) the degree of its input unit. Returns ``(B, 2, D)``.
    """

    def __init__(self, dim: int, hidden: int, num_hidden: int = 2, order=None) -> None:
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
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(-1, 2, self.dim)  # (B, 2, D): shift, log-scale


class MAF(nn.Module):
    r"""Masked autoregressive flow layer (Papamakarios et al.), data -> noise in ONE pass:

    .. math:: z_i = (x_i - \mu_i(x_{<i}))\, e^{-\alpha_i(x_{<i})}, \qquad
       \log|\det J| = -\sum_i \alpha_i.

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
    r"""Inverse autoregressive flow layer (Kingma et al.): the MAF map used the other way round.

    Sampling (noise -> data) is ONE pass, :math:`x_i = z_i e^{\alpha_i(z_{<i})} + \mu_i(z_{<i})`;
    density evaluation (data -> noise) needs D sequential passes. :math:`\log|\det J| = -\sum_i
    \alpha_i(z_{<i})` for the data -> noise direction.
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
    r"""Planar flow :math:`f(x) = x + \hat u \tanh(w^\top x + b)` (Rezende & Mohamed, 2015).

    .. math:: \log|\det J| = \log\left|1 + \tanh'(w^\top x + b)\, \hat u^\top w\right|.

    :math:`\hat u = u + (\mathrm{softplus}(w^\top u) - 1 - w^\top u)\, w / \|w\|^2` guarantees
    :math:`\hat u^\top w \ge -1`, so the map is invertible. The inverse has no closed form: the
    scalar :math:`a = w^\top x` solves the monotone equation
    :math:`a + \hat u^\top w \tanh(a + b) = w^\top y`, found by bisection.
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
    r"""A composition :math:`f = f_K \circ \dots \circ f_1`; log-dets add up (chain rule)."""

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
    net = nn.Sequential(
        nn.Linear(in_dim, hidden),
        nn.GELU(),
        nn.Linear(hidden, hidden),
        nn.GELU(),
        nn.Linear(hidden, out_dim),
    )
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)
    return net


@dataclass
class Flow2DConfig:
    kind: str = "coupling"  # "coupling" (RealNVP), "maf", "iaf" or "planar"
    num_layers: int = 8
    hidden: int = 64
    dim: int = 2


class Flow2D(nn.Module):
    """A flow density on R^D (default 2D) with a standard normal base."""

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
        z, logdet = self.flow(x)
        return standard_normal_log_prob(z) + logdet

    def loss(self, x: torch.Tensor, *_: torch.Tensor) -> torch.Tensor:
        return -self.log_prob(x).mean()

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        p = next(self.parameters())
        z = temperature * torch.randn(n, self.config.dim, device=p.device, dtype=p.dtype)
        return self.flow.inverse(z)


# --------------------------------------------------------------------------- the digits
class ConvNet(nn.Module):
    """The coupling network for images: 3x3 convs with GELU, a zero-initialised output conv.

    Convolutions do not know where they are; a learned bias map ``(1, hidden, size, size)`` after
    the first conv tells them (the border pixels of a digit behave nothing like the centre).
    """

    def __init__(
        self,
        in_ch: int,
        hidden: int,
        out_ch: int,
        depth: int = 2,
        size: int = 8,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.position = nn.Parameter(torch.zeros(1, hidden, size, size))
        self.first = nn.Conv2d(in_ch, hidden, 3, padding=1)
        layers: list[nn.Module] = [nn.GELU(), nn.Dropout(dropout)]
        for _ in range(depth - 1):
            layers += [nn.Conv2d(hidden, hidden, 3, padding=1), nn.GELU(), nn.Dropout(dropout)]
        out = nn.Conv2d(hidden, out_ch, 3, padding=1)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.net = nn.Sequential(*layers, out)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(self.first(h) + self.position)


class FlatMLP(nn.Module):
    """A coupling network that sees the whole image: flatten, MLP, reshape to ``out_ch`` maps."""

    def __init__(
        self,
        in_ch: int,
        hidden: int,
        out_ch: int,
        depth: int = 2,
        size: int = 8,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Flatten(),
            nn.Linear(in_ch * size * size, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
        ]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.GELU(), nn.Dropout(dropout)]
        out = nn.Linear(hidden, out_ch * size * size)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.net = nn.Sequential(*layers, out, nn.Unflatten(1, (out_ch, size, size)))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


def coupling_stack(
    num_couplings: int,
    hidden: int,
    depth: int,
    cond_ch: int = 0,
    actnorm: bool = True,
    net: str = "conv",
    dropout: float = 0.0,
) -> Flow:
    """Checkerboard couplings on ``(B, 1, 8, 8)``, parity alternating, ActNorm before each.

    ``net`` is ``"conv"`` (3x3 convs, local) or ``"mlp"`` (sees the whole image, cheap on a CPU).
    """
    layers: list[nn.Module] = []
    for k in range(num_couplings):
        if actnorm:
            layers.append(ActNorm((1, 8, 8)))  # one scale and shift per pixel
        # in: m*x, m, cond; out: s, t
        body = (
            ConvNet(2 + cond_ch, hidden, 2, depth, dropout=dropout)
            if net == "conv"
            else FlatMLP(2 + cond_ch, hidden, 2, depth, dropout=dropout)
        )
        layers.append(AffineCoupling(checkerboard_mask(8, 8, k % 2), body))
    return Flow(layers)


@dataclass
class DigitFlowConfig:
    dequantization: str = "variational"  # "variational" or "uniform"
    net: str = "conv"  # coupling networks: "conv" (3x3 convs) or "mlp" (sees the whole image)
    num_couplings: int = 8
    hidden: int = 32  # channels (conv) or units (mlp) of each coupling network
    depth: int = 2  # hidden layers per coupling network
    dropout: float = 0.0  # dropout in the main flow's coupling networks (a regulariser)
    deq_couplings: int = 4  # couplings of the variational dequantizer q(u|x)
    deq_hidden: int = 16
    alpha: float = 0.05  # logit preprocessing squashes y into [alpha, 1 - alpha]
    eval_samples: int = 4  # dequantization samples averaged by log_prob


class DigitFlow(nn.Module):
    r"""A checkerboard coupling flow for the 17-level 8x8 digits.

    Preprocessing (its log-Jacobian is part of the density):
    :math:`y = (x + u)/17 \in [0,1)^{64}`, :math:`s = \mathrm{logit}(\alpha + (1-2\alpha)y)`,
    :math:`z = f(s)`. The density of y is
    :math:`\log p(y) = \log\mathcal N(f(s)) + \log|\det \partial f/\partial s| + \sum_i
    \log\frac{1-2\alpha}{p_i(1-p_i)}` with :math:`p_i = \alpha + (1-2\alpha) y_i`.

    Dequantization: ``"uniform"`` draws :math:`u \sim U[0,1)^{64}` (:math:`\log q = 0`);
    ``"variational"`` draws :math:`u = \sigma(g(\epsilon; x))` with a conditional coupling flow
    :math:`g` and :math:`\epsilon \sim \mathcal N(0, I)` (Ho et al., Flow++).
    """

    def __init__(self, config: DigitFlowConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or DigitFlowConfig()
        if c.dequantization not in ("uniform", "variational"):
            raise ValueError(
                f"Unknown dequantization {c.dequantization!r}: expected 'uniform' or 'variational'"
            )
        self.flow = coupling_stack(c.num_couplings, c.hidden, c.depth, net=c.net, dropout=c.dropout)
        if c.dequantization == "variational":
            # q(u|x): couplings on noise whose networks also see the image x (1 channel)
            self.deq_flow = coupling_stack(
                c.deq_couplings, c.deq_hidden, 2, cond_ch=1, actnorm=False, net=c.net
            )

    # -- preprocessing
    def _to_logit(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.config.alpha
        p = a + (1 - 2 * a) * y
        s = torch.log(p) - torch.log1p(-p)
        # ds/dy = (1 - 2a) / (p (1 - p))
        logdet = sum_except_batch(math.log(1 - 2 * a) - torch.log(p) - torch.log1p(-p))
        return s, logdet

    def _from_logit(self, s: torch.Tensor) -> torch.Tensor:
        a = self.config.alpha
        return (torch.sigmoid(s) - a) / (1 - 2 * a)

    # -- dequantization
    def dequantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Draw :math:`u \sim q(u|x)` on :math:`[0,1)^{64}`; return ``(u, log q(u|x))``.

        Variational: :math:`\log q(u|x) = \log\mathcal N(\epsilon) - \log|\det\partial v/\partial
        \epsilon| - \sum_i \log\sigma'(v_i)` with :math:`v = g(\epsilon; x)`, :math:`u = \sigma(v)`.
        """
        dtype = next(self.parameters()).dtype
        xf = x.to(dtype)
        if self.config.dequantization == "uniform":
            u = dequantize(x).to(dtype) * LEVELS - xf  # the foundation's U[0,1) noise
            return u, torch.zeros(x.shape[0], dtype=dtype, device=x.device)
        eps = torch.randn_like(xf)  # (B, 1, 8, 8)
        cond = xf / (LEVELS - 1) - 0.5  # (B, 1, 8, 8): the image conditions the couplings
        v, logdet = self.deq_flow(eps, cond)
        u = torch.sigmoid(v)
        # log sigma'(v) = log sigma(v) + log sigma(-v)
        log_dsig = sum_except_batch(F.logsigmoid(v) + F.logsigmoid(-v))
        return u, standard_normal_log_prob(eps) - logdet - log_dsig

    def log_density(self, y: torch.Tensor) -> torch.Tensor:
        """Continuous log-density of ``y`` in ``[0,1)^64`` (``(B, 1, 8, 8)`` floats), per image."""
        s, ld_pre = self._to_logit(y)
        z, ld_flow = self.flow(s)
        return standard_normal_log_prob(z) + ld_flow + ld_pre

    def elbo(self, x: torch.Tensor) -> torch.Tensor:
        r"""One-sample dequantization bound (nats/image):
        :math:`\log p\left(\tfrac{x+u}{17}\right) - \log q(u|x) - 64\log 17`, :math:`u\sim q`."""
        u, log_q = self.dequantize(x)
        y = (x.to(u.dtype) + u) / LEVELS
        return self.log_density(y) - log_q - NUM_PIXELS * math.log(LEVELS)

    # -- the model face
    def log_prob(self, x: torch.Tensor, num_samples: int | None = None) -> torch.Tensor:
        r"""Lower bound on the discrete log-likelihood :math:`\log P(x)`, nats/image, ``(B,)``.

        :math:`\log P(x) \ge \mathbb E_{q(u|x)}[\log p((x+u)/17) - \log q(u|x)] - 64\log 17`.
        Estimator: the mean of ``num_samples`` (default ``config.eval_samples`` = 4) independent
        one-sample bounds, an unbiased estimate of the bound (not of log P itself).
        """
        x = validate_digits(x)
        k = num_samples or self.config.eval_samples
        return torch.stack([self.elbo(x) for _ in range(k)]).mean(0)

    def loss(self, x: torch.Tensor, *_: torch.Tensor) -> torch.Tensor:
        """Negative one-sample bound, mean over the batch (nats/image)."""
        return -self.elbo(validate_digits(x)).mean()

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        """Draw ``n`` digits ``(n, 1, 8, 8)`` int64 levels; ``z ~ N(0, T^2 I)``."""
        p = next(self.parameters())
        z = temperature * torch.randn(n, 1, 8, 8, device=p.device, dtype=p.dtype)
        y = self._from_logit(self.flow.inverse(z))
        return (y * LEVELS).floor().clamp(0, LEVELS - 1).long()


def train_reference(
    *,
    checkpoint: str | None = None,
    progress: bool = True,
    seed: int = 0,
    dequantization: str = "variational",
) -> tuple[DigitFlow, History]:
    """The book's recipe: a DigitFlow with Adam and cosine decay, early stopping on val."""
    seed_everything(seed)
    cfg = budget(
        fast=DigitFlowConfig(
            dequantization=dequantization, num_couplings=4, hidden=16, deq_couplings=2, deq_hidden=8
        ),
        full=DigitFlowConfig(dequantization=dequantization),
    )
    model = DigitFlow(cfg)
    epochs = budget(fast=4, full=40)
    opt = torch.optim.Adam(model.parameters(), lr=budget(fast=3e-3, full=2e-3))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    hist = fit(
        model,
        opt,
        digits_loader("train", 64),
        digits_loader("val", 350),
        epochs=epochs,
        patience=budget(fast=None, full=15),
        grad_clip=50.0,
        checkpoint=checkpoint,
        seed=seed,
        progress=progress,
        scheduler=sched,
        desc=f"flow ({dequantization})",
    )
    return model, hist


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

    Its training points are ``toy_2d(name, budget(fast=2000, full=8000), seed=seed)``.
    """
    seed_everything(seed)
    points = toy_2d(name, n=budget(fast=2000, full=8000), seed=seed)
    model = Flow2D(Flow2DConfig(kind=kind, num_layers=num_layers, hidden=64))
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    epochs = budget(fast=20, full=150)
    hist = fit(
        model, opt, make_loader(points, batch_size=128, shuffle=True), epochs=epochs,
        scheduler=torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs), checkpoint=checkpoint,
        progress=progress, device="cpu", seed=seed, desc=f"flow-{name}",
    )  # fmt: skip
    return model.eval(), hist
