#!/usr/bin/env python3
"""Fluxy v1 zoo server: an independent implementation written from spec/fluxy-v1.md,
spec/schema/ and spec/examples/ only (Python 3.11 standard library, no pip packages).

    python3 fluxy_zoo.py [--port 0] [--profile full|core] [--alternatives]
                         [--db PATH | --memory] [--seed S] [--idle-timeout-ms N]

Once listening it prints one JSON line (the `fluxy-server --dev` line) on stdout.
See conformance/zoo/README.md for the profiles and the alternatives taken.
"""

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import math
import os
import re
import secrets
import signal
import sqlite3
import struct
import sys
import time
import urllib.parse
from datetime import datetime, timezone
from http import HTTPStatus

PROTOCOL_VERSION = "1.0"
SERVER_VERSION = "zoo-0.1.0"
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}\Z")
CMID_RE = re.compile(r"^[A-Za-z0-9_-]{8,128}\Z")
# Unicode White_Space (what "whitespace" means for trimming; str.strip() would also strip U+001C..U+001F).
WHITESPACE = (
    "\u0009\u000a\u000b\u000c\u000d\u0020\u0085\u00a0\u1680\u2000\u2001\u2002\u2003\u2004"
    "\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
TOKEN_ROLES = ("owner", "admin", "moderator", "member", "agent")
MEMBER_ROLES = ("owner", "admin", "moderator", "member")
ROOM_TYPES = ("dm", "group", "public", "announcement")
TIMELINE_TYPES = (
    "message", "edit", "delete", "reaction", "read", "agentRun", "tool_call", "tool_result",
    "tool_error", "approval_request", "approval_decision",
)
CORE_FRAMES = {"ping", "message", "resume", "auth"}
ALL_FRAMES = CORE_FRAMES | {
    "edit", "delete", "reaction", "read", "typing", "stream", "agentRun", "tool_call",
    "tool_result", "tool_error", "approval_request", "approval_decision", "agentTyping",
}
AGENT_FRAMES = {"agentRun", "tool_call", "tool_result", "tool_error", "approval_request", "agentTyping"}
RETRYABLE = {"rate_limited", "internal_error", "unavailable"}
HTTP_STATUS = {
    "malformed_frame": 400, "invalid_frame": 400, "unknown_type": 400, "payload_too_large": 413,
    "binary_not_supported": 400, "invalid_content": 400, "unauthorized": 401,
    "token_expired": 401, "invalid_api_key": 401, "forbidden": 403, "not_member": 403,
    "not_found": 404, "method_not_allowed": 405, "not_acceptable": 406, "conflict": 409,
    "invalid_state": 409, "resync_required": 409, "unsupported_version": 426,
    "rate_limited": 429, "invalid_cursor": 400, "internal_error": 500, "unavailable": 503,
}
CLOSE_REASON = {
    1000: "normal", 1001: "going_away", 1009: "message_too_big", 1011: "internal_error",
    1012: "service_restart", 4000: "heartbeat_timeout", 4001: "terminated", 4003: "forbidden",
    4004: "unauthorized", 4005: "token_expired", 4008: "rate_limited",
    4009: "unsupported_version", 4010: "protocol_violation", 4404: "room_not_found",
}
HANDSHAKE_CLOSE = {
    "unauthorized": 4004, "token_expired": 4005, "not_member": 4003, "not_found": 4404,
    "unsupported_version": 4009, "forbidden": 4003,
}
HTTP_BODY_LIMIT = 1 << 20
JSON_CT = "application/json"


class Cfg:
    """Run-wide settings chosen from the command line."""

    profile = "full"
    alternatives = False
    max_frame_bytes = 1 << 20
    rate_burst = 200
    rate_per_second = 100
    resume_window = 1000
    max_page_limit = 500
    replay_page = 500
    idle_timeout_ms = 8000
    heartbeat_ms = 3000
    skew_s = 0
    http_burst = 400
    http_rate = 400.0
    invalid_close_after = 0   # 0: never close for invalid frames
    ratelimit_close_after = 0  # 0: never close for rate abuse


CFG = Cfg()


def full():
    return CFG.profile == "full"


# ---------------------------------------------------------------------------------------------
# small helpers


def now_ms():
    return int(time.time() * 1000)


def ts(ms):
    d = datetime.fromtimestamp(ms // 1000, tz=timezone.utc)
    return d.strftime("%Y-%m-%dT%H:%M:%S") + ".%03dZ" % (ms % 1000)


def dumps(obj):
    try:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64u_dec(s):
    """Strict, canonical base64url (no padding); None when invalid."""
    if not isinstance(s, str) or not re.fullmatch(r"[A-Za-z0-9_-]*", s) or len(s) % 4 == 1:
        return None
    try:
        raw = base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
    except Exception:
        return None
    if b64u(raw) != s:
        return None
    return raw


def is_uint(v):
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < (1 << 64)


def good_str(s):
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def trim(s):
    return s.strip(WHITESPACE)


def msg_text(key, default):
    """Human-readable error texts; the alternatives server words them differently (FX-ERR-2)."""
    if CFG.alternatives:
        return "zoo/alt: %s (%s)" % (key.replace("_", " "), default.upper())
    return default


class FxError(Exception):
    def __init__(self, code, message=None, field=None, retry_after=None):
        super().__init__(code)
        self.code = code
        self.message = message or code.replace("_", " ")
        self.field = field
        self.retry_after = retry_after


def err_obj(e, ref=None, frame=True):
    message = msg_text(e.code, e.message)
    if frame:
        out = {"type": "error", "code": e.code}
    else:
        out = {"error": e.code}
    out["message"] = message
    out["retryable"] = e.code in RETRYABLE
    if e.retry_after is not None:
        out["retryAfterMs"] = e.retry_after
    if ref is not None:
        out["ref"] = ref
    field = e.field
    if CFG.alternatives and e.code not in ("invalid_frame", "invalid_cursor"):
        # FX-ERR-1: `field` is optional, except where FX-FRM-3 (invalid_frame) and FX-HIS-11
        # (invalid_cursor naming `before`) ask to name it.
        field = None
    if field is not None:
        out["field"] = field
    return out


# ---------------------------------------------------------------------------------------------
# field validation (raises FxError invalid_frame naming the field)


def bad(field, why="is missing or has the wrong type"):
    return FxError("invalid_frame", "%s %s" % (field, why), field)


def req_str(d, k, lo=1, hi=None):
    v = d.get(k)
    if not isinstance(v, str) or not good_str(v):
        raise bad(k)
    n = len(v)
    if n < lo or (hi is not None and n > hi):
        raise bad(k, "must be %d to %s characters" % (lo, hi))
    return v


def opt_str(d, k, lo=0, hi=None):
    if d.get(k) is None:
        return None
    return req_str(d, k, lo, hi)


def req_uint(d, k):
    v = d.get(k)
    if not is_uint(v):
        raise bad(k, "must be a non-negative integer")
    return v


def opt_uint(d, k):
    if d.get(k) is None:
        return None
    return req_uint(d, k)


def req_bool(d, k):
    v = d.get(k)
    if not isinstance(v, bool):
        raise bad(k, "must be a boolean")
    return v


def opt_cmid(d):
    v = d.get("clientMessageId")
    if v is None:
        return None
    if not isinstance(v, str) or not CMID_RE.match(v):
        raise bad("clientMessageId", "must match ^[A-Za-z0-9_-]{8,128}$")
    return v


def check_content(text, field="content", allow_empty=False):
    t = trim(text)
    if (not t and not allow_empty) or len(t) > 4000:
        raise FxError("invalid_content", "content must be 1 to 4000 characters after trimming", field)
    return t


def opt_attachments(d):
    v = d.get("attachments")
    if v is None:
        return None
    if not isinstance(v, list):
        raise bad("attachments")
    if len(v) > 10:
        raise bad("attachments", "at most 10 attachments")
    out = []
    for a in v:
        if not isinstance(a, dict):
            raise bad("attachments")
        url = a.get("url")
        if not isinstance(url, str) or not good_str(url):
            raise bad("url")
        if len(url) > 2048 or not re.match(r"^https?://", url) or len(url) < 1:
            raise bad("attachments", "url must be http(s) and at most 2048 characters")
        item = {"url": url}
        for k in ("name", "contentType"):
            if a.get(k) is not None:
                item[k] = req_str(a, k, 0, 255)
        if a.get("sizeBytes") is not None:
            item["sizeBytes"] = req_uint(a, "sizeBytes")
        out.append(item)
    return out


def get_ref(d):
    """(ref, ok): the echoable ref, and whether the frame's ref (if any) is valid."""
    v = d.get("ref")
    if v is None:
        return None, True
    if isinstance(v, str) and 1 <= len(v) <= 128 and good_str(v):
        return v, True
    return None, False


# ---------------------------------------------------------------------------------------------
# JWT (HS256) and cursors


def jwt_encode(claims, secret):
    head = b64u(b'{"alg":"HS256","typ":"JWT"}')
    body = b64u(dumps(claims))
    mac = hmac.new(secret, ("%s.%s" % (head, body)).encode("ascii"), hashlib.sha256).digest()
    return "%s.%s.%s" % (head, body, b64u(mac))


def jwt_verify(token):
    """Verified claims dict {sub, tid, roles, exp}; raises FxError unauthorized/token_expired."""
    bad_tok = FxError("unauthorized", "invalid token")
    if not isinstance(token, str) or token.count(".") != 2:
        raise bad_tok
    h, p, s = token.split(".")
    hr, pr = b64u_dec(h), b64u_dec(p)
    if hr is None or pr is None:
        raise bad_tok
    try:
        header = json.loads(hr)
        claims = json.loads(pr)
    except Exception:
        raise bad_tok
    if not isinstance(header, dict) or header.get("alg") != "HS256" or not isinstance(claims, dict):
        raise bad_tok
    tid = claims.get("tid")
    if not isinstance(tid, str) or not ID_RE.match(tid) or tid not in STORE.tenants:
        raise bad_tok
    secret = STORE.tenants[tid]["secret"]
    mac = hmac.new(secret, ("%s.%s" % (h, p)).encode("ascii"), hashlib.sha256).digest()
    if not hmac.compare_digest(b64u(mac), s):
        raise bad_tok
    sub = claims.get("sub")
    if not isinstance(sub, str) or not ID_RE.match(sub):
        raise bad_tok
    exp = claims.get("exp")
    if not isinstance(exp, int) or isinstance(exp, bool):
        raise FxError("unauthorized", "token exp missing or not an integer")
    now = time.time()
    nbf = claims.get("nbf")
    if nbf is not None:
        if not isinstance(nbf, (int, float)) or isinstance(nbf, bool):
            raise bad_tok
        if nbf > now + CFG.skew_s:
            raise FxError("unauthorized", "token not yet valid")
    if exp + CFG.skew_s <= now:
        raise FxError("token_expired", "token expired")
    roles = claims.get("roles")
    if roles is None:
        roles = ["member"]
    if not isinstance(roles, list) or not all(isinstance(r, str) and good_str(r) for r in roles):
        raise bad_tok
    return {"sub": sub, "tid": tid, "roles": list(roles), "exp": exp}


CURSOR_KINDS = {"b": 1, "f": 2, "legacy": 3}


def cursor_make(kind, tenant, room, pos):
    t, r = tenant.encode(), room.encode()
    payload = struct.pack("!BBQ", 1, CURSOR_KINDS[kind], pos) + bytes([len(t)]) + t + bytes([len(r)]) + r
    mac = hmac.new(STORE.cursor_key, payload, hashlib.sha256).digest()[:16]
    return b64u(payload + mac)


def cursor_read(text, kinds, tenant, room, field="cursor"):
    e = FxError("invalid_cursor", "malformed, forged or foreign cursor", field)
    raw = b64u_dec(text)
    if raw is None or len(raw) < 10 + 2 + 16:
        raise e
    payload, mac = raw[:-16], raw[-16:]
    if not hmac.compare_digest(hmac.new(STORE.cursor_key, payload, hashlib.sha256).digest()[:16], mac):
        raise e
    try:
        ver, kind, pos = struct.unpack("!BBQ", payload[:10])
        lt = payload[10]
        t = payload[11:11 + lt].decode()
        lr = payload[11 + lt]
        r = payload[12 + lt:12 + lt + lr].decode()
        if 12 + lt + lr != len(payload):
            raise ValueError
    except Exception:
        raise e
    names = {v: k for k, v in CURSOR_KINDS.items()}
    if ver != 1 or names.get(kind) not in kinds or t != tenant or r != room:
        raise e
    return names[kind], pos


# ---------------------------------------------------------------------------------------------
# storage


class Room:
    def __init__(self, tenant, rid, name, rtype, created_by, created_at):
        self.tenant, self.id, self.name, self.type = tenant, rid, name, rtype
        self.created_by, self.created_at = created_by, created_at
        self.members = {}  # user -> {"role", "joinedAt"}
        self.events = []  # index seq-1 -> event dict
        self.msgs = {}  # id -> message state
        self.reads = {}  # user -> position
        self.runs = {}  # (agent, runId) -> run state
        self.idem = {}  # (user, key) -> {"id","seq","createdAt","event"}
        self.conns = []  # live WebSocket connections (in open order)
        self.sse = []  # live SSE streams
        self.waiters = []  # long-poll futures

    @property
    def seq(self):
        return len(self.events)

    def room_json(self):
        return {"id": self.id, "name": self.name, "type": self.type,
                "createdBy": self.created_by, "createdAt": self.created_at}

    def apply(self, ev):
        """Update derived state from one committed timeline event."""
        t = ev["type"]
        if t == "message":
            self.msgs[ev["id"]] = {
                "author": ev["userId"], "content": ev["content"], "version": 1,
                "deleted": False, "streaming": bool(ev.get("streaming")),
                "createdAt": ev["createdAt"], "editedAt": None, "event": ev, "reactions": {},
            }
        elif t == "edit":
            m = self.msgs[ev["id"]]
            m["content"], m["version"], m["editedAt"] = ev["content"], ev["version"], ev["editedAt"]
            m["streaming"] = bool(ev.get("streaming"))
        elif t == "delete":
            m = self.msgs[ev["id"]]
            m["deleted"], m["version"], m["streaming"] = True, ev["version"], False
        elif t == "reaction":
            rs = self.msgs[ev["messageId"]]["reactions"]
            key = (ev["userId"], ev["emoji"])
            if ev["op"] == "add":
                rs[key] = True
            else:
                rs.pop(key, None)
        elif t == "read":
            self.reads[ev["userId"]] = ev["messageId"]
        elif t == "agentRun":
            key = (ev["agentId"], ev["runId"])
            run = self.runs.setdefault(key, {"status": None, "calls": {}, "approvals": {}})
            run["status"] = ev["status"]
        elif t == "tool_call":
            self.runs[(ev["agentId"], ev["runId"])]["calls"][ev["toolCallId"]] = "pending"
        elif t in ("tool_result", "tool_error"):
            self.runs[(ev["agentId"], ev["runId"])]["calls"][ev["toolCallId"]] = "done"
        elif t == "approval_request":
            self.runs[(ev["agentId"], ev["runId"])]["approvals"][ev["approvalId"]] = "pending"
        elif t == "approval_decision":
            run = self.runs.get((ev.get("agentId"), ev["runId"]))
            if run is not None:
                run["approvals"][ev["approvalId"]] = "done"


class Store:
    def __init__(self, path):
        self.rooms = {}  # (tenant, id) -> Room
        self.tenants = {}  # tid -> {"secret": bytes}
        self.key_hashes = {}  # sha256 hex -> tid
        self.db = None
        if path:
            self.db = sqlite3.connect(path, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(
                """
                CREATE TABLE IF NOT EXISTS meta(k TEXT PRIMARY KEY, v TEXT);
                CREATE TABLE IF NOT EXISTS tenants(id TEXT PRIMARY KEY, secret TEXT);
                CREATE TABLE IF NOT EXISTS api_keys(hash TEXT PRIMARY KEY, tenant TEXT);
                CREATE TABLE IF NOT EXISTS rooms(tenant TEXT, id TEXT, name TEXT, type TEXT,
                    created_by TEXT, created_at TEXT, PRIMARY KEY(tenant, id));
                CREATE TABLE IF NOT EXISTS members(tenant TEXT, room TEXT, user TEXT, role TEXT,
                    joined_at TEXT, PRIMARY KEY(tenant, room, user));
                CREATE TABLE IF NOT EXISTS events(tenant TEXT, room TEXT, seq INTEGER, json TEXT,
                    PRIMARY KEY(tenant, room, seq));
                CREATE TABLE IF NOT EXISTS idem(tenant TEXT, room TEXT, user TEXT, key TEXT,
                    json TEXT, PRIMARY KEY(tenant, room, user, key));
                """
            )
            row = self.db.execute("SELECT v FROM meta WHERE k='cursor_key'").fetchone()
            if row:
                self.cursor_key = bytes.fromhex(row[0])
            else:
                self.cursor_key = secrets.token_bytes(32)
                self.db.execute("INSERT INTO meta VALUES('cursor_key', ?)", (self.cursor_key.hex(),))
            self.load()
        else:
            self.cursor_key = secrets.token_bytes(32)

    def load(self):
        for tid, secret in self.db.execute("SELECT id, secret FROM tenants"):
            self.tenants[tid] = {"secret": secret.encode()}
        for h, tid in self.db.execute("SELECT hash, tenant FROM api_keys"):
            self.key_hashes[h] = tid
        for row in self.db.execute("SELECT tenant, id, name, type, created_by, created_at FROM rooms"):
            self.rooms[(row[0], row[1])] = Room(*row)
        for t, r, u, role, j in self.db.execute("SELECT tenant, room, user, role, joined_at FROM members"):
            self.rooms[(t, r)].members[u] = {"role": role, "joinedAt": j}
        for t, r, seq, js in self.db.execute("SELECT tenant, room, seq, json FROM events ORDER BY tenant, room, seq"):
            room = self.rooms[(t, r)]
            ev = json.loads(js)
            assert ev["seq"] == room.seq + 1, "gap in stored events"
            agent = ev.pop("_agent", None)
            room.events.append(ev)
            room.apply(dict(ev, _agent=agent) if agent is not None else ev)
        for t, r, u, k, js in self.db.execute("SELECT tenant, room, user, key, json FROM idem"):
            self.rooms[(t, r)].idem[(u, k)] = json.loads(js)

    def add_tenant(self, tid, secret, api_keys):
        self.tenants[tid] = {"secret": secret.encode()}
        hashes = [hashlib.sha256(k.encode()).hexdigest() for k in api_keys]
        for h in hashes:
            self.key_hashes[h] = tid
        if self.db:
            self.db.execute("INSERT OR REPLACE INTO tenants VALUES(?, ?)", (tid, secret))
            for h in hashes:
                self.db.execute("INSERT OR REPLACE INTO api_keys VALUES(?, ?)", (h, tid))

    def tenant_of_key(self, key):
        h = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        for stored, tid in self.key_hashes.items():
            if hmac.compare_digest(stored, h):
                return tid
        return None

    def create_room(self, room):
        self.rooms[(room.tenant, room.id)] = room
        if self.db:
            self.db.execute("BEGIN")
            self.db.execute("INSERT INTO rooms VALUES(?,?,?,?,?,?)", (
                room.tenant, room.id, room.name, room.type, room.created_by, room.created_at))
            for u, m in room.members.items():
                self.db.execute("INSERT INTO members VALUES(?,?,?,?,?)", (
                    room.tenant, room.id, u, m["role"], m["joinedAt"]))
            self.db.execute("COMMIT")

    def set_member(self, room, user, role, joined):
        room.members[user] = {"role": role, "joinedAt": joined}
        if self.db:
            self.db.execute("INSERT OR REPLACE INTO members VALUES(?,?,?,?,?)", (
                room.tenant, room.id, user, role, joined))

    def del_member(self, room, user):
        room.members.pop(user, None)
        if self.db:
            self.db.execute("DELETE FROM members WHERE tenant=? AND room=? AND user=?", (
                room.tenant, room.id, user))

    def commit(self, room, ev, user=None, cmid=None, stored_extra=None):
        """Durably append one timeline event (seq already set), with its idempotency record."""
        idem = None
        if cmid is not None:
            idem = {"id": ev.get("id", ev.get("messageId")), "seq": ev["seq"],
                    "createdAt": event_time(ev, room), "event": ev}
            if idem["id"] is None:
                del idem["id"]
        stored = dict(ev, **stored_extra) if stored_extra else ev
        if self.db:
            self.db.execute("BEGIN")
            self.db.execute("INSERT INTO events VALUES(?,?,?,?)", (
                room.tenant, room.id, ev["seq"], json.dumps(stored, ensure_ascii=False)))
            if idem is not None:
                self.db.execute("INSERT OR REPLACE INTO idem VALUES(?,?,?,?,?)", (
                    room.tenant, room.id, user, cmid, json.dumps(idem, ensure_ascii=False)))
            self.db.execute("COMMIT")
        room.events.append(ev)
        room.apply(stored)
        if idem is not None:
            room.idem[(user, cmid)] = idem


STORE = None


def event_time(ev, room=None):
    """The `createdAt` of an event's ack (FX-ACK-1: "the event's `seq` and `createdAt`").

    An `edit` or `delete` event has no `createdAt`: its own time (`editedAt`/`deletedAt`) is used,
    as FX-ACK-9 asks."""
    # (The alternatives server once used the message's createdAt; FX-ACK-9 now says SHOULD NOT.)
    for k in ("createdAt", "editedAt", "deletedAt"):
        if k in ev:
            return ev[k]
    return None


# ---------------------------------------------------------------------------------------------
# the room engine, shared by WebSocket and HTTP


def has_access(room, ident):
    if room.type == "public" or ident["sub"] in room.members:
        return True
    return any(r in ("owner", "admin") for r in ident["roles"])


def room_role(room, user):
    m = room.members.get(user)
    return m["role"] if m else None


def deliver(room, ev, sender=None, ack=None):
    """ACK first (FX-ACK-3), then the event to every WebSocket, SSE stream and long-poller."""
    if sender is not None and ack is not None:
        sender.send(ack)
    data = None
    for c in list(room.conns):
        c.send_event(ev)
    for s in list(room.sse):
        if data is None:
            data = sse_event(ev)
        s.write(data)
    for f in room.waiters:
        if not f.done():
            f.set_result(True)
    room.waiters = []


def make_ack(ref, cmid, ev, msg_id=None, duplicate=False, record=None, room=None):
    a = {"type": "ack"}
    if ref is not None:
        a["ref"] = ref
    if cmid is not None:
        a["clientMessageId"] = cmid
    if record is not None:
        if "id" in record:
            a["id"] = record["id"]
        a["seq"] = record["seq"]
        a["createdAt"] = record["createdAt"]
    else:
        if msg_id is not None:
            a["id"] = msg_id
        a["seq"] = ev["seq"]
        a["createdAt"] = event_time(ev, room)
    if duplicate:
        a["duplicate"] = True
    return a


def new_message(room, ident, content, cmid, parent, attachments, streaming=False):
    seq = room.seq + 1
    ev = {"type": "message", "seq": seq, "id": seq, "roomId": room.id, "userId": ident["sub"],
          "senderId": ident["sub"], "content": content, "createdAt": ts(now_ms())}
    if parent is not None:
        ev["parentId"] = parent
    if cmid is not None:
        ev["clientMessageId"] = cmid
    if attachments:
        ev["attachments"] = attachments
    ev["version"] = 1
    if streaming:
        ev["streaming"] = True
    STORE.commit(room, ev, ident["sub"], cmid)
    return ev


def may_post(room, ident):
    if room.type != "announcement":
        return True
    if room_role(room, ident["sub"]) in ("owner", "admin", "moderator"):
        return True
    return any(r in ("owner", "admin", "moderator") for r in ident["roles"])


def check_parent(room, parent):
    if parent is not None and parent not in room.msgs:
        raise FxError("not_found", "parentId names no message of this room", "parentId")


def validate_message_fields(d):
    """The message / PostMessageRequest fields, in one of two orders (FX-EDT-10 ranks them equal)."""
    if CFG.alternatives:
        cmid = opt_cmid(d)
        parent = opt_uint(d, "parentId")
        atts = opt_attachments(d)
        raw = req_str(d, "content", 0)
        return check_content(raw), cmid, parent, atts
    raw = req_str(d, "content", 0)
    content = check_content(raw)
    return content, opt_cmid(d), opt_uint(d, "parentId"), opt_attachments(d)


def post_message(room, ident, d, sender=None, ref=None):
    """Shared by the `message` frame and POST /messages. Returns (event, duplicate)."""
    content, cmid, parent, atts = validate_message_fields(d)
    if cmid is not None and (ident["sub"], cmid) in room.idem:
        rec = room.idem[(ident["sub"], cmid)]
        if sender is not None:
            sender.send(make_ack(ref, cmid, None, duplicate=True, record=rec))
        return rec["event"], True
    check_parent(room, parent)
    if not may_post(room, ident):
        raise FxError("forbidden", "only moderators may post in an announcement room")
    ev = new_message(room, ident, content, cmid, parent, atts)
    deliver(room, ev, sender, make_ack(ref, cmid, ev, ev["id"]) if sender else None)
    return ev, False


def find_msg(room, mid):
    m = room.msgs.get(mid)
    if m is None:
        raise FxError("not_found", "no message %d in this room" % mid, "messageId")
    return m


def may_moderate(room, ident):
    if room_role(room, ident["sub"]) in ("owner", "admin", "moderator"):
        return True
    return any(r in ("owner", "admin", "moderator") for r in ident["roles"])


def dup_check(conn, room, cmid, ref):
    if cmid is not None and (conn.ident["sub"], cmid) in room.idem:
        rec = room.idem[(conn.ident["sub"], cmid)]
        conn.send(make_ack(ref, cmid, None, duplicate=True, record=rec))
        return True
    return False


def timeline(room, ev_fields, conn, ref, cmid=None, msg_id=None, extra=None):
    seq = room.seq + 1
    ev = {"type": ev_fields[0][1], "seq": seq}
    ev.update(dict(ev_fields[1:]))
    STORE.commit(room, ev, conn.ident["sub"], cmid, extra)
    deliver(room, ev, conn, make_ack(ref, cmid, ev, msg_id, room=room))
    return ev


def fr_message(conn, room, d, ref):
    post_message(room, conn.ident, d, conn, ref)


def fr_edit(conn, room, d, ref):
    mid = req_uint(d, "messageId")
    raw = req_str(d, "content", 0)
    ev_ver = opt_uint(d, "expectedVersion")
    cmid = opt_cmid(d)
    content = check_content(raw)
    if dup_check(conn, room, cmid, ref):
        return
    m = find_msg(room, mid)
    if m["author"] != conn.ident["sub"]:
        raise FxError("forbidden", "only the author may edit a message")
    if m["deleted"]:
        raise FxError("conflict", "message is deleted")
    if ev_ver is not None and ev_ver != m["version"]:
        raise FxError("conflict", "expectedVersion is %d, current version is %d" % (ev_ver, m["version"]))
    timeline(room, [("type", "edit"), ("id", mid), ("roomId", room.id), ("userId", conn.ident["sub"]),
                    ("content", content), ("editedAt", ts(now_ms())), ("version", m["version"] + 1)],
             conn, ref, cmid, mid)


def fr_delete(conn, room, d, ref):
    mid = req_uint(d, "messageId")
    cmid = opt_cmid(d)
    if dup_check(conn, room, cmid, ref):
        return
    m = find_msg(room, mid)
    if m["author"] != conn.ident["sub"] and not may_moderate(room, conn.ident):
        raise FxError("forbidden", "not allowed to delete this message")
    if m["deleted"]:
        raise FxError("conflict", "message is already deleted")
    timeline(room, [("type", "delete"), ("id", mid), ("roomId", room.id), ("userId", conn.ident["sub"]),
                    ("deletedAt", ts(now_ms())), ("version", m["version"] + 1)], conn, ref, cmid, mid)


def fr_reaction(conn, room, d, ref):
    mid = req_uint(d, "messageId")
    emoji = req_str(d, "emoji", 1, 64)
    if trim(emoji) != emoji:
        raise bad("emoji", "must not start or end with whitespace")
    op = d.get("op")
    if op is None:
        op = "add"
    if op not in ("add", "remove"):
        raise bad("op", "must be add or remove")
    m = find_msg(room, mid)
    if m["deleted"]:
        raise FxError("conflict", "message is deleted")
    present = (conn.ident["sub"], emoji) in m["reactions"]
    if (op == "add") == present:
        a = {"type": "ack"}
        if ref is not None:
            a["ref"] = ref
        a["id"] = mid
        conn.send(a)
        return
    timeline(room, [("type", "reaction"), ("roomId", room.id), ("userId", conn.ident["sub"]),
                    ("messageId", mid), ("emoji", emoji), ("op", op), ("createdAt", ts(now_ms()))],
             conn, ref, None, mid)


def fr_read(conn, room, d, ref):
    mid = req_uint(d, "messageId")
    find_msg(room, mid)
    if mid <= room.reads.get(conn.ident["sub"], 0):
        a = {"type": "ack"}
        if ref is not None:
            a["ref"] = ref
        a["id"] = mid
        conn.send(a)
        return
    timeline(room, [("type", "read"), ("roomId", room.id), ("userId", conn.ident["sub"]),
                    ("messageId", mid), ("createdAt", ts(now_ms()))], conn, ref, None, mid)


def fr_typing(conn, room, d, ref):
    typing = req_bool(d, "isTyping")
    intent = d.get("intent")
    if intent is not None and intent not in ("composing", "viewing_thread", "away", "idle"):
        raise bad("intent", "must be composing, viewing_thread, away or idle")
    if not typing:
        intent = "idle"
    elif intent is None:
        intent = "composing"
    ev = {"type": "typing", "roomId": room.id, "userId": conn.ident["sub"], "isTyping": typing, "intent": intent}
    for c in list(room.conns):
        if c is not conn:
            c.send(ev)


def fr_resume(conn, room, d, ref):
    last = req_uint(d, "lastSeq")
    conn.send(replay_frame(room, last, ref))


def replay_frame(room, last, ref):
    cur = room.seq
    if last > cur or cur - last > CFG.resume_window:
        raise FxError("resync_required", "cannot replay from %d (current %d, window %d)" % (
            last, cur, CFG.resume_window), "lastSeq")
    page = min(CFG.replay_page, CFG.max_page_limit)
    evs = room.events[last:last + page]
    out = {"type": "replay", "roomId": room.id, "events": evs, "fromSeq": last, "currentSeq": cur,
           "hasMore": last + len(evs) < cur}
    if ref is not None:
        out["ref"] = ref
    return out


def fr_ping(conn, room, d, ref):
    t = opt_uint(d, "ts")
    out = {"type": "pong", "ts": now_ms()}
    if t is not None:
        out["echo"] = t
    conn.send(out)


def fr_auth(conn, room, d, ref):
    tok = req_str(d, "token", 1, 8192)
    ident = jwt_verify(tok)
    if ident["sub"] != conn.ident["sub"] or ident["tid"] != conn.ident["tid"]:
        raise FxError("forbidden", "the new token names another user or tenant")
    conn.ident = ident
    out = {"type": "token_refreshed", "tokenExpiresAt": ts(ident["exp"] * 1000), "roles": ident["roles"]}
    if ref is not None:
        out["ref"] = ref
    conn.send(out)


def fr_stream(conn, room, d, ref):
    op = d.get("op")
    if op not in ("start", "delta", "end", "abort"):
        raise bad("op", "must be start, delta, end or abort")
    raw = d.get("content")
    if raw is None and CFG.alternatives and op in ("delta", "end"):
        raise bad("content", "is required for %s" % op)  # FX-FRM-13: either answer
    if raw is None:
        raw = ""  # the schema's default
    elif not isinstance(raw, str) or not good_str(raw):
        raise bad("content")
    cmid = opt_cmid(d)
    mid = opt_uint(d, "messageId")
    parent = opt_uint(d, "parentId")
    if op != "start" and mid is None:
        raise bad("messageId", "is required for %s" % op)
    if op == "start":
        content = check_content(raw, allow_empty=True)
    elif op in ("delta", "end"):
        content = check_content(raw)
    if dup_check(conn, room, cmid, ref):
        return
    if op == "start":
        check_parent(room, parent)
        if not may_post(room, conn.ident):
            raise FxError("forbidden", "only moderators may post in an announcement room")
        ev = new_message(room, conn.ident, content, cmid, parent, None, streaming=True)
        deliver(room, ev, conn, make_ack(ref, cmid, ev, ev["id"]))
        return
    m = find_msg(room, mid)
    if m["author"] != conn.ident["sub"]:
        raise FxError("forbidden", "only the stream's author may continue it")
    if m["deleted"]:
        raise FxError("conflict", "message is deleted")
    if op == "abort":
        if not m["streaming"]:
            raise FxError("invalid_state", "message is not streaming")
        timeline(room, [("type", "delete"), ("id", mid), ("roomId", room.id), ("userId", conn.ident["sub"]),
                        ("deletedAt", ts(now_ms())), ("version", m["version"] + 1)], conn, ref, cmid, mid)
        return
    if not m["streaming"]:
        raise FxError("invalid_state", "message is not streaming")
    fields = [("type", "edit"), ("id", mid), ("roomId", room.id), ("userId", conn.ident["sub"]),
              ("content", content), ("editedAt", ts(now_ms())), ("version", m["version"] + 1)]
    if op == "delta":
        fields.append(("streaming", True))
    timeline(room, fields, conn, ref, cmid, mid)


def require_agent(conn):
    if "agent" not in conn.ident["roles"]:
        raise FxError("forbidden", "only agents may send this frame")


def fr_agent_run(conn, room, d, ref):
    if CFG.alternatives:
        require_agent(conn)  # FX-FRM-13: forbidden before invalid_frame is also correct
    run_id = req_str(d, "runId", 1, 128)
    status = d.get("status")
    if status not in ("started", "completed", "failed", "cancelled"):
        raise bad("status", "must be started, completed, failed or cancelled")
    error = opt_str(d, "error", 0, 16000)
    require_agent(conn)
    run = room.runs.get((conn.ident["sub"], run_id))
    if status == "started":
        if run is not None:
            raise FxError("invalid_state", "run %s was already started" % run_id)
    elif run is None or run["status"] != "started":
        raise FxError("invalid_state", "run %s is not running" % run_id)
    fields = [("type", "agentRun"), ("roomId", room.id), ("agentId", conn.ident["sub"]), ("runId", run_id),
              ("status", status)]
    if error is not None:
        fields.append(("error", error))
    fields.append(("createdAt", ts(now_ms())))
    timeline(room, fields, conn, ref)


def active_run(conn, room, run_id):
    run = room.runs.get((conn.ident["sub"], run_id))
    if run is None or run["status"] != "started":
        raise FxError("invalid_state", "run %s is not running" % run_id)
    return run


def fr_tool_call(conn, room, d, ref):
    if CFG.alternatives:
        require_agent(conn)  # FX-FRM-13: forbidden before invalid_frame is also correct
    run_id = req_str(d, "runId", 1, 128)
    call_id = req_str(d, "toolCallId", 1, 128)
    name = req_str(d, "name", 1, 128)
    args = opt_str(d, "arguments", 0, 16000) or ""
    require_agent(conn)
    run = active_run(conn, room, run_id)
    if call_id in run["calls"]:
        raise FxError("invalid_state", "toolCallId %s already used in this run" % call_id)
    timeline(room, [("type", "tool_call"), ("roomId", room.id), ("agentId", conn.ident["sub"]),
                    ("runId", run_id), ("toolCallId", call_id), ("name", name), ("arguments", args),
                    ("createdAt", ts(now_ms()))], conn, ref)


def fr_tool_answer(conn, room, d, ref, kind):
    if CFG.alternatives:
        require_agent(conn)  # FX-FRM-13: forbidden before invalid_frame is also correct
    run_id = req_str(d, "runId", 1, 128)
    call_id = req_str(d, "toolCallId", 1, 128)
    if kind == "tool_result":
        value = req_str(d, "result", 0, 16000)
    else:
        value = req_str(d, "error", 1, 16000)
    require_agent(conn)
    run = room.runs.get((conn.ident["sub"], run_id))
    if run is None or run["calls"].get(call_id) != "pending":
        raise FxError("invalid_state", "no pending tool call %s in run %s" % (call_id, run_id))
    timeline(room, [("type", kind), ("roomId", room.id), ("agentId", conn.ident["sub"]), ("runId", run_id),
                    ("toolCallId", call_id), ("result" if kind == "tool_result" else "error", value),
                    ("createdAt", ts(now_ms()))], conn, ref)


def fr_approval_request(conn, room, d, ref):
    if CFG.alternatives:
        require_agent(conn)  # FX-FRM-13: forbidden before invalid_frame is also correct
    run_id = req_str(d, "runId", 1, 128)
    appr = req_str(d, "approvalId", 1, 128)
    call_id = opt_str(d, "toolCallId", 1, 128)
    prompt = req_str(d, "prompt", 1, 4000)
    require_agent(conn)
    run = active_run(conn, room, run_id)
    if appr in run["approvals"]:
        raise FxError("invalid_state", "approvalId %s already used in this run" % appr)
    fields = [("type", "approval_request"), ("roomId", room.id), ("agentId", conn.ident["sub"]),
              ("runId", run_id), ("approvalId", appr)]
    if call_id is not None:
        fields.append(("toolCallId", call_id))
    fields += [("prompt", prompt), ("createdAt", ts(now_ms()))]
    timeline(room, fields, conn, ref)


def fr_approval_decision(conn, room, d, ref):
    run_id = req_str(d, "runId", 1, 128)
    appr = req_str(d, "approvalId", 1, 128)
    decision = d.get("decision")
    if decision not in ("approved", "denied"):
        raise bad("decision", "must be approved or denied")
    reason = opt_str(d, "reason", 0, 4000)
    if "agent" in conn.ident["roles"]:
        raise FxError("forbidden", "agents may not decide approvals")
    named = opt_str(d, "agentId", 1, 128)
    # FX-AGT-12: the agents with a pending request of these ids (only the named one, if any).
    agents = [a for (a, r), run in room.runs.items()
              if r == run_id and run["approvals"].get(appr) == "pending"
              and (named is None or a == named)]
    if not agents:
        raise FxError("invalid_state", "no pending approval %s in run %s" % (appr, run_id))
    if len(agents) > 1:
        raise FxError("invalid_state", "several agents wait on approval %s: name one" % appr,
                      field="agentId")
    fields = [("type", "approval_decision"), ("roomId", room.id), ("userId", conn.ident["sub"]),
              ("agentId", agents[0]), ("runId", run_id), ("approvalId", appr),
              ("decision", decision)]
    if reason is not None:
        fields.append(("reason", reason))
    fields.append(("createdAt", ts(now_ms())))
    timeline(room, fields, conn, ref)


def fr_agent_typing(conn, room, d, ref):
    if CFG.alternatives:
        require_agent(conn)  # FX-FRM-13: forbidden before invalid_frame is also correct
    typing = req_bool(d, "isTyping")
    require_agent(conn)
    ev = {"type": "agentTyping", "roomId": room.id, "agentId": conn.ident["sub"], "isTyping": typing}
    for c in list(room.conns):
        if c is not conn:
            c.send(ev)


HANDLERS = {
    "ping": fr_ping, "message": fr_message, "edit": fr_edit, "delete": fr_delete,
    "reaction": fr_reaction, "read": fr_read, "typing": fr_typing, "resume": fr_resume,
    "stream": fr_stream, "agentRun": fr_agent_run, "tool_call": fr_tool_call,
    "tool_result": lambda c, r, d, ref: fr_tool_answer(c, r, d, ref, "tool_result"),
    "tool_error": lambda c, r, d, ref: fr_tool_answer(c, r, d, ref, "tool_error"),
    "approval_request": fr_approval_request, "approval_decision": fr_approval_decision,
    "agentTyping": fr_agent_typing, "auth": fr_auth,
}


# ---------------------------------------------------------------------------------------------
# presence


def presence_frame(room):
    counts = {}
    for c in room.conns:
        counts[c.ident["sub"]] = counts.get(c.ident["sub"], 0) + 1
    if CFG.alternatives:
        for s in room.sse:
            counts[s.user] = counts.get(s.user, 0) + 1
    users = sorted(counts)
    return {"type": "presence", "roomId": room.id, "online": sum(counts.values()), "users": users,
            "members": [{"userId": u, "connections": counts[u]} for u in users]}


def user_count(room, user):
    n = sum(1 for c in room.conns if c.ident["sub"] == user)
    if CFG.alternatives:
        n += sum(1 for s in room.sse if s.user == user)
    return n


def broadcast_presence(room, joined=None, left=None, skip=None):
    if not full():
        return  # FX-PRF-2: only servers implementing `presence` send presence frames
    if joined is not None and user_count(room, joined) == 1:
        for c in list(room.conns):
            if c is not skip:
                c.send({"type": "member_joined", "roomId": room.id, "userId": joined})
    if left is not None and user_count(room, left) == 0:
        for c in list(room.conns):
            c.send({"type": "member_left", "roomId": room.id, "userId": left})
    p = presence_frame(room)
    for c in list(room.conns):
        c.send(p)
    if CFG.alternatives:
        data = sse(b"event: presence\ndata: " + dumps(p) + b"\n\n")
        for s in list(room.sse):
            s.write(data)


# ---------------------------------------------------------------------------------------------
# WebSocket connection


def _frame(fin, opcode, payload):
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    if n < 126:
        head = struct.pack("!BB", b0, n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, 126, n)
    else:
        head = struct.pack("!BBQ", b0, 127, n)
    return head + payload


def ws_frame(opcode, payload):
    """One WebSocket message. The alternatives server sends every text message of more than 16
    bytes as three frames (text + continuations): FX-FRM-1 asks for one message, RFC 6455 5.4
    lets a message span frames."""
    if CFG.alternatives and opcode == 1 and len(payload) > 16:
        a, b = len(payload) // 3, 2 * len(payload) // 3
        return _frame(False, 1, payload[:a]) + _frame(False, 0, payload[a:b]) + _frame(True, 0, payload[b:])
    return _frame(True, opcode, payload)


def unmask(data, mask):
    n = len(data)
    if n == 0:
        return data
    m = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(m, "big")).to_bytes(n, "big")


class Conn:
    def __init__(self, reader, writer, room, ident, query):
        self.reader, self.writer, self.room, self.ident = reader, writer, room, ident
        self.id = gen_id(16 if not CFG.alternatives else 128)
        self.closed = False
        self.last_recv = time.monotonic()
        self.tokens = float(CFG.rate_burst)
        self.last_refill = time.monotonic()
        self.invalid_run = 0
        self.limited_run = 0
        self.batch = full() and not CFG.alternatives and query.get("batch") in ("1", "true")
        self.pending = []
        self.flush_scheduled = False
        self.expiry_sent = False

    # -- output
    def _write(self, data):
        if self.closed:
            return
        tr = self.writer.transport
        if tr.is_closing():
            return
        if tr.get_write_buffer_size() > 32 * 1024 * 1024:
            # FX-ORD-2: never skip an event; drop the connection instead.
            self.closed = True
            self.detach()
            tr.abort()
            return
        self.writer.write(data)

    def flush_batch(self):
        self.flush_scheduled = False
        if self.pending:
            evs, self.pending = self.pending, []
            if len(evs) == 1:
                self._write(ws_frame(1, dumps(evs[0])))
            else:
                self._write(ws_frame(1, dumps({"type": "batch", "events": evs})))

    def send(self, obj):
        if self.pending:
            self.flush_batch()
        self._write(ws_frame(1, dumps(obj)))

    def send_event(self, ev):
        if not self.batch:
            self.send(ev)
            return
        self.pending.append(ev)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush_batch)

    def detach(self):
        room = self.room
        if self in room.conns:
            room.conns.remove(self)
            broadcast_presence(room, left=self.ident["sub"])

    def close(self, code, error=None):
        if self.closed:
            return
        if error is not None:
            self.send(err_obj(error))
        if self.pending:
            self.flush_batch()
        reason = CLOSE_REASON.get(code, "").encode()
        self._write(ws_frame(8, struct.pack("!H", code) + reason))
        self.closed = True
        self.detach()
        loop = asyncio.get_running_loop()
        loop.call_later(2.0, self.writer.transport.close)

    # -- input
    def rate_ok(self):
        t = time.monotonic()
        self.tokens = min(float(CFG.rate_burst), self.tokens + (t - self.last_refill) * CFG.rate_per_second)
        self.last_refill = t
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0
        return max(1, math.ceil((1.0 - self.tokens) / CFG.rate_per_second * 1000.0) + 1)

    def handle_text(self, text, oversized=False, binary=False):
        d = None
        ref = None
        if not oversized and not binary and text is not None:
            try:
                d = json.loads(text, parse_constant=_no_const)
            except Exception:
                d = None
        is_ping = isinstance(d, dict) and d.get("type") == "ping"
        if isinstance(d, dict):
            ref, _ = get_ref(d)
        if not is_ping:
            wait = self.rate_ok()
            if wait:
                self.limited_run += 1
                self.send(err_obj(FxError("rate_limited", "too many frames", retry_after=wait), ref))
                if CFG.ratelimit_close_after and self.limited_run >= CFG.ratelimit_close_after:
                    self.close(4008, FxError("rate_limited", "kept exceeding the rate limit"))
                return
            self.limited_run = 0
        try:
            if binary:
                raise FxError("binary_not_supported", "binary frames are not part of Fluxy v1")
            if oversized:
                raise FxError("payload_too_large", "frame larger than maxFrameBytes (%d)" % CFG.max_frame_bytes)
            if not isinstance(d, dict):
                raise FxError("malformed_frame", "frame is not a JSON object")
            self.dispatch(d)
            self.invalid_run = 0
        except FxError as e:
            if e.code in ("malformed_frame", "invalid_frame", "unknown_type", "payload_too_large",
                          "binary_not_supported", "invalid_content"):
                self.invalid_run += 1
            else:
                self.invalid_run = 0
            if e.field == "ref" and e.code == "invalid_frame":
                ref = None
            self.send(err_obj(e, ref))
            if CFG.invalid_close_after and self.invalid_run >= CFG.invalid_close_after:
                self.close(4010, FxError("invalid_frame", "too many invalid frames in a row"))

    def dispatch(self, d):
        t = d.get("type")
        if not isinstance(t, str):
            raise bad("type", "must be a string naming the frame type")
        ref, ref_ok = get_ref(d)
        allowed = ALL_FRAMES if full() else CORE_FRAMES
        if t not in allowed:
            if not ref_ok and CFG.alternatives:
                raise bad("ref", "must be 1 to 128 characters")
            raise FxError("unknown_type", "unknown frame type %r" % t[:64])
        if not ref_ok:
            raise bad("ref", "must be 1 to 128 characters")
        HANDLERS[t](self, self.room, d, ref)

    async def run(self):
        reader = self.reader
        msg_op = None
        parts = []
        size = 0
        too_big = False
        try:
            while True:
                head = await reader.readexactly(2)
                self.last_recv = time.monotonic()
                b0, b1 = head
                fin, rsv, op = b0 & 0x80, b0 & 0x70, b0 & 0x0F
                masked, n = b1 & 0x80, b1 & 0x7F
                if n == 126:
                    (n,) = struct.unpack("!H", await reader.readexactly(2))
                elif n == 127:
                    (n,) = struct.unpack("!Q", await reader.readexactly(8))
                if rsv or not masked or op in (3, 4, 5, 6, 7, 11, 12, 13, 14, 15):
                    self.close(1002)
                    return
                mask = await reader.readexactly(4)
                if op >= 8:
                    if n > 125 or not fin:
                        self.close(1002)
                        return
                    payload = unmask(await reader.readexactly(n), mask)
                    if op == 8:
                        if not self.closed:
                            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1000
                            if code in (1005, 1006, 1015) or code < 1000:
                                code = 1000
                            self._write(ws_frame(8, struct.pack("!H", code)))
                            self.closed = True
                            self.detach()
                        self.writer.transport.close()
                        return
                    if op == 9:
                        self._write(ws_frame(10, payload))
                    continue
                if op == 0:
                    if msg_op is None:
                        self.close(1002)
                        return
                else:
                    if msg_op is not None:
                        self.close(1002)
                        return
                    msg_op, parts, size, too_big = op, [], 0, False
                size += n
                limit = CFG.max_frame_bytes if msg_op == 1 else 1 << 20
                if too_big or size > limit:
                    too_big = True
                    left = n
                    while left:
                        chunk = await reader.read(min(left, 1 << 16))
                        if not chunk:
                            raise asyncio.IncompleteReadError(b"", left)
                        left -= len(chunk)
                    parts = []
                else:
                    parts.append(unmask(await reader.readexactly(n), mask))
                if not fin:
                    continue
                op_done, msg_op = msg_op, None
                if self.closed:
                    continue
                if op_done == 2:
                    self.handle_text(None, binary=True)
                elif too_big:
                    self.handle_text(None, oversized=True)
                else:
                    try:
                        text = b"".join(parts).decode("utf-8")
                    except UnicodeDecodeError:
                        text = "\x00not utf-8"
                    self.handle_text(text)
                parts = []
                if self.writer.transport.get_write_buffer_size() > 1 << 20:
                    await self.writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        except Exception as e:  # never crash on bad input
            log("connection error: %r" % e)
            self.close(1011)
        finally:
            if not self.closed:
                self.closed = True
                self.detach()
            try:
                self.writer.transport.close()
            except Exception:
                pass


def _no_const(name):
    raise ValueError("not JSON: " + name)


def gen_id(n):
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(n))


