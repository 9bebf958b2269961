//! Sequencing and group commit: seq allocation, persistence batches, ack and broadcast release in seq order, the ring of recent events, idempotency keys.

use super::*;

impl Room {
    /// The committed events with seq > `after`, ascending, as (seq, type, body), if the
    /// in-memory window still covers that position (used by shells for SSE and polling
    /// without a storage read, and without parsing the bodies again).
    pub fn recent_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Option<Vec<(u64, &'static str, Arc<str>)>> {
        let first = self.ring.front().map_or(self.committed_seq + 1, |r| r.seq);
        if after + 1 < first {
            return None;
        }
        Some(
            self.ring
                .iter()
                .filter(|r| r.seq > after)
                .take(limit)
                .map(|r| (r.seq, r.event.type_name(), r.body.clone()))
                .collect(),
        )
    }

    /// [`Room::recent_after`] without seq and type: the bodies only.
    pub fn recent_bodies_after(&self, after: u64, limit: usize) -> Option<Vec<Arc<str>>> {
        self.recent_after(after, limit)
            .map(|v| v.into_iter().map(|(_, _, body)| body).collect())
    }

    /// Forget idempotency keys older than [`IDEMPOTENCY_TTL_MS`] (at most a bounded number per
    /// call; [`Room::duplicate`] ignores expired keys anyway, so pruning late is harmless).
    pub(super) fn prune_idempotency(&mut self, now_ms: u64) {
        for _ in 0..IDEM_PRUNE_BATCH {
            let expired = self
                .idem_order
                .front()
                .is_some_and(|(created, ..)| created.saturating_add(IDEMPOTENCY_TTL_MS) <= now_ms);
            if !expired {
                return;
            }
            let Some((_, user, cmid, seq)) = self.idem_order.pop_front() else {
                return;
            };
            let key = (user, cmid);
            if self.idem.get(&key).is_some_and(|e| e.seq == seq) {
                self.idem.remove(&key);
            }
        }
    }

    /// Route the outcome of a request: sequence an accepted event, release a no-op ack, or
    /// send the error.
    pub(super) fn finish(&mut self, who: Requester, r: Result<Option<Accepted>, ErrorFrame>) {
        match r {
            Ok(Some(a)) => self.sequence(who, a),
            Ok(None) => {}
            Err(e) => match who {
                Requester::Conn(c) => self.send_error(c, e),
                Requester::Post(request) => self.effects.push_back(Effect::PostDone {
                    request,
                    result: Err(e),
                }),
            },
        }
    }

    /// Release an ack that needs no new event, after every uncommitted event.
    pub(super) fn reply_now_or_later(&mut self, who: Requester, a: AckFrame) {
        if let Some(last) = self.queue.last_mut() {
            last.after.push((who, a));
        } else if let Some((_, b)) = self.in_flight.as_mut().filter(|(_, b)| !b.is_empty()) {
            if let Some(last) = b.last_mut() {
                last.after.push((who, a));
            }
        } else {
            self.deliver_ack(who, a);
        }
    }

    pub(super) fn deliver_ack(&mut self, who: Requester, a: AckFrame) {
        match who {
            Requester::Conn(c) => {
                if !self.cfg.faults.no_ack && self.conns.contains_key(&c) {
                    self.send(c, text_of(&ServerFrame::Ack(a)));
                }
            }
            Requester::Post(request) => {
                let event = a.seq.and_then(|s| self.ring_body(s));
                self.effects.push_back(Effect::PostDone {
                    request,
                    result: Ok(PostOutcome { ack: a, event }),
                });
            }
        }
    }

    pub(super) fn ring_body(&self, seq: u64) -> Option<Arc<str>> {
        let first = self.ring.front()?.seq;
        let idx = usize::try_from(seq.checked_sub(first)?).ok()?;
        self.ring.get(idx).map(|r| r.body.clone())
    }

