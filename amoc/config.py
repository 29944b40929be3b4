"""Configuration: environment, run-time values, the release's app.config, defaults.

Lookup order for `get(name)`:
1. the OS environment `AMOC_<NAME>` (parsed as a Python literal, else the raw string);
2. values set at run time with `set(name, value)`;
3. the release's `priv/app.config` (TOML, one `name = value` per line);
4. the declared default, or the `default` given to `get`.

Names are case-insensitive and stored lower-case.
"""

from __future__ import annotations

import ast
import difflib
import math
import os
import re
import threading
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amoc.errors import AmocError, ConfigError

INFINITY = math.inf


class _Required:
    """Marker for a declared parameter that has no default."""

    def __repr__(self) -> str:
        return "<required>"


REQUIRED: Any = _Required()
_MISSING: Any = object()

Verifier = Callable[[Any], Any]


READ_ONLY = "read_only"
Updater = Callable[[str, Any], None]

# What a secret value is shown as, wherever values are shown (reports, API, console, logs).
MASK = "***"
# Names that are secret whatever their declaration says.
SECRET_SUFFIXES = ("_password", "_token", "_secret", "_password_prefix")
SECRET_NAMES = frozenset({"password", "token", "secret"})


def is_secret_name(name: str) -> bool:
    """True for a name that holds a secret by its shape (`*_password`, `*_token`, ...)."""
    key = name.lower()
    return key in SECRET_NAMES or key.endswith(SECRET_SUFFIXES)