# ---------------------------------------------------------------------------------------------
# HTTP


class Request:
    def __init__(self, method, target, headers, body):
        self.method, self.headers, self.body = method, headers, body
        parts = urllib.parse.urlsplit(target)
        self.path = parts.path
        q = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
        self.query = {k: v[0] for k, v in q.items()}

    def header(self, name):
        return self.headers.get(name.lower())


class Reply(Exception):
    def __init__(self, status, body, headers=None):
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or {}


def http_error(e, headers=None):
    h = dict(headers or {})
    if e.code == "rate_limited" and e.retry_after:
        h["Retry-After"] = str(max(1, math.ceil(e.retry_after / 1000)))
    return Reply(HTTP_STATUS[e.code], err_obj(e, frame=False), h)


def write_response(writer, status, body, headers=None, close=False):
    data = dumps(body) if body is not None else b""
    lines = ["HTTP/1.1 %d %s" % (status, HTTPStatus(status).phrase)]
    hs = {"Content-Type": JSON_CT + ("; charset=utf-8" if CFG.alternatives else ""), "Content-Length": str(len(data)), "Cache-Control": "no-store"}
    hs.update(headers or {})
    if close:
        hs["Connection"] = "close"
    for k, v in hs.items():
        lines.append("%s: %s" % (k, v))
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data)


