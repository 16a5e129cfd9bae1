"""Reliability: interrupts, bad input, unsafe checkpoints, no network, and training health.

- A training subprocess killed with a real SIGINT or SIGKILL resumes to bit-identical weights.
- Every bad input raises an error whose exact message says what was expected, from dgm_edu code
  (not from deep inside torch).
- A checkpoint that carries a pickle payload is refused, and its code never runs.
- A chapter's code path runs with every socket blocked.
- ``DGM_EDU_HEALTH=1``: every recipe trains to finite losses and weights in fast mode, 3 seeds.

The per-family contract (meta device, ``.to()``, bad digits, finite losses, checkpoint round
trips, sampling) is tests/test_contract.py, over every family the weights registry records.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import dgm_edu
from dgm_edu.data import digits_loader, load_digits, make_loader, toy_2d, validate_digits
from dgm_edu.metrics import evaluate_nll
from dgm_edu.mixtures import GaussianMixture, PixelMixture, PixelMixtureConfig
from dgm_edu.runtime import get_device
from dgm_edu.train import (
    CheckpointError,
    fit,
    load_checkpoint,
    load_model_state,
    save_checkpoint,
)

ROOT = Path(__file__).resolve().parents[1]


def _mixture(k: int = 2) -> tuple[PixelMixture, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = PixelMixture(PixelMixtureConfig(num_components=k))
    return model, torch.optim.Adam(model.parameters(), lr=0.05)


# --------------------------------------------------------------------------- bad input
VAL_X = load_digits("val")[0][:32]
DIGITS = VAL_X[:8]
BAD_DIGITS = {
    "wrong shape": (
        DIGITS.flatten(1),
        ValueError,
        "Expected digits of shape (N, 1, 8, 8), got (8, 64)",
    ),
    "[0,1] floats": (
        DIGITS / 16.0,
        ValueError,
        "Expected integer levels 0..16 (as load_digits returns), got non-integer "
        "floats; pass the raw digits, not [0,1] floats: each model does its own "
        "preprocessing",
    ),
    "0..255 levels": (
        DIGITS * 16 - 1,
        ValueError,
        "Expected integer levels 0..16, got values in [-1, 255]",
    ),
    "bool dtype": (
        DIGITS > 8,
        TypeError,
        "Expected an integer tensor of levels 0..16, got dtype torch.bool",
    ),
    "NaN": (
        torch.where(DIGITS == 0, float("nan"), DIGITS.float()),
        ValueError,
        "Digits contain NaN or inf: expected integer levels 0..16",
    ),
    "empty batch": (DIGITS[:0], ValueError, "Expected a non-empty batch of digits, got N=0"),
    "numpy array": (DIGITS.numpy(), TypeError, "Expected a torch.Tensor of digits, got ndarray"),
}


@pytest.mark.parametrize("case", list(BAD_DIGITS))
def test_bad_digits_get_the_exact_message_from_dgm_edu_code(case):
    bad, err, message = BAD_DIGITS[case]
    model, opt = _mixture()
    for call in (validate_digits, model.loss, model.log_prob):
        with pytest.raises(err) as info:
            call(bad)
        assert str(info.value) == message
        # the error is raised by dgm_edu itself, not deep inside a torch kernel
        assert Path(traceback.extract_tb(info.tb)[-1].filename).name == "data.py"
    if isinstance(bad, torch.Tensor) and len(bad):  # and through the trainer
        with pytest.raises(err) as info:
            fit(
                model,
                opt,
                DataLoader(TensorDataset(bad), batch_size=len(bad)),
                epochs=1,
                progress=False,
            )
        assert str(info.value) == message


def test_empty_data_sets_are_refused():
    empty = torch.zeros(0, 1, 8, 8, dtype=torch.long)
    with pytest.raises(ValueError) as info:
        make_loader(empty)
    assert str(info.value) == "Cannot make a loader over an empty data set (N=0)"
    model, opt = _mixture()
    with pytest.raises(ValueError) as info:
        fit(model, opt, DataLoader(TensorDataset(empty), batch_size=4), epochs=1, progress=False)
    assert str(info.value) == (
        "The training loader yielded no batches: expected a non-empty data set"
    )
    with pytest.raises(ValueError) as info:
        fit(
            model,
            opt,
            digits_loader("val", 64),
            DataLoader(TensorDataset(empty)),
            epochs=1,
            progress=False,
        )
    assert str(info.value) == (
        "The validation loader yielded no batches: expected a non-empty data set"
    )

    def no_batches():  # a loader without len() that yields nothing
        return iter(())

    class Nothing:
        __iter__ = staticmethod(no_batches)

    with pytest.raises(ValueError, match="The training loader yielded no batches"):
        fit(model, opt, Nothing(), epochs=1, progress=False)


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("gpu", "Unknown device 'gpu': expected 'auto', 'cpu', 'cuda', 'cuda:N', 'mps' or 'meta'"),
        ("cpu:x", "Unknown device 'cpu:x': Invalid device string: 'cpu:x'"),
        pytest.param(
            "cuda",
            "Device 'cuda' was requested but CUDA is not available on this "
            "machine: expected 'auto' or 'cpu'",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="has CUDA"),
        ),
        (3, "device must be a string or torch.device, got int"),
    ],
)
def test_unknown_device_strings(device, message):
    err = TypeError if isinstance(device, int) else ValueError
    with pytest.raises(err) as info:
        get_device(device)
    assert str(info.value) == message
    model, opt = _mixture()
    with pytest.raises(err) as info:
        fit(model, opt, digits_loader("val", 64), epochs=1, device=device, progress=False)
    assert str(info.value) == message


# --------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "mixture.pt"
    model, opt = _mixture()
    fit(model, opt, digits_loader("val", 100), epochs=1, checkpoint=path, progress=False)
    return path, model


def test_truncated_checkpoint(tmp_path, trained_checkpoint):
    path, _ = trained_checkpoint
    cut = tmp_path / "cut.pt"
    raw = path.read_bytes()
    cut.write_bytes(raw[: len(raw) // 2])
    expected = (
        rf"Cannot load checkpoint {cut}: expected a file saved by dgm_edu.train.save_checkpoint "
        r"\(state_dicts only\); it is truncated, tampered with or unsafe \(.+\)$"
    )
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(cut)
    model, opt = _mixture()
    with pytest.raises(CheckpointError, match=expected):  # fit refuses to resume from it
        fit(model, opt, digits_loader("val", 100), epochs=2, checkpoint=cut, progress=False)
    with pytest.raises(FileNotFoundError, match=f"Checkpoint not found: {tmp_path / 'nope.pt'}"):
        load_checkpoint(tmp_path / "nope.pt")


def test_tampered_checkpoint_fails_its_integrity_check(tmp_path):
    weights = torch.linspace(-1, 1, 64)
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"model": {"w": weights}, "epoch": 3})
    raw = bytearray(path.read_bytes())
    at = bytes(raw).find(weights.numpy().tobytes())
    assert at > 0
    raw[at + 5] ^= 0x01  # one flipped bit in a stored weight: torch.load alone does not notice
    path.write_bytes(bytes(raw))
    changed = torch.load(path, weights_only=True)["model"]["w"]
    assert not torch.equal(changed, weights)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == (
        f"Checkpoint {path} failed its integrity check: the sha256 of its contents does not match "
        "the digest saved with them; expected an unmodified file written by "
        "dgm_edu.train.save_checkpoint (it was tampered with or corrupted)"
    )


def test_checkpoint_of_a_different_model(tmp_path, trained_checkpoint):
    path, _ = trained_checkpoint
    gmm = GaussianMixture()
    with pytest.raises(CheckpointError) as info:
        fit(
            gmm,
            torch.optim.Adam(gmm.parameters()),
            make_loader(toy_2d("ring8", 64)),
            epochs=2,
            checkpoint=path,
            progress=False,
        )
    assert str(info.value) == (
        f"Checkpoint {path} was saved from a dgm_edu.mixtures.PixelMixture, not a "
        "dgm_edu.mixtures.GaussianMixture: expected a checkpoint of this model (delete it or "
        "pass another path to train afresh)"
    )
    with pytest.raises(CheckpointError) as info:
        load_model_state(gmm, load_checkpoint(path)["model"], str(path))
    assert str(info.value) == (
        f"Checkpoint {path} does not match GaussianMixture: missing keys ['log_stds', 'means'], "
        "unexpected keys ['pixel_logits'], shape mismatches ['mix_logits']; expected a "
        "checkpoint of this model and config"
    )
    bigger, opt = _mixture(k=3)  # same class, another config
    with pytest.raises(CheckpointError) as info:
        fit(bigger, opt, digits_loader("val", 100), epochs=2, checkpoint=path, progress=False)
    assert str(info.value) == (
        f"Checkpoint {path} does not match PixelMixture: missing keys [], unexpected keys [], "
        "shape mismatches ['mix_logits', 'pixel_logits']; expected a checkpoint of this model "
        "and config"
    )
    weights_only = tmp_path / "weights.pt"  # a bare state_dict file is not a training checkpoint
    save_checkpoint(weights_only, {"model": PixelMixture().state_dict()})
    with pytest.raises(CheckpointError) as info:
        fit(
            PixelMixture(),
            torch.optim.Adam(PixelMixture().parameters()),
            digits_loader("val", 100),
            epochs=1,
            checkpoint=weights_only,
            progress=False,
        )
    assert str(info.value) == (
        f"Checkpoint {weights_only} is not a training checkpoint written by dgm_edu.train.fit: "
        "missing ['optimizers', 'history', 'epoch', 'bad_epochs', 'best_model', 'rng_cpu']; "
        "expected a file that fit(checkpoint=...) saved"
    )


class _Payload:
    """Unpickling this runs ``Path(marker).touch()``: a stand-in for arbitrary code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickle_payload_is_refused(tmp_path):
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "hook": _Payload(str(marker))}, evil)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(evil)
    assert str(info.value).startswith(
        f"Cannot load checkpoint {evil}: expected a file saved by dgm_edu.train.save_checkpoint "
        "(state_dicts only); it is truncated, tampered with or unsafe (Weights only load failed"
    )
    assert not marker.exists()  # refused before any code ran ...
    torch.load(evil, weights_only=False)  # ... while an unsafe load would have run it
    assert marker.exists()


