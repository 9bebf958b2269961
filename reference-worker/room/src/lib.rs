//! The Fluxy room engine (no I/O).
