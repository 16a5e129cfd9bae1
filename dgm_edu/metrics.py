"""Metrics shared by every chapter.

Nats per image and bits per dimension
-------------------------------------
A model's log-likelihood of one 8x8 image, log p(x), is measured in nats (natural log). The
negative log-likelihood (NLL) per image is −log p(x). Dividing by the number of dimensions D = 64
and by ln 2 gives bits per dimension:

    bpd = −log p(x) / (D ln 2).

The uniform distribution over 17 levels costs 64 ln 17 = 181.3 nats per image, i.e. log2 17 = 4.09
bits per dimension; every model in the book should beat it.

Every function that takes raw digits checks them with :func:`dgm_edu.data.validate_digits`
(the sample-quality scores through the feature network, which checks its input).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from dgm_edu import checks
from dgm_edu.data import IMAGE_SHAPE, LEVELS, NUM_PIXELS, RING_STD, ring_centres, validate_digits
from dgm_edu.runtime import module_device


def nats_to_bpd(nats_per_image: float, dims: int = NUM_PIXELS) -> float:
    """NLL in nats per image -> bits per dimension."""
    return nats_per_image / (dims * math.log(2))


def bpd_to_nats(bpd: float, dims: int = NUM_PIXELS) -> float:
    """Bits per dimension -> NLL in nats per image."""
    return bpd * dims * math.log(2)


@torch.no_grad()
def evaluate_nll(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    batch_size: int = 256,
) -> float:
    """Mean of ``-log_prob(x)`` over ``images``, in nats per image.

    ``model`` is a model with ``log_prob`` (or a function that returns per-image log-probs); it
    checks the images itself (its ``log_prob`` validates its input). The images are moved to the
    model's device batch by batch, and the model runs in eval mode (its mode is restored) and
    without gradients.
    """
    if len(images) == 0:
        raise ValueError("images must hold at least one item to average over, got 0")
    batch_size = checks.integer(batch_size, "batch_size", low=1)
    log_prob = model.log_prob if hasattr(model, "log_prob") else model
    device = module_device(model) if isinstance(model, nn.Module) else torch.device("cpu")
    was_training = getattr(model, "training", False)
    if isinstance(model, nn.Module):
        model.eval()
    total = 0.0
    with torch.no_grad():  # an evaluator: log_prob keeps gradients, the sum needs none
        for i in range(0, len(images), batch_size):
            total += -log_prob(images[i : i + batch_size].to(device)).double().sum().item()
    if isinstance(model, nn.Module):
        model.train(was_training)
    return total / len(images)


def mode_coverage(
    samples: torch.Tensor,
    centres: torch.Tensor | None = None,
    std: float = RING_STD,
    num_std: float = 3.0,
    min_share: float = 0.5,
) -> tuple[int, float]:
    """Count the modes that a 2D sample covers *well*.

    Each sample is assigned to its nearest centre; it is *high quality* when it lies within
    ``num_std`` standard deviations of that centre. With ``N`` samples and ``K`` centres a mode's
    fair share is ``N / K``; the mode is covered when its high-quality samples reach at least
    ``min_share`` of that share. One stray sample does not cover a mode, so a broad blob over the
    ring, or a ring whose samples mostly miss their modes, covers none. Returns
    ``(modes_covered, fraction_high_quality)``; judge a model on both.
    """
    centres = ring_centres() if centres is None else centres
    samples = checks.points(samples, centres.shape[1], "samples")
    if not 0.0 < checks.real(min_share, "min_share", positive=True) <= 1.0:
        raise ValueError(f"min_share must be in (0, 1], got {min_share}")
    d = torch.cdist(samples, centres.float())  # (N, K)
    dist, nearest = d.min(dim=1)
    good = dist <= num_std * std
    counts = torch.bincount(nearest[good], minlength=len(centres))  # (K,)
    need = min_share * len(samples) / len(centres)
    return int((counts >= need).sum()), float(good.float().mean())


def nearest_neighbours(
    queries: torch.Tensor,
    reference: torch.Tensor,
    *,
    shape: tuple[int, int, int] = IMAGE_SHAPE,
    levels: int = LEVELS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distance from each query image to its nearest reference image, and its index.

    Both are raw digits (``shape`` and ``levels``: the 8x8 digits by default), compared as flat
    vectors of their levels. Returns ``(distances (N,), index (N,))``.
    """
    q = validate_digits(queries, shape, levels).flatten(1).float()
    r = validate_digits(reference, shape, levels).flatten(1).float()
    dist, idx = torch.cdist(q, r).min(dim=1)
    return dist, idx


