"""Deterministic JSON values that satisfy a JSON schema's shape: tool-call arguments and structured outputs.

Clients parse these and, in tests, validate them against the schema they sent, so every required property must be
present with the declared type (enums and consts respected). Optional properties are included too when a schema
marks none as required, so the value is never trivially empty.
"""

from __future__ import annotations

import random
from typing import Any

from simulator.text import phrase

_MAX_DEPTH = 6  # recursive schemas ($ref cycles are not resolved) must still terminate


def value_for(schema: Any, model: str, rng: random.Random, depth: int = 0) -> Any:
    """A value of the type ``schema`` describes; unknown or empty schemas get a short string."""
    if not isinstance(schema, dict):
        return phrase(model, rng.getrandbits(32), 3)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][rng.randrange(len(schema["enum"]))]
    for combinator in ("anyOf", "oneOf", "allOf"):
        options = schema.get(combinator)
        if isinstance(options, list) and options:
            return value_for(options[0], model, rng, depth + 1)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):  # e.g. ["string", "null"]: the first non-null type
        kind = next((k for k in kind if k != "null"), "null")
    if depth >= _MAX_DEPTH:
        kind = "null" if kind in ("object", "array") else kind
    if kind == "object":
        return object_for(schema, model, rng, depth)
    if kind == "array":
        count = max(int(schema.get("minItems", 1)), 1)
        return [value_for(schema.get("items"), model, rng, depth + 1) for _ in range(min(count, 3))]
    if kind == "integer":
        low = int(schema.get("minimum", 0))
        return rng.randint(low, max(int(schema.get("maximum", low + 100)), low))
    if kind == "number":
        low = float(schema.get("minimum", 0.0))
        return round(rng.uniform(low, max(float(schema.get("maximum", low + 100.0)), low)), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return phrase(model, rng.getrandbits(32), rng.randint(1, 4))


def object_for(schema: dict[str, Any], model: str, rng: random.Random, depth: int = 0) -> dict[str, Any]:
    """An object with every required property (all properties if none is required)."""
    properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    required = [name for name in schema.get("required") or () if isinstance(name, str)]
    names = required or list(properties)
    return {name: value_for(properties.get(name), model, rng, depth + 1) for name in names}


def json_object_reply(model: str, rng: random.Random) -> dict[str, Any]:
    """What a model asked for ``json_object`` without a schema answers: a small object with prose in it."""
    return {"answer": phrase(model, rng.getrandbits(32), rng.randint(8, 30)), "confidence": round(rng.random(), 2)}
