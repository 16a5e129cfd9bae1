"""Tests of dgm_edu.autoregressive: causality, receptive fields, normalisation, sampling."""

from __future__ import annotations

import itertools
import math
import re

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
from dgm_edu.data import LEVELS, load_digits

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


@pytest.mark.parametrize("num_layers", [1, 3, 9])
def test_pixelcnn_3x3_field_matches_path_enumeration(num_layers):
    # catches: an input_kernel_size that is ignored, or a type-B mask that reaches to the right
    size, row, col = 10, 7, 3
    cfg = PixelCNNConfig(
        height=size,
        width=size,
        channels=4,
        num_layers=num_layers,
        kernel_size=3,
        input_kernel_size=3,
    )
    model = PixelCNN(cfg)
    assert model.input.kernel_size == (3, 3)
    field = receptive_field(model, row, col)
    # independent: the offsets a 3x3 type-A tap, then num_layers type-B taps, can add up to
    step_a = {(-1, -1), (-1, 0), (-1, 1), (0, -1)}
    reach = set(step_a)
    for _ in range(num_layers):
        reach |= {(r + dr, c + dc) for r, c in reach for dr, dc in step_a | {(0, 0)}}
    expected = torch.zeros(size, size, dtype=torch.bool)
    for dr, dc in reach:
        if 0 <= row + dr < size and 0 <= col + dc < size:
            expected[row + dr, col + dc] = True
    assert torch.equal(field, expected)
    if num_layers == 9:  # deep enough: only the wedge dc > -dr above the pixel stays unseen
        r, c = torch.arange(size)[:, None], torch.arange(size)[None, :]
        past = r * size + c < row * size + col
        wedge = (r < row) & (c - col > row - r)
        assert torch.equal(past & ~field, wedge) and wedge.sum() > 0


def test_pixelcnn_default_input_kernel_is_2k_plus_1():
    assert PixelCNN(PixelCNNConfig(channels=4, kernel_size=3)).input.kernel_size == (7, 7)
    assert PixelCNN(PixelCNNConfig(channels=4, kernel_size=5)).input.kernel_size == (11, 11)


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


def _check_path(path, out, given, every):
    """Frame k has exactly the first min(given + k * every, D) pixels filled, with the final
    values (a drawn pixel never changes), NaN after them; the last frame is the result."""
    d = out[0].numel()
    assert path.shape == (1 + math.ceil((d - given) / every), *out.shape)
    order = torch.arange(d).view(out.shape[1:])  # raster index of every pixel
    for k, frame in enumerate(path):
        filled = order < min(given + k * every, d)  # (1, H, W)
        assert torch.equal(~frame.isnan(), filled.expand_as(out)), k
        assert torch.equal(frame[:, filled], out[:, filled].float()), k
    assert torch.equal(path[-1], out.float())


@pytest.mark.parametrize("cls", PIXEL_MODELS)
def test_sample_path_fills_the_raster_order_and_ends_at_the_sample(cls):
    # catches: frames taken at the wrong pixels, a missing last frame, a path that draws anew
    torch.manual_seed(0)
    model = cls(PixelCNNConfig(channels=8, num_layers=2)).eval()
    for every, temperature in [(3, 1.0), (2, 0.5), (64, 1.0)]:
        torch.manual_seed(1)
        plain = model.sample(3, temperature=temperature)
        torch.manual_seed(1)  # the same draws: the path changes nothing about the sample
        out, path = model.sample(3, temperature=temperature, return_path=True, every=every)
        assert torch.equal(out, plain)
        _check_path(path, out, 0, every)
    with pytest.raises(ValueError, match="every must be an int >= 1, got 0"):
        model.sample(2, return_path=True, every=0)


@pytest.mark.parametrize("cls", PIXEL_MODELS)
def test_complete_keeps_the_prefix_and_draws_the_rest(cls, digits):
    # catches: known pixels redrawn or overwritten, the caller's tensor modified, a path that
    # starts from a blank image, completion that differs from sampling after the prefix
    torch.manual_seed(0)
    model = cls(PixelCNNConfig(channels=8, num_layers=2)).eval()
    x = digits[:4].clone()
    torch.manual_seed(1)
    out, path = model.complete(x, 32, return_path=True, every=5)
    assert torch.equal(x, digits[:4])  # the input is not drawn into
    assert torch.equal(out.flatten(1)[:, :32], x.flatten(1)[:, :32])  # the top half is kept
    assert not torch.equal(out, x)  # and the bottom half is drawn
    _check_path(path, out, 32, 5)
    torch.manual_seed(1)
    assert torch.equal(model.complete(x, 32), out)
    torch.manual_seed(2)
    drawn = model.sample(4)
    torch.manual_seed(2)  # given = 0 is sampling, whatever x holds
    assert torch.equal(model.complete(x, 0), drawn)
    assert torch.equal(model.complete(x, 64), x)  # nothing left to draw
    with pytest.raises(ValueError, match=re.escape("given must be an int in [0, 64], got 65")):
        model.complete(x, 65)
    cond = cls(PixelCNNConfig(channels=4, num_layers=1, num_classes=10))
    with pytest.raises(ValueError, match="This model is class-conditional: pass labels y"):
        cond.complete(x, 32)
    assert cond.complete(x, 32, y=3).shape == x.shape


