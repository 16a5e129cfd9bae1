"""Plots shared by every chapter: image grids, 2D scatters and densities, curves, strips.

Each function draws on a matplotlib ``Axes`` (a new one when ``ax`` is None) and returns it, so
chapters can compose figures with ``plt.subplots``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from einops import rearrange
from matplotlib.axes import Axes

from dgm_edu.data import LEVELS


def _axes(ax: Axes | None, figsize: tuple[float, float] = (4, 4)) -> Axes:
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def make_grid(images: torch.Tensor, nrow: int = 8, pad: int = 1) -> np.ndarray:
    """Tile ``(N, 1, H, W)`` images into one ``(rows*(H+pad)-pad, nrow*(W+pad)-pad)`` array."""
    if images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"Expected images of shape (N, 1, H, W), got {tuple(images.shape)}")
    x = images.detach().float().cpu()
    n = x.shape[0]
    rows = -(-n // nrow)
    fill = torch.full((rows * nrow - n, *x.shape[1:]), float("nan"))  # blank cells
    x = torch.cat([x, fill])
    x = torch.nn.functional.pad(x, (0, pad, 0, pad), value=float("nan"))
    grid = rearrange(x, "(r c) 1 h w -> (r h) (c w)", r=rows, c=nrow)
    return grid[:-pad, :-pad].numpy() if pad else grid.numpy()


def image_grid(
    images: torch.Tensor,
    nrow: int = 8,
    ax: Axes | None = None,
    title: str | None = None,
    vmax: float = LEVELS - 1,
) -> Axes:
    """Show a batch of 8x8 digits (levels 0..16 by default; pass ``vmax=1`` for [0,1])."""
    ax = _axes(ax)
    cmap = plt.get_cmap("gray_r").copy()
    cmap.set_bad("white")
    ax.imshow(make_grid(images, nrow), cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def scatter_2d(
    points: torch.Tensor,
    ax: Axes | None = None,
    title: str | None = None,
    lim: float = 3.0,
    **kwargs: object,
) -> Axes:
    """Scatter plot of ``(N, 2)`` points on a square window ``[-lim, lim]^2``."""
    ax = _axes(ax)
    p = points.detach().cpu().numpy()
    ax.scatter(p[:, 0], p[:, 1], s=kwargs.pop("s", 3), alpha=kwargs.pop("alpha", 0.5), **kwargs)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)
    return ax


@torch.no_grad()
def density_2d(
    log_prob: Callable[[torch.Tensor], torch.Tensor],
    ax: Axes | None = None,
    title: str | None = None,
    lim: float = 3.0,
    resolution: int = 200,
) -> Axes:
    """Heat map of ``exp(log_prob)`` over a grid on ``[-lim, lim]^2``."""
    ax = _axes(ax)
    xs = torch.linspace(-lim, lim, resolution)
    xx, yy = torch.meshgrid(xs, xs, indexing="xy")
    grid = torch.stack([xx.flatten(), yy.flatten()], dim=1)  # (R*R, 2)
    density = log_prob(grid).exp().view(resolution, resolution).cpu().numpy()
    ax.imshow(density, extent=(-lim, lim, -lim, lim), origin="lower", cmap="viridis")
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)
    return ax


def training_curves(
    history: object,
    ax: Axes | None = None,
    title: str | None = None,
    ylabel: str = "loss",
) -> Axes:
    """Plot ``history.train_loss`` and ``history.val_loss`` (a :class:`dgm_edu.train.History`)."""
    ax = _axes(ax, figsize=(5, 3.5))
    train = getattr(history, "train_loss", [])
    val = getattr(history, "val_loss", [])
    ax.plot(range(1, len(train) + 1), train, label="train")
    if val:
        ax.plot(range(1, len(val) + 1), val, label="validation")
        best = int(np.argmin(val))
        ax.axvline(best + 1, color="gray", ls=":", lw=1, label=f"best (epoch {best + 1})")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.legend()
    if title:
        ax.set_title(title)
    return ax


def interpolation_strip(
    rows: Sequence[torch.Tensor] | torch.Tensor,
    ax: Axes | None = None,
    title: str | None = None,
    vmax: float = LEVELS - 1,
) -> Axes:
    """Show one or more interpolation paths, each ``(steps, 1, 8, 8)``, one path per row."""
    if isinstance(rows, torch.Tensor) and rows.dim() == 4:
        rows = [rows]
    steps = rows[0].shape[0]
    ax = _axes(ax, figsize=(steps * 0.6, len(rows) * 0.7))
    return image_grid(torch.cat(list(rows)), nrow=steps, ax=ax, title=title, vmax=vmax)
