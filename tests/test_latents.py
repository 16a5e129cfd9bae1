"""Latent paths: linear and spherical interpolation against closed forms, and the norm argument."""

import math

import pytest
import torch

from dgm_edu.latents import interpolate


def test_both_paths_start_and_end_at_the_codes_with_one_row_per_step():
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)  # any shape: one vector
    for kind in ("linear", "spherical"):
        path = interpolate(z0, z1, 7, kind=kind)
        assert path.shape == (7, 3, 4) and path.dtype == torch.float64
        torch.testing.assert_close(path[0], z0, rtol=0, atol=1e-12)
        torch.testing.assert_close(path[-1], z1, rtol=0, atol=1e-12)


def test_linear_is_the_straight_line():
    z0, z1 = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([3.0, 2.0, -1.5])
    path = interpolate(z0, z1, 5, kind="linear")
    for i, t in enumerate([0, 0.25, 0.5, 0.75, 1]):
        torch.testing.assert_close(path[i], (1 - t) * z0 + t * z1)


def test_spherical_follows_the_great_circle_at_constant_speed():
    # the unit circle: from (1, 0) to (0, 1) the path is (cos tπ/2, sin tπ/2)
    path = interpolate(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), 5)
    angles = torch.tensor([0, 0.25, 0.5, 0.75, 1]) * math.pi / 2
    torch.testing.assert_close(path, torch.stack([angles.cos(), angles.sin()], 1))
    g = torch.Generator().manual_seed(1)
    z0 = torch.randn(16, generator=g, dtype=torch.float64)
    z1 = torch.randn(16, generator=g, dtype=torch.float64)
    z1 = z1 * z0.norm() / z1.norm()  # equal norms: the norm is kept all the way
    path = interpolate(z0, z1, 9)
    torch.testing.assert_close(path.norm(dim=1), z0.norm().expand(9), rtol=1e-12, atol=0)
    unit = path / path.norm(dim=1, keepdim=True)
    step = torch.arccos((unit[1:] * unit[:-1]).sum(1).clamp(-1, 1))  # angle of each step
    torch.testing.assert_close(step, step.mean().expand(8), rtol=1e-9, atol=0)
    # (anti)parallel ends have no unique great circle: the straight line
    z = torch.tensor([1.0, 2.0])
    torch.testing.assert_close(interpolate(z, 3 * z, 4), interpolate(z, 3 * z, 4, kind="linear"))


def test_the_norm_argument_of_the_docstring_holds_for_prior_codes():
    """D = 16: prior codes have norms near √D; the straight midpoint of two has norm ≈ √(D/2),
    below the norm of about 95% of prior codes; the spherical midpoint keeps a typical norm."""
    g = torch.Generator().manual_seed(2)
    z = torch.randn(2000, 2, 16, generator=g, dtype=torch.float64)
    mid = {
        kind: torch.stack([interpolate(a, b, 3, kind=kind)[1] for a, b in z]).norm(dim=1)
        for kind in ("linear", "spherical")
    }
    ends = z.norm(dim=2)  # (2000, 2)
    assert mid["linear"].mean().item() == pytest.approx(math.sqrt(8), rel=0.03)
    assert ends.mean().item() == pytest.approx(math.sqrt(16), rel=0.03)
    below = (ends.flatten() < math.sqrt(8)).double().mean().item()
    assert 0.03 < below < 0.07  # P(χ²_16 < 8) = 0.051
    spherical = mid["spherical"]
    assert ((spherical >= ends.min(1).values - 0.2) & (spherical <= ends.max(1).values + 0.2)).all()
    assert spherical.mean().item() == pytest.approx(ends.mean().item(), rel=0.02)


def test_interpolate_refuses_what_it_cannot_join():
    z = torch.ones(4)
    with pytest.raises(ValueError, match=r"kind must be one of \('linear', 'spherical'\), got 'x'"):
        interpolate(z, z, kind="x")
    with pytest.raises(ValueError, match=r"z0 and z1 must be non-empty tensors of the same shape"):
        interpolate(z, torch.ones(5))
    with pytest.raises(TypeError, match=r"z0 and z1 must be tensors of the same shape, got list"):
        interpolate([1.0], z)
    with pytest.raises(TypeError, match=r"z0 and z1 must be float tensors, got torch.int64"):
        interpolate(torch.ones(4, dtype=torch.long), z)
    with pytest.raises(ValueError, match=r"steps must be an int >= 2, got 1"):
        interpolate(z, z, 1)
    with pytest.raises(ValueError, match=r"z0 and z1 must be non-zero for spherical"):
        interpolate(torch.zeros(4), z)
    assert torch.equal(interpolate(torch.zeros(4), z, 3, kind="linear")[1], z / 2)
