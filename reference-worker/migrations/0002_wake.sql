-- Bounded wake-up (issue 13): what a room reads when it starts is its newest events, MAX(seq),
-- its type, its open agent runs and its streaming messages; everything else is looked up on
-- demand by primary key. These tables and indexes make the open runs and the streaming
-- messages cheap to find. Idempotent (IF NOT EXISTS): the native shell applies every
-- migration on each start.

-- One row per agent run: terminal = ended; open = not terminal, or a tool call or approval
-- of it still pending (a closed run can never change again).
CREATE TABLE IF NOT EXISTS agent_runs (
  tenant_id TEXT NOT NULL,
  room_id TEXT NOT NULL,
  agent_id TEXT NOT NULL,
  run_id TEXT NOT NULL,
  terminal INTEGER NOT NULL,
  open INTEGER NOT NULL,
  PRIMARY KEY (tenant_id, room_id, agent_id, run_id)
);

CREATE INDEX IF NOT EXISTS agent_runs_open ON agent_runs (tenant_id, room_id) WHERE open = 1;

-- Tool calls (kind 'tool_call') and approval requests (kind 'approval') of each run.
CREATE TABLE IF NOT EXISTS agent_items (
  tenant_id TEXT NOT NULL,
  room_id TEXT NOT NULL,
  agent_id TEXT NOT NULL,
  run_id TEXT NOT NULL,
  kind TEXT NOT NULL,
  item_id TEXT NOT NULL,
  pending INTEGER NOT NULL,
  PRIMARY KEY (tenant_id, room_id, agent_id, run_id, kind, item_id)
);

CREATE INDEX IF NOT EXISTS messages_streaming ON messages (tenant_id, room_id) WHERE streaming = 1;
