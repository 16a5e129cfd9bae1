"""One command for the book's side-by-side table: every family, evaluated on the test split.

    python benchmarks/run.py                 # full mode: train every family's reference recipe
    python benchmarks/run.py --fast          # fast mode: a smoke run in minutes
    python benchmarks/run.py --shipped       # score the shipped weights (no training), minutes
    python benchmarks/run.py --fast --families vae autoregressive --out-dir /tmp/bench

Without ``--shipped`` each family's model comes from its module's ``train_reference`` (the same
recipe as its chapter). With ``--shipped`` it is the reference weights of ``dgm_edu.weights``
(every headline entry that is shipped), and the test NLL or bound, its estimator and the training
seconds are the figures recorded in their manifest (measured when the weights were built).
Per family the table holds: the test NLL or the family's bound (with the estimator named; a GAN has
none), FID / KID / precision / recall of ``--samples`` samples against the 447 test images (on the
fixed digits feature net), the memorisation ratio, train seconds, sampling seconds per 100 images
and the parameter count. Two baselines (independent pixels fitted by counting, uniform) and the
train-versus-test FID floor at the same sample size are added. Output: ``table.md`` and
``table.json`` in ``--out-dir`` (``table-fast.*`` in fast mode), with the date and machine. The
row fields use the names of the per-family results (``benchmarks/common.py``).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from typing import Any

import common

FAMILIES = ("rbm", "vae", "gan", "autoregressive", "flows", "diffusion", "energy")
SHIPPED = ("mixture", *FAMILIES)  # dgm_edu.weights.HEADLINE
BASELINES = ("independent_pixels", "uniform")
MODULES = {"mixture": "mixtures", "flows": "digit_flow"}  # family -> module, where they differ
NO_LIKELIHOOD = "none: implicit model (no likelihood)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_args(p)
    p.add_argument("--shipped", action="store_true", help="score the shipped weights, no training")
    p.add_argument(
        "--families", nargs="+", default=None, choices=SHIPPED,
        help=f"default: {' '.join(FAMILIES)} (--shipped: also mixture)",
    )  # fmt: skip
    p.add_argument("--samples", type=int, default=None, help="default 1000 (fast: 200)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.shipped and args.fast:
        p.error("--shipped scores the shipped (full-mode) weights: expected no --fast")
    if args.families is None:
        args.families = list(SHIPPED if args.shipped else FAMILIES)
    return args


def _nll_spec(family: str, model):
    """(function images -> per-image log p or bound, estimator name) for a family; None for GANs."""
    from dgm_edu.runtime import budget

    if family == "rbm":
        return model.log_prob, "exact log-likelihood of the BINARIZED digits (log Z enumerated)"
    if family == "vae":
        k = budget(fast=50, full=1000)
        return (lambda x: model.log_prob(x, k=k)), f"IWAE bound, k={k} (upper bound on the NLL)"
    if family == "gan":
        return None, NO_LIKELIHOOD
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
    if family == "energy":
        c = model.config
        return model.log_prob, (
            f"AIS estimate (stochastic, not a bound): log Z by AIS from the uniform box, "
            f"{c.ais_betas} betas, {c.ais_runs} runs"
        )
    return model.log_prob, "exact log-likelihood"


def _sampler(family: str, model):
    """n -> (n, 1, 8, 8) raw-level samples for a family (diffusion: DDIM, 50 steps, no label:
    the model was trained with label dropout, so it samples the marginal like the others).

    The RBM's samples are binary (levels 0 and 16): they are scored as they are, against the
    17-level test images.
    """
    if family == "diffusion":  # unconditional (y=None), like every other family's samples
        return lambda n: model.ddim_sample(n, steps=50, eta=0.0), "DDIM 50 steps, unconditional"
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
        module = importlib.import_module(f"dgm_edu.{MODULES.get(family, family)}")
        model, hist = module.train_reference(progress=False, seed=seed)
    model.eval()
    return model, time.perf_counter() - t0, hist


def measure_nll(family: str, model, x_test) -> dict[str, Any]:
    """``estimator``, ``nll_nats`` and ``bpd`` measured here on the test split."""
    import torch

    from dgm_edu import metrics

    fn, estimator = _nll_spec(family, model)
    with torch.no_grad():  # every log_prob keeps gradients; evaluation does not need them
        nll = None if fn is None else metrics.evaluate_nll(fn, x_test)
    return {"estimator": estimator, "nll_nats": nll, "bpd": common.bpd_of(nll)}


def shipped_nll(entry: dict[str, Any]) -> dict[str, Any]:
    """``estimator``, ``nll_nats`` and ``bpd`` of a shipped model: its manifest figures."""
    figures = entry["figures"]
    nll = figures.get("test_nll_nats")
    estimator = figures.get("estimator") if nll is not None else NO_LIKELIHOOD
    return {"estimator": estimator, "nll_nats": nll, "bpd": common.bpd_of(nll)}


def score_samples(family: str, model, n: int, data) -> dict[str, Any]:
    """Sampling time, FID / KID / precision / recall, memorisation and 16 samples of a model."""
    import torch

    from dgm_edu import metrics

    x_train, x_test = data
    sample, sampler = _sampler(family, model)
    with torch.no_grad():
        t0 = time.perf_counter()
        samples = sample(n).cpu().long()
        seconds = (time.perf_counter() - t0) * 100 / n
    return {
        "sampler": sampler,
        "sample_seconds_per_100": seconds,
        **common.quality_fields(metrics.sample_quality(samples, x_test), n),
        **metrics.memorisation(samples, x_train, x_test),
        "class_histogram": metrics.class_histogram(samples).tolist(),
        "samples_16": samples[:16].view(16, 64).tolist(),
    }


def evaluate(
    family: str, model, train_seconds: float, n: int, data, nll: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Every column of the table for one model (``nll``: given figures instead of measuring)."""
    row: dict[str, Any] = {"family": family, "model": type(model).__name__}
    row.update(nll if nll is not None else measure_nll(family, model, data[1]))
    row.update(score_samples(family, model, n, data))
    row["train_seconds"] = train_seconds
    row["params"] = sum(p.numel() for p in model.parameters())
    return row


