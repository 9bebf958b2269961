//! AsyncAPI 3.0 and OpenAPI 3.1 descriptions of protocol v1, generated from the same types as
//! the JSON Schemas (`spec/asyncapi.yaml`, `spec/openapi.yaml`).
//!
//! `cargo run -p fluxy-protocol --bin fluxy-schema -- spec/schema` writes them next to the
//! schema directory; a test fails when the committed files drift.
//!
//! Both documents embed every definition of the schema bundle under `components/schemas`, with
//! references rewritten from `#/$defs/X` to `#/components/schemas/X`. OpenAPI 3.1 schemas are
//! JSON Schema 2020-12, so the definitions are copied as they are. AsyncAPI's default schema
//! format is a draft-07 superset whose `discriminator` is a property name, so there the
//! `discriminator: {propertyName: type}` of the unions is written `discriminator: type`.

use serde_json::{json, Map, Value};

use crate::client::CLIENT_TYPES;
use crate::codes::{ErrorCode, ALL_ERROR_CODES};
use crate::common::{PROTOCOL_VERSION, SUBPROTOCOL};
use crate::events::TIMELINE_TYPES;
use crate::schema::definitions;
use crate::server::SERVER_TYPES;

/// File name of the AsyncAPI document, in the `spec/` directory.
pub const ASYNCAPI_FILE: &str = "asyncapi.yaml";
/// File name of the OpenAPI document, in the `spec/` directory.
pub const OPENAPI_FILE: &str = "openapi.yaml";

fn rewrite_refs(v: &mut Value, asyncapi: bool) {
    match v {
        Value::Object(o) => {
            if let Some(Value::String(r)) = o.get_mut("$ref") {
                *r = r.replace("#/$defs/", "#/components/schemas/");
            }
            if asyncapi {
                if let Some(name) = o
                    .get("discriminator")
                    .and_then(|d| d.get("propertyName"))
                    .cloned()
                {
                    o.insert("discriminator".into(), name);
                }
            }
            o.values_mut().for_each(|x| rewrite_refs(x, asyncapi));
        }
        Value::Array(a) => a.iter_mut().for_each(|x| rewrite_refs(x, asyncapi)),
        _ => {}
    }
}

fn component_schemas(asyncapi: bool) -> Map<String, Value> {
    let mut defs = definitions();
    for def in defs.values_mut() {
        rewrite_refs(def, asyncapi);
    }
    defs
}

