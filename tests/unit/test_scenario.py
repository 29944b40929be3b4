"""amoc.scenario: the init / start / terminate contract and clear load errors."""

from pathlib import Path

import pytest

from amoc import scenario
from amoc.errors import ScenarioError

pytestmark = pytest.mark.unit

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"


def write(tmp_path: Path, name: str, source: str) -> Path:
    (tmp_path / f"{name}.py").write_text(source)
    return tmp_path


def test_bundled_scenarios_load() -> None:
    dummy = scenario.load("dummy", [SCENARIOS])
    assert dummy.is_async and not dummy.start_takes_state and dummy.init is None
    template = scenario.load("template", [SCENARIOS])
    assert template.start_takes_state and template.init and template.terminate
    assert {p.name for p in template.params} == {"template_think_time", "template_greeting"}
    assert {"dummy", "template"} <= set(scenario.available([SCENARIOS]))


def test_missing_start(tmp_path: Path) -> None:
    write(tmp_path, "nostart", "def init():\n    pass\n")
    with pytest.raises(ScenarioError, match="'nostart' has no start function"):
        scenario.load("nostart", [tmp_path])


def test_import_failure_is_reported(tmp_path: Path) -> None:
    write(tmp_path, "broken", "import no_such_module_anywhere\nasync def start(u): pass\n")
    with pytest.raises(ScenarioError, match="failed to import.*no_such_module_anywhere"):
        scenario.load("broken", [tmp_path])


def test_syntax_error_names_the_line(tmp_path: Path) -> None:
    write(tmp_path, "syntax", "async def start(u):\n    return (\n")
    with pytest.raises(ScenarioError, match="does not compile.*line"):
        scenario.load("syntax", [tmp_path])


def test_start_arity_is_checked(tmp_path: Path) -> None:
    write(tmp_path, "arity", "async def start(a, b, c): pass\n")
    with pytest.raises(ScenarioError, match="start takes 3 positional"):
        scenario.load("arity", [tmp_path])


@pytest.mark.parametrize("name", ["../etc/passwd", "a-b", "1abc", "", "class", "a/b"])
def test_bad_names_are_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="not a valid module name"):
        scenario.load(name, [tmp_path])


def test_unknown_scenario_lists_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=f"no ghost.py in {tmp_path}"):
        scenario.load("ghost", [tmp_path])


def test_first_directory_wins(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    write(one, "s", "WHERE = 1\nasync def start(u): pass\n")
    write(two, "s", "WHERE = 2\nasync def start(u): pass\n")
    assert scenario.load("s", [one, two]).module.WHERE == 1
    assert scenario.load("s", [one, two]).source_hash == scenario.load("s", [one]).source_hash