def fid_floor(n: int, seed: int, x_train, x_test) -> float:
    """FID of ``n`` random train images against the test split (all of them: ``fid_floor()``)."""
    import torch

    from dgm_edu import metrics

    if n >= len(x_train):
        return metrics.fid_floor()
    gen = torch.Generator().manual_seed(seed)
    return metrics.fid(x_train[torch.randperm(len(x_train), generator=gen)[:n]], x_test)


def obtain(family: str, args: argparse.Namespace) -> tuple[Any, float, dict[str, Any]]:
    """(model, train seconds, extra row fields): shipped weights or trained here."""
    if args.shipped and family not in BASELINES:
        from dgm_edu import weights

        entry = weights.entry(family)
        shipped = {"weights": family, "sha256": entry["sha256"], "nll": shipped_nll(entry)}
        return weights.load(family, device="cpu"), entry["train_seconds"], shipped
    print(f"[{family}] training ...", flush=True)
    model, seconds, _ = train_family(family, args.seed)
    return model, seconds, {}


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def to_markdown(result: dict) -> str:
    """The table as GitHub markdown (one row per family and baseline)."""
    lines = [
        f"Benchmark ({result['mode']} mode, {result['weights']}), {result['date']}, "
        f"{result['machine']['platform']}, {result['machine']['cpu_count']} CPUs "
        f"({result['machine']['note']}).",
        f"{result['num_samples']} samples per model against the {result['num_test']} test images; "
        f"train-vs-test FID floor at the same size: {result['fid_floor']:.1f}.",
    ]
    if result.get("missing"):
        lines.append(f"Not shipped yet: {', '.join(result['missing'])}.")
    lines += [
        "",
        "| family | test NLL (nats) | bpd | estimator | FID | KID | precision | recall "
        "| memorisation | train s | sample s/100 | params |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['family']} | {_fmt(r['nll_nats'], '.2f')} | {_fmt(r['bpd'], '.3f')} "
            f"| {r['estimator']} | {r['fid']:.1f} | {r['kid']:.1f} "
            f"| {r['precision']:.2f} | {r['recall']:.2f} | {r['memorisation_ratio']:.2f} "
            f"| {r['train_seconds']:.1f} | {r['sample_seconds_per_100']:.3f} | {r['params']:,} |"
        )
    return "\n".join(lines) + "\n"


def _machine(threads: int) -> dict[str, Any]:
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": threads,
        "note": "shared with other jobs: times are inflated",
    }


def _families(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """(families to score, requested families without shipped weights)."""
    if not args.shipped:
        return list(args.families), []
    from dgm_edu import weights

    shipped = weights.manifest()
    missing = [f for f in args.families if f not in shipped]
    for family in missing:
        print(f"[{family}] no shipped weights yet: skipped", flush=True)
    return [f for f in args.families if f in shipped], missing


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.shipped:  # the weights' mode, whatever the environment's: no budget is read
        mode, n = "reference", args.samples or 1000
        common.set_threads(args.threads)
    else:
        from dgm_edu.runtime import budget

        mode = common.configure(args)
        n = args.samples or budget(fast=200, full=1000)
    import torch

    from dgm_edu.data import load_digits

    x_train, x_test = load_digits("train")[0], load_digits("test")[0]
    families, missing = _families(args)
    rows = []
    for family in families + list(BASELINES):
        model, seconds, shipped = obtain(family, args)
        torch.manual_seed(args.seed)
        row = evaluate(family, model, seconds, n, (x_train, x_test), nll=shipped.pop("nll", None))
        row.update(shipped)
        print(f"[{family}] nll={row['nll_nats']} fid={row['fid']:.1f} train={seconds:.1f}s",
              flush=True)  # fmt: skip
        rows.append(row)
    argv_text = " ".join(sys.argv[1:] if argv is None else argv)
    result = {
        "mode": mode,
        "weights": "shipped weights (dgm_edu.weights)" if args.shipped else "trained by this run",
        "date": common.now(),
        "machine": _machine(args.threads),
        "command": f"python benchmarks/run.py {argv_text}".strip(),
        "num_samples": n,
        "num_test": len(x_test),
        "fid_floor": fid_floor(n, args.seed, x_train, x_test),
        "fid_floor_note": f"FID of {n} random train images against the test split",
        "missing": missing,
        "rows": rows,
    }
    path = common.write_json(common.result_path("table", mode, args.out_dir), result)
    path.with_suffix(".md").write_text(to_markdown(result))
    print(to_markdown(result))
    return result


if __name__ == "__main__":
    main()
