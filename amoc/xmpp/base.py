"""What both XMPP clients share: a session's states, the login's outcome and its metrics,
the end of an online session and a clean stop.

A client subclasses `ClientBase` and provides:

- `_connect(password)`: start the connection; the login ends when the client resolves
  `_login` (or fails it with `_fail_login`);
- `_close_stream()`: end the stream and wait, bounded by xmpp_stop_timeout, for its end;
- `_teardown(graceful)`: drop the connection at once (graceful: after a clean close);
- `_live()`: what sends go to while the session is up, else `_not_live()`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from typing import NoReturn, Self

from amoc import metrics
from amoc.xmpp import addressing
from amoc.xmpp.errors import ConnectionLost, LoginError, Reason, XmppError
from amoc.xmpp.router import Router
from amoc.xmpp.settings import Settings

log = logging.getLogger("amoc.xmpp")


# Why a login may be tried again (xmpp_connect_attempts): no connection was made.
RETRIED = frozenset(
    {Reason.REFUSED, Reason.CONNECTION_ERROR, Reason.TIMEOUT, Reason.TLS, Reason.CLOSED}
)


class State(enum.Enum):
    NEW = "new"
    LOGGING_IN = "logging in"
    ONLINE = "online"
    RESUMING = "resuming"  # online, the connection dropped: reconnecting (XEP-0198, lean)
    CLOSING = "closing"
    CLOSED = "closed"


# The states in which a login (the first one, or a resumption's) is under way.
_LOGINS = (State.LOGGING_IN, State.RESUMING)


class ClientBase(Router):
    """One simulated user's session, whichever transport carries it."""

    __slots__ = (
        "_login",
        "_lost",
        "_online_counted",
        "_state",
        "_stream_error",
        "_tcp",
        "jid",
        "sent",
        "settings",
        "user_id",
        "username",
    )

    def __init__(self, user_id: int, config: Settings, username: str) -> None:
        self.user_id = user_id
        self.settings = config
        self.username = username
        self.jid = f"{username}@{config.domain}"
        self.received = 0
        self.sent = 0
        self._inbox = None  # made at the first message kept
        self._waiters = []
        self._init_router()
        self._state = State.NEW
        self._login: asyncio.Future[None] | None = None  # while logging in
        self._lost: ConnectionLost | None = None
        self._stream_error = ""
        self._tcp = False  # the TCP connection was made
        self._online_counted = False  # counted in the xmpp.connected gauge

    def __repr__(self) -> str:
        return f"<amoc.xmpp.{type(self).__name__} {self.jid} {self._state.value}>"

    @property
    def connected(self) -> bool:
        """True while the session is up (logged in, not stopped, not lost; also while a
        dropped connection is being resumed: sends are kept for the resumed stream)."""
        return self._state in (State.ONLINE, State.RESUMING)

    @property
    def unacked(self) -> int:
        """Stanzas sent that the server has not acknowledged (XEP-0198; 0 without it)."""
        return 0

    def drop_connection(self) -> None:
        """Abort the TCP connection without closing the stream: a network failure."""
        raise NotImplementedError

    # -- login ------------------------------------------------------------------------------

    async def _connect(self, password: str) -> None:
        raise NotImplementedError

    async def _open(self, password: str, last: bool = True) -> None:
        """Log in within xmpp_connect_timeout; count the outcome; LoginError if it fails.

        Not the `last` attempt: a connection that could not be made counts as a retry
        (`xmpp.connections.retries`), not as a failed login.
        """
        s = self.settings
        loop = asyncio.get_running_loop()
        started = loop.time()
        self._login = login = loop.create_future()
        self._state = State.LOGGING_IN
        try:
            async with asyncio.timeout(s.connect_timeout / 1000.0):
                await self._connect(password)
                await login
        except TimeoutError:
            stage = "connected but not logged in" if self._tcp else "no TCP connection"
            self._teardown()
            raise self._login_failed(
                Reason.TIMEOUT,
                f"no session within xmpp_connect_timeout = {s.connect_timeout} ms ({stage})",
                last,
            ) from None
        except LoginError as exc:
            self._teardown()
            reason = exc.reason or Reason.CONNECTION_ERROR
            raise self._login_failed(reason, str(exc), last) from None
        except BaseException:
            self._teardown()
            raise
        finally:
            self._login = None
        self._state = State.ONLINE
        self._online_counted = True
        metrics.counter("xmpp.logins.ok").inc()
        metrics.gauge("xmpp.connected").inc()
        metrics.histogram("xmpp.login_time_ms").record((loop.time() - started) * 1000.0)

    def _login_failed(self, reason: Reason, detail: str, last: bool = True) -> LoginError:
        s = self.settings
        where = addressing.endpoint(s, self.user_id).url
        message = f"login of {self.jid} at {where} failed ({reason.value}): {detail}"
        if not last and not self._tcp and reason in RETRIED:
            metrics.counter("xmpp.connections.retries").inc()
            log.debug("%s; retrying", message)
            return LoginError(message, reason, self.user_id)
        metrics.counter("xmpp.logins.failed").inc()
        metrics.counter(f"xmpp.logins.failed.{reason.value}").inc()
        if not self._tcp:
            metrics.counter("xmpp.connections.failed").inc()
        log.debug(message)
        return LoginError(message, reason, self.user_id)

    def _fail_login(self, reason: Reason, detail: str) -> None:
        login = self._login
        if self._state in _LOGINS and login is not None and not login.done():
            login.set_exception(LoginError(detail, reason, self.user_id))

    def _logged_in(self) -> None:
        login = self._login
        if self._state in _LOGINS and login is not None and not login.done():
            login.set_result(None)

    # -- the server's side ------------------------------------------------------------------

    def _stream_error_received(self, condition: str, text: str) -> None:
        self._stream_error = f"{condition}: {text}" if text else condition
        self._fail_login(Reason.STREAM_ERROR, f"stream error {self._stream_error}")

    def _closed_during_login(self) -> None:
        detail = f"stream error {self._stream_error}" if self._stream_error else ""
        self._fail_login(
            Reason.STREAM_ERROR if detail else Reason.CLOSED,
            detail or "the server closed the connection during login",
        )

    def _end_session(self, exc: BaseException | None = None) -> None:
        """The server ended the online session: keep why for the next call, wake waiters."""
        if self._stream_error:
            why = f"stream error {self._stream_error}"
        else:
            why = f"connection closed: {exc}" if exc else "connection closed"
        self._lost = ConnectionLost(
            f"{self.jid}: the server ended the session ({why})",
            Reason.STREAM_ERROR if self._stream_error else Reason.CLOSED,
            self.user_id,
        )
        log.debug("%s", self._lost)
        metrics.counter("xmpp.disconnects").inc()
        self._leave_online()
        self._state = State.CLOSED
        self._wake()
        self._fail_waiting(self._lost)

    def _not_live(self) -> NoReturn:
        if self._lost is not None:
            raise self._lost
        raise XmppError(f"{self.jid}: the client is {self._state.value}", None, self.user_id)

    # -- closing ----------------------------------------------------------------------------

    async def _close_stream(self) -> None:
        raise NotImplementedError

    def _teardown(self, graceful: bool = False) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        """Close the stream cleanly (bounded by xmpp_stop_timeout); safe to call twice."""
        if self._state in (State.CLOSING, State.CLOSED, State.NEW):
            return
        if self._state is State.LOGGING_IN:  # connect() is still running in another task
            self._fail_login(Reason.CLOSED, "stop() was called during login")
            self._teardown()
            return
        self._state = State.CLOSING
        self._leave_online()
        try:
            await self._close_stream()
        except TimeoutError:
            log.debug("%s: clean close timed out, aborting", self.jid)
        finally:
            self._teardown(graceful=True)
            self._wake()
            self._fail_waiting(XmppError(f"{self.jid}: the client was stopped", None, self.user_id))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    def _leave_online(self) -> None:
        if self._online_counted:
            self._online_counted = False
            metrics.gauge("xmpp.connected").dec()
