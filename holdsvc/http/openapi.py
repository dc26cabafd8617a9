"""The OpenAPI 3.1 document and the docs page, built from the routes table (api.ENDPOINTS) and
the msgspec types that decode requests and describe answers: nothing here is written twice."""

from __future__ import annotations

from typing import Any

import msgspec
import orjson
from aiohttp import web

from holdsvc.domain.access import Action
from holdsvc.domain.bookings import REPLAYED_HEADER
from holdsvc.http import schemas
from holdsvc.http.auth import action_of, requires
from holdsvc.http.bodies import HoldIn
from holdsvc.http.middleware import IDEMPOTENCY_HEADER
from holdsvc.http.routes import ENDPOINTS, Endpoint

_REF = "#/components/schemas/{name}"

# What any route may answer besides its own answers.
_ANY_ROUTE = {503: "Redis or SQL unavailable; retry after Retry-After seconds"}
_ANY_POST = {
    400: "Bad input: the error names the field or problem",
    409: "A request with this Idempotency-Key is still running",
    413: "Body over the size limit",
    415: "Content-Type is not application/json",
    422: "Idempotency-Key reused with a different request",
}


# Response headers, declared once and named by the answers that carry them.
_HEADERS = {
    "X-Request-ID": "The request's id (the client's X-Request-ID when it sent a valid one)",
    "Retry-After": "Seconds to wait before retrying",
    "Location": "Where the created resource is",
}


def _tag(e: Endpoint) -> str:
    if e.path.startswith("/api/flights"):
        return "flights"
    if e.path.startswith("/api/bookings"):
        return "bookings"
    return "operations"


def build_spec() -> dict[str, Any]:
    types: list[Any] = [schemas.Error, *schemas.HOLD_SHAPES]
    for e in ENDPOINTS:
        if e.body is not None and e.body is not HoldIn:  # documented as its three shapes
            types.append(e.body)
        types.extend(answer for answer, _ in e.answers.values())
    refs, components = msgspec.json.schema_components(types, ref_template=_REF)
    ref = {t_repr: r for t_repr, r in zip(map(repr, types), refs, strict=True)}
    paths: dict[str, dict[str, Any]] = {}
    for e in ENDPOINTS:
        paths.setdefault(e.path, {})[e.method.lower()] = _operation(e, ref)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "holdsvc",
            "version": "0.1.0",
            "description": (
                "Seat holds in Redis, bookings durable in SQL. Every refused move answers 409 "
                '{"error": "Invalid state transition from X to Y"} and changes nothing.'
            ),
        },
        "tags": [
            {"name": "flights", "description": "Flights and their live seat maps"},
            {"name": "bookings", "description": "Holds, payments, cancellations, refunds"},
            {"name": "operations", "description": "Liveness, readiness and health"},
        ],
        "paths": paths,
        "components": {
            "headers": {
                name: {"description": text, "schema": {"type": "string"}}
                for name, text in _HEADERS.items()
            },
            "schemas": components,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key of --api-keys (role admin or client); not"
                    " needed when the service runs without keys (loopback only)",
                }
            },
        },
    }


def _operation(e: Endpoint, ref: dict[str, Any]) -> dict[str, Any]:
    error = ref[repr(schemas.Error)]
    responses: dict[str, Any] = {}
    extra = {**_ANY_ROUTE, **(_ANY_POST if e.method == "POST" else {})}
    for status, description in extra.items():
        responses[str(status)] = _json(description, error)
    action = action_of(e.handler)
    if action is not None:
        responses["401"] = _json("No API key, or an unknown one", error)
        responses["403"] = _json(f"This key's role may not {action}", error)
    for status, (answer, description) in e.answers.items():
        media = e.media_type if status < 300 else "application/json"
        responses[str(status)] = _json(description, ref[repr(answer)], media)
    for code, response in responses.items():
        headers = response.setdefault("headers", {})
        headers["X-Request-ID"] = {"$ref": "#/components/headers/X-Request-ID"}
        if code in ("429", "503"):
            headers["Retry-After"] = {"$ref": "#/components/headers/Retry-After"}
        if code == "201":
            headers["Location"] = {"$ref": "#/components/headers/Location"}
    op: dict[str, Any] = {
        "operationId": e.handler.__name__,
        "summary": e.summary,
        "tags": [_tag(e)],
        "responses": responses,
    }
    if action is not None:
        op["security"] = [{"bearer": []}]
    params = [
        {"name": name, "in": "path", "required": True, "schema": _path_schema(name)}
        for name in ("flight_id", "booking_id")
        if "{" + name + "}" in e.path
    ]
    params.extend(
        {"name": name, "in": "header", "required": False, "description": text,
         "schema": {"type": "string"}}
        for name, text in e.request_headers
    )  # fmt: skip
    if e.method == "POST":
        params.append(
            {
                "name": IDEMPOTENCY_HEADER,
                "in": "header",
                "required": False,
                "description": "Replays the first answer for the same key and body, 24 h",
                "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$"},
            }
        )
        for response in responses.values():
            response.setdefault("headers", {})[REPLAYED_HEADER] = {
                "description": "true when this is a replay of the first answer",
                "schema": {"type": "string"},
            }
    if params:
        op["parameters"] = params
    if e.body is not None:
        if e.body is HoldIn:
            schema = {"oneOf": [ref[repr(shape)] for shape in schemas.HOLD_SHAPES]}
        else:
            schema = ref[repr(e.body)]
        op["requestBody"] = {
            "required": not e.body_optional,
            "content": {"application/json": {"schema": schema}},
        }
    return op


def _json(
    description: str, schema: dict[str, Any], media: str = "application/json"
) -> dict[str, Any]:
    return {"description": description, "content": {media: {"schema": schema}}}


def _path_schema(name: str) -> dict[str, Any]:
    if name == "flight_id":
        return {"type": "integer", "minimum": 0}
    return {"type": "string", "minLength": 1, "maxLength": 64}


_DOCS_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>holdsvc API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head>
<body><div id="ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#ui"});</script>
</body></html>
"""


def add_docs(app: web.Application) -> None:
    """/openapi.json, and /docs rendering it with Swagger UI served from a Python package (no
    CDN: the page works with no internet access)."""
    from openapi_ui_bundles import swagger_ui

    spec = orjson.dumps(build_spec())

    @requires(Action.ADMIN_VIEWS)
    async def openapi(request: web.Request) -> web.Response:
        return web.Response(body=spec, content_type="application/json")

    @requires(Action.ADMIN_VIEWS)
    async def docs(request: web.Request) -> web.Response:
        return web.Response(text=_DOCS_PAGE, content_type="text/html")

    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/docs", docs)
    app.router.add_static("/docs/static", swagger_ui.static_path)
