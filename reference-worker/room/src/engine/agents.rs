//! Agents: runs, tool calls and results, approvals, and how agent events update run state.

use super::*;

impl Room {
    pub(super) fn require_agent(&self, id: &Identity) -> Result<(), ErrorFrame> {
        if id.is_agent() || self.cfg.faults.non_agent_tool_call {
            Ok(())
        } else {
            Err(err(
                ErrorCode::Forbidden,
                "agent frames need the agent role",
                None,
            ))
        }
    }

    pub(super) fn active_run(&self, id: &Identity, run_id: &str) -> Result<(), ErrorFrame> {
        match self.runs.get(&(id.user_id.clone(), run_id.to_owned())) {
            Some(r) if !r.terminal => Ok(()),
            _ => Err(field_err(
                ErrorCode::InvalidState,
                "no active run with that id",
                "runId",
            )),
        }
    }

    pub(super) fn on_agent_run(&mut self, now_ms: u64, id: &Identity, f: AgentRunFrame) -> Outcome {
        self.require_agent(id)?;
        match (
            self.runs.get(&(id.user_id.clone(), f.run_id.clone())),
            f.status,
        ) {
            (None, RunStatus::Started) => {}
            (None, _) => {
                return Err(field_err(
                    ErrorCode::InvalidState,
                    "the run was not started",
                    "runId",
                ))
            }
            (Some(_), RunStatus::Started) => {
                return Err(field_err(
                    ErrorCode::InvalidState,
                    "the run already exists",
                    "runId",
                ))
            }
            (Some(_), _) => self.active_run(id, &f.run_id)?,
        }
        Ok(Some(Accepted::event(
            ack(f.reference.as_deref(), None),
            TimelineEvent::AgentRun(AgentRunEvent {
                seq: 0,
                room_id: self.room(),
                agent_id: id.user_id.clone(),
                run_id: f.run_id,
                status: f.status,
                error: f.error,
                created_at: format_timestamp(now_ms),
            }),
        )))
    }

    pub(super) fn on_tool_call(&mut self, now_ms: u64, id: &Identity, f: ToolCallFrame) -> Outcome {
        self.require_agent(id)?;
        self.active_run(id, &f.run_id)?;
        if self.tool_calls.contains_key(&(
            id.user_id.clone(),
            f.run_id.clone(),
            f.tool_call_id.clone(),
        )) {
            return Err(field_err(
                ErrorCode::InvalidState,
                "toolCallId already used",
                "toolCallId",
            ));
        }
        Ok(Some(Accepted::event(
            ack(f.reference.as_deref(), None),
            TimelineEvent::ToolCall(ToolCallEvent {
                seq: 0,
                room_id: self.room(),
                agent_id: id.user_id.clone(),
                run_id: f.run_id,
                tool_call_id: f.tool_call_id,
                name: f.name,
                arguments: f.arguments,
                created_at: format_timestamp(now_ms),
            }),
        )))
    }

    pub(super) fn pending_call(
        &self,
        id: &Identity,
        run: &str,
        call: &str,
    ) -> Result<(), ErrorFrame> {
        match self
            .tool_calls
            .get(&(id.user_id.clone(), run.to_owned(), call.to_owned()))
        {
            Some(true) => Ok(()),
            _ => Err(field_err(
                ErrorCode::InvalidState,
                "no pending tool call with that id",
                "toolCallId",
            )),
        }
    }

    pub(super) fn on_tool_result(
        &mut self,
        now_ms: u64,
        id: &Identity,
        f: ToolResultFrame,
    ) -> Outcome {
        self.require_agent(id)?;
        self.pending_call(id, &f.run_id, &f.tool_call_id)?;
        Ok(Some(Accepted::event(
            ack(f.reference.as_deref(), None),
            TimelineEvent::ToolResult(ToolResultEvent {
                seq: 0,
                room_id: self.room(),
                agent_id: id.user_id.clone(),
                run_id: f.run_id,
                tool_call_id: f.tool_call_id,
                result: f.result,
                created_at: format_timestamp(now_ms),
            }),
        )))
    }

    pub(super) fn on_tool_error(
        &mut self,
        now_ms: u64,
        id: &Identity,
        f: ToolErrorFrame,
    ) -> Outcome {
        self.require_agent(id)?;
        self.pending_call(id, &f.run_id, &f.tool_call_id)?;
        Ok(Some(Accepted::event(
            ack(f.reference.as_deref(), None),
            TimelineEvent::ToolError(ToolErrorEvent {
                seq: 0,
                room_id: self.room(),
                agent_id: id.user_id.clone(),
                run_id: f.run_id,
                tool_call_id: f.tool_call_id,
                error: f.error,
                created_at: format_timestamp(now_ms),
            }),
        )))
    }

