"""Chapter 10's text generation and its four misconceptions, measured on the deep models.

.venv/bin/python benchmarks/misconceptions.py   # ~15 min on one core: results/misconceptions.json

Six parts, each a key of the JSON (``--only`` runs some of them and keeps the others from the
existing file):

- ``text``: the shipped ``text-rnn`` and ``text-transformer`` as generators: per-character NLL
  of the 300 test names (end token counted), and at each temperature the share of 1000 samples
  that are new (not a training name), well-formed (:func:`dgm_edu.autoregressive.well_formed`)
  and both, with the mean NLL (nats per name, under the T = 1 model) of the samples.
- ``conditional``: the four shipped conditional models asked for 100 samples of each class, read
  by the feature network: the agreement per class.
- ``shift``: test digits shifted right by 0..3 pixels (zero fill): their exact NLL under the
  shipped PixelCNN (``autoregressive``) and the feature network's accuracy on them.
- ``data_size``: chapter 3's VAE recipe without its shifts (60 epochs) trained on 100, 300 and
  1000 train images with equal optimiser steps (each epoch is 1000 draws from the n images), two
  seeds; test and train IWAE bounds, against independent pixels (counts) fitted to the same images.
- ``vae_seeds`` and ``gan_seeds``: the reference recipes over 5 training seeds (VAE seeds 0-2
  and GAN seed 0 ship); FID of 1000 samples against the test split, the VAE's IWAE bound.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import common

PARTS = ("text", "conditional", "shift", "data_size", "vae_seeds", "gan_seeds")
TEMPERATURES = (0.5, 0.75, 1.0, 1.25, 1.5)
SIZES = (100, 300, 1000)
DATA_SIZE_EPOCHS = 60  # the VAE's schedule in the data-size part (full mode)
IWAE_K = 100  # importance samples of every IWAE bound here (the shipped figures use k = 1000)
SHIFTS = (0, 1, 2, 3)


def text_part(n: int, seed: int = 0) -> dict:
    """Per-character NLL of the test names; novelty / well-formedness / NLL per temperature."""
    import torch

    from dgm_edu import weights
    from dgm_edu.autoregressive import (
        Vocab,
        load_names,
        nll_per_char,
        split_sample,
        well_formed,
    )

    words = load_names()
    train, test = words[:2400], words[2700:]  # chapter 5's split (val: words[2400:2700])
    vocab, seen = Vocab(words), set(words[:2400])
    out = {
        "n_samples": n,
        "seed": seed,
        "test_well_formed": sum(well_formed(w) for w in test) / len(test),
        "models": {},
    }
    for kind in ("rnn", "transformer"):
        model, _ = weights.obtain(f"text-{kind}")
        model.eval()
        row = {"test_nll_per_char": nll_per_char(model, vocab, test)}
        row["test_nll_per_char_train"] = nll_per_char(model, vocab, train)
        row["test_perplexity"] = math.exp(row["test_nll_per_char"])
        row["temperatures"] = []
        for t in TEMPERATURES:
            torch.manual_seed(seed)
            ids = model.sample(n, temperature=t).cpu()  # (n, max_len + 1)
            parsed = [split_sample(r, vocab) for r in ids]
            ok = [well_formed(w, e) for w, e in parsed]
            new = [w not in seen for w, _ in parsed]
            # each sample's own log p under the T = 1 model: ids after the end token -> padding
            after_end = (ids[:, 1:] == 0).long().cumsum(1).roll(1, 1)
            after_end[:, 0] = 0
            scored = ids.clone()
            scored[:, 1:][after_end > 0] = -1
            with torch.no_grad():
                nll = -model.log_prob(scored).mean().item()
            row["temperatures"].append(
                {
                    "temperature": t,
                    "new": sum(new) / n,
                    "well_formed": sum(ok) / n,
                    "new_and_well_formed": sum(a and b for a, b in zip(new, ok)) / n,
                    "distinct": len({w for w, _ in parsed}) / n,
                    "sample_nll": nll,
                    "examples": [w for w, _ in parsed[:8]],
                }
            )
        out["models"][kind] = row
    return out


def conditional_part(n_per_class: int, seed: int = 0) -> dict:
    """The shipped conditional models asked for each class, read by the feature network."""
    import torch

    from dgm_edu import weights
    from dgm_edu.features import load_feature_net
    from dgm_edu.runtime import budget, seed_everything

    net = load_feature_net().eval()
    ys = torch.arange(10).repeat_interleave(n_per_class)  # (10 n,)
    out = {"n_per_class": n_per_class, "seed": seed, "models": {}}
    for name in ("vae-cond", "gan-cond", "autoregressive-cond", "diffusion"):
        model, _ = weights.obtain(name)
        model.eval()
        seed_everything(seed)
        t0 = time.perf_counter()
        if name == "diffusion":  # 50 DDIM steps, no extra guidance (w = 1: the conditional model)
            x = model.ddim_sample(len(ys), steps=budget(fast=10, full=50), y=ys, guidance=1.0)
        else:
            x = model.sample(len(ys), y=ys)
        seconds = time.perf_counter() - t0
        read = net.classify(x)
        per_class = (read == ys).float().view(10, n_per_class).mean(1)  # (10,)
        confusion = torch.zeros(10, 10, dtype=torch.long)
        confusion.index_put_((ys, read), torch.ones_like(ys), accumulate=True)
        out["models"][name] = {
            "agreement": per_class.mean().item(),
            "per_class": per_class.tolist(),
            "confusion": confusion.tolist(),  # rows: asked for, columns: read as
            "sample_seconds": round(seconds, 2),
            "examples": x.view(10, n_per_class, 64)[:, :4].tolist(),  # 4 per class
        }
    return out


def shift_part() -> dict:
    """Exact NLL of the test digits shifted right by s pixels (zero fill), and what the feature
    network reads."""
    import torch

    from dgm_edu import weights
    from dgm_edu.data import load_digits
    from dgm_edu.features import load_feature_net

    model, _ = weights.obtain("autoregressive")
    model.eval()
    net = load_feature_net().eval()
    x, y = load_digits("test")
    with torch.no_grad():
        base = -model.log_prob(x)  # (N,)
    threshold = torch.quantile(base, 0.95).item()  # 95% of the unshifted test digits cost less
    rows = []
    for s in SHIFTS:
        xs = torch.zeros_like(x)
        xs[..., s:] = x[..., : 8 - s]  # right by s, the s left columns zero
        with torch.no_grad():
            nll = -model.log_prob(xs)
        rows.append(
            {
                "shift": s,
                "nll": nll.mean().item(),
                "nll_median": nll.median().item(),
                "above_p95": (nll > threshold).float().mean().item(),
                "ink_lost": 1 - xs.sum().item() / x.sum().item(),
                "classifier_accuracy": (net.classify(xs) == y).float().mean().item(),
                "example": xs[3, 0].flatten().tolist(),
            }
        )
    return {"direction": "right, zero fill", "nll_p95_unshifted": threshold, "rows": rows}


def _vae_on(images, seed: int):
    """Chapter 3's VAE recipe without its shifts, on ``images``: :data:`DATA_SIZE_EPOCHS` epochs
    of 1000 draws (960 steps of 64 in full mode) whatever their number, best validation epoch
    kept. No shifts: they add synthetic images, which would blur what the real ones are worth."""
    import torch

    from dgm_edu.data import digits_loader, make_loader
    from dgm_edu.runtime import budget, seed_everything
    from dgm_edu.train import fit
    from dgm_edu.vae import VAE, reference_config

    seed_everything(seed)
    model = VAE(reference_config("conv"))
    epochs = budget(fast=2, full=DATA_SIZE_EPOCHS)
    tiled = images[torch.arange(1000) % len(images)]  # every epoch: 1000 draws, equal steps
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=budget(fast=0.0, full=0.05))
    hist = fit(
        model,
        opt,
        make_loader(tiled, batch_size=budget(fast=32, full=64)),
        digits_loader("val", 350),
        epochs=epochs,
        scheduler=torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs),
        progress=False,
        seed=seed,
        desc=f"vae-{len(images)}",
    )
    return model.eval(), hist


def _iwae_nll(model, x) -> float:
    import torch

    torch.manual_seed(0)
    with torch.no_grad():
        return -model.log_prob(x, k=IWAE_K).mean().item()


def data_size_part(seeds: tuple[int, ...], bar) -> dict:
    """VAE and independent pixels at 100, 300 and 1000 train images (nested random subsets)."""
    import torch

    from dgm_edu.data import load_digits
    from dgm_edu.mixtures import PixelMixture
    from dgm_edu.runtime import budget

    x_train, x_test = load_digits("train")[0], load_digits("test")[0]
    runs = []
    for seed in seeds:
        order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(seed))
        for n in SIZES:
            sub = x_train[order[:n]]
            t0 = time.perf_counter()
            vae, hist = _vae_on(sub, seed)
            seconds = time.perf_counter() - t0
            pixels = PixelMixture.fit_counts(sub)
            with torch.no_grad():
                pix_test, pix_train = (-pixels.log_prob(x).mean().item() for x in (x_test, sub))
            row = {
                "n": n,
                "seed": seed,
                "steps": hist.epochs_run * math.ceil(1000 / 64),
                "best_epoch": hist.best_epoch,
                "train_seconds": round(seconds, 1),
                "vae_test": _iwae_nll(vae, x_test),
                "vae_train": _iwae_nll(vae, sub),
                "pixels_test": pix_test,
                "pixels_train": pix_train,
            }
            print(row, flush=True)
            runs.append(row)
            bar.update(1)
    epochs = budget(fast=2, full=DATA_SIZE_EPOCHS)
    return {"k": IWAE_K, "sizes": list(SIZES), "seeds": list(seeds), "epochs": epochs, "runs": runs}


def _quality(samples, x_test) -> float:
    from dgm_edu import metrics

    return metrics.fid(samples, x_test)


def seeds_part(family: str, n_samples: int, bar) -> dict:
    """The reference recipe of ``family`` ("vae" or "gan") over training seeds 0-4."""
    import torch

    from dgm_edu import gan, vae, weights
    from dgm_edu.data import load_digits
    from dgm_edu.runtime import seed_everything

    x_test = load_digits("test")[0]
    shipped = {"vae": {0: "vae", 1: "vae-seed1", 2: "vae-seed2"}, "gan": {0: "gan"}}[family]
    runs = []
    for seed in range(5):
        t0 = time.perf_counter()
        if seed in shipped:
            model, _ = weights.obtain(shipped[seed])
            source = f"shipped weights {shipped[seed]!r}"
        else:
            model, _ = (vae if family == "vae" else gan).train_reference(progress=False, seed=seed)
            source = "trained here"
        seconds = time.perf_counter() - t0
        model.eval()
        seed_everything(100)  # the same sampling seed for every run
        samples = model.sample(n_samples)
        row = {"seed": seed, "source": source, "seconds": round(seconds, 1)}
        row["fid"] = _quality(samples, x_test)
        if family == "vae":
            row["test_nll"] = _iwae_nll(model, x_test)
        row["samples_16"] = samples[:16].flatten(1).tolist()
        print({k: v for k, v in row.items() if k != "samples_16"}, flush=True)
        runs.append(row)
        bar.update(1)
    fids = torch.tensor([r["fid"] for r in runs])
    summary = {"fid_min": fids.min().item(), "fid_max": fids.max().item()}
    summary["fid_std"] = fids.std().item()
    if family == "vae":
        nll = torch.tensor([r["test_nll"] for r in runs])
        summary |= {"nll_min": nll.min().item(), "nll_max": nll.max().item()}
        summary["nll_std"] = nll.std().item()
    return {"n_samples": n_samples, "k": IWAE_K if family == "vae" else None, "runs": runs} | {
        "summary": summary
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_args(parser)
    parser.add_argument("--only", nargs="*", choices=PARTS, default=list(PARTS))
    args = parser.parse_args()
    # reference mode (the shipped weights) unless --fast; our own trainings use full budgets
    from dgm_edu import runtime

    if args.fast:
        import os

        os.environ[runtime.MODE_ENV] = "fast"
    common.set_threads(args.threads)
    from tqdm import tqdm

    fast = runtime.mode() == "fast"
    path = common.result_path("misconceptions", "fast" if fast else "full")
    if args.out_dir is not None:
        path = args.out_dir / path.name
    result = json.loads(path.read_text()) if path.exists() else {}
    seeds = (0,) if fast else (0, 1)
    trainings = {"data_size": len(SIZES) * len(seeds), "vae_seeds": 5, "gan_seeds": 5}
    bar = tqdm(total=sum(trainings.get(p, 1) for p in args.only), desc="misconceptions")
    times = result.get("seconds", {})
    for part in PARTS:
        if part not in args.only:
            continue
        t0 = time.perf_counter()
        if part == "text":
            result[part] = text_part(200 if fast else 1000)
        elif part == "conditional":
            result[part] = conditional_part(10 if fast else 100)
        elif part == "shift":
            result[part] = shift_part()
        elif part == "data_size":
            result[part] = data_size_part(seeds, bar)
        else:
            result[part] = seeds_part(part.split("_")[0], 1000, bar)
        if part in ("text", "conditional", "shift"):
            bar.update(1)
        times[part] = round(time.perf_counter() - t0, 1)
        result |= {
            "what": "chapter 10: text generation and the misconceptions on the deep models",
            "mode": "fast" if fast else "reference",
            "date": common.now(),
            "command": "python benchmarks/misconceptions.py",
            "threads": args.threads,
            "machine": common.machine(),
            "seconds": times,
        }
        common.write_json(path, result)  # after every part: a partial run keeps what it has
    bar.close()


if __name__ == "__main__":
    main()
