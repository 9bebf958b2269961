//! The clause index of the normative specification (`spec/fluxy-v1.md`).
//!
//! Every rule in the spec is a line starting with a clause ID in brackets, e.g.
//! `- [FX-ORD-3] The server MUST …`. IDs never change meaning; a removed clause stays as a
//! tombstone whose text starts with `REMOVED` `[FX-VER-6]`.

/// The normative specification text, compiled in.
pub const SPEC_MARKDOWN: &str = include_str!("../../spec/fluxy-v1.md");

/// Requirement level of a clause (RFC 2119).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    /// MUST, MUST NOT, SHALL, REQUIRED.
    Must,
    /// SHOULD, SHOULD NOT, RECOMMENDED.
    Should,
    /// MAY, OPTIONAL.
    May,
    /// A removed clause kept as a tombstone.
    Removed,
}

impl Level {
    /// Upper-case keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Must => "MUST",
            Level::Should => "SHOULD",
            Level::May => "MAY",
            Level::Removed => "REMOVED",
        }
    }
}

/// One clause of the spec.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Clause {
    /// Stable id, e.g. `FX-ORD-3`.
    pub id: String,
    /// Area code, e.g. `ORD`.
    pub area: String,
    /// Requirement level (the strongest keyword in the text).
    pub level: Level,
    /// Text of the rule, without the id.
    pub text: String,
}

/// Problems found while indexing the spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Two clauses share an id.
    #[error("duplicate clause id {0}")]
    Duplicate(String),
    /// A clause has no RFC 2119 keyword and is not a tombstone.
    #[error("clause {0} has no MUST/SHOULD/MAY keyword")]
    NoKeyword(String),
}

fn level_of(text: &str) -> Option<Level> {
    if text.trim_start().starts_with("REMOVED") {
        return Some(Level::Removed);
    }
    let words: Vec<&str> = text
        .split(|c: char| !c.is_ascii_alphabetic())
        .filter(|w| !w.is_empty())
        .collect();
    let has = |k: &str| words.contains(&k);
    if has("MUST") || has("SHALL") || has("REQUIRED") {
        Some(Level::Must)
    } else if has("SHOULD") || has("RECOMMENDED") {
        Some(Level::Should)
    } else if has("MAY") || has("OPTIONAL") {
        Some(Level::May)
    } else {
        None
    }
}

/// Parse clause lines out of spec Markdown.
pub fn parse_clauses(markdown: &str) -> Result<Vec<Clause>, SpecError> {
    let mut out: Vec<Clause> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for line in markdown.lines() {
        let l = line.trim_start();
        let l = l.strip_prefix("- ").unwrap_or(l);
        let l = l.strip_prefix("**").unwrap_or(l);
        let Some(rest) = l.strip_prefix("[FX-") else {
            continue;
        };
        let Some(end) = rest.find(']') else { continue };
        let id_tail = &rest[..end];
        let mut parts = id_tail.splitn(2, '-');
        let (Some(area), Some(num)) = (parts.next(), parts.next()) else {
            continue;
        };
        if area.is_empty()
            || !area.bytes().all(|b| b.is_ascii_uppercase())
            || num.is_empty()
            || !num.bytes().all(|b| b.is_ascii_digit())
        {
            continue;
        }
        let id = format!("FX-{id_tail}");
        let text = rest[end + 1..].trim_start_matches("**").trim().to_string();
        if !seen.insert(id.clone()) {
            return Err(SpecError::Duplicate(id));
        }
        let level = level_of(&text).ok_or_else(|| SpecError::NoKeyword(id.clone()))?;
        out.push(Clause {
            id,
            area: area.to_string(),
            level,
            text,
        });
    }
    Ok(out)
}

/// Every clause of the compiled-in spec.
pub fn clauses() -> Vec<Clause> {
    parse_clauses(SPEC_MARKDOWN).unwrap_or_default()
}

/// Look one clause up by id.
pub fn clause(id: &str) -> Option<Clause> {
    clauses().into_iter().find(|c| c.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parses_with_unique_ids_and_keywords() {
        let cs = parse_clauses(SPEC_MARKDOWN).expect("spec must index cleanly");
        assert!(cs.len() > 50, "only {} clauses", cs.len());
        for area in [
            "HS", "AUTH", "FRM", "MSG", "ORD", "ACK", "RES", "HIS", "PRE", "AGT", "EDT", "TRN",
            "LIM", "ERR", "TEN", "VER",
        ] {
            assert!(
                cs.iter().any(|c| c.area == area),
                "no clause in area {area}"
            );
        }
    }

    #[test]
    fn duplicate_and_keywordless_are_errors() {
        assert_eq!(
            parse_clauses("- [FX-A-1] x MUST y\n- [FX-A-1] z MAY w"),
            Err(SpecError::Duplicate("FX-A-1".into()))
        );
        assert_eq!(
            parse_clauses("- [FX-A-1] nothing normative"),
            Err(SpecError::NoKeyword("FX-A-1".into()))
        );
        let c = parse_clauses("- [FX-A-2] REMOVED: was X").unwrap();
        assert_eq!(c[0].level, Level::Removed);
    }
}
