"""The integration tier's fixtures: real XMPP servers, one of each kind per session."""

from tests.integration.xmpp_fixture import (  # noqa: F401 - fixtures
    ejabberd_tls_server,
    prosody_server,
    xmpp_server,
)
