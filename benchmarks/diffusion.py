"""Benchmark the book's diffusion model: the test bound, FID, and DDIM against ancestral sampling.

.venv/bin/python benchmarks/diffusion.py         # full mode -> benchmarks/results/diffusion.json
.venv/bin/python benchmarks/diffusion.py --fast  # the fast budget -> diffusion-fast.json

The result (schema of ``benchmarks/common.py``) reports the FID of 1000-step ancestral sampling;
each sampler's FID and seconds are under ``extra["samplers"]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import common

ROOT = Path(__file__).resolve().parents[1]
HEADLINE_SAMPLER = "ancestral_1000"


def compare_samplers(model: Any, n: int, x_test: Any) -> dict[str, dict[str, Any]]:
    """FID and seconds of ancestral sampling and DDIM at 10-100 steps, the same noise for each.

    Class-conditional: labels 0..9 cycling, guidance 1.
    """
    import torch

    from dgm_edu import metrics
    from dgm_edu.data import NUM_CLASSES

    y = torch.arange(n) % NUM_CLASSES
    samplers = {HEADLINE_SAMPLER: (model.config.T, 1.0)}
    samplers.update({f"ddim_{k}": (k, 0.0) for k in (10, 20, 50, 100)})
    out = {}
    for name, (steps, eta) in samplers.items():
        torch.manual_seed(1)
        t0 = time.perf_counter()
        samples = model.ddim_sample(n, steps=steps, eta=eta, y=y)
        out[name] = {"steps": steps, "eta": eta, "seconds": time.perf_counter() - t0}
        out[name]["fid"] = float(metrics.fid(samples, x_test))
        print(name, out[name], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    common.add_common_args(parser)
    parser.add_argument("--samples", type=int, default=500, help="samples per FID estimate")
    args = parser.parse_args()
    mode = common.configure(args)

    import torch

    from dgm_edu import diffusion, metrics
    from dgm_edu.data import load_digits

    ckpt = ROOT / ".checkpoints" / f"diffusion-{mode}.pt"
    model, hist = diffusion.train_reference(checkpoint=ckpt, progress=True)
    model.eval()
    x_test, _ = load_digits("test")

    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.no_grad():  # log_prob keeps gradients; evaluation does not need them
        bound = metrics.evaluate_nll(model, x_test)
    eval_seconds = time.perf_counter() - t0
    n = args.samples if mode == "full" else 50
    samplers = compare_samplers(model, n, x_test)
    extra = {
        "sampler": f"{HEADLINE_SAMPLER} (ancestral, {model.config.T} steps, eta 1)",
        "best_val_diffusion_term": hist.best_val,
        "samplers": samplers,
        "ddim50_speedup": samplers[HEADLINE_SAMPLER]["seconds"] / samplers["ddim_50"]["seconds"],
    }
    common.finish(
        "diffusion", mode, model, hist, args.out_dir,
        estimator=(
            f"variational bound with T={model.config.T}: exact prior KL + "
            f"{model.config.bound_samples} timesteps per image stratified in log-SNR "
            "(importance weights w_t) + 1 sample of the discretized-Gaussian decoder at t=1; "
            "unconditional (null label)"
        ),
        nll_nats=bound, fid=samplers[HEADLINE_SAMPLER]["fid"], samples=n,
        eval_seconds=eval_seconds, extra=extra,
    )  # fmt: skip


if __name__ == "__main__":
    main()
