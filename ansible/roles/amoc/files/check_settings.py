"""Refuse unknown names in group_vars/amoc, the inventory's variables and scenario_params,
each with the closest known name (run by `make prepare` and `make deploy` on this machine,
before any host is touched; the types are checked afterwards, by validate.yml).

    check_settings.py INVENTORY ROLE_DIR SCENARIOS_DIR PLAYBOOK_DIR CACHE_DIR

Prints one JSON object, {"problems": [...]}, each problem a sentence such as
"unknown setting 'interarival' in group_vars/amoc; did you mean 'interarrival'?".

Known at the top level of group_vars/amoc and on a host's line: the role's defaults
(roles/amoc/defaults/main.yml, the settings of amoc_settings among them) and any ansible_*
name (Ansible's own, passed on as they are). Known in scenario_params: every setting a node
declares itself and every parameter a scenario in SCENARIOS_DIR declares (the deploy does
not know which scenario will run; `--set` and amoc_dist.do check against the one that runs).
The scenarios are checked in child processes (amoc.catalog), never imported here; what
they declare is kept in CACHE_DIR, by a digest of amoc's and the scenarios' sources.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from amoc import catalog
from amoc.config import unknown_name

GROUPS = ("amoc", "amoc_master", "amoc_slaves")  # whose variables apply to amoc's hosts
HOST_GROUPS = ("amoc_master", "amoc_slaves")
VARS_SUFFIXES = ("", ".yml", ".yaml", ".json")


def inventory_dir(inventory: Path) -> Path:
    """Where Ansible looks for the inventory's group_vars/ and host_vars/."""
    return inventory if inventory.is_dir() else inventory.parent


def var_files(directory: Path, name: str) -> list[Path]:
    """The files Ansible reads for group (or host) `name` in group_vars/ (or host_vars/)."""
    found = []
    for suffix in VARS_SUFFIXES:
        path = directory / f"{name}{suffix}"
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file())
    return found


def names_in(paths: list[Path]) -> set[str]:
    """The top-level names of YAML files (none for a file that is no plain YAML map)."""
    names: set[str] = set()
    for path in paths:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):  # a vault, say: Ansible read it, we cannot
            continue
        if isinstance(data, dict):
            names.update(str(k) for k in data)
    return names


def missing_group_vars(inventory: Path) -> str | None:
    """Why the inventory cannot be used: no group_vars/amoc beside it (None: it has one)."""
    directory = inventory_dir(inventory) / "group_vars"
    if var_files(directory, "amoc"):
        return None
    return (
        f"the inventory {inventory} has no group_vars/amoc beside it ({directory / 'amoc'} "
        "is missing): every setting would silently be amoc's default. Copy this checkout's "
        "group_vars/amoc there and edit it (INVENTORY=path needs its group_vars/amoc next "
        "to it)"
    )


