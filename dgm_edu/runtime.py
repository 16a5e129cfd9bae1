"""The run-time knobs, each read in one place: the mode, the device, the seed, the budgets.

Three modes, chosen by the environment and read only here (chapters call :func:`mode`,
:func:`budget` and :func:`checkpoint_path`, never the environment):

- ``reference`` (the default, for readers): models load the shipped, verified weights of
  :mod:`dgm_edu.weights`; only what has none is trained, at the full budget;
- ``full`` (``DGM_EDU_MODE=full``): every model is retrained from scratch at the full budget
  (how the shipped weights were made: ``make weights``);
- ``fast`` (``DGM_EDU_MODE=fast``, or the older ``DGM_EDU_FAST=1``): the tiny budgets of the
  tests and CI, trained from scratch.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
import torch

T = TypeVar("T")
Mode = Literal["reference", "full", "fast"]
MODES: tuple[Mode, ...] = ("reference", "full", "fast")
MODE_ENV = "DGM_EDU_MODE"
FAST_ENV = "DGM_EDU_FAST"  # the older switch: DGM_EDU_FAST=1 is DGM_EDU_MODE=fast
CHECKPOINT_ENV = "DGM_EDU_CHECKPOINTS"  # where checkpoints go (default: ./.checkpoints)


def mode() -> Mode:
    """The run mode: ``"reference"`` (default), ``"full"`` or ``"fast"``; see the module doc."""
    fast_flag = os.environ.get(FAST_ENV, "").strip().lower() in {"1", "true", "yes", "on"}
    raw = os.environ.get(MODE_ENV, "").strip().lower()
    if not raw:
        return "fast" if fast_flag else "reference"
    if raw not in MODES:
        raise ValueError(f"{MODE_ENV}={raw!r} is not a mode: expected one of {', '.join(MODES)}")
    if fast_flag and raw != "fast":
        raise ValueError(
            f"{FAST_ENV}=1 asks for fast mode but {MODE_ENV}={raw!r}: expected one of them, "
            "or the two to agree"
        )
    return raw  # type: ignore[return-value]


def is_fast() -> bool:
    """True in fast mode (tests and CI)."""
    return mode() == "fast"


def budget(*, fast: T, full: T) -> T:
    """Pick the fast-mode or the full-mode value, e.g. ``epochs = budget(fast=5, full=200)``.

    Reference mode uses the full budgets: the shipped weights were trained with them, and the
    chapters evaluate those weights at the same sample sizes as a full run.
    """
    return fast if is_fast() else full


def checkpoint_path(name: str) -> Path:
    """Where the training checkpoint of ``name`` lives in the current mode.

    ``.checkpoints/<mode>/<name>.pt`` under the working directory (or ``$DGM_EDU_CHECKPOINTS``),
    so runs of different modes never resume from each other's files.
    """
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise ValueError(f"checkpoint name must be a plain file stem like 'vae-2d', got {name!r}")
    root = Path(os.environ.get(CHECKPOINT_ENV) or ".checkpoints")
    return root / mode() / f"{name}.pt"


def get_device(device: str | torch.device = "auto") -> torch.device:
    """Resolve a device: ``"auto"`` picks cuda, then mps, then cpu."""
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise TypeError(f"device must be a string or torch.device, got {type(device).__name__}")
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = device.split(":", 1)[0]
    if kind not in {"cpu", "cuda", "mps", "meta"}:
        raise ValueError(
            f"Unknown device {device!r}: expected 'auto', 'cpu', 'cuda', 'cuda:N', 'mps' or 'meta'"
        )
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"Unknown device {device!r}: {err}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"Device {device!r} was requested but CUDA is not available on this machine: "
            f"expected 'auto' or 'cpu'"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(
            f"Device {device!r} was requested but this machine has "
            f"{torch.cuda.device_count()} CUDA device(s): expected an index below that"
        )
    mps = getattr(torch.backends, "mps", None)
    if dev.type == "mps" and (mps is None or not mps.is_available()):
        raise ValueError(
            f"Device {device!r} was requested but MPS is not available on this machine: "
            f"expected 'auto' or 'cpu'"
        )
    return dev


def module_device(model: torch.nn.Module) -> torch.device:
    """The device of a model: that of its first parameter, else its first buffer, else cpu.

    The one way every family finds where to put the tensors it creates (noise, labels, chains).
    """
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def module_dtype(model: torch.nn.Module) -> torch.dtype:
    """The floating dtype of a model's first floating parameter or buffer (float32 if none), the
    dtype a model casts its float inputs to."""
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch Generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
