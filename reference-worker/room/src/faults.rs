//! Deliberate, test-only faults for the conformance suite's self-test.
//!
//! Every fault breaks exactly one rule of the spec. Faults are inert unless named: the normal
//! path pays one boolean check per fault site.

use thiserror::Error;

/// `(name, description)` of every deliberate fault.
pub const FAULTS: &[(&str, &str)] = &[
    ("skip-seq", "seq jumps by 2 once (a gap in the timeline)"),
    (
        "reorder-broadcast",
        "two consecutive timeline broadcasts are swapped once",
    ),
    (
        "drop-broadcast",
        "one timeline broadcast is not sent to one receiver (not the sender)",
    ),
    (
        "ack-before-store",
        "the first message is acked before the commit and then never stored",
    ),
    (
        "no-dedup",
        "a resend with the same clientMessageId is stored and broadcast again",
    ),
    (
        "trust-frame-user-id",
        "a frame's userId field is used as the author",
    ),
    ("accept-expired-token", "expired tokens are accepted"),
    (
        "accept-alg-none",
        "tokens with alg none (unsigned) are accepted",
    ),
    (
        "ignore-nbf",
        "tokens whose nbf is in the future are accepted",
    ),
    ("cross-tenant-leak", "room lookup ignores the tenant"),
    (
        "repeat-row-across-pages",
        "history page boundaries repeat one event",
    ),
    (
        "skip-row-across-pages",
        "history page boundaries skip one event",
    ),
    ("resume-off-by-one", "replay omits the first missed event"),
    (
        "no-resync",
        "resume from too far back returns a truncated replay instead of resync_required",
    ),
    (
        "ghost-presence",
        "users stay in presence after their last connection closed",
    ),
    (
        "non-agent-tool-call",
        "agent frames are accepted from connections without the agent role",
    ),
    ("edit-any-author", "anyone may edit any message"),
    (
        "no-rate-limit",
        "the per-connection rate limit is not enforced",
    ),
    (
        "unknown-type-closes",
        "an unknown frame type closes the connection instead of an error frame",
    ),
    ("sse-no-id", "SSE timeline events are sent without id:"),
    (
        "poll-ignores-cursor",
        "long-polling ignores the cursor and returns events from the start",
    ),
    (
        "cursor-unsigned",
        "cursors with a wrong signature are accepted",
    ),
    (
        "token-expiry-ignored",
        "connections are not closed when their token expires",
    ),
    ("no-ack", "acks are never sent"),
    (
        "typing-to-sender-only",
        "typing indicators go back to the sender instead of the others",
    ),
    ("delete-any-user", "anyone may delete any message"),
    ("heartbeat-ignored", "idle connections are never closed"),
    (
        "binary-closes",
        "a binary frame closes the connection instead of an error frame",
    ),
];

/// A fault name that is not in [`FAULTS`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown fault `{0}`")]
pub struct UnknownFault(pub String);

/// The set of enabled faults, one flag per fault.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Faults {
    pub skip_seq: bool,
    pub reorder_broadcast: bool,
    pub drop_broadcast: bool,
    pub ack_before_store: bool,
    pub no_dedup: bool,
    pub trust_frame_user_id: bool,
    pub accept_expired_token: bool,
    pub accept_alg_none: bool,
    pub ignore_nbf: bool,
    pub cross_tenant_leak: bool,
    pub repeat_row_across_pages: bool,
    pub skip_row_across_pages: bool,
    pub resume_off_by_one: bool,
    pub no_resync: bool,
    pub ghost_presence: bool,
    pub non_agent_tool_call: bool,
    pub edit_any_author: bool,
    pub no_rate_limit: bool,
    pub unknown_type_closes: bool,
    pub sse_no_id: bool,
    pub poll_ignores_cursor: bool,
    pub cursor_unsigned: bool,
    pub token_expiry_ignored: bool,
    pub no_ack: bool,
    pub typing_to_sender_only: bool,
    pub delete_any_user: bool,
    pub heartbeat_ignored: bool,
    pub binary_closes: bool,
}

impl Faults {
    /// No faults (the normal server).
    pub const NONE: Faults = Faults {
        skip_seq: false,
        reorder_broadcast: false,
        drop_broadcast: false,
        ack_before_store: false,
        no_dedup: false,
        trust_frame_user_id: false,
        accept_expired_token: false,
        accept_alg_none: false,
        ignore_nbf: false,
        cross_tenant_leak: false,
        repeat_row_across_pages: false,
        skip_row_across_pages: false,
        resume_off_by_one: false,
        no_resync: false,
        ghost_presence: false,
        non_agent_tool_call: false,
        edit_any_author: false,
        no_rate_limit: false,
        unknown_type_closes: false,
        sse_no_id: false,
        poll_ignores_cursor: false,
        cursor_unsigned: false,
        token_expiry_ignored: false,
        no_ack: false,
        typing_to_sender_only: false,
        delete_any_user: false,
        heartbeat_ignored: false,
        binary_closes: false,
    };

    /// Enable the faults named in `names`.
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Result<Faults, UnknownFault> {
        let mut f = Faults::NONE;
        for n in names {
            let n = n.as_ref();
            let flag = match n {
                "skip-seq" => &mut f.skip_seq,
                "reorder-broadcast" => &mut f.reorder_broadcast,
                "drop-broadcast" => &mut f.drop_broadcast,
                "ack-before-store" => &mut f.ack_before_store,
                "no-dedup" => &mut f.no_dedup,
                "trust-frame-user-id" => &mut f.trust_frame_user_id,
                "accept-expired-token" => &mut f.accept_expired_token,
                "accept-alg-none" => &mut f.accept_alg_none,
                "ignore-nbf" => &mut f.ignore_nbf,
                "cross-tenant-leak" => &mut f.cross_tenant_leak,
                "repeat-row-across-pages" => &mut f.repeat_row_across_pages,
                "skip-row-across-pages" => &mut f.skip_row_across_pages,
                "resume-off-by-one" => &mut f.resume_off_by_one,
                "no-resync" => &mut f.no_resync,
                "ghost-presence" => &mut f.ghost_presence,
                "non-agent-tool-call" => &mut f.non_agent_tool_call,
                "edit-any-author" => &mut f.edit_any_author,
                "no-rate-limit" => &mut f.no_rate_limit,
                "unknown-type-closes" => &mut f.unknown_type_closes,
                "sse-no-id" => &mut f.sse_no_id,
                "poll-ignores-cursor" => &mut f.poll_ignores_cursor,
                "cursor-unsigned" => &mut f.cursor_unsigned,
                "token-expiry-ignored" => &mut f.token_expiry_ignored,
                "no-ack" => &mut f.no_ack,
                "typing-to-sender-only" => &mut f.typing_to_sender_only,
                "delete-any-user" => &mut f.delete_any_user,
                "heartbeat-ignored" => &mut f.heartbeat_ignored,
                "binary-closes" => &mut f.binary_closes,
                other => return Err(UnknownFault(other.to_owned())),
            };
            *flag = true;
        }
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_fault_parses_and_sets_exactly_one_flag() {
        assert!(FAULTS.len() >= 22);
        for (name, _) in FAULTS {
            let f = Faults::from_names(&[name]).expect("listed fault parses");
            assert_ne!(f, Faults::NONE, "{name} sets a flag");
            let dbg = format!("{f:?}");
            assert_eq!(
                dbg.matches("true").count(),
                1,
                "{name} sets exactly one flag"
            );
        }
        assert!(Faults::from_names(&["nope"]).is_err());
    }
}
