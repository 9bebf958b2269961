//! Lookups on demand: what a request needs from storage that the engine does not hold since
//! wake-up, the [`Effect::Fetch`] / [`Input::Fetched`] round trip, and the per-requester queue
//! of requests waiting for one.
//!
//! Rules (the crate docs have the shell's side):
//! - A request is checked for missing state when it reaches the head of its requester's queue;
//!   if something is missing, fetches are emitted (one per distinct lookup in flight) and the
//!   request waits. Later frames of the same connection queue behind it, so one connection's
//!   frames are still handled, acked and sequenced in frame order; other requesters go on.
//! - Anything created or changed since wake-up is in memory: a message id or run above
//!   `wake_seq`, a key used since, a reaction or read changed since. Every change goes
//!   through a request that first made the state known, so a fetched row is only ever
//!   written into an empty slot, and in-memory state always wins over a result.
//! - A failed fetch answers the requests waiting for it with `internal_error` (retryable).

use super::*;

/// At most this many "known absent" entries are kept per kind; beyond, the set is cleared
/// (forgetting an absence only costs another lookup).
const ABSENT_CAP: usize = 4096;

/// Something the engine needs from storage before it can handle a request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lookup {
    /// A message's state (author, version, deleted, streaming): [`sql::FETCH_MESSAGE`].
    Message {
        /// Message id.
        id: u64,
    },
    /// Whether a user reacted to a message with an emoji: [`sql::FETCH_REACTION`].
    Reaction {
        /// Message id.
        message_id: u64,
        /// User.
        user_id: String,
        /// Emoji.
        emoji: String,
    },
    /// A user's read position: [`sql::FETCH_READ`].
    Read {
        /// User.
        user_id: String,
    },
    /// An idempotency key of the last 24 h: [`sql::FETCH_IDEMPOTENCY`].
    Idempotency {
        /// User.
        user_id: String,
        /// The key.
        client_message_id: String,
    },
    /// An agent run that is not open (open runs are loaded at wake-up): whether it exists,
    /// [`sql::FETCH_RUN`].
    Run {
        /// Agent.
        agent_id: String,
        /// Run id.
        run_id: String,
    },
}

/// A lookup could not be answered: storage failed, or its row had the wrong shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchFailed;

impl std::fmt::Display for FetchFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("storage lookup failed")
    }
}

impl std::error::Error for FetchFailed {}

/// The answer to a [`Lookup`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// The message, or `None` when no message has that id.
    Message(Option<MessageRow>),
    /// Whether the reaction exists.
    Reaction(bool),
    /// The read position, or `None` when the user has none.
    Read(Option<u64>),
    /// The key, or `None` when unused (or older than 24 h).
    Idempotency(Option<IdempotencyRow>),
    /// The run (fetched runs carry no tool calls or approvals), or `None` when it never
    /// started.
    Run(Option<RunRow>),
}

/// An agent run's state as stored in `agent_runs` and `agent_items`.
///
/// A run is *open* from its `started` event until it is terminal and has no pending tool call
/// and no pending approval; then nothing can change it any more (every agent frame on it is
/// refused), and the engine may forget its tool calls and approvals.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunRow {
    /// Agent.
    pub agent_id: String,
    /// Run id.
    pub run_id: String,
    /// Ended (completed, failed or cancelled).
    pub terminal: bool,
    /// Tool calls: (tool call id, still pending).
    pub tool_calls: Vec<(String, bool)>,
    /// Approval requests: (approval id, still pending).
    pub approvals: Vec<(String, bool)>,
}

impl RunRow {
    /// Group the rows of [`sql::LOAD_OPEN_RUNS`] (agent, run, terminal) and
    /// [`sql::LOAD_OPEN_RUN_ITEMS`] (agent, run, kind, item id, pending) into runs.
    pub fn assemble(
        runs: impl IntoIterator<Item = (String, String, bool)>,
        items: impl IntoIterator<Item = (String, String, String, String, bool)>,
    ) -> Vec<RunRow> {
        let mut out: BTreeMap<(String, String), RunRow> = runs
            .into_iter()
            .map(|(agent_id, run_id, terminal)| {
                (
                    (agent_id.clone(), run_id.clone()),
                    RunRow {
                        agent_id,
                        run_id,
                        terminal,
                        ..RunRow::default()
                    },
                )
            })
            .collect();
        for (agent, run, kind, item, pending) in items {
            if let Some(r) = out.get_mut(&(agent, run)) {
                if kind == sql::ITEM_APPROVAL {
                    r.approvals.push((item, pending));
                } else {
                    r.tool_calls.push((item, pending));
                }
            }
        }
        out.into_values().collect()
    }
}

