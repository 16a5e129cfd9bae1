"""Reference weights: every model a chapter trains at its full budget, shipped and verified.

The book's reader runs in *reference* mode (:func:`dgm_edu.runtime.mode`): a chapter asks for a
model by name with :func:`obtain`, which loads the shipped weights instead of retraining them.
In *full* and *fast* mode the same call trains the model from scratch with its recipe.

- :func:`names` lists the shipped entries; :func:`load` returns one model in eval mode, ready for
  ``log_prob`` and ``sample``; :func:`history` its training curves; :func:`entry` its manifest row.
- Every entry is a ``safetensors`` file (tensors only: loading runs no code) under
  ``dgm_edu/assets/weights/`` plus one row of ``manifest.json``: the file's sha256, the model
  class and config, the recipe, seed, torch version and thread count it was built with, the
  training seconds, and the validation and test figures measured when it was built. The digest
  is checked on every load.
- ``make weights`` (``python -m dgm_edu.weights build``) rebuilds them in full mode: each recipe
  below is the one its chapter uses. A rebuild with the recorded thread count on a CPU of the
  recorded ``cpu`` signature (:func:`cpu_signature`: model and instruction sets, which decide the
  kernels torch and MKL pick) reproduces each file bit for bit; on another CPU the floats round
  differently, so a rebuild reproduces the figures, not the bytes (the suite checks both).

The headline digits models are ``mixture``, ``rbm``, ``vae``, ``gan``, ``autoregressive``,
``flows``, ``diffusion`` and ``energy``.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import hashlib
import importlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dgm_edu import checks, runtime
from dgm_edu.train import History

WEIGHTS_DIR = Path(__file__).parent / "assets" / "weights"
MANIFEST = "manifest.json"
HEADLINE = (
    "mixture", "rbm", "vae", "gan", "autoregressive", "flows", "diffusion", "energy", "vqvae",
    "latent-diffusion",
)  # fmt: skip


# the output folder of the build in progress in this process (None outside build()): see needed()
_BUILD_OUT: ContextVar[Path | None] = ContextVar("_BUILD_OUT", default=None)


class WeightsError(RuntimeError):
    """A shipped weights file that is unknown, missing, or not the one the manifest describes."""


# --------------------------------------------------------------------------- the recipes
@dataclass(frozen=True)
class Recipe:
    """How one entry is trained. ``train(checkpoint, progress)`` returns ``(model, history)``, or
    for a staged recipe a list of ``(stop, model, history)`` (the entries ``name@stop``, the last
    one is ``name``). ``figures(model)`` measures the manifest's test figures (fixed seeds)."""

    train: Callable[[Path | None, bool], Any]
    figures: Callable[..., dict[str, Any]]  # (model, full=True): full=False skips slow estimators
    chapter: str
    stages: tuple[int, ...] = ()
    seed: int = 0  # the training seed the recipe uses (recorded in the manifest)
    half: bool = False  # stored in float16 (the size budget); figures measured on those weights
    needs: tuple[str, ...] = ()  # entries it is fitted to (see needed): a build makes them first


def _digits_nll(
    estimate: Callable[[nn.Module], Callable], estimator: str, check: Callable | None = None
):
    """Figures of a digits likelihood model: the benchmark's estimator on the test split, and a
    cheap ``check`` estimator (fixed seed) that the test suite recomputes."""

    def figures(model: nn.Module, full: bool = True) -> dict[str, Any]:
        from dgm_edu.data import load_digits
        from dgm_edu.metrics import evaluate_nll, nats_to_bpd

        x, _ = load_digits("test")
        out: dict[str, Any] = {}
        for key, est in (("test", estimate if full or check is None else None), ("check", check)):
            if est is None:
                continue
            runtime.seed_everything(0)
            with torch.no_grad():
                nll = evaluate_nll(est(model), x)
            out[f"{key}_nll_nats"] = round(nll, 4)
        if "test_nll_nats" in out:
            out["test_bpd"] = round(nats_to_bpd(out["test_nll_nats"]), 4)
        out["estimator"] = estimator
        return out

    return figures


def _exact(model: nn.Module) -> Callable:
    return model.log_prob


def _gan_figures(model: nn.Module, full: bool = True) -> dict[str, Any]:
    from dgm_edu.data import load_digits
    from dgm_edu.metrics import fid, precision_recall

    x, _ = load_digits("test")
    runtime.seed_everything(0)
    with torch.no_grad():
        s = model.sample(len(x))
    p, r = precision_recall(s, x)
    return {
        "test_fid": round(fid(s, x), 3),
        "precision": round(p, 4),
        "recall": round(r, 4),
        "estimator": f"FID/precision/recall of {len(x)} samples (seed 0) against the test split",
    }


def _ring_figures(model: nn.Module, full: bool = True) -> dict[str, Any]:
    from dgm_edu.metrics import mode_coverage

    runtime.seed_everything(0)
    with torch.no_grad():
        s = model.sample(2000)
    covered, within = mode_coverage(s)
    return {"modes": covered, "within_3sigma": round(within, 4), "estimator": "2000 samples"}


