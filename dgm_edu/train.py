"""The one training loop that every chapter uses.

A model wears the library's face: ``loss(*batch)`` returns the scalar objective of a batch. The
loop moves batches to the device, steps the optimizer, evaluates on validation data, stops early,
and checkpoints after every epoch so that an interrupted run resumes where it stopped and ends with
the same weights as an uninterrupted one.

Models with more than one optimizer (GANs) extend the loop in one way: they define
``train_step(batch, optimizers) -> dict[str, float]`` and the loop calls it instead of the default
step. Everything else (devices, checkpoints, progress, early stopping) stays the same.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from dgm_edu.runtime import get_device, seed_everything

Optimizers = torch.optim.Optimizer | Mapping[str, torch.optim.Optimizer]


@dataclass
class TrainConfig:
    """Settings of one training run (pass overrides to :func:`fit` as keywords)."""

    epochs: int = 10
    patience: int | None = None  # stop after this many epochs without a better val loss
    grad_clip: float | None = None  # clip the global gradient norm to this value
    amp: str | None = None  # None, "bf16" or "fp16": run the loss under torch.autocast
    checkpoint: str | Path | None = None  # where to save after every epoch (and resume from)
    resume: bool = True  # resume from ``checkpoint`` when it exists
    seed: int | None = 0  # seeds python, numpy and torch before training
    device: str | torch.device = "auto"
    restore_best: bool = True  # load the best validation weights at the end
    progress: bool = True  # show a tqdm progress bar
    desc: str = "train"


@dataclass
class History:
    """What :func:`fit` returns: per-epoch losses and where the best epoch was."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    logs: dict[str, list[float]] = field(default_factory=dict)  # extra per-epoch means
    best_epoch: int = -1
    best_val: float = math.inf
    seconds: float = 0.0

    @property
    def epochs_run(self) -> int:
        return len(self.train_loss)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, or that belongs to another model."""


# --------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Save ``payload`` (state_dicts, tensors, numbers) atomically: temp file, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # atomic on POSIX: a reader sees the old file or the new one


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``: no pickled code runs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, tampered, or a pickle that weights_only refuses
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"Cannot load checkpoint {path}: expected a file saved by dgm_edu.train.save_checkpoint "
            f"(state_dicts only); it is truncated, tampered with or unsafe ({first})"
        ) from None


def load_model_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "") -> None:
    """``model.load_state_dict`` with an error that says which keys or shapes do not match."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"Checkpoint {source} does not match {type(model).__name__}: "
            f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]}, "
            f"shape mismatches {shapes[:5]}; expected a checkpoint of this model and config"
        )
    model.load_state_dict(state)


# --------------------------------------------------------------------------- the loop
def _as_dict(optimizer: Optimizers) -> dict[str, torch.optim.Optimizer]:
    if isinstance(optimizer, torch.optim.Optimizer):
        return {"optimizer": optimizer}
    return dict(optimizer)


def _autocast(device: torch.device, amp: str | None) -> contextlib.AbstractContextManager:
    if amp is None:
        return contextlib.nullcontext()
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if amp not in dtypes:
        raise ValueError(f"Unknown amp {amp!r}: expected None, 'bf16' or 'fp16'")
    return torch.autocast(device_type=device.type, dtype=dtypes[amp])


def _to(batch: Any, device: torch.device) -> tuple[torch.Tensor, ...]:
    if isinstance(batch, torch.Tensor):
        batch = (batch,)
    return tuple(t.to(device, non_blocking=True) for t in batch)


@torch.no_grad()
def evaluate_loss(
    model: nn.Module,
    loader: Iterable,
    device: str | torch.device = "auto",
    amp: str | None = None,
) -> float:
    """Mean of ``model.loss`` over a loader, weighted by batch size, in eval mode."""
    device = get_device(device)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in loader:
        batch = _to(batch, device)
        with _autocast(device, amp):
            loss = model.loss(*batch)
        total += float(loss) * len(batch[0])
        count += len(batch[0])
    model.train(was_training)
    if count == 0:
        raise ValueError("evaluate_loss got an empty loader: expected at least one batch")
    return total / count


