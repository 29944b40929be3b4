"""The REST API's HTTP server: bearer-token auth, JSON errors, routes from the endpoint table.

Built on aiohttp rather than a hand-written server: a maintained HTTP/1.1 parser with
body limits and keep-alive is what a port facing other programs needs.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Handler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from amoc.api import docs_page, openapi
from amoc.api.provider import ClusterProvider
from amoc.api.responses import error
from amoc.api.routes import ENDPOINTS, Api, Endpoint
from amoc.api.store import ScenarioStore
from amoc.api.validation import MAX_BODY_BYTES, ApiError
from amoc.config import Config
from amoc.errors import ConfigError
from amoc.metrics import Registry

log = logging.getLogger("amoc.api")
access_log = logging.getLogger("amoc.api.access")

# Query parameters that would carry a token; refused, and never written to a log.
QUERY_TOKENS = frozenset({"token", "access_token", "api_token", "bearer", "auth"})


class AccessLogger(AbstractAccessLogger):
    """One line per request: client, method, path (never the query string), status, time."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %s %s %.3fs',
            request.remote,
            request.method,
            request.path,
            response.status,
            response.body_length,
            time,
        )


class ApiServer:
    """Serves the API of `provider` on host:port (port 0: any free port, see `.port`)."""

    def __init__(
        self,
        provider: ClusterProvider,
        config: Config,
        store: ScenarioStore,
        token: str,
        host: str = "127.0.0.1",
        port: int = 0,
        registry: Registry | None = None,
        endpoints: Sequence[Endpoint] = ENDPOINTS,
        token_file: Path | None = None,
    ) -> None:
        """`token_file`, if given, holds the token and is removed when the server stops."""
        if not token:
            raise ConfigError("the REST API needs a token (api_token)")
        if registry is None:
            from amoc.metrics import REGISTRY

            registry = REGISTRY
        self.host, self.port = host, port
        self._token = token.encode()
        self._token_file = token_file
        self.api = Api(provider, config, store, registry)
        self.api.document = openapi.document(endpoints)
        self.api.page = docs_page.render(self.api.document)
        self._public = {e.path for e in endpoints if e.public}
        self.app = web.Application(
            client_max_size=MAX_BODY_BYTES, middlewares=[self._errors, self._auth]
        )
        for endpoint in endpoints:
            self.app.router.add_route(
                endpoint.method, endpoint.route or endpoint.path, self._bind(endpoint)
            )
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """Where the API answers, e.g. http://127.0.0.1:8080."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Listen, or raise ConfigError naming the address when it cannot."""
        runner = web.AppRunner(
            self.app, shutdown_timeout=2.0, access_log_class=AccessLogger, access_log=access_log
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                f"the REST API cannot listen on {self.host}:{self.port} "
                f"(api_host/api_port): {exc.strerror or exc}"
            ) from None
        self._runner = runner
        self.port = runner.addresses[0][1]

    async def stop(self) -> None:
        """Stop listening; requests in progress get two seconds to finish."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._token_file is not None:
            self._token_file.unlink(missing_ok=True)

    def _bind(self, endpoint: Endpoint) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await endpoint.handler(self.api, request)

        handle.__name__ = endpoint.handler.__name__
        return handle

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return error(exc.status, exc.message, exc.field)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            where = f"{request.method} {request.path}"
            if exc.status == 404:
                return error(404, f"no endpoint {where}; see /api-docs", None)
            if exc.status == 405:
                return error(405, f"{where} is not allowed; see /api-docs", None)
            if exc.status == 413:
                return error(413, f"the body is larger than {MAX_BODY_BYTES} bytes", "body")
            return error(exc.status, exc.reason, None)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("REST API: %s %s failed", request.method, request.path)
            return error(500, "internal error: see the node's log", None)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if any(k.lower() in QUERY_TOKENS for k in request.query):
            raise ApiError(
                401,
                "a token in the query string is refused (query strings are logged and kept "
                "in histories): send the header 'Authorization: Bearer <token>' instead",
                "Authorization",
            )
        if request.method in ("GET", "HEAD") and request.path in self._public:
            return await handler(request)  # the docs: a browser cannot send the token
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise ApiError(
                401,
                "send the header 'Authorization: Bearer <token>' (the node's api_token)",
                "Authorization",
            )
        if not hmac.compare_digest(given.strip().encode(), self._token):
            raise ApiError(401, "wrong token", "Authorization")
        return await handler(request)
