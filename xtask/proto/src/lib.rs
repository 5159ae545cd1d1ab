//! What the ctx test VMs' guests and `cargo xtask vm-test` share: the console protocol
//! ([`line`]) and its checks ([`check`]), the suites' scenarios with the kernels they apply to
//! ([`suite`]), a minimal HTTP client ([`http`]) and the Prometheus text parser that reads ctx's
//! `/metrics` ([`expo`]). Standard library and serde only, so it builds for the static musl
//! guests and the host alike.
//!
//! Why a parser of its own: of the crates on crates.io, `prometheus-parse` (last release 2023)
//! splits label sets on `,` and `=` (a quoted or escaped value breaks it) and brings regex and
//! chrono into the guests; `openmetrics-parser` is LGPL-3.0, which does not suit static
//! binaries of an MIT/Apache project; `nom-openmetrics` does not validate its input.

pub mod check;
pub mod expo;
pub mod http;
pub mod line;
pub mod suite;

pub use check::{Check, Measured, Requirement};
pub use line::{Line, LineError, PREFIX, Verdict};
