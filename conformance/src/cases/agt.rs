//! Group agt.

use crate::case::Case;

/// Cases of this group.
pub fn cases() -> Vec<Case> {
    vec![]
}
