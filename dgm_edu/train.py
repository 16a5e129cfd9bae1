"""The one training loop that every chapter uses, on one process or many.

A model wears the library's face: ``loss(*batch)`` returns the scalar objective of a batch.
:func:`fit` moves batches to the device, steps the optimizer, evaluates on validation data, keeps
the best epoch, stops early, and checkpoints after every epoch, so that an interrupted run resumes
where it stopped and ends with the same weights as an uninterrupted one. The checkpoint format is
:mod:`dgm_edu.checkpoints`; running under ``torchrun`` (and ``torch.compile``) is
:mod:`dgm_edu.distributed`. Every setting is checked where it enters (:class:`TrainConfig`).

What ``loss`` means in eval mode, for every family: the loss in eval mode is the validation
objective: the same quantity as in training, with no side effects (no parameter, buffer or chain
updates); fit selects the best epoch on it. (A GAN's is its discriminator's loss, a diagnostic of
the game rather than of sample quality, so GANs train with ``restore_best=False``.)

Validation runs under ``torch.no_grad()``. A loss that needs gradients with respect to its input
(score matching through autograd, a Langevin step) says so with the class attribute
``needs_input_grad = True``: validation then runs under ``torch.enable_grad()`` with the
parameters frozen for its duration, so ``torch.autograd.grad(out, x)`` works while no parameter
gradient is computed, accumulated or kept.

Models with more than one optimizer (GANs) extend the loop in one way: they define
``train_step(batch, optimizers) -> dict[str, float]``, which the loop calls instead of its default
step, with a dict of optimizers, one per player (the keys listed in ``optimizer_names`` when the
model declares it). Devices, checkpoints, progress and early stopping stay the same.
"""

from __future__ import annotations

import contextlib
import copy
import math
import numbers
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from dgm_edu import checks, distributed
from dgm_edu.checkpoints import (
    CheckpointError,
    Trainee,
    claim_checkpoint,
    load_checkpoint,
    load_model_state,
    restore_training_state,
    run_settings,
    save_checkpoint,
    save_training_state,
)
from dgm_edu.data import make_loader, toy_2d
from dgm_edu.distributed import dist_info, init_distributed, is_main_process, shard_loader
from dgm_edu.runtime import seed_everything

__all__ = [  # the checkpoint and multi-process names are re-exported: they used to live here
    "CheckpointError",
    "History",
    "TrainConfig",
    "dist_info",
    "fit",
    "fit_stages",
    "fit_toy",
    "init_distributed",
    "is_main_process",
    "load_checkpoint",
    "load_model_state",
    "save_checkpoint",
    "shard_loader",
]

Optimizers = torch.optim.Optimizer | Mapping[str, torch.optim.Optimizer]
Batch = tuple[torch.Tensor, ...]
EMPTY_LOADER = "The training loader yielded no batches: expected a non-empty data set"
EMPTY_VAL = "The validation loader yielded no batches: expected a non-empty data set"
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _whole_epochs(value: object) -> int:
    """An int ≥ 0, or a float holding one (3.0 → 3); bools and 2.5 are refused."""
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral | bool):
        if not (math.isfinite(value) and float(value).is_integer()):
            raise ValueError(f"epochs must be a whole number >= 0, got {value}")
        value = int(value)
    return checks.integer(value, "epochs", low=0)


