"""Scaling up: the part of :func:`dgm_edu.train.fit` that runs under torchrun, and compiled losses.

When ``torch.distributed`` is initialised (see :func:`init_distributed`), ``fit`` wraps the loss in
``DistributedDataParallel``, re-shards every loader with :func:`shard_loader` so that the *global*
batch size stays the recipe's (each of W processes gets ``batch_size // W`` examples), sums
validation losses over all processes with :func:`all_sum` so that early stopping agrees
everywhere, and lets only rank 0 (:func:`is_main_process`) write checkpoints and show progress.
Models with their own ``train_step`` (GANs) are not wrapped: :func:`average_gradient_hooks`
averages their gradients as they are accumulated.

Without torchrun every helper here is the identity: ``dist_info() == (0, 1)``. :func:`wrap_loss`
also applies ``torch.compile`` when asked, falling back to eager execution where it cannot compile.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Iterator
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

from dgm_edu.runtime import get_device

__all__ = [
    "all_gather",
    "all_sum",
    "average_gradient_hooks",
    "barrier",
    "broadcast_weights",
    "dist_info",
    "init_distributed",
    "is_main_process",
    "process_device",
    "shard_loader",
    "sync_train_step",
    "wrap_loss",
]


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
        batch = max(1, batch // world)  # the per-process share of the global batch
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


def broadcast_weights(model: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (what DDP does when it wraps a module)."""
    for t in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(t.data, 0)


def average_gradient_hooks(model: nn.Module, world: int) -> list[Any]:
    """For ``train_step`` models under DDP: average each gradient over ranks as it is accumulated.

    The sum over ranks of (already averaged grad + new local grad) / W is the averaged grad plus
    the new averaged grad, so a parameter used in several backward passes before its step (a GAN's
    discriminator) still ends with the average of what each rank accumulated. Returns the hook
    handles; call ``.remove()`` on each when training ends.
    """

    def hook(p: torch.Tensor) -> None:
        dist.all_reduce(p.grad)
        p.grad.div_(world)  # Σ_r g_r / W

    return [
        p.register_post_accumulate_grad_hook(hook) for p in model.parameters() if p.requires_grad
    ]


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few numbers over all ranks (the identity on one process)."""
    if dist_info()[1] == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` on one process)."""
    world = dist_info()[1]
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every rank (nothing on one process)."""
    if dist_info()[1] > 1:
        dist.barrier()


def process_device(device: str | torch.device) -> torch.device:
    """``get_device(device)``, with one GPU per process under torchrun (``LOCAL_RANK``)."""
    dev = get_device(device)
    if dist_info()[1] > 1 and dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    return dev


def sync_train_step(model: nn.Module) -> list[Any]:
    """For a ``train_step`` model under DDP: broadcast rank 0's weights and average gradients.

    Returns the hook handles to remove when training ends (none on one process).
    """
    world = dist_info()[1]
    if world == 1:
        return []
    broadcast_weights(model)
    return average_gradient_hooks(model, world)


# --------------------------------------------------------------------------- the wrapped loss
class LossModule(nn.Module):
    """``forward(*batch) = model.loss(*batch)``: the module that DDP and torch.compile wrap."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *batch: torch.Tensor) -> torch.Tensor:
        return self.model.loss(*batch)


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
        warnings.warn("torch.compile is not available; training without it", stacklevel=4)
        return module
    try:
        return _CompiledOrEager(compile_fn(module, backend=backend), module)
    except Exception as err:
        warnings.warn(
            f"torch.compile is unavailable ({type(err).__name__}: {err}); training without it",
            stacklevel=4,
        )
        return module


def wrap_loss(
    model: nn.Module,
    device: torch.device,
    *,
    compile: bool | str = False,
    find_unused_parameters: bool = False,
) -> Callable[..., torch.Tensor]:
    """``loss_fn(*batch) = model.loss(*batch)``: in DDP under torchrun, compiled on request.

    DDP broadcasts rank 0's weights when it wraps, and averages the gradients over ranks during
    ``backward()``. ``compile=True`` uses inductor; a string names another backend.
    """
    loss_fn: Callable = LossModule(model)
    if dist_info()[1] > 1:
        loss_fn = nn.parallel.DistributedDataParallel(
            loss_fn,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=find_unused_parameters,
        )
    return _compile(loss_fn, compile) if compile else loss_fn
