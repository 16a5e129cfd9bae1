"""The rate-distortion sweep of chapter 9 (benchmarks/discrete_latents.py): its measures against
independent computations, its summary, and a fast run of one point."""

import json
import math

import bench_scripts
import pytest
import torch

from dgm_edu import data
from dgm_edu.vqvae import TwoStage, code_histogram

pytestmark = pytest.mark.usefixtures("one_thread")

rd = bench_scripts.load("discrete_latents")


@pytest.fixture
def fast(monkeypatch, tmp_path):
    """Fast mode, with checkpoints in a temporary folder."""
    monkeypatch.setenv("DGM_EDU_MODE", "fast")
    monkeypatch.delenv("DGM_EDU_FAST", raising=False)
    monkeypatch.setenv("DGM_EDU_CHECKPOINTS", str(tmp_path / "ckpt"))
    return tmp_path


def untrained(grid: int, num_codes: int, x: torch.Tensor, seed: int = 0) -> TwoStage:
    """A TwoStage of the sweep's configuration at (g, K), untrained but non-degenerate: codes set
    from the encoder outputs of x, prior weights perturbed so its probabilities are not uniform."""
    torch.manual_seed(seed)
    model = TwoStage(rd.point_config(grid, num_codes)).eval()
    model.vqvae.quantizer.initialise(model.vqvae.encode_continuous(x))
    with torch.no_grad():
        for p in model.prior.parameters():
            p.add_(torch.randn_like(p))
    return model


def test_point_config_changes_only_grid_and_codebook(fast):
    from dgm_edu.vqvae import reference_config

    ref, cfg = reference_config(), rd.point_config(2, 64)
    assert (cfg.vqvae.grid, cfg.vqvae.num_codes) == (2, 64)
    assert cfg.vqvae.channels == ref.vqvae.channels and cfg.prior_layers == ref.prior_layers
    assert cfg.vqvae.restart_after == ref.vqvae.restart_after
    assert cfg.prior_config().levels == 64 and cfg.prior_config().height == 2


@pytest.mark.parametrize(("grid", "num_codes"), [(1, 2), (2, 4), (4, 16)])
def test_rates_and_bound_against_independent_paths(fast, grid, num_codes):
    x, _ = data.load_digits("test")
    x = x[:120]
    model = untrained(grid, num_codes, x)
    with torch.no_grad():  # the last code far from every encoder output: it goes unused
        model.vqvae.quantizer.codebook[-1] = 1e4
    row = rd.measure(model, x)
    # uniform rate: −log K^{−g²}, counted cell by cell
    cells = grid * grid
    assert row["uniform_rate_nats"] == pytest.approx(math.log(num_codes**cells), rel=1e-14)
    assert row["uniform_rate_bits"] == pytest.approx(cells * math.log2(num_codes), rel=1e-12)
    assert row["learned_rate_bits"] * math.log(2) == pytest.approx(row["learned_rate_nats"])
    # the bound and its parts
    d, r = row["distortion_nats"], row["learned_rate_nats"]
    assert row["bound_nats"] == -(d + r)
    assert row["prior_gain_nats"] == pytest.approx(row["uniform_rate_nats"] - r, abs=1e-12)
    with torch.no_grad():
        two_stage = model.log_prob(x).double().mean().item()  # TwoStage's own bound
        uniform = model.vqvae.log_prob(x).double().mean().item()  # VQVAE: the uniform prior
        prior_only = model.prior.log_prob(model.vqvae.encode(x)[:, None]).double().mean().item()
    assert row["bound_nats"] == pytest.approx(two_stage, rel=1e-6)
    assert row["uniform_bound_nats"] == pytest.approx(uniform, rel=1e-6)
    assert r == pytest.approx(-prior_only, rel=1e-6) and r >= 0
    # code usage against a count by hand
    codes = model.vqvae.encode(x).flatten().tolist()
    used = sorted(set(codes))
    assert row["codes_used"] == len(used) < num_codes
    p = [codes.count(k) / len(codes) for k in used]
    assert row["perplexity"] == pytest.approx(math.exp(-sum(q * math.log(q) for q in p)))


