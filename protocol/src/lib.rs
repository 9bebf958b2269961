//! # fluxy-protocol
//!
//! Rust types for Fluxy protocol v1, the open specification of realtime chat rooms at the edge
//! (`spec/fluxy-v1.md`). One module per spec area:
//!
//! - [`client`]: client → server WebSocket frames ([`ClientFrame`]).
//! - [`server`]: server → client frames ([`ServerFrame`]).
//! - [`events`]: timeline events, everything that carries a per-room `seq` ([`TimelineEvent`]).
//! - [`http`]: HTTP request, response and error bodies.
//! - [`codes`]: error codes and close codes.
//! - [`cursor`]: opaque, tamper-evident pagination cursors.
//! - [`jwt`]: token claims and the verification rules.
//! - [`spec`]: the clause index of the normative spec.
//! - [`schema`]: JSON Schema 2020-12 export.
//!
//! Unknown fields are ignored on decode (forward compatibility); unknown frame types are errors.
//! Encoding is canonical: fields in declaration order, absent optionals omitted.

pub mod client;
pub mod codes;
pub mod common;
pub mod cursor;
pub mod decode;
pub mod events;
pub mod http;
pub mod jwt;
pub mod schema;
pub mod server;
pub mod spec;

#[cfg(any(test, feature = "arbitrary"))]
pub mod arbitrary;

pub use client::ClientFrame;
pub use codes::{CloseAction, CloseCode, ErrorCode};
pub use common::{PROTOCOL_MAJOR, PROTOCOL_VERSION};
pub use decode::DecodeError;
pub use events::TimelineEvent;
pub use server::ServerFrame;
