"""The deploy's pieces that need no host: app.config's TOML, release pruning, the bundle id."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from amoc.config import load_app_config

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "ansible" / "roles" / "amoc"


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_app_config_template_is_toml_that_amoc_reads_back(tmp_path: Path) -> None:
    values = {
        "cluster_role": "slave",
        "text": 'a "quoted" \\ é 😀\ttab',
        "items": [1, "x", True, 0.5],
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


def test_prune_keeps_the_newest_releases_the_current_ones_and_their_bundles(
    tmp_path: Path,
) -> None:
    prune = _load(ROLE / "files" / "prune_releases.py")
    names = [
        ("amoc-aaaaaaaaaaaa-000000000001", 1),
        ("amoc-bbbbbbbbbbbb-000000000002", 2),
        ("amoc-cccccccccccc-000000000003", 3),
        ("amoc_master-aaaaaaaaaaaa-000000000009", 4),
        ("bundle-aaaaaaaaaaaa", 1),
        ("bundle-bbbbbbbbbbbb", 2),
        ("bundle-cccccccccccc", 3),
        ("bundle-dddddddddddd", 0),
    ]
    now = time.time()
    for name, age in names:
        (tmp_path / name).mkdir()
        os.utime(tmp_path / name, (now - 100 + age, now - 100 + age))
    current = [tmp_path / "amoc-aaaaaaaaaaaa-000000000001"]  # rolled back to the oldest
    prune.main(tmp_path, 1, current)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "amoc-aaaaaaaaaaaa-000000000001",
        "amoc-cccccccccccc-000000000003",
        "amoc_master-aaaaaaaaaaaa-000000000009",
        "bundle-aaaaaaaaaaaa",
        "bundle-cccccccccccc",
    ]


def test_the_bundle_id_follows_the_sources(tmp_path: Path) -> None:
    bundle = _load(ROOT / "tools" / "bundle.py")
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
