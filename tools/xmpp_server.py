#!/usr/bin/env python3
"""A local ejabberd for load tests: install, start, register users in bulk, status, stop.

    tools/xmpp_server.py install                     # Debian's ejabberd, if missing
    tools/xmpp_server.py start [--port 5222] [--http-port 5280] [--name amoc]
    tools/xmpp_server.py register --first 1 --last 10000
    tools/xmpp_server.py status
    tools/xmpp_server.py stop

Each instance (`--name`) has its own directory (config, database, logs, pid) and its own
ports, all on 127.0.0.1: the c2s listener, mod_http_api (used to register users, thousands
per second over keep-alive connections) and the Erlang distribution port (no epmd). Its
config is ours, made for load: no shaper, no STARTTLS, large queues, warnings-only logs.
As root it runs as the `ejabberd` user through setpriv, which keeps the high open-file
limit that `su` (used by ejabberdctl) would reset to 1024.

Standard library only: it runs before the project's virtual environment exists.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import http.client
import json
import os
import pwd
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ERL = "/usr/bin/erl"
OPEN_FILES = 1_048_576
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


class ServerError(Exception):
    """What went wrong, said so that the user can act on it."""


@dataclass
class Instance:
    """One ejabberd of ours: where it lives and how to reach it."""

    name: str
    dir: str
    host: str
    port: int
    http_port: int
    dist_port: int
    domain: str
    pid: int | None = None

    @property
    def path(self) -> Path:
        return Path(self.dir)

    def save(self) -> None:
        (self.path / "instance.json").write_text(json.dumps(asdict(self), indent=1) + "\n")


# -- where instances live -------------------------------------------------------------------


def _traversable(path: Path) -> bool:
    """Whether another user (ejabberd) can reach files under `path`."""
    return all(p.stat().st_mode & 0o001 for p in [path, *path.parents] if p.exists())


def instance_dir(name: str, base: str | None) -> Path:
    """--dir/NAME, else _build/xmpp/NAME, else /var/tmp (if ejabberd cannot reach the checkout)."""
    if base:
        return Path(base).resolve() / name
    local = ROOT / "_build" / "xmpp"
    if os.geteuid() != 0 or _traversable(ROOT):
        return local / name
    return Path("/var/tmp/amoc-xmpp") / name


def load(name: str, base: str | None) -> Instance | None:
    """The saved instance called `name`, if any."""
    state = instance_dir(name, base) / "instance.json"
    if not state.is_file():
        return None
    return Instance(**json.loads(state.read_text()))


# -- install --------------------------------------------------------------------------------


def ejabberd_libs() -> str:
    """The directory holding ejabberd-<version>/ (ERL_LIBS)."""
    found = sorted(glob.glob("/usr/lib/*/ejabberd-*/ebin/ejabberd.app"))
    if not found or not os.path.exists(ERL):
        raise ServerError("ejabberd is not installed: run `tools/xmpp_server.py install`")
    return str(Path(found[-1]).parents[1])


def install() -> None:
    """Install Debian's ejabberd unless it is there; keep its system service stopped."""
    with contextlib.suppress(ServerError):
        ejabberd_libs()
        print("ejabberd is installed")
        return
    if os.geteuid() != 0:
        raise ServerError("installing ejabberd needs root (apt-get install ejabberd)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # policy-rc.d 101: the package must not start its own server on 0.0.0.0:5222.
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = not policy.exists()
    if made_policy:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "ejabberd"],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
    finally:
        if made_policy:
            policy.unlink()
    ejabberd_libs()
    print("ejabberd installed")


# -- config ---------------------------------------------------------------------------------

