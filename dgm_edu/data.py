"""Data: scikit-learn's 8x8 digits on fixed splits, 2D toys, and a reader for MNIST IDX files.

Everything here works offline. The digits ship inside scikit-learn; the toys are generated; the IDX
reader only reads files that the user already has.

The fixed split is the one used by the code of Tomczak's *Deep Generative Modeling*:
train = images 0-999, val = 1000-1349, test = 1350-1796 of ``sklearn.datasets.load_digits``.
"""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

LEVELS = 17  # grey levels 0..16 in the 8x8 digits
IMAGE_SHAPE = (1, 8, 8)
NUM_PIXELS = 64
NUM_CLASSES = 10
SPLITS = {"train": (0, 1000), "val": (1000, 1350), "test": (1350, 1797)}
BINARIZE_THRESHOLD = 8  # the fixed binarization rule: pixel = 1 where level >= 8 (of 0..16)

# The ring of eight Gaussians: centres on a circle of this radius, each with this std.
RING_RADIUS = 2.0
RING_STD = 0.1
TOYS = ("ring8", "moons", "checkerboard", "swiss_roll")


# --------------------------------------------------------------------------- the digits
def load_digits(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(images, labels)`` of one fixed split of the 8x8 digits.

    images: int64 tensor ``(N, 1, 8, 8)`` with levels 0..16; labels: int64 tensor ``(N,)``.
    """
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}: expected one of {sorted(SPLITS)}")
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    lo, hi = SPLITS[split]
    images = torch.from_numpy(bunch.images[lo:hi].astype(np.int64)).unsqueeze(1)  # (N, 1, 8, 8)
    labels = torch.from_numpy(bunch.target[lo:hi].astype(np.int64))  # (N,)
    return images, labels


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Integer levels 0..16 -> floats in [0, 1] (level / 16)."""
    return validate_digits(x).float() / (LEVELS - 1)


def dequantize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform dequantization: y = (x + u) / 17, u ~ U[0, 1), so y lies in [0, 1).

    A continuous density p(y) on [0,1)^64 then bounds the discrete likelihood:
    log P(x) >= E_u[log p((x+u)/17)] - 64 log 17.
    """
    x = validate_digits(x).float()
    u = torch.rand(x.shape, generator=generator, device=x.device)
    return (x + u) / LEVELS


def binarize(x: torch.Tensor) -> torch.Tensor:
    """The fixed binarization rule: 1.0 where the level is >= 8, else 0.0."""
    return (validate_digits(x) >= BINARIZE_THRESHOLD).float()


def validate_digits(x: torch.Tensor) -> torch.Tensor:
    """Check that ``x`` is a batch of raw digits as ``load_digits`` returns them, and return it.

    Raises a ``ValueError`` or ``TypeError`` that says what was expected, instead of a deep torch
    error later on.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"Expected a torch.Tensor of digits, got {type(x).__name__}")
    if x.dim() != 4 or tuple(x.shape[1:]) != IMAGE_SHAPE:
        raise ValueError(f"Expected digits of shape (N, 1, 8, 8), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("Expected a non-empty batch of digits, got N=0")
    if x.is_floating_point():
        if x.device.type != "meta" and torch.isnan(x).any():
            raise ValueError("Digits contain NaN: expected integer levels 0..16")
        if x.device.type != "meta" and (x != x.round()).any():
            raise ValueError(
                "Expected integer levels 0..16 (as load_digits returns), got non-integer floats; "
                "pass the raw digits, not [0,1] floats: each model does its own preprocessing"
            )
    elif x.dtype in (torch.bool, torch.complex64, torch.complex128):
        raise TypeError(f"Expected an integer tensor of levels 0..16, got dtype {x.dtype}")
    if x.device.type != "meta" and (x.min() < 0 or x.max() > LEVELS - 1):
        raise ValueError(
            f"Expected integer levels 0..16, got values in [{x.min().item()}, {x.max().item()}]"
        )
    return x


def digits_loader(
    split: str = "train",
    batch_size: int = 128,
    *,
    labels: bool = False,
    shuffle: bool | None = None,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader over one split; yields ``(x,)`` or ``(x, y)`` tuples of raw digits.

    Shuffling defaults to on for the train split only.
    """
    images, ys = load_digits(split)
    tensors = (images, ys) if labels else (images,)
    return make_loader(
        *tensors,
        batch_size=batch_size,
        shuffle=(split == "train") if shuffle is None else shuffle,
        drop_last=drop_last,
    )


def make_loader(
    *tensors: torch.Tensor, batch_size: int = 128, shuffle: bool = True, drop_last: bool = False
) -> DataLoader:
    """A DataLoader over tensors that share their first dimension; yields tuples."""
    if not tensors:
        raise ValueError("make_loader needs at least one tensor")
    if len(tensors[0]) == 0:
        raise ValueError("Cannot make a loader over an empty data set (N=0)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return DataLoader(
        TensorDataset(*tensors), batch_size=batch_size, shuffle=shuffle, drop_last=drop_last
    )


# --------------------------------------------------------------------------- 2D toys
def toy_2d(name: str, n: int = 2000, *, seed: int = 0) -> torch.Tensor:
    """Sample ``n`` points ``(n, 2)`` from a procedural 2D toy distribution.

    ``name`` is one of ``ring8`` (eight Gaussians on a ring), ``moons``, ``checkerboard``,
    ``swiss_roll``. The same seed gives the same points.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    if name == "ring8":
        k = rng.integers(0, 8, size=n)
        x = ring_centres().numpy()[k] + RING_STD * rng.standard_normal((n, 2))
    elif name == "moons":
        from sklearn.datasets import make_moons

        x, _ = make_moons(n_samples=n, noise=0.05, random_state=seed)
        x = (x - np.array([0.5, 0.25])) * 1.5  # centre and scale to about [-2, 2]
    elif name == "checkerboard":
        # four of the eight squares in a 4x4 board on [-2, 2]^2, alternate colours
        u = rng.uniform(-2, 2, size=n)
        v = rng.uniform(0, 1, size=n) + rng.integers(0, 2, size=n) * 2 - 2  # [-2,-1) or [0,1)
        v = v + (np.floor(u) % 2)  # shift every other column by one square
        x = np.stack([u, v], axis=1)
    elif name == "swiss_roll":
        from sklearn.datasets import make_swiss_roll

        x3, _ = make_swiss_roll(n_samples=n, noise=0.5, random_state=seed)
        x = x3[:, [0, 2]] / 5.0
    else:
        raise ValueError(f"Unknown toy {name!r}: expected one of {TOYS}")
    return torch.as_tensor(x, dtype=torch.float32)


def ring_centres(num_modes: int = 8, radius: float = RING_RADIUS) -> torch.Tensor:
    """The centres ``(num_modes, 2)`` of the ring of Gaussians."""
    angles = torch.arange(num_modes, dtype=torch.float64) * (2 * math.pi / num_modes)
    return (radius * torch.stack([angles.cos(), angles.sin()], dim=1)).float()


# --------------------------------------------------------------------------- IDX files (MNIST)
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), optionally gzip-compressed, into a numpy array.

    Layout: two zero bytes, a dtype code, the number of dimensions, then each dimension as a
    big-endian int32, then the data in C order.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise ValueError(f"{path}: corrupt gzip stream ({err})") from err
    if len(raw) < 4:
        raise ValueError(f"{path}: truncated IDX file: {len(raw)} bytes, expected a 4-byte header")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(
            f"{path}: bad IDX magic number {raw[:4].hex()}: expected 0000 followed by a dtype code "
            f"in {[hex(c) for c in _IDX_DTYPES]} and the number of dimensions"
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header: expected {ndim} dimensions")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"{path}: truncated or oversized IDX file: {len(raw)} bytes, expected {expected} "
            f"for shape {dims} of {dtype.name}"
        )
    return (
        np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))
    )


