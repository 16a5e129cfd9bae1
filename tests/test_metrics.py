"""Basic metrics: unit conversions, NLL evaluation, mode coverage, nearest neighbours."""

import math

import torch

from dgm_edu import data, metrics
from dgm_edu.mixtures import UniformPixels


def test_bits_per_dim_conversion():
    assert abs(metrics.nats_to_bpd(64 * math.log(17)) - math.log2(17)) < 1e-12
    assert abs(metrics.bpd_to_nats(metrics.nats_to_bpd(123.4)) - 123.4) < 1e-9
    assert abs(metrics.nats_to_bpd(math.log(2), dims=1) - 1.0) < 1e-12


def test_evaluate_nll_averages_minus_log_prob_over_batches():
    x, _ = data.load_digits("test")
    f = lambda b: -b.flatten(1).float().sum(1)  # log p = -(sum of levels)
    assert (
        abs(metrics.evaluate_nll(f, x, batch_size=7) - x.flatten(1).sum(1).float().mean().item())
        < 1e-3
    )
    assert abs(metrics.evaluate_nll(UniformPixels(), x) - 64 * math.log(17)) < 1e-4


def test_mode_coverage_counts_known_sets():
    c = data.ring_centres()
    exact = c.repeat(10, 1)
    assert metrics.mode_coverage(exact) == (8, 1.0)
    only_three = torch.cat([c[:3].repeat(5, 1), torch.zeros(5, 2)])  # 5 points at the origin: far
    modes, quality = metrics.mode_coverage(only_three)
    assert modes == 3 and abs(quality - 15 / 20) < 1e-9
    just_outside = c[:1] + torch.tensor([[3.01 * data.RING_STD, 0.0]])
    assert metrics.mode_coverage(just_outside) == (0, 0.0)
    assert metrics.mode_coverage(data.toy_2d("ring8", 4000))[0] == 8


def test_nearest_neighbours_finds_copies():
    x, _ = data.load_digits("train")
    q = x[[5, 17, 999]]
    dist, idx = metrics.nearest_neighbours(q, x)
    assert torch.equal(dist, torch.zeros(3)) and idx.tolist() == [5, 17, 999]
    shifted = q.clone()
    shifted[0, 0, 0, 0] += 3
    d2, _ = metrics.nearest_neighbours(shifted[:1], x[[5]])
    assert abs(d2.item() - 3.0) < 1e-5
