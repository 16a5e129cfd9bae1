"""Tests of dgm_edu.rbm against brute-force enumeration, closed forms and autograd."""

from __future__ import annotations

import math

import pytest
import torch

from dgm_edu.data import binarize, load_digits
from dgm_edu.rbm import RBM, RBMConfig, bernoulli_baseline_nll, binary_states


def tiny_rbm(V: int = 5, H: int = 4, scale: float = 1.0, seed: int = 0) -> RBM:
    """An RBM with large random parameters, so that every term matters."""
    torch.manual_seed(seed)
    model = RBM(RBMConfig(num_visible=V, num_hidden=H, num_chains=7))
    with torch.no_grad():
        model.W.copy_(scale * torch.randn(V, H))
        model.b.copy_(scale * torch.randn(V))
        model.c.copy_(scale * torch.randn(H))
    return model.double()


@torch.no_grad()
def joint_log_table(model: RBM) -> torch.Tensor:
    """-E(v, h) for every (v, h): ``(2^V, 2^H)``, computed from the energy alone."""
    V, H = model.W.shape
    vs, hs = binary_states(V, dtype=torch.float64), binary_states(H, dtype=torch.float64)
    v = vs[:, None, :].expand(-1, len(hs), -1).reshape(-1, V)
    h = hs[None, :, :].expand(len(vs), -1, -1).reshape(-1, H)
    return -model.energy(v, h).view(len(vs), len(hs))


def test_energy_matches_its_definition():
    # catches: a wrong sign or a dropped bias term in the energy itself
    model = tiny_rbm()
    v, h = torch.tensor([[1.0, 0, 1, 1, 0]]).double(), torch.tensor([[0.0, 1, 1, 0]]).double()
    W, b, c = model.W, model.b, model.c
    explicit = -sum(v[0, i] * W[i, j] * h[0, j] for i in range(5) for j in range(4))
    explicit = explicit - (b * v[0]).sum() - (c * h[0]).sum()
    torch.testing.assert_close(model.energy(v, h), explicit.view(1))


def test_free_energy_is_brute_force_marginal_of_energy():
    # catches: a dropped hidden bias, softplus -> log-sigmoid, a wrong sign on b^T v
    model = tiny_rbm()
    V = model.W.shape[0]
    table = joint_log_table(model)  # (2^V, 2^H)
    brute = -torch.logsumexp(table, dim=1)  # F(v) = -log sum_h exp(-E(v,h))
    torch.testing.assert_close(model.free_energy(binary_states(V, dtype=torch.float64)), brute)


def test_conditionals_match_the_enumerated_joint():
    # catches: W used instead of W^T, the visible bias in p(h|v), a missing sigmoid
    model = tiny_rbm()
    V, H = model.W.shape
    vs, hs = binary_states(V, dtype=torch.float64), binary_states(H, dtype=torch.float64)
    p = torch.softmax(joint_log_table(model).flatten(), 0).view(len(vs), len(hs))  # p(v, h)
    p_h_given_v = p / p.sum(1, keepdim=True)  # (2^V, 2^H)
    torch.testing.assert_close(model.p_h_given_v(vs), p_h_given_v @ hs)  # E[h_j | v]
    p_v_given_h = p / p.sum(0, keepdim=True)
    torch.testing.assert_close(model.p_v_given_h(hs), p_v_given_h.T @ vs)  # E[v_i | h]


@pytest.mark.parametrize("chunk", [2**14, 4])
def test_exact_log_z_by_hidden_enumeration_equals_full_enumeration(chunk):
    # catches: a wrong hidden-state table, dropped chunks, c^T h or b missing in log Z
    model = tiny_rbm(V=10, H=6, scale=0.7)
    brute = torch.logsumexp(joint_log_table(model).flatten(), 0)  # all 2^10 * 2^6 states
    assert model.exact_log_partition(chunk=chunk) == pytest.approx(float(brute), abs=1e-9)


