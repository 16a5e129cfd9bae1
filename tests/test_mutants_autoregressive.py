"""Tests that catch the mutants of ``dgm_edu/autoregressive.py`` that its own tests let through
(``make mutation``), each against a hand-built value or the documented formula:

- the causal masks of 5x5 kernels (a 3x3 kernel cannot tell kw // 2 from kw // 3), and which
  mask each gated layer uses (loading shipped weights restores the mask buffers, so only a
  fresh model shows a wrong one);
- one PixelCNN layer and one gated layer recomputed from their formulas, class bias included;
- the text models' checks (exact messages, boundaries), sampling (shape, temperature), their
  dropout and initial position embeddings, the vocabulary's truncation;
- a one-class conditional model, other level counts, the meta device.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dgm_edu.autoregressive import (
    CharConfig,
    CharRNN,
    CharTransformer,
    GatedLayer,
    GatedPixelCNN,
    PixelCNN,
    PixelCNNConfig,
    Vocab,
    causal_mask,
    receptive_field,
)
from dgm_edu.data import load_digits

X, Y = (t[:3] for t in load_digits("val"))


def _message(err, call, *args, **kwargs) -> str:
    with pytest.raises(err) as info:
        call(*args, **kwargs)
    return str(info.value)


# --------------------------------------------------------------------------- masks
def test_causal_masks_of_a_5x5_kernel():
    above = [[1] * 5, [1] * 5]
    below = [[0] * 5, [0] * 5]
    expected = {
        "A": above + [[1, 1, 0, 0, 0]] + below,
        "B": above + [[1, 1, 1, 0, 0]] + below,
        "V": above + [[1] * 5] + below,
        "VA": above + [[0] * 5] + below,
    }
    for kind, mask in expected.items():
        assert causal_mask((5, 5), kind).tolist() == mask, kind
    assert causal_mask((1, 5), "B").tolist() == [[1, 1, 1, 0, 0]]
    assert _message(ValueError, causal_mask, (3, 3), "C") == (
        "Unknown mask_type 'C': expected 'A', 'B', 'V' or 'VA'"
    )


def test_gated_layers_use_their_documented_masks():
    c = PixelCNNConfig(channels=4, kernel_size=5)
    later = GatedLayer(c)  # first=False by default
    assert later.first is False
    assert later.h_conv.mask[0, 0].tolist() == causal_mask((1, 5), "B").tolist()
    assert later.v_conv.mask[0, 0].tolist() == causal_mask((5, 5), "V").tolist()
    first = GatedLayer(c, first=True)
    assert first.h_conv.mask[0, 0].tolist() == causal_mask((1, 5), "A").tolist()
    assert first.v_conv.mask[0, 0].tolist() == causal_mask((5, 5), "VA").tolist()


# --------------------------------------------------------------------------- layers by formula
def test_a_gated_layer_is_its_formula():
    torch.manual_seed(0)
    c = PixelCNNConfig(channels=4)
    layer = GatedLayer(c).eval()
    v, h = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    cond = torch.randn(2, 8, 1, 1)
    v_feat = layer.v_conv(v) + cond
    h_feat = layer.h_conv(h) + layer.v_to_h(layer.v_conv(v)) + cond
    gate = lambda f: torch.tanh(f.chunk(2, 1)[0]) * torch.sigmoid(f.chunk(2, 1)[1])  # noqa: E731
    v_out, h_out = layer(v, h, cond)
    assert torch.allclose(v_out, gate(v_feat), atol=1e-6)
    assert torch.allclose(h_out, h + layer.h_out(gate(h_feat)), atol=1e-6)


@pytest.mark.parametrize("num_classes", [0, 3])
def test_a_one_layer_pixelcnn_is_its_formula(num_classes):
    torch.manual_seed(0)
    model = PixelCNN(PixelCNNConfig(channels=4, num_layers=1, num_classes=num_classes)).eval()
    h = torch.randn(2, 1, 8, 8)
    y = torch.tensor([0, 2]) if num_classes else None
    h0 = model.input(h)
    out = model.layers[0](F.relu(h0))
    if num_classes:
        out = out + model.class_embedding(y)[:, :, None, None]
    assert torch.allclose(model(h, y), model.head(h0 + out), atol=1e-6)


# --------------------------------------------------------------------------- pixel models
def test_a_one_class_conditional_model():
    torch.manual_seed(0)
    model = PixelCNN(PixelCNNConfig(channels=4, num_layers=1, num_classes=1))
    zeros = torch.zeros(3, dtype=torch.long)
    assert torch.allclose(model.log_prob(X), model.log_prob(X, zeros))  # the marginal of 1 class
    assert torch.isfinite(model.loss(X, zeros))
    assert _message(ValueError, model.loss, X) == (
        "y is required: train a class-conditional model on (x, y) batches"
    )
    assert _message(ValueError, model, X.float(), None) == (
        "This model is class-conditional: pass labels y of shape (N,)"
    )


def test_other_level_counts():
    torch.manual_seed(0)
    five = PixelCNN(PixelCNNConfig(channels=4, num_layers=1, height=2, width=2, levels=5))
    x = torch.tensor([[[[0, 4], [2, 1]]]])
    assert five.preprocess(x).tolist() == [[[[-1.0, 1.0], [0.0, -0.5]]]]
    twenty = PixelCNN(PixelCNNConfig(channels=4, num_layers=1, height=2, width=2, levels=20))
    with torch.no_grad():
        twenty.head[-1].bias.copy_(torch.arange(20.0) * 10)  # level 19 wins everywhere
    assert twenty.sample(3, temperature=0.5).unique().tolist() == [19]


def test_pixel_sampling_defaults_and_the_meta_device():
    torch.manual_seed(0)
    model = GatedPixelCNN(PixelCNNConfig(channels=4, num_layers=2, num_classes=3))
    torch.manual_seed(5)
    a = model.sample(2)
    torch.manual_seed(5)
    assert torch.equal(a, model.sample(2, temperature=1.0))
    meta = model.to("meta")
    for n in (0, 2):
        assert meta.sample(n).device.type == "meta"
    xm = torch.zeros(2, 1, 8, 8, dtype=torch.long, device="meta")
    assert meta.log_prob(xm).device.type == "meta"  # the marginal over the classes
    assert meta.log_prob(xm, 1).device.type == "meta"
    rf = receptive_field(PixelCNN(PixelCNNConfig(channels=4, num_layers=1)).to("meta"), 3, 3)
    assert rf.device.type == "meta"


# --------------------------------------------------------------------------- text models
def _char(cls=CharRNN, **config):
    torch.manual_seed(0)
    return cls(CharConfig(**({"vocab_size": 6, "max_len": 5, "dim": 8} | config)))


def test_text_ids_are_checked_with_exact_messages():
    m = _char()
    good = torch.tensor([[0, 1, 0], [0, 2, -1]])
    assert torch.isfinite(m.loss(torch.tensor([[0, 1], [0, 2]])))  # T + 1 = 2 is enough
    for bad, err, message in [
        ([[0, 1]], TypeError, "ids must be an integer tensor of character ids, got list"),
        (good.float(), TypeError, "ids must be an integer tensor of character ids, got "
         "torch.float32"),
        (good[:0], ValueError, "ids must have shape (N, T + 1) with N >= 1, T >= 1, got (0, 3)"),
        (good[:, :1], ValueError, "ids must have shape (N, T + 1) with N >= 1, T >= 1, got "
         "(2, 1)"),
        (good[0], ValueError, "ids must have shape (N, T + 1) with N >= 1, T >= 1, got (3,)"),
        (good + 6, ValueError, "ids must lie in [0, 6) or be the padding -1, got values in "
         "[5, 8]"),
    ]:  # fmt: skip
        assert _message(err, m.loss, bad) == message
    meta = m.to("meta")
    assert meta.loss(torch.zeros(2, 3, dtype=torch.long, device="meta")).device.type == "meta"
    assert meta.sample(2).device.type == "meta"


def test_text_sampling_shape_and_temperature():
    m = _char(CharTransformer, num_heads=2)
    with torch.no_grad():
        m.head.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 3.0, 0.0, 0.0]))  # character 3 is likely
    torch.manual_seed(1)
    s = m.sample(40)
    assert s.shape == (40, 6) and (s[:, 0] == 0).all()
    torch.manual_seed(1)
    assert torch.equal(s, m.sample(40, temperature=1.0))
    cold = m.sample(40, temperature=0.01)  # nearly the argmax at every step: one word for all
    assert (cold == cold[0]).all()
    assert (s != s[0]).any()  # at temperature 1 the words differ


def test_text_model_dropout_and_position_embeddings():
    assert _char(CharRNN, num_layers=2, dropout=0.5).rnn.dropout == 0.5
    t = _char(CharTransformer, dim=64, max_len=40, num_heads=2, dropout=0.0)
    assert all(b.dropout.p == 0.0 and b.dropout1.p == 0.0 for b in t.blocks)
    assert 0.018 < t.pos.detach().std().item() < 0.022  # N(0, 0.02²)


def test_vocab_truncates_long_words_and_pads():
    v = Vocab(["abc", "de"])
    assert v.encode(["abcabc", "d"], 3).tolist() == [[0, 1, 2, 3], [0, 4, 0, -1]]
    assert v.decode(torch.tensor([0, 1, 2, 0, 3])) == "ab"
