"""Basic metrics: unit conversions, NLL evaluation, mode coverage, nearest neighbours."""

import math

import pytest
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


def test_mode_coverage_matches_a_brute_force_count():
    gen = torch.Generator().manual_seed(0)
    centres = data.ring_centres()
    pts = torch.cat([centres[torch.randint(8, (300,), generator=gen)]
                     + 0.15 * torch.randn(300, 2, generator=gen),
                     3 * torch.randn(100, 2, generator=gen)])  # fmt: skip
    counts, good = [0] * 8, 0
    for p in pts.tolist():
        dists = [math.dist(p, c) for c in centres.tolist()]
        k = dists.index(min(dists))
        if dists[k] <= 3 * data.RING_STD:
            counts[k] += 1
            good += 1
    for min_count in (1, 30):
        want = sum(c >= min_count for c in counts)
        modes, quality = metrics.mode_coverage(pts, min_count=min_count)
        assert modes == want and quality == pytest.approx(good / len(pts), rel=1e-6)
    assert want < 8  # min_count = 30 leaves some modes out: both branches are exercised


@pytest.mark.parametrize(
    ("samples", "got"),
    [
        (torch.zeros(0, 2), r"\(0, 2\)"),
        (torch.zeros(5, 3), r"\(5, 3\)"),
        (torch.zeros(5), r"\(5,\)"),
    ],
)
def test_mode_coverage_refuses_empty_or_misshapen_samples(samples, got):
    with pytest.raises(
        ValueError,
        match=rf"^samples must be a non-empty batch of shape \(N, 2\), got {got}$",
    ):
        metrics.mode_coverage(samples)


def test_memorisation_and_nearest_neighbours_take_raw_digits_only():
    x_train, x_test = data.load_digits("train")[0], data.load_digits("test")[0]
    unit = x_test[:50].float() / 16  # [0, 1] floats: used to give a ratio of 2.6
    with pytest.raises(
        ValueError,
        match=r"^Expected integer levels 0..16 \(as load_digits returns\), got non-integer floats",
    ):
        metrics.memorisation(unit, x_train, x_test)
    with pytest.raises(
        ValueError, match=r"^Expected integer levels 0..16, got values in \[0, 255\]$"
    ):
        metrics.nearest_neighbours(x_test[:5] * 255 // 16, x_train)
    # MNIST-sized digits, with their shape named
    g = torch.Generator().manual_seed(0)
    big = torch.randint(0, 17, (20, 1, 28, 28), generator=g)
    out = metrics.memorisation(big[:5], big[:10], big[10:], shape=(1, 28, 28))
    assert out["exact_copies"] == 1.0 and out["memorisation_ratio"] == 0.0


def test_empty_inputs_are_refused_with_a_message():
    with pytest.raises(
        ValueError, match=r"^images must hold at least one item to average over, got 0$"
    ):
        metrics.evaluate_nll(UniformPixels(), torch.zeros(0, 1, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"^batch_size must be an int >= 1, got 0$"):
        metrics.evaluate_nll(UniformPixels(), data.load_digits("test")[0], batch_size=0)
    with pytest.raises(ValueError, match=r"^samples must hold at least one image, got 0$"):
        metrics.class_histogram(torch.zeros(0, 1, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"^images must hold at least one image, got 0$"):
        metrics.digit_features(torch.zeros(0, 1, 8, 8, dtype=torch.long))


def test_evaluate_nll_runs_in_eval_mode_on_the_model_device_and_restores_the_mode():
    seen = []

    class Probe(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("anchor", torch.zeros(()))

        def log_prob(self, x):
            seen.append((self.training, x.device.type))
            return torch.zeros(len(x))

    probe = Probe().train()
    assert metrics.evaluate_nll(probe, data.load_digits("test")[0], batch_size=200) == 0.0
    assert seen == [(False, "cpu")] * 3 and probe.training
