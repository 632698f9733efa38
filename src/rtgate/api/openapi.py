"""The admin API's OpenAPI 3.1 document, generated from its route table and msgspec structs.

OpenAPI 3.1 schemas are JSON Schema 2020-12, which is what msgspec emits
(``msgspec.json.schema_components``), so every schema here is msgspec's own output for the very
types that parse requests and render responses, with one correction: msgspec documents a
``Decimal`` as a string but reads a JSON number into it too, and the document says both
(``_decimals``). Only the envelope is assembled by hand: paths, parameters, statuses and the
security scheme, each read off an ``Operation``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import msgspec

from rtgate import __version__
from rtgate.api.operation import Operation
from rtgate.api.views import ErrorResponse

REF = "#/components/schemas/{name}"
SECURITY_SCHEME = "adminToken"
_PATH_PARAM = re.compile(r"\{(\w+)\}")


def openapi_document(operations: Sequence[Operation[Any, Any]], prefix: str) -> dict[str, Any]:
    wanted: list[type[msgspec.Struct]] = [ErrorResponse]
    for op in operations:
        wanted += [t for t in (op.body, op.response) if t is not None]
    types = list(dict.fromkeys(wanted))
    found, components = msgspec.json.schema_components(types, ref_template=REF)
    refs: dict[Any, dict[str, Any]] = dict(zip(types, found, strict=True))
    schemas: dict[str, Any] = _decimals(components)
    error = refs[ErrorResponse]

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
                "content": {"application/json": {"schema": refs[op.body]}},
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


def _query_parameters(model: type[msgspec.Struct] | None, schemas: dict[str, Any]) -> list[Any]:
    if model is None:
        return []
    (ref,), components = msgspec.json.schema_components([model], ref_template=REF)
    schema = components.pop(ref["$ref"].rpartition("/")[2])
    schemas.update(_decimals(components))
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
    """A query parameter cannot be null, only absent: drop the schema's ``null`` branch of an
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
        ok = refs[op.response]
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


def _decimals(node: Any) -> Any:
    """``node`` with each ``Decimal`` documented as what msgspec reads into it: a JSON number
    (within the bounds its field sets) or a decimal string."""
    if isinstance(node, list):
        return [_decimals(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _decimals(v) for k, v in node.items()}
    if node.get("format") == "decimal":
        number = {"type": "number", **{k: node.pop(k) for k in ("minimum", "maximum") if k in node}}
        del node["type"], node["format"]
        node["anyOf"] = [number, {"type": "string"}]
    if "anyOf" in node:
        # A nullable decimal (or expiry): one flat list of its branches.
        node["anyOf"] = [b for a in node["anyOf"] for b in _branches(a)]
    return node


def _branches(choice: dict[str, Any]) -> list[dict[str, Any]]:
    """``choice``'s own branches when it is nothing but a choice among them (a ``type`` beside
    them says what each of them says already); else ``choice`` itself."""
    inner = choice.get("anyOf")
    if inner is None or set(choice) - {"anyOf", "type"}:
        return [choice]
    if "type" in choice and any(b.get("type") != choice["type"] for b in inner):
        return [choice]
    return list(inner)