def auth_ident(req):
    tok = None
    h = req.header("authorization")
    if h and h[:7].lower() == "bearer ":
        tok = h[7:].strip()
    elif "token" in req.query:
        tok = req.query["token"]
    if not tok:
        raise FxError("unauthorized", "missing token")
    return jwt_verify(tok)


HTTP_BUCKETS = {}


def http_rate(ident):
    if CFG.alternatives or CFG.http_burst <= 0:
        return
    key = (ident["tid"], ident["sub"])
    t = time.monotonic()
    tokens, last = HTTP_BUCKETS.get(key, (float(CFG.http_burst), t))
    tokens = min(float(CFG.http_burst), tokens + (t - last) * CFG.http_rate)
    if tokens < 1.0:
        HTTP_BUCKETS[key] = (tokens, t)
        wait = max(1, math.ceil((1.0 - tokens) / CFG.http_rate * 1000.0))
        raise FxError("rate_limited", "too many requests", retry_after=wait)
    HTTP_BUCKETS[key] = (tokens - 1.0, t)


def json_body(req):
    try:
        d = json.loads(req.body.decode("utf-8"), parse_constant=_no_const)
    except Exception:
        raise FxError("malformed_frame", "body is not JSON")
    if not isinstance(d, dict):
        raise FxError("malformed_frame", "body is not a JSON object")
    return d


