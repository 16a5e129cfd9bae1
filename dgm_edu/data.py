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
from torch.utils.data import DataLoader, Dataset, TensorDataset

from dgm_edu import checks

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


# --------------------------------------------------------------------------- levels <-> model space
# Two ways out of the integer levels 0..16, and for each the one way back that inverts it:
#
#   grid values       to_unit(x) = x / 16 in {0, 1/16, ..., 1},   to_signed(x) = 2 x / 16 - 1
#                     back: from_unit(y) = round(16 y), from_signed(v) = from_unit((v + 1) / 2)
#                     (the nearest level: the grid value of level k maps back to k)
#   dequantized       dequantize(x) = (x + u) / 17 in [0, 1), u ~ U[0, 1)^D
#                     back: quantize(y) = floor(17 y)
#                     (the bin: every point of [k/17, (k+1)/17) maps back to k)
#
# Values outside the range are clamped to the nearest level. None of these validate: a model
# validates its raw input once, with validate_digits, where it enters.


def to_unit(x: torch.Tensor, levels: int = LEVELS) -> torch.Tensor:
    """Integer levels 0..L-1 -> floats on the grid {0, 1/(L-1), ..., 1} of [0, 1]."""
    return x.float() / (levels - 1)


def to_signed(x: torch.Tensor, levels: int = LEVELS) -> torch.Tensor:
    """Integer levels 0..L-1 -> floats on the grid {-1, ..., 1} of [-1, 1]: 2 x / (L-1) - 1."""
    return x.float() / (levels - 1) * 2 - 1


def from_unit(y: torch.Tensor, levels: int = LEVELS) -> torch.Tensor:
    """Floats in [0, 1] -> the nearest level round((L-1) y), clamped to 0..L-1, int64."""
    return (y.float() * (levels - 1)).round().clamp(0, levels - 1).long()


def from_signed(v: torch.Tensor, levels: int = LEVELS) -> torch.Tensor:
    """Floats in [-1, 1] -> the nearest level, int64: the inverse of :func:`to_signed`."""
    return from_unit((v.float() + 1) / 2, levels)


