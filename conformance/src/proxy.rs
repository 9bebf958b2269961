//! Fault-injecting WebSocket proxy (placeholder).
