"""Tests that catch the mutants of ``dgm_edu/metrics.py`` that its own tests let through
(``make mutation``). The sample-quality scores run on a small deterministic feature network (a
fixed linear map of the pixels), so that each one has a closed form computed here in numpy:
FID (Fréchet distance of two Gaussians), KID (the unbiased MMD² with the cubic kernel), the k-NN
radii and manifolds of precision and recall, the class histogram; plus the documented defaults,
boundaries and exact messages of every function."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg
from torch import nn

from dgm_edu.data import load_digits
from dgm_edu.metrics import (
    class_histogram,
    digit_features,
    fid,
    fid_floor,
    in_manifold,
    kid,
    knn_radii,
    memorisation,
    mode_coverage,
    nearest_neighbours,
    precision_recall,
    sample_quality,
)

X, _ = load_digits("train")
TEST, _ = load_digits("test")


class LinearFeatures(nn.Module):
    """features(x) = flat(x) @ P / 40 (F = 3), classify(x) = argmax of flat(x) @ Q."""

    num_features = 3

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("P", torch.randn(64, 3, generator=g, dtype=torch.float64))
        self.register_buffer("Q", torch.randn(64, 10, generator=g, dtype=torch.float64))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).double() @ self.P / 40

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1).double() @ self.Q).argmax(1)


NET = LinearFeatures()


def _feats(x: torch.Tensor) -> np.ndarray:
    return NET.features(x).numpy()


def _message(err, call, *args, **kwargs) -> str:
    with pytest.raises(err) as info:
        call(*args, **kwargs)
    return str(info.value)


# --------------------------------------------------------------------------- FID and KID
def _fid_numpy(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def test_fid_is_the_frechet_distance_of_the_feature_gaussians():
    samples, reference = X[:300], TEST[:200]
    expected = _fid_numpy(_feats(samples), _feats(reference))
    assert 0 < expected < 1  # a small distance: a clamp at 1 would show
    assert fid(samples, reference, NET) == pytest.approx(expected, rel=1e-3)
    assert fid(samples, samples, NET) == pytest.approx(0.0, abs=1e-6)
    assert fid(X[:2], TEST[:2], NET) >= 0  # two of each are enough
    assert _message(ValueError, fid, X[:1], TEST[:5], NET) == (
        "fid needs at least 2 samples and reference images, got 1 and 5"
    )


def _mmd2_numpy(a: np.ndarray, b: np.ndarray) -> float:
    f = a.shape[1]
    k = lambda u, v: (u @ v.T / f + 1) ** 3  # noqa: E731
    kaa, kbb, kab = k(a, a), k(b, b), k(a, b)
    m = len(a)
    return float(
        (kaa.sum() - np.trace(kaa)) / (m * (m - 1))
        + (kbb.sum() - np.trace(kbb)) / (m * (m - 1))
        - 2 * kab.mean()
    )


def test_kid_with_whole_sets_is_the_unbiased_mmd():
    samples, reference = X[:60], TEST[:60]
    mean, std = kid(samples, reference, subset_size=60, subsets=2, feature_net=NET)
    assert mean == pytest.approx(_mmd2_numpy(_feats(samples), _feats(reference)), rel=1e-4)
    assert std == pytest.approx(0.0, abs=1e-5)  # every subset is the whole set


def test_kid_defaults_seed_and_messages():
    samples, reference = X[:150], TEST[:150]
    torch.manual_seed(11)
    before = torch.rand(3)
    torch.manual_seed(11)
    a = kid(samples, reference, feature_net=NET)
    assert torch.equal(torch.rand(3), before)  # the global generator is untouched
    assert a == kid(samples, reference, 100, 100, feature_net=NET, seed=0)
    assert a != kid(samples, reference, feature_net=NET, seed=1)
    assert _message(ValueError, kid, X[:50], TEST[:200], feature_net=NET) == (
        "kid with subset_size=100 needs at least 100 samples and reference images, got 50 and 200"
    )


# --------------------------------------------------------------------------- precision, recall
def _radii_numpy(f: np.ndarray, k: int) -> np.ndarray:
    d = np.sqrt(((f[:, None] - f[None]) ** 2).sum(-1))
    return np.sort(d, 1)[:, k]  # column 0 is the point itself


def test_knn_radii_and_manifolds_by_brute_force():
    f = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0], [1.0, 1.0], [5.0, 5.0]])
    for k in (1, 2, 4):
        np.testing.assert_allclose(knn_radii(f, k).numpy(), _radii_numpy(f.numpy(), k))
    for k in (0, 5):
        assert _message(ValueError, knn_radii, f, k) == f"k must be in 1..N-1 = 4, got {k}"
    q = torch.tensor([[0.0, -(2**0.5)], [0.0, -1.5], [9.0, 9.0]])
    d = torch.cdist(q.double(), f.double())
    assert in_manifold(q, f, 2).tolist() == (d <= knn_radii(f, 2)[None]).any(1).tolist()
    g = torch.tensor([[0.0, 0.0], [3.0, 0.0], [20.0, 20.0], [20.0, 24.0]])  # exact distances
    assert knn_radii(g, 1).tolist() == [3.0, 3.0, 4.0, 4.0]
    on_sphere = torch.tensor([[0.0, -3.0], [0.0, -3.5]])
    assert in_manifold(on_sphere, g, 1).tolist() == [True, False]  # the sphere is inside


def test_precision_and_recall_in_feature_space():
    samples, reference = X[:40], TEST[:50]
    fs, fr = NET.features(samples), NET.features(reference)
    for k in (3, 5):
        p, r = precision_recall(samples, reference, k=k, feature_net=NET)
        assert p == pytest.approx(in_manifold(fs, fr, k).double().mean().item())
        assert r == pytest.approx(in_manifold(fr, fs, k).double().mean().item())
    assert precision_recall(samples, reference, feature_net=NET) == precision_recall(
        samples, reference, 3, NET
    )
    assert precision_recall(X[:4], TEST[:4], feature_net=NET)  # k + 1 = 4 are enough
    assert _message(ValueError, precision_recall, X[:3], TEST[:10], feature_net=NET) == (
        "precision_recall with k=3 needs at least 4 samples and reference images, got 3 and 10"
    )


def test_class_histogram_and_features_in_batches():
    x = torch.cat([X, X, X[:200]])  # 2200 images: three batches of at most 1024
    labels = NET.classify(x)
    expected = torch.bincount(labels, minlength=10).float() / len(x)
    got = class_histogram(x, NET)
    assert got.shape == (10,) and torch.allclose(got, expected)
    assert torch.allclose(digit_features(x, NET), NET.features(x).float())
    only_zeros = class_histogram(torch.zeros(3, 1, 8, 8, dtype=torch.long), NET)
    assert only_zeros.shape == (10,) and only_zeros.sum() == 1  # classes that never occur: 0
    assert _message(ValueError, class_histogram, X[:0], NET) == (
        "samples must hold at least one image, got 0"
    )


def test_sample_quality_gathers_the_scores():
    samples, reference = X[:120], TEST[:120]
    got = sample_quality(samples, reference, NET)
    assert list(got) == ["fid", "kid_mean", "kid_std", "precision", "recall"]
    assert got["fid"] == fid(samples, reference, NET)
    assert (got["kid_mean"], got["kid_std"]) == kid(samples, reference, feature_net=NET)
    assert (got["precision"], got["recall"]) == precision_recall(samples, reference, 3, NET)


def test_fid_floor_defaults_to_train_against_test():
    assert fid_floor() == fid(X, TEST)
    assert fid_floor("val") == fid(load_digits("val")[0], TEST)


# --------------------------------------------------------------------------- the rest
def test_memorisation_ratio_and_other_levels():
    train = torch.randint(0, 256, (30, 1, 4, 4))
    samples, test = train[:5].clone(), torch.randint(0, 256, (8, 1, 4, 4))
    samples[:3, 0, 0, 0] = (samples[:3, 0, 0, 0] + 100) % 256  # three changed, two copies
    out = memorisation(samples, train, test, shape=(1, 4, 4), levels=256)
    d = lambda q: torch.cdist(q.flatten(1).float(), train.flatten(1).float()).min(1).values  # noqa: E731
    assert out["memorisation_ratio"] == pytest.approx(
        (d(samples).median() / d(test).median()).item()
    )
    assert out["memorisation_ratio"] > 0 and out["exact_copies"] == pytest.approx(2 / 5)
    dist, idx = nearest_neighbours(samples, train, shape=(1, 4, 4), levels=256)
    assert idx[3:].tolist() == [3, 4] and dist[3:].tolist() == [0.0] * 2


def test_mode_coverage_counts_the_boundary_and_its_defaults():
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    samples = torch.tensor([[2.0, 0.0], [10.0, 1.0], [5.0, 5.0]])  # at 2σ, inside, far
    covered, within = mode_coverage(samples, centres, std=1.0, num_std=2.0)
    # fair share 3/3 = 1 sample; min_share = 0.5 by default needs 0.5 of it
    assert (covered, within) == (2, pytest.approx(2 / 3))
    assert mode_coverage(samples, centres, std=1.0, num_std=2.0, min_share=1.0)[0] == 2
    assert mode_coverage(samples[:2].repeat(2, 1), centres, std=1.0, num_std=2.0)[0] == 2
    assert mode_coverage(samples, centres, std=1.0, num_std=1.99)[0] == 1