def dequantization_noise(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """u ~ U[0, 1), one value per pixel of ``x``, float32 on ``x``'s device."""
    return torch.rand(x.shape, generator=generator, device=x.device)


def dequantize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform dequantization: y = (x + u) / 17, u ~ U[0, 1), so y lies in [0, 1).

    A continuous density p(y) on [0,1)^64 then bounds the discrete likelihood:
    log P(x) ≥ E_u[log p((x+u)/17)] − 64 log 17.
    """
    x = x.float()
    y = (x + dequantization_noise(x, generator)) / LEVELS
    # u = 1 - 2^-24 (the largest float32 below 1) rounds (x + u)/17 up to (x + 1)/17: keep y
    # inside its bin, below its right edge, so that y < 1 and quantize(y) == x always hold
    return torch.minimum(y, torch.nextafter((x + 1) / LEVELS, torch.zeros(())))


def quantize(y: torch.Tensor, levels: int = LEVELS) -> torch.Tensor:
    """Floats in [0, 1) -> the bin floor(L y) they fall in, clamped to 0..L-1, int64: the
    inverse of :func:`dequantize`."""
    return (y.float() * levels).floor().clamp(0, levels - 1).long()


def binarize(x: torch.Tensor, shape: tuple[int, int, int] = IMAGE_SHAPE) -> torch.Tensor:
    """The fixed binarization rule: 1.0 where the level (of 0..16) is >= 8, else 0.0.

    ``shape``: the image shape the digits are checked against (MNIST at 17 levels: (1, 28, 28)).
    """
    return (validate_digits(x, shape) >= BINARIZE_THRESHOLD).float()


def square_image_shape(num_pixels: int) -> tuple[int, int, int]:
    """The shape ``(1, s, s)`` of square one-channel images of ``num_pixels`` = s² pixels
    (64 -> (1, 8, 8), 784 -> (1, 28, 28)): how a model configured by its pixel count finds the
    shape of the digits it takes."""
    side = math.isqrt(num_pixels) if num_pixels > 0 else 0
    if side * side != num_pixels or side == 0:
        raise ValueError(
            f"num_pixels must be the pixel count of square images (64 for 8x8, 784 for 28x28), "
            f"got {num_pixels}"
        )
    return (1, side, side)


def validate_digits(
    x: torch.Tensor, shape: tuple[int, int, int] = IMAGE_SHAPE, levels: int = LEVELS
) -> torch.Tensor:
    """Check that ``x`` is a batch of raw digits as ``load_digits`` gives them; return it as int64.

    ``shape`` and ``levels`` default to the 8x8 digits, (1, 8, 8) and 17 levels; a model configured
    for MNIST passes its own, e.g. ``(1, 28, 28)``. Whole-number floats and other integer dtypes
    are accepted and converted; anything else raises a ``ValueError`` or ``TypeError`` that says
    what was expected, instead of a deep torch error later on.
    """
    top = levels - 1
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"Expected a torch.Tensor of digits, got {type(x).__name__}")
    if x.dim() != 4 or tuple(x.shape[1:]) != tuple(shape):
        want = "(N, " + ", ".join(str(d) for d in shape) + ")"
        raise ValueError(f"Expected digits of shape {want}, got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("Expected a non-empty batch of digits, got N=0")
    if x.dtype in (torch.bool, torch.complex64, torch.complex128):
        raise TypeError(f"Expected an integer tensor of levels 0..{top}, got dtype {x.dtype}")
    if x.device.type == "meta":
        return x.long()
    if x.is_floating_point():
        if not torch.isfinite(x).all():
            raise ValueError(f"Digits contain NaN or inf: expected integer levels 0..{top}")
        if (x != x.round()).any():
            raise ValueError(
                f"Expected integer levels 0..{top} (as load_digits returns), got non-integer "
                "floats; pass the raw digits, not [0,1] floats: each model does its own "
                "preprocessing"
            )
    if x.min() < 0 or x.max() > top:
        raise ValueError(
            f"Expected integer levels 0..{top}, got values in [{x.min().item()}, {x.max().item()}]"
        )
    return x.long()


def digits_loader(
    split: str = "train",
    batch_size: int = 128,
    *,
    labels: bool = False,
    shuffle: bool | None = None,
    drop_last: bool = False,
    shift_prob: float = 0.0,
) -> DataLoader:
    """A DataLoader over one split; yields ``(x,)`` or ``(x, y)`` tuples of raw digits.

    Shuffling defaults to on for the train split only. ``shift_prob`` > 0 augments: every time an
    image is read it is moved by one pixel with that probability (:class:`RandomShifts`).
    """
    images, ys = load_digits(split)
    tensors = (images, ys) if labels else (images,)
    return make_loader(
        *tensors,
        batch_size=batch_size,
        shuffle=(split == "train") if shuffle is None else shuffle,
        drop_last=drop_last,
        shift_prob=shift_prob,
    )


def make_loader(
    *tensors: torch.Tensor,
    batch_size: int = 128,
    shuffle: bool = True,
    drop_last: bool = False,
    shift_prob: float = 0.0,
) -> DataLoader:
    """A DataLoader over tensors that share their first dimension; yields tuples.

    ``shift_prob`` > 0: the first tensor holds images, each moved by one pixel with that
    probability every time it is read (:class:`RandomShifts`); the others pass through.
    """
    if not tensors:
        raise ValueError("make_loader needs at least one tensor")
    if len(tensors[0]) == 0:
        raise ValueError("Cannot make a loader over an empty data set (N=0)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dataset = TensorDataset(*tensors) if shift_prob == 0.0 else RandomShifts(*tensors, p=shift_prob)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last)


# --------------------------------------------------------------------------- augmentation
# the eight one-pixel moves (rows down, columns right) that RandomShifts draws from
NEIGHBOURS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx)


def shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Images ``(..., H, W)`` moved ``dy`` rows down and ``dx`` columns right (negative: up, left).

    The pixels that enter are background (0) and the ink that leaves is dropped. Not a roll:
    ``torch.roll`` would carry the ink of one edge round to the other.
    """
    h, w = x.shape[-2:]
    if abs(dy) >= h or abs(dx) >= w:
        raise ValueError(f"a shift must be smaller than the image ({h}x{w}), got ({dy}, {dx})")
    out = torch.zeros_like(x)
    rows, cols = slice(max(dy, 0), h + min(dy, 0)), slice(max(dx, 0), w + min(dx, 0))
    out[..., rows, cols] = x[..., max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)]
    return out


class RandomShifts(Dataset):
    """Training-time augmentation: item i is image i moved by one pixel with probability ``p``.

    The move is one of the 8 :data:`NEIGHBOURS`, uniformly, drawn afresh each time the item is
    read (from torch's global generator, which ``fit`` seeds); the other tensors (labels) pass
    through. The model still sees the unshifted image with probability 1 − p, and it is scored on
    unshifted images: the shifts are a regulariser, not a change of what is modelled.
    """

    def __init__(self, images: torch.Tensor, *others: torch.Tensor, p: float = 0.5) -> None:
        self.p = checks.real(p, "shift_prob", nonnegative=True)
        if self.p > 1:
            raise ValueError(f"shift_prob must be a probability in [0, 1], got {p}")
        if len(images) == 0:
            raise ValueError("Cannot make a loader over an empty data set (N=0)")
        if any(len(t) != len(images) for t in others):
            raise ValueError("RandomShifts: every tensor must have one row per image")
        self.images, self.others = images, others

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        x = self.images[i]  # (1, H, W)
        if torch.rand(()) < self.p:
            x = shift(x, *NEIGHBOURS[int(torch.randint(len(NEIGHBOURS), ()))])
        return (x, *(t[i] for t in self.others))


