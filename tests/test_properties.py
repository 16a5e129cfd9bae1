"""Property-based tests of the public API (hypothesis): nothing silent, nothing cryptic.

For every family of the registry (tests/families.py), its samplers (``sample``, ``*_sample``),
``loss`` and ``log_prob``, and for :func:`dgm_edu.train.fit`, hypothesis draws arguments from
pools of valid and invalid values (wrong types, shapes, dtypes, ranges and values). Each call
must either return a correct result (finite, the right shape, digits on the grid 0..16; raw
digits of another integer or whole-float dtype giving exactly the int64 result) or raise a
``ValueError``/``TypeError`` whose message names an argument that was invalid (for raw digits:
the foundation's own message, ``validate_digits``). Any other exception type, a refusal of
valid arguments, or a silent non-finite or off-grid result fails.

Every value is tagged: VALID (must be accepted), INVALID (must be refused) or EITHER (a
documented choice: refused with a message naming it, or accepted with a correct result).
The draws are derandomized (the same cases every run) and the whole file runs in well under a
minute; ``pytest tests/test_properties.py --hypothesis-show-statistics`` counts the cases.
"""

from __future__ import annotations

import inspect
import math
import re
from typing import Any

import families as fam
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

from dgm_edu.data import validate_digits
from dgm_edu.mixtures import PixelMixture, PixelMixtureConfig
from dgm_edu.train import History, fit

VALID, INVALID, EITHER = "valid", "invalid", "either"
NAN, INF = float("nan"), float("inf")
# Small configs, so that hundreds of calls stay cheap: a 20-step diffusion chain, narrow nets,
# 8 hidden units (the RBM's exact log Z), 4 timesteps per image in the diffusion bound.
SMALLER = {"T": 20, "channels": 8, "hidden": 16, "num_layers": 2, "num_hidden": 8,
           "bound_samples": 4}  # fmt: skip


def _settings(n: int) -> settings:
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def _pick(draw, label: str, **pools: list) -> tuple[str, Any]:
    """Draw ``(tag, value)`` from tagged pools, e.g. ``valid=[...], invalid=[...]``."""
    options = [(tag, i) for tag, values in pools.items() for i in range(len(values))]
    tag, i = draw(st.sampled_from(options), label=label)
    return tag, pools[tag][i]


class Draws:
    """Where a case's arguments come from: hypothesis's draws, or a sweep that gives one
    argument each value of its pools in turn (every other argument its first valid value, and
    every other option left out), so that every value is tried at least once."""

    def __init__(self, data=None, sweep: tuple[str, str, int] | None = None) -> None:
        self.data, self.sweep = data, sweep
        self.seen: dict[str, dict[str, list]] = {}  # label -> its pools, as the case asked

    def pick(self, label: str, **pools: list) -> tuple[str, Any]:
        self.seen[label] = pools
        if self.data is not None:
            return _pick(self.data.draw, label, **pools)
        if self.sweep is not None and self.sweep[0] == label and self.sweep[1] in pools:
            tag, i = self.sweep[1:]
            if i < len(pools[tag]):
                return tag, pools[tag][i]
        return VALID, pools[VALID][0]

    def passes(self, label: str) -> bool:
        """Whether an option is passed at all."""
        if self.data is not None:
            return self.data.draw(st.booleans(), label=f"pass {label}")
        return self.sweep is None or self.sweep[0] == label


def _sweep(case) -> int:
    """Run ``case(draws)`` once per value of every pool it asks for; return the number run."""
    first = Draws()
    case(first)
    runs = 0
    for label, pools in first.seen.items():
        for tag, values in pools.items():
            for i, value in enumerate(values):
                try:
                    case(Draws(sweep=(label, tag, i)))
                except (AssertionError, pytest.fail.Exception) as err:
                    raise AssertionError(f"{label}={value!r:.80} ({tag}): {err}") from err
                runs += 1
    return runs


def _named(message: str, names: list[str]) -> list[str]:
    return [a for a in names if re.search(rf"(?<![\w.]){re.escape(a)}(?![\w])", message)]


def _call(fn, args: dict[str, tuple[str, Any]], positional: tuple = ()):
    """Call ``fn(*positional, **values)``: return ``(result, None)`` or ``(None, error)``, after
    checking that a refusal is a ValueError/TypeError naming an INVALID or EITHER argument and
    that every VALID-only call is accepted."""
    values = {k: v for k, (_, v) in args.items()}
    invalid = [k for k, (tag, _) in args.items() if tag == INVALID]
    either = [k for k, (tag, _) in args.items() if tag == EITHER]
    try:
        out = fn(*positional, **values)
    except (ValueError, TypeError) as err:
        assert invalid or either, f"refused valid arguments {values}: {err!r}"
        assert _named(str(err), invalid + either), (
            f"the message does not name any of {invalid + either}: {err!r} (arguments {values})"
        )
        return None, err
    except Exception as err:  # a raw torch error, an IndexError, a FloatingPointError...
        pytest.fail(f"{type(err).__name__} (not ValueError/TypeError) for {values}: {err}")
    assert not invalid, f"accepted invalid {invalid}: {values} gave {out!r:.200}"
    return out, None


