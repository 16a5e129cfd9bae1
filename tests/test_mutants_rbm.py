"""Tests that catch the mutants of ``dgm_edu/rbm.py`` that its own tests let through
(``make mutation``), each against an independent computation:

- AIS replayed step by step from its formulas (the same generator, so the same draws): the
  estimate, its error bars on both sides of the 1/3 boundary, the step count, the defaults;
- ``log_partition``: which estimator it picks, its seeded AIS, its cache;
- the pseudo-log-likelihood by flipping each bit in a loop, the Bernoulli baseline in numpy;
- float64 models, the meta device, the defaults of ``sample`` and ``init_from_data``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dgm_edu.data import binarize, load_digits
from dgm_edu.rbm import RBM, RBMConfig, bernoulli_baseline_nll, binary_states

X, _ = load_digits("train")


def _rbm(hidden: int = 6, seed: int = 0, **config) -> RBM:
    torch.manual_seed(seed)
    model = RBM(RBMConfig(num_hidden=hidden, init_std=0.3, **config))
    with torch.no_grad():
        model.c.normal_(0, 0.5)
    return model.init_from_data(X[:200])  # nonzero visible biases and AIS base


# --------------------------------------------------------------------------- AIS, replayed
def _log_f(m: RBM, v: torch.Tensor, beta: float) -> torch.Tensor:
    """log f_β(v) = ((1 − β) b_A + β b)·v + Σ_j softplus(β (c_j + v·W_j))."""
    lin = v @ ((1 - beta) * m.base_logits + beta * m.b)
    return lin + F.softplus(beta * (v @ m.W + m.c)).sum(1)


@torch.no_grad()
def _replay(m: RBM, num_betas: int, num_runs: int, seed: int) -> tuple[float, float, float]:
    """AIS written out from its definition, drawing in the same order from the same generator."""
    g = torch.Generator().manual_seed(seed)
    p0 = torch.sigmoid(m.base_logits).expand(num_runs, -1).contiguous()
    v = torch.bernoulli(p0, generator=g)
    log_w = np.zeros(num_runs)
    betas = torch.linspace(0.0, 1.0, num_betas + 1).tolist()  # 0 = β_0 < ... < β_K = 1
    for b_prev, b_next in zip(betas[:-1], betas[1:]):
        log_w += (_log_f(m, v, b_next) - _log_f(m, v, b_prev)).double().numpy()
        h = torch.bernoulli(torch.sigmoid(b_next * (v @ m.W + m.c)), generator=g)
        v = torch.bernoulli(
            torch.sigmoid((1 - b_next) * m.base_logits + b_next * (h @ m.W.T + m.b)), generator=g
        )
    log_z0 = F.softplus(m.base_logits.double()).sum().item() + m.config.num_hidden * math.log(2)
    w = np.exp(log_w - log_w.max())
    log_z = log_z0 + log_w.max() + math.log(w.mean())
    rel = (w / w.mean()).std(ddof=1) / math.sqrt(num_runs)
    low = log_z + math.log(1 - 3 * rel) if rel < 1 / 3 else -math.inf
    return log_z, low, log_z + math.log(1 + 3 * rel)


@pytest.mark.parametrize(("num_betas", "num_runs"), [(1, 5), (3, 40), (20, 2)])
def test_ais_matches_its_replay(num_betas, num_runs):
    m = _rbm()
    torch.manual_seed(123)  # the global generator must not matter
    est = m.ais_log_partition(num_betas, num_runs, generator=torch.Generator().manual_seed(7))
    log_z, low, high = _replay(m, num_betas, num_runs, seed=7)
    assert est.log_z == pytest.approx(log_z, abs=1e-9)
    assert est.log_z_high == pytest.approx(high, abs=1e-9)
    assert (est.log_z_low == low == -math.inf) or est.log_z_low == pytest.approx(low, abs=1e-9)


def _seed_with_rel(m: RBM, lo: float, hi: float) -> int:
    """A seed whose 2-run AIS has relative standard error in [lo, hi)."""
    for seed in range(500):
        log_w_z, _, high = _replay(m, 2, 2, seed)
        rel = (math.exp(high - log_w_z) - 1) / 3
        if lo <= rel < hi:
            return seed
    raise AssertionError(f"no seed gives rel in [{lo}, {hi})")


@pytest.mark.parametrize(("lo", "hi"), [(0.25, 1 / 3), (1 / 3, 0.9)])
def test_ais_error_bars_either_side_of_one_third(lo, hi):
    """log(Ẑ (1 − 3 s)) while 3 s < 1, else −inf; log(Ẑ (1 + 3 s)) always."""
    m = _rbm()
    seed = _seed_with_rel(m, lo, hi)
    est = m.ais_log_partition(2, 2, generator=torch.Generator().manual_seed(seed))
    log_z, low, high = _replay(m, 2, 2, seed)
    assert est.log_z == pytest.approx(log_z, abs=1e-9)
    assert est.log_z_high == pytest.approx(high, abs=1e-9) and high > log_z
    if lo >= 1 / 3:
        assert est.log_z_low == -math.inf
    else:
        assert math.isfinite(est.log_z_low) and est.log_z_low == pytest.approx(low, abs=1e-9)


def test_ais_defaults_and_argument_checks():
    m = _rbm(hidden=4)
    a = m.ais_log_partition(generator=torch.Generator().manual_seed(3))
    b = m.ais_log_partition(1000, 100, generator=torch.Generator().manual_seed(3))
    assert a == b
    assert abs(a.log_z - m.exact_log_partition()) < 0.05  # and it is a good estimate
    for args, message in [
        ((0, 5), "num_betas must be an int >= 1, got 0"),
        ((2, 1), "num_runs must be an int >= 2, got 1"),
    ]:
        with pytest.raises(ValueError) as info:
            m.ais_log_partition(*args)
        assert str(info.value) == message


# --------------------------------------------------------------------------- log_partition
def test_log_partition_uses_the_exact_sum_up_to_max_exact_hidden_then_seeded_ais():
    exact = _rbm(hidden=5, max_exact_hidden=5, ais_betas=50, ais_runs=20)
    assert exact.log_partition() == exact.exact_log_partition()
    ais = _rbm(hidden=6, max_exact_hidden=5, ais_betas=50, ais_runs=20)
    torch.manual_seed(99)
    expected = ais.ais_log_partition(50, 20, generator=torch.Generator().manual_seed(0)).log_z
    assert ais.log_partition() == expected
    assert ais.log_partition() != ais.exact_log_partition()


def test_log_partition_is_cached_until_a_parameter_changes(monkeypatch):
    m = _rbm(hidden=5)
    calls = []
    original = RBM.exact_log_partition
    monkeypatch.setattr(RBM, "exact_log_partition", lambda self: calls.append(1) or original(self))
    first = m.log_partition()
    assert m.log_partition() == first and len(calls) == 1  # cached
    with torch.no_grad():
        m.W.add_(0.1)
    assert m.log_partition() != first and len(calls) == 2
    assert m.log_partition() == original(m)


# --------------------------------------------------------------------------- the rest
def test_pseudo_log_likelihood_flips_each_bit():
    m = _rbm(hidden=5)
    x = X[:3]
    v = binarize(x).flatten(1).double()
    expected = torch.zeros(3, dtype=torch.float64)
    fe = lambda u: -(u @ m.b.double()) - F.softplus(u @ m.W.double() + m.c.double()).sum(1)
    for i in range(64):
        flipped = v.clone()
        flipped[:, i] = 1 - flipped[:, i]
        expected += F.logsigmoid(fe(flipped) - fe(v))  # log p(v_i | v_-i)
    got = m.pseudo_log_likelihood(x)
    assert got.shape == (3,)
    torch.testing.assert_close(got.double(), expected.detach(), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 3.0])
def test_bernoulli_baseline_against_numpy(alpha):
    v_train = (load_digits("train")[0].flatten(1).numpy() >= 8).astype(float)
    v_test = (load_digits("test")[0].flatten(1).numpy() >= 8).astype(float)
    p = (v_train.sum(0) + alpha) / (len(v_train) + 2 * alpha)
    nll = -(v_test * np.log(p) + (1 - v_test) * np.log(1 - p)).sum(1).mean()
    assert bernoulli_baseline_nll(alpha) == pytest.approx(nll, rel=1e-6)
    if alpha == 1.0:
        assert bernoulli_baseline_nll() == pytest.approx(nll, rel=1e-6)


def test_init_from_data_default_smoothing_is_one():
    m = RBM(RBMConfig(num_hidden=3)).init_from_data(X[:50])
    on = (X[:50].flatten(1) >= 8).sum(0).double()
    expected = ((on + 1) / (50 - on + 1)).log().float()
    assert torch.allclose(m.b.detach(), expected) and torch.equal(m.base_logits, m.b.detach())


def test_sample_defaults_to_1000_gibbs_sweeps():
    m = _rbm(hidden=4)
    a = m.sample(5, generator=torch.Generator().manual_seed(1))
    b = m.sample(5, steps=1000, generator=torch.Generator().manual_seed(1))
    c = m.sample(5, steps=999, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_a_float64_rbm_sees_float64_visibles():
    m = _rbm(hidden=4).double()
    assert m.pseudo_log_likelihood(X[:2]).dtype == torch.float64
    loss = m.train().loss(X[:4])
    assert loss.dtype == torch.float64 and torch.isfinite(loss)


def test_tables_and_pseudo_likelihood_on_the_meta_device():
    table = binary_states(3, 2, 6, device="meta")
    assert table.device.type == "meta" and table.shape == (4, 3)
    m = _rbm(hidden=4).to("meta")
    pll = m.pseudo_log_likelihood(torch.zeros(2, 1, 8, 8, dtype=torch.long, device="meta"))
    assert pll.device.type == "meta" and pll.shape == (2,)
