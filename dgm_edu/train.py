"""The one training loop that every chapter uses, on one process or many.

A model wears the library's face: ``loss(*batch)`` returns the scalar objective of a batch. The
loop moves batches to the device, steps the optimizer, evaluates on validation data, stops early,
and checkpoints after every epoch so that an interrupted run resumes where it stopped and ends with
the same weights as an uninterrupted one.

Models with more than one optimizer (GANs) extend the loop in one way: they define
``train_step(batch, optimizers) -> dict[str, float]`` and the loop calls it instead of the default
step. Everything else (devices, checkpoints, progress, early stopping) stays the same.

Scaling up. The same :func:`fit` runs under ``torchrun``: when ``torch.distributed`` is initialised
(see :func:`init_distributed`), the loss is wrapped in ``DistributedDataParallel``, every loader is
re-sharded with a ``DistributedSampler`` that keeps the *global* batch size (each of W processes
gets ``batch_size // W`` examples), validation losses are summed over all processes so that early
stopping agrees everywhere, and only rank 0 writes checkpoints and shows progress.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import (
    DataLoader,
    DistributedSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
)
from tqdm.auto import tqdm

from dgm_edu.runtime import get_device, seed_everything

Optimizers = torch.optim.Optimizer | Mapping[str, torch.optim.Optimizer]
EMPTY_LOADER = "The training loader yielded no batches: expected a non-empty data set"
EMPTY_VAL = "The validation loader yielded no batches: expected a non-empty data set"


@dataclass
class TrainConfig:
    """Settings of one training run (pass overrides to :func:`fit` as keywords)."""

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
def _digest(obj: Any) -> str:
    """sha256 over every tensor's bytes, dtype and shape, and every other leaf's repr."""
    h = hashlib.sha256()

    def walk(o: Any) -> None:
        if isinstance(o, torch.Tensor):
            t = o.detach().cpu().contiguous().reshape(-1)
            h.update(f"T{t.dtype}{tuple(o.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
        elif isinstance(o, Mapping):
            h.update(b"{")
            for k in sorted(o, key=str):
                h.update(repr(k).encode())
                walk(o[k])
            h.update(b"}")
        elif isinstance(o, list | tuple):
            h.update(b"[")
            for v in o:
                walk(v)
            h.update(b"]")
        else:
            h.update(repr(o).encode())

    walk(obj)
    return h.hexdigest()


def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Write through ``write(file)`` into a temporary file, flush it to disk, then rename it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX: a reader sees the old file or the new one
    finally:
        if tmp.exists():  # the write failed part-way: leave the old file as it was
            tmp.unlink()


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Save ``payload`` (state_dicts, tensors, numbers) atomically: temp file, then rename.

    A sha256 digest of the contents is stored with them; :func:`load_checkpoint` checks it, so a
    file whose bytes were changed after saving is refused rather than loaded with wrong weights.
    """
    sealed = {**payload, "sha256": _digest(payload)}
    _atomic_write(Path(path), lambda f: torch.save(sealed, f))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``: no pickled code runs) and verify it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, tampered, or a pickle that weights_only refuses
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"Cannot load checkpoint {path}: expected a file saved by "
            f"dgm_edu.train.save_checkpoint (state_dicts only); it is truncated, tampered with or "
            f"unsafe ({first})"
        ) from None
    if isinstance(state, dict) and "sha256" in state:
        saved = state.pop("sha256")
        if saved != _digest(state):
            raise CheckpointError(
                f"Checkpoint {path} failed its integrity check: the sha256 of its contents does "
                f"not match the digest saved with them; expected an unmodified file written by "
                f"dgm_edu.train.save_checkpoint (it was tampered with or corrupted)"
            )
    return state


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


_TRAINING_KEYS = ("model", "optimizers", "history", "epoch", "bad_epochs", "best_model", "rng_cpu")


def _model_id(model: nn.Module) -> str:
    return f"{type(model).__module__}.{type(model).__qualname__}"


# --------------------------------------------------------------------------- distributed
def dist_info() -> tuple[int, int]:
    """``(rank, world_size)``: ``(0, 1)`` unless ``torch.distributed`` is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """True on rank 0 (and always without torch.distributed): the process that writes files."""
    return dist_info()[0] == 0


def init_distributed(backend: str = "auto") -> tuple[int, int]:
    """Join the process group that ``torchrun`` describes in the environment; return ``(rank, W)``.

    Without torchrun (no ``WORLD_SIZE`` in the environment) this does nothing and returns
    ``(0, 1)``, so one script serves both. ``backend="auto"`` picks nccl on CUDA, gloo on CPU.
    """
    if "WORLD_SIZE" not in os.environ or not dist.is_available():
        return 0, 1
    if not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return dist_info()


class LossModule(nn.Module):
    """``forward(*batch) = model.loss(*batch)``: the module that DDP and torch.compile wrap."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *batch: torch.Tensor) -> torch.Tensor:
        return self.model.loss(*batch)


