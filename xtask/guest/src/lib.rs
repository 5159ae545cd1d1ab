//! The guest side of `cargo xtask vm-test`: an init that runs issue 3's scenarios against
//! ctx-daemon and ctxtop on a nohz_full kernel, and the pinned workloads they need.

pub mod ipitrace;
pub mod json;
pub mod metrics;
pub mod probe;
pub mod procs;
pub mod scenarios;
pub mod sys;

/// Prints a progress line on the console, with the protocol prefix.
#[macro_export]
macro_rules! say {
    ($($t:tt)*) => {
        $crate::emit(&ctx_vm_proto::Line::Progress(format!($($t)*)))
    };
}

/// Prints one protocol line. One write per line: stdout is line-buffered.
pub fn emit(line: &ctx_vm_proto::Line) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
