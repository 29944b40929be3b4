"""ansible/prometheus.yml renders the cluster's scrape config from an inventory, and Prometheus'
own promtool accepts it; the master's /metrics settings come from the same variables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROMTOOL = Path("/usr/bin/promtool")
INVENTORY = """\
[amoc_master]
master ansible_host=10.9.0.1 ansible_connection=local

[amoc_slaves]
slave1 ansible_host=10.9.0.11 ansible_connection=local

[amoc:children]
amoc_master
amoc_slaves
"""


def playbook(tmp_path: Path, play: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    inventory = tmp_path / "hosts"
    inventory.write_text(INVENTORY)
    python = f"ansible_python_interpreter={sys.executable}"
    return subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory),
         "-e", python, str(play), *extra],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1",
             "ANSIBLE_CONFIG": str(ROOT / "ansible" / "ansible.cfg"),
             "ANSIBLE_ROLES_PATH": str(ROOT / "ansible" / "roles")},
    )  # fmt: skip


def test_the_scrape_config_names_the_master_and_promtool_accepts_it(tmp_path: Path) -> None:
    out = tmp_path / "prometheus"
    targets = out / "prometheus_targets.yml"
    done = playbook(
        tmp_path, ROOT / "ansible" / "prometheus.yml", "-e", "amoc_prometheus_port=9100",
        "-e", f"amoc_prometheus_dir={out}", "-e", f"amoc_prometheus_targets_path={targets}",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert yaml.safe_load(targets.read_text()) == [
        {"targets": ["10.9.0.1:9100"], "labels": {"amoc_master": "master"}}
    ]
    jobs = yaml.safe_load((out / "prometheus_job.yml").read_text())
    assert jobs[0]["file_sd_configs"] == [{"files": [str(targets)]}]
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({"scrape_configs": jobs}))
    check = subprocess.run(
        [str(PROMTOOL), "check", "config", str(config)], capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_without_a_port_the_playbook_says_what_to_set(tmp_path: Path) -> None:
    done = playbook(tmp_path, ROOT / "ansible" / "prometheus.yml",
                    "-e", f"amoc_prometheus_dir={tmp_path / 'out'}")  # fmt: skip
    assert done.returncode != 0
    assert "set it to the master's /metrics port" in done.stdout, done.stdout
    assert not (tmp_path / "out").exists()


def test_the_master_gets_the_prometheus_settings_and_the_slaves_none(tmp_path: Path) -> None:
    shown = tmp_path / "app_configs.json"
    play = tmp_path / "play.yml"
    play.write_text(yaml.safe_dump([{
        "name": "Show the app.config values of each installation",
        "hosts": "master", "gather_facts": False,
        "tasks": [
            {"name": "The role (its variables; the scrape config too)",
             "ansible.builtin.import_role": {"name": "amoc", "tasks_from": "prometheus"}},
            {"name": "Write them", "ansible.builtin.copy": {
                "content": "{{ amoc_app_configs | to_json }}", "dest": str(shown),
                "mode": "0644"}},
        ],
    }]))  # fmt: skip
    values = {"interarrival": 50, "cluster_port": 4200, "scenario_params": {"x": 1}}
    extra = json.dumps({"amoc_values": values})
    done = playbook(
        tmp_path, play, "-e", "amoc_prometheus_port=9100", "-e", extra,
        "-e", f"amoc_prometheus_dir={tmp_path / 'out'}",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    configs = json.loads(shown.read_text())
    master, slave = configs["amoc_master"], configs["amoc"]
    assert master["prometheus_port"] == 9100 and master["prometheus_host"] == "10.9.0.1"
    assert master["cluster_role"] == "master" and master["x"] == 1
    assert "prometheus_port" not in slave and slave["cluster_role"] == "slave"
