"""Mutation testing of the math modules: plant small bugs, run each module's own tests, and
print the share of the bugs they catch (``make mutation``; issue 24).

For each module (``dgm_edu/<module>.py``) this builds a work directory ``.mutation/<module>/``
(a copy of ``dgm_edu/`` and ``tests/``, and a ``pyproject.toml`` whose ``[tool.mutmut]`` is the
repository's, plus the module to mutate and its tests), and runs mutmut there:

1. the module's tests run once on the unmutated code; a test that already fails there is
   deselected (and listed), since it could not tell a mutant from the original;
2. ``mutmut run`` plants every mutant (a flipped operator or sign, a changed constant, a dropped
   argument, a swapped name...) and runs, for each, only the selected tests that call the mutated
   function (mutmut records which tests reach which function);
   (recipes, ``train_*`` and ``reference_config``, are not math and are not mutated);
3. the report counts, per module, the mutants caught (a test failed or timed out) among those
   that change behaviour: the survivors listed in ``tests/mutation_equivalents.txt`` (mutants
   that change nothing, each with its reason) are left out of the share.

mutmut does not mutate decorated functions; in the work copy (never in the repository) this
script therefore rewrites ``@torch.no_grad()`` on a function as a ``with torch.no_grad():``
around its body, which runs the same, so that the samplers are mutated too.

Usage: ``python scripts/mutation_report.py [MODULE ...] [--jobs N] [--show-survivors]``
(default: every module of ``MODULES``). One campaign at a time (2 cores): a lock refuses a
second. Exit status 0; with ``--fail-under P``, 1 when a module catches less than P percent.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".mutation"
EQUIVALENTS = ROOT / "tests" / "mutation_equivalents.txt"


def _shipped(*names: str) -> list[str]:
    """The weights test that recomputes these shipped entries' recorded figures: the shipped
    weights and the manifest were made by the unmutated code, so a mutant on the forward path
    (a dropped layer, a changed preprocessing) moves the figure."""
    test = "tests/test_weights.py::test_shipped_model_reproduces_its_recorded_figures"
    return [f"{test}[{name}]" for name in names]


# Each math module and the tests that are its own (tests/test_mutants_<module>.py is added when
# it exists), with the cheap shipped entries of its classes. A module split out of a family's
# module is tested by that family's tests.
MODULES: dict[str, list[str]] = {
    "mixtures": ["tests/test_mixtures.py", *_shipped("mixture")],
    "rbm": ["tests/test_rbm.py", *_shipped("rbm")],
    "vae": ["tests/test_vae.py", *_shipped("vae-cond", "vae-beta8.0")],
    "gan": ["tests/test_gan.py", *_shipped("gan-cond", "gan@10", "gan-ring8")],
    "autoregressive": ["tests/test_autoregressive.py",
                       *_shipped("autoregressive", "text-rnn", "text-transformer")],
    "flows": ["tests/test_flows.py", *_shipped("flow2d-moons", "flow2d-moons-planar")],
    "digit_flow": ["tests/test_flows.py", *_shipped("flows", "flows-uniform")],
    "diffusion": ["tests/test_diffusion.py"],
    "flow_matching": ["tests/test_diffusion.py", *_shipped("flow-matching-toy")],
    "unet": ["tests/test_diffusion.py", *_shipped("diffusion")],
    "metrics": ["tests/test_metrics.py"],
    "densities": ["tests/test_checks.py"],
    "data": ["tests/test_data.py", "tests/test_checks.py"],
}  # fmt: skip

# mutmut's exit codes, as its stats module maps them
CAUGHT = {1: "killed", 3: "killed", 36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout",
          255: "timeout", -11: "segfault", -9: "segfault"}  # fmt: skip
NOT_CAUGHT = {0: "survived", 5: "no tests", 33: "no tests", 35: "suspicious"}
EXCLUDED = {34: "skipped", 37: "caught by type check"}


@dataclass
class Result:
    module: str
    total: int = 0
    caught: int = 0
    equivalent: list[str] = field(default_factory=list)
    survivors: list[tuple[str, str]] = field(default_factory=list)  # (name, diff)
    deselected: list[str] = field(default_factory=list)
    other: dict[str, int] = field(default_factory=dict)

    @property
    def counted(self) -> int:
        return self.total - len(self.equivalent)

    @property
    def share(self) -> float:
        return 100.0 * self.caught / self.counted if self.counted else 100.0


# --------------------------------------------------------------------------- the work copy
def _unwrap_no_grad(source: str) -> str:
    """``@torch.no_grad()`` on a function -> ``with torch.no_grad():`` around its body."""
    import libcst as cst

    class Rewrite(cst.CSTTransformer):
        def leave_FunctionDef(self, original, updated):  # noqa: N802 - libcst's name
            decos = updated.decorators
            keep = [
                d for d in decos if cst.Module([]).code_for_node(d.decorator) != "torch.no_grad()"
            ]
            if len(keep) == len(decos):
                return updated
            body = updated.body.body
            doc = []
            if body and m_docstring(body[0]):
                doc, body = [body[0]], body[1:]
            guard = cst.With(
                items=[cst.WithItem(cst.parse_expression("torch.no_grad()"))],
                body=cst.IndentedBlock(body=list(body) or [cst.SimpleStatementLine([cst.Pass()])]),
            )
            return updated.with_changes(
                decorators=keep, body=updated.body.with_changes(body=[*doc, guard])
            )

    def m_docstring(stmt) -> bool:
        return (
            isinstance(stmt, cst.SimpleStatementLine)
            and len(stmt.body) == 1
            and isinstance(stmt.body[0], cst.Expr)
            and isinstance(stmt.body[0].value, cst.SimpleString | cst.ConcatenatedString)
        )

    return cst.parse_module(source).visit(Rewrite()).code


# Recipes: a model trained for minutes with the book's hyper-parameters. Not math: their tests
# are the weights rebuilds (tests/test_weights.py), so they are not mutated.
RECIPE = re.compile(r"(train_\w+|reference_config)")


def _exclude_recipes(source: str) -> str:
    """Wrap each module-level recipe in ``# pragma: no mutate start`` / ``end``."""
    import ast

    lines = source.splitlines()
    spans = [
        (min([node.lineno, *(d.lineno for d in node.decorator_list)]), node.end_lineno)
        for node in ast.parse(source).body
        if isinstance(node, ast.FunctionDef) and RECIPE.fullmatch(node.name)
    ]
    for start, end in sorted(spans, reverse=True):
        lines.insert(end, "# pragma: no mutate end")
        lines.insert(start - 1, "# pragma: no mutate start")
    return "\n".join(lines) + "\n"


