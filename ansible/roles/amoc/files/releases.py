"""The releases on a host (run by `make deploy` as the run user; Python's standard library).

    releases.py prune HOME KEEP           after the switch: remove old releases
    releases.py discard HOME RELEASE...   after a failed deploy: remove the releases it made

HOME/releases holds INSTALL-BUNDLE-CONFIG directories (a release: its launcher, app.config
and keys; complete once `.complete` is in it, the last thing a deploy writes) and
bundle-BUNDLE ones (the virtualenv and scenarios releases link to). HOME/INSTALL links to
the current release of installation INSTALL (amoc_master, amoc), and
HOME/var/INSTALL/run/NODE/node.pid, locked while node NODE lives, names its running nodes;
each runs from the release in its AMOC_HOME.

`prune` keeps, per installation, the current release, the release of every running node
and the KEEP newest complete releases; it removes the others (half-built ones included)
and every bundle that no kept release uses. `discard` removes the releases given, but never
a current one or one a node runs from, and the half-installed bundles no release uses.
Both print one JSON object: the paths removed, and the running nodes whose release is not
their installation's current one (`stale`: a restart takes the new release).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

RELEASE = re.compile(r"^(?P<install>.+)-(?P<bundle>[0-9a-f]{12})-(?P<config>[0-9a-f]{12})$")
BUNDLE = re.compile(r"^bundle-(?P<bundle>[0-9a-f]{12})$")
COMPLETE = ".complete"  # in a release: every file of it is in place
INSTALLED = ".installed"  # in a bundle: its virtualenv is installed


def holder(pidfile: Path) -> int | None:
    """The pid of the live node that holds `pidfile` locked, or None."""
    try:
        fd = os.open(pidfile, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return int(text) if text.isdigit() else None
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None  # a stopped node's file
    finally:
        os.close(fd)


def release_of(pid: int) -> Path | None:
    """The release a process runs from: its AMOC_HOME (set by bin/amoc), else its cwd."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in environ:
        if item.startswith(b"AMOC_HOME="):
            return Path(os.fsdecode(item[len(b"AMOC_HOME=") :]))
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def running(home: Path) -> list[dict[str, Any]]:
    """Every running node of every installation: install, node, pid, release."""
    nodes = []
    for pidfile in sorted(home.glob("var/*/run/*/node.pid")):
        pid = holder(pidfile)
        release = release_of(pid) if pid is not None else None
        if pid is not None:
            install, node = pidfile.parts[-4], pidfile.parts[-2]
            nodes.append({"install": install, "node": node, "pid": pid, "release": release})
    return nodes


def current(home: Path) -> dict[str, Path]:
    """install -> the release HOME/install links to."""
    found = {}
    for link in home.iterdir():
        if link.is_symlink():
            target = link.resolve()
            match = RELEASE.match(target.name)
            if match and target.parent == (home / "releases").resolve():
                found[link.name] = target
    return found


def stale(home: Path, nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The running nodes whose release is not their installation's current one, and why."""
    now = current(home)
    out = []
    for node in nodes:
        release, target = node["release"], now.get(node["install"])
        if target is None or release is None or release.resolve() == target:
            continue
        old, new = RELEASE.match(release.name), RELEASE.match(target.name)
        if not release.exists():
            why = "its release was removed"
        elif old and new and old["bundle"] == new["bundle"]:
            why = "older config"
        else:
            why = "older code"
        out.append(
            {
                "install": node["install"],
                "node": node["node"],
                "pid": node["pid"],
                "release": release.name,
                "current": target.name,
                "why": why,
            }
        )
    return out


def _remove(path: Path, removed: list[str]) -> None:
    shutil.rmtree(path)
    removed.append(str(path))


def _unused_bundles(root: Path, complete_too: bool) -> list[Path]:
    used = {m["bundle"] for m in map(RELEASE.match, os.listdir(root)) if m}
    return [
        path
        for path in sorted(root.iterdir())
        if (m := BUNDLE.match(path.name))
        and m["bundle"] not in used
        and path.is_dir()
        and not path.is_symlink()
        and (complete_too or not (path / INSTALLED).exists())
    ]


def _in_use(home: Path) -> set[Path]:
    keep = set(current(home).values())
    keep.update(n["release"].resolve() for n in running(home) if n["release"] is not None)
    return keep


def prune(home: Path, keep: int) -> dict[str, Any]:
    """Remove what is neither current, nor run from, nor among the `keep` newest complete."""
    root = (home / "releases").resolve()
    kept = _in_use(home)
    by_install: dict[str, list[tuple[float, Path]]] = {}
    releases = []
    for path in root.iterdir():
        match = RELEASE.match(path.name)
        if match and path.is_dir() and not path.is_symlink():
            releases.append(path)
            with contextlib.suppress(FileNotFoundError):  # not complete
                done = (path / COMPLETE).stat().st_mtime
                by_install.setdefault(match["install"], []).append((done, path))
    for complete in by_install.values():
        complete.sort(reverse=True)
        kept.update(path for _, path in complete[: max(1, keep)])
    removed: list[str] = []
    for path in sorted(releases):
        if path not in kept:
            _remove(path, removed)
    for path in _unused_bundles(root, complete_too=True):
        _remove(path, removed)
    return {"removed": removed, "stale": stale(home, running(home))}


def discard(home: Path, releases: list[Path]) -> dict[str, Any]:
    """Remove the releases a failed deploy made (never a current one or one in use)."""
    root = (home / "releases").resolve()
    kept = _in_use(home)
    removed: list[str] = []
    for path in releases:
        path = path.resolve() if path.exists() else path
        if path.parent == root and RELEASE.match(path.name) and path.is_dir() and path not in kept:
            _remove(path, removed)
    for path in _unused_bundles(root, complete_too=False):
        _remove(path, removed)
    return {"removed": removed, "stale": []}


def main(argv: list[str]) -> None:
    """The command line (see the module's doc)."""
    verb, home = argv[0], Path(argv[1]).expanduser()
    if verb == "prune":
        result = prune(home, int(argv[2]))
    elif verb == "discard":
        result = discard(home, [Path(p) for p in argv[2:]])
    else:
        raise SystemExit(f"releases.py: unknown verb {verb!r} (prune, discard)")
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
