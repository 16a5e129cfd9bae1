"""Train the project's fixed FID feature network and write ``dgm_edu/assets/digits_features.pt``.

    python scripts/train_feature_net.py            # deterministic: seed 0, CPU, train split only

The network is trained on the train split; the val split picks the best epoch (early stopping);
the test split is only reported. The weights are saved as a ``state_dict`` (plus the config and the
accuracies) so that :func:`dgm_edu.features.load_feature_net` loads them with ``weights_only=True``.
Re-running overwrites the asset: every FID in the book changes with it, so do it only on purpose.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict

import torch

from dgm_edu.data import digits_loader, load_digits
from dgm_edu.features import DigitsFeatureNet, FeatureNetConfig, asset_path
from dgm_edu.runtime import seed_everything
from dgm_edu.train import fit, save_checkpoint


@torch.no_grad()
def accuracy(net: DigitsFeatureNet, split: str) -> float:
    x, y = load_digits(split)
    net.eval()
    return float((net.classify(x) == y).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(asset_path()))
    args = parser.parse_args()

    torch.set_num_threads(1)
    seed_everything(args.seed)
    config = FeatureNetConfig()
    net = DigitsFeatureNet(config)
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-3)
    hist = fit(
        net, optimizer,
        digits_loader("train", 64, labels=True), digits_loader("val", 350, labels=True),
        epochs=args.epochs, patience=15, seed=args.seed, device="cpu", desc="feature net",
    )  # fmt: skip
    acc = {split: accuracy(net, split) for split in ("train", "val", "test")}
    print(f"best epoch {hist.best_epoch}, accuracy {acc}")
    config_dict = asdict(config)
    config_dict["channels"] = list(config.channels)
    save_checkpoint(args.out, {"model": net.state_dict(), "config": config_dict, "accuracy": acc})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