def _default_step(
    model: nn.Module,
    batch: tuple[torch.Tensor, ...],
    optimizers: dict[str, torch.optim.Optimizer],
    cfg: TrainConfig,
    device: torch.device,
) -> dict[str, float]:
    (opt,) = optimizers.values()
    with _autocast(device, cfg.amp):
        loss = model.loss(*batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    return {"loss": loss.item()}


def fit(
    model: nn.Module,
    optimizer: Optimizers,
    train_loader: Iterable,
    val_loader: Iterable | None = None,
    config: TrainConfig | None = None,
    *,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    **overrides: Any,
) -> History:
    """Train ``model`` and return its :class:`History`.

    ``optimizer`` is one optimizer, or a dict of them for models that define ``train_step``.
    ``scheduler`` (optional) is stepped once per epoch. Keyword ``overrides`` update ``config``:
    ``fit(model, opt, train_dl, val_dl, epochs=budget(fast=5, full=100), patience=10)``.
    """
    cfg = replace(config or TrainConfig(), **overrides)
    if cfg.epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {cfg.epochs}")
    device = get_device(cfg.device)
    if cfg.seed is not None:
        seed_everything(cfg.seed)
    model.to(device)
    optimizers = _as_dict(optimizer)
    custom_step = getattr(model, "train_step", None)
    if custom_step is None and len(optimizers) != 1:
        raise ValueError(
            f"{type(model).__name__} has no train_step(batch, optimizers), so fit expects exactly "
            f"one optimizer, got {len(optimizers)}"
        )

    hist, start, bad_epochs, best_state = History(), 0, 0, None
    ckpt = Path(cfg.checkpoint) if cfg.checkpoint is not None else None
    if ckpt is not None and cfg.resume and ckpt.exists():
        state = load_checkpoint(ckpt)
        load_model_state(model, state["model"], str(ckpt))
        for name, opt in optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        hist = History(**state["history"])
        start, bad_epochs, best_state = state["epoch"], state["bad_epochs"], state["best_model"]
        torch.set_rng_state(state["rng_cpu"])
        if torch.cuda.is_available() and state.get("rng_cuda"):
            torch.cuda.set_rng_state_all(state["rng_cuda"])

    t0 = time.perf_counter() - hist.seconds
    bar = tqdm(range(start, cfg.epochs), desc=cfg.desc, disable=not cfg.progress,
               initial=start, total=cfg.epochs, unit="epoch")
    for epoch in bar:
        model.train()
        sums: dict[str, float] = {}
        count = 0
        for step, raw in enumerate(train_loader):
            batch = _to(raw, device)
            if custom_step is not None:
                with _autocast(device, cfg.amp):
                    logs = custom_step(batch, optimizer)
            else:
                logs = _default_step(model, batch, optimizers, cfg, device)
            if not math.isfinite(logs["loss"]):
                raise FloatingPointError(
                    f"Loss became {logs['loss']} at epoch {epoch} step {step}: lower the learning "
                    f"rate, set grad_clip, or check the input"
                )
            n = len(batch[0])
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v * n
            count += n
        if count == 0:
            raise ValueError("The training loader yielded no batches: expected a non-empty data set")
        hist.train_loss.append(sums.pop("loss") / count)
        for k, v in sums.items():
            hist.logs.setdefault(k, []).append(v / count)
        if scheduler is not None:
            scheduler.step()

        postfix = {"train": f"{hist.train_loss[-1]:.3f}"}
        if val_loader is not None:
            val = evaluate_loss(model, val_loader, device, cfg.amp)
            hist.val_loss.append(val)
            postfix["val"] = f"{val:.3f}"
            if val < hist.best_val:
                hist.best_val, hist.best_epoch, bad_epochs = val, epoch, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                bad_epochs += 1
        bar.set_postfix(postfix)
        hist.seconds = time.perf_counter() - t0
        stop = cfg.patience is not None and bad_epochs >= cfg.patience
        if ckpt is not None:
            save_checkpoint(ckpt, {
                "model": model.state_dict(),
                "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "history": asdict(hist),
                "epoch": epoch + 1 if not stop else cfg.epochs,
                "bad_epochs": bad_epochs,
                "best_model": best_state,
                "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            })
            ckpt.with_suffix(".json").write_text(json.dumps(asdict(hist), indent=1))
        if stop:
            break
    bar.close()
    if cfg.restore_best and best_state is not None:
        model.load_state_dict(best_state)
    return hist

