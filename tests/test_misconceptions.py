"""Chapter 10's text generation and misconceptions: the text helpers of dgm_edu.autoregressive
against independent computations, CharModel.sample's temperature (greedy as T -> 0, the softmax
at T = 1 by a chi-square test), and the committed benchmarks/results/misconceptions.json (its
structure, the facts the chapter asserts, one cheap entry recomputed)."""

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from scipy import stats

from dgm_edu import weights
from dgm_edu.autoregressive import (
    CharConfig,
    CharRNN,
    CharTransformer,
    Vocab,
    load_names,
    nll_per_char,
    split_sample,
    well_formed,
)

RESULT = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "misconceptions.json"


@pytest.fixture(scope="module")
def result() -> dict:
    return json.loads(RESULT.read_text())


# --------------------------------------------------------------------------- the text helpers
@pytest.mark.parametrize(
    ("word", "ended", "ok"),
    [
        ("mira", True, True),
        ("mira", False, False),  # never emitted the end token
        ("m", True, False),  # too short
        ("", True, False),
        ("maaara", True, False),  # a letter three times in a row
        ("maara", True, True),  # twice is fine
        ("mi1a", True, False),  # not letters only
    ],
)
def test_well_formed_rules(word, ended, ok):
    assert well_formed(word, ended) is ok


def test_well_formed_accepts_the_corpus():
    assert all(well_formed(w) for w in load_names())
    with pytest.raises(TypeError, match="str"):
        well_formed(3)  # type: ignore[arg-type]


def test_split_sample():
    vocab = Vocab(["ab", "ba"])  # '.', 'a', 'b'
    assert split_sample(torch.tensor([0, 1, 2, 0, 1, 1]), vocab) == ("ab", True)
    assert split_sample(torch.tensor([0, 2, 2, 1]), vocab) == ("bba", False)
    assert split_sample(torch.tensor([0, 0, 1]), vocab) == ("", True)
    with pytest.raises(ValueError, match="one sampled row"):
        split_sample(torch.zeros(2, 3, dtype=torch.long), vocab)


def _chain_rule_nll(model, vocab: Vocab, word: str) -> float:
    """-log p(word) by the chain rule, one prefix at a time (an independent loop)."""
    ids = [0] + [vocab.index[c] for c in word] + [0]
    total = 0.0
    with torch.no_grad():
        for t in range(1, len(ids)):
            logits = model(torch.tensor([ids[:t]]))[0, -1]  # (V,): the next character
            total -= logits.log_softmax(-1)[ids[t]].item()
    return total


@pytest.mark.parametrize("cls", [CharRNN, CharTransformer])
def test_nll_per_char_is_the_chain_rule_per_character(cls):
    words = ["abc", "cab", "bbaac", "a"]
    vocab = Vocab(words)
    torch.manual_seed(0)
    model = cls(CharConfig(vocab_size=len(vocab), max_len=6, dim=16, num_heads=2)).eval()
    expected = sum(_chain_rule_nll(model, vocab, w) for w in words) / sum(len(w) + 1 for w in words)
    assert nll_per_char(model, vocab, words) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="at least one word"):
        nll_per_char(model, vocab, [])


# --------------------------------------------------------------------------- temperature
def _tiny(seed: int = 0) -> CharRNN:
    torch.manual_seed(seed)
    model = CharRNN(CharConfig(vocab_size=3, max_len=2, dim=8, num_layers=1)).eval()
    with torch.no_grad():  # spread the logits so that the distribution is far from uniform
        model.head.weight.mul_(8.0)
    return model


def test_sample_at_low_temperature_is_greedy():
    model = _tiny()
    ids = torch.zeros(1, 1, dtype=torch.long)
    with torch.no_grad():
        for _ in range(model.config.max_len):  # the argmax chain, built by hand
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], 1)
    torch.manual_seed(1)
    drawn = model.sample(50, temperature=1e-4)
    assert (drawn == ids.expand(50, -1)).all()


def test_sample_at_temperature_one_matches_the_softmax():
    """All 3^2 rows of a 2-step model enumerated: their exact probabilities against the counts of
    20000 draws (chi-square, 8 degrees of freedom)."""
    model = _tiny()
    rows = torch.tensor([[0, a, b] for a, b in itertools.product(range(3), repeat=2)])  # (9, 3)
    with torch.no_grad():
        log_p = model(rows[:, :-1]).log_softmax(-1).gather(-1, rows[:, 1:, None]).sum((1, 2))
    probs = log_p.exp()  # (9,)
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-5)
    torch.manual_seed(2)
    n = 20000
    drawn = model.sample(n, temperature=1.0)  # (n, 3)
    counts = torch.bincount(drawn[:, 1] * 3 + drawn[:, 2], minlength=9).double()
    expected = probs.double() * n
    assert (expected > 5).all()  # the chi-square approximation holds
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert stats.chi2.sf(chi2, df=8) > 1e-3, (counts, expected)
    # and at T = 2 the counts no longer fit the T = 1 probabilities
    torch.manual_seed(3)
    hot = model.sample(n, temperature=2.0)
    hot_counts = torch.bincount(hot[:, 1] * 3 + hot[:, 2], minlength=9).double()
    assert stats.chi2.sf(((hot_counts - expected) ** 2 / expected).sum().item(), df=8) < 1e-6


