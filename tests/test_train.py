"""The shared trainer: history values, early stopping, resume, seeds, bf16 autocast, torch.compile.

Every test checks numbers against an independent computation, so each fails on the bug it names.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from dgm_edu import train as train_mod
from dgm_edu.data import digits_loader, load_digits, make_loader
from dgm_edu.mixtures import PixelMixture, PixelMixtureConfig
from dgm_edu.train import (
    CheckpointError,
    TrainConfig,
    fit,
    fit_stages,
    fit_toy,
    load_checkpoint,
    save_checkpoint,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # bit-identical resumes


class MeanModel(nn.Module):
    """loss(x) = mean(x) + 0*w: the epoch loss must be the data mean, whatever the batching."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().mean() + 0.0 * self.w


def _mixture(k: int = 2, seed: int = 0) -> tuple[PixelMixture, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = PixelMixture(PixelMixtureConfig(num_components=k))
    return model, torch.optim.Adam(model.parameters(), lr=0.05)


def _small_loaders(n: int = 300, batch: int = 50):
    x = load_digits("train")[0][:n]
    return make_loader(x, batch_size=batch, shuffle=True), make_loader(
        load_digits("val")[0][:100], batch_size=100, shuffle=False
    )


def test_history_is_the_batch_size_weighted_mean():
    # 10 values, batches of 3, 3, 3, 1: an unweighted mean of batch means would give 5.125 here
    x = torch.arange(10.0).view(10, 1)
    x[-1] = 100.0
    model = MeanModel()
    hist = fit(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        make_loader(x, batch_size=3, shuffle=False),
        make_loader(x, batch_size=4, shuffle=False),
        epochs=2,
        progress=False,
        device="cpu",
    )
    assert hist.train_loss == pytest.approx([x.mean().item()] * 2, rel=1e-6)
    assert hist.val_loss == pytest.approx([x.mean().item()] * 2, rel=1e-6)
    assert hist.epochs_run == 2 and hist.best_epoch == 0  # ties do not move the best epoch
    assert hist.seconds > 0


class TwoStep(MeanModel):
    """A train_step model with two optimizers (the GAN extension point) and an extra log."""

    def __init__(self) -> None:
        super().__init__()
        self.v = nn.Parameter(torch.zeros(()))

    def train_step(self, batch, optimizers):
        (x,) = batch
        for name, p in (("a", self.w), ("b", self.v)):
            optimizers[name].zero_grad()
            ((p - 1.0) ** 2).backward()
            optimizers[name].step()
        m = x.float().mean().item()
        return {"loss": m, "double": 2 * m}


def test_train_step_logs_and_both_optimizers_step():
    x = torch.arange(7.0).view(7, 1)
    model = TwoStep()
    opts = {"a": torch.optim.SGD([model.w], lr=0.25), "b": torch.optim.SGD([model.v], lr=0.5)}
    hist = fit(
        model,
        opts,
        make_loader(x, batch_size=2, shuffle=False),
        epochs=1,
        progress=False,
        device="cpu",
    )
    assert hist.logs["double"] == pytest.approx([2 * x.mean().item()])
    # 4 steps of w <- w - lr * 2 (w - 1): 1 - w_n = (1 - 2 lr)^n
    assert model.w.item() == pytest.approx(1 - 0.5**4)
    assert model.v.item() == pytest.approx(1.0)  # lr 0.5 lands on 1 in one step
    with pytest.raises(
        ValueError,
        match=r"has no train_step\(batch, optimizers\), so fit expects "
        r"exactly one optimizer, got 2",
    ):
        fit(MeanModel(), opts, make_loader(x, batch_size=2), epochs=1, progress=False)


class Scripted(nn.Module):
    """Val loss follows a script; the weight counts the training steps taken."""

    def __init__(self, script: list[float]) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.script, self.evals = script, 0

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return -self.w  # SGD lr 1: w goes up by 1 per step
        self.evals += 1
        return torch.tensor(self.script[self.evals - 1])


def test_early_stopping_restores_the_best_epoch():
    x = torch.zeros(4, 1)
    model = Scripted([5.0, 4.0, 3.0, 3.5, 3.25, 1.0, 0.5])
    hist = fit(
        model,
        torch.optim.SGD(model.parameters(), lr=1.0),
        make_loader(x, batch_size=4, shuffle=False),
        make_loader(x, batch_size=4),
        epochs=7,
        patience=2,
        progress=False,
        device="cpu",
    )
    assert hist.val_loss == [5.0, 4.0, 3.0, 3.5, 3.25]  # stops after 2 epochs without progress
    assert hist.best_epoch == 2 and hist.best_val == 3.0
    assert model.w.item() == 3.0  # the weights after epoch 2 (3 steps), not after epoch 4 (5)
    model2 = Scripted([5.0, 4.0, 3.0, 3.5, 3.25])
    fit(
        model2,
        torch.optim.SGD(model2.parameters(), lr=1.0),
        make_loader(x, batch_size=4),
        make_loader(x, batch_size=4),
        epochs=5,
        restore_best=False,
        progress=False,
    )
    assert model2.w.item() == 5.0


def test_seed_repeatability():
    def run(seed):
        model, opt = _mixture()
        hist = fit(model, opt, *_small_loaders(), epochs=2, seed=seed, progress=False)
        return model.pixel_logits.detach().clone(), hist.train_loss

    (a, la), (b, lb), (c, _) = run(0), run(0), run(1)
    assert torch.equal(a, b) and la == lb
    assert not torch.equal(a, c)  # the seed drives the shuffling, so another seed differs


@pytest.mark.parametrize("ema", [None, 0.9])
def test_resume_is_bit_identical_and_finished_checkpoint_trains_no_more(tmp_path, ema):
    def run(epochs, ckpt=None):
        model, opt = _mixture()
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
        hist = fit(
            model,
            opt,
            *_small_loaders(),
            epochs=epochs,
            patience=10,
            checkpoint=ckpt,
            scheduler=sched,
            progress=False,
            ema=ema,
        )
        return model, hist, opt

    ref, ref_hist, ref_opt = run(5)
    ckpt = tmp_path / "run.pt"
    run(2, ckpt)  # an "interrupted" run: 2 of 5 epochs
    assert load_checkpoint(ckpt)["epoch"] == 2
    resumed, hist, opt = run(5, ckpt)
    for k, v in ref.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert hist.train_loss == ref_hist.train_loss and hist.val_loss == ref_hist.val_loss
    assert opt.param_groups[0]["lr"] == ref_opt.param_groups[0]["lr"]  # the scheduler resumed
    # the JSON history beside the checkpoint holds the same numbers
    import json

    assert json.loads(ckpt.with_suffix(".json").read_text())["train_loss"] == hist.train_loss
    again, hist2, _ = run(5, ckpt)  # a finished checkpoint: 0 more epochs, same weights
    assert hist2.epochs_run == 5 and torch.equal(again.pixel_logits, ref.pixel_logits)


class Drift(nn.Module):
    """loss = c·w: SGD moves w by −lr·c every step, so w_t = w_0 − t·lr·c exactly."""

    c = torch.tensor([1.0, -2.0, 0.5])

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.3, 0.1, -0.2]))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        return (self.w * self.c).sum() + 0.0 * x.sum()


