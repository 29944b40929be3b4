"""Typed XMPP errors: what failed, why (a `Reason`), and for which user."""

from __future__ import annotations

import enum

from amoc.errors import AmocError


class Reason(enum.StrEnum):
    """Why a login failed or a session ended; also the suffix of the per-reason counters."""

    AUTH = "auth"  # SASL failure (wrong password, unknown user): not-authorized
    UNKNOWN_USER = "unknown_user"  # SASL refused before any proof: no such account
    NO_MECHANISM = "no_mechanism"  # no acceptable SASL mechanism offered (TLS needed?)
    TLS = "tls"  # STARTTLS failed: certificate not trusted, handshake error
    REFUSED = "refused"  # TCP connection refused: nothing listens on host:port
    CONNECTION_ERROR = "connection_error"  # other socket error (unreachable, reset)
    TIMEOUT = "timeout"  # connect + auth + bind took longer than xmpp_connect_timeout
    STREAM_ERROR = "stream_error"  # the server sent <stream:error/>
    CLOSED = "closed"  # the server closed the connection
    REGISTRATION = "registration"  # in-band registration refused (XEP-0077)
    IQ_ERROR = "iq_error"  # an IQ request answered with type='error'
    NOT_SUPPORTED = "not_supported"  # the chosen client cannot do this


class XmppError(AmocError):
    """Base of the errors raised by amoc.xmpp; `reason` says why, `user_id` for whom."""

    def __init__(self, message: str, reason: Reason | None = None, user_id: int | None = None):
        super().__init__(message)
        self.reason = reason
        self.user_id = user_id


class LoginError(XmppError):
    """`connect()` failed: no connection, authentication refused, timeout, stream error."""


class ConnectionLost(XmppError):
    """The session ended under a waiting or sending call (server closed or restarted)."""


class ReceiveTimeout(XmppError):
    """`wait_message()` / `wait_received()` saw nothing in time."""


class IqError(XmppError):
    """An IQ request was answered with an error: `condition` (RFC 6120 §8.3.3), `text`."""

    def __init__(
        self,
        message: str,
        condition: str,
        text: str = "",
        kind: str = "",
        user_id: int | None = None,
    ) -> None:
        super().__init__(message, Reason.IQ_ERROR, user_id)
        self.condition = condition
        self.text = text
        self.kind = kind


class NotSupported(XmppError):
    """The chosen client cannot do what was asked; the message names the one that can."""