def test_log_prob_normalises_and_reduces_to_bernoulli_without_weights():
    # catches: log Z not subtracted, binarization ignored, the hidden term not cancelling
    torch.manual_seed(1)
    model = RBM(RBMConfig(num_hidden=4))
    x = load_digits("test")[0][:50]
    with torch.no_grad():
        model.W.zero_()
        model.b.copy_(torch.randn(64))
        model.c.copy_(torch.randn(4))
    v = binarize(x).flatten(1).double()
    b = model.b.double()
    bernoulli = v @ b - torch.nn.functional.softplus(b).sum()  # independent pixels, closed form
    torch.testing.assert_close(model.log_prob(x).double(), bernoulli, atol=1e-4, rtol=0)
    # with weights: log p(v) = logsumexp_h(-E(v,h)) - log Z, every h enumerated here
    with torch.no_grad():
        model.W.copy_(0.3 * torch.randn(64, 4))
    hs = binary_states(4)
    neg_e = -model.energy(v.float().repeat_interleave(16, 0), hs.repeat(50, 1)).view(50, 16)
    brute = torch.logsumexp(neg_e.double(), 1) - model.exact_log_partition()
    torch.testing.assert_close(model.log_prob(x).double(), brute, atol=1e-4, rtol=0)


def test_log_z_cache_follows_parameter_updates():
    # catches: a stale cached log Z after an optimizer step or load_state_dict
    model = RBM(RBMConfig(num_hidden=5))
    first = model.log_partition()
    with torch.no_grad():
        model.c.add_(1.0)
    assert model.log_partition() == pytest.approx(model.exact_log_partition())
    assert model.log_partition() != pytest.approx(first)
    fresh = RBM(RBMConfig(num_hidden=5))
    fresh.log_partition()
    fresh.load_state_dict(model.state_dict())
    assert fresh.log_partition() == pytest.approx(model.exact_log_partition())


def test_ais_is_close_to_exact_and_improves_with_more_temperatures():
    # catches: a wrong weight update, a transition that does not leave p_beta invariant, log Z_0
    model = tiny_rbm(V=20, H=8, scale=0.6, seed=3)
    with torch.no_grad():
        model.base_logits.copy_(model.b)
    exact = model.exact_log_partition()

    def mean_abs_error(num_betas: int) -> float:
        errs = []
        for s in range(2):
            gen = torch.Generator().manual_seed(s)
            errs.append(abs(model.ais_log_partition(num_betas, 200, generator=gen).log_z - exact))
        return sum(errs) / len(errs)

    coarse, fine = mean_abs_error(5), mean_abs_error(1000)
    assert fine < 0.05, fine
    assert fine < coarse / 3, (coarse, fine)
    gen = torch.Generator().manual_seed(9)
    est = model.ais_log_partition(1000, 200, generator=gen)
    assert est.log_z_low <= exact + 0.05 and exact - 0.05 <= est.log_z_high


def test_gibbs_chain_samples_the_model_distribution():
    # catches: a Gibbs sweep that uses W where W^T belongs, or the wrong bias
    model = tiny_rbm(V=4, H=3, scale=1.0, seed=2)
    p_exact = torch.softmax(joint_log_table(model).flatten(), 0).view(16, 8).sum(1)  # p(v)
    gen = torch.Generator().manual_seed(0)
    v = torch.bernoulli(torch.full((20000, 4), 0.5, dtype=torch.float64), generator=gen)
    v = model.gibbs_chain(v, 30, gen)
    idx = (v.long() * (2 ** torch.arange(4))).sum(1)  # state index, as in binary_states
    p_emp = torch.bincount(idx, minlength=16).double() / len(v)
    assert (p_emp - p_exact).abs().max() < 0.015


def test_surrogate_gradient_is_the_cd_gradient():
    # catches: a flipped sign of the surrogate, negatives that are not detached
    torch.manual_seed(0)
    model = RBM(RBMConfig(num_hidden=6, persistent=False, k=1, init_std=0.1))
    x = load_digits("train")[0][:32]
    torch.manual_seed(5)
    model.loss(x).backward()
    torch.manual_seed(5)  # replay the same negative samples
    v0 = binarize(x).flatten(1)
    vk = model.gibbs_chain(v0, 1)
    with torch.no_grad():
        # -(<v h>_data - <v h>_neg) with h replaced by p(h=1|v): the CD-1 update of W
        expected = -(v0.T @ model.p_h_given_v(v0) - vk.T @ model.p_h_given_v(vk)) / len(v0)
    torch.testing.assert_close(model.W.grad, expected)
    torch.testing.assert_close(model.b.grad, -(v0 - vk).mean(0))


