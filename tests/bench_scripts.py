"""Load a script of ``benchmarks/`` as a module, for the tests of its functions.

The scripts run as ``python benchmarks/<name>.py`` and import ``common`` from their own folder,
so that folder goes on ``sys.path`` first.
"""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def on_path() -> None:
    """Put ``benchmarks/`` on ``sys.path`` (once), as running a script there would."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))


def load(name: str) -> ModuleType:
    """The script ``benchmarks/<name>.py``, imported as the module ``bench_<name>``."""
    on_path()
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
