"""One command for the book's side-by-side table: every family, evaluated on the test split.

    python benchmarks/run.py                 # full mode: train every family's reference recipe
    python benchmarks/run.py --fast          # fast mode: a smoke run in minutes
    python benchmarks/run.py --shipped       # score the shipped weights (no training), minutes
    python benchmarks/run.py --fast --families vae autoregressive --out-dir /tmp/bench

Without ``--shipped`` each family's model comes from its module's ``train_reference`` (the same
recipe as its chapter). With ``--shipped`` it is the reference weights of ``dgm_edu.weights``
(every headline entry that is shipped); the training seconds are their manifest's, and the test
NLL is measured again here and set beside the manifest's figure (``nll_manifest``).
Per family the table holds: the test NLL or the family's bound (with the estimator named; a GAN has
none), the mean of the per-image values over the 447 test images; FID / KID / precision / recall of
``--samples`` samples against the test images (on the fixed digits feature net, features computed
once); the memorisation ratio, train seconds, sampling seconds per 100 images and the parameter
count. Every score has a 95% bootstrap interval (``<key>_low``, ``<key>_high``): over the test
images for the NLL and recall, over the samples for FID, KID and precision. Two baselines
(independent pixels fitted by counting, uniform) and the train-versus-test floor at the same
sample size (real train images scored like a model's samples: ``floor``) are added. Output:
``table.md`` and ``table.json`` in ``--out-dir`` (``table-fast.*`` in fast mode), with the date
and machine. The row fields use the names of the per-family results (``benchmarks/common.py``).
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
TWO_STAGE = ("vqvae", "latent-diffusion")  # chapter 9: built on other families' shipped weights
SHIPPED = ("mixture", *FAMILIES, *TWO_STAGE)  # dgm_edu.weights.HEADLINE
BASELINES = ("independent_pixels", "uniform")
MODULES = {"mixture": "mixtures", "flows": "digit_flow"}  # family -> module, where they differ
NO_LIKELIHOOD = "none: implicit model (no likelihood)"
LEVEL, RESAMPLES = 0.95, 1000  # every interval of the table: 95 %, percentile bootstrap
FID_SIZES = (50, 100, 200, 500, 1000)  # sample sizes of the FID-against-N curve
KID_UNIT = "raw MMD² of the digit features (not rescaled)"
INTERVALS = ("nll_nats", "bpd", "fid", "kid", "precision", "recall")  # keys with _low / _high


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
    p.add_argument(
        "--resamples",
        type=int,
        default=RESAMPLES,
        help=f"bootstrap resamples (default {RESAMPLES})",
    )
    args = p.parse_args(argv)
    if args.shipped and args.fast:
        p.error("--shipped scores the shipped (full-mode) weights: expected no --fast")
    if args.families is None:
        args.families = list(SHIPPED if args.shipped else FAMILIES)
    return args


def _nll_spec(family: str, model, log_z: float | None = None):
    """(function images -> per-image log p or bound, estimator name) for a family; None for GANs.

    ``log_z``: the energy model's log Ẑ to use (the manifest's AIS estimate for shipped weights)
    instead of running AIS; the images are then dequantized with one draw of seed 0, as the
    manifest's figure was, so call the function on the whole test split at once.
    """
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
    if family == "vqvae":
        return model.log_prob, (
            "bound log p(x|z*) + log p(z*), deterministic encoder, PixelCNN prior over the codes "
            "(exact, no sampling; upper bound on the NLL)"
        )
    if family == "latent-diffusion":
        return model.log_prob, (
            f"bound: the VAE's ELBO with the diffusion's bound on log p(z), {model.draws} draws "
            "z ~ q(z|x) per image (upper bound on the NLL)"
        )
    if family == "energy" and log_z is not None:
        import math

        import torch

        from dgm_edu.data import LEVELS, dequantize

        def energy_log_prob(x):  # −E((x + u)/17) − 64 log 17 − log Ẑ, one u per image (seed 0)
            y = dequantize(x, generator=torch.Generator().manual_seed(0)).to(model.replay)
            return -model.energy(y) - x[0].numel() * math.log(LEVELS) - log_z

        return energy_log_prob, (
            f"AIS estimate (stochastic, not a bound): −E of one dequantization draw (seed 0) − "
            f"64 log 17 − log Ẑ, log Ẑ = {log_z:.4f} the manifest's AIS estimate (seed 0); the "
            "interval covers the draw of test images only, not the error of log Ẑ"
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
        return lambda n: model.ddim_sample(n, steps=50, eta=0.0), (
            "DDIM 50 steps, eta 0, no label (the null label of classifier-free guidance, "
            "guidance 1): unconditional"
        )
    if family == "latent-diffusion":
        return model.sample, (
            f"z by DDIM {model.steps} steps, eta 0, in the VAE's latent space, then x ~ p(x|z): "
            "unconditional"
        )
    return model.sample, "model.sample(n), no label: unconditional"


def is_conditional(model) -> bool:
    """Whether ``_sampler``'s samples are class-conditional: only a model with classes that was
    trained without label dropout (``p_uncond == 0``) draws labels when none is given."""
    config = getattr(model, "config", None)
    classes = getattr(config, "num_classes", 0) or 0
    return classes > 0 and getattr(config, "p_uncond", 0.0) == 0.0


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


def per_image_nll(family: str, model, x_test, log_z: float | None = None, batch: int = 64):
    """(per-image NLL or bound ``(N,)`` float64, or None for a GAN; the estimator's name)."""
    import torch

    fn, estimator = _nll_spec(family, model, log_z)
    if fn is None:
        return None, estimator
    size = len(x_test) if log_z is not None else batch  # one dequantization draw for all
    model.eval()
    with torch.no_grad():  # every log_prob keeps gradients; evaluation does not need them
        parts = [-fn(x_test[i : i + size]).double().cpu() for i in range(0, len(x_test), size)]
    return torch.cat(parts), estimator  # (N,)


def measure_nll(
    family: str, model, x_test, log_z: float | None = None, seed: int = 0
) -> dict[str, Any]:
    """``estimator``, ``nll_nats`` and ``bpd`` measured here on the test split: the mean of the
    per-image values, with a bootstrap interval over the test images (``*_low``, ``*_high``)."""
    import torch

    from dgm_edu import metrics

    torch.manual_seed(seed)  # the stochastic estimators (IWAE, dequantization, timesteps)
    values, estimator = per_image_nll(family, model, x_test, log_z)
    out: dict[str, Any] = {"estimator": estimator}
    if values is None:
        return out | {f"{k}{s}": None for k in ("nll_nats", "bpd") for s in ("", "_low", "_high")}
    nll = metrics.bootstrap(lambda v: v.mean(), values, resamples=RESAMPLES, level=LEVEL)
    for key, value in zip(("nll_nats", "nll_nats_low", "nll_nats_high"), nll):
        out[key], out[key.replace("nll_nats", "bpd")] = value, common.bpd_of(value)
    return out


def shipped_nll(entry: dict[str, Any]) -> dict[str, Any]:
    """The manifest's figures of a shipped model: ``nll_manifest`` (None for a GAN), its
    estimator, and (energy) the seed-0 log Ẑ the figure used."""
    figures = entry["figures"]
    out = {"nll_manifest": figures.get("test_nll_nats"), "manifest_estimator": None}
    if out["nll_manifest"] is not None:
        out["manifest_estimator"] = figures.get("estimator")
    if "log_z_runs" in figures:  # energy: test_nll_nats = e_test + log Ẑ(seed 0) + 64 log 17
        out["log_z"] = figures["log_z_runs"][0]
    return out


def quality_intervals(samples, x_test, seed: int = 0, k: int = 3) -> dict[str, Any]:
    """FID, KID, precision and recall (k-NN manifolds, ``k`` = 3 as in
    :func:`dgm_edu.metrics.precision_recall`) of ``samples`` against ``x_test``, each with a
    bootstrap interval, on features computed once. FID, KID and precision resample the samples
    (FID and KID centred: a resample repeats images, which biases them upwards); recall, a mean
    over the test images, resamples the test images. ``kid`` is the unbiased MMD² of the whole
    sets (:func:`dgm_edu.metrics.mmd2_polynomial`), in raw feature units."""
    from dgm_edu import metrics

    net = metrics._feature_net(None)
    fs, fr = metrics.digit_features(samples, net), metrics.digit_features(x_test, net)  # (N|M, F)
    boot = {"resamples": RESAMPLES, "level": LEVEL, "seed": seed}
    scores = {
        "fid": metrics.bootstrap(metrics.frechet_distance, fs, fr, centre=True, **boot),
        "kid": metrics.bootstrap(metrics.mmd2_polynomial, fs, fr, centre=True, **boot),
        "precision": metrics.bootstrap(
            lambda v: v.mean(), metrics.in_manifold(fs, fr, k).double(), **boot
        ),  # share of samples in the test images' manifold
        "recall": metrics.bootstrap(
            lambda v: v.mean(), metrics.in_manifold(fr, fs, k).double(), **boot
        ),  # share of test images in the samples' manifold
    }
    out: dict[str, Any] = {}
    for key, interval in scores.items():
        out |= {key: interval.estimate, f"{key}_low": interval.low, f"{key}_high": interval.high}
    # FID of the first n samples (an i.i.d. subset): its upward bias at small n, model by model
    by_n = {str(n): metrics.frechet_distance(fs[:n], fr) for n in FID_SIZES if n <= len(fs)}
    return out | {"kid_unit": KID_UNIT, "samples": len(samples), "fid_by_n": by_n}


def score_samples(family: str, model, n: int, data, seed: int = 0) -> dict[str, Any]:
    """Sampling time, FID / KID / precision / recall with intervals, memorisation and 16 samples
    of a model."""
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
        "conditional": is_conditional(model),
        "sample_seconds_per_100": seconds,
        **quality_intervals(samples, x_test, seed),
        **metrics.memorisation(samples, x_train, x_test),
        "class_histogram": metrics.class_histogram(samples).tolist(),
        "samples_16": samples[:16].view(16, 64).tolist(),
    }