def test_cd1_steps_raise_the_exact_log_likelihood():
    # catches: gradient ascent on the NLL (sign), a broken negative phase
    torch.manual_seed(0)
    x = load_digits("train")[0][:200]
    model = RBM(RBMConfig(num_hidden=4, persistent=False, k=1, init_std=0.1))
    before = -model.log_prob(x).mean().item()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(30):
        opt.zero_grad()
        model.loss(x).backward()
        opt.step()
    after = -model.log_prob(x).mean().item()
    assert after < before - 5.0, (before, after)


def test_eval_loss_is_exact_nll_and_pcd_updates_chains():
    # catches: eval-mode loss that returns the surrogate, chains that never persist
    torch.manual_seed(0)
    model = RBM(RBMConfig(num_hidden=5, num_chains=10, init_std=0.5))
    x = load_digits("val")[0][:40]
    chains = model.chains.clone()
    model.train()
    model.loss(x)
    assert not torch.equal(chains, model.chains)
    model.eval()
    assert model.loss(x).item() == pytest.approx(-model.log_prob(x).mean().item())


def test_pseudo_likelihood_matches_exact_conditionals():
    # catches: a flipped bit that is not flipped, the wrong sign of the free-energy difference
    torch.manual_seed(0)
    model = RBM(RBMConfig(num_hidden=4, init_std=0.3))
    x = load_digits("test")[0][:3]
    v = binarize(x).flatten(1)
    brute = torch.zeros(3, dtype=torch.float64)
    for i in range(64):
        flipped = v.clone()
        flipped[:, i] = 1 - flipped[:, i]
        lp, lq = model.log_prob(x).double(), model.log_prob((flipped * 16).long().view(3, 1, 8, 8))
        brute += lp - torch.logaddexp(lp, lq.double())  # log p(v_i | v_-i)
    torch.testing.assert_close(model.pseudo_log_likelihood(x).double(), brute, atol=1e-4, rtol=0)


def test_sample_is_raw_binary_digits():
    model = RBM(RBMConfig(num_hidden=4))
    s = model.sample(6, steps=3)
    assert s.shape == (6, 1, 8, 8) and s.dtype == torch.int64
    assert set(s.unique().tolist()) <= {0, 16}
    assert torch.isfinite(model.log_prob(s)).all()


def test_bernoulli_baseline_and_untrained_rbm():
    # the chapter's reference numbers: the baseline is 24.91 and an untrained RBM is far worse
    base = bernoulli_baseline_nll()
    assert base == pytest.approx(24.91, abs=0.01)
    x = load_digits("test")[0]
    untrained = -RBM(RBMConfig(num_hidden=16)).log_prob(x).mean().item()
    assert untrained > base + 10
    assert untrained == pytest.approx(64 * math.log(2), abs=0.5)  # about uniform over 2^64


def test_autocast_keeps_log_prob_exact_and_training_finite():
    # catches: log_prob computed in bf16 under autocast (off by tenths of a nat)
    torch.manual_seed(0)
    model = RBM(RBMConfig(num_hidden=6, init_std=0.3))
    x = load_digits("val")[0][:64]
    v = binarize(x).flatten(1).double()
    with torch.no_grad():  # float64 by hand, never under autocast
        W, b, c = model.W.double(), model.b.double(), model.c.double()
        free = -(v @ b) - torch.nn.functional.softplus(v @ W + c).sum(-1)
        reference = (-free - model.exact_log_partition()).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp = model.log_prob(x)
        loss = model.loss(x)
    loss.backward()
    torch.testing.assert_close(lp, reference)
    assert torch.isfinite(model.W.grad).all()


