"""Checkpoints: the file format, safe loading, and what a training checkpoint knows about its run.

A checkpoint is a ``torch.save`` dict of state_dicts, tensors, numbers and strings. It is loaded
with ``weights_only=True``, so no pickled code runs, and it is sealed with a sha256 digest of its
contents, which :func:`load_checkpoint` requires and checks: a file without one was not written by
dgm_edu and is refused. Files are written atomically (a unique temporary file in the same
directory, flushed to disk, then renamed), so a reader sees the old file or the new one.

A *training* checkpoint, written by :func:`dgm_edu.train.fit` after every epoch, knows what it is
(:func:`run_settings`): the model class, ``asdict(model.config)``, each optimizer's class and
param-group hyper-parameters (lr, betas, weight decay, ...), the scheduler's class and settings
(``T_max``, ...), ``epochs``, the run mode (``dgm_edu.runtime.mode()``), ``grad_clip``, ``amp`` and
``patience``. Resuming with anything else is refused with a :class:`CheckpointError` that names
each differing field with both values, e.g. ``config.schedule: checkpoint 'linear', now 'cosine'``.

One difference is an explicit extension, not a mismatch: more ``epochs`` than the checkpoint's.
Scheduler settings that followed the epoch count (a ``CosineAnnealingLR`` with ``T_max = epochs``)
then take their new values while the schedule's progress (``last_epoch``, the current lr) is
kept. torch's cosine schedule is chainable, each step scales the distance to ``eta_min``:
lr_t − η = (lr_{t−1} − η)·(1 + cos(π t/T))/(1 + cos(π (t−1)/T)). With T the new epoch count the lr
goes on falling from where it was to η at the new end, and never climbs again (a finished run, at
η already, stays there). A run that stopped early stays stopped when extended.

While :func:`dgm_edu.train.fit` trains into a path it holds ``<path>.lock`` (with its pid), so a
second run on the same path fails at once instead of racing; a lock whose process has died is
taken over. The history is written beside the checkpoint as ``<stem>.json`` (:func:`history_path`),
so a checkpoint name ending in ``.json`` is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dgm_edu import distributed, runtime

__all__ = [
    "CheckpointError",
    "CheckpointInUse",
    "Trainee",
    "checkpoint_lock",
    "claim_checkpoint",
    "history_path",
    "load_checkpoint",
    "load_model_state",
    "restore_training_state",
    "run_settings",
    "save_checkpoint",
    "save_training_state",
    "wait_for_release",
]

TRAINING_KEYS = ("model", "optimizers", "history", "epoch", "bad_epochs", "best_model", "rng_cpu")
HOW_TO_PROCEED = "delete the file or pass resume=False to train afresh"
WRITTEN = "a file written by dgm_edu.train.save_checkpoint"
AFRESH = "delete it or pass another path to train afresh"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, that belongs to another model or run, or is in use."""


class CheckpointInUse(CheckpointError):
    """Another live run holds the checkpoint's lock: its ``pid`` and ``lock`` file are attached."""

    def __init__(self, message: str, lock: Path, pid: int) -> None:
        super().__init__(message)
        self.lock, self.pid = lock, pid


def _refused(path: Path | str, what: str, expected: str) -> CheckpointError:
    """The error for a checkpoint that cannot be used: what it is, and what was expected."""
    return CheckpointError(f"Checkpoint {path} {what}: expected {expected}")


