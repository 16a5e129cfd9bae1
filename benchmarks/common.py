"""What every benchmark script shares: its command-line switches, and one results schema.

Each ``benchmarks/<family>.py`` writes ``benchmarks/results/<family>.json`` (full mode) or
``<family>-fast.json`` (fast mode: a fast run never overwrites a full result). A run replaces its
file whole, nothing of an older run survives. Every file has the same fields (:data:`FIELDS`),
``None`` where a family has no such number (a GAN has no NLL, a likelihood model may have no
FID); family-specific numbers go in the ``extra`` dict:

- ``family``, ``mode`` (``"full"`` or ``"fast"``), ``estimator`` (how ``nll_nats`` was measured);
- ``nll_nats`` (test NLL or the family's upper bound on it, nats per image) and ``bpd``;
- ``fid``, ``kid``, ``kid_std``, ``precision``, ``recall`` of ``samples`` samples against the
  test split (:func:`dgm_edu.metrics.sample_quality`);
- ``train_seconds`` (the training loop's own clock), ``eval_seconds``, ``params``;
- ``best_epoch`` (1-based), ``epochs_run``;
- ``torch``, ``threads``, ``machine``, ``date`` (UTC);
- ``extra``.

The scripts are run as ``python benchmarks/<name>.py``, so they import this file as ``common``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"

FIELDS = (
    "family", "mode", "estimator", "nll_nats", "bpd", "fid", "kid", "kid_std", "precision",
    "recall", "samples", "train_seconds", "eval_seconds", "params", "best_epoch", "epochs_run",
    "torch", "threads", "machine", "date", "extra",
)  # fmt: skip
MODES = ("full", "fast")


# --------------------------------------------------------------------------- the switches
def default_threads() -> int:
    """Torch threads when ``--threads`` is not given: ``$OMP_NUM_THREADS``, else 1."""
    return int(os.environ.get("OMP_NUM_THREADS") or 1)


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Add the switches every benchmark has: ``--fast``, ``--threads`` and ``--out-dir``."""
    parser.add_argument("--fast", action="store_true", help="fast mode (DGM_EDU_MODE=fast)")
    parser.add_argument(
        "--threads", type=int, default=default_threads(), help="torch threads (default 1)"
    )
    parser.add_argument(
        "--out-dir", type=Path, default=None, help=f"where results go (default {RESULTS_DIR})"
    )


def configure(args: argparse.Namespace) -> str:
    """Set the run mode and torch's thread count from the switches; return the mode.

    ``--fast`` (or a fast-mode environment) gives ``"fast"``, anything else ``"full"``. The mode is
    written to ``DGM_EDU_MODE`` so that every ``dgm_edu`` budget reads the same one.
    """
    from dgm_edu import runtime

    mode = "fast" if args.fast or runtime.mode() == "fast" else "full"
    os.environ[runtime.MODE_ENV] = mode
    set_threads(args.threads)
    return mode


def set_threads(threads: int) -> None:
    """Give torch ``threads`` CPU threads (the benchmarks record the count they ran with)."""
    import torch

    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- the schema
def history_fields(history: Any) -> dict[str, Any]:
    """``train_seconds``, ``best_epoch`` (1-based; None without validation), ``epochs_run``."""
    best = history.best_epoch
    return {
        "train_seconds": round(history.seconds, 1),
        "best_epoch": best + 1 if best >= 0 else None,
        "epochs_run": history.epochs_run,
    }


def quality_fields(quality: dict[str, float], samples: int) -> dict[str, Any]:
    """Schema fields from :func:`dgm_edu.metrics.sample_quality` of ``samples`` samples."""
    return {
        "fid": quality["fid"],
        "kid": quality["kid_mean"],
        "kid_std": quality["kid_std"],
        "precision": quality["precision"],
        "recall": quality["recall"],
        "samples": samples,
    }


def machine() -> str:
    """This machine in one line: platform, CPU count, and that timings share the CPU."""
    return f"{platform.platform()}, {os.cpu_count()} CPUs (times are wall-clock, CPU may be shared)"


def now() -> str:
    """The current UTC time as ``YYYY-MM-DD HH:MM UTC``."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def bpd_of(nll_nats: float | None) -> float | None:
    """Bits per dimension of an NLL in nats per 8x8 image (None stays None)."""
    if nll_nats is None:
        return None
    from dgm_edu.metrics import nats_to_bpd

    return nats_to_bpd(nll_nats)


def make_result(family: str, mode: str, **fields: Any) -> dict[str, Any]:
    """One result with every field of :data:`FIELDS` in order (None where not given).

    ``bpd`` is derived from ``nll_nats``; ``torch``, ``threads``, ``machine`` and ``date`` are
    filled in from this process unless given. An unknown field raises ``TypeError``.
    """
    import torch

    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise TypeError(f"unknown result fields {unknown}: expected fields of {FIELDS}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    defaults = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": machine(),
        "date": now(),
        "extra": {},
    }
    result = {key: fields.get(key, defaults.get(key)) for key in FIELDS}
    result.update(family=family, mode=mode, bpd=bpd_of(result["nll_nats"]))
    return result


def finish(
    family: str, mode: str, model: Any, history: Any, out_dir: Path | None, **fields: Any
) -> Path:
    """The tail of every benchmark that trained ``model``: its parameter count and the history's
    fields (:func:`history_fields`) with ``fields`` (which override them: a GAN has no best
    epoch) through :func:`make_result`, written by :func:`write_result`; returns the path."""
    derived = {"params": sum(p.numel() for p in model.parameters()), **history_fields(history)}
    return write_result(make_result(family, mode, **{**derived, **fields}), out_dir)


def result_path(stem: str, mode: str, out_dir: Path | None = None) -> Path:
    """``<out_dir>/<stem>.json``, or ``<stem>-fast.json`` in fast mode (default: results/)."""
    directory = Path(out_dir) if out_dir is not None else RESULTS_DIR
    return directory / (f"{stem}-fast.json" if mode == "fast" else f"{stem}.json")


def write_json(path: Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, replacing the file whole (atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def write_result(result: dict[str, Any], out_dir: Path | None = None) -> Path:
    """Write a :func:`make_result` to ``<family>.json`` / ``<family>-fast.json``; return its path.

    The file is replaced whole: no field of an older run survives.
    """
    missing = [key for key in FIELDS if key not in result]
    if missing:
        raise ValueError(f"result lacks fields {missing}: build it with make_result()")
    path = result_path(result["family"], result["mode"], out_dir)
    write_json(path, {key: result[key] for key in FIELDS})
    print(json.dumps(result, indent=1))
    print(f"wrote {path}")
    return path
