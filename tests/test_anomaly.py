"""Anomaly detection (chapter 10, benchmarks/anomaly.py): the toys rendered as images, the
input-complexity code length, and the committed results of the benchmark."""

import json
import math
import zlib
from pathlib import Path

import bench_scripts
import numpy as np
import pytest
import torch

from dgm_edu import data, metrics
from dgm_edu.mixtures import PixelMixture

RESULT = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "anomaly.json"
MODELS = ("autoregressive", "flows", "vae", "diffusion", "rbm", "energy", "independent_pixels")
KINDS = ("noise", "shifted", "blank", "toys")
SCORES = ("raw", "ratio", "complexity", "complexity_adaptive")
FAILS_ON_BLANK = ("autoregressive", "vae", "flows", "diffusion", "energy", "independent_pixels")
UNSEEN = ("independent_pixels", "vae", "autoregressive", "flows")


# --------------------------------------------------------------------------- rendering the toys
def test_render_points_matches_a_histogram_by_hand():
    rng = np.random.default_rng(1)
    pts = rng.uniform(-3.6, 3.6, size=(5, 200, 2))  # some points fall outside the square
    got = data.render_points(torch.from_numpy(pts))
    for img, p in zip(got, pts):
        counts = np.zeros((8, 8))
        inside = (np.abs(p) < 3).all(1)
        cell = np.floor((p[inside] + 3) / 0.75).astype(int)  # cell width 6 / 8
        np.add.at(counts, (cell[:, 0], cell[:, 1]), 1)  # row: first coordinate
        want = np.floor(16 * counts / counts.max() + 0.5)
        assert np.array_equal(img[0].numpy(), want)
    assert got.dtype == torch.int64 and got.shape == (5, 1, 8, 8)


def test_render_points_orientation_and_empty_cloud():
    one = torch.tensor([[[-2.9, 2.9]]])  # first coordinate low -> row 0; second high -> column 7
    img = data.render_points(one)[0, 0]
    assert img[0, 7] == 16 and img.sum() == 16
    far = torch.full((1, 3, 2), 10.0)  # all outside: a blank image, not a division by zero
    assert data.render_points(far).sum() == 0
    with pytest.raises(ValueError, match=r"\(N, P, 2\)"):
        data.render_points(torch.zeros(3, 2))


def test_render_toys_blocks_and_shapes():
    x = data.render_toys(10, per_image=200)
    assert x.shape == (10, 1, 8, 8) and x.dtype == torch.int64
    assert x.amin() >= 0 and (x.flatten(1).amax(1) == 16).all()
    data.validate_digits(x)  # usable as digits
    ring = x[:3, 0]  # ceil(10 / 4) = 3 images of the ring of radius 2: the centre stays empty
    assert (ring[:, 3:5, 3:5] == 0).all()
    assert torch.equal(x, data.render_toys(10, per_image=200))
    assert not torch.equal(x, data.render_toys(10, per_image=200, seed=1))


# --------------------------------------------------------------------------- input complexity
def test_zlib_complexity_against_zlib_by_hand():
    x, _ = data.load_digits("test")
    imgs = torch.cat([torch.zeros(1, 1, 8, 8, dtype=torch.long), x[:3]])
    got = metrics.input_complexity(imgs)
    for img, length in zip(imgs, got):
        raw = bytes(img.flatten().tolist())
        nbytes = len(zlib.compress(raw, 9)) - 6  # 2-byte header + 4-byte Adler-32
        assert length.item() == pytest.approx(nbytes * 8 * math.log(2))
    assert got.dtype == torch.float64


def test_adaptive_complexity_against_the_sequential_code():
    x, _ = data.load_digits("test")
    imgs = torch.cat([torch.zeros(1, 1, 8, 8, dtype=torch.long), x[:3]])
    got = metrics.input_complexity(imgs, "adaptive")
    for img, length in zip(imgs, got):
        counts, nats = [0] * 17, 0.0
        for t, v in enumerate(img.flatten().tolist()):  # Laplace: (n_v + 1) / (t + 17)
            nats -= math.log((counts[v] + 1) / (t + 17))
            counts[v] += 1
        assert length.item() == pytest.approx(nats, rel=1e-12)


