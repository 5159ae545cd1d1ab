//! ctx user space, library `ctx`: the stages from the kernel to what an operator reads, in the
//! order data flows through them.

/// Stage 3: state, verdicts, monotonic residency and counts; the one CPU row and its interval.
pub mod model;
/// Stage 4: the metric catalogue and exposition, `/metrics`, the `--once` table and JSON.
pub mod outputs;
/// Stage 1: the eBPF programs in the kernel; attach with feature detection, or reuse pins.
pub mod probes;
/// Stage 2: one sweep copies every CPU's record (and the online list), never IPIing a CPU.
pub mod sample;
/// Stage 4, full screen: ctxtop's view (state, pure rendering, keys, terminal).
pub mod tui;

/// The binaries' shared command-line glue: durations, logging, exit codes.
pub mod cli;
/// ctx-daemon's run time: config, the sampling thread, the counter ledger.
pub mod daemon;
/// What ctx reads about the machine: procfs/sysfs, CPU lists, kernel BTF, kernel state.
pub mod host;
/// The pipeline of stages 1-3 as both binaries open and run it.
pub mod session;

/// Helpers for the unit tests: golden files, printed errors, snapshots.
#[cfg(test)]
mod test_util;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