    pub(super) fn on_approval_request(
        &mut self,
        now_ms: u64,
        id: &Identity,
        f: ApprovalRequestFrame,
    ) -> Outcome {
        self.require_agent(id)?;
        self.active_run(id, &f.run_id)?;
        if self.approvals.contains_key(&(
            id.user_id.clone(),
            f.run_id.clone(),
            f.approval_id.clone(),
        )) {
            return Err(field_err(
                ErrorCode::InvalidState,
                "approvalId already used",
                "approvalId",
            ));
        }
        Ok(Some(Accepted::event(
            ack(f.reference.as_deref(), None),
            TimelineEvent::ApprovalRequest(ApprovalRequestEvent {
                seq: 0,
                room_id: self.room(),
                agent_id: id.user_id.clone(),
                run_id: f.run_id,
                approval_id: f.approval_id,
                tool_call_id: f.tool_call_id,
                prompt: f.prompt,
                created_at: format_timestamp(now_ms),
            }),
        )))
    }

    pub(super) fn on_approval_decision(
        &mut self,
        now_ms: u64,
        id: &Identity,
        f: ApprovalDecisionFrame,
    ) -> Outcome {
        if id.is_agent() {
            return Err(err(
                ErrorCode::Forbidden,
                "agents may not decide approvals",
                None,
            ));
        }
        // The agents with a pending request of these ids, narrowed to the one named [FX-AGT-12].
        let mut agents = self
            .approvals
            .iter()
            .filter(|((agent, r, a), pending)| {
                **pending
                    && *r == f.run_id
                    && *a == f.approval_id
                    && f.agent_id.as_ref().is_none_or(|named| named == agent)
            })
            .map(|((agent, _, _), _)| agent.clone());
        let agent_id = match (agents.next(), agents.next()) {
            (Some(agent), None) => agent,
            (None, _) => {
                return Err(field_err(
                    ErrorCode::InvalidState,
                    "no pending approval with that id",
                    "approvalId",
                ))
            }
            (Some(_), Some(_)) => {
                return Err(field_err(
                    ErrorCode::InvalidState,
                    "several agents have a pending approval with these ids: name the agent",
                    "agentId",
                ))
            }
        };
        Ok(Some(Accepted::event(
            ack(f.reference.as_deref(), None),
            TimelineEvent::ApprovalDecision(ApprovalDecisionEvent {
                seq: 0,
                room_id: self.room(),
                user_id: id.user_id.clone(),
                agent_id,
                run_id: f.run_id,
                approval_id: f.approval_id,
                decision: f.decision,
                reason: f.reason,
                created_at: format_timestamp(now_ms),
            }),
        )))
    }

    pub(super) fn apply_agent_event(&mut self, e: &TimelineEvent) {
        match e {
            TimelineEvent::AgentRun(r) => {
                self.runs.insert(
                    (r.agent_id.clone(), r.run_id.clone()),
                    Run {
                        terminal: r.status.is_terminal(),
                    },
                );
            }
            TimelineEvent::ToolCall(c) => {
                let k = (c.agent_id.clone(), c.run_id.clone(), c.tool_call_id.clone());
                self.tool_calls.insert(k, true);
            }
            TimelineEvent::ToolResult(c) => {
                let k = (c.agent_id.clone(), c.run_id.clone(), c.tool_call_id.clone());
                self.tool_calls.insert(k, false);
            }
            TimelineEvent::ToolError(c) => {
                let k = (c.agent_id.clone(), c.run_id.clone(), c.tool_call_id.clone());
                self.tool_calls.insert(k, false);
            }
            TimelineEvent::ApprovalRequest(a) => {
                let k = (a.agent_id.clone(), a.run_id.clone(), a.approval_id.clone());
                self.approvals.insert(k, true);
            }
            TimelineEvent::ApprovalDecision(a) if a.agent_id.is_empty() => {
                // Stored before `agentId` [FX-AGT-12]: it decided every request with these ids.
                for ((_, r, id), pending) in self.approvals.iter_mut() {
                    if *r == a.run_id && *id == a.approval_id {
                        *pending = false;
                    }
                }
            }
            TimelineEvent::ApprovalDecision(a) => {
                let k = (a.agent_id.clone(), a.run_id.clone(), a.approval_id.clone());
                self.approvals.insert(k, false);
            }
            _ => {}
        }
    }
}

