"""``openapi.json``: the management API described from its route table and its pydantic models.

Paths, parameters and statuses come from ``ROUTES``; every body, answer and
error schema is the JSON Schema of the model the API validates or answers
with (``fluxauth.manage.schemas``), so the document says what is enforced.
OpenAPI 3.1 (whose schemas are JSON Schema 2020-12, as pydantic writes them).
"""

from __future__ import annotations

from typing import Any, get_args, get_origin

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from fluxauth.config.settings import Settings
from fluxauth.manage.routes import MAX_BODY, PREFIX, ROUTES, TOKEN_ID, Route
from fluxauth.manage.schemas import ErrorView
from fluxauth.names import KEY_SCHEMA, ORG_SCHEMA, REPO_SCHEMA

REF = "#/components/schemas/{model}"
ERRORS = {
    400: "The request cannot be read: framing, a body that is not a JSON object, conflicting credentials",
    401: "No credentials, or credentials that are not valid (rotated out, expired, unknown, wrong)."
    " The challenge is left out when the request has X-Requested-With.",
    403: "The key may not manage the org (no manage_org_users), or a cross-site browser request",
    404: "No such org (also for every org but the key's own), key, token, protocol or endpoint",
    408: "The body was not sent in time",
    409: "It exists already (a key's name), or the token is the key's current one",
    413: f"The body is larger than {MAX_BODY} bytes",
    415: "The body is not application/json",
    422: "A field, query parameter or path name is unknown, of the wrong type or out of range: `field` names it",
    429: "Too many failed attempts: retry after Retry-After seconds",
    503: "The store cannot be reached, or too much to do at once: retry after Retry-After seconds",
}
COMMON = (400, 401, 403, 404, 422, 429, 503)
BODY_ERRORS = (408, 413, 415)


def _models(routes: tuple[Route, ...]) -> list[tuple[type[BaseModel], Any]]:
    models: dict[type[BaseModel], Any] = {ErrorView: "serialization"}
    for route in routes:
        if route.body is not None:
            models[route.body] = "validation"
        answer = route.answer
        if answer is not None:
            model = get_args(answer)[0] if get_origin(answer) is list else answer
            models[model] = "serialization"
    return list(models.items())


def _ref(answer: Any) -> dict[str, Any]:
    if get_origin(answer) is list:
        return {"type": "array", "items": {"$ref": REF.format(model=get_args(answer)[0].__name__)}}
    return {"$ref": REF.format(model=answer.__name__)}


def _non_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema without the ``null`` of an optional field (absent is how it is left out)."""
    branches = schema.get("anyOf")
    if branches is None:
        return schema
    rest = {key: value for key, value in schema.items() if key != "anyOf"}
    kept = [branch for branch in branches if branch.get("type") != "null"]
    return {**rest, **kept[0]} if len(kept) == 1 else {**rest, "anyOf": kept}


def _path_parameter(name: str, settings: Settings) -> dict[str, Any]:
    schemas: dict[str, dict[str, Any]] = {
        "org": ORG_SCHEMA.json(),
        "name": KEY_SCHEMA.json(),
        "repo": REPO_SCHEMA.json(),
        "token_id": {"type": "string", "pattern": TOKEN_ID},
        "protocol": {"type": "string", "enum": list(settings.protocols)},
    }
    descriptions = {
        "org": "the org: only the key's own (any other answers 404)",
        "name": "the key's bare name (the key is name@org)",
        "repo": "a repo of the org",
        "token_id": "a token's id (ema_<token_id>_<secret>)",
        "protocol": "a compute protocol",
    }
    return {"name": name, "in": "path", "required": True, "schema": schemas[name], "description": descriptions[name]}


def _error(status: int) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": ERRORS[status],
        "content": {"application/json": {"schema": {"$ref": REF.format(model="ErrorView")}}},
    }
    if status == 401:
        answer["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "the Basic challenge"}}
    if status in (429, 503):
        answer["headers"] = {"Retry-After": {"schema": {"type": "string"}, "description": "seconds"}}
    return answer


def _operation(route: Route, settings: Settings) -> dict[str, Any]:
    parameters = [_path_parameter(name, settings) for name in route.params]
    if route.query is not None:
        properties = route.query.model_json_schema()["properties"]
        for name, property_schema in properties.items():
            cleaned = {
                key: value
                for key, value in _non_null(property_schema).items()
                if key != "title" and not (key == "default" and value is None)
            }
            description = cleaned.pop("description", None)
            parameter = {"name": name, "in": "query", "required": False, "schema": cleaned}
            if description:
                parameter["description"] = description
            parameters.append(parameter)
    success: dict[str, Any] = {"description": route.summary}
    if route.answer is not None:
        success["content"] = {"application/json": {"schema": _ref(route.answer)}}
    if route.status == 201:
        success["headers"] = {"Location": {"schema": {"type": "string"}, "description": "the new key's URL"}}
    errors = {*COMMON, *route.errors, *(BODY_ERRORS if route.body is not None else ())}
    operation: dict[str, Any] = {
        "operationId": route.name,
        "summary": route.summary,
        "parameters": parameters,
        "responses": {str(route.status): success, **{str(status): _error(status) for status in sorted(errors)}},
    }
    if route.body is not None:
        operation["requestBody"] = {
            "required": any(field.is_required() for field in route.body.model_fields.values()),
            "content": {"application/json": {"schema": {"$ref": REF.format(model=route.body.__name__)}}},
        }
    return operation


def openapi_document(settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the API as these settings configure it (their protocols)."""
    _, schemas = models_json_schema(_models(ROUTES), ref_template=REF)
    definitions: dict[str, Any] = schemas.get("$defs", {})
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault("/" + route.path, {})[route.method.lower()] = _operation(route, settings)
    paths["/openapi.json"] = {
        "get": {
            "operationId": "openapi",
            "summary": "This document (no credentials needed)",
            "security": [],
            "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {}}}}},
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "fluxauth management API",
            "version": "1",
            "description": "An org's admins manage its API keys (service accounts), compute services and repo"
            " visibility, and read its audit log. HTTP Basic: username the org, password a key of that org"
            " holding manage_org_users. Durations are strings such as 90d, 2h, 0s.",
        },
        "servers": [{"url": PREFIX}],
        "security": [{"basic": []}],
        "paths": paths,
        "components": {"schemas": definitions, "securitySchemes": {"basic": {"type": "http", "scheme": "basic"}}},
    }
