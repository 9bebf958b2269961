//! JWT verification never panics and never accepts a token unless it is validly signed with the
//! secret of the tenant it names, with `alg` exactly HS256 and valid claims.
#![no_main]
use arbitrary::Arbitrary;
use fluxy_protocol::common::is_valid_id;
use fluxy_protocol::jwt::{self, Claims, LEEWAY_SECONDS};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

const SECRET: &[u8] = b"fuzz-tenant-secret";

fn secrets(t: &str) -> Option<Vec<u8>> {
    match t {
        "t1" => Some(SECRET.to_vec()),
        "t2" => Some(b"t2-secret".to_vec()),
        _ => None,
    }
}

#[derive(Debug, Arbitrary)]
struct In {
    /// Completely arbitrary token text.
    raw: String,
    /// Header and payload JSON texts (used when they parse).
    header: String,
    payload: String,
    /// 0: t1's secret, 1: t2's secret, 2: another key.
    key: u8,
    now: u32,
    /// Structured claims, for the accept path.
    sub: u8,
    tid: u8,
    exp_delta: i16,
    nbf_delta: Option<i16>,
    /// One byte changed in a valid token.
    pos: u16,
    byte: u8,
}

/// Independent reference: would a correct verifier accept header/payload signed with `key`?
fn should_accept(header: &Value, payload: &Value, key: &[u8], now: u64) -> bool {
    if header.get("alg").and_then(Value::as_str) != Some("HS256") {
        return false;
    }
    let id = |n: &str| {
        payload
            .get(n)
            .and_then(Value::as_str)
            .filter(|s| is_valid_id(s))
    };
    let (Some(_), Some(tid)) = (id("sub"), id("tid")) else {
        return false;
    };
    if secrets(tid).as_deref() != Some(key) {
        return false;
    }
    let Some(exp) = payload.get("exp").and_then(Value::as_u64) else {
        return false;
    };
    if now >= exp.saturating_add(LEEWAY_SECONDS) {
        return false;
    }
    match payload.get("nbf") {
        None | Some(Value::Null) => {}
        Some(v) => match v.as_u64() {
            Some(nbf) if now.saturating_add(LEEWAY_SECONDS) >= nbf => {}
            _ => return false,
        },
    }
    match payload.get("roles") {
        None | Some(Value::Null) => true,
        Some(Value::Array(a)) => a.iter().all(Value::is_string),
        _ => false,
    }
}

fuzz_target!(|i: In| {
    let now = u64::from(i.now) + 1_000_000_000;
    let key: &[u8] = match i.key % 3 {
        0 => SECRET,
        1 => b"t2-secret",
        _ => b"wrong",
    };
    // 1. Arbitrary text: never a panic; if accepted, it names t1 or t2 and re-verifies.
    if let Ok(c) = jwt::verify(&i.raw, now, secrets) {
        assert!(c.tid == "t1" || c.tid == "t2");
        assert!(now < c.exp + LEEWAY_SECONDS);
        assert_eq!(i.raw.split('.').count(), 3);
    }
    // 2. Arbitrary header and payload JSON, signed with some key: accepted exactly when the
    //    reference says so.
    if let (Ok(h), Ok(p)) = (
        serde_json::from_str::<Value>(&i.header),
        serde_json::from_str::<Value>(&i.payload),
    ) {
        if h.is_object() && p.is_object() {
            let token = jwt::sign_raw(&h, &p, key);
            let got = jwt::verify(&token, now, secrets);
            assert_eq!(
                got.is_ok(),
                should_accept(&h, &p, key, now),
                "{token} {got:?}"
            );
        }
    }
    // 3. Structured claims: accepted exactly when the reference says so; one changed byte
    //    anywhere makes any valid token invalid.
    let claims = Claims {
        sub: ["alice", "", "bad id", "b"][i.sub as usize % 4].into(),
        tid: ["t1", "t2", "t3", ""][i.tid as usize % 4].into(),
        roles: vec!["member".into()],
        exp: now.saturating_add_signed(i64::from(i.exp_delta)),
        iat: None,
        nbf: i.nbf_delta.map(|d| now.saturating_add_signed(i64::from(d))),
    };
    let token = jwt::sign(&claims, key);
    let want = should_accept(
        &json!({"alg":"HS256","typ":"JWT"}),
        &serde_json::to_value(&claims).unwrap(),
        key,
        now,
    );
    let got = jwt::verify(&token, now, secrets);
    assert_eq!(got.is_ok(), want, "{claims:?} {got:?}");
    if let Ok(c) = &got {
        assert_eq!(c, &claims);
    }
    let mut bytes = token.clone().into_bytes();
    let p = i.pos as usize % bytes.len();
    if bytes[p] != i.byte {
        bytes[p] = i.byte;
        if let Ok(t) = String::from_utf8(bytes) {
            assert!(
                jwt::verify(&t, now, secrets).is_err(),
                "a changed byte was accepted: {t}"
            );
        }
    }
    // Anything appended or a truncation is rejected too.
    if want {
        assert!(jwt::verify(&format!("{token}A"), now, secrets).is_err());
        assert!(jwt::verify(&token[..token.len() - 1], now, secrets).is_err());
    }
});
