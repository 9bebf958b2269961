//! JWT verification never panics and never accepts a token not validly signed for its tenant.
#![no_main]
use fluxy_protocol::jwt::{self, Claims};
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"fuzz-tenant-secret";

fuzz_target!(|input: (String, String, u64)| {
    let (token, tail, now) = input;
    let now = now % 4_000_000_000;
    // Arbitrary text: if accepted, it must carry tenant t1 and verify under our secret.
    if let Ok(c) = jwt::verify(&token, now, |t| (t == "t1").then(|| SECRET.to_vec())) {
        assert_eq!(c.tid, "t1");
        assert!(c.exp + jwt::LEEWAY_SECONDS > now);
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
    }
    // A valid token with anything appended to its signature must be rejected.
    let claims = Claims {
        sub: "alice".into(),
        tid: "t1".into(),
        roles: vec!["member".into()],
        exp: now + 100,
        iat: None,
        nbf: None,
    };
    let good = jwt::sign(&claims, SECRET);
    assert!(jwt::verify(&good, now, |_| Some(SECRET.to_vec())).is_ok());
    if !tail.is_empty() {
        let bad = format!("{good}{tail}");
        assert!(jwt::verify(&bad, now, |_| Some(SECRET.to_vec())).is_err() || tail.chars().all(|c| c == '='));
    }
    // The same token for another tenant's secret must be rejected.
    assert!(jwt::verify(&good, now, |_| Some(b"other".to_vec())).is_err());
});