def memorisation(
    samples: torch.Tensor,
    train: torch.Tensor,
    test: torch.Tensor,
    *,
    shape: tuple[int, int, int] = IMAGE_SHAPE,
    levels: int = LEVELS,
) -> dict[str, float]:
    """Are samples copies of training images?

    ratio = median_i min_j ‖s_i − t_j‖ / median_k min_j ‖x_k − t_j‖: the nearest-train distance
    of samples against that of held-out test images (raw levels, Euclidean). A model that copies
    its training set scores ~0; one that generalises like fresh data scores ~1; noisy samples score
    > 1. ``exact_copies`` is the fraction of samples identical to some training image. All three
    sets are raw digits (checked: [0, 1] floats would give a meaningless ratio).
    """
    d_samples, _ = nearest_neighbours(samples, train, shape=shape, levels=levels)  # (N,)
    d_test, _ = nearest_neighbours(test, train, shape=shape, levels=levels)  # (M,)
    return {
        "memorisation_ratio": float(d_samples.median() / d_test.median()),
        "exact_copies": float((d_samples == 0).float().mean()),
    }


# --------------------------------------------------------------------------- anomaly detection
class ROC(NamedTuple):
    """A ROC curve and the area under it (:func:`roc`)."""

    fpr: torch.Tensor  # (T + 1,) share of normal items flagged at each threshold: 0 first, 1 last
    tpr: torch.Tensor  # (T + 1,) share of anomalies caught at the same thresholds
    auc: float  # P(s_anomaly > s_normal) + ½ P(s_anomaly = s_normal)


def _scores(scores: object, name: str) -> torch.Tensor:
    """A non-empty 1D tensor of real scores without NaN (±inf allowed), as float64."""
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"{name} must be a 1D tensor of scores, got {type(scores).__name__}")
    if scores.dtype == torch.bool or scores.is_complex():
        raise TypeError(f"{name} must hold real scores, got dtype {scores.dtype}")
    if scores.dim() != 1 or len(scores) == 0:
        raise ValueError(f"{name} must be a non-empty 1D tensor, got shape {tuple(scores.shape)}")
    if torch.isnan(scores).any():
        raise ValueError(f"{name} contain NaN: expected real scores (±inf allowed)")
    return scores.detach().double().cpu()


def roc(scores_normal: torch.Tensor, scores_anomaly: torch.Tensor) -> ROC:
    """The ROC curve and its area (AUC) of an anomaly score, in the book's one convention.

    The anomalies are the positives (label 1), the normal items the negatives (label 0), and a
    HIGHER score means MORE anomalous: score a likelihood model by −log p(x) (or −ELBO), not by
    log p(x). The AUC is the Mann–Whitney statistic over all (anomaly, normal) pairs,

        AUC = P(s_a > s_n) + ½ P(s_a = s_n),

    ties counting one half: 1 when every anomaly scores above every normal item, 0.5 for a score
    no better than chance, 0 when every anomaly scores below (blank images under a likelihood
    that rates them above every real digit). It is the area under the curve that flags every item
    whose score is ≥ a threshold, for each distinct score from the highest down: ``fpr`` is the
    share of normal items flagged, ``tpr`` the share of anomalies caught, from (0, 0) to (1, 1).
    ``sklearn.metrics.roc_auc_score(labels, scores)``, labels 1 for the anomalies, gives the same.
    """
    normal = _scores(scores_normal, "scores_normal")  # (N,)
    anomaly = _scores(scores_anomaly, "scores_anomaly")  # (M,)
    normal_sorted = normal.sort().values
    below = torch.searchsorted(normal_sorted, anomaly, right=False)  # #{n: s_n < s_a}, (M,)
    not_above = torch.searchsorted(normal_sorted, anomaly, right=True)  # #{n: s_n ≤ s_a}
    # Σ_a [#(s_n < s_a) + ½ #(s_n = s_a)] / (M N), in integers until the division
    auc = (below + not_above).sum().item() / (2 * len(anomaly) * len(normal))
    thresholds = torch.cat([normal, anomaly]).unique().flip(0)  # (T,) distinct, highest first

    def share_flagged(s: torch.Tensor) -> torch.Tensor:  # #{s ≥ threshold} / len(s), (T + 1,)
        flagged = len(s) - torch.searchsorted(s.sort().values, thresholds, right=False)
        return torch.cat([torch.zeros(1, dtype=torch.float64), flagged.double() / len(s)])

    return ROC(share_flagged(normal), share_flagged(anomaly), auc)


