//! Engine unit tests: every invariant and every frame type, driven without I/O.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use fluxy_protocol::common::{MemberRole, RoomType};
use fluxy_protocol::events::TimelineEvent;
use fluxy_protocol::jwt::{sign, Claims};
use fluxy_protocol::server::{AckFrame, ErrorFrame};
use fluxy_protocol::{CloseCode, ErrorCode, ServerFrame};
use fluxy_room::sql::{self, Stmt};
use fluxy_room::{
    ConnId, ConnectOptions, Effect, Faults, FetchFailed, Found, Identity, Input, LoadedRoom,
    Lookup, Room, RoomConfig,
};
use serde_json::json;

const SECRET: &[u8] = b"room-secret";
const T0: u64 = 1_800_000_000_000;

struct H {
    room: Room,
    now: u64,
    open: BTreeSet<ConnId>,
    got: BTreeMap<ConnId, Vec<ServerFrame>>,
    raw: BTreeMap<ConnId, Vec<String>>,
    closes: Vec<(ConnId, CloseCode)>,
    batches: VecDeque<(u64, Vec<Stmt>)>,
    committed: Vec<Vec<Stmt>>,
    auto_commit: bool,
    posts: Vec<(u64, Result<fluxy_room::PostOutcome, ErrorFrame>)>,
    resets: usize,
    identities: Vec<(ConnId, Identity)>,
    /// Fetches emitted and not answered yet (only when `auto_fetch` is off).
    fetches: VecDeque<(u64, Lookup)>,
    /// Answer every fetch at once from `store` (absent when not there).
    auto_fetch: bool,
    /// What storage holds, for `auto_fetch`.
    store: BTreeMap<Lookup, Found>,
    /// Every lookup emitted, in order.
    looked_up: Vec<Lookup>,
}

fn cfg(faults: Faults) -> RoomConfig {
    RoomConfig {
        tenant: "t1".into(),
        room_id: "r1".into(),
        jwt_secret: SECRET.to_vec(),
        idle_timeout_ms: 10_000,
        rate_burst: 1000,
        rate_per_second: 1000,
        resume_window: 100,
        faults,
    }
}

fn ident(user: &str, roles: &[&str]) -> Identity {
    Identity {
        user_id: user.into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        member_role: Some(MemberRole::Member),
        token_exp: T0 / 1000 + 3600,
    }
}

