-- Membership versions (issue 13): every write to a user's membership of a room (added, role
-- changed, removed) increments that (room, user)'s version in the same transaction. A
-- WebSocket handshake reads the role and the version together; the room's Kick/SetRole carry
-- the new version, so the room can tell a role read before a change it already applied.
-- A row outlives the membership it versions (a removal is a write too). Idempotent: the
-- native shell runs every migration at each start.
CREATE TABLE IF NOT EXISTS room_member_versions (
  tenant_id TEXT NOT NULL,
  room_id TEXT NOT NULL,
  user_id TEXT NOT NULL,
  version INTEGER NOT NULL,
  PRIMARY KEY (tenant_id, room_id, user_id)
);
