# The source of expected-findings.json (the oracle of tests/zoo_fluxychat.rs).
# Regenerate: python3 expected_findings.py > expected-findings.json
import json
I = "inventory"
F = []
def f(clause, defect, why, observable=True, level="MUST", alt=(), profile=None):
    e = {"defect": defect, "clause": clause, "level": level, "observable": observable, "why": why}
    if alt: e["alternatives"] = list(alt)
    if profile: e["orProfileNotImplemented"] = profile
    F.append(e)
# --- handshake and version
f("FX-HS-5", "no welcome frame (§2.3; Appendix A.22)", "the connect sequence is history|replay, location_snapshot, subscription_succeeded, presence, subscription_count: no welcome ever")
f("FX-HS-6", "snapshot shape (§2.6 history {messages, reactions})", "the snapshot is {type:history, messages:[rows], reactions}: history rows, no events, no hasMore")
f("FX-HS-7", "?lastSeq= not supported (§2.1 connect parameters)", "a connect with lastSeq gets the ordinary history snapshot, never a replay")
f("FX-HS-9", "unsequenced, reordered live delivery (§10.3, §10.4, §2.8)", "concurrent handlers broadcast out of send order and many events carry no seq, so live events are not delivered in seq order", alt=["FX-ORD-2"])
f("FX-HS-10", "early frames processed concurrently (§2.3, §2.8)", "frames queued during set-up run as unserialised tasks, so their effects can come out of order")
f("FX-HS-4", "upgrade-less request answered 400 text 'Expected WebSocket' (§2.1)", "400 with a text body, not an ErrorBody invalid_frame; the runner reads a body that is no ErrorBody at all under FX-ERR-4", alt=["FX-ERR-4"])
f("FX-HS-3", "handshake failures refused with HTTP 401/403 (§2.1, §10.15)", "the allowed HTTP refusal must carry an ErrorBody; FluxyChat's are text or free-text JSON", level="SHOULD")
f("FX-VER-1", "no protocol version (§1.2 /health)", "/health has version 0.2.0 but no protocolVersion; there is no welcome")
f("FX-VER-2", "v parameter ignored (§2.1)", "v=2 (any v) is accepted; never unsupported_version/4009")
f("FX-VER-3", "no subprotocol (§2.1)", "Sec-WebSocket-Protocol: fluxy.v1 is never selected")
# --- auth
f("FX-AUTH-1", "FluxyChat token response (§1.2 POST /auth/token)", "{token, expiresIn, claims:{sub,tid}}: no expiresAt, no claims.roles unless roles were asked; 401 bodies 'api key required'/'invalid api key', not unauthorized/invalid_api_key")
f("FX-AUTH-2", "role filtering (§7 minting)", "no roles -> the token has none (not [\"member\"]); roles outside the set are dropped silently (200, not 400 invalid_frame); agent and moderator are dropped too")
f("FX-AUTH-3", "alg ignored (§7 JWT; §10.16; Appendix A.13)", "a token with alg none (or any alg) and a valid HS256 MAC is accepted; needs jwtSecret")
f("FX-AUTH-4", "string exp accepted (§7 [live]; §10.16)", "exp as a string is coerced like JS (a non-numeric string never expires); needs jwtSecret")
f("FX-AUTH-5", "nbf ignored (§7; Appendix A.13)", "a token whose nbf is in the future is accepted; needs jwtSecret")
f("FX-AUTH-7", "WS identity spoofing (§10.1)", "message, edit, reaction, read and typing take the frame's userId as the author", alt=["FX-EDT-9"])
f("FX-AUTH-9", "no in-band refresh (§5 token refresh; Appendix A.12)", "an auth frame is answered error unknown_event_type; no token_refreshed")
f("FX-AUTH-10", "no close at token expiry (§5)", "a connection outlives its token: no token_expired, no 4005; needs a short-lived token (jwtSecret)")
f("FX-AUTH-11", "not_member never used (§2.1, §1.3)", "non-members get 403 'forbidden: user is not a member of this room' (upgrade) or 403 forbidden (REST), not not_member")
f("FX-AUTH-12", "raw API key is the primary key (§7, §8, §10.16)", "storage is invisible to a black-box runner", observable=False)
f("FX-AUTH-13", "no agent role at all (§7 minting)", "FluxyChat grants no agent privilege by role; the one agent-only frame anyone may send (agentTyping) is FX-AGT-2's finding", observable=False)
f("FX-AUTH-14", "removed members keep their sockets (§1.3 members)", "DELETE /rooms/{id}/members/{u} closes nothing", level="SHOULD")
f("FX-AUTH-15", "room roles unused over WS (§2.4 delete: author only)", "a promoted room moderator still cannot delete others' messages", level="SHOULD")
# --- framing
f("FX-FRM-3", "free-text error frames (§2.5)", "not JSON -> 'Invalid message format or internal error', unknown type -> 'unknown_event_type', missing content -> 'invalid_content: ...': no code, no field", alt=["FX-ERR-1", "FX-ERR-2"])
f("FX-FRM-4", "ghost messages (§10.2): a message frame's id field is acted on", "an extra id on a message frame makes it an unpersisted ghost broadcast under that id", alt=["FX-ORD-7"])
f("FX-FRM-6", "invalid ids answered with free text (§1.2, §2.1)", "bad userId -> 400 'userId required: must be 1-128 chars...', bad room id at the upgrade -> 400 'invalid roomId': never invalid_frame")
f("FX-FRM-7", "no ref (§2.8 no per-frame ack)", "ref is never echoed in any answer", alt=["FX-ACK-8"])
f("FX-FRM-8", "pong without echo (§2.4 ping)", "pong is {type:pong, ts:<server ms>}; the ping's ts is not echoed")
f("FX-FRM-9", "binary frames (§2.7; Appendix A.21)", "client binary frames are re-broadcast (kinds 1,2) or answered in binary, never binary_not_supported; the server sends a Yjs binary frame to every socket after each create/edit/delete", alt=["FX-FRM-1"])
# --- messages
f("FX-MSG-1", "global ids, racy seq, no ack (§3, §10.3)", "id is a global autoincrement (not the seq); seq and version are missing whenever allocation loses the race", alt=["FX-MSG-7"])
f("FX-MSG-3", "length counted in UTF-16 code units (§9, message-validation.js)", "4000 astral characters (8000 UTF-16 units) are rejected; content up to 4000 scalar values must be accepted")
f("FX-MSG-4", "parentId not validated (§3 threads; §2.4)", "a WS message naming a non-existent parentId is accepted; REST ignores parentId (it reads replyTo)")
f("FX-MSG-5", "WS attachments not limited (§2.4, §9)", "11 attachments or a non-http URL are accepted over the WebSocket")
f("FX-MSG-6", "REST messages unsequenced (§1.3 POST /messages; §3 dedup)", "201 {message} without seq or version; a repeat answers 200 with the stored history row and no duplicate:true")
f("FX-MSG-7", "global message ids (§0, §3)", "ids come from one D1 autoincrement across all rooms and tenants, never equal to the seq", alt=["FX-MSG-1"])
f("FX-MSG-8", "announcement policy REST-only (§10.11)", "a plain member posts to an announcement room over the WebSocket")
# --- ordering
f("FX-ORD-1", "seq unreliable (§10.3)", "concurrent sends lose their seq, REST/stream messages never get one, and the counter skips numbers")
f("FX-ORD-2", "broadcast order is not seq order (§2.8, §10.4)", "events arrive out of seq order and with gaps", alt=["FX-HS-9"])
f("FX-ORD-3", "no per-socket FIFO (§2.8, §10.4)", "frames of one connection are handled concurrently, so ids, seqs and broadcasts follow D1 timing, not send order")
f("FX-ORD-5", "different shapes per path (§3 canonical history shape vs §2.6 message)", "the snapshot and /api/messages carry history rows (editedAt, deletedAt, kind, visibility...), live delivery a message frame, resume a log row")
f("FX-ORD-7", "ghost messages (§10.2)", "a message frame carrying an id is broadcast (with a seq) but never stored", alt=["FX-FRM-4"])
# --- ack
f("FX-ACK-1", "no acknowledgement (§2.8; Appendix A.3)", "the sender only gets its broadcast copy")
f("FX-ACK-2", "invalid clientMessageId ignored (§2.4)", "an invalid clientMessageId is silently dropped, the message is created")
f("FX-ACK-3", "no acknowledgement (§2.8)", "no ack, so none can precede the broadcast", alt=["FX-ACK-1"])
f("FX-ACK-4", "resend re-broadcast (§10.18, §3)", "a WS resend with the same clientMessageId re-broadcasts the new content with a fresh createdAt under the old id")
f("FX-ACK-5", "idempotency across transports (§3 dedup)", "REST then WS with one key re-broadcasts; WS then REST returns a history row without duplicate:true", alt=["FX-ACK-4"])
f("FX-ACK-6", "idempotency key scoped per room, not per user (§3 dedup, §8 unique index)", "a second user's message with the same clientMessageId is swallowed into the first user's message")
f("FX-ACK-7", "no dedup of reactions and reads (§8, §10.9)", "adding an existing reaction or re-reading produces another event; nothing answers with an ack without seq", alt=["FX-EDT-5", "FX-EDT-8"])
f("FX-ACK-8", "errors carry no ref (§2.5)", "a failing request's error has no ref", alt=["FX-FRM-7"])
# --- resume
f("FX-RES-1", "FluxyChat resume (§2.4 resume)", "replay is {events:[log rows], lastSeq, currentSeq}: no fromSeq/hasMore, capped at 200, and the log misses REST, stream and race-lost events")
f("FX-RES-2", "replay events are log rows (§2.4 resume)", "replayed items are {seq,messageId,eventType,version,createdAt,payload}, not the delivered events. The same replay frame is not a Fluxy replay at all (FX-RES-1), which the resume cases check first", alt=["FX-RES-1"])
f("FX-RES-3", "holes in the seq space (§10.3)", "a lost seq is neither replayed nor delivered live with that seq. The replay cannot be judged (FX-RES-1); the holes show live as gaps, which the resume cases report under FX-ORD-2", alt=["FX-ORD-2"])
f("FX-RES-4", "no resync_required (§2.4 resume)", "lastSeq > currentSeq gives an empty replay; too far back gives a partial replay of 200")
f("FX-RES-5", "resumeWindow not advertised (no welcome)", "without limits in a welcome there is no resumeWindow to check; reported as FX-LIM-5", observable=False)
# --- history
f("FX-HIS-1", "no GET /rooms/{id}/history (§4; Appendix A.7)", "the route answers 404 text 'Not found'; reported either as an FX-HIS-1 failure or as the history profile 'not implemented'", profile="history")
for c in ["FX-HIS-2", "FX-HIS-3", "FX-HIS-4", "FX-HIS-5", "FX-HIS-6", "FX-HIS-10"]:
    f(c, "no cursor history route (§4)", "the route does not exist: every check of it is blocked behind FX-HIS-1", observable=False)