def test_ema_validates_keeps_and_returns_the_average_of_the_steps():
    """θ̄_1 = θ_1, θ̄_t = d θ̄_{t−1} + (1 − d) θ_t, computed here in float64 from the closed-form
    θ_t: the validation losses are those of θ̄ after each epoch, the weights returned θ̄."""
    d, lr, steps_per_epoch, epochs = 0.8, 0.1, 3, 4
    w0 = Drift().w.detach().double()
    ema, per_epoch = None, []
    for t in range(1, steps_per_epoch * epochs + 1):
        w_t = w0 - t * lr * Drift.c.double()
        ema = w_t if ema is None else d * ema + (1 - d) * w_t
        if t % steps_per_epoch == 0:
            per_epoch.append(ema.clone())
    x = torch.zeros(6, 1)
    for val in (None, make_loader(x, batch_size=6)):
        model = Drift()
        hist = fit(
            model, torch.optim.SGD(model.parameters(), lr=lr), make_loader(x, batch_size=2),
            val, epochs=epochs, ema=d, progress=False, device="cpu",
        )  # fmt: skip
        assert torch.allclose(model.w.double(), per_epoch[-1], atol=1e-6)  # not θ_T
        assert not torch.allclose(model.w.double(), w0 - 12 * lr * Drift.c.double(), atol=1e-3)
        if val is not None:  # c·θ̄ after each epoch, θ̄ of the last (best) epoch kept
            expected = [float((e * Drift.c.double()).sum()) for e in per_epoch]
            assert hist.val_loss == pytest.approx(expected, abs=1e-6)
            assert hist.best_epoch == epochs - 1
            raw = [float(((w0 - (e + 1) * steps_per_epoch * lr * Drift.c.double()) * Drift.c).sum())
                   for e in range(epochs)]  # fmt: skip
            assert hist.logs["val_loss_raw"] == pytest.approx(raw, abs=1e-6)  # c·θ_t, logged
        else:
            assert "val_loss_raw" not in hist.logs


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"model": {"w": torch.arange(3.0)}})
    before = path.read_bytes()

    def crash(obj, f, *a, **k):  # a process killed mid-write leaves half a file behind
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(train_mod.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"model": {"w": torch.zeros(3)}})
    monkeypatch.undo()
    assert path.read_bytes() == before  # the old checkpoint is untouched ...
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.arange(3.0))
    assert list(tmp_path.iterdir()) == [path]  # ... and no temporary file is left behind


def test_bf16_autocast_on_cpu_is_finite_and_close_to_fp32():
    def run(amp):
        model, opt = _mixture(k=3)
        hist = fit(model, opt, *_small_loaders(), epochs=2, amp=amp, progress=False, device="cpu")
        return hist

    fp32, bf16 = run(None), run("bf16")
    losses = bf16.train_loss + bf16.val_loss
    assert all(math.isfinite(v) for v in losses)
    ref = fp32.train_loss + fp32.val_loss
    rel = max(abs(a - b) / abs(b) for a, b in zip(losses, ref))
    assert 0 < rel < 1e-2, rel  # > 0: autocast really ran the einsum in bf16
    with pytest.raises(ValueError, match=r"Unknown amp 'fp8': expected None, 'bf16' or 'fp16'"):
        run("fp8")


