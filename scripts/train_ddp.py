"""Train a dgm_edu model on one process or many, with torch's own launcher.

One process (CPU or one GPU)::

    python scripts/train_ddp.py --family vae --checkpoint .checkpoints/vae-ddp.pt

Every GPU of one machine (or ``--nproc_per_node 2`` CPU processes with gloo)::

    torchrun --standalone --nproc_per_node gpu scripts/train_ddp.py --family vae

The same :func:`dgm_edu.train.fit` runs in every case: under torchrun it wraps the loss in
DistributedDataParallel, shards the loaders with a DistributedSampler that keeps the global batch
size, and lets rank 0 alone write the checkpoint. ``--family NAME`` runs
``dgm_edu.NAME.train_reference`` (the book's recipe); the default, ``pixel_mixture``, is a small
recipe whose shuffling is seeded per epoch, so one process and N processes reach the same weights
(``tests/test_distributed.py`` checks this through :func:`main`, adding the test-only
two-optimizer recipe of ``tests/ddp_recipes.py``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from dgm_edu.data import load_digits  # noqa: E402
from dgm_edu.mixtures import PixelMixture, PixelMixtureConfig  # noqa: E402
from dgm_edu.runtime import seed_everything  # noqa: E402
from dgm_edu.train import History, fit, init_distributed, is_main_process  # noqa: E402

Recipe = Callable[[argparse.Namespace, str | None], tuple[torch.nn.Module, History]]


def pixel_mixture(
    args: argparse.Namespace,
    checkpoint: str | Path | None,
    *,
    model_cls: type[PixelMixture] = PixelMixture,
    optimizers: Callable[[PixelMixture, Callable, float], object] | None = None,
    desc: str = "pixel mixture",
) -> tuple[torch.nn.Module, History]:
    """A K-component pixel mixture whose loader's sampler shuffles with seed + epoch.

    ``optimizers(model, make_opt, lr)`` builds the optimizer(s): one over every parameter by
    default; a ``model_cls`` with ``train_step`` takes a dict of them.
    """
    seed_everything(args.seed)  # the same initial weights on every rank (DDP broadcasts anyway)
    model = model_cls(PixelMixtureConfig(num_components=args.components))
    make_opt = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}[args.optimizer]
    if optimizers is None:
        opt: object = make_opt(model.parameters(), lr=args.lr)
    else:
        opt = optimizers(model, make_opt, args.lr)
    data = torch.utils.data.TensorDataset(load_digits("train")[0])
    # A DistributedSampler with one replica is a seeded shuffle; fit re-shards it over the ranks
    # with the same seed, so the global batches are the same sets on 1 or N processes.
    sampler = torch.utils.data.DistributedSampler(data, num_replicas=1, rank=0, seed=args.seed)
    train = torch.utils.data.DataLoader(data, batch_size=args.batch_size, sampler=sampler)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(load_digits("val")[0]), 350)
    hist = fit(
        model,
        opt,
        train,
        val,
        epochs=args.epochs,
        seed=args.seed,
        device=args.device,
        checkpoint=checkpoint,
        progress=not args.quiet,
        desc=desc,
    )
    return model, hist


RECIPES: dict[str, Recipe] = {"pixel_mixture": pixel_mixture}


def main(argv: list[str] | None = None, recipes: Mapping[str, Recipe] | None = None) -> dict:
    """Parse ``argv``, train each ``--family`` in turn, and (rank 0) report; return the report.

    ``recipes`` adds named recipes ``recipe(args, checkpoint) -> (model, history)`` to
    :data:`RECIPES` (the tests add a two-optimizer one).
    """
    recipes = {**RECIPES, **(recipes or {})}
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--family",
        nargs="+",
        default=["pixel_mixture"],
        help="pixel_mixture, or dgm_edu modules with train_reference (vae, digit_flow, ...); "
        "several train one after the other",
    )
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=100, help="global batch size")
    p.add_argument("--components", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument(
        "--optimizer",
        default="adam",
        choices=["adam", "sgd"],
        help="pixel_mixture only (SGD shows a wrongly scaled gradient; Adam hides it)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--backend", default="auto", help="auto (nccl on GPU, gloo on CPU), nccl, gloo")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--fast", action="store_true", help="set DGM_EDU_FAST=1 (small budgets)")
    p.add_argument("--out", default=None, help="rank 0 writes the final state_dict here")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.fast:
        os.environ["DGM_EDU_FAST"] = "1"

    rank, world = init_distributed(args.backend)
    results = {}
    for name in args.family:
        ckpt = args.checkpoint
        if ckpt and len(args.family) > 1:  # one checkpoint per run: a.pt -> a-vae.pt, ...
            ckpt = str(Path(ckpt).with_name(f"{Path(ckpt).stem}-{name}{Path(ckpt).suffix}"))
        if name in recipes:
            results[name] = recipes[name](args, ckpt)
        else:
            module = importlib.import_module(f"dgm_edu.{name}")
            results[name] = module.train_reference(
                checkpoint=ckpt, progress=not args.quiet, seed=args.seed
            )
    report = {}
    for name, (model, hist) in results.items():
        report[name] = {
            "world_size": world,
            "epochs_run": hist.epochs_run,
            "seconds": hist.seconds,
            "train_loss": hist.train_loss,
            "val_loss": hist.val_loss,
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        }
    if is_main_process():
        if args.out:
            torch.save(report, args.out)
        for name, r in report.items() if not args.quiet else []:
            print(
                json.dumps(
                    {
                        "run": name,
                        **{k: r[k] for k in ("world_size", "epochs_run", "seconds", "val_loss")},
                    }
                )
            )
    if dist.is_initialized():
        dist.destroy_process_group()
    return report


if __name__ == "__main__":
    main()
