"""The OpenAPI 3.1 document of the API, built from the endpoint table."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from amoc import __version__
from amoc.api.routes import Endpoint
from amoc.api.store import MAX_SOURCE_BYTES
from amoc.api.validation import MAX_BODY_BYTES, MAX_COMMENT_CHARS, MAX_USERS_PER_REQUEST

ERRORS = {
    400: "Invalid request: `field` names what to fix; nothing running was changed",
    401: "No or wrong `Authorization: Bearer <token>` header (a token in the query is refused)",
    404: "No such scenario",
    409: (
        "Does not fit what runs now (a run is starting or running: the answer names it; "
        "nothing running; too few users), or an upload's name is taken (send replace)"
    ),
    413: f"Body over {MAX_BODY_BYTES // 1024} KiB or scenario over {MAX_SOURCE_BYTES // 1024} KiB",
}

DESCRIPTION = f"""Drive an amoc node: run scenarios, add and remove users, read and set
the configuration, read metrics.

Every call but this documentation needs the header `Authorization: Bearer <token>`:
the node's `api_token`, or, when none is configured, the random token the node
writes to `run/<node>/api_token` (readable by its owner only). A token in the query
string (`?token=`) is refused: query strings end up in logs and histories.

Errors are JSON: `{{"error": "what is wrong", "field": "the request field at fault"}}`.
Bodies are at most {MAX_BODY_BYTES // 1024} KiB; unknown fields are refused."""


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(kind: str) -> dict[str, Any]:
    return {"type": [kind, "null"]}


_USERS = {
    "type": "object",
    "properties": {
        name: {"type": "integer", "description": text}
        for name, text in (
            ("running", "users alive now"),
            ("stopping", "removed gently, finishing their run"),
            ("pending", "waiting for their start (interarrival)"),
            ("started", "started in this run"),
            ("finished", "done with their repeat_num runs"),
            ("removed", "removed by remove()"),
            ("failed_runs", "runs of start that raised"),
            ("runs", "runs of start"),
        )
    },
}

_STATUS = {
    "type": "object",
    "properties": {
        "node": {"type": "string"},
        "role": {"type": "string", "description": "standalone, master..."},
        "pid": {"type": "integer"},
        "version": {"type": "string", "description": "amoc's version"},
        "state": {"type": "string", "enum": ["idle", "running", "finished", "stopping"]},
        "scenario": _nullable("string"),
        "since": {**_nullable("number"), "description": "start of the run, Unix seconds"},
        "comment": {"type": "string"},
        "users": _ref("Users"),
        "next_id": {"type": "integer", "description": "the id add() gives next"},
        "warnings": {"type": "array", "items": {"type": "string"}},
    },
}

_NODE = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "host": {"type": "string"},
        "pid": {"type": "integer"},
        "up": {"type": "boolean"},
        "capacity": {"type": "number"},
        "last_heartbeat_s": {"type": "number"},
        "state": _nullable("string"),
        "scenario": _nullable("string"),
        "placed": {"type": "integer"},
        "running": {"type": "integer"},
        "pending": {"type": "integer"},
        "errors": {"type": "integer"},
        "downs": {"type": "integer"},
        "clock_offset_ms": {
            **_nullable("number"),
            "description": "its clock minus the master's (measured from the heartbeats; "
            "its TTDs are corrected by it), null until measured",
        },
        "clock_error_ms": {**_nullable("number"), "description": "the bound of that error"},
    },
}

