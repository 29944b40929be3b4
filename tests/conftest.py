"""Fixtures shared by every test layer: the release, built once per session."""

import os
import subprocess
from pathlib import Path

import pytest

from tests.e2e.cluster import cluster  # noqa: F401 - fixtures for every layer
from tests.integration.xmpp_fixture import (  # noqa: F401
    ejabberd_tls_server,
    prosody_server,
    xmpp_server,
)

ROOT = Path(__file__).resolve().parents[1]


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
