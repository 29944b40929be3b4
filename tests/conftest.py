"""What every test layer shares: the release, built once per session.

Each layer's own fixtures live in its directory's conftest.py (tests/integration: the XMPP
servers; tests/e2e: the cluster), so the fast tier loads neither servers nor pexpect.
"""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
TIERS = ("unit", "integration", "e2e")  # a directory of tests/ and the marker of its tests


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """With `-m TIER` (one tier, as `make test-unit` runs), the other tiers' directories are
    not even imported: their tests carry their own directory's marker, so none would run."""
    tier = config.getoption("markexpr")
    parent, name = collection_path.parent, collection_path.name
    if tier in TIERS and parent == TESTS and name in TIERS and name != tier:
        return True
    return None


@pytest.fixture(scope="session")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A release built from this checkout by tools/release.sh (what `make rel` runs)."""
    rel = tmp_path_factory.mktemp("rel") / "amoc"
    subprocess.run(
        [str(ROOT / "tools" / "release.sh")],
        env={**os.environ, "REL": str(rel)},
        check=True,
        capture_output=True,
    )
    assert (rel / "bin" / "amoc").is_file()
    return rel