# =========================================================================== samplers
def _samplers(variant: str) -> list[str]:
    """``sample`` and every public ``*_sample(n, ...)`` (e.g. ``ddim_sample``)."""
    model = fam.build(variant, smaller=SMALLER)
    return [
        m
        for m in dir(model)
        if m == "sample"
        or (
            m.endswith("_sample")
            and not m.startswith("_")
            and next(iter(inspect.signature(getattr(model, m)).parameters), None) == "n"
        )
    ]


SAMPLERS = [pytest.param(v, m, id=f"{v}.{m}") for v in fam.VARIANTS for m in _samplers(v)]
MODELS: dict[str, torch.nn.Module] = {}


def _model(variant: str) -> torch.nn.Module:
    """One eval-mode model per variant, shared by the cases (sampling changes no state)."""
    if variant not in MODELS:
        MODELS[variant] = fam.build(variant, smaller=SMALLER).eval()
    return MODELS[variant]


def _n_pool() -> dict[str, list]:
    return {
        VALID: [3, 1, 0, np.int64(2), np.int32(1)],
        INVALID: [-1, -7, 2.0, 2.5, "3", True, False, None, NAN, torch.tensor(2)],
    }


def _y_pool(k: int, n: int) -> dict[str, list]:
    """Labels for n items of a model with k classes (k = 0: unconditional)."""
    if k == 0:
        return {VALID: [None], INVALID: [0, 1, torch.zeros(n, dtype=torch.long)]}
    some = torch.arange(n) % k
    out_of_range = [torch.full((n,), k), torch.full((n,), -1)]  # empty, so valid, when n = 0
    return {
        VALID: [None, 0, k - 1, np.int64(1), some, some.int(), some.to(torch.uint8)]
        + (out_of_range if n == 0 else []),
        INVALID: [
            k, -1, 3.7, True, "1", some.float(), torch.arange(n + 1) % k, some.numpy(),
            torch.zeros(n, 1, dtype=torch.long),
        ] + ([] if n == 0 else out_of_range),
    }  # fmt: skip


def _option_pools(model: torch.nn.Module, method: str) -> dict[str, dict[str, list]]:
    """The options this sampler takes (keyword-only), each with its valid and invalid values."""
    params = inspect.signature(getattr(model, method)).parameters
    T = getattr(getattr(model, "config", None), "T", None)
    pools = {
        "temperature": {
            VALID: [0.5, 1.0, 2.0, 1, np.float64(0.8)],
            INVALID: [0, 0.0, -1.0, NAN, INF, -INF, "1", True],
        },
        "steps": {VALID: [1, 2, 3, np.int64(2)], INVALID: [0, -1, 2.5, "2", True, NAN]},
        "eta": {VALID: [0, 0.0, 0.5, 1.0], INVALID: [-0.5, NAN, INF, "0"]},
        # guidance != 1 mixes in the unconditional prediction: it may need labels y
        "guidance": {VALID: [1.0, 1], EITHER: [0.0, 2.5, -1.0, 3], INVALID: [NAN, INF, "2"]},
    }
    if type(model).__name__ == "Diffusion":  # its chain has T steps: no more can be taken
        pools["steps"][VALID].append(T)
        pools["steps"][INVALID].append(T + 1)
    return {k: v for k, v in pools.items() if k in params}


def _sampler_case(variant: str, method: str, draws: Draws) -> None:
    kind = fam.kind(variant)
    model = _model(variant)
    args = {"n": draws.pick("n", **_n_pool())}
    n = args["n"][1] if args["n"][0] == VALID else 2
    args["y"] = draws.pick("y", **_y_pool(fam.num_classes(model), int(n)))
    for name, pool in _option_pools(model, method).items():
        if draws.passes(name):
            args[name] = draws.pick(name, **pool)
    n_value = args.pop("n")
    torch.manual_seed(0)
    out, err = _call(getattr(model, method), {"n": n_value, **args})
    if err is None:
        fam.check_items(out, int(n_value[1]), kind, model, f"{method}({args})")


@pytest.mark.parametrize(("variant", "method"), SAMPLERS)
def test_samplers_one_argument_at_a_time(variant, method):
    assert _sweep(lambda draws: _sampler_case(variant, method, draws)) > 0