impl H {
    fn new() -> H {
        H::with(cfg(Faults::NONE), LoadedRoom::default())
    }
    fn with(c: RoomConfig, l: LoadedRoom) -> H {
        H {
            room: Room::new(c, l),
            now: T0,
            open: BTreeSet::new(),
            got: BTreeMap::new(),
            raw: BTreeMap::new(),
            closes: Vec::new(),
            batches: VecDeque::new(),
            committed: Vec::new(),
            auto_commit: true,
            posts: Vec::new(),
            resets: 0,
            identities: Vec::new(),
            fetches: VecDeque::new(),
            auto_fetch: true,
            store: BTreeMap::new(),
            looked_up: Vec::new(),
        }
    }
    fn input(&mut self, i: Input) {
        self.room.handle(self.now, i);
        self.pump();
    }
    fn pump(&mut self) {
        loop {
            while let Some(e) = self.room.poll_effect() {
                match e {
                    Effect::Send { conn, frame } => self.deliver(conn, &frame),
                    Effect::Broadcast { frame, except, .. } => {
                        let to: Vec<ConnId> = self.open.iter().copied().collect();
                        for c in to {
                            if Some(c) != except {
                                self.deliver(c, &frame);
                            }
                        }
                    }
                    Effect::Close { conn, code } => {
                        self.open.remove(&conn);
                        self.closes.push((conn, code));
                    }
                    Effect::Persist { batch, statements } => {
                        self.batches.push_back((batch, statements))
                    }
                    Effect::PostDone { request, result } => self.posts.push((request, result)),
                    Effect::Reset => self.resets += 1,
                    Effect::IdentityChanged { conn, identity } => {
                        self.identities.push((conn, identity))
                    }
                    Effect::Fetch { fetch, lookup, .. } => {
                        self.looked_up.push(lookup.clone());
                        self.fetches.push_back((fetch, lookup));
                    }
                }
            }
            if self.auto_fetch {
                if let Some((fetch, lookup)) = self.fetches.pop_front() {
                    let found = self.stored(&lookup);
                    self.room.handle(
                        self.now,
                        Input::Fetched {
                            fetch,
                            result: Ok(found),
                        },
                    );
                    continue;
                }
            }
            if !self.auto_commit {
                return;
            }
            let Some((b, s)) = self.batches.pop_front() else {
                return;
            };
            self.committed.push(s);
            self.room.handle(self.now, Input::Committed { batch: b });
        }
    }
    /// What `store` says for a lookup (absent when it holds nothing).
    fn stored(&self, lookup: &Lookup) -> Found {
        self.store
            .get(lookup)
            .cloned()
            .unwrap_or_else(|| lookup.found(None).expect("absent answer"))
    }
    /// Answer the oldest fetch from `store`, or with a failure.
    fn answer_fetch(&mut self, ok: bool) -> Lookup {
        let (fetch, lookup) = self.fetches.pop_front().expect("a fetch in flight");
        let result = if ok {
            Ok(self.stored(&lookup))
        } else {
            Err(FetchFailed)
        };
        self.room.handle(self.now, Input::Fetched { fetch, result });
        self.pump();
        lookup
    }
    fn commit_one(&mut self) {
        let (b, s) = self.batches.pop_front().expect("a batch in flight");
        self.committed.push(s);
        self.room.handle(self.now, Input::Committed { batch: b });
        self.pump();
    }
    fn deliver(&mut self, conn: ConnId, frame: &str) {
        let f = ServerFrame::decode(frame).expect("server frames decode");
        self.got.entry(conn).or_default().push(f);
        self.raw.entry(conn).or_default().push(frame.to_owned());
    }
    fn connect(&mut self, conn: ConnId, user: &str, roles: &[&str]) {
        self.connect_with(conn, ident(user, roles), ConnectOptions::default());
    }
    fn connect_with(&mut self, conn: ConnId, id: Identity, o: ConnectOptions) {
        self.open.insert(conn);
        self.input(Input::Open {
            conn,
            identity: id,
            options: o,
        });
    }
    fn send(&mut self, conn: ConnId, v: serde_json::Value) {
        self.input(Input::Text {
            conn,
            text: v.to_string(),
        });
    }
    fn send_text(&mut self, conn: ConnId, text: &str) {
        self.input(Input::Text {
            conn,
            text: text.to_owned(),
        });
    }
    fn take(&mut self, conn: ConnId) -> Vec<ServerFrame> {
        self.raw.remove(&conn);
        self.got.remove(&conn).unwrap_or_default()
    }
    fn timeline(&self, conn: ConnId) -> Vec<TimelineEvent> {
        self.got
            .get(&conn)
            .map(|v| v.iter().filter_map(|f| f.clone().into_timeline()).collect())
            .unwrap_or_default()
    }
    fn acks(&self, conn: ConnId) -> Vec<AckFrame> {
        self.got
            .get(&conn)
            .map(|v| {
                v.iter()
                    .filter_map(|f| match f {
                        ServerFrame::Ack(a) => Some(a.clone()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
    fn errors(&self, conn: ConnId) -> Vec<ErrorFrame> {
        self.got
            .get(&conn)
            .map(|v| {
                v.iter()
                    .filter_map(|f| match f {
                        ServerFrame::Error(e) => Some(e.clone()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
    fn last_error(&self, conn: ConnId) -> ErrorCode {
        self.errors(conn).last().expect("an error frame").code
    }
    fn msg(&mut self, conn: ConnId, content: &str) -> u64 {
        self.send(conn, json!({"type":"message","content":content}));
        self.acks(conn).last().and_then(|a| a.seq).expect("acked")
    }
}

fn seqs(events: &[TimelineEvent]) -> Vec<u64> {
    events.iter().map(TimelineEvent::seq).collect()
}

#[test]
fn i1_seq_is_gap_free_and_every_connection_sees_it_in_order() {
    let mut h = H::new();
    h.auto_commit = false;
    for c in 1..=3 {
        h.connect(c, &format!("u{c}"), &["member"]);
    }
    for i in 0..60u64 {
        let c = i % 3 + 1;
        h.send(c, json!({"type":"message","content":format!("m{i}")}));
        if i % 7 == 0 {
            while !h.batches.is_empty() {
                h.commit_one();
            }
        }
    }
    while !h.batches.is_empty() {
        h.commit_one();
    }
    let want: Vec<u64> = (1..=60).collect();
    for c in 1..=3 {
        assert_eq!(seqs(&h.timeline(c)), want, "connection {c}");
    }
    assert_eq!(h.room.committed_seq(), 60);
}

#[test]
fn i2_frames_of_one_connection_are_sequenced_in_send_order() {
    let mut h = H::new();
    h.auto_commit = false;
    h.connect(1, "alice", &["member"]);
    for i in 0..20 {
        h.send(
            1,
            json!({"type":"message","content":format!("a{i}"),"ref":format!("r{i}")}),
        );
    }
    while !h.batches.is_empty() {
        h.commit_one();
    }
    let acks = h.acks(1);
    assert_eq!(acks.len(), 20);
    for (i, a) in acks.iter().enumerate() {
        assert_eq!(a.reference.as_deref(), Some(format!("r{i}").as_str()));
        assert_eq!(a.seq, Some(i as u64 + 1));
    }
    for (i, e) in h.timeline(1).iter().enumerate() {
        match e {
            TimelineEvent::Message(m) => assert_eq!(m.content, format!("a{i}")),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn i3_ack_and_broadcast_only_after_commit_and_ack_before_own_copy() {
    let mut h = H::new();
    h.auto_commit = false;
    h.connect(1, "alice", &["member"]);
    h.connect(2, "bob", &["member"]);
    h.take(1);
    h.take(2);
    h.send(1, json!({"type":"message","content":"hello"}));
    assert!(h.acks(1).is_empty(), "no ack before the commit");
    assert!(h.timeline(2).is_empty(), "no broadcast before the commit");
    assert_eq!(h.batches.len(), 1);
    assert_eq!(h.batches[0].1[0].sql, sql::INSERT_EVENT);
    h.commit_one();
    let frames = h.take(1);
    assert!(
        matches!(frames[0], ServerFrame::Ack(_)),
        "ack first: {frames:?}"
    );
    assert!(matches!(frames[1], ServerFrame::Message(_)));
    assert_eq!(h.timeline(2).len(), 1);
}

#[test]
fn group_commit_batches_events_that_arrive_during_a_write() {
    let mut h = H::new();
    h.auto_commit = false;
    h.connect(1, "alice", &["member"]);
    h.send(1, json!({"type":"message","content":"first"}));
    for i in 0..5 {
        h.send(1, json!({"type":"message","content":format!("next{i}")}));
    }
    assert_eq!(h.batches.len(), 1, "one write in flight at a time");
    h.commit_one();
    assert_eq!(
        h.batches.len(),
        1,
        "the five queued events go in the next write"
    );
    let events = h.batches[0]
        .1
        .iter()
        .filter(|s| s.sql == sql::INSERT_EVENT)
        .count();
    assert_eq!(events, 5);
    h.commit_one();
    assert_eq!(h.acks(1).len(), 6);
}

#[test]
fn failed_commit_closes_everything_with_1011_and_asks_for_reset() {
    let mut h = H::new();
    h.auto_commit = false;
    h.connect(1, "alice", &["member"]);
    h.connect(2, "bob", &["member"]);
    h.send(1, json!({"type":"message","content":"lost"}));
    let (b, _) = h.batches.pop_front().expect("batch");
    h.input(Input::CommitFailed { batch: b });
    assert_eq!(h.resets, 1);
    assert!(h.closes.contains(&(1, CloseCode::InternalError)));
    assert!(h.closes.contains(&(2, CloseCode::InternalError)));
    assert!(h.acks(1).is_empty());
    assert!(h.room.is_failed());
}

#[test]
fn i4_snapshot_replay_and_live_carry_identical_json() {
    let mut h = H::new();
    h.connect(1, "alice", &["member"]);
    for i in 0..5 {
        h.msg(1, &format!("m{i}"));
    }
    let live: Vec<String> = h.raw[&1]
        .iter()
        .filter(|r| r.starts_with("{\"type\":\"message\""))
        .cloned()
        .collect();
    assert_eq!(live.len(), 5);
    h.connect(2, "bob", &["member"]);
    let snap = match &h.got[&2][1] {
        ServerFrame::History(hf) => hf.clone(),
        other => panic!("expected history, got {other:?}"),
    };
    assert_eq!(seqs(&snap.events), vec![1, 2, 3, 4, 5]);
    assert!(!snap.has_more);
    for (e, l) in snap.events.iter().zip(&live) {
        assert_eq!(&e.encode(), l);
    }
    h.send(2, json!({"type":"resume","lastSeq":2,"ref":"x"}));
    let r = match h.got[&2].last() {
        Some(ServerFrame::Replay(r)) => r.clone(),
        other => panic!("expected replay, got {other:?}"),
    };
    assert_eq!(seqs(&r.events), vec![3, 4, 5]);
    assert_eq!(r.reference.as_deref(), Some("x"));
    for (e, l) in r.events.iter().zip(&live[2..]) {
        assert_eq!(&e.encode(), l);
    }
    // The stored body is the same text too.
    let stored = h
        .committed
        .iter()
        .flatten()
        .filter(|s| s.sql == sql::INSERT_EVENT)
        .map(|s| match &s.params[6] {
            sql::SqlValue::Text(t) => t.to_string(),
            other => panic!("{other:?}"),
        })
        .collect::<Vec<_>>();
    assert_eq!(stored, live);
}

#[test]
fn i5_duplicate_client_message_id_returns_original_ack_and_broadcasts_nothing() {
    let mut h = H::new();
    h.auto_commit = false;
    h.connect(1, "alice", &["member"]);
    h.connect(2, "bob", &["member"]);
    h.send(
        1,
        json!({"type":"message","content":"once","clientMessageId":"cmid-0001"}),
    );
    // Resend while the first is still in flight, then after it commits.
    h.send(
        1,
        json!({"type":"message","content":"other","clientMessageId":"cmid-0001","ref":"again"}),
    );
    h.commit_one();
    h.send(
        1,
        json!({"type":"message","content":"third","clientMessageId":"cmid-0001"}),
    );
    assert!(h.batches.is_empty(), "nothing new to store");
    let acks = h.acks(1);
    assert_eq!(acks.len(), 3);
    assert!(!acks[0].duplicate);
    for a in &acks[1..] {
        assert!(a.duplicate);
        assert_eq!(a.seq, acks[0].seq);
        assert_eq!(a.id, acks[0].id);
        assert_eq!(a.created_at, acks[0].created_at);
    }
    assert_eq!(acks[1].reference.as_deref(), Some("again"));
    assert_eq!(h.timeline(2).len(), 1);
    // Another user with the same key is independent (FX-ACK-6).
    h.send(
        2,
        json!({"type":"message","content":"bob's","clientMessageId":"cmid-0001"}),
    );
    h.commit_one();
    assert!(!h.acks(2)[0].duplicate);
}

#[test]
fn duplicates_survive_a_reload_from_storage() {
    let loaded = LoadedRoom {
        current_seq: 1,
        idempotency: vec![fluxy_room::IdempotencyRow {
            user_id: "alice".into(),
            client_message_id: "cmid-0001".into(),
            seq: 1,
            message_id: Some(1),
            created_ms: T0,
        }],
        ..LoadedRoom::default()
    };
    let mut h = H::with(cfg(Faults::NONE), loaded);
    h.connect(1, "alice", &["member"]);
    h.send(
        1,
        json!({"type":"message","content":"x","clientMessageId":"cmid-0001"}),
    );
    let a = &h.acks(1)[0];
    assert!(a.duplicate);
    assert_eq!(a.seq, Some(1));
}

#[test]
fn i6_identity_comes_from_the_token_not_the_frame() {
    let mut h = H::new();
    h.connect(1, "alice", &["member"]);
    h.send(
        1,
        json!({"type":"message","content":"hi","userId":"mallory","senderId":"mallory"}),
    );
    match &h.timeline(1)[0] {
        TimelineEvent::Message(m) => {
            assert_eq!(m.user_id, "alice");
            assert_eq!(m.sender_id, "alice");
        }
        other => panic!("{other:?}"),
    }
    // With the fault, the frame's userId wins (the conformance suite must catch this).
    let mut f = H::with(
        cfg(Faults::from_names(&["trust-frame-user-id"]).unwrap()),
        LoadedRoom::default(),
    );
    f.connect(1, "alice", &["member"]);
    f.send(
        1,
        json!({"type":"message","content":"hi","userId":"mallory"}),
    );
    assert_eq!(f.timeline(1)[0].actor(), "mallory");
}

#[test]
fn i7_statements_are_scoped_by_tenant_and_room() {
    let mut h = H::new();
    h.connect(1, "alice", &["member"]);
    h.msg(1, "scoped");
    for s in h.committed.iter().flatten() {
        assert_eq!(s.params[0], sql::SqlValue::Text("t1".into()), "{}", s.sql);
        assert_eq!(s.params[1], sql::SqlValue::Text("r1".into()), "{}", s.sql);
    }
}

#[test]
fn connect_sequence_and_presence_without_ghosts() {
    let mut h = H::new();
    h.connect(1, "alice", &["member"]);
    let f = h.take(1);
    let types: Vec<&str> = f.iter().map(ServerFrame::type_name).collect();
    assert_eq!(
        types,
        ["welcome", "history", "subscription_succeeded", "presence"]
    );
    h.connect(2, "bob", &["member"]);
    let types: Vec<&str> = h.take(1).iter().map(ServerFrame::type_name).collect();
    assert_eq!(types, ["member_joined", "presence"]);
    h.connect(3, "bob", &["member"]);
    let types: Vec<&str> = h.take(1).iter().map(ServerFrame::type_name).collect();
    assert_eq!(
        types,
        ["presence"],
        "no member_joined for a second connection"
    );
    h.open.remove(&3);
    h.input(Input::Closed { conn: 3 });
    h.open.remove(&2);
    h.input(Input::Closed { conn: 2 });
    let f = h.take(1);
    match f.last() {
        Some(ServerFrame::Presence(p)) => {
            assert_eq!(p.users, vec!["alice".to_string()]);
            assert_eq!(p.online, 1);
        }
        other => panic!("{other:?}"),
    }
    assert!(f.iter().any(|x| x.type_name() == "member_left"));
}

#[test]
fn replay_off_and_last_seq_at_connect() {
    let mut h = H::new();
    h.connect(1, "alice", &["member"]);
    for i in 0..3 {
        h.msg(1, &format!("m{i}"));
    }
    let o = ConnectOptions {
        replay: false,
        ..ConnectOptions::default()
    };
    h.connect_with(2, ident("bob", &["member"]), o);
    assert_eq!(h.got[&2][1].type_name(), "subscription_succeeded");
    let o = ConnectOptions {
        last_seq: Some(1),
        ..ConnectOptions::default()
    };
    h.connect_with(3, ident("carol", &["member"]), o);
    match &h.got[&3][1] {
        ServerFrame::Replay(r) => assert_eq!(seqs(&r.events), vec![2, 3]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn resume_resync_rules() {
    let mut h = H::new();
    h.connect(1, "alice", &["member"]);
    for i in 0..150 {
        h.msg(1, &format!("m{i}"));
    }
    h.send(1, json!({"type":"resume","lastSeq":151}));
    assert_eq!(h.last_error(1), ErrorCode::ResyncRequired);
    h.send(1, json!({"type":"resume","lastSeq":10}));
    assert_eq!(
        h.last_error(1),
        ErrorCode::ResyncRequired,
        "older than the window"
    );
    h.send(1, json!({"type":"resume","lastSeq":60}));
    match h.got[&1].last() {
        Some(ServerFrame::Replay(r)) => {
            assert_eq!(seqs(&r.events), (61..=150).collect::<Vec<_>>());
            assert!(!r.has_more);
            assert_eq!(r.current_seq, 150);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn edit_rules() {
    let mut h = H::new();
    h.connect(1, "alice", &["member"]);
    h.connect(2, "bob", &["member"]);
    let id = h.msg(1, "v1");
    h.send(2, json!({"type":"edit","messageId":id,"content":"hijack"}));
    assert_eq!(h.last_error(2), ErrorCode::Forbidden);
    h.send(
        1,
        json!({"type":"edit","messageId":id,"content":"v2","expectedVersion":5}),
    );
    assert_eq!(h.last_error(1), ErrorCode::Conflict);
    h.send(
        1,
        json!({"type":"edit","messageId":999,"content":"x","ref":"e"}),
    );
    let e = h.errors(1).last().cloned().unwrap();
    assert_eq!(
        (e.code, e.reference.as_deref()),
        (ErrorCode::NotFound, Some("e"))
    );
    h.send(
        1,
        json!({"type":"edit","messageId":id,"content":"  v2  ","expectedVersion":1}),
    );
    match h.timeline(2).last() {
        Some(TimelineEvent::Edit(e)) => {
            assert_eq!((e.version, e.content.as_str(), e.id), (2, "v2", id));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.acks(1).last().unwrap().id, Some(id));
}

#[test]
fn delete_rules_and_conflicts_after_delete() {
    let mut h = H::new();
    h.connect(1, "alice", &["member"]);
    h.connect(2, "bob", &["member"]);
    let mut m = ident("mod", &["member"]);
    m.member_role = Some(MemberRole::Moderator);
    h.connect_with(3, m, ConnectOptions::default());
    let a = h.msg(1, "one");
    let b = h.msg(1, "two");
    h.send(2, json!({"type":"delete","messageId":a}));
    assert_eq!(h.last_error(2), ErrorCode::Forbidden);
    h.send(1, json!({"type":"delete","messageId":a}));
    assert!(
        matches!(h.timeline(2).last(), Some(TimelineEvent::Delete(d)) if d.id == a && d.version == 2)
    );
    h.send(3, json!({"type":"delete","messageId":b}));
    assert!(matches!(h.timeline(2).last(), Some(TimelineEvent::Delete(d)) if d.id == b));
    h.send(1, json!({"type":"delete","messageId":a}));
    assert_eq!(h.last_error(1), ErrorCode::Conflict);
    h.send(1, json!({"type":"edit","messageId":a,"content":"x"}));
    assert_eq!(h.last_error(1), ErrorCode::Conflict);
    h.send(1, json!({"type":"reaction","messageId":a,"emoji":"👍"}));
    assert_eq!(h.last_error(1), ErrorCode::Conflict);
}

#[test]
fn reactions_are_unique_and_noops_ack_without_seq() {
    let mut h = H::new();
    h.connect(1, "alice", &["member"]);
    let id = h.msg(1, "react to me");
    h.send(1, json!({"type":"reaction","messageId":id,"emoji":"👍"}));
    let n = h.timeline(1).len();
    h.send(
        1,
        json!({"type":"reaction","messageId":id,"emoji":"👍","ref":"again"}),
    );
    assert_eq!(h.timeline(1).len(), n, "no event for a no-op");
    let a = h.acks(1).last().cloned().unwrap();
    assert_eq!((a.seq, a.reference.as_deref()), (None, Some("again")));
    h.send(
        1,
        json!({"type":"reaction","messageId":id,"emoji":"👍","op":"remove"}),
    );
    assert!(
        matches!(h.timeline(1).last(), Some(TimelineEvent::Reaction(r)) if r.op == fluxy_protocol::common::ReactionOp::Remove)
    );
    h.send(
        1,
        json!({"type":"reaction","messageId":id,"emoji":"👍","op":"remove"}),
    );
    assert_eq!(h.acks(1).last().unwrap().seq, None);
    h.send(
        1,
        json!({"type":"reaction","messageId":424242,"emoji":"👍"}),
    );
    assert_eq!(h.last_error(1), ErrorCode::NotFound);
    h.send(1, json!({"type":"reaction","messageId":id,"emoji":" x"}));
    assert_eq!(h.last_error(1), ErrorCode::InvalidFrame);
}

#[test]
fn read_receipts_are_monotonic() {
    let mut h = H::new();
    h.connect(1, "alice", &["member"]);
    let a = h.msg(1, "a");
    let b = h.msg(1, "b");
    h.send(1, json!({"type":"read","messageId":b}));
    assert!(matches!(h.timeline(1).last(), Some(TimelineEvent::Read(r)) if r.message_id == b));
    let n = h.timeline(1).len();
    h.send(1, json!({"type":"read","messageId":a}));
    assert_eq!(h.timeline(1).len(), n);
    assert_eq!(h.acks(1).last().unwrap().seq, None);
    h.send(1, json!({"type":"read","messageId":9999}));
    assert_eq!(h.last_error(1), ErrorCode::NotFound);
}

#[test]
fn typing_goes_to_the_others_with_verified_identity() {
    let mut h = H::new();
    h.connect(1, "alice", &["member"]);
    h.connect(2, "bob", &["member"]);
    h.take(1);
    h.take(2);
    h.send(
        1,
        json!({"type":"typing","isTyping":false,"intent":"composing","userId":"x"}),
    );
    assert!(!h.got.contains_key(&1), "not echoed to the sender");
    match &h.got[&2][0] {
        ServerFrame::Typing(t) => {
            assert_eq!(t.user_id, "alice");
            assert_eq!(t.intent, fluxy_protocol::common::TypingIntent::Idle);
        }
        other => panic!("{other:?}"),
    }
    h.send(1, json!({"type":"typing","isTyping":true}));
    match h.got[&2].last() {
        Some(ServerFrame::Typing(t)) => {
            assert_eq!(t.intent, fluxy_protocol::common::TypingIntent::Composing)
        }
        other => panic!("{other:?}"),
    }
    assert!(h.timeline(2).is_empty(), "typing is not sequenced");
}

#[test]
fn streams_start_delta_end_abort() {
    let mut h = H::new();
    h.connect(1, "alice", &["member"]);
    h.connect(2, "bob", &["member"]);
    h.send(1, json!({"type":"stream","op":"start","content":""}));
    let id = h.acks(1).last().unwrap().id.expect("ack carries the id");
    h.send(
        2,
        json!({"type":"stream","op":"delta","messageId":id,"content":"nope"}),
    );
    assert_eq!(h.last_error(2), ErrorCode::Forbidden);
    h.send(
        1,
        json!({"type":"stream","op":"delta","messageId":id,"content":"Hel"}),
    );
    h.send(
        1,
        json!({"type":"stream","op":"delta","messageId":id,"content":"Hello"}),
    );
    h.send(
        1,
        json!({"type":"stream","op":"end","messageId":id,"content":"Hello!"}),
    );
    let t = h.timeline(2);
    match &t[0] {
        TimelineEvent::Message(m) => assert!(m.streaming && m.content.is_empty()),
        other => panic!("{other:?}"),
    }
    let versions: Vec<(u32, bool)> = t[1..]
        .iter()
        .map(|e| match e {
            TimelineEvent::Edit(e) => (e.version, e.streaming),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(versions, vec![(2, true), (3, true), (4, false)]);
    h.send(
        1,
        json!({"type":"stream","op":"delta","messageId":id,"content":"more"}),
    );
    assert_eq!(h.last_error(1), ErrorCode::InvalidState);
    h.send(1, json!({"type":"stream","op":"start","content":"x"}));
    let id2 = h.acks(1).last().unwrap().id.unwrap();
    h.send(1, json!({"type":"stream","op":"abort","messageId":id2}));
    assert!(matches!(h.timeline(2).last(), Some(TimelineEvent::Delete(d)) if d.id == id2));
}

/// [FX-AGT-12] Two agents with pending requests of the same ids: a decision without `agentId`
/// decides neither; one naming an agent decides exactly that agent's request, and the event
/// names it.
#[test]
fn approval_decisions_name_the_agent_when_ids_are_shared() {
    let mut h = H::new();
    h.connect(1, "bot-a", &["agent"]);
    h.connect(2, "bot-b", &["agent"]);
    h.connect(3, "carol", &["member"]);
    for c in [1, 2] {
        h.send(c, json!({"type":"agentRun","runId":"r","status":"started"}));
        h.send(
            c,
            json!({"type":"approval_request","runId":"r","approvalId":"a","prompt":"ok?"}),
        );
    }
    let before = h.timeline(3).len();
    h.send(
        3,
        json!({"type":"approval_decision","runId":"r","approvalId":"a","decision":"approved"}),
    );
    assert_eq!(
        h.last_error(3),
        ErrorCode::InvalidState,
        "ambiguous decision"
    );
    assert_eq!(
        h.timeline(3).len(),
        before,
        "an ambiguous decision decides none"
    );
    h.send(
        3,
        json!({"type":"approval_decision","runId":"r","approvalId":"a","agentId":"bot-b","decision":"denied"}),
    );
    match h.timeline(3).last() {
        Some(TimelineEvent::ApprovalDecision(d)) => assert_eq!(d.agent_id, "bot-b"),
        other => panic!("{other:?}"),
    }
    h.send(
        3,
        json!({"type":"approval_decision","runId":"r","approvalId":"a","agentId":"bot-b","decision":"approved"}),
    );
    assert_eq!(
        h.last_error(3),
        ErrorCode::InvalidState,
        "one decision per request"
    );
    h.send(
        3,
        json!({"type":"approval_decision","runId":"r","approvalId":"a","agentId":"nobody","decision":"approved"}),
    );
    assert_eq!(
        h.last_error(3),
        ErrorCode::InvalidState,
        "no such agent's request"
    );
    // Now only bot-a's request is pending: a decision without agentId answers it.
    h.send(
        3,
        json!({"type":"approval_decision","runId":"r","approvalId":"a","decision":"approved"}),
    );
    match h.timeline(3).last() {
        Some(TimelineEvent::ApprovalDecision(d)) => assert_eq!(d.agent_id, "bot-a"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn agent_runs_tools_and_approvals() {
    let mut h = H::new();
    h.connect(1, "bot", &["agent"]);
    h.connect(2, "alice", &["member"]);
    h.send(2, json!({"type":"agentRun","runId":"r","status":"started"}));
    assert_eq!(h.last_error(2), ErrorCode::Forbidden);
    h.send(2, json!({"type":"agentTyping","isTyping":true}));
    assert_eq!(h.last_error(2), ErrorCode::Forbidden);
    h.send(
        1,
        json!({"type":"agentRun","runId":"r","status":"completed"}),
    );
    assert_eq!(h.last_error(1), ErrorCode::InvalidState);
    h.send(
        1,
        json!({"type":"tool_call","runId":"r","toolCallId":"c1","name":"search"}),
    );
    assert_eq!(h.last_error(1), ErrorCode::InvalidState);
    h.send(1, json!({"type":"agentRun","runId":"r","status":"started"}));
    h.send(1, json!({"type":"agentRun","runId":"r","status":"started"}));
    assert_eq!(h.last_error(1), ErrorCode::InvalidState);
    h.send(
        1,
        json!({"type":"tool_call","runId":"r","toolCallId":"c1","name":"search","arguments":"{}"}),
    );
    h.send(
        1,
        json!({"type":"tool_call","runId":"r","toolCallId":"c1","name":"search"}),
    );
    assert_eq!(h.last_error(1), ErrorCode::InvalidState);
    h.send(
        1,
        json!({"type":"tool_result","runId":"r","toolCallId":"c1","result":"ok"}),
    );
    h.send(
        1,
        json!({"type":"tool_error","runId":"r","toolCallId":"c1","error":"late"}),
    );
    assert_eq!(
        h.last_error(1),
        ErrorCode::InvalidState,
        "one result per call"
    );
    h.send(
        1,
        json!({"type":"approval_request","runId":"r","approvalId":"a1","prompt":"ok?"}),
    );
    h.send(
        1,
        json!({"type":"approval_decision","runId":"r","approvalId":"a1","decision":"approved"}),
    );
    assert_eq!(h.last_error(1), ErrorCode::Forbidden);
    h.send(
        2,
        json!({"type":"approval_decision","runId":"r","approvalId":"a1","decision":"approved"}),
    );
    h.send(
        2,
        json!({"type":"approval_decision","runId":"r","approvalId":"a1","decision":"denied"}),
    );
    assert_eq!(h.last_error(2), ErrorCode::InvalidState);
    h.send(
        1,
        json!({"type":"agentRun","runId":"r","status":"completed"}),
    );
    h.send(1, json!({"type":"agentRun","runId":"r","status":"failed"}));
    assert_eq!(h.last_error(1), ErrorCode::InvalidState);
    h.send(1, json!({"type":"agentTyping","isTyping":true}));
    assert!(matches!(h.got[&2].last(), Some(ServerFrame::AgentTyping(t)) if t.agent_id == "bot"));
    let kinds: Vec<&str> = h.timeline(2).iter().map(TimelineEvent::type_name).collect();
    assert_eq!(
        kinds,
        [
            "agentRun",
            "tool_call",
            "tool_result",
            "approval_request",
            "approval_decision",
            "agentRun"
        ]
    );
    // Agent state is rebuilt from stored agent events.
    let bodies: Vec<String> = h.timeline(2).iter().map(TimelineEvent::encode).collect();
    let mut r = H::with(
        cfg(Faults::NONE),
        LoadedRoom {
            current_seq: 6,
            agent_events: bodies,
            ..LoadedRoom::default()
        },
    );
    r.connect(1, "bot", &["agent"]);
    r.send(
        1,
        json!({"type":"agentRun","runId":"r","status":"cancelled"}),
    );
    assert_eq!(r.last_error(1), ErrorCode::InvalidState);
}

#[test]
fn bad_input_gets_error_frames_and_the_connection_stays_usable() {
    let mut h = H::new();
    h.connect(1, "alice", &["member"]);
    h.input(Input::Text {
        conn: 1,
        text: "{not json".into(),
    });
    assert_eq!(h.last_error(1), ErrorCode::MalformedFrame);
    h.input(Input::Text {
        conn: 1,
        text: "[1,2]".into(),
    });
    assert_eq!(h.last_error(1), ErrorCode::MalformedFrame);
    h.send(1, json!({"type":"warp","ref":"w"}));
    let e = h.errors(1).last().cloned().unwrap();
    assert_eq!(
        (e.code, e.reference.as_deref()),
        (ErrorCode::UnknownType, Some("w"))
    );
    h.send(1, json!({"type":"message","content":5}));
    assert_eq!(h.last_error(1), ErrorCode::InvalidFrame);
    h.send(1, json!({"type":"message","content":"   "}));
    assert_eq!(h.last_error(1), ErrorCode::InvalidContent);
    h.send(1, json!({"type":"message","content":"x".repeat(4001)}));
    assert_eq!(h.last_error(1), ErrorCode::InvalidContent);
    h.send(
        1,
        json!({"type":"message","content":"x","clientMessageId":"short"}),
    );
    assert_eq!(h.last_error(1), ErrorCode::InvalidFrame);
    h.send(1, json!({"type":"message","content":"x".repeat(70_000)}));
    assert_eq!(h.last_error(1), ErrorCode::PayloadTooLarge);
    h.input(Input::Binary { conn: 1 });
    assert_eq!(h.last_error(1), ErrorCode::BinaryNotSupported);
    h.send(1, json!({"type":"message","content":"x","parentId":777}));
    assert_eq!(h.last_error(1), ErrorCode::NotFound);
    assert!(h.closes.is_empty());
    assert_eq!(
        h.msg(1, "still works"),
        1,
        "nothing was stored by the bad frames"
    );
    h.send(1, json!({"type":"ping","ts":7}));
    assert!(matches!(h.got[&1].last(), Some(ServerFrame::Pong(p)) if p.echo == Some(7)));
}

#[test]
fn rate_limit_answers_rate_limited_then_recovers() {
    let mut c = cfg(Faults::NONE);
    c.rate_burst = 3;
    c.rate_per_second = 10;
    let mut h = H::with(c, LoadedRoom::default());
    h.connect(1, "alice", &["member"]);
    for i in 0..3 {
        h.msg(1, &format!("m{i}"));
    }
    h.send(1, json!({"type":"message","content":"over","ref":"o"}));
    let e = h.errors(1).last().cloned().unwrap();
    assert_eq!(e.code, ErrorCode::RateLimited);
    assert!(e.retry_after_ms.unwrap() > 0 && e.retryable);
    assert_eq!(e.reference.as_deref(), Some("o"));
    h.send(1, json!({"type":"ping"}));
    assert!(
        matches!(h.got[&1].last(), Some(ServerFrame::Pong(_))),
        "ping not limited"
    );
    h.now += e.retry_after_ms.unwrap();
    assert_eq!(h.msg(1, "after the wait"), 4);
}

#[test]
fn idle_connections_close_4000_and_leave_presence() {
    let mut h = H::new();
    h.connect(1, "alice", &["member"]);
    h.connect(2, "bob", &["member"]);
    h.now += 5_000;
    h.send(2, json!({"type":"ping"}));
    assert_eq!(h.room.poll_timeout(), Some(T0 + 10_000));
    h.now = T0 + 10_000;
    h.room.handle_timeout(h.now);
    h.pump();
    assert_eq!(h.closes, vec![(1, CloseCode::HeartbeatTimeout)]);
    assert!(
        matches!(h.got[&2].last(), Some(ServerFrame::Presence(p)) if p.users == vec!["bob".to_string()])
    );
}

#[test]
fn token_expiry_closes_4005_unless_refreshed_in_band() {
    let mut h = H::new();
    let mut a = ident("alice", &["member"]);
    a.token_exp = T0 / 1000 + 60;
    h.connect_with(1, a.clone(), ConnectOptions::default());
    h.connect_with(2, a, ConnectOptions::default());
    let claims = |sub: &str, exp: u64| Claims {
        sub: sub.into(),
        tid: "t1".into(),
        roles: vec!["member".into(), "agent".into()],
        exp,
        iat: None,
        nbf: None,
    };
    h.send(
        1,
        json!({"type":"auth","token":sign(&claims("mallory", T0/1000 + 7200), SECRET)}),
    );
    assert_eq!(h.last_error(1), ErrorCode::Forbidden);
    h.send(
        1,
        json!({"type":"auth","token":sign(&claims("alice", T0/1000 - 100), SECRET)}),
    );
    assert_eq!(h.last_error(1), ErrorCode::TokenExpired);
    h.send(1, json!({"type":"auth","token":"garbage"}));
    assert_eq!(h.last_error(1), ErrorCode::Unauthorized);
    h.send(
        1,
        json!({"type":"auth","token":sign(&claims("alice", T0/1000 + 7200), SECRET),"ref":"rf"}),
    );
    match h.got[&1].last() {
        Some(ServerFrame::TokenRefreshed(t)) => {
            assert_eq!(t.reference.as_deref(), Some("rf"));
            assert!(t.roles.contains(&"agent".to_string()));
        }
        other => panic!("{other:?}"),
    }
    h.now = T0 + 65_000;
    h.send(1, json!({"type":"ping"}));
    h.send(2, json!({"type":"ping"}));
    h.room.handle_timeout(h.now);
    h.pump();
    assert_eq!(h.closes, vec![(2, CloseCode::TokenExpired)]);
    assert_eq!(h.last_error(2), ErrorCode::TokenExpired);
}

#[test]
fn post_requests_share_sequencing_and_idempotency_with_the_socket() {
    let mut h = H::new();
    h.connect(1, "alice", &["member"]);
    h.send(
        1,
        json!({"type":"message","content":"ws","clientMessageId":"cmid-shared"}),
    );
    let frame = fluxy_protocol::client::SendMessageFrame {
        content: "rest".into(),
        client_message_id: Some("cmid-shared".into()),
        parent_id: None,
        attachments: vec![],
        reference: None,
    };
    h.input(Input::Post {
        request: 9,
        identity: ident("alice", &["member"]),
        frame: frame.clone(),
    });
    let (req, res) = h.posts.pop().unwrap();
    let out = res.unwrap();
    assert_eq!((req, out.ack.duplicate, out.ack.seq), (9, true, Some(1)));
    assert!(out.event.unwrap().contains("\"content\":\"ws\""));
    let mut f2 = frame;
    f2.client_message_id = None;
    h.input(Input::Post {
        request: 10,
        identity: ident("bob", &["member"]),
        frame: f2,
    });
    let (_, res) = h.posts.pop().unwrap();
    assert_eq!(res.unwrap().ack.seq, Some(2));
    assert!(matches!(h.timeline(1).last(), Some(TimelineEvent::Message(m)) if m.user_id == "bob"));
}

#[test]
fn announcement_rooms_restrict_posting() {
    let mut h = H::with(
        cfg(Faults::NONE),
        LoadedRoom {
            room_type: RoomType::Announcement,
            ..LoadedRoom::default()
        },
    );
    h.connect(1, "alice", &["member"]);
    h.send(1, json!({"type":"message","content":"hi"}));
    assert_eq!(h.last_error(1), ErrorCode::Forbidden);
    h.connect(2, "boss", &["admin"]);
    assert_eq!(h.msg(2, "news"), 1);
}

#[test]
fn kick_closes_4003() {
    let mut h = H::new();
    h.connect(1, "alice", &["member"]);
    h.input(Input::Kick {
        user_id: "alice".into(),
        version: 1,
    });
    assert_eq!(h.closes, vec![(1, CloseCode::Forbidden)]);
}

#[test]
fn restart_continues_the_sequence_from_storage() {
    let mut h = H::new();
    h.connect(1, "alice", &["member"]);
    for i in 0..3 {
        h.msg(1, &format!("m{i}"));
    }
    let recent: Vec<String> = h.timeline(1).iter().map(TimelineEvent::encode).collect();
    let mut r = H::with(
        cfg(Faults::NONE),
        LoadedRoom {
            current_seq: 3,
            recent,
            messages: vec![fluxy_room::MessageRow {
                id: 1,
                user_id: "alice".into(),
                version: 1,
                deleted: false,
                streaming: false,
            }],
            ..LoadedRoom::default()
        },
    );
    r.connect(1, "alice", &["member"]);
    assert_eq!(r.msg(1, "after restart"), 4);
    r.send(1, json!({"type":"edit","messageId":1,"content":"edited"}));
    assert!(matches!(r.timeline(1).last(), Some(TimelineEvent::Edit(e)) if e.version == 2));
}

#[test]
fn engine_faults_break_their_rule() {
    let run = |name: &str| {
        let mut h = H::with(
            cfg(Faults::from_names(&[name]).unwrap()),
            LoadedRoom::default(),
        );
        h.connect(1, "alice", &["member"]);
        h.connect(2, "bob", &["member"]);
        for i in 0..4 {
            h.send(1, json!({"type":"message","content":format!("m{i}")}));
        }
        h
    };
    assert_eq!(seqs(&run("skip-seq").timeline(2)), vec![1, 2, 4, 5]);
    assert_eq!(
        seqs(&run("reorder-broadcast").timeline(2)),
        vec![2, 1, 3, 4]
    );
    assert_eq!(seqs(&run("drop-broadcast").timeline(2)).len(), 3);
    assert!(run("no-ack").acks(1).is_empty());
    let h = run("ack-before-store");
    assert_eq!(h.acks(1)[0].seq, Some(1));
    assert_eq!(
        seqs(&h.timeline(2)),
        vec![1, 2, 3],
        "acked seq 1 was reused"
    );
    assert!(run("ghost-presence").room.connection_count() == 2);
}

// ------------------------------------------------------------ abuse policy (FRM-11, LIM-6)

#[test]
fn invalid_frame_flood_closes_4010_after_100_in_a_row_and_valid_frames_reset_the_count() {
    let mut h = H::new();
    h.connect(1, "alice", &["member"]);
    h.connect(2, "bob", &["member"]);
    for _ in 0..99 {
        h.send_text(1, "not json");
    }
    // A valid frame (even a ping) resets the streak.
    h.send(1, json!({"type":"ping","ts":1}));
    for _ in 0..98 {
        h.send_text(1, "{\"type\":\"nope\"}");
    }
    h.input(Input::Binary { conn: 1 }); // binary frames are invalid frames too
    assert!(h.closes.is_empty(), "99 in a row is below the limit");
    h.take(2);
    h.send_text(1, "[]");
    assert_eq!(h.closes, vec![(1, CloseCode::ProtocolViolation)]);
    // Every invalid frame was answered (the 100th too) before the close.
    assert_eq!(h.errors(1).len(), 99 + 99 + 1);
    assert_eq!(h.last_error(1), ErrorCode::MalformedFrame);
    // The engine forgot the connection: presence no longer counts alice.
    let p = h
        .got
        .get(&2)
        .and_then(|v| {
            v.iter().rev().find_map(|f| match f {
                ServerFrame::Presence(p) => Some(p.clone()),
                _ => None,
            })
        })
        .expect("a presence update for bob");
    assert_eq!(p.users, vec!["bob".to_owned()]);
    assert_eq!(h.room.connection_count(), 1);
}

#[test]
fn invalid_frame_limit_is_configurable_and_can_be_disabled() {
    let mut h = H::new();
    h.room.set_policy(fluxy_room::RoomPolicy {
        max_invalid_streak: Some(3),
        ..fluxy_room::RoomPolicy::default()
    });
    h.connect(1, "alice", &["member"]);
    h.send_text(1, "x");
    h.send_text(1, "x");
    assert!(h.closes.is_empty());
    h.send_text(1, "x");
    assert_eq!(h.closes, vec![(1, CloseCode::ProtocolViolation)]);

    let mut h = H::new();
    h.room.set_policy(fluxy_room::RoomPolicy {
        max_invalid_streak: None,
        ..fluxy_room::RoomPolicy::default()
    });
    h.connect(1, "alice", &["member"]);
    for _ in 0..500 {
        h.send_text(1, "x");
    }
    assert!(h.closes.is_empty(), "disabled: never closes");
    assert_eq!(h.msg(1, "still usable"), 1);
}

#[test]
fn persistent_rate_limit_abuse_closes_4008_but_occasional_excess_does_not() {
    let mut c = cfg(Faults::NONE);
    c.rate_burst = 5;
    c.rate_per_second = 5; // bucket period 1 s
    let mut h = H::with(c, LoadedRoom::default());
    h.connect(1, "alice", &["member"]);
    h.connect(2, "bob", &["member"]);
    // A burst with 150 refused frames, then again in the next window: never 200 in one window.
    for round in 0..3 {
        for i in 0..155 {
            h.send(
                1,
                json!({"type":"read","messageId":1,"ref":format!("r{round}-{i}")}),
            );
        }
        h.now += 1_000;
    }
    assert!(
        h.closes.is_empty(),
        "150 refusals per window stay below 200"
    );
    // 200 refusals within one window close with 4008 rate_limited.
    for i in 0..205 {
        h.send(
            2,
            json!({"type":"read","messageId":1,"ref":format!("b{i}")}),
        );
    }
    assert_eq!(h.closes, vec![(2, CloseCode::RateLimited)]);
    let limited = h
        .errors(2)
        .iter()
        .filter(|e| e.code == ErrorCode::RateLimited)
        .count();
    assert_eq!(
        limited, 200,
        "closed at the 200th refusal, each one answered"
    );
    assert_eq!(h.room.connection_count(), 1);
}

#[test]
fn rate_abuse_limit_can_be_disabled() {
    let mut c = cfg(Faults::NONE);
    c.rate_burst = 1;
    c.rate_per_second = 1;
    let mut h = H::with(c, LoadedRoom::default());
    h.room.set_policy(fluxy_room::RoomPolicy {
        max_rate_rejects: None,
        ..fluxy_room::RoomPolicy::default()
    });
    h.connect(1, "alice", &["member"]);
    for _ in 0..1000 {
        h.send(1, json!({"type":"read","messageId":1}));
    }
    assert!(h.closes.is_empty());
}

// ------------------------------------------------------------------ role changes

#[test]
fn set_role_gives_open_connections_the_new_privileges() {
    let mut h = H::new();
    h.connect(1, "alice", &["member"]);
    h.connect(2, "bob", &["member"]);
    let id = h.msg(1, "alice's");
    h.send(2, json!({"type":"delete","messageId":id}));
    assert_eq!(h.last_error(2), ErrorCode::Forbidden);
    h.input(Input::SetRole {
        user_id: "bob".into(),
        member_role: Some(MemberRole::Moderator),
        version: 1,
    });
    h.send(2, json!({"type":"delete","messageId":id,"ref":"d"}));
    let a = h.acks(2);
    assert_eq!(a.last().and_then(|a| a.reference.as_deref()), Some("d"));
    // And back: a demoted moderator loses the privilege at once.
    let id2 = h.msg(1, "another");
    h.input(Input::SetRole {
        user_id: "bob".into(),
        member_role: Some(MemberRole::Member),
        version: 2,
    });
    h.send(2, json!({"type":"delete","messageId":id2}));
    assert_eq!(h.last_error(2), ErrorCode::Forbidden);
    assert!(h.closes.is_empty(), "a role change closes nothing");
}

// ------------------------------------------------------------ idempotency retention

#[test]
fn idempotency_keys_are_honoured_for_24_hours_then_forgotten() {
    let day = fluxy_room::IDEMPOTENCY_TTL_MS;
    let loaded = LoadedRoom {
        current_seq: 2,
        idempotency: vec![
            fluxy_room::IdempotencyRow {
                user_id: "alice".into(),
                client_message_id: "old-key-0001".into(),
                seq: 1,
                message_id: Some(1),
                created_ms: T0 - day,
            },
            fluxy_room::IdempotencyRow {
                user_id: "alice".into(),
                client_message_id: "new-key-0001".into(),
                seq: 2,
                message_id: Some(2),
                created_ms: T0 - day + 1,
            },
        ],
        ..LoadedRoom::default()
    };
    let mut h = H::with(cfg(Faults::NONE), loaded);
    assert_eq!(h.room.idempotency_key_count(), 2);
    h.connect(1, "alice", &["member"]);
    // The first input pruned the key that is exactly 24 h old, and only that one.
    assert_eq!(h.room.idempotency_key_count(), 1);
    h.send(
        1,
        json!({"type":"message","content":"x","clientMessageId":"new-key-0001"}),
    );
    assert!(
        h.acks(1)[0].duplicate,
        "a key younger than 24 h is honoured"
    );
    // One millisecond later it is 24 h old: forgotten, so the same key is a new request.
    h.now += 1;
    h.send(
        1,
        json!({"type":"message","content":"y","clientMessageId":"new-key-0001"}),
    );
    let a = h.acks(1);
    assert!(!a[1].duplicate);
    assert_eq!(a[1].seq, Some(3));
    // The fresh key is honoured again, and the expired ones are gone from memory.
    h.send(
        1,
        json!({"type":"message","content":"z","clientMessageId":"new-key-0001"}),
    );
    assert!(h.acks(1)[2].duplicate);
    assert_eq!(h.acks(1)[2].seq, Some(3));
    assert_eq!(h.room.idempotency_key_count(), 1);
    h.now += day;
    h.send(1, json!({"type":"ping"}));
    assert_eq!(h.room.idempotency_key_count(), 0);
}

// ------------------------------------------------------------ shell support APIs

/// Drain the engine's effects without carrying them out.
fn drain(room: &mut Room) -> Vec<Effect> {
    std::iter::from_fn(|| room.poll_effect()).collect()
}

#[test]
fn restore_re_registers_connections_silently() {
    // A room with history, rebuilt from storage (as after a Durable Object eviction).
    let mut before = H::new();
    before.connect(1, "alice", &["member"]);
    before.connect(2, "bob", &["member"]);
    before.connect(3, "bob", &["member"]);
    before.msg(1, "hello");
    let recent: Vec<String> = before
        .timeline(1)
        .iter()
        .map(TimelineEvent::encode)
        .collect();
    let mut h = H::with(
        cfg(Faults::NONE),
        LoadedRoom {
            current_seq: 1,
            recent,
            ..LoadedRoom::default()
        },
    );
    let mut refreshed = ident("alice", &["member", "agent"]);
    refreshed.token_exp = T0 / 1000 + 7200;
    for (conn, id) in [
        (1, refreshed.clone()),
        (2, ident("bob", &["member"])),
        (3, ident("bob", &["member"])),
    ] {
        h.room.handle(
            T0,
            Input::Restore {
                conn,
                identity: id,
                last_rx_ms: T0 - 4_000,
            },
        );
        assert!(drain(&mut h.room).is_empty(), "Restore emits nothing");
        h.open.insert(conn);
    }
    // Restoring an id that is already open changes nothing (no double count).
    h.room.handle(
        T0,
        Input::Restore {
            conn: 2,
            identity: ident("bob", &["member"]),
            last_rx_ms: T0,
        },
    );
    assert!(drain(&mut h.room).is_empty());
    assert_eq!(h.room.connection_count(), 3);
    // The idle clock resumes from last_rx_ms (not from the restore time); the identity
    // (token expiry) is the restored one.
    assert_eq!(h.room.poll_timeout(), Some(T0 - 4_000 + 10_000));

    // A new connection sees the restored users in presence, with their connection counts;
    // only the newcomer is announced.
    h.connect(4, "carol", &["member"]);
    let p = h.got[&4]
        .iter()
        .find_map(|f| match f {
            ServerFrame::Presence(p) => Some(p.clone()),
            _ => None,
        })
        .expect("presence");
    assert_eq!(p.online, 4);
    assert_eq!(p.users, vec!["alice", "bob", "carol"]);
    let bob = p.members.iter().find(|m| m.user_id == "bob").expect("bob");
    assert_eq!(bob.connections, 2);
    let joined = |f: &ServerFrame| matches!(f, ServerFrame::MemberJoined(_));
    assert_eq!(
        h.got[&1].iter().filter(|f| joined(f)).count(),
        1,
        "carol only"
    );
    assert!(!h.got[&1]
        .iter()
        .any(|f| matches!(f, ServerFrame::Welcome(_) | ServerFrame::History(_))));

    // Restored connections send and receive as before; seq continues from storage.
    h.send(
        1,
        json!({"type":"tool_call","runId":"r","toolCallId":"c","name":"x"}),
    );
    assert_eq!(h.last_error(1), ErrorCode::InvalidState, "agent role kept");
    assert_eq!(h.msg(2, "after"), 2);
    assert_eq!(seqs(&h.timeline(1)), vec![2]);
    assert_eq!(seqs(&h.timeline(3)), vec![2]);

    // Leaving: one of bob's two connections is no member_left; the last one is.
    h.open.remove(&3);
    h.input(Input::Closed { conn: 3 });
    h.open.remove(&2);
    h.input(Input::Closed { conn: 2 });
    let left: Vec<String> = h.got[&1]
        .iter()
        .filter_map(|f| match f {
            ServerFrame::MemberLeft(m) => Some(m.user_id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(left, vec!["bob"]);

    // Alice's frame at T0 refreshed the restored idle clock.
    h.now = T0 + 9_999;
    h.room.handle_timeout(h.now);
    h.pump();
    assert!(h.closes.is_empty());
}

#[test]
fn restore_keeps_the_restored_token_expiry() {
    let mut h = H::new();
    let mut id = ident("alice", &["member"]);
    id.token_exp = T0 / 1000 + 30;
    h.room.handle(
        T0,
        Input::Restore {
            conn: 7,
            identity: id,
            last_rx_ms: T0,
        },
    );
    h.open.insert(7);
    h.now = T0 + 36_000;
    h.send(7, json!({"type":"ping"}));
    h.room.handle_timeout(h.now);
    h.pump();
    assert_eq!(h.closes, vec![(7, CloseCode::TokenExpired)]);
}

#[test]
fn identity_changed_follows_in_band_auth_and_set_role() {
    let mut h = H::new();
    h.connect(1, "alice", &["member"]);
    h.connect(2, "bob", &["member"]);
    h.connect(3, "bob", &["member"]);
    let claims = |sub: &str, exp: u64| Claims {
        sub: sub.into(),
        tid: "t1".into(),
        roles: vec!["member".into(), "agent".into()],
        exp,
        iat: None,
        nbf: None,
    };
    // Refused tokens change nothing.
    h.send(1, json!({"type":"auth","token":"garbage"}));
    h.send(
        1,
        json!({"type":"auth","token":sign(&claims("mallory", T0/1000 + 7200), SECRET)}),
    );
    assert!(h.identities.is_empty());

    // Accepted: the new identity right after the token_refreshed frame.
    let token = sign(&claims("alice", T0 / 1000 + 7200), SECRET);
    h.room.handle(
        h.now,
        Input::Text {
            conn: 1,
            text: json!({"type":"auth","token":token,"ref":"a1"}).to_string(),
        },
    );
    let effects = drain(&mut h.room);
    assert_eq!(effects.len(), 2, "{effects:?}");
    assert!(
        matches!(&effects[0], Effect::Send { conn: 1, frame } if frame.starts_with(r#"{"type":"token_refreshed""#))
    );
    match &effects[1] {
        Effect::IdentityChanged { conn: 1, identity } => {
            assert_eq!(identity.user_id, "alice");
            assert_eq!(identity.token_exp, T0 / 1000 + 7200);
            assert_eq!(identity.roles, vec!["member", "agent"]);
            assert_eq!(identity.member_role, Some(MemberRole::Member));
        }
        other => panic!("{other:?}"),
    }

    // SetRole: one per open connection of that user, nothing else.
    for c in 1..=3 {
        h.take(c);
    }
    h.input(Input::SetRole {
        user_id: "bob".into(),
        member_role: Some(MemberRole::Moderator),
        version: 3,
    });
    let conns: Vec<ConnId> = h.identities.iter().map(|(c, _)| *c).collect();
    assert_eq!(conns, vec![2, 3]);
    for (_, id) in &h.identities {
        assert_eq!(id.user_id, "bob");
        assert_eq!(id.member_role, Some(MemberRole::Moderator));
        assert_eq!(id.token_exp, T0 / 1000 + 3600);
    }
    assert!((1..=3).all(|c| h.take(c).is_empty()), "no frames");
    h.identities.clear();
    h.input(Input::SetRole {
        user_id: "nobody".into(),
        member_role: None,
        version: 4,
    });
    assert!(h.identities.is_empty());
}

#[test]
fn recent_after_returns_seq_type_and_body() {
    let mut h = H::new();
    h.connect(1, "alice", &["member"]);
    let id = h.msg(1, "one");
    h.send(
        1,
        json!({"type":"reaction","messageId":id,"emoji":"👍","op":"add"}),
    );
    h.send(1, json!({"type":"edit","messageId":id,"content":"uno"}));
    let raw: Vec<String> = h.raw[&1]
        .iter()
        .filter(|f| {
            ServerFrame::decode(f)
                .ok()
                .and_then(ServerFrame::into_timeline)
                .is_some()
        })
        .cloned()
        .collect();
    assert_eq!(raw.len(), 3);
    let all = h.room.recent_after(0, usize::MAX).expect("in window");
    let heads: Vec<(u64, &str)> = all.iter().map(|(s, k, _)| (*s, *k)).collect();
    assert_eq!(heads, vec![(1, "message"), (2, "reaction"), (3, "edit")]);
    let bodies: Vec<String> = all.iter().map(|(_, _, b)| b.to_string()).collect();
    assert_eq!(bodies, raw, "bodies byte-identical to the broadcasts");
    let tail = h.room.recent_after(1, 1).expect("in window");
    assert_eq!(tail.len(), 1);
    assert_eq!((tail[0].0, tail[0].1), (2, "reaction"));
    assert!(h.room.recent_after(3, 10).expect("in window").is_empty());
    let old: Vec<String> = h
        .room
        .recent_bodies_after(1, 10)
        .expect("in window")
        .iter()
        .map(|b| b.to_string())
        .collect();
    assert_eq!(old, raw[1..]);

    // Outside the window: None, as before.
    let mut r = H::with(
        cfg(Faults::NONE),
        LoadedRoom {
            current_seq: 500,
            ..LoadedRoom::default()
        },
    );
    assert!(r.room.recent_after(10, 5).is_none());
    assert!(r.room.recent_bodies_after(10, 5).is_none());
    assert_eq!(r.room.recent_after(500, 5).map(|v| v.len()), Some(0));
    r.pump();
}

fn created_ms(e: &TimelineEvent) -> u64 {
    let v: serde_json::Value = serde_json::from_str(&e.encode()).expect("json");
    let s = ["createdAt", "editedAt", "deletedAt"]
        .iter()
        .find_map(|k| v[*k].as_str())
        .expect("a time stamp");
    fluxy_protocol::common::parse_timestamp(s).expect("RFC 3339")
}

#[test]
fn created_at_strictly_increases_when_the_clock_stands_still_fx_ord_9() {
    let mut h = H::new();
    h.connect(1, "alice", &["member"]);
    // Five events in one millisecond: a message, an edit, a reaction, a read, a REST post.
    let id = h.msg(1, "one");
    h.send(1, json!({"type":"edit","messageId":id,"content":"uno"}));
    h.send(1, json!({"type":"reaction","messageId":id,"emoji":"👍"}));
    h.send(1, json!({"type":"read","messageId":id}));
    h.input(Input::Post {
        request: 7,
        identity: ident("alice", &["member"]),
        frame: serde_json::from_value(json!({"content":"rest"})).expect("frame"),
    });
    let times: Vec<u64> = h.timeline(1).iter().map(created_ms).collect();
    assert_eq!(times, (T0..T0 + 5).collect::<Vec<_>>());
    // The ack and the stored row carry the adjusted time stamp too.
    let acks = h.acks(1);
    assert_eq!(
        acks.last().and_then(|a| a.created_at.clone()),
        Some(fluxy_protocol::common::format_timestamp(T0 + 3))
    );
    // The clock moving backwards does not move createdAt backwards.
    h.now = T0 - 10_000;
    h.msg(1, "after a clock step back");
    assert_eq!(h.timeline(1).last().map(created_ms), Some(T0 + 5));
    // Once the clock is ahead again, it is used as is.
    h.now = T0 + 60_000;
    h.msg(1, "later");
    assert_eq!(h.timeline(1).last().map(created_ms), Some(T0 + 60_000));
}

#[test]
fn created_at_keeps_increasing_after_a_reload_fx_ord_9() {
    let mut h = H::new();
    h.connect(1, "alice", &["member"]);
    for i in 0..3 {
        h.msg(1, &format!("m{i}"));
    }
    let last = h.timeline(1).last().map(created_ms).expect("events");
    assert_eq!(last, T0 + 2);
    let recent: Vec<String> = h.timeline(1).iter().map(TimelineEvent::encode).collect();
    let mut r = H::with(
        cfg(Faults::NONE),
        LoadedRoom {
            current_seq: 3,
            recent,
            ..LoadedRoom::default()
        },
    );
    // The reloaded engine runs with the clock at T0 (before the stored events' time stamps).
    r.connect(1, "alice", &["member"]);
    r.msg(1, "after reload");
    assert_eq!(r.timeline(1).last().map(created_ms), Some(T0 + 3));
}

#[test]
fn compat_snapshot_carries_fluxychat_rows_and_reactions_fx_cmp_1() {
    let mut h = H::new();
    h.connect(1, "alice", &["member"]);
    let a = h.msg(1, "first");
    let b = h.msg(1, "second");
    let c = h.msg(1, "third");
    h.send(
        1,
        json!({"type":"edit","messageId":a,"content":"first, edited"}),
    );
    h.send(1, json!({"type":"reaction","messageId":a,"emoji":"👍"}));
    h.send(1, json!({"type":"delete","messageId":b}));
    h.connect(2, "bob", &["member"]);
    h.send(2, json!({"type":"reaction","messageId":a,"emoji":"👍"}));
    h.send(2, json!({"type":"reaction","messageId":c,"emoji":"🎉"}));
    // A plain client: no compat fields, not even as null.
    h.connect_with(3, ident("carol", &["member"]), ConnectOptions::default());
    let plain = h.raw[&3][1].clone();
    assert!(plain.starts_with(r#"{"type":"history""#), "{plain}");
    assert!(!plain.contains("\"messages\"") && !plain.contains("\"reactions\""));
    // FluxyChat's SDK: replay=connect, replayLimit=2.
    let o = ConnectOptions {
        compat: true,
        replay_limit: 2,
        ..ConnectOptions::default()
    };
    h.connect_with(4, ident("dave", &["member"]), o);
    let ServerFrame::History(hist) = &h.got[&4][1] else {
        panic!("{:?}", h.got[&4][1]);
    };
    assert_eq!(
        seqs(&hist.events),
        vec![7, 8],
        "events keep the Fluxy window"
    );
    let rows = hist.messages.as_ref().expect("messages");
    let ids: Vec<u64> = rows.iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![a, c], "newest live messages, oldest first");
    assert_eq!(rows[0].content, "first, edited");
    assert_eq!(rows[0].version, 2);
    assert!(rows[0].edited_at.is_some());
    let reactions = hist.reactions.as_ref().expect("reactions");
    assert_eq!(reactions[&a.to_string()]["👍"], 2);
    assert_eq!(reactions[&c.to_string()]["🎉"], 1);
    // The JSON shape FluxyChat's SDK reads: parentId and editedAt present (null), ids numbers.
    let raw: serde_json::Value = serde_json::from_str(&h.raw[&4][1]).expect("json");
    assert!(raw["messages"][1]["parentId"].is_null());
    assert!(raw["messages"][1]["editedAt"].is_null());
    assert!(raw["messages"][0]["id"].is_u64());
    assert!(raw["reactions"][a.to_string()]["👍"].is_u64());
    // The rows agree with the /api/messages view of the same state: a message edited after the
    // snapshot shows up live as an edit the rows did not yet contain.
    h.send(
        1,
        json!({"type":"edit","messageId":c,"content":"third, edited"}),
    );
    assert!(matches!(h.timeline(4).last(), Some(TimelineEvent::Edit(e)) if e.id == c));
}

// ---------------------------------------------- handshake against kicks and role changes

/// Open `user` as the handshake saw them: `role` read at membership `version`.
fn open_as_read(h: &mut H, conn: ConnId, user: &str, role: MemberRole, version: u64) {
    let mut id = ident(user, &[]);
    id.member_role = Some(role);
    h.connect_with(
        conn,
        id,
        ConnectOptions {
            membership_version: version,
            ..ConnectOptions::default()
        },
    );
}

#[test]
fn handshake_that_read_membership_before_a_kick_is_closed_4003() {
    let mut h = H::new();
    h.connect(1, "alice", &[]);
    h.take(1);
    // bob's handshake read "member" at version 1; then the kick (version 2) reached the room
    // first; then the handshake's Open.
    h.input(Input::Kick {
        user_id: "bob".into(),
        version: 2,
    });
    open_as_read(&mut h, 2, "bob", MemberRole::Member, 1);
    assert_eq!(
        h.closes,
        vec![(2, CloseCode::Forbidden)],
        "the stale handshake is closed 4003"
    );
    let got = h.take(2);
    assert!(
        !got.iter().any(|f| matches!(f, ServerFrame::Welcome(_))),
        "no welcome for a kicked user: {got:?}"
    );
    assert!(
        matches!(got.as_slice(), [ServerFrame::Error(e)] if e.code == ErrorCode::NotMember),
        "one not_member error: {got:?}"
    );
    assert!(
        !h.take(1)
            .iter()
            .any(|f| matches!(f, ServerFrame::MemberJoined(_))),
        "the others never saw bob join"
    );
    assert_eq!(h.room.connection_count(), 1);
}

#[test]
fn handshake_that_read_a_role_before_a_demotion_registers_demoted() {
    let mut h = H::new();
    h.connect(1, "alice", &[]);
    let id = h.msg(1, "alice's");
    // bob was a moderator at version 1; demoted to member (version 2) before his Open.
    h.input(Input::SetRole {
        user_id: "bob".into(),
        member_role: Some(MemberRole::Member),
        version: 2,
    });
    open_as_read(&mut h, 2, "bob", MemberRole::Moderator, 1);
    assert_eq!(
        h.identities
            .iter()
            .filter(|(c, _)| *c == 2)
            .map(|(_, i)| i.member_role)
            .collect::<Vec<_>>(),
        vec![Some(MemberRole::Member)],
        "the shell is told the corrected identity"
    );
    h.send(2, json!({"type":"delete","messageId":id}));
    assert_eq!(
        h.last_error(2),
        ErrorCode::Forbidden,
        "registered with the newer role, not the one read"
    );
}

#[test]
fn handshake_that_read_a_role_before_a_promotion_registers_promoted() {
    let mut h = H::new();
    h.connect(1, "alice", &[]);
    let id = h.msg(1, "alice's");
    h.input(Input::SetRole {
        user_id: "bob".into(),
        member_role: Some(MemberRole::Moderator),
        version: 5,
    });
    open_as_read(&mut h, 2, "bob", MemberRole::Member, 4);
    h.send(2, json!({"type":"delete","messageId":id,"ref":"d"}));
    assert_eq!(
        h.acks(2).last().and_then(|a| a.reference.as_deref()),
        Some("d")
    );
}

#[test]
fn handshake_that_read_a_newer_membership_keeps_it() {
    let mut h = H::new();
    h.connect(1, "alice", &[]);
    let id = h.msg(1, "alice's");
    // Kicked at version 2, re-added at version 3: a handshake that read version 3 is a member.
    h.input(Input::Kick {
        user_id: "bob".into(),
        version: 2,
    });
    open_as_read(&mut h, 2, "bob", MemberRole::Member, 3);
    assert!(h.closes.is_empty(), "{:?}", h.closes);
    // Promoted at version 4, then the handshake read "member" at version 5: member.
    h.input(Input::SetRole {
        user_id: "carol".into(),
        member_role: Some(MemberRole::Moderator),
        version: 4,
    });
    open_as_read(&mut h, 3, "carol", MemberRole::Member, 5);
    h.send(3, json!({"type":"delete","messageId":id}));
    assert_eq!(h.last_error(3), ErrorCode::Forbidden);
    // Unversioned opens (version 0, e.g. a shell without versions) behave as before.
    open_as_read(&mut h, 4, "dave", MemberRole::Member, 0);
    assert!(h.closes.is_empty());
}

#[test]
fn a_membership_change_delivered_after_a_newer_one_is_ignored() {
    let mut h = H::new();
    h.connect(1, "alice", &[]);
    let id = h.msg(1, "alice's");
    h.connect(2, "bob", &[]);
    h.input(Input::SetRole {
        user_id: "bob".into(),
        member_role: Some(MemberRole::Member),
        version: 3,
    });
    // The promotion written before the demotion arrives last: bob stays a member.
    h.input(Input::SetRole {
        user_id: "bob".into(),
        member_role: Some(MemberRole::Moderator),
        version: 2,
    });
    h.send(2, json!({"type":"delete","messageId":id}));
    assert_eq!(h.last_error(2), ErrorCode::Forbidden);
    h.input(Input::Kick {
        user_id: "bob".into(),
        version: 1,
    });
    assert!(h.closes.is_empty(), "a stale kick closes nothing");
}

// ------------------------------------------------------------ bounded wake-up: lookups

/// A room woken at seq 10 that loaded nothing but its type and seq; `store` is what storage
/// holds: messages 1..=4 by alice (3 deleted), bob's 👍 on 1, alice read up to 2, alice's key
/// "key-00001" (seq 1, 1 h old) and "key-00old" (seq 2, 25 h old), agent bot's run "done" (closed).
fn woken() -> H {
    let mut h = H::with(
        cfg(Faults::NONE),
        LoadedRoom {
            current_seq: 10,
            ..LoadedRoom::default()
        },
    );
    h.now = T0 + 100 * 3600 * 1000;
    h.auto_fetch = false;
    for id in 1..=4u64 {
        h.store.insert(
            Lookup::Message { id },
            Found::Message(Some(fluxy_room::MessageRow {
                id,
                user_id: "alice".into(),
                version: if id == 3 { 2 } else { 1 },
                deleted: id == 3,
                streaming: false,
            })),
        );
    }
    h.store.insert(
        Lookup::Reaction {
            message_id: 1,
            user_id: "bob".into(),
            emoji: "👍".into(),
        },
        Found::Reaction(true),
    );
    h.store.insert(
        Lookup::Read {
            user_id: "alice".into(),
        },
        Found::Read(Some(2)),
    );
    for (key, seq, age_h) in [("key-00001", 1, 1), ("key-00old", 2, 25)] {
        h.store.insert(
            Lookup::Idempotency {
                user_id: "alice".into(),
                client_message_id: key.into(),
            },
            Found::Idempotency(Some(fluxy_room::IdempotencyRow {
                user_id: "alice".into(),
                client_message_id: key.into(),
                seq,
                message_id: Some(seq),
                created_ms: h.now - age_h * 3600 * 1000,
            })),
        );
    }
    h.store.insert(
        Lookup::Run {
            agent_id: "bot".into(),
            run_id: "done".into(),
        },
        Found::Run(Some(fluxy_room::RunRow {
            agent_id: "bot".into(),
            run_id: "done".into(),
            terminal: true,
            ..Default::default()
        })),
    );
    h
}

fn answer_all(h: &mut H) {
    while !h.fetches.is_empty() {
        h.answer_fetch(true);
    }
}

#[test]
fn wake_up_message_lookup_for_edit_and_delete() {
    let mut h = woken();
    h.connect(1, "alice", &["member"]);
    h.send(
        1,
        json!({"type":"edit","messageId":1,"content":"e","expectedVersion":1}),
    );
    assert_eq!(h.looked_up, vec![Lookup::Message { id: 1 }]);
    assert!(h.acks(1).is_empty(), "the edit waits for its lookup");
    answer_all(&mut h);
    assert_eq!(h.acks(1)[0].seq, Some(11));
    // Cached: a second edit needs no lookup and sees version 2.
    h.send(
        1,
        json!({"type":"edit","messageId":1,"content":"f","expectedVersion":1}),
    );
    assert_eq!(h.last_error(1), ErrorCode::Conflict);
    // Deleted in storage: conflict; not a message: not found; a new id: no lookup at all.
    h.send(1, json!({"type":"delete","messageId":3}));
    answer_all(&mut h);
    assert_eq!(h.last_error(1), ErrorCode::Conflict);
    h.send(1, json!({"type":"delete","messageId":7}));
    answer_all(&mut h);
    assert_eq!(h.last_error(1), ErrorCode::NotFound);
    h.send(1, json!({"type":"edit","messageId":12,"content":"x"}));
    assert_eq!(h.last_error(1), ErrorCode::NotFound);
    assert_eq!(
        h.looked_up,
        vec![
            Lookup::Message { id: 1 },
            Lookup::Message { id: 3 },
            Lookup::Message { id: 7 }
        ]
    );
    // The statement is the primary-key read.
    let s = Lookup::Message { id: 7 }.statement(&"t1".into(), &"r1".into(), h.now);
    assert_eq!(s.sql, sql::FETCH_MESSAGE);
}

#[test]
fn wake_up_reaction_lookup_per_key() {
    let mut h = woken();
    h.connect(1, "bob", &["member"]);
    h.send(1, json!({"type":"reaction","messageId":1,"emoji":"👍"}));
    assert_eq!(
        h.looked_up,
        vec![
            Lookup::Message { id: 1 },
            Lookup::Reaction {
                message_id: 1,
                user_id: "bob".into(),
                emoji: "👍".into()
            }
        ]
    );
    answer_all(&mut h);
    assert_eq!(
        h.acks(1)[0].seq,
        None,
        "stored reaction: adding it is a no-op"
    );
    h.send(1, json!({"type":"reaction","messageId":1,"emoji":"👎"}));
    answer_all(&mut h);
    assert_eq!(h.acks(1)[1].seq, Some(11), "absent reaction: added");
    h.send(
        1,
        json!({"type":"reaction","messageId":1,"emoji":"👍","op":"remove"}),
    );
    assert!(h.fetches.is_empty(), "known keys need no lookup");
    assert_eq!(h.acks(1)[2].seq, Some(12));
    // On a message created since wake-up every reaction is in memory.
    let id = h.msg(1, "new");
    h.send(1, json!({"type":"reaction","messageId":id,"emoji":"👍"}));
    assert!(h.fetches.is_empty());
    assert!(h.acks(1).last().unwrap().seq.is_some());
}

#[test]
fn wake_up_read_position_lookup() {
    let mut h = woken();
    h.connect(1, "alice", &["member"]);
    h.send(1, json!({"type":"read","messageId":1}));
    answer_all(&mut h);
    assert_eq!(h.acks(1)[0].seq, None, "read position 2 was looked up");
    h.send(1, json!({"type":"read","messageId":4}));
    assert_eq!(h.looked_up.last(), Some(&Lookup::Message { id: 4 }));
    answer_all(&mut h);
    assert_eq!(h.acks(1)[1].seq, Some(11));
    h.connect(2, "bob", &["member"]);
    h.send(2, json!({"type":"read","messageId":1}));
    assert!(h.looked_up.contains(&Lookup::Read {
        user_id: "bob".into()
    }));
    answer_all(&mut h);
    assert_eq!(h.acks(2)[0].seq, Some(12), "bob had no read position");
}

#[test]
fn wake_up_idempotency_lookup_honours_24_hours() {
    let mut h = woken();
    h.connect(1, "alice", &["member"]);
    h.send(
        1,
        json!({"type":"message","content":"again","clientMessageId":"key-00001"}),
    );
    assert_eq!(
        h.looked_up,
        vec![Lookup::Idempotency {
            user_id: "alice".into(),
            client_message_id: "key-00001".into()
        }]
    );
    answer_all(&mut h);
    let a = &h.acks(1)[0];
    assert!(a.duplicate);
    assert_eq!((a.seq, a.id), (Some(1), Some(1)));
    // A key older than 24 h is forgotten even if storage still returns it.
    h.send(
        1,
        json!({"type":"message","content":"again","clientMessageId":"key-00old"}),
    );
    answer_all(&mut h);
    let a = &h.acks(1)[1];
    assert!(!a.duplicate);
    assert_eq!(a.seq, Some(11));
    // An unused key: a new message; resent: a duplicate without another lookup.
    h.send(
        1,
        json!({"type":"message","content":"n","clientMessageId":"key-fresh"}),
    );
    answer_all(&mut h);
    assert_eq!(h.acks(1)[2].seq, Some(12));
    let n = h.looked_up.len();
    h.send(
        1,
        json!({"type":"message","content":"n","clientMessageId":"key-fresh"}),
    );
    assert_eq!(h.looked_up.len(), n);
    assert!(h.acks(1)[3].duplicate);
    // POST takes the same path.
    h.input(Input::Post {
        request: 7,
        identity: ident("alice", &["member"]),
        frame: fluxy_protocol::client::SendMessageFrame {
            content: "p".into(),
            client_message_id: Some("key-00001".into()),
            parent_id: None,
            attachments: Vec::new(),
            reference: None,
        },
    });
    let (r, res) = h.posts.last().expect("answered");
    assert_eq!(*r, 7);
    let ack = &res.as_ref().expect("ok").ack;
    assert!(ack.duplicate);
    assert_eq!(ack.seq, Some(1));
}

#[test]
fn wake_up_run_lookup_for_closed_runs_open_runs_are_loaded() {
    let mut h = H::with(
        cfg(Faults::NONE),
        LoadedRoom {
            current_seq: 10,
            runs: vec![fluxy_room::RunRow {
                agent_id: "bot".into(),
                run_id: "live".into(),
                terminal: false,
                tool_calls: vec![("c1".into(), true)],
                approvals: vec![("a1".into(), true)],
            }],
            ..LoadedRoom::default()
        },
    );
    h.store = woken().store;
    h.connect(1, "bot", &["agent"]);
    // The open run is in memory: its pending call and approval, and its used ids.
    h.send(
        1,
        json!({"type":"tool_call","runId":"live","toolCallId":"c1","name":"n","arguments":"{}"}),
    );
    assert_eq!(h.last_error(1), ErrorCode::InvalidState);
    h.send(
        1,
        json!({"type":"tool_result","runId":"live","toolCallId":"c1","result":"{}"}),
    );
    assert_eq!(h.acks(1)[0].seq, Some(11));
    h.connect(2, "alice", &["member"]);
    h.send(
        2,
        json!({"type":"approval_decision","runId":"live","approvalId":"a1","decision":"approved"}),
    );
    assert_eq!(h.acks(2)[0].seq, Some(12));
    assert!(h.looked_up.is_empty(), "nothing on open runs is looked up");
    // A closed run is looked up: not restartable; an unknown one starts.
    h.send(
        1,
        json!({"type":"agentRun","runId":"done","status":"started"}),
    );
    assert_eq!(h.last_error(1), ErrorCode::InvalidState);
    h.send(
        1,
        json!({"type":"agentRun","runId":"done","status":"completed"}),
    );
    assert_eq!(h.last_error(1), ErrorCode::InvalidState);
    h.send(
        1,
        json!({"type":"agentRun","runId":"key-fresh","status":"started"}),
    );
    assert_eq!(h.acks(1).last().unwrap().seq, Some(13));
    assert_eq!(
        h.looked_up,
        vec![
            Lookup::Run {
                agent_id: "bot".into(),
                run_id: "done".into()
            },
            Lookup::Run {
                agent_id: "bot".into(),
                run_id: "key-fresh".into()
            }
        ]
    );
    // Closing the live run (terminal, nothing pending) writes open = 0.
    h.send(
        1,
        json!({"type":"agentRun","runId":"live","status":"completed"}),
    );
    let last = h.committed.last().expect("committed");
    assert!(last.iter().any(|s| s.sql == sql::UPSERT_RUN
        && s.params[3] == "live".into()
        && s.params[4] == 1u64.into()
        && s.params[5] == 0u64.into()));
}

#[test]
fn wake_up_parked_frames_keep_connection_order_and_others_go_on() {
    let mut h = woken();
    h.connect(1, "alice", &["member"]);
    h.connect(2, "bob", &["member"]);
    h.send(
        1,
        json!({"type":"edit","messageId":1,"content":"e","ref":"a"}),
    );
    h.send(1, json!({"type":"message","content":"after","ref":"b"}));
    h.send(1, json!({"type":"typing","isTyping":true}));
    h.send(1, json!({"type":"ping","ts":5}));
    // The ping is answered at once; the message waits behind the edit.
    assert!(h.got[&1].iter().any(|f| matches!(f, ServerFrame::Pong(_))));
    assert!(h.acks(1).is_empty());
    assert!(h.room.is_waiting(1));
    // Another connection is not blocked.
    h.send(2, json!({"type":"message","content":"bob","ref":"c"}));
    assert_eq!(h.acks(2)[0].seq, Some(11));
    answer_all(&mut h);
    let acks = h.acks(1);
    let got: Vec<(Option<&str>, Option<u64>)> = acks
        .iter()
        .map(|a| (a.reference.as_deref(), a.seq))
        .collect();
    assert_eq!(got, vec![(Some("a"), Some(12)), (Some("b"), Some(13))]);
    assert!(!h.room.is_waiting(1));
    assert_eq!(h.room.parked_requests(), 0);
}

#[test]
fn wake_up_fetch_interleaved_with_another_connections_change() {
    let mut h = woken();
    h.connect(1, "alice", &["member"]);
    h.connect(2, "mod", &["moderator"]);
    h.send(
        1,
        json!({"type":"edit","messageId":2,"content":"e","expectedVersion":1}),
    );
    h.send(2, json!({"type":"delete","messageId":2}));
    assert_eq!(h.fetches.len(), 1, "one lookup for both requests");
    let (fetch, _) = h.fetches[0].clone();
    answer_all(&mut h);
    assert_eq!(h.acks(1)[0].seq, Some(11));
    assert_eq!(h.acks(2)[0].seq, Some(12));
    // A late (duplicated) answer with the stored version never overwrites memory.
    h.input(Input::Fetched {
        fetch,
        result: Ok(h.stored(&Lookup::Message { id: 2 })),
    });
    h.send(
        1,
        json!({"type":"edit","messageId":2,"content":"f","expectedVersion":1}),
    );
    assert_eq!(h.last_error(1), ErrorCode::Conflict, "deleted in memory");
    assert!(h.fetches.is_empty());
    // The same for a reaction key toggled while the first lookup was answered.
    h.connect(3, "bob", &["member"]);
    h.connect(4, "bob", &["member"]);
    h.send(3, json!({"type":"reaction","messageId":4,"emoji":"🎉"}));
    h.send(4, json!({"type":"reaction","messageId":4,"emoji":"🎉"}));
    answer_all(&mut h);
    assert!(h.acks(3)[0].seq.is_some(), "added");
    assert_eq!(h.acks(4)[0].seq, None, "already added in memory");
}

#[test]
fn wake_up_fetch_failure_answers_internal_error_and_the_queue_goes_on() {
    let mut h = woken();
    h.connect(1, "alice", &["member"]);
    h.send(
        1,
        json!({"type":"edit","messageId":1,"content":"e","ref":"x"}),
    );
    h.send(1, json!({"type":"message","content":"next","ref":"y"}));
    h.answer_fetch(false);
    let e = h.errors(1).pop().expect("an error");
    assert_eq!(e.code, ErrorCode::InternalError);
    assert_eq!(e.reference.as_deref(), Some("x"));
    assert!(e.retryable);
    assert_eq!(h.acks(1)[0].reference.as_deref(), Some("y"));
    // Retrying works.
    h.send(
        1,
        json!({"type":"edit","messageId":1,"content":"e","ref":"z"}),
    );
    answer_all(&mut h);
    assert_eq!(h.acks(1)[1].reference.as_deref(), Some("z"));
    // A POST waiting for a lookup gets a 500-class answer.
    h.input(Input::Post {
        request: 9,
        identity: ident("alice", &["member"]),
        frame: fluxy_protocol::client::SendMessageFrame {
            content: "p".into(),
            client_message_id: Some("key-000zz".into()),
            parent_id: None,
            attachments: Vec::new(),
            reference: None,
        },
    });
    assert!(h.posts.is_empty());
    h.answer_fetch(false);
    let (r, res) = h.posts.last().expect("answered");
    assert_eq!(*r, 9);
    assert_eq!(res.as_ref().unwrap_err().code, ErrorCode::InternalError);
}

#[test]
fn wake_up_parked_queue_is_bounded_and_rate_limited_on_receipt() {
    let mut c = cfg(Faults::NONE);
    c.rate_burst = 3;
    c.rate_per_second = 10;
    let mut h = H::with(
        c,
        LoadedRoom {
            current_seq: 10,
            ..LoadedRoom::default()
        },
    );
    h.auto_fetch = false;
    h.connect(1, "alice", &["member"]);
    for i in 0..3 {
        h.send(
            1,
            json!({"type":"edit","messageId":1,"content":"e","ref":format!("r{i}")}),
        );
    }
    // The bucket is empty: refused on receipt, not queued.
    h.send(1, json!({"type":"message","content":"m","ref":"r3"}));
    assert_eq!(h.last_error(1), ErrorCode::RateLimited);
    // A token again, but the queue is full (burst): unavailable, retry after one token's time.
    h.now += 100;
    h.send(1, json!({"type":"message","content":"m","ref":"r4"}));
    let e = h.errors(1).pop().unwrap();
    assert_eq!(e.code, ErrorCode::Unavailable);
    assert!(e.retryable);
    assert_eq!(e.retry_after_ms, Some(100));
    assert_eq!(e.reference.as_deref(), Some("r4"));
    assert_eq!(h.room.parked_requests(), 3);
    // A closed connection's waiting frames are dropped; its lookup answers are harmless.
    h.input(Input::Closed { conn: 1 });
    assert_eq!(h.room.parked_requests(), 0);
    answer_all(&mut h);
    assert!(h.acks(1).is_empty());
}

#[test]
fn wake_up_failed_commit_answers_waiting_posts() {
    let mut h = woken();
    h.auto_commit = false;
    h.connect(1, "alice", &["member"]);
    h.send(1, json!({"type":"message","content":"in flight"}));
    h.input(Input::Post {
        request: 3,
        identity: ident("alice", &["member"]),
        frame: fluxy_protocol::client::SendMessageFrame {
            content: "p".into(),
            client_message_id: None,
            parent_id: Some(2),
            attachments: Vec::new(),
            reference: None,
        },
    });
    let (b, _) = h.batches.pop_front().unwrap();
    h.input(Input::CommitFailed { batch: b });
    assert!(h.posts.iter().any(|(r, res)| *r == 3
        && res
            .as_ref()
            .is_err_and(|e| e.code == ErrorCode::InternalError)));
    // The failed room ignores the late answer.
    answer_all(&mut h);
    assert_eq!(h.posts.iter().filter(|(r, _)| *r == 3).count(), 1);
}

#[test]
fn lookup_rows_turn_into_answers() {
    use fluxy_room::sql::SqlValue as V;
    let t = |s: &str| V::Text(s.into());
    let m = Lookup::Message { id: 9 };
    assert_eq!(m.columns().len(), 4);
    assert_eq!(
        m.found(Some(&[t("bob"), V::Int(3), V::Int(1), V::Int(0)])),
        Ok(Found::Message(Some(fluxy_room::MessageRow {
            id: 9,
            user_id: "bob".into(),
            version: 3,
            deleted: true,
            streaming: false,
        })))
    );
    assert_eq!(
        m.found(Some(&[t("bob"), V::Int(1), V::Int(0), V::Int(1)])),
        Ok(Found::Message(Some(fluxy_room::MessageRow {
            id: 9,
            user_id: "bob".into(),
            version: 1,
            deleted: false,
            streaming: true,
        })))
    );
    assert_eq!(m.found(None), Ok(Found::Message(None)));
    // Wrong shapes fail instead of guessing.
    assert_eq!(m.found(Some(&[V::Int(1)])), Err(FetchFailed));
    assert_eq!(
        m.found(Some(&[t("bob"), t("x"), V::Int(0), V::Int(0)])),
        Err(FetchFailed)
    );
    assert_eq!(
        m.found(Some(&[t("bob"), V::Int(-1), V::Int(0), V::Int(0)])),
        Err(FetchFailed)
    );
    let r = Lookup::Reaction {
        message_id: 1,
        user_id: "u".into(),
        emoji: "👍".into(),
    };
    assert_eq!(r.found(Some(&[V::Int(1)])), Ok(Found::Reaction(true)));
    assert_eq!(r.found(None), Ok(Found::Reaction(false)));
    let rd = Lookup::Read {
        user_id: "u".into(),
    };
    assert_eq!(rd.found(Some(&[V::Int(7)])), Ok(Found::Read(Some(7))));
    assert_eq!(rd.found(None), Ok(Found::Read(None)));
    assert_eq!(rd.found(Some(&[V::Null])), Err(FetchFailed));
    let k = Lookup::Idempotency {
        user_id: "u".into(),
        client_message_id: "key-00001".into(),
    };
    let row = |seq, id: Option<u64>| {
        Found::Idempotency(Some(fluxy_room::IdempotencyRow {
            user_id: "u".into(),
            client_message_id: "key-00001".into(),
            seq,
            message_id: id,
            created_ms: 5,
        }))
    };
    assert_eq!(
        k.found(Some(&[V::Int(4), V::Null, V::Int(5)])),
        Ok(row(4, None))
    );
    assert_eq!(
        k.found(Some(&[V::Int(4), V::Int(4), V::Int(5)])),
        Ok(row(4, Some(4)))
    );
    assert_eq!(k.found(None), Ok(Found::Idempotency(None)));
    let run = Lookup::Run {
        agent_id: "a".into(),
        run_id: "r".into(),
    };
    for (v, terminal) in [(1, true), (0, false)] {
        assert_eq!(
            run.found(Some(&[V::Int(v)])),
            Ok(Found::Run(Some(fluxy_room::RunRow {
                agent_id: "a".into(),
                run_id: "r".into(),
                terminal,
                ..Default::default()
            })))
        );
    }
    assert_eq!(run.found(None), Ok(Found::Run(None)));
    // Every statement binds tenant and room first, and asks for the columns it parses.
    for l in [m, r, rd, k, run] {
        let s = l.statement(&"t1".into(), &"r1".into(), 0);
        assert_eq!(s.params[..2], [V::from("t1"), V::from("r1")]);
        for c in l.columns() {
            assert!(s.sql.contains(c), "{} lacks {c}", s.sql);
        }
    }
}

#[test]
fn run_rows_assemble_from_the_open_run_queries() {
    let runs = fluxy_room::RunRow::assemble(
        [
            ("a".to_owned(), "r1".to_owned(), false),
            ("a".to_owned(), "r2".to_owned(), true),
        ],
        [
            (
                "a".into(),
                "r1".into(),
                sql::ITEM_TOOL_CALL.into(),
                "c1".into(),
                true,
            ),
            (
                "a".into(),
                "r2".into(),
                sql::ITEM_APPROVAL.into(),
                "p1".into(),
                true,
            ),
            (
                "b".into(),
                "r1".into(),
                sql::ITEM_TOOL_CALL.into(),
                "zz".into(),
                true,
            ),
        ],
    );
    assert_eq!(
        runs,
        vec![
            fluxy_room::RunRow {
                agent_id: "a".into(),
                run_id: "r1".into(),
                terminal: false,
                tool_calls: vec![("c1".into(), true)],
                approvals: vec![],
            },
            fluxy_room::RunRow {
                agent_id: "a".into(),
                run_id: "r2".into(),
                terminal: true,
                tool_calls: vec![],
                approvals: vec![("p1".into(), true)],
            },
        ]
    );
}

#[test]
fn wake_up_answers_of_the_wrong_shape_count_as_failures() {
    let mut h = woken();
    h.connect(1, "alice", &["member"]);
    // A row for another message, and an answer of another kind: internal_error, not a guess.
    for (k, wrong) in [
        Found::Message(Some(fluxy_room::MessageRow {
            id: 2,
            user_id: "alice".into(),
            version: 1,
            deleted: false,
            streaming: false,
        })),
        Found::Read(Some(1)),
    ]
    .into_iter()
    .enumerate()
    {
        h.send(
            1,
            json!({"type":"edit","messageId":1,"content":"e","ref":format!("w{k}")}),
        );
        let (fetch, lookup) = h.fetches.pop_front().expect("a lookup");
        assert_eq!(lookup, Lookup::Message { id: 1 });
        h.input(Input::Fetched {
            fetch,
            result: Ok(wrong),
        });
        let e = h.errors(1).pop().expect("an error");
        assert_eq!(e.code, ErrorCode::InternalError);
        assert_eq!(e.reference, Some(format!("w{k}")));
    }
    // Nothing was cached from them: the next edit looks the message up again.
    h.send(
        1,
        json!({"type":"edit","messageId":1,"content":"e","ref":"ok"}),
    );
    answer_all(&mut h);
    assert_eq!(h.acks(1)[0].seq, Some(11));
    assert_eq!(h.looked_up.len(), 3);
}

#[test]
fn wake_up_parent_lookup_for_replies_and_streams() {
    let mut h = woken();
    h.connect(1, "bob", &["member"]);
    h.send(1, json!({"type":"message","content":"re","parentId":2}));
    assert_eq!(h.looked_up, vec![Lookup::Message { id: 2 }]);
    answer_all(&mut h);
    assert_eq!(h.acks(1)[0].seq, Some(11), "a reply to a stored message");
    h.send(1, json!({"type":"message","content":"re","parentId":6}));
    answer_all(&mut h);
    assert_eq!(h.last_error(1), ErrorCode::NotFound, "6 is not a message");
    h.send(
        1,
        json!({"type":"stream","op":"start","content":"s","parentId":4}),
    );
    assert_eq!(h.looked_up.last(), Some(&Lookup::Message { id: 4 }));
    answer_all(&mut h);
    assert_eq!(
        h.acks(1)[1].seq,
        Some(12),
        "a streamed reply to a stored message"
    );
    // A stream op on an old message looks it up too (alice's, not streaming: refused).
    h.send(
        1,
        json!({"type":"stream","op":"delta","messageId":1,"content":"d"}),
    );
    answer_all(&mut h);
    assert_eq!(h.looked_up.last(), Some(&Lookup::Message { id: 1 }));
    assert_eq!(h.last_error(1), ErrorCode::Forbidden);
}
