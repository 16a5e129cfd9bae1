"""Benchmark of chapter 5: the reference gated PixelCNN's exact test NLL on the digits.

Usage: ``python benchmarks/autoregressive.py [--fast] [--checkpoint PATH]`` (full mode by default).
Writes ``benchmarks/results/autoregressive.json``. ``train_seconds`` is the training loop's own
clock, read from the checkpoint's history when a finished run is reloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fast", action="store_true", help="the CI budget (DGM_EDU_FAST=1)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--checkpoint", default=None, help="fit's checkpoint: resume, or reload a finished run"
    )
    default_out = Path(__file__).parent / "results" / "autoregressive.json"
    parser.add_argument("--out", default=str(default_out))
    args = parser.parse_args()
    if args.fast:
        os.environ["DGM_EDU_FAST"] = "1"

    import torch  # after DGM_EDU_FAST is set

    from dgm_edu.autoregressive import train_reference
    from dgm_edu.data import load_digits
    from dgm_edu.metrics import evaluate_nll, nats_to_bpd

    torch.set_num_threads(args.threads)
    model, history = train_reference(progress=False, checkpoint=args.checkpoint)
    test_x, _ = load_digits("test")
    t0 = time.perf_counter()
    nll = evaluate_nll(model, test_x)
    eval_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.sample(64)
    sample_seconds = time.perf_counter() - t0
    result = {
        "model": "GatedPixelCNN (train_reference)",
        "mode": "fast" if args.fast else "full",
        "config": vars(model.config),
        "estimator": "exact log-likelihood (chain rule), nats per image of the discrete data",
        "test_nll_nats": round(nll, 3),
        "test_bpd": round(nats_to_bpd(nll), 4),
        "target_nll_nats": 76.0,
        "best_val_nll_nats": round(history.best_val, 3),
        "best_epoch": history.best_epoch,
        "epochs_run": history.epochs_run,
        "train_seconds": round(history.seconds, 1),
        "test_eval_seconds": round(eval_seconds, 2),
        "sample_64_seconds": round(sample_seconds, 2),
        "params": sum(p.numel() for p in model.parameters()),
        "threads": args.threads,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (shared)",
        "val_curve": [round(v, 2) for v in history.val_loss],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
