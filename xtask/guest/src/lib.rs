//! The guests of `cargo xtask vm-test`: `ctx-vm-init`, the init of the initramfs suite that runs
//! issue 3's scenarios against ctx-daemon and ctxtop; `ctx-vm-work`, its pinned workloads; and
//! `ctx-sysvm-check`, the systemd suite's service that checks ctx under a real systemd. Both
//! suites' guests share the pinning and the workloads ([`sys`], [`work`]), the scrape of ctx
//! ([`metrics`]) and the console protocol (`ctx_vm_proto`).

pub mod ipitrace;
pub mod json;
pub mod metrics;
pub mod probe;
pub mod procs;
pub mod scenarios;
pub mod sys;
pub mod work;

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