/// The definition that carries each `type` of a union, in the union's order.
fn variants(defs: &Map<String, Value>, union: &str) -> Vec<(String, String)> {
    defs.get(union)
        .and_then(|u| u.get("oneOf"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| {
            let def = v.get("$ref")?.as_str()?.rsplit('/').next()?.to_owned();
            let tag = defs
                .get(&def)?
                .pointer("/properties/type/const")?
                .as_str()?
                .to_owned();
            Some((tag, def))
        })
        .collect()
}

fn description(defs: &Map<String, Value>, def: &str) -> Value {
    defs.get(def)
        .and_then(|d| d.get("description"))
        .cloned()
        .unwrap_or(Value::Null)
}

fn query(params: &[(&str, Value, &str)]) -> Value {
    let mut props = Map::new();
    for (name, schema, desc) in params {
        let mut s = schema.clone();
        if let Some(o) = s.as_object_mut() {
            o.insert("description".into(), json!(desc));
        }
        props.insert((*name).to_owned(), s);
    }
    json!({ "type": "object", "properties": props })
}

fn ws_query() -> Vec<(&'static str, Value, &'static str)> {
    vec![
        (
            "token",
            json!({"type": "string"}),
            "Access token, instead of `Authorization: Bearer` [FX-HS-1].",
        ),
        (
            "v",
            json!({"type": "string", "enum": ["1"]}),
            "Requested major version; absent or `1` [FX-VER-2].",
        ),
        (
            "replay",
            json!({"type": "string"}),
            "`off`, `false` or `0` skips the connect snapshot [FX-HS-6].",
        ),
        (
            "replayLimit",
            json!({"type": "integer", "minimum": 0}),
            "Events in the connect snapshot; default 50, at most 500 [FX-HS-6].",
        ),
        (
            "historyLimit",
            json!({"type": "integer", "minimum": 0}),
            "Alias of `replayLimit` [FX-HS-6].",
        ),
        (
            "lastSeq",
            json!({"type": "integer", "minimum": 0}),
            "Resume at connect: send `replay` after this `seq` instead of `history` [FX-HS-7].",
        ),
        (
            "batch",
            json!({"type": "string", "enum": ["1"]}),
            "Opt in to `batch` frames [FX-TRN-9].",
        ),
    ]
}

fn sse_query() -> Vec<(&'static str, Value, &'static str)> {
    vec![
        (
            "token",
            json!({"type": "string"}),
            "Access token, instead of `Authorization: Bearer` [FX-AUTH-8].",
        ),
        (
            "lastEventId",
            json!({"type": "string", "pattern": "^[0-9]+$"}),
            "Resume after this `seq`, like the `Last-Event-ID` header [FX-TRN-3].",
        ),
    ]
}

fn poll_query() -> Vec<(&'static str, Value, &'static str)> {
    vec![
        (
            "token",
            json!({"type": "string"}),
            "Access token, instead of `Authorization: Bearer` [FX-AUTH-8].",
        ),
        (
            "cursor",
            json!({"type": "string"}),
            "A forward cursor (`nextCursor` of a forward page or poll) [FX-TRN-7].",
        ),
        (
            "afterSeq",
            json!({"type": "integer", "minimum": 0}),
            "Return events after this `seq` [FX-TRN-7].",
        ),
        (
            "timeoutMs",
            json!({"type": "integer", "minimum": 0, "maximum": 30000}),
            "How long to wait for a commit; default 25000, at most 30000 [FX-TRN-7].",
        ),
        (
            "limit",
            json!({"type": "integer", "minimum": 1}),
            "Page size; default 50, clamped to 500 [FX-HIS-5].",
        ),
    ]
}

fn history_query() -> Vec<(&'static str, Value, &'static str)> {
    vec![
        (
            "token",
            json!({"type": "string"}),
            "Access token, instead of `Authorization: Bearer` [FX-AUTH-8].",
        ),
        (
            "limit",
            json!({"type": "integer", "minimum": 1}),
            "Page size; default 50, clamped to 500 [FX-HIS-5].",
        ),
        (
            "direction",
            json!({"type": "string", "enum": ["backward", "forward"]}),
            "`backward` (default): newest first pages; `forward`: from `afterSeq` [FX-HIS-2].",
        ),
        (
            "cursor",
            json!({"type": "string"}),
            "`nextCursor` of the previous page [FX-HIS-3].",
        ),
        (
            "afterSeq",
            json!({"type": "integer", "minimum": 0}),
            "Forward pages start after this `seq` (default 0) [FX-HIS-2].",
        ),
    ]
}

fn legacy_query() -> Vec<(&'static str, Value, &'static str)> {
    vec![
        (
            "token",
            json!({"type": "string"}),
            "Access token, instead of `Authorization: Bearer` [FX-AUTH-8].",
        ),
        (
            "roomId",
            json!({"type": "string", "pattern": crate::common::ID_PATTERN}),
            "The room [FX-HIS-8].",
        ),
        (
            "limit",
            json!({"type": "integer", "minimum": 1}),
            "Page size; default 50, clamped to 500 [FX-HIS-5].",
        ),
        (
            "before",
            json!({"type": "string"}),
            "`nextCursor` of this route, or an ISO 8601 UTC time [FX-HIS-8], [FX-HIS-11].",
        ),
    ]
}

/// The AsyncAPI 3.0 document: the room WebSocket channel with every client and server frame,
/// the SSE stream and the long-poll route.
pub fn asyncapi() -> Value {
    let schemas = component_schemas(true);
    let client = variants(&schemas, "ClientFrame");
    let server = variants(&schemas, "ServerFrame");
    let timeline = variants(&schemas, "TimelineEvent");
    debug_assert_eq!(client.len(), CLIENT_TYPES.len());
    debug_assert_eq!(server.len(), SERVER_TYPES.len());
    debug_assert_eq!(timeline.len(), TIMELINE_TYPES.len());

    let mut messages = Map::new();
    let msg = |tag: &str, def: &str, title: String| {
        json!({
            "name": tag,
            "title": title,
            "summary": description(&schemas, def),
            "contentType": "application/json",
            "payload": { "$ref": format!("#/components/schemas/{def}") },
        })
    };
    let mut ws_messages = Map::new();
    let mut send_refs = Vec::new();
    let mut recv_refs = Vec::new();
    for (tag, def) in &client {
        messages.insert(def.clone(), msg(tag, def, format!("Client frame `{tag}`")));
        ws_messages.insert(
            def.clone(),
            json!({"$ref": format!("#/components/messages/{def}")}),
        );
        send_refs.push(json!({"$ref": format!("#/channels/room/messages/{def}")}));
    }
    for (tag, def) in &server {
        messages
            .entry(def.clone())
            .or_insert_with(|| msg(tag, def, format!("Server frame `{tag}`")));
        ws_messages.insert(
            def.clone(),
            json!({"$ref": format!("#/components/messages/{def}")}),
        );
        recv_refs.push(json!({"$ref": format!("#/channels/room/messages/{def}")}));
    }
    let mut sse_messages = Map::new();
    let mut sse_refs = Vec::new();
    for (_, def) in &timeline {
        sse_messages.insert(
            def.clone(),
            json!({"$ref": format!("#/components/messages/{def}")}),
        );
        sse_refs.push(json!({"$ref": format!("#/channels/roomStream/messages/{def}")}));
    }
    messages.insert(
        "SseReady".into(),
        json!({
            "name": "ready",
            "title": "SSE `event: ready`",
            "summary": "First event of a stream opened without `Last-Event-ID`; no `id:` line [FX-TRN-4].",
            "contentType": "application/json",
            "payload": {
                "type": "object",
                "required": ["currentSeq"],
                "properties": { "currentSeq": { "type": "integer", "minimum": 0, "description": "Highest committed `seq`." } }
            },
        }),
    );
    messages.insert(
        "SseError".into(),
        json!({
            "name": "error",
            "title": "SSE `event: error`",
            "summary": "The stream cannot resume (`resync_required`) and ends [FX-TRN-3].",
            "contentType": "application/json",
            "payload": { "$ref": "#/components/schemas/ErrorFrame" },
        }),
    );
    for extra in ["SseReady", "SseError"] {
        sse_messages.insert(
            extra.into(),
            json!({"$ref": format!("#/components/messages/{extra}")}),
        );
        sse_refs.push(json!({"$ref": format!("#/channels/roomStream/messages/{extra}")}));
    }
    messages.insert(
        "PollPage".into(),
        json!({
            "name": "poll",
            "title": "Long-poll response",
            "summary": "Events after the position, or an empty page at the timeout; always a forward `nextCursor` [FX-TRN-7].",
            "contentType": "application/json",
            "payload": { "$ref": "#/components/schemas/HistoryPage" },
        }),
    );
    let room_param =
        json!({ "roomId": { "description": "Room id, `^[A-Za-z0-9_-]{1,128}$` [FX-FRM-6]." } });
    let http_binding = |q: Vec<(&str, Value, &str)>| json!({ "http": { "method": "GET", "query": query(&q), "bindingVersion": "0.3.0" } });
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "Fluxy protocol",
            "version": PROTOCOL_VERSION,
            "description": "Realtime chat rooms: the room WebSocket (every client and server frame), the Server-Sent Events stream and the long-poll route of Fluxy protocol v1 (spec/fluxy-v1.md). Generated from the fluxy-protocol crate; the payload schemas are those of spec/schema/.",
            "license": { "name": "MIT OR Apache-2.0" },
        },
        "defaultContentType": "application/json",
        "channels": {
            "room": {
                "address": "/ws/room/{roomId}",
                "title": "Room WebSocket",
                "description": format!("One JSON object per text message [FX-FRM-1]; subprotocol `{SUBPROTOCOL}` [FX-VER-3]; the token as query parameter `token` or `Authorization: Bearer` [FX-HS-1]. The first server frame is `welcome` [FX-HS-5]. Clients ignore server frames of unknown type [FX-VER-5]."),
                "parameters": room_param.clone(),
                "messages": ws_messages,
                "bindings": {
                    "ws": {
                        "method": "GET",
                        "query": query(&ws_query()),
                        "headers": {
                            "type": "object",
                            "properties": {
                                "Authorization": { "type": "string", "description": "`Bearer <token>` [FX-HS-1]." },
                                "Sec-WebSocket-Protocol": { "type": "string", "description": format!("`{SUBPROTOCOL}` [FX-VER-3].") }
                            }
                        },
                        "bindingVersion": "0.1.0"
                    }
                }
            },
            "roomStream": {
                "address": "/rooms/{roomId}/stream",
                "title": "Room Server-Sent Events",
                "description": "`text/event-stream`: each timeline event as `id: <seq>`, `event: <type>`, `data: <the event's JSON>` [FX-TRN-2]; resume with `Last-Event-ID` [FX-TRN-3].",
                "parameters": room_param.clone(),
                "messages": sse_messages,
            },
            "roomPoll": {
                "address": "/rooms/{roomId}/poll",
                "title": "Room long-poll",
                "description": "Returns at once when events exist after the position, else waits up to `timeoutMs` [FX-TRN-7].",
                "parameters": room_param,
                "messages": { "PollPage": { "$ref": "#/components/messages/PollPage" } },
            }
        },
        "operations": {
            "sendClientFrame": {
                "action": "send",
                "title": "Send a client frame",
                "channel": { "$ref": "#/channels/room" },
                "messages": send_refs,
            },
            "receiveServerFrame": {
                "action": "receive",
                "title": "Receive a server frame",
                "channel": { "$ref": "#/channels/room" },
                "messages": recv_refs,
            },
            "receiveStreamEvent": {
                "action": "receive",
                "title": "Receive a Server-Sent Event",
                "channel": { "$ref": "#/channels/roomStream" },
                "messages": sse_refs,
                "bindings": http_binding(sse_query()),
            },
            "pollRoom": {
                "action": "receive",
                "title": "Long-poll for events",
                "channel": { "$ref": "#/channels/roomPoll" },
                "messages": [ { "$ref": "#/channels/roomPoll/messages/PollPage" } ],
                "bindings": http_binding(poll_query()),
            }
        },
        "components": {
            "schemas": schemas,
            "messages": messages,
        }
    })
}

