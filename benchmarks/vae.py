"""Benchmark the reference VAE: test -ELBO and IWAE-k bound (nats/image) on the digits test split.

Usage: ``python benchmarks/vae.py [--fast] [--k 1000] [--checkpoint PATH]``. Writes
``benchmarks/results/vae.json`` (full mode) or ``vae_fast.json`` (``--fast``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fast", action="store_true", help="fast mode (DGM_EDU_FAST=1)")
    parser.add_argument("--k", type=int, default=1000, help="importance samples for IWAE")
    parser.add_argument(
        "--elbo-repeats",
        type=int,
        default=100,
        help="average the single-sample test ELBO over this many draws",
    )
    parser.add_argument("--checkpoint", default=None, help="resume/reload training from here")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.fast:
        os.environ["DGM_EDU_FAST"] = "1"  # before importing dgm_edu: budget() reads it

    import torch

    from dgm_edu.data import load_digits
    from dgm_edu.metrics import nats_to_bpd
    from dgm_edu.runtime import is_fast
    from dgm_edu.vae import active_units, train_reference

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, hist = train_reference(checkpoint=args.checkpoint, progress=sys.stderr.isatty())
    train_seconds = time.perf_counter() - t0
    x_test, _ = load_digits("test")

    torch.manual_seed(0)
    t1 = time.perf_counter()
    with torch.no_grad():
        elbo = torch.stack([model.elbo(x_test) for _ in range(args.elbo_repeats)]).mean(0)
        iwae1 = model.log_prob(x_test, k=1)
        iwae_k = torch.cat(
            [
                model.log_prob(x_test[i : i + 64], k=args.k, chunk=250)
                for i in range(0, len(x_test), 64)
            ]
        )
    eval_seconds = time.perf_counter() - t1
    n_active, _ = active_units(model, x_test)
    result = {
        "family": "vae",
        "mode": "fast" if is_fast() else "full",
        "split": "test (images 1350-1796)",
        "test_neg_elbo_nats": round(-elbo.mean().item(), 3),
        "test_neg_elbo_estimator": f"single-sample ELBO averaged over {args.elbo_repeats} draws",
        "test_neg_iwae1_nats": round(-iwae1.mean().item(), 3),
        f"test_nll_iwae{args.k}_nats": round(-iwae_k.mean().item(), 3),
        "test_nll_estimator": f"IWAE bound, k={args.k} (upper bound on the NLL)",
        "test_bpd_iwae": round(nats_to_bpd(-iwae_k.mean().item()), 4),
        "best_val_neg_elbo_nats": round(hist.best_val, 3),
        "best_epoch": hist.best_epoch + 1,
        "epochs_run": hist.epochs_run,
        "train_seconds_history": round(hist.seconds, 1),
        "train_seconds_wall": round(train_seconds, 1),
        "eval_seconds": round(eval_seconds, 1),
        "active_units": n_active,
        "latent_dim": model.config.latent_dim,
        "params": sum(p.numel() for p in model.parameters()),
        "torch_threads": args.threads,
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores shared with other jobs",
        "targets": {"test_nll_iwae1000_max": 82.0, "test_neg_elbo_max": 86.0},
    }
    print(json.dumps(result, indent=1))
    out = Path(
        args.out
        or Path(__file__).parent / "results" / ("vae.json" if not is_fast() else "vae_fast.json")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
