"""Benchmark the reference VAE: test -ELBO and IWAE-k bound (nats/image) on the digits test split.

Usage: ``python benchmarks/vae.py [--fast] [--k 1000] [--checkpoint PATH]``. Writes
``benchmarks/results/vae.json`` (full mode) or ``vae-fast.json`` (``--fast``) in the schema of
``benchmarks/common.py``.
"""

from __future__ import annotations

import argparse
import sys
import time

import common


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    common.add_common_args(parser)
    parser.add_argument("--k", type=int, default=1000, help="importance samples for IWAE")
    parser.add_argument(
        "--elbo-repeats",
        type=int,
        default=100,
        help="average the single-sample test ELBO over this many draws",
    )
    parser.add_argument("--checkpoint", default=None, help="resume/reload training from here")
    args = parser.parse_args()
    mode = common.configure(args)

    import torch

    from dgm_edu.data import load_digits
    from dgm_edu.vae import active_units, train_reference

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
    extra = {
        "split": "test (images 1350-1796)",
        "test_neg_elbo_nats": round(-elbo.mean().item(), 3),
        "test_neg_elbo_estimator": f"single-sample ELBO averaged over {args.elbo_repeats} draws",
        "test_neg_iwae1_nats": round(-iwae1.mean().item(), 3),
        "best_val_neg_elbo_nats": round(hist.best_val, 3),
        "train_seconds_wall": round(train_seconds, 1),
        "active_units": n_active,
        "latent_dim": model.config.latent_dim,
        "targets": {"test_nll_iwae1000_max": 82.0, "test_neg_elbo_max": 86.0},
    }
    common.finish(
        "vae", mode, model, hist, args.out_dir,
        estimator=f"IWAE bound, k={args.k} (upper bound on the NLL)",
        nll_nats=round(-iwae_k.mean().item(), 3), eval_seconds=round(eval_seconds, 1),
        extra=extra,
    )  # fmt: skip


if __name__ == "__main__":
    main()
