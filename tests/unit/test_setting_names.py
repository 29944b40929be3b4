"""Unknown setting names are refused with the closest known one: amoc_config.set, the
catalog of every name amoc and its scenarios declare, and the deploy's check of
group_vars/amoc, the inventory's variables and scenario_params."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from amoc import catalog
from amoc.config import Config, ConfigError, check_names, closest, unknown_name
from tests.unit.files import ROLE, ROOT, load_file

pytestmark = pytest.mark.unit


def test_the_closest_name_is_suggested() -> None:
    known = ["interarrival", "repeat_interval", "repeat_num", "dummy_wait"]
    assert closest("interarival", known) == "interarrival"
    assert closest("INTERARIVAL", known) == "interarrival"
    assert closest("repeat_nm", known) == "repeat_num"
    assert closest("xyzzy", known) is None
    assert (
        unknown_name("interarival", known, "in group_vars/amoc")
        == "unknown setting 'interarival' in group_vars/amoc; did you mean 'interarrival'?"
    )
    assert unknown_name("xyzzy", ["b", "a"]) == "unknown setting 'xyzzy'; known names: a, b"
    assert unknown_name("xyzzy", ["a"], otherwise="see the README") == (
        "unknown setting 'xyzzy'; see the README"
    )


def test_check_names_names_every_unknown_one() -> None:
    check_names(["Interarrival", "dummy_wait"], ["interarrival", "dummy_wait"])
    with pytest.raises(ConfigError) as refused:
        check_names(["dumy_wait", "interarival", "repeat_num"], ["interarrival", "dummy_wait"])
    assert str(refused.value) == (
        "unknown setting 'dumy_wait'; did you mean 'dummy_wait'?; "
        "unknown setting 'interarival'; did you mean 'interarrival'?; "
        "unknown setting 'repeat_num'; known names: dummy_wait, interarrival"
    )


def test_amoc_config_set_suggests_the_closest_name() -> None:
    with pytest.raises(ConfigError, match=r"unknown config name 'interarival'; did you mean "):
        Config(environ={}).set("interarival", 10)


def test_the_catalog_holds_every_module_parameters_and_no_scenario_is_imported() -> None:
    names = set(catalog.node_parameters())
    assert {"interarrival", "stop_timeout", "report_dir", "xmpp_host", "cluster_role"} <= names
    assert "api_port" in names and "loop_block_warn" in names and "prometheus_port" in names
    # Every module that declares PARAMETERS is read (a new one cannot be left out).
    for path in (ROOT / "amoc").rglob("*.py"):
        if re.search(r"^PARAMETERS\b", path.read_text(), re.M):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            assert module.removesuffix(".__init__") in catalog.declaring_modules()


def test_scenario_parameters_come_from_a_child_process(tmp_path: Path) -> None:
    (tmp_path / "mine.py").write_text(
        "import sys\nfrom amoc.config import param\n"
        "sys.modules['amoc'].IMPORTED_HERE = True\n"
        "PARAMETERS = [param('mine_wait', 5)]\n"
        "async def start(user_id):\n    pass\n"
    )
    (tmp_path / "broken.py").write_text("raise RuntimeError('no')\n")
    found = catalog.catalog([tmp_path])
    assert found.scenarios == {"mine": {"mine_wait"}}
    assert "broken" in found.problems and "RuntimeError" in found.problems["broken"]
    assert "mine_wait" in found.names() and "mine_wait" in found.for_scenario("mine")
    assert "mine_wait" not in found.for_scenario("broken")
    import amoc

    assert not hasattr(amoc, "IMPORTED_HERE")


def _inventory(
    group_vars: dict[str, object], amoc_vars: dict[str, object], host_vars: dict[str, object]
) -> dict[str, object]:
    """What `ansible-inventory --list --export` says of an inventory."""
    return {
        "_meta": {"hostvars": {"m": host_vars, "s": {"ansible_host": "10.0.0.2"}}},
        "amoc": {"children": ["amoc_master", "amoc_slaves"], "vars": {**amoc_vars, **group_vars}},
        "amoc_master": {"hosts": ["m"]},
        "amoc_slaves": {"hosts": ["s"]},
    }


def test_the_deploy_refuses_unknown_names_where_they_are_set(tmp_path: Path) -> None:
    check = load_file(ROLE / "files" / "check_settings.py")
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars" / "amoc").write_text(
        "interarival: 30\nxmpp_tls: starttls\namoc_user: amoc\n"
        "scenario_params: {dumy_wait: 5, messages_per_user: 3, prometheus_port: 9090}\n"
    )
    data = _inventory(
        {
            "interarival": 30,
            "xmpp_tls": "starttls",
            "amoc_user": "amoc",
            "scenario_params": {"dumy_wait": 5, "messages_per_user": 3, "prometheus_port": 9090},
        },
        {"ansible_user": "root", "ansible_pyhton_interpreter": "/usr/bin/python3"},
        {"ansible_host": "10.0.0.1", "amoc_slave_node": 2, "amoc_capacity": 2.0},
    )
    known = catalog.Catalog({"interarrival", "xmpp_tls", "prometheus_port"}, {
        "dummy": {"dummy_wait"},
        "xmpp_one_to_one": {"messages_per_user"},
    })  # fmt: skip
    problems = check.problems(data, tmp_path, check.deploy_names(ROLE), known)
    assert problems == [
        "unknown setting 'interarival' in group_vars/amoc; did you mean 'interarrival'?",
        "setting 'xmpp_tls' in group_vars/amoc is read by amoc nodes only under "
        "scenario_params: move it there (scenario_params: {xmpp_tls: ...})",
        "unknown setting 'dumy_wait' in scenario_params of group_vars/amoc; "
        "did you mean 'dummy_wait'?",
        "unknown setting 'amoc_slave_node' in host m's line in the inventory; "
        "did you mean 'amoc_slave_nodes'?",
    ]


def test_the_role_defaults_and_ansible_names_are_known() -> None:
    check = load_file(ROLE / "files" / "check_settings.py")
    names = check.deploy_names(ROLE)
    assert {"interarrival", "scenario_params", "cluster_port", "amoc_user"} <= names
    assert {"amoc_keep_releases", "amoc_slave_nodes", "amoc_capacity"} <= names


def test_an_inventory_without_group_vars_is_refused(tmp_path: Path) -> None:
    check = load_file(ROLE / "files" / "check_settings.py")
    inventory = tmp_path / "hosts"
    inventory.write_text("[amoc_master]\nm\n")
    problem = check.missing_group_vars(inventory)
    assert problem is not None
    assert f"the inventory {inventory} has no group_vars/amoc beside it" in problem
    (tmp_path / "group_vars" / "amoc").mkdir(parents=True)  # a directory of files will do
    (tmp_path / "group_vars" / "amoc" / "main.yml").write_text("interarrival: 5\n")
    assert check.missing_group_vars(inventory) is None
    assert check.names_in(check.var_files(tmp_path / "group_vars", "amoc")) == {"interarrival"}


async def test_a_runs_settings_name_the_closest_declared_one(tmp_path: Path) -> None:
    from amoc.runner import Controller

    (tmp_path / "waits.py").write_text(
        "from amoc.config import param\n"
        "PARAMETERS = [param('waits_ms', 5)]\n"
        "async def start(user_id):\n    pass\n"
    )
    config = Config(environ={})
    assert config.unknown("interarival", "here") == (
        "unknown setting 'interarival' here; did you mean 'interarrival'?"
    )
    ctl = Controller([tmp_path], config)
    with pytest.raises(ConfigError) as refused:
        await ctl.do("waits", 1, 1, settings={"wait_ms": 1})
    assert str(refused.value) == (
        "unknown setting 'wait_ms' for scenario 'waits'; did you mean 'waits_ms'?"
    )


def test_the_deploy_keeps_the_catalog_until_a_source_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    check = load_file(ROLE / "files" / "check_settings.py")
    scenarios = tmp_path / "scenarios"
    scenarios.mkdir()
    (scenarios / "mine.py").write_text(
        "from amoc.config import param\nPARAMETERS = [param('mine_wait', 5)]\n"
        "async def start(user_id):\n    pass\n"
    )
    first = check.cached_catalog(scenarios, tmp_path / "cache")
    assert first.scenarios == {"mine": {"mine_wait"}}

    def no_check(_dirs: object) -> None:
        raise AssertionError("checked again")

    monkeypatch.setattr(check.catalog, "catalog", no_check)
    assert check.cached_catalog(scenarios, tmp_path / "cache").names() == first.names()
    (scenarios / "mine.py").write_text((scenarios / "mine.py").read_text() + "# changed\n")
    with pytest.raises(AssertionError, match="checked again"):
        check.cached_catalog(scenarios, tmp_path / "cache")