def get_room(ident, rid, need_access=True):
    if not ID_RE.match(rid):
        raise FxError("not_found", "no such room")
    room = STORE.rooms.get((ident["tid"], rid))
    if room is None:
        raise FxError("not_found", "no such room %s" % rid)
    if need_access and not has_access(room, ident):
        raise FxError("not_member", "not a member of room %s" % rid)
    return room


def int_param(req, name, default, lo=None, clamp=None):
    v = req.query.get(name)
    if v is None:
        return default
    if not re.fullmatch(r"-?[0-9]{1,19}", v):
        raise FxError("invalid_frame", "%s must be an integer" % name, name)
    n = int(v)
    if lo is not None and n < lo:
        raise FxError("invalid_frame", "%s must be at least %d" % (name, lo), name)
    if clamp is not None and n > clamp:
        n = clamp
    return n


def h_health(req, m):
    return 200, {"ok": True, "version": SERVER_VERSION, "protocolVersion": PROTOCOL_VERSION, "ts": now_ms()}


def h_token(req, m):
    key = req.header("x-fluxy-api-key")
    if not key:
        raise FxError("unauthorized", "missing X-Fluxy-Api-Key")
    tid = STORE.tenant_of_key(key)
    if tid is None:
        raise FxError("invalid_api_key", "unknown or revoked API key")
    d = json_body(req)
    user = d.get("userId")
    if not isinstance(user, str) or not ID_RE.match(user):
        raise bad("userId", "must match ^[A-Za-z0-9_-]{1,128}$")
    roles = d.get("roles")
    if roles is None:
        roles = []
    if not isinstance(roles, list):
        raise bad("roles", "must be an array")
    for r in roles:
        if r not in TOKEN_ROLES:
            raise bad("roles", "unknown role")
    if not roles:
        roles = ["member"]
    ttl = d.get("ttlSeconds")
    if ttl is None:
        ttl = 3600
    elif not is_uint(ttl):
        raise bad("ttlSeconds", "must be a non-negative integer")
    ttl = max(60, min(86400, ttl))
    iat = int(time.time())
    exp = iat + ttl
    claims = {"sub": user, "tid": tid, "roles": roles, "exp": exp, "iat": iat}
    tok = jwt_encode(claims, STORE.tenants[tid]["secret"])
    body = {"token": tok, "expiresIn": ttl, "expiresAt": ts(exp * 1000),
            "claims": {"sub": user, "tid": tid, "roles": roles}}
    return (201 if CFG.alternatives else 200), body


