"""The denoising networks of chapter 7: what predicts ε (or a velocity) from (x_t, t, y).

- :func:`time_embedding`: sinusoidal features of the time t ∈ [0, 1].
- :class:`Conditioning`: the time embedding plus, optionally, a learned class embedding.
- :class:`ResBlock` and :class:`UNet`: a two-resolution U-Net for the 8x8 digits.
- :class:`MLP`: the network for the 2D toys.

Every network has the same face, ``forward(x, t, y=None)``: ``x`` the noisy data, ``t`` the time
in [0, 1] ``(B,)``, ``y`` int64 classes ``(B,)`` or None. The objectives that train them and the
samplers that use them are in :mod:`dgm_edu.diffusion`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of t in [0, 1] (scaled by 1000), (B,) -> (B, dim)."""
    freqs = torch.exp(-math.log(10_000) * torch.arange(dim // 2, device=t.device) / (dim // 2))
    angles = 1000 * t.float()[:, None] * freqs[None]  # (B, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class Conditioning(nn.Module):
    """Embeds the time and, optionally, the class.

    A class-conditional network (``num_classes = K > 0``) has K + 1 label embeddings: the classes
    0..K−1, and the null token K that stands for 'no label' (``y=None``; classifier-free guidance
    trains it by dropping labels). The null token is internal: the models refuse a user label K.
    """

    def __init__(self, dim: int, num_classes: int = 0) -> None:
        super().__init__()
        self.dim = dim
        self.time = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.label = nn.Embedding(num_classes + 1, dim) if num_classes else None
        self.num_classes = num_classes

    def forward(self, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        emb = self.time(time_embedding(t, self.dim))  # (B, dim)
        if self.label is not None:
            if y is None:  # the null token
                y = torch.full_like(t, self.num_classes, dtype=torch.long)
            emb = emb + self.label(y)
        return emb


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, plus the embedding as a per-channel shift, twice; a skip path."""

    def __init__(self, c_in: int, c_out: int, emb: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.norm1, self.conv1 = nn.GroupNorm(8, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(8, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.silu(self.norm1(h))) + self.emb(emb)[:, :, None, None]
        return self.skip(h) + self.conv2(self.dropout(F.silu(self.norm2(out))))


class UNet(nn.Module):
    """A two-resolution U-Net for 8x8 images: 8x8 -> 4x4 -> 8x8 with skip connections."""

    def __init__(
        self, out_channels: int = 1, ch: int = 64, num_classes: int = 0, dropout: float = 0.0
    ) -> None:
        super().__init__()
        e = 2 * ch
        block = lambda c_in, c_out: ResBlock(c_in, c_out, e, dropout)  # noqa: E731
        self.cond = Conditioning(e, num_classes)
        self.inp = nn.Conv2d(1, ch, 3, padding=1)
        self.down = nn.ModuleList([block(ch, ch), block(ch, ch)])
        self.pool = nn.Conv2d(ch, 2 * ch, 3, stride=2, padding=1)
        self.mid = nn.ModuleList([block(2 * ch, 2 * ch), block(2 * ch, 2 * ch)])
        self.unpool = nn.Sequential(
            nn.Upsample(scale_factor=2), nn.Conv2d(2 * ch, ch, 3, padding=1)
        )
        self.up = nn.ModuleList([block(2 * ch, ch), block(2 * ch, ch)])
        self.out = nn.Sequential(
            nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, out_channels, 3, padding=1)
        )
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        emb = self.cond(t, y)  # (B, 2ch)
        h = self.inp(x)  # (B, ch, 8, 8)
        skips = []
        for block in self.down:
            h = block(h, emb)
            skips.append(h)
        h = self.pool(h)  # (B, 2ch, 4, 4)
        for block in self.mid:
            h = block(h, emb)
        h = self.unpool(h)  # (B, ch, 8, 8)
        for block in self.up:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)  # (B, out_channels, 8, 8)


class MLP(nn.Module):
    """The 2D-toy network: h <- SiLU(Linear(h) + embed(t, y)), three times, then a read-out."""

    def __init__(self, dim: int = 2, hidden: int = 128, num_classes: int = 0) -> None:
        super().__init__()
        self.cond = Conditioning(hidden, num_classes)
        self.layers = nn.ModuleList(
            [nn.Linear(dim, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)]
        )
        self.out = nn.Linear(hidden, dim)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        emb, h = self.cond(t, y), x  # (B, hidden), (B, dim)
        for layer in self.layers:
            h = F.silu(layer(h) + emb)  # the time (and label) enter every layer
        return self.out(h)  # (B, dim)