def _compile_run(**kw):
    model, opt = _mixture()
    hist = fit(model, opt, *_small_loaders(n=100), epochs=2, progress=False, device="cpu", **kw)
    return model, hist


def test_compile_is_off_by_default_and_matches_eager():
    assert TrainConfig().compile is False
    eager, h_eager = _compile_run()
    # aot_eager runs the whole torch.compile front end (dynamo capture + AOTAutograd's joint
    # forward/backward graph); inductor's C++ code generation takes minutes on a shared CPU.
    torch._dynamo.reset()
    compiled, h_comp = _compile_run(compile="aot_eager")
    assert h_comp.train_loss == pytest.approx(h_eager.train_loss, rel=1e-5)
    torch.testing.assert_close(compiled.pixel_logits, eager.pixel_logits, rtol=1e-5, atol=1e-5)


def test_compile_unavailable_falls_back_to_eager(monkeypatch):
    eager, h_eager = _compile_run()

    def broken(*a, **k):
        raise RuntimeError("no compiler on this platform")

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.warns(UserWarning, match="torch.compile is unavailable"):
        model, hist = _compile_run(compile=True)
    assert hist.train_loss == h_eager.train_loss

    class FailsOnCall:  # compiles lazily, then fails on the first batch (a missing C compiler)
        def __init__(self, module, backend):
            pass

        def __call__(self, *batch):
            raise RuntimeError("backend failed")

    monkeypatch.setattr(torch, "compile", FailsOnCall)
    with pytest.warns(UserWarning, match=r"torch.compile failed \(RuntimeError: backend failed\)"):
        model, hist = _compile_run(compile=True)
    assert hist.train_loss == h_eager.train_loss
    monkeypatch.delattr(torch, "compile")
    with pytest.warns(UserWarning, match="torch.compile is not available"):
        _compile_run(compile=True)


def test_non_finite_loss_stops_with_advice():
    class Explodes(MeanModel):
        def loss(self, x):
            return super().loss(x) * float("inf")

    model = Explodes()
    with pytest.raises(
        FloatingPointError,
        match=r"Loss became inf at epoch 0 step 0: lower the "
        r"learning rate, set grad_clip, or check the input",
    ):
        fit(
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            make_loader(torch.ones(4, 1), batch_size=2),
            epochs=1,
            progress=False,
        )


def test_grad_clip_bounds_the_step():
    class Steep(MeanModel):
        def loss(self, x):
            return 1000.0 * self.w + 0 * x.float().mean()

    model = Steep()
    fit(
        model,
        torch.optim.SGD(model.parameters(), lr=1.0),
        make_loader(torch.ones(2, 1), batch_size=2),
        epochs=1,
        grad_clip=0.5,
        progress=False,
    )
    assert model.w.item() == pytest.approx(-0.5)  # the gradient 1000 clipped to norm 0.5


def test_digits_loader_yields_raw_digits():
    (x,) = next(iter(digits_loader("val", 350)))
    ref, _ = load_digits("val")
    assert torch.equal(x, ref)  # val is not shuffled, and the levels are raw 0..16 ints
    assert x.dtype == torch.int64 and int(x.max()) == 16 and int(x.min()) == 0


# --------------------------------------------------------------------------- arguments checked
def _fit_mean(**kw):
    model = MeanModel()
    loader = kw.pop("loader", make_loader(torch.ones(4, 1), batch_size=2))
    opt = kw.pop("opt", torch.optim.SGD(model.parameters(), lr=0.1))
    return fit(model, opt, loader, progress=False, device="cpu", **kw)


@pytest.mark.parametrize(
    "kw, err, message",
    [
        ({"grad_clip": -1.0}, ValueError, "grad_clip must be a finite number > 0, got -1.0"),
        ({"grad_clip": 0}, ValueError, "grad_clip must be a finite number > 0, got 0.0"),
        ({"grad_clip": math.nan}, ValueError, "grad_clip must be a finite number > 0, got nan"),
        ({"grad_clip": "1"}, TypeError, "grad_clip must be a real number, got '1' (str)"),
        ({"patience": 0}, ValueError, "patience must be an int >= 1, got 0"),
        ({"patience": -2}, ValueError, "patience must be an int >= 1, got -2"),
        ({"patience": 1.5}, TypeError, "patience must be an int, got 1.5 (float)"),
        ({"epochs": 2.5}, ValueError, "epochs must be a whole number >= 0, got 2.5"),
        ({"epochs": math.inf}, ValueError, "epochs must be a whole number >= 0, got inf"),
        ({"epochs": -1}, ValueError, "epochs must be an int >= 0, got -1"),
        ({"epochs": True}, TypeError, "epochs must be an int, got True (bool)"),
        ({"epochs": "3"}, TypeError, "epochs must be an int, got '3' (str)"),
        ({"amp": "fp8"}, ValueError, "Unknown amp 'fp8': expected None, 'bf16' or 'fp16'"),
        ({"ema": 1.0}, ValueError, "ema must be a decay in (0, 1), e.g. 0.999, got 1.0"),
        ({"ema": 0}, ValueError, "ema must be a decay in (0, 1), e.g. 0.999, got 0.0"),
        ({"ema": -0.5}, ValueError, "ema must be a decay in (0, 1), e.g. 0.999, got -0.5"),
        ({"ema": math.nan}, ValueError, "ema must be a finite number, got nan"),
        ({"ema": "0.9"}, TypeError, "ema must be a real number, got '0.9' (str)"),
    ],
)
def test_fit_settings_are_checked_where_they_enter(kw, err, message):
    with pytest.raises(err) as info:
        _fit_mean(**{"epochs": 1, **kw})
    assert str(info.value) == message
    with pytest.raises(err) as info:  # the same check guards a TrainConfig built by hand
        TrainConfig(**kw)
    assert str(info.value) == message


