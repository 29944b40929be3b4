"""Check a scenario's source in a child process: compiles, declares its parameters, has start.

The node never imports an uploaded scenario to inspect it: `check` starts
`python -I` on this module with a time limit (the child is killed when it runs over)
and a memory limit, and reads back what the scenario declares. Its code runs inside the
node only when a run of it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amoc.config import REQUIRED, Param

DEFAULT_TIMEOUT_S = 10.0
MEMORY_LIMIT = 1 << 30  # address space of the child: 1 GiB
MAX_ANSWER_BYTES = 4 << 20
_ANSWER_TAG = "AMOC-SCENARIO-CHECK "


@dataclass(frozen=True)
class Facts:
    """What the check found: loadable or why not, the declared parameters, `start`."""

    name: str
    sha256: str
    loadable: bool
    problem: str | None = None
    parameters: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    is_async: bool = False

    def params(self) -> tuple[Param, ...]:
        """The declared parameters as Params, enough to check names and types of values.

        The scenario's own verification functions run when a run of it starts."""
        out = []
        for p in self.parameters:
            default = REQUIRED if p["required"] else p["default"]
            plain = default is REQUIRED or isinstance(default, bool | int | float | str | None)
            out.append(
                Param(
                    p["name"],
                    default,
                    p["description"],
                    None if plain else _anything,
                    secret=bool(p.get("secret")),
                    start_only=bool(p.get("start_only")),
                )
            )
        return tuple(out)


def _anything(value: Any) -> Any:
    return value


def _command() -> list[str]:
    # -I: no PYTHON* variables, no user site, no current directory on sys.path; amoc is
    # found where this node's amoc is.
    root = str(Path(__file__).resolve().parents[1])
    code = f"import sys; sys.path.insert(0, {root!r}); import amoc.scenario_check as c; c.main()"
    return [sys.executable, "-I", "-c", code]


async def check(name: str, source: str, sha256: str, timeout: float = DEFAULT_TIMEOUT_S) -> Facts:
    """Check `source` as scenario `name` in a child process, killed after `timeout` s."""
    proc = await asyncio.create_subprocess_exec(
        *_command(),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,  # its own process group: whatever it forks is killed with it
        cwd="/",
        env={**os.environ, "AMOC_SCENARIO_CHECK": "1"},
    )
    request = json.dumps({"name": name, "source": source, "timeout": timeout}).encode()
    try:
        out, _ = await asyncio.wait_for(proc.communicate(request), timeout)
    except TimeoutError:
        return Facts(
            name,
            sha256,
            False,
            f"scenario {name!r} was still importing after {timeout:g} s (its module-level "
            "code blocks or loops); the check was stopped. Do slow work in init() or start()",
        )
    finally:
        _kill(proc)
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            await asyncio.wait_for(proc.wait(), 5)
    for line in reversed(out[-MAX_ANSWER_BYTES:].decode(errors="replace").splitlines()):
        if line.startswith(_ANSWER_TAG):
            answer = json.loads(line[len(_ANSWER_TAG) :])
            return Facts(
                name,
                sha256,
                bool(answer["loadable"]),
                answer.get("problem"),
                tuple(answer.get("parameters", ())),
                bool(answer.get("is_async")),
            )
    code = proc.returncode
    why = f"signal {-code}" if code is not None and code < 0 else f"exit status {code}"
    return Facts(
        name,
        sha256,
        False,
        f"scenario {name!r} could not be checked: the checking process ended with {why} "
        f"(memory limit {MEMORY_LIMIT >> 20} MiB)",
    )


def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # the group is the child's own (new session)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


# -- in the child ---------------------------------------------------------------------------


def main() -> None:
    """The child: read {name, source} on stdin, load it, print the facts on stdout."""
    request = json.loads(sys.stdin.read())
    _limit(float(request.get("timeout", DEFAULT_TIMEOUT_S)))
    answer_fd = os.dup(1)
    # What the scenario prints must not be taken for the answer.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    answer = _facts(str(request["name"]), str(request["source"]))
    with os.fdopen(answer_fd, "w") as out:
        out.write(_ANSWER_TAG + json.dumps(answer, default=repr) + "\n")
        out.flush()
    os._exit(0)  # no atexit handler or thread of the scenario's runs after the answer


def _limit(timeout: float) -> None:
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
        cpu = math.ceil(timeout) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))


def _facts(name: str, source: str) -> dict[str, Any]:
    from amoc import scenario as scenario_mod
    from amoc.errors import ScenarioError

    try:
        loaded = scenario_mod.load_source(name, source)
    except ScenarioError as exc:
        return {"loadable": False, "problem": str(exc)}
    except BaseException as exc:  # whatever it is, it is the answer
        return {"loadable": False, "problem": f"scenario {name!r}: {scenario_mod.summary(exc)}"}
    return {
        "loadable": True,
        "problem": None,
        "is_async": loaded.is_async,
        "parameters": [_param(p) for p in loaded.params],
    }


def _param(p: Param) -> dict[str, Any]:
    default = None if p.default is REQUIRED else p.default
    try:
        json.dumps(default, allow_nan=True)
    except (TypeError, ValueError):
        default = repr(default)
    return {
        "name": p.name,
        "default": default,
        "required": p.default is REQUIRED,
        "description": p.description,
        "secret": p.is_secret,
        "start_only": p.start_only,
    }