def _toy_nll(name: str) -> Callable[[nn.Module], dict[str, Any]]:
    def figures(model: nn.Module, full: bool = True) -> dict[str, Any]:
        from dgm_edu.data import toy_2d

        x = toy_2d(name, 4000, seed=123)
        with torch.no_grad():
            nll = -model.log_prob(x).mean().item()
        return {"test_nll_nats": round(nll, 4), "estimator": f"4000 fresh {name} points"}

    return figures


def _vae_elbo(model: nn.Module, full: bool = True) -> dict[str, Any]:
    from dgm_edu.data import load_digits

    x, y = load_digits("test")
    args = (y,) if model.config.num_classes > 0 else ()
    runtime.seed_everything(0)
    with torch.no_grad():
        neg_elbo = -torch.stack([model.elbo(x, *args) for _ in range(10)]).mean().item()
    return {"test_neg_elbo_nats": round(neg_elbo, 4), "estimator": "ELBO, mean of 10 draws"}


def _text_figures(model: nn.Module, full: bool = True) -> dict[str, Any]:
    from dgm_edu.autoregressive import Vocab, load_names

    words = load_names()
    ids = Vocab(words).encode(words[2700:], model.config.max_len)
    with torch.no_grad():
        nll = -model.log_prob(ids).mean().item()
    return {"test_nll_nats": round(nll, 4), "estimator": "exact NLL per name, 300 test names"}


def _names_split() -> tuple[list[str], list[str], Any]:
    from dgm_edu.autoregressive import Vocab, load_names

    words = load_names()
    return words[:2400], words[2400:2700], Vocab(words)


# Each recipe is exactly the call its chapter makes (the chapter calls obtain(name)).
def _mixture(ck, progress):
    from dgm_edu.mixtures import train_reference

    return train_reference(checkpoint=ck, progress=progress)


def _rbm(ck, progress):
    from dgm_edu.rbm import train_reference

    return train_reference(checkpoint=ck, progress=progress)


def _vae(ck, progress):
    from dgm_edu.vae import train_reference

    return train_reference(checkpoint=ck, progress=progress)


def _vae_variant(kind: str, beta: float = 1.0) -> Callable:
    """The chapter-3 side models: ``"2d"`` (a 2D latent), ``"beta"`` (the sweep), ``"cond"``."""

    def train(ck, progress):
        from dgm_edu.runtime import budget
        from dgm_edu.vae import VAEConfig, train_vae

        if kind == "beta":
            cfg = VAEConfig(latent_dim=16, channels=16, beta=beta, warmup_steps=100)
            epochs, patience = budget(fast=3, full=60), budget(fast=None, full=15)
        else:
            latent, classes = (2, 0) if kind == "2d" else (16, 10)
            cfg = VAEConfig(latent_dim=latent, channels=budget(fast=16, full=32),
                            num_classes=classes, warmup_steps=200)  # fmt: skip
            epochs, patience = budget(fast=5, full=100), budget(fast=None, full=20)
        return train_vae(cfg, epochs=epochs, patience=patience, checkpoint=ck, progress=progress)

    return train


def _gan_staged(data: str, fast: list[int], full: list[int]) -> Callable:
    def train(ck, progress):
        from functools import partial

        from dgm_edu.gan import train_reference
        from dgm_edu.runtime import budget
        from dgm_edu.train import fit_stages

        make = partial(train_reference, data=data, progress=progress)
        return fit_stages(make, budget(fast=fast, full=full), checkpoint=ck)

    return train


def _cgan(ck, progress):
    from dgm_edu.gan import GANConfig, train_reference

    config = GANConfig(arch="conv", hidden=64, latent_dim=16, num_classes=10)
    return train_reference(data="digits", config=config, checkpoint=ck, progress=progress)


def _pixelcnn(conditional: bool) -> Callable:
    def train(ck, progress):
        from dgm_edu.autoregressive import train_reference

        model, hist = train_reference(checkpoint=ck, progress=progress, conditional=conditional)
        return model.eval(), hist

    return train


def _text(kind: str) -> Callable:
    def train(ck, progress):
        from dgm_edu.autoregressive import train_char_model
        from dgm_edu.runtime import budget

        train_words, val_words, vocab = _names_split()
        model, hist = train_char_model(
            kind, train_words, vocab, epochs=budget(fast=2, full=30), val_words=val_words,
            progress=progress, checkpoint=ck,
        )  # fmt: skip
        return model.eval(), hist

    return train


def _digit_flow(dequantization: str, shift_prob: float | None = None) -> Callable:
    """Chapter 6's recipe; ``shift_prob=0``: without its augmentation (the control)."""

    def train(ck, progress):
        from dgm_edu.digit_flow import REFERENCE_SHIFT_PROB, train_reference

        model, hist = train_reference(
            dequantization=dequantization,
            checkpoint=ck,
            progress=progress,
            shift_prob=REFERENCE_SHIFT_PROB if shift_prob is None else shift_prob,
        )
        return model.eval(), hist

    return train


def _flow2d(name: str, kind: str = "coupling", num_layers: int = 8) -> Callable:
    def train(ck, progress):
        from dgm_edu.flows import train_toy

        return train_toy(name, kind=kind, num_layers=num_layers, checkpoint=ck, progress=progress)

    return train


def _diffusion(ck, progress):
    from dgm_edu.diffusion import train_reference

    model, hist = train_reference(checkpoint=ck, progress=progress)
    return model.eval(), hist


