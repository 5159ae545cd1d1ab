//! ctx user space, in stages: [`loader`] (load and attach with feature detection, or reuse a
//! daemon's pins) → [`sample`] (copy the per-CPU records, never IPIing a CPU) → [`model`]
//! (state, verdicts, monotonic residency, intervals) → [`report`] (the `ctxtop --once` table
//! and JSON). [`session`] ties them together for the binaries.

pub mod btf;
pub mod cli;
pub mod config;
pub mod export;
pub mod hooks;
pub mod kstate;
pub mod ledger;
pub mod loader;
pub mod model;
pub mod report;
pub mod sample;
pub mod serve;
pub mod service;
pub mod session;
pub mod system;
pub mod tui;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
