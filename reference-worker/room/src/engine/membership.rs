//! Membership versions: a handshake reads a user's room role together with the version of
//! that membership; every membership write increments the version, and the `Kick` or `SetRole`
//! it sends the room carries the new one. The room remembers the latest version it applied per
//! user, so an `Open` whose read is older than a kick or role change the room already applied
//! takes the newer state (or is closed 4003 when the user was removed) instead of registering
//! with the stale role. Version 0 means unversioned: never remembered, never overridden.

use fluxy_protocol::common::MemberRole;
use fluxy_protocol::{CloseCode, ErrorCode};

use super::{err, ConnId, ConnectOptions, Effect, Identity, Room};

/// The latest membership change applied for a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Membership {
    /// Removed from the room (`Kick`).
    Removed,
    /// Role set (`SetRole`).
    Role(Option<MemberRole>),
}

impl Room {
    /// Remember a membership change at `version`. False when the room already applied a newer
    /// one for the user (a change delivered out of order): the caller ignores this one.
    pub(super) fn note_membership(&mut self, user: &str, version: u64, m: Membership) -> bool {
        if version == 0 {
            return true;
        }
        match self.memberships.get_mut(user) {
            Some((v, _)) if *v > version => false,
            Some(e) => {
                *e = (version, m);
                true
            }
            None => {
                self.memberships.insert(user.to_owned(), (version, m));
                true
            }
        }
    }

    /// `Input::Open`, with the identity corrected by any newer membership change.
    pub(super) fn open_versioned(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        mut identity: Identity,
        options: ConnectOptions,
    ) {
        let newer = self
            .memberships
            .get(&identity.user_id)
            .filter(|(v, _)| *v > options.membership_version)
            .map(|(_, m)| *m);
        match newer {
            Some(Membership::Removed) => {
                // As a kick of an open connection: `not_member`, then 4003.
                self.send_error(conn, err(ErrorCode::NotMember, "membership removed", None));
                self.effects.push_back(Effect::Close {
                    conn,
                    code: CloseCode::Forbidden,
                });
            }
            Some(Membership::Role(role)) => {
                let changed = identity.member_role != role;
                identity.member_role = role;
                self.open(now_ms, conn, identity.clone(), options);
                if changed && self.conns.contains_key(&conn) {
                    // Shells that keep a copy of the identity (the worker's socket attachment)
                    // must not keep the stale role.
                    self.effects
                        .push_back(Effect::IdentityChanged { conn, identity });
                }
            }
            None => self.open(now_ms, conn, identity, options),
        }
    }
}