impl Lookup {
    /// The query for this lookup (`?1` tenant, `?2` room); `now_ms` bounds the age of an
    /// idempotency key.
    pub fn statement(&self, tenant: &Arc<str>, room: &Arc<str>, now_ms: u64) -> Stmt {
        let mut params: Vec<sql::SqlValue> = vec![tenant.into(), room.into()];
        let sql = match self {
            Lookup::Message { id } => {
                params.push((*id).into());
                sql::FETCH_MESSAGE
            }
            Lookup::Reaction {
                message_id,
                user_id,
                emoji,
            } => {
                params.push((*message_id).into());
                params.push(user_id.as_str().into());
                params.push(emoji.as_str().into());
                sql::FETCH_REACTION
            }
            Lookup::Read { user_id } => {
                params.push(user_id.as_str().into());
                sql::FETCH_READ
            }
            Lookup::Idempotency {
                user_id,
                client_message_id,
            } => {
                params.push(user_id.as_str().into());
                params.push(client_message_id.as_str().into());
                params.push(now_ms.saturating_sub(IDEMPOTENCY_TTL_MS).into());
                sql::FETCH_IDEMPOTENCY
            }
            Lookup::Run { agent_id, run_id } => {
                params.push(agent_id.as_str().into());
                params.push(run_id.as_str().into());
                sql::FETCH_RUN
            }
        };
        Stmt { sql, params }
    }

    /// Column names of the statement's result, in order (for shells whose rows are keyed by
    /// name, e.g. D1).
    pub fn columns(&self) -> &'static [&'static str] {
        match self {
            Lookup::Message { .. } => &["user_id", "version", "deleted", "streaming"],
            Lookup::Reaction { .. } => &["present"],
            Lookup::Read { .. } => &["message_id"],
            Lookup::Idempotency { .. } => &["seq", "message_id", "created_at"],
            Lookup::Run { .. } => &["terminal"],
        }
    }

    /// Turn the statement's first row (its columns in [`Lookup::columns`] order), or `None`
    /// when it returned no row, into the answer; [`FetchFailed`] for a row of the wrong shape.
    pub fn found(&self, row: Option<&[sql::SqlValue]>) -> Result<Found, FetchFailed> {
        use sql::SqlValue as V;
        let int = |v: Option<&V>| match v {
            Some(V::Int(i)) => u64::try_from(*i).map_err(|_| FetchFailed),
            _ => Err(FetchFailed),
        };
        let Some(row) = row else {
            return Ok(match self {
                Lookup::Message { .. } => Found::Message(None),
                Lookup::Reaction { .. } => Found::Reaction(false),
                Lookup::Read { .. } => Found::Read(None),
                Lookup::Idempotency { .. } => Found::Idempotency(None),
                Lookup::Run { .. } => Found::Run(None),
            });
        };
        Ok(match self {
            Lookup::Message { id } => {
                let Some(V::Text(user)) = row.first() else {
                    return Err(FetchFailed);
                };
                Found::Message(Some(MessageRow {
                    id: *id,
                    user_id: user.to_string(),
                    version: u32::try_from(int(row.get(1))?).map_err(|_| FetchFailed)?,
                    deleted: int(row.get(2))? != 0,
                    streaming: int(row.get(3))? != 0,
                }))
            }
            Lookup::Reaction { .. } => Found::Reaction(true),
            Lookup::Read { .. } => Found::Read(Some(int(row.first())?)),
            Lookup::Idempotency {
                user_id,
                client_message_id,
            } => Found::Idempotency(Some(IdempotencyRow {
                user_id: user_id.clone(),
                client_message_id: client_message_id.clone(),
                seq: int(row.first())?,
                message_id: match row.get(1) {
                    Some(V::Null) | None => None,
                    v => Some(int(v)?),
                },
                created_ms: int(row.get(2))?,
            })),
            Lookup::Run { agent_id, run_id } => Found::Run(Some(RunRow {
                agent_id: agent_id.clone(),
                run_id: run_id.clone(),
                terminal: int(row.first())? != 0,
                tool_calls: Vec::new(),
                approvals: Vec::new(),
            })),
        })
    }
}