# --------------------------------------------------------------------------- interrupts
CHILD = """
import signal, sys, time, torch
# Ctrl-C as in a terminal: a child of a background job (e.g. CI under `nohup ... &`) inherits
# SIGINT ignored, and Python then never raises KeyboardInterrupt
signal.signal(signal.SIGINT, signal.default_int_handler)
torch.set_num_threads(1)
from dgm_edu.data import make_loader
from dgm_edu.mixtures import PixelMixture, PixelMixtureConfig
from dgm_edu.train import fit

data, ckpt = torch.load(sys.argv[1]), sys.argv[2]

class SlowLoader:  # holds in the middle of epoch 2 until the parent's signal: no race with it
    def __init__(self, loader):
        self.loader, self.epoch = loader, 0
    def __len__(self):
        return len(self.loader)
    def __iter__(self):
        self.epoch += 1
        for i, batch in enumerate(self.loader):
            while self.epoch >= 2 and i == 3:  # epoch 1 is checkpointed; the kill lands here
                time.sleep(0.05)
            yield batch

torch.manual_seed(0)
model = PixelMixture(PixelMixtureConfig(num_components=2))
opt = torch.optim.Adam(model.parameters(), lr=0.05)
fit(model, opt, SlowLoader(make_loader(data["train"], batch_size=100)),
    make_loader(data["val"], batch_size=350, shuffle=False), epochs=EPOCHS, patience=20,
    checkpoint=ckpt, progress=False, seed=0)
print("finished")
"""
EPOCHS = 6


