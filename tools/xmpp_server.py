#!/usr/bin/env python3
"""A local ejabberd or Prosody for load tests: install, start, register users in bulk, status,
stop, remove.

    tools/xmpp_server.py install [--kind prosody]    # Debian's package, if missing
    tools/xmpp_server.py start [--kind ejabberd|prosody] [--port 5222] [--http-port 5280]
                               [--name amoc] [--tls [--tls-port 5223]] [--scram] [--no-mam]
                               [--no-busy-wait]
    tools/xmpp_server.py register --first 1 --last 10000
    tools/xmpp_server.py status | stop | remove | pid   # pid: what amoc's monitor watches
    tools/xmpp_server.py start --name c --nodes 3 --port 15222 --http-port 15280 [--last 1000]
                               # an ejabberd cluster: c1..c3 on 15222..15224, joined as one

Each instance (`--name`) has its own directory (config, database, logs, pid, certificate)
and its own ports, all on 127.0.0.1; its kind and flags are saved there, so that the later
verbs (and a `start` without flags after `stop`) know them. The config is ours, made for
load: no shaper or rate limit, large queues, warnings-only logs; and the features that load
tests exercise: MUC on conference.DOMAIN (instant rooms), PubSub on pubsub.DOMAIN (any local
user creates nodes), PEP, MAM (every message archived), stream management, ping, roster
versioning, offline messages, carbons, open in-band registration, WebSocket and BOSH.

- ejabberd: c2s, an HTTP listener (mod_http_api to register users, thousands per second
  over keep-alive connections; /ws WebSocket; /bosh BOSH) and the Erlang distribution port
  (no epmd). As root it runs as the `ejabberd` user through setpriv, which keeps the high
  open-file limit that `su` (used by ejabberdctl) would reset to 1024.
- prosody: `prosody --config OWN.cfg.lua -F` (never the system service); the HTTP port
  carries /xmpp-websocket and /http-bind. Users are registered by writing account files into
  its data directory (it reads them at login: no restart).

--tls makes a self-signed certificate for the domain (kept in the instance directory) and
requires STARTTLS on c2s; --tls-port adds a direct-TLS (XEP-0368) listener. --scram stores
SCRAM-SHA-1 hashes instead of plain passwords (PLAIN and SCRAM-SHA-1 logins work either way).
--no-mam leaves MAM out: archiving multiplies the server's CPU per message by 6 (Prosody) to 9
(ejabberd, mnesia), so a benchmark of plain chat throughput wants it off. --no-offline leaves
offline storage out: in an ejabberd cluster each user's first presence then no longer runs a
mnesia transaction over every node (at 400 logins/s on 6 nodes that transaction queue grew
to 125 000 and presences took minutes to come back). --no-busy-wait
starts ejabberd's Erlang VM with schedulers that sleep as soon as they run out of work
(+sbwt none): by default they spin a while first, and under a steady trickle of messages
that spinning is most of the server's CPU time, which a benchmark would count as work.

--nodes N makes an ejabberd cluster of N nodes (NAME1..NAMEn, each an instance with its own
directory under NAME/, its c2s and HTTP ports counted up from --port and --http-port): a
private epmd on 127.0.0.1 and one cookie for all of them, every node started at once, then
each joined to the first by `ejabberdctl join_cluster` (mnesia: users, rosters and sessions
are the cluster's; a user of any node chats with one of any other). With --first/--last the
users are registered on the first node before the others join: a joining node copies the
table in bulk, faster than registrations replicated one by one. The later verbs take the
cluster's name: stop and remove (every node, then the epmd, by pid), status (each node and
`ejabberdctl list_cluster`), pid (the nodes' pids, comma-separated) and register. A cluster
needs root: its nodes and ejabberdctl run as the ejabberd user.

Standard library only: it runs before the project's virtual environment exists.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import hashlib
import hmac
import http.client
import json
import os
import pwd
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ERL = "/usr/bin/erl"
PROSODY = "/usr/bin/prosody"
KINDS = ("ejabberd", "prosody")
PACKAGES = {"ejabberd": ["ejabberd"], "prosody": ["prosody"]}
OPEN_FILES = 1_048_576
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
# SCRAM iterations of the accounts we write: cheap logins (Prosody's default is 10 000,
# 3.3 ms of client CPU each in C); ejabberd uses 4096 too.
SCRAM_ITERATIONS = 4096


class ServerError(Exception):
    """What went wrong, said so that the user can act on it."""


@dataclass
class Instance:
    """One server of ours: what it is, where it lives and how to reach it."""

    name: str
    dir: str
    host: str
    port: int
    http_port: int
    dist_port: int
    domain: str
    pid: int | None = None
    kind: str = "ejabberd"
    tls: bool = False  # STARTTLS required on c2s
    scram: bool = False  # SCRAM hashes stored, not plain passwords
    tls_port: int = 0  # direct TLS (XEP-0368) listener, 0: none
    cert: str = ""  # the self-signed certificate (PEM) clients verify with, if any
    mam: bool = True  # every message archived (XEP-0313); costs the server 6-9x per message
    scram_hash: str = "sha1"  # with scram: SCRAM-SHA-1 (and PLAIN), or sha256: SCRAM-SHA-256
    https_port: int = 0  # WebSocket and BOSH over TLS (wss://, https://), 0: none
    busy_wait: bool = True  # ejabberd's schedulers spin before they sleep (Erlang's default)
    offline: bool = True  # messages to offline users stored and delivered at their next login
    cluster: str = ""  # the ejabberd cluster this node belongs to ("": a server of its own)
    epmd_port: int = 0  # the cluster's private epmd (0: distribution without epmd)
    cookie: str = ""  # the cluster's shared Erlang cookie ("": a random one at each start)

    @property
    def path(self) -> Path:
        return Path(self.dir)

    @property
    def muc_domain(self) -> str:
        return f"conference.{self.domain}"

    @property
    def pubsub_domain(self) -> str:
        return f"pubsub.{self.domain}"

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
    """The saved instance called `name`, if any (files of older versions load too)."""
    state = instance_dir(name, base) / "instance.json"
    if not state.is_file():
        return None
    known = {f.name for f in dataclasses.fields(Instance)}
    return Instance(**{k: v for k, v in json.loads(state.read_text()).items() if k in known})


# -- install --------------------------------------------------------------------------------


def ejabberd_libs() -> str:
    """The directory holding ejabberd-<version>/ (ERL_LIBS)."""
    found = sorted(glob.glob("/usr/lib/*/ejabberd-*/ebin/ejabberd.app"))
    if not found or not os.path.exists(ERL):
        raise ServerError("ejabberd is not installed: run `tools/xmpp_server.py install`")
    return str(Path(found[-1]).parents[1])


def prosody_bin() -> str:
    """Debian's prosody executable."""
    if not os.path.exists(PROSODY):
        raise ServerError(
            "prosody is not installed: run `tools/xmpp_server.py install --kind prosody`"
        )
    return PROSODY


