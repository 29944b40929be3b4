"""`monitor_hosts`: which servers under test to sample, read from a setting and checked.

Each source is a mapping with a `kind` (or a short string):

- `{kind = "local", processes = ["beam.smp"]}` or `"local:beam.smp"`, `"local:1234"`: this
  machine's /proc, the host and each named process (a name is a process's comm, a number
  its pid);
- `{kind = "ssh", host = "10.0.0.5", user = "root", processes = ["beam.smp"], key = "...",
  known_hosts = "...", port = 22}` or `"ssh://root@10.0.0.5/beam.smp,lua5.4"`: a remote
  host's /proc over one long-lived SSH connection (no agent);
- `{kind = "prometheus", url = "http://10.0.0.5:9100/metrics", series = ["node_load1"]}` or
  the URL itself: a scrape (node_exporter, Prosody's mod_http_openmetrics, MongooseIM's
  exporter), the named series kept.

A string holds one source or several separated by `;` (handy on a command line:
`--set 'monitor_hosts=local:beam.smp;ssh://root@10.0.0.5/beam.smp'`). `label` (default: the
host, `localhost` for local) is the `host` label on /metrics and the name in the report.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

KINDS = ("local", "ssh", "prometheus")
_KEYS = {
    "local": {"kind", "label", "processes"},
    "ssh": {"kind", "label", "processes", "host", "port", "user", "key", "known_hosts"},
    "prometheus": {"kind", "label", "url", "series"},
}
_SERIES = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{.*\})?$")


@dataclass(frozen=True)
class SourceSpec:
    """One monitored host, as checked."""

    kind: str
    label: str
    processes: tuple[str, ...] = ()
    host: str = ""
    port: int = 22
    user: str | None = None
    key: str | None = None
    known_hosts: str | None = None
    url: str = ""
    series: tuple[str, ...] = ()

    def describe(self) -> str:
        """`ssh root@10.0.0.5 (beam.smp)`: for logs and the report."""
        procs = f" ({', '.join(self.processes)})" if self.processes else ""
        if self.kind == "ssh":
            return f"ssh {self.user + '@' if self.user else ''}{self.host}{procs}"
        if self.kind == "prometheus":
            return f"prometheus {self.url}"
        return f"local{procs}"


def _names(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str | int) for v in value):
        raise ValueError(f"{what} must be a list of names, got {value!r}")
    out = tuple(str(v).strip() for v in value)
    if any(not v or any(c.isspace() for c in v) for v in out):
        raise ValueError(f"{what} has an empty name or one with spaces: {list(out)!r}")
    return out


def _from_string(text: str) -> dict[str, Any]:
    """A short form: local:NAMES, ssh://[user@]host[:port][/NAMES], or a scrape URL."""
    if text.startswith("local:") or text == "local":
        return {"kind": "local", "processes": text[len("local:") :]}
    if text.startswith("ssh://"):
        parts = urllib.parse.urlsplit(text)
        found: dict[str, Any] = {"kind": "ssh", "host": parts.hostname or ""}
        if parts.username:
            found["user"] = urllib.parse.unquote(parts.username)
        if parts.port:
            found["port"] = parts.port
        if parts.path.strip("/"):
            found["processes"] = parts.path.strip("/")
        return found
    if text.startswith(("http://", "https://")):
        return {"kind": "prometheus", "url": text}
    kind = text.split(":", 1)[0]
    raise ValueError(
        f"{text!r}: unknown monitor kind {kind!r} (one of {', '.join(KINDS)}: 'local:NAME', "
        "'ssh://user@host/NAME', 'http://host:port/metrics')"
    )


def parse_one(item: Any) -> SourceSpec:
    """One source -> SourceSpec, or ValueError saying what is wrong."""
    raw = _from_string(item.strip()) if isinstance(item, str) else item
    if not isinstance(raw, Mapping):
        raise ValueError(f"a source must be a mapping with a kind or a string, got {item!r}")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise ValueError(f"unknown monitor kind {kind!r} (one of {', '.join(KINDS)})")
    extra = sorted(set(raw) - _KEYS[kind])
    if extra:
        raise ValueError(
            f"{kind} source: unknown key {extra[0]!r} (known: {', '.join(sorted(_KEYS[kind]))})"
        )
    label = raw.get("label")
    if label is not None and (not isinstance(label, str) or not label.strip()):
        raise ValueError(f"label must be a non-empty string, got {label!r}")
    procs = _names(raw.get("processes", ()), f"{kind} source's processes")
    if kind == "local":
        return SourceSpec("local", label or "localhost", procs)
    if kind == "ssh":
        return _ssh(raw, label, procs)
    return _prometheus(raw, label)


def _ssh(raw: Mapping[str, Any], label: str | None, procs: tuple[str, ...]) -> SourceSpec:
    host = raw.get("host")
    if not isinstance(host, str) or not host.strip():
        raise ValueError(f"ssh source: host must be a host name or address, got {host!r}")
    port = raw.get("port", 22)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"ssh source {host}: port must be 1..65535, got {port!r}")
    texts = {}
    for key in ("user", "key", "known_hosts"):
        value = raw.get(key)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"ssh source {host}: {key} must be a string, got {value!r}")
        texts[key] = value or None
    return SourceSpec(
        "ssh", label or host, procs, host=host, port=port, user=texts["user"],
        key=texts["key"], known_hosts=texts["known_hosts"],
    )  # fmt: skip


def _prometheus(raw: Mapping[str, Any], label: str | None) -> SourceSpec:
    url = raw.get("url")
    if not isinstance(url, str):
        raise ValueError(f"prometheus source: url must be a string, got {url!r}")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"prometheus source: {url!r} is not an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError(f"prometheus source: the URL {url!r} has no host")
    series = _names(raw.get("series", ()), "prometheus source's series")
    for s in series:
        if not _SERIES.match(s):
            raise ValueError(f"prometheus source: {s!r} is not a series name (name{{labels}})")
    where = parts.hostname + (f":{parts.port}" if parts.port else "")
    return SourceSpec("prometheus", label or where, url=url, series=series)


def parse(value: Any) -> tuple[SourceSpec, ...]:
    """The `monitor_hosts` setting -> its sources (None or empty: none), or ValueError."""
    if value is None or value == "" or value == []:
        return ()
    if isinstance(value, str):  # `local:beam.smp;ssh://root@h/beam.smp` (--set, make SET=)
        value = [v for v in value.split(";") if v.strip()]
    items: Sequence[Any] = [value] if isinstance(value, Mapping) else value
    if not isinstance(items, list | tuple):
        raise TypeError(f"expected a list of sources, got {type(value).__name__}")
    specs = []
    for n, item in enumerate(items, 1):
        try:
            specs.append(parse_one(item))
        except ValueError as exc:
            raise ValueError(f"source {n}: {exc}") from None
    labels = [s.label for s in specs]
    twice = sorted({x for x in labels if labels.count(x) > 1})
    if twice:
        raise ValueError(f"two sources have the label {twice[0]!r}: give one a label")
    return tuple(specs)


def verify(value: Any) -> Any:
    """The Param verifier: the value as given once it parses."""
    parse(value)
    return value