def _interruptible_run(data: dict, checkpoint=None) -> PixelMixture:
    """The child's recipe, in this process."""
    torch.manual_seed(0)
    model = PixelMixture(PixelMixtureConfig(num_components=2))
    fit(
        model,
        torch.optim.Adam(model.parameters(), lr=0.05),
        make_loader(data["train"], batch_size=100),
        make_loader(data["val"], batch_size=350, shuffle=False),
        epochs=EPOCHS,
        patience=20,
        checkpoint=checkpoint,
        progress=False,
        seed=0,
    )
    return model


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_resume_after_a_real_kill_is_bit_identical(tmp_path, sig):
    data = {"train": load_digits("train")[0], "val": load_digits("val")[0]}
    torch.save(data, tmp_path / "data.pt")  # the child need not import scikit-learn
    script = tmp_path / "child.py"
    script.write_text(CHILD.replace("EPOCHS", str(EPOCHS)))
    ckpt = tmp_path / "run.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "data.pt"), str(ckpt)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while not ckpt.with_suffix(".json").exists():  # wait for the first checkpoint
        assert child.poll() is None and time.monotonic() < deadline, "child ended early"
        time.sleep(0.02)
    child.send_signal(sig)  # the child is in epoch 2, or holding in its middle
    out, err = child.communicate(timeout=60)
    assert child.returncode != 0 and b"finished" not in out, (out, err[-2000:])
    if sig == signal.SIGINT:
        assert b"KeyboardInterrupt" in err
    done = load_checkpoint(ckpt)["epoch"]
    assert 1 <= done < EPOCHS
    assert not ckpt.with_name(ckpt.name + ".tmp").exists()

    resumed = _interruptible_run(data, ckpt)  # resume from the last checkpoint to the end
    reference = _interruptible_run(data)  # the uninterrupted run
    for k, v in reference.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k  # bit-identical, not merely close


