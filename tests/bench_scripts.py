"""Import a script of bench/ (not a package) by name, once per test session."""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parent.parent / "bench"


@functools.cache
def bench_script(name: str) -> ModuleType:
    """bench/NAME.py as a module (its own imports of other bench scripts work: bench/ is on the path)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module     # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
