"""The plug-in contract, enforced: every registered family through its public face.

The families come from ONE registry, :mod:`dgm_edu.weights`: every distinct variant of a model
class that the manifest records (class, its categorical config choices, conditional or not) is
built with ``weights.build_model(row)`` from its recorded config; the library models that ship no
weights are listed in ``UNSHIPPED`` next to it (both in tests/families.py). A family registered
in ``weights.RECIPES`` (and built with ``make weights``) is covered here without editing this
file; a public model class that is in neither fails the completeness test.

What every model must do (``CONTRIBUTING.md``, ``dgm_edu/checks.py``):

- its data kind is what ``sample`` returns: digits (int64 levels 0..16, ``(n, 1, 8, 8)``), 2D
  points (finite floats ``(n, 2)``) or text ids (int64 ``(n, L)``);
- ``loss`` on a real batch of that kind is a finite scalar with a gradient to every parameter;
  in eval mode it has no side effects (no parameter or buffer changes);
- ``sample(n)`` returns n items of that kind, ``sample(0)`` an empty batch, under no_grad;
  ``y`` follows the contract (a conditional model samples p(x) without it, an unconditional
  one refuses it);
- ``log_prob`` where the class has one: finite, ``(n,)``, and it keeps gradients;
- built on (or moved to) the meta device, every tensor follows, the face runs there, and the
  model comes back with ``to_empty`` + its state_dict, giving the same numbers;
- a checkpoint round trip (safetensors, as the shipped weights, and ``save_checkpoint``) into a
  fresh instance gives identical ``log_prob``, ``loss`` and ``sample`` (eval mode, fixed seed);
- raw digits that are not digits are refused with the foundation's exact message.

Nothing here skips: a module that fails to import, a model whose data kind fits none of the
above, or a registry entry whose class cannot be built is a failure with a message.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import families as fam
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import dgm_edu
from dgm_edu import weights
from dgm_edu.data import LEVELS, validate_digits
from dgm_edu.train import load_checkpoint, load_model_state, save_checkpoint


def _outputs(variant: str, model: nn.Module, batch: tuple) -> dict[str, torch.Tensor]:
    """loss, log_prob and sample of the eval-mode model, each drawn from the same seed."""
    model.eval()
    out = {}
    with torch.no_grad():
        if hasattr(model, "loss"):
            torch.manual_seed(0)
            out["loss"] = model.loss(*batch)
        if hasattr(model, "log_prob") and variant not in fam.LOG_PROB_REFUSED:
            torch.manual_seed(0)
            out["log_prob"] = model.log_prob(*batch)
        torch.manual_seed(0)
        out["sample"] = model.sample(3)
    return out


def _assert_same_outputs(variant: str, a: nn.Module, b: nn.Module) -> None:
    batch = fam.batch(variant, a)
    out_a, out_b = _outputs(variant, a, batch), _outputs(variant, b, batch)
    for key in out_a:
        assert torch.equal(out_a[key], out_b[key]), f"{key} differs"


# --------------------------------------------------------------------------- the registry itself
def test_every_library_module_imports_and_every_model_is_covered():
    """Every dgm_edu module imports; every public model class with ``sample`` and ``loss`` or
    ``log_prob`` is a registry variant or in UNSHIPPED (or a shared base of one that is)."""
    covered: set[type] = set()
    for variant in fam.VARIANTS:
        covered.add(type(fam.build(variant)))
    failures, missing = [], []
    for info in pkgutil.iter_modules(dgm_edu.__path__):
        name = f"dgm_edu.{info.name}"
        try:
            module = importlib.import_module(name)
        except Exception as err:
            failures.append(f"{name}: {type(err).__name__}: {err}")
            continue
        for attr, cls in vars(module).items():
            if not (
                inspect.isclass(cls)
                and issubclass(cls, nn.Module)
                and cls.__module__ == name
                and not attr.startswith("_")
                and callable(getattr(cls, "sample", None))
                and (
                    callable(getattr(cls, "loss", None)) or callable(getattr(cls, "log_prob", None))
                )
            ):
                continue
            if cls not in covered and not any(issubclass(c, cls) for c in covered):
                missing.append(f"{name}.{attr}")
    assert not failures, f"modules that fail to import: {failures}"
    assert not missing, (
        f"models no contract test covers: {missing}; register a recipe in dgm_edu.weights "
        "(make weights) or add the class to UNSHIPPED in tests/test_contract.py"
    )


def test_every_recipe_has_a_manifest_row():
    """The registry's classes come from the manifest: a recipe without a row would go unseen."""
    shipped = {n.split("@", 1)[0] for n in weights.manifest()}
    assert set(weights.RECIPES) <= shipped, (
        f"recipes with no shipped weights: {sorted(set(weights.RECIPES) - shipped)}; build them "
        "with `make weights NAMES=...` so that the contract tests see their class"
    )
    assert len(fam.REGISTRY) >= 7, sorted(fam.REGISTRY)


# --------------------------------------------------------------------------- loss
WITH_LOSS = [v for v in fam.VARIANTS if fam.has(v, "loss")]