def test_whole_float_epochs_and_positive_grad_clip_are_accepted():
    assert _fit_mean(epochs=3.0).epochs_run == 3  # a float holding a whole number is taken
    assert TrainConfig(epochs=2.0).epochs == 2 and isinstance(TrainConfig(epochs=2.0).epochs, int)
    assert TrainConfig(grad_clip=1).grad_clip == 1.0 and TrainConfig(patience=1).patience == 1


@pytest.mark.parametrize(
    "batches, loader, message",
    [
        ([{"x": torch.ones(2, 1)}], "train_loader", "got dict"),
        ([torch.ones(2, 1).numpy()], "train_loader", "got ndarray"),
        ([[torch.ones(2, 1), torch.ones(2).numpy()]], "train_loader", "got a list holding ndarray"),
        ([()], "train_loader", "got an empty tuple"),
        ([3.0], "train_loader", "got float"),
    ],
)
def test_batches_of_another_kind_are_refused_by_name(batches, loader, message):
    for epochs in (1, 0):  # a list of batches is checked before training, even for 0 epochs
        with pytest.raises(TypeError) as info:
            _fit_mean(epochs=epochs, loader=batches)
        assert (
            str(info.value) == f"{loader} must yield tensors or tuples/lists of tensors, {message}"
        )
    model = MeanModel()
    with pytest.raises(TypeError) as info:  # the validation loader is checked the same way
        fit(
            model, torch.optim.SGD(model.parameters(), lr=0.1), [torch.ones(2, 1)], batches,
            epochs=1, progress=False,
        )  # fmt: skip
    assert str(info.value) == f"val_loader must yield tensors or tuples/lists of tensors, {message}"


def test_a_model_with_train_step_needs_one_optimizer_per_player():
    from dgm_edu.gan import GAN, RING_CONFIG, make_optimizers

    gan = GAN(RING_CONFIG)
    loader = make_loader(torch.randn(8, 2), batch_size=4)
    with pytest.raises(TypeError) as info:
        fit(gan, torch.optim.Adam(gan.parameters()), loader, epochs=1, progress=False)
    assert str(info.value) == (
        "optimizer must be a dict of optimizers, one per player ('generator', 'discriminator'), "
        "for GAN.train_step; got a single Adam"
    )
    opts = make_optimizers(gan)
    with pytest.raises(ValueError) as info:
        fit(gan, {"g": opts["generator"]}, loader, epochs=1, progress=False)
    assert str(info.value) == (
        "optimizer must hold one optimizer per player of GAN: keys ['discriminator', "
        "'generator'], got ['g']"
    )
    with pytest.raises(TypeError) as info:
        fit(gan, [opts["generator"]], loader, epochs=1, progress=False)
    assert (
        str(info.value) == "optimizer must be a torch.optim.Optimizer or a dict of them, got list"
    )
    assert fit(gan, opts, loader, epochs=1, progress=False).epochs_run == 1  # the right dict


# --------------------------------------------------------------------------- validation with grad
class Energy(nn.Module):
    """E(x) = w Σ_d x_d² / 2, so ∇_x E = w x and loss(x) = mean_b ‖∇_x E‖² = w² mean_b Σ_d x_d².

    Train mode takes ∇_x E with ``autograd.grad(create_graph=True)``; eval mode the way a Langevin
    sampler often does, ``E.sum().backward()`` and then ``x.grad``, which would also add to w.grad
    if the parameters were not frozen.
    """

    needs_input_grad = True

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.5))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().clone().requires_grad_(True)
        energy = (self.w * x.pow(2).sum(1) / 2).sum()
        if self.training:
            (score,) = torch.autograd.grad(energy, x, create_graph=True)
        else:
            energy.backward()
            score = x.grad
        return score.pow(2).sum(1).mean()


