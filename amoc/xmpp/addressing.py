"""Where each user connects and as whom: several servers, source addresses, a users file.

- `xmpp_servers`: a list of `host:port` (or `host`) entries; user `id` goes to entry
  `(id - 1) % n` (pluggable: `register_pick(name, fn)` and `xmpp_server_pick`), and a retry
  (`xmpp_connect_attempts`) goes to the next entry. Empty: `xmpp_host` and `xmpp_port`.
- `xmpp_source_addresses`: local addresses (a list, or a CIDR such as `127.0.0.2/31`)
  bound round-robin, one per connection, so that one node opens more connections to one
  server address than the 28 000 ephemeral ports of a single source address allow.
- `xmpp_users_file`: a CSV file of `id,username,password[,server]` rows for accounts that
  are not prefix + id; `server` (`host[:port]`) overrides the pick for that user.
"""

from __future__ import annotations

import csv
import ipaddress
import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from amoc.errors import ConfigError

MAX_SOURCE_ADDRESSES = 65_536

Pick = Callable[[int, int, int], int]  # (user id, attempt, number of servers) -> index
_picks: dict[str, Pick] = {
    "by_id": lambda user_id, attempt, n: (user_id - 1 + attempt) % n,
}


def register_pick(name: str, pick: Pick) -> None:
    """Make `pick(user_id, attempt, n) -> index` choosable as `xmpp_server_pick = name`."""
    if not name.isidentifier():
        raise ConfigError(f"a server pick's name must be an identifier, not {name!r}")
    _picks[name] = pick


def picks() -> list[str]:
    """The names `xmpp_server_pick` accepts."""
    return sorted(_picks)


# -- servers --------------------------------------------------------------------------------


def parse_server(entry: Any, default_port: int = 5222) -> tuple[str, int]:
    """`host:port`, `host`, `[v6]:port` -> (host, port); ValueError saying what is wrong."""
    if not isinstance(entry, str) or not entry.strip():
        raise ValueError(f"a server is 'host' or 'host:port', not {entry!r}")
    text = entry.strip()
    if "://" in text:
        raise ValueError(f"{text!r}: give host:port here (URLs are for xmpp_transport)")
    host, port_text = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    if not host or any(c.isspace() for c in host):
        raise ValueError(f"{text!r} has no host")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    return host, int(port_text)


def check_servers(value: Any) -> tuple[str, ...]:
    """The verifier of `xmpp_servers`: a list (or comma-separated text) of servers."""
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, list | tuple):
        raise TypeError(f"expected a list of 'host:port', got {type(value).__name__}")
    for entry in value:
        parse_server(entry)
    return tuple(str(v).strip() for v in value)


def check_pick(value: Any) -> str:
    """The verifier of `xmpp_server_pick`."""
    if value not in _picks:
        raise ValueError(f"must be one of {', '.join(picks())} (or a name given to register_pick)")
    return str(value)


# -- source addresses -----------------------------------------------------------------------


def check_sources(value: Any) -> tuple[str, ...]:
    """The verifier of `xmpp_source_addresses`: addresses, or one CIDR."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return ()
        if "/" in text:
            try:
                net = ipaddress.ip_network(text, strict=False)
            except ValueError as exc:
                raise ValueError(f"{text!r} is not a CIDR: {exc}") from None
            if net.num_addresses > MAX_SOURCE_ADDRESSES:
                raise ValueError(f"{text!r} has more than {MAX_SOURCE_ADDRESSES} addresses")
            hosts = list(net.hosts()) if net.num_addresses > 2 else list(net)
            return tuple(str(a) for a in hosts)
        value = [v for v in text.split(",") if v.strip()]
    if not isinstance(value, list | tuple):
        raise TypeError(f"expected a list of addresses or a CIDR, got {type(value).__name__}")
    out = []
    for entry in value:
        try:
            out.append(str(ipaddress.ip_address(str(entry).strip())))
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address") from None
    return tuple(out)


_next_source = itertools.count()


def source_address(sources: tuple[str, ...]) -> tuple[str, int] | None:
    """The local address to bind the next connection to (round-robin), or None."""
    if not sources:
        return None
    return (sources[next(_next_source) % len(sources)], 0)


# -- users file -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Account:
    """One row of the users file."""

    username: str
    password: str
    server: tuple[str, int] | None = None


_files: dict[str, tuple[float, int, dict[int, Account]]] = {}


def load_users(path: str) -> dict[int, Account]:
    """The accounts of a users file by id (read again when the file changes).

    ConfigError names the file, the line and what is wrong with it.
    """
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise ConfigError(f"xmpp_users_file {path!r} cannot be read: {exc.strerror}") from None
    found = _files.get(path)
    if found is not None and found[:2] == (stat.st_mtime, stat.st_size):
        return found[2]
    accounts: dict[int, Account] = {}
    try:
        with open(path, newline="") as handle:
            for line, row in enumerate(csv.reader(handle), start=1):
                if not row or (row[0].strip().startswith("#")):
                    continue
                if line == 1 and not row[0].strip().isdigit():
                    continue  # a header row
                accounts_row(path, line, row, accounts)
    except OSError as exc:
        raise ConfigError(f"xmpp_users_file {path!r} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"xmpp_users_file {path!r} is not UTF-8 text") from None
    if not accounts:
        raise ConfigError(f"xmpp_users_file {path!r} has no account rows (id,username,password)")
    _files[path] = (stat.st_mtime, stat.st_size, accounts)
    return accounts


def accounts_row(path: str, line: int, row: list[str], into: dict[int, Account]) -> None:
    """Check one row and add it to `into`."""
    where = f"xmpp_users_file {path!r} line {line}"
    cells = [c.strip() for c in row]
    if len(cells) not in (3, 4):
        raise ConfigError(
            f"{where}: expected id,username,password[,server], got {len(cells)} fields"
        )
    ident, username, password = cells[:3]
    if not ident.isdigit() or int(ident) < 1:
        raise ConfigError(f"{where}: the id {ident!r} is not a positive integer")
    if not username or any(c.isspace() for c in username) or "@" in username or "/" in username:
        raise ConfigError(f"{where}: the username {username!r} is empty or has spaces, '@' or '/'")
    if int(ident) in into:
        raise ConfigError(f"{where}: user id {ident} appears twice")
    server = None
    if len(cells) == 4 and cells[3]:
        try:
            server = parse_server(cells[3])
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    into[int(ident)] = Account(username, password, server)


def check_users_file(value: Any) -> str:
    """The verifier of `xmpp_users_file`: empty, or a readable, well-formed file."""
    if not isinstance(value, str):
        raise TypeError(f"expected a file path, got {type(value).__name__}")
    path = value.strip()
    if path:
        try:
            load_users(path)
        except ConfigError as exc:
            raise ValueError(str(exc).removeprefix(f"xmpp_users_file {path!r} ")) from None
    return path


def account(user_id: int, path: str) -> Account:
    """User `user_id`'s row of the users file; ConfigError if it has none."""
    found = load_users(path).get(user_id)
    if found is None:
        raise ConfigError(f"user id {user_id} has no row in xmpp_users_file {path!r}")
    return found


