"""The shipped reference weights: verified on load, reproducing their recorded figures, and
rebuilt bit for bit from their recipes."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch

from dgm_edu import runtime, weights
from dgm_edu.data import load_digits
from dgm_edu.metrics import evaluate_nll

SHIPPED = weights.names()


def test_the_reference_weights_are_shipped():
    assert SHIPPED, "no reference weights are shipped: build them with `make weights`"


# --------------------------------------------------------------------------- modes
@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "reference"),
        ({"DGM_EDU_FAST": "1"}, "fast"),
        ({"DGM_EDU_MODE": "full"}, "full"),
        ({"DGM_EDU_MODE": "FAST", "DGM_EDU_FAST": "1"}, "fast"),
        ({"DGM_EDU_MODE": "reference"}, "reference"),
    ],
)
def test_mode_is_read_from_the_environment(monkeypatch, env, expected):
    monkeypatch.delenv("DGM_EDU_MODE", raising=False)
    monkeypatch.delenv("DGM_EDU_FAST", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert runtime.mode() == expected
    assert runtime.budget(fast="f", full="F") == ("f" if expected == "fast" else "F")
    assert runtime.checkpoint_path("vae-2d") == Path(".checkpoints") / expected / "vae-2d.pt"


def test_mode_refuses_unknown_and_conflicting_values(monkeypatch):
    monkeypatch.delenv("DGM_EDU_FAST", raising=False)
    monkeypatch.setenv("DGM_EDU_MODE", "quick")
    with pytest.raises(ValueError, match="DGM_EDU_MODE='quick' is not a mode: expected one of"):
        runtime.mode()
    monkeypatch.setenv("DGM_EDU_MODE", "full")
    monkeypatch.setenv("DGM_EDU_FAST", "1")
    with pytest.raises(ValueError, match="asks for fast mode but DGM_EDU_MODE='full'"):
        runtime.mode()
    with pytest.raises(ValueError, match="plain file stem"):
        runtime.checkpoint_path("../x")


# --------------------------------------------------------------------------- loading
def test_unknown_name_is_refused():
    with pytest.raises(weights.WeightsError, match="No shipped weights named 'vea'"):
        weights.load("vea")
    with pytest.raises(weights.WeightsError, match="Unknown weights name 'vea': expected one of"):
        weights.obtain("vea")


def test_a_changed_or_missing_file_is_refused(tmp_path, monkeypatch):
    shutil.copytree(weights.weights_dir(), tmp_path / "w")
    monkeypatch.setenv("DGM_EDU_WEIGHTS", str(tmp_path / "w"))
    name = "mixture"
    path = tmp_path / "w" / weights.entry(name)["file"]
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 1  # one flipped bit in the last weight
    path.write_bytes(bytes(blob))
    with pytest.raises(weights.WeightsError, match="does not match the manifest: sha256"):
        weights.load(name)
    path.unlink()
    with pytest.raises(weights.WeightsError, match="weights file of 'mixture' is missing"):
        weights.load(name)


def test_headline_models_are_shipped_within_the_size_budget():
    assert set(weights.HEADLINE) <= set(SHIPPED)
    total = sum(weights.entry(n)["bytes"] for n in SHIPPED)
    assert total <= 25e6, f"{total / 1e6:.1f} MB of weights, budget 25 MB"
    for name in SHIPPED:
        row = weights.entry(name)
        for key in ("sha256", "class", "recipe", "seed", "torch", "threads", "train_seconds"):
            assert row[key] is not None, (name, key)
        # every recipe is registered: a reader in full mode retrains exactly what was shipped
        assert weights.recipe(name).chapter == row["chapter"]


def test_manifest_lists_exactly_the_files_shipped():
    files = {p.name for p in weights.weights_dir().glob("*.safetensors")}
    assert files == {weights.entry(n)["file"] for n in SHIPPED}


def test_autoregressive_reproduces_its_exact_test_nll():
    x, _ = load_digits("test")
    model = weights.load("autoregressive", device="cpu")
    with torch.no_grad():
        nll = evaluate_nll(model, x)
    assert nll == pytest.approx(
        weights.entry("autoregressive")["figures"]["test_nll_nats"], abs=2e-3
    )


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_reproduces_its_recorded_figures(name):
    """Each entry's figures recomputed (slow estimators swapped for the recorded cheap check,
    e.g. IWAE-50 for IWAE-1000): they must match what the manifest recorded at build time."""
    model = weights.load(name, device="cpu")
    assert not model.training
    recorded = weights.entry(name)["figures"]
    now = weights.recipe(name).figures(model, full=False)
    compared = [k for k, v in now.items() if isinstance(v, int | float)]
    assert compared, name
    for key in compared:
        # same seeds and estimator, one thread: only summation order may differ
        assert now[key] == pytest.approx(recorded[key], rel=1e-3, abs=1e-3), (name, key)


def test_loaded_model_is_ready_for_log_prob_and_sample():
    x, _ = load_digits("test")
    for name in ("mixture", "vae", "autoregressive", "flows", "diffusion", "rbm"):
        model = weights.load(name, device="cpu")
        with torch.no_grad():
            lp = model.log_prob(x[:4])
        assert lp.shape == (4,) and torch.isfinite(lp).all() and (lp < 0).all()
    gan = weights.load("gan", device="cpu")
    s = gan.sample(3)
    assert s.shape == (3, 1, 8, 8) and s.min() >= 0 and s.max() <= 16


def test_obtain_uses_the_shipped_weights_in_reference_mode(monkeypatch):
    monkeypatch.delenv("DGM_EDU_FAST", raising=False)
    monkeypatch.setenv("DGM_EDU_MODE", "reference")
    model, hist = weights.obtain("mixture")
    shipped = weights.load("mixture")
    for a, b in zip(model.state_dict().values(), shipped.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert hist.best_epoch == weights.entry("mixture")["best_epoch"]
    stages = weights.obtain_stages("gan-ring8")
    assert [s for s, _, _ in stages] == list(weights.recipe("gan-ring8").stages)


def test_obtain_trains_from_scratch_in_fast_mode(monkeypatch, tmp_path):
    monkeypatch.setenv("DGM_EDU_MODE", "fast")
    monkeypatch.setenv("DGM_EDU_CHECKPOINTS", str(tmp_path))

    def no_shipped_weights(*args, **kwargs):
        raise AssertionError("fast mode must not load the shipped weights")

    monkeypatch.setattr(weights, "load", no_shipped_weights)
    model, hist = weights.obtain("mixture")
    assert (tmp_path / "fast" / "mixture.pt").is_file()
    assert hist.epochs_run <= 25 and hist.seconds > 0  # trained here, at the fast budget
    assert not model.training


def test_obtain_waits_for_another_process_training_the_same_checkpoint(
    monkeypatch, tmp_path, capsys
):
    """Two notebooks (or two test workers) obtain one model: the second waits for the first,
    then reloads its finished run, or trains itself if that run died without finishing."""
    import socket
    import subprocess
    import sys

    monkeypatch.setenv("DGM_EDU_MODE", "fast")
    monkeypatch.setenv("DGM_EDU_CHECKPOINTS", str(tmp_path))
    path = runtime.checkpoint_path("mixture")
    path.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
    (path.parent / "mixture.pt.lock").write_text(f"{holder.pid} {socket.gethostname()}\n")
    start = time.monotonic()
    try:
        model, hist = weights.obtain("mixture")  # the holder dies without a checkpoint
    finally:
        holder.kill()
        holder.wait()
    assert time.monotonic() - start > 2.0, "it did not wait for the live holder"
    assert f"another run (pid {holder.pid}) is training it; waiting" in capsys.readouterr().out
    assert hist.epochs_run > 0 and path.is_file()

    other = subprocess.run(  # another process asks for the same model: it reloads, same weights
        [sys.executable, "-c", "from dgm_edu import weights; import torch; "
         "m, h = weights.obtain('mixture'); print(h.seconds); "
         f"torch.save(m.state_dict(), {str(tmp_path / 'other.pt')!r})"],
        env={**os.environ}, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert float(other.stdout.split()[-1]) == hist.seconds  # the history of this run, reloaded
    theirs = torch.load(tmp_path / "other.pt")
    for key, value in model.state_dict().items():
        assert torch.equal(value, theirs[key]), key


# --------------------------------------------------------------------------- rebuilding
def _rebuild(name: str, out: Path, tmp_path: Path, monkeypatch) -> dict:
    monkeypatch.delenv("DGM_EDU_FAST", raising=False)
    monkeypatch.setenv("DGM_EDU_MODE", "full")
    monkeypatch.setenv("DGM_EDU_CHECKPOINTS", str(tmp_path / f"ck-{out.name}"))  # nothing resumed
    threads = torch.get_num_threads()
    try:
        built = weights.build([name.split("@")[0]], out=out, threads=weights.entry(name)["threads"],
                              progress=False)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert json.loads((out / "manifest.json").read_text())["entries"][name]
    return built[name]


def _rebuild_and_compare(name: str, tmp_path: Path, monkeypatch) -> None:
    """On a CPU of the recorded signature the rebuild is the shipped file, byte for byte. On another
    CPU torch and MKL pick other kernels, the floats round differently from the first step, and
    only the result can be compared: every figure within 0.1% of the recorded one (seen: the
    mixture within 1e-6, the RBM's NLL within 1.5e-4 relative on a CPU with AMX)."""
    row = weights.entry(name)
    built = _rebuild(name, tmp_path / "w", tmp_path, monkeypatch)
    if row.get("cpu") == weights.cpu_signature():
        assert built["sha256"] == row["sha256"], f"{name} did not rebuild bit for bit"
        return
    measured = {k: v for k, v in row["figures"].items() if isinstance(v, float)}
    assert measured, f"{name} records no figures to compare"
    for key, want in measured.items():
        assert built["figures"][key] == pytest.approx(want, rel=1e-3), (name, key)


@pytest.mark.parametrize("name", ["mixture", "rbm"])
def test_cheap_entries_rebuild_bit_for_bit(name, tmp_path, monkeypatch):
    _rebuild_and_compare(name, tmp_path, monkeypatch)


def test_a_build_is_deterministic_on_any_cpu(tmp_path, monkeypatch):
    """Whatever the CPU, two builds of one recipe write the same bytes (seeded, one thread)."""
    first = _rebuild("mixture", tmp_path / "a", tmp_path, monkeypatch)
    second = _rebuild("mixture", tmp_path / "b", tmp_path, monkeypatch)
    assert first["sha256"] == second["sha256"] == weights.sha256_of(tmp_path / "b" / first["file"])
    assert first["cpu"] == weights.cpu_signature()


def test_a_build_leaves_no_checkpoint_for_the_next_build_to_reload(tmp_path, monkeypatch):
    """Checkpoints let an interrupted build resume; a finished one left behind would make the next
    build reload it instead of training (it once shipped the weights of an older run)."""
    _rebuild("mixture", tmp_path / "w", tmp_path, monkeypatch)
    assert not [p for p in (tmp_path / "ck-w").rglob("*") if p.is_file()]
    folder = weights.runtime.checkpoint_path("gan-ring8").parent  # a staged recipe's files
    folder.mkdir(parents=True, exist_ok=True)  # (the build left it empty)
    stale = ["gan-ring8.pt", "gan-ring8.json", "gan-ring8-e10.pt", "gan-ring8-e10.json",
             "gan-ring8-e400.pt"]  # fmt: skip
    kept = ["gan-ring8x.pt", "gan-ring8-extra.pt", "gan.pt", "gan-e10.pt"]  # other names
    for f in stale + kept:
        (folder / f).write_bytes(b"")
    weights._drop_checkpoints("gan-ring8")
    assert sorted(p.name for p in folder.iterdir()) == sorted(kept)


@pytest.mark.skipif(os.environ.get("DGM_EDU_REBUILD_ALL") != "1", reason="opt-in: minutes each")
@pytest.mark.parametrize("name", [n for n in SHIPPED if "@" not in n])
def test_every_entry_rebuilds_bit_for_bit(name, tmp_path, monkeypatch):
    _rebuild_and_compare(name, tmp_path, monkeypatch)


def test_build_refuses_other_modes(monkeypatch):
    monkeypatch.setenv("DGM_EDU_MODE", "fast")
    with pytest.raises(RuntimeError, match="expected DGM_EDU_MODE=full"):
        weights.build(["mixture"])


def test_figures_are_measured_again_without_touching_the_weights(tmp_path):
    """``python -m dgm_edu.weights figures NAME`` (after a metric changes): the row's figures are
    recomputed from the shipped weights; the digest and every other field stay as they were."""
    name = "gan-ring8@10"
    real = json.loads((weights.weights_dir() / weights.MANIFEST).read_text())
    stale = json.loads(json.dumps(real))
    stale["entries"][name]["figures"] = {"modes": 99, "within_3sigma": -1.0, "estimator": "old"}
    (tmp_path / weights.MANIFEST).write_text(json.dumps(stale))
    new = weights.refigure([name], out=tmp_path)
    rows = json.loads((tmp_path / weights.MANIFEST).read_text())["entries"]
    assert new[name] == real["entries"][name]["figures"] == rows[name]["figures"]
    assert {k: v for k, v in rows[name].items() if k != "figures"} == {
        k: v for k, v in real["entries"][name].items() if k != "figures"
    }
    assert {k: rows[k] for k in rows if k != name} == {
        k: v for k, v in real["entries"].items() if k != name
    }


def test_each_row_records_the_seed_its_recipe_trains_with():
    seeds = {name: row["seed"] for name, row in weights.manifest().items()}
    assert seeds == {name: weights.recipe(name).seed for name in seeds}
    assert seeds["vae-mlp-seed2"] == 2 and seeds["vae"] == 0


def test_side_by_side_build_writes_the_files_of_a_one_job_build(tmp_path, monkeypatch):
    """``build(jobs=2)`` trains in spawned processes: the same bytes as a one-job build on this
    machine, every recipe's entry in one manifest, and an unknown name refused first."""
    monkeypatch.delenv("DGM_EDU_FAST", raising=False)
    monkeypatch.setenv("DGM_EDU_MODE", "full")
    monkeypatch.setenv("DGM_EDU_CHECKPOINTS", str(tmp_path / "ck"))
    threads = torch.get_num_threads()
    try:
        with pytest.raises(weights.WeightsError, match="Unknown weights name 'nope'"):
            weights.build(["mixture", "nope"], out=tmp_path / "x", jobs=2, progress=False)
        assert not (tmp_path / "x").exists()  # refused before anything trained
        one = weights.build(["mixture"], out=tmp_path / "one", progress=False)
        monkeypatch.setenv("DGM_EDU_CHECKPOINTS", str(tmp_path / "ck2"))
        two = weights.build(["mixture", "text-rnn"], out=tmp_path / "two", jobs=2)
    finally:
        torch.set_num_threads(threads)
    assert two["mixture"]["sha256"] == one["mixture"]["sha256"]
    rows = json.loads((tmp_path / "two" / "manifest.json").read_text())["entries"]
    assert set(rows) == {"mixture", "text-rnn"} == set(two)


def test_half_precision_entries_load_exactly_what_their_figures_measured():
    """A ``half=True`` recipe ships float16 tensors; loaded, the model holds exactly those values,
    which is what :func:`weights.round_to_half` leaves in a trained model before its figures."""
    from safetensors.torch import load_file

    halves = [n for n in SHIPPED if weights.recipe(n.split("@")[0]).half]
    assert halves  # the size budget needs at least one
    for name in halves:
        stored = load_file(str(weights.weights_dir() / weights.entry(name)["file"]))
        model = weights.load(name, device="cpu")
        state = model.state_dict()
        for key, t in stored.items():
            if t.is_floating_point():
                assert t.dtype == torch.float16, (name, key)
                assert state[key].dtype == torch.float32 and torch.equal(state[key], t.float())
    net = torch.nn.Linear(3, 2)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1 / 3, 1e-8, 70000.0], [0.1, -2.5, 1 + 2**-12]]))
    weights.round_to_half(net)
    # float16 has 10 mantissa bits: 1/3 -> 0.333251953125, 1e-8 -> 0 (below the subnormals'
    # half step), 70000 -> inf (above 65504), 1 + 2^-12 -> 1 (ties to even)
    want = torch.tensor([[0.333251953125, 0.0, float("inf")], [0.0999755859375, -2.5, 1.0]])
    assert torch.equal(net.weight, want)


