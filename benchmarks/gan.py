"""Benchmark the GAN chapter's reference recipes: ring-of-eight mode coverage and digits FID.

    python benchmarks/gan.py          # full mode (the numbers the chapter states)
    python benchmarks/gan.py --fast   # the CI budget

Writes ``benchmarks/results/gan.json``. A GAN has no likelihood, so there is no test NLL: the
digits are scored with the project's feature network (``dgm_edu.metrics``): FID, KID and
precision/recall of 1000 samples against the 447 test images, beside the floor (the 1000 train
images against the same test images) and the independent-pixel baseline's samples.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="the CI budget (sets DGM_EDU_FAST=1)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "gan.json"))
    args = parser.parse_args()
    if args.fast:
        os.environ["DGM_EDU_FAST"] = "1"  # before importing dgm_edu

    import torch

    from dgm_edu import gan, metrics
    from dgm_edu.data import load_digits
    from dgm_edu.mixtures import PixelMixture
    from dgm_edu.runtime import budget, is_fast

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    mode = budget(fast="fast", full="full")
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
    torch.manual_seed(0)
    samples = model.sample(1000)
    baseline = PixelMixture.fit_counts(train).sample(1000)
    quality = metrics.sample_quality(samples, test)
    fid_baseline = metrics.fid(baseline, test)
    result = {
        "mode": "fast" if is_fast() else "full",
        "ring8": {
            "modes_covered": covered,
            "frac_within_3sigma": within,
            "epochs": ring_hist.epochs_run,
            "train_seconds": ring_hist.seconds,
            "targets": "8/8 modes, >= 0.90 within 3 sigma (full); >= 6 modes (fast)",
        },
        "digits": {
            **quality,
            "fid_floor_train_vs_test": metrics.fid_floor(),
            "fid_pixel_baseline": fid_baseline,
            "fid_target_quarter_of_baseline": fid_baseline / 4,
            "class_histogram": [round(v, 4) for v in metrics.class_histogram(samples).tolist()],
            "num_samples": 1000,
            "reference": "test split (447 images)",
            "epochs": hist.epochs_run,
            "train_seconds": hist.seconds,
            "params": sum(p.numel() for p in model.parameters()),
            "params_generator": sum(p.numel() for p in model.generator.parameters()),
            "nll": "none: a GAN is an implicit model (no log_prob)",
        },
        "feature_net": "dgm_edu/assets/digits_features.pt (98.7% test accuracy)",
        "machine": "2-core CPU shared by ~7 engineers: timings are inflated",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
