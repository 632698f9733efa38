"""The admin API's OpenAPI 3.1 document, generated from its route table and pydantic models.

OpenAPI 3.1 schemas are JSON Schema 2020-12, which is what pydantic emits, so every schema here is
pydantic's own output: request models in validation mode (what is accepted), views in
serialization mode (what is sent). Only the envelope is assembled by hand: paths, parameters,
statuses and the security scheme, each read off an ``Operation``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from rtgate import __version__
from rtgate.api.operation import Operation
from rtgate.api.views import ErrorResponse

REF = "#/components/schemas/{model}"
SECURITY_SCHEME = "adminToken"
_PATH_PARAM = re.compile(r"\{(\w+)\}")


def openapi_document(operations: Sequence[Operation[Any, Any]], prefix: str) -> dict[str, Any]:
    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = [(ErrorResponse, "serialization")]
    for op in operations:
        if op.body is not None:
            wanted.append((op.body, "validation"))
        if op.response is not None:
            wanted.append((op.response, "serialization"))
    refs, top = models_json_schema(list(dict.fromkeys(wanted)), ref_template=REF)
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    error = refs[(ErrorResponse, "serialization")]

    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        entry: dict[str, Any] = {
            "operationId": op.operation_id,
            "summary": op.summary,
            "tags": [op.path.split("/")[1].removesuffix(".json")],
            "parameters": _path_parameters(op.path) + _query_parameters(op.query, schemas),
            "responses": _responses(op, refs, error),
        }
        if op.body is not None:
            entry["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": refs[(op.body, "validation")]}},
            }
        if not entry["parameters"]:
            del entry["parameters"]
        paths.setdefault(prefix + op.path, {})[op.method.lower()] = entry

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "rtgate admin API",
            "version": __version__,
            "description": "Keys, client secrets, usage and sessions of an rtgate gateway. "
            "Every route needs the operator's token (RTGATE_ADMIN_TOKEN) as a bearer token; "
            "without one configured, every route answers 404. Errors use OpenAI's error body.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                SECURITY_SCHEME: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The value of RTGATE_ADMIN_TOKEN.",
                }
            },
        },
        "security": [{SECURITY_SCHEME: []}],
    }


def _path_parameters(path: str) -> list[dict[str, Any]]:
    return [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PATH_PARAM.findall(path)
    ]


def _query_parameters(model: type[BaseModel] | None, schemas: dict[str, Any]) -> list[Any]:
    if model is None:
        return []
    schema = model.model_json_schema(ref_template=REF)
    schemas.update(schema.get("$defs", {}))
    required = set(schema.get("required", ()))
    out = []
    for name, prop in schema["properties"].items():
        prop = _absent_not_null(prop)
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required}
        if "description" in prop:
            param["description"] = prop.pop("description")
        prop.pop("title", None)
        param["schema"] = prop
        out.append(param)
    return out


def _absent_not_null(prop: dict[str, Any]) -> dict[str, Any]:
    """A query parameter cannot be null, only absent: drop pydantic's ``null`` branch of an
    optional field, and its ``None`` default."""
    prop = dict(prop)
    branches = [b for b in prop.pop("anyOf", ()) if b != {"type": "null"}]
    if len(branches) == 1:
        prop.update(branches[0])
    elif branches:
        prop["anyOf"] = branches
    if prop.get("default", "") is None:
        del prop["default"]
    return prop


_ERRORS = {
    "400": "The body is not valid JSON.",
    "401": "No admin token, or a wrong one.",
    "404": "The admin API is disabled (no RTGATE_ADMIN_TOKEN configured).",
    "413": "The body is too large.",
    "422": "A parameter or a body field is invalid.",
    "500": "The gateway's store failed.",
}


def _responses(
    op: Operation[Any, Any], refs: dict[Any, dict[str, Any]], error: dict[str, Any]
) -> dict[str, Any]:
    ok: dict[str, Any] = {"type": "object"}
    if op.response is not None:
        ok = refs[(op.response, "serialization")]
    if op.many:
        ok = {"type": "array", "items": ok}
    content: dict[str, Any] = {"application/json": {"schema": ok}}
    if op.csv:
        content["text/csv"] = {"schema": {"type": "string"}}
    out: dict[str, Any] = {str(op.status): {"description": op.summary, "content": content}}

    statuses = ["401", "404", "500"]
    if op.body is not None:
        statuses += ["400", "413", "422"]
    elif op.query is not None:
        statuses.append("422")
    for status in sorted(statuses):
        text = _ERRORS[status]
        if status == "404" and op.not_found:
            text = f"{text} Or: {op.not_found}"
        if status == "500" and op.server_error:
            text = f"{text} Or: {op.server_error}"
        out[status] = {
            "description": text,
            "content": {"application/json": {"schema": error}},
        }
    out["401"]["headers"] = {
        "WWW-Authenticate": {"required": True, "schema": {"type": "string"}},
    }
    return out
