"""The test tiers stay apart: `pytest -m unit` imports no server fixture, no pexpect, no e2e."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, TESTS, TIERS

pytestmark = pytest.mark.unit

# What `pytest -m unit` must not load: the e2e tier's terminal driver and modules, and the
# integration tier's (they start servers).
FORBIDDEN = ("pexpect", "tests.e2e", "tests.integration")

COLLECT = f"""
import json, sys
import pytest
code = pytest.main(["-m", "unit", "--collect-only", "-q", "-p", "no:cacheprovider"])
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "pexpect" or m.startswith(
    {FORBIDDEN[1:]!r}))
print("LOADED=" + json.dumps(loaded))
sys.exit(int(code))
"""


def marker(path: Path) -> str | None:
    """The tier named by a test module's `pytestmark = pytest.mark.<tier>`."""
    for node in ast.parse(path.read_text()).body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets)
            and isinstance(node.value, ast.Attribute)
        ):
            return node.value.attr
    return None


def test_every_test_module_carries_its_directorys_marker() -> None:
    """What lets `-m TIER` skip the other directories (tests/conftest.py) without losing any."""
    wrong = {
        str(path.relative_to(TESTS)): marker(path)
        for tier in TIERS
        for path in sorted((TESTS / tier).glob("test_*.py"))
        if marker(path) != tier
    }
    assert not wrong, f"pytestmark differs from the directory: {wrong}"


def test_the_unit_tier_loads_neither_pexpect_nor_the_other_tiers() -> None:
    done = subprocess.run(
        [sys.executable, "-c", COLLECT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("LOADED=")]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-3000:]
    assert "test_tiers.py::test_the_unit_tier_loads" in done.stdout  # it did collect
    loaded = json.loads(lines[-1].removeprefix("LOADED="))
    assert loaded == [], f"`pytest -m unit` imported {loaded}"