f("FX-HIS-8", "legacy pagination (§4, §10.17)", "GET /api/messages (which exists) has no hasMore and no nextCursor; before is a timestamp that skips rows sharing its millisecond. FX-HIS-8 is a clause of the history profile (spec section 17), which FluxyChat does not implement (no /rooms/{id}/history): by FX-PRF-2 its clauses then do not apply, so the profile reported not implemented meets this entry", profile="history")
f("FX-HIS-11", "before compared as a string (§4)", "'...05Z' sorts after '...05.678Z'; a non-timestamp before is not rejected", level="SHOULD")
# --- presence
f("FX-PRE-1", "presence shape and ghosts (§2.6 presence, §10.13)", "users holds recovered (read-receipt) users and is not sorted; members has no per-user connection counts", alt=["FX-PRE-3"])
f("FX-PRE-3", "presence ghosts (§10.13)", "users recovered from the latest 100 read receipts stay in presence.users after they disconnect")
f("FX-PRE-5", "typing echoed to the sender with the frame's userId (§2.4 typing)", "typing goes to every socket including the sender, with the frame's userId")
# --- agents
f("FX-AGT-2", "agent frames not role-gated (§2.4 agentTyping; §2.6)", "agentTyping from anyone is broadcast as-is; agentRun/tool_*/approval_request get unknown_event_type, not forbidden")
f("FX-AGT-8", "FluxyChat streams (§2.4 stream)", "start answers {type:stream, op:started}, not an ack; end sends streaming:false; another user's delta gets stream_not_active, not forbidden")
f("FX-AGT-11", "stream edits unversioned (§2.4 stream; §3)", "stream delta/end edits carry no version")
for c in ["FX-AGT-3", "FX-AGT-4", "FX-AGT-5", "FX-AGT-6", "FX-AGT-7", "FX-AGT-10"]:
    # FX-AGT-5 (tool results) and FX-AGT-7 (decisions) sit behind the refusal of the frames
    # that open them (tool_call, approval_request): the cases that check them report that
    # refusal under FX-AGT-4 / FX-AGT-6, the clause they check first.
    alt = {"FX-AGT-5": ["FX-AGT-4"], "FX-AGT-7": ["FX-AGT-6"]}.get(c, [])
    f(c, "agent events unsupported over WS (§2.4 allowlist; §10.8)", "agentRun, tool_*, approval_* are unknown_event_type even for a token with role agent; observable only with a token crafted with roles [agent] (jwtSecret), since /auth/token drops the role", alt=alt)