def evaluate(
    family: str,
    model,
    train_seconds: float,
    n: int,
    data,
    manifest: dict[str, Any] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Every column of the table for one model (``manifest``: its :func:`shipped_nll` figures,
    set beside the NLL measured here; the energy model's log Ẑ is taken from them)."""
    import torch

    manifest = dict(manifest or {})
    log_z = manifest.pop("log_z", None)
    row: dict[str, Any] = {"family": family, "model": type(model).__name__}
    row.update(measure_nll(family, model, data[1], log_z, seed))
    if manifest:
        row.update(manifest)
        known = None not in (row["nll_nats"], row["nll_manifest"])
        row["nll_manifest_diff"] = row["nll_nats"] - row["nll_manifest"] if known else None
    torch.manual_seed(seed)
    row.update(score_samples(family, model, n, data, seed))
    row["train_seconds"] = train_seconds
    row["params"] = sum(p.numel() for p in model.parameters())
    return row


def floor(n: int, seed: int, x_train, x_test) -> dict[str, Any]:
    """The train-versus-test floor: ``n`` random train images (all of them when ``n`` >= 1000)
    scored against the test split like a model's samples, with the same intervals."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    real = (
        x_train if n >= len(x_train) else x_train[torch.randperm(len(x_train), generator=gen)[:n]]
    )
    return {"family": "train_vs_test", **quality_intervals(real, x_test, seed)}


def obtain(family: str, args: argparse.Namespace) -> tuple[Any, float, dict[str, Any]]:
    """(model, train seconds, extra row fields): shipped weights or trained here."""
    if args.shipped and family not in BASELINES:
        from dgm_edu import weights

        entry = weights.entry(family)
        shipped = {"weights": family, "sha256": entry["sha256"], "manifest": shipped_nll(entry)}
        model = weights.load(family, device="cpu")
        if family == "latent-diffusion":  # the prior of the shipped VAE: the pair is the model
            from dgm_edu.latent_diffusion import LatentDiffusion

            model = LatentDiffusion(weights.load("vae", device="cpu"), model, draws=64, steps=50)
        return model, entry["train_seconds"], shipped
    print(f"[{family}] training ...", flush=True)
    model, seconds, _ = train_family(family, args.seed)
    return model, seconds, {}


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _ci(r: dict, key: str, spec: str) -> str:
    """``estimate [low, high]``, or "-" without an estimate."""
    if r.get(key) is None:
        return "-"
    return f"{r[key]:{spec}} [{r[f'{key}_low']:{spec}}, {r[f'{key}_high']:{spec}}]"


def to_markdown(result: dict) -> str:
    """The table as GitHub markdown (one row per family and baseline)."""
    lines = [
        f"Benchmark ({result['mode']} mode, {result['weights']}), {result['date']}, "
        f"{result['machine']['platform']}, {result['machine']['cpu_count']} CPUs "
        f"({result['machine']['note']}).",
        f"{result['num_samples']} samples per model against the {result['num_test']} test images; "
        f"train-vs-test FID floor at the same size: {result['fid_floor']:.1f}. "
        f"[low, high]: {result['interval']}. KID: {KID_UNIT}. Every model samples "
        f"{'with' if any(r['conditional'] for r in result['rows']) else 'without'} labels.",
    ]
    if result.get("missing"):
        lines.append(f"Not shipped yet: {', '.join(result['missing'])}.")
    lines += [
        "",
        "| family | test NLL (nats) | manifest NLL | bpd | estimator | FID | KID (raw MMD²) "
        "| precision | recall | memorisation | train s | sample s/100 | params |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    floor_row = {**result["floor"], "estimator": "real train images (the floor)"}
    for r in [*result["rows"], floor_row]:
        params = "-" if r.get("params") is None else f"{r['params']:,}"
        lines.append(
            f"| {r['family']} | {_ci(r, 'nll_nats', '.2f')} | {_fmt(r.get('nll_manifest'), '.2f')} "
            f"| {_ci(r, 'bpd', '.3f')} | {r['estimator']} | {_ci(r, 'fid', '.1f')} "
            f"| {_ci(r, 'kid', '.1f')} | {_ci(r, 'precision', '.2f')} | {_ci(r, 'recall', '.2f')} "
            f"| {_fmt(r.get('memorisation_ratio'), '.2f')} | {_fmt(r.get('train_seconds'), '.1f')} "
            f"| {_fmt(r.get('sample_seconds_per_100'), '.3f')} | {params} |"
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
    global RESAMPLES  # every interval of this run uses the same number of resamples
    args = parse_args(argv)
    RESAMPLES = args.resamples
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
        manifest = shipped.pop("manifest", None)
        row = evaluate(family, model, seconds, n, (x_train, x_test), manifest, args.seed)
        row.update(shipped)
        print(f"[{family}] nll={row['nll_nats']} fid={row['fid']:.1f} train={seconds:.1f}s",
              flush=True)  # fmt: skip
        rows.append(row)
    argv_text = " ".join(sys.argv[1:] if argv is None else argv)
    real = floor(n, args.seed, x_train, x_test)
    result = {
        "mode": mode,
        "weights": "shipped weights (dgm_edu.weights)" if args.shipped else "trained by this run",
        "date": common.now(),
        "machine": _machine(args.threads),
        "command": f"python benchmarks/run.py {argv_text}".strip(),
        "num_samples": n,
        "num_test": len(x_test),
        "interval": f"{LEVEL:.0%} percentile bootstrap, {RESAMPLES} resamples (seed "
        f"{args.seed}): over the test images for the NLL, bpd and recall, over the samples for "
        "FID, KID (both centred on the estimate) and precision",
        "kid_unit": KID_UNIT,
        "conditional": any(r["conditional"] for r in rows),
        "fid_floor": real["fid"],
        "fid_floor_low": real["fid_low"],
        "fid_floor_high": real["fid_high"],
        "fid_floor_note": f"FID of {n} random train images against the test split",
        "floor": real,
        "missing": missing,
        "rows": rows,
    }
    path = common.write_json(common.result_path("table", mode, args.out_dir), result)
    path.with_suffix(".md").write_text(to_markdown(result))
    print(to_markdown(result))
    return result


if __name__ == "__main__":
    main()
