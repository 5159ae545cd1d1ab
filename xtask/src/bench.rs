//! `cargo xtask bench`: runs ctx-daemon's hook-cost benchmark and writes BENCHMARKS.md.

use std::fmt::Write as _;

use anyhow::Context as _;
use clap::Args;

use crate::cmd::{cargo, root, step};

#[derive(Args, Debug)]
pub struct Options {
    /// Interleaved rounds per case (the median is reported).
    #[arg(long, default_value_t = 9)]
    pub rounds: u32,
    /// `getpid()` calls per round.
    #[arg(long, default_value_t = 2_000_000)]
    pub calls: u64,
}

pub fn run(o: &Options) -> anyhow::Result<()> {
    let body = root().join("target").join("bench-body.md");
    step(
        "hook cost benchmark",
        cargo().args([
            "bench",
            "-p",
            "ctx-daemon",
            "--bench",
            "hook_cost",
            "--",
            "--rounds",
            &o.rounds.to_string(),
            "--calls",
            &o.calls.to_string(),
            "--out",
            &body.display().to_string(),
        ]),
    )?;
    let measured =
        std::fs::read_to_string(&body).with_context(|| format!("reading {}", body.display()))?;
    let mut out = String::new();
    writeln!(out, "# Benchmarks")?;
    writeln!(out)?;
    writeln!(
        out,
        "Written by `cargo xtask bench` (run as root; it loads eBPF programs). Each figure is the \
         median of interleaved rounds, so slow drift of the machine hits every case alike. Compare \
         ratios rather than absolute numbers across machines."
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "The hook-cost table has a third baseline besides \"nothing\" and \"empty programs\": \
         programs that only read the clock. Residency needs a timestamp at every mode transition, \
         so no implementation of it can cost less than that case; the difference between it and \
         ctx is what ctx's own bookkeeping costs."
    )?;
    writeln!(out)?;
    out.push_str(&measured);
    let path = root().join("BENCHMARKS.md");
    std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