def test_runs_on_the_meta_device():
    # catches: autocast entered with device type 'meta', log Z read as a Python float on meta
    x = torch.zeros(4, 1, 8, 8, dtype=torch.int64, device="meta")
    model = RBM(RBMConfig(num_hidden=5)).to("meta")
    loss = model.loss(x)
    loss.backward()
    assert loss.device.type == "meta" and model.W.grad.device.type == "meta"
    assert model.log_prob(x).shape == (4,) and model.sample(3).device.type == "meta"


# --------------------------------------------------------------------------- the contract
def test_init_from_data_sets_the_smoothed_log_odds_of_the_pixel_counts():
    # catches: init_from_data never called or its counts wrong (on/off swapped, alpha dropped)
    x = load_digits("train")[0][:300]
    model = RBM(RBMConfig(num_hidden=3)).init_from_data(x, alpha=0.5)
    flat = x.flatten(1).tolist()
    for i in range(64):
        on = sum(row[i] >= 8 for row in flat)  # the binarization rule, counted by hand
        want = math.log((on + 0.5) / (300 - on + 0.5))
        assert model.b[i].item() == pytest.approx(want, abs=1e-5), i
    assert torch.equal(model.base_logits, model.b.detach())  # the AIS base starts there too


def test_the_recipe_starts_from_the_data_log_odds(monkeypatch):
    # the book's recipe calls init_from_data: its visible biases are the train split's log odds
    monkeypatch.setenv("DGM_EDU_FAST", "1")
    from dgm_edu import rbm

    seen = {}

    def no_training(model, *args, **kwargs):
        seen["b"] = model.b.detach().clone()
        raise RuntimeError("stop before training")

    monkeypatch.setattr(rbm, "fit", no_training)
    with pytest.raises(RuntimeError, match="stop before training"):
        rbm.train_reference(progress=False)
    want = RBM(RBMConfig(num_hidden=16)).init_from_data(load_digits("train")[0]).b
    torch.testing.assert_close(seen["b"], want.detach())


def test_ais_error_bars_are_log_of_one_plus_minus_three_standard_errors():
    # two-sided: both bars close to the estimate, on either side, and consistent with one
    # relative standard error s: high = log Z + log(1 + 3s), low = log Z + log(1 - 3s)
    model = tiny_rbm(V=20, H=8, scale=0.6, seed=3)
    with torch.no_grad():
        model.base_logits.copy_(model.b)
    exact = model.exact_log_partition()
    est = model.ais_log_partition(1000, 200, generator=torch.Generator().manual_seed(9))
    up, down = est.log_z_high - est.log_z, est.log_z - est.log_z_low
    assert 0 < up < 0.1 and 0 < down < 0.1, (up, down)
    three_s = math.exp(up) - 1
    assert down == pytest.approx(-math.log(1 - three_s), rel=1e-9)
    assert est.log_z_low - 0.02 <= exact <= est.log_z_high + 0.02


@pytest.mark.parametrize(
    ("steps", "err", "message"),
    [
        (0, ValueError, "steps must be an int >= 1, got 0"),
        (-1, ValueError, "steps must be an int >= 1, got -1"),
        (2.5, TypeError, r"steps must be an int, got 2.5 \(float\)"),
    ],
)
def test_sample_refuses_steps_that_would_return_the_noise(steps, err, message):
    with pytest.raises(err, match=f"^{message}$"):
        RBM(RBMConfig(num_hidden=4)).sample(3, steps=steps)


def test_sample_is_the_gibbs_chain_and_round_trips_through_binarize():
    model = RBM(RBMConfig(num_hidden=6, init_std=0.5))
    s = model.sample(50, steps=4, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)  # the same draws by hand: noise, then 4 sweeps
    v = model.gibbs_chain(torch.bernoulli(torch.full((50, 64), 0.5), generator=g), 4, g)
    assert torch.equal(s, (v * 16).long().view(50, 1, 8, 8))
    assert torch.equal(binarize(s).flatten(1), v)  # levels 0/16 -> binary: the identity


