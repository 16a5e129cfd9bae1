"""The benchmarks: one results schema (benchmarks/common.py), the committed results, the table
command end to end (fast mode on one cheap family; the shipped weights) and its committed table
(intervals, one N, the NLL against the manifest), the bootstrap and KID helpers of the table, and
the memorisation check."""

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import bench_scripts
import pytest
import torch

from dgm_edu import metrics, weights
from dgm_edu.data import load_digits
from dgm_edu.train import History

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
FAMILIES = ("rbm", "vae", "gan", "autoregressive", "flows", "diffusion", "energy")
INTERVALS = ("nll_nats", "bpd", "fid", "kid", "precision", "recall")
EXACT = ("mixture", "rbm", "autoregressive", "energy")  # deterministic NLL (energy: fixed seed)


def _run_module():
    return bench_scripts.load("run")


@pytest.fixture(scope="module")
def common():
    bench_scripts.on_path()
    return importlib.import_module("common")


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


def _result(common, mode: str, nll: float = 18.3):
    return common.make_result(
        "rbm", mode, estimator="exact", nll_nats=nll, params=1364, train_seconds=600.0,
        best_epoch=86, epochs_run=100, extra={"note": mode},
    )  # fmt: skip


def test_result_has_every_field_in_order_and_derives_bpd(common):
    r = _result(common, "full")
    assert list(r) == list(common.FIELDS)
    assert r["family"] == "rbm" and r["mode"] == "full" and r["nll_nats"] == 18.3
    assert r["bpd"] == pytest.approx(18.3 / (64 * math.log(2)))
    assert r["fid"] is None and r["samples"] is None and r["eval_seconds"] is None
    assert r["torch"] == torch.__version__ and r["threads"] == torch.get_num_threads()
    assert r["date"].endswith("UTC") and r["machine"] and r["extra"] == {"note": "full"}
    gan = common.make_result("gan", "fast", fid=64.3)
    assert gan["nll_nats"] is None and gan["bpd"] is None and gan["fid"] == 64.3
    with pytest.raises(TypeError, match="test_nll_nats"):
        common.make_result("rbm", "full", test_nll_nats=18.3)
    with pytest.raises(ValueError, match="mode"):
        common.make_result("rbm", "reference")


