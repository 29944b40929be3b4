"""amoc.api: the node's REST API, documented at /api-docs.

Off unless `api_port` is set. `start_node_api` starts it with a node; `ApiServer`
(in `amoc.api.server`, which needs aiohttp) serves any `ClusterProvider`: this node's
`local_provider`, or a master's provider for its cluster (`master_provider`).
"""

from __future__ import annotations

from amoc.api.provider import ClusterProvider, RunnerProvider, local_provider
from amoc.api.service import start_node_api
from amoc.api.settings import PARAMETERS

__all__ = ["PARAMETERS", "ClusterProvider", "RunnerProvider", "local_provider", "start_node_api"]