def _toy_denoiser(kind: str) -> Callable:
    def train(ck, progress):
        from dgm_edu.diffusion import Diffusion, DiffusionConfig, train_toy
        from dgm_edu.flow_matching import FlowMatching
        from dgm_edu.runtime import budget

        cls = {"diffusion": Diffusion, "flow-matching": FlowMatching}[kind]
        model = cls(DiffusionConfig(data="toy", channels=128))
        epochs = budget(fast=30, full=300) if kind == "flow-matching" else None
        hist = train_toy(model, "ring8", epochs=epochs, progress=progress, checkpoint=ck)
        return model.eval(), hist

    return train


def _vae_arch(kind: str, seed: int, longer: int = 1, shift_prob: float | None = None) -> Callable:
    """The reference recipe with another seed (``kind="conv"``) or the fully connected control
    (``kind="mlp"``): chapter 3's MLP-against-ConvNet comparison, at equal optimiser steps
    (``longer`` > 1: that many times the reference's epochs, the control for a slow learner;
    ``shift_prob=0``: the reference without its augmentation, the control for the shifts)."""

    def train(ck, progress):
        from dgm_edu.vae import REFERENCE_SHIFT_PROB, reference_epochs, train_reference

        epochs = None if longer == 1 else longer * reference_epochs()
        return train_reference(
            checkpoint=ck,
            progress=progress,
            seed=seed,
            kind=kind,
            epochs=epochs,
            shift_prob=REFERENCE_SHIFT_PROB if shift_prob is None else shift_prob,
        )

    return train


def _toy_denoiser_simple(ck, progress):
    """Chapter 7's toy diffusion trained on L_simple: the "diffusion-toy" recipe (same network,
    data, epochs, seed) with ``weighting="simple"``, for the bound-against-L_simple comparison."""
    from dgm_edu.diffusion import Diffusion, DiffusionConfig, train_toy

    model = Diffusion(DiffusionConfig(data="toy", channels=128, weighting="simple"))
    hist = train_toy(model, "ring8", progress=progress, checkpoint=ck)
    return model.eval(), hist


def _vae_k(k: int) -> Callable:
    return lambda m: lambda x: m.log_prob(x, k=k)


def _flow_k(k: int) -> Callable:
    return lambda m: lambda x: m.log_prob(x, num_samples=k)


def _diffusion_figures(model: nn.Module, full: bool = True) -> dict[str, Any]:
    return _digits_nll(_exact, "variational bound, 64 stratified timesteps per image")(model)


ENERGY_STAGES = (20, 60)  # "energy@20" is the baseline of the ablations, trained as long


def _energy(ck, progress):
    from functools import partial

    from dgm_edu.energy import train_reference
    from dgm_edu.runtime import budget
    from dgm_edu.train import fit_stages

    make = partial(train_reference, progress=progress)
    return fit_stages(make, budget(fast=[1, 2], full=list(ENERGY_STAGES)), checkpoint=ck)


def _energy_ablation(name: str) -> Callable:
    """Chapter 8's tricks, each shown by what breaks without it: the reference recipe with the
    one change ``energy.ABLATIONS[name]``, trained as long as ``energy@20``."""

    def train(ck, progress):
        from dgm_edu.energy import ABLATIONS, train_reference
        from dgm_edu.runtime import budget

        epochs = budget(fast=1, full=ENERGY_STAGES[0])
        return train_reference(checkpoint=ck, progress=progress, epochs=epochs, **ABLATIONS[name])

    return train


def _energy_figures(seeds: int) -> Callable[..., dict[str, Any]]:
    """Figures of a digits EBM: energies of the test images, of uniform noise and of Langevin
    samples (cheap, recomputed by the suite), and with ``full`` the AIS test NLL estimate over
    ``seeds`` AIS seeds (the spread) and the FID of 1000 Langevin samples."""

    def figures(model: nn.Module, full: bool = True) -> dict[str, Any]:
        from dgm_edu.energy import digits_figures

        return digits_figures(model, ais_seeds=seeds if full else 0, samples=1000 if full else 0)

    return figures


def _energy_toy(ck, progress):
    from dgm_edu.energy import train_toy

    return train_toy("ring8", checkpoint=ck, progress=progress)


def _score_toy(ck, progress):
    from dgm_edu.scores import train_toy

    return train_toy("ring8", checkpoint=ck, progress=progress)


# "vqvae@60" is the autoencoder alone (its bound with a uniform prior over codes), "vqvae" the
# two-stage model: the same autoencoder, frozen, with 40 epochs of a PixelCNN prior over its codes
VQVAE_STAGES = (60, 100)


def _vqvae(ck, progress):
    from dgm_edu.vqvae import train_reference

    return train_reference(checkpoint=ck, progress=progress)


def _vqvae_figures(model: nn.Module, full: bool = True) -> dict[str, Any]:
    from dgm_edu.vqvae import digits_figures

    return digits_figures(model, full)


def _latent_diffusion(ck, progress):
    # the prior is fitted to the latents of the "vae" it is shipped with (see `needed`)
    from dgm_edu.latent_diffusion import train_latent_diffusion

    return train_latent_diffusion(needed("vae"), checkpoint=ck, progress=progress)


def _latent_diffusion_figures(model: nn.Module, full: bool = True) -> dict[str, Any]:
    from dgm_edu.latent_diffusion import digits_figures

    return digits_figures(needed("vae"), model, full)


