"""Scenario loading: find a module, check the init / start / terminate contract."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import keyword
import sys
import traceback
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amoc.config import Param
from amoc.errors import ScenarioError

MODULE_PREFIX = "amoc_scenario_"


def check_name(name: str) -> str:
    """Return `name` if it is a valid scenario (module) name, else raise ScenarioError."""
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise ScenarioError(
            f"scenario name {name!r} is not a valid module name "
            "(letters, digits and _, not starting with a digit)"
        )
    return name


@dataclass
class Scenario:
    """A loaded scenario module and what amoc needs to run it."""

    name: str
    path: Path | None
    source: str
    module: types.ModuleType
    start: Callable[..., Any]
    start_takes_state: bool
    init: Callable[..., Any] | None = None
    terminate: Callable[..., Any] | None = None
    params: tuple[Param, ...] = field(default_factory=tuple)
    # The module's own `async def start`, which the runner awaits itself and guards as
    # `contained` does (`crash`): a wrapper's coroutine would cost every user 0.4 KiB.
    bare_start: Callable[..., Any] | None = None

    @property
    def is_async(self) -> bool:
        """True when `start` is a coroutine function (runs in the loop, not a thread)."""
        return inspect.iscoroutinefunction(self.start)

    @property
    def source_hash(self) -> str:
        """SHA-256 of the source: the same scenario on every node has the same hash."""
        return hashlib.sha256(self.source.encode()).hexdigest()

    @property
    def description(self) -> str:
        """The first line of the module docstring."""
        doc = (self.module.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


def find(name: str, dirs: Sequence[Path]) -> Path:
    """The path of scenario `name` in the first of `dirs` that has it."""
    check_name(name)
    for directory in dirs:
        candidate = Path(directory) / f"{name}.py"
        if candidate.is_file():
            return candidate
    searched = ", ".join(str(d) for d in dirs) or "(no scenario directories)"
    raise ScenarioError(f"scenario {name!r} not found: no {name}.py in {searched}")


def available(dirs: Sequence[Path]) -> list[str]:
    """Names of the scenarios in `dirs`, sorted."""
    names = set()
    for directory in dirs:
        for path in Path(directory).glob("*.py"):
            if path.stem.isidentifier() and not path.stem.startswith("_"):
                names.add(path.stem)
    return sorted(names)


def load(name: str, dirs: Sequence[Path]) -> Scenario:
    """Load scenario `name` from the first directory that has it."""
    path = find(name, dirs)
    try:
        source = path.read_text()
    except OSError as exc:
        raise ScenarioError(f"scenario {name!r}: cannot read {path}: {exc}") from None
    return load_source(name, source, path)


def load_source(name: str, source: str, path: Path | None = None) -> Scenario:
    """Compile and execute a scenario's source, then check its contract."""
    check_name(name)
    where = str(path) if path else f"<scenario {name}>"
    try:
        code = compile(source, where, "exec")
    except SyntaxError as exc:
        raise ScenarioError(
            f"scenario {name!r} does not compile: {exc.msg} ({where}, line {exc.lineno})"
        ) from None
    except ValueError as exc:  # compile() refuses some sources (NUL bytes) with ValueError
        raise ScenarioError(f"scenario {name!r} does not compile: {exc}") from None
    module = types.ModuleType(MODULE_PREFIX + name)
    module.__file__ = where
    # Registered before exec so that dataclasses, pickling and tracebacks find the module.
    sys.modules[module.__name__] = module
    try:
        exec(code, module.__dict__)
    except BaseException as exc:  # SystemExit and KeyboardInterrupt too: the node stays up
        sys.modules.pop(module.__name__, None)
        raise ScenarioError(f"scenario {name!r} failed to import: {summary(exc)}") from exc
    return _check_contract(name, path, source, module)


def summary(exc: BaseException) -> str:
    """One line for a traceback: the exception and where it was raised (innermost frame)."""
    detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    if isinstance(exc, SystemExit):
        detail = f"SystemExit({exc.code!r})"
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        last = frames[-1]
        detail += f" at {last.filename}, line {last.lineno}, in {last.name}"
    return detail


def crash(name: str, attr: str, exc: BaseException) -> ScenarioError:
    """What a scenario's `attr` raising a BaseException that is no Exception (SystemExit,
    KeyboardInterrupt...) becomes: a ScenarioError, caused by it."""
    error = ScenarioError(f"scenario {name!r}: {attr} raised {summary(exc)}")
    error.__cause__ = exc
    return error


def contained(name: str, attr: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` with SystemExit, KeyboardInterrupt and any other BaseException turned into a
    ScenarioError, so that a scenario cannot end the node's loop or a worker thread.

    Cancellation (asyncio.CancelledError) and GeneratorExit pass through unchanged."""

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def guarded_async(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            except (Exception, asyncio.CancelledError, GeneratorExit):
                raise
            except BaseException as exc:
                raise crash(name, attr, exc) from exc

        return guarded_async

    @functools.wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (Exception, asyncio.CancelledError, GeneratorExit):
            raise
        except BaseException as exc:
            raise crash(name, attr, exc) from exc

    return guarded


def _check_contract(
    name: str, path: Path | None, source: str, module: types.ModuleType
) -> Scenario:
    start = getattr(module, "start", None)
    if start is None or not callable(start):
        raise ScenarioError(
            f"scenario {name!r} has no start function: define `async def start(user_id)`"
        )
    takes_state = _arity(name, "start", start, (1, 2)) == 2
    init = _optional_callable(name, module, "init", (0,))
    terminate = _optional_callable(name, module, "terminate", (0, 1))
    params = getattr(module, "PARAMETERS", ())
    if not isinstance(params, list | tuple) or not all(isinstance(p, Param) for p in params):
        raise ScenarioError(
            f"scenario {name!r}: PARAMETERS must be a list of amoc.config.param(...) entries"
        )
    return Scenario(
        name,
        path,
        source,
        module,
        contained(name, "start", start),
        takes_state,
        contained(name, "init", init) if init is not None else None,
        contained(name, "terminate", terminate) if terminate is not None else None,
        tuple(params),
        start if inspect.iscoroutinefunction(start) else None,
    )


def _optional_callable(
    name: str, module: types.ModuleType, attr: str, arities: tuple[int, ...]
) -> Callable[..., Any] | None:
    fn: object = getattr(module, attr, None)
    if fn is None:
        return None
    if not callable(fn):
        raise ScenarioError(f"scenario {name!r}: {attr} is not a function")
    _arity(name, attr, fn, arities)
    return fn


def _arity(name: str, attr: str, fn: Callable[..., Any], allowed: tuple[int, ...]) -> int:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return allowed[-1]
    positional = [
        p
        for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    n = len(positional)
    if n not in allowed:
        forms = " or ".join(f"{attr}({', '.join(['user_id', 'state'][:k])})" for k in allowed)
        if attr != "start":
            forms = " or ".join(f"{attr}({'state' if k else ''})" for k in allowed)
        raise ScenarioError(
            f"scenario {name!r}: {attr} takes {n} positional argument(s); expected {forms}"
        )
    return n


async def call(fn: Callable[..., Any], *args: Any) -> Any:
    """Call a scenario callback: await it if async, else run it in a worker thread."""
    if inspect.iscoroutinefunction(fn):
        return await fn(*args)
    result = await asyncio.get_running_loop().run_in_executor(None, fn, *args)
    if inspect.isawaitable(result):
        return await result
    return result
