"""The families under test, from ONE registry: :mod:`dgm_edu.weights`.

Every distinct variant of a model class that the manifest records (the class, its categorical
config choices, conditional or not) is built with ``weights.build_model(row)`` from its recorded
config (the smallest row of its group); the library models that ship no weights are listed in
``UNSHIPPED`` next to it. A family registered in ``weights.RECIPES`` and built with
``make weights`` is covered by every test that uses this module without editing it.

A family's data kind is what its ``sample`` returns: digits (int64 ``(n, 1, 8, 8)``), points
(float ``(n, 2)``, or ``(n, D)`` for a latent prior) or text ids (int64 ``(n, L)``); :func:`batch`
gives a real batch of that kind.
Used by tests/test_contract.py, tests/test_properties.py and tests/test_mutants_*.py.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from dgm_edu import weights
from dgm_edu.data import IMAGE_SHAPE, LEVELS, load_digits, toy_2d

# Registry configs are used as recorded, except these fields, capped where a config has them:
# sampling runs T network passes (and a PixelCNN one per pixel), the diffusion bound
# bound_samples of them per image, an exact log Z sums 2^num_hidden terms. The contract needs
# the code paths, not the sizes.
# An energy model's log Z runs ais_betas x ais_runs passes, its loss langevin_steps per item.
SMALLER = {"T": 50, "bound_samples": 8, "num_hidden": 12, "channels": 32, "num_layers": 4,
           "ais_betas": 50, "ais_runs": 16, "buffer_size": 64, "langevin_steps": 5,
           "steps_per_level": 5}  # fmt: skip

# Library models that ship no weights, listed next to the registry (class path, constructor).
UNSHIPPED: dict[str, Callable[[], nn.Module]] = {
    "mixtures.UniformPixels": lambda: importlib.import_module("dgm_edu.mixtures").UniformPixels(),
    "mixtures.GaussianMixture": lambda: importlib.import_module(
        "dgm_edu.mixtures"
    ).GaussianMixture(),
    "autoregressive.PixelCNN": lambda: _small_pixelcnn(),
    "mixtures.TrainingSetLookup": lambda: importlib.import_module(
        "dgm_edu.mixtures"
    ).TrainingSetLookup(load_digits("train")[0][torch.randperm(1000, device="cpu")[:64]]),
    "latent_diffusion.LatentDiffusion": lambda: _small_latent_diffusion(),
}

# A model that has ``log_prob`` but documents that it refuses a data kind: (variant, message).
LOG_PROB_REFUSED = {
    variant: "log_prob is defined for the discrete digits only"
    for variant in ("Diffusion[toy]", "Diffusion[toy,16d]")
}


def _small_latent_diffusion() -> nn.Module:
    """Chapter 9's pair (its parts ship as "vae" and "latent-diffusion"), small."""
    diffusion, latent, vae = (importlib.import_module(f"dgm_edu.{m}") for m in (
        "diffusion", "latent_diffusion", "vae"))  # fmt: skip
    prior = diffusion.Diffusion(diffusion.DiffusionConfig(data="toy", dim=4, channels=16, T=20))
    return latent.LatentDiffusion(
        vae.VAE(vae.VAEConfig(latent_dim=4, channels=8)), prior, draws=2, steps=5
    )


def _small_pixelcnn() -> nn.Module:
    ar = importlib.import_module("dgm_edu.autoregressive")
    return ar.PixelCNN(ar.PixelCNNConfig(channels=16, num_layers=2))


# --------------------------------------------------------------------------- the registry
def _variant_key(row: dict[str, Any]) -> tuple:
    """What chooses a code path: the config's categorical fields, and conditional or not."""
    cfg = row.get("config") or {}
    cats = tuple(
        sorted((k, str(v)) for k, v in cfg.items() if isinstance(v, str | bool | list | tuple))
    )
    dim = cfg.get("dim") if cfg.get("data") == "toy" else None  # points in R^dim: a data kind
    return (row["class"], cats, bool(cfg.get("num_classes")), dim)


def _variant_name(row: dict[str, Any]) -> str:
    cls = row["class"].rsplit(".", 1)[1]
    cfg = row.get("config") or {}
    tags = [str(cfg[k]) for k in ("data", "kind", "dequantization") if k in cfg]
    if cfg.get("data") == "toy" and cfg.get("dim", 2) != 2:
        tags.append(f"{cfg['dim']}d")  # the latent prior of chapter 9: points in R^16
    if "data_shape" in cfg:
        tags.append("x".join(str(d) for d in cfg["data_shape"]))
    if cfg.get("num_classes"):
        tags.append("cond")
    return f"{cls}[{','.join(tags)}]" if tags else cls


def _registry() -> dict[str, tuple[str, dict[str, Any]]]:
    """One manifest row per variant (the smallest of its group), by variant name."""
    groups: dict[tuple, tuple[str, dict[str, Any]]] = {}
    for name, row in sorted(weights.manifest().items()):
        key = _variant_key(row)
        if key not in groups or row["parameters"] < groups[key][1]["parameters"]:
            groups[key] = (name, row)
    return {_variant_name(row): (name, row) for name, row in groups.values()}


REGISTRY = _registry()
VARIANTS = sorted(REGISTRY) + sorted(UNSHIPPED)


def builder(variant: str, smaller: dict[str, Any] | None = None) -> Callable[[], nn.Module]:
    """The constructor of ``variant``; ``smaller`` caps more config fields where they exist."""
    if variant not in REGISTRY:
        return UNSHIPPED[variant]
    row = dict(REGISTRY[variant][1])
    cap = SMALLER | (smaller or {})
    row["config"] = {
        k: min(v, cap[k]) if k in cap and isinstance(v, int) else v
        for k, v in (row["config"] or {}).items()
    }
    return lambda: weights.build_model(row)


