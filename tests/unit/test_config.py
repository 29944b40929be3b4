"""amoc.config: lookup order, parsing, errors that name the variable."""

import math

import pytest

from amoc.config import Config, param
from amoc.errors import ConfigError

pytestmark = pytest.mark.unit


def test_builtins_have_defaults() -> None:
    config = Config(environ={})
    assert config.get("interarrival") == 50
    assert config.get("repeat_interval") == 60_000
    assert config.get("repeat_num") == math.inf


def test_order_env_then_runtime_then_app_then_default(tmp_path) -> None:
    app = tmp_path / "app.config"
    app.write_text('interarrival = 7\nrepeat_interval = 8\nrepeat_num = 9\ngreeting = "app"\n')
    env = {"AMOC_INTERARRIVAL": "1"}
    config = Config(app, environ=env)
    config.set("interarrival", 2)
    config.set("repeat_interval", 3)
    assert config.get("interarrival") == 1  # environment wins
    assert config.get("repeat_interval") == 3  # run time beats app.config
    assert config.get("repeat_num") == 9  # app.config beats the default
    assert config.get("greeting") == "app"
    assert config.get("absent", "fallback") == "fallback"


def test_environment_values_are_python_literals_or_raw_strings() -> None:
    env = {"AMOC_A": "[1, 2]", "AMOC_B": "hello world", "AMOC_C": "{'k': 1.5}", "AMOC_D": "True"}
    config = Config(environ=env)
    assert config.get("a") == [1, 2]
    assert config.get("b") == "hello world"
    assert config.get("c") == {"k": 1.5}
    assert config.get("d") is True


def test_missing_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="'xmpp_target'.*AMOC_XMPP_TARGET"):
        Config(environ={}).get("xmpp_target")


def test_unknown_name_is_refused_on_set() -> None:
    with pytest.raises(ConfigError, match="unknown config name 'interarival'"):
        Config(environ={}).set("interarival", 10)


def test_invalid_values_name_the_parameter_and_source() -> None:
    config = Config(environ={"AMOC_INTERARRIVAL": "-5"})
    with pytest.raises(ConfigError, match="'interarrival'.*environment AMOC_INTERARRIVAL"):
        config.get("interarrival")
    with pytest.raises(ConfigError, match="'repeat_num'"):
        Config(environ={}).set("repeat_num", 0)
    with pytest.raises(ConfigError, match="'repeat_interval'"):
        Config(environ={}).set("repeat_interval", "soon")


def test_repeat_num_accepts_infinity_spellings() -> None:
    config = Config(environ={})
    config.set("repeat_num", "infinity")
    assert config.get("repeat_num") == math.inf
    config.set("repeat_num", 3)
    assert config.get("repeat_num") == 3


def test_declared_parameters_are_typed_by_their_default() -> None:
    config = Config(environ={"AMOC_MESSAGES": "'ten'"})
    config.declare([param("messages", 10, "how many"), param("needed", description="no default")])
    with pytest.raises(ConfigError) as err:
        config.resolve(config.known().values())
    assert "'messages'" in str(err.value) and "'needed'" in str(err.value)


def test_verification_may_normalise() -> None:
    config = Config(environ={})
    config.declare([param("mode", "a", "a or b", verify=lambda v: str(v).lower())])
    config.set("mode", "B")
    assert config.get("mode") == "b"


def test_bad_app_config_names_the_file(tmp_path) -> None:
    app = tmp_path / "app.config"
    app.write_text("interarrival = = 3\n")
    with pytest.raises(ConfigError, match=str(app)):
        Config(app, environ={})


def test_listeners_see_runtime_changes() -> None:
    config = Config(environ={})
    seen = []
    config.on_change(lambda name, value: seen.append((name, value)))
    config.set("interarrival", 5)
    assert seen == [("interarrival", 5)]
