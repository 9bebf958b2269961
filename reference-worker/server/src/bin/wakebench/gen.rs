//! `gen-room`: fill a SQLite file with one room of N stored events, written by the real engine.
//!
//! The generator opens connections on an in-process [`Room`] and sends it client frames
//! (messages, replies, edits, deletes, reactions, reads, streams, agent runs with tool calls and
//! approvals), with a simulated clock that ends at the current time. Every [`Effect::Persist`]
//! is executed on the SQLite file exactly as a shell would, so event bodies are the engine's
//! own `TimelineEvent` JSON and the `messages`, `reactions`, `read_positions` and `idempotency`
//! rows agree with the timeline. Idempotency keys older than 24 h are pruned with the engine's
//! own prune statement, so only those of the last simulated day remain.
//!
//! The same file layout serves both shells: the native server's `--db`, and the SQLite file
//! behind wrangler's local D1 (`.wrangler/.../d1/miniflare-D1DatabaseObject/*.sqlite`).

use std::path::Path;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use fluxy_protocol::client::{
    AgentRunFrame, ApprovalDecisionFrame, ApprovalRequestFrame, DeleteFrame, EditFrame,
    ReactionFrame, ReadFrame, SendMessageFrame, StreamFrame, ToolCallFrame, ToolErrorFrame,
    ToolResultFrame,
};
use fluxy_protocol::common::{Decision, MemberRole, ReactionOp, RunStatus, StreamOp};
use fluxy_protocol::ClientFrame;
use fluxy_room::sql;
use fluxy_room::{
    ConnId, ConnectOptions, Effect, Faults, Identity, Input, LoadedRoom, Room, RoomConfig,
};
use rusqlite::{params, Connection};
use sha2::{Digest, Sha256};

/// Where and what to generate.
#[derive(Debug, Clone)]
pub struct GenSpec {
    /// Tenant id (created if absent, with `jwt_secret` and `api_key`).
    pub tenant: String,
    /// The tenant's JWT secret.
    pub jwt_secret: String,
    /// An API key of the tenant (stored as its SHA-256 hex digest).
    pub api_key: String,
    /// Room id (must not exist yet).
    pub room: String,
    /// The owner (a member with role `owner`); the benchmark connects as this user.
    pub owner: String,
    /// Number of timeline events to store.
    pub events: u64,
    /// Simulated time between two events, in ms (the last one is "now").
    pub step_ms: u64,
    /// Seed of the pseudo-random mix.
    pub seed: u64,
}

/// What was generated.
#[derive(Debug, Default, Clone)]
pub struct GenReport {
    /// Events stored (`seq` 1..=events).
    pub events: u64,
    /// `messages` rows.
    pub messages: u64,
    /// `reactions` rows.
    pub reactions: u64,
    /// `read_positions` rows.
    pub reads: u64,
    /// `idempotency` rows (the last simulated 24 h).
    pub idempotency: u64,
    /// Agent events (runs, tool calls and results, approvals).
    pub agent_events: u64,
    /// Agent runs left open (not terminal).
    pub open_runs: u64,
    /// Messages left streaming.
    pub open_streams: u64,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// Errors of the generator.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    /// SQLite failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The room already has events.
    #[error("room {0} already exists in this database")]
    RoomExists(String),
    /// The engine refused a frame it must accept.
    #[error("the engine refused a generated frame: {0}")]
    Refused(String),
    /// The engine stopped sequencing events.
    #[error("no event sequenced after seq {0} for {STALL_FRAMES} frames: does the engine wait for an effect the generator does not carry out?")]
    Stalled(u64),
}

/// Frames without a new event after which the generator gives up (normally a few at most).
const STALL_FRAMES: u32 = 10_000;

/// Small deterministic PRNG (xorshift64*): no dependency, reproducible mixes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// Percent chance.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const WORDS: &[&str] = &[
    "deploy", "the", "build", "is", "green", "again", "can", "you", "check", "logs", "for", "room",
    "latency", "after", "lunch", "ship", "it", "looks", "good", "to", "me", "retry", "with", "a",
    "smaller", "batch", "please", "thanks", "agent", "summary", "of", "this", "thread", "meeting",
    "moved", "tomorrow", "fixed", "typo", "in", "docs",
];
const EMOJI: &[&str] = &["👍", "🎉", "❤️", "😂", "👀", "🚀"];
const USERS: usize = 20;
const AGENTS: usize = 3;
/// Recent messages kept as candidates for edits, deletes, reactions and replies.
const RECENT: usize = 64;
/// One agent run per this many events (a run writes about 6-10 events).
const RUN_EVERY: u64 = 500;
/// Expired idempotency keys are pruned once per simulated hour (the native shell prunes at
/// most 1,000 per minute of wall time; the prune query scans the room's keys, so pruning per
/// simulated minute would dominate the generator's time). The stored keys are the same, give
/// or take the last hour's expired ones.
const PRUNE_EVERY_MS: u64 = 3_600_000;
/// Upper bound of one prune (more than an hour of keys at any step).
const PRUNE_ROWS: u64 = 100_000;
/// Commit the SQLite transaction every this many events.
const TX_EVENTS: u64 = 50_000;

