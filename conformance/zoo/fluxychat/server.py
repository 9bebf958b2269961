#!/usr/bin/env python3
"""Zoo server (a): "fluxychat-shaped".

A chat server that behaves on the wire like FluxyChat's worker (chat core only), defects
included, as documented in ../shared/reference/fluxychat-wire-inventory.md ("the inventory";
section numbers below refer to it). It does not know Fluxy: no `welcome`, FluxyChat's snapshot
shape, free-text errors, no acks, global message ids, racy `seq`, HTTP refusals at the upgrade,
and so on. Written from the inventory alone; Python 3.11 standard library only.

Thin adapters (the only places it departs from FluxyChat, so a Fluxy runner can drive it):
  * the dev line on stdout (FluxyChat's /dev/provision returns one key; we print two tenants);
  * the API key header is FluxyChat's own `X-Fluxy-Api-Key`, so nothing else is needed;
  * the auth-token IP rate limit (30/min in FluxyChat, one bucket for every local caller) is off
    by default, as it evidently was in the issue-10 live run; `--auth-per-minute 30` restores it.

Where the inventory is silent, the choice made is marked "CHOICE:" in a comment.

Usage: python3 server.py --port 0
"""

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import random
import re
import secrets
import sys
import time
import uuid
from datetime import datetime, timezone
from urllib.parse import parse_qs, unquote, urlsplit

ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
CMID_RE = re.compile(r"^[A-Za-z0-9_-]{8,128}$")
EVENT_NAME_RE = re.compile(r"^client-[A-Za-z0-9_.-]+$")
TRACK_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:_-]{0,127}$")
MENTION_RE = re.compile(r"@([A-Za-z0-9_:]+)")
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_BODY = 1_048_576
MAX_WS_CHARS = 256_000  # UTF-16 code units (FLUXY_MAX_WS_FRAME_CHARS, §2.4)
MINTABLE_ROLES = ("owner", "admin", "member", "guest", "mod")  # §7: moderator/agent filtered out
ROOM_TYPES = ("dm", "group", "public", "announcement")
INBOUND_TYPES = {
    "ping", "message", "stream", "edit", "reaction", "read", "delete", "typing",
    "client_event", "location_update", "location_track_ended", "agentTyping", "resume",
}

CFG = argparse.Namespace()


