"""Plots: the grid layout is checked pixel by pixel; the figure helpers draw what they are given."""

import math
import re

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from dgm_edu import plots
from dgm_edu.train import History


def test_make_grid_places_every_image():
    imgs = torch.arange(5 * 64).view(5, 1, 8, 8)
    g = plots.make_grid(imgs, nrow=3, pad=1)
    assert g.shape == (2 * 9 - 1, 3 * 9 - 1)
    for i in range(5):
        r, c = divmod(i, 3)
        np.testing.assert_array_equal(g[r * 9 : r * 9 + 8, c * 9 : c * 9 + 8], imgs[i, 0].numpy())
    assert np.isnan(g[8, :]).all() and np.isnan(g[9:, 18:]).all()  # padding and the empty cell


def test_density_2d_draws_the_density():
    ax = plots.density_2d(
        lambda p: -0.5 * (p**2).sum(1) - math.log(2 * math.pi), lim=3, resolution=61
    )
    img = ax.get_images()[0].get_array()
    assert abs(img.max() - 1 / (2 * math.pi)) < 1e-6  # the peak of N(0, I) at the centre pixel
    assert np.unravel_index(np.argmax(img), img.shape) == (30, 30)
    plt.close("all")


def test_training_curves_and_scatter():
    h = History(train_loss=[3.0, 2.0, 1.5], val_loss=[3.1, 2.2, 2.4])
    ax = plots.training_curves(h)
    lines = ax.get_lines()
    np.testing.assert_array_equal(lines[0].get_ydata(), [3.0, 2.0, 1.5])
    assert lines[2].get_xdata()[0] == 2  # the best epoch marker (1-based)
    ax = plots.scatter_2d(torch.tensor([[0.0, 1.0], [2.0, -1.0]]))
    np.testing.assert_array_equal(ax.collections[0].get_offsets(), [[0.0, 1.0], [2.0, -1.0]])
    plt.close("all")


def test_training_curves_can_show_the_raw_weights_of_an_averaged_run():
    h = History(train_loss=[3.0, 2.0], val_loss=[3.4, 2.5], logs={"val_loss_raw": [3.1, 2.7]})
    lines = plots.training_curves(h, raw=True).get_lines()
    labels = [line.get_label() for line in lines]
    assert labels[:3] == ["train", "validation, raw weights", "validation, averaged"]
    np.testing.assert_array_equal(lines[1].get_ydata(), [3.1, 2.7])
    np.testing.assert_array_equal(lines[2].get_ydata(), [3.4, 2.5])
    with pytest.raises(ValueError, match="fit\\(ema=...\\)"):
        plots.training_curves(History(train_loss=[1.0], val_loss=[1.0]), raw=True)
    plt.close("all")


def _frames(html: str) -> list[str]:
    """The embedded PNG frames of a to_jshtml player, in order."""
    import re

    found = re.findall(r'frames\[(\d+)\] = "data:image/png;base64,([^"]+)"', html)
    return [png for _, png in sorted(found, key=lambda f: int(f[0]))]


def test_animate_embeds_one_png_per_frame_and_plays_offline():
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randint(17, (16, 1, 8, 8), generator=gen) for _ in range(2))
    panels = {"left": [a, a, b], "right": [b, b, a]}
    html = plots.animate(panels, captions=["step 1", "step 1", "step 2"]).data
    frames = _frames(html)
    assert len(frames) == 3
    assert frames[0] == frames[1] != frames[2]  # equal frames render equal, a change shows
    assert 'title="Play"' in html and "http://" not in html and "https://" not in html
    assert 'class="fa ' not in html  # no icon font to fetch: the buttons are glyphs
    # points, one panel: the frame changes when the points move, not when they stay
    p = torch.randn(50, 2, generator=gen)
    frames = _frames(plots.animate({"points": [p, p, p + 1]}, kind="points").data)
    assert len(frames) == 3 and frames[0] == frames[1] != frames[2]


def test_animate_refuses_what_it_cannot_draw():
    x = torch.zeros(4, 1, 8, 8, dtype=torch.long)
    with pytest.raises(ValueError, match="same, non-zero number of frames"):
        plots.animate({"a": [x, x], "b": [x]})
    with pytest.raises(ValueError, match="one line per frame"):
        plots.animate({"a": [x, x]}, captions=["only one"])
    with pytest.raises(ValueError, match="kind must be 'digits' or 'points'"):
        plots.animate({"a": [x]}, kind="video")
    with pytest.raises(ValueError, match="non-empty dict"):
        plots.animate({})


def test_control_prerenders_every_value_and_carries_the_live_slider():
    drawn = []

    def render(fig, t):  # x^t on [0, 1]: each value draws a different curve
        drawn.append(t)
        ax = fig.add_subplot()
        x = np.linspace(0, 1, 50)
        ax.plot(x, x**t)

    ctl = plots.control(render, [0.5, 1, 2, 4], name="power", start=2)
    assert {0.5, 4} <= set(drawn)  # both ends of the range were drawn (a failing end fails here)
    frames = _frames(ctl.html)
    assert len(frames) == 4 and len(set(frames)) == 4  # one distinct frame per value
    assert "http://" not in ctl.html and "https://" not in ctl.html
    bundle = ctl._repr_mimebundle_()
    assert bundle["text/html"] == ctl.html  # the site's form, in the same output as the widget
    assert "application/vnd.jupyter.widget-view+json" in bundle
    slider = ctl.widget.children[0]
    assert slider.value == 2 and slider.label == "2"  # start selects its value
    drawn.clear()
    slider.value = 3  # moving the slider (to the last value) draws the figure again
    assert drawn == [4]