def _mutmut_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text()).get("tool", {}).get("mutmut", {})


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    return "[" + ", ".join(_toml_value(x) for x in v) + "]"


def prepare(module: str, tests: list[str], deselect: list[str]) -> Path:
    """The work directory of ``module``: code, tests and its own pyproject.toml."""
    work = WORK / module
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    shutil.copytree(
        ROOT / "dgm_edu", work / "dgm_edu", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(ROOT / "tests", work / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    target = work / "dgm_edu" / f"{module}.py"
    target.write_text(_exclude_recipes(_unwrap_no_grad(target.read_text())))
    config = _mutmut_config()
    config |= {
        "source_paths": ["dgm_edu"],
        "only_mutate": [f"dgm_edu/{module}.py"],
        "pytest_add_cli_args_test_selection": tests,
        "pytest_add_cli_args": list(config.get("pytest_add_cli_args", []))
        + [arg for t in deselect for arg in ("--deselect", t)],
    }
    pytest_cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]
    lines = ["[tool.mutmut]"] + [f"{k} = {_toml_value(v)}" for k, v in config.items()]
    lines += ["", "[tool.pytest.ini_options]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in pytest_cfg["ini_options"].items()]
    (work / "pyproject.toml").write_text("\n".join(lines) + "\n")
    return work


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def baseline_failures(work: Path, tests: list[str]) -> list[str]:
    """Tests that fail on the unmutated work copy (they cannot tell a mutant apart)."""
    report = work / "baseline.xml"
    cmd = [sys.executable, "-m", "pytest", *tests, "-q", "-p", "no:xdist", "-p", "no:cacheprovider",
           f"--junitxml={report}"]  # fmt: skip
    subprocess.run(cmd, cwd=work, env=_env(), capture_output=True, text=True)
    failed = []
    for case in ET.parse(report).iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            path = case.get("classname", "").replace(".", "/") + ".py"
            failed.append(f"{path}::{case.get('name')}")
    return failed


# --------------------------------------------------------------------------- equivalents
def load_equivalents() -> dict[tuple[str, str, str], str]:
    """``module :: function :: mutated line  -- reason`` lines -> {(module, function, line)}."""
    out = {}
    for raw in EQUIVALENTS.read_text().splitlines() if EQUIVALENTS.exists() else []:
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        spec, _, reason = raw.partition("  -- ")
        module, function, line = (part.strip() for part in spec.split("::", 2))
        out[(module, function, line)] = reason.strip()
    return out


def _mutant_function(name: str, module: str) -> str:
    """``dgm_edu.vae.xǁVAEǁloss__mutmut_3`` -> ``VAE.loss``; ``dgm_edu.data.x_to_unit__mutmut_1``
    -> ``to_unit``."""
    short = name.removeprefix(f"dgm_edu.{module}.").rsplit("__mutmut_", 1)[0]
    if short.startswith("xǁ"):
        return ".".join(short[2:].split("ǁ"))
    return short.removeprefix("x_")


def _diff(work: Path, name: str) -> str:
    out = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=work, env=_env(),
                         capture_output=True, text=True).stdout  # fmt: skip
    return "\n".join(line for line in out.splitlines() if line.startswith(("+", "-"))
                     and not line.startswith(("+++", "---")))  # fmt: skip


def _mutated_lines(diff: str) -> list[str]:
    return [line[1:].strip() for line in diff.splitlines() if line.startswith("+")]


# --------------------------------------------------------------------------- a campaign
def run_module(module: str, jobs: int) -> Result:
    tests = [t for t in MODULES[module] if (ROOT / t.split("::")[0]).exists()]
    extra = ROOT / "tests" / f"test_mutants_{module}.py"
    if extra.exists():
        tests.append(f"tests/{extra.name}")
    print(f"== {module}: tests {', '.join(tests)}", flush=True)
    work = prepare(module, tests, [])
    deselect = baseline_failures(work, tests)
    if deselect:
        print(f"   deselected (failing before any mutation): {deselect}", flush=True)
        work = prepare(module, tests, deselect)
    cmd = [sys.executable, "-m", "mutmut", "run", "--max-children", str(jobs)]
    proc = subprocess.run(cmd, cwd=work, env=_env(), capture_output=True, text=True)
    (work / "mutmut.log").write_text(proc.stdout + proc.stderr)
    meta = work / "mutants" / "dgm_edu" / f"{module}.py.meta"
    if proc.returncode != 0 or not meta.exists():
        tail = (proc.stdout + proc.stderr)[-2000:]
        raise SystemExit(f"mutmut failed on {module} (see {work / 'mutmut.log'}):\n{tail}")
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    result = Result(module, deselected=deselect)
    equivalents = load_equivalents()
    for name, code in sorted(codes.items()):
        if code in EXCLUDED:
            result.other[EXCLUDED[code]] = result.other.get(EXCLUDED[code], 0) + 1
            continue
        result.total += 1
        if code in CAUGHT:
            result.caught += 1
            if CAUGHT[code] != "killed":
                key = f"caught by {CAUGHT[code]}"
                result.other[key] = result.other.get(key, 0) + 1
            continue
        status = NOT_CAUGHT.get(code, f"exit {code}")
        diff = _diff(work, name)
        function = _mutant_function(name, module)
        lines = _mutated_lines(diff)
        if (
            status == "survived"
            and lines
            and all((module, function, line) in equivalents for line in lines)
        ):
            result.equivalent.append(name)
            continue
        result.other[status] = result.other.get(status, 0) + 1
        result.survivors.append((f"{name} [{status}] in {function}", diff))
    (work / "survivors.txt").write_text(
        "\n\n".join(f"{n}\n{d}" for n, d in result.survivors) + "\n"
    )
    print(f"   {result.caught} of {result.counted} caught ({result.share:.1f}%), "
          f"{len(result.equivalent)} equivalent left out", flush=True)  # fmt: skip
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("modules", nargs="*", help=f"default: {' '.join(MODULES)}")
    p.add_argument("--jobs", type=int, default=int(os.environ.get("JOBS", 1)))
    p.add_argument("--show-survivors", action="store_true", help="print each survivor's diff")
    p.add_argument("--fail-under", type=float, default=None, help="exit 1 below this share")
    args = p.parse_args(argv)
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        p.error(f"unknown modules {unknown}: expected some of {list(MODULES)}")
    modules = [m for m in (args.modules or MODULES) if (ROOT / "dgm_edu" / f"{m}.py").exists()]
    WORK.mkdir(exist_ok=True)
    with open(WORK / "campaign.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            msg = "another mutation campaign is running (.mutation/campaign.lock)"
            raise SystemExit(msg) from None
        results = [run_module(m, args.jobs) for m in modules]
    print()
    print(f"{'module':16s} {'mutants':>8s} {'equiv.':>7s} {'caught':>7s} {'share':>7s}  details")
    for r in results:
        rest = ", ".join(f"{v} {k}" for k, v in sorted(r.other.items()))
        print(f"{r.module:16s} {r.total:8d} {len(r.equivalent):7d} {r.caught:7d} "
              f"{r.share:6.1f}%  {rest}")  # fmt: skip
        if r.deselected:
            print(f"{'':16s} (deselected, failing unmutated: {', '.join(r.deselected)})")
    caught = sum(r.caught for r in results)
    counted = sum(r.counted for r in results)
    print(f"{'all':16s} {sum(r.total for r in results):8d} "
          f"{sum(len(r.equivalent) for r in results):7d} {caught:7d} "
          f"{100 * caught / max(counted, 1):6.1f}%")  # fmt: skip
    print(f"\nSurvivors: .mutation/<module>/survivors.txt; equivalents: {EQUIVALENTS.name}")
    if args.show_survivors:
        for r in results:
            for name, diff in r.survivors:
                print(f"\n{name}\n{diff}")
    if args.fail_under is not None and any(r.share < args.fail_under for r in results):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
