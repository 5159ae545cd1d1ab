//! ctx-daemon's run time around the pipeline.
//!
//! * [`config`]: built-in defaults, then the TOML file, then flags.
//! * [`service`]: the sampling thread (sweep, persist, publish), housekeeping affinity,
//!   dropping capabilities, systemd notifications.
//! * [`lock`]: one daemon per pin dir (`flock` on the directory).
//! * [`socket`]: the listener systemd passes under socket activation.
//! * [`pinwatch`]: pins removed or replaced while running, pinned again from held descriptors.
//! * [`ledger`]: the counters only user space knows, kept in a pinned map across restarts.

pub mod config;
pub mod ledger;
pub mod lock;
pub mod pinwatch;
pub mod service;
pub mod socket;