def test_fast_run_writes_its_own_file_and_leaves_the_full_one(common, tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    full = common.write_result(_result(common, "full"))
    assert full == tmp_path / "rbm.json"
    before = full.read_bytes()
    fast = common.write_result(_result(common, "fast", nll=21.9))
    assert fast == tmp_path / "rbm-fast.json"
    assert full.read_bytes() == before  # untouched
    assert json.loads(fast.read_text())["nll_nats"] == 21.9
    assert json.loads(full.read_text())["nll_nats"] == 18.3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rbm-fast.json", "rbm.json"]


def test_a_run_replaces_its_file(common, tmp_path):
    path = tmp_path / "rbm.json"
    path.write_text(json.dumps({"test_nll_iwae1000_nats": 1.0, "stale": True}))
    common.write_result(_result(common, "full"), tmp_path)
    written = json.loads(path.read_text())
    assert list(written) == list(common.FIELDS) and "stale" not in written


def test_finish_writes_the_trained_model_s_fields(common, tmp_path):
    """The scripts' shared tail: the parameter count and the history's fields, then ``fields``,
    which override them (a GAN's best epoch is None)."""
    model = torch.nn.Linear(3, 2)  # 3 * 2 + 2 = 8 parameters
    hist = History(train_loss=[2.0, 1.0], val_loss=[3.0, 3.5], best_epoch=0, seconds=5.0)
    path = common.finish("gan", "fast", model, hist, tmp_path, fid=30.0, best_epoch=None)
    written = json.loads(path.read_text())
    assert path == tmp_path / "gan-fast.json" and list(written) == list(common.FIELDS)
    assert written["params"] == 8 and written["fid"] == 30.0 and written["epochs_run"] == 2
    assert written["train_seconds"] == 5.0 and written["best_epoch"] is None
    again = common.finish("rbm", "full", model, hist, tmp_path, nll_nats=18.3)
    assert json.loads(again.read_text())["best_epoch"] == 1  # from the history, 1-based


def test_history_fields_are_one_based(common):
    hist = History(
        train_loss=[3.0, 2.0, 1.0], val_loss=[5.0, 4.0, 4.5], best_epoch=1, seconds=12.34
    )
    assert common.history_fields(hist) == {"train_seconds": 12.3, "best_epoch": 2, "epochs_run": 3}
    assert common.history_fields(History(train_loss=[1.0]))["best_epoch"] is None  # no validation


def test_configure_sets_the_mode(common, monkeypatch):
    monkeypatch.delenv("DGM_EDU_FAST", raising=False)
    monkeypatch.setenv("DGM_EDU_MODE", "reference")  # restored after the test
    args = argparse.Namespace(fast=False, threads=torch.get_num_threads())
    assert common.configure(args) == "full" and os.environ["DGM_EDU_MODE"] == "full"
    assert common.configure(argparse.Namespace(**{**vars(args), "fast": True})) == "fast"
    assert os.environ["DGM_EDU_MODE"] == "fast"
    monkeypatch.delenv("DGM_EDU_MODE")
    monkeypatch.setenv("DGM_EDU_FAST", "1")  # the older switch still means fast
    assert common.configure(args) == "fast"


@pytest.mark.parametrize("family", FAMILIES)
def test_committed_full_results_follow_the_schema(common, family):
    r = json.loads((BENCH / "results" / f"{family}.json").read_text())
    assert list(r) == list(common.FIELDS)
    assert r["family"] == family and r["mode"] == "full" and isinstance(r["extra"], dict)
    if r["nll_nats"] is None:
        assert family == "gan" and r["bpd"] is None and r["fid"] > 0
    else:
        assert r["bpd"] == pytest.approx(r["nll_nats"] / (64 * math.log(2)))
    if r["fid"] is not None:
        assert r["samples"] >= 100
    assert r["best_epoch"] is None or 1 <= r["best_epoch"] <= r["epochs_run"]
    assert r["params"] > 0 and r["train_seconds"] > 0


def test_committed_energy_ablation_seeds_cover_every_run_and_seed():
    """benchmarks/energy_tricks.py: the control and each ablation of chapter 8 at the seeds that
    do not ship, with the figures the shipped runs record (same function, same keys)."""
    from dgm_edu.energy import ABLATIONS

    r = json.loads((BENCH / "results" / "energy_tricks.json").read_text())
    got = {(row["run"], row["seed"]) for row in r["runs"]}
    assert got == {(k, s) for k in ("control", *ABLATIONS) for s in (1, 2)}
    shipped = weights.entry("energy@20")["figures"]
    for row in r["runs"]:
        assert 64 * math.log(17) / 3 < row["test_nll_nats"] < 64 * math.log(17)
        assert row["test_fid"] > 0 and row["train_seconds"] > 0
        assert set(row) - {"run", "seed", "train_seconds"} <= set(shipped)


def _check_fid_by_n(row: dict, n: int) -> None:
    """The FID-against-N curve: one FID per size up to N, the last the row's FID (same features,
    all N samples), every one finite and positive."""
    sizes = [str(m) for m in (50, 100, 200, 500, 1000) if m <= n]
    assert list(row["fid_by_n"]) == sizes, (row["family"], row["fid_by_n"])
    assert all(v > 0 and math.isfinite(v) for v in row["fid_by_n"].values()), row["family"]
    if str(n) in row["fid_by_n"]:
        assert row["fid_by_n"][str(n)] == pytest.approx(row["fid"], rel=1e-9), row["family"]


def _check_table(result: dict, n: int, families: list[str]) -> dict:
    """The assertions every table shares; returns its rows by family."""
    assert result["num_samples"] == n and result["num_test"] == 447
    assert {"platform", "cpu_count"} <= set(result["machine"]) and result["date"]
    assert result["fid_floor"] > 0
    rows = {r["family"]: r for r in result["rows"]}
    assert list(rows) == [*families, "independent_pixels", "uniform"]
    for r in rows.values():
        likelihood = ("nll_nats", "bpd") if r["family"] != "gan" else ()
        keys = ("fid", "kid", "precision", "recall", "memorisation_ratio", "train_seconds",
                "sample_seconds_per_100", *likelihood)  # fmt: skip
        for key in keys:
            assert r[key] is not None and r[key] == r[key], (r["family"], key)  # not None / NaN
        assert 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1 and r["estimator"]
        assert r["samples"] == n and len(r["samples_16"]) == 16
        assert r["fid"] > result["fid_floor"]  # no model beats the data against itself here
        _check_intervals(r)
        assert r["conditional"] is False and r["sampler"]  # every row samples without labels
        _check_fid_by_n(r, n)
    floor = result["floor"]
    _check_fid_by_n(floor, n)
    assert floor["samples"] == n and floor["fid"] == result["fid_floor"]
    assert (
        floor["fid_low"] == result["fid_floor_low"]
        and floor["fid_high"] == result["fid_floor_high"]
    )
    _check_intervals(floor, ("fid", "kid", "precision", "recall"))
    assert result["conditional"] is False and "95%" in result["interval"]
    assert rows["uniform"]["nll_nats"] == pytest.approx(64 * math.log(17))
    assert rows["independent_pixels"]["nll_nats"] == pytest.approx(106.47, abs=0.01)
    assert rows["uniform"]["params"] == 0
    return rows


def _check_intervals(r: dict, keys: tuple[str, ...] = INTERVALS) -> None:
    """Every score has an interval that holds it (up to round-off: a constant NLL); a GAN has no
    NLL and no interval for it."""
    for key in keys:
        low, value, high = r[f"{key}_low"], r[key], r[f"{key}_high"]
        if r["family"] == "gan" and key in ("nll_nats", "bpd"):
            assert low is value is high is None
            continue
        assert low - 1e-9 <= value <= high + 1e-9, (r["family"], key, low, value, high)


def _check_markdown(path: Path, num_rows: int) -> None:
    table = path.read_text().splitlines()
    body = [line for line in table if line.startswith("| ") and "---" not in line]
    assert len(body) == 1 + num_rows  # header + one row per family / baseline
    assert all(line.count("|") == body[0].count("|") for line in body)


def test_benchmark_fast_end_to_end(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(BENCH / "run.py"), "--fast", "--families", "rbm",
           "--samples", "120", "--resamples", "200", "--out-dir", str(tmp_path)]  # fmt: skip
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, capture_output=True, timeout=300)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table-fast.json", "table-fast.md"]
    result = json.loads((tmp_path / "table-fast.json").read_text())
    assert result["mode"] == "fast" and result["weights"] == "trained by this run"
    rows = _check_table(result, 120, ["rbm"])
    assert rows["rbm"]["params"] > 0
    _check_markdown(tmp_path / "table-fast.md", 4)  # rbm, two baselines, the floor


