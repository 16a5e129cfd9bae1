"""Chapter 10's first application, measured: does a deep class-conditional generator help a
classifier that has 10 labelled digits per class?

OMP_NUM_THREADS=1 .venv/bin/python benchmarks/augmentation.py   # results/augmentation.json

Each seed draws a different labelled subset of the training split (10 images per class, 100 in
all) and trains a logistic regression on it (the chapter's classifier: ``C=0.1`` on pixels/16),
alone and with ``--per-class`` synthetic images per class from each conditional generator, and
scores every classifier on the 447 test digits. Every arm of a seed uses that seed's subset, so
the arms are compared seed by seed (:func:`dgm_edu.metrics.paired_difference`). Two settings:

- ``few``: the generator is trained here, per seed, on the same 100 labelled images only, with
  its family's architecture and optimiser for a fixed small budget (:data:`EPOCHS`, the same for
  every seed), without early stopping (there is no labelled validation set to stop on);
- ``all``: the shipped generator, trained on the 1000 labelled training images
  (:data:`SHIPPED`, ``weights.load``, in every mode).

The feature network's agreement of the synthetic images with their requested class is recorded
per arm: a generator whose samples are not recognisably the digit asked for feeds the classifier
wrong labels. ``--fast`` (a few seconds, for the test) uses tiny budgets and writes nothing unless
``--out`` is given.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import common

FAMILIES = ("vae", "gan", "pixelcnn", "diffusion")
SETTINGS = ("few", "all")
SHIPPED = {"vae": "vae-cond", "gan": "gan-cond", "pixelcnn": "autoregressive-cond",
           "diffusion": "diffusion"}  # fmt: skip
LABELLED_PER_CLASS = 10
EPOCHS = {"vae": 150, "gan": 300, "pixelcnn": 150, "diffusion": 150}  # 5 batches of 20 an epoch
FAST_EPOCHS = {"vae": 2, "gan": 2, "pixelcnn": 1, "diffusion": 1}
BATCH = 20
DDIM_STEPS = 50  # the diffusion model samples with 50 DDIM steps (chapter 7), guidance 1
NUM_CLASSES = 10


def labelled_subset(y_train, seed: int, per_class: int = LABELLED_PER_CLASS):
    """Indices of ``per_class`` training images of each class, drawn with ``seed``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    picks = []
    for c in range(NUM_CLASSES):
        pool = torch.nonzero(y_train == c).flatten()
        picks.append(pool[torch.randperm(len(pool), generator=g)[:per_class]])
    return torch.cat(picks)  # (10 * per_class,)


