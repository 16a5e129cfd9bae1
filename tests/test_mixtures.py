"""The introduction's models: closed forms, brute-force normalisation, sampling frequencies."""

import itertools
import math

import torch

from dgm_edu import data
from dgm_edu.metrics import evaluate_nll
from dgm_edu.mixtures import (
    GaussianMixture,
    GaussianMixtureConfig,
    PixelMixture,
    PixelMixtureConfig,
    UniformPixels,
)


def test_uniform_and_independent_baselines_on_the_test_split():
    x_train, _ = data.load_digits("train")
    x_test, _ = data.load_digits("test")
    assert abs(evaluate_nll(UniformPixels(), x_test) - 64 * math.log(17)) < 1e-4
    nll = evaluate_nll(PixelMixture.fit_counts(x_train), x_test)
    # independent computation with numpy-free counting, pixel by pixel
    ref = 0.0
    for d in range(64):
        col = x_train.flatten(1)[:, d]
        probs = [((col == v).sum().item() + 1) / (1000 + 17) for v in range(17)]
        ref -= sum(math.log(probs[v]) for v in x_test.flatten(1)[:, d].tolist())
    assert abs(nll - ref / len(x_test)) < 1e-3
    assert abs(nll - 106.47) < 0.01  # the baseline every chapter quotes


def test_pixel_mixture_normalises_by_enumeration():
    # a mixture over 2 pixels with 3 levels: the 9 possible images must sum to 1
    torch.manual_seed(0)
    model = PixelMixture(PixelMixtureConfig(num_components=3, num_pixels=2, levels=3))
    with torch.no_grad():
        model.pixel_logits.normal_()
        model.mix_logits.normal_()
    theta = model.pixel_logits.softmax(-1)
    pi = model.mix_logits.softmax(0)
    total = 0.0
    for a, b in itertools.product(range(3), repeat=2):
        direct = sum(pi[k] * theta[k, 0, a] * theta[k, 1, b] for k in range(3))
        x = torch.tensor([[a, b]])
        got = torch.logsumexp(model.mix_logits.log_softmax(0) + _component_logp(model, x), 1).exp()
        assert torch.allclose(got, direct.reshape(1), atol=1e-6)
        total += direct.item()
    assert abs(total - 1) < 1e-6


def _component_logp(model: PixelMixture, x: torch.Tensor) -> torch.Tensor:
    log_theta = model.pixel_logits.log_softmax(-1)  # (K, D, L)
    return torch.stack([log_theta[:, d, x[:, d]].T for d in range(x.shape[1])]).sum(0)  # (N, K)


def test_pixel_mixture_log_prob_matches_direct_sum_on_digits():
    torch.manual_seed(1)
    model = PixelMixture(PixelMixtureConfig(num_components=4))
    x, _ = data.load_digits("val")
    x = x[:20]
    ref = torch.logsumexp(model.mix_logits.log_softmax(0) + _component_logp(model, x.flatten(1)), 1)
    assert torch.allclose(model.log_prob(x), ref, atol=1e-4)


def test_pixel_mixture_samples_follow_the_model():
    model = PixelMixture(PixelMixtureConfig(num_components=2))
    with torch.no_grad():
        model.mix_logits.copy_(torch.tensor([0.0, math.log(3.0)]))  # pi = (1/4, 3/4)
        model.pixel_logits.fill_(-20.0)
        model.pixel_logits[0, :, 2] = 20.0  # component 0: every pixel is level 2
        model.pixel_logits[1, :, 9] = 20.0  # component 1: every pixel is level 9
    torch.manual_seed(0)
    s = model.sample(4000)
    assert set(s.unique().tolist()) == {2, 9}
    frac9 = (s[:, 0, 0, 0] == 9).float().mean().item()
    assert abs(frac9 - 0.75) < 0.03  # 4 sigma of a binomial(4000, 0.75) proportion
    assert (s.flatten(1) == s.flatten(1)[:, :1]).all()  # a component fixes the whole image


def test_gaussian_mixture_matches_torch_distributions():
    torch.manual_seed(0)
    gmm = GaussianMixture(GaussianMixtureConfig(num_components=3))
    with torch.no_grad():
        gmm.log_stds.normal_(0, 0.3)
        gmm.mix_logits.normal_()
    D = torch.distributions
    ref = D.MixtureSameFamily(
        D.Categorical(logits=gmm.mix_logits),
        D.Independent(D.Normal(gmm.means, gmm.log_stds.exp()), 1),
    )
    x = torch.randn(50, 2) * 3
    assert torch.allclose(gmm.log_prob(x), ref.log_prob(x), atol=1e-5)
    far = torch.tensor([[1e3, -1e3]])
    assert torch.isfinite(gmm.log_prob(far)).all()  # log-sum-exp keeps it finite


def test_gaussian_mixture_density_integrates_to_one():
    torch.manual_seed(0)
    gmm = GaussianMixture(GaussianMixtureConfig(num_components=4, init_scale=1.0))
    xs = torch.linspace(-10, 10, 801)
    xx, yy = torch.meshgrid(xs, xs, indexing="xy")
    with torch.no_grad():
        p = gmm.log_prob(torch.stack([xx.flatten(), yy.flatten()], 1)).exp()
    assert abs(p.sum().item() * (xs[1] - xs[0]).item() ** 2 - 1) < 1e-3


def test_gradient_ascent_recovers_a_known_mixture():
    centres = data.ring_centres()
    x = data.toy_2d("ring8", 4000, seed=0)
    torch.manual_seed(0)
    gmm = GaussianMixture(GaussianMixtureConfig(num_components=8))
    gmm.init_from_data(x)
    opt = torch.optim.Adam(gmm.parameters(), lr=0.05)
    for _ in range(300):
        loss = gmm.loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    # every true centre has a learned mean nearby, with the true std
    assert torch.cdist(centres, gmm.means.detach()).min(1).values.max() < 0.1
    assert torch.allclose(gmm.log_stds.exp().detach(), torch.full((8, 2), data.RING_STD), atol=0.03)
