"""Benchmark the GAN chapter's reference recipes: ring-of-eight mode coverage and digits FID.

    python benchmarks/gan.py          # full mode (the numbers the chapter states)
    python benchmarks/gan.py --fast   # the CI budget

Writes ``benchmarks/results/gan.json`` (``gan-fast.json`` with ``--fast``) in the schema of
``benchmarks/common.py``. A GAN has no likelihood, so there is no test NLL: the digits are scored
with the project's feature network (``dgm_edu.metrics``): FID, KID and precision/recall of 1000
samples against the 447 test images, beside the floor (the 1000 train images against the same
test images) and the independent-pixel baseline's samples. The ring of eight goes in ``extra``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import common

NUM_SAMPLES = 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(parser)
    args = parser.parse_args()
    mode = common.configure(args)

    import torch

    from dgm_edu import gan, metrics
    from dgm_edu.data import load_digits
    from dgm_edu.mixtures import PixelMixture

    ckpt = Path(".checkpoints")
    ring, ring_hist = gan.train_reference(
        data="ring8", checkpoint=ckpt / f"bench-gan-ring8-{mode}.pt"
    )
    torch.manual_seed(0)
    covered, within = metrics.mode_coverage(ring.sample(2000))

    model, hist = gan.train_reference(
        data="digits", checkpoint=ckpt / f"bench-gan-digits-{mode}.pt"
    )
    train, test = load_digits("train")[0], load_digits("test")[0]
    t0 = time.perf_counter()
    torch.manual_seed(0)
    samples = model.sample(NUM_SAMPLES)
    quality = metrics.sample_quality(samples, test)
    eval_seconds = time.perf_counter() - t0
    baseline = PixelMixture.fit_counts(train).sample(NUM_SAMPLES)
    fid_baseline = metrics.fid(baseline, test)
    extra = {
        "ring8": {
            "modes_covered": covered,
            "frac_within_3sigma": within,
            "epochs": ring_hist.epochs_run,
            "train_seconds": ring_hist.seconds,
            "targets": "8/8 modes, >= 0.90 within 3 sigma (full); >= 6 modes (fast)",
        },
        "fid_floor_train_vs_test": metrics.fid_floor(),
        "fid_pixel_baseline": fid_baseline,
        "fid_target_quarter_of_baseline": fid_baseline / 4,
        "class_histogram": [round(v, 4) for v in metrics.class_histogram(samples).tolist()],
        "reference": "test split (447 images)",
        "params_generator": sum(p.numel() for p in model.generator.parameters()),
        "feature_net": "dgm_edu/assets/digits_features.pt (98.7% test accuracy)",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    common.finish(
        "gan", mode, model, hist, args.out_dir,
        estimator="none: a GAN is an implicit model (no log_prob)",
        **common.quality_fields(quality, NUM_SAMPLES), eval_seconds=eval_seconds,
        best_epoch=None, extra=extra,  # no best epoch: the last weights
    )  # fmt: skip


if __name__ == "__main__":
    main()
