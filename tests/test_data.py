"""The data module: fixed splits, preprocessing rules, toys and the IDX reader."""

import gzip
import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits as sk_load_digits

from dgm_edu import data


def test_splits_are_the_fixed_index_ranges():
    bunch = sk_load_digits()
    seen = []
    for split, (lo, hi) in data.SPLITS.items():
        x, y = data.load_digits(split)
        assert x.dtype == torch.int64 and y.dtype == torch.int64
        assert x.shape == (hi - lo, 1, 8, 8)
        np.testing.assert_array_equal(x[:, 0].numpy(), bunch.images[lo:hi])
        np.testing.assert_array_equal(y.numpy(), bunch.target[lo:hi])
        seen.extend(range(lo, hi))
    assert seen == list(range(len(bunch.images)))  # disjoint, complete, in order
    assert [len(data.load_digits(s)[0]) for s in ("train", "val", "test")] == [1000, 350, 447]


def test_unknown_split_is_a_clear_error():
    with pytest.raises(
        ValueError, match=r"Unknown split 'tset': expected one of \['test', 'train', 'val'\]"
    ):
        data.load_digits("tset")


def test_preprocessing_rules():
    x = torch.arange(17).view(1, 1, 1, 17).expand(1, 1, 8, 17)[..., :8].contiguous()  # levels 0..7
    x = torch.cat([x, x + 9]).clamp(max=16)
    assert torch.equal(data.to_unit(x), x.float() / 16)
    assert torch.equal(data.binarize(x), (x >= 8).float())
    assert data.binarize(torch.full((1, 1, 8, 8), 7)).sum() == 0
    assert data.binarize(torch.full((1, 1, 8, 8), 8)).sum() == 64
    g = torch.Generator().manual_seed(0)
    y = data.dequantize(x, generator=g)
    # (x + u) / 17 with u in [0, 1): floor(17 y) recovers x exactly
    assert torch.equal(torch.floor(y * 17).long(), x)
    assert ((y >= 0) & (y < 1)).all()


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (
            torch.zeros(2, 8, 8, dtype=torch.long),
            r"Expected digits of shape \(N, 1, 8, 8\), got \(2, 8, 8\)",
        ),
        (torch.zeros(0, 1, 8, 8, dtype=torch.long), r"non-empty batch"),
        (torch.full((1, 1, 8, 8), 17), r"Expected integer levels 0..16, got values in \[17, 17\]"),
        (torch.full((1, 1, 8, 8), 0.5), r"got non-integer floats"),
        (torch.full((1, 1, 8, 8), float("nan")), r"Digits contain NaN"),
    ],
)
def test_validate_digits_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        data.validate_digits(bad)


def test_validate_digits_accepts_integer_valued_floats():
    x, _ = data.load_digits("val")
    assert data.validate_digits(x.float()) is not None


@pytest.mark.parametrize("name", data.TOYS)
def test_toys_are_reproducible_and_bounded(name):
    a, b = data.toy_2d(name, 500, seed=3), data.toy_2d(name, 500, seed=3)
    assert torch.equal(a, b)
    assert not torch.equal(a, data.toy_2d(name, 500, seed=4))
    assert a.shape == (500, 2) and a.abs().max() < 4


def test_ring_points_lie_near_their_centres():
    x = data.toy_2d("ring8", 4000, seed=0)
    dist = torch.cdist(x, data.ring_centres()).min(1).values
    # |N(0, s^2 I_2)| is Rayleigh: P(r <= 3s) = 1 - exp(-4.5) = 0.9889
    assert abs((dist <= 3 * data.RING_STD).float().mean().item() - (1 - math.exp(-4.5))) < 0.01
    c = data.ring_centres()
    assert torch.allclose(c.norm(dim=1), torch.full((8,), data.RING_RADIUS))


def test_checkerboard_fills_alternate_squares():
    x = data.toy_2d("checkerboard", 5000, seed=0)
    parity = (torch.floor(x[:, 0]) + torch.floor(x[:, 1])) % 2
    assert (parity == parity[0]).all()  # every point lies on squares of one colour
    assert len(torch.unique(torch.floor(x), dim=0)) == 8


