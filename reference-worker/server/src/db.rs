//! SQLite storage: one writer connection and a few readers (WAL), all statements from
//! `fluxy_room::sql`.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use fluxy_protocol::common::{MemberRole, RoomType};
use fluxy_room::sql::{self, SqlValue, Stmt};
use fluxy_room::{Found, LoadedRoom, Lookup, MessageRow, RunRow};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params, Connection, OptionalExtension, ToSql};

use crate::ServerError;

/// Idempotency keys are kept (and loaded) for this long (the engine's retention).
pub const IDEMPOTENCY_MS: u64 = fluxy_room::IDEMPOTENCY_TTL_MS;

/// Expired idempotency keys pruned when a room loads (bounded work; commits prune more).
const PRUNE_ON_LOAD: i64 = 10_000;

/// A room row.
#[derive(Debug, Clone)]
pub struct RoomRow {
    /// Room id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Type.
    pub room_type: RoomType,
    /// Creator.
    pub created_by: String,
    /// Creation time, epoch ms.
    pub created_at: u64,
    /// Owning tenant.
    pub tenant: String,
}

/// The database: a writer and readers (the same connection for an in-memory database).
#[derive(Clone)]
pub struct Db {
    writer: Arc<Mutex<Connection>>,
    readers: Arc<Vec<Arc<Mutex<Connection>>>>,
    next: Arc<AtomicUsize>,
}

struct P<'a>(&'a SqlValue);

impl ToSql for P<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self.0 {
            SqlValue::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            SqlValue::Int(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            SqlValue::Text(t) => ToSqlOutput::Borrowed(ValueRef::Text(t.as_bytes())),
        })
    }
}

/// Run one engine statement.
pub fn exec(conn: &Connection, s: &Stmt) -> rusqlite::Result<usize> {
    let mut st = conn.prepare_cached(s.sql)?;
    st.execute(rusqlite::params_from_iter(s.params.iter().map(P)))
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Parse a stored role string.
pub fn parse_role(s: &str) -> Option<MemberRole> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
}

/// The wire string of a role.
pub fn role_str(r: MemberRole) -> &'static str {
    match r {
        MemberRole::Owner => "owner",
        MemberRole::Admin => "admin",
        MemberRole::Moderator => "moderator",
        MemberRole::Member => "member",
    }
}

/// Parse a stored room type.
pub fn parse_type(s: &str) -> RoomType {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).unwrap_or_default()
}

/// The wire string of a room type.
pub fn type_str(t: RoomType) -> &'static str {
    match t {
        RoomType::Dm => "dm",
        RoomType::Group => "group",
        RoomType::Public => "public",
        RoomType::Announcement => "announcement",
    }
}

