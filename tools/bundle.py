"""Build amoc's deployable bundle: a tarball of wheels for amoc and every dependency,
the scenarios and their requirements, so that load hosts install it with no package index
(`pip install --no-index --find-links wheels`). `make deploy` runs it once per deploy.

    python tools/bundle.py [--out _build/deploy]

Prints one JSON object: the bundle's id (a digest of what is in it), its tarball, the
Python it was built with (the hosts need the same major.minor) and whether it was built
now (false: an identical bundle was there already). The wheels of the dependencies are
cached by a digest of the dependency lists, so only amoc's own wheel is rebuilt after a
code change.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEEP_BUNDLES = 5
FORMAT = b"2"  # of the wheel cache and the bundle: a change here rebuilds both


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()[:12]


def _files(directory: Path) -> list[Path]:
    return sorted(
        p
        for p in directory.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
    )


def python_tag() -> str:
    """The major.minor of this Python, which the hosts' python3 must match."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def deps_digest(root: Path) -> str:
    """What decides the dependencies' wheels: the lists, this Python and this machine."""
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    requirements = (root / "scenarios" / "requirements.txt").read_bytes()
    return _digest(
        FORMAT,
        json.dumps(project.get("dependencies", [])).encode(),
        requirements,
        python_tag().encode(),
        platform.machine().encode(),
    )


def source_digest(root: Path, deps: str) -> str:
    """The bundle's id: amoc's sources, the scenarios and the dependencies' digest."""
    parts = [deps.encode(), (root / "pyproject.toml").read_bytes()]
    for base in ("amoc", "scenarios"):
        for path in _files(root / base):
            parts += [str(path.relative_to(root)).encode(), path.read_bytes()]
    return _digest(*parts)


def _pip_wheel(dest: Path, *args: str) -> None:
    pip = [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check"]
    done = subprocess.run(
        [*pip, "--wheel-dir", str(dest), *args],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        sys.exit(f"bundle: pip wheel {' '.join(args)} failed:\n{done.stdout}{done.stderr}")


def dependency_wheels(root: Path, out: Path, deps: str) -> Path:
    """The cached wheels of every dependency (amoc's own excluded), and pip's in pip/."""
    cache = out / f"wheels-{deps}"
    if (cache / ".complete").exists():
        return cache
    staging = Path(tempfile.mkdtemp(prefix=".wheels-", dir=out))
    _pip_wheel(staging, str(root), "--requirement", str(root / "scenarios" / "requirements.txt"))
    for wheel in staging.glob("amoc-*.whl"):
        wheel.unlink()
    # pip itself, run from its wheel on the hosts: their venvs need no pip of their own.
    _pip_wheel(staging / "pip", "--no-deps", "pip")
    (staging / ".complete").touch()
    shutil.rmtree(cache, ignore_errors=True)
    try:
        staging.rename(cache)
    except OSError:  # another build made it meanwhile
        shutil.rmtree(staging, ignore_errors=True)
        if not (cache / ".complete").exists():
            raise
    return cache


def build(root: Path, out: Path) -> dict[str, object]:
    """Build the bundle unless an identical one exists; describe it."""
    out.mkdir(parents=True, exist_ok=True)
    deps = deps_digest(root)
    bundle_id = source_digest(root, deps)
    tarball = out / f"amoc-{bundle_id}.tar.gz"
    info = {"id": bundle_id, "tarball": str(tarball), "python": python_tag(), "built": False}
    if tarball.exists():
        return info
    wheels = dependency_wheels(root, out, deps)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        own = Path(tmp) / "own"
        _pip_wheel(own, "--no-deps", str(root))
        partial = out / f".amoc-{bundle_id}.tar.gz.{os.getpid()}"
        top = f"amoc-{bundle_id}"
        with tarfile.open(partial, "w:gz") as tar:
            for wheel in sorted(wheels.glob("*.whl")) + sorted(own.glob("*.whl")):
                tar.add(wheel, f"{top}/wheels/{wheel.name}")
            tar.add(next(wheels.glob("pip/pip-*.whl")), f"{top}/pip.whl")
            tar.add(root / "scenarios" / "requirements.txt", f"{top}/requirements.txt")
            for path in _files(root / "scenarios"):
                tar.add(path, f"{top}/{path.relative_to(root)}")
            # Last: its presence on a host means the unpacking went to the end.
            meta = json.dumps({k: v for k, v in info.items() if k != "built"}).encode()
            entry = tarfile.TarInfo(f"{top}/BUNDLE.json")
            entry.size, entry.mode = len(meta), 0o644
            tar.addfile(entry, io.BytesIO(meta))
        partial.rename(tarball)
    _prune(out, keep=tarball)
    info["built"] = True
    return info


def _prune(out: Path, keep: Path) -> None:
    """Keep the newest bundles and the wheel caches of the current dependencies."""
    bundles = sorted(out.glob("amoc-*.tar.gz"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in bundles[KEEP_BUNDLES:]:
        if old != keep:
            old.unlink()
    current = out / f"wheels-{deps_digest(ROOT)}"
    for cache in out.glob("wheels-*"):
        if cache != current:
            shutil.rmtree(cache, ignore_errors=True)


def main() -> int:
    """Command line: build, print the bundle as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "_build" / "deploy")
    args = parser.parse_args()
    print(json.dumps(build(ROOT, args.out.resolve())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
