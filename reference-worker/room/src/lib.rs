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
//!
//! # Bounded wake-up and lookups on demand
//!
//! A room is built ([`Room::new`]) from a bounded read, [`LoadedRoom`]: its type, `MAX(seq)`,
//! the newest events (`sql::LOAD_RECENT`), the streaming messages (`sql::LOAD_OPEN_MESSAGES`)
//! and the open agent runs ([`RunRow`]; `sql::LOAD_OPEN_RUNS`, `sql::LOAD_OPEN_RUN_ITEMS`). State
//! a request needs and the engine does not hold is read on demand:
//!
//! - The engine emits [`Effect::Fetch`] `{ fetch, lookup, statement }` (one [`Lookup`]: a
//!   message's state, one reaction key, a user's read position, an idempotency key younger
//!   than 24 h, a run that is not open). The shell runs `statement` (at most one row), turns
//!   the row into a [`Found`] with [`Lookup::found`], and feeds [`Input::Fetched`] with the
//!   same `fetch` id, or [`FetchFailed`]. One lookup is in flight at most once.
//! - The request waits; every later frame of the same connection queues behind it (decoding
//!   and the rate limit still happen on receipt; pings are answered at once), so one
//!   connection's frames are acked and sequenced in frame order (`[FX-ORD-3]`); other
//!   connections and `POST`s are not blocked. When a result arrives, the waiting requests run
//!   in order, requester by requester. A queue holds at most `rate_burst` requests (beyond:
//!   `unavailable` with `retryAfterMs`). A failed lookup answers the requests that need it
//!   with `internal_error` (retryable).
//! - What the engine assumes of the shell: a result reflects storage as of some time after
//!   its `Fetch` was emitted (reads see every batch committed before they start). Results may
//!   come in any order, interleaved with `Committed`. Everything created or changed since
//!   wake-up is in memory: ids above the wake-up seq are never fetched, and every change to
//!   older state first made that state known. A result is only stored where memory knows
//!   nothing, so it never overwrites newer state. After [`Effect::Reset`] results of the old
//!   engine must not be fed to the new one (fetch ids restart at 1).

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