_PARAMETER = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "default": {"description": "any JSON value; null when required"},
        "required": {"type": "boolean"},
        "description": {"type": "string"},
    },
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "field"],
        "properties": {"error": {"type": "string"}, "field": _nullable("string")},
        "example": {"error": "'last' (1) must be >= 'first' (9)", "field": "last"},
    },
    "Users": _USERS,
    "Status": _STATUS,
    "Removed": {
        "allOf": [
            _ref("Status"),
            {
                "type": "object",
                "properties": {
                    "removed": {"type": "array", "items": {"type": "integer"}},
                    "force": {"type": "boolean"},
                },
            },
        ]
    },
    "Cluster": {
        "type": "object",
        "properties": {
            "role": {"type": "string"},
            "count": {"type": "integer"},
            "nodes": {
                "type": "array",
                "description": "a master's slaves (Node); a standalone node's own status",
                "items": {"anyOf": [_ref("Node"), _ref("Status")]},
            },
        },
    },
    "Node": _NODE,
    "ScenarioList": {
        "type": "object",
        "properties": {
            "scenarios": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "origin": {"type": "string", "enum": ["uploaded", "bundled"]},
                        "description": {"type": "string"},
                    },
                },
            }
        },
    },
    "Parameter": _PARAMETER,
    "Scenario": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "origin": {"type": "string", "enum": ["uploaded", "bundled"]},
            "description": {"type": "string"},
            "source": {"type": "string"},
            "sha256": {"type": "string", "description": "of the source; its check is kept by it"},
            "parameters": {"type": "array", "items": _ref("Parameter")},
            "loadable": {"type": "boolean", "description": "its check passed"},
            "problem": {**_nullable("string"), "description": "why it does not load"},
            "replaces": {
                **_nullable("string"),
                "description": "for an upload: the bundled scenario or module it shadows",
            },
        },
    },
    "Deleted": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "deleted": {"type": "string", "enum": ["uploaded"]},
            "now": {
                **_nullable("string"),
                "description": "what the name is now: bundled (the original is back) or null",
            },
        },
    },
    "Upload": {
        "type": "object",
        "required": ["name", "source"],
        "additionalProperties": False,
        "properties": {
            "name": {
                "type": "string",
                "pattern": "^[A-Za-z][A-Za-z0-9_]*$",
                "description": "a Python module name: no path, no dots",
            },
            "source": {"type": "string", "maxLength": MAX_SOURCE_BYTES},
            "replace": {
                "type": "boolean",
                "default": False,
                "description": "allow a name that is a bundled scenario or a Python module",
            },
        },
        "example": {
            "name": "hello",
            "source": '"""Hello."""\nimport asyncio\n\n\nasync def start(user_id):\n'
            "    await asyncio.sleep(1)\n",
        },
    },
    "Uploaded": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "origin": {"type": "string"},
            "replaced": {**_nullable("string"), "description": "origin of the one replaced"},
            "size": {"type": "integer"},
            "sha256": {"type": "string"},
            "parameters": {"type": "array", "items": _ref("Parameter")},
        },
    },
    "Run": {
        "type": "object",
        "required": ["scenario"],
        "additionalProperties": False,
        "properties": {
            "scenario": {"type": "string"},
            "first": {"type": "integer", "minimum": 1, "default": 1},
            "last": {"type": "integer", "minimum": 1, "description": "not with users"},
            "users": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_USERS_PER_REQUEST,
                "description": "how many users from first; not with last",
            },
            "comment": {"type": "string", "maxLength": MAX_COMMENT_CHARS},
            "settings": {
                "type": "object",
                "description": "run-time values of declared parameters",
                "additionalProperties": True,
            },
        },
        "example": {
            "scenario": "dummy",
            "first": 1,
            "last": 10,
            "comment": "a first try",
            "settings": {"dummy_wait": 2000},
        },
    },
    "Add": {
        "type": "object",
        "required": ["count"],
        "additionalProperties": False,
        "properties": {"count": {"type": "integer", "minimum": 1}},
        "example": {"count": 10},
    },
    "Remove": {
        "type": "object",
        "required": ["count"],
        "additionalProperties": False,
        "properties": {
            "count": {"type": "integer", "minimum": 1},
            "force": {"type": "boolean", "default": False},
        },
        "example": {"count": 5, "force": True},
    },
    "ConfigValues": {
        "type": "object",
        "description": "parameter name to value",
        "additionalProperties": True,
        "example": {"interarrival": 20},
    },
    "ConfigRows": {
        "type": "object",
        "properties": {
            "parameters": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "value": {
                            "description": "the value in force (secrets: ***, and the "
                            "credentials of a URL)"
                        },
                        "source": {"type": "string"},
                        "default": {},
                        "required": {"type": "boolean"},
                        "secret": {"type": "boolean", "description": "never shown"},
                        "settable": {
                            "type": "boolean",
                            "description": "false for a start-only setting: set it in the "
                            "environment or priv/app.config and restart the node",
                        },
                        "description": {"type": "string"},
                    },
                },
            },
            "warnings": {"type": "array", "items": {"type": "string"}},
        },
    },
    "Metrics": {
        "type": "object",
        "properties": {
            "time": {"type": "number"},
            "metrics": {
                "type": "object",
                "description": "name to a number, or to count/mean/p50/p90/p99/max",
                "additionalProperties": True,
            },
        },
    },
    "OpenApi": {"type": "object", "description": "this document"},
}


def _operation(endpoint: Endpoint) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": endpoint.handler.__name__,
        "tags": [endpoint.tag],
        "summary": endpoint.summary,
    }
    if endpoint.description:
        op["description"] = endpoint.description
    if endpoint.public:
        op["security"] = []
    names = re.findall(r"{(\w+)}", endpoint.path)
    if names:
        op["parameters"] = [
            {"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names
        ]
    if endpoint.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(endpoint.body)}},
        }
    if endpoint.response == "Html":
        content: dict[str, Any] = {"text/html": {"schema": {"type": "string"}}}
    else:
        content = {"application/json": {"schema": _ref(endpoint.response)}}
    responses: dict[str, Any] = {str(endpoint.status): {"description": "OK", "content": content}}
    for code in endpoint.errors:
        responses[str(code)] = {
            "description": ERRORS[code],
            "content": {"application/json": {"schema": _ref("Error")}},
        }
    op["responses"] = responses
    return op


def document(endpoints: Sequence[Endpoint]) -> dict[str, Any]:
    """The OpenAPI document describing `endpoints`."""
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = _operation(endpoint)
    return {
        "openapi": "3.1.0",
        "info": {"title": "amoc REST API", "version": __version__, "description": DESCRIPTION},
        "security": [{"bearer": []}],
        "tags": [{"name": t} for t in dict.fromkeys(e.tag for e in endpoints)],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the node's api_token",
                }
            },
            "schemas": SCHEMAS,
        },
    }