def h_rooms_list(req, m):
    ident = auth_ident(req)
    http_rate(ident)
    rooms = [r.room_json() for (t, _), r in STORE.rooms.items() if t == ident["tid"] and ident["sub"] in r.members]
    return 200, {"rooms": rooms}


def parse_member_spec(d, field_prefix=""):
    if not isinstance(d, dict):
        raise bad("members")
    u = d.get("userId")
    if not isinstance(u, str) or not ID_RE.match(u):
        raise bad("userId", "must match ^[A-Za-z0-9_-]{1,128}$")
    role = d.get("role")
    if role is None:
        role = "member"
    if role not in MEMBER_ROLES:
        raise bad("role", "must be owner, admin, moderator or member")
    return u, role


def h_rooms_create(req, m):
    ident = auth_ident(req)
    http_rate(ident)
    d = json_body(req)
    rid = d.get("id")
    if rid is not None and (not isinstance(rid, str) or not ID_RE.match(rid)):
        raise bad("id", "must match ^[A-Za-z0-9_-]{1,128}$")
    name = req_str(d, "name", 1, 256)
    rtype = d.get("type")
    if rtype is None:
        rtype = "group"
    if rtype not in ROOM_TYPES:
        raise bad("type", "must be dm, group, public or announcement")
    members = d.get("members")
    specs = []
    if members is not None:
        if not isinstance(members, list):
            raise bad("members")
        specs = [parse_member_spec(x) for x in members]
    if rid is None:
        rid = gen_id(128 if CFG.alternatives else 20)
    if (ident["tid"], rid) in STORE.rooms:
        raise FxError("conflict", "room %s already exists" % rid)
    now = ts(now_ms())
    room = Room(ident["tid"], rid, name, rtype, ident["sub"], now)
    for u, role in specs:
        room.members[u] = {"role": role, "joinedAt": now}
    room.members[ident["sub"]] = {"role": "owner", "joinedAt": now}
    STORE.create_room(room)
    return 201, {"room": room.room_json()}


