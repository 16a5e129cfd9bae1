"""Benchmark the book's normalizing flow: test bounds with uniform and variational dequantization.

.venv/bin/python benchmarks/flows.py          # full mode, writes benchmarks/results/flows.json
.venv/bin/python benchmarks/flows.py --fast   # the chapter's fast budget -> flows-fast.json

The result (schema of ``benchmarks/common.py``) reports the variational-dequantization flow (the
book's reference) and puts the uniform one under ``extra["uniform"]``; with ``--only`` just that
model is trained, reported, and written (the file is replaced, not merged).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import common

ROOT = Path(__file__).resolve().parents[1]


def run_one(dequantization: str, mode: str, eval_samples: int) -> dict[str, Any]:
    """Train (or reload) one flow and measure its test bound: schema fields plus its extras."""
    import torch

    from dgm_edu import digit_flow, metrics
    from dgm_edu.data import load_digits

    x_test, _ = load_digits("test")
    ckpt = ROOT / ".checkpoints" / f"flows-{dequantization}-{mode}.pt"
    model, hist = digit_flow.train_reference(
        dequantization=dequantization, checkpoint=ckpt, progress=True
    )
    model.eval()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.no_grad():  # log_prob keeps gradients; evaluation does not need them
        nll = metrics.evaluate_nll(lambda x, m=model: m.log_prob(x, eval_samples), x_test)
    return {
        "nll_nats": nll,
        "bpd": metrics.nats_to_bpd(nll),
        "estimator": (
            f"-E_q[log p((x+u)/17) - log q(u|x)] + 64 log 17, {dequantization} q(u|x), "
            f"mean of {eval_samples} one-sample bounds per test image"
        ),
        "eval_seconds": time.perf_counter() - t0,
        **common.history_fields(hist),
        "best_val_loss": hist.best_val,
        "params": sum(p.numel() for p in model.parameters()),
        "config": dict(vars(model.config)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    common.add_common_args(parser)
    parser.add_argument(
        "--eval-samples",
        type=int,
        default=16,
        help="dequantization samples per test image for the reported bound",
    )
    parser.add_argument("--only", choices=["uniform", "variational"], default=None)
    args = parser.parse_args()
    mode = common.configure(args)

    runs = {}
    for deq in [args.only] if args.only else ["uniform", "variational"]:
        runs[deq] = run_one(deq, mode, args.eval_samples)
        print(deq, runs[deq], flush=True)
    head = "variational" if "variational" in runs else next(iter(runs))
    main_run = runs.pop(head)
    extra = {
        "dequantization": head,
        "best_val_loss": main_run.pop("best_val_loss"),
        "config": main_run.pop("config"),
        "target": "variational bound <= 87 nats/image (full mode, test split)",
        **runs,  # the other dequantization, if it ran
    }
    main_run.pop("bpd")  # make_result derives it from nll_nats
    result = common.make_result("flows", mode, **main_run, extra=extra)
    common.write_result(result, args.out_dir)


if __name__ == "__main__":
    main()