# --------------------------------------------------------------------------- anomalies
ANOMALIES = ("noise", "shifted", "inverted", "blank")


def anomalies(
    x: torch.Tensor,
    kind: str,
    *,
    pixels: int = 2,
    shape: tuple[int, int, int] = IMAGE_SHAPE,
    levels: int = LEVELS,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One anomalous image for each raw digit of ``x``: int64 levels, the shape of ``x``.

    The book's one set of anomalies (chapters 3 and 8 score them with
    :func:`dgm_edu.metrics.roc`, where the anomalies are the positives):

    - ``"noise"``: every pixel uniform on the levels 0..L−1 (drawn with ``generator``);
    - ``"shifted"``: each digit moved ``pixels`` columns to the right, the columns that enter on
      the left filled with background (0). Not a roll: ``torch.roll`` would carry the ink of the
      right edge round to the left edge, a second, artificial anomaly;
    - ``"inverted"``: L − 1 − x, ink and background swapped;
    - ``"blank"``: all background (0): the simplest image, which likelihoods tend to rate highly.
    """
    x = validate_digits(x, shape, levels)  # (N, C, H, W)
    if kind == "noise":
        return torch.randint(0, levels, x.shape, generator=generator, device=x.device)
    if kind == "shifted":
        pixels = checks.integer(pixels, "pixels", low=1, high=x.shape[-1] - 1)
        return shift(x, 0, pixels)
    if kind == "inverted":
        return (levels - 1) - x
    if kind == "blank":
        return torch.zeros_like(x)
    raise ValueError(f"kind must be one of {ANOMALIES}, got {kind!r}")


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


def render_points(points: torch.Tensor, *, side: int = 8, limit: float = 3.0) -> torch.Tensor:
    """Point clouds ``(N, P, 2)`` -> images ``(N, 1, side, side)`` int64 levels 0..16.

    Each image is the 2D histogram of its P points on the square [−limit, limit]² cut into
    side × side equal cells (row = cell of the first coordinate, column = cell of the second;
    points outside the square are dropped), scaled so that its fullest cell is level 16:
    level = round(16 · count / max count). A cloud with no point inside stays blank.
    """
    if not isinstance(points, torch.Tensor) or points.dim() != 3 or points.shape[-1] != 2:
        got = tuple(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__
        raise ValueError(f"points must be a tensor (N, P, 2) of 2D point clouds, got {got}")
    side = checks.integer(side, "side", low=1)
    limit = checks.real(limit, "limit", positive=True)
    bounds = [-limit, limit, -limit, limit]
    h = torch.stack(
        [torch.histogramdd(p.float().cpu(), bins=[side, side], range=bounds).hist for p in points]
    )  # (N, side, side) counts
    top = h.amax((1, 2), keepdim=True).clamp(min=1)  # (N, 1, 1): an empty cloud stays 0
    return (16 * h / top).round().long().unsqueeze(1)  # (N, 1, side, side)


def render_toys(n: int = 447, per_image: int = 60, *, seed: int = 0) -> torch.Tensor:
    """The 2D toys as 8x8 images ``(n, 1, 8, 8)`` int64: an anomaly set for digit models.

    Image i is :func:`render_points` of ``per_image`` points of one toy, the toys of ``TOYS``
    in turn, in blocks of ceil(n / 4) images (the toy ``TOYS[j]`` drawn with seed ``seed + j``).
    Chapter 10 scores them as outliers: shapes that are not digits, at the digits' levels.
    """
    n = checks.integer(n, "n", low=1)
    per_image = checks.integer(per_image, "per_image", low=1)
    block = -(-n // len(TOYS))  # ceil(n / 4) images of each toy
    images = [
        render_points(toy_2d(name, per_image * block, seed=seed + j).view(block, per_image, 2))
        for j, name in enumerate(TOYS)
    ]
    return torch.cat(images)[:n]


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
    the grey levels of the 8x8 digits; ``levels=None`` keeps 0..255. Which models take 28x28
    images: the PixelCNNs (``PixelCNNConfig(height=28, width=28)``); the other families are built
    for the 8x8 digits and refuse other sizes with a message that names the expected shape.
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