def h_room_get(req, m):
    ident = auth_ident(req)
    http_rate(ident)
    room = get_room(ident, m[0])
    return 200, {"room": room.room_json()}


def may_manage(room, ident):
    if room_role(room, ident["sub"]) in ("owner", "admin"):
        return True
    return any(r in ("owner", "admin") for r in ident["roles"])


def h_members_get(req, m):
    ident = auth_ident(req)
    http_rate(ident)
    room = get_room(ident, m[0])
    return 200, {"members": [{"userId": u, "role": v["role"], "joinedAt": v["joinedAt"]}
                             for u, v in room.members.items()]}


def h_members_post(req, m):
    ident = auth_ident(req)
    http_rate(ident)
    room = get_room(ident, m[0])
    if not may_manage(room, ident):
        raise FxError("forbidden", "only a room owner or admin may manage members")
    d = json_body(req)
    u, role = parse_member_spec(d)
    existed = u in room.members
    joined = room.members[u]["joinedAt"] if existed else ts(now_ms())
    STORE.set_member(room, u, role, joined)
    status = 200 if (existed or CFG.alternatives) else 201
    return status, {"ok": True, "roomId": room.id, "userId": u, "role": role}


def h_members_delete(req, m):
    ident = auth_ident(req)
    http_rate(ident)
    room = get_room(ident, m[0], need_access=False)
    u = m[1]
    if not ID_RE.match(u):
        raise FxError("not_found", "no such member")
    if u != ident["sub"]:
        if not has_access(room, ident):
            raise FxError("not_member", "not a member of room %s" % room.id)
        if not may_manage(room, ident):
            raise FxError("forbidden", "only a room owner or admin may remove members")
    STORE.del_member(room, u)
    for c in [c for c in room.conns if c.ident["sub"] == u]:
        c.close(4003, FxError("not_member", "removed from room %s" % room.id))
    for s in [s for s in room.sse if s.user == u]:
        s.end()
    return 200, {"ok": True, "roomId": room.id, "userId": u}


def h_post_message(req, m):
    ident = auth_ident(req)
    http_rate(ident)
    d = json_body(req)
    rid = d.get("roomId")
    if not isinstance(rid, str) or not ID_RE.match(rid):
        raise bad("roomId", "must match ^[A-Za-z0-9_-]{1,128}$")
    room = get_room(ident, rid)
    ev, dup = post_message(room, ident, d)
    if dup:
        return 200, {"message": ev, "duplicate": True}
    return 201, {"message": ev}


def page_body(room, evs, has_more, cursor):
    out = {"roomId": room.id, "events": evs, "hasMore": has_more}
    if cursor is not None:
        out["nextCursor"] = cursor
    out["currentSeq"] = room.seq
    return out