INSTALLED = {"ejabberd": ejabberd_libs, "prosody": prosody_bin}


def install(kind: str) -> None:
    """Install Debian's package for `kind` unless it is there; keep its system service stopped."""
    with contextlib.suppress(ServerError):
        INSTALLED[kind]()
        print(f"{kind} is installed")
        return
    if os.geteuid() != 0:
        raise ServerError(f"installing {kind} needs root (apt-get install {kind})")
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
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES[kind]],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
    finally:
        if made_policy:
            policy.unlink()
    INSTALLED[kind]()
    print(f"{kind} installed")


# -- small helpers --------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports(count: int, start: int = 20000) -> int:
    """The first port p >= start with p..p+count-1 all free on 127.0.0.1 now (a cluster's
    c2s or HTTP ports, which `start --nodes N` counts up from --port and --http-port)."""
    port = start
    while port + count <= 65000:
        if all(_bindable(p) for p in range(port, port + count)):
            return port
        port += count
    raise ServerError(f"no {count} free ports in a row on 127.0.0.1 above {start}")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


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


def _owner(kind: str) -> tuple[int, int] | None:
    """(uid, gid) that ejabberd runs as when we are root, else None (run as ourselves).

    Prosody runs as whoever starts it (`run_as_root` when that is root)."""
    if os.geteuid() != 0 or kind != "ejabberd":
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


def _raise_open_files() -> None:
    """In the child before exec: the highest open-file limit we may have (ulimit -n)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (OPEN_FILES, hard):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
            return


def certificate(inst: Instance) -> Path:
    """A self-signed certificate (CN and SAN DNS:domain) and its key in tls/, made once."""
    tls = inst.path / "tls"
    cert, key = tls / "cert.pem", tls / "key.pem"
    if cert.is_file() and key.is_file():
        check = subprocess.run(
            ["openssl", "x509", "-in", str(cert), "-noout", "-checkend", "86400",
             "-checkhost", inst.domain],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if check.returncode == 0 and "does match" in check.stdout:
            return cert
    tls.mkdir(parents=True, exist_ok=True)
    names = ",".join(f"DNS:{d}" for d in (inst.domain, inst.muc_domain, inst.pubsub_domain))
    # EC P-256: a handshake costs the server a fraction of RSA's, which matters at load.
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "3650", "-subj", f"/CN={inst.domain}",
         "-addext", f"subjectAltName={names}",
         "-keyout", str(key), "-out", str(cert)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if made.returncode != 0:
        raise ServerError(f"openssl could not make a certificate: {made.stderr.strip()}")
    key.chmod(0o600)
    cert.chmod(0o644)
    return cert


@dataclass
class Launch:
    """How to run a server whose config is written: its command line and environment."""

    argv: list[str]
    env: dict[str, str]
    owner: tuple[int, int] | None = None


BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}


# -- ejabberd -------------------------------------------------------------------------------

EJABBERD_CONFIG = """\
# Written by tools/xmpp_server.py for load tests; do not edit (it is rewritten at start).
hosts:
  - "{domain}"
loglevel: warning
hide_sensitive_log_data: true
certfiles: {certfiles}
define_macro:
  LOOPBACK: {{ip: ["127.0.0.0/8", "::1/128"]}}
listen:
  - port: {port}
    ip: "{host}"
    module: ejabberd_c2s
    starttls: {starttls}
    starttls_required: {starttls}
    shaper: none
    access: c2s
    max_stanza_size: 262144
    max_fsm_queue: 1000000
    backlog: 8192
{direct_tls}{https}\
  - port: {http_port}
    ip: "127.0.0.1"
    module: ejabberd_http
    backlog: 1024
    request_handlers:
      /api: mod_http_api
      /ws: ejabberd_http_ws
      /bosh: mod_bosh
acl:
  local:
    user_regexp: ""
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
  muc:
    allow: all
  muc_create:
    allow: local
  pubsub_createnode:
    allow: local
api_permissions:
  "amoc on loopback":
    who:
      ip: 127.0.0.0/8
    what:
      - register
      - unregister
      - registered_users
      - connected_users_number
      - mnesia_table_info
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
auth_password_format: {password_format}
auth_scram_hash: {scram_hash}
cache_size: 1000000
registration_timeout: infinity
s2s_access: none
modules:
  mod_disco: {{}}
  mod_caps: {{}}
  mod_ping: {{}}
  mod_roster:
    versioning: true
  mod_http_api: {{}}
{offline}  mod_register:
    ip_access: all
    access: register
  mod_stream_mgmt:
    resend_on_timeout: if_offline
  mod_carboncopy: {{}}
{mam}  mod_muc:
    host: "conference.@HOST@"
    access: muc
    access_create: muc_create
    access_persistent: muc_create
    history_size: 50
    max_users: 1000
    max_users_presence: 1000
    max_user_conferences: 1000
  mod_pubsub:
    host: "pubsub.@HOST@"
    access_createnode: pubsub_createnode
    ignore_pep_from_offline: true
    last_item_cache: false
    max_items_node: 1000
    plugins:
      - flat
      - pep
  mod_bosh: {{}}
"""

EJABBERD_OFFLINE = """\
  mod_offline:
    access_max_user_messages: max_user_offline_messages
"""

EJABBERD_MAM = """\
  mod_mam:
    db_type: mnesia
    default: always
"""

EJABBERD_HTTPS = """\
  - port: {https_port}
    ip: "127.0.0.1"
    module: ejabberd_http
    tls: true
    backlog: 1024
    request_handlers:
      /ws: ejabberd_http_ws
      /bosh: mod_bosh
"""
EJABBERD_DIRECT_TLS = """\
  - port: {tls_port}
    ip: "{host}"
    module: ejabberd_c2s
    tls: true
    shaper: none
    access: c2s
    max_stanza_size: 262144
    max_fsm_queue: 1000000
    backlog: 8192
