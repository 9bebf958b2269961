"""Golden-vector round trip for the generated pydantic v2 models (fluxy_types.py).

Run from this directory: ``python test_codegen.py``. Decodes every valid vector of
spec/examples into its type (client frames as ClientFrame, server frames as ServerFrame,
bodies by name), re-encodes it and compares byte for byte with the canonical form (the file
without insignificant whitespace), and checks that every schema-level invalid vector is
rejected. Prints one MEASURE line and a closing ``N passed, M failed`` line.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

import fluxy_types as ft
from fluxy_codec import SchemaError, decode, encode

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"
REPEAT = re.compile(r"\{\{repeat:(\d+):([^}]*)\}\}")


def minify(text: str) -> str:
    """The text without whitespace outside strings: the canonical form of a vector."""
    out: list[str] = []
    in_string = escaped = False
    for c in text:
        if in_string:
            out.append(c)
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
            out.append(c)
        elif c not in " \t\r\n":
            out.append(c)
    return "".join(out)


def expand(frame: str) -> str:
    return REPEAT.sub(lambda m: m.group(2) * int(m.group(1)), frame)


def model_for(direction: str, key: str) -> type[BaseModel]:
    if direction == "client":
        return ft.ClientFrame
    if direction == "server":
        return ft.ServerFrame
    model = getattr(ft, key)
    assert isinstance(model, type) and issubclass(model, BaseModel), key
    return model


def wire_type(value: BaseModel) -> str | None:
    inner: Any = getattr(value, "root", value)
    t = getattr(inner, "type", None)
    return t if isinstance(t, str) else None


def main() -> int:
    passed = failed = 0
    problems: list[str] = []
    valid = decoded = exact = 0
    for direction in ("client", "server", "http"):
        for path in sorted((EXAMPLES / direction).glob("*.json")):
            valid += 1
            key = path.name.split(".")[0]
            text = path.read_text(encoding="utf-8")
            try:
                value = decode(model_for(direction, key), text)
            except (SchemaError, ValidationError) as e:
                problems.append(f"{path.name}: not decoded: {e}")
                continue
            if direction != "http" and wire_type(value) != key:
                problems.append(f"{path.name}: decoded as {wire_type(value)}")
                continue
            decoded += 1
            got = encode(value)
            if got != minify(text):
                problems.append(f"{path.name}: re-encoded differently:\n got {got}\nwant {minify(text)}")
                continue
            exact += 1
    schema_level = rejected = decoder_only = pydantic_rejected = 0
    for path in sorted((EXAMPLES / "invalid").glob("*.json")):
        vec = json.loads(path.read_text(encoding="utf-8"))
        frame = expand(vec["frame"])
        model = model_for(vec["direction"], "")
        try:
            model.model_validate_json(frame)
            pydantic_alone = False
        except ValidationError:
            pydantic_alone = True
        try:
            decode(model, frame)
            accepted = True
        except (SchemaError, ValidationError):
            accepted = False
        if vec.get("schemaValid"):
            decoder_only += 1
            if not accepted:
                problems.append(f"{path.name}: marked schemaValid but rejected")
            continue
        schema_level += 1
        pydantic_rejected += pydantic_alone
        if accepted:
            problems.append(f"{path.name}: accepted")
        else:
            rejected += 1
    for ok, what in [
        (decoded == valid, "every valid vector decodes into its type"),
        (exact == valid, "every valid vector re-encodes byte-exact"),
        (rejected == schema_level, "every schema-level invalid vector is rejected"),
        (wire_details(problems), "null, absent, timestamps, unknown fields, unknown types"),
    ]:
        if ok:
            passed += 1
        else:
            failed += 1
            problems.append(f"FAILED: {what}")
    print("\n".join(problems))
    print(
        f"MEASURE python: valid decoded {decoded}/{valid}, re-encoded byte-exact {exact}/{valid}, "
        f"schema-level invalid rejected {rejected}/{schema_level} "
        f"(pydantic alone: {pydantic_rejected}/{schema_level}) "
        f"({decoder_only} decoder-only vectors accepted by the schema, as marked)"
    )
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


def wire_details(problems: list[str]) -> bool:
    ok = True
    row = (
        '{"id":1,"roomId":"r","userId":"u","senderId":"u","content":"c",'
        '"createdAt":"2026-11-26T16:19:14.670Z","parentId":null,"editedAt":null,'
        '"seq":1,"version":1,"attachments":[]}'
    )
    record = ft.MessageRecord.model_validate_json(row[:-1] + ',"future":1}')
    if encode(record) != row:
        problems.append(f"MessageRecord: {encode(record)}")
        ok = False
    ack = '{"type":"ack","ref":"r1","id":7,"seq":7,"createdAt":"2026-11-26T16:19:14.600Z"}'
    frame = ft.ServerFrame.model_validate_json(ack)
    if encode(frame) != ack or not isinstance(frame.root, ft.AckFrame):
        problems.append(f"ack: {encode(frame)}")
        ok = False
    for bad in ("2026-11-26T16:19:14.67Z", "2026-13-26T16:19:14.677Z", "2026-11-26T16:19:14.677000Z"):
        try:
            ft.Timestamp.model_validate(bad)
            problems.append(f"Timestamp accepted {bad}")
            ok = False
        except ValidationError:
            pass
    try:
        ft.ServerFrame.model_validate_json('{"type":"future_frame"}')
        ok = False
    except ValidationError as e:
        # FX-VER-5: recognisable, so a client can skip the frame.
        if e.errors()[0]["type"] != "union_tag_invalid":
            problems.append(f"unknown type: {e.errors()[0]['type']}")
            ok = False
    return ok


if __name__ == "__main__":
    sys.exit(main())
