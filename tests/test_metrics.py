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
    modes, quality = metrics.mode_coverage(only_three)  # fair share 20/8 = 2.5; each has 5
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
    wants = []
    for min_share in (0.1, 0.5, 0.9):
        want = sum(c >= min_share * len(pts) / 8 for c in counts)
        modes, quality = metrics.mode_coverage(pts, min_share=min_share)
        assert modes == want and quality == pytest.approx(good / len(pts), rel=1e-6)
        wants.append(want)
    assert wants[0] == 8 and wants[-1] < 8  # both branches of the threshold are exercised


def test_mode_coverage_refuses_a_blob_and_a_ring_that_mostly_misses():
    """One stray sample per mode used to count as covered: a broad blob and a ring with only 20%
    of its samples within 3 sigma both scored 8/8 modes."""
    gen = torch.Generator().manual_seed(0)
    blob = 1.2 * torch.randn(2000, 2, generator=gen)  # one Gaussian over the whole ring
    modes, within = metrics.mode_coverage(blob)
    assert metrics.mode_coverage(blob, min_share=1e-3)[0] == 8  # the old count: every mode "hit"
    assert modes == 0 and within < 0.2
    c = data.ring_centres()
    hits = c.repeat(50, 1) + 0.02 * torch.randn(400, 2, generator=gen)  # 20%: on the modes
    misses = 1.6 * c.repeat(200, 1)  # 80%: pushed outwards, 3.2 sigma... far from every centre
    ring = torch.cat([hits, misses])
    modes, within = metrics.mode_coverage(ring)
    assert within == pytest.approx(0.2) and modes == 0
    assert metrics.mode_coverage(ring, min_share=0.2)[0] == 8  # exactly its share: counted


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, float("nan")])
def test_mode_coverage_refuses_a_share_outside_0_1(bad):
    with pytest.raises(ValueError, match="min_share"):
        metrics.mode_coverage(data.ring_centres(), min_share=bad)


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


# --------------------------------------------------------------------------- ROC and AUC
def _pairs_auc(normal: list[float], anomaly: list[float]) -> float:
    """By hand: every (anomaly, normal) pair, 1 if the anomaly scores higher, ½ for a tie."""
    wins = sum(1.0 if a > n else 0.5 if a == n else 0.0 for a in anomaly for n in normal)
    return wins / (len(anomaly) * len(normal))


def test_roc_auc_is_the_mann_whitney_statistic_with_anomalies_positive():
    # by hand: anomaly 1 beats 0 and ties the two 1s; anomaly 2 beats all three: (1 + ½ + ½ + 3)/6
    r = metrics.roc(torch.tensor([0.0, 1.0, 1.0]), torch.tensor([1.0, 2.0]))
    assert r.auc == pytest.approx(5 / 6, abs=1e-15)
    # the convention: a HIGHER score is MORE anomalous, so anomalies above every normal item give 1
    assert metrics.roc(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0])).auc == 1.0
    assert metrics.roc(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])).auc == 0.0
    assert metrics.roc(torch.ones(5), torch.ones(7)).auc == 0.5  # all ties: chance
    g = torch.Generator().manual_seed(0)
    for _ in range(5):  # integer scores: many ties
        normal = torch.randint(0, 6, (23,), generator=g)
        anomaly = torch.randint(2, 9, (17,), generator=g)
        want = _pairs_auc(normal.tolist(), anomaly.tolist())
        assert metrics.roc(normal, anomaly).auc == pytest.approx(want, abs=1e-12)


def test_roc_matches_sklearn_curve_and_auc_and_its_area_is_the_auc():
    from sklearn.metrics import roc_auc_score, roc_curve

    g = torch.Generator().manual_seed(1)
    for ties in (True, False):
        normal = torch.randn(200, generator=g, dtype=torch.float64)
        anomaly = torch.randn(150, generator=g, dtype=torch.float64) + 0.8
        if ties:
            normal, anomaly = normal.round(decimals=1), anomaly.round(decimals=1)
        labels = torch.cat([torch.zeros(200), torch.ones(150)])  # the anomalies are label 1
        scores = torch.cat([normal, anomaly])
        r = metrics.roc(normal, anomaly)
        assert r.auc == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
        fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
        torch.testing.assert_close(r.fpr, torch.from_numpy(fpr), rtol=0, atol=1e-15)
        torch.testing.assert_close(r.tpr, torch.from_numpy(tpr), rtol=0, atol=1e-15)
        area = ((r.fpr[1:] - r.fpr[:-1]) * (r.tpr[1:] + r.tpr[:-1]) / 2).sum().item()
        assert area == pytest.approx(r.auc, abs=1e-12)  # the trapezoids under the curve
        assert r.fpr[0] == r.tpr[0] == 0 and r.fpr[-1] == r.tpr[-1] == 1
        assert (r.fpr.diff() >= 0).all() and (r.tpr.diff() >= 0).all()


