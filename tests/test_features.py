"""The FID feature network and the sample-quality metrics, against closed forms and brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from dgm_edu import metrics
from dgm_edu.data import load_digits
from dgm_edu.features import DigitsFeatureNet, _random_shift, asset_path, load_feature_net


class Identity(nn.Module):
    """A 'feature net' that returns its (float) input, so the metrics meet closed forms."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_features = dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().flatten(1)


# --------------------------------------------------------------------------- the feature net
def test_feature_net_loads_safely_and_classifies_the_test_split():
    payload = torch.load(asset_path(), map_location="cpu", weights_only=True)  # no pickled code
    assert set(payload) >= {"model", "config", "accuracy"}
    net = load_feature_net()
    assert net is load_feature_net()  # cached
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    x, y = load_digits("test")
    acc = (net.classify(x) == y).float().mean().item()
    assert acc >= 0.97, acc  # the shipped weights score 0.987 on the test split
    # forward gives logits whose argmax is classify, features are (N, F) and deterministic
    assert torch.equal(net(x).argmax(1), net.classify(x))
    f = net.features(x)
    assert f.shape == (len(x), net.num_features) and torch.equal(f, net.features(x))


def test_untrained_feature_net_is_not_a_classifier():
    torch.manual_seed(0)
    net = DigitsFeatureNet().eval()
    x, y = load_digits("test")
    assert (net.classify(x) == y).float().mean() < 0.3


def test_features_reject_scaled_input():
    x, _ = load_digits("test")
    with pytest.raises((ValueError, TypeError)):
        load_feature_net().features(x.float() / 16)


def test_random_shift_matches_a_brute_force_shift():
    torch.manual_seed(3)
    x = torch.randint(1, 17, (20, 1, 8, 8))
    torch.manual_seed(7)
    out = _random_shift(x)
    torch.manual_seed(7)
    dy, dx = torch.randint(0, 3, (2, 20))
    for i in range(20):
        want = torch.zeros(8, 8, dtype=x.dtype)
        sy, sx = 1 - int(dy[i]), 1 - int(dx[i])  # content moves down/right by sy, sx
        for r, c in itertools.product(range(8), range(8)):
            if 0 <= r - sy < 8 and 0 <= c - sx < 8:
                want[r, c] = x[i, 0, r - sy, c - sx]
        assert torch.equal(out[i, 0], want)


# --------------------------------------------------------------------------- FID
def test_fid_of_identical_digit_sets_is_zero():
    x, _ = load_digits("test")
    assert metrics.fid(x, x) == pytest.approx(0.0, abs=1e-3)


def _empirical_frechet(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(ca @ cb).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca + cb - 2 * covmean))


def test_fid_of_gaussians_matches_the_closed_form():
    gen = torch.Generator().manual_seed(0)
    d, n = 4, 20000
    mu = torch.tensor([1.0, -0.5, 0.0, 2.0])
    a = torch.randn(n, d, generator=gen, dtype=torch.float64)
    b = mu + 0.5 * torch.randn(n, d, generator=gen, dtype=torch.float64)
    got = metrics.fid(b, a, feature_net=Identity(d))
    # the statistics of these two samples: the exact Frechet distance (scipy's sqrtm)
    assert got == pytest.approx(_empirical_frechet(b.numpy(), a.numpy()), rel=1e-4)
    # the population: N(mu, s^2 I) against N(0, I) gives |mu|^2 + d (1 - s)^2
    assert got == pytest.approx(float(mu.square().sum()) + d * 0.25, rel=0.03)
    # a Gaussian against itself (another sample): close to 0
    a2 = torch.randn(n, d, generator=gen, dtype=torch.float64)
    assert metrics.fid(a2, a, feature_net=Identity(d)) < 0.01


# --------------------------------------------------------------------------- KID
def _unbiased_mmd2(x: torch.Tensor, y: torch.Tensor) -> float:
    d = x.shape[1]
    k = lambda a, b: (a @ b.T / d + 1) ** 3
    m = len(x)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    off = lambda g: (g.sum() - g.diagonal().sum()) / (m * (m - 1))
    return float(off(kxx) + off(kyy) - 2 * kxy.mean())