def test_control_refuses_what_it_cannot_show():
    with pytest.raises(ValueError, match="at least one"):
        plots.control(lambda fig, v: None, [], name="t")
    with pytest.raises(ValueError, match="not one of the values"):
        plots.control(lambda fig, v: None, [1, 2], name="t", start=3)
    with pytest.raises(TypeError, match="render must be a function"):
        plots.control("not a function", [1], name="t")


def test_animate_draws_the_background_in_grey_under_every_points_frame():
    import base64
    import io

    gen = torch.Generator().manual_seed(0)
    p = 0.3 * torch.randn(50, 2, generator=gen) - 1.5  # the points, lower left
    ring = 0.3 * torch.randn(200, 2, generator=gen) + 1.5  # the background, upper right
    frames = {"points": [p, p + 0.5, p]}

    def pixels(html: str) -> list[np.ndarray]:  # each frame as (H, W, 3) floats in [0, 1]
        pngs = [io.BytesIO(base64.b64decode(f)) for f in _frames(html)]
        return [plt.imread(png, format="png")[..., :3] for png in pngs]

    plain = pixels(plots.animate(frames, kind="points").data)
    under = pixels(plots.animate(frames, kind="points", background=ring).data)
    assert len(plain) == len(under) == 3
    for a, b in zip(plain, under):  # every frame: the background adds grey pixels, upper right
        changed = np.abs(a - b).max(-1) > 0.05  # (H, W)
        rows, cols = np.nonzero(changed)
        assert len(rows) > 20
        assert rows.mean() < a.shape[0] / 2 and cols.mean() > a.shape[1] / 2
        grey = b[changed]  # (K, 3): equal channels, lighter than the black text and axes
        assert np.ptp(grey, axis=1).max() < 0.02 and 0.6 < grey.mean() < 0.95


def test_control_fails_its_cell_when_an_end_of_the_range_fails():
    def render(fig, t):  # breaks only at the last value of the range
        if t == 3:
            raise ZeroDivisionError("the end of the range")
        fig.add_subplot().plot([0, 1], [0, t])

    with pytest.raises(ZeroDivisionError, match="end of the range"):
        plots.control(render, [1, 2, 3], name="t")


def test_control_opens_the_site_player_at_start():
    def render(fig, t):
        fig.add_subplot().plot([0, 1], [0, t])

    values = list(np.linspace(0.0, 1.0, 11))  # computed floats: start matches up to rounding
    ctl = plots.control(render, values, name="t", start=0.3, fmt="{:.1f}")
    assert re.search(r"anim\w+ = new Animation\([^;]*\);\s*anim\w+\.set_frame\(3\);", ctl.html)
    assert ctl.widget.children[0].value == 3  # the live slider starts there too
    assert re.search(r'value="loop"[^>]*checked', ctl.html)  # playing from the last value moves
    plain = plots.control(render, values[:3], name="t", fmt="{:.1f}")  # no start: frame 0
    assert "set_frame(" not in plain.html.split("new Animation")[1].split("</script>")[0]
    with pytest.raises(ValueError, match="share a label"):
        plots.control(render, [1.2, 1.4], name="t", fmt="{:.0f}")


def test_control_refuses_a_render_that_misses_its_figure_and_leaks_nothing():
    open_before = plt.get_fignums()
    with pytest.raises(ValueError, match="drew nothing"):
        plots.control(lambda fig, v: None, [1, 2], name="t")
    with pytest.raises(ValueError, match="on a new figure"):  # a helper called without ax=
        plots.control(lambda fig, v: plots.image_grid(torch.zeros(4, 1, 8, 8)), [1], name="t")
    assert plt.get_fignums() == open_before  # every figure it opened is closed


def _png(b64: str) -> np.ndarray:
    import base64
    import io

    return plt.imread(io.BytesIO(base64.b64decode(b64)))


def test_undrawn_pixels_differ_from_white_and_captions_are_drawn():
    blank = torch.zeros(1, 1, 8, 8)
    undrawn = torch.full((1, 1, 8, 8), float("nan"))
    frames = _frames(plots.animate({"x": [blank, undrawn, undrawn]}, captions=["a", "a", "b"]).data)
    assert frames[0] != frames[1]  # NaN (not drawn yet) is not level 0
    assert frames[1] != frames[2]  # only the caption differs: it is drawn inside the frame
    pixels = _png(frames[1])
    assert np.any(
        np.all(np.isclose(pixels[..., :3], [0xCF / 255, 0xE0 / 255, 0xF0 / 255], atol=0.02), -1)
    )
