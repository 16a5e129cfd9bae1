"""Argument checks shared by every family: each public entry point checks what it is given here,
where the argument enters, so a wrong value fails at once with a message that names it.

The sampling contract every family follows (see ``CONTRIBUTING.md``):

- ``sample(n, *, y=None, **options)``: ``n`` a non-negative int; every option keyword-only;
- ``y`` is an int or an ``(n,)`` integer tensor of classes in ``[0, num_classes)``;
- ``y=None`` always asks for a sample of p(x). A model that has p(x) itself (an unconditional
  model, or a diffusion model trained with label dropout) samples it directly; a purely
  conditional model samples p(x) = Σ_y p(y) p(x | y) with the classes stratified, 0, 1, ..., K−1
  in turn (:func:`labels` with ``stratify=True``);
- an unconditional model refuses a ``y``;
- what is returned is checked: finite, and for digits integer levels on the grid 0..L−1
  (:func:`finite`, :func:`levels_out`).
"""

from __future__ import annotations

import math
import numbers

import torch


def count(n: object, name: str = "n") -> int:
    """A non-negative whole number of items (``sample(n)``): ints or numpy ints, no bools."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"{name} must be a non-negative int, got {n!r} ({type(n).__name__})")
    if n < 0:
        raise ValueError(f"{name} must be a non-negative int, got {n}")
    return int(n)


def integer(value: object, name: str, *, low: int, high: int | None = None) -> int:
    """A whole number in ``[low, high]`` (``high=None``: no upper end)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    span = f"in [{low}, {high}]" if high is not None else f">= {low}"
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be an int {span}, got {value}")
    return int(value)


def steps(value: object, name: str = "steps", *, high: int | None = None) -> int:
    """A number of sampler steps: an int in ``[1, high]`` (``high``: the model's T, if any)."""
    return integer(value, name, low=1, high=high)


def real(value: object, name: str, *, positive: bool = False, nonnegative: bool = False) -> float:
    """A finite real number, optionally > 0 or >= 0 (temperatures, eta, guidance, rates)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    what = "a finite number > 0" if positive else "a finite number >= 0" if nonnegative else ""
    if not math.isfinite(value):
        raise ValueError(f"{name} must be {what or 'a finite number'}, got {value}")
    if (positive and value <= 0) or (nonnegative and value < 0):
        raise ValueError(f"{name} must be {what}, got {value}")
    return value


def temperature(value: object, name: str = "temperature") -> float:
    """A sampling temperature: finite and > 0 (0 would divide by zero; < 0 reverses the order)."""
    return real(value, name, positive=True)


def labels(
    y: object,
    n: int,
    num_classes: int,
    device: torch.device | str = "cpu",
    *,
    stratify: bool = False,
    name: str = "y",
) -> torch.Tensor | None:
    """Check class labels for ``n`` items and return them as an int64 ``(n,)`` tensor on ``device``.

    ``y`` is None, an int, or an ``(n,)`` integer tensor with values in ``[0, num_classes)``.
    ``num_classes=0`` (an unconditional model) refuses any ``y``. ``y=None`` returns None, or with
    ``stratify=True`` (a purely conditional model sampling p(x)) the classes 0..K−1 in turn.
    """
    if num_classes == 0:
        if y is not None:
            raise ValueError(
                f"{name} was given but this model is unconditional (num_classes=0): expected "
                f"{name}=None"
            )
        return None
    if y is None:
        return torch.arange(n, device=device) % num_classes if stratify else None
    if isinstance(y, bool):
        raise TypeError(f"{name} must be an int or an (n,) integer tensor, got a bool")
    if isinstance(y, numbers.Integral):
        if not 0 <= y < num_classes:
            raise ValueError(
                f"{name} must hold classes in [0, {num_classes}), got values in [{y}, {y}]"
            )
        y = torch.full((n,), int(y), dtype=torch.long)
    if not isinstance(y, torch.Tensor):
        raise TypeError(
            f"{name} must be an int or an (n,) integer tensor of classes, got {type(y).__name__}"
        )
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer classes, got dtype {y.dtype}")
    if tuple(y.shape) != (n,):
        raise ValueError(f"{name} must have shape ({n},), one class per item, got {tuple(y.shape)}")
    if y.device.type != "meta" and n and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(
            f"{name} must hold classes in [0, {num_classes}), got values in "
            f"[{y.min().item()}, {y.max().item()}]"
        )
    return y.to(device=device, dtype=torch.long)


def points(x: object, dim: int, name: str = "points") -> torch.Tensor:
    """Check a batch of points ``(N, dim)`` (the 2D toys) where it enters; return it as floats.

    Integer points are converted to float32, floats keep their dtype (a model in float64 takes
    float64 points); anything else (not a tensor, another shape, an empty batch, NaN or inf)
    is refused with a message that names ``name``.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of shape (N, {dim}), got {type(x).__name__}"
        )
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
    if x.dim() != 2 or x.shape[1] != dim or x.shape[0] == 0:
        raise ValueError(
            f"{name} must be a non-empty batch of shape (N, {dim}), got {tuple(x.shape)}"
        )
    if x.device.type != "meta" and x.is_floating_point() and not torch.isfinite(x).all():
        raise ValueError(f"{name} contain NaN or inf: expected finite coordinates")
    return x if x.is_floating_point() else x.float()


def finite(t: torch.Tensor, what: str) -> torch.Tensor:
    """Refuse a non-finite model output before it is turned into samples (a NaN cast to int64
    would come back as -9223372036854775808)."""
    if t.device.type != "meta" and not torch.isfinite(t).all():
        raise FloatingPointError(
            f"{what} is not finite (NaN or inf): the model or the sampler diverged; check the "
            "weights, the step count and the temperature"
        )
    return t


def levels_out(x: torch.Tensor, levels: int = 17) -> torch.Tensor:
    """Check samples of digits before they are returned: int64 levels on the grid 0..L−1."""
    if x.dtype != torch.long:
        raise AssertionError(f"samples must be int64 levels, got dtype {x.dtype}")
    if x.device.type != "meta" and x.numel() and (x.min() < 0 or x.max() > levels - 1):
        raise AssertionError(f"samples must lie on the levels 0..{levels - 1}")
    return x