def test_roc_takes_infinite_scores_and_refuses_what_is_not_scores():
    # an impossible image (log p = −inf) scores +inf: the most anomalous of all
    r = metrics.roc(torch.tensor([1.0, 2.0]), torch.tensor([float("inf"), 1.5]))
    assert r.auc == pytest.approx(_pairs_auc([1.0, 2.0], [float("inf"), 1.5]))
    with pytest.raises(ValueError, match=r"scores_anomaly contain NaN: expected real scores"):
        metrics.roc(torch.zeros(3), torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match=r"scores_normal must be a non-empty 1D tensor, got "):
        metrics.roc(torch.zeros(3, 1), torch.zeros(3))
    with pytest.raises(ValueError, match=r"scores_anomaly must be a non-empty 1D tensor, got "):
        metrics.roc(torch.zeros(3), torch.zeros(0))
    with pytest.raises(TypeError, match=r"scores_normal must be a 1D tensor of scores, got list"):
        metrics.roc([0.0, 1.0], torch.zeros(3))
    with pytest.raises(TypeError, match=r"scores_anomaly must hold real scores, got dtype"):
        metrics.roc(torch.zeros(3), torch.zeros(3, dtype=torch.bool))


class _Identity(torch.nn.Module):
    """A stand-in feature net: the features are the inputs themselves, (N, F)."""

    num_features = 2

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x.float()


def test_frechet_distance_matches_closed_forms_and_torchmetrics_fid():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 3, generator=g, dtype=torch.float64) @ torch.tensor(
        [[1.0, 0.3, 0.0], [0.0, 2.0, 0.5], [0.0, 0.0, 0.7]], dtype=torch.float64
    )
    shift = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    # a shifted copy: equal covariances, so only ‖μ_a − μ_b‖² = ‖shift‖² remains
    assert abs(metrics.frechet_distance(a, a + shift) - shift.pow(2).sum().item()) < 1e-9
    # b = 2a: Σ_b = 4Σ, (Σ Σ_b)^½ = 2Σ, so FD = ‖μ‖² + Tr Σ + 4 Tr Σ − 4 Tr Σ = ‖μ‖² + Tr Σ
    want = a.mean(0).pow(2).sum() + torch.cov(a.T).trace()
    assert abs(metrics.frechet_distance(a, 2 * a) - want.item()) < 1e-8
    x, _ = data.load_digits("train")
    xt, _ = data.load_digits("test")
    fd = metrics.frechet_distance(metrics.digit_features(x[:300]), metrics.digit_features(xt))
    assert abs(fd - metrics.fid(x[:300], xt)) < 1e-3 * max(fd, 1.0)  # torchmetrics' value


def test_fid_bootstrap_holds_the_estimate_and_narrows_with_n():
    x, _ = data.load_digits("train")
    xt, _ = data.load_digits("test")
    small = metrics.fid_bootstrap(x[:100], xt, resamples=100)
    large = metrics.fid_bootstrap(x[:800], xt, resamples=100)
    for iv in (small, large):
        assert iv.low <= iv.estimate <= iv.high
    assert abs(small.estimate - metrics.fid(x[:100], xt)) < 1e-3 * small.estimate
    assert (large.high - large.low) < 0.6 * (small.high - small.low)  # about 1/sqrt(8) = 0.35
    assert metrics.fid_bootstrap(x[:100], xt, resamples=100) == small  # the seed fixes it


def test_fid_bootstrap_covers_a_known_population_distance():
    # samples N(μ, I) in 2D against a reference with exactly mean 0 and covariance I: the
    # population distance is ‖μ‖² = 4; a 90% interval must hold it about 90% of the time
    g = torch.Generator().manual_seed(1)
    ref = torch.randn(4000, 2, generator=g, dtype=torch.float64)
    ref = (ref - ref.mean(0)) @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(ref.T))).T
    mu = torch.tensor([2.0, 0.0], dtype=torch.float64)
    hits = 0
    for rep in range(60):
        s = mu + torch.randn(300, 2, generator=g, dtype=torch.float64)
        iv = metrics.fid_bootstrap(s, ref, resamples=200, feature_net=_Identity(), seed=rep)
        hits += iv.low <= 4.0 <= iv.high
    assert 0.75 <= hits / 60 <= 1.0, hits


@pytest.mark.parametrize(
    "kwargs, message",
    [({"level": 1.0}, "level must lie in (0, 1)"), ({"resamples": 0}, "resamples")],
)
def test_fid_bootstrap_refuses_bad_options(kwargs, message):
    s = torch.randn(10, 2)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        metrics.fid_bootstrap(s, s, feature_net=_Identity(), **kwargs)