@pytest.mark.parametrize(("variant", "method"), SAMPLERS)
@_settings(40)
@given(data=st.data())
def test_samplers_return_correct_items_or_refuse_naming_the_argument(variant, method, data):
    _sampler_case(variant, method, Draws(data))


# =========================================================================== loss and log_prob
def _digits_pool(x: torch.Tensor) -> dict[str, list]:
    """Raw digits: other integer and whole-float dtypes are VALID (the same numbers as int64)."""
    return {
        VALID: [x, x.int(), x.to(torch.uint8), x.to(torch.int16), x.float(), x.double()],
        INVALID: [
            x / 16.0, x * 16 - 1, x * 15, x - 1, x + 1,
            torch.where(x == 0, NAN, x.float()), torch.where(x == 0, INF, x.float()),
            x[:0], x.flatten(1), x[:, 0], x.float()[..., :7], x > 8, x.numpy(), x.tolist(), None,
            x.to(torch.complex64), torch.zeros(len(x), 1, 28, 28, dtype=torch.long),
        ],
    }  # fmt: skip


def _points_pool(x: torch.Tensor) -> dict[str, list]:
    return {
        VALID: [x],
        EITHER: [x.double(), x.long()],  # converted to the model's float, or refused
        INVALID: [
            x[:, :1], torch.cat([x, x[:, :1]], 1), x[:, 0], x[:0],
            torch.where(x > 0, NAN, x), torch.where(x > 0, INF, x), x.numpy(), None,
        ],
    }  # fmt: skip


def _ids_pool(x: torch.Tensor, vocab: int) -> dict[str, list]:
    return {
        VALID: [x],
        EITHER: [x.int()],
        INVALID: [
            x.float(), torch.full_like(x, vocab), torch.full_like(x, -2), x[:, 0], x[:0],
            x[:, :, None], x.numpy(), None,
        ],
    }  # fmt: skip


def _x_pool(variant: str, model: torch.nn.Module) -> dict[str, list]:
    x = fam.batch(variant, model, n=3)[0]
    kind = fam.kind(variant)
    if kind == "digits":
        return _digits_pool(x)
    if kind == "points":
        return _points_pool(x)
    return _ids_pool(x, model.config.vocab_size)


def _labels_pool(k: int, n: int) -> dict[str, list]:
    """Labels given to loss/log_prob with n inputs."""
    if k == 0:  # an unconditional model: refuse y, or ignore it (the same result as without)
        return {VALID: [None], EITHER: [torch.zeros(n, dtype=torch.long)]}
    some = torch.arange(n) % k
    return {
        VALID: [some, some.int()],
        EITHER: [None, 1],  # None: the marginal or a refusal; an int: one class for all
        INVALID: [
            some.float(), torch.full((n,), k), torch.full((n,), -1), torch.arange(n + 1) % k,
            some.numpy(), "1",
        ],
    }  # fmt: skip


FACES = [
    pytest.param(v, m, id=f"{v}.{m}")
    for v in fam.VARIANTS
    for m in ("loss", "log_prob")
    if fam.has(v, m) and (m, v) not in {("log_prob", r) for r in fam.LOG_PROB_REFUSED}
]


def _face(fn) -> tuple[str, str | None]:
    """The name of a face's input (``x``, ``ids``) and how it takes labels: ``"keyword"`` (a
    ``y`` parameter), ``"positional"`` (``*labels``) or None (it takes none)."""
    params = list(inspect.signature(fn).parameters.values())
    if "y" in {p.name for p in params}:
        return params[0].name, "keyword"
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return params[0].name, "positional"
    return params[0].name, None


def _face_case(variant: str, method: str, draws: Draws) -> None:
    kind = fam.kind(variant)
    model = _model(variant)
    fn = getattr(model, method)
    x_name, takes_y = _face(fn)
    x_tag, x = draws.pick(x_name, **_x_pool(variant, model))
    n = len(x) if x_tag == VALID else 3
    args = {x_name: (x_tag, x)}
    y_tag, y = VALID, None
    if takes_y:
        y_tag, y = draws.pick("y", **_labels_pool(fam.num_classes(model), n))
        if y is not None or y_tag != VALID:
            args["y"] = (y_tag, y)

    def call(**kw):
        if "y" not in kw:
            return fn(kw[x_name])
        return fn(kw[x_name], y=kw["y"]) if takes_y == "keyword" else fn(kw[x_name], kw["y"])

    torch.manual_seed(0)
    if x_tag == INVALID and kind == "digits":  # the foundation's own message for this input
        with pytest.raises((ValueError, TypeError)) as expected:
            validate_digits(x)
        try:
            call(**{k: v for k, (_, v) in args.items()})
        except (ValueError, TypeError) as err:
            if str(err) != str(expected.value):  # or the labels' message, when they are bad too
                assert y_tag != VALID and _named(str(err), ["y"]), (err, expected.value)
            return
        except Exception as err:
            pytest.fail(f"{type(err).__name__} (not ValueError/TypeError) for {x_name}: {err}")
        pytest.fail(f"accepted invalid digits {x!r:.120}")
    if x_tag != VALID:  # its message may name the input by its kind: points, ids, digits
        args[kind] = (x_tag, None)
    out, err = _call(call, args)
    if err is not None:
        return
    assert torch.is_tensor(out) and torch.isfinite(out).all(), f"{method} gave {out}"
    assert out.shape == (() if method == "loss" else (n,)), out.shape
    # exactly the numbers of the canonical input: int64 levels or ids, float32 points, and
    # labels as an int64 tensor (an int: that class for every item); an unconditional model
    # that accepted labels gives the numbers it gives without them
    canonical = {x_name: (VALID, x.float() if kind == "points" else x.long())}
    if "y" in args and fam.num_classes(model) and y is not None:
        canonical["y"] = (VALID, torch.as_tensor(y).long().expand(n))
    torch.manual_seed(0)
    expected_out, _ = _call(call, canonical)
    torch.testing.assert_close(
        out, expected_out, rtol=0, atol=1e-5 if kind == "points" else 0, check_dtype=False
    )


