//! Messages and edits: send, edit, delete, reactions, read positions and streamed messages, and how committed events update message state.

use super::*;

impl Room {
    // ------------------------------------------------------------------ handlers

    pub(super) fn room(&self) -> String {
        self.cfg.room_id.to_string()
    }

    pub(super) fn on_message(
        &mut self,
        now_ms: u64,
        id: &Identity,
        spoofed_user: Option<String>,
        f: SendMessageFrame,
    ) -> Outcome {
        if self.room_type == RoomType::Announcement && !id.may_moderate() {
            return Err(err(
                ErrorCode::Forbidden,
                "only owners, admins and moderators may post here",
                None,
            ));
        }
        let user = spoofed_user.unwrap_or_else(|| id.user_id.clone());
        if let Some(p) = f.parent_id {
            if !self.messages.contains_key(&p) {
                return Err(field_err(
                    ErrorCode::NotFound,
                    "no such parent message",
                    "parentId",
                ));
            }
        }
        Ok(Some(Accepted {
            idem: f.client_message_id.clone().map(|c| (user.clone(), c)),
            ack: ack(f.reference.as_deref(), f.client_message_id.as_deref()),
            extra: vec![sql::insert_message(
                &self.cfg.tenant,
                &self.cfg.room_id,
                0,
                &user,
                f.content.trim(),
                now_ms,
                f.parent_id,
                false,
                f.client_message_id.as_deref(),
                attachments_json(&f.attachments).as_deref(),
            )],
            event: Some(TimelineEvent::Message(MessageEvent {
                seq: 0,
                id: 0,
                room_id: self.room(),
                user_id: user.clone(),
                sender_id: user,
                content: f.content.trim().to_owned(),
                created_at: format_timestamp(now_ms),
                parent_id: f.parent_id,
                client_message_id: f.client_message_id,
                attachments: f.attachments,
                version: 1,
                streaming: false,
            })),
        }))
    }

    pub(super) fn on_edit(&mut self, now_ms: u64, id: &Identity, f: EditFrame) -> Outcome {
        let m = self
            .messages
            .get(&f.message_id)
            .ok_or_else(|| field_err(ErrorCode::NotFound, "no such message", "messageId"))?;
        if m.author != id.user_id && !self.cfg.faults.edit_any_author {
            return Err(err(ErrorCode::Forbidden, "only the author may edit", None));
        }
        if m.deleted {
            return Err(err(ErrorCode::Conflict, "the message is deleted", None));
        }
        if m.streaming {
            return Err(err(
                ErrorCode::InvalidState,
                "the message is streaming",
                None,
            ));
        }
        if let Some(v) = f.expected_version {
            if v != m.version {
                return Err(field_err(
                    ErrorCode::Conflict,
                    "version mismatch",
                    "expectedVersion",
                ));
            }
        }
        let version = m.version + 1;
        let mut a = ack(f.reference.as_deref(), f.client_message_id.as_deref());
        a.id = Some(f.message_id);
        Ok(Some(Accepted {
            idem: f.client_message_id.map(|c| (id.user_id.clone(), c)),
            ack: a,
            extra: vec![sql::update_message_content(
                &self.cfg.tenant,
                &self.cfg.room_id,
                f.message_id,
                f.content.trim(),
                version,
                now_ms,
                false,
            )],
            event: Some(TimelineEvent::Edit(EditEvent {
                seq: 0,
                id: f.message_id,
                room_id: self.room(),
                user_id: id.user_id.clone(),
                content: f.content.trim().to_owned(),
                edited_at: format_timestamp(now_ms),
                version,
                streaming: false,
            })),
        }))
    }

