"""Benchmark the book's RBM: exact test NLL, AIS against the exact log Z, training time.

Usage: ``python benchmarks/rbm.py`` (full mode) or ``python benchmarks/rbm.py --fast``.
Writes ``benchmarks/results/rbm.json`` (``rbm-fast.json`` with ``--fast``) in the schema of
``benchmarks/common.py``.
"""

from __future__ import annotations

import argparse
import time

import common


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    common.add_common_args(parser)
    parser.add_argument("--checkpoint", default=None, help="resume from / save to this checkpoint")
    parser.add_argument("--ais-betas", type=int, default=10_000)
    parser.add_argument("--ais-runs", type=int, default=100)
    args = parser.parse_args()
    mode = common.configure(args)

    import torch

    from dgm_edu.data import load_digits
    from dgm_edu.metrics import evaluate_nll
    from dgm_edu.rbm import bernoulli_baseline_nll, train_reference

    model, history = train_reference(checkpoint=args.checkpoint, progress=False)
    model.eval()
    x_test = load_digits("test")[0]
    baseline = bernoulli_baseline_nll()
    t0 = time.perf_counter()
    exact_log_z = model.exact_log_partition()
    exact_seconds = time.perf_counter() - t0
    test_nll = evaluate_nll(model, x_test)
    eval_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    ais = model.ais_log_partition(args.ais_betas, args.ais_runs, generator=gen)
    ais_seconds = time.perf_counter() - t0
    pll = float(model.pseudo_log_likelihood(x_test).mean())
    extra = {
        "model": f"RBM, {model.config.num_hidden} hidden units, PCD-{model.config.k}",
        "data": "binarized digits (dgm_edu.data.binarize: level >= 8), test split 1350-1796",
        "bernoulli_baseline_nats": baseline,
        "reduction_vs_baseline": 1 - test_nll / baseline,
        "target_nats": 0.75 * baseline,
        "meets_target": test_nll <= 0.75 * baseline,
        "log_z_exact": exact_log_z,
        "log_z_exact_seconds": exact_seconds,
        "log_z_ais": ais.log_z,
        "log_z_ais_minus_3se": ais.log_z_low,
        "log_z_ais_plus_3se": ais.log_z_high,
        "ais_betas": args.ais_betas,
        "ais_runs": args.ais_runs,
        "ais_abs_error_nats": abs(ais.log_z - exact_log_z),
        "ais_seconds": ais_seconds,
        "test_nll_with_ais_log_z": test_nll + ais.log_z - exact_log_z,
        "test_pseudo_nll_nats": -pll,
        "best_val_nll_nats": history.best_val,
        "train_seconds_note": "includes the exact validation NLL after every epoch",
    }
    common.finish(
        "rbm", mode, model, history, args.out_dir,
        estimator="exact log-likelihood (log Z by enumerating the 2^H hidden states)",
        nll_nats=test_nll, eval_seconds=eval_seconds, extra=extra,
    )  # fmt: skip


if __name__ == "__main__":
    main()