def test_learned_rate_of_one_binary_code_by_enumeration(fast):
    """g = 1, K = 2: the prior is a distribution over two grids; the rate is the cross-entropy
    −Σ_k f_k log p_k of the test codes' frequencies f against it, ≥ the entropy of f."""
    x, _ = data.load_digits("test")
    model = untrained(1, 2, x, seed=3)
    counts = code_histogram(model.vqvae.encode(x), 2).double()
    assert (counts > 0).all(), "both codes should be in use for a meaningful check"
    f = counts / counts.sum()
    with torch.no_grad():
        grids = torch.tensor([0, 1]).view(2, 1, 1, 1)  # every code grid: (2, 1, 1, 1)
        p = model.prior.log_prob(grids).double().exp()  # (2,)
    assert p.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert abs(p[0] - 0.5) > 0.01  # the perturbed prior is not uniform
    cross_entropy = -(f * p.log()).sum().item()
    entropy = -(f * f.log()).sum().item()
    row = rd.measure(model, x)
    assert row["learned_rate_nats"] == pytest.approx(cross_entropy, rel=1e-6)
    assert row["learned_rate_nats"] >= entropy - 1e-9 >= 0
    assert row["uniform_rate_nats"] == math.log(2)


def test_summarise_by_hand():
    def row(g, k, d, r):
        return {"grid": g, "num_codes": k, "distortion_nats": d, "learned_rate_nats": r,
                "bound_nats": -(d + r), "prior_gain_nats": g * g * math.log(k) - r}  # fmt: skip

    rows = [row(1, 2, 100, 0.5), row(1, 4, 90, 1.0), row(1, 8, 91, 2.0),
            row(2, 2, 80, 2.0), row(2, 4, 70, 3.0), row(2, 8, 60, 15.0)]  # fmt: skip
    s = rd.summarise(rows)
    assert (s["best_grid"], s["best_num_codes"], s["best_bound_nats"]) == (2, 4, -73.0)
    assert s["per_grid"]["1"]["distortion_monotone"] is False
    assert s["per_grid"]["1"]["rises_at_K"] == [8]
    assert s["per_grid"]["2"]["distortion_monotone"] is True
    assert s["per_grid"]["2"]["rises_at_K"] == []
    assert s["per_grid"]["1"]["best_K"] == 4 and s["per_grid"]["1"]["best_bound_nats"] == -91.0
    assert s["prior_gain_nats"]["g2_K8"] == pytest.approx(4 * math.log(8) - 15.0)
    assert rd.monotone([3, 3, 2]) and not rd.monotone([3, 2, 2.5])


def test_fast_run_of_one_point_writes_the_json(fast):
    out = fast / "results"
    result = rd.run([(1, 2)], out, threads=1)
    path = out / "discrete_latents-fast.json"
    assert result["path"] == str(path)
    saved = json.loads(path.read_text())
    for key in ("mode", "epochs", "grid_K", "derived", "torch", "threads", "date", "machine"):
        assert key in saved
    assert saved["mode"] == "fast" and saved["epochs"] == list(rd.FAST_EPOCHS)
    assert saved["torch"] == torch.__version__ and saved["threads"] == 1
    (r,) = saved["grid_K"]
    assert (r["grid"], r["num_codes"]) == (1, 2)
    assert r["uniform_rate_nats"] == pytest.approx(math.log(2)) and r["uniform_rate_bits"] == 1.0
    assert r["bound_nats"] == pytest.approx(-(r["distortion_nats"] + r["learned_rate_nats"]))
    # the library's figures of the same model: the same bound by another path
    assert r["figures_nll_nats"] == pytest.approx(-r["bound_nats"], abs=1e-3)
    assert 1 <= r["codes_used"] <= 2 and 1 - 1e-9 <= r["perplexity"] <= 2 + 1e-9
    assert r["epochs_run"] == list(rd.FAST_EPOCHS) and r["train_seconds"] > 0
    assert r["params"] == r["params_ae"] + r["params_prior"] > 0
    d = saved["derived"]
    assert (d["best_grid"], d["best_num_codes"]) == (1, 2)
    assert d["best_bound_nats"] == r["bound_nats"]
    assert d["prior_gain_nats"]["g1_K2"] == pytest.approx(r["prior_gain_nats"])