def forward_page(room, after, limit):
    cur = room.seq
    after = min(after, cur)
    evs = room.events[after:after + limit]
    last = after + len(evs)
    return page_body(room, evs, last < room.seq, cursor_make("f", room.tenant, room.id, last))


def h_history(req, m):
    ident = auth_ident(req)
    http_rate(ident)
    room = get_room(ident, m[0])
    limit = int_param(req, "limit", 50, lo=1, clamp=CFG.max_page_limit)
    direction = req.query.get("direction", "backward")
    if direction not in ("backward", "forward"):
        raise FxError("invalid_frame", "direction must be backward or forward", "direction")
    cur = req.query.get("cursor")
    if cur:
        kind, pos = cursor_read(cur, ("b", "f"), room.tenant, room.id)
        direction = "backward" if kind == "b" else "forward"
        if kind == "f":
            return 200, forward_page(room, pos, limit)
        end = pos - 1
    else:
        if direction == "forward":
            return 200, forward_page(room, int_param(req, "afterSeq", 0, lo=0), limit)
        end = room.seq
    start = max(1, end - limit + 1)
    evs = room.events[start - 1:end] if end >= 1 else []
    more = end >= 1 and start > 1
    return 200, page_body(room, evs, more, cursor_make("b", room.tenant, room.id, start) if more else None)


ISO_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?Z\Z")


def iso_ms(s):
    mm = ISO_RE.match(s)
    if not mm:
        return None
    frac = (mm.group(7) or "")[:3].ljust(3, "0")
    try:
        d = datetime(*[int(mm.group(i)) for i in range(1, 7)], tzinfo=timezone.utc)
    except ValueError:
        return None
    return int(d.timestamp()) * 1000 + int(frac)


def created_ms(s):
    return iso_ms(s)


def h_legacy(req, m):
    ident = auth_ident(req)
    http_rate(ident)
    rid = req.query.get("roomId")
    if rid is None or not ID_RE.match(rid):
        raise FxError("invalid_frame", "roomId is required", "roomId")
    room = get_room(ident, rid)
    limit = int_param(req, "limit", 50, lo=1, clamp=CFG.max_page_limit)
    before = req.query.get("before")
    live = [(i, s) for i, s in room.msgs.items() if not s["deleted"]]
    live.sort(key=lambda x: -x[0])
    if before:
        pos = None
        try:
            _, pos = cursor_read(before, ("legacy",), room.tenant, room.id, "before")
        except FxError:
            cut = iso_ms(before)
            if cut is None:
                raise FxError("invalid_cursor", "before is neither a cursor of this route nor an ISO timestamp",
                              "before")
            live = [(i, s) for i, s in live if created_ms(s["createdAt"]) < cut]
        if pos is not None:
            live = [(i, s) for i, s in live if i < pos]
    page = live[:limit]
    more = len(live) > limit
    msgs, reactions = [], {}
    for i, s in page:
        ev = s["event"]
        rec = {"id": i, "roomId": room.id, "userId": ev["userId"], "senderId": ev["senderId"],
               "content": s["content"], "createdAt": s["createdAt"]}
        # Required, null when absent (MessageRecord schema; the golden LegacyMessagesResponse).
        rec["parentId"] = ev.get("parentId")
        rec["editedAt"] = s["editedAt"]
        rec["seq"] = i
        rec["version"] = s["version"]
        if "clientMessageId" in ev:
            rec["clientMessageId"] = ev["clientMessageId"]
        rec["attachments"] = ev.get("attachments", [])
        msgs.append(rec)
        counts = {}
        for (_, emoji) in s["reactions"]:
            counts[emoji] = counts.get(emoji, 0) + 1
        if counts:
            reactions[str(i)] = counts
    out = {"messages": msgs, "reactions": reactions, "hasMore": more}
    if more:
        out["nextCursor"] = cursor_make("legacy", room.tenant, room.id, page[-1][0])
    return 200, out


async def h_poll(req, m):
    ident = auth_ident(req)
    http_rate(ident)
    room = get_room(ident, m[0])
    limit = int_param(req, "limit", 50, lo=1, clamp=CFG.max_page_limit)
    timeout = int_param(req, "timeoutMs", 25000, lo=0, clamp=30000)
    cur = req.query.get("cursor")
    if cur:
        _, pos = cursor_read(cur, ("f",), room.tenant, room.id)
    elif "afterSeq" in req.query:
        pos = int_param(req, "afterSeq", 0, lo=0)
    else:
        pos = 0  # FX-TRN-14
    if room.seq <= pos and timeout > 0:
        fut = asyncio.get_running_loop().create_future()
        room.waiters.append(fut)
        try:
            await asyncio.wait_for(fut, timeout / 1000.0)
        except asyncio.TimeoutError:
            pass
    return 200, forward_page(room, pos, limit)


def sse_event(ev):
    return sse(("id: %d\nevent: %s\ndata: " % (ev["seq"], ev["type"])).encode() + dumps(ev) + b"\n\n")


def sse(block):
    """The alternatives server ends SSE lines with CRLF (allowed by the SSE format)."""
    return block.replace(b"\n", b"\r\n") if CFG.alternatives else block


class Sse:
    def __init__(self, writer, user):
        self.writer, self.user = writer, user
        self.done = asyncio.get_running_loop().create_future()

    def write(self, data):
        tr = self.writer.transport
        if tr.is_closing():
            self.end()
            return
        if tr.get_write_buffer_size() > 32 * 1024 * 1024:
            tr.abort()
            self.end()
            return
        self.writer.write(data)

    def end(self):
        if not self.done.done():
            self.done.set_result(True)


def accepts_sse(accept):
    if accept is None or not accept.strip():
        return True
    for part in accept.split(","):
        bits = [b.strip() for b in part.split(";")]
        mt = bits[0].lower()
        q = 1.0
        for b in bits[1:]:
            if b.lower().startswith("q="):
                try:
                    q = float(b[2:])
                except ValueError:
                    q = 0.0
        if q > 0 and mt in ("text/event-stream", "text/*", "*/*"):
            return True
    return False


async def h_stream(req, m, reader, writer):
    ident = auth_ident(req)
    http_rate(ident)
    room = get_room(ident, m[0])
    if not accepts_sse(req.header("accept")):
        raise FxError("not_acceptable", "this route serves text/event-stream only")
    last = req.header("last-event-id")
    if last is None:
        last = req.query.get("lastEventId")
    if last is not None:
        last = last.strip()
        if not re.fullmatch(r"[0-9]{1,19}", last):
            raise FxError("invalid_frame", "Last-Event-ID must be a seq", "Last-Event-ID")
        last = int(last)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                 b"Connection: close\r\nX-Accel-Buffering: no\r\n\r\n")
    s = Sse(writer, ident["sub"])
    if CFG.alternatives:
        # A comment and a reconnection delay before anything else: neither is an event.
        writer.write(sse(b": fluxy zoo stream\nretry: 2000\n\n"))
    if last is not None:
        cur = room.seq
        if last > cur or (CFG.alternatives and cur - last > CFG.resume_window):
            e = FxError("resync_required", "cannot resume the stream from %d" % last)
            writer.write(sse(b"event: error\ndata: " + dumps(err_obj(e)) + b"\n\n"))
            await writer.drain()
            return
        for ev in room.events[last:]:
            s.write(sse_event(ev))
    else:
        writer.write(sse(b"event: ready\ndata: " + dumps({"currentSeq": room.seq}) + b"\n\n"))
    room.sse.append(s)
    if CFG.alternatives:
        broadcast_presence(room)

    async def watch():
        try:
            while await reader.read(4096):
                pass
        except Exception:
            pass
        s.end()

    w = asyncio.ensure_future(watch())
    try:
        while not s.done.done():
            try:
                await asyncio.wait_for(asyncio.shield(s.done), 15.0)
            except asyncio.TimeoutError:
                s.write(sse(b": keepalive\n\n"))
    finally:
        w.cancel()
        if s in room.sse:
            room.sse.remove(s)
            if CFG.alternatives:
                broadcast_presence(room)


ROUTES = [
    (("health",), {"GET": h_health}, "core"),
    (("auth", "token"), {"POST": h_token}, "core"),
    (("rooms",), {"GET": h_rooms_list, "POST": h_rooms_create}, "core"),
    (("rooms", None), {"GET": h_room_get}, "core"),
    (("rooms", None, "members"), {"GET": h_members_get, "POST": h_members_post}, "core"),
    (("rooms", None, "members", None), {"DELETE": h_members_delete}, "core"),
    (("messages",), {"POST": h_post_message}, "core"),
    (("rooms", None, "history"), {"GET": h_history}, "full"),
    (("api", "messages"), {"GET": h_legacy}, "full"),
    (("rooms", None, "poll"), {"GET": h_poll}, "full"),
    (("rooms", None, "stream"), {"GET": "stream"}, "full"),
    (("ws", "room", None), {"GET": "ws"}, "core"),
]


def match_route(path):
    segs = path.split("/")[1:] if path.startswith("/") else None
    if not segs:
        return None, None
    try:
        segs = [urllib.parse.unquote(s, errors="strict") for s in segs]
    except UnicodeDecodeError:
        return None, None
    for pattern, methods, prof in ROUTES:
        if prof == "full" and not full():
            continue
        if len(pattern) != len(segs):
            continue
        params = []
        ok = True
        for p, s in zip(pattern, segs):
            if p is None:
                params.append(s)
            elif p != s:
                ok = False
                break
        if ok:
            return methods, params
    return None, None


