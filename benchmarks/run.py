"""One command for the book's side-by-side table: train every family, evaluate on the test split.

    python benchmarks/run.py                 # full mode (every family's reference recipe)
    python benchmarks/run.py --fast          # fast mode (DGM_EDU_FAST=1): a smoke run in minutes
    python benchmarks/run.py --fast --families vae autoregressive --out-dir /tmp/bench

Each family's model comes from its module's ``train_reference`` (the same recipe as its chapter).
Per family the table holds: the test NLL or the family's bound (with the estimator named; a GAN has
none), FID / KID / precision / recall of ``--samples`` samples against the 447 test images (on the
fixed digits feature net), the memorisation ratio, train seconds, sampling seconds per 100 images
and the parameter count. Two baselines (independent pixels fitted by counting, uniform) and the
train-versus-test FID floor at the same sample size are added. Output: ``table.md`` and
``table.json`` in ``--out-dir`` (``table-fast.*`` in fast mode), with the date and machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

FAMILIES = ("rbm", "vae", "gan", "autoregressive", "flows", "diffusion")
BASELINES = ("independent_pixels", "uniform")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--fast", action="store_true", help="fast mode: sets DGM_EDU_FAST=1")
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    p.add_argument("--samples", type=int, default=None, help="default 1000 (fast: 200)")
    p.add_argument("--out-dir", default=str(Path(__file__).parent / "results"))
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def _nll_spec(family: str, model):
    """(function images -> per-image log p or bound, estimator name) for a family; None for GANs."""
    from dgm_edu.runtime import budget

    if family == "rbm":
        return model.log_prob, "exact log-likelihood of the BINARIZED digits (log Z enumerated)"
    if family == "vae":
        k = budget(fast=50, full=1000)
        return (lambda x: model.log_prob(x, k=k)), f"IWAE bound, k={k} (upper bound on the NLL)"
    if family == "gan":
        return None, "none: implicit model (no likelihood)"
    if family == "autoregressive":
        return model.log_prob, "exact log-likelihood (chain rule)"
    if family == "flows":
        k = budget(fast=4, full=16)
        return (lambda x: model.log_prob(x, num_samples=k)), (
            f"variational-dequantization bound, mean of {k} one-sample bounds (upper bound on NLL)"
        )
    if family == "diffusion":
        return model.log_prob, (
            f"variational bound, {model.config.bound_samples} stratified timesteps per image "
            "(unconditional; upper bound on the NLL)"
        )
    return model.log_prob, "exact log-likelihood"


def _sampler(family: str, model):
    """n -> (n, 1, 8, 8) raw-level samples for a family (diffusion: DDIM, 50 steps)."""
    if family == "diffusion":
        y_of = lambda n: __import__("torch").arange(n) % 10  # noqa: E731  labels 0..9 cycling
        return lambda n: model.ddim_sample(n, steps=50, eta=0.0, y=y_of(n)), "DDIM 50 steps"
    return model.sample, "model.sample"


def train_family(family: str, seed: int):
    """Train one family's reference model: returns (model, wall seconds, history or None)."""
    import importlib

    from dgm_edu.data import load_digits
    from dgm_edu.mixtures import PixelMixture, UniformPixels

    t0 = time.perf_counter()
    if family == "independent_pixels":
        model, hist = PixelMixture.fit_counts(load_digits("train")[0]), None
    elif family == "uniform":
        model, hist = UniformPixels(), None
    else:
        module = importlib.import_module(f"dgm_edu.{family}")
        model, hist = module.train_reference(progress=False, seed=seed)
    model.eval()
    return model, time.perf_counter() - t0, hist


def evaluate(family: str, model, train_seconds: float, n: int, data) -> dict:
    """Every column of the table for one trained model."""
    import torch

    from dgm_edu import metrics

    x_train, x_test = data
    row: dict = {"family": family, "model": type(model).__name__}
    fn, estimator = _nll_spec(family, model)
    row["estimator"] = estimator
    row["test_nll_nats"] = row["test_bpd"] = None
    if fn is not None:
        nll = metrics.evaluate_nll(fn, x_test)
        row["test_nll_nats"], row["test_bpd"] = nll, metrics.nats_to_bpd(nll)
    sample, row["sampler"] = _sampler(family, model)
    with torch.no_grad():
        t0 = time.perf_counter()
        samples = sample(n).cpu().long()
        row["sample_seconds_per_100"] = (time.perf_counter() - t0) * 100 / n
    row.update(metrics.sample_quality(samples, x_test))
    row.update(metrics.memorisation(samples, x_train, x_test))
    row["class_histogram"] = metrics.class_histogram(samples).tolist()
    row["train_seconds"] = train_seconds
    row["params"] = sum(p.numel() for p in model.parameters())
    row["samples_16"] = samples[:16].view(16, 64).tolist()
    return row


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def to_markdown(result: dict) -> str:
    """The table as GitHub markdown (one row per family and baseline)."""
    lines = [
        f"Benchmark ({result['mode']} mode), {result['date']}, {result['machine']['platform']}, "
        f"{result['machine']['cpu_count']} CPUs ({result['machine']['note']}).",
        f"{result['num_samples']} samples per model against the {result['num_test']} test images; "
        f"train-vs-test FID floor at the same size: {result['fid_floor']:.1f}.",
        "",
        "| family | test NLL (nats) | bpd | estimator | FID | KID | precision | recall "
        "| memorisation | train s | sample s/100 | params |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['family']} | {_fmt(r['test_nll_nats'], '.2f')} | {_fmt(r['test_bpd'], '.3f')} "
            f"| {r['estimator']} | {r['fid']:.1f} | {r['kid_mean']:.1f} "
            f"| {r['precision']:.2f} | {r['recall']:.2f} | {r['memorisation_ratio']:.2f} "
            f"| {r['train_seconds']:.1f} | {r['sample_seconds_per_100']:.3f} | {r['params']:,} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.fast:
        os.environ["DGM_EDU_FAST"] = "1"  # before any dgm_edu import reads it
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import torch

    from dgm_edu import metrics
    from dgm_edu.data import load_digits
    from dgm_edu.runtime import budget, is_fast

    torch.set_num_threads(1)
    n = args.samples or budget(fast=200, full=1000)
    x_train, x_test = load_digits("train")[0], load_digits("test")[0]
    gen = torch.Generator().manual_seed(args.seed)
    floor = metrics.fid(x_train[torch.randperm(len(x_train), generator=gen)[:n]], x_test)
    rows = []
    for family in list(args.families) + list(BASELINES):
        print(f"[{family}] training ...", flush=True)
        model, seconds, _ = train_family(family, args.seed)
        torch.manual_seed(args.seed)
        row = evaluate(family, model, seconds, n, (x_train, x_test))
        print(
            f"[{family}] nll={row['test_nll_nats']} fid={row['fid']:.1f} "
            f"train={seconds:.1f}s", flush=True,
        )  # fmt: skip
        rows.append(row)
    mode = "fast" if is_fast() else "full"
    result = {
        "mode": mode,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "note": "shared with other jobs: times are inflated",
        },
        "command": "python benchmarks/run.py" + (" --fast" if args.fast else ""),
        "num_samples": n,
        "num_test": len(x_test),
        "fid_floor": floor,
        "fid_floor_note": f"FID of {n} random train images against the test split",
        "rows": rows,
    }
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = "table-fast" if mode == "fast" else "table"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (out / f"{stem}.md").write_text(to_markdown(result))
    print(to_markdown(result))
    return result


if __name__ == "__main__":
    main()
