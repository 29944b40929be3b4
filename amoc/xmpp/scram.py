"""SASL SCRAM-SHA-1 (RFC 5802), client side, without channel binding, and SASL PLAIN.

    scram = Scram(username, password)
    first = scram.client_first()                 # send in <auth mechanism='SCRAM-SHA-1'>
    final = scram.client_final(server_first)     # answer the server's challenge
    scram.verify(server_final)                   # check <success/>'s data: the server knew it

Messages are bytes, before base64. Passwords are used as given (no SASLprep): load-test
accounts are ASCII.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

# RFC 5802 asks for an iteration count of at least 4096; a server that asks for far more
# would make each login a CPU burn on the load generator.
MAX_ITERATIONS = 1_000_000


class ScramError(Exception):
    """The server's SCRAM message is malformed, or it failed to prove it knows the password."""


def plain(username: str, password: str) -> bytes:
    """The PLAIN initial response: no authorization identity, user, password (RFC 4616)."""
    return b"\0" + username.encode() + b"\0" + password.encode()


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
    """One SCRAM-SHA-1 exchange."""

    __slots__ = (
        "_auth_message",
        "_client_first_bare",
        "_nonce",
        "_salted",
        "password",
        "username",
        "verified",
    )

    def __init__(self, username: str, password: str, nonce: str | None = None) -> None:
        self.username = username
        self.password = password
        self._nonce = nonce or secrets.token_urlsafe(18)
        self._client_first_bare = f"n={_saslname(username)},r={self._nonce}"
        self._auth_message = b""
        self._salted = b""
        self.verified = False

    @property
    def answered(self) -> bool:
        """Whether the client-final-message was made (the next message is the server's)."""
        return bool(self._salted)

    def client_first(self) -> bytes:
        """The client-first-message (GS2 header "n,," : no channel binding, no authzid)."""
        return f"n,,{self._client_first_bare}".encode()

    def client_final(self, server_first: bytes) -> bytes:
        """The client-final-message with the proof, from the server-first-message."""
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
        without_proof = f"c=biws,r={nonce}"  # biws = base64("n,,")
        self._auth_message = (
            f"{self._client_first_bare},{server_first.decode()},{without_proof}".encode()
        )
        self._salted = hashlib.pbkdf2_hmac("sha1", self.password.encode(), salt, count)
        client_key = hmac.digest(self._salted, b"Client Key", "sha1")
        stored_key = hashlib.sha1(client_key).digest()
        signature = hmac.digest(stored_key, self._auth_message, "sha1")
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify(self, server_final: bytes) -> None:
        """Check the server-final-message (v=signature); raise ScramError if it is wrong."""
        if not self._salted:
            raise ScramError("server-final-message before the client-final-message")
        f = _fields(server_final)
        if "e" in f:
            raise ScramError(f"the server reports a SCRAM error: {f['e']}")
        server_key = hmac.digest(self._salted, b"Server Key", "sha1")
        expected = hmac.digest(server_key, self._auth_message, "sha1")
        try:
            got = base64.b64decode(f.get("v", ""), validate=True)
        except ValueError:
            raise ScramError("malformed SCRAM server signature") from None
        if not hmac.compare_digest(got, expected):
            raise ScramError("the server's SCRAM signature is wrong: it does not know the password")
        self.verified = True