def test_idx_round_trip_and_mnist_loader(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=5, dtype=np.uint8)
    data.write_idx(tmp_path / "img.idx", images)
    (tmp_path / "lab.idx.gz").write_bytes(gzip.compress(_idx_bytes(labels)))
    np.testing.assert_array_equal(data.read_idx(tmp_path / "img.idx"), images)
    x, y = data.load_mnist_idx(tmp_path / "img.idx", tmp_path / "lab.idx.gz")
    assert x.shape == (5, 1, 28, 28) and x.dtype == torch.int64
    np.testing.assert_array_equal(x[:, 0].numpy(), images.astype(np.int64) * 17 // 256)
    np.testing.assert_array_equal(y.numpy(), labels)
    raw, _ = data.load_mnist_idx(tmp_path / "img.idx", tmp_path / "lab.idx.gz", levels=None)
    assert torch.equal(raw[:, 0], torch.from_numpy(images.astype(np.int64)))
    floats = rng.standard_normal((3, 4)).astype(">f4")
    data.write_idx(tmp_path / "f.idx", floats.astype(np.float32))
    np.testing.assert_array_equal(data.read_idx(tmp_path / "f.idx"), floats.astype(np.float32))


def _idx_bytes(a: np.ndarray) -> bytes:
    return (
        bytes([0, 0, 0x08, a.ndim]) + b"".join(d.to_bytes(4, "big") for d in a.shape) + a.tobytes()
    )


def test_idx_errors_name_the_file_and_the_expectation(tmp_path):
    with pytest.raises(FileNotFoundError, match="IDX file not found: .*missing.idx"):
        data.read_idx(tmp_path / "missing.idx")
    good = _idx_bytes(np.zeros((2, 3), dtype=np.uint8))
    (tmp_path / "trunc.idx").write_bytes(good[:-1])
    with pytest.raises(
        ValueError,
        match=r"trunc.idx: truncated or oversized IDX file: 17 bytes, expected 18 for shape",
    ):
        data.read_idx(tmp_path / "trunc.idx")
    (tmp_path / "magic.idx").write_bytes(b"\x01\x02" + good[2:])
    with pytest.raises(ValueError, match=r"magic.idx: bad IDX magic number 01020802"):
        data.read_idx(tmp_path / "magic.idx")
    (tmp_path / "short.idx").write_bytes(b"\x00\x00")
    with pytest.raises(ValueError, match=r"short.idx: truncated IDX file: 2 bytes"):
        data.read_idx(tmp_path / "short.idx")
    data.write_idx(tmp_path / "img.idx", np.zeros((3, 2, 2), dtype=np.uint8))
    data.write_idx(tmp_path / "lab.idx", np.zeros(4, dtype=np.uint8))
    with pytest.raises(ValueError, match="has 3 images but .*lab.idx has 4 labels"):
        data.load_mnist_idx(tmp_path / "img.idx", tmp_path / "lab.idx")


def test_loaders_yield_raw_digits_and_labels():
    dl = data.digits_loader("val", batch_size=100, labels=True)
    xs, ys = zip(*dl, strict=True)
    x, y = torch.cat(xs), torch.cat(ys)
    assert torch.equal(x, data.load_digits("val")[0])  # val is not shuffled
    assert torch.equal(y, data.load_digits("val")[1])
    with pytest.raises(ValueError, match=r"empty data set \(N=0\)"):
        data.make_loader(torch.zeros(0, 2))


# --------------------------------------------------------------------------- anomalies
def test_anomalies_are_the_documented_transformations():
    x, _ = data.load_digits("test")
    for pixels in (1, 2, 3):  # by hand: column j of the output is column j - pixels, or 0
        shifted = data.anomalies(x, "shifted", pixels=pixels)
        for j in range(8):
            want = x[..., j - pixels] if j >= pixels else torch.zeros_like(x[..., 0])
            assert torch.equal(shifted[..., j], want), (pixels, j)
    # not a roll: ink in the last columns falls off, it does not come back on the left
    edge = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    edge[..., 7] = 16
    assert data.anomalies(edge, "shifted", pixels=2).sum() == 0
    assert torch.equal(data.anomalies(x, "inverted"), 16 - x)
    assert torch.equal(data.anomalies(x, "blank"), torch.zeros_like(x))
    for kind in data.ANOMALIES:
        out = data.anomalies(x.float(), kind)  # whole-number floats are raw digits too
        assert out.dtype == torch.int64 and out.shape == x.shape, kind
        assert out.min() >= 0 and out.max() <= 16, kind


def test_anomalous_noise_is_uniform_on_the_levels_and_follows_the_generator():
    x = torch.zeros(2000, 1, 8, 8, dtype=torch.long)
    noise = data.anomalies(x, "noise", generator=torch.Generator().manual_seed(0))
    again = data.anomalies(x, "noise", generator=torch.Generator().manual_seed(0))
    assert torch.equal(noise, again)
    counts = torch.bincount(noise.flatten(), minlength=17).double()  # 128000 draws
    expected = noise.numel() / 17
    assert len(counts) == 17 and ((counts - expected).abs() < 5 * math.sqrt(expected)).all()


def test_anomalies_refuse_what_they_cannot_make():
    x, _ = data.load_digits("test")
    with pytest.raises(ValueError, match=r"kind must be one of \('noise', 'shifted', 'inverted', "):
        data.anomalies(x, "rolled")
    for bad in (0, 8):
        with pytest.raises(ValueError, match=rf"pixels must be an int in \[1, 7\], got {bad}"):
            data.anomalies(x, "shifted", pixels=bad)
    with pytest.raises(TypeError, match=r"pixels must be an int, got '2' \(str\)"):
        data.anomalies(x, "shifted", pixels="2")
    with pytest.raises(ValueError) as expected:
        data.validate_digits(x / 16.0)
    with pytest.raises(ValueError) as info:
        data.anomalies(x / 16.0, "inverted")
    assert str(info.value) == str(expected.value)  # the foundation's own message


# --------------------------------------------------------------------------- augmentation
@pytest.mark.parametrize("dy", range(-3, 4))
@pytest.mark.parametrize("dx", range(-3, 4))
def test_shift_moves_ink_and_fills_background(dy, dx):
    x = torch.randint(1, 17, (2, 1, 8, 8))
    # independently: pad with zeros by 3 on every side, then read the window that starts
    # dy rows above and dx columns left of the original's position
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (3, 3), (3, 3)))
    want = padded[..., 3 - dy : 11 - dy, 3 - dx : 11 - dx]
    assert np.array_equal(data.shift(x, dy, dx).numpy(), want)
    kept = x[..., max(-dy, 0) : 8 - max(dy, 0), max(-dx, 0) : 8 - max(dx, 0)]
    assert data.shift(x, dy, dx).sum() == kept.sum()  # ink that leaves is dropped, none added


