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
//! - [`request`]: I/O-free request parsing and validation shared by the server shells.
//! - [`spec`]: the clause index of the normative spec.
//! - [`schema`]: JSON Schema 2020-12 export.
//! - [`api`]: AsyncAPI 3.0 and OpenAPI 3.1 export (`spec/asyncapi.yaml`, `spec/openapi.yaml`).
//!
//! Unknown fields are ignored on decode (forward compatibility); unknown frame types are errors.
//! Encoding is canonical: fields in declaration order, absent optionals omitted.
//!
//! ## JSON Schemas and golden examples
//!
//! The committed JSON Schemas in `spec/schema/` are generated from these types. After changing
//! any wire type, regenerate them from the repository root with
//!
//! ```text
//! cargo run -p fluxy-protocol --bin fluxy-schema -- spec/schema
//! ```
//!
//! The `schema_drift` test fails when the committed files differ from what the types generate.
//! `spec/examples/` holds golden vectors (valid and invalid frames and bodies); the `golden` test
//! checks each against the schemas (with the independent `jsonschema` crate) and the decoders.
//!
//! ## Feature `arbitrary`
//!
//! Enables the `arbitrary` module: proptest strategies generating valid frames and
//! mutated frame texts, shared by the tests, the conformance runner and the fuzzers.

#![warn(missing_docs)]

pub mod api;
pub mod client;
pub mod codes;
pub mod common;
pub mod cursor;
pub mod decode;
pub mod events;
pub mod http;
pub mod jwt;
pub mod request;
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
