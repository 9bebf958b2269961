//! Connections and presence: open and restore, the connect snapshot and resume, timeouts, rate limits, presence and typing, in-band `auth`.

use super::*;

impl Room {
    /// Count an invalid frame; close with 4010 when the streak reaches the policy's limit.
    pub(super) fn count_invalid(&mut self, conn: ConnId) {
        let Some(max) = self.policy.max_invalid_streak else {
            return;
        };
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.invalid_streak = c.invalid_streak.saturating_add(1);
        if c.invalid_streak >= max.max(1) {
            self.close(conn, CloseCode::ProtocolViolation);
        }
    }

    /// Count a frame refused by the rate limit; true when the connection was closed with 4008.
    pub(super) fn count_rate_reject(&mut self, conn: ConnId, now_ms: u64) -> bool {
        let Some(max) = self.policy.max_rate_rejects else {
            return false;
        };
        let window = match self.policy.rate_abuse_window_ms {
            0 => (u64::from(self.cfg.rate_burst) * 1000
                / u64::from(self.cfg.rate_per_second.max(1)))
            .max(1000),
            w => w,
        };
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        if now_ms.saturating_sub(c.reject_window_start_ms) >= window {
            c.reject_window_start_ms = now_ms;
            c.rate_rejects = 0;
        }
        c.rate_rejects = c.rate_rejects.saturating_add(1);
        if c.rate_rejects >= max.max(1) {
            self.close(conn, CloseCode::RateLimited);
            return true;
        }
        false
    }

    // ------------------------------------------------------------------ connections

    pub(super) fn open(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        identity: Identity,
        options: ConnectOptions,
    ) {
        let user = identity.user_id.clone();
        let welcome = ServerFrame::Welcome(WelcomeFrame {
            protocol_version: PROTOCOL_VERSION.to_owned(),
            room_id: self.cfg.room_id.to_string(),
            user_id: user.clone(),
            roles: identity.roles.clone(),
            connection_id: format!("c{conn}"),
            current_seq: self.committed_seq,
            heartbeat_interval_ms: (self.cfg.idle_timeout_ms / 2).max(1),
            idle_timeout_ms: self.cfg.idle_timeout_ms,
            token_expires_at: format_timestamp(identity.token_exp.saturating_mul(1000)),
            limits: self.limits(),
        });
        self.conns.insert(
            conn,
            Conn {
                identity,
                last_rx_ms: now_ms,
                tokens: f64::from(self.cfg.rate_burst),
                last_refill_ms: now_ms,
                invalid_streak: 0,
                rate_rejects: 0,
                reject_window_start_ms: now_ms,
            },
        );
        self.send(conn, text_of(&welcome));
        if let Some(last) = options.last_seq {
            match self.replay(last, None) {
                Ok(r) => self.send(conn, text_of(&ServerFrame::Replay(r))),
                Err(e) => {
                    self.send_error(conn, e);
                    self.snapshot(conn, options.replay_limit, options.compat);
                }
            }
        } else if options.replay {
            self.snapshot(conn, options.replay_limit, options.compat);
        }
        let first = {
            let n = self.users.entry(user.clone()).or_insert(0);
            *n += 1;
            *n == 1
        };
        self.ghosts.remove(&user);
        let sub = ServerFrame::SubscriptionSucceeded(SubscriptionSucceededFrame {
            room_id: self.cfg.room_id.to_string(),
            socket_id: format!("c{conn}"),
            subscription_count: u32::try_from(self.conns.len()).unwrap_or(u32::MAX),
        });
        self.send(conn, text_of(&sub));
        if first {
            let j = ServerFrame::MemberJoined(MemberPresenceEvent {
                room_id: self.cfg.room_id.to_string(),
                user_id: user,
            });
            self.broadcast(text_of(&j), Some(conn), None, "member_joined");
        }
        self.broadcast_presence();
    }

    pub(super) fn restore(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        identity: Identity,
        last_rx_ms: u64,
    ) {
        if self.conns.contains_key(&conn) {
            return;
        }
        let user = identity.user_id.clone();
        self.conns.insert(
            conn,
            Conn {
                identity,
                last_rx_ms,
                tokens: f64::from(self.cfg.rate_burst),
                last_refill_ms: now_ms,
                invalid_streak: 0,
                rate_rejects: 0,
                reject_window_start_ms: now_ms,
            },
        );
        *self.users.entry(user.clone()).or_insert(0) += 1;
        self.ghosts.remove(&user);
    }