# --------------------------------------------------------------------------- the committed JSON
def test_result_structure(result):
    assert {"date", "command", "machine", "threads", "seconds"} <= set(result)
    assert result["mode"] == "reference"
    text = result["text"]
    assert set(text["models"]) == {"rnn", "transformer"}
    for row in text["models"].values():
        assert [t["temperature"] for t in row["temperatures"]] == [0.5, 0.75, 1.0, 1.25, 1.5]
        assert row["test_perplexity"] == pytest.approx(math.exp(row["test_nll_per_char"]))
        for t in row["temperatures"]:
            for key in ("new", "well_formed", "new_and_well_formed", "distinct"):
                assert 0 <= t[key] <= 1
            assert t["new_and_well_formed"] <= min(t["new"], t["well_formed"])
    cond = result["conditional"]
    assert list(cond["models"]) == ["vae-cond", "gan-cond", "autoregressive-cond", "diffusion"]
    for m in cond["models"].values():
        confusion = torch.tensor(m["confusion"])
        assert (confusion.sum(1) == cond["n_per_class"]).all()
        assert torch.tensor(m["per_class"]) == pytest.approx(
            confusion.diag().double() / cond["n_per_class"]
        )
        assert m["agreement"] == pytest.approx(sum(m["per_class"]) / 10)
    assert [r["shift"] for r in result["shift"]["rows"]] == [0, 1, 2, 3]
    ds = result["data_size"]
    assert ds["sizes"] == [100, 300, 1000] and ds["k"] >= 100 and len(ds["seeds"]) >= 2
    assert sorted((r["n"], r["seed"]) for r in ds["runs"]) == sorted(
        (n, s) for n in ds["sizes"] for s in ds["seeds"]
    )
    assert {r["steps"] for r in ds["runs"]} == {960}  # equal optimiser steps at every size
    assert ds["epochs"] * 16 == 960  # epochs of 16 batches of 64 (1000 draws each)
    for family in ("vae_seeds", "gan_seeds"):
        runs = result[family]["runs"]
        assert [r["seed"] for r in runs] == [0, 1, 2, 3, 4] and result[family]["n_samples"] == 1000
        assert all(len(r["samples_16"]) == 16 and len(r["samples_16"][0]) == 64 for r in runs)
        fids = torch.tensor([r["fid"] for r in runs])
        summary = result[family]["summary"]
        assert summary["fid_std"] == pytest.approx(fids.std().item(), rel=1e-5)
        assert (summary["fid_min"], summary["fid_max"]) == (fids.min().item(), fids.max().item())


def test_result_facts(result):
    """What the chapter asserts of the committed run."""
    text = result["text"]
    assert text["test_well_formed"] == 1.0  # the rule accepts every real test name
    for row in text["models"].values():
        ts = row["temperatures"]
        assert 1 < row["test_perplexity"] < 24  # better than uniform over the 24 letters + '.'
        assert row["test_nll_per_char"] > row["test_nll_per_char_train"]  # it overfits a little
        nll = [t["sample_nll"] for t in ts]
        assert nll == sorted(nll)  # hotter samples are less likely under the T = 1 model
        assert ts[-1]["new"] > ts[0]["new"] and ts[-1]["well_formed"] < ts[0]["well_formed"]
    for m in result["conditional"]["models"].values():
        assert m["agreement"] > 0.85
    rows = result["shift"]["rows"]
    assert rows[1]["ink_lost"] < 0.01 and rows[1]["classifier_accuracy"] > 0.95
    assert rows[1]["nll"] > rows[0]["nll"] + 10 and rows[1]["above_p95"] > 0.3
    runs = result["data_size"]["runs"]

    def mean(key: str, n: int) -> float:
        return sum(r[key] for r in runs if r["n"] == n) / sum(r["n"] == n for r in runs)

    assert mean("vae_test", 100) < mean("pixels_test", 1000)  # 100 images beat pixels on 1000
    assert mean("vae_test", 100) > mean("vae_test", 300) > mean("vae_test", 1000)
    gap = {n: mean("vae_test", n) - mean("vae_train", n) for n in (100, 1000)}
    assert gap[100] > gap[1000] > 0
    gan, vae = result["gan_seeds"]["summary"], result["vae_seeds"]["summary"]
    assert gan["fid_std"] > 2 * vae["fid_std"] and gan["fid_max"] / gan["fid_min"] > 1.5
    assert vae["nll_max"] - vae["nll_min"] < 1.0


def test_recompute_one_entry(result):
    """The GRU's per-character test NLL and the PixelCNN's NLL of the 1-pixel shift, again."""
    from dgm_edu.data import load_digits

    words = load_names()
    model = weights.load("text-rnn").eval()
    got = nll_per_char(model, Vocab(words), words[2700:])
    assert got == pytest.approx(result["text"]["models"]["rnn"]["test_nll_per_char"], rel=1e-5)
    pixelcnn = weights.load("autoregressive").eval()
    x = load_digits("test")[0]
    shifted = torch.zeros_like(x)
    shifted[..., 1:] = x[..., :-1]
    with torch.no_grad():
        nll = -pixelcnn.log_prob(shifted).mean().item()
    assert nll == pytest.approx(result["shift"]["rows"][1]["nll"], rel=1e-4)
