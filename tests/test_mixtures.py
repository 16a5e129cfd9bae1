"""The introduction's models: closed forms, brute-force normalisation, sampling frequencies."""

import itertools
import math

import pytest
import torch

from dgm_edu import data
from dgm_edu.metrics import evaluate_nll
from dgm_edu.mixtures import (
    GaussianMixture,
    GaussianMixtureConfig,
    PixelMixture,
    PixelMixtureConfig,
    TrainingSetLookup,
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
    # a mixture over 2x2 images with 3 levels: log_prob of each of the 81 possible images against
    # the direct product-sum, and the 81 probabilities must sum to 1
    torch.manual_seed(0)
    model = PixelMixture(PixelMixtureConfig(num_components=3, num_pixels=4, levels=3))
    with torch.no_grad():
        model.pixel_logits.normal_()
        model.mix_logits.normal_()
    theta = model.pixel_logits.detach().double().softmax(-1)  # (K, 4, 3)
    pi = model.mix_logits.detach().double().softmax(0)
    images = torch.tensor(list(itertools.product(range(3), repeat=4)))  # (81, 4)
    direct = torch.stack(
        [
            sum(pi[k] * math.prod(theta[k, d, img[d]] for d in range(4)) for k in range(3))
            for img in images
        ]
    )
    got = model.log_prob(images.view(81, 1, 2, 2)).double().exp()
    torch.testing.assert_close(got, direct, atol=1e-6, rtol=1e-5)
    assert abs(got.sum().item() - 1) < 1e-5
    assert abs(direct.sum().item() - 1) < 1e-9


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


def _em_step_numpy(x, log_pi, means, stds):
    """One EM step of a diagonal Gaussian mixture, written independently in float64 numpy loops."""
    import numpy as np

    x, log_pi, mu, sd = (np.asarray(a, dtype=np.float64) for a in (x, log_pi, means, stds))
    pi = np.exp(log_pi)
    n, k = len(x), len(pi)
    dens = np.zeros((n, k))
    for j in range(k):  # π_j Π_d N(x_d; μ_jd, σ_jd²), no log-sum-exp
        z = (x - mu[j]) / sd[j]
        dens[:, j] = pi[j] * np.prod(np.exp(-0.5 * z**2) / (np.sqrt(2 * np.pi) * sd[j]), axis=1)
    r = dens / dens.sum(1, keepdims=True)
    nk = r.sum(0)
    new_mu = np.stack([(r[:, j : j + 1] * x).sum(0) / nk[j] for j in range(k)])
    new_var = np.stack([(r[:, j : j + 1] * (x - new_mu[j]) ** 2).sum(0) / nk[j] for j in range(k)])
    return np.log(dens.sum(1)).mean(), nk / n, new_mu, np.sqrt(new_var)


def test_em_step_matches_an_independent_computation():
    torch.manual_seed(0)
    gmm = GaussianMixture(GaussianMixtureConfig(num_components=3, init_scale=1.0))
    with torch.no_grad():
        gmm.log_stds.normal_(0, 0.3)
        gmm.mix_logits.normal_()
    x = data.toy_2d("moons", 300, seed=0)
    want = _em_step_numpy(
        x, gmm.mix_logits.log_softmax(0).detach(), gmm.means.detach(), gmm.log_stds.exp().detach()
    )
    ll = gmm.em_step(x)
    assert abs(ll - want[0]) < 1e-4  # the log-likelihood *before* the step
    assert torch.allclose(gmm.mix_logits.softmax(0), torch.tensor(want[1]).float(), atol=1e-5)
    assert torch.allclose(gmm.means, torch.tensor(want[2]).float(), atol=1e-4)
    assert torch.allclose(gmm.log_stds.exp(), torch.tensor(want[3]).float(), atol=1e-4)


def test_em_never_lowers_the_likelihood_and_k1_is_the_closed_form():
    x = data.toy_2d("ring8", 2000, seed=0)
    torch.manual_seed(1)
    gmm = GaussianMixture(GaussianMixtureConfig(num_components=8))
    gmm.init_from_data(x)
    lls = [gmm.em_step(x) for _ in range(60)]
    assert all(b >= a - 1e-5 for a, b in zip(lls, lls[1:]))  # monotone, up to float32 rounding
    with torch.no_grad():
        assert abs(gmm.log_prob(x).mean().item() - gmm.em_step(x)) < 1e-6  # returns log p before
    one = GaussianMixture(GaussianMixtureConfig(num_components=1))
    one.em_step(x)  # K = 1: the sample mean and the (biased) sample std, in one step
    assert torch.allclose(one.means[0], x.mean(0), atol=1e-5)
    assert torch.allclose(one.log_stds.exp()[0], x.std(0, unbiased=False), atol=1e-5)
    before = one.means.clone()
    one.em_step(x)
    assert torch.allclose(one.means, before, atol=1e-6)  # a fixed point


def test_em_step_floors_the_std_and_checks_its_arguments():
    gmm = GaussianMixture(GaussianMixtureConfig(num_components=2))
    with torch.no_grad():
        gmm.means.copy_(torch.tensor([[0.0, 0.0], [50.0, 50.0]]))
    x = torch.tensor([[50.0, 50.0], [0.0, 0.0], [1.0, -1.0]])
    gmm.em_step(x, min_std=0.05)  # the second component owns one point: zero variance, floored
    assert torch.allclose(gmm.log_stds.exp()[1], torch.full((2,), 0.05))
    assert torch.allclose(gmm.mix_logits.softmax(0), torch.tensor([2 / 3, 1 / 3]), atol=1e-6)
    with pytest.raises(ValueError, match="min_std"):
        gmm.em_step(x, min_std=0.0)
    with pytest.raises((ValueError, TypeError)):
        gmm.em_step(torch.zeros(4, 3))


# --------------------------------------------------------------------------- the contract
def test_loss_is_the_mean_negative_log_prob_in_both_modes():
    torch.manual_seed(0)
    model = PixelMixture(PixelMixtureConfig(num_components=3))
    x = data.load_digits("val")[0][:32]
    want = -model.log_prob(x).mean()
    assert torch.equal(model.train().loss(x), want) and torch.equal(model.eval().loss(x), want)
    gmm = GaussianMixture()
    pts = data.toy_2d("ring8", 50)
    assert torch.equal(gmm.loss(pts), -gmm.log_prob(pts).mean())


def test_log_prob_keeps_gradients():
    model = PixelMixture(PixelMixtureConfig(num_components=2))
    model.log_prob(data.load_digits("val")[0][:4]).sum().backward()
    assert model.pixel_logits.grad is not None and model.pixel_logits.grad.abs().sum() > 0


def test_digits_of_other_dtypes_give_the_same_log_prob():
    # whole-number floats, uint8 and int32 used to fail deep in one_hot
    model = PixelMixture(PixelMixtureConfig(num_components=2))
    x = data.load_digits("val")[0][:8]
    want = model.log_prob(x)
    for dtype in (torch.float32, torch.float64, torch.uint8, torch.int32):
        torch.testing.assert_close(model.log_prob(x.to(dtype)), want, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("n", "err", "message"),
    [
        (-1, ValueError, "n must be a non-negative int, got -1"),
        (2.0, TypeError, "n must be a non-negative int, got 2.0 (float)"),
        ("3", TypeError, "n must be a non-negative int, got '3' (str)"),
    ],
)
def test_sample_refuses_a_bad_n(n, err, message):
    for model in (UniformPixels(), PixelMixture(), GaussianMixture()):
        with pytest.raises(err, match=f"^{message}$".replace("(", r"\(").replace(")", r"\)")):
            model.sample(n)


def test_sample_zero_is_an_empty_batch_of_the_right_kind():
    for model in (UniformPixels(), PixelMixture(PixelMixtureConfig(num_components=3))):
        s = model.sample(0)
        assert s.shape == (0, 1, 8, 8) and s.dtype == torch.int64
    s = GaussianMixture().sample(0)
    assert s.shape == (0, 2) and s.dtype == torch.float32


def test_unconditional_models_refuse_labels():
    x, y = data.load_digits("val")
    x, y = x[:4], y[:4]
    message = "y was given but this model is unconditional (num_classes=0): expected y=None"
    pattern = message.replace("(", r"\(").replace(")", r"\)")
    for model in (UniformPixels(), PixelMixture()):
        with pytest.raises(ValueError, match=pattern):
            model.log_prob(x, y)
        with pytest.raises(ValueError, match=pattern):
            model.sample(4, y=3)
    with pytest.raises(ValueError, match=pattern):
        PixelMixture().loss(x, y)
    gmm, pts = GaussianMixture(), data.toy_2d("ring8", 4)
    for call in (lambda: gmm.loss(pts, y), lambda: gmm.sample(4, y=y)):
        with pytest.raises(ValueError, match=pattern):
            call()


def test_uniform_pixels_follows_its_device_and_has_no_state():
    model = UniformPixels()
    assert model.state_dict() == {}  # nothing to save: the device anchor is not persistent
    assert model.to("meta").sample(3).device.type == "meta"
    s = UniformPixels().sample(20000)
    # every level equally likely: 17 bins of 20000 * 64 / 17 draws each
    freq = torch.bincount(s.flatten(), minlength=17).double() / s.numel()
    assert (freq - 1 / 17).abs().max() < 0.002


def test_mnist_sized_configs_work_and_other_sizes_are_refused():
    # 28x28 images at 17 levels, as load_mnist_idx gives them
    torch.manual_seed(0)
    x = torch.randint(0, 17, (5, 1, 28, 28))
    uniform = UniformPixels(shape=(1, 28, 28))
    torch.testing.assert_close(uniform.log_prob(x), torch.full((5,), -784 * math.log(17)))
    assert uniform.sample(2).shape == (2, 1, 28, 28)
    model = PixelMixture(PixelMixtureConfig(num_components=2, num_pixels=784))
    with torch.no_grad():
        model.pixel_logits.zero_()  # every pixel uniform: log p(x) = -784 ln 17 for any image
    torch.testing.assert_close(model.log_prob(x), torch.full((5,), -784 * math.log(17)))
    assert model.sample(3).shape == (3, 1, 28, 28)
    with pytest.raises(
        ValueError, match=r"Expected digits of shape \(N, 1, 28, 28\), got \(4, 1, 8, 8\)"
    ):
        model.log_prob(data.load_digits("val")[0][:4])
    with pytest.raises(
        ValueError, match=r"Expected digits of shape \(N, 1, 8, 8\), got \(5, 1, 28, 28\)"
    ):
        PixelMixture().log_prob(x)
    with pytest.raises(ValueError, match="num_pixels must be the pixel count of square images"):
        PixelMixtureConfig(num_pixels=50)


def test_gaussian_mixture_checks_its_points():
    gmm = GaussianMixture()
    pts = data.toy_2d("ring8", 6)
    got = gmm.log_prob(pts.double())  # float64 points keep their dtype (checks.points)
    torch.testing.assert_close(got, gmm.log_prob(pts), check_dtype=False, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(gmm.log_prob(pts.long()), gmm.log_prob(pts.long().float()))
    for bad, err, message in [
        (
            pts[:0],
            ValueError,
            r"^points must be a non-empty batch of shape \(N, 2\), got \(0, 2\)$",
        ),
        (
            pts[:, :1],
            ValueError,
            r"^points must be a non-empty batch of shape \(N, 2\), got \(6, 1\)$",
        ),
        (torch.where(pts > 0, float("nan"), pts), ValueError, r"^points contain NaN or inf"),
        (pts.numpy(), TypeError, r"^points must be a torch.Tensor of shape \(N, 2\), got ndarray$"),
    ]:
        with pytest.raises(err, match=message):
            gmm.log_prob(bad)


def test_init_from_data_puts_the_means_on_distinct_data_points():
    pts = data.toy_2d("ring8", 50)
    gmm = GaussianMixture()
    gmm.init_from_data(pts, generator=torch.Generator().manual_seed(0))
    # each mean is one of the points, and no point is used twice
    match = (gmm.means.detach()[:, None, :] == pts[None]).all(-1)  # (8, 50)
    assert (match.sum(1) == 1).all() and match.any(0).sum() == 8
    with pytest.raises(ValueError, match=r"^points must hold at least num_components = 8 points"):
        gmm.init_from_data(pts[:5])


# --------------------------------------------------------------------------- training-set lookup
def _kernel(v: int, c: int, tau: float, levels: int = 17) -> float:
    """k_τ(v | c) by hand: exp(−|v − c|/τ) over its sum on the levels."""
    return math.exp(-abs(v - c) / tau) / sum(math.exp(-abs(u - c) / tau) for u in range(levels))


def test_lookup_log_prob_is_the_mixture_of_jitter_kernels_by_brute_force():
    train = data.load_digits("train")[0][:5]
    x = torch.cat([data.load_digits("test")[0][:3], train[:1]])
    for tau in (0.3, 0.7, 2.0):
        got = TrainingSetLookup(train, tau).log_prob(x)
        for m in range(len(x)):  # p(x) = (1/N) Σ_n Π_d k(x_d | c_nd), in float64, pixel by pixel
            xs = x[m].flatten().tolist()
            per_centre = [
                sum(math.log(_kernel(v, c, tau)) for v, c in zip(xs, centre.flatten().tolist()))
                for centre in train
            ]
            top = max(per_centre)
            want = top + math.log(sum(math.exp(p - top) for p in per_centre)) - math.log(5)
            assert got[m].item() == pytest.approx(want, rel=1e-5), (tau, m)


def test_lookup_normalises_and_samples_follow_its_log_prob():
    # 2-pixel images: all 17² images enumerated
    centres = torch.tensor([[[[3, 16]]], [[[0, 5]]], [[[8, 8]]]])  # (3, 1, 1, 2)
    lookup = TrainingSetLookup(centres, tau=1.5)
    grid = torch.tensor(list(itertools.product(range(17), repeat=2))).view(-1, 1, 1, 2)
    with torch.no_grad():
        log_p = lookup.log_prob(grid)
    assert torch.logsumexp(log_p.double(), 0).item() == pytest.approx(0.0, abs=1e-5)
    torch.manual_seed(0)
    s = lookup.sample(40000)
    assert s.shape == (40000, 1, 1, 2) and s.dtype == torch.long
    freq = torch.bincount(s[:, 0, 0, 0] * 17 + s[:, 0, 0, 1], minlength=289).double() / len(s)
    p = log_p.double().exp()  # the same order: level of pixel 0 * 17 + level of pixel 1
    assert ((freq - p).abs() <= 5 * (p * (1 - p) / len(s)).sqrt() + 1e-3).all()
    table = lookup.kernel_log_table().exp()  # rows: centre level c; columns: level v
    assert torch.allclose(table.sum(1), torch.ones(17))
    assert table[3, 5].item() == pytest.approx(_kernel(5, 3, 1.5), rel=1e-6)


def test_a_narrow_lookup_copies_its_training_images():
    train = data.load_digits("train")[0][:20]
    lookup = TrainingSetLookup(train, tau=0.05)
    torch.manual_seed(0)
    s = lookup.sample(50)
    assert all((s[i] == train).flatten(1).all(1).any() for i in range(len(s)))  # every one a copy
    # a training image has all the mass of its own component: log p ≈ −log N
    assert torch.allclose(lookup.log_prob(train[:3]), torch.full((3,), -math.log(20)), atol=1e-4)
    held_out = data.load_digits("test")[0][:3]
    assert (lookup.log_prob(held_out) < -100).all()  # and a new digit almost none


def test_lookup_checks_its_arguments_and_moves_with_its_buffers():
    train = data.load_digits("train")[0][:10]
    for tau, err, msg in [(0, ValueError, r"tau must be a finite number > 0, got 0"),
                          ("0.7", TypeError, r"tau must be a real number, got '0.7'")]:  # fmt: skip
        with pytest.raises(err, match=msg):
            TrainingSetLookup(train, tau)
    with pytest.raises(ValueError) as expected:
        data.validate_digits(train / 16.0)
    with pytest.raises(ValueError) as info:
        TrainingSetLookup(train / 16.0)
    assert str(info.value) == str(expected.value)
    lookup = TrainingSetLookup(train)
    with pytest.raises(ValueError, match="y was given but this model is unconditional"):
        lookup.log_prob(train, y=torch.zeros(10, dtype=torch.long))
    assert list(lookup.state_dict()) == ["centres"] and not list(lookup.parameters())
    assert lookup.to("meta").centres.device.type == "meta"  # .to() carries the training images
