"""Tests of dgm_edu.autoregressive: causality, receptive fields, normalisation, sampling."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from dgm_edu.autoregressive import (
    CharConfig,
    CharRNN,
    CharTransformer,
    GatedPixelCNN,
    PixelCNN,
    PixelCNNConfig,
    Vocab,
    causal_mask,
    load_names,
    receptive_field,
)

PIXEL_MODELS = [PixelCNN, GatedPixelCNN]


def dependency_matrix(model, y=None) -> torch.Tensor:
    """``(D, D)`` 0/1 matrix: entry (i, j) = 1 where some logit of pixel i depends on input j."""
    torch.manual_seed(0)
    w = model.config.width
    rows = [receptive_field(model, *divmod(i, w), y=y).flatten() for i in range(w * w)]
    return torch.stack(rows).float()


def test_causal_mask_values():
    a = torch.tensor([[1.0, 1, 1], [1, 0, 0], [0, 0, 0]])
    b = torch.tensor([[1.0, 1, 1], [1, 1, 0], [0, 0, 0]])
    assert torch.equal(causal_mask((3, 3), "A"), a)
    assert torch.equal(causal_mask((3, 3), "B"), b)
    assert torch.equal(causal_mask((1, 3), "A"), torch.tensor([[1.0, 0, 0]]))
    assert torch.equal(causal_mask((3, 3), "VA"), torch.tensor([[1.0, 1, 1], [0, 0, 0], [0, 0, 0]]))


@pytest.mark.parametrize("cls", PIXEL_MODELS)
def test_causality_by_gradients(cls):
    # catches: a missing/wrong mask (type B in the first layer, horizontal stack seeing the right)
    model = cls(PixelCNNConfig(channels=8, num_layers=7, num_classes=3, dropout=0.0))
    field = dependency_matrix(model, y=torch.tensor([0, 2]))
    # output pixel i must not depend on input pixels j >= i (raster order), exactly
    assert field.triu().sum() == 0
    assert field.tril(-1).sum() > 0  # and it does see the past


def test_gated_has_no_blind_spot_and_pixelcnn_has_one():
    # catches: a vertical stack that does not feed the horizontal one, or a too-narrow stack
    cfg = PixelCNNConfig(channels=8, num_layers=7, kernel_size=3)
    gated = dependency_matrix(GatedPixelCNN(cfg))
    past = torch.ones(64, 64).tril(-1)
    assert torch.equal(gated, past)  # every earlier pixel, and nothing else
    plain = dependency_matrix(PixelCNN(cfg))
    blind = past - plain
    assert blind.sum() > 0  # the classic blind spot: pixel (1, 0) cannot see (0, 7)
    assert blind[8, 7] == 1


def _all_images(h: int, w: int, levels: int) -> torch.Tensor:
    grid = itertools.product(range(levels), repeat=h * w)
    return torch.tensor(list(grid)).view(-1, 1, h, w)  # (levels^D, 1, h, w)


def _scale_head(model, gain: float = 4.0) -> None:
    """Make a random model's conditionals far from uniform, so that tests can tell them apart."""
    with torch.no_grad():
        model.head[-1].weight.mul_(gain)
        model.head[-1].bias.normal_(0, 1.0)


@pytest.mark.parametrize("cls", PIXEL_MODELS)
def test_normalisation_by_enumeration(cls):
    # catches: logits read at the wrong pixel, a sum over the wrong axis, an unnormalised output
    torch.manual_seed(1)
    cfg = PixelCNNConfig(height=2, width=2, levels=3, channels=8, num_layers=2, num_classes=2)
    model = cls(cfg).eval()
    _scale_head(model)
    images = _all_images(2, 2, 3)  # all 81 images
    for y in range(2):
        total = model.log_prob(images, torch.full((81,), y)).double().exp().sum()
        assert total.item() == pytest.approx(1.0, abs=1e-5)
    # the marginal log p(x) = log mean_y p(x | y), computed independently here
    marginal = model.log_prob(images)
    per_class = torch.stack([model.log_prob(images, torch.full((81,), y)) for y in range(2)], 1)
    assert torch.allclose(marginal, per_class.exp().mean(1).log(), atol=1e-5)
    assert marginal.double().exp().sum().item() == pytest.approx(1.0, abs=1e-5)


def _tempered_probs(model, images: torch.Tensor, temperature: float) -> torch.Tensor:
    """prod_i softmax(logits_i / T)[x_i] for every image, computed pixel by pixel."""
    logits = model(model.preprocess(images)) / temperature  # (M, L, 2, 2)
    logp = logits.log_softmax(1).gather(1, images).flatten(1).sum(1)
    return logp.exp()


