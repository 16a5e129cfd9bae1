"""The shared foundation, each piece against an independent computation: the argument checks of
:mod:`dgm_edu.checks` (exact messages), the log-densities of :mod:`dgm_edu.densities` (scipy
and numpy), and the level conversions of :mod:`dgm_edu.data` (round trips, the rule at the bin
edges, numpy recomputations)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import special, stats

from dgm_edu import checks, data, densities
from dgm_edu.data import (
    LEVELS,
    dequantize,
    from_signed,
    from_unit,
    quantize,
    to_signed,
    to_unit,
)

NAN, INF = float("nan"), float("inf")


def _message(err: type[Exception], call, *args, **kwargs) -> str:
    with pytest.raises(err) as info:
        call(*args, **kwargs)
    return str(info.value)


# =========================================================================== checks
@pytest.mark.parametrize("n", [0, 1, 7, np.int64(3), np.int32(2), torch.tensor(4).item()])
def test_count_accepts_whole_numbers_and_returns_a_python_int(n):
    out = checks.count(n)
    assert out == int(n) and type(out) is int


@pytest.mark.parametrize(
    ("n", "err", "message"),
    [
        (-1, ValueError, "n must be a non-negative int, got -1"),
        (np.int64(-3), ValueError, "n must be a non-negative int, got -3"),
        (2.0, TypeError, "n must be a non-negative int, got 2.0 (float)"),
        ("3", TypeError, "n must be a non-negative int, got '3' (str)"),
        (True, TypeError, "n must be a non-negative int, got True (bool)"),
        (None, TypeError, "n must be a non-negative int, got None (NoneType)"),
        (torch.tensor(3), TypeError, "n must be a non-negative int, got tensor(3) (Tensor)"),
    ],
)
def test_count_refuses_with_a_message_that_names_the_argument(n, err, message):
    assert _message(err, checks.count, n) == message
    assert _message(err, checks.count, n, "num_samples").startswith("num_samples must be")


def test_integer_and_steps_bounds():
    assert checks.integer(5, "k", low=5, high=5) == 5
    assert checks.integer(10**9, "k", low=0) == 10**9
    assert _message(ValueError, checks.integer, 4, "k", low=5, high=9) == (
        "k must be an int in [5, 9], got 4"
    )
    assert _message(ValueError, checks.integer, 10, "k", low=5, high=9) == (
        "k must be an int in [5, 9], got 10"
    )
    assert _message(ValueError, checks.integer, -1, "k", low=0) == "k must be an int >= 0, got -1"
    assert _message(TypeError, checks.integer, 2.5, "k", low=0) == (
        "k must be an int, got 2.5 (float)"
    )
    assert _message(TypeError, checks.integer, False, "k", low=0) == (
        "k must be an int, got False (bool)"
    )
    assert checks.steps(1) == 1 and checks.steps(50, high=50) == 50
    assert _message(ValueError, checks.steps, 0) == "steps must be an int >= 1, got 0"
    assert _message(ValueError, checks.steps, -1, high=50) == (
        "steps must be an int in [1, 50], got -1"
    )
    assert _message(ValueError, checks.steps, 51, high=50) == (
        "steps must be an int in [1, 50], got 51"
    )
    assert _message(ValueError, checks.steps, 0, "num_steps") == (
        "num_steps must be an int >= 1, got 0"
    )


def test_real_and_temperature():
    assert checks.real(np.float32(0.5), "eta") == 0.5 and type(checks.real(3, "eta")) is float
    assert checks.real(-2, "guidance") == -2.0  # no sign asked: any finite number
    assert checks.real(0, "eta", nonnegative=True) == 0.0
    assert checks.temperature(1e-6) == 1e-6
    for bad, message in [
        (0, "temperature must be a finite number > 0, got 0.0"),
        (-1, "temperature must be a finite number > 0, got -1.0"),
        (float("nan"), "temperature must be a finite number > 0, got nan"),
        (float("inf"), "temperature must be a finite number > 0, got inf"),
        (-float("inf"), "temperature must be a finite number > 0, got -inf"),
    ]:
        assert _message(ValueError, checks.temperature, bad) == message
    assert _message(ValueError, checks.real, -0.1, "eta", nonnegative=True) == (
        "eta must be a finite number >= 0, got -0.1"
    )
    assert _message(ValueError, checks.real, float("nan"), "guidance") == (
        "guidance must be a finite number, got nan"
    )
    assert _message(TypeError, checks.temperature, "1") == (
        "temperature must be a real number, got '1' (str)"
    )
    assert _message(TypeError, checks.temperature, True) == (
        "temperature must be a real number, got True (bool)"
    )
    assert _message(TypeError, checks.temperature, None) == (
        "temperature must be a real number, got None (NoneType)"
    )


def test_labels_accepts_ints_and_integer_tensors_of_classes():
    assert checks.labels(None, 4, 10) is None
    assert torch.equal(checks.labels(None, 5, 3, stratify=True), torch.tensor([0, 1, 2, 0, 1]))
    y = checks.labels(7, 3, 10)
    assert y.dtype == torch.long and torch.equal(y, torch.tensor([7, 7, 7]))
    assert torch.equal(checks.labels(np.int64(2), 2, 3), torch.tensor([2, 2]))
    for dtype in (torch.int32, torch.uint8, torch.int64):
        y = checks.labels(torch.tensor([0, 9, 4], dtype=dtype), 3, 10)
        assert y.dtype == torch.long and torch.equal(y, torch.tensor([0, 9, 4]))
    assert checks.labels(torch.zeros(0, dtype=torch.long), 0, 10).shape == (0,)
    meta = checks.labels(torch.zeros(3, dtype=torch.long, device="meta"), 3, 10, "meta")
    assert meta.device.type == "meta"


@pytest.mark.parametrize(
    ("y", "n", "k", "err", "message"),
    [
        (0, 2, 0, ValueError, "y was given but this model is unconditional (num_classes=0): "
         "expected y=None"),
        (torch.tensor([1, 2]), 2, 0, ValueError, "y was given but this model is unconditional "
         "(num_classes=0): expected y=None"),
        (10, 2, 10, ValueError, "y must hold classes in [0, 10), got values in [10, 10]"),
        (-1, 2, 10, ValueError, "y must hold classes in [0, 10), got values in [-1, -1]"),
        (torch.tensor([0, 10]), 2, 10, ValueError,
         "y must hold classes in [0, 10), got values in [0, 10]"),
        (3.7, 2, 10, TypeError, "y must be an int or an (n,) integer tensor of classes, got float"),
        (True, 2, 10, TypeError, "y must be an int or an (n,) integer tensor, got a bool"),
        ("3", 2, 10, TypeError, "y must be an int or an (n,) integer tensor of classes, got str"),
        (np.array([1, 2]), 2, 10, TypeError,
         "y must be an int or an (n,) integer tensor of classes, got ndarray"),
        (torch.tensor([1.0, 2.0]), 2, 10, TypeError,
         "y must hold integer classes, got dtype torch.float32"),
        (torch.tensor([True, False]), 2, 10, TypeError,
         "y must hold integer classes, got dtype torch.bool"),
        (torch.tensor([1, 2, 3]), 2, 10, ValueError,
         "y must have shape (2,), one class per item, got (3,)"),
        (torch.tensor([[1, 2]]), 2, 10, ValueError,
         "y must have shape (2,), one class per item, got (1, 2)"),
    ],
)  # fmt: skip
def test_labels_refuses_with_exact_messages(y, n, k, err, message):
    assert _message(err, checks.labels, y, n, k) == message


def test_points_converts_and_refuses_with_exact_messages():
    x = torch.tensor([[0.5, -1.0], [2.0, 3.0]])
    for ok in (x, x.long(), x.int()):
        out = checks.points(ok, 2)
        assert out.dtype == torch.float32 and torch.equal(out, ok.float())
    assert checks.points(x.double(), 2).dtype == torch.float64  # a float64 model's points
    assert checks.points(torch.zeros(3, 2, device="meta"), 2).device.type == "meta"
    cases = [
        (x.numpy(), TypeError, "points must be a torch.Tensor of shape (N, 2), got ndarray"),
        (None, TypeError, "points must be a torch.Tensor of shape (N, 2), got NoneType"),
        (x > 0, TypeError, "points must hold real numbers, got dtype torch.bool"),
        (x[:, :1], ValueError, "points must be a non-empty batch of shape (N, 2), got (2, 1)"),
        (x[0], ValueError, "points must be a non-empty batch of shape (N, 2), got (2,)"),
        (x[:0], ValueError, "points must be a non-empty batch of shape (N, 2), got (0, 2)"),
        (x[None], ValueError, "points must be a non-empty batch of shape (N, 2), got (1, 2, 2)"),
        (torch.tensor([[0.0, NAN]]), ValueError, "points contain NaN or inf: expected finite "
         "coordinates"),
        (torch.tensor([[INF, 0.0]]), ValueError, "points contain NaN or inf: expected finite "
         "coordinates"),
    ]  # fmt: skip
    for bad, err, message in cases:
        assert _message(err, checks.points, bad, 2) == message
    assert _message(ValueError, checks.points, x, 3, "x") == (
        "x must be a non-empty batch of shape (N, 3), got (2, 2)"
    )


def test_finite_and_levels_out():
    t = torch.tensor([0.0, -3.0, 1e30])
    assert checks.finite(t, "x") is t
    checks.finite(torch.full((2,), float("nan"), device="meta"), "x")  # no data: not checked
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(FloatingPointError) as info:
            checks.finite(torch.tensor([0.0, bad]), "the sampler's x_0")
        assert str(info.value).startswith("the sampler's x_0 is not finite (NaN or inf)")
    ok = torch.tensor([[0, 16], [3, 8]])
    assert checks.levels_out(ok) is ok
    assert checks.levels_out(torch.zeros(0, 1, 8, 8, dtype=torch.long)).shape[0] == 0
    assert checks.levels_out(torch.tensor([255]), levels=256).tolist() == [255]
    with pytest.raises(AssertionError, match="samples must be int64 levels, got dtype torch.float"):
        checks.levels_out(ok.float())
    for bad in (torch.tensor([17]), torch.tensor([-1])):
        with pytest.raises(AssertionError, match=r"samples must lie on the levels 0\.\.16"):
            checks.levels_out(bad)


# =========================================================================== densities
def test_log_2pi():
    assert densities.LOG_2PI == pytest.approx(math.log(2 * math.pi), abs=0, rel=1e-15)


@pytest.mark.parametrize("shape", [(5, 2), (3, 1, 8, 8), (4, 1)])
def test_standard_normal_log_prob_against_scipy(shape):
    z = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    expected = stats.norm.logpdf(z.numpy()).reshape(shape[0], -1).sum(1)
    got = densities.standard_normal_log_prob(z)
    assert got.shape == (shape[0],)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)


def test_normal_log_prob_against_scipy():
    g = torch.Generator().manual_seed(1)
    z, mu = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(6, 3, generator=g)
    logvar = torch.randn(6, 3, generator=g, dtype=torch.float64)
    expected = stats.norm.logpdf(z, loc=mu, scale=np.exp(0.5 * logvar.numpy())).sum(-1)
    got = densities.normal_log_prob(z, mu.double(), logvar)
    assert got.shape == (6,)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    # leading dims broadcast: (k, B, D) samples against (B, D) parameters
    zk = torch.randn(4, 6, 3, generator=g, dtype=torch.float64)
    ref = stats.norm.logpdf(zk, loc=mu, scale=np.exp(0.5 * logvar.numpy())).sum(-1)
    np.testing.assert_allclose(densities.normal_log_prob(zk, mu.double(), logvar), ref, rtol=1e-12)


def test_sum_except_batch_and_logmeanexp():
    x = torch.arange(24, dtype=torch.float64).view(2, 3, 4)
    assert torch.equal(densities.sum_except_batch(x), torch.tensor([66.0, 210.0], dtype=x.dtype))
    v = torch.tensor([[0.5, -1.0, 2.0], [3.0, 0.0, -4.0]], dtype=torch.float64)
    for dim in (0, 1):
        expected = np.log(np.mean(np.exp(v.numpy()), axis=dim))
        np.testing.assert_allclose(densities.logmeanexp(v, dim), expected, rtol=1e-14)
    # stable where exp overflows: log mean exp(1000 + a) = 1000 + log mean exp(a)
    big = torch.tensor([1000.0, 1001.0, 999.0], dtype=torch.float64)
    expected = 1000 + special.logsumexp([0.0, 1.0, -1.0]) - math.log(3)
    assert densities.logmeanexp(big).item() == pytest.approx(expected, abs=1e-12)


# =========================================================================== level conversions
ALL_LEVELS = torch.arange(LEVELS).view(1, 1, 1, LEVELS)  # every level 0..16


def test_to_unit_and_to_signed_against_numpy():
    k = np.arange(LEVELS)
    u, s = to_unit(ALL_LEVELS), to_signed(ALL_LEVELS)
    assert u.dtype == torch.float32 and s.dtype == torch.float32
    np.testing.assert_allclose(u.flatten().numpy(), k / 16, rtol=0, atol=1e-7)
    np.testing.assert_allclose(s.flatten().numpy(), 2 * k / 16 - 1, rtol=0, atol=1e-7)
    assert u.min() == 0 and u.max() == 1 and s.min() == -1 and s.max() == 1
    k256 = np.arange(256)
    np.testing.assert_allclose(to_unit(torch.tensor(k256), 256).numpy(), k256 / 255, atol=1e-7)
    np.testing.assert_allclose(
        to_signed(torch.tensor(k256), 256).numpy(), 2 * k256 / 255 - 1, atol=1e-7
    )


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.float32])
def test_grid_round_trips_are_the_identity(dtype):
    x = ALL_LEVELS.to(dtype)
    for back in (from_unit(to_unit(x)), from_signed(to_signed(x))):
        assert back.dtype == torch.long and torch.equal(back, ALL_LEVELS)
    y = torch.arange(256).to(torch.int64 if dtype == torch.uint8 else dtype)
    assert torch.equal(from_unit(to_unit(y, 256), 256), torch.arange(256))
    assert torch.equal(from_signed(to_signed(y, 256), 256), torch.arange(256))


def test_back_to_levels_is_the_nearest_level_with_ties_to_even():
    """from_unit(y) = round(16 y) (numpy's rounding: halves to even), clamped to 0..16."""
    k = np.arange(LEVELS - 1)
    eps = 1e-3
    below, above = (k + 0.5 - eps) / 16, (k + 0.5 + eps) / 16  # either side of each edge
    assert from_unit(torch.tensor(below)).tolist() == k.tolist()
    assert from_unit(torch.tensor(above)).tolist() == (k + 1).tolist()
    mid = torch.tensor((k + 0.5) / 16, dtype=torch.float64)
    assert from_unit(mid).tolist() == np.round(k + 0.5).astype(int).tolist()
    grid = np.linspace(-0.2, 1.2, 1001)
    expected = np.clip(np.round(grid.astype(np.float32) * np.float32(16)), 0, 16).astype(int)
    assert from_unit(torch.tensor(grid, dtype=torch.float32)).tolist() == expected.tolist()
    signed = 2 * grid - 1  # from_signed(v) = from_unit((v + 1) / 2)
    assert (
        from_signed(torch.tensor(signed)).tolist()
        == from_unit((torch.tensor(signed) + 1) / 2).tolist()
    )
    assert from_signed(torch.tensor([-1.7, -1.0, 1.0, 3.0])).tolist() == [0, 0, 16, 16]


def test_quantize_is_the_bin_floor_17y_clamped():
    k = np.arange(LEVELS)
    edges = torch.tensor(k / 17, dtype=torch.float64)
    assert quantize(edges).tolist() == k.tolist()  # a bin's left edge belongs to it
    assert quantize(edges + 0.999 / 17).tolist() == k.tolist()  # up to its right edge
    grid = np.linspace(-0.1, 1.1, 997).astype(np.float32)
    expected = np.clip(np.floor(grid * np.float32(17)), 0, 16).astype(int)
    assert quantize(torch.tensor(grid)).tolist() == expected.tolist()
    assert quantize(torch.tensor([1.0, 5.0, -0.5])).tolist() == [16, 16, 0]
    assert quantize(torch.tensor([255 / 256]), 256).tolist() == [255]


def test_dequantize_lands_in_the_bin_and_quantize_recovers_it():
    g = torch.Generator().manual_seed(0)
    x = ALL_LEVELS.expand(500, 1, 1, LEVELS).contiguous()
    y = dequantize(x, generator=g)
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert (y >= 0).all() and (y < 1).all()
    assert torch.equal(quantize(y), x)
    u = y * 17 - x  # the noise, uniform on [0, 1): mean 1/2, variance 1/12
    assert abs(u.mean().item() - 0.5) < 0.01 and abs(u.var().item() - 1 / 12) < 0.003
    # the same generator state gives the same noise: (x + u) / 17 with u from torch.rand
    u_ref = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    assert torch.equal(dequantize(x, generator=torch.Generator().manual_seed(0)), (x + u_ref) / 17)


def test_dequantize_at_the_edge_of_the_noise_stays_in_its_bin(monkeypatch):
    """u = 1 - 2^-24, the largest value torch.rand returns: (x + u) / 17 must stay below
    (x + 1) / 17, so that y < 1 and quantize(y) == x, as the docstrings promise."""
    top = torch.tensor(1 - 2**-24)
    assert top < 1
    monkeypatch.setattr(data, "dequantization_noise", lambda x, generator=None: top.expand(x.shape))
    y = dequantize(ALL_LEVELS)
    assert (y < 1).all(), y.flatten().tolist()
    assert torch.equal(quantize(y), ALL_LEVELS)