def test_validation_with_input_gradients_when_the_model_asks():
    x = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
    m = x.pow(2).sum(1).mean().item()  # mean_b Σ_d x_d² = 3
    model, lr = Energy(), 0.01
    hist = fit(
        model, torch.optim.SGD(model.parameters(), lr=lr), make_loader(x, batch_size=2),
        make_loader(x, batch_size=2), epochs=3, restore_best=False, progress=False, device="cpu",
    )  # fmt: skip
    w, vals = 0.5, []
    for _ in range(3):  # one step per epoch: dL/dw = 2 w m, so w ← w (1 − 2 lr m)
        w_before, w = w, w * (1 - 2 * lr * m)
        vals.append(w * w * m)  # validated after the step
    assert hist.val_loss == pytest.approx(vals, rel=1e-6)
    assert model.w.item() == pytest.approx(w, rel=1e-6)
    # the parameter's grad is the last training step's, 2 w m: validation added nothing to it
    assert model.w.grad.item() == pytest.approx(2 * w_before * m, rel=1e-6)
    assert model.w.requires_grad  # unfrozen after validation

    class NoFlag(Energy):
        needs_input_grad = False

    plain = NoFlag()  # the default: validation under no_grad, where backward cannot run
    with pytest.raises(RuntimeError, match="does not require grad"):
        fit(
            plain, torch.optim.SGD(plain.parameters(), lr=lr), make_loader(x, batch_size=2),
            make_loader(x, batch_size=2), epochs=1, progress=False,
        )  # fmt: skip


# --------------------------------------------------------------------------- checkpoints know
@dataclass
class TinyConfig:
    schedule: str = "linear"  # a setting that changes no shape, like a diffusion schedule


class Tiny(nn.Module):
    """loss = mean (x − w)²; records the learning rate of every training batch in ``lrs``."""

    def __init__(self, config: TinyConfig | None = None) -> None:
        super().__init__()
        self.config = config or TinyConfig()
        self.w = nn.Parameter(torch.zeros(()))
        self.opt: torch.optim.Optimizer | None = None
        self.lrs: list[float] = []
        self.calls = 0

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
            if self.opt is not None:
                self.lrs.append(self.opt.param_groups[0]["lr"])
        return (x.float() - self.w).pow(2).mean()


def _tiny_run(path, *, epochs=2, schedule="linear", lr=0.1, wd=0.0, cosine=None, **kw):
    """One batch per epoch, so each epoch is one step at the lr the scheduler set."""
    model = Tiny(TinyConfig(schedule))
    model.opt = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=wd)
    sched = None
    if cosine is not None:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(model.opt, T_max=cosine)
    hist = fit(
        model, model.opt, make_loader(torch.full((4, 1), 3.0), batch_size=4), epochs=epochs,
        scheduler=sched, checkpoint=path, progress=False, device="cpu", **kw,
    )  # fmt: skip
    return model, hist


def test_resuming_with_other_settings_names_each_difference(tmp_path, monkeypatch):
    path = tmp_path / "run.pt"
    monkeypatch.setenv("DGM_EDU_MODE", "full")
    _tiny_run(path, epochs=2, cosine=2)
    monkeypatch.setenv("DGM_EDU_MODE", "fast")
    with pytest.raises(CheckpointError) as info:
        _tiny_run(path, epochs=2, schedule="cosine", lr=0.2, wd=0.01, grad_clip=1.0, cosine=2)
    assert str(info.value) == (
        f"Checkpoint {path} was written by a run with other settings: "
        "config.schedule: checkpoint 'linear', now 'cosine'; mode: checkpoint 'full', now 'fast'; "
        "grad_clip: checkpoint None, now 1.0; optimizer.lr: checkpoint 0.1, now 0.2; "
        "optimizer.weight_decay: checkpoint 0.0, now 0.01; expected the same model config and "
        "training settings to resume (an extension may only raise epochs): delete the file or "
        "pass resume=False to train afresh"
    )
    monkeypatch.setenv("DGM_EDU_MODE", "full")
    with pytest.raises(CheckpointError) as info:  # fewer epochs, no scheduler
        _tiny_run(path, epochs=1, patience=3, amp="bf16")
    assert str(info.value) == (
        f"Checkpoint {path} was written by a run with other settings: epochs: checkpoint 2, "
        "now 1; amp: checkpoint None, now 'bf16'; patience: checkpoint None, now 3; scheduler: "
        "checkpoint {'class': 'torch.optim.lr_scheduler.CosineAnnealingLR', 'T_max': 2, "
        "'eta_min': 0.0}, now None; expected the same model config and training settings to "
        "resume (an extension may only raise epochs): delete the file or pass resume=False to "
        "train afresh"
    )
    with pytest.raises(CheckpointError) as info:  # fewer epochs alone: not an extension
        _tiny_run(path, epochs=1, cosine=2)
    assert str(info.value).startswith(
        f"Checkpoint {path} was written by a run with other settings: epochs: checkpoint 2, "
        "now 1; expected"
    )
    model, _ = _tiny_run(path, epochs=2, schedule="cosine", resume=False)  # afresh: allowed
    assert model.calls == 2
    assert load_checkpoint(path)["settings"]["config"] == {"schedule": "cosine"}