def test_shipped_table_scores_the_shipped_weights(tmp_path, monkeypatch):
    assert "rbm" in weights.manifest(), "no shipped rbm weights: build them with `make weights`"
    monkeypatch.setenv("DGM_EDU_MODE", "fast")  # --shipped ignores the mode: it trains nothing
    argv = ["--shipped", "--families", "rbm", "--samples", "120", "--threads", "1",
            "--resamples", "200", "--out-dir", str(tmp_path)]  # fmt: skip
    run = _run_module()
    assert run.SHIPPED == weights.HEADLINE  # --shipped's default families
    result = run.main(argv)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.json", "table.md"]
    assert json.loads((tmp_path / "table.json").read_text()) == json.loads(json.dumps(result))
    assert result["mode"] == "reference" and result["missing"] == []
    assert "200 resamples" in result["interval"]
    rows = _check_table(result, 120, ["rbm"])
    entry = weights.entry("rbm")
    assert rows["rbm"]["nll_manifest"] == entry["figures"]["test_nll_nats"]  # beside it
    assert rows["rbm"]["nll_nats"] == pytest.approx(entry["figures"]["test_nll_nats"], abs=1e-3)
    assert rows["rbm"]["manifest_estimator"] == entry["figures"]["estimator"]
    assert "BINARIZED" in rows["rbm"]["estimator"]
    assert rows["rbm"]["sha256"] == entry["sha256"] and rows["rbm"]["params"] == entry["parameters"]
    assert rows["rbm"]["train_seconds"] == entry["train_seconds"]
    assert set(torch.tensor(rows["rbm"]["samples_16"]).unique().tolist()) <= {0, 16}  # binary
    _check_markdown(tmp_path / "table.md", 4)


def test_committed_shipped_table_has_every_family_with_intervals():
    """benchmarks/results/table.json (``python benchmarks/run.py --shipped``): every headline
    family at one N, every score inside its interval, the floor, and the NLL measured here
    (mean of per-image values) within the estimator's noise of the manifest's figure."""
    result = json.loads((BENCH / "results" / "table.json").read_text())
    assert result["mode"] == "reference" and result["missing"] == []
    rows = _check_table(result, 1000, list(weights.HEADLINE))
    assert {r["samples"] for r in result["rows"]} == {1000}  # one N for every row
    for family in weights.HEADLINE:
        r, entry = rows[family], weights.entry(family)
        assert r["sha256"] == entry["sha256"]
        assert r["nll_manifest"] == entry["figures"].get("test_nll_nats")
        if family == "gan":
            assert r["nll_nats"] is None and r["nll_manifest_diff"] is None
            continue
        tolerance = 1e-3 if family in EXACT else 1.0  # nats: IWAE, dequantization, timesteps
        assert abs(r["nll_nats"] - r["nll_manifest"]) < tolerance, family
        assert r["nll_manifest_diff"] == pytest.approx(r["nll_nats"] - r["nll_manifest"])
        assert r["nll_nats_low"] < r["nll_manifest"] < r["nll_nats_high"], family
    assert "manifest's AIS estimate" in rows["energy"]["estimator"]
    assert rows["diffusion"]["sampler"].endswith("unconditional")
    assert result["kid_unit"] and all(r["kid_unit"] == result["kid_unit"] for r in result["rows"])


