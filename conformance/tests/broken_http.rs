//! How the runner treats a broken HTTP side: a clear exit-2 class error, never a panic.

use std::time::Duration;

use fluxy_conformance::{run, RunConfig, RunError, RunOptions, Target};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn config(endpoint: &str) -> RunConfig {
    RunConfig {
        target: Some(Target {
            endpoint: endpoint.into(),
            api_key: "k".into(),
            ..Target::default()
        }),
        options: RunOptions {
            filters: vec!["msg/*".into()],
            ..RunOptions::default()
        },
        timeout_scale: 0.2,
        ..RunConfig::default()
    }
}

async fn health_ok(s: &MockServer) {
    Mock::given(method("GET"))
        .and(path("/health"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_string(r#"{"ok":true,"version":"x","protocolVersion":"1.0","ts":1}"#),
        )
        .mount(s)
        .await;
}

fn token_ok() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_string(
        r#"{"token":"a.b.c","expiresIn":3600,"expiresAt":"2026-11-26T16:19:14.677Z","claims":{"sub":"u","tid":"t","roles":["member"]}}"#,
    )
}

#[tokio::test]
async fn token_endpoint_500_is_a_setup_error() {
    let s = MockServer::start().await;
    health_ok(&s).await;
    Mock::given(method("POST"))
        .and(path("/auth/token"))
        .respond_with(ResponseTemplate::new(500).set_body_string("boom"))
        .mount(&s)
        .await;
    let e = run(&config(&s.uri())).await.expect_err("must not proceed");
    assert!(matches!(e, RunError::Setup { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("/auth/token") && msg.contains("500"), "{msg}");
}

#[tokio::test]
async fn token_endpoint_garbage_is_a_setup_error() {
    let s = MockServer::start().await;
    health_ok(&s).await;
    Mock::given(method("POST"))
        .and(path("/auth/token"))
        .respond_with(ResponseTemplate::new(200).set_body_string("<html>not json</html>"))
        .mount(&s)
        .await;
    let e = run(&config(&s.uri())).await.expect_err("must not proceed");
    assert!(matches!(e, RunError::Setup { .. }), "{e:?}");
    assert!(e.to_string().contains("not JSON"), "{e}");
}

/// FluxyChat's set-up shapes (a token response without `expiresAt` and `claims.roles`,
/// `POST /rooms` answering 200 and requiring `type`) are deviations to judge, not a reason to
/// stop: the preflight goes on with the token and names every wrong field at once.
#[tokio::test]
async fn fluxychat_setup_shapes_do_not_stop_the_run() {
    use wiremock::matchers::body_partial_json;
    let s = MockServer::start().await;
    health_ok(&s).await;
    // A JWT whose payload is {"sub":"u","tid":"t","exp":4102444800}.
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1IiwidGlkIjoidCIsImV4cCI6NDEwMjQ0NDgwMH0.x";
    Mock::given(method("POST"))
        .and(path("/auth/token"))
        .respond_with(ResponseTemplate::new(200).set_body_string(format!(
            r#"{{"token":"{jwt}","expiresIn":3600,"claims":{{"sub":"u","tid":"t"}}}}"#
        )))
        .mount(&s)
        .await;
    Mock::given(method("POST"))
        .and(path("/rooms"))
        .and(body_partial_json(serde_json::json!({"type":"group"})))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_string(r#"{"ok":true,"roomId":"x","type":"group"}"#),
        )
        .mount(&s)
        .await;
    let env = fluxy_conformance::env::Env::prepare(
        Target {
            endpoint: s.uri(),
            api_key: "k".into(),
            ..Target::default()
        },
        0.2,
        1,
        1,
    )
    .await
    .expect("the preflight proceeds with a usable token");
    assert_eq!(env.tenant, "t");
    let devs: Vec<String> = env
        .setup_deviations
        .iter()
        .map(|(c, w)| format!("{c} {w}"))
        .collect();
    let all = devs.join("\n");
    assert!(
        all.contains("FX-AUTH-1") && all.contains("expiresAt"),
        "{all}"
    );
    assert!(all.contains("claims.roles"), "{all}");
    assert!(
        all.contains("FX-TEN-4") && all.contains("HTTP 200, not 201"),
        "{all}"
    );
}

#[tokio::test]
async fn refused_api_key_says_which_flag() {
    let s = MockServer::start().await;
    health_ok(&s).await;
    Mock::given(method("POST"))
        .and(path("/auth/token"))
        .respond_with(
            ResponseTemplate::new(401)
                .set_body_string(r#"{"error":"invalid_api_key","message":"no","retryable":false}"#),
        )
        .mount(&s)
        .await;
    let e = run(&config(&s.uri())).await.expect_err("must not proceed");
    assert!(
        matches!(
            e,
            RunError::BadApiKey {
                flag: "--api-key",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("--api-key"), "{e}");
}

#[tokio::test]
async fn rooms_endpoint_timing_out_is_a_setup_error() {
    let s = MockServer::start().await;
    health_ok(&s).await;
    Mock::given(method("POST"))
        .and(path("/auth/token"))
        .respond_with(token_ok())
        .mount(&s)
        .await;
    Mock::given(method("POST"))
        .and(path("/rooms"))
        .respond_with(ResponseTemplate::new(201).set_delay(Duration::from_secs(30)))
        .mount(&s)
        .await;
    let e = run(&config(&s.uri())).await.expect_err("must not proceed");
    assert!(matches!(e, RunError::Setup { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("POST /rooms") && msg.contains("timed out"),
        "{msg}"
    );
}

#[tokio::test]
async fn rooms_endpoint_wrong_status_is_a_setup_error() {
    let s = MockServer::start().await;
    health_ok(&s).await;
    Mock::given(method("POST"))
        .and(path("/auth/token"))
        .respond_with(token_ok())
        .mount(&s)
        .await;
    Mock::given(method("POST"))
        .and(path("/rooms"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&s)
        .await;
    let e = run(&config(&s.uri())).await.expect_err("must not proceed");
    assert!(e.to_string().contains("503"), "{e}");
}

#[tokio::test]
async fn unreachable_endpoint_is_reported() {
    // Bind and drop to get a port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(9);
    let e = run(&config(&format!("http://127.0.0.1:{port}")))
        .await
        .expect_err("must not proceed");
    assert!(matches!(e, RunError::Unreachable { .. }), "{e:?}");
    assert!(e.to_string().contains("server is running"), "{e}");
}

#[tokio::test]
async fn bad_endpoint_scheme_is_a_config_error() {
    let e = run(&config("ftp://example"))
        .await
        .expect_err("must not proceed");
    assert!(matches!(e, RunError::Config(_)), "{e:?}");
}

#[tokio::test]
async fn server_breaking_after_setup_gives_errors_not_panics() {
    // Set-up works, then every other route answers garbage: cases end as fail or error.
    let s = MockServer::start().await;
    health_ok(&s).await;
    Mock::given(method("POST"))
        .and(path("/auth/token"))
        .respond_with(token_ok())
        .mount(&s)
        .await;
    Mock::given(method("POST")).and(path("/rooms")).respond_with(ResponseTemplate::new(201).set_body_string(r#"{"room":{"id":"r","name":"n","type":"group","createdBy":"u","createdAt":"2026-11-26T16:19:14.677Z"}}"#)).mount(&s).await;
    let mut c = config(&s.uri());
    c.options.filters = vec![
        "msg/*".into(),
        "his/*".into(),
        "trn/*".into(),
        "fuzz/http-bodies".into(),
    ];
    let rep = run(&c).await.expect("set-up passes");
    assert_eq!(rep.exit_code(), 1);
    assert!(rep
        .cases
        .iter()
        .all(|c| c.verdict != fluxy_conformance::Verdict::Pass || c.id == "trn/sse-keepalive"));
}