@dataclass
class TrainConfig:
    """Settings of one training run (pass overrides to :func:`fit` as keywords).

    Checked here, where they enter: ``epochs`` a whole number ≥ 0 (3.0 is taken as 3; 2.5 and
    bools are refused), ``patience`` None or an int ≥ 1, ``grad_clip`` None or a finite number > 0
    (−1 would ascend the loss, 0 would learn nothing), ``amp`` None, "bf16" or "fp16", ``ema``
    None or a decay strictly between 0 and 1.
    """

    epochs: int = 10
    patience: int | None = None  # stop after this many epochs without a better val loss
    grad_clip: float | None = None  # clip the global gradient norm to this value
    amp: str | None = None  # None, "bf16" or "fp16": run the loss under torch.autocast
    checkpoint: str | Path | None = None  # where to save after every epoch (and resume from)
    resume: bool = True  # resume from ``checkpoint`` when it exists
    seed: int | None = 0  # seeds python, numpy and torch before training (plus the rank under DDP)
    device: str | torch.device = "auto"
    restore_best: bool = True  # load the best validation weights at the end
    progress: bool = True  # show a tqdm progress bar (rank 0 only)
    desc: str = "train"
    compile: bool | str = False  # torch.compile the loss: True (inductor) or a backend name
    find_unused_parameters: bool = False  # DDP only: set when loss() leaves some parameters unused
    # Polyak averaging: θ̄ ← d θ̄ + (1 − d) θ after every optimizer step (a decay d in (0, 1));
    # validation, the best epoch and the weights returned are then the average's (the raw
    # weights' validation loss is kept beside it, in ``History.logs["val_loss_raw"]``)
    ema: float | None = None

    def __post_init__(self) -> None:
        self.epochs = _whole_epochs(self.epochs)
        if self.patience is not None:
            self.patience = checks.integer(self.patience, "patience", low=1)
        if self.grad_clip is not None:
            self.grad_clip = checks.real(self.grad_clip, "grad_clip", positive=True)
        if self.ema is not None:
            self.ema = checks.real(self.ema, "ema")
            if not 0.0 < self.ema < 1.0:  # 1 would never move, 0 is no average
                raise ValueError(f"ema must be a decay in (0, 1), e.g. 0.999, got {self.ema}")
        if self.amp is not None and self.amp not in AMP_DTYPES:
            raise ValueError(f"Unknown amp {self.amp!r}: expected None, 'bf16' or 'fp16'")


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


@dataclass
class _Run:
    """The loop's state between epochs: what a checkpoint saves besides the weights."""

    hist: History = field(default_factory=History)
    epoch: int = 0  # the next epoch to train
    bad_epochs: int = 0  # epochs since the best validation loss
    best_state: dict[str, torch.Tensor] | None = None


# --------------------------------------------------------------------------- checked inputs
def _check_optimizers(model: nn.Module, optimizer: object) -> dict[str, torch.optim.Optimizer]:
    """One optimizer, or for a ``train_step`` model a dict with one per player."""
    name, players = type(model).__name__, getattr(model, "optimizer_names", None)
    has_step = getattr(model, "train_step", None) is not None
    if isinstance(optimizer, torch.optim.Optimizer):
        if has_step:
            keys = f" {tuple(players)}" if players else ""
            raise TypeError(
                f"optimizer must be a dict of optimizers, one per player{keys}, for "
                f"{name}.train_step; got a single {type(optimizer).__name__}"
            )
        return {"optimizer": optimizer}
    if not isinstance(optimizer, Mapping) or not all(
        isinstance(o, torch.optim.Optimizer) for o in optimizer.values()
    ):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer or a dict of them, got "
            f"{type(optimizer).__name__}"
        )
    if not has_step and len(optimizer) != 1:
        raise ValueError(
            f"{name} has no train_step(batch, optimizers), so fit expects exactly one "
            f"optimizer, got {len(optimizer)}"
        )
    if has_step and players is not None and set(optimizer) != set(players):
        raise ValueError(
            f"optimizer must hold one optimizer per player of {name}: keys {sorted(players)}, "
            f"got {sorted(optimizer)}"
        )
    return dict(optimizer)


def _batch(batch: object, loader: str) -> Batch:
    """A batch as a tuple of tensors; any other kind is refused, naming the loader and the type."""
    parts = (batch,) if isinstance(batch, torch.Tensor) else batch
    if not isinstance(parts, tuple | list) or not parts:
        kind = "an empty " if isinstance(parts, tuple | list) else ""
        raise TypeError(
            f"{loader} must yield tensors or tuples/lists of tensors, got {kind}"
            f"{type(batch).__name__}"
        )
    for t in parts:
        if not isinstance(t, torch.Tensor):
            raise TypeError(
                f"{loader} must yield tensors or tuples/lists of tensors, got a "
                f"{type(batch).__name__} holding {type(t).__name__}"
            )
    return tuple(parts)


