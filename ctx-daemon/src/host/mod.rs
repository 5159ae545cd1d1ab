//! What ctx learns about the machine it runs on, none of it from its own probes.
//!
//! * [`system`]: procfs and sysfs (CPU sets, capabilities, kernel release), clocks, THP.
//! * [`cpuset`]: CPU lists in the kernel's `0-3,8` format.
//! * [`btf`]: the kernel's BTF: which tracepoints exist, and the layout of its own
//!   `context_tracking.state`.
//! * [`kstate`]: the kernel's own `context_tracking.state` per CPU, from `/proc/kcore`.

pub mod btf;
pub mod cpuset;
pub mod kstate;
pub mod system;
