"""Test-only recipes for the multi-process tests, run through ``scripts/train_ddp.py``'s ``main``.

``TwoOptimizerMixture`` trains the pixel mixture through ``train_step`` with two optimizers, the
way a GAN trains, so that the 2-process test covers the gradient hooks as well as the DDP wrapper::

    torchrun --standalone --nproc_per_node 2 tests/ddp_recipes.py \\
        --family pixel_mixture two_optimizers --optimizer sgd --lr 2.0 ...

takes the same arguments as the script, with ``two_optimizers`` as one more ``--family``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_ddp.py"
sys.path.insert(0, str(ROOT))  # run by torchrun from a checkout, uninstalled

from dgm_edu.mixtures import PixelMixture  # noqa: E402
from dgm_edu.train import History  # noqa: E402


def load_script() -> ModuleType:
    """``scripts/train_ddp.py`` as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("train_ddp", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TwoOptimizerMixture(PixelMixture):
    """The pixel mixture trained through ``train_step`` with two optimizers, the way a GAN is.

    Adam and SGD are per-parameter, so stepping the mixing weights and the pixel logits with two
    optimizers is the same update as one optimizer over both; under DDP fit averages the
    gradients with hooks instead of the DDP wrapper.
    """

    optimizer_names = ("mix", "pixels")

    def train_step(self, batch: tuple[torch.Tensor, ...], optimizers: dict) -> dict[str, float]:
        loss = self.loss(*batch)
        for opt in optimizers.values():
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in optimizers.values():
            opt.step()
        return {"loss": loss.item()}


def _two(model: TwoOptimizerMixture, make_opt: Callable, lr: float) -> dict:
    return {
        "mix": make_opt([model.mix_logits], lr=lr),
        "pixels": make_opt([model.pixel_logits], lr=lr),
    }


def two_optimizers(
    args: argparse.Namespace, checkpoint: str | None
) -> tuple[torch.nn.Module, History]:
    """The script's pixel-mixture recipe, trained through ``TwoOptimizerMixture.train_step``."""
    return load_script().pixel_mixture(
        args, checkpoint, model_cls=TwoOptimizerMixture, optimizers=_two,
        desc="pixel mixture (two optimizers)",
    )  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    """The script's ``main`` with ``two_optimizers`` as one more recipe."""
    return load_script().main(argv, recipes={"two_optimizers": two_optimizers})


if __name__ == "__main__":
    main()
