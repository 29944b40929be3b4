"""The deploy's pieces that need no host: app.config's TOML, releases (pruned, discarded,
in use, their reports), the bundle id."""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from amoc.config import load_app_config
from tests.unit.files import ROLE, ROOT, load_file

pytestmark = pytest.mark.unit


def test_app_config_template_is_toml_that_amoc_reads_back(tmp_path: Path) -> None:
    values = {
        "cluster_role": "slave",
        "text": 'a "quoted" \\ é 😀\ttab',
        "items": [1, "x", True, 0.5],
        # monitor_hosts: a list of inline tables
        "sources": [
            {"kind": "ssh", "host": "10.0.0.5", "processes": ["beam.smp"]},
            {"kind": "local", "processes": [1234]},
        ],
        "flag": False,
        "ratio": 0.5,
        "repeat_num": math.inf,
        "graphite_host": None,  # null: left out, amoc's default applies
        "port": 5222,
    }
    play = tmp_path / "play.yml"
    out = tmp_path / "app.config"
    play.write_text(
        yaml.safe_dump(
            [
                {
                    "hosts": "localhost",
                    "gather_facts": False,
                    "vars": {
                        "item": {"name": "amoc", "role": "slave"},
                        "amoc_app_configs": {"amoc": values},
                    },
                    "tasks": [
                        {
                            "ansible.builtin.template": {
                                "src": str(ROLE / "templates" / "app.config.j2"),
                                "dest": str(out),
                                "mode": "0644",
                            }
                        }
                    ],
                }
            ],
            allow_unicode=True,
        )
    )
    python = f"ansible_python_interpreter={sys.executable}"
    local = ["-i", "localhost,", "-c", "local", "-e", python]
    done = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), *local, str(play)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    read = load_app_config(out)
    expected = {k: v for k, v in values.items() if v is not None}
    assert read == expected
    assert "graphite_host" not in out.read_text()


def _release(root: Path, name: str, done_at: float | None) -> Path:
    """A release directory, complete (with its .complete written at `done_at`) or not."""
    path = root / "releases" / name
    path.mkdir(parents=True)
    if done_at is not None:
        (path / ".complete").write_text(name)
        os.utime(path / ".complete", (done_at, done_at))
    return path


