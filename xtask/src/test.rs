//! `cargo xtask test`: every check, in the order that fails fastest.

use std::process::Command;

use clap::Args;

use crate::cmd::{cargo, is_root, step};

/// rustfmt.toml's import grouping is a nightly-only rustfmt option; .ci/setup installs this
/// toolchain (rustfmt only). Building stays on the pinned stable toolchain.
pub const RUSTFMT_TOOLCHAIN: &str = "nightly-2026-05-19";

#[derive(Args, Debug)]
pub struct Options {
    /// Skip the `nohz_full` VM tests (they take several minutes).
    #[arg(long)]
    pub skip_vm: bool,
}

/// clippy on the eBPF crate for the BPF target, with the pinned toolchain's rust-src.
pub fn lint_bpf() -> anyhow::Result<()> {
    step(
        "clippy (BPF target)",
        cargo()
            .args([
                "clippy",
                "-p",
                "ctx-ebpf",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--target-dir",
                "target/bpf-lint",
                "--",
                "-D",
                "warnings",
            ])
            // -Z needs unstable cargo on the pinned stable toolchain; aya-build does the same.
            .env("RUSTC_BOOTSTRAP", "1")
            .env(
                "CARGO_ENCODED_RUSTFLAGS",
                "--cfg=bpf_target_arch=\"x86_64\"",
            ),
    )
}

fn run_all(o: &Options) -> anyhow::Result<()> {
    step(
        "rustfmt",
        Command::new("rustup").args(["run", RUSTFMT_TOOLCHAIN, "cargo", "fmt", "--all", "--check"]),
    )?;
    step(
        "clippy",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    lint_bpf()?;
    let mut t = cargo();
    t.args(["test", "--workspace", "--no-fail-fast"]);
    if is_root() {
        // The real-kernel tests must run, not skip, where they can.
        t.env("CTX_REQUIRE_KERNEL_TESTS", "1");
    }
    let tests = step("tests (unit, property, real kernel, Prometheus)", &mut t);
    print_fault_table();
    tests?;
    step("deploy checks", Command::new("bash").arg("deploy/check.sh"))?;
    if !o.skip_vm {
        step(
            "nohz_full VM tests",
            cargo().args(["xtask", "vm-test", "--kernel", "all"]),
        )?;
    }
    Ok(())
}

/// The fault suite's results (ctx-daemon/tests/faults.rs writes them), shown after the tests
/// whether they passed or not.
fn print_fault_table() {
    match std::fs::read_to_string(crate::cmd::root().join("target/faults.txt")) {
        Ok(t) => eprint!("{t}"),
        Err(e) => eprintln!("fault suite: no results in target/faults.txt ({e})"),
    }
}

pub fn run(o: &Options) -> anyhow::Result<()> {
    run_all(o)?;
    eprintln!("xtask test: all checks passed");
    Ok(())
}
