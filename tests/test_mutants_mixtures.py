"""Tests that catch the mutants of ``dgm_edu/mixtures.py`` that its own tests let through
(``make mutation``): each checks a value against an independent computation.

- the samplers' laws (component shares, per-component means and spreads), two-sided;
- the counting fit against numpy counts, for several smoothing constants and batches whose
  largest level is below 16;
- non-default configs (levels other than 17), where a dropped ``levels`` argument shows;
- the meta device, where a tensor created without ``device=`` would land on the CPU;
- the initial parameters' spread, and the seeded start of ``init_from_data``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dgm_edu.data import load_digits
from dgm_edu.mixtures import (
    GaussianMixture,
    GaussianMixtureConfig,
    PixelMixture,
    PixelMixtureConfig,
    TrainingSetLookup,
    UniformPixels,
)

X, _ = load_digits("train")


# --------------------------------------------------------------------------- GaussianMixture
def _two_gaussians() -> GaussianMixture:
    gm = GaussianMixture(GaussianMixtureConfig(num_components=2))
    with torch.no_grad():
        gm.mix_logits.copy_(torch.tensor([0.2, 0.8]).log())
        gm.means.copy_(torch.tensor([[-10.0, 0.0], [10.0, 5.0]]))
        gm.log_stds.copy_(torch.tensor([[0.0, 1.0], [-1.0, 0.5]]))
    return gm


def test_gaussian_mixture_samples_follow_its_law():
    gm = _two_gaussians()
    torch.manual_seed(0)
    s = gm.sample(20000)
    assert s.shape == (20000, 2) and s.dtype == torch.float32
    first = s[:, 0] < 0  # the components are 20 standard deviations apart
    assert abs(first.float().mean().item() - 0.2) < 0.015  # π = (0.2, 0.8)
    for comp, mask in ((0, first), (1, ~first)):
        pts = s[mask]
        mean, std = gm.means[comp].detach(), gm.log_stds[comp].detach().exp()
        se = std / math.sqrt(len(pts))
        assert ((pts.mean(0) - mean).abs() < 5 * se).all(), (comp, pts.mean(0))
        assert ((pts.std(0) / std - 1).abs() < 0.05).all(), (comp, pts.std(0), std)


def test_gaussian_mixture_sample_refuses_non_finite_samples_with_its_message():
    gm = _two_gaussians()
    with torch.no_grad():
        gm.log_stds.fill_(float("inf"))
    with pytest.raises(FloatingPointError) as info:
        gm.sample(4)
    assert str(info.value).startswith("the samples is not finite (NaN or inf)")


def test_gaussian_mixture_init_spreads_the_means_by_init_scale():
    torch.manual_seed(0)
    gm = GaussianMixture(GaussianMixtureConfig(num_components=500, init_scale=3.0))
    std = gm.means.detach().std().item()
    assert 2.8 < std < 3.2  # means ~ N(0, init_scale²)


def test_init_from_data_follows_its_generator():
    x = torch.randn(50, 2)
    picks = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)  # only the generator may decide
        gm = GaussianMixture(GaussianMixtureConfig(num_components=5))
        gm.init_from_data(x, generator=torch.Generator().manual_seed(7))
        picks.append(gm.means.detach().clone())
    assert torch.equal(picks[0], picks[1])
    rows = {tuple(r.tolist()) for r in x}
    assert all(tuple(m.tolist()) in rows for m in picks[0])
    assert len({tuple(m.tolist()) for m in picks[0]}) == 5
    exactly = GaussianMixture(GaussianMixtureConfig(num_components=5))
    exactly.init_from_data(x[:5])  # K points are enough: every one becomes a mean
    assert {tuple(m.tolist()) for m in exactly.means} == {tuple(r.tolist()) for r in x[:5]}
    with pytest.raises(ValueError) as info:
        exactly.init_from_data(x[:4])
    assert str(info.value) == "points must hold at least num_components = 5 points, got 4"


# --------------------------------------------------------------------------- PixelMixture
def test_pixel_mixture_initial_logits_have_spread_one_tenth():
    torch.manual_seed(0)
    logits = PixelMixture(PixelMixtureConfig(num_components=4)).pixel_logits.detach()
    assert abs(logits.std().item() - 0.1) < 0.005 and abs(logits.mean().item()) < 0.005


@pytest.mark.parametrize("alpha", [0.5, 2.0])
@pytest.mark.parametrize("rows", [slice(0, 100), slice(0, 3)])
def test_fit_counts_against_numpy_counts(alpha, rows):
    x = X[rows]
    flat = x.flatten(1).numpy()
    n = len(flat)
    counts = np.stack([(flat == v).sum(0) for v in range(17)], 1)  # (64, 17)
    expected = (counts + alpha) / (n + 17 * alpha)
    model = PixelMixture.fit_counts(x, alpha=alpha)
    assert model.config.num_components == 1 and model.pixel_logits.shape == (1, 64, 17)
    got = model.pixel_logits.detach().double().softmax(-1)[0].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # log p(x) of the fitted model: Σ_d log θ_{d, x_d}
    lp = np.log(expected[np.arange(64), flat[0]]).sum()
    assert model.log_prob(x[:1]).item() == pytest.approx(lp, rel=1e-5)


def test_fit_counts_on_digits_without_level_16():
    x = X[:20].clamp(max=9)  # the largest level is 9: the 17 levels must still be counted
    model = PixelMixture.fit_counts(x, alpha=1.0)
    probs = model.pixel_logits.detach().softmax(-1)[0]
    assert torch.allclose(probs[:, 10:], torch.full((64, 7), 1 / (20 + 17)), rtol=1e-5)


def test_fit_counts_refuses_a_negative_alpha():
    with pytest.raises(ValueError) as info:
        PixelMixture.fit_counts(X[:5], alpha=-1)
    assert str(info.value) == "alpha must be a finite number >= 0, got -1.0"


def test_log_prob_of_a_batch_without_level_16():
    """one_hot must use the model's 17 levels, not the batch's largest level + 1."""
    torch.manual_seed(0)
    model = PixelMixture(PixelMixtureConfig(num_components=3))
    x = torch.zeros(2, 1, 8, 8, dtype=torch.long)
    log_theta = model.pixel_logits.detach().log_softmax(-1)[:, :, 0].sum(-1)  # (K,)
    expected = torch.logsumexp(model.mix_logits.detach().log_softmax(0) + log_theta, 0)
    assert torch.allclose(model.log_prob(x).detach(), expected.expand(2), atol=1e-5)


def test_configs_with_other_levels_check_and_sample_their_levels():
    model = PixelMixture(PixelMixtureConfig(num_components=2, num_pixels=4, levels=20))
    x = torch.tensor([[[[19, 0], [3, 18]]]])
    assert torch.isfinite(model.log_prob(x)).all()
    torch.manual_seed(0)
    s = model.sample(300)
    assert s.shape == (300, 1, 2, 2) and s.max() == 19  # levels above 16 are drawn too
    small = PixelMixture(PixelMixtureConfig(num_components=1, num_pixels=4, levels=5))
    with pytest.raises(ValueError, match=r"Expected integer levels 0\.\.4, got values in \[0, 7\]"):
        small.log_prob(torch.tensor([[[[7, 0], [0, 0]]]]))


# --------------------------------------------------------------------------- UniformPixels
def test_uniform_pixels_of_another_shape_and_levels():
    model = UniformPixels((1, 2, 3), levels=256)
    x = torch.full((3, 1, 2, 3), 255)
    assert torch.equal(model.log_prob(x), torch.full((3,), -6 * math.log(256)))
    with pytest.raises(ValueError, match=r"Expected integer levels 0\.\.4, got values in"):
        UniformPixels((1, 2, 3), levels=5).log_prob(torch.full((1, 1, 2, 3), 7))
    torch.manual_seed(0)
    s = model.sample(2000)
    assert s.shape == (2000, 1, 2, 3) and s.min() == 0 and s.max() == 255
    assert abs(s.float().mean().item() - 127.5) < 2.0  # uniform on 0..255


# --------------------------------------------------------------------------- the meta device
@pytest.mark.parametrize(
    "make",
    [
        lambda: UniformPixels(),
        lambda: PixelMixture(PixelMixtureConfig(num_components=2)),
        lambda: GaussianMixture(),
    ],
    ids=["UniformPixels", "PixelMixture", "GaussianMixture"],
)
def test_every_tensor_is_made_on_the_models_device(make):
    model = make().to("meta")
    image = isinstance(model, UniformPixels | PixelMixture)
    x = torch.zeros((3, 1, 8, 8) if image else (3, 2), device="meta")
    for n in (0, 3):
        assert model.sample(n).device.type == "meta"
    assert model.log_prob(x.long() if image else x).device.type == "meta"


# --------------------------------------------------------------------------- TrainingSetLookup
def test_lookup_defaults_sizes_and_levels():
    lookup = TrainingSetLookup(X[:20])
    assert lookup.tau == 0.7 and lookup.levels == 17 and lookup.shape == (1, 8, 8)
    for n in (0, 1, 3):
        s = lookup.sample(n)
        assert s.shape == (n, 1, 8, 8) and s.dtype == torch.long
    two = TrainingSetLookup(torch.tensor([[[[0, 1], [1, 0]]]]), levels=2)  # 2 levels are enough
    assert two.sample(50).unique().tolist() == [0, 1]
    wide = TrainingSetLookup(torch.full((3, 1, 2, 2), 30), tau=0.1, levels=40)
    assert wide.sample(20).unique().tolist() == [30]  # levels above 16, a narrow kernel
    assert torch.isfinite(wide.log_prob(torch.full((2, 1, 2, 2), 39))).all()
    with pytest.raises(ValueError) as info:
        TrainingSetLookup(X[:5], levels=1)
    assert str(info.value) == "levels must be an int >= 2, got 1"
    with pytest.raises(ValueError, match=r"Expected integer levels 0\.\.4, got values in"):
        TrainingSetLookup(torch.full((2, 1, 2, 2), 7), levels=5)
    for bad, got in [(X[:5].numpy(), "ndarray"), ([[0, 1]], "list")]:
        with pytest.raises(TypeError) as info:
            TrainingSetLookup(bad)
        assert str(info.value) == f"Expected a torch.Tensor of digits, got {got}"
    with pytest.raises(ValueError) as info:
        TrainingSetLookup(X[:5, 0])  # (N, 8, 8): not images of a known shape
    assert str(info.value) == "Expected digits of shape (N, 1, 8, 8), got (5, 8, 8)"


def test_lookup_log_prob_of_a_batch_below_the_top_level():
    """log p(x) = logsumexp_n Σ_d log k(x_d | c_nd) − log N, with one_hot over all L levels."""
    centres = torch.tensor([[[[0, 2], [4, 1]]], [[[3, 3], [0, 0]]]])
    lookup = TrainingSetLookup(centres, tau=1.3, levels=5)
    x = torch.zeros(2, 1, 2, 2, dtype=torch.long)  # the batch's top level is 0, not 4
    v = torch.arange(5.0)
    table = (-(v[None] - v[:, None]).abs() / 1.3).log_softmax(1)  # row c: log k(· | c)
    per = torch.stack([table[c.flatten(), 0].sum() for c in centres])
    expected = torch.logsumexp(per, 0) - math.log(2)
    assert torch.allclose(lookup.log_prob(x), expected.expand(2), atol=1e-6)
    with pytest.raises(ValueError, match="y was given but this model is unconditional"):
        lookup.sample(2, y=0)