    /// Duplicate check for an idempotency key. Returns true when handled.
    ///
    /// A key older than [`IDEMPOTENCY_TTL_MS`] is forgotten (it was honoured for 24 hours).
    pub(super) fn duplicate(
        &mut self,
        now_ms: u64,
        who: Requester,
        user: &str,
        cmid: Option<&str>,
        reference: Option<&str>,
    ) -> bool {
        let Some(cmid) = cmid else { return false };
        if self.cfg.faults.no_dedup {
            return false;
        }
        let key = (user.to_owned(), cmid.to_owned());
        let Some(e) = self.idem.get(&key) else {
            return false;
        };
        if e.created_ms.saturating_add(IDEMPOTENCY_TTL_MS) <= now_ms {
            self.idem.remove(&key);
            self.note_idem_absent(key);
            return false;
        }
        let a = AckFrame {
            reference: reference.map(str::to_owned),
            client_message_id: Some(cmid.to_owned()),
            id: e.id,
            seq: Some(e.seq),
            created_at: Some(format_timestamp(e.created_ms)),
            duplicate: true,
        };
        self.reply_now_or_later(who, a);
        true
    }

    /// The time stamp for the next timeline event: the clock, or the previous event's time
    /// stamp plus 1 ms when the clock has not advanced past it, so `createdAt` strictly
    /// increases with `seq` within the room, also across restarts `[FX-ORD-9]`.
    pub(super) fn event_ms(&self, now_ms: u64) -> u64 {
        now_ms.max(self.last_created_ms.saturating_add(1))
    }

