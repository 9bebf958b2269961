//! Opaque, tamper-evident pagination cursors (spec area HIS).
//!
//! A cursor names a position in one room's timeline: "events after (forward) or before
//! (backward) `seq`". Because `seq` is a total order, pages never skip or repeat rows, even when
//! timestamps collide or events arrive while paging `[FX-HIS-3]`. The cursor is
//! `base64url(payload || tag)`, where `tag` is the first 16 bytes of HMAC-SHA256 over the payload
//! with a server secret, so forged, truncated or foreign cursors are rejected `[FX-HIS-4]`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::http::Direction;

const VERSION: u8 = 1;
const TAG_LEN: usize = 16;
/// Longest cursor string accepted before decoding.
pub const MAX_CURSOR_CHARS: usize = 512;

/// A decoded cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Tenant the cursor was issued for.
    pub tenant: String,
    /// Room the cursor was issued for.
    pub room: String,
    /// Boundary `seq` (exclusive).
    pub seq: u64,
    /// Paging direction.
    pub direction: Direction,
}

/// Why a cursor was rejected; all map to `invalid_cursor`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    /// Not base64url, too short, too long or of an unknown version.
    #[error("malformed cursor")]
    Malformed,
    /// The authentication tag does not match.
    #[error("cursor signature mismatch")]
    BadSignature,
    /// Valid, but for another tenant or room.
    #[error("cursor belongs to another room")]
    Foreign,
}

fn tag(key: &[u8], payload: &[u8]) -> [u8; TAG_LEN] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(payload);
    let full = mac.finalize().into_bytes();
    let mut out = [0u8; TAG_LEN];
    out.copy_from_slice(&full[..TAG_LEN]);
    out
}

impl Cursor {
    /// Encode with the server's cursor key.
    pub fn encode(&self, key: &[u8]) -> String {
        let mut p = Vec::with_capacity(16 + self.tenant.len() + self.room.len());
        p.push(VERSION);
        p.push(match self.direction {
            Direction::Backward => 0,
            Direction::Forward => 1,
        });
        p.extend_from_slice(&self.seq.to_be_bytes());
        p.push(self.tenant.len().min(255) as u8);
        p.extend_from_slice(&self.tenant.as_bytes()[..self.tenant.len().min(255)]);
        p.push(self.room.len().min(255) as u8);
        p.extend_from_slice(&self.room.as_bytes()[..self.room.len().min(255)]);
        let t = tag(key, &p);
        p.extend_from_slice(&t);
        URL_SAFE_NO_PAD.encode(p)
    }

    /// Decode and verify a cursor, requiring that it belongs to `tenant` and `room`.
    pub fn decode(s: &str, key: &[u8], tenant: &str, room: &str) -> Result<Cursor, CursorError> {
        let c = Cursor::decode_any(s, key)?;
        if c.tenant != tenant || c.room != room {
            return Err(CursorError::Foreign);
        }
        Ok(c)
    }

    /// Decode and verify a cursor without checking which room it belongs to.
    pub fn decode_any(s: &str, key: &[u8]) -> Result<Cursor, CursorError> {
        if s.is_empty() || s.len() > MAX_CURSOR_CHARS {
            return Err(CursorError::Malformed);
        }
        let raw = URL_SAFE_NO_PAD
            .decode(s.as_bytes())
            .map_err(|_| CursorError::Malformed)?;
        if raw.len() < 12 + TAG_LEN {
            return Err(CursorError::Malformed);
        }
        let (payload, t) = raw.split_at(raw.len() - TAG_LEN);
        let expected = tag(key, payload);
        // Constant-time comparison.
        let diff = expected
            .iter()
            .zip(t.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return Err(CursorError::BadSignature);
        }
        let mut rd = Reader { buf: payload };
        if rd.u8()? != VERSION {
            return Err(CursorError::Malformed);
        }
        let direction = match rd.u8()? {
            0 => Direction::Backward,
            1 => Direction::Forward,
            _ => return Err(CursorError::Malformed),
        };
        let seq = rd.u64()?;
        let tl = rd.u8()? as usize;
        let tenant = rd.string(tl)?;
        let rl = rd.u8()? as usize;
        let room = rd.string(rl)?;
        if !rd.buf.is_empty() {
            return Err(CursorError::Malformed);
        }
        Ok(Cursor {
            tenant,
            room,
            seq,
            direction,
        })
    }
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], CursorError> {
        if self.buf.len() < n {
            return Err(CursorError::Malformed);
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, CursorError> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, CursorError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn string(&mut self, n: usize) -> Result<String, CursorError> {
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| CursorError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let c = Cursor {
            tenant: "t1".into(),
            room: "r1".into(),
            seq: 42,
            direction: Direction::Forward,
        };
        let s = c.encode(b"k");
        assert_eq!(Cursor::decode(&s, b"k", "t1", "r1"), Ok(c.clone()));
        assert_eq!(
            Cursor::decode(&s, b"k", "t2", "r1"),
            Err(CursorError::Foreign)
        );
        assert_eq!(
            Cursor::decode(&s, b"other", "t1", "r1"),
            Err(CursorError::BadSignature)
        );
        let mut bytes = URL_SAFE_NO_PAD.decode(&s).unwrap();
        bytes[3] ^= 1;
        let forged = URL_SAFE_NO_PAD.encode(&bytes);
        assert_eq!(
            Cursor::decode(&forged, b"k", "t1", "r1"),
            Err(CursorError::BadSignature)
        );
        assert_eq!(
            Cursor::decode("!!", b"k", "t1", "r1"),
            Err(CursorError::Malformed)
        );
        assert!(Cursor::decode(&s[..s.len() - 3], b"k", "t1", "r1").is_err());
    }
}
