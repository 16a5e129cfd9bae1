"""Paths between two latent codes: linear and spherical interpolation, and when to use which.

A latent-variable model (a VAE's decoder, a GAN's generator) is a smooth map from codes z to
images, so a path between two codes decodes to a path of images. Which path depends on where the
codes live:

- **spherical** (slerp) for codes drawn from the prior N(0, I) in D dimensions. Such a code's
  squared norm is χ²_D, mean D and standard deviation √(2D), so its norm concentrates near √D:
  for D = 16, 98% of codes have a norm between 2.4 and 5.7. Two independent codes are nearly
  orthogonal, so the straight line's midpoint (z₀ + z₁)/2 has norm ≈ √(D/2) (2.8 for D = 16,
  below the norm of 95% of prior codes), a region training rarely visited. The great circle from
  z₀ to z₁ keeps the norm typical: exactly ‖z₀‖ all the way when ‖z₁‖ = ‖z₀‖, and between ‖z₀‖
  and ‖z₁‖ for orthogonal ends, as two prior codes nearly are;
- **linear** where the space is not Gaussian-shaped, so that no norm is typical: points of a
  space with another distribution (the 2D toys), or pixels (a pixel blend, the double exposure
  that latent paths are compared with). Between codes of a typical norm, its middle dips to a
  norm the model rarely saw (chapter 3 measures it for a VAE's posterior means).
"""

from __future__ import annotations

import torch

from dgm_edu import checks

KINDS = ("linear", "spherical")


def interpolate(
    z0: torch.Tensor, z1: torch.Tensor, steps: int = 10, *, kind: str = "spherical"
) -> torch.Tensor:
    """``steps`` points from ``z0`` to ``z1`` (both ends included): ``(steps, *z0.shape)``.

    At t = 0, 1/(steps − 1), ..., 1 (float, on the ends' device and dtype):

    - ``kind="linear"``:    z(t) = (1 − t) z₀ + t z₁;
    - ``kind="spherical"``: z(t) = [sin((1 − t) ω) z₀ + sin(t ω) z₁] / sin ω, with ω the angle
      between z₀ and z₁ (the whole tensor read as one vector), at constant angular speed. For
      ends of nearly the same or the opposite direction (sin ω < 1e-6) it is the linear path.

    The module's docstring says why each.
    """
    if not isinstance(z0, torch.Tensor) or not isinstance(z1, torch.Tensor):
        got = type(z0 if not isinstance(z0, torch.Tensor) else z1).__name__
        raise TypeError(f"z0 and z1 must be tensors of the same shape, got {got}")
    if z0.shape != z1.shape or z0.numel() == 0:
        raise ValueError(
            f"z0 and z1 must be non-empty tensors of the same shape, got {tuple(z0.shape)} and "
            f"{tuple(z1.shape)}"
        )
    if not (z0.is_floating_point() and z1.is_floating_point()):
        raise TypeError(f"z0 and z1 must be float tensors, got {z0.dtype} and {z1.dtype}")
    steps = checks.integer(steps, "steps", low=2)
    t = torch.linspace(0, 1, steps, dtype=z0.dtype, device=z0.device)  # (T,)
    t = t.view(-1, *([1] * z0.dim()))  # (T, 1, ..., 1): broadcasts against z
    if kind == "linear":
        return (1 - t) * z0 + t * z1
    if kind != "spherical":
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    n0, n1 = z0.flatten().norm(), z1.flatten().norm()
    if n0 == 0 or n1 == 0:
        raise ValueError(
            "z0 and z1 must be non-zero for spherical interpolation: a zero code has no "
            "direction (use kind='linear')"
        )
    cos = ((z0.flatten() / n0) @ (z1.flatten() / n1)).clamp(-1, 1)
    omega = torch.arccos(cos)  # the angle between the ends
    if torch.sin(omega) < 1e-6:  # (anti)parallel ends: no unique great circle; the line
        return (1 - t) * z0 + t * z1
    return (torch.sin((1 - t) * omega) * z0 + torch.sin(t * omega) * z1) / torch.sin(omega)
