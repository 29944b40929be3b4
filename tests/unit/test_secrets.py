"""Secrets are shown as *** everywhere values are shown; start-only settings refuse a change."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from amoc.api.routes import check_values, config_rows
from amoc.api.settings import PARAMETERS as API_PARAMETERS
from amoc.api.validation import ApiError
from amoc.config import MASK, Config, is_secret_name, mask_url, param, scrub
from amoc.errors import ConfigError
from amoc.metrics.service import PARAMETERS as METRICS_PARAMETERS
from amoc.report import html

pytestmark = pytest.mark.unit

URL = "http://graphite:s3cr3t-pw@127.0.0.1:8080/events/"


def node_config(environ: dict[str, str] | None = None) -> Config:
    config = Config(environ=environ or {})
    config.declare((*API_PARAMETERS, *METRICS_PARAMETERS))
    config.declare([param("xmpp_password_prefix", "password_", "password = prefix + id")])
    return config


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("api_token", True),
        ("xmpp_password_prefix", True),
        ("db_password", True),
        ("hmac_secret", True),
        ("password", True),
        ("xmpp_username_prefix", False),
        ("graphite_prefix", False),
        ("tokens_per_user", False),
    ],
)
def test_secret_names(name: str, secret: bool) -> None:
    assert is_secret_name(name) is secret


def test_declared_secret_and_url_credentials() -> None:
    p = param("signing_key", "k-123", "a key", secret=True)
    assert p.is_secret and p.shown("k-123") == MASK and p.shown(None) is None
    assert mask_url(URL) == "http://***@127.0.0.1:8080/events/"
    assert mask_url("http://127.0.0.1/events/") == "http://127.0.0.1/events/"
    assert mask_url(f"to {URL} failed") == "to http://***@127.0.0.1:8080/events/ failed"
    # An error about the URL may quote its parts: they go too.
    assert "s3cr3t" not in scrub("nonnumeric port: 's3cr3t-pw@127.0.0.1:8080'", URL)


def test_describe_repr_and_api_rows_mask_secrets() -> None:
    config = node_config({"AMOC_API_TOKEN": "tok-abcdef"})
    config.set("graphite_events_url", URL)
    config.set("xmpp_password_prefix", "pw-xyz_")
    shown = repr(config) + json.dumps(config.describe()) + json.dumps(config_rows(config))
    for secret in ("tok-abcdef", "s3cr3t-pw", "pw-xyz_", "'password_'"):
        assert secret not in shown, secret
    rows = {r["name"]: r for r in config_rows(config)}
    assert rows["api_token"]["value"] == MASK and rows["api_token"]["secret"]
    assert rows["xmpp_password_prefix"]["value"] == MASK
    assert rows["xmpp_password_prefix"]["default"] == MASK
    assert rows["graphite_events_url"]["value"] == "http://***@127.0.0.1:8080/events/"
    assert config.get("api_token") == "tok-abcdef"  # the value itself is intact


def test_errors_about_secret_values_do_not_quote_them() -> None:
    config = node_config()
    with pytest.raises(ConfigError) as refused:
        config.set("api_token", "has spaces-9f8e7d")
    assert "9f8e7d" not in str(refused.value) and "'api_token'" in str(refused.value)
    secret = param("vault_secret", verify=lambda v: int(v), description="")
    with pytest.raises(ConfigError) as refused:
        secret.check("sesame-42", "test")
    assert "sesame" not in str(refused.value)


def test_start_only_settings_before_and_after_the_start() -> None:
    config = node_config()
    config.set("prometheus_port", 9100)  # before the start: the exporter will read it
    config.set("graphite_events_url", URL)
    assert not config.started
    assert config.resolve(METRICS_PARAMETERS)["prometheus_port"] == 9100  # the start reads it
    assert config.started
    for name, value in (("prometheus_port", 9200), ("api_host", "0.0.0.0"), ("graphite_port", 1)):
        with pytest.raises(ConfigError) as refused:
            config.set(name, value)
        message = str(refused.value)
        assert f"{name!r} is read when the node starts" in message
        assert f"AMOC_{name.upper()}" in message and "restart the node" in message
    assert config.get("prometheus_port") == 9100  # unchanged
    config.set("interarrival", 5)  # run-time settings still change
    assert config.get("interarrival") == 5


def test_patch_refuses_start_only_and_takes_the_rest() -> None:
    config = node_config()
    known = config.known()
    with pytest.raises(ApiError) as refused:
        check_values(known, {"interarrival": 5, "prometheus_port": 9100})
    assert refused.value.status == 400 and refused.value.field == "prometheus_port"
    assert "restart the node" in refused.value.message
    assert check_values(known, {"interarrival": 5}) == {"interarrival": 5}
    rows = {r["name"]: r for r in config_rows(config)}
    assert not rows["prometheus_port"]["settable"] and rows["interarrival"]["settable"]


def test_report_is_private_and_masks_secrets(tmp_path: Path) -> None:
    config = node_config({"AMOC_API_TOKEN": "tok-abcdef"})
    config.set("graphite_events_url", URL)
    directory = tmp_path / "reports" / "run1"
    index = html.write(
        directory, [{"t": 0.0, "running": 1.0}], {"scenario": "s"}, config.describe(), {}
    )
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    files = sorted(p.name for p in directory.iterdir())
    assert files == ["index.html", "series.csv", "summary.json"]
    for path in directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        text = path.read_text()
        assert "tok-abcdef" not in text and "s3cr3t" not in text, path
    assert "http://***@127.0.0.1:8080/events/" in index.read_text()
    old = os.umask(0)  # a permissive umask changes nothing
    try:
        html.write(directory, [], {"scenario": "s"}, [], {})
    finally:
        os.umask(old)
    assert stat.S_IMODE(index.stat().st_mode) == 0o600