/// One HTTP route of the OpenAPI document.
struct Route {
    path: &'static str,
    method: &'static str,
    id: &'static str,
    summary: &'static str,
    auth: Auth,
    request: Option<&'static str>,
    /// (status, description, body schema or `None` for a non-JSON body)
    ok: &'static [(u16, &'static str, Option<&'static str>)],
    query: Vec<(&'static str, Value, &'static str)>,
    /// Error codes this route can answer with, besides those every authenticated route has.
    errors: &'static [ErrorCode],
}

#[derive(Clone, Copy, PartialEq)]
enum Auth {
    None,
    ApiKey,
    Token,
}

fn routes() -> Vec<Route> {
    use ErrorCode::*;
    vec![
        Route { path: "/health", method: "get", id: "health", summary: "Liveness and versions [FX-VER-1].", auth: Auth::None, request: None, ok: &[(200, "Server status.", Some("HealthResponse"))], query: vec![], errors: &[] },
        Route { path: "/auth/token", method: "post", id: "issueToken", summary: "Mint an HS256 token for a user of the API key's tenant [FX-AUTH-1], [FX-AUTH-2].", auth: Auth::ApiKey, request: Some("TokenRequest"), ok: &[(200, "The token.", Some("TokenResponse"))], query: vec![], errors: &[MalformedFrame, InvalidFrame, PayloadTooLarge, Unauthorized, InvalidApiKey] },
        Route { path: "/rooms", method: "post", id: "createRoom", summary: "Create a room in the caller's tenant, the caller as owner [FX-TEN-4].", auth: Auth::Token, request: Some("CreateRoomRequest"), ok: &[(201, "The room was created.", Some("RoomResponse"))], query: vec![], errors: &[MalformedFrame, InvalidFrame, PayloadTooLarge, Conflict] },
        Route { path: "/rooms", method: "get", id: "listRooms", summary: "The rooms of the caller's tenant the caller is a member of [FX-TEN-6].", auth: Auth::Token, request: None, ok: &[(200, "The rooms.", Some("RoomListResponse"))], query: vec![], errors: &[] },
        Route { path: "/rooms/{roomId}", method: "get", id: "getRoom", summary: "One room [FX-TEN-6].", auth: Auth::Token, request: None, ok: &[(200, "The room.", Some("RoomResponse"))], query: vec![], errors: &[NotFound, NotMember] },
        Route { path: "/rooms/{roomId}/members", method: "get", id: "listMembers", summary: "The room's members; requires membership [FX-TEN-5].", auth: Auth::Token, request: None, ok: &[(200, "The members.", Some("MembersResponse"))], query: vec![], errors: &[NotFound, NotMember] },
        Route { path: "/rooms/{roomId}/members", method: "post", id: "setMember", summary: "Add a member or change a member's role; room or token role owner or admin [FX-TEN-5], [FX-AUTH-15].", auth: Auth::Token, request: Some("MemberSpec"), ok: &[(200, "The membership.", Some("MemberResponse"))], query: vec![], errors: &[MalformedFrame, InvalidFrame, PayloadTooLarge, NotFound, Forbidden] },
        Route { path: "/rooms/{roomId}/members/{userId}", method: "delete", id: "removeMember", summary: "Remove a member (or oneself) [FX-TEN-5]; their connections close with 4003 [FX-AUTH-14].", auth: Auth::Token, request: None, ok: &[(200, "The removal.", Some("MemberResponse"))], query: vec![], errors: &[NotFound, Forbidden] },
        Route { path: "/messages", method: "post", id: "postMessage", summary: "Send a message with the WebSocket's sequencing and idempotency [FX-MSG-6].", auth: Auth::Token, request: Some("PostMessageRequest"), ok: &[(201, "The message was stored and broadcast.", Some("PostMessageResponse")), (200, "An idempotent repeat (`duplicate: true`); nothing stored [FX-ACK-4].", Some("PostMessageResponse"))], query: vec![], errors: &[MalformedFrame, InvalidFrame, InvalidContent, PayloadTooLarge, NotFound, NotMember, Forbidden] },
        Route { path: "/rooms/{roomId}/history", method: "get", id: "history", summary: "A page of timeline events by opaque cursor [FX-HIS-1]..[FX-HIS-7].", auth: Auth::Token, request: None, ok: &[(200, "The page.", Some("HistoryPage"))], query: history_query(), errors: &[InvalidFrame, InvalidCursor, NotFound, NotMember] },
        Route { path: "/rooms/{roomId}/poll", method: "get", id: "poll", summary: "Long-poll: events after a position, or an empty page at the timeout [FX-TRN-7].", auth: Auth::Token, request: None, ok: &[(200, "The page (possibly empty).", Some("HistoryPage"))], query: poll_query(), errors: &[InvalidFrame, InvalidCursor, NotFound, NotMember] },
        Route { path: "/rooms/{roomId}/stream", method: "get", id: "stream", summary: "Server-Sent Events of the room's timeline (see spec/asyncapi.yaml, channel roomStream) [FX-TRN-1]..[FX-TRN-6].", auth: Auth::Token, request: None, ok: &[(200, "`text/event-stream`.", None)], query: sse_query(), errors: &[NotAcceptable, NotFound, NotMember] },
        Route { path: "/api/messages", method: "get", id: "legacyMessages", summary: "FluxyChat-compatible message list, newest first [FX-HIS-8], [FX-HIS-11].", auth: Auth::Token, request: None, ok: &[(200, "The messages.", Some("LegacyMessagesResponse"))], query: legacy_query(), errors: &[InvalidFrame, InvalidCursor, NotFound, NotMember] },
        Route { path: "/ws/room/{roomId}", method: "get", id: "roomWebSocket", summary: "The room WebSocket (see spec/asyncapi.yaml, channel room). Handshake failures SHOULD be an `error` frame and a close code rather than an HTTP status [FX-HS-3].", auth: Auth::Token, request: None, ok: &[(101, "Switching Protocols.", None)], query: ws_query(), errors: &[InvalidFrame, UnsupportedVersion, NotFound, NotMember, TokenExpired] },
    ]
}

