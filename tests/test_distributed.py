"""Multi-process training: the same fit under torchrun (2 CPU processes, gloo) as on one process.

The 2-process run goes through ``scripts/train_ddp.py``'s ``main``, the entry point that the README
documents, with the test-only two-optimizer recipe of ``tests/ddp_recipes.py`` added.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from torch.utils.data import (
    DataLoader,
    DistributedSampler,
    TensorDataset,
    WeightedRandomSampler,
)

from dgm_edu import checkpoints, distributed
from dgm_edu import train as train_mod
from dgm_edu.train import History, load_checkpoint, shard_loader

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "tests" / "ddp_recipes.py"


def _as_rank(monkeypatch, rank: int, world: int) -> None:
    monkeypatch.setattr(distributed, "dist_info", lambda: (rank, world))


def _batches(loader, epoch: int) -> list[list[int]]:
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    return [b[0].tolist() for b in loader]


def test_sharding_keeps_the_global_batches(monkeypatch):
    data = TensorDataset(torch.arange(20))
    # the single-process loader of scripts/train_ddp.py: a seeded shuffle, global batch 6
    single = DataLoader(data, batch_size=6, sampler=DistributedSampler(data, 1, 0, seed=3))
    for sampler_kind in ("distributed", "random"):
        loader = single if sampler_kind == "distributed" else DataLoader(data, 6, shuffle=True)
        shards = []
        for rank in range(2):
            _as_rank(monkeypatch, rank, 2)
            shards.append(shard_loader(loader, seed=3))
        assert [s.batch_size for s in shards] == [3, 3]
        for epoch in range(2):
            a, b = _batches(shards[0], epoch), _batches(shards[1], epoch)
            merged = [sorted(x + y) for x, y in zip(a, b)]
            assert merged == [sorted(x) for x in _batches(single, epoch)]  # same global batches
        assert _batches(shards[0], 0) != _batches(shards[0], 1)  # set_epoch reshuffles

    # evaluation: every example exactly once over the ranks, no padding
    val = DataLoader(TensorDataset(torch.arange(7)), batch_size=4)
    seen = []
    for rank in range(3):
        _as_rank(monkeypatch, rank, 3)
        seen += [i for b in shard_loader(val, evaluation=True) for i in b[0].tolist()]
    assert sorted(seen) == list(range(7))

    _as_rank(monkeypatch, 0, 4)
    with pytest.warns(
        UserWarning,
        match=r"batch_size 6 is not divisible by 4 processes: each "
        r"takes 1, so the global batch becomes 4",
    ):
        shard_loader(single)
    weighted = DataLoader(data, 4, sampler=WeightedRandomSampler(torch.ones(20), 20))
    with pytest.raises(
        ValueError,
        match=r"Cannot shard a DataLoader with a WeightedRandomSampler "
        r"across processes: expected shuffle=True/False or a DistributedSampler",
    ):
        shard_loader(weighted)
    _as_rank(monkeypatch, 0, 1)
    assert shard_loader(weighted) is weighted  # one process: loaders are used as they are


def test_only_rank_0_writes_checkpoints(tmp_path, monkeypatch):
    model = torch.nn.Linear(2, 1)
    opt = {"optimizer": torch.optim.SGD(model.parameters(), lr=0.1)}
    gathered = []

    def fake_gather(out, obj):  # stands in for the all-gather of every rank's RNG state
        gathered.append(obj)
        out[:] = [obj] * len(out)

    monkeypatch.setattr(distributed.dist, "all_gather_object", fake_gather)
    monkeypatch.setattr(distributed.dist, "barrier", lambda: None)
    settings = checkpoints.run_settings(
        model, opt, None, epochs=1, grad_clip=None, amp=None, patience=None
    )
    for rank in (1, 0):
        _as_rank(monkeypatch, rank, 2)
        checkpoints.save_training_state(
            tmp_path / f"r{rank}.pt", checkpoints.Trainee(model, opt, None, settings),
            history=asdict(History()), epoch=1, bad_epochs=0, best_model=None,
        )  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r0.json", "r0.pt"]
    assert len(load_checkpoint(tmp_path / "r0.pt")["rng_ranks"]) == 2 and len(gathered) == 2


def _load_recipes():
    spec = importlib.util.spec_from_file_location("ddp_recipes", RECIPES)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")
def test_torchrun_two_processes_match_one_process(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    # SGD, not Adam: Adam's update does not change when every gradient is scaled, so it would hide
    # a sum where a mean over processes belongs
    args = [
        "--optimizer",
        "sgd",
        "--lr",
        "2.0",
        "--epochs",
        "2",
        "--batch-size",
        "100",
        "--family",
        "pixel_mixture",
        "two_optimizers",
        "--backend",
        "gloo",
        "--device",
        "cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc_per_node",
            "2",
            "--log-dir",
            str(tmp_path / "logs"),
            "--redirects",
            "3",
            str(RECIPES),
            *args,
            "--out",
            str(tmp_path / "two.pt"),
            "--checkpoint",
            str(tmp_path / "ckpt.pt"),
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    wall_two = time.perf_counter() - t0
    logs = {
        p.parent.name + "/" + p.name: p.read_text() for p in (tmp_path / "logs").rglob("std*.log")
    }
    assert proc.returncode == 0, proc.stderr[-3000:] + "\n".join(logs.values())[-3000:]
    # rank 0 alone prints the report and draws the progress bars
    assert logs["0/stdout.log"].count('"world_size": 2') == 2 and logs["1/stdout.log"] == ""
    assert "pixel mixture (two optimizers)" in logs["0/stderr.log"]
    assert "pixel mixture" not in logs["1/stderr.log"]
    ckpt = load_checkpoint(tmp_path / "ckpt-pixel_mixture.pt")  # by rank 0, with both RNGs
    assert ckpt["epoch"] == 2 and len(ckpt["rng_ranks"]) == 2

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t0 = time.perf_counter()
        _load_recipes().main([*args, "--quiet", "--out", str(tmp_path / "one.pt")])
        wall_one = time.perf_counter() - t0
    finally:
        torch.set_num_threads(old)
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    for run in ("pixel_mixture", "two_optimizers"):  # the DDP wrapper; gradient hooks (train_step)
        assert one[run]["world_size"] == 1 and two[run]["world_size"] == 2
        for name, w1 in one[run]["model"].items():
            w2 = two[run]["model"][name]
            rel = ((w2 - w1).norm() / w1.norm()).item()
            assert rel < 1e-5, (run, name, rel)
        assert two[run]["val_loss"] == pytest.approx(one[run]["val_loss"], rel=1e-6)
        assert two[run]["train_loss"] == pytest.approx(one[run]["train_loss"], rel=1e-6)
    print(
        json.dumps(
            {
                "fit_seconds_1proc": one["pixel_mixture"]["seconds"],
                "fit_seconds_2proc": two["pixel_mixture"]["seconds"],
                "wall_torchrun_2proc": wall_two,
                "wall_inprocess_1proc": wall_one,
            }
        )
    )


def test_fit_calls_set_epoch_every_epoch():
    class Recording(DistributedSampler):
        epochs: list[int] = []

        def set_epoch(self, epoch: int) -> None:
            self.epochs.append(epoch)
            super().set_epoch(epoch)

    data = TensorDataset(torch.arange(8.0).view(8, 1))
    sampler = Recording(data, num_replicas=1, rank=0, seed=0)
    model = torch.nn.Linear(1, 1)
    model.loss = lambda x: model(x).pow(2).mean()
    train_mod.fit(
        model,
        torch.optim.SGD(model.parameters(), lr=0.01),
        DataLoader(data, batch_size=4, sampler=sampler),
        epochs=3,
        progress=False,
    )
    assert sampler.epochs == [0, 1, 2]  # without it every epoch would repeat epoch 0's order
