//! Token rules: HS256 JWTs with `sub`, `tid`, `roles`, `exp`, optional `nbf` (spec area AUTH).
//!
//! Verification is strict `[FX-AUTH-3]`: the header's `alg` must be exactly `HS256`, `exp` must
//! be an integer and in the future, `nbf` (when present) must have passed, `sub` and `tid` must be
//! valid ids, and the signature must verify with the secret of the tenant named by `tid`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;

use crate::common::is_valid_id;

/// Allowed clock skew for `exp` and `nbf`, in seconds `[FX-AUTH-4]`.
pub const LEEWAY_SECONDS: u64 = 5;
/// Longest token accepted before parsing.
pub const MAX_TOKEN_CHARS: usize = 8192;
/// Roles a token may carry `[FX-AUTH-2]`.
pub const KNOWN_ROLES: &[&str] = &["owner", "admin", "moderator", "member", "agent"];

/// Verified token claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Tenant (project) id.
    pub tid: String,
    /// Roles.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Issued at, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Not before, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

impl Claims {
    /// Whether the token carries `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// Why a token was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts of JSON, or too long.
    #[error("malformed token")]
    Malformed,
    /// `alg` is not `HS256` (this includes `none`).
    #[error("unsupported algorithm")]
    BadAlgorithm,
    /// A required claim is missing or has the wrong type.
    #[error("missing or invalid claim `{0}`")]
    BadClaim(&'static str),
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// No such tenant.
    #[error("unknown tenant")]
    UnknownTenant,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
}

impl JwtError {
    /// The protocol error code for this rejection.
    pub fn code(&self) -> crate::codes::ErrorCode {
        match self {
            JwtError::Expired => crate::codes::ErrorCode::TokenExpired,
            _ => crate::codes::ErrorCode::Unauthorized,
        }
    }
}

fn mac(secret: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// Sign `claims` as an HS256 JWT.
pub fn sign(claims: &Claims, secret: &[u8]) -> String {
    sign_raw(
        &serde_json::json!({"alg":"HS256","typ":"JWT"}),
        &serde_json::to_value(claims).unwrap_or(Value::Null),
        secret,
    )
}

/// Sign arbitrary header and payload JSON (for tests that need malformed tokens).
pub fn sign_raw(header: &Value, payload: &Value, secret: &[u8]) -> String {
    let h = URL_SAFE_NO_PAD.encode(header.to_string());
    let p = URL_SAFE_NO_PAD.encode(payload.to_string());
    let input = format!("{h}.{p}");
    let s = URL_SAFE_NO_PAD.encode(mac(secret, input.as_bytes()));
    format!("{input}.{s}")
}

/// Read the `tid` claim without verifying anything (to find the tenant's secret).
pub fn peek_tenant(token: &str) -> Result<String, JwtError> {
    let (_, payload, _) = split(token)?;
    let v: Value = decode_json(payload)?;
    match v.get("tid") {
        Some(Value::String(t)) if is_valid_id(t) => Ok(t.clone()),
        _ => Err(JwtError::BadClaim("tid")),
    }
}

fn split(token: &str) -> Result<(&str, &str, &str), JwtError> {
    if token.len() > MAX_TOKEN_CHARS {
        return Err(JwtError::Malformed);
    }
    let mut it = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (it.next(), it.next(), it.next(), it.next()) else {
        return Err(JwtError::Malformed);
    };
    Ok((h, p, s))
}

fn decode_json(part: &str) -> Result<Value, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part.as_bytes())
        .map_err(|_| JwtError::Malformed)?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed)?;
    if v.is_object() {
        Ok(v)
    } else {
        Err(JwtError::Malformed)
    }
}