impl Db {
    /// Open (and migrate) the database; `None` is a private in-memory database.
    pub fn open(path: Option<&Path>, synchronous_full: bool) -> Result<Db, ServerError> {
        let writer = match path {
            Some(p) => Connection::open(p)?,
            None => Connection::open_in_memory()?,
        };
        if path.is_some() {
            writer.pragma_update(None, "journal_mode", "WAL")?;
            writer.pragma_update(
                None,
                "synchronous",
                if synchronous_full { "FULL" } else { "NORMAL" },
            )?;
        }
        writer.busy_timeout(std::time::Duration::from_secs(10))?;
        for (_, m) in sql::MIGRATIONS {
            writer.execute_batch(m)?;
        }
        let writer = Arc::new(Mutex::new(writer));
        let readers = match path {
            Some(p) => {
                let mut v = Vec::new();
                for _ in 0..3 {
                    let c = Connection::open(p)?;
                    c.busy_timeout(std::time::Duration::from_secs(10))?;
                    v.push(Arc::new(Mutex::new(c)));
                }
                v
            }
            None => vec![writer.clone()],
        };
        Ok(Db {
            writer,
            readers: Arc::new(readers),
            next: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Run `f` on a reader connection on the blocking pool.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, ServerError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        let c = self.readers[n].clone();
        tokio::task::spawn_blocking(move || {
            let g = c.lock().map_err(|_| ServerError::Poisoned)?;
            f(&g).map_err(ServerError::from)
        })
        .await
        .map_err(|_| ServerError::Poisoned)?
    }

    /// Run `f` inside a write transaction on the blocking pool.
    pub async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, ServerError> + Send + 'static,
    ) -> Result<T, ServerError> {
        let c = self.writer.clone();
        tokio::task::spawn_blocking(move || {
            let mut g = c.lock().map_err(|_| ServerError::Poisoned)?;
            let tx = g.transaction()?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
        .await
        .map_err(|_| ServerError::Poisoned)?
    }

    /// Commit one engine batch in a single transaction.
    pub async fn persist(&self, statements: Vec<Stmt>) -> Result<(), ServerError> {
        self.write(move |tx| {
            for s in &statements {
                exec(tx, s)?;
            }
            Ok(())
        })
        .await
    }

    /// Answer an engine lookup ([`fluxy_room::Effect::Fetch`]) on a reader connection (it
    /// sees every batch committed before it starts, which is all the engine assumes).
    pub async fn fetch(&self, lookup: Lookup, statement: Stmt) -> Result<Found, ServerError> {
        let row = self.read(move |c| fetch_sync(c, &statement)).await?;
        Ok(lookup.found(row.as_deref())?)
    }

    /// Load what a room engine needs at wake-up (bounded: see [`LoadedRoom`]).
    pub async fn load_room(
        &self,
        tenant: String,
        room: String,
        window: u64,
        now_ms: u64,
    ) -> Result<LoadedRoom, ServerError> {
        // Read through the writer so no committed batch can be missed.
        let c = self.writer.clone();
        tokio::task::spawn_blocking(move || {
            let g = c.lock().map_err(|_| ServerError::Poisoned)?;
            load_room_sync(&g, &tenant, &room, window, now_ms).map_err(ServerError::from)
        })
        .await
        .map_err(|_| ServerError::Poisoned)?
    }
}

fn load_room_sync(
    c: &Connection,
    tenant: &str,
    room: &str,
    window: u64,
    now_ms: u64,
) -> rusqlite::Result<LoadedRoom> {
    let room_type = c
        .query_row(sql::LOAD_ROOM_TYPE, params![tenant, room], |r| {
            r.get::<_, String>(0)
        })
        .optional()?
        .map(|t| parse_type(&t))
        .unwrap_or_default();
    let current: i64 = c.query_row(sql::LOAD_MAX_SEQ, params![tenant, room], |r| r.get(0))?;
    // Opportunistic pruning of expired idempotency keys (FX-ACK-5 needs only 24 h).
    c.execute(
        sql::PRUNE_IDEMPOTENCY,
        params![
            tenant,
            room,
            i(now_ms.saturating_sub(IDEMPOTENCY_MS)),
            PRUNE_ON_LOAD
        ],
    )?;
    let current = to_u64(current);
    let from = current.saturating_sub(window);
    let recent = c
        .prepare_cached(sql::LOAD_RECENT)?
        .query_map(params![tenant, room, i(from)], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    // Bounded: the streaming messages and the open agent runs; everything else is looked up
    // on demand (`Effect::Fetch`, [`fetch_sync`]).
    let messages = c
        .prepare_cached(sql::LOAD_OPEN_MESSAGES)?
        .query_map(params![tenant, room], |r| {
            Ok(MessageRow {
                id: to_u64(r.get(0)?),
                user_id: r.get(1)?,
                version: u32::try_from(r.get::<_, i64>(2)?).unwrap_or(1),
                deleted: r.get::<_, i64>(3)? != 0,
                streaming: r.get::<_, i64>(4)? != 0,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let runs = c
        .prepare_cached(sql::LOAD_OPEN_RUNS)?
        .query_map(params![tenant, room], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? != 0))
        })?
        .collect::<Result<Vec<(String, String, bool)>, _>>()?;
    let items = c
        .prepare_cached(sql::LOAD_OPEN_RUN_ITEMS)?
        .query_map(params![tenant, room], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get::<_, i64>(4)? != 0,
            ))
        })?
        .collect::<Result<Vec<(String, String, String, String, bool)>, _>>()?;
    Ok(LoadedRoom {
        room_type,
        current_seq: current,
        recent,
        messages,
        runs: RunRow::assemble(runs, items),
        ..LoadedRoom::default()
    })
}

/// Run a lookup statement; its first row as values, `None` when it returned none.
pub fn fetch_sync(c: &Connection, s: &Stmt) -> rusqlite::Result<Option<Vec<SqlValue>>> {
    let mut st = c.prepare_cached(s.sql)?;
    let n = st.column_count();
    let mut rows = st.query(rusqlite::params_from_iter(s.params.iter().map(P)))?;
    let Some(row) = rows.next()? else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(n);
    for k in 0..n {
        out.push(match row.get_ref(k)? {
            ValueRef::Null => SqlValue::Null,
            ValueRef::Integer(v) => SqlValue::Int(v),
            ValueRef::Text(t) => SqlValue::Text(Arc::from(String::from_utf8_lossy(t).as_ref())),
            ValueRef::Real(v) => SqlValue::Int(v as i64),
            ValueRef::Blob(_) => SqlValue::Null,
        });
    }
    Ok(Some(out))
}

/// Map a room row.
pub fn room_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RoomRow> {
    Ok(RoomRow {
        id: r.get(0)?,
        name: r.get(1)?,
        room_type: parse_type(&r.get::<_, String>(2)?),
        created_by: r.get(3)?,
        created_at: to_u64(r.get(4)?),
        tenant: r.get(5)?,
    })
}

/// Convert to SQL integer.
pub fn sql_int(v: u64) -> i64 {
    i(v)
}

/// Convert from SQL integer.
pub fn from_sql_int(v: i64) -> u64 {
    to_u64(v)
}