    pub(super) fn alloc_seq(&mut self) -> u64 {
        if self.cfg.faults.skip_seq && !self.fault_state.skip_seq_fired && self.next_seq >= 3 {
            self.fault_state.skip_seq_fired = true;
            self.next_seq += 1;
        }
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    /// Assign the seq, build statements, queue for the next commit.
    pub(super) fn sequence(&mut self, who: Requester, a: Accepted) {
        let Accepted {
            event,
            mut ack,
            extra,
            idem,
        } = a;
        let Some(mut event) = event else {
            self.reply_now_or_later(who, ack);
            return;
        };
        let seq = self.alloc_seq();
        set_seq(&mut event, seq);
        let created_ms = created_ms_of(&event);
        self.last_created_ms = self.last_created_ms.max(created_ms);
        ack.seq = Some(seq);
        ack.created_at = Some(format_timestamp(created_ms));
        if ack.id.is_none() {
            if let TimelineEvent::Message(_) = event {
                ack.id = Some(seq);
            }
        }
        if let TimelineEvent::Message(m) = &mut event {
            m.id = seq;
        }
        self.apply_event(&event);
        let run_rows = self.agent_rows(&event);
        let kind = event.type_name();
        let body: Arc<str> = Arc::from(event.encode());
        if self.cfg.faults.ack_before_store
            && !self.fault_state.ack_before_store_fired
            && kind == "message"
        {
            // Fault: ack at once, then "lose" the write: the seq is reused by the next event.
            self.fault_state.ack_before_store_fired = true;
            self.next_seq -= 1;
            self.deliver_ack(who, ack);
            return;
        }
        let mut statements = Vec::with_capacity(2 + extra.len());
        statements.push(sql::insert_event(
            &self.cfg.tenant,
            &self.cfg.room_id,
            seq,
            kind,
            event.actor(),
            created_ms,
            &body,
        ));
        let mut statements_extra = extra;
        // Message rows need the final id.
        for s in &mut statements_extra {
            if s.sql == sql::INSERT_MESSAGE {
                s.params[2] = seq.into();
            }
        }
        statements.extend(statements_extra);
        statements.extend(run_rows);
        if let Some((user, cmid)) = idem {
            statements.push(sql::insert_idempotency(
                &self.cfg.tenant,
                &self.cfg.room_id,
                &user,
                &cmid,
                seq,
                ack.id,
                created_ms,
            ));
            self.idem_order
                .push_back((created_ms, user.clone(), cmid.clone(), seq));
            let key = (user, cmid);
            self.idem_absent.remove(&key);
            let (user, cmid) = key;
            self.idem.insert(
                (user, cmid),
                IdemEntry {
                    seq,
                    id: ack.id,
                    created_ms,
                },
            );
        }
        self.queue.push(Pending {
            seq,
            kind,
            event,
            body,
            requester: Some(who),
            ack: Some(ack),
            after: Vec::new(),
            statements,
        });
    }

    /// Start a write if none is in flight (group commit: everything queued goes together).
    pub(super) fn flush(&mut self) {
        if self.in_flight.is_some() || self.queue.is_empty() || self.failed {
            return;
        }
        let batch = self.next_batch;
        self.next_batch += 1;
        let items = std::mem::take(&mut self.queue);
        let statements: Vec<Stmt> = items
            .iter()
            .flat_map(|p| p.statements.iter().cloned())
            .collect();
        self.in_flight = Some((batch, items));
        self.effects
            .push_back(Effect::Persist { batch, statements });
    }

    pub(super) fn committed(&mut self, batch: u64) {
        let Some((b, items)) = self.in_flight.take() else {
            return;
        };
        if b != batch {
            self.in_flight = Some((b, items));
            return;
        }
        for p in items {
            self.committed_seq = p.seq;
            if let (Some(who), Some(a)) = (p.requester, p.ack) {
                match who {
                    Requester::Post(request) => self.effects.push_back(Effect::PostDone {
                        request,
                        result: Ok(PostOutcome {
                            ack: a,
                            event: Some(p.body.clone()),
                        }),
                    }),
                    Requester::Conn(_) => self.deliver_ack(who, a),
                }
            }
            let sender = match p.requester {
                Some(Requester::Conn(c)) => Some(c),
                _ => None,
            };
            self.release_broadcast(p.body.clone(), p.seq, p.kind, sender);
            self.push_ring(p.seq, p.event, p.body);
            for (who, a) in p.after {
                self.deliver_ack(who, a);
            }
        }
    }

    pub(super) fn release_broadcast(
        &mut self,
        body: Arc<str>,
        seq: u64,
        kind: &'static str,
        sender: Option<ConnId>,
    ) {
        let f = self.cfg.faults;
        let mut except = None;
        if f.drop_broadcast && !self.fault_state.drop_fired {
            if let Some(victim) = self.conns.keys().copied().find(|c| Some(*c) != sender) {
                self.fault_state.drop_fired = true;
                except = Some(victim);
            }
        }
        let e = Effect::Broadcast {
            frame: body,
            except,
            seq: Some(seq),
            kind,
        };
        if f.reorder_broadcast {
            if !self.fault_state.reorder_fired {
                self.fault_state.reorder_fired = true;
                self.fault_state.held = Some(e);
                return;
            }
            self.effects.push_back(e);
            if let Some(h) = self.fault_state.held.take() {
                self.effects.push_back(h);
            }
            return;
        }
        self.effects.push_back(e);
    }

    pub(super) fn push_ring(&mut self, seq: u64, event: TimelineEvent, body: Arc<str>) {
        self.ring.push_back(Recent { seq, event, body });
        while self.ring.len() > self.ring_cap {
            self.ring.pop_front();
        }
    }

    pub(super) fn commit_failed(&mut self, batch: u64) {
        if !matches!(&self.in_flight, Some((b, _)) if *b == batch) {
            return;
        }
        self.failed = true;
        // Every POST waiting on these events gets an answer: the requesters of the events and
        // the duplicate or no-op requests released after them (`after`).
        let post_requests = |p: &Pending| -> Vec<u64> {
            p.requester
                .iter()
                .chain(p.after.iter().map(|(who, _)| who))
                .filter_map(|who| match who {
                    Requester::Post(r) => Some(*r),
                    Requester::Conn(_) => None,
                })
                .collect()
        };
        let mut posts = Vec::new();
        if let Some((_, items)) = self.in_flight.take() {
            posts.extend(items.iter().flat_map(post_requests));
        }
        posts.extend(self.queue.drain(..).flat_map(|p| post_requests(&p)));
        // Requests waiting for a fetch: POSTs get the same answer, frames go with their
        // connection; results of fetches in flight are ignored from now on.
        for who in std::mem::take(&mut self.parked).into_keys() {
            if let Requester::Post(r) = who {
                posts.push(r);
            }
        }
        self.fetches.clear();
        self.fetching.clear();
        for request in posts {
            self.effects.push_back(Effect::PostDone {
                request,
                result: Err(err(ErrorCode::InternalError, "storage failed", None)),
            });
        }
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            self.effects.push_back(Effect::Close {
                conn: id,
                code: CloseCode::InternalError,
            });
        }
        self.conns.clear();
        self.users.clear();
        self.effects.push_back(Effect::Reset);
    }
}
