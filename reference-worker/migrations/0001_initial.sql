-- Fluxy reference server schema, v1.
-- Plain SQLite DDL: applies unchanged with `wrangler d1 migrations apply` (Cloudflare D1)
-- and with the native shell (rusqlite). No PRAGMAs here; the native shell sets its own.
-- Every room-scoped table is keyed by (tenant_id, room_id, ...) so tenants never share rows.

CREATE TABLE IF NOT EXISTS server_meta (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS tenants (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  jwt_secret TEXT NOT NULL,
  created_at INTEGER NOT NULL
);

-- API keys are stored as SHA-256 hex digests, never in clear.
CREATE TABLE IF NOT EXISTS api_keys (
  key_hash TEXT PRIMARY KEY,
  tenant_id TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  revoked_at INTEGER
);

CREATE TABLE IF NOT EXISTS rooms (
  tenant_id TEXT NOT NULL,
  id TEXT NOT NULL,
  name TEXT NOT NULL,
  type TEXT NOT NULL,
  created_by TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  PRIMARY KEY (tenant_id, id)
);

CREATE TABLE IF NOT EXISTS room_members (
  tenant_id TEXT NOT NULL,
  room_id TEXT NOT NULL,
  user_id TEXT NOT NULL,
  role TEXT NOT NULL,
  joined_at INTEGER NOT NULL,
  PRIMARY KEY (tenant_id, room_id, user_id)
);

-- The timeline: one row per event, body = the exact JSON delivered on every transport.
CREATE TABLE IF NOT EXISTS events (
  tenant_id TEXT NOT NULL,
  room_id TEXT NOT NULL,
  seq INTEGER NOT NULL,
  type TEXT NOT NULL,
  actor TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  body TEXT NOT NULL,
  PRIMARY KEY (tenant_id, room_id, seq)
);

CREATE INDEX IF NOT EXISTS events_by_type ON events (tenant_id, room_id, type, seq);

-- Current state of each message (id = seq of its creating event).
CREATE TABLE IF NOT EXISTS messages (
  tenant_id TEXT NOT NULL,
  room_id TEXT NOT NULL,
  id INTEGER NOT NULL,
  user_id TEXT NOT NULL,
  content TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  edited_at INTEGER,
  parent_id INTEGER,
  version INTEGER NOT NULL,
  deleted INTEGER NOT NULL DEFAULT 0,
  streaming INTEGER NOT NULL DEFAULT 0,
  client_message_id TEXT,
  attachments TEXT,
  PRIMARY KEY (tenant_id, room_id, id)
);

CREATE TABLE IF NOT EXISTS reactions (
  tenant_id TEXT NOT NULL,
  room_id TEXT NOT NULL,
  message_id INTEGER NOT NULL,
  user_id TEXT NOT NULL,
  emoji TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  PRIMARY KEY (tenant_id, room_id, message_id, user_id, emoji)
);

CREATE TABLE IF NOT EXISTS read_positions (
  tenant_id TEXT NOT NULL,
  room_id TEXT NOT NULL,
  user_id TEXT NOT NULL,
  message_id INTEGER NOT NULL,
  PRIMARY KEY (tenant_id, room_id, user_id)
);

-- Idempotency keys: (tenant, room, user, clientMessageId) -> the original ack.
CREATE TABLE IF NOT EXISTS idempotency (
  tenant_id TEXT NOT NULL,
  room_id TEXT NOT NULL,
  user_id TEXT NOT NULL,
  client_message_id TEXT NOT NULL,
  seq INTEGER NOT NULL,
  message_id INTEGER,
  created_at INTEGER NOT NULL,
  PRIMARY KEY (tenant_id, room_id, user_id, client_message_id)
);
