"""Tests that catch the mutants of ``dgm_edu/digit_flow.py`` that its own tests let through
(``make mutation``): how each config choice builds the flow (network kind, depth, dropout,
masks, the dequantizer without ActNorm), the config's refusals (exact messages, boundaries),
the uniform dequantizer's log q, float64 models, the default temperature, the meta device."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dgm_edu.data import load_digits
from dgm_edu.digit_flow import (
    ConvNet,
    DigitFlow,
    DigitFlowConfig,
    FlatMLP,
    NetShape,
    coupling_stack,
)
from dgm_edu.flows import ActNorm, AffineCoupling, checkerboard_mask

X, _ = load_digits("val")


def _message(err, call, *args, **kwargs) -> str:
    with pytest.raises(err) as info:
        call(*args, **kwargs)
    return str(info.value)


def _small(**config) -> DigitFlow:
    torch.manual_seed(0)
    return DigitFlow(DigitFlowConfig(**({"num_couplings": 2, "hidden": 4, "deq_couplings": 1,
                                        "deq_hidden": 4} | config)))  # fmt: skip


def _count(module: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in module.modules())


# --------------------------------------------------------------------------- the stacks
def test_coupling_stack_builds_what_it_is_asked_for():
    conv = coupling_stack(3, 4, depth=3)
    couplings = [layer for layer in conv.layers if isinstance(layer, AffineCoupling)]
    assert [layer.mask.tolist() for layer in couplings] == [
        checkerboard_mask(8, 8, k % 2).tolist() for k in range(3)
    ]
    assert all(isinstance(layer.net, ConvNet) for layer in couplings)
    assert _count(couplings[0].net, nn.Conv2d) == 1 + 2 + 1  # first, depth − 1 = 2, output
    assert all(m.p == 0.0 for m in conv.modules() if isinstance(m, nn.Dropout))  # default 0
    mlp = coupling_stack(2, 4, depth=2, net="mlp", dropout=0.3)
    assert all(isinstance(layer.net, FlatMLP) for layer in mlp.layers[1::2])
    assert {m.p for m in mlp.modules() if isinstance(m, nn.Dropout)} == {0.3}
    assert _count(FlatMLP(NetShape(2, 8, 2, depth=3)), nn.Linear) == 1 + 2 + 1
    assert _message(ValueError, coupling_stack, 1, 4, 2, net="resnet") == (
        "net must be 'conv' or 'mlp', got 'resnet'"
    )


def test_digit_flow_passes_its_config_to_both_flows():
    flow = _small(net="mlp", dropout=0.25, depth=3)
    assert _count(flow.flow, FlatMLP) == 2 and _count(flow.deq_flow, FlatMLP) == 1
    assert {m.p for m in flow.flow.modules() if isinstance(m, nn.Dropout)} == {0.25}
    assert _count(flow.flow, ActNorm) == 2 and _count(flow.deq_flow, ActNorm) == 0
    assert _count(flow.flow.layers[1].net, nn.Linear) == 1 + 2 + 1


def test_config_refusals_and_boundaries():
    DigitFlowConfig(net="mlp", eval_samples=1, alpha=0.01)  # all valid
    for kwargs, message in [
        ({"dequantization": "none"}, "dequantization must be 'uniform' or 'variational', got "
         "'none'"),
        ({"net": "MLP"}, "net must be 'conv' or 'mlp', got 'MLP'"),
        ({"alpha": 0.0}, "alpha must lie in (0, 0.5), got 0.0"),
        ({"alpha": 0.5}, "alpha must lie in (0, 0.5), got 0.5"),
        ({"eval_samples": 0}, "eval_samples must be an int >= 1, got 0"),
    ]:  # fmt: skip
        assert _message(ValueError, DigitFlowConfig, **kwargs) == message


# --------------------------------------------------------------------------- the face
def test_uniform_dequantizer_has_log_q_zero_per_image():
    flow = _small(dequantization="uniform")
    u, log_q = flow.dequantize(X[:5])
    assert u.shape == (5, 1, 8, 8) and log_q.shape == (5,) and torch.equal(log_q, torch.zeros(5))
    assert ((u >= 0) & (u < 1)).all()


@pytest.mark.parametrize("deq", ["uniform", "variational"])
def test_a_float64_digit_flow(deq):
    flow = _small(dequantization=deq).double()
    u, log_q = flow.dequantize(X[:3])
    assert u.dtype == log_q.dtype == torch.float64
    assert flow.log_prob(X[:3]).dtype == torch.float64
    assert flow.sample(2).dtype == torch.long


def test_sample_defaults_to_temperature_one_and_runs_on_meta():
    flow = _small()
    torch.manual_seed(3)
    a = flow.sample(4)
    torch.manual_seed(3)
    assert torch.equal(a, flow.sample(4, temperature=1.0))
    torch.manual_seed(3)
    assert not torch.equal(a, flow.sample(4, temperature=2.0))
    meta = _small().to("meta")
    assert meta.sample(2).device.type == "meta"
    xm = torch.zeros(2, 1, 8, 8, dtype=torch.long, device="meta")
    for deq in ("uniform", "variational"):
        m = _small(dequantization=deq).to("meta")
        u, log_q = m.dequantize(xm)
        assert u.device.type == log_q.device.type == "meta"
