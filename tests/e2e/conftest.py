"""The e2e tier's fixtures: a cluster of nodes, and the XMPP server its journeys load."""

from tests.e2e.cluster import cluster  # noqa: F401 - fixtures
from tests.integration.xmpp_fixture import xmpp_server  # noqa: F401