def build(variant: str, seed: int = 0, smaller: dict[str, Any] | None = None) -> nn.Module:
    """The model, built from seed ``seed``; a registry entry that cannot be built FAILS."""
    torch.manual_seed(seed)
    try:
        return builder(variant, smaller)()
    except Exception as err:
        pytest.fail(f"{variant}: cannot build the model: {type(err).__name__}: {err}")


def has(variant: str, method: str) -> bool:
    """Whether the variant's class has ``method``. A class that cannot even be found counts as
    having it, so that the test runs and fails in :func:`build` with the reason."""
    try:
        cls = (
            weights._import(REGISTRY[variant][1]["class"])
            if variant in REGISTRY
            else type(builder(variant)())
        )
    except Exception:
        return True
    return callable(getattr(cls, method, None))


def num_classes(model: nn.Module) -> int:
    return int(getattr(getattr(model, "config", None), "num_classes", 0) or 0)


# --------------------------------------------------------------------------- data kinds
VAL_X, VAL_Y = load_digits("val")


def _probe(variant: str) -> tuple[str, tuple[int, ...]] | str:
    """``(kind, item shape)`` read off what the model samples (n = 2, fixed seed), or why not.

    The data kind of a family is what its ``sample`` returns: digits (int64 ``(n, 1, 8, 8)``),
    2D points (float ``(n, 2)``) or text ids (int64 ``(n, L)``).
    """
    try:
        torch.manual_seed(0)
        model = builder(variant)()
        s = model.sample(2)
    except Exception as err:
        return (
            f"{variant}: building it or sample(2) raised {type(err).__name__}: {err}; the "
            "contract needs sample(n) without options (a conditional model samples p(x))"
        )
    if not isinstance(s, torch.Tensor):
        return f"{variant}: sample(2) returned {type(s).__name__}, not a tensor"
    if s.dtype == torch.long and tuple(s.shape) == (2, *IMAGE_SHAPE):
        return "digits", IMAGE_SHAPE
    if s.is_floating_point() and s.dim() == 2 and s.shape[0] == 2:
        return "points", tuple(s.shape[1:])  # (2,) for the 2D toys, (D,) for latents
    if s.dtype == torch.long and s.dim() == 2:
        return "ids", tuple(s.shape[1:])
    return (
        f"{variant}: sample(2) gave {s.dtype} {tuple(s.shape)}, and no family kind fits: "
        f"expected digits int64 (n, {', '.join(map(str, IMAGE_SHAPE))}), points float (n, 2) "
        "or ids int64 (n, L)"
    )


PROBES = {v: _probe(v) for v in VARIANTS}


def kind(variant: str) -> str:
    probe = PROBES[variant]
    if isinstance(probe, str):
        pytest.fail(probe)
    return probe[0]


def _text_ids(n: int, length: int) -> torch.Tensor:
    from dgm_edu.autoregressive import Vocab, load_names

    words = load_names()
    return Vocab(words).encode(words[:n], length - 1)  # (n, length)


def batch(variant: str, model: nn.Module, n: int = 4, device: str = "cpu") -> tuple:
    """A real batch of the model's kind, with labels if it is conditional: ``loss(*batch)``."""
    data = kind(variant)
    if data == "digits":
        x = VAL_X[:n]
    elif data == "points" and PROBES[variant][1] == (2,):
        x = toy_2d("ring8", n, seed=1)
    elif data == "points":  # points in R^D (a latent prior): standard normal draws
        x = torch.randn(n, *PROBES[variant][1], generator=torch.Generator().manual_seed(1))
    else:
        x = _text_ids(n, PROBES[variant][1][0])
    out = (x, VAL_Y[:n]) if num_classes(model) else (x,)
    if device == "meta":
        return tuple(torch.zeros(t.shape, dtype=t.dtype, device="meta") for t in out)
    return out


def check_items(out: torch.Tensor, n: int, kind: str, model: nn.Module, what: str) -> None:
    """``out`` is n items of ``kind``: digits on the grid, finite points, ids in the vocabulary."""
    assert isinstance(out, torch.Tensor), f"{what} returned {type(out).__name__}"
    assert out.shape[0] == n, f"{what}: {out.shape[0]} items, expected {n}"
    if kind == "digits":
        assert out.dtype == torch.long, f"{what}: dtype {out.dtype}"
        assert tuple(out.shape[1:]) == IMAGE_SHAPE, f"{what}: shape {tuple(out.shape)}"
        if n:
            assert 0 <= out.min() and out.max() <= LEVELS - 1, f"{what}: off the grid 0..16"
    elif kind == "points":
        d = getattr(getattr(model, "config", None), "dim", 2)
        assert out.is_floating_point() and out.shape[1:] == (d,), (out.dtype, out.shape)
        assert torch.isfinite(out).all(), f"{what}: non-finite points"
    else:
        assert out.dtype == torch.long and out.dim() == 2, (out.dtype, out.shape)
        if n:
            vocab = model.config.vocab_size
            assert 0 <= out.min() and out.max() < vocab, f"{what}: ids outside [0, {vocab})"
    assert not out.requires_grad, f"{what} must run under no_grad"


def perturbed(model: nn.Module, seed: int = 1) -> nn.Module:
    """Move every float parameter off its initial value (zero-initialised layers included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model