class _Shard(Sampler[int]):
    """Indices rank, rank + W, rank + 2W, ... in order, without padding (for evaluation)."""

    def __init__(self, n: int, rank: int, world: int) -> None:
        self.n, self.rank, self.world = n, rank, world

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))


def shard_loader(loader: Iterable, *, seed: int = 0, evaluation: bool = False) -> Iterable:
    """Re-shard a DataLoader over the processes of the group, keeping its *global* batch size.

    Training loaders get a ``DistributedSampler`` (shuffled with ``seed`` + epoch when the loader
    shuffled); evaluation loaders get every W-th example with no padding, so that summed losses
    over ranks equal the single-process sum. A loader that is already sharded for this world size,
    or anything that is not a map-style DataLoader, is returned as it is.
    """
    rank, world = dist_info()
    if world == 1 or not isinstance(loader, DataLoader) or not hasattr(loader.dataset, "__len__"):
        return loader
    sampler = loader.sampler
    if isinstance(sampler, DistributedSampler) and sampler.num_replicas == world:
        return loader
    if loader.batch_size is None:
        raise ValueError(
            "Cannot shard a DataLoader built with a custom batch_sampler across processes: "
            "expected a DataLoader with batch_size set (and an optional DistributedSampler)"
        )
    if isinstance(sampler, RandomSampler):
        shuffle = True
    elif isinstance(sampler, DistributedSampler):
        shuffle, seed = sampler.shuffle, sampler.seed
    elif isinstance(sampler, SequentialSampler):
        shuffle = False
    else:
        raise ValueError(
            f"Cannot shard a DataLoader with a {type(sampler).__name__} across processes: expected "
            f"shuffle=True/False or a DistributedSampler"
        )
    batch = loader.batch_size
    if evaluation:
        new_sampler: Sampler[int] = _Shard(len(loader.dataset), rank, world)
    else:
        if batch % world:
            warnings.warn(
                f"batch_size {batch} is not divisible by {world} processes: each takes "
                f"{max(1, batch // world)}, so the global batch becomes "
                f"{max(1, batch // world) * world}",
                stacklevel=3,
            )
        batch = max(1, batch // world)
        new_sampler = DistributedSampler(
            loader.dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed
        )
    return DataLoader(
        loader.dataset,
        batch_size=batch,
        sampler=new_sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last and not evaluation,
        worker_init_fn=loader.worker_init_fn,
    )


def _average_gradient_hooks(model: nn.Module, world: int) -> list[Any]:
    """For ``train_step`` models under DDP: average each gradient over ranks as it is accumulated.

    The sum over ranks of (already averaged grad + new local grad) / W is the averaged grad plus
    the new averaged grad, so a parameter used in several backward passes before its step (a GAN's
    discriminator) still ends with the average of what each rank accumulated.
    """

    def hook(p: torch.Tensor) -> None:
        dist.all_reduce(p.grad)
        p.grad.div_(world)

    return [
        p.register_post_accumulate_grad_hook(hook) for p in model.parameters() if p.requires_grad
    ]


def _all_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few numbers over all ranks (identity on one process)."""
    if dist_info()[1] == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


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


def _num_batches(loader: Iterable) -> int | None:
    """``len(loader)`` where the loader knows it, else None."""
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


def _to(batch: Any, device: torch.device) -> tuple[torch.Tensor, ...]:
    if isinstance(batch, torch.Tensor):
        batch = (batch,)
    return tuple(t.to(device, non_blocking=True) for t in batch)


def _loss_sums(
    model: nn.Module, loader: Iterable, device: torch.device, amp: str | None
) -> tuple[float, int]:
    total, count = 0.0, 0
    for batch in loader:
        batch = _to(batch, device)
        with _autocast(device, amp):
            loss = model.loss(*batch)
        total += float(loss) * len(batch[0])
        count += len(batch[0])
    return total, count


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
    try:
        total, count = _loss_sums(model, loader, device, amp)
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("evaluate_loss got an empty loader: expected at least one batch")
    return total / count


class _CompiledOrEager:
    """Call the compiled loss; if compiling fails, warn once and stay eager from then on."""

    def __init__(self, compiled: Callable, eager: Callable) -> None:
        self.compiled, self.eager, self.ok = compiled, eager, True

    def __call__(self, *batch: torch.Tensor) -> torch.Tensor:
        if self.ok:
            try:
                return self.compiled(*batch)
            except Exception as err:  # a backend that cannot compile here (no compiler, ...)
                out = self.eager(*batch)  # a real error in the model raises here, eagerly
                warnings.warn(
                    f"torch.compile failed ({type(err).__name__}: {err}); "
                    "training continues without it",
                    stacklevel=2,
                )
                self.ok = False
                return out
        return self.eager(*batch)


def _compile(module: nn.Module, option: bool | str) -> Callable:
    backend = "inductor" if option is True else str(option)
    compile_fn = getattr(torch, "compile", None)
    if compile_fn is None:
        warnings.warn("torch.compile is not available; training without it", stacklevel=3)
        return module
    try:
        return _CompiledOrEager(compile_fn(module, backend=backend), module)
    except Exception as err:
        warnings.warn(
            f"torch.compile is unavailable ({type(err).__name__}: {err}); training without it",
            stacklevel=3,
        )
        return module


def _default_step(
    model: nn.Module,
    loss_fn: Callable,
    batch: tuple[torch.Tensor, ...],
    optimizers: dict[str, torch.optim.Optimizer],
    cfg: TrainConfig,
    device: torch.device,
) -> dict[str, float]:
    (opt,) = optimizers.values()
    with _autocast(device, cfg.amp):
        loss = loss_fn(*batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()  # under DDP the gradients are averaged over ranks here
    if cfg.grad_clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    return {"loss": loss.item()}


def _resolve_device(device: str | torch.device, world: int) -> torch.device:
    dev = get_device(device)
    if world > 1 and dev.type == "cuda" and dev.index is None:  # one GPU per process
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    return dev


def _restore(
    state: dict[str, Any],
    ckpt: Path,
    model: nn.Module,
    optimizers: dict[str, torch.optim.Optimizer],
    scheduler: Any,
    rank: int,
) -> None:
    missing = [k for k in _TRAINING_KEYS if k not in state]
    if missing:
        raise CheckpointError(
            f"Checkpoint {ckpt} is not a training checkpoint written by dgm_edu.train.fit: "
            f"missing {missing}; expected a file that fit(checkpoint=...) saved"
        )
    saved_id = state.get("model_class")
    if saved_id is not None and saved_id != _model_id(model):
        raise CheckpointError(
            f"Checkpoint {ckpt} was saved from a {saved_id}, not a {_model_id(model)}: expected a "
            f"checkpoint of this model (delete it or pass another path to train afresh)"
        )
    load_model_state(model, state["model"], str(ckpt))
    if set(state["optimizers"]) != set(optimizers):
        raise CheckpointError(
            f"Checkpoint {ckpt} holds optimizers {sorted(state['optimizers'])}, expected "
            f"{sorted(optimizers)}"
        )
    for name, opt in optimizers.items():
        try:
            opt.load_state_dict(state["optimizers"][name])
        except (ValueError, KeyError) as err:
            raise CheckpointError(
                f"Checkpoint {ckpt}: optimizer {name!r} does not match ({err}); expected a "
                f"checkpoint of this model and optimizer"
            ) from None
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    per_rank = state.get("rng_ranks") or []
    rng = (
        per_rank[rank]
        if rank < len(per_rank)
        else {"cpu": state["rng_cpu"], "cuda": state.get("rng_cuda")}
    )
    torch.set_rng_state(rng["cpu"])
    if torch.cuda.is_available() and rng.get("cuda"):
        if isinstance(rng["cuda"], list | tuple):
            torch.cuda.set_rng_state_all(rng["cuda"])
        else:
            torch.cuda.set_rng_state(rng["cuda"])


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

    Under ``torchrun`` (after :func:`init_distributed`) the same call trains on every process with
    DistributedDataParallel; the loaders' batch sizes stay global batch sizes.
    """
    cfg = replace(config or TrainConfig(), **overrides)
    if cfg.epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {cfg.epochs}")
    rank, world = dist_info()
    device = _resolve_device(cfg.device, world)
    if cfg.seed is not None:
        seed_everything(cfg.seed + rank)  # distinct noise per process; DDP syncs the weights
    model.to(device)
    optimizers = _as_dict(optimizer)
    custom_step = getattr(model, "train_step", None)
    if custom_step is None and len(optimizers) != 1:
        raise ValueError(
            f"{type(model).__name__} has no train_step(batch, optimizers), so fit expects exactly "
            f"one optimizer, got {len(optimizers)}"
        )
    if cfg.compile and custom_step is not None:
        warnings.warn(
            "compile applies to model.loss; a model with train_step compiles its own "
            "parts, so fit trains it uncompiled",
            stacklevel=2,
        )
    train_loader = shard_loader(train_loader, seed=cfg.seed or 0)
    if val_loader is not None:
        val_loader = shard_loader(val_loader, evaluation=True)
    if _num_batches(train_loader) == 0:
        raise ValueError(EMPTY_LOADER)
    if val_loader is not None and _num_batches(val_loader) == 0:
        raise ValueError(EMPTY_VAL)

    hist, start, bad_epochs, best_state = History(), 0, 0, None
    ckpt = Path(cfg.checkpoint) if cfg.checkpoint is not None else None
    if ckpt is not None and cfg.resume and ckpt.exists():
        state = load_checkpoint(ckpt)
        _restore(state, ckpt, model, optimizers, scheduler, rank)
        hist = History(**state["history"])
        start, bad_epochs, best_state = state["epoch"], state["bad_epochs"], state["best_model"]

    loss_fn: Callable = LossModule(model)
    hooks: list[Any] = []
    if world > 1:
        if custom_step is None:
            loss_fn = nn.parallel.DistributedDataParallel(
                loss_fn,
                device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=cfg.find_unused_parameters,
            )  # broadcasts rank 0's weights
        else:
            for t in list(model.parameters()) + list(model.buffers()):
                dist.broadcast(t.data, 0)
            hooks = _average_gradient_hooks(model, world)
    if cfg.compile and custom_step is None:
        loss_fn = _compile(loss_fn, cfg.compile)

    t0 = time.perf_counter() - hist.seconds
    bar = tqdm(
        range(start, cfg.epochs),
        desc=cfg.desc,
        disable=not cfg.progress or rank != 0,
        initial=start,
        total=cfg.epochs,
        unit="epoch",
    )
    try:
        for epoch in bar:
            model.train()
            sampler = getattr(train_loader, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)  # a DistributedSampler reshuffles with seed + epoch
            sums: dict[str, float] = {}
            count = 0
            for step, raw in enumerate(train_loader):
                batch = _to(raw, device)
                if custom_step is not None:
                    with _autocast(device, cfg.amp):
                        logs = custom_step(batch, optimizer)
                else:
                    logs = _default_step(model, loss_fn, batch, optimizers, cfg, device)
                n = len(batch[0])
                keys = sorted(logs)
                if world > 1:  # global step means, so every rank sees the same numbers
                    tot = _all_sum([float(logs[k]) * n for k in keys] + [float(n)], device)
                    n, logs = int(tot[-1]), {k: v / tot[-1] for k, v in zip(keys, tot)}
                if not math.isfinite(logs["loss"]):
                    raise FloatingPointError(
                        f"Loss became {logs['loss']} at epoch {epoch} step {step}: lower the "
                        f"learning rate, set grad_clip, or check the input"
                    )
                for k in keys:
                    sums[k] = sums.get(k, 0.0) + logs[k] * n
                count += n
            if count == 0:
                raise ValueError(EMPTY_LOADER)
            hist.train_loss.append(sums.pop("loss") / count)
            for k, v in sums.items():
                hist.logs.setdefault(k, []).append(v / count)
            if scheduler is not None:
                scheduler.step()

            postfix = {"train": f"{hist.train_loss[-1]:.3f}"}
            if val_loader is not None:
                model.eval()
                with torch.no_grad():
                    total, n_val = _all_sum(
                        list(_loss_sums(model, val_loader, device, cfg.amp)), device
                    )
                model.train()
                if n_val == 0:
                    raise ValueError(EMPTY_VAL)
                val = total / n_val
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
                _save_training_state(
                    ckpt,
                    model,
                    optimizers,
                    scheduler,
                    hist,
                    cfg.epochs if stop else epoch + 1,
                    bad_epochs,
                    best_state,
                )
            if stop:
                break
    finally:
        bar.close()
        for h in hooks:
            h.remove()
    if cfg.restore_best and best_state is not None:
        model.load_state_dict(best_state)
    return hist


def _save_training_state(
    ckpt: Path,
    model: nn.Module,
    optimizers: dict[str, Any],
    scheduler: Any,
    hist: History,
    epoch: int,
    bad_epochs: int,
    best_state: Any,
) -> None:
    """Rank 0 writes the checkpoint (with every rank's RNG state) and its JSON history."""
    rank, world = dist_info()
    rng = {
        "cpu": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
    }
    ranks: list[Any] = [rng]
    if world > 1:
        ranks = [None] * world
        dist.all_gather_object(ranks, rng)
    if rank == 0:
        save_checkpoint(
            ckpt,
            {
                "model": model.state_dict(),
                "model_class": _model_id(model),
                "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "history": asdict(hist),
                "epoch": epoch,
                "bad_epochs": bad_epochs,
                "best_model": best_state,
                "rng_cpu": rng["cpu"],
                "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "rng_ranks": ranks if world > 1 else [],
            },
        )
        text = json.dumps(asdict(hist), indent=1).encode()
        _atomic_write(ckpt.with_suffix(".json"), lambda f: f.write(text))
    if world > 1:
        dist.barrier()  # no rank runs ahead of a checkpoint that is still being written