@pytest.mark.parametrize("cls", PIXEL_MODELS)
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_sampling_matches_enumerated_distribution(cls, temperature):
    # catches: sampling pixels out of order, conditioning on stale pixels, ignoring the temperature
    torch.manual_seed(2)
    model = cls(PixelCNNConfig(height=2, width=2, levels=3, channels=8, num_layers=2)).eval()
    _scale_head(model)
    images = _all_images(2, 2, 3)
    with torch.no_grad():
        probs = _tempered_probs(model, images, temperature).double()  # (81,)
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-5)
    n = 40_000
    samples = model.sample(n, temperature=temperature).flatten(1)  # (n, 4)
    codes = (samples * torch.tensor([27, 9, 3, 1])).sum(1)  # base-3 index, as _all_images
    freq = torch.bincount(codes, minlength=81).double() / n
    # total variation distance; sampling noise alone gives ~0.02 here
    assert 0.5 * (freq - probs).abs().sum().item() < 0.04
    if temperature != 1.0:  # and the tempered samples do not follow the untempered model
        with torch.no_grad():
            plain = _tempered_probs(model, images, 1.0).double()
        assert 0.5 * (freq - plain).abs().sum().item() > 0.08


def test_log_prob_validates_input():
    model = GatedPixelCNN(PixelCNNConfig(channels=4, num_layers=1))
    with pytest.raises(ValueError):
        model.log_prob(torch.full((2, 1, 8, 8), 17))
    with pytest.raises(ValueError):
        model.log_prob(torch.zeros(2, 8, 8, dtype=torch.long))


# --------------------------------------------------------------------------- text
TEXT_MODELS = [CharRNN, CharTransformer]


@pytest.mark.parametrize("cls", TEXT_MODELS)
def test_text_model_is_causal(cls):
    # catches: a missing causal mask, or a bidirectional RNN
    torch.manual_seed(0)
    model = cls(CharConfig(vocab_size=5, max_len=8, dim=16, num_heads=2)).eval()
    ids = torch.randint(0, 5, (3, 8))
    base = model(ids)  # (3, 8, 5)
    for t in range(7):
        changed = ids.clone()
        changed[:, t + 1 :] = (changed[:, t + 1 :] + 1) % 5  # alter every token after t
        out = model(changed)
        assert torch.allclose(out[:, : t + 1], base[:, : t + 1], atol=1e-6)
        assert not torch.allclose(out[:, t + 1], base[:, t + 1], atol=1e-4)


@pytest.mark.parametrize("cls", TEXT_MODELS)
def test_text_log_prob_is_the_chain_rule(cls):
    # catches: an off-by-one between inputs and targets, counting padding in the likelihood
    torch.manual_seed(0)
    vocab = Vocab(["ab", "ba", "abc"])
    model = cls(CharConfig(vocab_size=len(vocab), max_len=5, dim=16, num_heads=2)).eval()
    words = ["ab", "cab", "c"]
    ids = vocab.encode(words, 5)
    got = model.log_prob(ids)
    for n, w in enumerate(words):
        seq = [0] + [vocab.index[ch] for ch in w] + [0]
        expected = 0.0
        for t in range(1, len(seq)):  # log p(c_t | c_<t) from the prefix alone
            prefix = torch.tensor([seq[:t]])
            expected += model(prefix)[0, -1].log_softmax(-1)[seq[t]].item()
        assert got[n].item() == pytest.approx(expected, abs=1e-4)


def test_text_normalisation_by_enumeration():
    # every string of up to max_len - 1 characters, then the end token: the total mass is
    # 1 - P(no end token within max_len steps), which we also enumerate
    torch.manual_seed(0)
    vocab = Vocab(["ab"])  # '.', 'a', 'b'
    model = CharRNN(CharConfig(vocab_size=3, max_len=3, dim=8)).eval()
    total = 0.0
    for length in range(3):
        words = ["".join(p) for p in itertools.product("ab", repeat=length)]
        total += model.log_prob(vocab.encode(words, 3)).double().exp().sum().item()
    no_end = 0.0  # P(c_1, c_2, c_3 all letters)
    for p in itertools.product([1, 2], repeat=3):
        logits = model(torch.tensor([[0, *p[:2]]])).log_softmax(-1)[0]
        no_end += math.exp(sum(logits[t, p[t]].item() for t in range(3)))
    assert total + no_end == pytest.approx(1.0, abs=1e-5)


def test_corpus_ships_and_round_trips():
    words = load_names()
    assert len(words) >= 1000 and all(w.isalpha() and w.islower() for w in words)
    vocab = Vocab(words)
    ids = vocab.encode(words[:5], 13)
    assert [vocab.decode(row) for row in ids.clamp(min=0)] == words[:5]