# ---------------------------------------------------------------- recipes fitted to others
def _fitted_to_mixture(ck, progress):
    """A recipe that ships the model :func:`weights.needed` hands it (the mixture)."""
    from dgm_edu.train import History

    return weights.needed("mixture"), History()


@pytest.fixture
def child_recipe(monkeypatch):
    """``child`` needs ``mixture``, ``loop`` and ``knot`` need each other."""
    figures = lambda model, full=True: {}  # noqa: E731
    extra = {
        "child": weights.Recipe(_fitted_to_mixture, figures, "01_introduction", needs=("mixture",)),
        "loop": weights.Recipe(_fitted_to_mixture, figures, "01_introduction", needs=("knot",)),
        "knot": weights.Recipe(_fitted_to_mixture, figures, "01_introduction", needs=("loop",)),
    }
    monkeypatch.setattr(weights, "RECIPES", {**weights.RECIPES, **extra})


def test_a_recipe_is_built_after_the_recipes_it_needs(child_recipe):
    assert weights._needs_first(["child", "rbm", "mixture"]) == ["mixture", "child", "rbm"]
    assert weights._needs_first(["child", "rbm"]) == ["child", "rbm"]  # mixture: the shipped one
    assert weights._needs_first(["latent-diffusion", "vae"]) == ["vae", "latent-diffusion"]
    with pytest.raises(weights.WeightsError, match="need each other: loop -> knot -> loop"):
        weights._needs_first(["loop"])
    # side by side: a recipe waits for the selected recipes it needs, not for shipped ones
    order, selected = ["child", "rbm"], ["child", "rbm", "mixture"]
    assert weights._ready(order, selected, set()) == ["rbm"]
    assert weights._ready(order, selected, {"mixture"}) == ["child", "rbm"]
    assert weights._ready(["child"], ["child"], set()) == ["child"]


