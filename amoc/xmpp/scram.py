"""SASL SCRAM (RFC 5802, RFC 7677) client side with SHA-1, SHA-256 and SHA-512, their -PLUS
forms with channel binding, SASL PLAIN, and the choice among what a server offers.

    scram = Scram(username, password, "SCRAM-SHA-256")
    first = scram.client_first()                 # send in <auth mechanism='SCRAM-SHA-256'>
    final = scram.client_final(server_first)     # answer the server's challenge
    scram.verify(server_final)                   # check <success/>'s data: the server knew it

Messages are bytes, before base64. Passwords are used as given (no SASLprep): load-test
accounts are ASCII.

The salted password (PBKDF2, thousands of iterations: the dear part of a login) is kept per
(hash, password, salt, iterations), so a user that logs in again costs no PBKDF2. A server
salts each account once, so the cache holds one entry per user; it is bounded.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections import OrderedDict

# RFC 5802 asks for an iteration count of at least 4096; a server that asks for far more
# would make each login a CPU burn on the load generator.
MAX_ITERATIONS = 1_000_000

# Strongest first: what `choose` prefers among the offered mechanisms.
HASHES = {"SCRAM-SHA-512": "sha512", "SCRAM-SHA-256": "sha256", "SCRAM-SHA-1": "sha1"}
PREFERENCE = (
    "SCRAM-SHA-512-PLUS",
    "SCRAM-SHA-256-PLUS",
    "SCRAM-SHA-1-PLUS",
    "SCRAM-SHA-512",
    "SCRAM-SHA-256",
    "SCRAM-SHA-1",
    "PLAIN",
)
MECHANISMS = frozenset(PREFERENCE)

# The channel-binding type used by -PLUS mechanisms. Python's ssl module offers only
# tls-unique (RFC 5929), which ejabberd accepts on TLS 1.2 and 1.3 (FACTS.md).
CHANNEL_BINDING = "tls-unique"

CACHE_SIZE = 200_000
# Whether an uncached PBKDF2 runs in the default executor: hashlib releases the GIL, so it
# runs beside the event loop instead of stalling every other user's traffic.
OFF_LOOP = True
_salted: OrderedDict[tuple[str, str, bytes, int], bytes] = OrderedDict()


class ScramError(Exception):
    """The server's SCRAM message is malformed, or it failed to prove it knows the password."""


def plain(username: str, password: str) -> bytes:
    """The PLAIN initial response: no authorization identity, user, password (RFC 4616)."""
    return b"\0" + username.encode() + b"\0" + password.encode()


def choose(offered: list[str], wanted: str, tls: bool, binding: bool) -> str | None:
    """The mechanism to use: `wanted`, or with "AUTO" the strongest offered one allowed.

    -PLUS needs TLS with channel binding data; PLAIN in AUTO is taken only when nothing
    else is offered (over TLS, or on a server that allows it in the clear).
    """
    usable = [m for m in offered if m in MECHANISMS and (binding or not m.endswith("-PLUS"))]
    if wanted != "AUTO":
        return wanted if wanted in offered and wanted in usable else None
    for mech in PREFERENCE:
        if mech in usable:
            return mech
    return None


def salted_password(hash_name: str, password: str, salt: bytes, iterations: int) -> bytes:
    """Hi(password, salt, i) of RFC 5802, computed once per distinct input and kept."""
    key = (hash_name, password, salt, iterations)
    found = _salted.get(key)
    if found is not None:
        _salted.move_to_end(key)
        return found
    value = hashlib.pbkdf2_hmac(hash_name, password.encode(), salt, iterations)
    _salted[key] = value
    if len(_salted) > CACHE_SIZE:
        _salted.popitem(last=False)
    return value


def _saslname(name: str) -> str:
    return name.replace("=", "=3D").replace(",", "=2C")


def _fields(message: bytes) -> dict[str, str]:
    try:
        text = message.decode()
    except UnicodeDecodeError:
        raise ScramError("SCRAM message is not UTF-8") from None
    out: dict[str, str] = {}
    for part in text.split(","):
        if len(part) < 2 or part[1] != "=":
            raise ScramError(f"malformed SCRAM attribute {part!r} in {text!r}")
        out.setdefault(part[0], part[2:])
    return out