@pytest.mark.parametrize("method", metrics.COMPLEXITY_METHODS)
def test_complexity_orders_blank_digit_noise_and_grows_with_noise(method):
    x, _ = data.load_digits("test")
    x = x[:100]
    gen = torch.Generator().manual_seed(0)
    blank = metrics.input_complexity(data.anomalies(x, "blank"), method)
    digit = metrics.input_complexity(x, method)
    noise = metrics.input_complexity(data.anomalies(x, "noise", generator=gen), method)
    assert blank.max() < digit.min() and digit.mean() < noise.mean()
    # replace a growing, nested share of each digit's pixels by uniform levels
    u = torch.rand(x.shape, generator=gen)
    levels = torch.randint(0, 17, x.shape, generator=gen)
    means = [
        metrics.input_complexity(torch.where(u < share, levels, x), method).mean()
        for share in (0.0, 0.25, 0.5, 1.0)
    ]
    assert all(a < b for a, b in zip(means, means[1:])), means


def test_complexity_refuses_bad_input():
    x, _ = data.load_digits("test")
    with pytest.raises(ValueError, match="method must be one of"):
        metrics.input_complexity(x[:2], "png")
    with pytest.raises(ValueError, match="levels"):
        metrics.input_complexity(x[:2] + 20)


# --------------------------------------------------------------------------- committed results
@pytest.fixture(scope="module")
def result():
    return json.loads(RESULT.read_text())


def test_result_has_every_model_kind_and_score(result):
    assert result["date"] and result["machine"] and result["command"] and result["seeds"]
    assert result["num_test"] == 447 and result["seconds"] > 0
    for m in MODELS:
        kinds = (*KINDS, "unseen_classes") if m in UNSEEN else KINDS
        assert set(result["auc"][m]) == set(kinds), m
        for k in kinds:
            for s in SCORES:
                assert 0 <= result["auc"][m][k][s] <= 1, (m, k, s)
    for m in UNSEEN:
        row = result["unseen_classes"]["models"][m]
        assert row["train_seconds"] > 0 or m == "independent_pixels"  # counting: a millisecond
        assert row["test_nll_0_4"] < row["test_nll_5_9"]  # unseen classes cost more nats
    for m in MODELS:
        probe = result["shift_probe"]["mean_log_p"][m]
        assert list(probe) == ["0", "1", "2", "3"]
    for code in metrics.COMPLEXITY_METHODS:
        alone = result["compressor_alone"][code]
        assert set(alone) == {*KINDS, "unseen_classes"}
        assert all(0 <= a <= 1 for a in alone.values())


def test_recorded_facts(result):
    auc = result["auc"]
    # the failure: independent pixels rate a blank image above every test digit, and the exact
    # PixelCNN, the VAE, the flow (since its recipe shifts its training images), the diffusion
    # bound and the energy rate it above nearly every digit; the RBM (binarized images) does not
    assert auc["independent_pixels"]["blank"]["raw"] == 0.0
    assert all(auc[m]["blank"]["raw"] < 0.1 for m in FAILS_ON_BLANK)
    assert auc["rbm"]["blank"]["raw"] > 0.9
    # the complexity correction separates blanks for every model ...
    assert all(auc[m]["blank"]["complexity"] > 0.99 for m in MODELS)
    # ... but mostly by the compressor's own verdict: -L(x) alone flags blanks and misses noise
    assert result["compressor_alone"]["zlib"]["blank"] == 1.0
    assert result["compressor_alone"]["zlib"]["noise"] < 0.05
    # and it costs AUC on unseen classes; the ratio to independent pixels hides shifted digits
    for m in ("vae", "autoregressive", "flows"):
        assert auc[m]["unseen_classes"]["complexity"] < auc[m]["unseen_classes"]["raw"] - 0.05
    assert (
        auc["autoregressive"]["shifted"]["ratio"]
        < 0.1
        < 0.8
        < auc["autoregressive"]["shifted"]["raw"]
    )
    # a ratio against the model itself is 0 for every image: chance
    assert all(auc["independent_pixels"][k]["ratio"] == 0.5 for k in KINDS)
    best = result["best_blank_fix"]
    assert best["auc"] == auc[best["model"]]["blank"][best["score"]] > 0.9
    assert best["auc"] > max(auc[m]["blank"]["raw"] for m in FAILS_ON_BLANK)
    # the adaptive code's correction reaches blanks too and costs little elsewhere
    assert all(auc[m]["blank"]["complexity_adaptive"] > 0.99 for m in MODELS)
    assert min(result["fix_cost"]["complexity_adaptive"].values()) > -0.05
    assert min(result["fix_cost"]["complexity"].values()) < -0.1
    # a likelihood drops when the digit moves: every model rates the 3-pixel shift lower
    for m in MODELS:
        probe = result["shift_probe"]["mean_log_p"][m]
        assert probe["3"] < probe["0"], m


