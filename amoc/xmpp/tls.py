"""One `ssl.SSLContext` per verification setting, shared by every client of the process.

slixmpp builds a default context per client (loading the CA store: about 850 KiB and 37 ms
each); sharing one is the largest single saving per simulated user.
"""

from __future__ import annotations

import ssl

_contexts: dict[tuple[bool, str], ssl.SSLContext] = {}


def shared_context(verify: bool, ca_file: str = "") -> ssl.SSLContext:
    """The process-wide client context; `verify` checks the certificate and host name
    against the system's CAs, or only those of `ca_file` (PEM) when it is given."""
    key = (verify, ca_file if verify else "")
    ctx = _contexts.get(key)
    if ctx is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if verify:
            if ca_file:
                ctx.load_verify_locations(cafile=ca_file)
            else:
                ctx.load_default_certs()
        else:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        _contexts[key] = ctx
    return ctx


def check_ca_file(path: str) -> str:
    """`path` if it holds at least one PEM certificate a context can load, else ValueError."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except FileNotFoundError:
        raise ValueError(f"no such file: {path}") from None
    except PermissionError:
        raise ValueError(f"cannot read {path}: permission denied") from None
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"{path} holds no PEM certificate ({exc})") from None
    return path