    pub(super) fn on_delete(&mut self, now_ms: u64, id: &Identity, f: DeleteFrame) -> Outcome {
        let m = self
            .messages
            .get(&f.message_id)
            .ok_or_else(|| field_err(ErrorCode::NotFound, "no such message", "messageId"))?;
        if m.author != id.user_id && !id.may_moderate() && !self.cfg.faults.delete_any_user {
            return Err(err(
                ErrorCode::Forbidden,
                "only the author or a moderator may delete",
                None,
            ));
        }
        if m.deleted {
            return Err(err(ErrorCode::Conflict, "already deleted", None));
        }
        let version = m.version + 1;
        let mut a = ack(f.reference.as_deref(), f.client_message_id.as_deref());
        a.id = Some(f.message_id);
        Ok(Some(self.delete_event(
            now_ms,
            id,
            f.message_id,
            version,
            a,
            f.client_message_id,
        )))
    }

    pub(super) fn delete_event(
        &self,
        now_ms: u64,
        id: &Identity,
        message_id: u64,
        version: u32,
        a: AckFrame,
        cmid: Option<String>,
    ) -> Accepted {
        Accepted {
            idem: cmid.map(|c| (id.user_id.clone(), c)),
            ack: a,
            extra: vec![sql::delete_message(
                &self.cfg.tenant,
                &self.cfg.room_id,
                message_id,
                version,
            )],
            event: Some(TimelineEvent::Delete(DeleteEvent {
                seq: 0,
                id: message_id,
                room_id: self.room(),
                user_id: id.user_id.clone(),
                deleted_at: format_timestamp(now_ms),
                version,
            })),
        }
    }

    pub(super) fn on_reaction(&mut self, now_ms: u64, id: &Identity, f: ReactionFrame) -> Outcome {
        match self.messages.get(&f.message_id) {
            Some(m) if !m.deleted => {}
            Some(_) => return Err(err(ErrorCode::Conflict, "the message is deleted", None)),
            None => {
                return Err(field_err(
                    ErrorCode::NotFound,
                    "no such message",
                    "messageId",
                ))
            }
        }
        let key = (f.message_id, id.user_id.clone(), f.emoji.clone());
        let present = self.reactions.get(&key).copied().unwrap_or(false);
        let add = f.op == ReactionOp::Add;
        let mut a = ack(f.reference.as_deref(), None);
        a.id = Some(f.message_id);
        if present == add {
            return Ok(Some(Accepted::noop(a)));
        }
        Ok(Some(Accepted {
            idem: None,
            ack: a,
            extra: vec![sql::reaction(
                &self.cfg.tenant,
                &self.cfg.room_id,
                add,
                f.message_id,
                &id.user_id,
                &f.emoji,
                now_ms,
            )],
            event: Some(TimelineEvent::Reaction(ReactionEvent {
                seq: 0,
                room_id: self.room(),
                user_id: id.user_id.clone(),
                message_id: f.message_id,
                emoji: f.emoji,
                op: f.op,
                created_at: format_timestamp(now_ms),
            })),
        }))
    }

    pub(super) fn on_read(&mut self, now_ms: u64, id: &Identity, f: ReadFrame) -> Outcome {
        if !self.messages.contains_key(&f.message_id) {
            return Err(field_err(
                ErrorCode::NotFound,
                "no such message",
                "messageId",
            ));
        }
        let mut a = ack(f.reference.as_deref(), None);
        a.id = Some(f.message_id);
        if self
            .reads
            .get(&id.user_id)
            .copied()
            .flatten()
            .is_some_and(|r| r >= f.message_id)
        {
            return Ok(Some(Accepted::noop(a)));
        }
        Ok(Some(Accepted {
            idem: None,
            ack: a,
            extra: vec![sql::upsert_read(
                &self.cfg.tenant,
                &self.cfg.room_id,
                &id.user_id,
                f.message_id,
            )],
            event: Some(TimelineEvent::Read(ReadEvent {
                seq: 0,
                room_id: self.room(),
                user_id: id.user_id.clone(),
                message_id: f.message_id,
                created_at: format_timestamp(now_ms),
            })),
        }))
    }