def test_one_entry_recomputed_from_scratch(result):
    """Independent pixels against uniform noise (seed 0), all three scores, as the script does."""
    x_train, _ = data.load_digits("train")
    x_test, _ = data.load_digits("test")
    noise = data.anomalies(x_test, "noise", generator=torch.Generator().manual_seed(0))
    model = PixelMixture.fit_counts(x_train)
    with torch.no_grad():
        lp_in, lp_out = model.log_prob(x_test).double(), model.log_prob(noise).double()
    raw = metrics.roc(-lp_in, -lp_out).auc
    comp = metrics.roc(
        -lp_in - metrics.input_complexity(x_test), -lp_out - metrics.input_complexity(noise)
    ).auc
    want = result["auc"]["independent_pixels"]["noise"]
    assert raw == pytest.approx(want["raw"], abs=1e-12)
    assert comp == pytest.approx(want["complexity"], abs=1e-12)
    adaptive = metrics.roc(
        -lp_in - metrics.input_complexity(x_test, "adaptive"),
        -lp_out - metrics.input_complexity(noise, "adaptive"),
    ).auc
    assert adaptive == pytest.approx(want["complexity_adaptive"], abs=1e-12)
    assert want["ratio"] == 0.5  # log p - log p_bg = 0: every score ties
    # log_prob is float32 (about 7 digits of ~264): the results file may come from a CPU whose
    # kernels sum in another order, so the mean agrees to float32's precision, not beyond it
    assert result["mean_log_p"]["independent_pixels"]["noise"] == pytest.approx(
        lp_out.mean().item(), rel=1e-6
    )


# --------------------------------------------------------------------------- the script's helpers
def _script():
    return bench_scripts.load("anomaly")


def test_only_classes_filters_the_recipe_loaders_and_restores_them():
    from dgm_edu import vae

    script, original = _script(), vae.digits_loader
    with script.only_classes(vae, (0, 4)):
        for split in ("train", "val"):
            ys = torch.cat([y for _, y in vae.digits_loader(split, 64, labels=True)])
            _, all_y = data.load_digits(split)
            assert sorted(ys.tolist()) == sorted(all_y[(all_y == 0) | (all_y == 4)].tolist())
    assert vae.digits_loader is original


def test_bernoulli_background_against_counts_by_hand():
    script = _script()
    x_train, _ = data.load_digits("train")
    log_p = script.bernoulli_background(x_train[:50])
    # q_d = (#ones of pixel d among the 50 binarized digits + 1) / 52, counted by hand
    q0, q1 = (((x_train[:50, 0, 0, j] >= 8).sum().item() + 1) / 52 for j in (0, 1))
    x = torch.zeros(4, 1, 8, 8, dtype=torch.long)  # pixels (0, 0) and (0, 1) take 00, 10, 01, 11
    x[1, 0, 0, 0] = x[3, 0, 0, 0] = 16
    x[2, 0, 0, 1] = x[3, 0, 0, 1] = 9  # any level >= 8 is a one
    p = log_p(x).exp()  # (4,)
    assert (p[1] / p[0]).item() == pytest.approx(q0 / (1 - q0))
    assert (p[2] / p[0]).item() == pytest.approx(q1 / (1 - q1))
    # the four images exhaust the two pixels: their sum is p(rest), p[0] / ((1 - q0)(1 - q1))
    assert p.sum().item() == pytest.approx(p[0].item() / ((1 - q0) * (1 - q1)))
