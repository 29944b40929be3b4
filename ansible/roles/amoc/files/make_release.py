"""Lay out one amoc release on a host (run by `make deploy`); idempotent.

    make_release.py RELEASE_DIR BUNDLE_DIR STATE_DIR REPORTS_DIR

RELEASE_DIR gets bin/amoc (the launcher), priv/, keys/ and links to the bundle's venv and
scenarios, to STATE_DIR's run/ and log/ and to REPORTS_DIR, which outlive releases (pid
files, console sockets and logs stay where `bin/amoc stop` finds them after a switch; a
report written to the release's reports/ survives the release). Prints each thing it made;
nothing when all was there.
"""

import os
import sys
from pathlib import Path

LAUNCHER = """#!/bin/sh
# amoc launcher: console | start | attach | stop | status | run (see --help)
AMOC_HOME=$(cd "$(dirname "$0")/.." && pwd -P)
export AMOC_HOME
exec "$AMOC_HOME/venv/bin/python" -P -m amoc.cli "$@"
"""


def directory(path: Path, mode: int) -> None:
    """Make `path` with `mode`."""
    if not path.is_dir():
        path.mkdir(parents=True)
        print(f"made {path}")
    if path.stat().st_mode & 0o7777 != mode:
        os.chmod(path, mode)
        print(f"mode {mode:o} on {path}")


def link(path: Path, target: Path) -> None:
    """Make `path` a symlink to `target`."""
    if path.is_symlink() and os.readlink(path) == str(target):
        return
    if path.is_symlink():
        path.unlink()
    path.symlink_to(target)
    print(f"linked {path} -> {target}")


def launcher(path: Path) -> None:
    """Write bin/amoc."""
    if not (path.is_file() and path.read_text() == LAUNCHER):
        path.write_text(LAUNCHER)
        print(f"wrote {path}")
    if path.stat().st_mode & 0o7777 != 0o755:
        os.chmod(path, 0o755)


def main(release: Path, bundle: Path, state: Path, reports: Path) -> None:
    """The release's layout."""
    for sub, mode in (("bin", 0o755), ("priv", 0o755), ("priv/scenarios", 0o755), ("keys", 0o700)):
        directory(release / sub, mode)
    directory(state / "run", 0o700)
    directory(state / "log", 0o755)
    directory(reports, 0o700)
    link(release / "venv", bundle / "venv")
    link(release / "scenarios", bundle / "scenarios")
    link(release / "run", state / "run")
    link(release / "log", state / "log")
    link(release / "reports", reports)
    launcher(release / "bin" / "amoc")


if __name__ == "__main__":
    try:
        main(*(Path(arg) for arg in sys.argv[1:5]))
    except OSError as exc:
        sys.exit(f"make_release: {exc}")
