"""The node's scenarios as the API sees them: list, read, upload (validated, then stored).

Every method may block (files, executing a scenario's module): call them in an executor.
"""

from __future__ import annotations

import ast
import contextlib
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from amoc import scenario as scenario_mod
from amoc.api.validation import ApiError
from amoc.config import REQUIRED, Param
from amoc.errors import ScenarioError

MAX_SOURCE_BYTES = 256 * 1024
MAX_NAME_CHARS = 100


class ScenarioStore:
    """Scenarios in `dirs` (first wins); uploads go to `uploaded_dir`."""

    def __init__(self, dirs: Sequence[Path], uploaded_dir: Path) -> None:
        self.dirs = [Path(d) for d in dirs]
        self.uploaded_dir = Path(uploaded_dir)
        if self.uploaded_dir not in self.dirs:
            self.dirs.insert(0, self.uploaded_dir)

    def index(self) -> list[dict[str, Any]]:
        """Name, origin and the docstring's first line of every scenario, by name."""
        out = []
        for name in scenario_mod.available(self.dirs):
            path = scenario_mod.find(name, self.dirs)
            out.append({"name": name, "origin": self._origin(path), "description": _docline(path)})
        return out

    def check_name(self, name: str, field: str = "name") -> str:
        """`name` if it is a scenario module name (no path, no dots), else a 400 naming `field`."""
        if not isinstance(name, str) or len(name) > MAX_NAME_CHARS:
            raise ApiError(400, f"a scenario name is a string of at most {MAX_NAME_CHARS}", field)
        try:
            return scenario_mod.check_name(name)
        except ScenarioError as exc:
            raise ApiError(400, str(exc), field) from None

    def path(self, name: str, field: str = "name") -> Path:
        """Where scenario `name` is; 400 for a bad name, 404 when no directory has it."""
        self.check_name(name, field)
        try:
            return scenario_mod.find(name, self.dirs)
        except ScenarioError:
            known = ", ".join(scenario_mod.available(self.dirs)) or "none"
            raise ApiError(404, f"no scenario {name!r}; known: {known}", field) from None

    def get(self, name: str) -> dict[str, Any]:
        """Source, origin and declared parameters of scenario `name`."""
        path = self.path(name)
        source = path.read_text()
        out: dict[str, Any] = {
            "name": name,
            "origin": self._origin(path),
            "description": _docline(path),
            "source": source,
        }
        try:
            loaded = load_detached(name, source, path)
        except ScenarioError as exc:
            return {**out, "parameters": [], "loadable": False, "problem": str(exc)}
        return {
            **out,
            "parameters": describe_params(loaded.params),
            "loadable": True,
            "problem": None,
        }

    def params(self, name: str, field: str = "scenario") -> tuple[Param, ...]:
        """The parameters scenario `name` declares; 400/404 naming `field` when it cannot load."""
        path = self.path(name, field)
        try:
            return load_detached(name, path.read_text(), path).params
        except ScenarioError as exc:
            raise ApiError(400, str(exc), field) from None

    def upload(self, name: str, source: str) -> dict[str, Any]:
        """Validate `source` as scenario `name` and store it; the answer says what it replaced."""
        self.check_name(name)
        if name.startswith("_"):
            raise ApiError(400, "a scenario name must not start with '_' (hidden)", "name")
        size = len(source.encode())
        if size > MAX_SOURCE_BYTES:
            raise ApiError(
                413, f"the source is {size} bytes; at most {MAX_SOURCE_BYTES} are taken", "source"
            )
        if "\x00" in source:
            raise ApiError(400, "the source contains a NUL character", "source")
        try:
            loaded = load_detached(name, source)
        except ScenarioError as exc:
            raise ApiError(400, str(exc), "source") from None
        previous = None
        with contextlib.suppress(ScenarioError):
            previous = self._origin(scenario_mod.find(name, self.dirs))
        self._write(name, source)
        return {
            "name": name,
            "origin": "uploaded",
            "replaced": previous,
            "size": size,
            "sha256": loaded.source_hash,
            "parameters": describe_params(loaded.params),
        }

    def _write(self, name: str, source: str) -> None:
        self.uploaded_dir.mkdir(parents=True, exist_ok=True)
        # Write then rename: a node loading the scenario never reads half a file.
        fd, tmp = tempfile.mkstemp(dir=self.uploaded_dir, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(source)
            os.replace(tmp, self.uploaded_dir / f"{name}.py")
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _origin(self, path: Path) -> str:
        return "uploaded" if path.parent == self.uploaded_dir else "bundled"


def load_detached(name: str, source: str, path: Path | None = None) -> scenario_mod.Scenario:
    """Load a scenario to inspect it, leaving sys.modules (and so a running copy) as it was."""
    key = scenario_mod.MODULE_PREFIX + name
    before = sys.modules.get(key)
    try:
        return scenario_mod.load_source(name, source, path)
    except ValueError as exc:  # compile() refuses some sources with ValueError, not SyntaxError
        raise ScenarioError(f"scenario {name!r} does not compile: {exc}") from None
    finally:
        if before is not None:
            sys.modules[key] = before
        else:
            sys.modules.pop(key, None)


def describe_params(params: Sequence[Param]) -> list[dict[str, Any]]:
    """Declared parameters as plain dicts: name, default, required, description."""
    return [
        {
            "name": p.name,
            "default": None if p.default is REQUIRED else p.default,
            "required": p.default is REQUIRED,
            "description": p.description,
        }
        for p in params
    ]


def _docline(path: Path) -> str:
    """The module docstring's first line, read without executing the module."""
    try:
        doc = ast.get_docstring(ast.parse(path.read_text()))
    except (OSError, SyntaxError, ValueError):
        return ""
    return doc.strip().splitlines()[0] if doc and doc.strip() else ""
