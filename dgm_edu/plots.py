"""Plots shared by every chapter: image grids, 2D scatters and densities, curves, strips.

Each function draws on a matplotlib ``Axes`` (a new one when ``ax`` is None) and returns it, so
chapters can compose figures with ``plt.subplots``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from einops import rearrange
from matplotlib.axes import Axes

from dgm_edu.data import LEVELS

UNDRAWN = "#cfe0f0"  # pale blue: a pixel that is NaN (not drawn yet), unlike white (level 0)


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
    cmap = plt.get_cmap("gray_r").with_extremes(bad=UNDRAWN)  # NaN: not drawn yet
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
    raw: bool = False,
) -> Axes:
    """Plot ``history.train_loss`` and ``history.val_loss`` (a :class:`dgm_edu.train.History`).

    ``raw=True``, for a run that averaged its weights (``fit(ema=d)``, whose ``val_loss`` is the
    average's): also the raw weights' validation loss, ``history.logs["val_loss_raw"]``."""
    ax = _axes(ax, figsize=(5, 3.5))
    train = getattr(history, "train_loss", [])
    val = getattr(history, "val_loss", [])
    ax.plot(range(1, len(train) + 1), train, label="train")
    if raw:
        raw_val = getattr(history, "logs", {}).get("val_loss_raw")
        if not raw_val:
            raise ValueError(
                "raw=True plots history.logs['val_loss_raw'], which only a run trained with "
                "fit(ema=...) and a validation set records; this history has none"
            )
        ax.plot(range(1, len(raw_val) + 1), raw_val, color="0.6", label="validation, raw weights")
    if val:
        ax.plot(range(1, len(val) + 1), val, label="validation" + (", averaged" if raw else ""))
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


def animate(
    panels: dict[str, Sequence[torch.Tensor]],
    *,
    kind: str = "digits",
    captions: Sequence[str] | None = None,
    interval: int = 150,
    nrow: int = 8,
    lim: float = 3.0,
    size: float = 2.6,
    dpi: int = 72,
    background: torch.Tensor | None = None,
) -> object:
    """An animation that plays offline in the notebook and on the site: ``IPython.display.HTML``
    holding every frame as an embedded PNG and matplotlib's own player (``to_jshtml``: no video
    codec, no download).

    ``panels`` maps a title to its frames, drawn side by side, all of the same length: each frame
    is a batch of digits ``(B, 1, 8, 8)`` in levels 0..16 (``kind="digits"``, shown as a grid of
    ``nrow`` columns) or points ``(N, 2)`` (``kind="points"``, on ``[-lim, lim]^2``).
    ``captions``: one line per frame under the panels (e.g. the step). The page weight is about
    frames x panels x (size x dpi)^2 / 40 bytes: keep the frames few and small.
    ``background``: points ``(M, 2)`` drawn in light grey under every points panel (e.g. the data).
    """
    from IPython.display import HTML

    if kind not in ("digits", "points"):
        raise ValueError(f"kind must be 'digits' or 'points', got {kind!r}")
    if not isinstance(panels, dict) or not panels:
        raise ValueError("panels must be a non-empty dict {title: frames}")
    lengths = {len(frames) for frames in panels.values()}
    if len(lengths) != 1 or 0 in lengths:
        raise ValueError(f"every panel needs the same, non-zero number of frames, got {lengths}")
    n = lengths.pop()
    if captions is not None and len(captions) != n:
        raise ValueError(f"captions must hold one line per frame ({n}), got {len(captions)}")
    fig, axes = plt.subplots(1, len(panels), figsize=(size * len(panels), size + 0.4), dpi=dpi)
    axes = np.atleast_1d(axes)
    artists = []
    for ax, (title, frames) in zip(axes, panels.items()):
        first = frames[0].detach().cpu()
        if kind == "digits":
            cmap = plt.get_cmap("gray_r").with_extremes(bad=UNDRAWN)  # NaN: not drawn yet
            artists.append(
                ax.imshow(make_grid(first, nrow), cmap=cmap, vmin=0, vmax=LEVELS - 1,
                          interpolation="nearest")
            )  # fmt: skip
            ax.set_axis_off()
        else:
            if background is not None:
                under = background.detach().cpu()  # (M, 2), the same in every frame
                ax.scatter(under[:, 0], under[:, 1], s=3, c="0.8", linewidths=0)
            artists.append(ax.scatter(first[:, 0], first[:, 1], s=3, alpha=0.5))
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
            ax.set_xticks([])  # the frame is [-lim, lim]^2: tick labels would only weigh the page
            ax.set_yticks([])
        ax.set_title(title, fontsize=9)
    text = fig.text(
        0.5, 0.01, captions[0] if captions else "", fontsize=9, ha="center", va="bottom"
    )
    fig.tight_layout()

    def draw(i: int) -> list:
        for artist, frames in zip(artists, panels.values()):
            frame = frames[i].detach().cpu()
            if kind == "digits":
                artist.set_data(make_grid(frame, nrow))
            else:
                artist.set_offsets(frame.numpy())
        if captions:
            text.set_text(captions[i])
        return [*artists, text]

    return HTML(_player(fig, draw, n, interval))


def _player(
    fig: plt.Figure,
    draw: Callable[[int], object],
    n: int,
    interval: int,
    first: int = 0,
    mode: str = "once",
) -> str:
    """matplotlib's own HTML player of ``n`` frames drawn by ``draw(i)`` on ``fig``, made offline,
    showing frame ``first`` when the page opens and playing ``mode`` ("once", or "loop": play
    from the last frame starts again at the first); ``fig`` is closed, also when ``draw`` fails."""
    import re

    from matplotlib import animation

    try:
        anim = animation.FuncAnimation(fig, draw, frames=n, interval=interval, blit=False)
        html = anim.to_jshtml(default_mode=mode)
    finally:
        plt.close(fig)
    if first:  # the player opens at frame 0: move it once it exists
        html, found = re.subn(
            r"(anim\w+) = new Animation\([^;]*\);", rf"\g<0>\n\1.set_frame({first});", html
        )
        if found != 1:
            raise RuntimeError("cannot set the player's first frame: matplotlib changed it")
    return _offline(html)


class Control:
    """A slider in Jupyter, a pre-rendered player on the static site: see :func:`control`.

    Its display carries both forms in one output: a notebook front end shows the live widget,
    while the site (whose build ranks the widget form last, ``book/_config.yml``) shows the player,
    whose frame slider steps through the same values. The site's build removes the widget form
    (``book/_config.yml``), and ``book/_ext/site_fixes.py`` drops the saved widget state."""

    def __init__(self, widget: object, html: str) -> None:
        self.widget, self.html = widget, html

    def _repr_mimebundle_(self, **kwargs: object) -> dict:
        bundle = self.widget._repr_mimebundle_(**kwargs)  # the widget-view (and its text form)
        return {**bundle, "text/html": self.html}


def control(
    render: Callable[[plt.Figure, object], object],
    values: Sequence[object],
    *,
    name: str,
    start: object | None = None,
    fmt: str = "{}",
    figsize: tuple[float, float] = (6.0, 2.6),
    dpi: int = 72,
    interval: int = 700,
) -> Control:
    """An interactive control over one knob: ``render(fig, value)`` draws on an empty figure.

    In Jupyter this is an ipywidgets slider over ``values`` (``start``, or the first, selected);
    moving it draws the figure again. Widgets cannot run on the offline site, so the same output
    also holds every value pre-rendered, one frame each, in matplotlib's player (see
    :func:`animate`), opening at ``start``: every value, the two ends of the range included, is
    drawn once when the control is made, so a callback that fails at any of them fails the cell,
    and so does one that draws nothing on ``fig`` (e.g. a plot helper called without ``ax=``).
    Numeric values match ``start`` up to rounding; two values with the same label are refused.
    """
    import ipywidgets
    from IPython.display import display

    values = list(values)
    if not callable(render):
        raise TypeError(
            f"render must be a function (fig, value) -> None, got {type(render).__name__}"
        )
    if not values:
        raise ValueError("values must hold at least one setting of the control")
    labels = [fmt.format(v) for v in values]
    if len(set(labels)) < len(labels):
        raise ValueError(f"two values share a label with fmt={fmt!r}: {labels}")
    first = 0 if start is None else _index_of(start, values)

    def draw_on(fig: plt.Figure, i: int) -> None:
        fig.clear()
        before = set(plt.get_fignums())
        render(fig, values[i])
        stray = set(plt.get_fignums()) - before
        for number in stray:
            plt.close(number)
        if stray or not fig.axes:
            raise ValueError(
                f"render(fig, {labels[i]}) must draw on the figure it is given (e.g. "
                f"ax = fig.add_subplot()); it drew {'on a new figure' if stray else 'nothing'}"
            )
        fig.text(0.5, 0.01, f"{name} = {labels[i]}", fontsize=9, ha="center", va="bottom")

    fig = plt.figure(figsize=figsize, dpi=dpi)
    # "loop": a control may open on its last value, where playing "once" would not move
    html = _player(fig, lambda i: draw_on(fig, i), len(values), interval, first=first, mode="loop")

    out = ipywidgets.Output()

    def show(index: int) -> None:
        with out:
            out.clear_output(wait=True)
            live = plt.figure(figsize=figsize, dpi=dpi)
            try:
                draw_on(live, index)
                display(live)
            finally:
                plt.close(live)

    slider = ipywidgets.SelectionSlider(
        options=list(zip(labels, range(len(values)))),
        value=first,
        description=name, continuous_update=False,
    )  # fmt: skip
    slider.observe(lambda change: show(change["new"]), names="value")
    show(slider.value)
    return Control(ipywidgets.VBox([slider, out]), html)


def _index_of(start: object, values: list) -> int:
    """Where ``start`` is among ``values``: numbers match up to rounding (``np.linspace``)."""
    for i, v in enumerate(values):
        if isinstance(v, (int, float)) and isinstance(start, (int, float)):
            if math.isclose(v, start, rel_tol=1e-9, abs_tol=1e-12):
                return i
        elif v is start or (type(v) is type(start) and not hasattr(v, "shape") and v == start):
            return i
    raise ValueError(f"start={start!r} is not one of the values {values}")


# matplotlib's player draws its buttons with Font Awesome icons from a CDN: glyphs instead
_GLYPHS = {"fa-minus": "−", "fa-fast-backward": "⏮", "fa-step-backward": "◁",
           "fa-play fa-flip-horizontal": "◀", "fa-pause": "⏸", "fa-play": "▶",
           "fa-step-forward": "▷", "fa-fast-forward": "⏭", "fa-plus": "+"}  # fmt: skip


def _offline(html: str) -> str:
    """The player without its one off-site request (the icon font): each icon becomes a glyph."""
    import re

    html = re.sub(r"<link[^>]*font-awesome[^>]*>", "", html)
    for icon, glyph in _GLYPHS.items():
        html = html.replace(f'<i class="fa {icon}"></i>', glyph)
    if "http://" in html or "https://" in html or 'class="fa ' in html:
        raise RuntimeError("the animation player still needs the network: matplotlib changed it")
    return html
