"""Fetch the report's charting library: Apache ECharts from the npm registry, pinned and checked.

    python3 tools/fetch_echarts.py       # what `make echarts` (and so `make rel`) runs

The tarball of amoc.report.echarts.VERSION is downloaded once into _build/echarts/ (kept
there: later builds need no network) and must match TARBALL_SHA256; its
dist/echarts.min.js (SCRIPT_SHA256) and license go into amoc/report/vendor/.
"""

from __future__ import annotations

import hashlib
import io
import sys
import tarfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from amoc.report import echarts  # noqa: E402 - the checkout's, whichever Python runs this

CACHE = ROOT / "_build" / "echarts"
TIMEOUT = 60


def tarball() -> bytes:
    """The pinned tarball, from the cache or the registry; exits naming a bad digest."""
    cached = CACHE / f"echarts-{echarts.VERSION}.tgz"
    if cached.is_file():
        data = cached.read_bytes()
        if hashlib.sha256(data).hexdigest() == echarts.TARBALL_SHA256:
            return data
        cached.unlink()  # a broken download: fetch it again
    print(f"echarts: fetching {echarts.TARBALL_URL}")
    try:
        with urllib.request.urlopen(echarts.TARBALL_URL, timeout=TIMEOUT) as answer:
            data = answer.read()
    except OSError as exc:
        sys.exit(f"echarts: cannot fetch {echarts.TARBALL_URL}: {exc}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != echarts.TARBALL_SHA256:
        sys.exit(
            f"echarts: {echarts.TARBALL_URL} has sha256 {digest}, expected "
            f"{echarts.TARBALL_SHA256}: not the pinned release, nothing installed"
        )
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(".part")
    partial.write_bytes(data)
    partial.replace(cached)
    return data


def member(archive: tarfile.TarFile, name: str) -> bytes:
    """One file of the tarball (read, never extracted to a path the archive names)."""
    handle = archive.extractfile(name)
    if handle is None:
        sys.exit(f"echarts: {name} is not a file in the tarball")
    return handle.read()


def main() -> None:
    """Install the pinned echarts.min.js into amoc/report/vendor/ unless it is there."""
    target = echarts.VENDORED
    try:
        echarts.script(target)
        return  # already the pinned one
    except echarts.ChartsMissing:
        pass
    with tarfile.open(fileobj=io.BytesIO(tarball()), mode="r:gz") as archive:
        script = member(archive, echarts.MEMBER)
        licenses = {Path(n).name: member(archive, n) for n in echarts.LICENSE_MEMBERS}
    digest = hashlib.sha256(script).hexdigest()
    if digest != echarts.SCRIPT_SHA256:
        sys.exit(f"echarts: {echarts.MEMBER} has sha256 {digest}, expected "
                 f"{echarts.SCRIPT_SHA256}")  # fmt: skip
    target.parent.mkdir(parents=True, exist_ok=True)
    for name, text in licenses.items():
        (target.parent / f"echarts-{name}").write_bytes(text)
    partial = target.with_suffix(".part")
    partial.write_bytes(script)
    partial.replace(target)
    print(f"echarts {echarts.VERSION} installed in {target}")


if __name__ == "__main__":
    main()