def _to(batch: object, device: torch.device, loader: str) -> Batch:
    return tuple(t.to(device, non_blocking=True) for t in _batch(batch, loader))


def _num_batches(loader: Iterable) -> int | None:
    """``len(loader)`` where the loader knows it, else None."""
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


def _autocast(device: torch.device, amp: str | None) -> contextlib.AbstractContextManager:
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


# --------------------------------------------------------------------------- one step
def _make_step(
    model: nn.Module,
    optimizers: dict[str, torch.optim.Optimizer],
    cfg: TrainConfig,
    device: torch.device,
    stack: contextlib.ExitStack,
) -> Callable[[Batch], dict[str, float]]:
    """``step(batch) -> logs``: the model's ``train_step``, or backward, clip, step on its loss."""
    custom = getattr(model, "train_step", None)
    if custom is not None:
        if cfg.compile:
            warnings.warn(
                "compile applies to model.loss; a model with train_step compiles its own "
                "parts, so fit trains it uncompiled",
                stacklevel=3,
            )
        for hook in distributed.sync_train_step(model):  # gradient hooks under DDP
            stack.callback(hook.remove)

        def custom_step(batch: Batch) -> dict[str, float]:
            with _autocast(device, cfg.amp):
                return custom(batch, optimizers)

        return custom_step

    loss_fn = distributed.wrap_loss(
        model, device, compile=cfg.compile, find_unused_parameters=cfg.find_unused_parameters
    )
    (opt,) = optimizers.values()

    def default_step(batch: Batch) -> dict[str, float]:
        with _autocast(device, cfg.amp):
            loss = loss_fn(*batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # under DDP the gradients are averaged over ranks here
        if cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)  # ‖g‖ ≤ grad_clip
        opt.step()
        return {"loss": loss.item()}

    return default_step


# --------------------------------------------------------------------------- one epoch
def _train_epoch(
    model: nn.Module,
    step: Callable[[Batch], dict[str, float]],
    loader: Iterable,
    device: torch.device,
    epoch: int,
    hist: History,
) -> None:
    """Train one epoch; append the batch-size-weighted mean of each log to ``hist``."""
    model.train()
    world = dist_info()[1]
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)  # a DistributedSampler reshuffles with seed + epoch
    sums: dict[str, float] = {}
    count = 0
    for i, raw in enumerate(loader):
        batch = _to(raw, device, "train_loader")
        logs = step(batch)
        n, keys = len(batch[0]), sorted(logs)
        if world > 1:  # global step means, so every rank sees the same numbers
            tot = distributed.all_sum([float(logs[k]) * n for k in keys] + [float(n)], device)
            n, logs = int(tot[-1]), {k: v / tot[-1] for k, v in zip(keys, tot)}
        if not math.isfinite(logs["loss"]):
            raise FloatingPointError(
                f"Loss became {logs['loss']} at epoch {epoch} step {i}: lower the "
                f"learning rate, set grad_clip, or check the input"
            )
        for k in keys:
            sums[k] = sums.get(k, 0.0) + logs[k] * n
        count += n
    if count == 0:
        raise ValueError(EMPTY_LOADER)
    hist.train_loss.append(sums.pop("loss") / count)  # Σ_b n_b ℓ_b / Σ_b n_b
    for k, v in sums.items():
        hist.logs.setdefault(k, []).append(v / count)


@contextlib.contextmanager
def _validation_grad_mode(model: nn.Module) -> Iterator[None]:
    """``no_grad``, or for ``needs_input_grad`` models ``enable_grad`` with frozen parameters."""
    if not getattr(model, "needs_input_grad", False):
        with torch.no_grad():
            yield
        return
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)  # gradients w.r.t. x only: nothing reaches p.grad
    try:
        with torch.enable_grad():
            yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