@pytest.mark.parametrize("cls", PIXEL_MODELS)
def test_completion_matches_the_enumerated_conditional(cls):
    # catches: completion that ignores the known pixels, or conditions on stale ones
    torch.manual_seed(2)
    model = cls(PixelCNNConfig(height=2, width=2, levels=3, channels=8, num_layers=2)).eval()
    with torch.no_grad():  # larger weights: conditionals that depend on the known pixels
        for p in model.parameters():
            p.mul_(2.0)
    images = _all_images(2, 2, 3)  # (81, 1, 2, 2); image j has x_1, x_2 = j // 27, j // 9 % 3
    with torch.no_grad():
        joint = _tempered_probs(model, images, 1.0).double().view(9, 9)  # (prefix, rest)
    conditional = joint / joint.sum(1, keepdim=True)  # p(x_3, x_4 | x_1, x_2)
    n = 30_000
    for prefix in [0, 8]:  # x_1, x_2 = (0, 0) and (2, 2)
        start = images[prefix * 9].expand(n, 1, 2, 2)  # the prefix, then (0, 0)
        rest = model.complete(start, 2).flatten(1)[:, 2:]  # (n, 2)
        freq = torch.bincount(rest[:, 0] * 3 + rest[:, 1], minlength=9).double() / n
        assert 0.5 * (freq - conditional[prefix]).abs().sum().item() < 0.04
    # the two prefixes' conditionals differ, so the test can tell them apart
    assert 0.5 * (conditional[0] - conditional[8]).abs().sum().item() > 0.1


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


# --------------------------------------------------------------------------- the face (issue 24)
@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    return load_digits("test")[0][:6]


@pytest.mark.parametrize("cls", PIXEL_MODELS)
def test_pixel_loss_is_minus_the_mean_log_prob(cls, digits):
    # catches: the loss's sign dropped (training would maximise the NLL), a sum for the mean
    torch.manual_seed(0)
    model = cls(PixelCNNConfig(channels=8, num_layers=2)).eval()
    lp = model.log_prob(digits)
    assert (lp < 0).all()
    assert model.loss(digits).item() == pytest.approx(-lp.mean().item(), rel=1e-6)
    cond = cls(PixelCNNConfig(channels=8, num_layers=2, num_classes=10)).eval()
    y = torch.arange(len(digits))
    assert cond.loss(digits, y).item() == pytest.approx(-cond.log_prob(digits, y).mean().item())


@pytest.mark.parametrize("cls", TEXT_MODELS)
def test_text_loss_is_minus_the_mean_log_prob(cls):
    # catches: CharModel.loss summing over the batch instead of averaging
    torch.manual_seed(0)
    vocab = Vocab(["ab", "ba", "abc"])
    model = cls(CharConfig(vocab_size=len(vocab), max_len=5, dim=16, num_heads=2)).eval()
    ids = vocab.encode(["ab", "cab", "c", "ba"], 5)
    assert model.loss(ids).item() == pytest.approx(-model.log_prob(ids).mean().item(), rel=1e-6)


@pytest.mark.parametrize("cls", [PixelCNN, GatedPixelCNN, CharRNN, CharTransformer])
def test_sample_arguments_are_checked(cls):
    model = cls(PixelCNNConfig(channels=4, num_layers=1)) if cls in PIXEL_MODELS else cls()
    cases = [
        (dict(n=-1), ValueError, "n must be a non-negative int, got -1"),
        (dict(n=2.0), TypeError, "n must be a non-negative int, got 2.0"),
        (dict(n="3"), TypeError, "n must be a non-negative int, got '3'"),
        (dict(n=2, temperature=0), ValueError, "temperature must be a finite number > 0, got 0.0"),
        (dict(n=2, temperature=-1), ValueError, "temperature must be a finite number > 0, got -1"),
        (dict(n=2, temperature=float("nan")), ValueError, "finite number > 0, got nan"),
        (dict(n=2, y=1), ValueError, "y was given but this model is unconditional"),
    ]
    for kwargs, err, message in cases:
        with pytest.raises(err, match=message):
            model.sample(**kwargs)
    with pytest.raises(TypeError, match="positional argument"):
        model.sample(2, 0.5)  # temperature is keyword-only
    empty = model.sample(0)
    assert empty.shape[0] == 0 and empty.dtype == torch.int64
    assert empty.shape[1:] == model.sample(1).shape[1:]


