"""The benchmark command end to end (fast mode, one cheap family) and its memorisation check."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dgm_edu import metrics
from dgm_edu.data import load_digits

ROOT = Path(__file__).resolve().parents[1]


def _run_module():
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "benchmarks" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_memorisation_flags_exact_copies():
    x_train, x_test = load_digits("train")[0], load_digits("test")[0]
    copies = metrics.memorisation(x_train[:200], x_train, x_test)
    assert copies["memorisation_ratio"] == 0.0 and copies["exact_copies"] == 1.0
    # held-out data against itself: ratio exactly 1 by definition; no copies
    fresh = metrics.memorisation(x_test, x_train, x_test)
    assert fresh["memorisation_ratio"] == pytest.approx(1.0) and fresh["exact_copies"] == 0.0
    # half copies, half test images: the median falls between, some copies flagged
    mixed = metrics.memorisation(torch.cat([x_train[:100], x_test[:100]]), x_train, x_test)
    assert 0.0 < mixed["exact_copies"] == pytest.approx(0.5)
    # noise is farther from the training set than real held-out digits
    noise = metrics.memorisation(torch.randint(0, 17, (100, 1, 8, 8)), x_train, x_test)
    assert noise["memorisation_ratio"] > 2.0


def test_memorisation_ratio_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    train, test = (
        torch.randint(0, 17, (30, 1, 8, 8), generator=g),
        torch.randint(0, 17, (7, 1, 8, 8), generator=g),
    )
    samples = torch.randint(0, 17, (9, 1, 8, 8), generator=g)

    def nearest(q):
        return torch.tensor(
            [min(float(((a.float() - b.float()) ** 2).sum().sqrt()) for b in train) for a in q]
        )

    expected = nearest(samples).median() / nearest(test).median()
    got = metrics.memorisation(samples, train, test)["memorisation_ratio"]
    assert got == pytest.approx(float(expected), rel=1e-5)


def test_benchmark_fast_end_to_end(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--fast", "--families", "rbm",
           "--samples", "120", "--out-dir", str(tmp_path)]  # fmt: skip
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, capture_output=True, timeout=300)
    result = json.loads((tmp_path / "table-fast.json").read_text())
    assert result["mode"] == "fast" and result["num_samples"] == 120
    assert {"platform", "cpu_count"} <= set(result["machine"]) and result["date"]
    assert result["fid_floor"] > 0
    rows = {r["family"]: r for r in result["rows"]}
    assert list(rows) == ["rbm", "independent_pixels", "uniform"]
    for r in rows.values():
        for key in ("fid", "kid_mean", "precision", "recall", "memorisation_ratio",
                    "train_seconds", "sample_seconds_per_100", "test_nll_nats"):  # fmt: skip
            assert r[key] is not None and r[key] == r[key], (r["family"], key)  # not None / NaN
        assert 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1 and r["estimator"]
        assert r["fid"] > result["fid_floor"]  # no model beats the data against itself here
    assert rows["uniform"]["test_nll_nats"] == pytest.approx(
        64 * torch.log(torch.tensor(17.0)).item()
    )
    assert rows["independent_pixels"]["test_nll_nats"] == pytest.approx(106.47, abs=0.01)
    assert rows["uniform"]["params"] == 0 and rows["rbm"]["params"] > 0
    table = (tmp_path / "table-fast.md").read_text().splitlines()
    body = [line for line in table if line.startswith("| ") and "---" not in line]
    assert len(body) == 1 + 3  # header + one row per family / baseline
    assert all(line.count("|") == body[0].count("|") for line in body)
