"""The cluster's CURVE keys: one pair for the master, one pair that every slave holds.

    keys/master.key          the master's public key (every slave needs it)
    keys/master.key_secret   the master's key pair (the master only)
    keys/node.key            the slaves' public key (the master authorises it)
    keys/node.key_secret     the slaves' key pair (every slave)

`bin/amoc keys [DIR]` writes them (mode 0600 for secrets). Ansible copies them from the
control machine to the hosts; they are never in the repository.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

from amoc.errors import ConfigError


@dataclass(frozen=True)
class KeyPair:
    """A z85-encoded CURVE key pair (secret None when only the public key is known)."""

    public: bytes
    secret: bytes | None


def generate(directory: Path, force: bool = False) -> list[Path]:
    """Write the master's and the nodes' key pairs into `directory`; the files written."""
    if not zmq.has("curve"):
        raise ConfigError("this libzmq has no CURVE support; install pyzmq's wheel")
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    written = []
    for name in ("master", "node"):
        public = directory / f"{name}.key"
        if public.exists() and not force:
            raise ConfigError(f"{public} exists; use --force to replace the cluster's keys")
        pub, sec = zmq.auth.create_certificates(directory, name)
        os.chmod(sec, 0o600)
        written += [Path(pub), Path(sec)]
    return written


def load(directory: Path, name: str, secret: bool) -> KeyPair:
    """The key pair `name` ('master' or 'node') from `directory`, with a clear error."""
    path = directory / (f"{name}.key_secret" if secret else f"{name}.key")
    if not path.is_file():
        raise ConfigError(
            f"cluster key {path} is missing: make the keys with `bin/amoc keys {directory}` "
            "(or point cluster_keys at them)"
        )
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"cluster key {path} is unreadable: {exc}") from None
    if secret and not secret_key:
        raise ConfigError(f"cluster key {path} holds no secret key")
    return KeyPair(public, secret_key)