# --------------------------------------------------------------------------- the file format
def _digest(obj: Any) -> str:
    """sha256 over every tensor's bytes, dtype and shape, and every other leaf's repr."""
    h = hashlib.sha256()

    def walk(o: Any) -> None:
        if isinstance(o, torch.Tensor):
            t = o.detach().cpu().contiguous().reshape(-1)
            h.update(f"T{t.dtype}{tuple(o.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
        elif isinstance(o, Mapping):
            h.update(b"{")
            for k in sorted(o, key=str):
                h.update(repr(k).encode())
                walk(o[k])
            h.update(b"}")
        elif isinstance(o, list | tuple):
            h.update(b"[")
            for v in o:
                walk(v)
            h.update(b"]")
        else:
            h.update(repr(o).encode())

    walk(obj)
    return h.hexdigest()


def atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Write through ``write(file)`` into a unique temporary file, flush it to disk, rename it.

    The temporary file is unique (two writers never share it) and lives in the target's directory,
    so the rename is atomic on POSIX: a reader sees the old file or the new one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    ) as f:
        tmp = Path(f.name)
        try:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        except BaseException:
            f.close()
            tmp.unlink()  # the write failed part-way: leave the old file as it was
            raise
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Save ``payload`` (state_dicts, tensors, numbers, strings) atomically, sealed with its sha256.

    :func:`load_checkpoint` checks the digest, so a file whose bytes were changed after saving is
    refused rather than loaded with wrong weights.
    """
    if not isinstance(payload, dict):
        raise TypeError(f"payload must be a dict of state_dicts, got {type(payload).__name__}")
    sealed = {**payload, "sha256": _digest(payload)}
    atomic_write(Path(path), lambda f: torch.save(sealed, f))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``: no pickled code runs) and verify it."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"Checkpoint {path} is a directory: expected a checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, tampered, or a pickle that weights_only refuses
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"Cannot load checkpoint {path}: expected a file saved by "
            f"dgm_edu.train.save_checkpoint (state_dicts only); it is truncated, tampered with or "
            f"unsafe ({first})"
        ) from None
    if not isinstance(state, dict):
        raise _refused(
            path,
            f"holds a {type(state).__name__}, not a dict",
            f"{WRITTEN} (it was not written by dgm_edu)",
        )
    if "sha256" not in state:
        why = "which seals every checkpoint (not written by dgm_edu, or its digest was removed)"
        raise _refused(path, "has no sha256 digest", f"{WRITTEN}, {why}")
    saved = state.pop("sha256")
    if saved != _digest(state):
        raise CheckpointError(
            f"Checkpoint {path} failed its integrity check: the sha256 of its contents does "
            f"not match the digest saved with them; expected an unmodified file written by "
            f"dgm_edu.train.save_checkpoint (it was tampered with or corrupted)"
        )
    return state


def _check_model_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"Checkpoint {source} does not match {type(model).__name__}: "
            f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]}, "
            f"shape mismatches {shapes[:5]}; expected a checkpoint of this model and config"
        )


def load_model_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "") -> None:
    """``model.load_state_dict`` with an error that says which keys or shapes do not match."""
    _check_model_state(model, state, source)
    model.load_state_dict(state)


def history_path(checkpoint: str | Path) -> Path:
    """Where :func:`dgm_edu.train.fit` writes the JSON history of a checkpoint: ``<stem>.json``."""
    return Path(checkpoint).with_suffix(".json")


# --------------------------------------------------------------------------- one run per path
def _lock_owner(lock: Path) -> tuple[int, str] | None:
    """``(pid, host)`` written in a lock file, or None when it is empty or unreadable."""
    for _ in range(20):  # a claimer writes its pid right after creating the file: wait for it
        with contextlib.suppress(OSError, ValueError):
            pid, host = lock.read_text().split(maxsplit=1)
            return int(pid), host.strip()
        time.sleep(0.05)
    return None


def _alive(pid: int, host: str) -> bool:
    """Whether process ``pid`` runs (a zombie does not); a lock of another host counts as held."""
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    with contextlib.suppress(OSError, IndexError):  # Linux: a killed child not yet reaped
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _claim(lock: Path, path: Path) -> None:
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _lock_owner(lock)
            if owner is not None and _alive(*owner):
                raise CheckpointInUse(
                    f"Checkpoint {path} is in use: another run (pid {owner[0]}) is training into "
                    f"{path}; expected one run per checkpoint (wait for it to finish or pass "
                    f"another path; if no such run exists, delete {lock})",
                    lock,
                    owner[0],
                ) from None
            lock.unlink(missing_ok=True)  # stale: its run died without removing it
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()} {socket.gethostname()}\n")
        return
    raise CheckpointError(f"Cannot claim {lock}: other runs keep taking it; expected one run")


def wait_for_release(lock: Path, timeout: float = 3600.0, poll: float = 0.5) -> None:
    """Block until no live run holds ``lock`` (it finished, died, or the file is gone).

    Raises :class:`CheckpointInUse` after ``timeout`` seconds of a run that still holds it.
    """
    deadline = time.monotonic() + timeout
    while (owner := _lock_owner(lock) if lock.exists() else None) is not None and _alive(*owner):
        if time.monotonic() > deadline:
            raise CheckpointInUse(
                f"{lock} is still held by pid {owner[0]} after {timeout:.0f} s; expected its run "
                f"to finish (if no such run exists, delete {lock})", lock, owner[0],
            )  # fmt: skip
        time.sleep(poll)


@contextlib.contextmanager
def checkpoint_lock(path: str | Path) -> Iterator[Path]:
    """Claim ``path`` for one training run, before it trains: checks, then ``<path>.lock``.

    Refuses a path that is a directory or ends in ``.json`` (the history's name), creates the
    directory and checks that it is writable (by creating the lock in it), and holds the lock,
    with this process's pid, until the block exits.
    """
    path = Path(path)
    if path.suffix == ".json":
        raise ValueError(
            f"checkpoint must not end in '.json' (fit writes the history beside it as "
            f"{history_path(path).name}), got '{path}'; expected e.g. '{path.with_suffix('.pt')}'"
        )
    if path.is_dir():
        raise IsADirectoryError(f"Checkpoint {path} is a directory: expected a checkpoint file")
    lock = path.with_name(path.name + ".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _claim(lock, path)
    except PermissionError as err:
        raise PermissionError(
            f"Cannot write checkpoint {path}: the directory {path.parent} is not writable "
            f"({err.strerror}); expected a writable directory (checked before training starts)"
        ) from None
    try:
        yield path
    finally:
        owner = _lock_owner(lock) if lock.exists() else None
        if owner is not None and owner[0] == os.getpid():
            lock.unlink(missing_ok=True)


def claim_checkpoint(stack: contextlib.ExitStack, path: Path, device: torch.device) -> None:
    """Rank 0 enters :func:`checkpoint_lock` on ``stack``; every rank learns whether it failed."""
    error: BaseException | None = None
    if distributed.is_main_process():
        try:
            stack.enter_context(checkpoint_lock(path))
        except (OSError, ValueError, CheckpointError) as err:
            error = err
    failed = distributed.all_sum([float(error is not None)], device)[0]
    if error is not None:
        raise error
    if failed:
        raise CheckpointError(f"Rank 0 could not claim checkpoint {path}: see its error")


# --------------------------------------------------------------------------- what a run is
def model_id(model: nn.Module) -> str:
    """``module.QualName`` of the model's class, as checkpoints record it."""
    return f"{type(model).__module__}.{type(model).__qualname__}"


def _plain(o: Any) -> Any:
    """Numbers, strings, None, and dicts/lists/tuples of them (what ``weights_only`` loads)."""
    if o is None or isinstance(o, bool | int | float | str):
        return o
    if isinstance(o, torch.Tensor):
        return o.item() if o.numel() == 1 else o.tolist()
    if isinstance(o, Mapping):
        return {str(k): _plain(v) for k, v in o.items()}
    if isinstance(o, tuple):
        return tuple(_plain(v) for v in o)
    if isinstance(o, list):
        return [_plain(v) for v in o]
    return repr(o)


# scheduler state that records progress, not settings (base_lrs repeats the optimizer's lr)
_SCHEDULE_PROGRESS = {
    "last_epoch",
    "_step_count",
    "_last_lr",
    "_get_lr_called_within_step",
    "_is_initial",
    "verbose",
    "base_lrs",
}


def _schedule_settings(state: Any) -> Any:
    if isinstance(state, Mapping):
        return {k: _schedule_settings(v) for k, v in state.items() if k not in _SCHEDULE_PROGRESS}
    if isinstance(state, list):
        return [_schedule_settings(v) for v in state]
    return _plain(state)


def _optimizer_settings(opt: torch.optim.Optimizer) -> dict[str, Any]:
    groups = [
        {k: _plain(v) for k, v in g.items() if k not in ("params", "initial_lr")}
        for g in opt.param_groups
    ]
    cls = f"{type(opt).__module__}.{type(opt).__qualname__}"
    return {"class": cls, **groups[0]} if len(groups) == 1 else {"class": cls, "groups": groups}


def run_settings(
    model: nn.Module,
    optimizers: Mapping[str, torch.optim.Optimizer],
    scheduler: Any,
    *,
    epochs: int,
    grad_clip: float | None,
    amp: str | None,
    patience: int | None,
    ema: float | None = None,
) -> dict[str, Any]:
    """What a training checkpoint records about its run, to refuse resuming another one.
    (``ema`` is recorded only when set, so checkpoints of runs without it still resume.)"""
    config = getattr(model, "config", None)
    opts = {name: _optimizer_settings(o) for name, o in optimizers.items()}
    settings: dict[str, Any] = {
        "config": _plain(asdict(config)) if is_dataclass(config) else None,
        "epochs": epochs,
        "mode": runtime.mode(),
        "grad_clip": grad_clip,
        "amp": amp,
        "patience": patience,
    }
    if ema is not None:
        settings["ema"] = ema
    if list(opts) == ["optimizer"]:
        settings["optimizer"] = opts["optimizer"]
    else:
        settings["optimizers"] = opts
    settings["scheduler"] = (
        None
        if scheduler is None
        else {
            "class": f"{type(scheduler).__module__}.{type(scheduler).__qualname__}",
            **_schedule_settings(scheduler.state_dict()),
        }
    )
    return settings


class _Absent:
    def __repr__(self) -> str:
        return "absent"


_ABSENT = _Absent()


def _differences(saved: Any, now: Any, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """``{"config.schedule": (saved, now), ...}``: the leaves or subtrees that differ."""
    if isinstance(saved, Mapping) and isinstance(now, Mapping):
        out: dict[str, tuple[Any, Any]] = {}
        for k in list(now) + [k for k in saved if k not in now]:
            key = f"{prefix}.{k}" if prefix else str(k)
            out.update(_differences(saved.get(k, _ABSENT), now.get(k, _ABSENT), key))
        return out
    if isinstance(saved, list) and isinstance(now, list) and len(saved) == len(now):
        out = {}
        for i, (a, b) in enumerate(zip(saved, now)):
            out.update(_differences(a, b, f"{prefix}[{i}]"))
        return out
    return {} if saved == now else {prefix: (saved, now)}


def _check_settings(path: Path, saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Refuse other settings; return the scheduler keys to rebuild for an extension of epochs."""
    diffs = _differences(saved, now)
    old_epochs, new_epochs = saved.get("epochs"), now["epochs"]
    rebuild = [
        k.split(".", 1)[1]
        for k, (old, new) in diffs.items()
        if k.count(".") == 1 and k.startswith("scheduler.") and "[" not in k
        and (old, new) == (old_epochs, new_epochs)
    ]  # fmt: skip
    extension = isinstance(old_epochs, int) and new_epochs > old_epochs
    if extension and set(diffs) <= {"epochs", *(f"scheduler.{k}" for k in rebuild)}:
        return rebuild
    if not diffs:
        return []
    listed = "; ".join(f"{k}: checkpoint {old!r}, now {new!r}" for k, (old, new) in diffs.items())
    raise CheckpointError(
        f"Checkpoint {path} was written by a run with other settings: {listed}; expected the same "
        f"model config and training settings to resume (an extension may only raise epochs): "
        f"{HOW_TO_PROCEED}"
    )


# --------------------------------------------------------------------------- training state
@dataclass
class Trainee:
    """What a training checkpoint saves and restores, and is checked against: the model, its
    optimizers by name, its scheduler (or None), the run's settings (:func:`run_settings`) and
    the weight average that :func:`dgm_edu.train.fit` keeps with ``ema`` (or None)."""

    model: nn.Module
    optimizers: Mapping[str, torch.optim.Optimizer]
    scheduler: Any
    settings: dict[str, Any]
    averaged: nn.Module | None = None


def save_training_state(
    path: Path,
    t: Trainee,
    *,
    history: dict[str, Any],
    epoch: int,
    bad_epochs: int,
    best_model: dict[str, torch.Tensor] | None,
) -> None:
    """Rank 0 writes the checkpoint (with every rank's RNG state) and, beside it, the history as
    JSON (:func:`history_path`); every rank must call this."""
    rng = {
        "cpu": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
    }
    ranks = distributed.all_gather(rng)
    if distributed.dist_info()[0] == 0:
        save_checkpoint(
            path,
            {
                "model": t.model.state_dict(),
                "model_class": model_id(t.model),
                "settings": t.settings,
                "optimizers": {k: o.state_dict() for k, o in t.optimizers.items()},
                "scheduler": t.scheduler.state_dict() if t.scheduler is not None else None,
                "averaged": t.averaged.state_dict() if t.averaged is not None else None,
                "history": history,
                "epoch": epoch,
                "bad_epochs": bad_epochs,
                "best_model": best_model,
                "rng_cpu": rng["cpu"],
                "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "rng_ranks": ranks if len(ranks) > 1 else [],
            },
        )
        text = json.dumps(history, indent=1).encode()
        atomic_write(history_path(path), lambda f: f.write(text))
    distributed.barrier()  # no rank runs ahead of a checkpoint that is still being written


def restore_training_state(path: Path, t: Trainee) -> dict[str, Any]:
    """Check a training checkpoint against this run, then load it into the model, optimizers,
    scheduler and RNG; return it (``history``, ``epoch``, ``bad_epochs``, ``best_model``, ...).

    Everything is checked before anything is loaded, so a refused checkpoint changes nothing.
    """
    model, optimizers, scheduler, settings = t.model, t.optimizers, t.scheduler, t.settings
    state = load_checkpoint(path)
    missing = [k for k in TRAINING_KEYS if k not in state]
    if missing:
        raise CheckpointError(
            f"Checkpoint {path} is not a training checkpoint written by dgm_edu.train.fit: "
            f"missing {missing}; expected a file that fit(checkpoint=...) saved"
        )
    saved_id = state.get("model_class")
    if saved_id != model_id(model):
        what = f"was saved from a {saved_id}, not a {model_id(model)}"
        raise _refused(path, what, f"a checkpoint of this model ({AFRESH})")
    _check_model_state(model, state["model"], str(path))
    if set(state["optimizers"]) != set(optimizers):
        raise CheckpointError(
            f"Checkpoint {path} holds optimizers {sorted(state['optimizers'])}, expected "
            f"{sorted(optimizers)}: {HOW_TO_PROCEED}"
        )
    if "settings" not in state:
        raise CheckpointError(
            f"Checkpoint {path} does not record its model config and training settings (it was "
            f"written by an older dgm_edu): expected a checkpoint that can be checked against "
            f"this run; {HOW_TO_PROCEED}"
        )
    rebuild = _check_settings(path, state["settings"], settings)
    model.load_state_dict(state["model"])
    for name, opt in optimizers.items():
        try:
            opt.load_state_dict(state["optimizers"][name])
        except (ValueError, KeyError) as err:
            raise CheckpointError(
                f"Checkpoint {path}: optimizer {name!r} does not match ({err}); expected a "
                f"checkpoint of this model and optimizer"
            ) from None
    if t.averaged is not None:  # the settings matched, so the checkpoint holds an average
        t.averaged.load_state_dict(state["averaged"])
    if scheduler is not None and state.get("scheduler") is not None:
        fresh = scheduler.state_dict()  # an extension keeps the new epoch-tied settings
        scheduler.load_state_dict({**state["scheduler"], **{k: fresh[k] for k in rebuild}})
    state["settings"] = settings  # an extension is saved with its new settings from now on
    per_rank = state.get("rng_ranks") or []
    rank = distributed.dist_info()[0]
    rng = (
        per_rank[rank]
        if rank < len(per_rank)
        else {"cpu": state["rng_cpu"], "cuda": state.get("rng_cuda")}
    )
    torch.set_rng_state(rng["cpu"])
    if torch.cuda.is_available() and rng.get("cuda"):
        if isinstance(rng["cuda"], list | tuple):
            torch.cuda.set_rng_state_all(rng["cuda"])
        else:
            torch.cuda.set_rng_state(rng["cuda"])
    return state
