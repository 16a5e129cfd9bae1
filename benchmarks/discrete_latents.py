"""Chapter 9's rate against distortion: the two-stage VQ-VAE + PixelCNN prior over a sweep of
code grids g x g and codebook sizes K.

OMP_NUM_THREADS=1 DGM_EDU_CHECKPOINTS=/tmp/ckpt_rd9 .venv/bin/python benchmarks/discrete_latents.py
(557 s, about 9.5 minutes, on one shared core for the 21 points: results/discrete_latents.json;
``--fast``: about 1 s a point; ``--grids 4 --codebooks 8 16`` runs a part of the sweep)

Every point is the reference recipe (``vqvae.reference_config()``, ``vqvae.train_reference``)
with only K and g replaced, seed 0, trained for (E1, E2) = :data:`FULL_EPOCHS` = (60, 40) epochs
(autoencoder, prior; the prior stops early after 8 epochs without progress): the recipe's own
budget, since the whole sweep stays under 12 minutes with it (about 25 s a point), so the point
g = 4, K = 8 is the shipped reference model (its bound, 92.5731 nats, is the manifest's).
On the 447 test digits, with z* = enc(x) the deterministic codes of an image:

- distortion D = −log p(x | z*), nats per image (mean);
- uniform rate hw log K = g² ln K: the code length of z* when every grid is equally likely
  (nats, and bits: g² log2 K, the bits the codes hold);
- learned rate R = −log p(z*) under the PixelCNN prior, nats (mean): what the codes cost once
  their statistics are learned; ``prior_gain_nats`` = g² ln K − R is what the prior buys;
- the bound log p(x) ≥ log p(x | z*) + log p(z*) = −(D + R), nats per image, checked against
  ``vqvae.digits_figures`` (``figures_nll_nats``);
- code usage on the test codes: perplexity exp H of the histogram, and the number of codes used.

Points left out: none of (g, K) is degenerate (even g = 1, K = 2 is a one-bit code of a whole
digit), so the sweep is the full grid g in :data:`GRIDS` x K in :data:`CODEBOOKS`; g = 8 (one
code per pixel) is left out because an 8x8 grid of codes is as large as the image itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from typing import Any

import common
import torch

SEED = 0
GRIDS = (1, 2, 4)
CODEBOOKS = (2, 4, 8, 16, 32, 64, 128)
FAST_EPOCHS = (2, 2)  # (autoencoder, prior) epochs per point
FULL_EPOCHS = (60, 40)  # = vqvae.FULL_EPOCHS: the point g = 4, K = 8 is the reference recipe


def point_config(grid: int, num_codes: int) -> Any:
    """The reference configuration with only the code grid g and codebook size K replaced."""
    from dgm_edu.vqvae import reference_config

    cfg = reference_config()
    return dataclasses.replace(
        cfg, vqvae=dataclasses.replace(cfg.vqvae, num_codes=num_codes, grid=grid)
    )


def uniform_rate(grid: int, num_codes: int) -> float:
    """g² ln K nats: −log of the uniform prior 1 / K^{g²} over the code grids."""
    return grid**2 * math.log(num_codes)


def train_point(
    grid: int, num_codes: int, epochs: tuple[int, int], *, seed: int = SEED
) -> tuple[Any, dict[str, Any]]:
    """Train the two-stage model of one (g, K) into a private checkpoint; returns the
    :class:`~dgm_edu.vqvae.TwoStage` (eval mode) and its training figures."""
    from dgm_edu import runtime, vqvae

    e1, e2 = epochs
    name = f"rd9-g{grid}-K{num_codes}-e{e1}-{e2}-s{seed}"
    stages = vqvae.train_reference(
        config=point_config(grid, num_codes), epochs=(e1, e2), seed=seed, progress=False,
        checkpoint=runtime.checkpoint_path(name),
    )  # fmt: skip
    (_, _, h1), (_, model, h2) = stages
    return model.eval(), {
        "train_seconds": round(h1.seconds + h2.seconds, 1),
        "train_seconds_ae": round(h1.seconds, 1),
        "train_seconds_prior": round(h2.seconds, 1),
        "epochs_run": [h1.epochs_run, h2.epochs_run],
        "params": sum(p.numel() for p in model.parameters()),
        "params_ae": sum(p.numel() for p in model.vqvae.parameters()),
        "params_prior": sum(p.numel() for p in model.prior.parameters()),
    }


@torch.no_grad()
def measure(model: Any, x: torch.Tensor) -> dict[str, Any]:
    """Distortion, rates, bound and code usage of a TwoStage on the digits x (N, 1, 8, 8)."""
    from dgm_edu.vqvae import code_histogram, perplexity

    model.eval()
    c = model.config.vqvae
    rec, prior = model.log_prob_terms(x)  # log p(x | z*), log p(z*): (N,) each
    distortion = -rec.double().mean().item()  # D = −E log p(x | z*)
    rate = -prior.double().mean().item()  # R = −E log p(z*)
    uniform = uniform_rate(c.grid, c.num_codes)
    counts = code_histogram(model.vqvae.encode(x), c.num_codes)  # (K,)
    return {
        "grid": c.grid,
        "num_codes": c.num_codes,
        "distortion_nats": distortion,
        "uniform_rate_nats": uniform,
        "uniform_rate_bits": uniform / math.log(2),  # g² log2 K
        "learned_rate_nats": rate,
        "learned_rate_bits": rate / math.log(2),
        "prior_gain_nats": uniform - rate,  # what the learned prior buys over the uniform one
        "bound_nats": -(distortion + rate),  # log p(x) ≥ −(D + R)
        "uniform_bound_nats": -(distortion + uniform),  # the same bound with the uniform prior
        "perplexity": perplexity(counts),
        "codes_used": int((counts > 0).sum()),
    }


def monotone(values: list[float]) -> bool:
    """Whether ``values`` never rise from one entry to the next (non-increasing)."""
    return all(b <= a for a, b in zip(values, values[1:]))


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The facts the chapter reads: the best bound and its (g, K); per g, whether the distortion
    falls monotonically with K (and the K where it rises); the prior's gain per point."""
    best = max(rows, key=lambda r: r["bound_nats"])
    per_grid: dict[str, Any] = {}
    for g in sorted({r["grid"] for r in rows}):
        line = sorted((r for r in rows if r["grid"] == g), key=lambda r: r["num_codes"])
        d = [r["distortion_nats"] for r in line]
        per_grid[str(g)] = {
            "num_codes": [r["num_codes"] for r in line],
            "distortion_nats": d,
            "distortion_monotone": monotone(d),
            "rises_at_K": [r["num_codes"] for r, a, b in zip(line[1:], d, d[1:]) if b > a],
            "best_K": max(line, key=lambda r: r["bound_nats"])["num_codes"],
            "best_bound_nats": max(r["bound_nats"] for r in line),
        }
    return {
        "best_bound_nats": best["bound_nats"],
        "best_grid": best["grid"],
        "best_num_codes": best["num_codes"],
        "per_grid": per_grid,
        "prior_gain_nats": {f"g{r['grid']}_K{r['num_codes']}": r["prior_gain_nats"] for r in rows},
    }