f("FX-AGT-9", "agentTyping broadcast as-is (§2.4)", "the frame's agentId is echoed (not the verified id) and the sender gets it too; needs a crafted agent token")
# --- edits
f("FX-EDT-1", "edit by non-author broadcast (§2.4 edit; §10.1)", "the UPDATE matches no row but the edit is broadcast anyway, with no error")
f("FX-EDT-2", "no expectedVersion (§2.4 edit)", "expectedVersion is ignored: no conflict")
f("FX-EDT-3", "WS delete author-only (§2.4 delete)", "room owner/admin/moderator and token owner/admin get error 'forbidden'")
f("FX-EDT-4", "deleted is not final (§2.4, §3)", "a deleted message can be edited, reacted to and deleted again over the WebSocket")
f("FX-EDT-5", "reactions not unique (§8, §3)", "the same (user, message, emoji) can be added repeatedly, each an event")
f("FX-EDT-6", "emoji not validated over WS (§2.4 reaction)", "empty or whitespace-padded emoji are accepted")
f("FX-EDT-7", "unknown message ids (§2.4, §10.9)", "edit of an unknown id is broadcast; reaction/read fail the foreign key with the generic error; delete says 'message not found' with no code")
f("FX-EDT-8", "read receipts not monotonic (§10.9)", "every read produces an event, also at or below the current position")
f("FX-EDT-9", "identity from frames (§10.1)", "edit, reaction and read events carry the frame's userId", alt=["FX-AUTH-7"])
f("FX-EDT-10", "no error precedence (§2.4)", "a non-author editing a deleted message gets no error at all", level="SHOULD")
# --- transports
f("FX-TRN-1", "cold-room SSE (§6, §10.14); Accept required", "SSE on a room that never had a WebSocket answers 403 Forbidden; a request without Accept gets 406")
f("FX-TRN-2", "SSE without ids (§6; Appendix A.8)", "data-only events: no id:, no event:")
f("FX-TRN-3", "no Last-Event-ID (§6)", "Last-Event-ID is ignored: the stream starts with the latest 50 messages")
f("FX-TRN-4", "no ready event (§6)", "the first event is data {type:history, messages:[...]}, not event: ready")
f("FX-TRN-7", "no long-polling route (§6; Appendix A.9)", "GET /rooms/{id}/poll answers 404 text 'Not found'")
f("FX-TRN-14", "no long-polling route (§6)", "there is no poll to call without a cursor: blocked behind FX-TRN-7", observable=False)
# --- errors
f("FX-ERR-1", "error frame shape (§2.5; Appendix A.25)", "error frames carry only message (free text): no code, no retryable")
f("FX-ERR-2", "no error codes (§2.5)", "no code field; message is free text. The same frames violate FX-ERR-1 (no code, no retryable), which err/error-frame-shape checks first: one case reports one clause", alt=["FX-ERR-1"])
f("FX-ERR-3", "no retryable (§2.5)", "retryable is never sent. The same frames violate FX-ERR-1 (no code, no retryable), which err/error-frame-shape checks first", alt=["FX-ERR-1"])
f("FX-ERR-4", "three error body shapes (§1.1)", "HTTP errors are text (401 'Unauthorized', 404 'Not found') or {traceId, error:<free text>}")
f("FX-ERR-9", "unknown routes (§1.1)", "404 with text 'Not found'; a wrong method also gets 404, never 405")
f("FX-ERR-5", "close codes (§2.2)", "FluxyChat only closes on moderator termination (4001) or a DO re-check (1008) that a Fluxy runner cannot trigger", observable=False)
# --- limits
f("FX-LIM-2", "maxContentChars not advertised (no welcome)", "there is no welcome to carry limits (the same evidence as FX-HS-5)", alt=["FX-LIM-5", "FX-HS-5"])
f("FX-LIM-3", "FluxyChat WS rate limit (§7, §2.5)", "only message frames count, 60/min per (room, frame userId); the error is 'rate_limit_exceeded: retry in Ns' with retryAfterSeconds: no code, no retryAfterMs")
f("FX-LIM-5", "no limits advertised (no welcome)", "no welcome, so no limits (the same evidence as FX-HS-5)", alt=["FX-HS-5"])
f("FX-LIM-7", "REST 429 shape (§1.1, §7)", "POST /messages over 60/min answers 429 {error:rate_limit_exceeded, retryAfterSeconds} + Retry-After: wrong code, no retryAfterMs")
f("FX-LIM-9", "WS rate limit 60/min (§7 RATE_LIMIT_WS_MESSAGES_PER_MINUTE; REST the same)", "sustained 1 message/s per user and room, below the 10 frames/s floor: the 61st message within a minute is refused")
f("FX-LIM-10", "no heartbeat/idle values advertised (no welcome)", "nothing to check without a welcome", observable=False)
f("FX-LIM-8", "no server idle timeout (§5: the heartbeat is client-side)", "the server never closes idle sockets, but advertises no idleTimeoutMs, so a runner cannot tell it from a long timeout", observable=False)
# --- tenancy
f("FX-TEN-2", "global room ids (§0, §8, §10.12)", "creating an id another tenant uses answers 409 room_id_already_exists")
f("FX-TEN-3", "cross-tenant paths (§7 membership, §10.12)", "room_members has no project: the same user id in another tenant reaches a room; 409 reveals foreign room ids; a foreign room answers 403, not 404/4404")
f("FX-TEN-4", "FluxyChat room creation (§1.3 POST /rooms; Appendix A.23)", "type is required (400 without it), success is 200 not 201, re-creating an id of the same tenant merges members (200) instead of 409")
f("FX-TEN-8", "room name refused with free text (§1.3 POST /rooms)", "an empty or 257-character name gets 400 {traceId, error:'name required (1-256 chars)'}, not an ErrorBody invalid_frame (the same free-text refusals as FX-FRM-6's invalid ids)", alt=["FX-ERR-4"])
f("FX-TEN-5", "member changes need a token role (§1.3 members)", "POST/DELETE /rooms/{id}/members require token role owner/admin; the room's owner (room role) gets 403")
f("FX-TEN-6", "GET /rooms cached 30 s (§1.3)", "rows are FluxyChat's {id,type,name,created_at,pinned_*,unreadCount} (no RoomListResponse), and a membership change within 30 s of a listing is not reflected in the next one")
# --- compat (section 18, all SHOULD)
f("FX-ORD-9", "createdAt stamped at processing time (§3 createdAt)", "two messages can share a millisecond; nothing makes room time stamps strictly increasing", level="SHOULD")
f("FX-CMP-4", "snapshot envelope (§2.1 replay=connect)", "replay=connect|true|1 sends the snapshot as a frame of type replay, not history", level="SHOULD", alt=["FX-CMP-1"])
f("FX-CMP-6", "identity hints used, not ignored (§10.1)", "the frame userId is used as the author (not ignored); presenceInfo and cache are honoured", level="SHOULD")
# --- profiles
f("FX-PRF-2", "unimplemented history profile answered with text 404 (§1.1 fall-through)", "GET /rooms/{id}/history answers 404 with text 'Not found', not an ErrorBody not_found; unimplemented agent frames get 'unknown_event_type' in message, not error unknown_type", alt=["FX-ERR-9"])
# --- section-10 defects with no Fluxy clause a runner can reach
def na(defect, why):
    F.append({"defect": defect, "clause": None, "level": None, "observable": False, "why": why})