CONFIG = """\
# Written by tools/xmpp_server.py for load tests; do not edit (it is rewritten at start).
hosts:
  - "{domain}"
loglevel: warning
hide_sensitive_log_data: true
certfiles: []
define_macro:
  LOOPBACK: {{ip: ["127.0.0.0/8", "::1/128"]}}
listen:
  - port: {port}
    ip: "{host}"
    module: ejabberd_c2s
    starttls: false
    shaper: none
    access: c2s
    max_stanza_size: 262144
    max_fsm_queue: 1000000
    backlog: 8192
  - port: {http_port}
    ip: "127.0.0.1"
    module: ejabberd_http
    request_handlers:
      /api: mod_http_api
acl:
  loopback:
    ip:
      - 127.0.0.0/8
      - ::1/128
access_rules:
  local:
    allow: all
  c2s:
    allow: all
  register:
    allow: all
api_permissions:
  "amoc on loopback":
    who:
      ip: 127.0.0.0/8
    what:
      - register
      - unregister
      - registered_users
      - connected_users_number
      - status
  "console commands":
    from:
      - ejabberd_ctl
    who: all
    what: "*"
shaper_rules:
  max_user_sessions: 10
  max_user_offline_messages: 10000
  c2s_shaper: none
  s2s_shaper: none
auth_method: internal
auth_password_format: plain
cache_size: 1000000
registration_timeout: infinity
s2s_access: none
modules:
  mod_disco: {{}}
  mod_ping: {{}}
  mod_roster:
    versioning: true
  mod_http_api: {{}}
  mod_offline:
    access_max_user_messages: max_user_offline_messages
  mod_register:
    ip_access: all
"""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def alive(pid: int | None) -> bool:
    """Whether `pid` runs (and is not a zombie)."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _owner() -> tuple[int, int] | None:
    """(uid, gid) of the `ejabberd` user when we are root, else None (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("ejabberd")
    except KeyError:
        raise ServerError("user 'ejabberd' missing: is the Debian package installed?") from None
    return entry.pw_uid, entry.pw_gid


def _chown_tree(path: Path, owner: tuple[int, int] | None) -> None:
    if owner is None:
        return
    for base, dirs, files in os.walk(path):
        for entry in [base] + [os.path.join(base, n) for n in dirs + files]:
            os.chown(entry, *owner)


# -- start / stop ---------------------------------------------------------------------------


def start(inst: Instance) -> Instance:
    """Start the instance unless it runs; wait until its ports answer."""
    saved = load(inst.name, str(inst.path.parent))
    if saved is not None and alive(saved.pid):
        if (saved.host, saved.port) == (inst.host, inst.port):
            print(f"ejabberd {saved.name!r} already runs (pid {saved.pid}) on port {saved.port}")
            return saved
        raise ServerError(
            f"ejabberd {saved.name!r} already runs (pid {saved.pid}) on port {saved.port}; "
            "stop it first"
        )
    libs = ejabberd_libs()
    ports = (("--port", inst.host, inst.port), ("--http-port", "127.0.0.1", inst.http_port))
    for what, host, port in ports:
        if port_open(host, port):
            raise ServerError(f"{host}:{port} ({what}) is already in use by another program")
    inst.dist_port = inst.dist_port or free_port()
    path = inst.path
    for sub in ("db", "log"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    (path / "ejabberd.yml").write_text(
        CONFIG.format(domain=inst.domain, host=inst.host, port=inst.port, http_port=inst.http_port)
    )
    owner = _owner()
    _chown_tree(path, owner)
    node = f"amoc_{inst.name}@127.0.0.1"
    cookie = os.urandom(12).hex()
    argv = [
        ERL, "-name", node, "-setcookie", cookie, "-noinput", "-noshell",
        "+K", "true", "+P", "2000000", "+Q", str(OPEN_FILES),
        "-erl_epmd_port", str(inst.dist_port), "-start_epmd", "false",
        "-kernel", "inet_dist_use_interface", "{127,0,0,1}",
        "-env", "ERL_CRASH_DUMP_BYTES", "0",
        "-mnesia", "dir", f'"{path / "db"}"',
        "-s", "ejabberd",
    ]  # fmt: skip
    if owner is not None:
        argv = ["setpriv", f"--reuid={owner[0]}", f"--regid={owner[1]}", "--init-groups", *argv]
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(path),
        "LANG": "C.UTF-8",
        "ERL_LIBS": libs,
        "EJABBERD_CONFIG_PATH": str(path / "ejabberd.yml"),
        "EJABBERD_LOG_PATH": str(path / "log" / "ejabberd.log"),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "ERL_MAX_PORTS": str(OPEN_FILES),
        "ERL_MAX_ETS_TABLES": "20000",
        "ERL_CRASH_DUMP": str(path / "log" / "erl_crash.dump"),
    }

    def raise_limits() -> None:
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        for want in (OPEN_FILES, hard):
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
                return

    console = open(path / "log" / "console.log", "ab")  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen(
        argv,
        cwd=path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=console,
        stderr=subprocess.STDOUT,
        preexec_fn=raise_limits,
        start_new_session=True,
    )
    console.close()
    inst.pid = proc.pid
    inst.save()
    deadline = time.monotonic() + START_TIMEOUT
    while not (port_open(inst.host, inst.port) and api_ready(inst)):
        if proc.poll() is not None:
            raise ServerError(
                f"ejabberd exited with code {proc.returncode} while starting; "
                f"see {path / 'log' / 'console.log'} and {path / 'log' / 'ejabberd.log'}"
            )
        if time.monotonic() > deadline:
            stop(inst)
            raise ServerError(
                f"ejabberd did not answer on {inst.host}:{inst.port} within {START_TIMEOUT:.0f} s;"
                f" see {path / 'log'}"
            )
        time.sleep(0.2)
    print(
        f"ejabberd {inst.name!r} runs (pid {inst.pid}): xmpp {inst.host}:{inst.port}, "
        f"domain {inst.domain}, api 127.0.0.1:{inst.http_port}, files in {path}"
    )
    return inst


def stop(inst: Instance) -> None:
    """Stop the instance by its pid: SIGTERM (a clean shutdown), SIGKILL after a deadline."""
    if not alive(inst.pid):
        print(f"ejabberd {inst.name!r} is not running")
        return
    assert inst.pid is not None
    os.kill(inst.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while alive(inst.pid):
        if time.monotonic() > deadline:
            os.kill(inst.pid, signal.SIGKILL)
        time.sleep(0.1)
    # The VM's helper (erl_child_setup) belongs to its session: make sure none is left.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(inst.pid, signal.SIGKILL)
    print(f"ejabberd {inst.name!r} stopped")


def status(inst: Instance) -> bool:
    """Print and return whether the instance runs and answers."""
    running = alive(inst.pid)
    answering = running and port_open(inst.host, inst.port)
    users = api_call(inst, "connected_users_number", {}) if answering else None
    state = "answering" if answering else ("running, not answering" if running else "stopped")
    print(
        f"ejabberd {inst.name!r}: {state}; pid {inst.pid}; xmpp {inst.host}:{inst.port}; "
        f"domain {inst.domain}; api 127.0.0.1:{inst.http_port}"
        + (f"; {users.get('num_sessions', users)} sessions" if isinstance(users, dict) else "")
    )
    return bool(answering)


# -- mod_http_api ---------------------------------------------------------------------------


def api_call(inst: Instance, command: str, body: dict[str, object]) -> object:
    """One mod_http_api call; its JSON answer (or raises ServerError)."""
    conn = http.client.HTTPConnection("127.0.0.1", inst.http_port, timeout=10)
    try:
        return _post(conn, command, body)
    finally:
        conn.close()


def api_ready(inst: Instance) -> bool:
    """Whether mod_http_api answers."""
    try:
        api_call(inst, "status", {})
    except (OSError, ServerError):
        return False
    return True


def _post(conn: http.client.HTTPConnection, command: str, body: dict[str, object]) -> object:
    data = json.dumps(body).encode()
    conn.request("POST", f"/api/{command}", data, {"Content-Type": "application/json"})
    answer = conn.getresponse()
    text = answer.read().decode(errors="replace")
    if answer.status != 200:
        raise ServerError(f"/api/{command} answered {answer.status}: {text}")
    return json.loads(text) if text else None


def register(inst: Instance, first: int, last: int, user: str, password: str) -> int:
    """Register users first..last (existing ones are kept); return how many were new."""
    if first < 1 or last < first:
        raise ServerError(f"--first {first} --last {last}: need 1 <= first <= last")
    existing = set(api_call(inst, "registered_users", {"host": inst.domain}) or [])  # type: ignore[arg-type]
    todo = [i for i in range(first, last + 1) if f"{user}{i}" not in existing]
    errors: list[str] = []
    lock = threading.Lock()
    position = iter(todo)

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", inst.http_port, timeout=30)
        try:
            while True:
                with lock:
                    i = next(position, None)
                if i is None or errors:
                    return
                body = {"user": f"{user}{i}", "host": inst.domain, "password": f"{password}{i}"}
                try:
                    _post(conn, "register", body)
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", inst.http_port, timeout=30)
                    _post(conn, "register", body)
        except (OSError, ServerError, http.client.HTTPException) as exc:
            with lock:
                errors.append(str(exc))
        finally:
            conn.close()

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(min(8, max(1, len(todo))))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise ServerError(f"registering users failed: {errors[0]}")
    took = time.monotonic() - started
    rate = len(todo) / took if took > 0 and todo else 0
    print(
        f"registered {len(todo)} users ({last - first + 1 - len(todo)} existed) "
        f"{user}{first}..{user}{last}@{inst.domain} in {took:.1f} s ({rate:.0f}/s)"
    )
    return len(todo)


# -- command line ---------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("verb", choices=["install", "start", "stop", "status", "register", "remove"])
    p.add_argument("--name", default="amoc", help="instance name (default amoc)")
    p.add_argument("--dir", default=None, help="where instances live (default _build/xmpp)")
    p.add_argument("--host", default=None, help="c2s address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="c2s port (default 5222)")
    p.add_argument("--http-port", type=int, default=None, help="mod_http_api port (default 5280)")
    p.add_argument("--domain", default=None, help="XMPP domain (default localhost)")
    p.add_argument("--first", type=int, default=1, help="register: first user id")
    p.add_argument("--last", type=int, default=None, help="register: last user id")
    p.add_argument("--user-prefix", default="user_", help="register: account = prefix + id")
    p.add_argument("--password-prefix", default="password_", help="register: password prefix")
    return p


def _loopback(host: str) -> str:
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        raise ServerError(f"--host {host!r} does not resolve") from None
    for info in infos:
        addr = info[4][0]
        if not (addr.startswith("127.") or addr == "::1"):
            raise ServerError(f"--host {host!r} is not a loopback address: this tool serves 127/8")
    return host


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = parser().parse_args(argv)
    try:
        if args.verb == "install":
            install()
            return 0
        saved = load(args.name, args.dir)
        base = saved or Instance(
            args.name, str(instance_dir(args.name, args.dir)), "127.0.0.1", 5222, 5280, 0,
            "localhost",
        )  # fmt: skip
        if args.verb == "start":
            inst = Instance(
                name=args.name,
                dir=str(instance_dir(args.name, args.dir)),
                host=_loopback(args.host or base.host),
                port=args.port or base.port,
                http_port=args.http_port or base.http_port,
                dist_port=0,
                domain=args.domain or base.domain,
            )
            for flag, port in (("--port", inst.port), ("--http-port", inst.http_port)):
                if not 1 <= port <= 65535:
                    raise ServerError(f"{flag} {port}: must be between 1 and 65535")
            start(inst)
            return 0
        if saved is None:
            if args.verb in ("stop", "remove"):
                print(f"ejabberd {args.name!r} was never started here")
                return 0
            raise ServerError(f"no ejabberd {args.name!r} here: run `start` first")
        if args.verb == "stop":
            stop(saved)
        elif args.verb == "remove":
            stop(saved)
            shutil.rmtree(saved.path)
            print(f"removed {saved.path}")
        elif args.verb == "status":
            return 0 if status(saved) else 3
        elif args.verb == "register":
            if not alive(saved.pid):
                raise ServerError(f"ejabberd {args.name!r} is not running: run `start` first")
            register(saved, args.first, args.last or args.first, args.user_prefix,
                     args.password_prefix)  # fmt: skip
        return 0
    except ServerError as exc:
        print(f"xmpp_server: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