COMPLEXITY_METHODS = ("zlib", "adaptive")
ZLIB_OVERHEAD_BYTES = 6  # zlib's 2-byte header and 4-byte Adler-32 trailer around the deflate data


def input_complexity(
    x: torch.Tensor,
    method: str = "zlib",
    *,
    shape: tuple[int, int, int] = IMAGE_SHAPE,
    levels: int = LEVELS,
) -> torch.Tensor:
    """L(x): the length of a lossless code of each raw image, in nats, ``(N,)`` float64.

    The input-complexity correction of Serrà et al. (2020, serra2020input) scores an image by
    −log p(x) − L(x): a general-purpose compressor stands in for a model of "all images", so the
    score asks how much better the model codes x than a generic code does, and a simple image
    (short L) no longer passes for a typical one just because it is simple.

    - ``"zlib"``: the image's pixels as bytes (one byte a level, raster order), compressed by
      ``zlib.compress`` at level 9, minus zlib's fixed wrapper (``ZLIB_OVERHEAD_BYTES``):
      L = 8 ln 2 · (len(zlib.compress(bytes, 9)) − 6). The deflate stream keeps its own block
      headers, a cost that every image pays alike.
    - ``"adaptive"``: an adaptive (Laplace) code of the pixels in raster order, each pixel coded
      with probability (count of its level so far + 1) / (pixels so far + L); its length is the
      closed form L = log((D + L − 1)! / (L − 1)!) − Σ_v log n_v! with n_v the count of level v
      among the D pixels. It codes the histogram, not the shape.
    """
    import zlib

    x = validate_digits(x, shape, levels)  # (N, C, H, W)
    if method == "zlib":
        rows = x.flatten(1).to(torch.uint8).cpu().numpy()  # (N, D), levels < 256
        nbytes = [len(zlib.compress(row.tobytes(), 9)) - ZLIB_OVERHEAD_BYTES for row in rows]
        return torch.tensor(nbytes, dtype=torch.float64) * (8 * math.log(2))
    if method == "adaptive":
        flat = x.flatten(1).cpu()  # (N, D)
        d = flat.shape[1]
        counts = torch.nn.functional.one_hot(flat, levels).sum(1).double()  # (N, L): n_v
        # log (D + L − 1)! − log (L − 1)! − Σ_v log n_v!, with log m! = lgamma(m + 1)
        head = math.lgamma(d + levels) - math.lgamma(levels)
        return head - torch.lgamma(counts + 1).sum(1)
    raise ValueError(f"method must be one of {COMPLEXITY_METHODS}, got {method!r}")


# --------------------------------------------------------------------------- sample quality
# Models without a likelihood (GANs) are judged by comparing their samples with real images in the
# feature space of one fixed network, ``dgm_edu.features.load_feature_net()`` (a digits classifier
# trained on the train split). All the functions below take RAW digits, (N, 1, 8, 8) int levels
# 0..16, and run the feature network on the CPU. ``feature_net`` swaps in another module with
# ``features(x) -> (N, F)`` and ``num_features`` (the tests use an identity to check closed forms).
#
# Every score has a floor: two independent samples of the data are not identical, so even a perfect
# model scores above 0. Report :func:`fid_floor` (train split against test split) beside every FID,
# and compare models at the same sample sizes (1000 samples against the 447 test images, as the
# floor uses the 1000 train images).


