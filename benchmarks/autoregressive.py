"""Benchmark of chapter 5: the reference gated PixelCNN's exact test NLL on the digits.

Usage: ``python benchmarks/autoregressive.py [--fast] [--checkpoint PATH]`` (full mode by default).
Writes ``benchmarks/results/autoregressive.json`` (``autoregressive-fast.json`` with ``--fast``) in
the schema of ``benchmarks/common.py``. ``train_seconds`` is the training loop's own clock, read
from the checkpoint's history when a finished run is reloaded.
"""

from __future__ import annotations

import argparse
import time

import common


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    common.add_common_args(parser)
    parser.add_argument(
        "--checkpoint", default=None, help="fit's checkpoint: resume, or reload a finished run"
    )
    args = parser.parse_args()
    mode = common.configure(args)

    from dgm_edu.autoregressive import train_reference
    from dgm_edu.data import load_digits
    from dgm_edu.metrics import evaluate_nll

    model, history = train_reference(progress=False, checkpoint=args.checkpoint)
    test_x, _ = load_digits("test")
    t0 = time.perf_counter()
    nll = evaluate_nll(model, test_x)
    eval_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.sample(64)
    sample_seconds = time.perf_counter() - t0
    extra = {
        "model": "GatedPixelCNN (train_reference)",
        "config": vars(model.config),
        "target_nll_nats": 76.0,
        "best_val_nll_nats": round(history.best_val, 3),
        "sample_64_seconds": round(sample_seconds, 2),
        "val_curve": [round(v, 2) for v in history.val_loss],
    }
    common.finish(
        "autoregressive", mode, model, history, args.out_dir,
        estimator="exact log-likelihood (chain rule), nats per image of the discrete data",
        nll_nats=round(nll, 3), eval_seconds=round(eval_seconds, 2), extra=extra,
    )  # fmt: skip


if __name__ == "__main__":
    main()