# --------------------------------------------------------------------------- interval helpers
def test_bootstrap_of_a_mean_matches_the_normal_theory_interval():
    """On 4000 normal draws the bootstrap's 95% range of the mean is mean ± 1.96 s / sqrt(n)."""
    x = torch.randn(4000, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3 + 2
    got = metrics.bootstrap(lambda v: v.mean(), x, resamples=2000, level=0.95, seed=3)
    half = 1.959964 * float(x.std()) / math.sqrt(len(x))
    assert got.estimate == pytest.approx(float(x.mean()))
    assert got.low == pytest.approx(float(x.mean()) - half, abs=0.1 * half)
    assert got.high == pytest.approx(float(x.mean()) + half, abs=0.1 * half)
    ninety = metrics.bootstrap(lambda v: v.mean(), x, resamples=2000, level=0.9, seed=3)
    assert ninety.high - ninety.low == pytest.approx(2 * half * 1.644854 / 1.959964, rel=0.1)


def test_bootstrap_percentiles_by_hand():
    """The same draws by hand (one generator, rows with replacement), the percentiles by the
    linear rule; ``centre`` moves them by the estimate minus their median; fixed sets pass."""
    x = torch.tensor([0.0, 1.0, 4.0, 9.0, 16.0, 25.0], dtype=torch.float64)
    offset = torch.tensor(10.0, dtype=torch.float64)

    def stat(v, c):
        return v.mean() + c

    gen = torch.Generator().manual_seed(7)
    boot = sorted(float(x[torch.randint(6, (6,), generator=gen)].mean()) + 10 for _ in range(11))
    estimate = 55 / 6 + 10  # the mean of x, plus the fixed offset
    # linear rule on 11 sorted values: the q-quantile sits at position 10 q
    low, median, high = (
        (boot[0] + 0.5 * (boot[1] - boot[0])),
        boot[5],
        boot[9] + 0.5 * (boot[10] - boot[9]),
    )  # q = 0.05, 0.5, 0.95
    got = metrics.bootstrap(stat, x, offset, resamples=11, level=0.9, seed=7)
    assert got == pytest.approx((estimate, low, high))
    moved = metrics.bootstrap(stat, x, offset, resamples=11, level=0.9, seed=7, centre=True)
    shift = estimate - median
    assert abs(shift) > 0.1  # so that the centring shows
    assert moved == pytest.approx((estimate, low + shift, high + shift))
    assert low < estimate < high
    with pytest.raises(ValueError, match="level"):
        metrics.bootstrap(stat, x, offset, level=1.0)
    with pytest.raises(ValueError, match="at least 2 rows"):
        metrics.bootstrap(stat, x[:1], offset)


class _Identity(torch.nn.Module):
    """A feature net whose features are the pixels themselves (64 of them)."""

    num_features = 64

    def features(self, x):
        return x.flatten(1).float()


def test_mmd2_polynomial_matches_brute_force_and_kid_on_the_whole_set():
    g = torch.Generator().manual_seed(0)
    a, b = (
        torch.randint(0, 17, (20, 1, 8, 8), generator=g),
        torch.randint(0, 9, (20, 1, 8, 8), generator=g),
    )
    fa, fb = a.flatten(1).double(), b.flatten(1).double()

    def k(u, v):
        return (float(u @ v) / 64 + 1) ** 3

    n = len(fa)
    xx = sum(k(fa[i], fa[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(fb[i], fb[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(u, v) for u in fa for v in fb) / n**2
    got = metrics.mmd2_polynomial(fa, fb)
    assert got == pytest.approx(xx + yy - 2 * xy, rel=1e-9)
    # torchmetrics' KID with one subset of the whole set is the same statistic
    mean, _ = metrics.kid(b, a, subset_size=20, subsets=1, feature_net=_Identity())
    assert got == pytest.approx(mean, rel=1e-4)
    assert abs(metrics.mmd2_polynomial(fa[:10], fa[10:])) < 0.2 * got  # same distribution: ~0
    with pytest.raises(ValueError, match="features"):
        metrics.mmd2_polynomial(fa, fb[:, :10])