class _Features(nn.Module):
    """Adapter for torchmetrics: ``forward`` returns the feature net's ``features`` as float32."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.num_features = int(net.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x).float()  # (N, F)


def _feature_net(feature_net: nn.Module | None) -> nn.Module:
    if feature_net is not None:
        return feature_net
    from dgm_edu.features import load_feature_net  # lazy: nothing loads at import time

    return load_feature_net()


def _batches(x: torch.Tensor, batch_size: int = 1024, what: str = "images"):
    if len(x) == 0:
        raise ValueError(f"{what} must hold at least one image, got 0")
    for i in range(0, len(x), batch_size):
        yield x[i : i + batch_size].cpu()


@torch.no_grad()
def digit_features(images: torch.Tensor, feature_net: nn.Module | None = None) -> torch.Tensor:
    """The feature-net features of raw digits: ``(N, 1, 8, 8)`` -> ``(N, F)`` float32 on the CPU."""
    net = _feature_net(feature_net)
    return torch.cat([net.features(b).float() for b in _batches(images)])


def _need(samples: torch.Tensor, reference: torch.Tensor, at_least: int, what: str) -> None:
    if len(samples) < at_least or len(reference) < at_least:
        raise ValueError(
            f"{what} needs at least {at_least} samples and reference images, got "
            f"{len(samples)} and {len(reference)}"
        )


@torch.no_grad()
def fid(
    samples: torch.Tensor, reference: torch.Tensor, feature_net: nn.Module | None = None
) -> float:
    """Fréchet distance between Gaussians fitted to the features of two image sets (FID).

        FID = ‖μ_s − μ_r‖² + Tr(Σ_s + Σ_r − 2 (Σ_s Σ_r)^½)

    Computed by torchmetrics' ``FrechetInceptionDistance`` with the digits feature network in
    place of Inception. Lower is better; 0 only for identical feature statistics. FID is biased
    upwards at small sample sizes, so compare scores computed with equal sizes.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    _need(samples, reference, 2, "fid")
    metric = FrechetInceptionDistance(feature=_Features(_feature_net(feature_net)))
    for b in _batches(reference):
        metric.update(b, real=True)
    for b in _batches(samples):
        metric.update(b, real=False)
    return max(float(metric.compute()), 0.0)  # round-off can give -1e-6 for identical sets


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``(N, F)`` and ``(M, F)``:

        ‖μ_a − μ_b‖² + Tr(Σ_a) + Tr(Σ_b) − 2 Tr((Σ_a^½ Σ_b Σ_a^½)^½),

    in float64, with unbiased covariances (what :func:`fid` computes on the digit features).
    The last trace is Tr((Σ_a Σ_b)^½), from the eigenvalues of the symmetric Σ_a^½ Σ_b Σ_a^½.
    """
    a, b = features_a.double(), features_b.double()
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(
            "features must be (N, F) and (M, F) with N, M >= 2, got "
            f"{tuple(features_a.shape)} and {tuple(features_b.shape)}"
        )
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)  # (F, F) each
    ev, vecs = torch.linalg.eigh(cov_a)
    root_a = vecs @ torch.diag(ev.clamp(min=0).sqrt()) @ vecs.T  # Σ_a^½
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    mean_term = (a.mean(0) - b.mean(0)).pow(2).sum()
    return max(float(mean_term + cov_a.trace() + cov_b.trace() - 2 * cross), 0.0)


class Interval(NamedTuple):
    """A point estimate with a confidence interval ``[low, high]``."""

    estimate: float
    low: float
    high: float


@torch.no_grad()
def fid_bootstrap(
    samples: torch.Tensor,
    reference: torch.Tensor,
    *,
    resamples: int = 200,
    level: float = 0.9,
    feature_net: nn.Module | None = None,
    seed: int = 0,
) -> Interval:
    """FID with a bootstrap interval over the samples: how much the score moves with the draw.

    The features are computed once; the samples are drawn again with replacement ``resamples``
    times (the reference set stays fixed, as it is shared by every model compared against it)
    and the Fréchet distance recomputed. A resample repeats images, which shifts its FID
    upwards, so the interval is the central ``level`` range of the bootstrap FIDs moved by
    their median's offset from the estimate: it always holds the estimate, and its width is the
    bootstrap's. It narrows as ``1/sqrt(N)``; it does not remove FID's upward bias at small N,
    so compare scores at equal N, and against the floor of real images at that N.
    ``seed`` fixes the resamples without touching the global random state.
    """
    _need(samples, reference, 2, "fid_bootstrap")
    checks.integer(resamples, "resamples", low=2)
    if not 0.0 < checks.real(level, "level", positive=True) < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    net = _feature_net(feature_net)
    fs, fr = digit_features(samples, net), digit_features(reference, net)  # (N, F), (M, F)
    estimate = frechet_distance(fs, fr)
    gen = torch.Generator().manual_seed(seed)
    boot = torch.tensor(
        [
            frechet_distance(fs[torch.randint(len(fs), (len(fs),), generator=gen)], fr)
            for _ in range(resamples)
        ],
        dtype=torch.float64,
    )
    q = torch.quantile(boot, torch.tensor([(1 - level) / 2, 0.5, (1 + level) / 2]).double())
    shift = estimate - float(q[1])  # centre the bootstrap spread on the estimate
    return Interval(estimate, max(float(q[0]) + shift, 0.0), float(q[2]) + shift)


def paired_difference(a, b, level: float = 0.95) -> Interval:
    """Mean of the paired differences a_i − b_i with a Student-t interval at ``level``.

    ``a`` and ``b`` are equally long sequences of scores measured on the same n ≥ 2 units (seeds,
    subsets): only the differences d_i matter, so what the units share cancels. With mean d̄ and
    sample standard deviation s of the d_i, the interval is d̄ ± t_{n−1, (1+level)/2} s / sqrt(n)
    (exact when the differences are normal; the paired t-test's). ``a - b`` is the sign.
    """
    from scipy.stats import t as student_t

    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    if a.ndim != 1 or a.shape != b.shape or len(a) < 2:
        shapes = f"{tuple(a.shape)} and {tuple(b.shape)}"
        raise ValueError(f"a and b must be 1-D with the same n >= 2 scores, got shapes {shapes}")
    d = a - b  # (n,) the paired differences
    if not 0.0 < checks.real(level, "level", positive=True) < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    n, mean = len(d), float(d.mean())
    half = float(student_t.ppf((1 + level) / 2, n - 1)) * float(d.std(unbiased=True)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half)


@torch.no_grad()
def kid(
    samples: torch.Tensor,
    reference: torch.Tensor,
    subset_size: int = 100,
    subsets: int = 100,
    feature_net: nn.Module | None = None,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance: unbiased MMD² with the kernel k(a, b) = (aᵀ b / F + 1)³.

    Averaged over ``subsets`` random subsets of ``subset_size`` from each set (torchmetrics'
    ``KernelInceptionDistance``); returns ``(mean, std)``. Unlike FID it is unbiased, so it can be
    slightly negative when the two sets come from the same distribution. ``seed`` fixes the subsets
    without touching the global random state.
    """
    import warnings

    from torchmetrics.image.kid import KernelInceptionDistance

    _need(samples, reference, subset_size, f"kid with subset_size={subset_size}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics warns that it keeps all features in memory
        metric = KernelInceptionDistance(
            feature=_Features(_feature_net(feature_net)), subsets=subsets, subset_size=subset_size
        )
    for b in _batches(reference):
        metric.update(b, real=True)
    for b in _batches(samples):
        metric.update(b, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def mmd2_polynomial(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Unbiased MMD² of two feature sets ``(N, F)`` and ``(M, F)`` with KID's kernel
    k(a, b) = (aᵀ b / F + 1)³, on the whole sets at once (:func:`kid` averages it over subsets):

        MMD² = Σ_{i≠j} k(a_i, a_j) / (N(N−1)) + Σ_{i≠j} k(b_i, b_j) / (M(M−1)) − 2 mean k(a_i, b_j),

    in float64, in the units of the features (not rescaled). Can be slightly negative.
    """
    a, b = features_a.double(), features_b.double()
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(
            "features must be (N, F) and (M, F) with N, M >= 2, got "
            f"{tuple(features_a.shape)} and {tuple(features_b.shape)}"
        )
    n, m, f = len(a), len(b), a.shape[1]
    k_aa, k_bb, k_ab = ((u @ v.T / f + 1) ** 3 for u, v in ((a, a), (b, b), (a, b)))
    within_a = (k_aa.sum() - k_aa.diagonal().sum()) / (n * (n - 1))  # off-diagonal mean
    within_b = (k_bb.sum() - k_bb.diagonal().sum()) / (m * (m - 1))
    return float(within_a + within_b - 2 * k_ab.mean())


def bootstrap(
    statistic: Callable[..., float],
    resampled: torch.Tensor,
    *fixed: torch.Tensor,
    resamples: int = 1000,
    level: float = 0.95,
    centre: bool = False,
    seed: int = 0,
) -> Interval:
    """``statistic(resampled, *fixed)`` with a bootstrap interval over the rows of ``resampled``.

    The rows of ``resampled`` (per-image values, or features computed once) are drawn again
    with replacement ``resamples`` times, ``fixed`` held as they are, and the statistic
    recomputed; the interval is the central ``level`` range of those values (percentile
    bootstrap). ``centre=True`` moves that range by the estimate's offset from the bootstraps'
    median, as :func:`fid_bootstrap` does, for statistics that repeated rows bias (FID, KID): the
    interval then always holds the estimate. ``seed`` fixes the draws without touching the global
    random state.
    """
    if not isinstance(resampled, torch.Tensor) or resampled.ndim == 0 or len(resampled) < 2:
        raise ValueError("resampled must be a tensor with at least 2 rows to draw from")
    checks.integer(resamples, "resamples", low=2)
    if not 0.0 < checks.real(level, "level", positive=True) < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    estimate = float(statistic(resampled, *fixed))
    gen = torch.Generator().manual_seed(seed)
    n = len(resampled)
    boot = torch.tensor(
        [
            float(statistic(resampled[torch.randint(n, (n,), generator=gen)], *fixed))
            for _ in range(resamples)
        ],
        dtype=torch.float64,
    )  # (resamples,)
    q = torch.quantile(boot, torch.tensor([(1 - level) / 2, 0.5, (1 + level) / 2]).double())
    shift = estimate - float(q[1]) if centre else 0.0
    return Interval(estimate, float(q[0]) + shift, float(q[2]) + shift)


def knn_radii(features: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each point ``(N, F)`` to its k-th nearest *other* point: ``(N,)``."""
    if not 1 <= k < len(features):
        raise ValueError(f"k must be in 1..N-1 = {len(features) - 1}, got {k}")
    d = torch.cdist(features.double(), features.double())  # (N, N), zero diagonal
    return d.kthvalue(k + 1, dim=1).values  # the 1st smallest is the point itself


def in_manifold(queries: torch.Tensor, support: torch.Tensor, k: int) -> torch.Tensor:
    """Which queries ``(M, F)`` lie in the k-NN manifold of ``support`` ``(N, F)``: ``(M,)`` bool.

    The manifold is the union of balls around each support point whose radius is the distance to
    its k-th nearest support neighbour: q ∈ ∪_j B(s_j, r_k(s_j)).
    """
    radii = knn_radii(support, k)  # (N,)
    d = torch.cdist(queries.double(), support.double())  # (M, N)
    return (d <= radii[None, :]).any(dim=1)


@torch.no_grad()
def precision_recall(
    samples: torch.Tensor,
    reference: torch.Tensor,
    k: int = 3,
    feature_net: nn.Module | None = None,
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al., 2019) in feature space.

    Precision: the fraction of samples inside the k-NN manifold of the reference (are samples
    realistic?). Recall: the fraction of reference images inside the k-NN manifold of the samples
    (is all of the data covered?). Mode collapse keeps precision high and drops recall.
    """
    _need(samples, reference, k + 1, f"precision_recall with k={k}")
    net = _feature_net(feature_net)
    fs, fr = digit_features(samples, net), digit_features(reference, net)
    precision = in_manifold(fs, fr, k).double().mean()
    recall = in_manifold(fr, fs, k).double().mean()
    return float(precision), float(recall)


@torch.no_grad()
def class_histogram(samples: torch.Tensor, feature_net: nn.Module | None = None) -> torch.Tensor:
    """Fraction of ``samples`` that the feature net classifies as each digit: ``(10,)``, sums to 1.

    A model that covers every class gives about 0.1 each; a collapsed one piles up on a few.
    """
    net = _feature_net(feature_net)
    labels = torch.cat([net.classify(b) for b in _batches(samples, what="samples")])
    return torch.bincount(labels, minlength=10).float() / len(labels)


def fid_floor(split: str = "train", reference_split: str = "test") -> float:
    """FID of one data split against another (default: the 1000 train images against the 447
    test images): the best score a model's 1000 samples can hope for against the test split."""
    from dgm_edu.data import load_digits

    return fid(load_digits(split)[0], load_digits(reference_split)[0])


def sample_quality(
    samples: torch.Tensor, reference: torch.Tensor, feature_net: nn.Module | None = None
) -> dict[str, float]:
    """FID, KID (mean, std), precision and recall of ``samples`` against ``reference`` at once."""
    kid_mean, kid_std = kid(samples, reference, feature_net=feature_net)
    precision, recall = precision_recall(samples, reference, feature_net=feature_net)
    return {
        "fid": fid(samples, reference, feature_net),
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        "precision": precision,
        "recall": recall,
    }
