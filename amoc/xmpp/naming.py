"""User names, passwords and JIDs from user ids and the configured prefixes."""

from __future__ import annotations

from amoc.xmpp.addressing import account
from amoc.xmpp.settings import Settings, settings


def username(user_id: int, config: Settings | None = None) -> str:
    """The account name of `user_id`: xmpp_username_prefix + id (`user_7`), or its row of
    xmpp_users_file."""
    s = config or settings()
    if s.users_file:
        return account(user_id, s.users_file).username
    return f"{s.username_prefix}{user_id}"


def password(user_id: int, config: Settings | None = None) -> str:
    """The password of `user_id`: xmpp_password_prefix + id (`password_7`), or its row of
    xmpp_users_file."""
    s = config or settings()
    if s.users_file:
        return account(user_id, s.users_file).password
    return f"{s.password_prefix}{user_id}"


def jid(user_id: int, config: Settings | None = None, resource: bool = False) -> str:
    """The bare JID of `user_id` (`user_7@localhost`), or full with `resource=True`."""
    s = config or settings()
    bare = f"{username(user_id, s)}@{s.domain}"
    return f"{bare}/{s.resource}" if resource and s.resource else bare