# --------------------------------------------------------------------------- no network
def test_a_chapter_runs_with_sockets_blocked(tmp_path, monkeypatch):
    attempts: list[str] = []

    def blocked(name):
        def refuse(*args, **kwargs):
            attempts.append(f"{name}{args[1:] if name.startswith('socket.') else args}")
            raise OSError(f"network blocked by the test ({name})")

        return refuse

    monkeypatch.setattr(socket.socket, "connect", blocked("socket.connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", blocked("socket.connect_ex"))
    monkeypatch.setattr(socket, "create_connection", blocked("create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", blocked("getaddrinfo"))
    with pytest.raises(OSError, match="network blocked"):  # the block works ...
        socket.create_connection(("pypi.org", 443), timeout=1)
    attempts.clear()

    # ... and the introduction's code path never reaches for it: data, training, checkpoint,
    # evaluation, sampling and figures
    import matplotlib.pyplot as plt

    from dgm_edu.plots import image_grid, training_curves

    x_train, _ = load_digits("train")
    x_test, _ = load_digits("test")
    model, opt = _mixture(k=3)
    hist = fit(
        model,
        opt,
        digits_loader("train", 100),
        digits_loader("val", 350),
        epochs=2,
        checkpoint=tmp_path / "intro.pt",
        progress=False,
    )
    nll = evaluate_nll(model, x_test)
    baseline = evaluate_nll(PixelMixture.fit_counts(x_train), x_test)
    fig, axes = plt.subplots(1, 2)
    image_grid(model.sample(16), nrow=4, ax=axes[0])
    training_curves(hist, ax=axes[1])
    plt.close(fig)
    assert attempts == []
    assert nll < 181.3 and baseline == pytest.approx(106.47, abs=0.01)


# --------------------------------------------------------------------------- training health
# (The per-family contract, meta device, .to(), bad digits, finite losses, lives in
# tests/test_contract.py, which derives the families from the dgm_edu.weights registry.)
def _recipe_modules() -> list[str]:
    """Every dgm_edu module with a ``train_reference`` recipe; one that fails to import is kept,
    so that its test fails (tests/test_contract.py fails on it too, in every run)."""
    names = []
    for info in pkgutil.iter_modules(dgm_edu.__path__):
        name = f"dgm_edu.{info.name}"
        try:
            if not hasattr(importlib.import_module(name), "train_reference"):
                continue
        except Exception:
            pass
        names.append(name)
    return names


HEALTH_ENV = "DGM_EDU_HEALTH"


@pytest.mark.skipif(
    os.environ.get(HEALTH_ENV) != "1", reason=f"minutes of training: set {HEALTH_ENV}=1"
)
@pytest.mark.parametrize("module_name", _recipe_modules(), ids=lambda n: n.split(".")[-1])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_mode_reference_training_is_finite(module_name, seed, monkeypatch):
    """The book's recipes in fast mode, 3 seeds: fit itself stops on a non-finite training loss;
    here the validation losses and every trained weight are checked too."""
    module = importlib.import_module(module_name)
    monkeypatch.setenv("DGM_EDU_FAST", "1")
    model, hist = module.train_reference(progress=False, seed=seed)
    values = hist.train_loss + hist.val_loss + [v for vs in hist.logs.values() for v in vs]
    assert values and all(torch.isfinite(torch.tensor(values))), values
    for name, t in model.state_dict().items():
        assert not t.is_floating_point() or torch.isfinite(t).all(), name