fn sentence(rng: &mut Rng) -> String {
    let n = 3 + rng.below(20) as usize;
    let mut s = String::with_capacity(n * 6);
    for i in 0..n {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
    }
    s
}

fn frame(f: ClientFrame) -> String {
    serde_json::to_string(&f).unwrap_or_default()
}

fn now_epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Hex SHA-256 of an API key, as both shells store keys.
pub fn key_hash(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

struct Gen<'c> {
    /// The database, inside a transaction committed every [`TX_EVENTS`] events.
    db: &'c Connection,
    room: Room,
    rng: Rng,
    now: u64,
    step: u64,
    last_prune: u64,
    tenant: Arc<str>,
    room_id: Arc<str>,
    /// Connection of user i (0..USERS), then of agent j (USERS..USERS+AGENTS).
    conns: Vec<ConnId>,
    /// Recent live messages: (id, author index).
    recent: Vec<(u64, usize)>,
    /// Reactions this generator added and did not remove: (message, user index, emoji index).
    reactions: Vec<(u64, usize, usize)>,
    last_msg: u64,
    refused: u64,
    last_refusal: String,
    runs: u64,
    next_run_at: u64,
    cmid: u64,
}

impl Gen<'_> {
    /// Send one frame on user `who`'s connection, carry out the effects like a shell (persist,
    /// then report the commit) and return the seq the frame was sequenced at, if any.
    fn send(&mut self, who: usize, f: ClientFrame) -> Result<Option<u64>, GenError> {
        self.now += self.step / 2 + self.rng.below(self.step.max(1));
        let before = self.room.committed_seq();
        self.room.handle(
            self.now,
            Input::Text {
                conn: self.conns[who],
                text: frame(f),
            },
        );
        while let Some(e) = self.room.poll_effect() {
            match e {
                Effect::Persist { batch, statements } => {
                    for s in &statements {
                        fluxy_server::db::exec(self.db, s)?;
                    }
                    if self.now.saturating_sub(self.last_prune) >= PRUNE_EVERY_MS {
                        self.last_prune = self.now;
                        let p = sql::prune_idempotency(
                            &self.tenant,
                            &self.room_id,
                            self.now,
                            PRUNE_ROWS,
                        );
                        fluxy_server::db::exec(self.db, &p)?;
                    }
                    self.room.handle(self.now, Input::Committed { batch });
                }
                Effect::Fetch {
                    fetch,
                    lookup,
                    statement,
                } => {
                    // A lookup of state not in memory: answered at once from the file.
                    let row = fluxy_server::db::fetch_sync(self.db, &statement)?;
                    let result = lookup.found(row.as_deref());
                    self.room.handle(self.now, Input::Fetched { fetch, result });
                }
                Effect::Send { frame, .. } if frame.starts_with("{\"type\":\"error\"") => {
                    self.refused += 1;
                    self.last_refusal = frame.to_string();
                }
                _ => {}
            }
        }
        let after = self.room.committed_seq();
        Ok((after > before).then_some(after))
    }

    fn next_cmid(&mut self) -> Option<String> {
        self.cmid += 1;
        Some(format!("gen-{:010}", self.cmid))
    }

    fn message(&mut self) -> Result<(), GenError> {
        let who = self.rng.below(USERS as u64) as usize;
        let parent_id = if self.rng.chance(8) && !self.recent.is_empty() {
            Some(self.recent[self.rng.below(self.recent.len() as u64) as usize].0)
        } else {
            None
        };
        let content = sentence(&mut self.rng);
        let client_message_id = self.next_cmid();
        let f = ClientFrame::Message(SendMessageFrame {
            content,
            client_message_id,
            parent_id,
            attachments: Vec::new(),
            reference: None,
        });
        if let Some(id) = self.send(who, f)? {
            self.remember(id, who);
        }
        Ok(())
    }

    fn remember(&mut self, id: u64, who: usize) {
        self.last_msg = id;
        if self.recent.len() >= RECENT {
            self.recent.remove(0);
        }
        self.recent.push((id, who));
    }

    fn edit(&mut self) -> Result<(), GenError> {
        let Some(&(id, who)) = self.pick_recent() else {
            return self.message();
        };
        let content = sentence(&mut self.rng);
        let client_message_id = self.next_cmid();
        self.send(
            who,
            ClientFrame::Edit(EditFrame {
                message_id: id,
                content,
                expected_version: None,
                client_message_id,
                reference: None,
            }),
        )?;
        Ok(())
    }

    fn delete(&mut self) -> Result<(), GenError> {
        if self.recent.is_empty() {
            return self.message();
        }
        let i = self.rng.below(self.recent.len() as u64) as usize;
        let (id, who) = self.recent.remove(i);
        self.reactions.retain(|r| r.0 != id);
        let client_message_id = self.next_cmid();
        self.send(
            who,
            ClientFrame::Delete(DeleteFrame {
                message_id: id,
                client_message_id,
                reference: None,
            }),
        )?;
        Ok(())
    }

    fn react(&mut self) -> Result<(), GenError> {
        if !self.reactions.is_empty() && self.rng.chance(15) {
            let i = self.rng.below(self.reactions.len() as u64) as usize;
            let (id, who, e) = self.reactions.swap_remove(i);
            self.send(
                who,
                ClientFrame::Reaction(ReactionFrame {
                    message_id: id,
                    emoji: EMOJI[e].to_owned(),
                    op: ReactionOp::Remove,
                    reference: None,
                }),
            )?;
            return Ok(());
        }
        let Some(&(id, _)) = self.pick_recent() else {
            return self.message();
        };
        let who = self.rng.below(USERS as u64) as usize;
        let e = self.rng.below(EMOJI.len() as u64) as usize;
        if self.reactions.contains(&(id, who, e)) {
            return self.message();
        }
        if self
            .send(
                who,
                ClientFrame::Reaction(ReactionFrame {
                    message_id: id,
                    emoji: EMOJI[e].to_owned(),
                    op: ReactionOp::Add,
                    reference: None,
                }),
            )?
            .is_some()
        {
            self.reactions.push((id, who, e));
        }
        Ok(())
    }

    fn read(&mut self) -> Result<(), GenError> {
        if self.last_msg == 0 {
            return self.message();
        }
        let who = self.rng.below(USERS as u64) as usize;
        let message_id = self.last_msg;
        self.send(
            who,
            ClientFrame::Read(ReadFrame {
                message_id,
                reference: None,
            }),
        )?;
        Ok(())
    }

    fn pick_recent(&mut self) -> Option<&(u64, usize)> {
        if self.recent.is_empty() {
            return None;
        }
        let i = self.rng.below(self.recent.len() as u64) as usize;
        self.recent.get(i)
    }

    /// A streamed message by `who`: start, `deltas` deltas and, when `finish`, the end.
    fn stream(&mut self, who: usize, deltas: usize, finish: bool) -> Result<u64, GenError> {
        let client_message_id = self.next_cmid();
        let Some(id) = self.send(
            who,
            ClientFrame::Stream(StreamFrame {
                op: StreamOp::Start,
                content: String::new(),
                message_id: None,
                parent_id: None,
                client_message_id,
                reference: None,
            }),
        )?
        else {
            return Ok(0);
        };
        let mut text = String::new();
        let ops = (0..deltas)
            .map(|_| StreamOp::Delta)
            .chain(finish.then_some(StreamOp::End));
        for op in ops {
            text.push_str(&sentence(&mut self.rng));
            text.push(' ');
            self.send(
                who,
                ClientFrame::Stream(StreamFrame {
                    op,
                    content: text.trim().to_owned(),
                    message_id: Some(id),
                    parent_id: None,
                    client_message_id: None,
                    reference: None,
                }),
            )?;
        }
        if finish {
            self.remember(id, who);
        }
        Ok(id)
    }

    /// One agent run: started, a tool call with its result (or error), sometimes an approval,
    /// a streamed answer, then a terminal status unless `open`.
    fn agent_run(&mut self, open: bool) -> Result<(), GenError> {
        self.runs += 1;
        let a = USERS + self.rng.below(AGENTS as u64) as usize;
        let run_id = format!("run-{}", self.runs);
        let run = |status, error| {
            ClientFrame::AgentRun(AgentRunFrame {
                run_id: run_id.clone(),
                status,
                error,
                reference: None,
            })
        };
        self.send(a, run(RunStatus::Started, None))?;
        let call = format!("call-{}", self.runs);
        let arguments = format!("{{\"q\":\"{}\"}}", sentence(&mut self.rng));
        self.send(
            a,
            ClientFrame::ToolCall(ToolCallFrame {
                run_id: run_id.clone(),
                tool_call_id: call.clone(),
                name: "search".into(),
                arguments,
                reference: None,
            }),
        )?;
        if open {
            // Left waiting on its tool call, like an agent that is still working.
            self.stream(a, 2, false)?;
            return Ok(());
        }
        if self.rng.chance(10) {
            self.send(
                a,
                ClientFrame::ToolError(ToolErrorFrame {
                    run_id: run_id.clone(),
                    tool_call_id: call,
                    error: "timeout".into(),
                    reference: None,
                }),
            )?;
        } else {
            let result = format!("{{\"hits\":{}}}", self.rng.below(50));
            self.send(
                a,
                ClientFrame::ToolResult(ToolResultFrame {
                    run_id: run_id.clone(),
                    tool_call_id: call.clone(),
                    result,
                    reference: None,
                }),
            )?;
        }
        if self.runs & 3 == 0 {
            let approval_id = format!("approval-{}", self.runs);
            self.send(
                a,
                ClientFrame::ApprovalRequest(ApprovalRequestFrame {
                    run_id: run_id.clone(),
                    approval_id: approval_id.clone(),
                    tool_call_id: None,
                    prompt: "post the summary?".into(),
                    reference: None,
                }),
            )?;
            let human = self.rng.below(USERS as u64) as usize;
            self.send(
                human,
                ClientFrame::ApprovalDecision(ApprovalDecisionFrame {
                    run_id: run_id.clone(),
                    approval_id,
                    agent_id: None,
                    decision: Decision::Approved,
                    reason: None,
                    reference: None,
                }),
            )?;
        }
        self.stream(a, 2, true)?;
        let end = if self.rng.chance(90) {
            run(RunStatus::Completed, None)
        } else {
            run(RunStatus::Failed, Some("model error".into()))
        };
        self.send(a, end)?;
        Ok(())
    }
}