/// The OpenAPI 3.1 document: every HTTP route, request and response bodies referencing the
/// schema definitions, and error responses (`ErrorBody`) with the statuses of the spec's error
/// table [FX-ERR-4].
pub fn openapi() -> Value {
    use std::collections::{BTreeMap, BTreeSet};
    let schemas = component_schemas(false);

    // One reusable response per error status, naming its codes (from the error table).
    let mut by_status: BTreeMap<u16, Vec<&'static str>> = BTreeMap::new();
    for c in ALL_ERROR_CODES {
        by_status
            .entry(c.http_status())
            .or_default()
            .push(c.as_str());
    }
    let mut responses = Map::new();
    for (status, codes) in &by_status {
        let list = codes
            .iter()
            .map(|c| format!("`{c}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut r = json!({
            "description": format!("`ErrorBody` whose `error` is one of {list} [FX-ERR-4]."),
            "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ErrorBody" } } }
        });
        if *status == 429 {
            r["headers"] = json!({ "Retry-After": { "description": "Seconds to wait [FX-LIM-7].", "schema": { "type": "integer", "minimum": 0 } } });
        }
        responses.insert(format!("Error{status}"), r);
    }

    let mut paths: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
    for r in routes() {
        let mut params = Vec::new();
        for seg in r.path.split('/').filter(|s| s.starts_with('{')) {
            let name = seg.trim_matches(|c| c == '{' || c == '}');
            params.push(json!({
                "name": name, "in": "path", "required": true,
                "description": "Id, `^[A-Za-z0-9_-]{1,128}$` [FX-FRM-6].",
                "schema": { "type": "string", "pattern": crate::common::ID_PATTERN }
            }));
        }
        for (name, schema, desc) in &r.query {
            params.push(json!({ "name": name, "in": "query", "required": *name == "roomId", "description": desc, "schema": schema }));
        }
        if r.path == "/rooms/{roomId}/stream" {
            params.push(json!({ "name": "Last-Event-ID", "in": "header", "required": false, "description": "Resume after this `seq` [FX-TRN-3].", "schema": { "type": "string", "pattern": "^[0-9]+$" } }));
        }
        let mut op = json!({ "operationId": r.id, "summary": r.summary });
        if !params.is_empty() {
            op["parameters"] = Value::Array(params);
        }
        match r.auth {
            Auth::None => op["security"] = json!([]),
            Auth::ApiKey => op["security"] = json!([{ "apiKey": [] }]),
            Auth::Token => {}
        }
        if let Some(body) = r.request {
            op["requestBody"] = json!({
                "required": true,
                "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{body}") } } }
            });
        }
        let mut resp = Map::new();
        for (status, desc, body) in r.ok {
            let mut x = json!({ "description": desc });
            match body {
                Some(b) => {
                    x["content"] = json!({ "application/json": { "schema": { "$ref": format!("#/components/schemas/{b}") } } })
                }
                None if *status == 200 => {
                    x["content"] =
                        json!({ "text/event-stream": { "schema": { "type": "string" } } })
                }
                None => {}
            }
            resp.insert(status.to_string(), x);
        }
        let mut statuses: BTreeSet<u16> = r.errors.iter().map(|c| c.http_status()).collect();
        // Every route: unknown method 405 [FX-ERR-9], 429 where rate-limited [FX-LIM-7],
        // 500 and 503 [FX-ERR-3]; authenticated routes: 401 [FX-AUTH-8].
        statuses.extend([405, 429, 500, 503]);
        if r.auth == Auth::Token {
            statuses.insert(401);
        }
        for s in statuses {
            resp.insert(
                s.to_string(),
                json!({ "$ref": format!("#/components/responses/Error{s}") }),
            );
        }
        op["responses"] = Value::Object(resp);
        paths.entry(r.path).or_default().insert(r.method.into(), op);
    }

    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Fluxy protocol HTTP API",
            "version": PROTOCOL_VERSION,
            "description": "Every HTTP route of Fluxy protocol v1 (spec/fluxy-v1.md): authentication, rooms, members, sending, history, long-polling, the SSE stream and the WebSocket upgrade. Generated from the fluxy-protocol crate; the schemas are those of spec/schema/ (JSON Schema 2020-12). Unknown routes answer 404 `not_found` [FX-ERR-9].",
            "license": { "name": "MIT OR Apache-2.0", "identifier": "MIT OR Apache-2.0" },
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "servers": [ {
            "url": "{origin}",
            "description": "A Fluxy server: `origin` is its scheme, host and port; the same origin serves the WebSocket (`ws:`/`wss:`).",
            "variables": { "origin": { "default": "http://127.0.0.1:8787" } }
        } ],
        "security": [ { "bearer": [] }, { "tokenQuery": [] } ],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": responses,
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": "HS256 token from `POST /auth/token` [FX-AUTH-8]." },
                "tokenQuery": { "type": "apiKey", "in": "query", "name": "token", "description": "The same token as the query parameter `token` [FX-AUTH-8]." },
                "apiKey": { "type": "apiKey", "in": "header", "name": "X-Fluxy-Api-Key", "description": "The tenant's API key [FX-AUTH-1]." }
            }
        }
    })
}