BETAS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
VAE_ARCH_SEEDS = (  # (entry, kind, seed)
    ("vae-seed1", "conv", 1),
    ("vae-seed2", "conv", 2),
    ("vae-mlp", "mlp", 0),
    ("vae-mlp-seed1", "mlp", 1),
    ("vae-mlp-seed2", "mlp", 2),
)

RECIPES: dict[str, Recipe] = {
    "mixture": Recipe(_mixture, _digits_nll(_exact, "exact log-likelihood"), "01_introduction"),
    "rbm": Recipe(
        _rbm,
        _digits_nll(_exact, "exact log-likelihood of the binarized digits (log Z enumerated)"),
        "02_rbm",
    ),
    "vae": Recipe(
        _vae,
        _digits_nll(_vae_k(1000), "IWAE bound, k=1000 (upper bound on the NLL)", _vae_k(50)),
        "03_vae",
    ),
    "vae-2d": Recipe(_vae_variant("2d"), _vae_elbo, "03_vae"),
    **{f"vae-beta{b}": Recipe(_vae_variant("beta", b), _vae_elbo, "03_vae") for b in BETAS},
    "vae-cond": Recipe(_vae_variant("cond"), _vae_elbo, "03_vae"),
    **{  # chapter 3's architecture comparison: 3 seeds of each ("vae" is conv, seed 0)
        name: Recipe(
            _vae_arch(kind, seed),
            _digits_nll(_vae_k(1000), "IWAE bound, k=1000 (upper bound on the NLL)", _vae_k(50)),
            "03_vae",
            seed=seed,
        )
        for name, kind, seed in VAE_ARCH_SEEDS
    },
    "vae-noshift": Recipe(
        _vae_arch("conv", 0, shift_prob=0.0),
        _digits_nll(_vae_k(1000), "IWAE bound, k=1000 (upper bound on the NLL)", _vae_k(50)),
        "03_vae",
    ),
    "vae-mlp-long": Recipe(
        _vae_arch("mlp", 0, longer=2),
        _digits_nll(_vae_k(1000), "IWAE bound, k=1000 (upper bound on the NLL)", _vae_k(50)),
        "03_vae",
    ),
    "gan": Recipe(
        _gan_staged("digits", [2, 5, 10], [10, 50, 150, 300]),
        _gan_figures,
        "04_gan",
        stages=(10, 50, 150, 300),
    ),
    "gan-ring8": Recipe(
        _gan_staged("ring8", [10, 50, 100], [10, 50, 400]),  # fast: 20 epochs cover 0 modes
        _ring_figures,
        "04_gan",
        stages=(10, 50, 400),
    ),
    "gan-cond": Recipe(_cgan, _gan_figures, "04_gan"),
    "autoregressive": Recipe(
        _pixelcnn(False),
        _digits_nll(_exact, "exact log-likelihood (chain rule)"),
        "05_autoregressive",
    ),
    "autoregressive-cond": Recipe(
        _pixelcnn(True),
        _digits_nll(_exact, "exact log-likelihood, marginal over the 10 classes"),
        "05_autoregressive",
        half=True,  # 3.5 MB in float32: the size budget (25 MB for every entry) needs the room
    ),
    "text-rnn": Recipe(_text("rnn"), _text_figures, "05_autoregressive"),
    "text-transformer": Recipe(_text("transformer"), _text_figures, "05_autoregressive"),
    "flows": Recipe(
        _digit_flow("variational"),
        _digits_nll(
            _flow_k(16),
            "variational-dequantization bound, mean of 16 one-sample bounds",
            _flow_k(4),
        ),
        "06_flows",
    ),
    "flows-noshift": Recipe(
        _digit_flow("variational", shift_prob=0.0),
        _digits_nll(
            _flow_k(16),
            "variational-dequantization bound, mean of 16 one-sample bounds",
            _flow_k(4),
        ),
        "06_flows",
    ),
    "flows-uniform": Recipe(
        _digit_flow("uniform"),
        _digits_nll(
            _flow_k(16), "uniform-dequantization bound, mean of 16 one-sample bounds", _flow_k(4)
        ),
        "06_flows",
    ),
    **{
        f"flow2d-{toy}": Recipe(_flow2d(toy), _toy_nll(toy), "06_flows")
        for toy in ("moons", "checkerboard", "ring8")
    },
    "flow2d-moons-planar": Recipe(
        _flow2d("moons", kind="planar", num_layers=16), _toy_nll("moons"), "06_flows"
    ),
    "diffusion": Recipe(_diffusion, _diffusion_figures, "07_diffusion"),
    "diffusion-toy": Recipe(_toy_denoiser("diffusion"), _ring_figures, "07_diffusion"),
    "diffusion-toy-simple": Recipe(_toy_denoiser_simple, _ring_figures, "07_diffusion"),
    "flow-matching-toy": Recipe(_toy_denoiser("flow-matching"), _ring_figures, "07_diffusion"),
    "energy": Recipe(
        _energy, _energy_figures(seeds=5), "08_energy_and_scores", stages=ENERGY_STAGES
    ),
    **{
        f"energy-{name}": Recipe(
            _energy_ablation(name), _energy_figures(seeds=1), "08_energy_and_scores"
        )
        for name in ("no-noise", "no-reg", "small-step")
    },  # fmt: skip
    "energy-toy": Recipe(_energy_toy, _ring_figures, "08_energy_and_scores"),
    "score-toy": Recipe(_score_toy, _ring_figures, "08_energy_and_scores"),
    "vqvae": Recipe(_vqvae, _vqvae_figures, "09_discrete_latents", stages=VQVAE_STAGES),
    "latent-diffusion": Recipe(
        _latent_diffusion, _latent_diffusion_figures, "09_discrete_latents", needs=("vae",)
    ),
}


