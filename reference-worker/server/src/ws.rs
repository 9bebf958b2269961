//! The room WebSocket: handshake checks after the upgrade, then a reader and a writer around
//! the room task.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use fluxy_protocol::common::SUBPROTOCOL;
use fluxy_protocol::request::{self, HandshakeQuery};
use fluxy_protocol::server::{BatchFrame, ErrorFrame};
use fluxy_protocol::{CloseCode, ErrorCode, ServerFrame};
use fluxy_room::ConnectOptions;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};

use crate::http::{access, handle_for, identity, membership, request_token, verify, ApiError};
use crate::rooms::{out_queue, ConnRx, Out, RoomMsg};
use crate::App;

/// Hard transport limit; larger frames close with 1009. Frames over 64 KiB but under this get
/// a `payload_too_large` error and the connection stays open.
const TRANSPORT_LIMIT: usize = 1 << 20;

/// Read buffer of each WebSocket (tungstenite's default is 128 KiB). tungstenite zeroes the
/// buffer's free space up to this size before every read and keeps it allocated for the life
/// of the connection, so the default costs about 128 KiB of resident memory per connection
/// and a 128 KiB memset per read. The buffer still grows for a larger frame (up to
/// [`TRANSPORT_LIMIT`]); only the size of a single read is bounded.
const READ_BUFFER: usize = 8 * 1024;

/// Write buffer threshold of each WebSocket (tungstenite's default is 128 KiB): frames are
/// buffered until this many bytes are queued, then written. One group commit releases
/// hundreds of events to every connection at once; with 128 KiB the buffer is written in
/// large partial writes and tungstenite moves the unsent rest to the front after each one,
/// which cost about a tenth of the CPU per delivery in one A/B pair of `fluxy-bench` fan-out
/// runs (docs/benchmarks.md).
const WRITE_BUFFER: usize = 16 * 1024;

pub(crate) async fn ws_route(
    State(app): State<Arc<App>>,
    Path(room_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(_) => {
            return ApiError::new(ErrorCode::InvalidFrame, "a WebSocket upgrade is required")
                .into_response()
        }
    };
    let token = request_token(&headers, &q);
    ws.protocols([SUBPROTOCOL])
        .max_message_size(TRANSPORT_LIMIT)
        .max_frame_size(TRANSPORT_LIMIT)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .on_upgrade(move |socket| session(app, room_id, q, token, socket))
}

async fn reject(mut socket: WebSocket, code: ErrorCode, msg: &str, close: CloseCode) {
    let e = ServerFrame::Error(ErrorFrame::new(code, msg)).encode();
    let _ = socket.send(Message::Text(e.into())).await;
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: close.code(),
            reason: close.reason().into(),
        })))
        .await;
    // Drain until the peer answers the close (bounded).
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while let Some(Ok(m)) = socket.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

async fn session(
    app: Arc<App>,
    room_id: String,
    q: HashMap<String, String>,
    token: Option<String>,
    socket: WebSocket,
) {
    if let Err(e) = request::check_version(&q) {
        return reject(socket, e.code, &e.message, CloseCode::UnsupportedVersion).await;
    }
    let Some(token) = token else {
        return reject(
            socket,
            ErrorCode::Unauthorized,
            "missing token",
            CloseCode::Unauthorized,
        )
        .await;
    };
    let claims = match verify(&app, &token).await {
        Ok(c) => c,
        Err(e) => {
            let close = request::handshake_close_code(e.code());
            return reject(socket, e.code(), &e.to_string(), close).await;
        }
    };
    let a = match access(&app, &claims, &room_id).await {
        Ok(a) => a,
        Err(e) => {
            let close = request::handshake_close_code(e.code());
            return reject(socket, e.code(), &e.0.message, close).await;
        }
    };
    let hq = HandshakeQuery::parse(&q);
    let mut options = ConnectOptions {
        replay: hq.replay,
        replay_limit: hq.replay_limit,
        last_seq: hq.last_seq,
        compat: hq.compat,
        membership_version: a.version,
    };
    // `?batch=1`: consecutive queued timeline events may go out as one `batch` frame
    // `[FX-TRN-9]`.
    let batching = hq.batch;
    let Ok(h) = handle_for(&app, &a).await else {
        return reject(
            socket,
            ErrorCode::InternalError,
            "storage failure",
            CloseCode::InternalError,
        )
        .await;
    };
    // Membership again, now that the room cannot unload before our `Open`: any kick or role
    // change written after this read reaches this room with a newer version, and the room
    // applies the newer state to the `Open` (issue 13: the handshake race).
    let role = match membership(&app, &a.room, &claims.sub).await {
        Ok((role, version)) => {
            options.membership_version = version;
            role
        }
        Err(e) => {
            let close = request::handshake_close_code(e.code());
            return reject(socket, e.code(), &e.0.message, close).await;
        }
    };
    if let Err(e) = request::check_room_access(&claims, a.room.room_type, role) {
        let close = request::handshake_close_code(e.code);
        return reject(socket, e.code, &e.message, close).await;
    }
    if let Some(hook) = &app.config.handshake_hook {
        (hook.0)(claims.sub.clone()).await;
    }
    let conn = app.next_conn.fetch_add(1, Ordering::Relaxed);
    app.live_sessions.fetch_add(1, Ordering::Relaxed);
    let (out_tx, out_rx) = out_queue(app.config.out_queue_frames);
    // A stopped room (shutdown) drops the message and with it the writer's queue: the writer
    // then closes with 1001.
    let _ = h
        .send(RoomMsg::Open {
            conn,
            identity: identity(&claims, role),
            options,
            out: out_tx,
        })
        .await;
    let (sink, mut stream) = socket.split();
    let mut writer = tokio::spawn(write_loop(sink, out_rx, batching));
    let mut writer_end = None;
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                // Waiting for room inbox space here stops reading the socket: TCP pushes back
                // on a client that sends faster than the room handles. A stopped room
                // (shutdown) ignores the frame; its writer closes the connection.
                Some(Ok(Message::Text(t))) => {
                    let _ = h.send(RoomMsg::Text(conn, t.as_str().to_owned())).await;
                }
                Some(Ok(Message::Binary(_))) => {
                    let _ = h.send(RoomMsg::Binary(conn)).await;
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            end = &mut writer, if writer_end.is_none() => {
                let end = end.unwrap_or(WriterEnd::Gone);
                writer_end = Some(end);
                if end == WriterEnd::Killed {
                    // The peer is not reading: waiting for its close reply is pointless.
                    break;
                }
            }
        }
    }
    let _ = h.send(RoomMsg::Closed(conn)).await;
    // Drop the handle at once: a room only unloads when no handle is held.
    drop(h);
    if writer_end.is_none() {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), writer).await;
    }
    app.live_sessions.fetch_sub(1, Ordering::Relaxed);
}