"""


def ejabberd_launch(inst: Instance) -> Launch:
    """Write ejabberd.yml; the Erlang VM's command line (as `ejabberd` when we are root)."""
    libs = ejabberd_libs()
    inst.dist_port = inst.dist_port or free_port()
    path = inst.path
    (path / "db").mkdir(exist_ok=True)
    certfiles = "[]"
    if inst.cert:
        certfiles = json.dumps([inst.cert, str(Path(inst.cert).with_name("key.pem"))])
    direct = EJABBERD_DIRECT_TLS.format(tls_port=inst.tls_port, host=inst.host)
    (path / "ejabberd.yml").write_text(
        EJABBERD_CONFIG.format(
            domain=inst.domain,
            host=inst.host,
            port=inst.port,
            http_port=inst.http_port,
            certfiles=certfiles,
            starttls=str(inst.tls).lower(),
            direct_tls=direct if inst.tls_port else "",
            https=EJABBERD_HTTPS.format(https_port=inst.https_port) if inst.https_port else "",
            password_format="scram" if inst.scram else "plain",
            scram_hash="sha256" if inst.scram_hash == "sha256" else "sha",
            mam=EJABBERD_MAM if inst.mam else "",
            offline=EJABBERD_OFFLINE if inst.offline else "",
        )
    )
    owner = _owner("ejabberd")
    cookie = inst.cookie or os.urandom(12).hex()
    # Alone: no epmd (the node listens on dist_port). In a cluster the nodes find each other
    # (and ejabberdctl finds them) through the cluster's own epmd on 127.0.0.1.
    dist = ["-erl_epmd_port", str(inst.dist_port)]
    if inst.epmd_port:
        # A node of a cluster that shares its cores with the load (a load test on one
        # machine) can miss its net ticks for a minute: its peers would take it for dead
        # and split the cluster ('global' disconnects to prevent overlapping partitions,
        # mnesia partitions). An overloaded cluster must slow down, not fall apart.
        dist = ["-kernel", "inet_dist_listen_min", str(inst.dist_port),
                "inet_dist_listen_max", str(inst.dist_port),
                *CLUSTER_KERNEL]  # fmt: skip
    argv = [
        ERL, "-name", erlang_node(inst), "-setcookie", cookie, "-noinput", "-noshell",
        "+K", "true", "+P", "2000000", "+Q", str(OPEN_FILES),
        *dist, "-start_epmd", "false",
        "-kernel", "inet_dist_use_interface", "{127,0,0,1}",
        "-env", "ERL_CRASH_DUMP_BYTES", "0",
        "-mnesia", "dir", f'"{path / "db"}"',
        "-s", "ejabberd",
    ]  # fmt: skip
    if not inst.busy_wait:
        argv[1:1] = ["+sbwt", "none", "+sbwtdcpu", "none", "+sbwtdio", "none"]
    if owner is not None:
        argv = ["setpriv", f"--reuid={owner[0]}", f"--regid={owner[1]}", "--init-groups", *argv]
    env = {
        **BASE_ENV,
        "HOME": str(path),
        "ERL_LIBS": libs,
        "EJABBERD_CONFIG_PATH": str(path / "ejabberd.yml"),
        "EJABBERD_LOG_PATH": str(path / "log" / "ejabberd.log"),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "ERL_MAX_PORTS": str(OPEN_FILES),
        "ERL_MAX_ETS_TABLES": "20000",
        "ERL_CRASH_DUMP": str(path / "log" / "erl_crash.dump"),
    }
    if inst.epmd_port:
        env["ERL_EPMD_PORT"] = str(inst.epmd_port)
        write_ctl_config(inst, cookie)
    return Launch(argv, env, owner)


def erlang_node(inst: Instance) -> str:
    """The Erlang node name of an ejabberd instance."""
    return f"amoc_{inst.name}@127.0.0.1"


def ejabberd_ready(inst: Instance) -> bool:
    """Whether c2s accepts and mod_http_api answers."""
    return port_open(inst.host, inst.port) and api_ready(inst)


def ejabberd_sessions(inst: Instance) -> int | None:
    """How many c2s sessions ejabberd has (None if it does not say)."""
    conn = http.client.HTTPConnection("127.0.0.1", inst.http_port, timeout=10)
    try:
        return session_count(conn)
    except (OSError, http.client.HTTPException, ValueError, ServerError):
        return None
    finally:
        conn.close()


# -- mod_http_api ---------------------------------------------------------------------------


def api_call(inst: Instance, command: str, body: dict[str, object]) -> object:
    """One mod_http_api call; its JSON answer (or raises ServerError)."""
    conn = http.client.HTTPConnection("127.0.0.1", inst.http_port, timeout=10)
    try:
        return _post(conn, command, body)
    finally:
        conn.close()


# The size of ejabberd's mnesia session table (on a cluster node, the cluster's). Not
# connected_users_number, which copies the whole table to count it: 8.5 ms of server CPU a
# call at 10 000 sessions (0.5 ms for this), 70-250 ms at 70 000 sessions here, so sampling
# it every second took a tenth of a core or more from the node asked (the node that fell
# behind first in the 100 000-user runs).
def session_count(conn: http.client.HTTPConnection) -> int:
    """ejabberd's session count, asked over `conn` (kept open by a caller that samples it;
    ServerError if the answer has none)."""
    answer = _post(conn, "mnesia_table_info", {"table": "session"})
    text = answer.get("res") if isinstance(answer, dict) else None
    found = re.search(r"\{size,(\d+)\}", text if isinstance(text, str) else "")
    if found is None:
        raise ServerError(f"/api/mnesia_table_info: no session table size in {str(answer)[:200]!r}")
    return int(found.group(1))


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