/// Verify `token` at time `now_secs`; `secret_for` returns the secret of a tenant, if it exists.
pub fn verify(
    token: &str,
    now_secs: u64,
    secret_for: impl FnOnce(&str) -> Option<Vec<u8>>,
) -> Result<Claims, JwtError> {
    let (h, p, s) = split(token)?;
    let header = decode_json(h)?;
    if header.get("alg").and_then(Value::as_str) != Some("HS256") {
        return Err(JwtError::BadAlgorithm);
    }
    let payload = decode_json(p)?;
    let str_claim = |name: &'static str| -> Result<String, JwtError> {
        match payload.get(name) {
            Some(Value::String(v)) if is_valid_id(v) => Ok(v.clone()),
            _ => Err(JwtError::BadClaim(name)),
        }
    };
    let sub = str_claim("sub")?;
    let tid = str_claim("tid")?;
    let exp = match payload.get("exp") {
        Some(Value::Number(n)) => n.as_u64().ok_or(JwtError::BadClaim("exp"))?,
        _ => return Err(JwtError::BadClaim("exp")),
    };
    let nbf = match payload.get("nbf") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(n.as_u64().ok_or(JwtError::BadClaim("nbf"))?),
        _ => return Err(JwtError::BadClaim("nbf")),
    };
    let iat = payload.get("iat").and_then(Value::as_u64);
    let roles = match payload.get("roles") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|r| {
                r.as_str()
                    .map(str::to_owned)
                    .ok_or(JwtError::BadClaim("roles"))
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => return Err(JwtError::BadClaim("roles")),
    };
    let secret = secret_for(&tid).ok_or(JwtError::UnknownTenant)?;
    let sig = URL_SAFE_NO_PAD
        .decode(s.as_bytes())
        .map_err(|_| JwtError::BadSignature)?;
    let expected = mac(&secret, format!("{h}.{p}").as_bytes());
    let diff = sig.len() ^ expected.len()
        | expected
            .iter()
            .zip(sig.iter())
            .fold(0usize, |acc, (a, b)| acc | (a ^ b) as usize);
    if diff != 0 {
        return Err(JwtError::BadSignature);
    }
    if now_secs >= exp.saturating_add(LEEWAY_SECONDS) {
        return Err(JwtError::Expired);
    }
    if let Some(nbf) = nbf {
        if now_secs.saturating_add(LEEWAY_SECONDS) < nbf {
            return Err(JwtError::NotYetValid);
        }
    }
    Ok(Claims {
        sub,
        tid,
        roles,
        exp,
        iat,
        nbf,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "alice".into(),
            tid: "t1".into(),
            roles: vec!["member".into()],
            exp,
            iat: None,
            nbf: None,
        }
    }

    #[test]
    fn accepts_valid_and_rejects_each_defect() {
        let key = b"secret".to_vec();
        let get = |t: &str| (t == "t1").then(|| key.clone());
        let tok = sign(&claims(2000), &key);
        assert_eq!(verify(&tok, 1000, get).map(|c| c.sub), Ok("alice".into()));
        assert_eq!(verify(&tok, 3000, get), Err(JwtError::Expired));
        assert_eq!(
            verify(&tok, 1000, |_| Some(b"x".to_vec())),
            Err(JwtError::BadSignature)
        );
        let none = sign_raw(
            &json!({"alg":"none"}),
            &serde_json::to_value(claims(2000)).unwrap(),
            &key,
        );
        assert_eq!(verify(&none, 1000, get), Err(JwtError::BadAlgorithm));
        let hs512 = sign_raw(
            &json!({"alg":"HS512"}),
            &serde_json::to_value(claims(2000)).unwrap(),
            &key,
        );
        assert_eq!(verify(&hs512, 1000, get), Err(JwtError::BadAlgorithm));
        let no_exp = sign_raw(
            &json!({"alg":"HS256"}),
            &json!({"sub":"a","tid":"t1"}),
            &key,
        );
        assert_eq!(verify(&no_exp, 1000, get), Err(JwtError::BadClaim("exp")));
        let str_exp = sign_raw(
            &json!({"alg":"HS256"}),
            &json!({"sub":"a","tid":"t1","exp":"2000"}),
            &key,
        );
        assert_eq!(verify(&str_exp, 1000, get), Err(JwtError::BadClaim("exp")));
        let nbf = sign_raw(
            &json!({"alg":"HS256"}),
            &json!({"sub":"a","tid":"t1","exp":5000,"nbf":4000}),
            &key,
        );
        assert_eq!(verify(&nbf, 1000, get), Err(JwtError::NotYetValid));
        let other = sign_raw(
            &json!({"alg":"HS256"}),
            &json!({"sub":"a","tid":"t2","exp":5000}),
            &key,
        );
        assert_eq!(verify(&other, 1000, get), Err(JwtError::UnknownTenant));
        assert_eq!(verify("a.b", 1000, get), Err(JwtError::Malformed));
    }
}
