"""The run-time knobs, each read in one place: the device, the seed, and the training budget.

``DGM_EDU_FAST=1`` selects the small budgets used by the tests and CI; full mode is the default.
Chapters call :func:`budget` and never read the variable themselves.
"""

from __future__ import annotations

import os
import random
from typing import TypeVar

import numpy as np
import torch

T = TypeVar("T")
FAST_ENV = "DGM_EDU_FAST"


def is_fast() -> bool:
    """True when ``DGM_EDU_FAST`` is set to 1/true/yes (tests and CI), False otherwise."""
    return os.environ.get(FAST_ENV, "0").strip().lower() in {"1", "true", "yes", "on"}


def budget(*, fast: T, full: T) -> T:
    """Pick the fast-mode or the full-mode value, e.g. ``epochs = budget(fast=5, full=200)``."""
    return fast if is_fast() else full


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


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch Generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
