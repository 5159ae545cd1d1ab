//! Project tasks: `cargo xtask test` runs every check CI runs; `cargo xtask vm-test` boots
//! Debian's `nohz_full` kernels under qemu and proves ctx in them, from an initramfs and under a
//! real systemd; `cargo xtask install` installs ctx the way a user gets it; `cargo xtask bench`
//! measures what ctx costs and writes BENCHMARKS.md.
//!
//! Where things are: one file per command (`test.rs`, `bench.rs`, `install.rs`, `vmtest.rs`);
//! the VM suites' host sides in `initramfs.rs` and `systemd/`, on top of `vm/`, which both
//! share (kernels, qemu, the transcript check, tables). The guests are `xtask/guest`, and what
//! guests and host share (console protocol, scenarios, HTTP, Prometheus text) is `xtask/proto`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod cmd;
mod initramfs;
mod install;
mod systemd;
mod test;
mod vm;
mod vmtest;

#[derive(Parser)]
#[command(name = "xtask", about = "ctx project tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the whole test suite: formatting, lints (host and BPF target), unit, property and
    /// real-kernel tests, deploy/ checks, and the `nohz_full` VM tests.
    Test(test::Options),
    /// Measure hook cost and sampler cost; write BENCHMARKS.md.
    Bench(bench::Options),
    /// Lint the eBPF programs for the BPF target (the host lint only sees a stub).
    LintBpf,
    /// Boot Debian's cloud kernels with nohz_full=1-3 under qemu (TCG): ctx's scenarios from an
    /// initramfs, and ctx as a systemd service under a real systemd.
    VmTest(vmtest::Options),
    /// Build release binaries and install ctx: binaries, systemd unit, sysusers entry, default
    /// config and docs.
    Install(install::Options),
    /// Build (or find in the cache) the Debian rootfs of the systemd VM test and print where it
    /// is.
    Rootfs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Test(o) => test::run(&o),
        Cmd::Bench(o) => bench::run(&o),
        Cmd::LintBpf => test::lint_bpf(),
        Cmd::VmTest(o) => vmtest::run(&o),
        Cmd::Install(o) => install::run(&o),
        Cmd::Rootfs => systemd::rootfs::print(),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
