"""The scenario API is pinned: a name that appears in or vanishes from it fails here.

A scenario imports from amoc.xmpp, amoc.config, amoc.metrics, amoc.throttle, amoc.pacing,
amoc.coordinator and amoc.errors. A change to what they offer is a change to every user's
scenarios: make it on purpose, then update the list below (and the README).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]

# Packages with an `__all__`: exactly these names.
EXPORTED = {
    "amoc.xmpp": [
        "PARAMETERS", "Client", "ConnectionLost", "Element", "IqError", "LeanClient",
        "LoginError", "Message", "NotSupported", "Reason", "ReceiveTimeout", "Session",
        "Settings", "XmppError", "account", "connect", "jid", "mam", "muc", "password",
        "ping", "pred", "pubsub", "roster", "settings", "stanza", "username",
    ],
    "amoc.metrics": [
        "PARAMETERS", "REGISTRY", "Counter", "Gauge", "Histogram", "MetricsService",
        "Registry", "annotate", "counter", "describe", "gauge", "histogram", "merge", "show",
        "summary",
    ],
}  # fmt: skip

# Modules without one: the public names they define at top level (imports and the module's
# logger `log` left out).
DEFINED = {
    "amoc.config": [
        "BUILTINS", "Config", "INFINITY", "MASK", "Param", "READ_ONLY", "REQUIRED",
        "SECRET_NAMES", "SECRET_SUFFIXES", "Updater", "Verifier", "amoc_config", "at_least",
        "check_names", "closest", "get", "is_secret_name", "load_app_config", "mask_url",
        "masked", "non_negative_int", "non_negative_ms", "optional_per_minute",
        "optional_port", "optional_text", "param", "parse_literal", "positive_ms",
        "repeat_count",
        "restart_needed", "scrub", "set", "unknown_name",
    ],
    "amoc.throttle": [
        "DEFAULT_INTERVAL", "Throttle", "ThrottleError", "change_rate",
        "change_rate_gradually", "info", "pause", "resume", "run", "send_and_wait",
        "set_share", "start", "stop", "stop_all", "wait",
    ],
    "amoc.pacing": ["ARRIVALS", "every"],
    "amoc.coordinator": [
        "Coordinator", "CoordinatorError", "DEFAULT_TIMEOUT", "Emit", "Hub", "Member", "NODE",
        "Remote", "User", "add", "deliver", "start", "stop", "stop_all", "use_master",
    ],
    "amoc.errors": ["AmocError", "ConfigError", "NodeError", "RunnerError", "ScenarioError"],
}  # fmt: skip


def changes(module: str, found: list[str], pinned: list[str]) -> str:
    """What differs, in words: the names that appeared and those that vanished."""
    appeared = sorted(set(found) - set(pinned))
    vanished = sorted(set(pinned) - set(found))
    return (
        f"{module}'s public names changed: appeared {appeared}, vanished {vanished}; "
        f"if on purpose, update the list in {Path(__file__).name}"
    )


def defined_names(module: str) -> list[str]:
    """The names a module's source binds at top level, without imports, `log` or a leading
    '_'."""
    path = importlib.import_module(module).__file__
    assert path is not None
    names: set[str] = set()
    for node in ast.parse(Path(path).read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return sorted(n for n in names if not n.startswith("_") and n != "log")


def ruff_order(name: str) -> tuple[int, str]:
    """The order ruff keeps `__all__` in (RUF022): CONSTANTS, then Classes, then the rest."""
    return (0 if name.isupper() else 1 if name[:1].isupper() else 2, name)


@pytest.mark.parametrize("module", sorted(EXPORTED))
def test_the_exported_names_are_the_pinned_ones(module: str) -> None:
    exported = list(importlib.import_module(module).__all__)
    assert sorted(exported) == sorted(EXPORTED[module]), changes(module, exported, EXPORTED[module])
    assert exported == sorted(exported, key=ruff_order), f"{module}.__all__ is not sorted"
    missing = [n for n in exported if not hasattr(importlib.import_module(module), n)]
    assert not missing, f"{module}.__all__ names what it does not have: {missing}"


@pytest.mark.parametrize("module", sorted(DEFINED))
def test_the_defined_names_are_the_pinned_ones(module: str) -> None:
    found = defined_names(module)
    assert found == sorted(DEFINED[module]), changes(module, found, DEFINED[module])


def test_every_name_the_bundled_scenarios_import_exists() -> None:
    """What scenarios/ takes from amoc, module by module, is there (the README's examples)."""
    broken = []
    for path in sorted((ROOT / "scenarios").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("amoc"):
                assert node.module is not None
                module = importlib.import_module(node.module)
                for alias in node.names:
                    if not hasattr(module, alias.name):
                        try:  # a submodule not loaded by its package
                            importlib.import_module(f"{node.module}.{alias.name}")
                        except ImportError:
                            broken.append(f"{path.name}: {node.module}.{alias.name}")
    assert not broken, broken


def test_a_change_is_named_in_the_failure() -> None:
    message = changes("amoc.x", ["a", "new"], ["a", "old"])
    assert "appeared ['new'], vanished ['old']" in message