@pytest.mark.parametrize("cls", PIXEL_MODELS)
def test_labels_are_checked_where_they_enter(cls, digits):
    x = digits[:2]
    plain = cls(PixelCNNConfig(channels=4, num_layers=1))
    for call in (lambda: plain.log_prob(x, torch.tensor([1, 2])), lambda: plain.loss(x, 1)):
        with pytest.raises(ValueError, match="y was given but this model is unconditional"):
            call()
    cond = cls(PixelCNNConfig(channels=4, num_layers=1, num_classes=10))
    in_range = re.escape("y must hold classes in [0, 10), got values in [3, 10]")
    for call in (
        lambda: cond.log_prob(x, torch.tensor([3, 10])),
        lambda: cond.loss(x, torch.tensor([3, 10])),
        lambda: cond.sample(2, y=torch.tensor([3, 10])),
    ):
        with pytest.raises(ValueError, match=in_range):
            call()
    with pytest.raises(TypeError, match="y must hold integer classes, got dtype torch.float32"):
        cond.log_prob(x, torch.tensor([3.7, 1.0]))
    with pytest.raises(TypeError, match="y must be an int or an .n,. integer tensor"):
        cond.sample(2, y=3.7)
    with pytest.raises(ValueError, match="y is required: train a class-conditional model"):
        cond.loss(x)


def test_conditional_sample_without_labels_stratifies_the_classes():
    # a conditional model's sample(n) raised; y=None now samples p(x) with classes 0..K-1 in turn
    torch.manual_seed(3)
    model = GatedPixelCNN(PixelCNNConfig(channels=8, num_layers=2, num_classes=3)).eval()
    _scale_head(model)
    torch.manual_seed(0)
    stratified = model.sample(7)
    torch.manual_seed(0)
    assert torch.equal(stratified, model.sample(7, y=torch.arange(7) % 3))
    torch.manual_seed(0)
    assert not torch.equal(stratified, model.sample(7, y=0))  # the labels matter


def test_digits_of_any_dtype_enter_as_int64_levels(digits):
    # float/uint8/int32 whole numbers failed deep in cross_entropy; now they are the same digits
    model = GatedPixelCNN(PixelCNNConfig(channels=4, num_layers=1)).eval()
    expected = model.log_prob(digits)
    for dtype in (torch.uint8, torch.int32, torch.float32, torch.float64):
        assert torch.equal(model.log_prob(digits.to(dtype)), expected), dtype


def test_a_28x28_config_takes_mnist_levels_and_refuses_the_rest():
    # the config's shape and levels go to validate_digits: [0, 1] floats are no longer truncated
    torch.manual_seed(0)
    model = PixelCNN(PixelCNNConfig(height=28, width=28, channels=4, num_layers=1)).eval()
    x = torch.randint(0, LEVELS, (2, 1, 28, 28))
    logits = model(model.preprocess(x))  # (2, 17, 28, 28)
    expected = logits.log_softmax(1).gather(1, x).flatten(1).sum(1)
    assert torch.allclose(model.log_prob(x), expected, atol=1e-4)
    for bad, err, message in [
        (torch.rand(2, 1, 28, 28), ValueError, "got non-integer floats"),
        (x[:, :, :8, :8], ValueError, re.escape("Expected digits of shape (N, 1, 28, 28)")),
        (x * 15, ValueError, re.escape("Expected integer levels 0..16, got values in")),
    ]:
        with pytest.raises(err, match=message):
            model.log_prob(bad)
    three = PixelCNN(PixelCNNConfig(height=2, width=2, levels=3, channels=4, num_layers=1))
    with pytest.raises(ValueError, match=re.escape("Expected integer levels 0..2, got values")):
        three.log_prob(torch.tensor([[[[0, 1], [2, 3]]]]))  # level 3 of a 3-level model


@pytest.mark.parametrize("cls", [GatedPixelCNN, CharRNN])
def test_log_prob_keeps_gradients(cls, digits):
    model = cls(PixelCNNConfig(channels=4, num_layers=1)) if cls is GatedPixelCNN else cls()
    data = digits if cls is GatedPixelCNN else torch.randint(0, 27, (3, 6))
    lp = model.log_prob(data)
    assert lp.requires_grad
    lp.sum().backward()
    assert all(p.grad is not None for p in model.head.parameters())


def test_text_ids_are_checked():
    model = CharRNN(CharConfig(vocab_size=5, max_len=4, dim=8))
    for bad, err, message in [
        (torch.rand(2, 4), TypeError, "ids must be an integer tensor of character ids"),
        (torch.tensor([[0, 5, 0]]), ValueError, re.escape("ids must lie in [0, 5) or be")),
        (torch.tensor([[0, -2, 0]]), ValueError, re.escape("ids must lie in [0, 5)")),
        (torch.tensor([0, 1, 0]), ValueError, re.escape("ids must have shape (N, T + 1)")),
    ]:  # fmt: skip
        with pytest.raises(err, match=message):
            model.log_prob(bad)
