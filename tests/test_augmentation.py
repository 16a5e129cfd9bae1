"""Chapter 10's augmentation benchmark (benchmarks/augmentation.py): the paired interval of
:func:`dgm_edu.metrics.paired_difference` against scipy's paired t-test and a hand computation,
the committed results (paired seeds, both settings, every family, a summary that the per-seed
accuracies reproduce), and a tiny run of the script's core function."""

import json
import math
from pathlib import Path

import bench_scripts
import numpy as np
import pytest
import torch
from scipy import stats

from dgm_edu import metrics
from dgm_edu.data import load_digits

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
RESULT = BENCH / "results" / "augmentation.json"
FAMILIES = ("vae", "gan", "pixelcnn", "diffusion")
ARMS = {f"{s}/{f}" for s in ("few", "all") for f in FAMILIES}


def _script():
    return bench_scripts.load("augmentation")


# --------------------------------------------------------------------------- the interval
@pytest.mark.parametrize("level", [0.95, 0.9, 0.5])
def test_paired_difference_matches_scipy_paired_t_test(level):
    """Same interval as scipy.stats.ttest_rel(a, b).confidence_interval(level)."""
    g = np.random.default_rng(0)
    b = g.uniform(0.7, 0.9, size=12)
    a = b + g.normal(0.01, 0.02, size=12)
    got = metrics.paired_difference(a.tolist(), b.tolist(), level=level)
    ref = stats.ttest_rel(a, b).confidence_interval(level)
    assert got.estimate == pytest.approx(float(np.mean(a - b)), abs=1e-12)
    assert (got.low, got.high) == pytest.approx((ref.low, ref.high), abs=1e-12)


def test_paired_difference_by_hand():
    """d = (1, 2, 3, 4): mean 2.5, s = sqrt(5/3), t_{3, 0.975} = 3.182446305 (a t table)."""
    got = metrics.paired_difference([2.0, 4.0, 6.0, 8.0], [1.0, 2.0, 3.0, 4.0])
    half = 3.182446305 * math.sqrt(5 / 3) / 2
    assert got == pytest.approx((2.5, 2.5 - half, 2.5 + half), abs=1e-8)
    flipped = metrics.paired_difference([1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0])
    assert flipped == pytest.approx((-2.5, -2.5 - half, -2.5 + half), abs=1e-8)  # a − b


def test_paired_difference_only_the_differences_matter():
    """Shifting every pair by its own amount (what a seed shares) leaves the interval alone,
    while an unpaired interval of the same numbers would be far wider."""
    a, b = [0.80, 0.82, 0.79, 0.85], [0.78, 0.81, 0.78, 0.82]
    shift = [0.1, -0.2, 0.05, 0.3]
    moved = metrics.paired_difference([x + s for x, s in zip(a, shift)],
                                      [y + s for y, s in zip(b, shift)])  # fmt: skip
    assert moved == pytest.approx(metrics.paired_difference(a, b), abs=1e-12)


@pytest.mark.parametrize(
    "a, b, level",
    [([1.0, 2.0], [1.0], 0.95), ([1.0], [2.0], 0.95), ([1.0, 2.0], [0.0, 1.0], 1.0),
     ([[1.0, 2.0]], [[0.0, 1.0]], 0.95)],
)  # fmt: skip
def test_paired_difference_refuses_bad_input(a, b, level):
    with pytest.raises(ValueError):
        metrics.paired_difference(a, b, level=level)


# --------------------------------------------------------------------------- the committed file
@pytest.fixture(scope="module")
def result():
    return json.loads(RESULT.read_text())


def test_committed_run_is_paired_over_ten_seeds_both_settings_four_families(result):
    assert result["mode"] == "full" and result["date"] and result["command"]
    assert result["families"] == list(FAMILIES) and result["labelled_per_class"] == 10
    seeds = [r["seed"] for r in result["runs"]]
    assert len(seeds) >= 10 and len(set(seeds)) == len(seeds) == len(result["seeds"])
    _, y_train = load_digits("train")
    subsets = set()
    for r in result["runs"]:
        assert set(r["arms"]) == ARMS  # every arm on every seed: the comparison is paired
        idx = torch.tensor(r["labelled"])
        assert len(set(r["labelled"])) == 100  # distinct images, 10 of each class
        assert torch.bincount(y_train[idx], minlength=10).tolist() == [10] * 10
        subsets.add(tuple(sorted(r["labelled"])))
        for acc in [r["real_only"], *(a["accuracy"] for a in r["arms"].values())]:
            assert round(acc * 447) == pytest.approx(acc * 447, abs=1e-6)  # k / 447 test images
        for a in r["arms"].values():
            assert 0 <= a["agreement"] <= 1
    assert len(subsets) == len(seeds)  # each seed draws its own labelled subset


def test_committed_summary_is_recomputed_from_the_per_seed_accuracies(result):
    """The summary's paired differences, by numpy and scipy from the per-seed numbers."""
    real = np.array([r["real_only"] for r in result["runs"]])
    assert set(result["summary"]) == ARMS
    for arm, s in result["summary"].items():
        acc = np.array([r["arms"][arm]["accuracy"] for r in result["runs"]])
        d = 100 * (acc - real)
        ci = stats.ttest_rel(100 * acc, 100 * real).confidence_interval(result["level"])
        assert s["difference_points"] == pytest.approx(d.mean(), abs=1e-9)
        assert (s["low_points"], s["high_points"]) == pytest.approx((ci.low, ci.high), abs=1e-9)
        assert s["helped"] == int((d > 0).sum()) and s["hurt"] == int((d < 0).sum())
        assert s["mean_accuracy"] == pytest.approx(acc.mean(), abs=1e-12)
        agreement = np.mean([r["arms"][arm]["agreement"] for r in result["runs"]])
        assert s["agreement"] == pytest.approx(agreement, abs=1e-12)


# --------------------------------------------------------------------------- a tiny run
def test_tiny_run_has_the_committed_structure_and_reproduces_its_baseline(result):
    """One seed with one epoch per generator and one synthetic image per class: the same keys
    as the committed runs, the same labelled subset and real-only accuracy as the file's seed 0
    (the subset and the classifier are deterministic), and a summary over it."""
    script = _script()
    row = script.run_seed(0, per_class=1, epochs=script.FAST_EPOCHS, ddim_steps=2)
    committed = next(r for r in result["runs"] if r["seed"] == 0)
    assert set(row) == set(committed) and set(row["arms"]) == ARMS
    for arm in ARMS:
        assert set(row["arms"][arm]) == set(committed["arms"][arm])
    assert row["labelled"] == committed["labelled"]
    assert row["real_only"] == pytest.approx(committed["real_only"], abs=1e-9)
    summary = script.summarise([row, row])
    assert set(summary) == ARMS
    for arm, s in summary.items():  # two identical seeds: the difference, with zero width
        d = 100 * (row["arms"][arm]["accuracy"] - row["real_only"])
        assert (s["difference_points"], s["low_points"], s["high_points"]) == pytest.approx(
            (d, d, d), abs=1e-9
        )