/// A request waiting in its requester's queue.
pub(super) enum Parked {
    /// A decoded, rate-limited WebSocket frame (validated on receipt).
    Frame {
        frame: ClientFrame,
        /// The frame's raw `userId` (only with the `trust_frame_user_id` fault).
        spoofed: Option<String>,
    },
    /// `POST /messages`.
    Post {
        identity: Identity,
        frame: SendMessageFrame,
    },
}

impl Parked {
    fn reference(&self) -> Option<&str> {
        match self {
            Parked::Frame { frame, .. } => frame.reference(),
            Parked::Post { frame, .. } => frame.reference.as_deref(),
        }
    }
}

impl Room {
    /// Number of fetches in flight (emitted, not answered).
    pub fn fetches_in_flight(&self) -> usize {
        self.fetches.len()
    }

    /// Whether frames of this connection wait for a fetch (a frame it sends now runs after
    /// them).
    pub fn is_waiting(&self, conn: ConnId) -> bool {
        self.parked.contains_key(&Requester::Conn(conn))
    }

    /// Number of requests waiting for a fetch (all requesters).
    pub fn parked_requests(&self) -> usize {
        self.parked.values().map(VecDeque::len).sum()
    }

    /// Bound of one requester's queue: the rate-limit burst (a connection cannot have more
    /// frames accepted in a burst anyway).
    fn park_cap(&self) -> usize {
        self.cfg.rate_burst.max(1) as usize
    }

    /// Queue a request behind its requester's waiting ones, or run it when nothing is waiting
    /// and everything it needs is in memory, or emit the fetches it needs and park it.
    pub(super) fn submit(&mut self, now_ms: u64, who: Requester, item: Parked) {
        if let Some(q) = self.parked.get(&who) {
            if q.len() >= self.park_cap() {
                // Not `rate_limited`: the frame passed the token bucket; storage is slow.
                let reference = item.reference().map(str::to_owned);
                let mut e = err(
                    ErrorCode::Unavailable,
                    "too many requests waiting for storage; retry later",
                    reference.as_deref(),
                );
                let per_s = u64::from(self.cfg.rate_per_second.max(1));
                e.retry_after_ms = Some((1000 / per_s).max(1));
                self.answer_error(who, e);
                return;
            }
            if let Some(q) = self.parked.get_mut(&who) {
                q.push_back(item);
            }
            return;
        }
        self.parked.insert(who, VecDeque::from([item]));
        self.drain_parked(now_ms, who, None);
    }

    /// Answer a request with an error (WebSocket error frame or POST answer).
    fn answer_error(&mut self, who: Requester, e: ErrorFrame) {
        match who {
            Requester::Conn(c) => self.send_error(c, e),
            Requester::Post(request) => self.effects.push_back(Effect::PostDone {
                request,
                result: Err(e),
            }),
        }
    }

    /// Run the requester's queued requests in order until one waits for a fetch. A request
    /// that needs the lookup `failed` (whose fetch just failed) is answered `internal_error`.
    fn drain_parked(&mut self, now_ms: u64, who: Requester, failed: Option<&Lookup>) {
        loop {
            if let Requester::Conn(c) = who {
                if !self.conns.contains_key(&c) {
                    self.parked.remove(&who);
                    return;
                }
            }
            let Some(item) = self.parked.get_mut(&who).and_then(VecDeque::pop_front) else {
                self.parked.remove(&who);
                return;
            };
            let missing = self.missing(who, &item);
            if failed.is_some_and(|f| missing.contains(f)) {
                let e = err(
                    ErrorCode::InternalError,
                    "storage lookup failed; retry",
                    item.reference(),
                );
                self.answer_error(who, e);
                continue;
            }
            if !missing.is_empty() {
                for l in missing {
                    self.request_fetch(now_ms, l);
                }
                if let Some(q) = self.parked.get_mut(&who) {
                    q.push_front(item);
                }
                return;
            }
            match item {
                Parked::Frame { frame, spoofed } => {
                    if let Requester::Conn(c) = who {
                        self.run_frame(now_ms, c, frame, spoofed);
                    }
                }
                Parked::Post { identity, frame } => {
                    if let Requester::Post(request) = who {
                        self.run_post(now_ms, request, identity, frame);
                    }
                }
            }
        }
    }

