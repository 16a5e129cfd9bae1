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
