//! Worker → Durable Object requests. The object is reachable only through the Worker's binding,
//! so it trusts the verified identity the Worker passes in the `x-fluxy-forward` header.

use fluxy_protocol::common::MemberRole;
use fluxy_room::Identity;
use serde::{Deserialize, Serialize};
use wasm_bindgen::JsValue;
use worker::{Env, Headers, Method, Request, RequestInit, Response};

/// Header carrying the JSON [`Forward`].
pub const FORWARD_HEADER: &str = "x-fluxy-forward";

/// Verified identity, as forwarded and as kept with each hibernatable socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdentityWire {
    /// Token `sub`.
    pub user_id: String,
    /// Token roles.
    pub roles: Vec<String>,
    /// Room role, when a member.
    pub member_role: Option<MemberRole>,
    /// Token `exp` (epoch seconds).
    pub token_exp: u64,
}

impl From<Identity> for IdentityWire {
    fn from(i: Identity) -> IdentityWire {
        IdentityWire {
            user_id: i.user_id,
            roles: i.roles,
            member_role: i.member_role,
            token_exp: i.token_exp,
        }
    }
}

impl From<IdentityWire> for Identity {
    fn from(w: IdentityWire) -> Identity {
        Identity {
            user_id: w.user_id,
            roles: w.roles,
            member_role: w.member_role,
            token_exp: w.token_exp,
        }
    }
}

/// What the object is asked to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Accept a WebSocket (handshake checks already passed).
    Connect {
        /// Identity.
        identity: IdentityWire,
        /// Membership version read with `identity.member_role` (issue 13: the handshake race).
        #[serde(default)]
        membership_version: u64,
        /// Send the `history` snapshot.
        replay: bool,
        /// Snapshot size.
        replay_limit: u32,
        /// `?lastSeq=`.
        last_seq: Option<u64>,
        /// Answer with `Sec-WebSocket-Protocol: fluxy.v1`.
        subprotocol: bool,
        /// `?batch=1`: the client accepts `batch` frames `[FX-TRN-9]`.
        #[serde(default)]
        batch: bool,
        /// `replay` = `connect`, `true` or `1`: FluxyChat's snapshot fields `[FX-CMP-1]`.
        #[serde(default)]
        compat: bool,
    },
    /// `POST /messages`; the body is the validated `SendMessageFrame` JSON.
    Post {
        /// Identity.
        identity: IdentityWire,
    },
    /// SSE stream.
    Stream {
        /// `Last-Event-ID`.
        last_event_id: Option<u64>,
    },
    /// Long-poll.
    Poll {
        /// Position (events with seq > after).
        after: u64,
        /// Page size.
        limit: u32,
        /// Wait at most this long.
        timeout_ms: u64,
    },
    /// A member was added or their room role changed: live connections take the new role.
    SetRole {
        /// User id.
        user_id: String,
        /// New room role.
        member_role: Option<MemberRole>,
        /// Membership version after the change.
        #[serde(default)]
        version: u64,
    },
    /// Membership removed: close the user's connections.
    Kick {
        /// User id.
        user_id: String,
        /// Membership version after the removal.
        #[serde(default)]
        version: u64,
    },
    /// The object's live counts (`GET /rooms/{id}/debug/stats`, with `FLUXY_DEBUG=1` only).
    Stats,
}

/// A request to the object of (tenant, room).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Forward {
    /// Tenant id.
    pub tenant: String,
    /// Room id.
    pub room: String,
    /// The operation.
    #[serde(flatten)]
    pub op: Op,
}

impl Forward {
    /// The object's name: tenant and room ids cannot contain `/`, so the pair is unambiguous.
    pub fn object_name(tenant: &str, room: &str) -> String {
        format!("{tenant}/{room}")
    }

    /// Send to the room's object and return its response.
    pub async fn send(
        &self,
        env: &Env,
        headers: Option<Headers>,
        body: Option<String>,
    ) -> worker::Result<Response> {
        let ns = env.durable_object("ROOMS")?;
        let stub = ns.get_by_name(&Forward::object_name(&self.tenant, &self.room))?;
        let headers = headers.unwrap_or_default();
        headers.set(FORWARD_HEADER, &serde_json::to_string(self)?)?;
        let mut init = RequestInit::new();
        init.with_headers(headers);
        if let Some(b) = body {
            init.with_method(Method::Post)
                .with_body(Some(JsValue::from_str(&b)));
        }
        let req = Request::new_with_init("https://room.internal/", &init)?;
        stub.fetch_with_request(req).await
    }

    /// Read the forward header of a request to the object.
    pub fn from_request(req: &Request) -> Option<Forward> {
        let h = req.headers().get(FORWARD_HEADER).ok()??;
        serde_json::from_str(&h).ok()
    }
}
