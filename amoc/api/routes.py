"""The API's endpoints: one table (method, path, handler, documentation) and the handlers.

The table is the single source of both the server's routes and the OpenAPI document.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from amoc.api.provider import ClusterProvider
from amoc.api.responses import ok
from amoc.api.store import MAX_SOURCE_BYTES, ScenarioStore
from amoc.api.validation import (
    MAX_BODY_BYTES,
    MAX_COMMENT_CHARS,
    MAX_USERS_PER_REQUEST,
    ApiError,
    boolean,
    integer,
    obj,
    only,
    parse_json,
    string,
    user_range,
)
from amoc.config import READ_ONLY, REQUIRED, Config, Param, restart_needed
from amoc.errors import ConfigError, RunnerError, ScenarioError
from amoc.metrics import Registry, summary


@dataclass
class Api:
    """What the handlers work on."""

    provider: ClusterProvider
    config: Config
    store: ScenarioStore
    registry: Registry
    document: dict[str, Any] = field(default_factory=dict)
    page: str = ""
    # One run command at a time: a second POST /api/run waits, then finds the first running.
    run_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


Handler = Callable[[Api, web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Endpoint:
    """One operation: how it is routed and how it is documented."""

    method: str
    path: str  # as OpenAPI writes it: /api/scenarios/{name}
    handler: Handler
    summary: str
    tag: str
    description: str = ""
    body: str | None = None  # name of the request body's schema
    response: str = "Status"  # name of the 2xx response's schema
    status: int = 200
    errors: tuple[int, ...] = ()
    public: bool = False  # served without a token (the docs)
    route: str | None = None  # aiohttp's pattern when it differs from `path`


# -- helpers ------------------------------------------------------------------------------


async def read_body(request: web.Request) -> dict[str, Any]:
    """The JSON object in the request's body, within MAX_BODY_BYTES."""
    too_big = ApiError(413, f"the body is larger than {MAX_BODY_BYTES} bytes", "body")
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise too_big
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_big from None
    return parse_json(raw)


async def guarded(command: Coroutine[Any, Any, dict[str, Any]], field: str | None) -> Any:
    """Run a provider command, turning the runner's refusals into 4xx answers."""
    try:
        return await command
    except RunnerError as exc:
        raise ApiError(409, str(exc), field) from None
    except ScenarioError as exc:
        raise ApiError(400, str(exc), "scenario") from None
    except ConfigError as exc:
        raise ApiError(400, str(exc), "settings") from None


def check_values(
    known: Mapping[str, Param], values: Mapping[str, Any], prefix: str = ""
) -> dict[str, Any]:
    """Every value checked against its declared parameter; the first bad one is a 400."""
    checked: dict[str, Any] = {}
    for key, value in values.items():
        where = prefix + key
        p = known.get(key.lower())
        if p is None:
            names = ", ".join(sorted(known))
            raise ApiError(400, f"unknown parameter {key!r}; known: {names}", where)
        if p.start_only:
            raise ApiError(400, restart_needed(p.name), where)
        try:
            checked[p.name] = p.check(value, "the REST API")
        except ConfigError as exc:
            raise ApiError(400, str(exc), where) from None
    return checked


def overridden(config: Config, names: Iterable[str]) -> list[str]:
    """Warnings for names whose environment variable wins over run-time values."""
    out = []
    for name in names:
        found = config.lookup(name)
        if found is not None and found[1].startswith("environment"):
            out.append(f"{name}: {found[1]} overrides the value set here")
    return out