def test_sample_zero_and_labels():
    model = RBM(RBMConfig(num_hidden=4))
    s = model.sample(0)
    assert s.shape == (0, 1, 8, 8) and s.dtype == torch.int64
    x, y = load_digits("val")[0][:4], load_digits("val")[1][:4]
    pattern = r"y was given but this model is unconditional \(num_classes=0\): expected y=None"
    for call in (
        lambda: model.sample(4, y=3),
        lambda: model.log_prob(x, y),
        lambda: model.loss(x, y),
    ):
        with pytest.raises(ValueError, match=pattern):
            call()
    with pytest.raises(ValueError, match=pattern):
        model.eval().loss(x, y)


def test_mnist_sized_rbm_takes_28x28_digits():
    torch.manual_seed(0)
    model = RBM(RBMConfig(num_visible=784, num_hidden=4, num_chains=5))
    x = torch.randint(0, 17, (6, 1, 28, 28))
    with torch.no_grad():
        model.W.zero_()
        model.b.copy_(torch.randn(784))
    v, b = binarize(x, (1, 28, 28)).flatten(1).double(), model.b.double()
    bernoulli = v @ b - torch.nn.functional.softplus(b).sum()  # independent pixels
    torch.testing.assert_close(model.log_prob(x).double(), bernoulli, atol=1e-3, rtol=0)
    assert model.sample(2, steps=2).shape == (2, 1, 28, 28)
    assert torch.isfinite(model.train().loss(x))
    with pytest.raises(ValueError, match=r"Expected digits of shape \(N, 1, 28, 28\)"):
        model.log_prob(load_digits("val")[0][:2])
    with pytest.raises(ValueError, match="num_pixels must be the pixel count of square images"):
        RBM(RBMConfig(num_visible=5, num_hidden=2)).log_prob(x)


def test_init_from_data_refuses_a_smoothing_that_gives_infinite_biases():
    x = load_digits("train")[0][:20]
    with pytest.raises(ValueError, match=r"^alpha must be a finite number > 0, got 0.0$"):
        RBM(RBMConfig(num_hidden=3)).init_from_data(x, alpha=0)


def test_a_float64_rbm_gives_the_float32_log_prob_in_float64():
    """log_prob runs in the weights' dtype (a float64 RBM used to fail on a dtype mismatch)."""
    from dgm_edu.data import load_digits

    x = load_digits("val")[0][:5]
    m32 = RBM(RBMConfig(num_hidden=8))
    m64 = RBM(RBMConfig(num_hidden=8)).double()
    m64.load_state_dict(m32.state_dict())
    lp32, lp64 = m32.log_prob(x), m64.log_prob(x)
    assert lp64.dtype == torch.float64
    torch.testing.assert_close(lp64, lp32.double(), rtol=0, atol=1e-4)


def _with_base(model: RBM, seed: int = 4) -> RBM:
    with torch.no_grad():
        model.base_logits.copy_(
            torch.randn(len(model.b), generator=torch.Generator().manual_seed(seed))
        )
    return model


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_the_ais_path_is_the_marginal_of_the_annealed_joint_energy(beta):
    # catches: a path that scales the softplus (beta * softplus) instead of its argument, a wrong
    # base term, an intermediate RBM with unscaled W or c
    model = _with_base(tiny_rbm(V=4, H=3, scale=1.0, seed=5))
    V, H = model.W.shape
    vs = binary_states(V, dtype=torch.float64)
    before = [p.detach().clone() for p in (model.W, model.b, model.c)]
    # E_beta(v, h) = (1 - beta) E_0(v, h) + beta E(v, h),  E_0 = -b_A . v, by brute force over h
    base = (vs @ model.base_logits)[:, None]  # (16, 1)
    log_f = torch.logsumexp((1 - beta) * base + beta * joint_log_table(model), 1)  # (16,)
    inter = model.ais_intermediate(beta)
    with torch.no_grad():
        assert torch.allclose(model._log_f(vs, beta), log_f, atol=1e-10)
        assert torch.allclose(-inter.free_energy(vs), log_f, atol=1e-10)
        assert torch.allclose(inter.W, beta * model.W) and torch.allclose(inter.c, beta * model.c)
        geometric = (1 - beta) * base[:, 0] + beta * -model.free_energy(vs)  # p_0^(1-b) p^b
        if beta == 0.3:
            assert (geometric - log_f).abs().max() > 0.05  # not the path of the marginals
    if beta == 0.0:  # the base model: log Z_0 = sum softplus(b_A) + H log 2
        z0 = float(torch.nn.functional.softplus(model.base_logits).sum()) + H * math.log(2)
        assert inter.exact_log_partition() == pytest.approx(z0, abs=1e-10)
    assert all(torch.equal(p, q) for p, q in zip(before, (model.W, model.b, model.c)))  # a copy