    pub(super) fn on_stream(&mut self, now_ms: u64, id: &Identity, f: StreamFrame) -> Outcome {
        if f.op == StreamOp::Start {
            if self.room_type == RoomType::Announcement && !id.may_moderate() {
                return Err(err(
                    ErrorCode::Forbidden,
                    "only owners, admins and moderators may post here",
                    None,
                ));
            }
            let mut m = self.on_message(
                now_ms,
                id,
                None,
                SendMessageFrame {
                    content: "x".into(),
                    client_message_id: f.client_message_id.clone(),
                    parent_id: f.parent_id,
                    attachments: Vec::new(),
                    reference: f.reference.clone(),
                },
            )?;
            if let Some(a) = m.as_mut() {
                let content = f.content.trim().to_owned();
                if let Some(TimelineEvent::Message(ev)) = &mut a.event {
                    ev.content.clone_from(&content);
                    ev.streaming = true;
                }
                if let Some(s) = a.extra.first_mut() {
                    s.params[4] = content.as_str().into();
                    s.params[8] = true.into();
                }
            }
            return Ok(m);
        }
        let mid = f.message_id.ok_or_else(|| {
            field_err(
                ErrorCode::InvalidFrame,
                "messageId is required",
                "messageId",
            )
        })?;
        let m = self
            .messages
            .get(&mid)
            .ok_or_else(|| field_err(ErrorCode::NotFound, "no such message", "messageId"))?;
        if m.author != id.user_id {
            return Err(err(
                ErrorCode::Forbidden,
                "only the author may continue a stream",
                None,
            ));
        }
        if m.deleted {
            return Err(err(ErrorCode::Conflict, "the message is deleted", None));
        }
        if !m.streaming {
            return Err(err(
                ErrorCode::InvalidState,
                "the message is not streaming",
                None,
            ));
        }
        let version = m.version + 1;
        let mut a = ack(f.reference.as_deref(), f.client_message_id.as_deref());
        a.id = Some(mid);
        if f.op == StreamOp::Abort {
            return Ok(Some(self.delete_event(
                now_ms,
                id,
                mid,
                version,
                a,
                f.client_message_id,
            )));
        }
        let streaming = f.op == StreamOp::Delta;
        Ok(Some(Accepted {
            idem: f.client_message_id.map(|c| (id.user_id.clone(), c)),
            ack: a,
            extra: vec![sql::update_message_content(
                &self.cfg.tenant,
                &self.cfg.room_id,
                mid,
                f.content.trim(),
                version,
                now_ms,
                streaming,
            )],
            event: Some(TimelineEvent::Edit(EditEvent {
                seq: 0,
                id: mid,
                room_id: self.room(),
                user_id: id.user_id.clone(),
                content: f.content.trim().to_owned(),
                edited_at: format_timestamp(now_ms),
                version,
                streaming,
            })),
        }))
    }

    // ----------------------------------------------------------- state transitions

    /// Apply an accepted event to the in-memory state (before it is durable; a failed commit
    /// rebuilds the room from storage).
    pub(super) fn apply_event(&mut self, e: &TimelineEvent) {
        match e {
            TimelineEvent::Message(m) => {
                self.messages.insert(
                    m.id,
                    Msg {
                        author: m.user_id.clone(),
                        version: m.version,
                        deleted: false,
                        streaming: m.streaming,
                    },
                );
            }
            TimelineEvent::Edit(x) => {
                if let Some(m) = self.messages.get_mut(&x.id) {
                    m.version = x.version;
                    m.streaming = x.streaming;
                }
            }
            TimelineEvent::Delete(x) => {
                if let Some(m) = self.messages.get_mut(&x.id) {
                    m.version = x.version;
                    m.deleted = true;
                    m.streaming = false;
                }
            }
            TimelineEvent::Reaction(r) => {
                let key = (r.message_id, r.user_id.clone(), r.emoji.clone());
                self.reactions.insert(key, r.op == ReactionOp::Add);
            }
            TimelineEvent::Read(r) => {
                self.reads.insert(r.user_id.clone(), Some(r.message_id));
            }
            other => self.apply_agent_event(other),
        }
    }
}
