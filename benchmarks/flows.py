"""Benchmark the book's normalizing flow: test bounds with uniform and variational dequantization.

.venv/bin/python benchmarks/flows.py          # full mode, writes benchmarks/results/flows.json
.venv/bin/python benchmarks/flows.py --fast   # the chapter's fast budget (a smoke test)
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fast", action="store_true", help="DGM_EDU_FAST=1: the small budget")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (shared machine)")
    parser.add_argument(
        "--eval-samples",
        type=int,
        default=16,
        help="dequantization samples per test image for the reported bound",
    )
    parser.add_argument("--only", choices=["uniform", "variational"], default=None)
    args = parser.parse_args()
    if args.fast:
        os.environ["DGM_EDU_FAST"] = "1"

    import torch

    from dgm_edu import flows, metrics
    from dgm_edu.data import load_digits
    from dgm_edu.runtime import is_fast

    torch.set_num_threads(args.threads)
    mode = "fast" if is_fast() else "full"
    x_test, _ = load_digits("test")
    out = ROOT / "benchmarks" / "results" / ("flows.json" if mode == "full" else "flows-fast.json")
    result = json.loads(out.read_text()) if out.exists() else {}
    result.update(
        {
            "mode": mode,
            "threads": args.threads,
            "machine": "2-core CPU shared with ~7 other jobs: times are inflated",
            "target": "variational bound <= 87 nats/image (full mode, test split)",
        }
    )
    for deq in [args.only] if args.only else ["uniform", "variational"]:
        ckpt = ROOT / ".checkpoints" / f"flows-{deq}-{mode}.pt"
        model, hist = flows.train_reference(dequantization=deq, checkpoint=ckpt, progress=True)
        model.eval()
        torch.manual_seed(0)
        t0 = time.perf_counter()
        nll = metrics.evaluate_nll(lambda x, m=model: m.log_prob(x, args.eval_samples), x_test)
        result[deq] = {
            "test_bound_nats": nll,
            "test_bound_bpd": metrics.nats_to_bpd(nll),
            "estimator": (
                f"-E_q[log p((x+u)/17) - log q(u|x)] + 64 log 17, {deq} q(u|x), "
                f"mean of {args.eval_samples} one-sample bounds per test image"
            ),
            "eval_seconds": time.perf_counter() - t0,
            "train_seconds": hist.seconds,
            "epochs": hist.epochs_run,
            "best_epoch": hist.best_epoch + 1,
            "best_val_loss": hist.best_val,
            "params": sum(p.numel() for p in model.parameters()),
            "config": {k: v for k, v in vars(model.config).items()},
        }
        print(deq, json.dumps(result[deq], indent=1), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