    pub(super) fn snapshot(&mut self, conn: ConnId, limit: u32, compat: bool) {
        let limit = limit.min(MAX_PAGE_LIMIT) as usize;
        let skip = self.ring.len().saturating_sub(limit);
        let events: Vec<TimelineEvent> = self
            .ring
            .iter()
            .skip(skip)
            .map(|r| r.event.clone())
            .collect();
        let has_more = match events.first() {
            Some(e) => e.seq() > 1,
            None => self.committed_seq > 0,
        };
        let (messages, reactions) = if compat {
            let (m, r) = crate::compat::snapshot_rows(self.ring.iter().map(|r| &r.event), limit);
            (Some(m), Some(r))
        } else {
            (None, None)
        };
        let h = ServerFrame::History(HistoryFrame {
            room_id: self.cfg.room_id.to_string(),
            events,
            current_seq: self.committed_seq,
            has_more,
            messages,
            reactions,
        });
        self.send(conn, text_of(&h));
    }

    pub(super) fn remove_conn(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        // Frames waiting for a fetch go with the connection (nobody to answer).
        self.parked.remove(&Requester::Conn(conn));
        let user = c.identity.user_id;
        let last = match self.users.get_mut(&user) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => {
                self.users.remove(&user);
                true
            }
        };
        if last {
            if self.cfg.faults.ghost_presence {
                self.ghosts.insert(user);
            } else {
                let l = ServerFrame::MemberLeft(MemberPresenceEvent {
                    room_id: self.cfg.room_id.to_string(),
                    user_id: user,
                });
                self.broadcast(text_of(&l), None, None, "member_left");
            }
        }
        self.broadcast_presence();
    }

    pub(super) fn close(&mut self, conn: ConnId, code: CloseCode) {
        if self.conns.contains_key(&conn) {
            self.effects.push_back(Effect::Close { conn, code });
            self.remove_conn(conn);
        }
    }

    pub(super) fn broadcast_presence(&mut self) {
        let mut users: BTreeMap<String, u32> = self.users.clone();
        for g in &self.ghosts {
            users.entry(g.clone()).or_insert(1);
        }
        let p = ServerFrame::Presence(PresenceFrame {
            room_id: self.cfg.room_id.to_string(),
            online: users.values().sum(),
            users: users.keys().cloned().collect(),
            members: users
                .into_iter()
                .map(|(user_id, connections)| PresenceMember {
                    user_id,
                    connections,
                })
                .collect(),
        });
        self.broadcast(text_of(&p), None, None, "presence");
    }

    pub(super) fn limits(&self) -> Limits {
        Limits {
            max_frame_bytes: MAX_FRAME_BYTES as u64,
            max_content_chars: MAX_CONTENT_CHARS as u64,
            rate_burst: u64::from(self.cfg.rate_burst),
            rate_per_second: u64::from(self.cfg.rate_per_second),
            resume_window: u64::from(self.cfg.resume_window),
            max_page_limit: u64::from(MAX_PAGE_LIMIT),
        }
    }

    // ---------------------------------------------------------------------- frames

    pub(super) fn send(&mut self, conn: ConnId, frame: Arc<str>) {
        self.effects.push_back(Effect::Send { conn, frame });
    }

    pub(super) fn send_error(&mut self, conn: ConnId, e: ErrorFrame) {
        self.send(conn, text_of(&ServerFrame::Error(e)));
    }

    pub(super) fn broadcast(
        &mut self,
        frame: Arc<str>,
        except: Option<ConnId>,
        seq: Option<u64>,
        kind: &'static str,
    ) {
        self.effects.push_back(Effect::Broadcast {
            frame,
            except,
            seq,
            kind,
        });
    }

    /// Take one token from the connection's bucket; `Err(retry_after_ms)` when empty.
    pub(super) fn take_token(&mut self, conn: ConnId, now_ms: u64) -> Result<(), u64> {
        if self.cfg.faults.no_rate_limit {
            return Ok(());
        }
        let burst = f64::from(self.cfg.rate_burst.max(1));
        let rate = f64::from(self.cfg.rate_per_second.max(1));
        let Some(c) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        let elapsed = now_ms.saturating_sub(c.last_refill_ms) as f64;
        c.tokens = (c.tokens + elapsed * rate / 1000.0).min(burst);
        c.last_refill_ms = now_ms;
        if c.tokens >= 1.0 {
            c.tokens -= 1.0;
            Ok(())
        } else {
            let wait = ((1.0 - c.tokens) * 1000.0 / rate).ceil() as u64;
            Err(wait.max(1))
        }
    }

    // ------------------------------------------------------------------- replay

    pub(super) fn replay(
        &self,
        last_seq: u64,
        reference: Option<&str>,
    ) -> Result<ReplayFrame, ErrorFrame> {
        let current = self.committed_seq;
        let f = self.cfg.faults;
        let resync = || {
            err(
                ErrorCode::ResyncRequired,
                "cannot replay from that position; fetch history",
                reference,
            )
        };
        if last_seq > current {
            return Err(resync());
        }
        let first = self.ring.front().map_or(current + 1, |r| r.seq);
        let too_old =
            current - last_seq > u64::from(self.cfg.resume_window) || last_seq + 1 < first;
        if too_old && !f.no_resync {
            return Err(resync());
        }
        let mut events: Vec<TimelineEvent> = self
            .ring
            .iter()
            .filter(|r| r.seq > last_seq)
            .take(MAX_PAGE_LIMIT as usize)
            .map(|r| r.event.clone())
            .collect();
        if f.resume_off_by_one && !events.is_empty() {
            events.remove(0);
        }
        let last = events.last().map_or(last_seq, TimelineEvent::seq);
        Ok(ReplayFrame {
            room_id: self.cfg.room_id.to_string(),
            has_more: last < current,
            events,
            from_seq: last_seq,
            current_seq: current,
            reference: reference.map(str::to_owned),
        })
    }

    pub(super) fn on_typing(&mut self, conn: ConnId, id: &Identity, f: TypingFrame) {
        let intent = if f.is_typing {
            match f.intent {
                Some(TypingIntent::Idle) | None => TypingIntent::Composing,
                Some(i) => i,
            }
        } else {
            TypingIntent::Idle
        };
        let t = text_of(&ServerFrame::Typing(TypingEvent {
            room_id: self.room(),
            user_id: id.user_id.clone(),
            is_typing: f.is_typing,
            intent,
        }));
        if self.cfg.faults.typing_to_sender_only {
            self.send(conn, t);
        } else {
            self.broadcast(t, Some(conn), None, "typing");
        }
    }

    pub(super) fn on_auth(&mut self, now_ms: u64, conn: ConnId, id: &Identity, f: AuthFrame) {
        let secret = self.cfg.jwt_secret.clone();
        let tenant = self.cfg.tenant.clone();
        let r = verify_token(&f.token, now_ms / 1000, &self.cfg.faults, |t| {
            (t == &*tenant).then(|| secret.clone())
        });
        let claims = match r {
            Ok(c) => c,
            Err(e) => {
                let code = e.code();
                self.send_error(conn, err(code, e.to_string(), f.reference.as_deref()));
                return;
            }
        };
        if claims.sub != id.user_id || claims.tid != *self.cfg.tenant {
            self.send_error(
                conn,
                err(
                    ErrorCode::Forbidden,
                    "the new token must have the same sub and tid",
                    f.reference.as_deref(),
                ),
            );
            return;
        }
        let changed = self.conns.get_mut(&conn).map(|c| {
            c.identity.token_exp = claims.exp;
            c.identity.roles.clone_from(&claims.roles);
            c.identity.clone()
        });
        let t = ServerFrame::TokenRefreshed(TokenRefreshedFrame {
            token_expires_at: format_timestamp(claims.exp.saturating_mul(1000)),
            roles: claims.roles,
            reference: f.reference,
        });
        self.send(conn, text_of(&t));
        if let Some(identity) = changed {
            self.effects
                .push_back(Effect::IdentityChanged { conn, identity });
        }
    }
}