    fn run_post(&mut self, now_ms: u64, request: u64, identity: Identity, frame: SendMessageFrame) {
        let who = Requester::Post(request);
        if self.duplicate(
            now_ms,
            who,
            &identity.user_id,
            frame.client_message_id.as_deref(),
            None,
        ) {
            return;
        }
        let t = self.event_ms(now_ms);
        let r = self.on_message(t, &identity, None, frame);
        self.finish(who, r);
    }

    /// Emit a fetch for `lookup` unless one is in flight.
    fn request_fetch(&mut self, now_ms: u64, lookup: Lookup) {
        if self.fetching.contains_key(&lookup) {
            return;
        }
        let fetch = self.next_fetch;
        self.next_fetch += 1;
        let statement = lookup.statement(&self.cfg.tenant, &self.cfg.room_id, now_ms);
        self.fetches.insert(fetch, lookup.clone());
        self.fetching.insert(lookup.clone(), fetch);
        self.effects.push_back(Effect::Fetch {
            fetch,
            lookup,
            statement,
        });
    }

    /// An [`Input::Fetched`]: fill the cache (never over newer in-memory state), then run what
    /// waited, requester by requester.
    pub(super) fn fetched(&mut self, now_ms: u64, fetch: u64, result: Result<Found, FetchFailed>) {
        let Some(lookup) = self.fetches.remove(&fetch) else {
            return;
        };
        self.fetching.remove(&lookup);
        let ok = match result {
            Ok(found) => self.fill(now_ms, &lookup, found),
            Err(FetchFailed) => false,
        };
        let failed = (!ok).then_some(&lookup);
        let waiting: Vec<Requester> = self.parked.keys().copied().collect();
        for who in waiting {
            self.drain_parked(now_ms, who, failed);
        }
    }

    /// Store a result where memory knows nothing yet; false for an answer of the wrong kind.
    fn fill(&mut self, now_ms: u64, lookup: &Lookup, found: Found) -> bool {
        match (lookup, found) {
            (Lookup::Message { id }, Found::Message(row)) => {
                if self.messages.contains_key(id) || self.msg_absent.contains(id) {
                    return true;
                }
                match row {
                    Some(r) if r.id == *id => {
                        self.messages.insert(
                            *id,
                            Msg {
                                author: r.user_id,
                                version: r.version,
                                deleted: r.deleted,
                                streaming: r.streaming,
                            },
                        );
                    }
                    Some(_) => return false,
                    None => {
                        cap(&mut self.msg_absent);
                        self.msg_absent.insert(*id);
                    }
                }
            }
            (
                Lookup::Reaction {
                    message_id,
                    user_id,
                    emoji,
                },
                Found::Reaction(present),
            ) => {
                self.reactions
                    .entry((*message_id, user_id.clone(), emoji.clone()))
                    .or_insert(present);
            }
            (Lookup::Read { user_id }, Found::Read(pos)) => {
                self.reads.entry(user_id.clone()).or_insert(pos);
            }
            (
                Lookup::Idempotency {
                    user_id,
                    client_message_id,
                },
                Found::Idempotency(row),
            ) => {
                let key = (user_id.clone(), client_message_id.clone());
                if self.idem.contains_key(&key) || self.idem_absent.contains(&key) {
                    return true;
                }
                match row {
                    Some(r) if r.created_ms.saturating_add(IDEMPOTENCY_TTL_MS) > now_ms => {
                        // Out of commit-time order in `idem_order`: pruning stops at the first
                        // unexpired key, and `duplicate` checks the age anyway.
                        self.idem_order.push_back((
                            r.created_ms,
                            key.0.clone(),
                            key.1.clone(),
                            r.seq,
                        ));
                        self.idem.insert(
                            key,
                            IdemEntry {
                                seq: r.seq,
                                id: r.message_id,
                                created_ms: r.created_ms,
                            },
                        );
                    }
                    _ => self.note_idem_absent(key),
                }
            }
            (Lookup::Run { agent_id, run_id }, Found::Run(row)) => {
                let key = (agent_id.clone(), run_id.clone());
                if self.runs.contains_key(&key) || self.runs_absent.contains(&key) {
                    return true;
                }
                match row {
                    Some(r) => self.load_run(r),
                    None => {
                        cap(&mut self.runs_absent);
                        self.runs_absent.insert(key);
                    }
                }
            }
            _ => return false,
        }
        true
    }