def sweep(
    points: list[tuple[int, int]], epochs: tuple[int, int], *, seed: int = SEED
) -> list[dict[str, Any]]:
    """Train and measure every (g, K) point in turn: one row each."""
    from dgm_edu import data
    from dgm_edu.vqvae import digits_figures

    x_test, _ = data.load_digits("test")
    rows = []
    for g, k in points:
        model, info = train_point(g, k, epochs, seed=seed)
        row = {**measure(model, x_test), **info}
        row["figures_nll_nats"] = digits_figures(model)["test_nll_nats"]  # the library's path
        rows.append(row)
        print(
            f"g={g} K={k:3d}  D={row['distortion_nats']:7.2f}  rate={row['learned_rate_nats']:6.2f}"
            f" (uniform {row['uniform_rate_nats']:6.2f})  bound={row['bound_nats']:8.2f}"
            f"  perplexity={row['perplexity']:6.2f}  {row['train_seconds']:.0f} s",
            flush=True,
        )
    return rows


def run(points: list[tuple[int, int]], out_dir: Any = None, *, threads: int = 1) -> dict[str, Any]:
    """The sweep in the current mode (fast, else full: set by ``common.configure``), written to
    results/discrete_latents[-fast].json; returns the result dict (with its ``path``)."""
    from dgm_edu import runtime

    start = time.perf_counter()
    mode = "fast" if runtime.is_fast() else "full"
    epochs = runtime.budget(fast=FAST_EPOCHS, full=FULL_EPOCHS)
    rows = sweep(points, epochs)
    seconds = time.perf_counter() - start
    result = {
        "what": "rate against distortion of the VQ-VAE + PixelCNN prior, per code grid and K",
        "family": "discrete_latents",
        "mode": mode,
        "epochs": list(epochs),
        "seed": SEED,
        "recipe": "vqvae.reference_config() with num_codes=K and grid=g; vqvae.train_reference",
        "units": "nats per image on the 447 test digits (bits where the name says so)",
        "command": "OMP_NUM_THREADS=1 python benchmarks/discrete_latents.py"
        + (" --fast" if mode == "fast" else ""),
        "seconds": round(seconds, 1),
        "grids": sorted({g for g, _ in points}),
        "codebooks": sorted({k for _, k in points}),
        "grid_K": rows,
        "derived": summarise(rows),
        "torch": torch.__version__,
        "threads": threads,
        "machine": common.machine(),
        "date": common.now(),
    }
    path = common.write_json(common.result_path("discrete_latents", mode, out_dir), result)
    print(f"wrote {path} in {seconds:.0f} s")
    return {**result, "path": str(path)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_args(parser)
    parser.add_argument("--grids", type=int, nargs="+", default=list(GRIDS), help="code grids g")
    parser.add_argument(
        "--codebooks", type=int, nargs="+", default=list(CODEBOOKS), help="codebook sizes K"
    )
    args = parser.parse_args()
    common.configure(args)
    points = [(g, k) for g in args.grids for k in args.codebooks]
    run(points, args.out_dir, threads=args.threads)


if __name__ == "__main__":
    main()