/// How the writer of a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriterEnd {
    /// Sent a close frame queued by the room (or the room went away).
    Closed,
    /// The room gave up on the connection (queue full); close frame attempted, socket dropped.
    Killed,
    /// The socket failed.
    Gone,
}

/// Feed the coalesced timeline events: one `batch` frame, or the event itself when alone.
async fn feed_events(
    sink: &mut SplitSink<WebSocket, Message>,
    events: &mut Vec<Utf8Bytes>,
) -> Result<(), axum::Error> {
    let text = match events.as_slice() {
        [] => return Ok(()),
        [one] => one.clone(),
        many => {
            let texts: Vec<&str> = many.iter().map(Utf8Bytes::as_str).collect();
            BatchFrame::join(&texts).into()
        }
    };
    events.clear();
    sink.feed(Message::Text(text)).await
}

/// How long a dropped slow consumer gets to take its close frame.
const KILL_CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

async fn send_close(sink: &mut SplitSink<WebSocket, Message>, code: CloseCode) {
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code: code.code(),
            reason: code.reason().into(),
        })))
        .await;
}

/// Write what the room queues, flushing once per batch. Never blocks the room: the room only
/// ever `try_send`s, and when it gives up (`kill`) the pending write is abandoned.
///
/// With `batching`, consecutive queued timeline events are written as one `batch` frame (a
/// single event as itself); any other frame first flushes them, so the order of frames is
/// unchanged `[FX-TRN-11]`.
async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    q: ConnRx,
    batching: bool,
) -> WriterEnd {
    let ConnRx {
        frames: mut rx,
        kill,
    } = q;
    let kill = async move {
        match kill.await {
            Ok(code) => code,
            // The room dropped the queue without killing it: only `rx` matters then.
            Err(_) => std::future::pending().await,
        }
    };
    tokio::pin!(kill);
    let work = async {
        let mut events: Vec<Utf8Bytes> = Vec::new();
        while let Some(first) = rx.recv().await {
            let mut next = Some(first);
            // Feed everything queued, then flush once.
            while let Some(chunk) = next.take() {
                for o in chunk {
                    match o {
                        Out::Event(t) if batching => events.push(t),
                        Out::Text(t) | Out::Event(t) => {
                            if feed_events(&mut sink, &mut events).await.is_err()
                                || sink.feed(Message::Text(t)).await.is_err()
                            {
                                return WriterEnd::Gone;
                            }
                        }
                        Out::Close(code) => {
                            let _ = feed_events(&mut sink, &mut events).await;
                            send_close(&mut sink, code).await;
                            return WriterEnd::Closed;
                        }
                    }
                }
                next = rx.try_recv();
            }
            if feed_events(&mut sink, &mut events).await.is_err() || sink.flush().await.is_err() {
                return WriterEnd::Gone;
            }
        }
        // The room dropped us without a close code (shutdown races): say goodbye.
        send_close(&mut sink, CloseCode::GoingAway).await;
        WriterEnd::Closed
    };
    let code = tokio::select! {
        biased;
        code = &mut kill => code,
        end = work => return end,
    };
    // Killed: the close frame goes after whatever is already buffered; bounded, since the
    // peer may never read again.
    let _ = tokio::time::timeout(KILL_CLOSE_GRACE, send_close(&mut sink, code)).await;
    WriterEnd::Killed
}