    /// Remember that an idempotency key is unused (or expired).
    pub(super) fn note_idem_absent(&mut self, key: (String, String)) {
        cap(&mut self.idem_absent);
        self.idem_absent.insert(key);
    }

    /// Whether storage may hold state the engine does not know (nothing was stored before
    /// wake-up in an empty room).
    fn storage_may_know(&self) -> bool {
        self.wake_seq > 0
    }

    fn need_message(&self, id: u64, out: &mut Vec<Lookup>) {
        if id == 0
            || id > self.wake_seq
            || self.messages.contains_key(&id)
            || self.msg_absent.contains(&id)
        {
            return;
        }
        push_unique(out, Lookup::Message { id });
    }

    fn need_idem(&self, user: &str, cmid: &str, out: &mut Vec<Lookup>) {
        if self.cfg.faults.no_dedup || !self.storage_may_know() {
            return;
        }
        let key = (user.to_owned(), cmid.to_owned());
        if self.idem.contains_key(&key) || self.idem_absent.contains(&key) {
            return;
        }
        push_unique(
            out,
            Lookup::Idempotency {
                user_id: key.0,
                client_message_id: key.1,
            },
        );
    }

    /// Everything the request needs from storage that memory does not hold (empty: it can
    /// run). Mirrors what the handlers read.
    fn missing(&self, who: Requester, item: &Parked) -> Vec<Lookup> {
        let mut out = Vec::new();
        match item {
            Parked::Post { identity, frame } => {
                if let Some(c) = frame.client_message_id.as_deref() {
                    self.need_idem(&identity.user_id, c, &mut out);
                }
                if let Some(p) = frame.parent_id {
                    self.need_message(p, &mut out);
                }
            }
            Parked::Frame { frame, .. } => {
                let Requester::Conn(conn) = who else {
                    return out;
                };
                let Some(user) = self.conns.get(&conn).map(|c| c.identity.user_id.as_str()) else {
                    return out;
                };
                if let Some(c) = frame_cmid(frame) {
                    self.need_idem(user, c, &mut out);
                }
                match frame {
                    ClientFrame::Message(f) => {
                        if let Some(p) = f.parent_id {
                            self.need_message(p, &mut out);
                        }
                    }
                    ClientFrame::Edit(f) => self.need_message(f.message_id, &mut out),
                    ClientFrame::Delete(f) => self.need_message(f.message_id, &mut out),
                    ClientFrame::Reaction(f) => {
                        self.need_message(f.message_id, &mut out);
                        let key = (f.message_id, user.to_owned(), f.emoji.clone());
                        if f.message_id <= self.wake_seq && !self.reactions.contains_key(&key) {
                            push_unique(
                                &mut out,
                                Lookup::Reaction {
                                    message_id: key.0,
                                    user_id: key.1,
                                    emoji: key.2,
                                },
                            );
                        }
                    }
                    ClientFrame::Read(f) => {
                        self.need_message(f.message_id, &mut out);
                        if self.storage_may_know() && !self.reads.contains_key(user) {
                            push_unique(
                                &mut out,
                                Lookup::Read {
                                    user_id: user.to_owned(),
                                },
                            );
                        }
                    }
                    ClientFrame::Stream(f) => {
                        if f.op == StreamOp::Start {
                            if let Some(p) = f.parent_id {
                                self.need_message(p, &mut out);
                            }
                        } else if let Some(m) = f.message_id {
                            self.need_message(m, &mut out);
                        }
                    }
                    ClientFrame::AgentRun(f) => {
                        let key = (user.to_owned(), f.run_id.clone());
                        if self.storage_may_know()
                            && !self.runs.contains_key(&key)
                            && !self.runs_absent.contains(&key)
                        {
                            push_unique(
                                &mut out,
                                Lookup::Run {
                                    agent_id: key.0,
                                    run_id: key.1,
                                },
                            );
                        }
                    }
                    // Tool calls and approval requests need an active run, tool results a
                    // pending call, decisions a pending approval: all of these belong to open
                    // runs, which are in memory. A run not in memory is refused alike whether
                    // it is closed or absent.
                    _ => {}
                }
            }
        }
        out
    }
}

fn push_unique(out: &mut Vec<Lookup>, l: Lookup) {
    if !out.contains(&l) {
        out.push(l);
    }
}

fn cap<T>(set: &mut HashSet<T>) {
    if set.len() >= ABSENT_CAP {
        set.clear();
    }
}