def config_rows(config: Config, names: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Parameters with value, source, default and description (secrets shown as ***)."""
    known = config.known()
    wanted = None if names is None else set(names)
    rows = []
    for name, value, source, description in config.describe():
        if wanted is not None and name not in wanted:
            continue
        p = known[name]
        rows.append(
            {
                "name": name,
                "value": value,  # describe() masks secrets
                "source": source,
                "default": None if p.default is REQUIRED else p.shown(p.default),
                "required": p.default is REQUIRED,
                "secret": p.is_secret,
                "settable": not p.start_only and p.update != READ_ONLY,
                "description": description,
            }
        )
    return rows


# -- handlers -----------------------------------------------------------------------------


async def get_status(api: Api, _request: web.Request) -> web.StreamResponse:
    return ok(await api.provider.status())


async def get_cluster(api: Api, _request: web.Request) -> web.StreamResponse:
    status = await api.provider.status()
    nodes = await api.provider.nodes()
    return ok({"role": status.get("role"), "count": len(nodes), "nodes": nodes})


async def list_scenarios(api: Api, _request: web.Request) -> web.StreamResponse:
    return ok({"scenarios": await asyncio.to_thread(api.store.index)})


async def get_scenario(api: Api, request: web.Request) -> web.StreamResponse:
    return ok(await api.store.get(request.match_info["name"]))


async def upload_scenario(api: Api, request: web.Request) -> web.StreamResponse:
    body = await read_body(request)
    only(body, ("name", "source", "replace"))
    name = string(body, "name", max_chars=200)
    source = string(body, "source", max_chars=MAX_BODY_BYTES)
    replace = boolean(body, "replace", False)
    return ok(await api.store.upload(name, source, replace), 201)


async def delete_scenario(api: Api, request: web.Request) -> web.StreamResponse:
    return ok(await asyncio.to_thread(api.store.delete, request.match_info["name"]))


async def run(api: Api, request: web.Request) -> web.StreamResponse:
    body = await read_body(request)
    only(body, ("scenario", "first", "last", "users", "comment", "settings"))
    name = api.store.check_name(string(body, "scenario", max_chars=200), "scenario")
    first, last = user_range(body)
    comment = string(body, "comment", default="", max_chars=MAX_COMMENT_CHARS)
    settings = obj(body, "settings")
    params = await api.store.params(name, "scenario")  # from the check: no import here
    known = {**api.config.known(), **{p.name: p for p in params}}
    checked = check_values(known, settings, "settings.")
    async with api.run_lock:
        current = await api.provider.status()  # the request is valid: does it fit the state?
        if current.get("state") in ("starting", "running", "stopping"):
            raise ApiError(
                409,
                f"scenario {current.get('scenario')!r} is {current['state']}: POST /api/stop first",
                "scenario",
            )
        result = await guarded(api.provider.do(name, first, last, checked, comment), "scenario")
    warnings = overridden(api.config, checked)
    return ok({**result, "warnings": warnings} if warnings else result)


async def add_users(api: Api, request: web.Request) -> web.StreamResponse:
    body = await read_body(request)
    only(body, ("count",))
    count = integer(body, "count", 1, MAX_USERS_PER_REQUEST)
    return ok(await guarded(api.provider.add(count), "count"))


async def remove_users(api: Api, request: web.Request) -> web.StreamResponse:
    body = await read_body(request)
    only(body, ("count", "force"))
    count = integer(body, "count", 1, MAX_USERS_PER_REQUEST)
    force = boolean(body, "force", False)
    return ok(await guarded(api.provider.remove(count, force), "count"))


async def stop(api: Api, request: web.Request) -> web.StreamResponse:
    only(await read_body(request), ())
    return ok(await guarded(api.provider.stop(), None))


async def get_config(api: Api, _request: web.Request) -> web.StreamResponse:
    return ok({"parameters": config_rows(api.config)})


async def set_config(api: Api, request: web.Request) -> web.StreamResponse:
    body = await read_body(request)
    if not body:
        raise ApiError(400, 'give at least one value, e.g. {"interarrival": 10}', "body")
    checked = check_values(api.config.known(), body)
    for name, value in checked.items():  # all checked first: a bad value sets nothing
        api.config.set(name, value)
    return ok(
        {
            "parameters": config_rows(api.config, checked),
            "warnings": overridden(api.config, checked),
        }
    )


async def get_metrics(api: Api, _request: web.Request) -> web.StreamResponse:
    snap = api.registry.snapshot()
    return ok({"time": snap.get("time"), "metrics": summary(snap)})


async def docs_page(api: Api, _request: web.Request) -> web.StreamResponse:
    return web.Response(text=api.page, content_type="text/html", charset="utf-8")


async def docs_document(api: Api, _request: web.Request) -> web.StreamResponse:
    return ok(api.document)


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "GET",
        "/api/status",
        get_status,
        summary="Status of this node",
        tag="node",
        description="Idle or running, which scenario since when, users, amoc's version.",
        errors=(401,),
    ),
    Endpoint(
        "GET",
        "/api/cluster",
        get_cluster,
        summary="The nodes of the cluster",
        tag="node",
        description="On a single node: just this node.",
        response="Cluster",
        errors=(401,),
    ),
    Endpoint(
        "GET",
        "/api/scenarios",
        list_scenarios,
        summary="List the scenarios",
        tag="scenarios",
        description="Uploaded scenarios replace bundled ones of the same name.",
        response="ScenarioList",
        errors=(401,),
    ),
    Endpoint(
        "GET",
        "/api/scenarios/{name}",
        get_scenario,
        summary="A scenario's source and declared parameters",
        tag="scenarios",
        description=(
            "None of its code runs: the parameters are those its check found "
            "(kept by the source's sha256)."
        ),
        response="Scenario",
        errors=(400, 401, 404),
        route="/api/scenarios/{name:.+}",  # any text, so that a bad name gets a clear 400
    ),
    Endpoint(
        "DELETE",
        "/api/scenarios/{name}",
        delete_scenario,
        summary="Delete an uploaded scenario",
        tag="scenarios",
        description=(
            "Removes the uploaded scenario; a bundled scenario it replaced is back. "
            "Bundled scenarios cannot be deleted."
        ),
        response="Deleted",
        errors=(400, 401, 404, 409),
        route="/api/scenarios/{name:.+}",
    ),
    Endpoint(
        "POST",
        "/api/scenarios",
        upload_scenario,
        summary="Upload a scenario",
        tag="scenarios",
        description=(
            f"Python source defining `start`, at most {MAX_SOURCE_BYTES // 1024} KiB. It is "
            "checked in a separate process (it compiles, imports within the time limit "
            "`scenario_check_timeout`, declares well-formed `PARAMETERS` and has `start`) "
            "before it is stored with the node's uploaded scenarios; none of its code runs "
            "in the node until `/api/run` starts it. A name that is a bundled scenario or an "
            "importable Python module is refused (409) unless `replace` is true."
        ),
        body="Upload",
        response="Uploaded",
        status=201,
        errors=(400, 401, 409, 413),
    ),
    Endpoint(
        "POST",
        "/api/run",
        run,
        summary="Run a scenario",
        tag="run",
        description=(
            "Start users `first`..`last` (or `users` users from `first`), one every "
            "interarrival ms, with run-time `settings` for any declared parameter."
        ),
        body="Run",
        errors=(400, 401, 404, 409, 413),
    ),
    Endpoint(
        "POST",
        "/api/add",
        add_users,
        summary="Add users",
        tag="run",
        description="Start `count` more users with the next ids.",
        body="Add",
        errors=(400, 401, 409, 413),
    ),
    Endpoint(
        "POST",
        "/api/remove",
        remove_users,
        summary="Remove users",
        tag="run",
        description=(
            "Remove the `count` newest users: at once with `force`, else each after its "
            "current run of start."
        ),
        body="Remove",
        response="Removed",
        errors=(400, 401, 409, 413),
    ),
    Endpoint(
        "POST",
        "/api/stop",
        stop,
        summary="Stop the scenario",
        tag="run",
        description="Stop every user, run the scenario's terminate, go back to idle.",
        errors=(400, 401),
    ),
    Endpoint(
        "GET",
        "/api/config",
        get_config,
        summary="Read the configuration",
        tag="config",
        description="Every known parameter: value, where it comes from, default, meaning.",
        response="ConfigRows",
        errors=(401,),
    ),
    Endpoint(
        "PATCH",
        "/api/config",
        set_config,
        summary="Set run-time values",
        tag="config",
        description=(
            "Every value is checked before any is set. An environment variable "
            "AMOC_<NAME> still wins over a run-time value (the answer warns)."
        ),
        body="ConfigValues",
        response="ConfigRows",
        errors=(400, 401, 413),
    ),
    Endpoint(
        "GET",
        "/api/metrics",
        get_metrics,
        summary="The node's metrics",
        tag="metrics",
        description="Counters, gauges and histogram percentiles, as metrics.show() prints.",
        response="Metrics",
        errors=(401,),
    ),
    Endpoint(
        "GET",
        "/api-docs",
        docs_page,
        summary="This documentation, as a page",
        tag="docs",
        response="Html",
        public=True,
    ),
    Endpoint(
        "GET",
        "/api-docs/openapi.json",
        docs_document,
        summary="The OpenAPI document",
        tag="docs",
        response="OpenApi",
        public=True,
    ),
)