def recipe(name: str) -> Recipe:
    """The recipe that trains ``name`` (stages of a staged recipe share their base's recipe)."""
    base = name.split("@", 1)[0]
    if base not in RECIPES:
        raise WeightsError(
            f"Unknown weights name {name!r}: expected one of {', '.join(sorted(RECIPES))}"
        )
    return RECIPES[base]


# --------------------------------------------------------------------------- the manifest
def weights_dir() -> Path:
    """Where the shipped files live (``$DGM_EDU_WEIGHTS`` overrides it, e.g. for a test)."""
    return Path(os.environ.get("DGM_EDU_WEIGHTS") or WEIGHTS_DIR)


def manifest(root: Path | None = None) -> dict[str, dict[str, Any]]:
    """Every shipped entry's manifest row, by name (empty when nothing is shipped); ``root``: the
    manifest of another weights folder (a build's output) instead of :func:`weights_dir`'s."""
    path = (root or weights_dir()) / MANIFEST
    if not path.is_file():
        return {}
    return json.loads(path.read_text())["entries"]


def names() -> list[str]:
    """The names of the shipped entries, sorted."""
    return sorted(manifest())


def entry(name: str, root: Path | None = None) -> dict[str, Any]:
    """The manifest row of ``name``: file, sha256, class, config, recipe, figures, history."""
    rows = manifest(root)
    if name not in rows:
        known = ", ".join(sorted(rows)) or "none (run `make weights`)"
        raise WeightsError(f"No shipped weights named {name!r}: expected one of {known}")
    return rows[name]


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _verified_file(name: str, root: Path | None = None) -> Path:
    row = entry(name, root)
    path = (root or weights_dir()) / row["file"]
    if not path.is_file():
        raise WeightsError(
            f"The weights file of {name!r} is missing: expected {path} (reinstall dgm_edu, or "
            f"rebuild it with `make weights`)"
        )
    digest = sha256_of(path)
    if digest != row["sha256"]:
        raise WeightsError(
            f"The weights file {path} does not match the manifest: sha256 {digest[:12]}..., "
            f"expected {row['sha256'][:12]}... (the file was changed or corrupted; rebuild it "
            f"with `make weights` or reinstall dgm_edu)"
        )
    return path


def mismatched_needs() -> None:
    """Raise if a shipped entry was fitted to another version of an entry it needs (a latent
    diffusion prior to a VAE rebuilt since): each row records the sha256 of its needs."""
    rows = manifest()
    for name, row in rows.items():
        for need in recipe(name).needs:
            fitted = row.get("needs", {}).get(need)
            if need not in rows or fitted != rows[need]["sha256"]:
                raise WeightsError(
                    f"{name!r} was fitted to {need!r} with sha256 {str(fitted)[:12]}..., but the "
                    f"shipped {need!r} is another file: rebuild both "
                    f"(python -m dgm_edu.weights build {need} {name})"
                )


def _import(qualname: str) -> Any:
    module, _, attr = qualname.rpartition(".")
    obj = importlib.import_module(module)
    for part in attr.split("/"):
        obj = getattr(obj, part)
    return obj


