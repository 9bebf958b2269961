//! Every conformance case, by group, and helpers shared by case bodies.

use fluxy_protocol::server::AckFrame;
use fluxy_protocol::{ErrorCode, ServerFrame};
use serde_json::{json, Value};

use crate::case::{fail, Case, CaseError};
use crate::ctx::{Conn, Ctx, Incoming, User};

pub mod ackg;
pub mod agt;
pub mod auth;
pub mod edt;
pub mod err;
pub mod frm;
pub mod his;
pub mod hs;
pub mod lim;
pub mod msg;
pub mod ord;
pub mod pre;
pub mod res;
pub mod ten;
pub mod trn;

/// Every case, in report order.
pub fn all() -> Vec<Case> {
    let mut v = Vec::new();
    v.extend(hs::cases());
    v.extend(auth::cases());
    v.extend(frm::cases());
    v.extend(msg::cases());
    v.extend(ord::cases());
    v.extend(ackg::cases());
    v.extend(res::cases());
    v.extend(his::cases());
    v.extend(pre::cases());
    v.extend(agt::cases());
    v.extend(edt::cases());
    v.extend(trn::cases());
    v.extend(lim::cases());
    v.extend(err::cases());
    v.extend(ten::cases());
    v.extend(crate::fuzz::cases());
    v.extend(crate::property::cases());
    v
}

/// A `message` frame.
pub fn msg(content: &str, r: &str) -> Value {
    json!({"type":"message","content":content,"ref":r})
}

/// A `message` frame with a clientMessageId.
pub fn msg_c(content: &str, cmid: &str, r: &str) -> Value {
    json!({"type":"message","content":content,"clientMessageId":cmid,"ref":r})
}

/// Send a message and wait for its ack (failing `FX-ACK-1` without one).
pub async fn send(ctx: &Ctx, c: &mut Conn, content: &str) -> Result<AckFrame, CaseError> {
    let r = ctx.r();
    c.send_json(&msg(content, &r))?;
    let a = c.ack("FX-ACK-1", &r).await?;
    if a.seq.is_none() || a.id.is_none() {
        return Err(fail(
            "FX-ACK-1",
            "the ack of a new message carries id and seq",
            format!("{a:?}"),
        ));
    }
    Ok(a)
}

/// Send any frame (as JSON with a fresh ref) and wait for the ack.
pub async fn req(
    ctx: &Ctx,
    c: &mut Conn,
    clause: &str,
    mut frame: Value,
) -> Result<AckFrame, CaseError> {
    let r = ctx.r();
    frame["ref"] = json!(r);
    c.send_json(&frame)?;
    c.ack(clause, &r).await
}

/// Send any frame (with a fresh ref) and expect `error code`.
pub async fn req_err(
    ctx: &Ctx,
    c: &mut Conn,
    clause: &str,
    mut frame: Value,
    code: ErrorCode,
) -> Result<(), CaseError> {
    let r = ctx.r();
    frame["ref"] = json!(r);
    c.send_json(&frame)?;
    c.expect_error(clause, &r, code).await?;
    Ok(())
}

/// Owner `a`, member `b`, a room, and both connected.
pub async fn pair(ctx: &Ctx) -> Result<(User, User, String, Conn, Conn), CaseError> {
    let a = ctx.user("a").await?;
    let b = ctx.user("b").await?;
    let room = ctx.room(&a, &[&b]).await?;
    let ca = ctx.connect(&a, &room).await?;
    let cb = ctx.connect(&b, &room).await?;
    Ok((a, b, room, ca, cb))
}

/// Expect a handshake failure: either (SHOULD) an `error code` frame then close `close`,
/// or (MAY) an HTTP refusal with the code's status. In both cases nothing else (FX-HS-2).
pub async fn expect_rejected(
    c: &mut Conn,
    clause: &str,
    code: ErrorCode,
    close: u16,
) -> Result<(), CaseError> {
    let d = c.wait_dur() * 2;
    let end = c.wait_close(clause, d).await;
    let log = c.log.clone();
    for it in &log {
        if let Some(f) = it.frame() {
            if matches!(
                f,
                ServerFrame::Welcome(_)
                    | ServerFrame::History(_)
                    | ServerFrame::Replay(_)
                    | ServerFrame::SubscriptionSucceeded(_)
                    | ServerFrame::Presence(_)
            ) || f.clone().into_timeline().is_some()
            {
                return Err(fail(
                    "FX-HS-2",
                    "no welcome, snapshot or events on a rejected connection",
                    f.encode(),
                ));
            }
        }
    }
    if let Some(Incoming::Refused { status, body }) = log.first() {
        let got = serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned));
        if *status == code.http_status() && got.as_deref() == Some(code.as_str()) {
            return Ok(());
        }
        return Err(fail(
            clause,
            format!(
                "rejection with {code} (HTTP {} or close {close})",
                code.http_status()
            ),
            format!("HTTP {status} {body}"),
        ));
    }
    let errs: Vec<_> = log
        .iter()
        .filter_map(|i| match i.frame() {
            Some(ServerFrame::Error(e)) => Some(e.code),
            _ => None,
        })
        .collect();
    let closed = end?;
    if !errs.contains(&code) {
        if closed == Some(close) {
            return Err(fail(
                "FX-HS-3",
                format!("an `error {code}` frame before close {close}"),
                format!("errors {errs:?}, close {closed:?}"),
            ));
        }
        return Err(fail(
            clause,
            format!("`error {code}` and close {close}"),
            format!("errors {errs:?}, close {closed:?}"),
        ));
    }
    if closed != Some(close) {
        return Err(fail(
            "FX-ERR-5",
            format!("close code {close}"),
            format!("close {closed:?}"),
        ));
    }
    Ok(())
}

/// The `error` frames received so far.
pub fn errors(c: &Conn) -> Vec<fluxy_protocol::server::ErrorFrame> {
    c.frames()
        .into_iter()
        .filter_map(|f| match f {
            ServerFrame::Error(e) => Some(e),
            _ => None,
        })
        .collect()
}

/// Current seq of a room via history.
pub async fn current_seq(ctx: &Ctx, u: &User, room: &str) -> Result<u64, CaseError> {
    Ok(ctx.history(u, room, "limit=1").await?.current_seq)
}
