"""Generate README.md's results table from the files that hold the numbers; never type it.

    python scripts/readme_results.py           # rewrite the block between the results markers
    python scripts/readme_results.py --check   # exit 1, saying what differs, when README disagrees

The block between ``<!-- results:start -->`` and ``<!-- results:end -->`` is made from

- ``dgm_edu/assets/weights/manifest.json``: the test figures of each headline entry of the shipped
  weights (test NLL or bound and its estimator, training seconds), measured when they were built;
- ``benchmarks/results/table.json`` (``python benchmarks/run.py --shipped``), when present: FID,
  KID and precision/recall of one sample size for every family and the two baselines. A row of it
  is used only when it scored the very file the manifest ships (same sha256), so a stale table
  leaves dashes instead of numbers of other weights.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MANIFEST = ROOT / "dgm_edu" / "assets" / "weights" / "manifest.json"
TABLE = ROOT / "benchmarks" / "results" / "table.json"
START, END = "<!-- results:start -->", "<!-- results:end -->"
NLL_FIGURES = ("test_nll_nats", "test_bpd", "check_nll_nats", "estimator")  # the table's columns
LABELS = {
    "mixture": "Pixel mixture (ch. 1)",
    "rbm": "RBM (ch. 2), *binarized* digits",
    "vae": "VAE (ch. 3)",
    "gan": "GAN (ch. 4)",
    "autoregressive": "Gated PixelCNN (ch. 5)",
    "flows": "Normalizing flow (ch. 6)",
    "diffusion": "Diffusion (ch. 7)",
    "energy": "Energy-based model (ch. 8)",
    "vqvae": "VQ-VAE + PixelCNN prior (ch. 9)",
    "latent-diffusion": "Latent diffusion: VAE + diffusion prior (ch. 9)",
    "independent_pixels": "Baseline: independent pixels",
    "uniform": "Baseline: uniform",
}
HEADER = (
    "| Model | Test NLL (nats) | bits/dim | Estimator | Train s | FID | KID | Precision | Recall |",
    "|---|---|---|---|---|---|---|---|---|",
)


def headline() -> tuple[str, ...]:
    """The headline entries of the shipped weights, in the book's order."""
    from dgm_edu.weights import HEADLINE

    return HEADLINE