@contextlib.contextmanager
def _node(home: Path, install: str, name: str, release: Path) -> Iterator[int]:
    """A live process that holds node `name`'s pid file, run from `release` (AMOC_HOME)."""
    run = home / "var" / install / "run" / name
    run.mkdir(parents=True)
    code = (
        "import fcntl, os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "os.write(fd, f'{os.getpid()}\\n'.encode())\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(run / "node.pid")],
        env={**os.environ, "AMOC_HOME": str(release)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "locked\n"
        yield child.pid
    finally:
        child.kill()
        child.wait()


def test_prune_keeps_the_current_the_running_and_the_newest_complete_releases(
    tmp_path: Path,
) -> None:
    releases = load_file(ROLE / "files" / "releases.py")
    now = time.time()
    running = _release(tmp_path, "amoc_master-aaaaaaaaaaaa-000000000001", now - 50)
    _release(tmp_path, "amoc_master-aaaaaaaaaaaa-000000000002", now - 40)
    newest = _release(tmp_path, "amoc_master-bbbbbbbbbbbb-000000000003", now - 30)
    _release(tmp_path, "amoc_master-cccccccccccc-000000000004", None)  # half-built
    current = _release(tmp_path, "amoc_master-bbbbbbbbbbbb-000000000005", now - 60)  # rolled back
    slave = _release(tmp_path, "amoc-dddddddddddd-000000000006", None)  # current, pre-.complete
    for bundle in ("aaaaaaaaaaaa", "bbbbbbbbbbbb", "cccccccccccc", "dddddddddddd", "eeeeeeeeeeee"):
        (tmp_path / "releases" / f"bundle-{bundle}").mkdir()
    (tmp_path / "amoc_master").symlink_to(current)
    (tmp_path / "amoc").symlink_to(slave)
    (tmp_path / "var" / "amoc_master" / "run" / "gone").mkdir(parents=True)
    (tmp_path / "var" / "amoc_master" / "run" / "gone" / "node.pid").write_text("1\n")  # dead
    with _node(tmp_path, "amoc_master", "master", running) as pid:
        result = releases.prune(tmp_path, 1)
        bundles = ["bundle-aaaaaaaaaaaa", "bundle-bbbbbbbbbbbb", "bundle-dddddddddddd"]
        assert sorted(p.name for p in (tmp_path / "releases").iterdir()) == sorted(
            [running.name, newest.name, current.name, slave.name, *bundles]
        )
        assert sorted(Path(p).name for p in result["removed"]) == [
            "amoc_master-aaaaaaaaaaaa-000000000002",
            "amoc_master-cccccccccccc-000000000004",
            "bundle-cccccccccccc",
            "bundle-eeeeeeeeeeee",
        ]
        assert result["stale"] == [
            {
                "install": "amoc_master",
                "node": "master",
                "pid": pid,
                "release": running.name,
                "current": current.name,
                "why": "older code",
            }
        ]
    # The node has stopped: its release is one more old one.
    result = releases.prune(tmp_path, 1)
    assert [Path(p).name for p in result["removed"]] == [running.name, "bundle-aaaaaaaaaaaa"]
    assert result["stale"] == []


def test_a_failed_deploy_discards_its_releases_but_never_one_in_use(tmp_path: Path) -> None:
    releases = load_file(ROLE / "files" / "releases.py")
    current = _release(tmp_path, "amoc-aaaaaaaaaaaa-000000000001", 1.0)
    running = _release(tmp_path, "amoc-aaaaaaaaaaaa-000000000002", 2.0)
    new = _release(tmp_path, "amoc-bbbbbbbbbbbb-000000000003", None)
    (tmp_path / "releases" / "bundle-aaaaaaaaaaaa" / "venv").mkdir(parents=True)
    (tmp_path / "releases" / "bundle-aaaaaaaaaaaa" / ".installed").touch()
    (tmp_path / "releases" / "bundle-bbbbbbbbbbbb").mkdir()  # half-installed by this deploy
    (tmp_path / "amoc").symlink_to(current)
    with _node(tmp_path, "amoc", "s1", running):
        result = releases.discard(tmp_path, [current, running, new])
        assert sorted(Path(p).name for p in result["removed"]) == [new.name, "bundle-bbbbbbbbbbbb"]
    assert current.is_dir() and running.is_dir()
    assert (tmp_path / "releases" / "bundle-aaaaaaaaaaaa").is_dir()


def test_a_release_links_its_reports_outside_itself(tmp_path: Path) -> None:
    make_release = load_file(ROLE / "files" / "make_release.py")
    release, bundle = tmp_path / "releases" / "amoc-1", tmp_path / "releases" / "bundle-1"
    make_release.main(release, bundle, tmp_path / "var" / "amoc", tmp_path / "amoc_reports")
    assert os.readlink(release / "reports") == str(tmp_path / "amoc_reports")
    assert (tmp_path / "amoc_reports").stat().st_mode & 0o777 == 0o700
    assert os.readlink(release / "run") == str(tmp_path / "var" / "amoc" / "run")


def test_the_bundle_id_follows_the_sources(tmp_path: Path) -> None:
    bundle = load_file(ROOT / "tools" / "bundle.py")
    for path in ("amoc/__init__.py", "scenarios/dummy.py", "scenarios/requirements.txt"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("x = 1\n")
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "amoc"\ndependencies = ["a"]\n')
    deps = bundle.deps_digest(tmp_path)
    first = bundle.source_digest(tmp_path, deps)
    assert bundle.source_digest(tmp_path, deps) == first
    (tmp_path / "scenarios" / "dummy.py").write_text("x = 2\n")
    assert bundle.source_digest(tmp_path, deps) != first
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "amoc"\ndependencies = ["b"]\n')
    assert bundle.deps_digest(tmp_path) != deps
