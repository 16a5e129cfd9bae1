"""Chapter 8's ablations of the digits EBM over more training seeds: is each trick's effect larger
than a seed's luck?

.venv/bin/python benchmarks/energy_tricks.py   # ~8 min on one core: results/energy_tricks.json

The shipped weights hold one run of each (seed 0: ``energy@20``, the reference run stopped at 20
epochs, and ``energy-<trick>``). This script trains the control (the reference recipe) and each
ablation (``energy.ABLATIONS``: one config field changed) for the same 20 epochs with training
seeds 1 and 2, and records each run's test NLL estimate (AIS, seed 0) and the FID of 1000 Langevin
samples: the same figures, by the same function, as the shipped runs' manifest rows. Only the
figures are kept (the weights would add 6 MB to the repository for numbers the chapter reads).
"""

from __future__ import annotations

import argparse
import time

import common

SEEDS = (1, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    args.fast = False
    common.configure(args)  # full mode: the reference recipe's budgets, 4000 AIS betas

    from dgm_edu.energy import ABLATIONS, digits_figures, train_reference
    from dgm_edu.weights import ENERGY_STAGES

    runs = []
    for name in ("control", *ABLATIONS):
        change = {} if name == "control" else ABLATIONS[name]
        for seed in SEEDS:
            t0 = time.perf_counter()
            model, _ = train_reference(progress=False, epochs=ENERGY_STAGES[0], seed=seed, **change)
            seconds = time.perf_counter() - t0
            figures = digits_figures(model, ais_seeds=1, samples=1000)
            row = {"run": name, "seed": seed, "train_seconds": round(seconds, 1)}
            row |= {k: figures[k] for k in ("test_nll_nats", "test_fid", "e_test", "e_noise")}
            print(row, flush=True)
            runs.append(row)
    result = {
        "what": "chapter 8's EBM ablations at 20 epochs, training seeds 1 and 2 (seed 0 ships)",
        "date": common.now(),
        "command": "python benchmarks/energy_tricks.py",
        "threads": args.threads,
        "runs": runs,
    }
    common.write_json(common.result_path("energy_tricks", "full"), result)


if __name__ == "__main__":
    main()
