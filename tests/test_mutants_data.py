"""Tests that catch the mutants of ``dgm_edu/data.py`` that its own tests let through
(``make mutation``): exact messages of every refusal, the documented defaults, the toys against
their definitions (sklearn's generators, the ring's closed form, the checkerboard's parity),
and the IDX format's edge cases (a 4-byte file, an empty array, three dimensions, gzip)."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from sklearn.datasets import make_moons, make_swiss_roll

from dgm_edu.data import (
    binarize,
    dequantize,
    digits_loader,
    load_digits,
    load_mnist_idx,
    make_loader,
    read_idx,
    ring_centres,
    square_image_shape,
    toy_2d,
    validate_digits,
    write_idx,
)

X, Y = load_digits("train")


def _message(err: type[Exception], call, *args, **kwargs) -> str:
    with pytest.raises(err) as info:
        call(*args, **kwargs)
    return str(info.value)


# --------------------------------------------------------------------------- the digits
def test_load_digits_defaults_to_the_train_split():
    x, y = load_digits()
    assert torch.equal(x, X) and torch.equal(y, Y) and len(x) == 1000


@pytest.mark.parametrize(
    ("bad", "err", "message"),
    [
        (X[:2].numpy(), TypeError, "Expected a torch.Tensor of digits, got ndarray"),
        (None, TypeError, "Expected a torch.Tensor of digits, got NoneType"),
        (X[:2, :, :, :7], ValueError, "Expected digits of shape (N, 1, 8, 8), got (2, 1, 8, 7)"),
        (X[:2, 0], ValueError, "Expected digits of shape (N, 1, 8, 8), got (2, 8, 8)"),
        (X[:0], ValueError, "Expected a non-empty batch of digits, got N=0"),
        (X[:2] > 3, TypeError, "Expected an integer tensor of levels 0..16, got dtype torch.bool"),
        (X[:2] / 16, ValueError, "Expected integer levels 0..16 (as load_digits returns), got "
         "non-integer floats; pass the raw digits, not [0,1] floats: each model does its own "
         "preprocessing"),
        (X[:2] + 1, ValueError, "Expected integer levels 0..16, got values in [1, 17]"),
    ],
)  # fmt: skip
def test_validate_digits_messages(bad, err, message):
    assert _message(err, validate_digits, bad) == message


def test_validate_digits_of_another_size_and_on_the_meta_device():
    big = torch.full((2, 1, 28, 28), 255)
    assert torch.equal(validate_digits(big, (1, 28, 28), 256), big)
    assert _message(ValueError, validate_digits, big, (1, 28, 28), 17) == (
        "Expected integer levels 0..16, got values in [255, 255]"
    )
    meta = torch.zeros(2, 1, 8, 8, device="meta")  # no values to check: the dtype is fixed
    out = validate_digits(meta)
    assert out.device.type == "meta" and out.dtype == torch.long


def test_binarize_takes_the_shape_it_is_given():
    x = torch.zeros(2, 1, 28, 28, dtype=torch.long)
    x[:, :, :14] = 8
    b = binarize(x, (1, 28, 28))
    assert b.shape == (2, 1, 28, 28) and b.sum() == 2 * 14 * 28


def test_dequantize_on_the_meta_device():
    y = dequantize(torch.zeros(2, 1, 8, 8, dtype=torch.long, device="meta"))
    assert y.device.type == "meta" and y.dtype == torch.float32


def test_digits_loader_defaults():
    train = digits_loader()  # the train split, batches of 128, shuffled, images only
    batch = next(iter(train))
    assert len(batch) == 1 and batch[0].shape == (128, 1, 8, 8)
    assert sum(len(b[0]) for b in train) == 1000
    torch.manual_seed(0)
    assert not torch.equal(next(iter(train))[0], X[:128])
    val = next(iter(digits_loader("val")))[0]
    assert torch.equal(val, load_digits("val")[0][:128])  # val is not shuffled
    x, y = next(iter(digits_loader("val", 5, labels=True)))
    assert torch.equal(y, load_digits("val")[1][:5]) and x.shape == (5, 1, 8, 8)
    in_order = next(iter(digits_loader("train", 7, shuffle=False)))[0]
    assert torch.equal(in_order, X[:7])
    assert [len(b[0]) for b in digits_loader("val", 100, drop_last=True)] == [100] * 3


def test_make_loader_defaults_and_messages():
    t = torch.arange(300)
    loader = make_loader(t)
    assert [len(b[0]) for b in loader] == [128, 128, 44]  # batch 128, last batch kept
    torch.manual_seed(0)
    assert not torch.equal(next(iter(loader))[0], t[:128])  # shuffled by default
    assert torch.equal(next(iter(make_loader(t, shuffle=False)))[0], t[:128])
    assert [len(b[0]) for b in make_loader(t, batch_size=1, shuffle=False)][:2] == [1, 1]
    assert [len(b[0]) for b in make_loader(t, batch_size=128, drop_last=True)] == [128, 128]
    assert _message(ValueError, make_loader) == "make_loader needs at least one tensor"
    assert _message(ValueError, make_loader, t[:0]) == (
        "Cannot make a loader over an empty data set (N=0)"
    )
    assert _message(ValueError, make_loader, t, batch_size=0) == "batch_size must be >= 1, got 0"


@pytest.mark.parametrize(("pixels", "side"), [(1, 1), (64, 8), (784, 28), (4, 2)])
def test_square_image_shape(pixels, side):
    assert square_image_shape(pixels) == (1, side, side)


@pytest.mark.parametrize("pixels", [0, -4, 63, 2, 785])
def test_square_image_shape_refuses_non_squares(pixels):
    assert _message(ValueError, square_image_shape, pixels) == (
        "num_pixels must be the pixel count of square images (64 for 8x8, 784 for 28x28), "
        f"got {pixels}"
    )


# --------------------------------------------------------------------------- the toys
def test_ring_centres_closed_form():
    k = np.arange(8)
    expected = 2.0 * np.stack([np.cos(2 * np.pi * k / 8), np.sin(2 * np.pi * k / 8)], 1)
    got = ring_centres()
    assert got.dtype == torch.float32  # computed in float64, then rounded once
    assert np.array_equal(got.numpy(), expected.astype(np.float32))
    k5 = np.arange(5)
    five = 3.0 * np.stack([np.cos(2 * np.pi * k5 / 5), np.sin(2 * np.pi * k5 / 5)], 1)
    np.testing.assert_allclose(ring_centres(5, 3.0).numpy(), five, atol=1e-6)


def test_ring8_uses_all_eight_modes_with_their_spread():
    x = toy_2d("ring8", 8000, seed=3)
    d = torch.cdist(x, ring_centres())  # (n, 8)
    nearest = d.argmin(1)
    shares = torch.bincount(nearest, minlength=8).float() / len(x)
    assert ((shares - 1 / 8).abs() < 0.02).all(), shares
    offsets = x - ring_centres()[nearest]
    assert ((offsets.std(0) / 0.1 - 1).abs() < 0.05).all()  # RING_STD = 0.1 per coordinate


def test_toy_defaults_and_one_point():
    assert torch.equal(toy_2d("ring8"), toy_2d("ring8", 2000, seed=0))
    assert toy_2d("moons", 1).shape == (1, 2)
    assert _message(ValueError, toy_2d, "ring8", 0) == "n must be >= 1, got 0"
    assert _message(ValueError, toy_2d, "spiral") == (
        "Unknown toy 'spiral': expected one of ('ring8', 'moons', 'checkerboard', 'swiss_roll')"
    )


def test_moons_and_swiss_roll_are_sklearns_centred_and_scaled():
    m, _ = make_moons(n_samples=500, noise=0.05, random_state=4)
    expected = (m - np.array([0.5, 0.25])) * 1.5
    np.testing.assert_allclose(toy_2d("moons", 500, seed=4).numpy(), expected, atol=1e-6)
    s, _ = make_swiss_roll(n_samples=500, noise=0.5, random_state=4)
    expected = s[:, [0, 2]] / 5.0
    np.testing.assert_allclose(toy_2d("swiss_roll", 500, seed=4).numpy(), expected, atol=1e-6)


def test_checkerboard_fills_the_eight_black_squares_evenly():
    x = toy_2d("checkerboard", 16000, seed=5).numpy()
    assert (x >= -2).all() and (x < 2).all()
    cols, rows = np.floor(x[:, 0]), np.floor(x[:, 1])
    assert ((cols + rows) % 2 == 0).all()  # black squares only
    squares, counts = np.unique(np.stack([cols, rows], 1), axis=0, return_counts=True)
    assert len(squares) == 8
    assert (np.abs(counts / len(x) - 1 / 8) < 0.015).all(), counts
    within = x - np.floor(x)  # uniform inside each square
    assert (np.abs(within.mean(0) - 0.5) < 0.01).all()


# --------------------------------------------------------------------------- IDX files
def test_idx_files_of_three_dimensions_and_dtypes_round_trip(tmp_path):
    for array in (
        np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
        np.arange(-6, 6, dtype=np.int16).reshape(3, 2, 2),
        np.linspace(-1, 1, 10, dtype=np.float32).reshape(5, 2),
        np.zeros((0,), dtype=np.int32),
        np.zeros((2**24 + 1, 0), dtype=np.uint8),  # dimensions that need all four bytes
        np.zeros((1, 0, 70_000), dtype=np.uint8),
    ):
        write_idx(tmp_path / "a.idx", array)
        back = read_idx(tmp_path / "a.idx")
        assert back.dtype == array.dtype and back.shape == array.shape
        np.testing.assert_array_equal(back, array)


def test_idx_refusals_name_the_file(tmp_path):
    p = tmp_path / "f.idx"
    p.write_bytes(bytes([0, 0, 8, 0]))  # 4 bytes: a header for one item that is missing
    assert _message(ValueError, read_idx, p) == (
        f"{p}: truncated or oversized IDX file: 4 bytes, expected 5 for shape () of uint8"
    )
    for magic in ([1, 0, 8, 1], [0, 1, 8, 1], [0, 0, 7, 1]):
        p.write_bytes(bytes(magic) + bytes(8))
        assert _message(ValueError, read_idx, p) == (
            f"{p}: bad IDX magic number {bytes(magic).hex()}: expected 0000 followed by a dtype "
            "code in ['0x8', '0x9', '0xb', '0xc', '0xd', '0xe'] and the number of dimensions"
        )
    p.write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 2]))  # three dimensions announced, one given
    assert _message(ValueError, read_idx, p) == f"{p}: truncated IDX header: expected 3 dimensions"
    p.write_bytes(b"\x1f\x8b" + b"not gzip")
    assert _message(ValueError, read_idx, p).startswith(f"{p}: corrupt gzip stream (")
    p.write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 2, 5, 6])))
    assert read_idx(p).tolist() == [5, 6]
    assert _message(ValueError, write_idx, p, np.zeros(2, dtype=np.complex64)).startswith(
        "Cannot write dtype complex64 as IDX: expected one of [dtype('uint8'), "
    )


def test_mnist_loader_dtypes_levels_and_messages(tmp_path):
    images = np.array([[[0, 255], [16, 128]]] * 3, dtype=np.uint8)  # (3, 2, 2)
    labels = np.array([1, 7, 9], dtype=np.uint8)
    write_idx(tmp_path / "i.idx", images)
    write_idx(tmp_path / "l.idx", labels)
    x, y = load_mnist_idx(tmp_path / "i.idx", tmp_path / "l.idx")
    assert x.dtype == torch.long and y.dtype == torch.long and y.tolist() == [1, 7, 9]
    assert x[0, 0].tolist() == [[0, 16], [1, 8]]  # floor(v * 17 / 256)
    raw, _ = load_mnist_idx(tmp_path / "i.idx", tmp_path / "l.idx", levels=None)
    assert raw[0, 0].tolist() == [[0, 255], [16, 128]]
    write_idx(tmp_path / "flat.idx", images.reshape(3, 4))
    assert _message(ValueError, load_mnist_idx, tmp_path / "flat.idx", tmp_path / "l.idx") == (
        f"{tmp_path / 'flat.idx'}: expected a 3-d image array (N, H, W), got (3, 4)"
    )
    write_idx(tmp_path / "l2.idx", labels.reshape(3, 1))
    assert _message(ValueError, load_mnist_idx, tmp_path / "i.idx", tmp_path / "l2.idx") == (
        f"{tmp_path / 'l2.idx'}: expected a 1-d label array (N,), got (3, 1)"
    )
    write_idx(tmp_path / "l3.idx", labels[:2])
    assert _message(ValueError, load_mnist_idx, tmp_path / "i.idx", tmp_path / "l3.idx") == (
        f"{tmp_path / 'i.idx'} has 3 images but {tmp_path / 'l3.idx'} has 2 labels"
    )