/// Keys written first, in this order; all others follow sorted.
const KEY_ORDER: &[&str] = &[
    "asyncapi",
    "openapi",
    "info",
    "jsonSchemaDialect",
    "defaultContentType",
    "security",
    "channels",
    "operations",
    "paths",
    "components",
    "title",
    "version",
    "name",
    "address",
    "operationId",
    "action",
    "summary",
    "description",
];

/// YAML text of `v`: block mappings and sequences, strings double-quoted (JSON escapes are
/// valid YAML), keys in [`KEY_ORDER`] first.
pub fn to_yaml(v: &Value) -> String {
    let mut out = String::new();
    yaml_value(v, 0, &mut out);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

fn yaml_key(k: &str) -> String {
    let plain = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./{}$".contains(c))
        && !k.starts_with(['{', '$', '-', '.'])
        && !k.chars().all(|c| c.is_ascii_digit());
    if plain {
        k.to_owned()
    } else {
        Value::String(k.to_owned()).to_string()
    }
}

fn sorted_keys(o: &Map<String, Value>) -> Vec<&String> {
    let mut keys: Vec<&String> = o.keys().collect();
    keys.sort_by_key(|k| {
        (
            KEY_ORDER.iter().position(|x| x == k).unwrap_or(usize::MAX),
            (*k).clone(),
        )
    });
    keys
}

/// Write `v` as the value of a mapping entry or sequence item, at `indent` for its children.
fn yaml_value(v: &Value, indent: usize, out: &mut String) {
    let pad = "  ".repeat(indent);
    match v {
        Value::Object(o) if !o.is_empty() => {
            for k in sorted_keys(o) {
                out.push_str(&pad);
                out.push_str(&yaml_key(k));
                out.push(':');
                yaml_child(&o[k.as_str()], indent, out);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for item in a {
                out.push_str(&pad);
                out.push('-');
                yaml_child(item, indent, out);
            }
        }
        other => {
            out.push_str(&pad);
            out.push_str(&other.to_string());
            out.push('\n');
        }
    }
}

fn yaml_child(v: &Value, indent: usize, out: &mut String) {
    match v {
        Value::Object(o) if !o.is_empty() => {
            out.push('\n');
            yaml_value(v, indent + 1, out);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            yaml_value(v, indent + 1, out);
        }
        other => {
            out.push(' ');
            out.push_str(&other.to_string());
            out.push('\n');
        }
    }
}

/// The two generated documents: file name → YAML text.
pub fn generate() -> Vec<(&'static str, String)> {
    vec![
        (ASYNCAPI_FILE, to_yaml(&asyncapi())),
        (OPENAPI_FILE, to_yaml(&openapi())),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_scalars_keys_and_nesting() {
        let v = json!({"b": [1, {"x": "a: b"}], "a": {}, "200": null, "$ref": "#/x", "openapi": "3.1.0"});
        assert_eq!(
            to_yaml(&v),
            "openapi: \"3.1.0\"\n\"$ref\": \"#/x\"\n\"200\": null\na: {}\nb:\n  - 1\n  -\n    x: \"a: b\"\n"
        );
    }

    #[test]
    fn every_frame_is_a_message_and_every_error_status_a_response() {
        let a = asyncapi();
        let ws = a["channels"]["room"]["messages"].as_object().unwrap();
        // Client `…Frame` and server `…Frame`/`…Event` definitions are distinct.
        assert_eq!(ws.len(), CLIENT_TYPES.len() + SERVER_TYPES.len());
        let sent = a["operations"]["sendClientFrame"]["messages"]
            .as_array()
            .unwrap()
            .len();
        let received = a["operations"]["receiveServerFrame"]["messages"]
            .as_array()
            .unwrap()
            .len();
        assert_eq!(sent, CLIENT_TYPES.len());
        assert_eq!(received, SERVER_TYPES.len());
        assert_eq!(
            a["components"]["schemas"]["ClientFrame"]["discriminator"],
            "type"
        );
        let o = openapi();
        for c in ALL_ERROR_CODES {
            let r = &o["components"]["responses"][format!("Error{}", c.http_status())];
            assert!(
                r["description"].as_str().unwrap().contains(c.as_str()),
                "{c:?}"
            );
        }
        assert_eq!(
            o["components"]["schemas"]["ClientFrame"]["discriminator"]["propertyName"],
            "type"
        );
        assert!(!to_yaml(&o).contains("#/$defs/"));
    }
}
