"""Tests that catch the mutants of ``dgm_edu/unet.py`` that its own tests let through
(``make mutation``): the sinusoidal time embedding in numpy, the toy MLP's layer recomputed,
labels and dropout reaching the networks, the constructors' documented defaults, and the meta
device."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dgm_edu.unet import MLP, Conditioning, ResBlock, UNet, time_embedding


def _perturb(module: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))  # off the zero-initialised output layers
    return module


def test_time_embedding_against_numpy():
    t = torch.tensor([0.0, 0.25, 0.999])
    half = np.arange(4)
    freqs = np.exp(-np.log(10_000) * half / 4)
    angles = 1000 * t.numpy()[:, None].astype(np.float64) * freqs[None]
    expected = np.concatenate([np.sin(angles), np.cos(angles)], 1)
    np.testing.assert_allclose(time_embedding(t, 8).numpy(), expected, atol=2e-4)
    assert time_embedding(torch.zeros(2, device="meta"), 8).device.type == "meta"


def test_constructor_defaults():
    assert Conditioning(8).label is None and "label.weight" not in Conditioning(8).state_dict()
    assert ResBlock(8, 8, 16).dropout.p == 0.0
    mlp = MLP()
    assert mlp.layers[0].in_features == 2 and mlp.layers[0].out_features == 128
    assert mlp.out.out_features == 2 and mlp.cond.label is None
    unet = UNet()
    assert unet.inp.out_channels == 64 and unet.out[-1].out_channels == 1
    assert unet.cond.label is None
    assert {m.p for m in unet.modules() if isinstance(m, nn.Dropout)} == {0.0}
    assert {m.p for m in UNet(ch=8, dropout=0.3).modules() if isinstance(m, nn.Dropout)} == {0.3}


def test_the_toy_mlp_layer_by_layer():
    mlp = _perturb(MLP(2, 16, num_classes=3))
    x, t, y = torch.randn(4, 2), torch.rand(4), torch.tensor([0, 1, 2, 1])
    emb = mlp.cond.time(time_embedding(t, 16)) + mlp.cond.label(y)
    h = x
    for layer in mlp.layers:
        h = F.silu(layer(h) + emb)  # the time and label enter every layer
    assert torch.allclose(mlp(x, t, y), mlp.out(h), atol=1e-6)


def test_labels_reach_both_networks():
    for net, x in ((_perturb(MLP(2, 16, 3)), torch.randn(2, 2)),
                   (_perturb(UNet(1, 8, 3)), torch.randn(2, 1, 8, 8))):  # fmt: skip
        t = torch.full((2,), 0.3)
        a, b = net(x, t, torch.tensor([0, 0])), net(x, t, torch.tensor([2, 2]))
        assert not torch.allclose(a, b)
        assert torch.allclose(net(x, t, None), net(x, t, torch.tensor([3, 3])))  # the null token
