//! Native shell.