def _in_threads(todo: list[int], work: Callable[[], Callable[[int], None]], n: int) -> None:
    """Run work()'s function on every item of `todo` from `n` threads; raise the first error."""
    errors: list[str] = []
    lock = threading.Lock()
    position = iter(todo)

    def worker() -> None:
        try:
            one = work()
            while True:
                with lock:
                    i = next(position, None)
                if i is None or errors:
                    return
                one(i)
        except (OSError, ServerError, http.client.HTTPException) as exc:
            with lock:
                errors.append(str(exc))

    threads = [threading.Thread(target=worker) for _ in range(min(n, max(1, len(todo))))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise ServerError(f"registering users failed: {errors[0]}")


def ejabberd_register(inst: Instance, ids: range, user: str, password: str) -> list[int]:
    """Register the users of `ids` that do not exist over mod_http_api; the ids done."""
    existing = set(api_call(inst, "registered_users", {"host": inst.domain}) or [])  # type: ignore[arg-type]
    todo = [i for i in ids if f"{user}{i}" not in existing]

    def work() -> Callable[[int], None]:
        conn = [http.client.HTTPConnection("127.0.0.1", inst.http_port, timeout=30)]

        def one(i: int) -> None:
            body = {"user": f"{user}{i}", "host": inst.domain, "password": f"{password}{i}"}
            try:
                _post(conn[0], "register", body)
            except (OSError, http.client.HTTPException):
                conn[0].close()
                conn[0] = http.client.HTTPConnection("127.0.0.1", inst.http_port, timeout=30)
                _post(conn[0], "register", body)

        return one

    _in_threads(todo, work, 8)
    return todo


# -- prosody --------------------------------------------------------------------------------

PROSODY_CONFIG = """\
-- Written by tools/xmpp_server.py for load tests; do not edit (it is rewritten at start).
-- A private instance: own files, loopback only, never the system service.
run_as_root = {run_as_root}
pidfile = {pidfile}
data_path = {data}
admin_socket = {admin_socket}
plugin_paths = {{ {plugins} }}
log = {{ warn = {log} }}
certificates = {certs}
-- Load: a deep accept queue (the default is 128); no Nagle delay on replies.
network_settings = {{ tcp_backlog = 8192; nagle = false }}

interfaces = {{ "127.0.0.1" }}
local_interfaces = {{ "127.0.0.1" }}
c2s_interfaces = {{ {host} }}
c2s_ports = {{ {port} }}
c2s_direct_tls_interfaces = {{ {host} }}
c2s_direct_tls_ports = {{ {tls_ports} }}
http_interfaces = {{ "127.0.0.1" }}
http_ports = {{ {http_port} }}
legacy_ssl_ports = {{ }}
https_ports = {{ {https_ports} }}
https_interfaces = {{ "127.0.0.1" }}
s2s_ports = {{ }}
s2s_direct_tls_ports = {{ }}
component_ports = {{ }}
proxy65_ports = {{ }}
modules_disabled = {{ "s2s" }}

modules_enabled = {{
    "roster"; "saslauth"; "tls"; "disco"; "ping"; "carbons"; "pep"; "private";
    {mam}"smacks"; "register"; {offline}"limits"; "websocket"; "bosh";
    "time"; "version"; "uptime"; "admin_shell";
}}
-- Load: Debian's default shapes each connection to 10 KiB/s.
limits = {{ c2s = {{ rate = "100mb/s"; burst = "10s" }} }}

authentication = {authentication}
password_hash = {password_hash}
default_iteration_count = {iterations}
c2s_require_encryption = {require_tls}
allow_unencrypted_plain_auth = {plain_ok}
{ssl}
-- In-band registration, open; loopback is on the allowlist, so never throttled.
allow_registration = true
registration_allowlist = {{ "127.0.0.1", "::1" }}

-- MAM: every message archived, kept.
default_archive_policy = true
archive_expires_after = "never"

consider_websocket_secure = true
consider_bosh_secure = true
http_default_host = {domain}

VirtualHost {domain}

Component {muc_domain} "muc"
    muc_room_locking = false
    muc_room_default_history_length = 50
    max_history_messages = 100
    muc_room_cache_size = 10000

Component {pubsub_domain} "pubsub"
    -- Only admins create nodes: every user of {domain} is one here (plugins/).
    authorization = "amoc_local_users"
    amoc_users_domain = {domain}
    pubsub_max_items = 1000
"""

# An authorization provider for the pubsub component: every user of the main domain is an
# admin of it, so may create nodes (mod_pubsub 0.12 lets only admins create them).
PROSODY_AUTHZ = """\
-- Written by tools/xmpp_server.py: every user of amoc_users_domain is an admin here.
local jid_split = require "util.jid".split;
local domain = module:get_option_string("amoc_users_domain");
local admin_role = { ["prosody:admin"] = true };

function get_user_roles(user) return nil; end -- luacheck: ignore 212
function set_user_roles() return false; end
function get_users_with_role() return {}; end
function get_jid_roles(jid)
	local _, host = jid_split(jid);
	if host == domain then return admin_role; end
end
function set_jid_roles() return false; end
function get_jids_with_role() return {}; end
"""


def lua_str(text: str) -> str:
    """A Lua string literal for `text` (printable ASCII kept, everything else as \\ddd)."""
    out = []
    for byte in text.encode():
        char = chr(byte)
        if 32 <= byte < 127 and char not in '"\\':
            out.append(char)
        else:
            out.append(f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


def prosody_launch(inst: Instance) -> Launch:
    """Write prosody.cfg.lua (and our plugin); Prosody's command line, in the foreground."""
    binary = prosody_bin()
    path = inst.path
    for sub in ("data", "plugins", "tls"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    (path / "plugins" / "mod_authz_amoc_local_users.lua").write_text(PROSODY_AUTHZ)
    ssl = ""
    if inst.cert:
        key = Path(inst.cert).with_name("key.pem")
        ssl = f"ssl = {{ certificate = {lua_str(inst.cert)}; key = {lua_str(str(key))} }}\n"
    q = lua_str
    (path / "prosody.cfg.lua").write_text(
        PROSODY_CONFIG.format(
            run_as_root=str(os.geteuid() == 0).lower(),
            pidfile=q(str(path / "prosody.pid")),
            data=q(str(path / "data")),
            admin_socket=q(str(path / "prosody.sock")),
            plugins=q(str(path / "plugins")),
            log=q(str(path / "log" / "prosody.log")),
            certs=q(str(path / "tls")),
            host=q(inst.host),
            port=inst.port,
            tls_ports=inst.tls_port or "",
            http_port=inst.http_port,
            https_ports=inst.https_port or "",
            authentication=q("internal_hashed" if inst.scram else "internal_plain"),
            password_hash=q("SHA-256" if inst.scram_hash == "sha256" else "SHA-1"),
            iterations=SCRAM_ITERATIONS,
            require_tls=str(inst.tls).lower(),
            plain_ok=str(not inst.tls).lower(),
            ssl=ssl,
            domain=q(inst.domain),
            muc_domain=q(inst.muc_domain),
            pubsub_domain=q(inst.pubsub_domain),
            mam='"mam"; ' if inst.mam else "",
            offline='"offline"; ' if inst.offline else "",
        )
    )
    argv = [binary, "--config", str(path / "prosody.cfg.lua"), "-F"]
    return Launch(argv, {**BASE_ENV, "HOME": str(path)})


def prosody_ready(inst: Instance) -> bool:
    """Whether c2s and the HTTP port accept connections."""
    return port_open(inst.host, inst.port) and port_open("127.0.0.1", inst.http_port)


def prosody_sessions(inst: Instance) -> int | None:
    """How many c2s connections Prosody has, asked over its admin socket (None if unknown)."""
    query = (
        "<stream:stream xmlns='xmpp:prosody.im/admin' "
        "xmlns:stream='http://etherx.jabber.org/streams'>"
        "<repl-input>c2s:count()</repl-input>"
    )
    answer = b""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(3)
            sock.connect(str(inst.path / "prosody.sock"))
            sock.sendall(query.encode())
            while b"</repl-result>" not in answer:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
    except OSError:
        return None
    found = re.search(rb"Total: (\d+) clients", answer)
    return int(found.group(1)) if found else None


def _escape_node(text: str) -> str:
    """Prosody's file name encoding (util.datamanager): every non-alphanumeric as %xx."""
    return "".join(chr(b) if chr(b).isalnum() and b < 128 else f"%{b:02x}" for b in text.encode())


def scram_keys(
    password: str, salt: str, iterations: int, hash_name: str = "sha1"
) -> tuple[str, str]:
    """(stored_key, server_key) in hex, as Prosody's internal_hashed keeps them."""
    salted = hashlib.pbkdf2_hmac(hash_name, password.encode(), salt.encode(), iterations)
    client_key = hmac.digest(salted, b"Client Key", hash_name)
    server_key = hmac.digest(salted, b"Server Key", hash_name)
    return hashlib.new(hash_name, client_key).hexdigest(), server_key.hex()


def prosody_account(password: str, scram: bool, hash_name: str = "sha1") -> str:
    """An accounts/<user>.dat file: a plaintext password, or SCRAM keys (SHA-1 or SHA-256)."""
    if not scram:
        return f'return {{\n\t["password"] = {lua_str(password)};\n}};\n'
    salt = str(uuid.uuid4())
    stored, server = scram_keys(password, salt, SCRAM_ITERATIONS, hash_name)
    return (
        "return {\n"
        f'\t["iteration_count"] = {SCRAM_ITERATIONS};\n'
        f'\t["salt"] = {lua_str(salt)};\n'
        f'\t["server_key"] = {lua_str(server)};\n'
        f'\t["stored_key"] = {lua_str(stored)};\n'
        "};\n"
    )


def prosody_register(inst: Instance, ids: range, user: str, password: str) -> list[int]:
    """Write account files for the users of `ids` that have none; the ids done.

    Prosody reads an account's file at each login, so a running server sees them at once."""
    accounts = inst.path / "data" / _escape_node(inst.domain) / "accounts"
    accounts.mkdir(parents=True, exist_ok=True)
    have = {p.name for p in accounts.iterdir()}
    todo = [i for i in ids if f"{_escape_node(f'{user}{i}')}.dat" not in have]

    def work() -> Callable[[int], None]:
        def one(i: int) -> None:
            final = accounts / f"{_escape_node(f'{user}{i}')}.dat"
            part = final.with_suffix(".tmp")  # a half-written account is never read
            part.write_text(prosody_account(f"{password}{i}", inst.scram, inst.scram_hash))
            part.replace(final)

        return one

    # hashlib's PBKDF2 lets go of the GIL: hashing spreads over the cores.
    _in_threads(todo, work, (os.cpu_count() or 1) if inst.scram else 1)
    return todo


# -- start / stop / status, for both kinds --------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """What differs between the servers: config and command line, readiness, users."""

    launch: Callable[[Instance], Launch]
    ready: Callable[[Instance], bool]
    sessions: Callable[[Instance], int | None]
    register: Callable[[Instance, range, str, str], list[int]]
    logs: tuple[str, ...]


SERVERS = {
    "ejabberd": Kind(ejabberd_launch, ejabberd_ready, ejabberd_sessions, ejabberd_register,
                     ("console.log", "ejabberd.log")),
    "prosody": Kind(prosody_launch, prosody_ready, prosody_sessions, prosody_register,
                    ("console.log", "prosody.log")),
}  # fmt: skip


def _addresses(inst: Instance) -> Iterator[tuple[str, str, int]]:
    """(flag, host, port) of every listener."""
    yield "--port", inst.host, inst.port
    yield "--http-port", "127.0.0.1", inst.http_port
    if inst.tls_port:
        yield "--tls-port", inst.host, inst.tls_port
    if inst.https_port:
        yield "--https-port", "127.0.0.1", inst.https_port


def describe(inst: Instance) -> str:
    """Where the instance listens and what it requires, in one line."""
    http = "api, /ws, /bosh" if inst.kind == "ejabberd" else "/xmpp-websocket, /http-bind"
    parts = [
        f"xmpp {inst.host}:{inst.port}" + (" (STARTTLS required)" if inst.tls else ""),
        f"domain {inst.domain}",
        f"http 127.0.0.1:{inst.http_port} ({http})",
    ]
    if inst.tls_port:
        parts.append(f"direct TLS {inst.host}:{inst.tls_port}")
    if inst.https_port:
        parts.append(f"https 127.0.0.1:{inst.https_port} ({http.removeprefix('api, ')})")
    parts.append(f"scram-{inst.scram_hash} storage" if inst.scram else "plain storage")
    parts.append("MAM" if inst.mam else "no MAM")
    if not inst.offline:
        parts.append("no offline storage")
    if inst.cert:
        parts.append(f"certificate {inst.cert}")
    return "; ".join(parts)


def _settings(i: Instance) -> tuple[object, ...]:
    """What `start` sets up: two instances that agree on it run the same server."""
    return (
        i.kind, i.host, i.port, i.http_port, i.domain, i.tls, i.scram, i.tls_port, i.mam,
        i.scram_hash, i.https_port, i.offline,
    )  # fmt: skip


def start(inst: Instance) -> Instance:
    """Start the instance unless it runs; wait until its ports answer."""
    saved = load(inst.name, str(inst.path.parent))
    if saved is not None and alive(saved.pid):
        if _settings(saved) == _settings(inst):
            print(f"{saved.kind} {saved.name!r} already runs (pid {saved.pid}): {describe(saved)}")
            return saved
        raise ServerError(
            f"{saved.kind} {saved.name!r} already runs (pid {saved.pid}) on port {saved.port}"
            " with other settings; stop it first"
        )
    kind = SERVERS[inst.kind]
    for flag, host, port in _addresses(inst):
        if port_open(host, port):
            raise ServerError(f"{host}:{port} ({flag}) is already in use by another program")
    path = inst.path
    (path / "log").mkdir(parents=True, exist_ok=True)
    inst.cert = str(certificate(inst)) if inst.tls or inst.tls_port or inst.https_port else ""
    began = time.monotonic()
    launch = kind.launch(inst)
    _chown_tree(path, launch.owner)
    console = open(path / "log" / "console.log", "ab")  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen(
        launch.argv,
        cwd=path,
        env=launch.env,
        stdin=subprocess.DEVNULL,
        stdout=console,
        stderr=subprocess.STDOUT,
        preexec_fn=_raise_open_files,
        start_new_session=True,
    )
    console.close()
    inst.pid = proc.pid
    inst.save()
    logs = " and ".join(str(path / "log" / name) for name in kind.logs)
    deadline = began + START_TIMEOUT
    while not kind.ready(inst):
        if proc.poll() is not None:
            raise ServerError(
                f"{inst.kind} exited with code {proc.returncode} while starting; see {logs}"
            )
        if time.monotonic() > deadline:
            stop(inst)
            raise ServerError(
                f"{inst.kind} did not answer on {inst.host}:{inst.port} within "
                f"{START_TIMEOUT:.0f} s; see {logs}"
            )
        time.sleep(0.1)
    print(
        f"{inst.kind} {inst.name!r} runs (pid {inst.pid}, up in "
        f"{time.monotonic() - began:.1f} s): {describe(inst)}; files in {path}"
    )
    return inst


def stop(inst: Instance) -> None:
    """Stop the instance by its pid: SIGTERM (a clean shutdown), SIGKILL after a deadline."""
    if not alive(inst.pid):
        print(f"{inst.kind} {inst.name!r} is not running")
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
    print(f"{inst.kind} {inst.name!r} stopped")


def status(inst: Instance) -> bool:
    """Print and return whether the instance runs and answers."""
    running = alive(inst.pid)
    answering = running and port_open(inst.host, inst.port)
    sessions = SERVERS[inst.kind].sessions(inst) if answering else None
    state = "answering" if answering else ("running, not answering" if running else "stopped")
    print(
        f"{inst.kind} {inst.name!r}: {state}; pid {inst.pid}; {describe(inst)}"
        + (f"; {sessions} sessions" if sessions is not None else "")
        + f"; files in {inst.path}"
    )
    return bool(answering)


def register(inst: Instance, first: int, last: int, user: str, password: str) -> int:
    """Register users first..last (existing ones are kept); return how many were new."""
    if first < 1 or last < first:
        raise ServerError(f"--first {first} --last {last}: need 1 <= first <= last")
    started = time.monotonic()
    todo = SERVERS[inst.kind].register(inst, range(first, last + 1), user, password)
    took = time.monotonic() - started
    rate = len(todo) / took if took > 0 and todo else 0
    print(
        f"registered {len(todo)} users ({last - first + 1 - len(todo)} existed) "
        f"{user}{first}..{user}{last}@{inst.domain} in {took:.1f} s ({rate:.0f}/s)"
    )
    return len(todo)


# -- an ejabberd cluster -------------------------------------------------------------------

EJABBERDCTL = "/usr/sbin/ejabberdctl"
EPMD = "/usr/bin/epmd"
CTL_TIMEOUT = 180.0
NEEDS_ROOT = "an ejabberd cluster needs root (its nodes and ejabberdctl run as ejabberd)"

NET_TICKTIME_S = 600  # a cluster node's, and ejabberdctl's towards it
CLUSTER_KERNEL = ("-kernel", "net_ticktime", str(NET_TICKTIME_S),
                  "prevent_overlapping_partitions", "false")  # fmt: skip

EJABBERDCTL_CFG = """\
# Written by tools/xmpp_server.py: ejabberdctl for node {node} of cluster {cluster}.
ERLANG_NODE={node}
INET_DIST_INTERFACE=127.0.0.1
ERL_EPMD_ADDRESS=127.0.0.1
export ERL_EPMD_PORT={epmd_port}
EJABBERD_CONFIG_PATH={config}
ERL_OPTIONS="-setcookie {cookie} -kernel net_ticktime {ticktime}"
EJABBERD_BYPASS_WARNINGS=true
"""


@dataclass
class Cluster:
    """An ejabberd cluster of ours: its nodes (the first is the one the others join), each an
    Instance under the cluster's directory, and the private epmd they find each other by."""

    name: str
    dir: str
    nodes: list[str]
    epmd_port: int
    cookie: str
    epmd_pid: int | None = None

    @property
    def path(self) -> Path:
        return Path(self.dir)

    def save(self) -> None:
        (self.path / "cluster.json").write_text(json.dumps(asdict(self), indent=1) + "\n")

    def members(self) -> list[Instance]:
        """The nodes' saved instances, the first one first."""
        found = [load(n, self.dir) for n in self.nodes]
        missing = [n for n, i in zip(self.nodes, found, strict=True) if i is None]
        if missing:
            raise ServerError(f"cluster {self.name!r}: nodes {missing} have no state in {self.dir}")
        return [i for i in found if i is not None]

    def servers(self) -> str:
        """The nodes' c2s addresses as amoc's `xmpp_servers` takes them."""
        return ",".join(f"{i.host}:{i.port}" for i in self.members())


def load_cluster(name: str, base: str | None) -> Cluster | None:
    """The saved cluster called `name`, if any."""
    state = instance_dir(name, base) / "cluster.json"
    if not state.is_file():
        return None
    return Cluster(**json.loads(state.read_text()))


def write_ctl_config(inst: Instance, cookie: str) -> None:
    """ctl/ejabberdctl.cfg and ctl/inetrc: what `ejabberdctl --config-dir` needs to reach
    this node through the cluster's epmd with the cluster's cookie."""
    ctl = inst.path / "ctl"
    ctl.mkdir(exist_ok=True)
    (ctl / "ejabberdctl.cfg").write_text(
        EJABBERDCTL_CFG.format(
            node=erlang_node(inst),
            cluster=inst.cluster,
            epmd_port=inst.epmd_port,
            config=inst.path / "ejabberd.yml",
            cookie=cookie,
            ticktime=NET_TICKTIME_S,
        )
    )
    (ctl / "inetrc").write_text("{lookup, [file, native]}.\n")


def ejabberdctl(inst: Instance, *args: str, timeout: float = CTL_TIMEOUT) -> str:
    """`ejabberdctl ARGS` against a cluster node, run as the ejabberd user; its output."""
    owner = _owner("ejabberd")
    if owner is None:
        raise ServerError(NEEDS_ROOT)
    env = {**BASE_ENV, "HOME": str(inst.path)}
    argv = [
        "setpriv", f"--reuid={owner[0]}", f"--regid={owner[1]}", "--init-groups",
        "env", "-i", *(f"{k}={v}" for k, v in env.items()),
        EJABBERDCTL, "--config-dir", str(inst.path / "ctl"), "--spool", str(inst.path / "db"),
        "--logs", str(inst.path / "log"), *args,
    ]  # fmt: skip
    what = f"ejabberdctl {' '.join(args)} on {erlang_node(inst)}"
    proc = subprocess.Popen(
        argv, cwd=inst.path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise ServerError(f"{what} took more than {timeout:.0f} s") from None
    if proc.returncode != 0:
        raise ServerError(f"{what} failed (exit {proc.returncode}): {out.strip()[-600:]}")
    return out


def _each(items: list[Instance], work: Callable[[Instance], object]) -> None:
    """work(item) for every item, each in its own thread; raise the first error."""
    errors: list[str] = []

    def one(inst: Instance) -> None:
        try:
            work(inst)
        except (OSError, ServerError, subprocess.SubprocessError) as exc:
            errors.append(f"{inst.name}: {exc}")

    threads = [threading.Thread(target=one, args=(i,)) for i in items]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise ServerError("; ".join(errors))


def start_epmd(cluster: Cluster) -> None:
    """The cluster's own epmd on 127.0.0.1 (never the system's on 4369), unless it runs."""
    if alive(cluster.epmd_pid):
        return
    if port_open("127.0.0.1", cluster.epmd_port):
        raise ServerError(f"127.0.0.1:{cluster.epmd_port} (the cluster's epmd) is in use")
    log = open(cluster.path / "epmd.log", "ab")  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen(
        [EPMD, "-address", "127.0.0.1", "-port", str(cluster.epmd_port)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    log.close()
    cluster.epmd_pid = proc.pid
    cluster.save()
    deadline = time.monotonic() + 10
    while not port_open("127.0.0.1", cluster.epmd_port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise ServerError(f"epmd did not start on 127.0.0.1:{cluster.epmd_port}")
        time.sleep(0.05)


def cluster_nodes(args: argparse.Namespace) -> list[Instance]:
    """The instances of a new cluster: NAME1..NAMEn, ports counted up from --port and
    --http-port, everything else as `start` takes it for one server."""
    if (args.kind or "ejabberd") != "ejabberd":
        raise ServerError("--nodes: only ejabberd clusters (Prosody has no clustering)")
    if args.tls or args.tls_port or args.https_port:
        raise ServerError("--nodes: a cluster runs plain c2s (no --tls, --tls-port, --https-port)")
    if not 1 <= args.nodes <= 64:
        raise ServerError(f"--nodes {args.nodes}: between 1 and 64")
    base = str(instance_dir(args.name, args.dir))
    port, http_port = args.port or 5222, args.http_port or 5280
    nodes = []
    for k in range(args.nodes):
        one = argparse.Namespace(**{**vars(args), "name": f"{args.name}{k + 1}", "dir": base,
                                    "port": port + k, "http_port": http_port + k})  # fmt: skip
        nodes.append(to_start(one, None))
    ports = [p for i in nodes for p in (i.port, i.http_port)]
    if len(set(ports)) < len(ports) or max(ports) > 65535:
        raise ServerError(
            f"--nodes {args.nodes}: c2s ports {port}.. and HTTP ports {http_port}.. overlap or "
            "pass 65535; choose --port and --http-port further apart"
        )
    for inst in nodes:
        for flag, host, p in _addresses(inst):
            if port_open(host, p):
                raise ServerError(f"{host}:{p} ({flag} of {inst.name}) is already in use")
    return nodes


def start_cluster(args: argparse.Namespace, saved: Cluster | None) -> Cluster:
    """Start an ejabberd cluster (or a saved one again) and join its nodes into one."""
    if saved is not None:
        if args.nodes and args.nodes != len(saved.nodes):
            raise ServerError(
                f"cluster {saved.name!r} has {len(saved.nodes)} nodes: remove it first "
                f"(`tools/xmpp_server.py remove --name {saved.name}`) to make one of {args.nodes}"
            )
        return restart_cluster(saved)
    if os.geteuid() != 0:
        raise ServerError(NEEDS_ROOT)
    began = time.monotonic()
    nodes = cluster_nodes(args)
    path = instance_dir(args.name, args.dir)
    path.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(args.name, str(path), [i.name for i in nodes], free_port(),
                      os.urandom(16).hex())  # fmt: skip
    for inst in nodes:
        inst.cluster, inst.epmd_port, inst.cookie = cluster.name, cluster.epmd_port, cluster.cookie
    cluster.save()
    try:
        start_epmd(cluster)
        _each(nodes, start)
        seed = nodes[0]
        if args.last:
            # One node registers at its own pace; a joining node copies the table in bulk.
            register(seed, args.first, args.last, args.user_prefix, args.password_prefix)
        for inst in nodes[1:]:
            join(inst, seed)
    except BaseException:
        stop_cluster(cluster)
        raise
    print(
        f"ejabberd cluster {cluster.name!r} of {len(nodes)} nodes runs (up in "
        f"{time.monotonic() - began:.1f} s): xmpp_servers {cluster.servers()}; "
        f"epmd 127.0.0.1:{cluster.epmd_port}; files in {path}"
    )
    return cluster


def join(inst: Instance, seed: Instance) -> None:
    """`ejabberdctl join_cluster`: `inst` drops its own data, copies the seed's and serves."""
    began = time.monotonic()
    ejabberdctl(inst, "--no-timeout", "join_cluster", erlang_node(seed))
    deadline = time.monotonic() + START_TIMEOUT
    while not ejabberd_ready(inst):
        if time.monotonic() > deadline:
            raise ServerError(f"{inst.name} did not serve within {START_TIMEOUT:.0f} s of joining")
        time.sleep(0.1)
    print(f"{inst.name} joined {erlang_node(seed)} in {time.monotonic() - began:.1f} s")


def restart_cluster(cluster: Cluster) -> Cluster:
    """Start a stopped cluster again: every node at once (mnesia waits for the others)."""
    members = cluster.members()
    if all(alive(i.pid) for i in members) and alive(cluster.epmd_pid):
        print(f"ejabberd cluster {cluster.name!r} already runs: xmpp_servers {cluster.servers()}")
        return cluster
    start_epmd(cluster)
    _each([i for i in members if not alive(i.pid)], start)
    print(f"ejabberd cluster {cluster.name!r} runs again: xmpp_servers {cluster.servers()}")
    return cluster


def stop_cluster(cluster: Cluster) -> None:
    """Stop every node (at once), then the cluster's epmd, by their pids."""
    members = [i for n in cluster.nodes if (i := load(n, cluster.dir)) is not None]
    _each(members, stop)
    pid = cluster.epmd_pid
    if alive(pid):
        assert pid is not None
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    print(f"ejabberd cluster {cluster.name!r} stopped")


def cluster_status(cluster: Cluster) -> bool:
    """Print every node's status and who is joined; whether all answer, joined as one."""
    members = cluster.members()
    answering = [status(i) for i in members]
    if not all(answering):
        return False
    listed = ejabberdctl(members[0], "list_cluster")
    joined = [i.name for i in members if erlang_node(i) in listed]
    print(
        f"cluster {cluster.name!r}: {len(joined)} of {len(members)} nodes joined; "
        f"xmpp_servers {cluster.servers()}; epmd 127.0.0.1:{cluster.epmd_port} "
        f"(pid {cluster.epmd_pid})"
    )
    return len(joined) == len(members)


def cluster_main(args: argparse.Namespace, cluster: Cluster | None) -> int:
    """The verbs on a cluster (`start --nodes N`, or a name that is a cluster)."""
    if args.verb == "start":
        start_cluster(args, cluster)
        return 0
    if cluster is None:
        raise ServerError(f"no cluster {args.name!r} here: `start --nodes N` first")
    if args.verb in ("stop", "remove"):
        stop_cluster(cluster)
        if args.verb == "remove":
            shutil.rmtree(cluster.path)
            print(f"removed {cluster.path}")
    elif args.verb == "status":
        return 0 if cluster_status(cluster) else 3
    elif args.verb == "pid":
        members = cluster.members()
        if not all(alive(i.pid) for i in members):
            raise ServerError(f"cluster {cluster.name!r} is not running (every node)")
        print(",".join(str(i.pid) for i in members))
    elif args.verb == "register":
        running = [i for i in cluster.members() if alive(i.pid)]
        if not running:
            raise ServerError(f"cluster {cluster.name!r} is not running: run `start` first")
        register(running[0], args.first, args.last or args.first, args.user_prefix,
                 args.password_prefix)  # fmt: skip
    return 0


# -- command line ---------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "verb", choices=["install", "start", "stop", "status", "register", "remove", "pid"]
    )
    p.add_argument("--name", default="amoc", help="instance name (default amoc)")
    p.add_argument("--kind", choices=KINDS, default=None,
                   help="start, install: ejabberd (default) or prosody")  # fmt: skip
    p.add_argument("--dir", default=None, help="where instances live (default _build/xmpp)")
    p.add_argument("--host", default=None, help="c2s address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="c2s port (default 5222)")
    p.add_argument("--http-port", type=int, default=None,
                   help="HTTP port: ejabberd's API, WebSocket and BOSH (default 5280)")  # fmt: skip
    p.add_argument("--domain", default=None, help="XMPP domain (default localhost)")
    p.add_argument("--tls", action=argparse.BooleanOptionalAction, default=None,
                   help="start: require STARTTLS, with a self-signed certificate")  # fmt: skip
    p.add_argument("--https-port", type=int, default=None,
                   help="start: WebSocket and BOSH over TLS too (0: none)")  # fmt: skip
    p.add_argument("--tls-port", type=int, default=None,
                   help="start: a direct-TLS (XEP-0368) c2s port too (0: none)")  # fmt: skip
    p.add_argument("--scram", action=argparse.BooleanOptionalAction, default=None,
                   help="start: store SCRAM-SHA-1 hashes, not plain passwords")  # fmt: skip
    p.add_argument("--scram-hash", choices=["sha1", "sha256"], default=None,
                   help="start: with --scram, SHA-1 (default) or SHA-256 hashes")  # fmt: skip
    p.add_argument("--mam", action=argparse.BooleanOptionalAction, default=None,
                   help="start: archive every message (MAM; the default)")  # fmt: skip
    p.add_argument("--offline", action=argparse.BooleanOptionalAction, default=None,
                   help="start: keep messages for offline users (the default)")  # fmt: skip
    p.add_argument("--busy-wait", action=argparse.BooleanOptionalAction, default=None,
                   help="start: ejabberd's schedulers spin before sleeping (default)")  # fmt: skip
    p.add_argument("--nodes", type=int, default=None,
                   help="start: an ejabberd cluster of N nodes joined as one (NAME1..NAMEn; c2s "
                        "and HTTP ports counted up from --port and --http-port; with --last, "
                        "users registered on the first node before the others join)")  # fmt: skip
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


def _pick(flag: object, saved: object) -> object:
    return saved if flag is None else flag


def to_start(args: argparse.Namespace, saved: Instance | None) -> Instance:
    """The instance `start` runs: the flags given, else what was saved, else the defaults."""
    base = saved or Instance(
        args.name, str(instance_dir(args.name, args.dir)), "127.0.0.1", 5222, 5280, 0,
        "localhost",
    )  # fmt: skip
    kind = args.kind or base.kind
    if saved is not None and kind != saved.kind:
        raise ServerError(
            f"{args.name!r} is a {saved.kind} instance: remove it first "
            f"(`tools/xmpp_server.py remove --name {args.name}`) or choose another --name"
        )
    inst = Instance(
        name=args.name,
        dir=str(instance_dir(args.name, args.dir)),
        host=_loopback(args.host or base.host),
        port=args.port or base.port,
        http_port=args.http_port or base.http_port,
        dist_port=0,
        domain=args.domain or base.domain,
        kind=kind,
        tls=bool(_pick(args.tls, base.tls)),
        scram=bool(_pick(args.scram, base.scram)),
        tls_port=int(_pick(args.tls_port, base.tls_port)),  # type: ignore[call-overload]
        https_port=int(_pick(args.https_port, base.https_port)),  # type: ignore[call-overload]
        mam=bool(_pick(args.mam, base.mam)),
        scram_hash=str(_pick(args.scram_hash, base.scram_hash)),
        busy_wait=bool(_pick(args.busy_wait, base.busy_wait)),
        offline=bool(_pick(args.offline, base.offline)),
    )
    if saved is not None and saved.scram and not inst.scram:
        raise ServerError(
            f"{args.name!r} stores SCRAM hashes, which cannot become plain passwords again: "
            "start it with --scram, or remove it first"
        )
    for flag, _host, port in _addresses(inst):
        if not 1 <= port <= 65535:
            raise ServerError(f"{flag} {port}: must be between 1 and 65535")
    ports = [p for p in (inst.port, inst.http_port, inst.tls_port, inst.https_port) if p]
    if len(set(ports)) < len(ports):
        raise ServerError("--port, --http-port, --tls-port and --https-port must differ")
    return inst


def print_pid(inst: Instance) -> None:
    """The server's pid, for amoc's monitor (`monitor_hosts=local:<pid>`, as `make demo` does)."""
    if not alive(inst.pid):
        raise ServerError(f"{inst.kind} {inst.name!r} is not running")
    print(inst.pid)


def server_main(args: argparse.Namespace, saved: Instance | None) -> int:
    """The verbs on one server."""
    if args.verb == "start":
        start(to_start(args, saved))
        return 0
    if saved is None:
        if args.verb in ("stop", "remove"):
            print(f"no server {args.name!r} was ever started here")
            return 0
        raise ServerError(f"no server {args.name!r} here: run `start` first")
    if args.verb == "stop":
        stop(saved)
    elif args.verb == "remove":
        stop(saved)
        shutil.rmtree(saved.path)
        print(f"removed {saved.path}")
    elif args.verb == "status":
        return 0 if status(saved) else 3
    elif args.verb == "pid":
        print_pid(saved)
    elif args.verb == "register":
        if saved.kind == "ejabberd" and not alive(saved.pid):
            raise ServerError(f"ejabberd {args.name!r} is not running: run `start` first")
        register(saved, args.first, args.last or args.first, args.user_prefix,
                 args.password_prefix)  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = parser().parse_args(argv)
    try:
        if args.verb == "install":
            install(args.kind or "ejabberd")
            return 0
        cluster = load_cluster(args.name, args.dir)
        if cluster is not None or args.nodes:
            return cluster_main(args, cluster)
        return server_main(args, load(args.name, args.dir))
    except ServerError as exc:
        print(f"xmpp_server: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
