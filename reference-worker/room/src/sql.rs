//! SQL text and parameters for every storage operation, shared verbatim by the native shell
//! (rusqlite) and the Durable Object shell (D1). Plain SQLite dialect; numbered parameters.
//!
//! History reads are keyset queries on the primary key `(tenant_id, room_id, seq)`: the cost of
//! a page does not grow with the size of the history.

use std::sync::Arc;

/// The schema migrations, in order: `(file name, SQL)`. The same files apply to D1.
pub const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_initial.sql",
        include_str!("../../migrations/0001_initial.sql"),
    ),
    (
        "0002_member_versions.sql",
        include_str!("../../migrations/0002_member_versions.sql"),
    ),
    (
        "0003_wake.sql",
        include_str!("../../migrations/0003_wake.sql"),
    ),
];

/// A bound parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlValue {
    /// SQL NULL.
    Null,
    /// INTEGER.
    Int(i64),
    /// TEXT (shared, so event bodies are never copied).
    Text(Arc<str>),
}

impl From<&str> for SqlValue {
    fn from(s: &str) -> SqlValue {
        SqlValue::Text(Arc::from(s))
    }
}
impl From<&Arc<str>> for SqlValue {
    fn from(s: &Arc<str>) -> SqlValue {
        SqlValue::Text(s.clone())
    }
}
impl From<u64> for SqlValue {
    fn from(v: u64) -> SqlValue {
        SqlValue::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<bool> for SqlValue {
    fn from(v: bool) -> SqlValue {
        SqlValue::Int(i64::from(v))
    }
}
impl<T: Into<SqlValue>> From<Option<T>> for SqlValue {
    fn from(v: Option<T>) -> SqlValue {
        v.map_or(SqlValue::Null, Into::into)
    }
}

/// One statement with its parameters (`?1`, `?2`, … in order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stmt {
    /// SQL text.
    pub sql: &'static str,
    /// Parameters.
    pub params: Vec<SqlValue>,
}

// ---------------------------------------------------------------- writes issued by the engine

/// Insert one timeline event.
pub const INSERT_EVENT: &str = "INSERT INTO events (tenant_id, room_id, seq, type, actor, created_at, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
/// Insert a new message's current state.
pub const INSERT_MESSAGE: &str = "INSERT INTO messages (tenant_id, room_id, id, user_id, content, created_at, parent_id, version, deleted, streaming, client_message_id, attachments) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, ?9, ?10, ?11)";
/// Replace a message's content (edit, stream delta or end).
pub const UPDATE_MESSAGE_CONTENT: &str = "UPDATE messages SET content = ?4, version = ?5, edited_at = ?6, streaming = ?7 WHERE tenant_id = ?1 AND room_id = ?2 AND id = ?3";
/// Soft-delete a message.
pub const DELETE_MESSAGE: &str = "UPDATE messages SET deleted = 1, streaming = 0, version = ?4 WHERE tenant_id = ?1 AND room_id = ?2 AND id = ?3";
/// Add a reaction.
pub const INSERT_REACTION: &str = "INSERT INTO reactions (tenant_id, room_id, message_id, user_id, emoji, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
/// Remove a reaction.
pub const DELETE_REACTION: &str = "DELETE FROM reactions WHERE tenant_id = ?1 AND room_id = ?2 AND message_id = ?3 AND user_id = ?4 AND emoji = ?5";
/// Advance a user's read position.
pub const UPSERT_READ: &str = "INSERT INTO read_positions (tenant_id, room_id, user_id, message_id) VALUES (?1, ?2, ?3, ?4) ON CONFLICT (tenant_id, room_id, user_id) DO UPDATE SET message_id = excluded.message_id";
/// Remember an idempotency key with its original ack.
pub const INSERT_IDEMPOTENCY: &str = "INSERT OR REPLACE INTO idempotency (tenant_id, room_id, user_id, client_message_id, seq, message_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

/// Create or update an agent run's state: agent, run, terminal, open (see [`crate::RunRow`]).
pub const UPSERT_RUN: &str = "INSERT INTO agent_runs (tenant_id, room_id, agent_id, run_id, terminal, open) VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (tenant_id, room_id, agent_id, run_id) DO UPDATE SET terminal = excluded.terminal, open = excluded.open";
/// Create or update a tool call or approval of a run: agent, run, kind, id, pending.
pub const UPSERT_RUN_ITEM: &str = "INSERT INTO agent_items (tenant_id, room_id, agent_id, run_id, kind, item_id, pending) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (tenant_id, room_id, agent_id, run_id, kind, item_id) DO UPDATE SET pending = excluded.pending";
/// `agent_items.kind` of a tool call.
pub const ITEM_TOOL_CALL: &str = "tool_call";
/// `agent_items.kind` of an approval request.
pub const ITEM_APPROVAL: &str = "approval";

/// Build an [`UPSERT_RUN`] statement.
pub fn upsert_run(
    tenant: &Arc<str>,
    room: &Arc<str>,
    agent_id: &str,
    run_id: &str,
    terminal: bool,
    open: bool,
) -> Stmt {
    Stmt {
        sql: UPSERT_RUN,
        params: vec![
            tenant.into(),
            room.into(),
            agent_id.into(),
            run_id.into(),
            terminal.into(),
            open.into(),
        ],
    }
}

/// Build an [`UPSERT_RUN_ITEM`] statement.
pub fn upsert_run_item(
    tenant: &Arc<str>,
    room: &Arc<str>,
    agent_id: &str,
    run_id: &str,
    kind: &str,
    item_id: &str,
    pending: bool,
) -> Stmt {
    Stmt {
        sql: UPSERT_RUN_ITEM,
        params: vec![
            tenant.into(),
            room.into(),
            agent_id.into(),
            run_id.into(),
            kind.into(),
            item_id.into(),
            pending.into(),
        ],
    }
}

/// Delete at most `?4` idempotency keys of a room created at or before `?3` (epoch ms). Shells
/// run it opportunistically (on load, and now and then with a commit) so storage keeps only
/// the keys of the last [`crate::IDEMPOTENCY_TTL_MS`]; the engine ignores older keys anyway.
pub const PRUNE_IDEMPOTENCY: &str = "DELETE FROM idempotency WHERE rowid IN (SELECT rowid FROM idempotency WHERE tenant_id = ?1 AND room_id = ?2 AND created_at <= ?3 LIMIT ?4)";

/// Build a [`PRUNE_IDEMPOTENCY`] statement: drop at most `limit` keys of the room that are
/// older than [`crate::IDEMPOTENCY_TTL_MS`] at `now_ms`.
pub fn prune_idempotency(tenant: &Arc<str>, room: &Arc<str>, now_ms: u64, limit: u64) -> Stmt {
    Stmt {
        sql: PRUNE_IDEMPOTENCY,
        params: vec![
            tenant.into(),
            room.into(),
            now_ms.saturating_sub(crate::IDEMPOTENCY_TTL_MS).into(),
            limit.into(),
        ],
    }
}

/// Build an [`INSERT_EVENT`] statement.
pub fn insert_event(
    tenant: &Arc<str>,
    room: &Arc<str>,
    seq: u64,
    kind: &str,
    actor: &str,
    created_ms: u64,
    body: &Arc<str>,
) -> Stmt {
    Stmt {
        sql: INSERT_EVENT,
        params: vec![
            tenant.into(),
            room.into(),
            seq.into(),
            kind.into(),
            actor.into(),
            created_ms.into(),
            body.into(),
        ],
    }
}

/// Build an [`INSERT_MESSAGE`] statement.
#[allow(clippy::too_many_arguments)]
pub fn insert_message(
    tenant: &Arc<str>,
    room: &Arc<str>,
    id: u64,
    user_id: &str,
    content: &str,
    created_ms: u64,
    parent_id: Option<u64>,
    streaming: bool,
    client_message_id: Option<&str>,
    attachments_json: Option<&str>,
) -> Stmt {
    Stmt {
        sql: INSERT_MESSAGE,
        params: vec![
            tenant.into(),
            room.into(),
            id.into(),
            user_id.into(),
            content.into(),
            created_ms.into(),
            parent_id.into(),
            1u64.into(),
            streaming.into(),
            client_message_id.into(),
            attachments_json.into(),
        ],
    }
}

/// Build an [`UPDATE_MESSAGE_CONTENT`] statement.
pub fn update_message_content(
    tenant: &Arc<str>,
    room: &Arc<str>,
    id: u64,
    content: &str,
    version: u32,
    edited_ms: u64,
    streaming: bool,
) -> Stmt {
    Stmt {
        sql: UPDATE_MESSAGE_CONTENT,
        params: vec![
            tenant.into(),
            room.into(),
            id.into(),
            content.into(),
            u64::from(version).into(),
            edited_ms.into(),
            streaming.into(),
        ],
    }
}

/// Build a [`DELETE_MESSAGE`] statement.
pub fn delete_message(tenant: &Arc<str>, room: &Arc<str>, id: u64, version: u32) -> Stmt {
    Stmt {
        sql: DELETE_MESSAGE,
        params: vec![
            tenant.into(),
            room.into(),
            id.into(),
            u64::from(version).into(),
        ],
    }
}

/// Build an [`INSERT_REACTION`] or [`DELETE_REACTION`] statement.
pub fn reaction(
    tenant: &Arc<str>,
    room: &Arc<str>,
    add: bool,
    message_id: u64,
    user_id: &str,
    emoji: &str,
    created_ms: u64,
) -> Stmt {
    let mut params = vec![
        tenant.into(),
        room.into(),
        message_id.into(),
        user_id.into(),
        emoji.into(),
    ];
    if add {
        params.push(created_ms.into());
    }
    Stmt {
        sql: if add {
            INSERT_REACTION
        } else {
            DELETE_REACTION
        },
        params,
    }
}

/// Build an [`UPSERT_READ`] statement.
pub fn upsert_read(tenant: &Arc<str>, room: &Arc<str>, user_id: &str, message_id: u64) -> Stmt {
    Stmt {
        sql: UPSERT_READ,
        params: vec![
            tenant.into(),
            room.into(),
            user_id.into(),
            message_id.into(),
        ],
    }
}

/// Build an [`INSERT_IDEMPOTENCY`] statement.
pub fn insert_idempotency(
    tenant: &Arc<str>,
    room: &Arc<str>,
    user_id: &str,
    client_message_id: &str,
    seq: u64,
    message_id: Option<u64>,
    created_ms: u64,
) -> Stmt {
    Stmt {
        sql: INSERT_IDEMPOTENCY,
        params: vec![
            tenant.into(),
            room.into(),
            user_id.into(),
            client_message_id.into(),
            seq.into(),
            message_id.into(),
            created_ms.into(),
        ],
    }
}

// ------------------------------------------------------------- loading a room (?1 tenant, ?2 room)

/// The room's type, or no row when the room does not exist.
pub const LOAD_ROOM_TYPE: &str = "SELECT type FROM rooms WHERE tenant_id = ?1 AND id = ?2";
/// Highest committed seq (0 for an empty room).
pub const LOAD_MAX_SEQ: &str =
    "SELECT COALESCE(MAX(seq), 0) FROM events WHERE tenant_id = ?1 AND room_id = ?2";
/// Bodies of the events after `?3`, ascending (the in-memory resume window).
pub const LOAD_RECENT: &str =
    "SELECT body FROM events WHERE tenant_id = ?1 AND room_id = ?2 AND seq > ?3 ORDER BY seq ASC";
/// Compact state of every message: id, author, version, deleted, streaming. Not read at
/// wake-up any more (unbounded; see [`LOAD_OPEN_MESSAGES`] and [`FETCH_MESSAGE`]); kept for the
/// full load a tool or benchmark may still want to compare against.
pub const LOAD_MESSAGES: &str = "SELECT id, user_id, version, deleted, streaming FROM messages WHERE tenant_id = ?1 AND room_id = ?2";
/// Every reaction: message id, user, emoji. Not read at wake-up any more ([`FETCH_REACTION`]).
pub const LOAD_REACTIONS: &str =
    "SELECT message_id, user_id, emoji FROM reactions WHERE tenant_id = ?1 AND room_id = ?2";
/// Every read position: user, message id. Not read at wake-up any more ([`FETCH_READ`]).
pub const LOAD_READS: &str =
    "SELECT user_id, message_id FROM read_positions WHERE tenant_id = ?1 AND room_id = ?2";
/// Idempotency keys newer than `?3` (epoch ms): user, key, seq, message id, created at. Not
/// read at wake-up any more ([`FETCH_IDEMPOTENCY`]).
pub const LOAD_IDEMPOTENCY: &str = "SELECT user_id, client_message_id, seq, message_id, created_at FROM idempotency WHERE tenant_id = ?1 AND room_id = ?2 AND created_at > ?3";
/// Bodies of every agent event, ascending (rebuilds run, tool-call and approval state). Not read
/// at wake-up any more ([`LOAD_OPEN_RUNS`], [`LOAD_OPEN_RUN_ITEMS`], [`FETCH_RUN`]).
pub const LOAD_AGENT_EVENTS: &str = "SELECT body FROM events WHERE tenant_id = ?1 AND room_id = ?2 AND type IN ('agentRun', 'tool_call', 'tool_result', 'tool_error', 'approval_request', 'approval_decision') ORDER BY seq ASC";

/// Streaming messages (open streams): id, author, version, deleted, streaming (partial index
/// `messages_streaming`). Replaces the unbounded `LOAD_MESSAGES` at wake-up.
pub const LOAD_OPEN_MESSAGES: &str = "SELECT id, user_id, version, deleted, streaming FROM messages WHERE tenant_id = ?1 AND room_id = ?2 AND streaming = 1";
/// Open agent runs (see [`crate::RunRow`]): agent, run, terminal (partial index
/// `agent_runs_open`). With [`LOAD_OPEN_RUN_ITEMS`], replaces `LOAD_AGENT_EVENTS` at wake-up.
pub const LOAD_OPEN_RUNS: &str = "SELECT agent_id, run_id, terminal FROM agent_runs WHERE tenant_id = ?1 AND room_id = ?2 AND open = 1";
/// Tool calls and approvals of the open runs: agent, run, kind, item id, pending. `CROSS JOIN`
/// makes SQLite (and D1) start from the few open runs (partial index `agent_runs_open`); a plain
/// join scanned every item of the room (1.9 ms of a 1M-event room's wake-up, against 0.06 ms).
pub const LOAD_OPEN_RUN_ITEMS: &str = "SELECT i.agent_id AS agent_id, i.run_id AS run_id, i.kind AS kind, i.item_id AS item_id, i.pending AS pending FROM agent_runs r CROSS JOIN agent_items i ON i.tenant_id = r.tenant_id AND i.room_id = r.room_id AND i.agent_id = r.agent_id AND i.run_id = r.run_id WHERE r.tenant_id = ?1 AND r.room_id = ?2 AND r.open = 1";

// --------------------------------------------- lookups on demand (?1 tenant, ?2 room; one row)

/// A message's state by id (`?3`): author, version, deleted, streaming.
pub const FETCH_MESSAGE: &str = "SELECT user_id, version, deleted, streaming FROM messages WHERE tenant_id = ?1 AND room_id = ?2 AND id = ?3";
/// Whether a reaction exists: message `?3`, user `?4`, emoji `?5`.
pub const FETCH_REACTION: &str = "SELECT 1 AS present FROM reactions WHERE tenant_id = ?1 AND room_id = ?2 AND message_id = ?3 AND user_id = ?4 AND emoji = ?5";
/// A user's (`?3`) read position.
pub const FETCH_READ: &str =
    "SELECT message_id FROM read_positions WHERE tenant_id = ?1 AND room_id = ?2 AND user_id = ?3";
/// An idempotency key (user `?3`, key `?4`) created after `?5` (epoch ms): seq, message id,
/// created at.
pub const FETCH_IDEMPOTENCY: &str = "SELECT seq, message_id, created_at FROM idempotency WHERE tenant_id = ?1 AND room_id = ?2 AND user_id = ?3 AND client_message_id = ?4 AND created_at > ?5";
/// An agent run (agent `?3`, run `?4`): terminal.
pub const FETCH_RUN: &str = "SELECT terminal FROM agent_runs WHERE tenant_id = ?1 AND room_id = ?2 AND agent_id = ?3 AND run_id = ?4";

// ------------------------------------------------------------------ reads (?1 tenant, ?2 room)

/// Backward page: events with seq < `?3`, newest first, at most `?4` rows.
pub const HISTORY_BEFORE: &str = "SELECT body FROM events WHERE tenant_id = ?1 AND room_id = ?2 AND seq < ?3 ORDER BY seq DESC LIMIT ?4";
/// Forward page: events with seq > `?3`, oldest first, at most `?4` rows.
pub const HISTORY_AFTER: &str = "SELECT body FROM events WHERE tenant_id = ?1 AND room_id = ?2 AND seq > ?3 ORDER BY seq ASC LIMIT ?4";
/// One event by seq.
pub const EVENT_BY_SEQ: &str =
    "SELECT body FROM events WHERE tenant_id = ?1 AND room_id = ?2 AND seq = ?3";
/// Legacy page: live messages with id < `?3`, newest first, at most `?4`.
pub const LEGACY_BEFORE_ID: &str = "SELECT id, user_id, content, created_at, edited_at, parent_id, version, client_message_id, attachments FROM messages WHERE tenant_id = ?1 AND room_id = ?2 AND deleted = 0 AND id < ?3 ORDER BY id DESC LIMIT ?4";
/// Legacy page: live messages created before `?3` (epoch ms), newest first, at most `?4`.
pub const LEGACY_BEFORE_TIME: &str = "SELECT id, user_id, content, created_at, edited_at, parent_id, version, client_message_id, attachments FROM messages WHERE tenant_id = ?1 AND room_id = ?2 AND deleted = 0 AND created_at < ?3 ORDER BY id DESC LIMIT ?4";
/// Reaction counts of one message (`?3`) per emoji.
pub const REACTION_COUNTS: &str = "SELECT emoji, COUNT(*) FROM reactions WHERE tenant_id = ?1 AND room_id = ?2 AND message_id = ?3 GROUP BY emoji ORDER BY emoji";

// ------------------------------------------------------------------- tenants, keys, rooms

/// Insert a tenant: id, name, jwt secret, created at.
pub const INSERT_TENANT: &str =
    "INSERT OR IGNORE INTO tenants (id, name, jwt_secret, created_at) VALUES (?1, ?2, ?3, ?4)";
/// A tenant's JWT secret.
pub const TENANT_SECRET: &str = "SELECT jwt_secret FROM tenants WHERE id = ?1";
/// Insert an API key hash: hash, tenant, created at.
pub const INSERT_API_KEY: &str =
    "INSERT INTO api_keys (key_hash, tenant_id, created_at) VALUES (?1, ?2, ?3)";
/// Tenant of a live API key hash.
pub const API_KEY_TENANT: &str =
    "SELECT tenant_id FROM api_keys WHERE key_hash = ?1 AND revoked_at IS NULL";
/// Insert a room: tenant, id, name, type, created by, created at.
pub const INSERT_ROOM: &str = "INSERT INTO rooms (tenant_id, id, name, type, created_by, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
/// One room: id, name, type, created by, created at.
pub const GET_ROOM: &str =
    "SELECT id, name, type, created_by, created_at, tenant_id FROM rooms WHERE tenant_id = ?1 AND id = ?2";
/// One room by id in any tenant (only used by the `cross-tenant-leak` fault).
pub const GET_ROOM_ANY_TENANT: &str =
    "SELECT id, name, type, created_by, created_at, tenant_id FROM rooms WHERE id = ?1 LIMIT 1";
/// Rooms the user `?2` is a member of, by id.
pub const LIST_MY_ROOMS: &str = "SELECT r.id, r.name, r.type, r.created_by, r.created_at, r.tenant_id FROM rooms r JOIN room_members m ON m.tenant_id = r.tenant_id AND m.room_id = r.id WHERE r.tenant_id = ?1 AND m.user_id = ?2 ORDER BY r.id";
/// Every room of the tenant, by id.
pub const LIST_ALL_ROOMS: &str = "SELECT id, name, type, created_by, created_at, tenant_id FROM rooms WHERE tenant_id = ?1 ORDER BY id";
/// Add or change a member: tenant, room, user, role, joined at.
pub const UPSERT_MEMBER: &str = "INSERT INTO room_members (tenant_id, room_id, user_id, role, joined_at) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (tenant_id, room_id, user_id) DO UPDATE SET role = excluded.role";
/// Remove a member: tenant, room, user.
pub const DELETE_MEMBER: &str =
    "DELETE FROM room_members WHERE tenant_id = ?1 AND room_id = ?2 AND user_id = ?3";
/// One member's role: tenant, room, user.
pub const MEMBER_ROLE: &str =
    "SELECT role FROM room_members WHERE tenant_id = ?1 AND room_id = ?2 AND user_id = ?3";
/// One user's role (NULL when not a member) and membership version (NULL when never
/// written), read together in one statement: tenant, room, user. Always one row.
pub const MEMBER_ROLE_VERSION: &str = "SELECT (SELECT role FROM room_members WHERE tenant_id = ?1 AND room_id = ?2 AND user_id = ?3) AS role, (SELECT version FROM room_member_versions WHERE tenant_id = ?1 AND room_id = ?2 AND user_id = ?3) AS version";
/// Increment one user's membership version and return it: tenant, room, user. Run in the
/// same transaction (or D1 batch) as the membership write it versions.
pub const BUMP_MEMBER_VERSION: &str = "INSERT INTO room_member_versions (tenant_id, room_id, user_id, version) VALUES (?1, ?2, ?3, 1) ON CONFLICT (tenant_id, room_id, user_id) DO UPDATE SET version = version + 1 RETURNING version";
/// Every member: user, role, joined at, by user id.
pub const LIST_MEMBERS: &str = "SELECT user_id, role, joined_at FROM room_members WHERE tenant_id = ?1 AND room_id = ?2 ORDER BY user_id";
/// A server-wide setting.
pub const GET_META: &str = "SELECT value FROM server_meta WHERE key = ?1";
/// Set a server-wide setting if absent.
pub const INSERT_META: &str = "INSERT OR IGNORE INTO server_meta (key, value) VALUES (?1, ?2)";