@pytest.mark.parametrize(("variant", "method"), FACES)
def test_loss_and_log_prob_one_argument_at_a_time(variant, method):
    assert _sweep(lambda draws: _face_case(variant, method, draws)) > 0


@pytest.mark.parametrize(("variant", "method"), FACES)
@_settings(50)
@given(data=st.data())
def test_loss_and_log_prob_give_correct_numbers_or_refuse_naming_the_argument(
    variant, method, data
):
    _face_case(variant, method, Draws(data))


# =========================================================================== fit
TRAIN_X = fam.VAL_X[:32]


def _loader_pool() -> dict[str, list]:
    x = TRAIN_X
    return {
        VALID: [
            DataLoader(TensorDataset(x), batch_size=16),
            [(x[:16],), (x[16:],)],
            [[x[:16]], [x[16:]]],
            [x[:16], x[16:]],
        ],
        INVALID: [
            [{"x": x[:16]}],
            [x[:16].numpy()],
            [(x[:16].numpy(),)],
            ["digits"],
        ],
    }


def _fit_pools() -> dict[str, dict[str, list]]:
    return {
        "epochs": {
            VALID: [0, 1, 2, np.int64(1)], EITHER: [2.0], INVALID: [-1, 1.5, True, "2", NAN]
        },
        "grad_clip": {VALID: [None, 1.0, 0.5, 5], INVALID: [0, 0.0, -1.0, NAN, INF, "1", True]},
        "patience": {VALID: [None, 1, 3], INVALID: [0, -1, 2.5, "2", True]},
    }  # fmt: skip


def _fit_case(draws: Draws) -> None:
    torch.manual_seed(0)
    model = PixelMixture(PixelMixtureConfig(num_components=2))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    args = {"train_loader": draws.pick("train_loader", **_loader_pool())}
    for name, pool in _fit_pools().items():
        if draws.passes(name):
            args[name] = draws.pick(name, **pool)
    if "epochs" not in args:
        args["epochs"] = (VALID, 1)
    if args["train_loader"][0] == INVALID:  # a bad batch may be named "batch" or "batches"
        args |= {"batch": (INVALID, None), "batches": (INVALID, None)}
    names = [k for k in args if k not in ("batch", "batches")]
    hist, err = _call(
        lambda **kw: fit(model, opt, progress=False, **{k: kw[k] for k in names}), args
    )
    if err is None:
        epochs = int(args["epochs"][1])
        assert isinstance(hist, History)
        assert all(math.isfinite(v) for v in hist.train_loss), hist.train_loss
        assert len(hist.train_loss) <= epochs and (epochs == 0) == (not hist.train_loss)
        if args.get("patience", (VALID, None))[1] is None:
            assert len(hist.train_loss) == epochs
        assert all(torch.isfinite(p).all() for p in model.parameters())


def test_fit_one_argument_at_a_time():
    assert _sweep(_fit_case) > 0


@_settings(80)
@given(data=st.data())
def test_fit_trains_or_refuses_naming_the_argument(data):
    _fit_case(Draws(data))


def test_a_gan_given_one_optimizer_is_refused_naming_it():
    from dgm_edu.gan import GAN, GANConfig

    gan = GAN(GANConfig(data_shape=(2,), hidden=8, latent_dim=2))
    loader = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)
    with pytest.raises((ValueError, TypeError)) as info:
        fit(gan, torch.optim.Adam(gan.parameters()), loader, epochs=1, progress=False)
    assert _named(str(info.value), ["optimizer", "optimizers"]), str(info.value)
