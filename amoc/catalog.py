"""Every setting name amoc knows: the ones a node declares itself, and the scenarios' own.

A name set in group_vars/amoc, the inventory or `--set` is valid when it is here. A node's
own settings are the `PARAMETERS` of amoc's modules (found by reading the sources, so that
a module that declares some is never left out); a scenario's are read by checking its
source in a child process (`amoc.scenario_check`): no scenario is imported here.

    python -m amoc.catalog [SCENARIOS_DIR ...]      # the names, as JSON
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from amoc import scenario as scenario_mod
from amoc import scenario_check
from amoc.config import BUILTINS, Param

_PACKAGE = Path(__file__).resolve().parent
_DECLARES = re.compile(r"^PARAMETERS\b", re.M)
_CHECKS_AT_ONCE = 4


def declaring_modules() -> list[str]:
    """The amoc modules that define a module-level PARAMETERS, by name."""
    names = []
    for path in sorted(_PACKAGE.rglob("*.py")):
        if _DECLARES.search(path.read_text(encoding="utf-8")):
            parts = path.relative_to(_PACKAGE.parent).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def node_parameters() -> dict[str, Param]:
    """Every setting a node declares itself (runner, metrics, API, cluster, XMPP...)."""
    found = {p.name: p for p in BUILTINS}
    for name in declaring_modules():
        declared = getattr(importlib.import_module(name), "PARAMETERS", ())
        found.update((p.name, p) for p in declared if isinstance(p, Param))
    return found


@dataclass
class Catalog:
    """The known names: the node's own, each scenario's, and the scenarios that could not be
    checked (their names are then unknown here)."""

    node: set[str]
    scenarios: dict[str, set[str]] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)

    def names(self) -> set[str]:
        """Every known name: valid for the node or for at least one scenario."""
        return self.node.union(*self.scenarios.values())

    def for_scenario(self, name: str) -> set[str]:
        """The names valid in a run of scenario `name`."""
        return self.node | self.scenarios.get(name, set())


async def scenario_parameters(
    dirs: Sequence[Path], timeout: float = scenario_check.DEFAULT_TIMEOUT_S
) -> tuple[dict[str, set[str]], dict[str, str]]:
    """Each scenario's declared names, and why a scenario could not be checked."""
    limit = asyncio.Semaphore(_CHECKS_AT_ONCE)

    async def one(name: str) -> scenario_check.Facts:
        source = scenario_mod.find(name, dirs).read_text(encoding="utf-8")
        async with limit:
            digest = hashlib.sha256(source.encode()).hexdigest()
            return await scenario_check.check(name, source, digest, timeout)

    names = scenario_mod.available(dirs)
    facts = await asyncio.gather(*(one(name) for name in names))
    declared = {f.name: {p["name"] for p in f.parameters} for f in facts if f.loadable}
    problems = {f.name: f.problem or "cannot load" for f in facts if not f.loadable}
    return declared, problems


def catalog(dirs: Sequence[Path]) -> Catalog:
    """The node's names and those of every scenario in `dirs` (checked in child processes)."""
    declared, problems = asyncio.run(scenario_parameters(dirs))
    return Catalog(set(node_parameters()), declared, problems)


def main(argv: Sequence[str]) -> None:
    """Print the catalog of the scenarios in `argv` (default: ./scenarios) as JSON."""
    found = catalog([Path(d) for d in argv] or [Path("scenarios")])
    print(
        json.dumps(
            {
                "node": sorted(found.node),
                "scenarios": {k: sorted(v) for k, v in sorted(found.scenarios.items())},
                "problems": found.problems,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