def now_iso():
    t = datetime.now(timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def now_ms():
    return int(time.time() * 1000)


def utf16_len(s):
    return len(s.encode("utf-16-le")) // 2


def js_trim(s):
    return s.strip(" \t\n\r\v\f\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
                   "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff")


def js_number(v):
    """JavaScript Number(v), for the JWT `exp` coercion (§7: a numeric string is accepted)."""
    if isinstance(v, bool):
        return 1.0 if v else 0.0
    if isinstance(v, (int, float)):
        return float(v)
    if v is None:
        return 0.0
    if isinstance(v, str):
        s = v.strip()
        if s == "":
            return 0.0
        try:
            return float(s)
        except ValueError:
            return float("nan")
    return float("nan")


def js_truthy(v):
    if v is None or v is False:
        return False
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return v != 0 and v == v
    if isinstance(v, str):
        return v != ""
    return True


def log(msg):
    if CFG.verbose:
        print(msg, file=sys.stderr, flush=True)


async def d1():
    """One D1 round trip. The room DO's handlers are not serialised around these awaits
    (§2.8, §10 item 4), which is what reorders ids, broadcasts and seq allocation."""
    await asyncio.sleep(random.uniform(0.0005, CFG.d1_ms / 1000.0))


# --------------------------------------------------------------------------------------------
# Storage (D1 tables of §8, in memory)
# --------------------------------------------------------------------------------------------

class DB:
    def __init__(self):
        self.projects = {}        # id -> {jwt_secret}
        self.api_keys = {}        # raw key -> project id (§7: the raw key is the primary key)
        self.rooms = {}           # room id (GLOBAL, §0) -> row
        self.members = {}         # (room_id, user_id) -> row (no project_id, §8)
        self.messages = {}        # global autoincrement id -> row
        self.next_message_id = 1
        self.last_seq = {}        # (project, room) -> last_seq
        self.events = {}          # (project, room) -> {seq: event}
        self.reactions = []       # rows, no unique constraint
        self.reads = []           # rows, unique index lost (§8)
        self.rate = {}            # key -> [window_start, count]
        self.list_cache = {}      # GET /rooms KV cache: key -> (expires, body)

    def insert_message(self, **row):
        mid = self.next_message_id
        self.next_message_id += 1
        row["id"] = mid
        self.messages[mid] = row
        return row


DBI = DB()


def rate_hit(key, per_minute):
    """Fixed one-minute window. Returns seconds to wait, or 0 when allowed."""
    if per_minute <= 0:
        return 0
    now = time.time()
    w = DBI.rate.get(key)
    if w is None or now - w[0] >= 60:
        DBI.rate[key] = [now, 1]
        return 0
    if w[1] >= per_minute:
        return max(1, int(60 - (now - w[0])))
    w[1] += 1
    return 0


# --------------------------------------------------------------------------------------------
# JWT (§7)
# --------------------------------------------------------------------------------------------

def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64u_dec(s):
    s = s + "=" * (-len(s) % 4)
    return base64.urlsafe_b64decode(s.encode())


def sign_jwt(secret, payload):
    header = b64u(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = b64u(json.dumps(payload, separators=(",", ":")).encode())
    mac = hmac.new(secret.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64u(mac)}"


class AuthFail(Exception):
    def __init__(self, text):
        super().__init__(text)
        self.text = text


def verify_jwt(token):
    """§7 verification order. `alg` is never read; `nbf`/`aud` ignored; `exp` coerced like JS."""
    parts = token.split(".")
    if len(parts) != 3:
        raise AuthFail("Invalid token")
    try:
        payload = json.loads(b64u_dec(parts[1]))
        if not isinstance(payload, dict):
            raise ValueError
        sig = b64u_dec(parts[2])
    except Exception:
        raise AuthFail("Invalid token")
    if not js_truthy(payload.get("exp")):
        raise AuthFail("Token missing exp claim")
    if time.time() > js_number(payload.get("exp")):  # NaN compares false: never "expired"
        raise AuthFail("Token expired")
    sub, tid = payload.get("sub"), payload.get("tid")
    if not (isinstance(sub, str) and ID_RE.match(sub) and isinstance(tid, str) and ID_RE.match(tid)):
        raise AuthFail("Unauthorized")
    hmac.new(b"dummy", b"timing", hashlib.sha256).digest()
    proj = DBI.projects.get(tid)
    if proj is None:
        raise AuthFail("Unauthorized")
    mac = hmac.new(proj["jwt_secret"].encode(), f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(mac, sig):
        raise AuthFail("Unauthorized")
    roles = payload.get("roles")
    if not isinstance(roles, list):
        roles = []
    return {"sub": sub, "tid": tid, "roles": [r for r in roles if isinstance(r, str)], "exp": payload.get("exp")}


def is_owner_admin(user):
    return "owner" in user["roles"] or "admin" in user["roles"]


def is_guest_only(user):
    r = set(user["roles"])
    return "guest" in r and not (r & {"member", "owner", "admin", "mod", "moderator", "bot"})


def can_access_room(user, room_id, join_public=True):
    """lib/room-access.js as §7 describes it. The member query has no project filter."""
    room = DBI.rooms.get(room_id)
    if is_guest_only(user):
        return bool(room and room["project_id"] == user["tid"] and room["type"] == "public")
    if is_owner_admin(user):
        return bool(room and room["project_id"] == user["tid"])
    if (room_id, user["sub"]) in DBI.members:
        return True
    if room and room["project_id"] == user["tid"] and room["type"] == "public":
        if join_public:
            DBI.members[(room_id, user["sub"])] = {
                "role": "guest" if is_guest_only(user) else "member", "joined_at": now_iso()}
        return True
    return False


def mentions_of(content):
    out = []
    for m in MENTION_RE.findall(content):
        if m not in out:
            out.append(m)
    return out


def history_row(m, include_seq=True, rest=False):
    """The canonical history shape of §3 (messages-attachments.js)."""
    row = {
        "id": m["id"], "roomId": m["room_id"], "userId": m["user_id"], "senderId": m["user_id"],
        "content": m["content"], "createdAt": m["created_at"], "parentId": m["parent_id"],
        "editedAt": m.get("edited_at"), "deletedAt": None, "expiresAt": None, "kind": "text",
        "visibility": "room",
    }
    if m.get("client_message_id"):
        row["clientMessageId"] = m["client_message_id"]
    if include_seq and not rest and m.get("seq") is not None:
        row["seq"] = m["seq"]
    row["version"] = 1 if rest else m.get("version", 1)
    row["mentions"] = m.get("mentions", [])
    row["attachments"] = m.get("attachments", [])
    return row


def reaction_counts(ids):
    out = {}
    for r in DBI.reactions:
        if r["message_id"] in ids:
            d = out.setdefault(str(r["message_id"]), {})
            d[r["emoji"]] = d.get(r["emoji"], 0) + 1
    return out


def live_rows(project, room_id):
    rows = [m for m in DBI.messages.values()
            if m["room_id"] == room_id and m["project_id"] == project and m.get("deleted_at") is None]
    rows.sort(key=lambda m: (m["created_at"], m["id"]))
    return rows


# --------------------------------------------------------------------------------------------
# Room Durable Object (named by room id only, §0)
# --------------------------------------------------------------------------------------------

class RoomDO:
    def __init__(self, room_id):
        self.room_id = room_id
        self.project_id = None  # learnt from the first WebSocket (§6 cold-room bug)
        self.sockets = []
        self.sse = []
        self.streams = {}       # user id -> message id
        self.recovered = []     # presence recovery from read receipts (§10 item 13)
        self.last_cache_event = None

    def seq_key(self):
        return (self.project_id, self.room_id)

    async def alloc_seq(self, message_id, event_type, version, payload):
        """lib/room-message-seq.js: an upsert, then a separate SELECT. Not atomic (§3)."""
        key = self.seq_key()
        await d1()
        DBI.last_seq[key] = DBI.last_seq.get(key, 0) + 1
        await d1()
        seq = DBI.last_seq[key]
        evs = DBI.events.setdefault(key, {})
        if seq in evs:
            return None  # UNIQUE(room, seq) violated; the error is swallowed
        evs[seq] = {"seq": seq, "messageId": message_id, "eventType": event_type,
                    "version": version, "createdAt": now_iso(), "payload": payload}
        return seq

    def broadcast(self, frame, exclude=None, to_sse=True):
        text = json.dumps(frame, separators=(",", ":"))
        if frame.get("type") in ("message", "edit", "delete") and not frame.get("streaming"):
            self.last_cache_event = frame
        for c in list(self.sockets):
            if c is not exclude:
                c.send_text(text)
        if to_sse:
            for s in list(self.sse):
                s.push(text)

    def broadcast_binary(self, data, exclude=None):
        for c in list(self.sockets):
            if c is not exclude:
                c.send_binary(data)

    def yjs_update(self, key):
        """The Yjs binary update broadcast after every create/edit/delete (§2.7)."""
        body = json.dumps({"map": "fluxy_messages", "key": key, "t": now_ms()}).encode()
        self.broadcast_binary(bytes([1]) + body + bytes(max(0, 200 - len(body))))

    def presence(self):
        live = []
        members = []
        for c in self.sockets:
            if c.user["sub"] not in live:
                live.append(c.user["sub"])
                members.append({"userId": c.user["sub"], "userInfo": c.presence_info})
        users = list(self.recovered) + [u for u in live if u not in self.recovered]
        return {"type": "presence", "online": len(self.sockets), "users": users, "members": members}

    def recover_presence(self):
        """Seed "recovered" users from the latest 100 read receipts; never filtered (§2.6)."""
        rows = [r for r in DBI.reads if r["room_id"] == self.room_id][-100:]
        for r in reversed(rows):
            if r["user_id"] not in self.recovered:
                self.recovered.append(r["user_id"])

    def sub_count(self):
        return {"type": "subscription_count", "roomId": self.room_id, "subscriptionCount": len(self.sockets)}


ROOM_DOS = {}


def room_do(room_id):
    do = ROOM_DOS.get(room_id)
    if do is None:
        do = ROOM_DOS[room_id] = RoomDO(room_id)
    return do


# --------------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------------

REASONS = {200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request", 401: "Unauthorized",
           403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable",
           409: "Conflict", 413: "Payload Too Large", 429: "Too Many Requests",
           500: "Internal Server Error", 101: "Switching Protocols"}


class Request:
    def __init__(self, method, target, headers, body):
        self.method = method
        u = urlsplit(target)
        self.path = u.path
        self.query = {k: v[0] for k, v in parse_qs(u.query, keep_blank_values=True).items()}
        self.headers = headers
        self.body = body
        self.trace_id = headers.get("x-trace-id") or str(uuid.uuid4())

    def json(self):
        try:
            v = json.loads(self.body.decode("utf-8")) if self.body else None
        except Exception:
            return None
        return v

    def token(self):
        a = self.headers.get("authorization", "")
        if a.lower().startswith("bearer "):
            return a[7:].strip()
        return self.query.get("token")


class Response:
    def __init__(self, status, body=b"", ctype="text/plain;charset=UTF-8", headers=None):
        self.status = status
        self.body = body if isinstance(body, bytes) else body.encode()
        self.ctype = ctype
        self.headers = headers or {}


def text(status, body):
    return Response(status, body)


def jres(req, status, obj, headers=None):
    """lib/http-json.js: `traceId` is injected first whenever status >= 400."""
    if status >= 400:
        obj = {"traceId": req.trace_id, **obj}
    return Response(status, json.dumps(obj, separators=(",", ":")), "application/json", headers)


def write_response(writer, req_trace, resp, keep_alive=True):
    lines = [f"HTTP/1.1 {resp.status} {REASONS.get(resp.status, 'OK')}"]
    hdrs = {
        "Content-Type": resp.ctype,
        "Content-Length": str(len(resp.body)),
        "X-Trace-Id": req_trace,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "strict-origin-when-cross-origin",
        "X-Frame-Options": "DENY",
        "Connection": "keep-alive" if keep_alive else "close",
    }
    hdrs.update(resp.headers)
    for k, v in hdrs.items():
        lines.append(f"{k}: {v}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + resp.body)


async def read_request(reader):
    """Returns (method, target, headers, content_length, chunked) or None on EOF."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) < 3:
        raise ValueError("bad request line")
    headers = {}
    for ln in lines[1:]:
        if ":" in ln:
            k, v = ln.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return parts[0], parts[1], headers


async def read_body(reader, headers):
    if "chunked" in headers.get("transfer-encoding", "").lower():
        out = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return bytes(out)
            out += await reader.readexactly(size)
            await reader.readexactly(2)
            if len(out) > MAX_BODY:
                raise OverflowError
    n = int(headers.get("content-length", "0") or "0")
    if n > MAX_BODY:
        raise OverflowError
    return await reader.readexactly(n) if n else b""


async def handle_client(reader, writer):
    try:
        while True:
            try:
                method, target, headers = await read_request(reader)
            except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
                return
            except ValueError:
                write_response(writer, str(uuid.uuid4()), text(400, "Bad Request"), False)
                return
            trace = headers.get("x-trace-id") or str(uuid.uuid4())
            try:
                clen = int(headers.get("content-length", "0") or "0")
            except ValueError:
                clen = 0
            if clen > MAX_BODY:
                # Hono shell (§1.1): reject on Content-Length alone.
                req = Request(method, target, headers, b"")
                write_response(writer, trace, jres(req, 413, {"error": "payload_too_large"}), False)
                await writer.drain()
                return
            try:
                body = await read_body(reader, headers)
            except OverflowError:
                req = Request(method, target, headers, b"")
                write_response(writer, trace, jres(req, 413, {"error": "payload_too_large"}), False)
                await writer.drain()
                return
            req = Request(method, target, headers, body)
            req.trace_id = trace
            if req.path.startswith("/ws/") and "websocket" in headers.get("upgrade", "").lower():
                resp = await ws_upgrade(req, reader, writer)
                if resp is None:
                    return  # the connection became a WebSocket and is finished
                write_response(writer, trace, resp)
                await writer.drain()
                continue
            if method == "GET" and re.fullmatch(r"/rooms/[^/]+/stream", req.path):
                done = await sse(req, writer)
                if done:
                    return
                continue
            try:
                resp = await route(req)
            except Exception as e:  # noqa: BLE001  500 like the worker's top-level catch
                log(f"unhandled: {e!r}")
                resp = jres(req, 500, {"error": "Internal server error"})
            write_response(writer, trace, resp)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    except Exception as e:  # noqa: BLE001
        log(f"connection error: {e!r}")
    finally:
        try:
            writer.close()
        except Exception:  # noqa: BLE001
            pass


def authenticate(req):
    """Returns (user, None) or (None, Response)."""
    tok = req.token()
    if not tok:
        return None, text(401, "Unauthorized")
    try:
        return verify_jwt(tok), None
    except AuthFail as e:
        return None, text(401, e.text)


# --------------------------------------------------------------------------------------------
# Routes (§1.2, §1.3)
# --------------------------------------------------------------------------------------------

async def route(req):
    p, m = req.path, req.method
    if m == "OPTIONS":
        return Response(204, b"", headers={
            "Access-Control-Allow-Methods": "GET,POST,PUT,PATCH,DELETE,OPTIONS",
            "Access-Control-Allow-Headers": "Content-Type,Authorization,X-Trace-Id,X-Fluxy-Api-Key,X-Project-Id"})
    if p == "/health" and m == "GET":
        return jres(req, 200, {
            "ok": True, "ts": now_ms(), "projectId": None, "version": "0.2.0",
            "checks": {"database": "ok", "durableObjects": "ok", "kv": "ok", "r2": "ok"},
            "platformBindings": {"flagship": False, "browserRun": False, "workflowSchedules": False},
            "degradedFeatures": {}, "paymentsEnabled": False})
    if p == "/config/client" and m == "GET":
        return jres(req, 200, {"client": {"readOn": "visible", "wsCache": "on", "historyLimit": 50},
                               "source": "fluxy.config"})
    if p in ("/auth/token", "/auth/signin") and m == "POST":
        return await auth_token(req, signin=(p == "/auth/signin"))
    if (p == "/admin" or p.startswith("/admin/")) and not req.headers.get("authorization", "").lower().startswith("bearer "):
        return text(401, "Unauthorized")
    if p == "/messages" and m == "POST":
        return await post_message(req)
    mm = re.fullmatch(r"/messages/([^/]+)", p)
    if mm and m in ("PATCH", "DELETE"):
        return await (patch_message(req, mm.group(1)) if m == "PATCH" else delete_message(req, mm.group(1)))
    mm = re.fullmatch(r"/messages/([^/]+)/reactions", p)
    if mm and m in ("POST", "DELETE"):
        return await rest_reaction(req, mm.group(1), "add" if m == "POST" else "remove")
    if p == "/api/messages" and m == "GET":
        return await api_messages(req)
    if p == "/rooms" and m == "GET":
        return await list_rooms(req)
    if p == "/rooms" and m == "POST":
        return await create_room(req)
    mm = re.fullmatch(r"/rooms/([^/]+)", p)
    if mm and m in ("GET", "DELETE"):
        return await (get_room(req, unquote(mm.group(1))) if m == "GET" else delete_room(req, mm.group(1)))
    mm = re.fullmatch(r"/rooms/([^/]+)/members", p)
    if mm and m in ("GET", "POST"):
        return await (get_members(req, mm.group(1)) if m == "GET" else add_member(req, mm.group(1)))
    mm = re.fullmatch(r"/rooms/([^/]+)/members/([^/]+)", p)
    if mm and m == "DELETE":
        return await remove_member(req, mm.group(1), mm.group(2))
    mm = re.fullmatch(r"/rooms/([^/]+)/read", p)
    if mm and m == "POST":
        return await rest_read(req, mm.group(1))
    if p == "/events" and m == "POST":
        return await post_events(req)
    if p.startswith("/ws/"):
        return text(400, "Expected WebSocket")
    return text(404, "Not found")


async def auth_token(req, signin=False):
    key = req.headers.get("x-fluxy-api-key") or req.query.get("apiKey")
    if not key:
        return jres(req, 401, {"error": "api key required"})
    project = DBI.api_keys.get(key)
    if project is None:
        return jres(req, 401, {"error": "invalid api key"})
    fp = hashlib.sha256(key.encode()).hexdigest()[:16]
    wait = rate_hit(("auth", "unknown", fp), CFG.auth_per_minute)
    if wait:
        return jres(req, 429, {"error": "rate_limit_exceeded", "retryAfterSeconds": wait},
                    {"Retry-After": str(wait)})
    body = req.json()
    if not isinstance(body, dict) or body.get("userId") in (None, ""):
        return jres(req, 400, {"error": "userId required"})
    uid = body.get("userId")
    if not isinstance(uid, str) or not ID_RE.match(uid):
        return jres(req, 400, {"error": "userId required: must be 1-128 chars, alphanumeric with _ -"})
    ttl = body.get("ttlSeconds")
    ttl = int(ttl) if isinstance(ttl, (int, float)) and not isinstance(ttl, bool) else 3600
    ttl = max(60, min(86400, ttl))
    asked = body.get("roles")
    claims = {"sub": uid, "tid": project}
    payload = {"sub": uid, "tid": project}
    if isinstance(asked, list) and asked:
        # Filtered to owner|admin|member|guest|mod; an empty result becomes ["member"] (§7).
        roles = [r for r in asked if isinstance(r, str) and r in MINTABLE_ROLES]
        roles = list(dict.fromkeys(roles)) or ["member"]
        claims["roles"] = roles
        payload["roles"] = roles
    # CHOICE (issue 10, live): without requested roles the claims (and the token) carry none.
    now = int(time.time())
    payload["iat"] = now
    payload["exp"] = now + ttl
    token = sign_jwt(DBI.projects[project]["jwt_secret"], payload)
    out = {"token": token, "expiresIn": ttl, "claims": claims}
    if signin:
        out.update({"signin": True, "userId": uid, "projectId": project,
                    "userChannel": {"websocketPath": f"/ws/user/{uid}", "eventsPath": f"/users/{uid}/events"}})
    return jres(req, 200, out)


def room_in_project(room_id, project):
    r = DBI.rooms.get(room_id)
    return r if r and r["project_id"] == project else None


async def create_room(req):
    user, err = authenticate(req)
    if err:
        return err
    body = req.json()
    if not isinstance(body, dict):
        return jres(req, 400, {"error": "Invalid JSON body"})
    name = body.get("name")
    if not isinstance(name, str) or not (1 <= len(name) <= 256):
        return jres(req, 400, {"error": "name required (1-256 chars)"})
    rtype = body.get("type")
    if rtype not in ROOM_TYPES:
        return jres(req, 400, {"error": "type must be one of dm, group, public, announcement"})
    rid = body.get("id")
    if rid is None:
        rid = str(uuid.uuid4())
    if not isinstance(rid, str) or not ID_RE.match(rid):
        return jres(req, 400, {"error": "invalid room id"})
    members = body.get("members") or []
    if not isinstance(members, list):
        return jres(req, 400, {"error": "members must be an array"})
    clean = []
    for mem in members:
        if not isinstance(mem, dict) or not isinstance(mem.get("userId"), str) or not ID_RE.match(mem["userId"]):
            return jres(req, 400, {"error": "invalid member userId"})
        role = mem.get("role") or "member"
        if role not in ("owner", "admin", "moderator", "member"):
            return jres(req, 400, {"error": "invalid member role"})
        clean.append((mem["userId"], role))
    await d1()
    existing = DBI.rooms.get(rid)
    if existing and existing["project_id"] != user["tid"]:
        return jres(req, 409, {"error": "room_id_already_exists"})
    if existing is None:
        existing = DBI.rooms[rid] = {"id": rid, "project_id": user["tid"], "type": rtype, "name": name,
                                     "created_at": now_iso()}
        DBI.members[(rid, user["sub"])] = {"role": "owner", "joined_at": now_iso()}
    # An existing id of the same project is idempotent and merges members (§1.3).
    for uid, role in clean:
        if (rid, uid) not in DBI.members:
            DBI.members[(rid, uid)] = {"role": role, "joined_at": now_iso()}
    r = existing
    return jres(req, 200, {"room": {"id": r["id"], "type": r["type"], "name": r["name"], "created_at": r["created_at"]}})


def room_list_row(r, uid):
    return {"id": r["id"], "type": r["type"], "name": r["name"], "created_at": r["created_at"],
            "pinned_message_id": None, "pinned_at": None, "pinned_by_user_id": None,
            "unreadCount": 0}


async def list_rooms(req):
    user, err = authenticate(req)
    if err:
        return err
    rtype = req.query.get("type")
    ck = (user["tid"], user["sub"], tuple(sorted(user["roles"])), rtype)
    hit = DBI.list_cache.get(ck)
    if hit and hit[0] > time.time():
        return jres(req, 200, hit[1])  # KV cache, 30 s (§1.3)
    await d1()
    rows = []
    for r in DBI.rooms.values():
        if r["project_id"] != user["tid"]:
            continue
        if rtype and r["type"] != rtype:
            continue
        if is_owner_admin(user) or (r["id"], user["sub"]) in DBI.members:
            rows.append(room_list_row(r, user["sub"]))
    body = {"rooms": rows}
    DBI.list_cache[ck] = (time.time() + 30, body)
    return jres(req, 200, body)


async def get_room(req, rid):
    user, err = authenticate(req)
    if err:
        return err
    r = room_in_project(rid, user["tid"])
    if r is None:
        return jres(req, 404, {"error": "room not found"})
    if not can_access_room(user, rid):
        return jres(req, 403, {"error": "forbidden"})
    return jres(req, 200, {"room": {"id": r["id"], "type": r["type"], "name": r["name"], "created_at": r["created_at"]}})


async def delete_room(req, rid):
    user, err = authenticate(req)
    if err:
        return err
    if not is_owner_admin(user):
        return jres(req, 403, {"error": "forbidden"})
    if room_in_project(rid, user["tid"]) is None:
        return jres(req, 404, {"error": "room not found"})
    DBI.rooms.pop(rid, None)
    for k in [k for k in DBI.members if k[0] == rid]:
        DBI.members.pop(k, None)
    for k in [k for k, m in DBI.messages.items() if m["room_id"] == rid]:
        DBI.messages.pop(k, None)
    return jres(req, 200, {"ok": True, "roomId": rid})


async def get_members(req, rid):
    user, err = authenticate(req)
    if err:
        return err
    if room_in_project(rid, user["tid"]) is None:
        return jres(req, 404, {"error": "room not found"})
    if not can_access_room(user, rid):
        return jres(req, 403, {"error": "forbidden"})
    out = [{"userId": u, "role": row["role"], "joinedAt": row["joined_at"], "notifyEnabled": True,
            "preferences": {}} for (r, u), row in DBI.members.items() if r == rid][:1000]
    return jres(req, 200, {"members": out})


async def add_member(req, rid):
    user, err = authenticate(req)
    if err:
        return err
    if not is_owner_admin(user):  # owner/admin JWT role; the room role is not consulted (§1.3)
        return jres(req, 403, {"error": "forbidden"})
    if room_in_project(rid, user["tid"]) is None:
        return jres(req, 404, {"error": "room not found"})
    body = req.json()
    if not isinstance(body, dict) or not isinstance(body.get("userId"), str) or not ID_RE.match(body["userId"]):
        return jres(req, 400, {"error": "userId required"})
    role = body.get("role") or "member"
    if role not in ("owner", "admin", "moderator", "member"):
        return jres(req, 400, {"error": "invalid role"})
    DBI.members[(rid, body["userId"])] = {"role": role, "joined_at": now_iso()}
    return jres(req, 200, {"ok": True, "roomId": rid, "userId": body["userId"], "role": role, "e2eRewrapped": False})


async def remove_member(req, rid, uid):
    user, err = authenticate(req)
    if err:
        return err
    if not is_owner_admin(user):
        return jres(req, 403, {"error": "forbidden"})
    if room_in_project(rid, user["tid"]) is None:
        return jres(req, 404, {"error": "room not found"})
    DBI.members.pop((rid, uid), None)
    return jres(req, 200, {"ok": True, "roomId": rid, "userId": uid})


def can_post_announcement(user, rid):
    row = DBI.members.get((rid, user["sub"]))
    if row and row["role"] in ("owner", "admin", "moderator", "mod"):
        return True
    return bool(set(user["roles"]) & {"owner", "admin", "mod", "moderator"})


async def post_message(req):
    user, err = authenticate(req)
    if err:
        return err
    body = req.json()
    if not isinstance(body, dict):
        return jres(req, 400, {"error": "Invalid JSON body"})
    rid = body.get("roomId")
    if not isinstance(rid, str) or not rid:
        return jres(req, 400, {"error": "roomId required"})
    content = body.get("content")
    if not isinstance(content, str):
        return jres(req, 400, {"error": "content required"})
    content = js_trim(content)
    if not content:
        return jres(req, 400, {"error": "content must not be empty"})
    if utf16_len(content) > 4000:
        return jres(req, 400, {"error": "content exceeds 4000 characters"})
    atts = body.get("attachments")
    if atts is not None:
        if not isinstance(atts, list) or len(atts) > 10:
            return jres(req, 400, {"error": "attachments must be an array of at most 10"})
        for a in atts:
            url = a.get("url") if isinstance(a, dict) else None
            if not isinstance(url, str) or not re.match(r"^https?://", url) or len(url) > 2048:
                return jres(req, 400, {"error": "attachment url must be http(s) and <= 2048 chars"})
            if isinstance(a.get("name"), str) and len(a["name"]) > 255:
                return jres(req, 400, {"error": "attachment name too long"})
    room = room_in_project(rid, user["tid"])
    if room is None:
        return jres(req, 404, {"error": "room not found"})
    if not can_access_room(user, rid):
        return jres(req, 403, {"error": "forbidden"})
    if is_guest_only(user):
        return jres(req, 403, {"error": "guest_read_only"})
    if room["type"] == "announcement" and not can_post_announcement(user, rid):
        return jres(req, 403, {"error": "announcement_read_only"})
    wait = rate_hit(("rest", user["tid"], user["sub"], rid), CFG.rest_per_minute)
    if wait:
        return jres(req, 429, {"error": "rate_limit_exceeded", "retryAfterSeconds": wait},
                    {"Retry-After": str(wait)})
    cmid = body.get("clientMessageId")
    cmid = cmid if isinstance(cmid, str) and CMID_RE.match(cmid) else None
    await d1()
    if cmid:
        for m in DBI.messages.values():
            if (m["project_id"], m["room_id"], m.get("client_message_id")) == (user["tid"], rid, cmid) \
                    and m.get("deleted_at") is None:
                return jres(req, 200, {"message": history_row(m, rest=True)})
    reply = body.get("replyTo")
    m = DBI.insert_message(
        project_id=user["tid"], room_id=rid, user_id=user["sub"], content=content, created_at=now_iso(),
        parent_id=reply if isinstance(reply, int) and not isinstance(reply, bool) else None,
        client_message_id=cmid, mentions=mentions_of(content),
        attachments=[{"id": str(uuid.uuid4()), "kind": a.get("kind") or "file", "url": a["url"],
                      "name": a.get("name"), "sizeBytes": a.get("sizeBytes"), "contentType": a.get("contentType")}
                     for a in (atts or [])],
        version=1, seq=None, edited_at=None, deleted_at=None)
    msg = rest_message_json(m)
    do = room_do(rid)
    # Broadcast via /announce: no seq, no version (§2.6).
    do.broadcast({"type": "message", **msg})
    do.yjs_update(f"s:{m['id']}")
    return jres(req, 201, {"message": msg})


def rest_message_json(m):
    out = {"id": m["id"], "roomId": m["room_id"], "userId": m["user_id"], "senderId": m["user_id"],
           "content": m["content"], "createdAt": m["created_at"], "parentId": m["parent_id"]}
    if m.get("client_message_id"):
        out["clientMessageId"] = m["client_message_id"]
    out.update({"mentions": m.get("mentions", []), "preview": None, "attachments": m.get("attachments", [])})
    return out


def parse_mid(s):
    try:
        return int(s)
    except ValueError:
        return None


async def patch_message(req, mid_s):
    user, err = authenticate(req)
    if err:
        return err
    m = DBI.messages.get(parse_mid(mid_s))
    if m is None or m["project_id"] != user["tid"]:
        return jres(req, 404, {"error": "message not found"})
    if m["user_id"] != user["sub"]:
        return jres(req, 403, {"error": "forbidden"})
    if m.get("deleted_at"):
        return jres(req, 409, {"error": "message deleted"})
    body = req.json()
    content = body.get("content") if isinstance(body, dict) else None
    if not isinstance(content, str):
        return jres(req, 400, {"error": "content required"})
    m["content"] = content
    m["edited_at"] = now_iso()
    do = room_do(m["room_id"])
    do.broadcast({"type": "edit", "id": str(m["id"]), "roomId": m["room_id"], "userId": user["sub"],
                  "content": content, "editedAt": m["edited_at"]})
    do.yjs_update(f"s:{m['id']}")
    return jres(req, 200, {"message": {"id": str(m["id"]), "roomId": m["room_id"], "senderId": m["user_id"],
                                       "content": content, "editedAt": m["edited_at"]}})


async def delete_message(req, mid_s):
    user, err = authenticate(req)
    if err:
        return err
    m = DBI.messages.get(parse_mid(mid_s))
    if m is None or m["project_id"] != user["tid"]:
        return jres(req, 404, {"error": "message not found"})
    if m["user_id"] != user["sub"]:
        return jres(req, 403, {"error": "forbidden"})
    hard = req.query.get("hard") == "true"
    if hard and not is_owner_admin(user):
        return jres(req, 403, {"error": "forbidden"})
    at = now_iso()
    if hard:
        DBI.messages.pop(m["id"], None)
    else:
        m["deleted_at"] = at
        m["content"] = "[deleted]"
    do = room_do(m["room_id"])
    do.broadcast({"type": "delete", "id": str(m["id"]), "roomId": m["room_id"], "userId": user["sub"],
                  "deletedAt": at, "hard": hard})
    do.yjs_update(f"s:{m['id']}")
    return jres(req, 200, {"ok": True, "hard": hard, "deletedAt": at})


async def rest_reaction(req, mid_s, op):
    user, err = authenticate(req)
    if err:
        return err
    m = DBI.messages.get(parse_mid(mid_s))
    if m is None or m["project_id"] != user["tid"]:  # project only: no room-membership check
        return jres(req, 404, {"error": "message not found"})
    body = req.json()
    emoji = body.get("emoji") if isinstance(body, dict) else None
    if not isinstance(emoji, str) or not js_trim(emoji) or len(emoji) > 64:
        return jres(req, 400, {"error": "invalid emoji"})
    emoji = js_trim(emoji)
    if op == "add":
        DBI.reactions.append({"message_id": m["id"], "room_id": m["room_id"], "user_id": user["sub"],
                              "emoji": emoji, "created_at": now_iso()})
    else:
        for i, r in enumerate(DBI.reactions):
            if (r["message_id"], r["user_id"], r["emoji"]) == (m["id"], user["sub"], emoji):
                DBI.reactions.pop(i)
                break
    reaction = {"messageId": str(m["id"]), "roomId": m["room_id"], "userId": user["sub"], "emoji": emoji, "op": op}
    room_do(m["room_id"]).broadcast({"type": "reaction", "roomId": m["room_id"], "userId": user["sub"],
                                     "messageId": str(m["id"]), "emoji": emoji, "op": op})
    return jres(req, 200, {"ok": True, "reaction": reaction})


async def rest_read(req, rid):
    user, err = authenticate(req)
    if err:
        return err
    body = req.json()
    mid = body.get("messageId") if isinstance(body, dict) else None
    if mid not in DBI.messages:  # FOREIGN KEY constraint failed
        return jres(req, 500, {"error": "Internal server error"})
    # No access check and no WebSocket broadcast (§1.3).
    DBI.reads.append({"room_id": rid, "user_id": user["sub"], "message_id": mid, "created_at": now_iso()})
    return jres(req, 200, {"ok": True})


async def api_messages(req):
    user, err = authenticate(req)
    if err:
        return err
    rid = req.query.get("roomId")
    if not rid:
        return jres(req, 400, {"error": "roomId required"})
    if not can_access_room(user, rid):
        return jres(req, 403, {"error": "forbidden"})
    lim_s = req.query.get("limit", "50")
    try:
        limit = int(lim_s)
    except ValueError:
        return jres(req, 500, {"error": "Internal server error"})  # limit=abc is an error (§4)
    await d1()
    room = DBI.rooms.get(rid)
    project = room["project_id"] if room else user["tid"]
    rows = live_rows(project, rid)
    before = req.query.get("before")
    if before is not None:
        rows = [m for m in rows if m["created_at"] < before]  # string comparison (§4)
    rows.sort(key=lambda m: m["created_at"], reverse=True)  # ORDER BY created_at DESC
    if limit >= 0:
        rows = rows[:limit]  # no clamp; -1 is unbounded in SQLite
    ids = {m["id"] for m in rows}
    return jres(req, 200, {"messages": [history_row(m, rest=True) for m in rows],
                           "reactions": reaction_counts(ids)})


async def post_events(req):
    user, err = authenticate(req)
    if err:
        return err
    body = req.json()
    if not isinstance(body, dict):
        return jres(req, 400, {"error": "Invalid JSON body"})
    rooms = body.get("roomIds") or body.get("rooms") or body.get("channels")
    if not isinstance(rooms, list) or not rooms:
        return jres(req, 400, {"error": "roomIds_required"})
    if len(rooms) > 50:
        return jres(req, 400, {"error": "too_many_rooms"})
    for r in rooms:
        if not isinstance(r, str) or not ID_RE.match(r):
            return jres(req, 400, {"error": "invalid_room_id"})
    name, event = body.get("name"), body.get("event")
    if not name and not isinstance(event, dict) and not body.get("type"):
        return jres(req, 400, {"error": "event_or_name_required"})
    denied = [r for r in rooms if not is_owner_admin(user) and (r, user["sub"]) not in DBI.members]
    if denied:
        return jres(req, 403, {"error": "forbidden", "roomIds": denied})
    for r in rooms:
        do = room_do(r)
        if name:
            do.broadcast({"type": "server_event", "roomId": r, "name": name, "data": body.get("data"),
                          "userId": user["sub"]})
        else:
            ev = dict(event) if isinstance(event, dict) else {"type": body.get("type")}
            # /announce: known branches are forwarded; anything else becomes a generic, unpersisted
            # `message` with caller-chosen fields (§10 item 2).
            if ev.get("type") not in ("user_event", "agentTyping", "server_event", "capability_event", "edit",
                                      "delete", "reaction", "message_updated"):
                ev = {"type": "message", "id": ev.get("id", now_ms()), "roomId": r,
                      "userId": ev.get("userId", "system"), **{k: v for k, v in ev.items() if k != "type"}}
            do.broadcast(ev)
    return jres(req, 200, {"ok": True, "triggered": rooms})


# --------------------------------------------------------------------------------------------
# Server-Sent Events (§6)
# --------------------------------------------------------------------------------------------

class SSEConn:
    def __init__(self, writer):
        self.writer = writer
        self.q = asyncio.Queue()

    def push(self, text_):
        self.q.put_nowait(text_)


async def sse(req, writer):
    """Returns True when the HTTP connection is finished."""
    rid = req.path.split("/")[2]
    user, err = authenticate(req)
    if err is None and not can_access_room(user, rid):
        err = text(403, "Forbidden")
    if err is None:
        accept = req.headers.get("accept", "")
        if "text/event-stream" not in accept and "*/*" not in accept:
            err = jres(req, 406, {"error": "Accept must include text/event-stream"})
    if err is None:
        do = ROOM_DOS.get(rid)
        if do is None or do.project_id is None:
            # The DO never saw a WebSocket: it checks access against its hex object id (§6).
            err = text(403, "Forbidden")
    if err is not None:
        write_response(writer, req.trace_id, err)
        await writer.drain()
        return False
    hdr = ("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
           "Connection: keep-alive\r\nX-Accel-Buffering: no\r\n"
           f"X-Trace-Id: {req.trace_id}\r\nX-Content-Type-Options: nosniff\r\n"
           "Transfer-Encoding: chunked\r\n\r\n")
    writer.write(hdr.encode())
    conn = SSEConn(writer)

    def chunk(s):
        b = s.encode()
        return f"{len(b):x}\r\n".encode() + b + b"\r\n"

    rows = live_rows(do.project_id, rid)[-50:]
    first = {"type": "history", "messages": [history_row(m, include_seq=False) for m in rows]}
    writer.write(chunk("data: " + json.dumps(first, separators=(",", ":")) + "\n\n"))
    do.sse.append(conn)
    try:
        await writer.drain()
        while True:
            try:
                item = await asyncio.wait_for(conn.q.get(), timeout=30)
                writer.write(chunk("data: " + item + "\n\n"))
            except asyncio.TimeoutError:
                writer.write(chunk(": heartbeat\n\n"))
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        if conn in do.sse:
            do.sse.remove(conn)
    return True


# --------------------------------------------------------------------------------------------
# WebSocket (RFC 6455) and the room channel (§2)
# --------------------------------------------------------------------------------------------

class WSConn:
    def __init__(self, reader, writer, user, do, presence_info):
        self.reader = reader
        self.writer = writer
        self.user = user
        self.do = do
        self.socket_id = str(uuid.uuid4())
        self.presence_info = presence_info
        self.closed = False

    def _frame(self, opcode, payload):
        n = len(payload)
        if n < 126:
            head = bytes([0x80 | opcode, n])
        elif n < 65536:
            head = bytes([0x80 | opcode, 126]) + n.to_bytes(2, "big")
        else:
            head = bytes([0x80 | opcode, 127]) + n.to_bytes(8, "big")
        return head + payload

    def _write(self, data):
        if self.closed or self.writer.is_closing():
            self.closed = True
            return
        try:
            self.writer.write(data)
        except Exception:  # noqa: BLE001
            self.closed = True

    def send_text(self, s):
        self._write(self._frame(0x1, s.encode()))

    def send_json(self, obj):
        self.send_text(json.dumps(obj, separators=(",", ":")))

    def send_binary(self, b):
        self._write(self._frame(0x2, b))

    def error(self, message, **extra):
        self.send_json({"type": "error", "message": message, **extra})

    def close(self, code, reason=""):
        if self.closed:
            return
        self._write(self._frame(0x8, code.to_bytes(2, "big") + reason.encode()[:120]))
        self.closed = True


async def read_ws_frame(reader):
    """Returns (fin, opcode, payload). Client frames are masked."""
    b0, b1 = await reader.readexactly(2)
    fin = bool(b0 & 0x80)
    opcode = b0 & 0x0F
    masked = bool(b1 & 0x80)
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await reader.readexactly(8), "big")
    if n > 64 * 1024 * 1024:
        raise ConnectionError("frame too large")
    mask = await reader.readexactly(4) if masked else b"\0\0\0\0"
    data = bytearray(await reader.readexactly(n))
    if masked:
        for i in range(n):
            data[i] ^= mask[i & 3]
    return fin, opcode, bytes(data)


def parse_presence_info(raw):
    if not raw or len(raw) > 2048:
        return {}
    try:
        v = json.loads(raw)
    except Exception:
        return {}
    if not isinstance(v, dict):
        return {}
    out = {}
    if isinstance(v.get("name"), str):
        out["name"] = v["name"][:64]
    if isinstance(v.get("avatar_url"), str) and re.match(r"^https?://", v["avatar_url"]):
        out["avatar_url"] = v["avatar_url"]
    if isinstance(v.get("role"), str):
        out["role"] = v["role"][:32]
    return out


async def ws_upgrade(req, reader, writer):
    """Returns a Response for a refused upgrade, or None after serving the WebSocket."""
    parts = req.path.split("/")
    if len(parts) == 4 and parts[2] == "user":
        return await ws_user_channel(req, reader, writer, parts[3])
    if len(parts) != 4 or parts[2] != "room":
        return text(404, "Not found")
    rid = parts[3]
    user, err = authenticate(req)
    if err:
        return err
    if not ID_RE.match(rid):
        return jres(req, 400, {"error": "invalid roomId"})
    if not can_access_room(user, rid):
        return jres(req, 403, {"error": "forbidden: user is not a member of this room"})
    key = req.headers.get("sec-websocket-key")
    if not key:
        return jres(req, 500, {"error": "websocket_upgrade_failed"})
    accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
    # No Sec-WebSocket-Protocol is ever selected.
    writer.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Accept: {accept}\r\n\r\n").encode())
    do = room_do(rid)
    conn = WSConn(reader, writer, user, do, parse_presence_info(req.query.get("presenceInfo")))
    await serve_room_socket(conn, req.query)
    return None


async def ws_user_channel(req, reader, writer, uid):
    user, err = authenticate(req)
    if err:
        return err
    if user["sub"] != uid:
        return jres(req, 403, {"error": "forbidden"})
    key = req.headers.get("sec-websocket-key", "")
    accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
    writer.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Accept: {accept}\r\n\r\n").encode())
    conn = WSConn(reader, writer, user, None, {})
    conn.send_json({"type": "user_subscription_succeeded", "userId": uid, "socketId": conn.socket_id,
                    "connectionCount": 1})
    try:
        while True:
            _, op, payload = await read_ws_frame(reader)
            if op == 0x8:
                conn.close(1000)
                return None
            if op == 0x9:
                conn._write(conn._frame(0xA, payload))
            # every client frame is ignored, `ping` included (§2.6)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


async def serve_room_socket(conn, query):
    do = conn.do
    room = DBI.rooms.get(do.room_id)
    if do.project_id is None:
        do.project_id = room["project_id"] if room else conn.user["tid"]
    # CHOICE: the socket joins the broadcast set at accept(), before the snapshot query.
    first_for_user = all(c.user["sub"] != conn.user["sub"] for c in do.sockets)
    do.sockets.append(conn)
    reader_task = None
    try:
        replay = (query.get("replay") or "").lower()
        lim_s = query.get("replayLimit") or query.get("historyLimit") or "50"
        try:
            limit = int(lim_s)
            limit = 50 if limit <= 0 else min(limit, 500)
        except ValueError:
            limit = 50
        if (query.get("cache") or "").lower() in ("1", "true", "on") and do.last_cache_event:
            conn.send_json({"type": "cache_snapshot", "roomId": do.room_id, "event": do.last_cache_event,
                            "cachedAt": now_iso()})
        if replay not in ("off", "false", "0"):
            await d1()
            rows = live_rows(do.project_id, do.room_id)[-limit:]
            ids = {m["id"] for m in rows}
            conn.send_json({"type": "replay" if replay in ("connect", "true", "1") else "history",
                            "messages": [history_row(m) for m in rows], "reactions": reaction_counts(ids)})
        sid = do.streams.get(conn.user["sub"])
        if sid and sid in DBI.messages:
            m = DBI.messages[sid]
            conn.send_json({"type": "streamState", "messageId": sid, "roomId": do.room_id, "userId": m["user_id"],
                            "content": m["content"], "createdAt": m["created_at"], "parentId": m["parent_id"],
                            "streaming": True})
        conn.send_json({"type": "location_snapshot", "roomId": do.room_id, "tracks": [], "generatedAt": now_iso()})
        # Inbound frames queued during set-up are processed from here on (§2.3).
        reader_task = asyncio.ensure_future(ws_read_loop(conn))
        do.recover_presence()
        conn.send_json({"type": "subscription_succeeded", "roomId": do.room_id, "socketId": conn.socket_id,
                        "subscriptionCount": len(do.sockets),
                        "members": [{"userId": c.user["sub"], "userInfo": c.presence_info} for c in do.sockets]})
        if first_for_user:
            do.broadcast({"type": "member_joined", "roomId": do.room_id, "userId": conn.user["sub"],
                          "userInfo": conn.presence_info, "socketId": conn.socket_id}, exclude=conn, to_sse=False)
        do.broadcast(do.presence(), to_sse=True)
        do.broadcast(do.sub_count(), to_sse=False)
        await conn.writer.drain()
        await reader_task
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        if reader_task and not reader_task.done():
            reader_task.cancel()
        if conn in do.sockets:
            do.sockets.remove(conn)
        conn.closed = True
        if all(c.user["sub"] != conn.user["sub"] for c in do.sockets):
            do.broadcast({"type": "member_left", "roomId": do.room_id, "userId": conn.user["sub"]}, to_sse=False)
        do.broadcast(do.presence())
        do.broadcast(do.sub_count(), to_sse=False)


async def ws_read_loop(conn):
    frag_op, frag = None, bytearray()
    tasks = set()
    while True:
        try:
            fin, op, payload = await read_ws_frame(conn.reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        if op == 0x8:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1000
            conn.close(code if code in (1000, 1001) or 3000 <= code < 5000 else 1000)
            try:
                await conn.writer.drain()
            except Exception:  # noqa: BLE001
                pass
            return
        if op == 0x9:
            conn._write(conn._frame(0xA, payload))
            continue
        if op == 0xA:
            continue
        if op in (0x1, 0x2):
            frag_op, frag = op, bytearray(payload)
        elif op == 0x0 and frag_op is not None:
            frag += payload
        else:
            continue
        if not fin:
            continue
        data, kind = bytes(frag), frag_op
        frag_op, frag = None, bytearray()
        if kind == 0x2:
            handle_binary(conn, data)
            continue
        # Un-serialised async handlers (§2.8): each frame runs as its own task.
        t = asyncio.ensure_future(handle_text(conn, data.decode("utf-8", errors="replace")))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
        try:
            await conn.writer.drain()
        except Exception:  # noqa: BLE001
            return


def handle_binary(conn, data):
    """Yjs handler (§2.7): 0 asks for a full-state reply; 1 and 2 are re-broadcast to the others."""
    if not data:
        return
    if data[0] == 0:
        conn.send_binary(bytes([0]) + b"\x00" * 32)
    elif data[0] in (1, 2):
        conn.do.broadcast_binary(data, exclude=conn)


async def handle_text(conn, raw):
    try:
        if utf16_len(raw) > MAX_WS_CHARS:
            conn.error("payload_too_large")
            return
        try:
            f = json.loads(raw)
        except Exception:
            conn.error("Invalid message format or internal error")
            return
        if f is None:
            conn.error("Invalid message format or internal error")  # null.type throws
            return
        ftype = f.get("type") if isinstance(f, dict) else None
        if ftype not in INBOUND_TYPES or not isinstance(ftype, str):
            conn.error("unknown_event_type")
            return
        await HANDLERS[ftype](conn, f)
    except Exception as e:  # noqa: BLE001
        log(f"handler error: {e!r}")
        conn.error("Invalid message format or internal error")


def frame_user(conn, f):
    """TRUSTED (§2.4): the frame's userId, falling back to the socket identity."""
    u = f.get("userId")
    return u if isinstance(u, str) and u else conn.user["sub"]


def message_frame(m, author, seq):
    out = {"type": "message", "id": m["id"], "roomId": m["room_id"], "userId": author, "senderId": author,
           "content": m["content"], "createdAt": m["created_at"], "parentId": m["parent_id"],
           "mentions": m.get("mentions", []), "preview": None, "attachments": m.get("attachments", [])}
    if m.get("client_message_id"):
        out["clientMessageId"] = m["client_message_id"]
    if seq is not None:
        out["seq"] = seq
        out["version"] = 1
    return out


def validate_content(conn, content, allow_empty=False):
    if not isinstance(content, str):
        conn.error("invalid_content: content must be a string")
        return None
    t = js_trim(content)
    if not t and not allow_empty:
        conn.error("invalid_content: Message content cannot be empty")
        return None
    if utf16_len(t) > 4000:
        conn.error("invalid_content: Message content exceeds 4000 characters")
        return None
    return t


async def h_ping(conn, f):
    conn.send_json({"type": "pong", "ts": now_ms()})


async def h_message(conn, f):
    do = conn.do
    content = validate_content(conn, f.get("content"))
    if content is None:
        return
    author = frame_user(conn, f)
    wait = rate_hit(("ws", do.project_id, do.room_id, author), CFG.ws_per_minute)
    if wait:
        conn.error(f"rate_limit_exceeded: retry in {wait}s", retryAfterSeconds=wait)
        return
    cmid = f.get("clientMessageId")
    cmid = cmid if isinstance(cmid, str) and CMID_RE.match(cmid) else None  # invalid: ignored
    parent = f.get("parentId")
    parent = parent if isinstance(parent, int) and not isinstance(parent, bool) else None
    atts = f.get("attachments") if isinstance(f.get("attachments"), list) else []
    if f.get("id") is not None:
        # Ghost message (§10 item 2): nothing is inserted, a seq is still allocated, it is broadcast.
        ghost = {"id": f["id"], "room_id": do.room_id, "content": content, "created_at": now_iso(),
                 "parent_id": parent, "mentions": mentions_of(content), "attachments": atts,
                 "client_message_id": cmid}
        seq = await do.alloc_seq(f["id"], "create", 1, {"id": f["id"], "content": content, "userId": author,
                                                        "createdAt": ghost["created_at"], "clientMessageId": cmid})
        do.broadcast(message_frame(ghost, author, seq))
        return
    await d1()
    if cmid:
        for m in DBI.messages.values():
            if (m["project_id"], m["room_id"], m.get("client_message_id")) == (do.project_id, do.room_id, cmid) \
                    and m.get("deleted_at") is None:
                # Resend: re-broadcast the NEW content with a fresh createdAt under the old id (§3).
                again = dict(m, content=content, created_at=now_iso())
                do.broadcast(message_frame(again, author, None))
                return
    m = DBI.insert_message(project_id=do.project_id, room_id=do.room_id, user_id=author, content=content,
                           created_at=now_iso(), parent_id=parent, client_message_id=cmid,
                           mentions=mentions_of(content), attachments=atts, version=1, seq=None,
                           edited_at=None, deleted_at=None)
    seq = await do.alloc_seq(m["id"], "create", 1, {"id": m["id"], "content": content, "userId": author,
                                                    "createdAt": m["created_at"], "clientMessageId": cmid})
    m["seq"] = seq
    do.broadcast(message_frame(m, author, seq))
    do.yjs_update(f"c:{cmid}" if cmid else f"s:{m['id']}")


async def h_edit(conn, f):
    do = conn.do
    author = frame_user(conn, f)
    mid = f.get("messageId")
    content = f.get("content")
    if not isinstance(content, str):
        raise ValueError("D1_TYPE_ERROR: undefined content")
    await d1()
    m = DBI.messages.get(mid) if isinstance(mid, int) else None
    # UPDATE ... WHERE id = ? AND room_id = ? AND user_id = <frame userId>
    if m is not None and not (m["room_id"] == do.room_id and m["user_id"] == author):
        m = None
    at = now_iso()
    seq = version = None
    if m is not None:
        m["content"] = content
        m["edited_at"] = at
        m["version"] = m.get("version", 1) + 1
        version = m["version"]
        seq = await do.alloc_seq(m["id"], "update", version, {"id": m["id"], "content": content, "userId": author,
                                                              "editedAt": at, "version": version})
    edit = {"type": "edit", "id": mid, "roomId": do.room_id, "userId": author, "content": content,
            "editedAt": at, "streaming": False}
    upd = {"type": "message_updated", "id": mid, "roomId": do.room_id, "userId": author, "content": content,
           "editedAt": at}
    if version is not None:
        edit["version"] = upd["version"] = version
    if seq is not None:
        edit["seq"] = upd["seq"] = seq
    # The broadcast happens even if no row matched (§2.4).
    do.broadcast(edit)
    do.broadcast(upd)
    do.yjs_update(f"s:{mid}")


async def h_delete(conn, f):
    do = conn.do
    mid = f.get("messageId")
    if mid is None:
        conn.error("messageId required")
        return
    await d1()
    m = DBI.messages.get(mid) if isinstance(mid, int) else None
    if m is None or m["room_id"] != do.room_id:
        conn.error("message not found")
        return
    if m["user_id"] != conn.user["sub"]:  # the socket identity: author only
        conn.error("forbidden")
        return
    at = now_iso()
    m["deleted_at"] = at
    m["content"] = "[deleted]"
    m["version"] = m.get("version", 1) + 1
    version = m["version"]
    seq = await do.alloc_seq(m["id"], "delete", version, {"id": m["id"], "userId": conn.user["sub"],
                                                          "deletedAt": at, "version": version})
    ev = {"id": m["id"], "roomId": do.room_id, "userId": conn.user["sub"], "deletedAt": at, "hard": False,
          "version": version}
    if seq is not None:
        ev["seq"] = seq
    do.broadcast({"type": "delete", **ev})
    do.broadcast({"type": "message_deleted", **ev})
    do.yjs_update(f"s:{m['id']}")


async def h_reaction(conn, f):
    do = conn.do
    author = frame_user(conn, f)
    mid = f.get("messageId")
    emoji = f.get("emoji")
    op = f.get("op") or "add"
    await d1()
    if not (isinstance(mid, int) and mid in DBI.messages):
        raise ValueError("FOREIGN KEY constraint failed")
    if op == "remove":
        for i, r in enumerate(DBI.reactions):
            if (r["message_id"], r["user_id"], r["emoji"]) == (mid, author, emoji):
                DBI.reactions.pop(i)
                break
    else:
        DBI.reactions.append({"message_id": mid, "room_id": do.room_id, "user_id": author, "emoji": emoji,
                              "created_at": now_iso()})
    do.broadcast({"type": "reaction", "roomId": do.room_id, "userId": author, "messageId": mid, "emoji": emoji,
                  "op": op})


async def h_read(conn, f):
    do = conn.do
    author = frame_user(conn, f)
    mid = f.get("messageId")
    await d1()
    if not (isinstance(mid, int) and mid in DBI.messages):
        raise ValueError("FOREIGN KEY constraint failed")
    at = now_iso()
    DBI.reads.append({"room_id": do.room_id, "user_id": author, "message_id": mid, "created_at": at})
    do.broadcast({"type": "read", "roomId": do.room_id, "userId": author, "messageId": mid, "createdAt": at})


async def h_typing(conn, f):
    is_typing = bool(f.get("isTyping"))
    intent = f.get("intent")
    if not is_typing:
        intent = "idle"
    elif intent not in ("composing", "away", "viewing_thread", "idle"):
        intent = "composing"
    # To every socket, the sender included; the frame's userId is echoed (§2.4).
    conn.do.broadcast({"type": "typing", "userId": frame_user(conn, f), "isTyping": is_typing, "intent": intent})


async def h_client_event(conn, f):
    name = f.get("eventName")
    if not name:
        conn.error("eventName required")
        return
    if not isinstance(name, str) or len(name) > 128 or not EVENT_NAME_RE.match(name):
        conn.error("client events must be prefixed with client-")
        return
    wait = rate_hit(("client_event", conn.user["sub"]), 10)
    if wait:
        conn.error(f"rate_limit_exceeded: retry in {wait}s", retryAfterSeconds=wait)
        return
    conn.do.broadcast({"type": "client_event", "roomId": conn.do.room_id, "userId": conn.user["sub"],
                       "eventName": name, "data": f.get("data")}, exclude=conn)


async def h_location_update(conn, f):
    tid = f.get("trackId")
    lat, lon = f.get("latitude"), f.get("longitude")
    ok = isinstance(tid, str) and TRACK_RE.match(tid) and isinstance(lat, (int, float)) \
        and isinstance(lon, (int, float)) and -90 <= lat <= 90 and -180 <= lon <= 180
    if not ok:
        conn.error("invalid_location_update")
        return
    if rate_hit(("loc", conn.user["sub"], tid), 60):
        conn.error("location_rate_limited")
        return
    conn.do.broadcast({"type": "location_update", "roomId": conn.do.room_id, "userId": conn.user["sub"],
                       "trackId": tid, "latitude": lat, "longitude": lon, "updatedAt": now_iso()})


async def h_location_track_ended(conn, f):
    conn.do.broadcast({"type": "location_track_ended", "roomId": conn.do.room_id, "trackId": f.get("trackId"),
                       "userId": conn.user["sub"], "endedAt": now_iso()})


async def h_agent_typing(conn, f):
    conn.do.broadcast({"type": "agentTyping", "agentId": f.get("agentId"), "isTyping": f.get("isTyping")})


async def h_resume(conn, f):
    last = f.get("lastSeq")
    if not isinstance(last, (int, float)) or isinstance(last, bool):
        conn.error("resume_failed")
        return
    await d1()
    evs = DBI.events.get(conn.do.seq_key(), {})
    out = [evs[s] for s in sorted(evs) if s > last][:200]
    conn.send_json({"type": "replay", "events": out, "lastSeq": last,
                    "currentSeq": DBI.last_seq.get(conn.do.seq_key(), 0)})


async def h_stream(conn, f):
    do = conn.do
    uid = conn.user["sub"]  # the socket identity (§2.4)
    op = f.get("op")
    if op == "start":
        if do.streams.get(uid):
            conn.error("stream_already_active")
            return
        content = validate_content(conn, f.get("content", ""), allow_empty=True)
        if content is None:
            return
        parent = f.get("parentId") if isinstance(f.get("parentId"), int) else None
        await d1()
        m = DBI.insert_message(project_id=do.project_id, room_id=do.room_id, user_id=uid, content=content,
                               created_at=now_iso(), parent_id=parent, client_message_id=None,
                               mentions=[], attachments=[], version=1, seq=None, edited_at=None, deleted_at=None)
        do.streams[uid] = m["id"]
        conn.send_json({"type": "stream", "op": "started", "id": m["id"], "roomId": do.room_id})
        frame = message_frame(m, uid, None)
        frame["streaming"] = True
        do.broadcast(frame)
        return
    if op in ("delta", "end"):
        mid = do.streams.get(uid)
        if not mid or f.get("messageId") != mid:
            conn.error("stream_not_active")
            return
        content = validate_content(conn, f.get("content"))
        if content is None:
            return
        m = DBI.messages.get(mid)
        m["content"] = content
        m["edited_at"] = now_iso()
        if op == "end":
            do.streams.pop(uid, None)
        do.broadcast({"type": "edit", "id": mid, "roomId": do.room_id, "userId": uid, "content": content,
                      "editedAt": m["edited_at"], "streaming": op == "delta"})
        if op == "end":
            do.yjs_update(f"s:{mid}")
        return
    if op == "abort":
        mid = do.streams.pop(uid, None)
        if not mid:
            conn.error("stream_not_active")
            return
        m = DBI.messages.get(mid)
        at = now_iso()
        if m:
            m["deleted_at"] = at
            m["content"] = "[stream aborted]"
        do.broadcast({"type": "delete", "id": mid, "roomId": do.room_id, "userId": uid, "deletedAt": at,
                      "hard": False})
        return
    conn.error("invalid_stream_op")


HANDLERS = {
    "ping": h_ping, "message": h_message, "stream": h_stream, "edit": h_edit, "reaction": h_reaction,
    "read": h_read, "delete": h_delete, "typing": h_typing, "client_event": h_client_event,
    "location_update": h_location_update, "location_track_ended": h_location_track_ended,
    "agentTyping": h_agent_typing, "resume": h_resume,
}


# --------------------------------------------------------------------------------------------
# Start-up
# --------------------------------------------------------------------------------------------

def provision(pid, secret):
    key = "fc_" + secrets.token_hex(16)
    DBI.projects[pid] = {"jwt_secret": secret}
    DBI.api_keys[key] = pid
    # insertNewProject seeds `general`; rooms.id is global, so only the first project gets it, but
    # every project still writes a welcome message (§7 (a)). These rows also make message ids global.
    if "general" not in DBI.rooms:
        DBI.rooms["general"] = {"id": "general", "project_id": pid, "type": "public", "name": "General",
                                "created_at": now_iso()}
    DBI.insert_message(project_id=pid, room_id="general", user_id="system", content="Welcome to FluxyChat!",
                       created_at=now_iso(), parent_id=None, client_message_id=None, mentions=[],
                       attachments=[], version=1, seq=None, edited_at=None, deleted_at=None)
    return key


async def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=8787)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--rest-per-minute", type=int, default=60, help="RATE_LIMIT_MESSAGES_PER_MINUTE")
    ap.add_argument("--ws-per-minute", type=int, default=60, help="RATE_LIMIT_WS_MESSAGES_PER_MINUTE")
    ap.add_argument("--auth-per-minute", type=int, default=0,
                    help="RATE_LIMIT_AUTH_TOKEN_PER_MINUTE (FluxyChat: 30; 0 = off)")
    ap.add_argument("--d1-ms", type=float, default=6.0, help="upper bound of one simulated D1 round trip")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--verbose", action="store_true", help="log handler errors on stderr")
    ap.parse_args(namespace=CFG)
    if CFG.seed is not None:
        random.seed(CFG.seed)
    secret1 = "dev-local-jwt-secret-do-not-use-in-prod"  # /dev/provision's secret (§1.2)
    secret2 = base64.b64encode(os.urandom(32)).decode()  # new projects: base64 TEXT is the key (§7)
    key1 = provision("dev-local", secret1)
    key2 = provision("dev-local-2", secret2)
    server = await asyncio.start_server(handle_client, CFG.host, CFG.port, limit=1 << 20)
    port = server.sockets[0].getsockname()[1]
    line = {"endpoint": f"http://{CFG.host}:{port}", "apiKey": key1, "apiKey2": key2, "tenant": "dev-local",
            "tenant2": "dev-local-2", "jwtSecret": secret1, "jwtSecret2": secret2}
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