na("§10.2 ghost messages via POST /events and /admin/announcement", "not Fluxy routes; the WS ghost is listed under FX-ORD-7/FX-FRM-4")
na("§10.5 string ids in REST PATCH/DELETE/reaction broadcasts", "PATCH/DELETE /messages/:id and REST reactions are not Fluxy routes; a Fluxy runner never triggers them")
na("§10.6 SDK drops frames", "client-side (TS SDK); not server behaviour")
na("§10.7 dead stage frames", "stage_* is not Fluxy; a Fluxy runner never sends it")
na("§10.8 bogus agent frames", "produced by the agent runtime (/agents/:id/invoke), not in this zoo's chat core nor reachable through Fluxy")
na("§10.9 REST read receipts unbroadcast, no access check", "POST /rooms/:id/read is not a Fluxy route (the WS part is FX-EDT-7/FX-EDT-8)")
na("§10.10 visibility leaks", "whisper/role visibility is not part of Fluxy")
na("§10.11 guest writes over WS", "Fluxy has no guest role (the announcement part is FX-MSG-8)")
na("§10.12 agent-invoke/admin-announcement without project check; general seeding collision", "not Fluxy routes (the rest of §10.12 is FX-TEN-2/FX-TEN-3)")
na("§10.15 user channel ignores ping", "/ws/user is not a Fluxy endpoint")
na("§10.16 self-host keys mint owner/admin; moderator unmintable", "Fluxy lets an API key mint owner/admin too (FX-AUTH-2); the dropped moderator role is under FX-AUTH-2")
na("§1.2 POST /dev/provision and /platform/bootstrap return API keys (FX-AUTH-17)", "provisioning routes, not chat core and not Fluxy routes; this zoo does not serve them")
na("§10.19 nextRetryAt null in useChat", "client-side (SDK)")
na("§10.20 doc and code drift", "documentation, not wire behaviour")
doc = {
  "server": "conformance/zoo/fluxychat/server.py",
  "source": "../shared/reference/fluxychat-wire-inventory.md (section numbers as cited)",
  "semantics": "Each entry is a Fluxy clause FluxyChat violates. A MUST entry with observable=true must be reported as a failing case citing `clause` (or one of `alternatives`, the same evidence read under a neighbouring clause). A finding whose `orProfileNotImplemented` names a profile is also met when the report gives that profile the status not-implemented. No failing case may cite a clause outside the union of `clause` and `alternatives` over the observable entries (an unobservable entry must never be failed: e.g. the FX-HIS-2..10 checks are blocked behind FX-HIS-1). SHOULD entries surface as non-strict, never as fail. A failure counts only on real evidence: it must cite a clause of its own case and must not rest on the missing ref/ack (expected 'an answer with ref ...', unless it cites FX-FRM-7, FX-ACK-1, FX-ACK-3 or FX-ACK-8), on the pong without echo (expected '... echoing the ping ...', unless FX-FRM-8), on FluxyChat's 400 for a POST /rooms without type (unless FX-TEN-4) or on the 404 of a route FluxyChat lacks (unless FX-HIS-1, FX-TRN-7 or FX-ERR-9). Entries with clause null are section-10 defects no Fluxy clause can reach.",
  "findings": F,
}
print(json.dumps(doc, indent=1, ensure_ascii=False))
