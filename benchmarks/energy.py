"""Benchmark the book's energy-based model: the AIS test-NLL estimate with its spread, FID, KID,
precision/recall and the Langevin sampler's seconds.

.venv/bin/python benchmarks/energy.py         # shipped weights -> benchmarks/results/energy.json
.venv/bin/python benchmarks/energy.py --fast  # trains the fast recipe here -> energy-fast.json

Full mode scores the shipped reference weights (``dgm_edu.weights.load("energy")``, trained by
``energy.train_reference`` in full mode) and their recorded training history; fast mode trains
the fast recipe. The NLL is an *estimate*, not a bound: −E of one dequantization draw per test
image, minus log Ẑ from annealed importance sampling (seed 0, the model's ``log_partition``), minus
64 log 17; ``extra`` holds log Ẑ over ``--ais-seeds`` independent AIS runs and the NLL they give.
"""

from __future__ import annotations

import argparse
import math
import time

import common


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_args(parser)
    parser.add_argument("--samples", type=int, default=1000, help="Langevin samples for FID/KID")
    parser.add_argument("--ais-seeds", type=int, default=5, help="independent AIS runs of log Z")
    parser.add_argument(
        "--betas", type=int, nargs="*", default=[250, 1000, 4000, 16000],
        help="AIS lengths for the convergence check (seed 0; fast mode: 50 200)",
    )  # fmt: skip
    args = parser.parse_args()
    mode = common.configure(args)

    import torch

    from dgm_edu import energy, metrics, weights
    from dgm_edu.data import LEVELS, load_digits

    if mode == "full":
        model, hist = weights.load("energy", device="cpu"), weights.history("energy")
    else:
        model, hist = energy.train_reference(progress=False)
    model.eval()
    x_test = load_digits("test")[0]
    c = model.config

    t0 = time.perf_counter()
    torch.manual_seed(0)
    nll = metrics.evaluate_nll(model, x_test)  # log Z: AIS seed 0 (model.log_partition)
    runs = []
    for seed in range(args.ais_seeds):
        gen = torch.Generator().manual_seed(seed)
        runs.append(model.ais_log_partition(generator=gen).log_z)
    eval_seconds = time.perf_counter() - t0
    by_betas = {}  # AIS convergence: log Ẑ (seed 0) against the number of intermediate densities
    for k in args.betas if mode == "full" else (50, 200):
        est = model.ais_log_partition(k, generator=torch.Generator().manual_seed(0))
        by_betas[str(k)] = round(est.log_z, 3)
    dim = math.prod(model.shape)
    e_test = nll - model.log_partition() - dim * math.log(LEVELS)  # mean −log p̃ of the test set
    spread = [e_test + lz + dim * math.log(LEVELS) for lz in runs]

    n = args.samples if mode == "full" else 200
    t0 = time.perf_counter()
    samples = model.sample(n, generator=torch.Generator().manual_seed(0))
    sample_seconds = time.perf_counter() - t0
    quality = metrics.sample_quality(samples, x_test)
    extra = {
        "weights": "shipped (dgm_edu.weights: energy)" if mode == "full" else "trained here (fast)",
        "sampler": f"Langevin from uniform noise, 200 steps of {c.step_size} in logit "
        "coordinates, temperature 1",
        "sample_seconds": round(sample_seconds, 2),
        "sample_seconds_per_100": round(sample_seconds * 100 / n, 3),
        "log_z_runs": [round(v, 3) for v in runs],
        "nll_runs": [round(v, 3) for v in spread],
        "nll_low": round(min(spread), 3),
        "nll_high": round(max(spread), 3),
        "ais": {"betas": c.ais_betas, "runs": c.ais_runs, "step_size": c.ais_step_size},
        "log_z_by_betas": by_betas,
        "uniform_nll_nats": round(dim * math.log(LEVELS), 3),
    }
    common.finish(
        "energy", mode, model, hist, args.out_dir,
        estimator=(
            f"AIS estimate (stochastic, not a bound): −E of one dequantization draw − log Ẑ "
            f"(AIS from the uniform box, {c.ais_betas} betas, {c.ais_runs} runs, seed 0) "
            "− 64 log 17"
        ),
        nll_nats=round(nll, 3), eval_seconds=round(eval_seconds, 1),
        **common.quality_fields(quality, n), extra=extra,
    )  # fmt: skip


if __name__ == "__main__":
    main()