def _tuples(value: Any) -> Any:
    """JSON turns a config's tuples into lists: turn them back."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def build_model(row: dict[str, Any]) -> nn.Module:
    """An untrained model of the class and config a manifest row records."""
    cls = _import(row["class"])
    kwargs = {k: _tuples(v) for k, v in row["init"].items()}
    if row.get("config_class"):
        config_cls = _import(row["config_class"])
        kwargs["config"] = config_cls(**{k: _tuples(v) for k, v in row["config"].items()})
    return cls(**kwargs)


def load(name: str, device: str | torch.device = "auto", *, root: Path | None = None) -> nn.Module:
    """The shipped model ``name``, verified against the manifest, in eval mode on ``device``
    (``root``: from another weights folder, a build's output, instead of :func:`weights_dir`)."""
    from safetensors.torch import load_file

    from dgm_edu.train import load_model_state

    path = _verified_file(name, root)
    model = build_model(entry(name, root))
    load_model_state(model, load_file(str(path)), str(path))
    return model.to(runtime.get_device(device)).eval()


def history(name: str) -> History:
    """The training history recorded when ``name`` was built."""
    return History(**entry(name)["history"])


# --------------------------------------------------------------------------- what chapters call
def obtain(name: str, *, progress: bool = False) -> tuple[nn.Module, History]:
    """The model ``name`` and its training history, as the current mode gives it.

    Reference mode: the shipped weights (verified), or, for a name that has none, training at
    the full budget (said in one line). Full and fast mode: the recipe, trained from scratch into
    ``runtime.checkpoint_path(name)`` (a finished checkpoint reloads instead of retraining).
    """
    rec = recipe(name)
    if rec.stages and "@" not in name:
        return obtain_stages(name, progress=progress)[-1][1:]  # type: ignore[return-value]
    if runtime.mode() == "reference" and name in manifest():
        return load(name), history(name)
    if rec.stages:
        stop = int(name.split("@", 1)[1])
        for s, model, hist in obtain_stages(name.split("@")[0], progress=progress):
            if s == stop:
                return model, hist
        raise WeightsError(f"{name!r}: expected a stage in {rec.stages}")
    model, hist = _train(name, rec, progress)
    return model.eval(), hist


def obtain_stages(name: str, *, progress: bool = False) -> list[tuple[int, nn.Module, History]]:
    """A staged recipe's ``(stop, model, history)`` after each stage (see :func:`obtain`)."""
    rec = recipe(name)
    if not rec.stages:
        raise WeightsError(f"{name!r} is not a staged recipe: call obtain({name!r})")
    stages = stage_names(name)
    if runtime.mode() == "reference" and all(s in manifest() for _, s in stages):
        return [(stop, load(s), history(s)) for stop, s in stages]
    return [(s, m.eval(), h) for s, m, h in _train(name, rec, progress)]


def needed(name: str) -> nn.Module:
    """The model ``name`` that another recipe is fitted to (latent diffusion's VAE), in eval mode.

    In a :func:`build`, the entry in the build's output folder, which the build wrote before
    training the recipes that need it (:attr:`Recipe.needs`), so the pair always matches and the
    model is not trained twice; a need the build did not make is the shipped one. Elsewhere,
    :func:`obtain`'s (shipped in reference mode, trained in full and fast mode)."""
    out = _BUILD_OUT.get()
    if out is None:
        return obtain(name)[0]
    return load(name, device="cpu", root=out if name in manifest(out) else None)


def _needs_first(selected: list[str]) -> list[str]:
    """``selected`` with every recipe after the selected recipes it needs, otherwise in order."""
    done: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            raise WeightsError(f"recipes that need each other: {' -> '.join((*path, name))}")
        if name in done:
            return
        for need in recipe(name).needs:
            visit(need, (*path, name))
        if name in selected:
            done.append(name)

    for name in selected:
        visit(name, ())
    return done


def stage_names(name: str) -> list[tuple[int, str]]:
    """``(stop, entry name)`` of each stage: ``name@stop``, the last one plain ``name``."""
    stops = recipe(name).stages
    return [(s, name if s == stops[-1] else f"{name}@{s}") for s in stops]


def _train(name: str, rec: Recipe, progress: bool) -> Any:
    """``rec.train`` into the mode's checkpoint of ``name``. While another process trains that
    checkpoint (a second notebook, another test worker), wait for it, then train again: fit
    reloads the run it finished, or trains afresh if it died."""
    from dgm_edu.checkpoints import CheckpointInUse, wait_for_release

    if runtime.mode() == "reference":
        print(f"{name}: no shipped weights, so it is trained here at the full budget")
    while True:
        try:
            return rec.train(runtime.checkpoint_path(name), progress)
        except CheckpointInUse as err:
            print(f"{name}: another run (pid {err.pid}) is training it; waiting for it to finish")
            wait_for_release(err.lock)


# --------------------------------------------------------------------------- building them
def _init_kwargs(model: nn.Module) -> tuple[dict[str, Any], str | None, dict[str, Any]]:
    """(constructor keywords other than config, config class, config as a dict) of a model."""
    import inspect

    params = inspect.signature(type(model).__init__).parameters
    init = {p: getattr(model, p) for p in params if p not in ("self", "config")}
    config = getattr(model, "config", None)
    if config is None:
        return init, None, {}
    cfg_cls = type(config)
    return init, f"{cfg_cls.__module__}.{cfg_cls.__qualname__}", dataclasses.asdict(config)


def cpu_signature() -> str:
    """What decides a build's floats besides the seed: torch, the CPU model, its instruction sets.

    torch picks its kernels by ``torch.backends.cpu.get_cpu_capability()`` and MKL by the CPU's
    flags (AVX-512, AMX, ...), so two machines with the same torch but other flags round
    differently. E.g. ``'torch 2.13.0+cpu, AVX512, GenuineIntel 6/207/2, flags 3f2a9c01'``: the
    last part is a digest of the sorted ``/proc/cpuinfo`` flags.
    """
    info: dict[str, str] = {}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    flags = " ".join(sorted(info.get("flags", "").split()))
    model = "/".join(info.get(k, "?") for k in ("cpu family", "model", "stepping"))
    digest = hashlib.sha256(flags.encode()).hexdigest()[:8]
    return (f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}, "
            f"{info.get('vendor_id', platform.processor() or platform.machine())} {model}, "
            f"flags {digest}")  # fmt: skip