class Scram:
    """One SCRAM exchange with mechanism `mechanism` (SCRAM-SHA-1 ... SCRAM-SHA-512-PLUS).

    For a -PLUS mechanism `binding` is the channel-binding data of the TLS connection.
    Without -PLUS, `binding_supported` says whether this client could have bound the
    channel (GS2 "y": a server that offers -PLUS then detects a downgrade).
    """

    __slots__ = (
        "_auth_message",
        "_binding",
        "_client_first_bare",
        "_gs2",
        "_hash",
        "_nonce",
        "_salted",
        "mechanism",
        "password",
        "username",
        "verified",
    )

    def __init__(
        self,
        username: str,
        password: str,
        mechanism: str = "SCRAM-SHA-1",
        nonce: str | None = None,
        binding: bytes | None = None,
        binding_supported: bool = False,
    ) -> None:
        plus = mechanism.endswith("-PLUS")
        base = mechanism.removesuffix("-PLUS")
        if base not in HASHES:
            raise ScramError(f"unknown SCRAM mechanism {mechanism!r}")
        if plus and not binding:
            raise ScramError(f"{mechanism} needs channel-binding data from the TLS connection")
        self.mechanism = mechanism
        self.username = username
        self.password = password
        self._hash = HASHES[base]
        self._nonce = nonce or secrets.token_urlsafe(18)
        self._client_first_bare = f"n={_saslname(username)},r={self._nonce}"
        if plus:
            self._gs2 = f"p={CHANNEL_BINDING},,".encode()
            self._binding = binding or b""
        else:
            self._gs2 = b"y,," if binding_supported else b"n,,"
            self._binding = b""
        self._auth_message = b""
        self._salted = b""
        self.verified = False

    @property
    def answered(self) -> bool:
        """Whether the client-final-message was made (the next message is the server's)."""
        return bool(self._salted)

    def client_first(self) -> bytes:
        """The client-first-message: the GS2 header, then the user name and nonce."""
        return self._gs2 + self._client_first_bare.encode()

    def salt_needed(self, server_first: bytes) -> tuple[str, str, bytes, int] | None:
        """The arguments of `salted_password` when the server-first-message needs a PBKDF2
        that is not cached yet (to run it off the event loop), else None."""
        _nonce, salt, count = self._parse(server_first)
        key = (self._hash, self.password, salt, count)
        return None if key in _salted else key

    def _parse(self, server_first: bytes) -> tuple[str, bytes, int]:
        f = _fields(server_first)
        if "m" in f:
            raise ScramError("the server requires a SCRAM extension (m=) this client lacks")
        nonce, salt_b64, iterations = f.get("r", ""), f.get("s", ""), f.get("i", "")
        if not nonce.startswith(self._nonce) or len(nonce) <= len(self._nonce):
            raise ScramError("the server's nonce does not extend the client's")
        try:
            salt = base64.b64decode(salt_b64, validate=True)
            count = int(iterations)
        except ValueError:
            raise ScramError(f"malformed SCRAM salt or iteration count in {f!r}") from None
        if not salt or not 1 <= count <= MAX_ITERATIONS:
            raise ScramError(f"unacceptable SCRAM salt or iteration count {count}")
        return nonce, salt, count

    def client_final(self, server_first: bytes) -> bytes:
        """The client-final-message with the proof, from the server-first-message."""
        nonce, salt, count = self._parse(server_first)
        channel = base64.b64encode(self._gs2 + self._binding).decode()
        without_proof = f"c={channel},r={nonce}"
        self._auth_message = (
            f"{self._client_first_bare},{server_first.decode()},{without_proof}".encode()
        )
        h = self._hash
        self._salted = salted_password(h, self.password, salt, count)
        client_key = hmac.digest(self._salted, b"Client Key", h)
        stored_key = hashlib.new(h, client_key).digest()
        signature = hmac.digest(stored_key, self._auth_message, h)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify(self, server_final: bytes) -> None:
        """Check the server-final-message (v=signature); raise ScramError if it is wrong."""
        if not self._salted:
            raise ScramError("server-final-message before the client-final-message")
        f = _fields(server_final)
        if "e" in f:
            raise ScramError(f"the server reports a SCRAM error: {f['e']}")
        server_key = hmac.digest(self._salted, b"Server Key", self._hash)
        expected = hmac.digest(server_key, self._auth_message, self._hash)
        try:
            got = base64.b64decode(f.get("v", ""), validate=True)
        except ValueError:
            raise ScramError("malformed SCRAM server signature") from None
        if not hmac.compare_digest(got, expected):
            raise ScramError("the server's SCRAM signature is wrong: it does not know the password")
        self.verified = True
