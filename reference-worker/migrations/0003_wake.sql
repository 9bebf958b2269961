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

-- The prune of expired idempotency keys at wake-up (PRUNE_IDEMPOTENCY) finds them by time:
-- without this index it read every key of the room (5.4 ms for the 15k keys of a day at 1M
-- events, the whole difference between waking 1k and 1M events in the native shell).
CREATE INDEX IF NOT EXISTS idempotency_by_time ON idempotency (tenant_id, room_id, created_at);

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

-- Backfill, once: the runs, tool calls and approvals of events written before this migration
-- (the engine keeps the tables itself from then on). Guarded by a server_meta marker, so the
-- native shell's re-application on every start does nothing; D1 applies it once anyway.
INSERT OR IGNORE INTO agent_items (tenant_id, room_id, agent_id, run_id, kind, item_id, pending)
SELECT e.tenant_id, e.room_id, json_extract(e.body, '$.agentId'), json_extract(e.body, '$.runId'),
  'tool_call', json_extract(e.body, '$.toolCallId'),
  NOT EXISTS (SELECT 1 FROM events x WHERE x.tenant_id = e.tenant_id AND x.room_id = e.room_id
    AND x.type IN ('tool_result', 'tool_error') AND x.seq > e.seq
    AND json_extract(x.body, '$.agentId') = json_extract(e.body, '$.agentId')
    AND json_extract(x.body, '$.runId') = json_extract(e.body, '$.runId')
    AND json_extract(x.body, '$.toolCallId') = json_extract(e.body, '$.toolCallId'))
FROM events e
WHERE e.type = 'tool_call'
  AND NOT EXISTS (SELECT 1 FROM server_meta WHERE key = 'backfill:0002_wake');

INSERT OR IGNORE INTO agent_items (tenant_id, room_id, agent_id, run_id, kind, item_id, pending)
SELECT e.tenant_id, e.room_id, json_extract(e.body, '$.agentId'), json_extract(e.body, '$.runId'),
  'approval', json_extract(e.body, '$.approvalId'),
  NOT EXISTS (SELECT 1 FROM events x WHERE x.tenant_id = e.tenant_id AND x.room_id = e.room_id
    AND x.type = 'approval_decision' AND x.seq > e.seq
    AND json_extract(x.body, '$.runId') = json_extract(e.body, '$.runId')
    AND json_extract(x.body, '$.approvalId') = json_extract(e.body, '$.approvalId'))
FROM events e
WHERE e.type = 'approval_request'
  AND NOT EXISTS (SELECT 1 FROM server_meta WHERE key = 'backfill:0002_wake');

INSERT OR IGNORE INTO agent_runs (tenant_id, room_id, agent_id, run_id, terminal, open)
SELECT e.tenant_id, e.room_id, json_extract(e.body, '$.agentId'), json_extract(e.body, '$.runId'),
  EXISTS (SELECT 1 FROM events x WHERE x.tenant_id = e.tenant_id AND x.room_id = e.room_id
    AND x.type = 'agentRun' AND x.seq > e.seq
    AND json_extract(x.body, '$.agentId') = json_extract(e.body, '$.agentId')
    AND json_extract(x.body, '$.runId') = json_extract(e.body, '$.runId')
    AND json_extract(x.body, '$.status') <> 'started'),
  1
FROM events e
WHERE e.type = 'agentRun' AND json_extract(e.body, '$.status') = 'started'
  AND NOT EXISTS (SELECT 1 FROM server_meta WHERE key = 'backfill:0002_wake');

UPDATE agent_runs SET open = CASE WHEN terminal = 0 OR EXISTS (SELECT 1 FROM agent_items i
    WHERE i.tenant_id = agent_runs.tenant_id AND i.room_id = agent_runs.room_id
      AND i.agent_id = agent_runs.agent_id AND i.run_id = agent_runs.run_id AND i.pending = 1)
  THEN 1 ELSE 0 END
WHERE NOT EXISTS (SELECT 1 FROM server_meta WHERE key = 'backfill:0002_wake');

INSERT OR IGNORE INTO server_meta (key, value) VALUES ('backfill:0002_wake', 'done');