def read_inventory(inventory: Path, playbook_dir: Path) -> dict[str, Any]:
    """The inventory as `ansible-inventory --list --export` gives it: each group's own
    variables (group_vars/ and [group:vars]) and each host's own."""
    program = Path(sys.executable).parent / "ansible-inventory"
    done = subprocess.run(
        [
            str(program) if program.exists() else "ansible-inventory",
            *("-i", str(inventory), "--playbook-dir", str(playbook_dir)),
            *("--list", "--export"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise SystemExit(f"ansible-inventory could not read {inventory}:\n{done.stderr}")
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def deploy_names(role: Path) -> set[str]:
    """The names a user may set at the top level: the role's defaults and amoc_settings."""
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text(encoding="utf-8"))
    return set(defaults) | set(defaults.get("amoc_settings", {}))


def variables(data: dict[str, Any], root: Path) -> Iterator[tuple[str, str, Any]]:
    """(name, where it is set, value) of every variable that applies to amoc's hosts."""
    for group in GROUPS:
        from_files = names_in(var_files(root / "group_vars", group))
        for name, value in data.get(group, {}).get("vars", {}).items():
            where = (
                f"group_vars/{group}" if name in from_files else f"the inventory's [{group}:vars]"
            )
            yield name, where, value
    hostvars = data.get("_meta", {}).get("hostvars", {})
    hosts = sorted({h for g in HOST_GROUPS for h in data.get(g, {}).get("hosts", [])})
    for host in hosts:
        from_files = names_in(var_files(root / "host_vars", host))
        for name, value in hostvars.get(host, {}).items():
            where = (
                f"host_vars/{host}"
                if name in from_files
                else f"host {host}'s line in the inventory"
            )
            yield name, where, value


def problems(
    data: dict[str, Any], root: Path, deploy: set[str], known: catalog.Catalog
) -> list[str]:
    """Every unknown name, with where it is set and the closest known one."""
    settings = known.names()
    unchecked = "".join(
        f"; scenario {name!r} could not be checked on this machine ({why}), so its "
        "parameters are not known here"
        for name, why in sorted(known.problems.items())
    )
    found = []
    for name, where, value in variables(data, root):
        if name == "scenario_params" and isinstance(value, dict):
            for param in value:
                if str(param).lower() not in settings:
                    found.append(
                        unknown_name(
                            str(param),
                            settings,
                            f"in scenario_params of {where}",
                            otherwise="no scenario in scenarios/ declares it and amoc has no "
                            "such setting (amoc_config in a console lists them)" + unchecked,
                        )
                    )
        elif name in deploy or name.startswith("ansible_"):
            continue
        elif name.lower() in settings:
            found.append(
                f"setting {name!r} in {where} is read by amoc nodes only under "
                f"scenario_params: move it there (scenario_params: {{{name}: ...}})"
            )
        else:
            found.append(
                unknown_name(
                    name,
                    deploy,
                    f"in {where}",
                    otherwise="the settings are listed, with their meaning, in the "
                    "checkout's group_vars/amoc and the inventory file `hosts`",
                )
            )
    return found


def cached_catalog(scenarios: Path, cache: Path) -> catalog.Catalog:
    """The catalog of amoc and `scenarios`, kept in `cache` by a digest of their sources
    (checking the scenarios takes a child process each)."""
    digest = hashlib.sha256(sys.version.encode())
    package = Path(catalog.__file__).resolve().parent
    for root, pattern in ((package, "**/*.py"), (scenarios, "*.py")):
        for path in sorted(root.glob(pattern)):
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    kept = cache / f"catalog-{digest.hexdigest()[:16]}.json"
    with contextlib.suppress(OSError, ValueError, KeyError):
        data = json.loads(kept.read_text())
        return catalog.Catalog(
            set(data["node"]), {k: set(v) for k, v in data["scenarios"].items()}, data["problems"]
        )
    found = catalog.catalog([scenarios])
    with contextlib.suppress(OSError):
        cache.mkdir(parents=True, exist_ok=True)
        for old in cache.glob("catalog-*.json"):
            old.unlink()
        data = {
            "node": sorted(found.node),
            "scenarios": {k: sorted(v) for k, v in found.scenarios.items()},
            "problems": found.problems,
        }
        if not found.problems:  # a scenario that failed may load next time
            kept.write_text(json.dumps(data))
    return found


def main(inventory: Path, role: Path, scenarios: Path, playbook_dir: Path, cache: Path) -> None:
    """Print the problems of the inventory's settings as JSON."""
    missing = missing_group_vars(inventory)
    if missing is not None:
        print(json.dumps({"problems": [missing]}))
        return
    with ThreadPoolExecutor(1) as pool:  # ansible-inventory while the scenarios are checked
        reading = pool.submit(read_inventory, inventory, playbook_dir)
        known = cached_catalog(scenarios, cache)
        data = reading.result()
    print(
        json.dumps(
            {"problems": problems(data, inventory_dir(inventory), deploy_names(role), known)}
        )
    )


if __name__ == "__main__":
    main(*(Path(arg) for arg in sys.argv[1:6]))
