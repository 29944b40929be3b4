"""The parameters of amoc.xmpp and their resolution into one `Settings` per connection.

Values come from `amoc_config` (environment `AMOC_XMPP_*`, run-time `set`, app.config,
then the defaults below); `connect(user_id, **overrides)` may override any of them by the
short name (`port=...`, `password=...`). Durations are in milliseconds, as everywhere in amoc.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from amoc.config import Config, Param, amoc_config, non_negative_int, param, positive_ms
from amoc.errors import ConfigError
from amoc.xmpp.addressing import (
    check_pick,
    check_servers,
    check_sources,
    check_transports,
    check_users_file,
)
from amoc.xmpp.tls import check_ca_file

SASL_MECHANISMS = (
    "AUTO",
    "PLAIN",
    "SCRAM-SHA-1",
    "SCRAM-SHA-256",
    "SCRAM-SHA-512",
    "SCRAM-SHA-1-PLUS",
    "SCRAM-SHA-256-PLUS",
    "SCRAM-SHA-512-PLUS",
)
# "lean": amoc.xmpp.lean (asyncio Protocol + expat); "slixmpp": amoc.xmpp.client.
# lean is the default: measured against slixmpp (bench/RESULTS.md, bench/bench_tsung.py),
# a tenth of its memory per user, two thirds of its CPU per message, a fifth of its CPU per
# login, and twice its logins/s.
CLIENTS = ("lean", "slixmpp")
SUBSCRIPTION_POLICIES = ("accept", "refuse", "ignore")
TLS_MODES = ("none", "starttls", "direct")
DEFAULT_CLIENT = "lean"
# XEP-0198 stream management: False, True (acks only) or "resume" (acks and resumption).
STREAM_RESUME = "resume"
SM_ACK_EVERY_MAX = 10_000
SM_RESUME_TIMEOUT_MAX = 600_000


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _non_empty(value: Any) -> str:
    text = _text(value).strip()
    if not text:
        raise ValueError("must not be empty")
    if any(c.isspace() for c in text) or "@" in text or "/" in text:
        raise ValueError("must not contain spaces, '@' or '/'")
    return text


def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected a port number, got {value!r}")
    if not 1 <= value <= 65535:
        raise ValueError("must be between 1 and 65535")
    return value


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise TypeError(f"expected true or false, got {value!r}")


def _path(value: Any) -> str:
    path = _text(value).strip()
    if not path.startswith("/") or any(c.isspace() for c in path):
        raise ValueError("must be a URL path starting with '/'")
    return path


def _attempts(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected a number of attempts, got {value!r}")
    if not 1 <= value <= 100:
        raise ValueError("must be between 1 and 100")
    return value


def _tls_mode(value: Any) -> str:
    if isinstance(value, bool):
        return "starttls" if value else "none"
    mode = _text(value).strip().lower()
    mode = {"true": "starttls", "false": "none"}.get(mode, mode)
    if mode not in TLS_MODES:
        raise ValueError(f"must be one of {', '.join(TLS_MODES)} (or true / false)")
    return mode


def _ca_file(value: Any) -> str:
    path = _text(value).strip()
    return check_ca_file(path) if path else ""


def _server_name(value: Any) -> str:
    name = _text(value).strip()
    if any(c.isspace() for c in name) or "/" in name or "@" in name:
        raise ValueError("must be a host name (no spaces, '@' or '/')")
    return name


def _sasl(value: Any) -> str:
    mech = _text(value).strip().upper()
    if mech not in SASL_MECHANISMS:
        raise ValueError(f"must be one of {', '.join(SASL_MECHANISMS)}")
    return mech


def _client(value: Any) -> str:
    kind = _text(value).strip().lower()
    if kind not in CLIENTS:
        raise ValueError(f"must be one of {', '.join(CLIENTS)}")
    return kind


def _subscriptions(value: Any) -> str:
    policy = _text(value).strip().lower()
    if policy not in SUBSCRIPTION_POLICIES:
        raise ValueError(f"must be one of {', '.join(SUBSCRIPTION_POLICIES)}")
    return policy


def _stream_management(value: Any) -> bool | str:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("true", "false"):
            return word == "true"
        if word == STREAM_RESUME:
            return STREAM_RESUME
    raise ValueError(f'must be false, true (acks) or "{STREAM_RESUME}" (acks and resumption)')


def _ack_every(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected a number of stanzas, got {value!r}")
    if not 1 <= value <= SM_ACK_EVERY_MAX:
        raise ValueError(f"must be between 1 and {SM_ACK_EVERY_MAX} stanzas")
    return value


def _resume_timeout(value: Any) -> float | int:
    ms = positive_ms(value)
    if ms > SM_RESUME_TIMEOUT_MAX:
        raise ValueError(
            f"must be at most {SM_RESUME_TIMEOUT_MAX} ms (servers keep a dropped session "
            "for 300 s (ejabberd) to 600 s (Prosody) at most)"
        )
    return ms


PARAMETERS: list[Param] = [
    param("xmpp_host", "127.0.0.1", "XMPP server address to connect to", _non_empty),
    param("xmpp_port", 5222, "XMPP client port (plain TCP, STARTTLS if xmpp_tls)", _port),
    param("xmpp_domain", "localhost", "XMPP domain of the users' JIDs", _non_empty),
    param(
        "xmpp_tls",
        "none",
        "none (plain TCP), starttls, or direct (TLS from the first byte, XEP-0368, its own "
        "port); true means starttls",
        _tls_mode,
    ),
    param("xmpp_tls_verify", False, "verify the server certificate (and its name)", _flag),
    param(
        "xmpp_tls_ca_file",
        "",
        "PEM file of the CA (or self-signed certificate) to verify the server with "
        "(empty: the system's CAs)",
        _ca_file,
    ),
    param(
        "xmpp_tls_server_name",
        "",
        "name the certificate must carry, also sent as SNI (empty: xmpp_domain)",
        _server_name,
    ),
    param(
        "xmpp_sasl",
        "AUTO",
        "SASL mechanism: AUTO (the strongest the server offers), PLAIN, SCRAM-SHA-1/256/512 "
        "or their -PLUS forms (channel binding, over TLS)",
        _sasl,
    ),
    param(
        "xmpp_servers",
        (),
        "servers to spread users over, ['host:port', ...] (empty: xmpp_host, xmpp_port)",
        check_servers,
    ),
    param(
        "xmpp_server_pick", "by_id", "how a user's server is picked from xmpp_servers", check_pick
    ),
    param(
        "xmpp_connect_attempts",
        1,
        "connection attempts per login (each retry after a backoff, to the next server)",
        _attempts,
    ),
    param(
        "xmpp_source_addresses",
        (),
        "local addresses bound round-robin per connection (a list or a CIDR; empty: any)",
        check_sources,
    ),
    param(
        "xmpp_users_file",
        "",
        "CSV of id,username,password[,server] for accounts that are not prefix + id",
        check_users_file,
    ),
    param(
        "xmpp_transport",
        ("tcp",),
        "tcp, websocket, bosh, a ws(s):// or http(s):// URL, or a list of them rotated by user id",
        check_transports,
    ),
    param("xmpp_http_port", 5280, "the server's HTTP port for websocket and bosh", _port),
    param("xmpp_websocket_path", "/ws", "WebSocket path (Prosody: /xmpp-websocket)", _path),
    param("xmpp_bosh_path", "/bosh", "BOSH path (Prosody: /http-bind)", _path),
    param("xmpp_username_prefix", "user_", "account name = prefix + user id", _text),
    param("xmpp_password_prefix", "password_", "password = prefix + user id", _text),
    param("xmpp_resource", "amoc", "resource to bind (empty: the server picks)", _text),
    param("xmpp_connect_timeout", 10_000, "ms allowed for connect + auth + bind", positive_ms),
    param("xmpp_reply_timeout", 5_000, "ms to wait for a presence echo", positive_ms),
    param("xmpp_stop_timeout", 5_000, "ms allowed for a clean stream close", positive_ms),
    param("xmpp_inbox_size", 100, "messages kept for wait_message (0: none)", non_negative_int),
    param(
        "xmpp_stanza_buffer",
        32,
        "received stanzas kept for a later wait_for when nothing took them (0: none)",
        non_negative_int,
    ),
    param(
        "xmpp_subscription_requests",
        "accept",
        "answer to presence subscription requests: accept, refuse or ignore",
        _subscriptions,
    ),
    param(
        "xmpp_client",
        DEFAULT_CLIENT,
        "client implementation: lean (asyncio Protocol + expat) or slixmpp",
        _client,
    ),
    param(
        "xmpp_stream_management",
        False,
        'XEP-0198 (lean client): false, true (acks) or "resume" (acks, and resumption '
        "after a dropped connection)",
        _stream_management,
    ),
    param(
        "xmpp_sm_ack_every",
        10,
        "with stream management: ask the server for an ack after this many stanzas sent",
        _ack_every,
    ),
    param(
        "xmpp_sm_resume_timeout",
        30_000,
        "ms allowed to reconnect and resume after a dropped connection (at most 600000)",
        _resume_timeout,
    ),
]

_BY_SHORT_NAME = {p.name.removeprefix("xmpp_"): p for p in PARAMETERS}


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything one connection needs, resolved and verified."""

    @property
    def tls_name(self) -> str:
        """The name the server's certificate must carry (and SNI)."""
        return self.tls_server_name or self.domain

    @property
    def encrypted(self) -> bool:
        """Whether the connection is to be encrypted (STARTTLS or direct TLS)."""
        return self.tls != "none"

    host: str
    port: int
    domain: str
    tls: str  # "none", "starttls" or "direct"
    tls_verify: bool
    sasl: str
    username_prefix: str
    password_prefix: str
    resource: str
    connect_timeout: float
    reply_timeout: float
    stop_timeout: float
    inbox_size: int
    tls_ca_file: str = ""
    tls_server_name: str = ""
    servers: tuple[str, ...] = ()
    server_pick: str = "by_id"
    connect_attempts: int = 1
    source_addresses: tuple[str, ...] = ()
    users_file: str = ""
    transport: tuple[str, ...] = ("tcp",)
    http_port: int = 5280
    websocket_path: str = "/ws"
    bosh_path: str = "/bosh"
    stanza_buffer: int = 32
    subscription_requests: str = "accept"
    client: str = DEFAULT_CLIENT
    stream_management: bool | str = False
    sm_ack_every: int = 10
    sm_resume_timeout: float = 30_000


_FIELDS = {f.name for f in fields(Settings)}


def settings(config: Config | None = None, **overrides: Any) -> Settings:
    """Resolve the parameters from `config` (default: the node's), then apply `overrides`."""
    cfg = config or amoc_config
    values: dict[str, Any] = {}
    for short, p in _BY_SHORT_NAME.items():
        found = cfg.lookup(p.name)
        values[short] = p.check(found[0], found[1]) if found is not None else p.default
    result = Settings(**values)
    return with_overrides(result, overrides) if overrides else result


def with_overrides(base: Settings, overrides: dict[str, Any]) -> Settings:
    """A copy of `base` with verified overrides given by short name (`port`, `sasl`, ...)."""
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        p = _BY_SHORT_NAME.get(key)
        if p is None or key not in _FIELDS:
            known = ", ".join(sorted(_BY_SHORT_NAME))
            raise ConfigError(f"unknown xmpp setting {key!r}; known: {known}")
        changes[key] = p.check(value, f"override {key}=")
    return replace(base, **changes)