def test_a_refused_resume_changes_nothing(tmp_path):
    path = tmp_path / "run.pt"
    _tiny_run(path, epochs=1)
    model = Tiny(TinyConfig("cosine"))
    before = model.w.detach().clone()
    with pytest.raises(CheckpointError, match="config.schedule: checkpoint 'linear'"):
        fit(
            model, torch.optim.SGD(model.parameters(), lr=0.1),
            make_loader(torch.ones(4, 1), batch_size=4), epochs=1, checkpoint=path,
            progress=False,
        )  # fmt: skip
    assert torch.equal(model.w, before)  # checked before anything was loaded
    assert not (tmp_path / "run.pt.lock").exists()  # and the lock was given back


def _cosine(lr0: float, t: int, big_t: int) -> float:
    return lr0 * (1 + math.cos(math.pi * t / big_t)) / 2  # η_min = 0


def test_extending_epochs_rebuilds_a_cosine_schedule_that_never_climbs(tmp_path):
    path = tmp_path / "run.pt"
    first, _ = _tiny_run(path, epochs=3, cosine=3)
    assert first.lrs == pytest.approx([_cosine(0.1, t, 3) for t in range(3)])
    more, hist = _tiny_run(path, epochs=6, cosine=6)  # a finished run, extended
    assert more.lrs == pytest.approx([0.0] * 3, abs=1e-12)  # at η_min it stays there
    assert hist.epochs_run == 6 and load_checkpoint(path)["settings"]["scheduler"]["T_max"] == 6

    class Stop(Exception):
        pass

    part = tmp_path / "part.pt"  # a run of 4 epochs interrupted after 2, then extended to 8
    model = Tiny()
    model.opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(model.opt, T_max=4)

    class Interrupt(list):
        def __iter__(self):
            if model.calls == 2:
                raise Stop
            return super().__iter__()

    with pytest.raises(Stop):
        fit(
            model, model.opt, Interrupt([torch.full((4, 1), 3.0)]), epochs=4, scheduler=sched,
            checkpoint=part, progress=False,
        )  # fmt: skip
    lr2 = _cosine(0.1, 2, 4)
    resumed, _ = _tiny_run(part, epochs=8, cosine=8)
    # lr_t = lr_2 (1 + cos(π t/8)) / (1 + cos(π 2/8)) for t = 2..7: from lr_2 down to 0 at t = 8
    expected = [
        lr2 * (1 + math.cos(math.pi * t / 8)) / (1 + math.cos(math.pi * 2 / 8)) for t in range(2, 8)
    ]
    assert resumed.lrs == pytest.approx(expected, rel=1e-9)
    lrs = first.lrs + more.lrs, [lr2] + resumed.lrs
    for seq in lrs:
        assert all(b <= a + 1e-15 for a, b in zip(seq, seq[1:])), seq  # never increases


def test_an_early_stopped_run_stays_stopped_when_extended(tmp_path):
    path = tmp_path / "run.pt"
    x = torch.zeros(4, 1)
    model = Scripted([1.0, 2.0, 3.0])
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    loader = make_loader(x, batch_size=4)
    h = fit(model, opt, loader, loader, epochs=5, patience=2, checkpoint=path, progress=False)
    assert h.epochs_run == 3
    model = Scripted([])  # any further epoch would fail: its script is empty
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    h = fit(model, opt, loader, loader, epochs=9, patience=2, checkpoint=path, progress=False)
    assert h.epochs_run == 3 and h.best_epoch == 0 and model.w.item() == 1.0  # best restored


def test_the_digest_is_mandatory_and_the_payload_a_dict(tmp_path):
    path = tmp_path / "run.pt"
    _tiny_run(path, epochs=1)
    state = torch.load(path, weights_only=True)
    del state["sha256"]  # a file without its seal, whose weights were then changed
    state["model"]["w"] = torch.tensor(42.0)
    torch.save(state, path)
    message = (
        f"Checkpoint {path} has no sha256 digest: expected a file written by "
        "dgm_edu.train.save_checkpoint, which seals every checkpoint (not written by "
        "dgm_edu, or its digest was removed)"
    )
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == message
    with pytest.raises(CheckpointError) as info:  # fit refuses to resume from it
        _tiny_run(path, epochs=2)
    assert str(info.value) == message
    bare = tmp_path / "bare.pt"
    torch.save(torch.zeros(3), bare)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(bare)
    assert str(info.value) == (
        f"Checkpoint {bare} holds a Tensor, not a dict: expected a file written by "
        "dgm_edu.train.save_checkpoint (it was not written by dgm_edu)"
    )
    with pytest.raises(TypeError, match="payload must be a dict of state_dicts, got Tensor"):
        save_checkpoint(bare, torch.zeros(3))


def test_a_checkpoint_written_during_a_write_gets_its_own_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    real_save, nested = torch.save, []

    def save_twice(obj, f, *a, **k):  # another writer of the same path, half-way through ours
        if not nested:
            nested.append(1)
            save_checkpoint(path, {"model": {"w": torch.ones(2)}})
        real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save_twice)
    save_checkpoint(path, {"model": {"w": torch.zeros(2)}})  # a fixed .tmp name would collide
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.zeros(2))  # the last rename
    assert list(tmp_path.iterdir()) == [path]


