//! FluxyChat compatibility of the connect snapshot `[FX-CMP-1]` `[FX-CMP-2]`.
//!
//! FluxyChat's SDK connects with `replay=connect` and reads the snapshot's `messages`
//! (FluxyChat's message rows, oldest first) and `reactions` (`{messageId: {emoji: count}}`).
//! Both are folded here from the committed events the engine keeps in memory, the same events
//! the `history` frame's `events` are cut from, so the rows and the timeline always agree.

use std::collections::{BTreeMap, BTreeSet};

use fluxy_protocol::common::ReactionOp;
use fluxy_protocol::events::TimelineEvent;
use fluxy_protocol::http::{MessageRecord, ReactionCounts};

/// The newest `limit` live messages created within `events` (committed, ascending by `seq`,
/// gap-free), as FluxyChat rows oldest first, with their current content (after every edit,
/// stream delta and delete in `events`), and the reaction counts of those rows.
///
/// A message created before the first event of `events` is not a row: its creation is outside
/// the window, so its edits, deletes and reactions in the window are skipped too. Every event
/// that changes a message comes after the event that created it, so a row built here is exact.
pub(crate) fn snapshot_rows<'a>(
    events: impl Iterator<Item = &'a TimelineEvent>,
    limit: usize,
) -> (Vec<MessageRecord>, ReactionCounts) {
    let mut rows: BTreeMap<u64, MessageRecord> = BTreeMap::new();
    // message id -> emoji -> users
    let mut reacted: BTreeMap<u64, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for e in events {
        match e {
            TimelineEvent::Message(m) => {
                rows.insert(
                    m.id,
                    MessageRecord {
                        id: m.id,
                        room_id: m.room_id.clone(),
                        user_id: m.user_id.clone(),
                        sender_id: m.sender_id.clone(),
                        content: m.content.clone(),
                        created_at: m.created_at.clone(),
                        parent_id: m.parent_id,
                        edited_at: None,
                        seq: m.seq,
                        version: m.version,
                        client_message_id: m.client_message_id.clone(),
                        attachments: m.attachments.clone(),
                    },
                );
            }
            TimelineEvent::Edit(x) => {
                if let Some(r) = rows.get_mut(&x.id) {
                    r.content.clone_from(&x.content);
                    r.version = x.version;
                    r.edited_at = Some(x.edited_at.clone());
                }
            }
            TimelineEvent::Delete(x) => {
                rows.remove(&x.id);
                reacted.remove(&x.id);
            }
            TimelineEvent::Reaction(x) => {
                if !rows.contains_key(&x.message_id) {
                    continue;
                }
                let users = reacted
                    .entry(x.message_id)
                    .or_default()
                    .entry(x.emoji.clone())
                    .or_default();
                match x.op {
                    ReactionOp::Add => {
                        users.insert(x.user_id.clone());
                    }
                    ReactionOp::Remove => {
                        users.remove(&x.user_id);
                    }
                }
            }
            _ => {}
        }
    }
    let skip = rows.len().saturating_sub(limit);
    let messages: Vec<MessageRecord> = rows.into_values().skip(skip).collect();
    let mut reactions = ReactionCounts::new();
    for m in &messages {
        let Some(per) = reacted.remove(&m.id) else {
            continue;
        };
        let counts: BTreeMap<String, u64> = per
            .into_iter()
            .filter(|(_, users)| !users.is_empty())
            .map(|(emoji, users)| (emoji, users.len() as u64))
            .collect();
        if !counts.is_empty() {
            reactions.insert(m.id.to_string(), counts);
        }
    }
    (messages, reactions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluxy_protocol::events::{DeleteEvent, EditEvent, MessageEvent, ReactionEvent};

    fn msg(seq: u64, user: &str, content: &str) -> TimelineEvent {
        TimelineEvent::Message(MessageEvent {
            seq,
            id: seq,
            room_id: "r".into(),
            user_id: user.into(),
            sender_id: user.into(),
            content: content.into(),
            created_at: format!("2026-01-01T00:00:00.{seq:03}Z"),
            parent_id: None,
            client_message_id: None,
            attachments: Vec::new(),
            version: 1,
            streaming: false,
        })
    }

    fn react(seq: u64, user: &str, id: u64, emoji: &str, op: ReactionOp) -> TimelineEvent {
        TimelineEvent::Reaction(ReactionEvent {
            seq,
            room_id: "r".into(),
            user_id: user.into(),
            message_id: id,
            emoji: emoji.into(),
            op,
            created_at: "2026-01-01T00:00:01.000Z".into(),
        })
    }

    #[test]
    fn folds_edits_deletes_and_reactions_oldest_first() {
        let events = [
            msg(1, "a", "one"),
            msg(2, "b", "two"),
            TimelineEvent::Edit(EditEvent {
                seq: 3,
                id: 1,
                room_id: "r".into(),
                user_id: "a".into(),
                content: "one!".into(),
                edited_at: "2026-01-01T00:00:02.000Z".into(),
                version: 2,
                streaming: false,
            }),
            react(4, "a", 1, "👍", ReactionOp::Add),
            react(5, "b", 1, "👍", ReactionOp::Add),
            react(6, "b", 1, "🎉", ReactionOp::Add),
            react(7, "b", 1, "🎉", ReactionOp::Remove),
            msg(8, "a", "three"),
            react(9, "a", 8, "x", ReactionOp::Add),
            TimelineEvent::Delete(DeleteEvent {
                seq: 10,
                id: 8,
                room_id: "r".into(),
                user_id: "a".into(),
                deleted_at: "2026-01-01T00:00:03.000Z".into(),
                version: 2,
            }),
        ];
        let (rows, reactions) = snapshot_rows(events.iter(), 50);
        let ids: Vec<u64> = rows.iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![1, 2]);
        assert_eq!(rows[0].content, "one!");
        assert_eq!(rows[0].version, 2);
        assert_eq!(
            rows[0].edited_at.as_deref(),
            Some("2026-01-01T00:00:02.000Z")
        );
        assert_eq!(rows[1].edited_at, None);
        assert_eq!(reactions.len(), 1, "{reactions:?}");
        assert_eq!(
            reactions["1"].len(),
            1,
            "removed emoji leaves no zero count"
        );
        assert_eq!(reactions["1"]["👍"], 2);
    }

    #[test]
    fn keeps_the_newest_limit_and_skips_messages_created_outside_the_window() {
        let events = [
            react(4, "a", 1, "👍", ReactionOp::Add),
            msg(5, "a", "five"),
            msg(6, "a", "six"),
            msg(7, "a", "seven"),
            react(8, "a", 5, "👍", ReactionOp::Add),
            react(9, "a", 7, "👍", ReactionOp::Add),
        ];
        let (rows, reactions) = snapshot_rows(events.iter(), 2);
        let ids: Vec<u64> = rows.iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![6, 7]);
        assert_eq!(reactions.keys().collect::<Vec<_>>(), vec!["7"]);
        let (rows, _) = snapshot_rows(events.iter(), 0);
        assert!(rows.is_empty());
    }
}