def load_mnist_idx(
    images_path: str | Path, labels_path: str | Path, *, levels: int | None = LEVELS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load MNIST-format images and labels that the user already has on disk.

    Returns images ``(N, 1, H, W)`` int64 and labels ``(N,)`` int64. With ``levels`` set, the
    0..255 intensities are quantised to ``levels`` grey levels (17 by default, like the digits),
    so every model in dgm_edu can take them; ``levels=None`` keeps 0..255.
    """
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise ValueError(f"{images_path}: expected a 3-d image array (N, H, W), got {images.shape}")
    if labels.ndim != 1:
        raise ValueError(f"{labels_path}: expected a 1-d label array (N,), got {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels"
        )
    x = torch.from_numpy(images.astype(np.int64)).unsqueeze(1)
    if levels is not None:
        x = torch.div(x * levels, 256, rounding_mode="floor")  # 0..255 -> 0..levels-1
    return x, torch.from_numpy(labels.astype(np.int64))


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (used by the tests, and handy for making small fixtures)."""
    codes = {v.newbyteorder("="): k for k, v in _IDX_DTYPES.items()}
    array = np.asarray(array)
    if array.dtype not in codes:
        raise ValueError(f"Cannot write dtype {array.dtype} as IDX: expected one of {list(codes)}")
    code = codes[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    Path(path).write_bytes(header + array.astype(_IDX_DTYPES[code]).tobytes())