@pytest.mark.parametrize("variant", WITH_LOSS)
def test_loss_is_a_finite_scalar_with_a_gradient_to_every_parameter(variant):
    model = fam.build(variant).train()
    batch = fam.batch(variant, model, n=8)
    torch.manual_seed(0)
    loss = model.loss(*batch)
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0, f"loss is not a scalar: {loss!r}"
    assert torch.isfinite(loss), f"loss is not finite: {loss}"
    loss.backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert params, "a model with a loss has trainable parameters"
    no_grad = [n for n, p in params if p.grad is None]
    assert not no_grad, f"parameters that loss does not reach: {no_grad}"
    bad = [n for n, p in params if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients: {bad}"
    assert any(p.grad.abs().sum() > 0 for _, p in params), "every gradient is zero"


@pytest.mark.parametrize("variant", WITH_LOSS)
def test_loss_stays_finite_over_seeds_and_extreme_images(variant):
    """3 seeds x one Adam step on real, all-0 and all-16 images: finite losses and gradients."""
    real = fam.batch(variant, fam.build(variant), n=8)
    batches = [real]
    if fam.kind(variant) == "digits":  # where a log(0) or 0/0 would show
        batches += [
            (torch.zeros_like(real[0]), *real[1:]),
            (torch.full_like(real[0], LEVELS - 1), *real[1:]),
        ]
    for seed in range(3):
        model = fam.build(variant, seed).train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for i, batch in enumerate(batches):
            loss = model.loss(*batch)
            assert torch.isfinite(loss), (seed, i, loss)
            opt.zero_grad()
            loss.backward()
            for name, p in model.named_parameters():
                assert p.grad is None or torch.isfinite(p.grad).all(), (seed, i, name)
            opt.step()


@pytest.mark.parametrize("variant", WITH_LOSS)
def test_eval_mode_loss_has_no_side_effects(variant):
    """In eval mode ``loss`` is the validation objective: no parameter or buffer changes."""
    model = fam.perturbed(fam.build(variant)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    model.loss(*fam.batch(variant, model))
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert not changed, f"eval-mode loss changed {changed}"


# --------------------------------------------------------------------------- sample
@pytest.mark.parametrize("variant", fam.VARIANTS)
def test_sample_returns_n_items_of_the_kind_and_sample_0_is_empty(variant):
    kind = fam.kind(variant)
    model = fam.build(variant).eval()
    torch.manual_seed(0)
    fam.check_items(model.sample(3), 3, kind, model, "sample(3)")
    empty = model.sample(0)
    fam.check_items(empty, 0, kind, model, "sample(0)")
    assert empty.dtype == model.sample(1).dtype
    k = fam.num_classes(model)
    if k:  # y as an int or an (n,) tensor; y=None (above) samples p(x)
        fam.check_items(model.sample(3, y=k - 1), 3, kind, model, f"sample(3, y={k - 1})")
        ys = torch.tensor([0, 1, k - 1])
        fam.check_items(model.sample(3, y=ys), 3, kind, model, "sample(3, y=tensor)")
        with pytest.raises(ValueError, match=r"y must hold classes in \[0, "):
            model.sample(2, y=torch.tensor([0, k]))
    else:
        with pytest.raises(ValueError, match="y was given but this model is unconditional"):
            model.sample(2, y=0)


# --------------------------------------------------------------------------- log_prob
@pytest.mark.parametrize("variant", [v for v in fam.VARIANTS if fam.has(v, "log_prob")])
def test_log_prob_is_finite_per_item_and_keeps_gradients(variant):
    kind = fam.kind(variant)
    model = fam.build(variant).eval()
    batch = fam.batch(variant, model)
    if variant in fam.LOG_PROB_REFUSED:  # documented: its data has no discrete likelihood
        with pytest.raises(ValueError) as info:
            model.log_prob(*batch)
        assert str(info.value).startswith(fam.LOG_PROB_REFUSED[variant])
        return
    torch.manual_seed(0)
    lp = model.log_prob(*batch)
    assert lp.shape == (len(batch[0]),), f"log_prob shape {tuple(lp.shape)}"
    assert torch.isfinite(lp).all(), f"log_prob not finite: {lp}"
    if kind in ("digits", "ids"):  # the probability of a discrete item: log P(x) <= 0
        assert (lp <= 0).all(), lp
    if any(p.requires_grad for p in model.parameters()):
        assert lp.requires_grad, "log_prob must keep gradients (callers wrap it in no_grad)"


# --------------------------------------------------------------------------- devices
@pytest.mark.parametrize("variant", fam.VARIANTS)
def test_meta_device_and_back(variant):
    reference = fam.perturbed(fam.build(variant)).eval()
    meta_batch = fam.batch(variant, reference, device="meta")

    with torch.device("meta"):  # (1) built with meta as the default device
        model = fam.build(variant)
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    off = [n for n, t in tensors.items() if t.device.type != "meta"]
    assert not off, f"created off the default device: {off}"
    if hasattr(model, "loss"):
        assert model.loss(*meta_batch).device.type == "meta"

    model = fam.build(variant).to("meta")  # (2) moved there: nothing may stay on a fixed device
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    off = [n for n, t in tensors.items() if t.device.type != "meta"]
    assert not off, f"not moved by .to(): {off}"
    stray = [
        f"{mod_name}.{attr}"
        for mod_name, mod in model.named_modules()
        for attr, v in vars(mod).items()
        if isinstance(v, torch.Tensor) and not isinstance(v, nn.Parameter)
    ]
    assert not stray, f"tensors that .to() does not move (register them as buffers): {stray}"
    if hasattr(model, "loss"):
        loss = model.loss(*meta_batch)
        assert loss.device.type == "meta" and loss.dim() == 0
        loss.backward()
        assert all(p.grad is None or p.grad.device.type == "meta" for p in model.parameters())
    if hasattr(model, "log_prob") and variant not in fam.LOG_PROB_REFUSED:
        lp = model.log_prob(*meta_batch)
        assert lp.device.type == "meta" and lp.shape == (len(meta_batch[0]),)
    s = model.sample(3)
    assert s.device.type == "meta" and s.shape[0] == 3

    # (3) and back: materialised on the CPU, its state_dict makes it the reference model again
    model.to_empty(device="cpu")
    load_model_state(model, reference.state_dict())
    _assert_same_outputs(variant, reference, model)


# --------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("variant", fam.VARIANTS)
def test_checkpoint_round_trip_gives_identical_outputs(variant, tmp_path):
    source = fam.perturbed(fam.build(variant, seed=0))
    if hasattr(source, "loss"):  # train-mode state too: warm-up counters, chains, ActNorm init
        source.train()
        torch.manual_seed(0)
        source.loss(*fam.batch(variant, source, n=8))
    source.eval()
    state = {k: v.detach().cpu().contiguous().clone() for k, v in source.state_dict().items()}
    batch = fam.batch(variant, source)
    for how in ("safetensors", "save_checkpoint"):
        fresh = fam.build(variant, seed=123).eval()
        if state:  # the check can fail: a fresh instance gives other numbers before loading
            a, b = _outputs(variant, source, batch), _outputs(variant, fresh, batch)
            assert any(not torch.equal(a[k], b[k]) for k in a), "fresh model already identical"
        if how == "safetensors":  # as the shipped weights are stored and loaded
            save_file(state, str(tmp_path / "m.safetensors"))
            loaded = load_file(str(tmp_path / "m.safetensors"))
        else:
            save_checkpoint(tmp_path / "m.pt", {"model": state})
            loaded = load_checkpoint(tmp_path / "m.pt")["model"]
        load_model_state(fresh, loaded, how)
        for k, v in source.state_dict().items():
            assert torch.equal(v, fresh.state_dict()[k]), (how, k)
        _assert_same_outputs(variant, source, fresh)


# --------------------------------------------------------------------------- bad digits
BAD_DIGITS = {
    "wrong shape": lambda x: x.flatten(1),
    "[0,1] floats": lambda x: x / 16.0,
    "0..255 levels": lambda x: x * 16 - 1,
    "NaN": lambda x: torch.where(x == 0, float("nan"), x.float()),
    "bool dtype": lambda x: x > 8,
    "empty batch": lambda x: x[:0],
    "numpy array": lambda x: x.numpy(),
}
DIGITS_VARIANTS = [
    v for v in fam.VARIANTS if isinstance(fam.PROBES[v], str) or fam.PROBES[v][0] == "digits"
]


@pytest.mark.parametrize("variant", DIGITS_VARIANTS)
def test_digits_models_refuse_bad_digits_with_the_foundations_message(variant):
    fam.kind(variant)
    model = fam.build(variant)
    for case, make in BAD_DIGITS.items():
        bad = make(fam.VAL_X[:4])
        labels = (fam.VAL_Y[: len(bad)],) if fam.num_classes(model) else ()
        with pytest.raises((ValueError, TypeError)) as expected:
            validate_digits(bad)
        for method in ("loss", "log_prob"):
            if hasattr(model, method):
                with pytest.raises(expected.type) as info:
                    getattr(model, method)(bad, *labels)
                assert str(info.value) == str(expected.value), (method, case)


def test_a_family_whose_loss_breaks_fails_the_contract(monkeypatch):
    """The bug this file exists for: a family whose loss raises on every input must FAIL here
    (the old catch-all skipped it)."""
    variant = WITH_LOSS[0]
    cls = type(fam.build(variant))

    def broken(self, *args, **kwargs):
        raise RuntimeError("planted: loss is broken")

    monkeypatch.setattr(cls, "loss", broken)
    try:
        test_loss_is_a_finite_scalar_with_a_gradient_to_every_parameter(variant)
    except BaseException as err:  # noqa: B036 - a pytest skip is a BaseException: catch it too
        assert isinstance(err, RuntimeError) and "planted" in str(err), repr(err)
    else:
        pytest.fail("the contract test passed on a family whose loss raises")