def test_two_runs_on_one_path_fail_clearly_and_a_stale_lock_is_taken_over(tmp_path):
    import socket
    import subprocess
    import sys

    path = tmp_path / "run.pt"
    lock = tmp_path / "run.pt.lock"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(f"{other.pid} {socket.gethostname()}\n")  # a live run holds the path
        with pytest.raises(CheckpointError) as info:
            _tiny_run(path, epochs=1)
        assert str(info.value) == (
            f"Checkpoint {path} is in use: another run (pid {other.pid}) is training into "
            f"{path}; expected one run per checkpoint (wait for it to finish or pass another "
            f"path; if no such run exists, delete {lock})"
        )
        assert not path.exists()  # refused before training
    finally:
        other.kill()
        other.wait()
    model, hist = _tiny_run(path, epochs=1)  # its process is gone: the stale lock is taken over
    assert hist.epochs_run == 1 and not lock.exists()  # and released at the end

    import threading

    started, release = threading.Event(), threading.Event()

    class Waits(list):  # the first run trains slowly: it holds the lock meanwhile
        def __iter__(self):
            started.set()
            release.wait(30)
            return super().__iter__()

    first = Tiny()
    opt = torch.optim.SGD(first.parameters(), lr=0.1)
    data = Waits([torch.ones(4, 1)])
    worker = threading.Thread(
        target=fit, args=(first, opt, data),
        kwargs={"epochs": 1, "checkpoint": tmp_path / "two.pt", "progress": False},
    )  # fmt: skip
    worker.start()
    try:
        assert started.wait(30)
        with pytest.raises(CheckpointError, match=rf"another run \(pid {os.getpid()}\) is"):
            _tiny_run(tmp_path / "two.pt", epochs=1)
    finally:
        release.set()
        worker.join()
    assert load_checkpoint(tmp_path / "two.pt")["epoch"] == 1  # the first run was unharmed


def test_checkpoint_paths_are_checked_before_the_first_epoch(tmp_path, monkeypatch):
    model = Tiny()

    def run(path):
        return fit(
            model, torch.optim.SGD(model.parameters(), lr=0.1),
            make_loader(torch.ones(4, 1), batch_size=4), epochs=1, checkpoint=path,
            progress=False,
        )  # fmt: skip

    with pytest.raises(ValueError) as info:  # the history would overwrite it
        run(tmp_path / "run.json")
    assert str(info.value) == (
        f"checkpoint must not end in '.json' (fit writes the history beside it as run.json), "
        f"got '{tmp_path / 'run.json'}'; expected e.g. '{tmp_path / 'run.pt'}'"
    )
    with pytest.raises(IsADirectoryError) as info:
        run(tmp_path)
    assert str(info.value) == f"Checkpoint {tmp_path} is a directory: expected a checkpoint file"
    with pytest.raises(IsADirectoryError) as info:
        load_checkpoint(tmp_path)
    assert str(info.value) == f"Checkpoint {tmp_path} is a directory: expected a checkpoint file"

    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o555)
    if os.access(locked, os.W_OK):  # root ignores the mode bits: refuse as the kernel would
        real_open = os.open

        def read_only(p, flags, *a):
            if str(p).startswith(str(locked)) and flags & os.O_CREAT:
                raise PermissionError(13, "Permission denied", str(p))
            return real_open(p, flags, *a)

        monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(PermissionError) as info:
        run(locked / "run.pt")
    assert str(info.value) == (
        f"Cannot write checkpoint {locked / 'run.pt'}: the directory {locked} is not writable "
        "(Permission denied); expected a writable directory (checked before training starts)"
    )
    assert model.calls == 0  # not one epoch was trained
    locked.chmod(0o755)


# --------------------------------------------------------------------------- toy and staged fits
def test_fit_toy_is_the_fit_it_stands_for(tmp_path):
    from dgm_edu.data import toy_2d
    from dgm_edu.mixtures import GaussianMixture

    def gmm():
        torch.manual_seed(0)
        return GaussianMixture()

    toy = gmm()
    hist = fit_toy(
        toy, "ring8", n=512, val=256, steps=5, batch_size=128, lr=0.05, schedule="cosine",
        seed=3, restore_best=False, progress=False,
    )  # fmt: skip
    # by hand: 512 points of seed 3, 256 validation points of seed 4, ⌈5 / 4⌉ = 2 epochs of Adam
    ref = gmm()
    opt = torch.optim.Adam(ref.parameters(), lr=0.05)
    val = toy_2d("ring8", 256, seed=4)
    ref_hist = fit(
        ref, opt, make_loader(toy_2d("ring8", 512, seed=3), batch_size=128),
        make_loader(val, batch_size=256, shuffle=False), epochs=2,
        scheduler=torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=2), seed=3,
        restore_best=False, progress=False,
    )  # fmt: skip
    assert hist.epochs_run == 2 and hist.train_loss == ref_hist.train_loss
    for k, v in ref.state_dict().items():
        assert torch.equal(v, toy.state_dict()[k]), k
    with torch.no_grad():
        toy.eval()
        assert hist.val_loss[-1] == pytest.approx(toy.loss(val).item(), rel=1e-6)

    points = toy_2d("moons", 300, seed=1)  # a tensor of points, and a checkpoint that resumes
    h1 = fit_toy(
        gmm(), points, epochs=2, batch_size=100, checkpoint=tmp_path / "t.pt", progress=False
    )
    h2 = fit_toy(
        gmm(), points, epochs=2, batch_size=100, checkpoint=tmp_path / "t.pt", progress=False
    )
    assert h1.train_loss == h2.train_loss and h2.epochs_run == 2