def test_kid_is_the_unbiased_polynomial_mmd():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(60, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(60, 3, generator=gen, dtype=torch.float64) + 1.0
    # subsets of the full size are permutations of all points: every subset gives the same value
    mean, std = metrics.kid(y, x, subset_size=60, subsets=5, feature_net=Identity(3))
    assert mean == pytest.approx(_unbiased_mmd2(x, y), rel=1e-4)
    assert std == pytest.approx(0.0, abs=1e-6)
    same, _ = metrics.kid(x, x, subset_size=60, subsets=5, feature_net=Identity(3))
    assert mean > 0.5 and abs(same) < 0.1 * mean


def test_kid_on_digits_is_reproducible_and_separates_train_from_noise():
    tr, te = load_digits("train")[0], load_digits("test")[0]
    noise = torch.randint(0, 17, (1000, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    floor = metrics.kid(tr, te)
    assert floor == metrics.kid(tr, te)  # same seed, same subsets
    assert metrics.kid(noise, te)[0] > 20 * abs(floor[0])


# --------------------------------------------------------------------------- precision/recall
def _brute_force_pr(fake: torch.Tensor, real: torch.Tensor, k: int) -> tuple[float, float]:
    def inside(q, support):
        radii = []
        for s in support:
            dists = sorted(float((s - t).norm()) for t in support)
            radii.append(dists[k])  # dists[0] = 0 is the point itself
        hits = 0
        for p in q:
            hits += any(float((p - s).norm()) <= r for s, r in zip(support, radii))
        return hits / len(q)

    return inside(fake, real), inside(real, fake)


def test_precision_recall_matches_brute_force():
    gen = torch.Generator().manual_seed(2)
    real = torch.randn(40, 2, generator=gen, dtype=torch.float64)
    fake = 0.5 * torch.randn(30, 2, generator=gen, dtype=torch.float64) + 0.7
    for k in (1, 3, 5):
        got = metrics.precision_recall(fake, real, k=k, feature_net=Identity(2))
        assert got == pytest.approx(_brute_force_pr(fake, real, k))


def test_precision_recall_is_one_on_identical_sets_and_falls_when_shifted():
    gen = torch.Generator().manual_seed(4)
    real = torch.randn(300, 2, generator=gen)
    assert metrics.precision_recall(real, real, feature_net=Identity(2)) == (1.0, 1.0)
    # shifting the samples away from the data lowers both, monotonically
    scores = [metrics.precision_recall(real + s, real, feature_net=Identity(2)) for s in (1, 2, 3)]
    for (p0, r0), (p1, r1) in zip(scores, scores[1:]):
        assert p1 < p0 and r1 < r0
    assert scores[-1][0] < 0.5 and scores[-1][1] < 0.5
    # a collapsed sample (one small blob in the middle) is precise but has low recall
    p, r = metrics.precision_recall(
        0.05 * torch.randn(300, 2, generator=gen), real, feature_net=Identity(2)
    )
    assert p > 0.95 and r < 0.2
    x, _ = load_digits("test")
    assert metrics.precision_recall(x, x) == (1.0, 1.0)


# --------------------------------------------------------------------------- histogram, floor
def test_class_histogram_counts_the_classifier_labels():
    x, y = load_digits("test")
    h = metrics.class_histogram(x)
    assert h.shape == (10,) and h.sum().item() == pytest.approx(1.0)
    true = torch.bincount(y, minlength=10).float() / len(y)
    assert (h - true).abs().sum() < 0.04  # 98.7% accuracy: at most ~2.6% of the mass moves
    threes = metrics.class_histogram(x[y == 3])
    assert threes[3] > 0.9


def test_fid_floor_is_train_against_test_and_far_below_noise():
    tr, te = load_digits("train")[0], load_digits("test")[0]
    floor = metrics.fid_floor()
    assert floor == pytest.approx(metrics.fid(tr, te))
    noise = torch.randint(0, 17, (1000, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    assert 0 < floor < metrics.fid(noise, te) / 10


def test_a_missing_asset_says_how_to_restore_it(tmp_path, monkeypatch):
    import dgm_edu.features as features

    missing = tmp_path / "digits_features.pt"
    monkeypatch.setattr(features, "asset_path", lambda: missing)
    features.load_feature_net.cache_clear()
    try:
        with pytest.raises(FileNotFoundError) as info:
            features.load_feature_net()
    finally:
        features.load_feature_net.cache_clear()
    message = str(info.value)
    assert message.startswith(f"Feature-net weights not found at {missing}: they ship inside")
    assert "reinstall dgm_edu" in message and "scripts/" not in message
