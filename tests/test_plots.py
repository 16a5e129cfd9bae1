"""Plots: the grid layout is checked pixel by pixel; the figure helpers draw what they are given."""

import math

import matplotlib.pyplot as plt
import numpy as np
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