def _validate(model: nn.Module, loader: Iterable, device: torch.device, amp: str | None) -> float:
    """The batch-size-weighted mean of ``model.loss`` in eval mode, over every process."""
    total, count = 0.0, 0
    model.eval()
    try:
        with _validation_grad_mode(model):
            for raw in loader:
                batch = _to(raw, device, "val_loader")
                with _autocast(device, amp):
                    loss = model.loss(*batch)
                total += float(loss) * len(batch[0])
                count += len(batch[0])
    finally:
        model.train()
    total, n = distributed.all_sum([total, float(count)], device)
    if n == 0:
        raise ValueError(EMPTY_VAL)
    return total / n


def _early_stop(run: _Run, val: float, epoch: int, model: nn.Module, patience: int | None) -> bool:
    """Record ``val``; keep the best weights; True once ``patience`` epochs brought no progress."""
    hist = run.hist
    hist.val_loss.append(val)
    if val < hist.best_val:  # a tie does not move the best epoch
        hist.best_val, hist.best_epoch, run.bad_epochs = val, epoch, 0
        run.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    else:
        run.bad_epochs += 1
    return patience is not None and run.bad_epochs >= patience


# --------------------------------------------------------------------------- the loop
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

    ``optimizer`` is one optimizer, or a dict of them (one per player) for models that define
    ``train_step``. ``scheduler`` (optional) is stepped once per epoch. Keyword ``overrides``
    update ``config``: ``fit(model, opt, train_dl, val_dl, epochs=budget(fast=5, full=100),
    patience=10)``. With ``checkpoint=path`` the run saves after every epoch and resumes from the
    file when it exists; a file of another model, config or settings is refused (see
    :mod:`dgm_edu.checkpoints`), except for an explicit extension of ``epochs``.

    Under ``torchrun`` (after :func:`init_distributed`) the same call trains on every process with
    DistributedDataParallel; the loaders' batch sizes stay global batch sizes.
    """
    cfg = replace(config or TrainConfig(), **overrides)  # checks every setting
    optimizers = _check_optimizers(model, optimizer)
    rank, world = dist_info()
    device = distributed.process_device(cfg.device)
    if cfg.seed is not None:
        seed_everything(cfg.seed + rank)  # distinct noise per process; DDP syncs the weights
    model.to(device)
    train_loader = shard_loader(train_loader, seed=cfg.seed or 0)
    if val_loader is not None:
        val_loader = shard_loader(val_loader, evaluation=True)
    for name, loader in (("train_loader", train_loader), ("val_loader", val_loader)):
        if isinstance(loader, Sequence) and len(loader) > 0:
            _batch(loader[0], name)  # a list of batches is checked even when epochs=0
    if _num_batches(train_loader) == 0:
        raise ValueError(EMPTY_LOADER)
    if val_loader is not None and _num_batches(val_loader) == 0:
        raise ValueError(EMPTY_VAL)
    settings = run_settings(
        model, optimizers, scheduler,
        epochs=cfg.epochs, grad_clip=cfg.grad_clip, amp=cfg.amp, patience=cfg.patience,
        ema=cfg.ema,
    )  # fmt: skip

    run = _Run()
    averaged = _averaged(model, cfg.ema)
    evaluated = model if averaged is None else averaged.module  # what validation scores
    trainee = Trainee(model, optimizers, scheduler, settings, averaged)
    ckpt = Path(cfg.checkpoint) if cfg.checkpoint is not None else None
    with contextlib.ExitStack() as stack:
        if ckpt is not None:
            claim_checkpoint(stack, ckpt, device)  # before the first epoch, not after it
            if cfg.resume and ckpt.exists():
                state = restore_training_state(ckpt, trainee)
                run = _Run(
                    History(**state["history"]), state["epoch"], state["bad_epochs"],
                    state["best_model"],
                )  # fmt: skip
        step = _make_step(model, optimizers, cfg, device, stack)
        if averaged is not None:
            step = _then_average(step, averaged, model)
        bar = tqdm(
            range(run.epoch, cfg.epochs), desc=cfg.desc, disable=not cfg.progress or rank != 0,
            initial=run.epoch, total=cfg.epochs, unit="epoch",
        )  # fmt: skip
        stack.callback(bar.close)
        t0 = time.perf_counter() - run.hist.seconds
        stopped = cfg.patience is not None and run.bad_epochs >= cfg.patience
        for epoch in bar if not stopped else ():  # an early-stopped run stays stopped
            _train_epoch(model, step, train_loader, device, epoch, run.hist)
            if scheduler is not None:
                scheduler.step()
            postfix = {"train": f"{run.hist.train_loss[-1]:.3f}"}
            if val_loader is not None:
                if averaged is not None:  # the raw weights too, for comparison; RNG untouched
                    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                        raw = _validate(model, val_loader, device, cfg.amp)
                    run.hist.logs.setdefault("val_loss_raw", []).append(raw)
                val = _validate(evaluated, val_loader, device, cfg.amp)
                stopped = _early_stop(run, val, epoch, evaluated, cfg.patience)
                postfix["val"] = f"{val:.3f}"
            bar.set_postfix(postfix)
            run.hist.seconds = time.perf_counter() - t0
            if ckpt is not None:
                save_training_state(
                    ckpt, trainee, history=asdict(run.hist),
                    epoch=cfg.epochs if stopped else epoch + 1, bad_epochs=run.bad_epochs,
                    best_model=run.best_state,
                )  # fmt: skip
            if stopped:
                break
    if cfg.restore_best and run.best_state is not None:
        model.load_state_dict(run.best_state)
    elif averaged is not None:
        model.load_state_dict(averaged.module.state_dict())  # the average, not the last step
    return run.hist


def _averaged(model: nn.Module, decay: float | None) -> AveragedModel | None:
    """torch's ``AveragedModel`` keeping the exponential moving average of the parameters with
    ``decay`` (None: no average). Buffers (step counters, masks) are copied, not averaged."""
    if decay is None:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)


def _then_average(
    step: Callable[[Batch], dict[str, float]], averaged: AveragedModel, model: nn.Module
) -> Callable[[Batch], dict[str, float]]:
    """``step``, then θ̄ ← d θ̄ + (1 − d) θ (the first call sets θ̄ = θ)."""

    def averaging_step(batch: Batch) -> dict[str, float]:
        logs = step(batch)
        averaged.update_parameters(model)
        return logs

    return averaging_step


# --------------------------------------------------------------------------- recipes on top
def fit_toy(
    model: nn.Module,
    data: str | torch.Tensor,
    *,
    epochs: int | None = None,
    steps: int | None = None,
    n: int = 8192,
    val: int | torch.Tensor | None = None,
    batch_size: int = 512,
    lr: float = 1e-3,
    optimizer: Optimizers | None = None,
    schedule: str | None = None,
    seed: int = 0,
    checkpoint: str | Path | None = None,
    progress: bool = True,
    **fit_options: Any,
) -> History:
    """Fit ``model`` to points with :func:`fit`: every chapter's toy demonstration.

    ``data`` names a toy of :func:`dgm_edu.data.toy_2d` (``n`` 2D points drawn with ``seed``), or
    is an ``(N, D)`` tensor of points (D = 2 for the toys, a latent dimension for latent codes).
    ``val`` adds validation points: a count drawn from the same toy with ``seed + 1``, or a
    tensor. Give ``epochs`` or ``steps`` (optimizer steps, rounded up
    to whole epochs of ⌈N / batch_size⌉ shuffled batches). ``optimizer`` defaults to
    ``Adam(model.parameters(), lr)``; pass a dict, one per player, for a GAN, or the same
    optimizers again to go on training in rounds. ``schedule="cosine"`` anneals the lr to 0 over
    the run. Other keywords go to :func:`fit` (``device``, ``restore_best``, ``desc``, ...).
    """
    if (epochs is None) == (steps is None):
        raise ValueError(f"fit_toy needs exactly one of epochs and steps, got {epochs=}, {steps=}")
    if isinstance(data, str):
        points = toy_2d(data, checks.count(n, "n"), seed=seed)
    elif isinstance(data, torch.Tensor) and data.ndim == 2 and data.is_floating_point():
        points = data
    else:
        what = tuple(data.shape) if isinstance(data, torch.Tensor) else type(data).__name__
        raise TypeError(f"data must be a toy name or an (N, D) float tensor of points, got {what}")
    if isinstance(val, int) and not isinstance(val, bool):
        if not isinstance(data, str):
            raise TypeError(f"val must be a tensor of points when data is a tensor, got {val!r}")
        val = toy_2d(data, checks.count(val, "val"), seed=seed + 1)
    elif val is not None and not isinstance(val, torch.Tensor):
        raise TypeError(
            f"val must be None, a number of points of the toy, or a tensor, got {val!r}"
        )
    loader = make_loader(points, batch_size=checks.integer(batch_size, "batch_size", low=1))
    if steps is not None:
        epochs = math.ceil(checks.integer(steps, "steps", low=0) / len(loader))
    epochs = _whole_epochs(epochs)
    opt = torch.optim.Adam(model.parameters(), lr=lr) if optimizer is None else optimizer
    sched = None
    if schedule == "cosine":
        if not isinstance(opt, torch.optim.Optimizer):
            raise ValueError("schedule='cosine' needs a single optimizer, got a dict of them")
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    elif schedule is not None:
        raise ValueError(f"schedule must be None or 'cosine', got {schedule!r}")
    val_loader = None if val is None else make_loader(val, batch_size=len(val), shuffle=False)
    fit_options.setdefault("desc", f"toy-{data}" if isinstance(data, str) else "toy")
    return fit(
        model, opt, loader, val_loader, epochs=epochs, scheduler=sched, seed=seed,
        checkpoint=checkpoint, progress=progress, **fit_options,
    )  # fmt: skip


def fit_stages(
    make: Callable[..., tuple[nn.Module, History]],
    stops: Sequence[int],
    *,
    checkpoint: str | Path | None,
) -> list[tuple[int, nn.Module, History]]:
    """Train one run up to each epoch count in ``stops`` in turn; return ``[(stop, model, hist)]``.

    ``make(epochs=k, checkpoint=path) -> (model, history)`` is a recipe that trains into a
    checkpoint, e.g. ``functools.partial(gan.train_reference, data="ring8")``. Stage k trains into
    ``<stem>-e<stop><suffix>``, which starts as a copy of the previous stage's file, so ``fit``
    resumes it as an explicit extension of ``epochs``: a re-run reloads each finished stage, and
    the last stage has exactly the weights of one uninterrupted run. Each model returned is a
    copy, so the stages stay apart even if ``make`` returns one object. ``checkpoint=None`` keeps
    the stage files in a temporary directory, removed at the end. (A schedule tied to ``epochs``,
    cosine with ``T_max = epochs``, anneals within each stage and is then stretched, see
    :mod:`dgm_edu.checkpoints`: such a run differs from one planned for ``stops[-1]`` epochs.)
    """
    stops = [checks.integer(s, "stops", low=1) for s in stops]
    if not stops or any(b <= a for a, b in zip(stops, stops[1:])):
        raise ValueError(f"stops must be a non-empty list of increasing epoch counts, got {stops}")
    with contextlib.ExitStack() as stack:
        if checkpoint is None:
            checkpoint = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "stages.pt"
        base, previous, out = Path(checkpoint), None, []
        for stop in stops:
            path = base.with_name(f"{base.stem}-e{stop}{base.suffix}")
            if not path.exists() and previous is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(previous, path)  # stage k continues stage k-1
            model, hist = make(epochs=stop, checkpoint=path)
            out.append((stop, copy.deepcopy(model), copy.deepcopy(hist)))
            previous = path
    return out
