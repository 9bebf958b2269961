"""Decode and encode helpers for the generated models in fluxy_types.py (hand-written).

pydantic checks every type, pattern, length and range of the schema, but not the one
conditional rule (a ``stream`` frame with ``op`` delta, end or abort needs ``messageId``, and
delta and end need non-empty ``content``): ``decode`` also validates against the schema bundle
with the ``jsonschema`` package, so it rejects exactly what the schema rejects.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import TypeVar

from jsonschema import Draft202012Validator
from pydantic import BaseModel

BUNDLE = Path(__file__).resolve().parent.parent.parent / "schema" / "fluxy-v1.schema.json"
M = TypeVar("M", bound=BaseModel)


class SchemaError(ValueError):
    """The document breaks the schema of the definition it was decoded as."""


@cache
def _validator(definition: str) -> Draft202012Validator:
    bundle = json.loads(BUNDLE.read_text(encoding="utf-8"))
    schema = {"$schema": bundle["$schema"], "$defs": bundle["$defs"], "$ref": f"#/$defs/{definition}"}
    return Draft202012Validator(schema)


def decode(model: type[M], text: str, definition: str | None = None) -> M:
    """Validate ``text`` against the schema definition (default: the model's name), then parse
    it into ``model``. Raises ``SchemaError`` or pydantic's ``ValidationError``."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise SchemaError(f"not JSON: {e}") from e
    error = next(iter(_validator(definition or model.__name__).iter_errors(doc)), None)
    if error is not None:
        raise SchemaError(f"{error.json_path}: {error.message}")
    return model.model_validate_json(text)


def encode(value: BaseModel) -> str:
    """Canonical encoding: wire names, only the fields that were set (absent stays absent, an
    explicit null stays null), fields in schema (wire) order, compact, UTF-8 unescaped."""
    return value.model_dump_json(by_alias=True, exclude_unset=True)