def test_the_ais_gibbs_sweep_leaves_each_intermediate_distribution_invariant():
    # the transition matrix T(v'|v) = sum_h p_beta(h|v) p_beta(v'|h), enumerated: f_beta T = f_beta
    model = _with_base(tiny_rbm(V=4, H=3, scale=1.5, seed=6))
    V, H = model.W.shape
    vs, hs = binary_states(V, dtype=torch.float64), binary_states(H, dtype=torch.float64)
    for beta in [0.25, 0.7]:
        inter = model.ais_intermediate(beta)
        with torch.no_grad():
            ph = inter.p_h_given_v(vs)  # (16, 3)
            p_h = (hs[None] * ph[:, None] + (1 - hs[None]) * (1 - ph[:, None])).prod(-1)  # (16, 8)
            pv = inter.p_v_given_h(hs)  # (8, 4)
            p_v = (vs[None] * pv[:, None] + (1 - vs[None]) * (1 - pv[:, None])).prod(-1)  # (8, 16)
            f = torch.softmax(model._log_f(vs, beta), 0)  # (16,)
        T = p_h @ p_v  # (16, 16), rows sum to one
        assert torch.allclose(T.sum(1), torch.ones(16, dtype=torch.float64))
        assert torch.allclose(f @ T, f, atol=1e-12)
        assert not torch.allclose(torch.full_like(f, 1 / 16) @ T, torch.full_like(f, 1 / 16))


def test_ais_runs_through_the_intermediate_rbms():
    # replay AIS with ais_intermediate's free energies and gibbs_step: the same draws, same weights
    model = _with_base(tiny_rbm(V=6, H=3, scale=0.8, seed=7))
    K, R = 7, 5
    log_w, log_z0 = model.ais_log_weights(K, R, generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    v = torch.bernoulli(torch.sigmoid(model.base_logits).expand(R, -1).contiguous(), generator=gen)
    replay = torch.zeros(R, dtype=torch.float64)
    betas = torch.linspace(0, 1, K + 1).tolist()
    for b_prev, b_next in zip(betas[:-1], betas[1:]):
        prev, nxt = model.ais_intermediate(b_prev), model.ais_intermediate(b_next)
        with torch.no_grad():
            replay += prev.free_energy(v) - nxt.free_energy(v)
        v, _ = nxt.gibbs_step(v, gen)
    assert torch.allclose(log_w, replay, atol=1e-10)
    assert log_z0 == pytest.approx(model.ais_intermediate(0.0).exact_log_partition(), abs=1e-10)
    est = model.ais_log_partition(K, R, generator=torch.Generator().manual_seed(3))
    assert est.log_z == pytest.approx(log_z0 + float(torch.logsumexp(log_w, 0)) - math.log(R))


def test_ais_weights_are_unbiased_for_z_and_log_z_hat_underestimates_on_a_sharp_model():
    # E[w] = Z / Z_0 (many runs), while log of a mean over few runs sits below log Z on average
    model = _with_base(tiny_rbm(V=8, H=4, scale=2.0, seed=8))
    exact = model.exact_log_partition()
    log_w, log_z0 = model.ais_log_weights(3, 200_000, generator=torch.Generator().manual_seed(0))
    assert log_z0 + float(torch.logsumexp(log_w, 0)) - math.log(len(log_w)) == pytest.approx(
        exact, abs=0.05
    )
    small = log_z0 + torch.logsumexp(log_w.view(-1, 10), 1) - math.log(10)  # 20000 estimates
    assert float(small.mean()) < exact - 0.1


def test_ais_intermediate_refuses_a_beta_outside_the_unit_interval():
    with pytest.raises(ValueError, match=r"^beta must be in \[0, 1\], got 1.5$"):
        tiny_rbm().ais_intermediate(1.5)
