"""Chapter 10's anomaly detection by likelihood, with every likelihood model of the book, and two
fixes for the blank-image failure.

OMP_NUM_THREADS=1 DGM_EDU_CHECKPOINTS=/tmp/ckpt_anom .venv/bin/python benchmarks/anomaly.py
(about 6 minutes on a shared core, 3 of CPU: results/anomaly.json)

In-distribution: the 447 test digits. Outliers (``dgm_edu.data``): uniform noise, the test digits
shifted 3 pixels (``anomalies(x, "shifted", pixels=3)``), blank images, and the 2D toys rendered
as 8x8 images (``render_toys``). The models are the shipped reference weights
(``weights.obtain``), each scored by its own log-likelihood or bound:

- ``autoregressive``: the gated PixelCNN's exact log-likelihood;
- ``flows``: the flow's variational-dequantization bound (16 one-sample bounds);
- ``vae``: the IWAE bound with k = :data:`IWAE_K` importance samples;
- ``diffusion``: the unconditional variational bound (``model.log_prob``, 64 timesteps);
- ``rbm``: the exact log-likelihood of the *binarized* images (every set binarized by the one
  rule, ``data.binarize``, inside the model);
- ``energy``: −E(x) of one dequantization draw: log p up to the constant log Z, which an AUC
  does not need (adding a constant to every score changes no ranking);
- ``independent_pixels``: ``PixelMixture.fit_counts(x_train)``, exact.

Scores (higher = more anomalous, outliers are the positives, ``metrics.roc``):

- ``raw``: −log p(x);
- ``ratio``: −[log p(x) − log p_bg(x)], p_bg the independent-pixel model of the same training
  images (Bernoulli pixels by counting for the RBM's binary images) :cite:`ren2019likelihood`;
- ``complexity``: −log p(x) − L(x), L the zlib code length of the image the model scores, in
  nats (``metrics.input_complexity``) :cite:`serra2020input`; ``complexity_adaptive`` the same
  with the adaptive code of the levels (a code of the histogram, blind to the shape). The AUC of
  the compressor alone, −L(x) without any model, is recorded beside them (``compressor_alone``).

Unseen classes: the independent pixels, the VAE, the PixelCNN and the flow are trained again, each
with its family's reference recipe unchanged (``train_reference``: the same config, optimiser,
schedule, epochs and early stopping), on the train and val digits of classes 0-4 only; then the
test digits 0-4 are the normal items and the test digits 5-9 the outliers.

Shift probe: each shipped model's mean log p of the test digits and of the same digits shifted
1, 2 and 3 pixels (a person reads a shifted 3 as a 3).
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable, Iterator

import common
import torch

SEED = 0
IWAE_K = 100  # the VAE's importance samples: about 4 s per 447 images on one core
HELD_IN = (0, 1, 2, 3, 4)  # the classes the unseen-class models see
SHIFTS = (1, 2, 3)
SCORES = ("raw", "ratio", "complexity", "complexity_adaptive")
KINDS = ("noise", "shifted", "blank", "toys")
MODELS = ("autoregressive", "flows", "vae", "diffusion", "rbm", "energy", "independent_pixels")
HELDOUT_MODELS = ("independent_pixels", "vae", "autoregressive", "flows")

LogProb = Callable[[torch.Tensor], torch.Tensor]


def bernoulli_background(x_train: torch.Tensor) -> LogProb:
    """log p_bg of binarized images: independent Bernoulli pixels q_d = (#ones + 1) / (N + 2)."""
    from dgm_edu import data

    v = data.binarize(x_train).flatten(1).double()  # (N, 64)
    q = (v.sum(0) + 1) / (len(v) + 2)  # (64,)

    def log_p(x: torch.Tensor) -> torch.Tensor:
        b = data.binarize(x).flatten(1).double()  # (M, 64)
        return (b * q.log() + (1 - b) * (1 - q).log()).sum(1)

    return log_p


def scorers(x_train: torch.Tensor) -> dict[str, tuple[LogProb, LogProb, bool]]:
    """Each shipped model: (log p, its background log p_bg, whether it sees binarized images)."""
    from dgm_edu import data, weights
    from dgm_edu.mixtures import PixelMixture

    indep = PixelMixture.fit_counts(x_train).eval()
    out: dict[str, tuple[LogProb, LogProb, bool]] = {}
    for name in MODELS[:-1]:
        model, _ = weights.obtain(name)
        model.eval()
        if name == "vae":
            out[name] = (lambda x, m=model: m.log_prob(x, k=IWAE_K), indep.log_prob, False)
        elif name == "energy":
            # −E of one dequantization draw: log p + log Z (a constant, irrelevant to an AUC)
            out[name] = (lambda x, m=model: -m.energy(data.dequantize(x)), indep.log_prob, False)
        elif name == "rbm":
            out[name] = (model.log_prob, bernoulli_background(x_train), True)
        else:
            out[name] = (model.log_prob, indep.log_prob, False)
    out["independent_pixels"] = (indep.log_prob, indep.log_prob, False)
    return out


@contextlib.contextmanager
def only_classes(module: object, classes: tuple[int, ...]) -> Iterator[None]:
    """Within the block, ``module.digits_loader`` serves the digits of ``classes`` only, so that a
    family's ``train_reference`` runs its own recipe on the filtered train and val splits."""
    from dgm_edu import data

    original = module.digits_loader  # type: ignore[attr-defined]

    def loader(
        split="train",
        batch_size=128,
        *,
        labels=False,
        shuffle=None,
        drop_last=False,
        shift_prob=0.0,
    ):
        x, y = data.load_digits(split)
        keep = torch.isin(y, torch.tensor(classes))
        tensors = (x[keep], y[keep]) if labels else (x[keep],)
        return data.make_loader(
            *tensors,
            batch_size=batch_size,
            shuffle=(split == "train") if shuffle is None else shuffle,
            drop_last=drop_last,
            shift_prob=shift_prob,
        )

    module.digits_loader = loader  # type: ignore[attr-defined]
    try:
        yield
    finally:
        module.digits_loader = original  # type: ignore[attr-defined]


def score_sets(
    log_p: LogProb, log_bg: LogProb, binary: bool, sets: dict[str, torch.Tensor]
) -> dict[str, dict[str, torch.Tensor]]:
    """The three anomaly scores (raw, ratio, complexity) of every set, float64 ``(N,)`` each."""
    from dgm_edu import data, metrics

    out = {}
    for name, x in sets.items():
        torch.manual_seed(SEED)  # the same noise draws for every set and model
        with torch.no_grad():
            lp = log_p(x).double()
            bg = log_bg(x).double()
        seen = data.binarize(x).long() if binary else x  # the image the model scores
        length = metrics.input_complexity(seen)  # L(x), nats: zlib
        adaptive = metrics.input_complexity(seen, "adaptive")  # an adaptive code of the levels
        out[name] = {
            "raw": -lp,
            "ratio": -(lp - bg),
            "complexity": -lp - length,
            "complexity_adaptive": -lp - adaptive,
        }
    return out


def aucs(scored: dict[str, dict[str, torch.Tensor]], normal: str, kinds) -> dict:
    """AUC of each kind against the normal set, for each score: {kind: {score: auc}}."""
    from dgm_edu import metrics

    return {k: {s: metrics.roc(scored[normal][s], scored[k][s]).auc for s in SCORES} for k in kinds}


def train_heldout() -> tuple[dict[str, tuple[LogProb, LogProb, bool]], dict[str, float]]:
    """The unseen-class models, trained on classes 0-4; returns their scorers and train seconds."""
    from dgm_edu import autoregressive, data, digit_flow, vae
    from dgm_edu.mixtures import PixelMixture

    x_train, y_train = data.load_digits("train")
    x_in = x_train[torch.isin(y_train, torch.tensor(HELD_IN))]
    t0 = time.perf_counter()
    indep = PixelMixture.fit_counts(x_in).eval()
    seconds = {"independent_pixels": time.perf_counter() - t0}
    models: dict[str, tuple[LogProb, LogProb, bool]] = {
        "independent_pixels": (indep.log_prob, indep.log_prob, False)
    }
    for name, module in (("vae", vae), ("autoregressive", autoregressive), ("flows", digit_flow)):
        t0 = time.perf_counter()
        with only_classes(module, HELD_IN):
            model, _ = module.train_reference(progress=False, seed=SEED)
        seconds[name] = time.perf_counter() - t0
        model.eval()
        print(f"trained {name} on classes 0-4 in {seconds[name]:.0f} s", flush=True)
        if name == "vae":
            models[name] = (lambda x, m=model: m.log_prob(x, k=IWAE_K), indep.log_prob, False)
        else:
            models[name] = (model.log_prob, indep.log_prob, False)
    return models, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_args(parser)
    args = parser.parse_args()
    common.set_threads(args.threads)
    from tqdm import tqdm

    from dgm_edu import data, metrics, runtime

    # reference mode (the default): weights.obtain loads the shipped weights, and the recipes
    # retrained on classes 0-4 run at their full budgets; fast mode trains everything tiny
    mode = "fast" if args.fast or runtime.mode() == "fast" else "full"
    if mode == "fast":
        import os

        os.environ[runtime.MODE_ENV] = "fast"

    start = time.perf_counter()
    x_train, _ = data.load_digits("train")
    x_test, y_test = data.load_digits("test")
    gen = torch.Generator().manual_seed(SEED)
    sets = {
        "test": x_test,
        "noise": data.anomalies(x_test, "noise", generator=gen),
        "shifted": data.anomalies(x_test, "shifted", pixels=3),
        "blank": data.anomalies(x_test, "blank"),
        "toys": data.render_toys(len(x_test), seed=SEED),
        **{f"shift{p}": data.anomalies(x_test, "shifted", pixels=p) for p in SHIFTS},
    }

    # ---- the shipped models against every kind of outlier, and the shift probe
    auc: dict[str, dict] = {}
    probe: dict[str, dict[str, float]] = {}
    means: dict[str, dict[str, float]] = {}
    for name, (log_p, log_bg, binary) in tqdm(scorers(x_train).items(), desc="shipped models"):
        scored = score_sets(log_p, log_bg, binary, sets)
        auc[name] = aucs(scored, "test", KINDS)
        means[name] = {k: -scored[k]["raw"].mean().item() for k in ("test", *KINDS)}
        probe[name] = {"0": means[name]["test"]}
        probe[name] |= {str(p): -scored[f"shift{p}"]["raw"].mean().item() for p in SHIFTS}

    # ---- unseen classes: models trained on classes 0-4
    keep = torch.isin(y_test, torch.tensor(HELD_IN))
    split = {"test_0_4": x_test[keep], "test_5_9": x_test[~keep]}
    heldout, train_seconds = train_heldout()
    unseen: dict[str, dict] = {}
    for name, (log_p, log_bg, binary) in tqdm(heldout.items(), desc="unseen classes"):
        scored = score_sets(log_p, log_bg, binary, split)
        unseen[name] = aucs(scored, "test_0_4", ["test_5_9"])["test_5_9"]
        unseen[name] |= {
            "train_seconds": round(train_seconds[name], 4),
            "test_nll_0_4": scored["test_0_4"]["raw"].mean().item(),
            "test_nll_5_9": scored["test_5_9"]["raw"].mean().item(),
        }
        auc[name]["unseen_classes"] = {s: unseen[name][s] for s in SCORES}

    # ---- the compressor alone, a model-free score: -L(x) (a simple image scores high)
    alone_sets = {**{k: sets[k] for k in ("test", *KINDS)}, **split}
    alone = {}
    for code in metrics.COMPLEXITY_METHODS:
        neg_length = {k: -metrics.input_complexity(x, code) for k, x in alone_sets.items()}
        alone[code] = {k: metrics.roc(neg_length["test"], neg_length[k]).auc for k in KINDS}
        alone[code]["unseen_classes"] = metrics.roc(
            neg_length["test_0_4"], neg_length["test_5_9"]
        ).auc

    # ---- the headline facts
    fixes = ("ratio", "complexity", "complexity_adaptive")
    best_model, best_fix = max(
        ((m, f) for m in MODELS for f in fixes), key=lambda mf: auc[mf[0]]["blank"][mf[1]]
    )
    others = [k for k in (*KINDS, "unseen_classes") if k != "blank"]
    cost = {
        f: {
            m: min(auc[m][k][f] - auc[m][k]["raw"] for k in others if k in auc[m])
            for m in MODELS
            if m != "independent_pixels" or f != "ratio"  # its ratio is 0 for every image
        }
        for f in fixes
    }
    seconds = time.perf_counter() - start
    result = {
        "what": "AUC of likelihood-based anomaly scores, every likelihood model x outlier kind",
        "date": common.now(),
        "machine": common.machine(),
        "command": "OMP_NUM_THREADS=1 python benchmarks/anomaly.py",
        "mode": runtime.mode(),
        "threads": args.threads,
        "seeds": {"noise, dequantization and estimators": SEED, "training": SEED},
        "seconds": round(seconds, 1),
        "num_test": len(x_test),
        "models": list(MODELS),
        "kinds": [*KINDS, "unseen_classes"],
        "scores": list(SCORES),
        "estimators": {
            "autoregressive": "exact log-likelihood",
            "flows": "variational-dequantization bound, mean of 16 one-sample bounds",
            "vae": f"IWAE bound, k = {IWAE_K}",
            "diffusion": "variational bound, 64 stratified timesteps, unconditional",
            "rbm": "exact log-likelihood of the binarized images",
            "energy": "-E(x) of one dequantization draw: log p up to the constant log Z",
            "independent_pixels": "exact log-likelihood, fit by counting on the train split",
        },
        "iwae_k": IWAE_K,
        "complexity": {
            "complexity": "zlib level 9 of the image's bytes minus its 6-byte wrapper, in nats",
            "complexity_adaptive": "the adaptive Laplace code of the levels, in nats",
        },
        "auc": auc,
        "mean_log_p": means,
        "unseen_classes": {
            "classes_seen": list(HELD_IN),
            "recipe": "each family's train_reference unchanged, on train/val digits 0-4",
            "num_normal": int(keep.sum()),
            "num_outliers": int((~keep).sum()),
            "models": unseen,
        },
        "shift_probe": {
            "what": "mean log p (nats) of the test digits shifted 0, 1, 2, 3 pixels right",
            "mean_log_p": probe,
        },
        "compressor_alone": {
            "what": "AUC of the model-free score -L(x), per code: the complexity term by itself",
            **alone,
        },
        "blank_by_score": {s: {m: auc[m]["blank"][s] for m in MODELS} for s in SCORES},
        "best_blank_fix": {
            "model": best_model,
            "score": best_fix,
            "auc": auc[best_model]["blank"][best_fix],
        },
        "fix_cost": {
            "what": "min over the other kinds of AUC(fix) - AUC(raw), per model",
            **cost,
        },
    }
    path = common.write_json(common.result_path("anomaly", mode, args.out_dir), result)
    print(f"wrote {path} in {seconds:.0f} s")
    for m in MODELS:
        row = "  ".join(f"{k}: " + "/".join(f"{auc[m][k][s]:.2f}" for s in SCORES) for k in auc[m])
        print(f"{m:20s} {row}")


if __name__ == "__main__":
    main()
