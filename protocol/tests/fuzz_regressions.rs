//! Regression tests from fuzzing and mutation testing of the token rules (docs/fuzzing.md,
//! docs/mutation.md). The fuzz targets found no defect in the protocol crate; these tests pin
//! rules that the crate's other tests left unchecked (mutants of `jwt.rs` that survived them).

use fluxy_protocol::jwt::{self, sign, sign_raw, Claims, JwtError, MAX_TOKEN_CHARS};
use fluxy_protocol::ErrorCode;
use serde_json::{json, Value};

const KEY: &[u8] = b"k";

fn secrets(t: &str) -> Option<Vec<u8>> {
    (t == "t1").then(|| KEY.to_vec())
}

fn claims() -> Claims {
    Claims {
        sub: "alice".into(),
        tid: "t1".into(),
        roles: vec!["agent".into()],
        exp: 2_000,
        iat: None,
        nbf: None,
    }
}

#[test]
fn has_role_names_exactly_the_token_roles() {
    let c = claims();
    assert!(c.has_role("agent"));
    assert!(!c.has_role("admin"));
}

#[test]
fn only_expiry_maps_to_token_expired() {
    assert_eq!(JwtError::Expired.code(), ErrorCode::TokenExpired);
    for e in [
        JwtError::Malformed,
        JwtError::BadAlgorithm,
        JwtError::BadClaim("sub"),
        JwtError::NotYetValid,
        JwtError::UnknownTenant,
        JwtError::BadSignature,
    ] {
        assert_eq!(e.code(), ErrorCode::Unauthorized, "{e:?}");
    }
}

#[test]
fn peek_tenant_reads_a_valid_tid_only() {
    assert_eq!(jwt::peek_tenant(&sign(&claims(), KEY)), Ok("t1".into()));
    let bad = sign_raw(
        &json!({"alg":"HS256"}),
        &json!({"sub":"a","tid":"bad id","exp":1}),
        KEY,
    );
    assert_eq!(jwt::peek_tenant(&bad), Err(JwtError::BadClaim("tid")));
    let none = sign_raw(&json!({"alg":"HS256"}), &json!({"sub":"a","exp":1}), KEY);
    assert_eq!(jwt::peek_tenant(&none), Err(JwtError::BadClaim("tid")));
}

#[test]
fn sub_and_tid_must_be_valid_ids() {
    for (field, value) in [
        ("sub", "bad id"),
        ("tid", "bad id"),
        ("sub", ""),
        ("tid", ""),
    ] {
        let mut p = serde_json::to_value(claims()).unwrap();
        p[field] = Value::from(value);
        let t = sign_raw(&json!({"alg":"HS256"}), &p, KEY);
        let want = if field == "sub" { "sub" } else { "tid" };
        assert_eq!(
            jwt::verify(&t, 1_000, secrets),
            Err(JwtError::BadClaim(want))
        );
    }
}

/// A valid token of exactly `len` characters (padded with extra header and payload fields).
fn token_of_len(len: usize) -> String {
    for hpad in 0..4 {
        let h = json!({"alg":"HS256","typ":"JWT","x":"y".repeat(hpad)});
        for pad in 0..len {
            let mut p = serde_json::to_value(claims()).unwrap();
            p["pad"] = Value::from("x".repeat(pad));
            let t = sign_raw(&h, &p, KEY);
            if t.len() == len {
                return t;
            }
            if t.len() > len {
                break;
            }
        }
    }
    panic!("no token of {len} characters")
}

#[test]
fn the_length_limit_is_inclusive() {
    let at = token_of_len(MAX_TOKEN_CHARS);
    assert!(jwt::verify(&at, 1_000, secrets).is_ok());
    let over = token_of_len(MAX_TOKEN_CHARS + 1);
    assert_eq!(jwt::verify(&over, 1_000, secrets), Err(JwtError::Malformed));
}

fn resign_bytes(token: &str, f: impl Fn(&mut Vec<u8>)) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let (input, sig) = token.rsplit_once('.').unwrap();
    let mut bytes = URL_SAFE_NO_PAD.decode(sig).unwrap();
    f(&mut bytes);
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// The signature comparison accumulates differences with OR: two equal differences must not
/// cancel out, and a wrong length must not be cancelled by a difference in the prefix.
#[test]
fn signature_differences_never_cancel() {
    let good = sign(&claims(), KEY);
    assert!(jwt::verify(&good, 1_000, secrets).is_ok());
    let twice = resign_bytes(&good, |b| {
        b[0] ^= 1;
        b[1] ^= 1;
    });
    assert_eq!(
        jwt::verify(&twice, 1_000, secrets),
        Err(JwtError::BadSignature)
    );
    let short = resign_bytes(&good, |b| {
        b.truncate(31);
        b[0] ^= (31 ^ 32) as u8;
    });
    assert_eq!(
        jwt::verify(&short, 1_000, secrets),
        Err(JwtError::BadSignature)
    );
}

/// `exp` and `nbf` honour exactly 5 s of leeway (FX-AUTH-4), at both edges.
#[test]
fn leeway_edges_are_exact() {
    let at = |exp: u64, nbf: Option<u64>, now: u64| {
        let c = Claims {
            exp,
            nbf,
            ..claims()
        };
        jwt::verify(&sign(&c, KEY), now, secrets)
    };
    assert!(at(1_000, None, 1_004).is_ok());
    assert_eq!(at(1_000, None, 1_005), Err(JwtError::Expired));
    assert!(at(2_000, Some(1_005), 1_000).is_ok());
    assert_eq!(at(2_000, Some(1_006), 1_000), Err(JwtError::NotYetValid));
}