def classifier_accuracy(x, y, x_test, y_test) -> float:
    """Test accuracy of the chapter's classifier, a logistic regression on pixels/16."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=2000, C=0.1).fit(x.flatten(1).numpy() / 16, y.numpy())
    return float(clf.score(x_test.flatten(1).numpy() / 16, y_test.numpy()))


def train_on_subset(family: str, x, y, *, epochs: int, seed: int):
    """A conditional generator of ``family`` trained on ``(x, y)`` only, for ``epochs`` epochs
    of batches of :data:`BATCH` (no validation, no early stopping: the last weights are kept).

    The architectures and optimisers are the families' recipes: the conditional VAE of chapter 3
    (``vae-cond``), the conditional GAN of chapter 4 (``gan-cond``), the diffusion model of
    chapter 7 (``diffusion.reference_config``), and chapter 5's gated PixelCNN at its fast
    width (32 channels, 4 layers, with the full recipe's dropout 0.3), which keeps sampling cheap.
    """
    import torch

    from dgm_edu import autoregressive, diffusion, gan, vae
    from dgm_edu.data import make_loader
    from dgm_edu.runtime import seed_everything
    from dgm_edu.train import fit

    seed_everything(seed)
    steps = epochs * -(-len(x) // BATCH)
    run: dict[str, Any] = {"epochs": epochs, "progress": False, "seed": seed, "desc": family}
    if family == "vae":
        cfg = vae.VAEConfig(latent_dim=16, channels=32, num_classes=NUM_CLASSES,
                            warmup_steps=steps // 4)  # fmt: skip
        model = vae.VAE(cfg)
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
        run["scheduler"] = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    elif family == "gan":
        model = gan.GAN(gan.GANConfig(arch="conv", hidden=64, latent_dim=16, num_classes=10))
        opt = gan.make_optimizers(model, lr=5e-4, betas=(0.5, 0.999))
        run["restore_best"] = False
    elif family == "pixelcnn":
        cfg = autoregressive.PixelCNNConfig(channels=32, num_layers=4, kernel_size=3,
                                            num_classes=NUM_CLASSES, dropout=0.3)  # fmt: skip
        model = autoregressive.GatedPixelCNN(cfg)
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
        run["scheduler"] = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
        run["grad_clip"] = 1.0
    elif family == "diffusion":
        model = diffusion.Diffusion(diffusion.reference_config())
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        run["scheduler"] = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
        run["grad_clip"] = 1.0
    else:
        raise ValueError(f"Unknown family {family!r}: expected one of {FAMILIES}")
    fit(model, opt, make_loader(x, y, batch_size=BATCH, shuffle=True), **run)
    return model.eval()


def draw(model, family: str, ys, *, seed: int, ddim_steps: int = DDIM_STEPS):
    """Samples of the classes ``ys`` (n,) from a conditional model: (n, 1, 8, 8) int64."""
    import torch

    torch.manual_seed(seed)
    with torch.no_grad():
        if family == "diffusion":
            return model.ddim_sample(len(ys), steps=ddim_steps, y=ys)
        return model.sample(len(ys), y=ys)


def run_seed(
    seed: int,
    *,
    per_class: int = 50,
    settings: tuple[str, ...] = SETTINGS,
    families: tuple[str, ...] = FAMILIES,
    epochs: dict[str, int] | None = None,
    shipped: dict[str, Any] | None = None,
    ddim_steps: int = DDIM_STEPS,
) -> dict[str, Any]:
    """One seed: its labelled subset, the real-only accuracy and every ``+ generator`` arm's.

    Returns ``{"seed", "real_only", "arms": {"<setting>/<family>": {"accuracy", "agreement",
    "train_seconds", "sample_seconds"}}}``. ``shipped`` maps a family to its loaded shipped model
    (loaded here when missing); ``epochs`` the ``few`` setting's budget per family.
    """
    import torch

    from dgm_edu import weights
    from dgm_edu.data import load_digits
    from dgm_edu.features import load_feature_net

    epochs = epochs or EPOCHS
    x_train, y_train = load_digits("train")
    x_test, y_test = load_digits("test")
    net = load_feature_net()
    idx = labelled_subset(y_train, seed)
    x_lab, y_lab = x_train[idx], y_train[idx]  # (100, 1, 8, 8), (100,)
    ys = torch.arange(NUM_CLASSES).repeat_interleave(per_class)  # the requested classes
    row: dict[str, Any] = {"seed": seed, "labelled": idx.tolist(), "arms": {}}
    row["real_only"] = classifier_accuracy(x_lab, y_lab, x_test, y_test)
    for setting in settings:
        for k, family in enumerate(families):
            t0 = time.perf_counter()
            if setting == "few":
                model = train_on_subset(family, x_lab, y_lab, epochs=epochs[family], seed=seed)
            else:
                if shipped is None or family not in shipped:
                    shipped = dict(shipped or {})
                    shipped[family] = weights.load(SHIPPED[family]).eval()
                model = shipped[family]
            t1 = time.perf_counter()
            xs = draw(model, family, ys, seed=1000 * seed + k, ddim_steps=ddim_steps)
            t2 = time.perf_counter()
            with torch.no_grad():
                agreement = (net.classify(xs) == ys).float().mean().item()
            acc = classifier_accuracy(
                torch.cat([x_lab, xs]), torch.cat([y_lab, ys]), x_test, y_test
            )
            row["arms"][f"{setting}/{family}"] = {
                "accuracy": acc,
                "agreement": round(agreement, 4),
                "train_seconds": round(t1 - t0, 1),
                "sample_seconds": round(t2 - t1, 1),
            }
    return row


def summarise(rows: list[dict[str, Any]], level: float = 0.95) -> dict[str, Any]:
    """Per arm: the paired differences (points) with their t-interval and the seeds it helped."""
    from dgm_edu.metrics import paired_difference

    real = [r["real_only"] for r in rows]
    out = {}
    for arm in rows[0]["arms"]:
        acc = [r["arms"][arm]["accuracy"] for r in rows]
        d = paired_difference(acc, real, level=level)
        out[arm] = {
            "mean_accuracy": sum(acc) / len(acc),
            "difference_points": 100 * d.estimate,
            "low_points": 100 * d.low,
            "high_points": 100 * d.high,
            "helped": sum(a > b for a, b in zip(acc, real)),
            "hurt": sum(a < b for a, b in zip(acc, real)),
            "agreement": sum(r["arms"][arm]["agreement"] for r in rows) / len(rows),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=10, help="paired seeds (default 10)")
    parser.add_argument("--per-class", type=int, default=50, help="synthetic images per class")
    parser.add_argument("--fast", action="store_true", help="tiny budgets (seconds), for tests")
    parser.add_argument("--threads", type=int, default=common.default_threads())
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--out", type=Path, default=None, help="the JSON (default: results/)")
    args = parser.parse_args()
    common.set_threads(args.threads)  # no mode switch: the shipped weights are loaded as they are
    from tqdm import tqdm

    from dgm_edu import weights

    families, settings = tuple(args.families), tuple(args.settings)
    shipped = {f: weights.load(SHIPPED[f]).eval() for f in families} if "all" in settings else {}
    epochs = FAST_EPOCHS if args.fast else EPOCHS
    ddim = 5 if args.fast else DDIM_STEPS
    t0 = time.perf_counter()
    rows = []
    for seed in tqdm(range(args.seeds), desc="seeds"):
        rows.append(run_seed(seed, per_class=args.per_class, settings=settings, families=families,
                             epochs=epochs, shipped=shipped, ddim_steps=ddim))  # fmt: skip
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "labelled"}), flush=True)
    result = {
        "what": "test accuracy of a logistic regression on 10 labelled digits per class, alone "
        "and with synthetic digits from each conditional generator, paired over seeds",
        "date": common.now(),
        "command": "OMP_NUM_THREADS=1 python benchmarks/augmentation.py"
        + (" --fast" if args.fast else "")
        + f" --seeds {args.seeds} --per-class {args.per_class}"
        + f" --settings {' '.join(settings)} --families {' '.join(families)}",
        "mode": "fast" if args.fast else "full",
        "machine": common.machine(),
        "threads": args.threads,
        "seconds": round(time.perf_counter() - t0, 1),
        "classifier": "sklearn LogisticRegression(max_iter=2000, C=0.1) on pixels / 16",
        "labelled_per_class": LABELLED_PER_CLASS,
        "synthetic_per_class": args.per_class,
        "num_test": 447,
        "level": 0.95,
        "settings": {
            "few": f"trained here on the seed's 100 labelled images, epochs {epochs} of batches "
            f"of {BATCH}, last weights",
            "all": "shipped weights trained on the 1000 labelled training images: "
            + ", ".join(f"{f}={SHIPPED[f]}" for f in FAMILIES),
        },
        "families": list(families),
        "ddim_steps": ddim,
        "seeds": list(range(args.seeds)),
        "runs": rows,
        "summary": summarise(rows),
    }
    out = args.out or (None if args.fast else common.RESULTS_DIR / "augmentation.json")
    if out is not None:
        common.write_json(out, result)
    for arm, s in result["summary"].items():
        print(f"{arm:16s} {s['difference_points']:+6.2f} [{s['low_points']:+.2f}, "
              f"{s['high_points']:+.2f}] helped {s['helped']}/{args.seeds} "
              f"agreement {s['agreement']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
