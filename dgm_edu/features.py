"""The project's one fixed feature network: a small digits classifier for FID, KID, P/R.

Sample-quality metrics compare two sets of images in the feature space of a fixed network (for
ImageNet that network is Inception-v3; for the 8x8 digits it is this one). The network is a small
CNN classifier trained on the **train split only** (seed 0, with :func:`dgm_edu.train.fit`; the
source repository's ``scripts/train_feature_net.py`` is the recipe). Its weights ship inside the
package, in ``dgm_edu/assets/digits_features.pt``, as a ``state_dict`` and are loaded with
``torch.load(..., weights_only=True)``.

The features are the activations of the penultimate layer (after the ReLU), as FID uses the pooled
activations of Inception's last hidden layer. Every chapter must use the same network, or scores are
not comparable: load it with :func:`load_feature_net` and never retrain it in place.

Input is RAW digits, ``(N, 1, 8, 8)`` integer levels 0..16, as :func:`dgm_edu.data.load_digits`
returns them; the network scales them to [0, 1] itself.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dgm_edu.data import NUM_CLASSES, to_unit, validate_digits

ASSET = "digits_features.pt"


@dataclass(frozen=True)
class FeatureNetConfig:
    channels: tuple[int, int] = (16, 32)  # conv widths before and after the 2x2 pooling
    num_features: int = 64  # F, the width of the penultimate layer (the FID feature space)
    dropout: float = 0.3  # on the features, during training only


class DigitsFeatureNet(nn.Module):
    """conv3x3, conv3x3, maxpool, conv3x3, flatten, linear (features), linear (logits)."""

    def __init__(self, config: FeatureNetConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or FeatureNetConfig()
        c1, c2 = c.channels
        self.body = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(),  # (N, c1, 8, 8)
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(),  # (N, c2, 8, 8)
            nn.MaxPool2d(2),  # (N, c2, 4, 4)
            nn.Conv2d(c2, c2, 3, padding=1), nn.ReLU(),  # (N, c2, 4, 4)
            nn.Flatten(),  # (N, 16 c2)
            nn.Linear(16 * c2, c.num_features), nn.ReLU(),  # (N, F)
        )  # fmt: skip
        self.dropout = nn.Dropout(c.dropout)
        self.head = nn.Linear(c.num_features, NUM_CLASSES)

    @property
    def num_features(self) -> int:
        """F, read by torchmetrics so that it need not probe the network with a dummy image."""
        return self.config.num_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Raw digits ``(N, 1, 8, 8)`` int 0..16 -> penultimate activations ``(N, F)`` float32."""
        x = to_unit(validate_digits(x))  # levels 0..16 -> the grid {0, 1/16, ..., 1}
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(N, 10)``."""
        return self.head(self.dropout(self.features(x)))

    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted labels ``(N,)`` int64."""
        return self(x).argmax(dim=1)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the labels, averaged over the batch (the training objective).

        In training mode each image is first shifted by up to one pixel (zero fill), a cheap
        augmentation that makes the classifier, and so its features, less sensitive to position.
        """
        if self.training:
            x = _random_shift(x)
        return F.cross_entropy(self(x), y)


def _random_shift(x: torch.Tensor) -> torch.Tensor:
    """Shift each image ``(N, 1, 8, 8)`` by dx, dy in {-1, 0, 1}, filling with zeros."""
    padded = F.pad(x, (1, 1, 1, 1))  # (N, 1, 10, 10)
    dy, dx = torch.randint(0, 3, (2, len(x)), device=x.device)
    rows = (dy[:, None] + torch.arange(8, device=x.device))[:, :, None]  # (N, 8, 1)
    cols = (dx[:, None] + torch.arange(8, device=x.device))[:, None, :]  # (N, 1, 8)
    n = torch.arange(len(x), device=x.device)[:, None, None]
    return padded[n, 0, rows, cols].unsqueeze(1)  # (N, 1, 8, 8)


def asset_path() -> Path:
    """Where the shipped weights live (inside the installed package)."""
    return Path(str(resources.files("dgm_edu") / "assets" / ASSET))


@functools.lru_cache(maxsize=1)
def load_feature_net() -> DigitsFeatureNet:
    """The shipped feature network, on the CPU, in eval mode, with frozen weights (cached).

    Raises ``FileNotFoundError`` that says how to restore the weights when they are missing.
    """
    path = asset_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"Feature-net weights not found at {path}: they ship inside the dgm_edu package "
            f"(dgm_edu/assets/{ASSET}); reinstall dgm_edu to restore them "
            f"(pip install --force-reinstall dgm_edu), and never retrain them in place: every "
            f"FID, KID and precision/recall in the book is measured with these weights"
        )
    payload = torch.load(path, map_location="cpu", weights_only=True)
    net = DigitsFeatureNet(FeatureNetConfig(**_config_from(payload)))
    net.load_state_dict(payload["model"])
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def _config_from(payload: dict) -> dict:
    cfg = dict(payload.get("config", {}))
    if "channels" in cfg:
        cfg["channels"] = tuple(cfg["channels"])
    return cfg