def test_fit_toy_refuses_what_it_cannot_use():
    from dgm_edu.gan import GAN, RING_CONFIG, make_optimizers
    from dgm_edu.mixtures import GaussianMixture

    with pytest.raises(ValueError, match=r"fit_toy needs exactly one of epochs and steps, got"):
        fit_toy(GaussianMixture(), "ring8", epochs=1, steps=3, progress=False)
    with pytest.raises(TypeError) as info:
        fit_toy(GaussianMixture(), torch.zeros(5), epochs=1, progress=False)
    assert (
        str(info.value) == "data must be a toy name or an (N, D) float tensor of points, got (5,)"
    )
    with pytest.raises(
        TypeError, match=r"val must be a tensor of points when data is a tensor, got 9"
    ):
        fit_toy(GaussianMixture(), torch.zeros(5, 2), val=9, epochs=1, progress=False)
    with pytest.raises(TypeError, match=r"epochs must be an int, got '2' \(str\)"):
        fit_toy(GaussianMixture(), "ring8", n=64, epochs="2", progress=False)
    with pytest.raises(ValueError, match=r"schedule must be None or 'cosine', got 'step'"):
        fit_toy(GaussianMixture(), "ring8", n=64, epochs=1, schedule="step", progress=False)
    gan = GAN(RING_CONFIG)
    with pytest.raises(TypeError, match=r"one per player \('generator', 'discriminator'\)"):
        fit_toy(gan, "ring8", n=64, epochs=1, progress=False)  # a GAN brings its own dict
    hist = fit_toy(
        gan, "ring8", n=64, val=32, epochs=1, optimizer=make_optimizers(gan), progress=False
    )
    assert hist.epochs_run == 1 and set(hist.logs) >= {"g_loss", "d_loss"}


class _Counted(list):
    """A loader (a list of batches) that counts the epochs that iterate it."""

    epochs = 0

    def __iter__(self):
        self.epochs += 1
        return super().__iter__()


def _staged_recipe(calls: list[int]):
    """``make(epochs, checkpoint)``: appends the number of epochs it trained to ``calls``."""

    def make(*, epochs: int, checkpoint):
        model, opt = _mixture()
        loader = _Counted(load_digits("train")[0][:100].split(50))
        hist = fit(model, opt, loader, epochs=epochs, checkpoint=checkpoint, progress=False)
        calls.append(loader.epochs)
        return model, hist

    return make


def test_fit_stages_ends_with_the_weights_of_one_uninterrupted_run(tmp_path):
    calls: list[int] = []
    stages = fit_stages(_staged_recipe(calls), [1, 3], checkpoint=tmp_path / "run.pt")
    assert [s for s, _, _ in stages] == [1, 3]
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["run-e1.pt", "run-e3.pt"]
    assert [load_checkpoint(tmp_path / f"run-e{s}.pt")["epoch"] for s in (1, 3)] == [1, 3]
    assert [h.epochs_run for _, _, h in stages] == [1, 3] and calls == [1, 2]  # e3 continued e1
    for stop, model, hist in stages:  # each stage is a run of `stop` epochs, bit for bit
        ref, ref_hist = _staged_recipe([])(epochs=stop, checkpoint=None)
        assert torch.equal(model.pixel_logits, ref.pixel_logits), stop
        assert hist.train_loss == ref_hist.train_loss
    assert stages[0][1] is not stages[1][1]
    assert not torch.equal(stages[0][1].pixel_logits, stages[1][1].pixel_logits)
    again = fit_stages(_staged_recipe(calls), [1, 3], checkpoint=tmp_path / "run.pt")
    assert calls[2:] == [0, 0]  # a re-run reloads every finished stage: nothing is trained
    assert torch.equal(again[1][1].pixel_logits, stages[1][1].pixel_logits)
    shared, opt = _mixture()  # a recipe that returns one model object, trained on in place

    def same(*, epochs, checkpoint):
        loader = load_digits("train")[0][:100].split(50)
        return shared, fit(
            shared, opt, list(loader), epochs=epochs, checkpoint=checkpoint, progress=False
        )

    inplace = fit_stages(same, [1, 3], checkpoint=tmp_path / "same.pt")
    assert torch.equal(inplace[0][1].pixel_logits, stages[0][1].pixel_logits)  # a copy at stage 1
    assert torch.equal(inplace[1][1].pixel_logits, stages[1][1].pixel_logits)
    temp = fit_stages(_staged_recipe([]), [1, 3], checkpoint=None)  # stage files in a temp dir
    assert torch.equal(temp[1][1].pixel_logits, stages[1][1].pixel_logits)
    with pytest.raises(
        ValueError, match=r"stops must be a non-empty list of increasing epoch counts, got \[3, 1\]"
    ):
        fit_stages(_staged_recipe([]), [3, 1], checkpoint=None)
