"""Apache ECharts, the charting library of the report: its pinned version and where it is.

`make echarts` (tools/fetch_echarts.py, run by `make rel` too) fetches the npm tarball of
VERSION once into _build/echarts/, checks TARBALL_SHA256, and puts dist/echarts.min.js in
amoc/report/vendor/ (package data: the release and the deployed wheels carry it). Each
report gets a copy beside its index.html, so it works offline and stays one directory.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from amoc.errors import AmocError

VERSION = "5.6.0"
TARBALL_URL = f"https://registry.npmjs.org/echarts/-/echarts-{VERSION}.tgz"
TARBALL_SHA256 = "e1b82487dd7f8d9f0438eec1f1433051148e0095ac7a15d4db890afda45cf610"
MEMBER = "package/dist/echarts.min.js"
SCRIPT_SHA256 = "bf4a223524e40b77c304bec67e1222cf551f14880cf42c69dc046558e11c07b1"
LICENSE_MEMBERS = ("package/LICENSE", "package/NOTICE")
VENDORED = Path(__file__).resolve().parent / "vendor" / "echarts.min.js"
FILE_NAME = "echarts.min.js"  # its name beside a report's index.html


class ChartsMissing(AmocError):
    """The report's charting library is not installed, or not the pinned one."""


def script(path: Path = VENDORED) -> bytes:
    """The pinned echarts.min.js, or ChartsMissing saying how to get it."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ChartsMissing(
            f"ECharts {VERSION} is not installed ({path} is missing): run `make echarts` "
            "in the checkout (make rel does it), then rebuild the release"
        ) from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != SCRIPT_SHA256:
        raise ChartsMissing(
            f"{path} is not ECharts {VERSION} (sha256 {digest}, expected {SCRIPT_SHA256}): "
            "run `make echarts` again"
        )
    return data
