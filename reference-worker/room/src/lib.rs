//! # fluxy-room
//!
//! The Fluxy room engine: the whole protocol v1 state machine of one room, with no I/O, no
//! async runtime and no clock of its own (it compiles to `wasm32-unknown-unknown`). Shaped like
//! `quinn-proto`: a shell feeds [`Input`]s with the current time and carries out the
//! [`Effect`]s the engine queues ([`Room::poll_effect`]), and calls [`Room::handle_timeout`]
//! at [`Room::poll_timeout`].
//!
//! Sequencing and group commit: a `seq` is assigned in memory when a request is accepted; all
//! events accepted while a write is in flight are committed together in the next write
//! ([`Effect::Persist`]); acks and broadcasts are released in `seq` order as each commit lands
//! ([`Input::Committed`]). A failed commit closes every connection with 1011 and asks the
//! shell to rebuild the room from storage ([`Effect::Reset`]), so the room never continues
//! with a gap.

#![warn(missing_docs)]

pub mod auth;
mod compat;
mod engine;
pub mod faults;
pub mod sql;

pub use engine::{
    ConnId, ConnectOptions, Effect, FetchFailed, Found, IdempotencyRow, Identity, Input,
    LoadedRoom, Lookup, MessageRow, PostOutcome, Room, RoomConfig, RoomPolicy, RunRow,
    IDEMPOTENCY_TTL_MS,
};
pub use faults::{Faults, UnknownFault, FAULTS};
