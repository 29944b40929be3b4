"""The node's scenarios as the API sees them: list, read, upload, delete.

No scenario's code runs here: a source is checked in a child process (amoc.scenario_check)
with a time and a memory limit, and what the check found is kept by the source's sha256.
The file methods may block: call them in an executor; `facts` is a coroutine.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import hashlib
import importlib.util
import os
import sys
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from amoc import scenario as scenario_mod
from amoc import scenario_check
from amoc.api.validation import ApiError
from amoc.config import REQUIRED, Param
from amoc.errors import ScenarioError

MAX_SOURCE_BYTES = 256 * 1024
MAX_NAME_CHARS = 100
MAX_CACHED = 256  # checked sources remembered (by sha256)
MAX_CHECKS = 8  # checks running at once; more wait their turn


class ScenarioStore:
    """Scenarios in `dirs` (first wins); uploads go to `uploaded_dir`."""

    def __init__(
        self,
        dirs: Sequence[Path],
        uploaded_dir: Path,
        timeout: Callable[[], float] = lambda: scenario_check.DEFAULT_TIMEOUT_S,
    ) -> None:
        """`timeout()` is how many seconds a check may take (read at each check)."""
        self.dirs = [Path(d) for d in dirs]
        self.uploaded_dir = Path(uploaded_dir)
        if self.uploaded_dir not in self.dirs:
            self.dirs.insert(0, self.uploaded_dir)
        self.timeout = timeout
        self._facts: OrderedDict[str, scenario_check.Facts] = OrderedDict()
        self._checking: dict[str, asyncio.Future[scenario_check.Facts]] = {}
        self._slots = asyncio.Semaphore(MAX_CHECKS)

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

    def read(self, name: str, field: str = "name") -> tuple[Path, str]:
        """Where scenario `name` is and its source; 400/404 naming `field`."""
        path = self.path(name, field)
        try:
            return path, path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ApiError(404, f"scenario {name!r} cannot be read: {exc}", field) from None

    async def facts(self, name: str, source: str) -> scenario_check.Facts:
        """What a check of `source` as scenario `name` finds (cached by sha256)."""
        sha = _sha256(source)
        key = f"{name}:{sha}"
        cached = self._facts.get(key)
        if cached is not None:
            self._facts.move_to_end(key)
            return cached
        task = self._checking.get(key)
        if task is None:  # one check per source, however many ask at once
            task = asyncio.ensure_future(self._check(name, source, sha))
            self._checking[key] = task
            task.add_done_callback(lambda _t: self._checking.pop(key, None))
        facts = await asyncio.shield(task)
        self._facts[key] = facts
        while len(self._facts) > MAX_CACHED:
            self._facts.popitem(last=False)
        return facts

    async def _check(self, name: str, source: str, sha: str) -> scenario_check.Facts:
        async with self._slots:
            return await scenario_check.check(name, source, sha, self.timeout())

    async def get(self, name: str) -> dict[str, Any]:
        """Source, origin and declared parameters of scenario `name` (none of its code runs)."""
        path, source = await asyncio.to_thread(self.read, name)
        facts = await self.facts(name, source)
        return {
            "name": name,
            "origin": self._origin(path),
            "description": _docline(path),
            "source": source,
            "sha256": facts.sha256,
            "parameters": describe_facts(facts),
            "loadable": facts.loadable,
            "problem": facts.problem,
            "replaces": self._replaces(name) if self._origin(path) == "uploaded" else None,
        }

    async def params(self, name: str, field: str = "scenario") -> tuple[Param, ...]:
        """The parameters scenario `name` declares, from its check; 400/404 naming `field`."""
        _path, source = await asyncio.to_thread(self.read, name, field)
        facts = await self.facts(name, source)
        if not facts.loadable:
            raise ApiError(400, facts.problem or f"scenario {name!r} cannot load", field)
        return facts.params()

    async def upload(self, name: str, source: str, replace: bool = False) -> dict[str, Any]:
        """Check `source` as scenario `name` (in a child process) and store it.

        Refused when it would shadow a bundled scenario or a Python module, unless `replace`.
        """
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
        shadowed = self._replaces(name)
        if shadowed is not None and not replace:
            raise ApiError(
                409,
                f'{name!r} is the name of {shadowed}: send "replace": true to upload it anyway '
                f"(DELETE /api/scenarios/{name} brings the original back), or pick another name",
                "name",
            )
        facts = await self.facts(name, source)
        if not facts.loadable:
            raise ApiError(400, facts.problem or f"scenario {name!r} cannot load", "source")
        previous = await asyncio.to_thread(self._current_origin, name)
        await asyncio.to_thread(self._write, name, source)
        return {
            "name": name,
            "origin": "uploaded",
            "replaced": previous,
            "size": size,
            "sha256": facts.sha256,
            "parameters": describe_facts(facts),
        }

    def delete(self, name: str) -> dict[str, Any]:
        """Remove the uploaded scenario `name`; a bundled one of that name is back."""
        self.check_name(name)
        path = self.uploaded_dir / f"{name}.py"
        if not path.is_file() and self._current_origin(name) == "bundled":
            raise ApiError(
                409, f"scenario {name!r} is bundled: only uploads can be deleted", "name"
            )
        if not path.is_file():
            uploaded = [
                n
                for n in scenario_mod.available(self.dirs)
                if self._current_origin(n) == "uploaded"
            ]
            raise ApiError(
                404,
                f"no uploaded scenario {name!r}; uploaded: {', '.join(uploaded) or 'none'}",
                "name",
            )
        path.unlink()
        return {"name": name, "deleted": "uploaded", "now": self._current_origin(name)}

    def _current_origin(self, name: str) -> str | None:
        try:
            return self._origin(scenario_mod.find(name, self.dirs))
        except ScenarioError:
            return None

    def _replaces(self, name: str) -> str | None:
        """What an upload named `name` would shadow: a bundled scenario or a module."""
        for directory in self.dirs:
            if directory != self.uploaded_dir and (directory / f"{name}.py").is_file():
                return f"a bundled scenario ({directory / f'{name}.py'})"
        if _is_module(name):
            return f"the Python module {name!r}"
        return None

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


def describe_params(params: Sequence[Param]) -> list[dict[str, Any]]:
    """Declared parameters as plain dicts: name, default, required, description."""
    return [
        {
            "name": p.name,
            "default": None if p.default is REQUIRED else p.shown(p.default),
            "required": p.default is REQUIRED,
            "description": p.description,
        }
        for p in params
    ]


def describe_facts(facts: scenario_check.Facts) -> list[dict[str, Any]]:
    """The parameters a check found, as `describe_params` shows them."""
    return describe_params(facts.params())


def _sha256(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()


def _is_module(name: str) -> bool:
    """True when `import name` finds something (standard library, installed, amoc)."""
    if name in sys.stdlib_module_names or name in sys.builtin_module_names:
        return True
    try:  # finds without importing: no code of the module runs
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _docline(path: Path) -> str:
    """The module docstring's first line, read without executing the module."""
    try:
        doc = ast.get_docstring(ast.parse(path.read_text()))
    except (OSError, SyntaxError, ValueError):
        return ""
    return doc.strip().splitlines()[0] if doc and doc.strip() else ""