def _row(name: str, model: nn.Module, hist: History, rec: Recipe, path: Path, threads: int,
         wall: float) -> dict[str, Any]:  # fmt: skip
    init, cfg_cls, cfg = _init_kwargs(model)
    model.eval()
    t0 = time.perf_counter()
    figures = rec.figures(model)
    return {
        "file": path.name,
        "sha256": sha256_of(path),
        "bytes": path.stat().st_size,
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "init": init,
        "config_class": cfg_cls,
        "config": cfg,
        "recipe": f"dgm_edu.weights.RECIPES[{name.split('@')[0]!r}] ({rec.train.__qualname__})",
        "chapter": rec.chapter,
        "seed": rec.seed,
        "mode": "full",
        "torch": torch.__version__,
        "threads": threads,
        "device": "cpu",
        "cpu": cpu_signature(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(hist.seconds, 1),
        "build_seconds": round(wall, 1),
        "epochs_run": hist.epochs_run,
        "best_epoch": hist.best_epoch,
        "best_val_loss": None if hist.best_val == float("inf") else round(hist.best_val, 4),
        "figures": figures,
        "eval_seconds": round(time.perf_counter() - t0, 1),
        "needs": {need: _shipped_with(need) for need in rec.needs},  # the sha256 of each
        "history": dataclasses.asdict(hist),
    }


def _shipped_with(need: str) -> str:
    """The sha256 of the entry ``need`` that :func:`needed` gives in the build in progress."""
    out = _BUILD_OUT.get()
    return entry(need, out if out is not None and need in manifest(out) else None)["sha256"]


@torch.no_grad()
def round_to_half(model: nn.Module) -> None:
    """Round every floating-point parameter and buffer to float16 and back, in place: the model
    then computes exactly what its half-precision file will give when loaded."""
    for t in model.state_dict().values():
        if t.is_floating_point():
            t.copy_(t.half().to(t.dtype))


def _save_state(model: nn.Module, path: Path, *, half: bool = False) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    if half:  # float16 on disk; load() copies it back into the model's float32 tensors
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.chmod(0o644)
    os.replace(tmp, path)


def _write_manifest(rows: dict[str, dict[str, Any]], out: Path) -> None:
    text = json.dumps(
        {
            "about": "dgm_edu reference weights: one row per entry; see dgm_edu/weights.py",
            "machine": f"{platform.machine()} {platform.system()}, "
            f"python {platform.python_version()}",
            "entries": dict(sorted(rows.items())),
        },
        indent=1,
        sort_keys=False,
    )
    tmp = out / f"{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_text(text + "\n")
    os.replace(tmp, out / MANIFEST)


def build(
    selected: list[str] | None = None,
    *,
    out: Path | None = None,
    threads: int = 1,
    jobs: int = 1,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Train each selected recipe in full mode and write its weights and manifest rows.

    Training checkpoints go to ``runtime.checkpoint_path`` (``.checkpoints/full/``), so an
    interrupted build resumes. Each finished entry is written at once, the manifest too.
    ``jobs > 1`` trains that many recipes side by side, one process each with ``threads`` torch
    threads, the longest recorded ones first (one bar counts the recipes); each file is the same
    as a one-job build's, since a process's result depends on its own thread count only.
    """
    if runtime.mode() != "full":
        raise RuntimeError(
            f"build() trains the reference weights in full mode; the mode is {runtime.mode()!r}: "
            "expected DGM_EDU_MODE=full (make weights sets it)"
        )
    out = Path(out) if out is not None else weights_dir()
    selected = list(selected or RECIPES)
    for name in selected:  # an unknown name, or a need nowhere to be found, is refused first
        for need in recipe(name).needs:
            if need not in selected and need not in manifest(out) and need not in manifest():
                raise WeightsError(
                    f"{name!r} is fitted to {need!r}, which is neither shipped nor in {out}: "
                    f"build both (python -m dgm_edu.weights build {need} {name})"
                )
    selected = _needs_first(selected)
    if checks.integer(jobs, "jobs", low=1) > 1:
        return _build_side_by_side(selected, out, threads, jobs)
    torch.set_num_threads(threads)
    token = _BUILD_OUT.set(out)  # needed() loads from here
    try:
        return _build_each(selected, out, threads, progress)
    finally:
        _BUILD_OUT.reset(token)


def _build_each(
    selected: list[str], out: Path, threads: int, progress: bool
) -> dict[str, dict[str, Any]]:
    """:func:`build`'s loop, one recipe after the other, in this process."""
    built: dict[str, dict[str, Any]] = {}
    for name in selected:
        rec = recipe(name)
        t0 = time.perf_counter()
        result = rec.train(runtime.checkpoint_path(name), progress)
        wall = time.perf_counter() - t0
        outputs = [(s, m, h) for s, m, h in result] if rec.stages else [(None, *result)]
        for stop, model, hist in outputs:
            entry_name = (
                name
                if stop in (None, rec.stages[-1] if rec.stages else None)
                else (f"{name}@{stop}")
            )
            path = out / f"{entry_name}.safetensors"
            if rec.half:
                round_to_half(model)  # the figures below are those of the weights shipped
            _save_state(model, path, half=rec.half)
            built[entry_name] = _row(entry_name, model, hist, rec, path, threads, wall)
            with open(out / f"{MANIFEST}.lock", "w") as lock:  # builds may run side by side
                fcntl.flock(lock, fcntl.LOCK_EX)
                rows = (
                    json.loads((out / MANIFEST).read_text())["entries"]
                    if (out / MANIFEST).is_file()
                    else {}
                )
                _write_manifest({**rows, entry_name: built[entry_name]}, out)
            print(
                f"{entry_name}: {built[entry_name]['figures']} "
                f"({built[entry_name]['train_seconds']} s training)",
                flush=True,
            )
        _drop_checkpoints(name)
    return built


def _drop_checkpoints(name: str) -> None:
    """Delete a recipe's training checkpoints once its entries are written.

    They exist so that an interrupted build resumes; left behind, a finished one would make the
    next build reload it instead of training (stale weights, from older code or another CPU, and
    no build time measured). The ``.json`` beside each holds its run settings; a staged recipe
    has one file per stage, ``<name>-e<stop>.pt``.
    """
    base = runtime.checkpoint_path(name)
    for path in [base, *base.parent.glob(f"{base.stem}-e[0-9]*{base.suffix}")]:
        for part in (path, path.with_suffix(".json")):
            part.unlink(missing_ok=True)


def _recorded_seconds(name: str) -> float:
    """The build time of ``name`` in the manifest (0 for a recipe never built)."""
    return float(manifest().get(name, {}).get("build_seconds", 0.0))


def _build_one(name: str, out: Path, threads: int) -> tuple[str, dict[str, dict[str, Any]], float]:
    """One recipe in a worker process of :func:`_build_side_by_side`."""
    t0 = time.perf_counter()
    rows = build([name], out=out, threads=threads, progress=False)
    return name, rows, time.perf_counter() - t0


def _build_side_by_side(
    selected: list[str], out: Path, threads: int, jobs: int
) -> dict[str, dict[str, Any]]:
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from tqdm.auto import tqdm

    order = sorted(selected, key=_recorded_seconds, reverse=True)  # longest first: packs best
    built: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    spawn = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch state
    with (
        ProcessPoolExecutor(jobs, mp_context=spawn) as pool,
        tqdm(total=len(order), desc=f"weights ({jobs} jobs)", unit="recipe") as bar,
    ):
        finished: set[str] = set()
        running: set[Any] = set()
        while order or running:
            # a recipe starts once every selected recipe it needs has finished
            for name in _ready(order, selected, finished)[: jobs - len(running)]:
                order.remove(name)
                running.add(pool.submit(_build_one, name, out, threads))
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                name, rows, seconds = future.result()
                finished.add(name)
                built.update(rows)
                bar.write(f"{name}: {seconds:.0f} s")
                bar.update()
    wall = time.perf_counter() - t0
    print(
        f"{len(selected)} recipes, {len(built)} entries in {wall:.0f} s wall with {jobs} jobs "
        f"({_recipe_seconds(built):.0f} s of recipe time: training and figures)",
        flush=True,
    )
    return built


def _recipe_seconds(rows: dict[str, dict[str, Any]]) -> float:
    """Training (once per recipe: a staged recipe's rows repeat it) plus every entry's figures."""
    train = sum(r["build_seconds"] for name, r in rows.items() if "@" not in name)
    return train + sum(r["eval_seconds"] for r in rows.values())


def _ready(order: list[str], selected: list[str], finished: set[str]) -> list[str]:
    """The recipes of ``order`` (in its order) whose selected needs are all ``finished``."""
    return [
        name
        for name in order
        if all(need in finished or need not in selected for need in recipe(name).needs)
    ]


def refigure(selected: list[str], *, out: Path | None = None) -> dict[str, dict[str, Any]]:
    """Measure the figures of shipped entries again, weights untouched (after a metric changes).

    Each entry's weights are loaded and verified, its recipe's ``figures`` recomputed (full
    estimators, fixed seeds, one thread) and its manifest row rewritten with them."""
    out = Path(out) if out is not None else weights_dir()
    torch.set_num_threads(1)
    new = {name: recipe(name).figures(load(name, device="cpu")) for name in selected}
    with open(out / f"{MANIFEST}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = json.loads((out / MANIFEST).read_text())["entries"]
        for name, figures in new.items():
            rows[name] = {**rows[name], "figures": figures}
            print(f"{name}: {figures}", flush=True)
        _write_manifest(rows, out)
    return new


def _main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m dgm_edu.weights", description=__doc__.split("\n")[0]
    )
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="train entries in full mode and write their weights")
    b.add_argument("names", nargs="*", help="entries to build (default: all)")
    b.add_argument("--threads", type=int, default=1, help="torch threads (recorded)")
    b.add_argument("--jobs", type=int, default=1, help="recipes trained side by side")
    b.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    b.add_argument("--out", type=Path, help="write here, not to the shipped folder (a rehearsal)")
    f = sub.add_parser("figures", help="re-measure shipped entries' figures (weights unchanged)")
    f.add_argument("names", nargs="+", help="shipped entries to measure again")
    sub.add_parser("list", help="the shipped entries and their figures")
    sub.add_parser("verify", help="check every shipped file against its sha256")
    args = p.parse_args(argv)
    if args.command == "build":
        build(
            args.names or None,
            out=args.out,
            threads=args.threads,
            jobs=args.jobs,
            progress=not args.no_progress,
        )
    elif args.command == "figures":
        refigure(args.names)
    elif args.command == "list":
        for name, row in manifest().items():
            print(f"{name:24s} {row['bytes'] / 1e6:6.2f} MB  {row['figures']}")
    else:
        for name in names():
            _verified_file(name)
        mismatched_needs()
        total = sum(r["bytes"] for r in manifest().values())
        print(f"{len(names())} entries verified, {total / 1e6:.2f} MB")
    return 0


def iter_rows() -> Iterator[tuple[str, dict[str, Any]]]:
    yield from manifest().items()


if __name__ == "__main__":
    sys.exit(_main())
