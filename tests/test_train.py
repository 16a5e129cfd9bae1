"""The shared trainer: history values, early stopping, resume, seeds, bf16 autocast, torch.compile.

Every test checks numbers against an independent computation, so each fails on the bug it names.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dgm_edu import train as train_mod
from dgm_edu.data import digits_loader, load_digits, make_loader
from dgm_edu.mixtures import PixelMixture, PixelMixtureConfig
from dgm_edu.train import TrainConfig, fit, load_checkpoint, save_checkpoint


@pytest.fixture(autouse=True)
def one_thread():
    """Bit-identical comparisons need the same reduction order: one intra-op thread."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


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


def test_resume_is_bit_identical_and_finished_checkpoint_trains_no_more(tmp_path):
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