def test_shift_refuses_moves_as_large_as_the_image():
    with pytest.raises(ValueError, match=r"smaller than the image \(8x8\), got \(8, 0\)"):
        data.shift(torch.zeros(1, 1, 8, 8), 8, 0)


def _which_move(item: torch.Tensor, x: torch.Tensor) -> tuple[int, int]:
    """The move (dy, dx) that turns x into item, (0, 0) for none (x's moves are all distinct)."""
    for move in ((0, 0), *data.NEIGHBOURS):
        if torch.equal(data.shift(x, *move), item):
            return move
    raise AssertionError("not a one-pixel move of the image")


def test_random_shifts_draw_the_eight_moves_uniformly_with_probability_p():
    from scipy import stats

    torch.manual_seed(0)
    x = torch.randint(1, 17, (1, 1, 8, 8))  # no zeros: all nine moves give distinct images
    assert len({tuple(data.shift(x, *m).flatten().tolist()) for m in data.NEIGHBOURS}) == 8
    assert sorted(data.NEIGHBOURS) == [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1) if a or b]
    label = torch.tensor([7])
    for p in (0.0, 0.3, 1.0):
        ds = data.RandomShifts(x, label, p=p)
        draws = [ds[0] for _ in range(4000)]
        assert all(y == 7 for _, y in draws)  # labels pass through
        moves = [_which_move(item, x[0]) for item, _ in draws]
        moved = [m for m in moves if m != (0, 0)]
        # the share moved is Binomial(4000, p): within 4 standard deviations
        assert abs(len(moved) - 4000 * p) <= 4 * math.sqrt(4000 * p * (1 - p)) + 1e-9, p
        if p > 0:  # and the moves are uniform over the eight neighbours (chi-square)
            counts = [moved.count(m) for m in data.NEIGHBOURS]
            assert stats.chisquare(counts).pvalue > 1e-4, counts


def test_shifted_loader_is_seeded_and_only_moves_training_images():
    from dgm_edu.runtime import seed_everything

    def epoch() -> tuple[torch.Tensor, torch.Tensor]:
        seed_everything(0)
        dl = data.digits_loader("train", 100, labels=True, shuffle=False, shift_prob=0.5)
        xs, ys = zip(*dl, strict=True)
        return torch.cat(xs), torch.cat(ys)

    (x1, y1), (x2, y2) = epoch(), epoch()
    assert torch.equal(x1, x2) and torch.equal(y1, y2)  # the same seed, the same shifts
    x, y = data.load_digits("train")
    assert torch.equal(y1, y)
    moved = (x1 != x).flatten(1).any(1).float().mean().item()
    assert 0.4 < moved < 0.6  # about half (an image whose move changes nothing is rare)
    for i in range(0, 1000, 97):
        _which_move(x1[i], x[i])  # every image is itself or one of its one-pixel moves


@pytest.mark.parametrize(
    ("p", "error", "message"),
    [
        (-0.1, ValueError, "shift_prob must be a finite number >= 0, got -0.1"),
        (1.5, ValueError, r"shift_prob must be a probability in \[0, 1\], got 1.5"),
        (float("nan"), ValueError, "shift_prob must be a finite number >= 0"),
        ("0.5", TypeError, "shift_prob must be a real number, got '0.5'"),
    ],
)
def test_shift_prob_errors_name_the_expectation(p, error, message):
    with pytest.raises(error, match=message):
        data.digits_loader("train", 32, shift_prob=p)