def test_a_build_fits_a_recipe_to_the_entry_it_just_built(child_recipe, tmp_path, monkeypatch):
    """latent-diffusion is fitted to the VAE its build wrote (not to one trained a second time),
    and records that file's sha256, which ``verify`` (:func:`weights.mismatched_needs`) checks
    against the shipped one."""
    monkeypatch.delenv("DGM_EDU_FAST", raising=False)
    monkeypatch.setenv("DGM_EDU_MODE", "full")
    monkeypatch.setenv("DGM_EDU_CHECKPOINTS", str(tmp_path / "ck"))
    out = tmp_path / "w"
    threads = torch.get_num_threads()
    try:
        built = weights.build(["child", "mixture"], out=out, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert list(built) == ["mixture", "child"]
    mixture_sha = weights.sha256_of(out / "mixture.safetensors")
    assert built["child"]["needs"] == {"mixture": mixture_sha}
    # the child ships the very model the build wrote for "mixture" (a retrained one would differ
    # from it only if training were not deterministic: so compare with the file's tensors too)
    ours = weights.load("mixture", device="cpu", root=out).state_dict()
    theirs = weights.load("child", device="cpu", root=out).state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert weights._BUILD_OUT.get() is None  # the build's folder is forgotten after it

    # verify: a pair whose need was rebuilt since is refused
    monkeypatch.setenv("DGM_EDU_WEIGHTS", str(out))
    weights.mismatched_needs()
    rows = json.loads((out / weights.MANIFEST).read_text())
    rows["entries"]["child"]["needs"]["mixture"] = "0" * 64
    (out / weights.MANIFEST).write_text(json.dumps(rows))
    with pytest.raises(
        weights.WeightsError, match="'child' was fitted to 'mixture' with sha256 000"
    ):
        weights.mismatched_needs()


def test_a_build_refuses_a_recipe_whose_need_is_nowhere(child_recipe, tmp_path, monkeypatch):
    monkeypatch.setenv("DGM_EDU_MODE", "full")
    monkeypatch.setenv("DGM_EDU_WEIGHTS", str(tmp_path / "empty"))  # nothing shipped
    with pytest.raises(weights.WeightsError, match="build both .*build mixture child"):
        weights.build(["child"], out=tmp_path / "w", progress=False)
    assert not (tmp_path / "w").exists()  # refused before anything trained


def test_shipped_entries_were_fitted_to_the_entries_shipped_with_them():
    weights.mismatched_needs()
    assert weights.entry("latent-diffusion")["needs"] == {"vae": weights.entry("vae")["sha256"]}