impl Room {
    /// Install a run read from storage (open at wake-up, or fetched).
    pub(super) fn load_run(&mut self, r: RunRow) {
        let key = (r.agent_id, r.run_id);
        self.runs_absent.remove(&key);
        for (call, pending) in r.tool_calls {
            self.tool_calls
                .insert((key.0.clone(), key.1.clone(), call), pending);
        }
        for (approval, pending) in r.approvals {
            self.approvals
                .insert((key.0.clone(), key.1.clone(), approval), pending);
        }
        self.runs.insert(
            key,
            Run {
                terminal: r.terminal,
            },
        );
    }

    /// Whether a run is open: not terminal, or a tool call or approval of it still pending.
    fn run_open(&self, agent: &str, run: &str) -> bool {
        let Some(r) = self.runs.get(&(agent.to_owned(), run.to_owned())) else {
            return false;
        };
        let pending = |((a, r, _), p): (&(String, String, String), &bool)| {
            *p && a.as_str() == agent && r.as_str() == run
        };
        !r.terminal || self.tool_calls.iter().any(pending) || self.approvals.iter().any(pending)
    }

    /// The `agent_runs` / `agent_items` rows an applied agent event changes (wake-up loads the
    /// open runs from them). A run that closes forgets its tool calls and approvals: every
    /// agent frame on a closed run is refused, whatever they were.
    pub(super) fn agent_rows(&mut self, e: &TimelineEvent) -> Vec<Stmt> {
        let (t, r) = (self.cfg.tenant.clone(), self.cfg.room_id.clone());
        let mut out = Vec::new();
        let mut runs: Vec<(String, String)> = Vec::new();
        // (agent, run, kind, item id, pending) of the one item a call, result or request changes.
        let mut item = None;
        match e {
            TimelineEvent::AgentRun(x) => runs.push((x.agent_id.clone(), x.run_id.clone())),
            TimelineEvent::ToolCall(x) => {
                item = Some((
                    x.agent_id.as_str(),
                    x.run_id.as_str(),
                    sql::ITEM_TOOL_CALL,
                    x.tool_call_id.as_str(),
                    true,
                ))
            }
            TimelineEvent::ToolResult(x) => {
                item = Some((
                    x.agent_id.as_str(),
                    x.run_id.as_str(),
                    sql::ITEM_TOOL_CALL,
                    x.tool_call_id.as_str(),
                    false,
                ))
            }
            TimelineEvent::ToolError(x) => {
                item = Some((
                    x.agent_id.as_str(),
                    x.run_id.as_str(),
                    sql::ITEM_TOOL_CALL,
                    x.tool_call_id.as_str(),
                    false,
                ))
            }
            TimelineEvent::ApprovalRequest(x) => {
                item = Some((
                    x.agent_id.as_str(),
                    x.run_id.as_str(),
                    sql::ITEM_APPROVAL,
                    x.approval_id.as_str(),
                    true,
                ))
            }
            TimelineEvent::ApprovalDecision(x) => {
                let mut keys: Vec<&(String, String, String)> = self
                    .approvals
                    .keys()
                    .filter(|(agent, run, id)| {
                        *run == x.run_id
                            && *id == x.approval_id
                            // [FX-AGT-12] only the named agent's request (all of them for a
                            // decision stored before agentId existed).
                            && (x.agent_id.is_empty() || *agent == x.agent_id)
                    })
                    .collect();
                keys.sort();
                for (agent, run, id) in keys {
                    out.push(sql::upsert_run_item(
                        &t,
                        &r,
                        agent,
                        run,
                        sql::ITEM_APPROVAL,
                        id,
                        false,
                    ));
                    runs.push((agent.clone(), run.clone()));
                }
            }
            _ => return out,
        }
        if let Some((agent, run, kind, id, pending)) = item {
            out.push(sql::upsert_run_item(&t, &r, agent, run, kind, id, pending));
            runs.push((agent.to_owned(), run.to_owned()));
        }
        runs.dedup();
        for (agent, run) in runs {
            let Some(terminal) = self
                .runs
                .get(&(agent.clone(), run.clone()))
                .map(|x| x.terminal)
            else {
                continue;
            };
            let open = self.run_open(&agent, &run);
            out.push(sql::upsert_run(&t, &r, &agent, &run, terminal, open));
            if !open {
                self.tool_calls
                    .retain(|(a, x, _), _| *a != agent || *x != run);
                self.approvals
                    .retain(|(a, x, _), _| *a != agent || *x != run);
            }
        }
        out
    }
}