_URL_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)([^/?#@\s]+)@")


def mask_url(text: str) -> str:
    """`text` with the credentials of every URL in it (user:password@) replaced by ***."""
    return _URL_CREDENTIALS.sub(lambda m: f"{m.group(1)}{MASK}@", text)


def scrub(text: str, url: str | None) -> str:
    """`text` (say, an error about `url`) without `url`'s credentials, whole or in parts."""
    text = mask_url(text)
    found = _URL_CREDENTIALS.search(url or "")
    if found:
        userinfo = found.group(2)
        for part in sorted({userinfo, *userinfo.split(":", 1)}, key=len, reverse=True):
            if len(part) >= 3:
                text = text.replace(part, MASK)
    return text


def masked(value: Any, secret: bool) -> Any:
    """`value` as it may be shown: *** for a secret, URLs without their credentials."""
    if secret:
        return value if value is None or value == "" else MASK
    if isinstance(value, str):
        return mask_url(value)
    if isinstance(value, list | tuple):
        return type(value)(masked(v, False) for v in value)
    return value


@dataclass(frozen=True)
class Param:
    """A declared parameter: name, default, description, verification, run-time update.

    `verify` is a function that returns the value (normalised) or raises TypeError or
    ValueError, or a list of the allowed values. `update` is None (a change at run time is
    just stored), READ_ONLY (refused at run time), or a function `update(name, value)` called
    on each run-time change; if it raises, the change is refused and the old value stays.
    A `secret` value is shown as *** (so is any whose name ends in _password, _token,
    _secret or _password_prefix). A `start_only` value is read when the node starts: once
    the node has read its start-only settings, `set` refuses it (a restart is needed).
    """

    name: str
    default: Any = REQUIRED
    description: str = ""
    verify: Verifier | Sequence[Any] | None = None
    update: Updater | str | None = None
    secret: bool = False
    start_only: bool = False

    @property
    def is_secret(self) -> bool:
        """True when its values must never be shown."""
        return self.secret or is_secret_name(self.name)

    def shown(self, value: Any) -> Any:
        """`value` as it may be shown (masked when secret, credentials cut from URLs)."""
        return masked(value, self.is_secret)

    def check(self, value: Any, source: str) -> Any:
        """Return `value` normalised, or raise ConfigError naming the parameter and source."""
        try:
            if isinstance(self.verify, list | tuple):
                if value not in self.verify:
                    raise ValueError(f"must be one of {list(self.verify)!r}")
                return value
            if callable(self.verify):
                return self.verify(value)
            return _check_type(self.default, value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"config {self.name!r} = {self.shown(value)!r} (from {source}) is invalid: "
                f"{_masked_text(str(exc), value) if self.is_secret else exc}"
            ) from None


def param(
    name: str,
    default: Any = REQUIRED,
    description: str = "",
    verify: Verifier | Sequence[Any] | None = None,
    update: Updater | str | None = None,
    *,
    secret: bool = False,
    start_only: bool = False,
) -> Param:
    """Declare a parameter (for a scenario's `PARAMETERS` list); `secret` ones show as ***."""
    if not name.isidentifier():
        raise ConfigError(f"parameter name {name!r} is not a valid identifier")
    if update is not None and update != READ_ONLY and not callable(update):
        raise ConfigError(f"parameter {name!r}: update must be None, READ_ONLY or a function")
    if verify is not None and not callable(verify) and not isinstance(verify, list | tuple):
        raise ConfigError(f"parameter {name!r}: verification must be a function or a list")
    return Param(name.lower(), default, description, verify, update, secret, start_only)


def _masked_text(text: str, value: Any) -> str:
    """`text` (an error message) without the secret `value` in it."""
    for form in {str(value), repr(value)}:
        if form and form not in ("None", "''"):
            text = text.replace(form, MASK)
    return text


def _check_type(default: Any, value: Any) -> Any:
    if default is REQUIRED or default is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise TypeError(f"expected a boolean, got {type(value).__name__}")
    if isinstance(default, int | float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"expected a number, got {type(value).__name__}")
        if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float):
            if not value.is_integer():
                raise TypeError(f"expected an integer, got {value!r}")
            return int(value)
        return value
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def non_negative_ms(value: Any) -> float | int:
    """Verify a duration in milliseconds: a number >= 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected milliseconds as a number, got {type(value).__name__}")
    if value < 0 or math.isnan(value):
        raise ValueError("must be >= 0 ms")
    return value


def positive_ms(value: Any) -> float | int:
    """Verify a duration in milliseconds: a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected milliseconds as a number, got {type(value).__name__}")
    if not value > 0 or math.isinf(value):
        raise ValueError("must be a finite number of ms > 0")
    return value


def optional_text(value: Any) -> str | None:
    """Verify an optional string: a string, or None ('' counts as None)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise TypeError(f"expected a string or None, got {type(value).__name__}")
    return value


def optional_port(value: Any) -> int | None:
    """Verify an optional TCP port: 0 (any free port) to 65535, or None (off)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected a port number or None, got {value!r}")
    if not 0 <= value <= 65535:
        raise ValueError("must be between 0 (any free port) and 65535")
    return value


def non_negative_int(value: Any) -> int:
    """Verify a count: an integer >= 0."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def at_least(low: int) -> Verifier:
    """A verifier of a count: an integer >= `low`."""

    def verify(value: Any) -> int:
        count = non_negative_int(value)
        if count < low:
            raise ValueError(f"must be >= {low}")
        return count

    return verify


def repeat_count(value: Any) -> float | int:
    """Verify a repeat count: an integer >= 1 or infinity (`"infinity"`, `math.inf`)."""
    if isinstance(value, str) and value.strip().lower() in ("infinity", "inf"):
        return INFINITY
    if value == INFINITY:
        return INFINITY
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer >= 1 or 'infinity', got {value!r}")
    if value < 1:
        raise ValueError("must be >= 1 (or 'infinity')")
    return value


def optional_per_minute(value: Any) -> float | None:
    """Verify a rate per minute: a number > 0, or None (no rate)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected users per minute as a number or None, got {value!r}")
    if not value > 0 or math.isinf(value):
        raise ValueError("must be a finite number > 0 (or None)")
    return value


BUILTINS: tuple[Param, ...] = (
    Param("interarrival", 50, "ms between two user starts", non_negative_ms),
    Param(
        "user_rate",
        None,
        "users started per minute over the node or cluster (None: interarrival paces them)",
        optional_per_minute,
    ),
    Param("repeat_interval", 60_000, "ms between two runs of start for one user", non_negative_ms),
    Param("repeat_num", INFINITY, "how many times each user runs start", repeat_count),
)


def parse_literal(raw: str) -> Any:
    """Parse an environment value: a Python literal if it is one, else the raw string."""
    try:
        return ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return raw


def load_app_config(path: Path) -> dict[str, Any]:
    """Read a TOML app.config; raise ConfigError naming the file and the line on bad syntax."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    if "amoc" in data and isinstance(data["amoc"], dict):
        data = {**{k: v for k, v in data.items() if k != "amoc"}, **data["amoc"]}
    return {str(k).lower(): v for k, v in data.items()}


class Config:
    """One node's configuration: the object scenarios and the console see as `amoc_config`."""

    def __init__(
        self, app_config: Path | None = None, environ: Mapping[str, str] | None = None
    ) -> None:
        self._environ = environ if environ is not None else os.environ
        self._app_path = app_config
        self._app: dict[str, Any] = load_app_config(app_config) if app_config else {}
        self._runtime: dict[str, Any] = {}
        self._params: dict[str, Param] = {p.name: p for p in BUILTINS}
        self._lock = threading.Lock()
        self._listeners: list[Callable[[str, Any], None]] = []
        self._started = False  # the node has read its start-only settings

    def load_app(self, path: Path) -> None:
        """(Re)read the app config file; raise ConfigError naming the file on bad syntax."""
        data = load_app_config(path)
        with self._lock:
            self._app_path, self._app = path, data

    # -- declarations -------------------------------------------------------------------

    def declare(self, params: Iterable[Param]) -> None:
        """Make parameters known (built-ins are always known)."""
        with self._lock:
            for p in params:
                self._params[p.name] = p

    def known(self) -> dict[str, Param]:
        """All declared parameters by name."""
        return dict(self._params)

    def unknown(self, name: str, where: str = "") -> str:
        """Why `name` is refused (it is not declared), with the closest declared name."""
        return unknown_name(name, self._params, where)

    # -- reading ------------------------------------------------------------------------

    def lookup(self, name: str) -> tuple[Any, str] | None:
        """Return (raw value, where it came from) or None when no source has one."""
        key = name.lower()
        for env_name in (f"AMOC_{key.upper()}", f"AMOC_{name}"):
            if env_name in self._environ:
                return parse_literal(self._environ[env_name]), f"environment {env_name}"
        if key in self._runtime:
            return self._runtime[key], "run-time value"
        if key in self._app:
            return self._app[key], f"app config {self._app_path}"
        return None

    def get(self, name: str, default: Any = _MISSING) -> Any:
        """The value of `name`; raise ConfigError if no source and no default has one.

        Reading a start-only parameter marks the node as started (see `seal`)."""
        declared = self._params.get(name.lower())
        if declared is not None and declared.start_only:
            self._started = True
        return self._value(name, default)

    def seal(self) -> None:
        """The node has started: from now on `set` refuses start-only parameters."""
        self._started = True

    @property
    def started(self) -> bool:
        """True once the node has read its start-only settings."""
        return self._started

    def _value(self, name: str, default: Any = _MISSING) -> Any:
        key = name.lower()
        declared = self._params.get(key)
        found = self.lookup(key)
        if found is not None:
            value, source = found
            return declared.check(value, source) if declared else value
        if default is not _MISSING:
            return default
        if declared is not None and declared.default is not REQUIRED:
            return declared.default
        raise ConfigError(
            f"no value for config {key!r}: set the environment variable AMOC_{key.upper()}, "
            f"call amoc_config.set({key!r}, ...), or add `{key} = ...` to priv/app.config"
        )

    def resolve(self, params: Iterable[Param]) -> dict[str, Any]:
        """Resolve declared parameters, reporting every missing or invalid one at once."""
        values: dict[str, Any] = {}
        problems: list[str] = []
        for p in params:
            try:
                values[p.name] = self.get(p.name)
            except ConfigError as exc:
                problems.append(str(exc))
        if problems:
            raise ConfigError("; ".join(problems))
        return values

    # -- writing ------------------------------------------------------------------------

    def set(self, name: str, value: Any, *, strict: bool = True) -> None:
        """Set a run-time value; unknown names are refused unless `strict=False`."""
        key = name.lower()
        declared = self._params.get(key)
        if declared is None and strict:
            raise ConfigError(unknown_name(key, self._params, noun="config name"))
        if declared is not None:
            value = declared.check(value, "amoc_config.set")
            if declared.update == READ_ONLY:
                raise ConfigError(f"config {key!r} is read-only: it cannot change at run time")
            if declared.start_only and self._started:
                raise ConfigError(restart_needed(key))
        with self._lock:
            had, old = key in self._runtime, self._runtime.get(key)
            self._runtime[key] = value
            listeners = list(self._listeners)
        if declared is not None and callable(declared.update):
            try:
                declared.update(key, value)
            except Exception as exc:
                with self._lock:
                    if had:
                        self._runtime[key] = old
                    else:
                        self._runtime.pop(key, None)
                raise ConfigError(
                    f"config {key!r} = {value!r} refused by its update function: "
                    f"{type(exc).__name__}: {exc}"
                ) from None
        for listener in listeners:
            listener(key, value)

    def take(self, values: Mapping[str, Any]) -> dict[str, str]:
        """Set the run-time values another node sends (names it declares that this node may
        not, hence not strict); name -> why, for each value refused (the rest are set)."""
        refused = {}
        for name, value in values.items():
            try:
                self.set(str(name), value, strict=False)
            except AmocError as exc:
                refused[str(name)] = str(exc)
        return refused

    def unset(self, name: str) -> None:
        """Forget a run-time value."""
        with self._lock:
            self._runtime.pop(name.lower(), None)

    def runtime_values(self) -> dict[str, Any]:
        """The values set at run time (what a master broadcasts to its nodes)."""
        with self._lock:
            return dict(self._runtime)

    def on_change(self, listener: Callable[[str, Any], None]) -> None:
        """Call `listener(name, value)` after every run-time `set`."""
        self._listeners.append(listener)

    def describe(self) -> list[tuple[str, Any, str, str]]:
        """Rows of (name, value as it may be shown, source, description): secrets are ***."""
        rows = []
        for key, p in sorted(self._params.items()):
            found = self.lookup(key)
            try:
                value = p.shown(self._value(key))
                source = found[1] if found else "default"
            except ConfigError as exc:
                value, source = f"<{exc}>", "error"
            rows.append((key, value, source, p.description))
        return rows

    def __repr__(self) -> str:
        lines = [f"{n} = {v!r}  ({s}) {d}" for n, v, s, d in self.describe()]
        return "amoc_config:\n  " + "\n  ".join(lines)


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known name `name` most likely misspells (difflib's closest match), or None."""
    found = difflib.get_close_matches(name.lower(), sorted({k.lower() for k in known}), n=1)
    return found[0] if found else None


def unknown_name(
    name: str,
    known: Iterable[str],
    where: str = "",
    noun: str = "setting",
    otherwise: str | None = None,
) -> str:
    """Why `name` is refused: "unknown setting 'x' in W; did you mean 'y'?"; when no known
    name is close, `otherwise` (default: the known names)."""
    names = sorted({k.lower() for k in known})
    text = f"unknown {noun} {name!r}" + (f" {where}" if where else "")
    guess = closest(name, names)
    if guess is not None:
        return f"{text}; did you mean {guess!r}?"
    return f"{text}; {otherwise or 'known names: ' + ', '.join(names)}"


def check_names(names: Iterable[str], known: Iterable[str], where: str = "") -> None:
    """Raise ConfigError naming every one of `names` that is not `known` (case-insensitive),
    each with the closest known name."""
    known = {k.lower() for k in known}
    problems = [unknown_name(n, known, where) for n in names if n.lower() not in known]
    if problems:
        raise ConfigError("; ".join(problems))


def restart_needed(name: str) -> str:
    """Why start-only parameter `name` cannot be set now, and how to set it."""
    return (
        f"config {name!r} is read when the node starts: changing it now changes nothing; "
        f"set the environment variable AMOC_{name.upper()} or `{name} = ...` in "
        "priv/app.config and restart the node"
    )


# The node's configuration; the node loads its release's priv/app.config at start.
amoc_config = Config()


def get(name: str, default: Any = _MISSING) -> Any:
    """Read a value from the node's configuration (see the module doc for the order)."""
    return amoc_config.get(name, default)


def set(name: str, value: Any) -> None:
    """Set a run-time value on the node's configuration."""
    amoc_config.set(name, value)
