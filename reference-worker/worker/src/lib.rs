//! # fluxy-worker
//!
//! The Fluxy reference server as a Cloudflare Worker (workers-rs): the Worker serves the HTTP
//! surface of `spec/fluxy-v1.md` on D1 ([`api`]) and forwards everything that needs the room's
//! single writer to one [`room::RoomDurableObject`] per (tenant, room), a thin driver of the
//! I/O-free `fluxy-room` engine. Built for `wasm32-unknown-unknown` only (see `docs/worker.md`).

#![warn(missing_docs)]

pub mod api;
pub mod config;
pub mod db;
pub mod error;
pub mod forward;
// `#[durable_object]` generates undocumented glue methods.
#[allow(missing_docs)]
pub mod room;

use worker::{event, Context, Env, Request, Response};

/// The Worker's `fetch` handler.
#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> worker::Result<Response> {
    api::handle(req, env).await
}
