"""The repository's own files for the unit tests: where they are, and loading one by path."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "ansible" / "roles" / "amoc"


def load_file(path: Path, name: str | None = None) -> ModuleType:
    """Import the Python file at `path` as a module (named `name`, registered in
    sys.modules, when given; else its stem, unregistered)."""
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    if name is not None:
        sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