async def read_request(reader):
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        return "too_large"
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        return "bad"
    method, target, _ = parts
    headers = {}
    for line in lines[1:]:
        if not line:
            continue
        if ":" not in line:
            return "bad"
        k, v = line.split(":", 1)
        k = k.strip().lower()
        v = v.strip()
        headers[k] = headers[k] + ", " + v if k in headers and k != "authorization" else v
    body = b""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks = []
        total = 0
        while True:
            size_line = await reader.readuntil(b"\r\n")
            try:
                size = int(size_line.split(b";")[0].strip(), 16)
            except ValueError:
                return "bad"
            if size < 0:
                return "bad"
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                break
            total += size
            data = await reader.readexactly(size)
            if total <= HTTP_BODY_LIMIT:
                chunks.append(data)
            await reader.readexactly(2)
        if total > HTTP_BODY_LIMIT:
            return "body_too_large"
        body = b"".join(chunks)
    elif "content-length" in headers:
        if not re.fullmatch(r"[0-9]{1,18}", headers["content-length"]):
            return "bad"
        n = int(headers["content-length"])
        if n > HTTP_BODY_LIMIT:
            left = n
            while left > 0 and n <= 64 * HTTP_BODY_LIMIT:
                chunk = await reader.read(min(left, 1 << 16))
                if not chunk:
                    break
                left -= len(chunk)
            return "body_too_large"
        body = await reader.readexactly(n)
    return Request(method, target, headers, body)


async def handle_client(reader, writer):
    try:
        while True:
            req = await read_request(reader)
            if isinstance(req, str):
                code = "payload_too_large" if req in ("too_large", "body_too_large") else "malformed_frame"
                r = http_error(FxError(code, "request too large" if code != "malformed_frame" else "bad request"))
                write_response(writer, r.status, r.body, close=True)
                await writer.drain()
                return
            keep = (req.header("connection") or "").lower() != "close"
            methods, params = match_route(req.path)
            try:
                if methods is None:
                    raise FxError("not_found", "no route %s" % req.path[:200])
                h = methods.get(req.method)
                if h is None:
                    raise FxError("method_not_allowed", "%s is not allowed here" % req.method,
                                  None)
                if h == "ws":
                    await ws_upgrade(req, params, reader, writer)
                    return
                if h == "stream":
                    await h_stream(req, params, reader, writer)
                    return
                res = h(req, params)
                if asyncio.iscoroutine(res):
                    res = await res
                status, body = res
                write_response(writer, status, body, close=not keep)
            except FxError as e:
                r = http_error(e, {"Allow": ", ".join(methods)} if e.code == "method_not_allowed" else None)
                write_response(writer, r.status, r.body, r.headers, close=not keep)
            await writer.drain()
            if not keep:
                return
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, OSError):
        pass
    except Exception as e:
        log("http error: %r" % e)
        try:
            r = http_error(FxError("internal_error", "internal error"))
            write_response(writer, r.status, r.body, close=True)
        except Exception:
            pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


def refuse_ws(writer, e):
    """FX-HS-3's MAY: refuse the upgrade with the HTTP status and ErrorBody."""
    r = http_error(e)
    write_response(writer, r.status, r.body, close=True)


async def ws_upgrade(req, params, reader, writer):
    upgrade = (req.header("upgrade") or "").lower()
    key = req.header("sec-websocket-key")
    if "websocket" not in upgrade or not key:
        r = http_error(FxError("invalid_frame", "this endpoint needs Upgrade: websocket", "Upgrade"))
        write_response(writer, r.status, r.body, close=True)
        await writer.drain()
        return
    failure = None
    ident = None
    room = None
    try:
        v = req.query.get("v")
        if v is not None and v != "1":
            raise FxError("unsupported_version", "protocol version %r is not supported" % v[:16])
        ident = auth_ident(req)
        room = get_room(ident, params[0])
    except FxError as e:
        failure = e
    if failure is not None and CFG.alternatives:
        refuse_ws(writer, failure)
        await writer.drain()
        return
    accept = base64.b64encode(hashlib.sha1((key.strip() + WS_GUID).encode()).digest()).decode()
    lines = ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade",
             "Sec-WebSocket-Accept: " + accept]
    offered = [p.strip() for p in (req.header("sec-websocket-protocol") or "").split(",") if p.strip()]
    if "fluxy.v1" in offered:
        lines.append("Sec-WebSocket-Protocol: fluxy.v1")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    if failure is not None:
        code = HANDSHAKE_CLOSE.get(failure.code, 4004)
        writer.write(ws_frame(1, dumps(err_obj(failure))))
        writer.write(ws_frame(8, struct.pack("!H", code) + CLOSE_REASON[code].encode()))
        await writer.drain()
        try:
            await asyncio.wait_for(reader.read(1 << 16), 2.0)
        except Exception:
            pass
        return
    conn = Conn(reader, writer, room, ident, req.query)
    # The connect sequence runs without yielding, so no event can slip between the snapshot and
    # live delivery (FX-HS-9), and frames the client sends meanwhile wait in the socket (FX-HS-10).
    cur = room.seq
    conn.send({"type": "welcome", "protocolVersion": PROTOCOL_VERSION, "roomId": room.id,
               "userId": ident["sub"], "roles": ident["roles"], "connectionId": conn.id, "currentSeq": cur,
               "heartbeatIntervalMs": CFG.heartbeat_ms, "idleTimeoutMs": CFG.idle_timeout_ms,
               "tokenExpiresAt": ts(ident["exp"] * 1000),
               "limits": {"maxFrameBytes": CFG.max_frame_bytes, "maxContentChars": 4000,
                          "rateBurst": CFG.rate_burst, "ratePerSecond": CFG.rate_per_second,
                          "resumeWindow": CFG.resume_window, "maxPageLimit": CFG.max_page_limit}})
    q = req.query
    if "lastSeq" in q:
        last = q["lastSeq"]
        try:
            if not re.fullmatch(r"[0-9]{1,19}", last):
                raise FxError("invalid_frame", "lastSeq must be a non-negative integer", "lastSeq")
            conn.send(replay_frame(room, int(last), None))
        except FxError as e:
            conn.send(err_obj(e))
    elif q.get("replay") not in ("off", "false", "0"):
        n = q.get("replayLimit", q.get("historyLimit"))
        limit = 50
        if n is not None and re.fullmatch(r"[0-9]{1,19}", n):
            limit = min(int(n), 500)
        evs = room.events[max(0, cur - limit):cur] if limit else []
        conn.send({"type": "history", "roomId": room.id, "events": evs, "currentSeq": cur,
                   "hasMore": cur > len(evs)})
    room.conns.append(conn)
    conn.send({"type": "subscription_succeeded", "roomId": room.id, "socketId": conn.id,
               "subscriptionCount": len(room.conns)})
    broadcast_presence(room, joined=ident["sub"], skip=conn)
    CONNS.add(conn)
    try:
        await conn.run()
    finally:
        CONNS.discard(conn)


CONNS = set()


async def ticker():
    """Idle timeout (FX-LIM-8) and token expiry (FX-AUTH-10) for every open connection."""
    while True:
        await asyncio.sleep(0.2)
        t = time.monotonic()
        wall = time.time()
        for c in list(CONNS):
            if c.closed:
                continue
            try:
                if wall >= c.ident["exp"] + CFG.skew_s:
                    c.close(4005, FxError("token_expired", "token expired"))
                elif (t - c.last_recv) * 1000 >= CFG.idle_timeout_ms:
                    c.close(4000)
            except Exception as e:
                log("ticker: %r" % e)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# main


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--profile", choices=("full", "core"), default="full")
    ap.add_argument("--alternatives", action="store_true")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--db", metavar="PATH")
    g.add_argument("--memory", action="store_true")
    ap.add_argument("--seed", help="derive the dev tenants, keys and secrets from this string "
                    "(use the same seed to restart on the same --db)")
    ap.add_argument("--idle-timeout-ms", type=int)
    ap.add_argument("--pidfile", help="write this process's pid here (for zoo_restart.py)")
    args = ap.parse_args()

    CFG.profile = args.profile
    CFG.alternatives = args.alternatives
    if args.alternatives:
        CFG.max_frame_bytes = 65536  # FX-LIM-1 floor
        CFG.rate_burst, CFG.rate_per_second = 20, 10  # golden welcome.json; the spec sets no floor
        CFG.resume_window = 100  # FX-RES-5 floor
        CFG.replay_page = 100
        CFG.idle_timeout_ms, CFG.heartbeat_ms = 2000, 1000  # the floors of FX-LIM-10 (half: FX-LIM-8)
        CFG.skew_s = 5  # FX-AUTH-4: at most 5 s
        CFG.invalid_close_after = 100  # FX-FRM-11
        CFG.ratelimit_close_after = 100  # FX-LIM-6
    if args.idle_timeout_ms:
        CFG.idle_timeout_ms = args.idle_timeout_ms
        CFG.heartbeat_ms = args.idle_timeout_ms // 2 if args.alternatives else max(1, args.idle_timeout_ms * 3 // 8)

    global STORE
    STORE = Store(None if args.memory or not args.db else args.db)
    seed = args.seed or secrets.token_hex(16)

    def derive(label, n=24):
        return hmac.new(seed.encode(), label.encode(), hashlib.sha256).hexdigest()[:n]

    dev = {"endpoint": None}
    for i, suffix in ((1, ""), (2, "2")):
        tid = "zoo-" + derive("tenant%d" % i, 10)
        key = "fxk_" + derive("key%d" % i, 40)
        secret = derive("secret%d" % i, 48)
        STORE.add_tenant(tid, secret, [key])
        dev["apiKey" + suffix] = key
        dev["tenant" + suffix] = tid
        dev["jwtSecret" + suffix] = secret

    async def serve():
        server = await asyncio.start_server(handle_client, args.host, args.port, limit=1 << 17,
                                            reuse_address=True)
        port = server.sockets[0].getsockname()[1]
        dev["endpoint"] = "http://%s:%d" % (args.host, port)
        out = {k: dev[k] for k in ("endpoint", "apiKey", "apiKey2", "tenant", "tenant2", "jwtSecret",
                                   "jwtSecret2")}
        if args.pidfile:
            with open(args.pidfile, "w") as f:
                f.write("%d\n" % os.getpid())
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
        stop = asyncio.get_running_loop().create_future()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, lambda: stop.done() or stop.set_result(True))
        tick = asyncio.ensure_future(ticker())
        await stop
        tick.cancel()
        server.close()
        for c in list(CONNS):
            c.close(1001)
        await asyncio.sleep(0.05)
        if STORE.db:
            STORE.db.close()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