fn count(c: &Connection, table: &str, tenant: &str, room: &str) -> rusqlite::Result<u64> {
    let n: i64 = c.query_row(
        &format!("SELECT COUNT(*) FROM {table} WHERE tenant_id = ?1 AND room_id = ?2"),
        params![tenant, room],
        |r| r.get(0),
    )?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Generate the room of `spec` into the SQLite file at `path` (created and migrated if needed).
///
/// The mix, per event: about 79 % messages (8 % of them replies), 6 % edits, 2 % deletes, 7 %
/// reaction changes, 6 % read events, plus one agent run per 500 events (tool call
/// with result or error, an approval every fourth run, a streamed answer, then completed or
/// failed). At the end two agent runs are left open (each with a pending tool call and a
/// message still streaming), so the room has open runs and streams to restore on wake-up.
pub fn generate(path: &Path, spec: &GenSpec) -> Result<GenReport, GenError> {
    let t0 = Instant::now();
    let mut c = Connection::open(path)?;
    c.busy_timeout(std::time::Duration::from_secs(10))?;
    c.pragma_update(None, "synchronous", "OFF")?;
    c.pragma_update(None, "cache_size", -262_144)?;
    for (_, m) in sql::MIGRATIONS {
        c.execute_batch(m)?;
    }
    if count(&c, "events", &spec.tenant, &spec.room)? > 0
        || c.query_row(
            "SELECT COUNT(*) FROM rooms WHERE tenant_id = ?1 AND id = ?2",
            params![spec.tenant, spec.room],
            |r| r.get::<_, i64>(0),
        )? > 0
    {
        return Err(GenError::RoomExists(spec.room.clone()));
    }
    let wall = now_epoch_ms();
    let start = wall.saturating_sub(spec.events.saturating_mul(spec.step_ms));
    let tenant: Arc<str> = Arc::from(spec.tenant.as_str());
    let room_id: Arc<str> = Arc::from(spec.room.as_str());
    let users: Vec<String> = (0..USERS)
        .map(|i| format!("user-{i:02}"))
        .chain((0..AGENTS).map(|i| format!("agent-{i}")))
        .collect();
    {
        let tx = c.transaction()?;
        let start_i = i64::try_from(start).unwrap_or(0);
        tx.execute(
            sql::INSERT_TENANT,
            params![spec.tenant, spec.tenant, spec.jwt_secret, start_i],
        )?;
        tx.execute(
            "INSERT OR IGNORE INTO api_keys (key_hash, tenant_id, created_at) VALUES (?1, ?2, ?3)",
            params![key_hash(&spec.api_key), spec.tenant, start_i],
        )?;
        tx.execute(
            sql::INSERT_ROOM,
            params![
                spec.tenant,
                spec.room,
                spec.room,
                "group",
                spec.owner,
                start_i
            ],
        )?;
        tx.execute(
            sql::UPSERT_MEMBER,
            params![spec.tenant, spec.room, spec.owner, "owner", start_i],
        )?;
        for u in &users {
            tx.execute(
                sql::UPSERT_MEMBER,
                params![spec.tenant, spec.room, u, "member", start_i],
            )?;
        }
        tx.commit()?;
    }
    let cfg = RoomConfig {
        tenant: tenant.clone(),
        room_id: room_id.clone(),
        jwt_secret: spec.jwt_secret.clone().into_bytes(),
        idle_timeout_ms: u64::MAX / 4,
        rate_burst: u32::MAX,
        rate_per_second: u32::MAX,
        resume_window: 1000,
        faults: Faults::default(),
    };
    let mut room = Room::new(cfg, LoadedRoom::default());
    let mut conns = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let conn = i as ConnId + 1;
        let agent = i >= USERS;
        room.handle(
            start,
            Input::Open {
                conn,
                identity: Identity {
                    user_id: u.clone(),
                    roles: vec![if agent { "agent" } else { "member" }.to_owned()],
                    member_role: Some(MemberRole::Member),
                    token_exp: u64::MAX / 2000,
                },
                options: ConnectOptions {
                    replay: false,
                    ..ConnectOptions::default()
                },
            },
        );
        conns.push(conn);
    }
    while room.poll_effect().is_some() {}
    let mut g = Gen {
        db: &c,
        room,
        rng: Rng(spec.seed | 1),
        now: start,
        step: spec.step_ms,
        last_prune: start,
        tenant: tenant.clone(),
        room_id: room_id.clone(),
        conns,
        recent: Vec::new(),
        reactions: Vec::new(),
        last_msg: 0,
        refused: 0,
        last_refusal: String::new(),
        runs: 0,
        next_run_at: RUN_EVERY,
        cmid: 0,
    };
    // Leave room for the two open runs at the end (about 6 events each).
    let body_events = spec.events.saturating_sub(12);
    let mut report = GenReport::default();
    c.execute_batch("BEGIN")?;
    let mut next_commit = TX_EVENTS;
    let (mut last_seq, mut idle_frames) = (0, 0u32);
    while g.room.committed_seq() < body_events {
        let seq = g.room.committed_seq();
        if seq == last_seq {
            idle_frames += 1;
            if idle_frames > STALL_FRAMES {
                return Err(GenError::Stalled(seq));
            }
        } else {
            (last_seq, idle_frames) = (seq, 0);
        }
        if seq >= next_commit {
            c.execute_batch("COMMIT; BEGIN")?;
            next_commit += TX_EVENTS;
        }
        if seq >= g.next_run_at {
            g.next_run_at += RUN_EVERY;
            g.agent_run(false)?;
        } else {
            match g.rng.below(100) {
                0..=79 => g.message()?,
                80..=84 => g.edit()?,
                85..=86 => g.delete()?,
                87..=93 => g.react()?,
                _ => g.read()?,
            }
        }
        if g.refused > 0 {
            return Err(GenError::Refused(g.last_refusal));
        }
    }
    // Two open agent runs (pending tool call, streaming answer), then plain messages up to
    // exactly `events`.
    if spec.events >= 12 {
        g.agent_run(true)?;
        g.agent_run(true)?;
        report.open_runs = 2;
        report.open_streams = 2;
    }
    while g.room.committed_seq() < spec.events {
        g.message()?;
    }
    if g.refused > 0 {
        return Err(GenError::Refused(g.last_refusal));
    }
    drop(g);
    c.execute_batch("COMMIT")?;
    let (t, r) = (spec.tenant.as_str(), spec.room.as_str());
    report.events = count(&c, "events", t, r)?;
    report.messages = count(&c, "messages", t, r)?;
    report.reactions = count(&c, "reactions", t, r)?;
    report.reads = count(&c, "read_positions", t, r)?;
    report.idempotency = count(&c, "idempotency", t, r)?;
    report.agent_events = u64::try_from(c.query_row(
        "SELECT COUNT(*) FROM events WHERE tenant_id = ?1 AND room_id = ?2 AND type IN ('agentRun', 'tool_call', 'tool_result', 'tool_error', 'approval_request', 'approval_decision')",
        params![t, r],
        |row| row.get::<_, i64>(0),
    )?)
    .unwrap_or(0);
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}