# -- per user -------------------------------------------------------------------------------

_per_server: dict[tuple[Any, ...], Any] = {}


def target(settings: Any, user_id: int, attempt: int = 0) -> Any:
    """The settings with the host and port user `user_id` connects to on this attempt."""
    servers: tuple[str, ...] = settings.servers
    if settings.users_file:
        row = account(user_id, settings.users_file)
        if row.server is not None:
            return _with_server(settings, row.server)
    if not servers:
        return settings
    index = _picks[settings.server_pick](user_id, attempt, len(servers)) % len(servers)
    return _with_server(settings, parse_server(servers[index], settings.port))


def _with_server(settings: Any, server: tuple[str, int]) -> Any:
    if (settings.host, settings.port) == server:
        return settings
    key = (settings, server)
    found = _per_server.get(key)
    if found is None:
        if len(_per_server) > 1024:
            _per_server.clear()
        found = _per_server[key] = replace(settings, host=server[0], port=server[1])
    return found


# -- transports -----------------------------------------------------------------------------

TRANSPORT_WORDS = ("tcp", "websocket", "bosh")
_SCHEMES = {"ws": ("websocket", False), "wss": ("websocket", True),
            "http": ("bosh", False), "https": ("bosh", True)}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how one connection goes: tcp, websocket or bosh, TLS by the URL's scheme."""

    kind: str
    host: str
    port: int
    path: str = ""
    tls: bool = False

    @property
    def url(self) -> str:
        """The endpoint as a URL (tcp: host:port)."""
        if self.kind == "tcp":
            return f"{self.host}:{self.port}"
        scheme = {"websocket": "ws", "bosh": "http"}[self.kind] + ("s" if self.tls else "")
        return f"{scheme}://{self.host}:{self.port}{self.path}"


def parse_transport(entry: Any) -> str:
    """One `xmpp_transport` entry, checked: tcp, websocket, bosh or a ws(s)/http(s) URL."""
    if not isinstance(entry, str) or not entry.strip():
        raise ValueError(f"a transport is tcp, websocket, bosh or a URL, not {entry!r}")
    text = entry.strip()
    if text.lower() in TRANSPORT_WORDS:
        return text.lower()
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        raise ValueError(
            f"{text!r} is not a transport: use tcp, websocket, bosh, or a ws://, wss://, "
            "http:// or https:// URL"
        )
    authority = rest.partition("/")[0]
    if not authority or authority.startswith(":"):
        raise ValueError(f"the URL {text!r} has no host")
    default = 443 if scheme.lower() in ("wss", "https") else 80
    parse_server(authority, default)  # checks the port
    return text


def check_transports(value: Any) -> tuple[str, ...]:
    """The verifier of `xmpp_transport`: one entry, or a list rotated by user id."""
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()] or ["tcp"]
    if not isinstance(value, list | tuple) or not value:
        raise TypeError(f"expected a transport or a list of them, got {value!r}")
    return tuple(parse_transport(v) for v in value)


def endpoint(settings: Any, user_id: int) -> Endpoint:
    """The endpoint of user `user_id` (transports rotate by id: user 1 the first...)."""
    transports: tuple[str, ...] = settings.transport
    entry = transports[(user_id - 1) % len(transports)] if transports else "tcp"
    if entry == "tcp":
        return Endpoint("tcp", settings.host, settings.port)
    if entry == "websocket":
        return Endpoint("websocket", settings.host, settings.http_port, settings.websocket_path)
    if entry == "bosh":
        return Endpoint("bosh", settings.host, settings.http_port, settings.bosh_path)
    scheme, _, rest = entry.partition("://")
    kind, tls = _SCHEMES[scheme.lower()]
    authority, slash, path = rest.partition("/")
    host, port = parse_server(authority, 443 if tls else 80)
    return Endpoint(kind, host, port, slash + path if slash else "/", tls)