def load_inputs(
    manifest: Path = MANIFEST, table: Path = TABLE
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(the manifest document, the benchmark table or None when it has not been written)."""
    doc = json.loads(manifest.read_text()) if manifest.is_file() else {"entries": {}}
    return doc, json.loads(table.read_text()) if table.is_file() else None


def _fmt(value: Any, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _sample_cells(row: dict[str, Any] | None) -> str:
    """FID, KID, precision and recall cells of a benchmark row (dashes without one)."""
    row = row or {}
    return (
        f"{_fmt(row.get('fid'), '.1f')} | {_fmt(row.get('kid'), '.1f')} "
        f"| {_fmt(row.get('precision'), '.2f')} | {_fmt(row.get('recall'), '.2f')}"
    )


def _current_rows(table: dict[str, Any] | None, entries: dict[str, Any]) -> dict[str, dict]:
    """The benchmark rows to show: a headline family's only if it scored the shipped file (same
    sha256), and the baselines (which have no weights)."""
    current = {}
    for row in (table or {}).get("rows", []):
        name = row["family"]
        if name not in headline() or row.get("sha256") == entries.get(name, {}).get("sha256"):
            current[name] = row
    return current


def _model_line(name: str, entry: dict[str, Any], sample_row: dict | None) -> str:
    from dgm_edu.metrics import nats_to_bpd

    figures = entry["figures"]
    nll = figures.get("test_nll_nats")
    bpd = None if nll is None else nats_to_bpd(nll)  # unrounded, as in benchmarks/run.py
    estimator = figures["estimator"] if nll is not None else "none (implicit model)"
    return (
        f"| {LABELS.get(name, name)} | {_fmt(nll, '.2f')} | {_fmt(bpd, '.3f')} "
        f"| {estimator} | {_fmt(entry.get('train_seconds'), '.0f')} | {_sample_cells(sample_row)} |"
    )


def _baseline_line(row: dict[str, Any]) -> str:
    return (
        f"| {LABELS.get(row['family'], row['family'])} | {_fmt(row.get('nll_nats'), '.2f')} "
        f"| {_fmt(row.get('bpd'), '.3f')} | {row['estimator']} | – | {_sample_cells(row)} |"
    )


def _other_figures(name: str, entry: dict[str, Any]) -> str | None:
    """A note with an entry's figures that have no column (e.g. the GAN's own FID), or None."""
    figures = entry["figures"]
    other = {k: v for k, v in figures.items() if k not in NLL_FIGURES}
    if not other or figures.get("test_nll_nats") is not None:
        return None
    listed = ", ".join(f"{k} {v}" for k, v in other.items())
    return f"{LABELS.get(name, name)}, manifest figures: {listed} ({figures['estimator']})."


def _notes(doc: dict[str, Any], table: dict[str, Any] | None, names: list[str],
           scored: dict[str, dict]) -> list[str]:  # fmt: skip
    """The lines under the table: provenance, sample sizes, and what is missing or stale."""
    entries = doc.get("entries", {})
    builds = sorted(
        {f"torch {entries[n]['torch']}, {entries[n]['threads']} thread(s)" for n in names}
    )
    notes = [
        f"Test figures of the shipped weights (`dgm_edu/assets/weights/manifest.json`), measured "
        f"when they were built on {doc.get('machine', 'an unrecorded machine')}, "
        f"{'; '.join(builds) or 'no entries'}; train seconds are the training loop's own clock. "
        "NLLs are in nats per image of the 17-level digits, the RBM's of the binarized digits; "
        "bounds are upper bounds on the NLL."
    ]
    if table is None:
        notes.append(
            "FID, KID and precision/recall: not measured yet "
            "(`python benchmarks/run.py --shipped` writes `benchmarks/results/table.json`)."
        )
    else:
        notes.append(
            f"FID, KID and precision/recall: {table['num_samples']} samples per model against the "
            f"{table['num_test']} test images, from `benchmarks/results/table.json` "
            f"({table['date']}); train-vs-test FID floor at that size: {table['fid_floor']:.1f}."
        )
        stale = [n for n in names if n not in scored]
        if stale:
            notes.append(
                f"No sample scores of the shipped {', '.join(stale)}: the table scored other "
                "weights or none (rerun `python benchmarks/run.py --shipped`)."
            )
    missing = [n for n in headline() if n not in entries]
    if missing:
        notes.append(f"Not shipped yet: {', '.join(missing)}.")
    return notes


def render_block(doc: dict[str, Any], table: dict[str, Any] | None) -> str:
    """The markdown between the markers (without them), from the manifest and the table."""
    entries = doc.get("entries", {})
    scored = _current_rows(table, entries)
    names = [n for n in headline() if n in entries]
    lines = [*HEADER, *(_model_line(n, entries[n], scored.get(n)) for n in names)]
    lines += [_baseline_line(row) for name, row in scored.items() if name not in headline()]
    notes = _notes(doc, table, names, scored)
    notes += [note for n in names if (note := _other_figures(n, entries[n]))]
    return "\n".join(lines) + "\n\n" + "\n\n".join(notes)


def replace_block(text: str, block: str) -> str:
    """``text`` with the part between the markers replaced by ``block``."""
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise ValueError(f"expected one {START} followed by one {END} in the README")
    head, rest = text.split(START)
    _, tail = rest.split(END)
    return f"{head}{START}\n{block}\n{END}{tail}"


def differences(text: str, doc: dict[str, Any], table: dict[str, Any] | None) -> list[str]:
    """Unified-diff lines from ``text`` to the README the files give; empty when they agree."""
    expected = replace_block(text, render_block(doc, table))
    diff = difflib.unified_diff(
        text.splitlines(), expected.splitlines(), "README.md", "generated", lineterm="", n=0
    )
    return list(diff)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when README.md disagrees")
    parser.add_argument("--readme", type=Path, default=README)
    parser.add_argument("--manifest", type=Path, default=MANIFEST)
    parser.add_argument("--table", type=Path, default=TABLE)
    args = parser.parse_args(argv)
    text = args.readme.read_text()
    doc, table = load_inputs(args.manifest, args.table)
    if args.check:
        diff = differences(text, doc, table)
        if diff:
            print(
                f"{args.readme} disagrees with {args.manifest.name} / {args.table.name}: run "
                "`python scripts/readme_results.py` to regenerate its results block.\n"
                + "\n".join(diff),
                file=sys.stderr,
            )
            return 1
        print(f"{args.readme}: results block up to date")
        return 0
    args.readme.write_text(replace_block(text, render_block(doc, table)))
    print(f"rewrote the results block of {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
