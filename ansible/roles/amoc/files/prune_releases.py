"""Remove old amoc releases on a host (run by `make deploy` after the switch).

    prune_releases.py RELEASES_DIR KEEP CURRENT_RELEASE...

Keeps, per installation (amoc_master, amoc), the KEEP newest releases and always the
current ones; keeps the bundles that a kept release uses; prints each path it removes.
"""

import re
import shutil
import sys
from pathlib import Path

RELEASE = re.compile(r"^(?P<install>.+)-(?P<bundle>[0-9a-f]{12})-(?P<config>[0-9a-f]{12})$")
BUNDLE = re.compile(r"^bundle-(?P<bundle>[0-9a-f]{12})$")


def main(root: Path, keep: int, current: list[Path]) -> None:
    """Remove what is neither current nor among the newest `keep` of its installation."""
    kept = {p.name for p in current}
    by_install: dict[str, list[Path]] = {}
    for path in root.iterdir():
        match = RELEASE.match(path.name)
        if match and path.is_dir() and not path.is_symlink():
            by_install.setdefault(match["install"], []).append(path)
    for paths in by_install.values():
        paths.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        kept.update(p.name for p in paths[:keep])
    bundles = {m["bundle"] for m in map(RELEASE.match, kept) if m}
    for path in sorted(root.iterdir()):
        release, bundle = RELEASE.match(path.name), BUNDLE.match(path.name)
        gone = (release and path.name not in kept) or (bundle and bundle["bundle"] not in bundles)
        if gone and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
            print(path)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), [Path(p) for p in sys.argv[3:]])
