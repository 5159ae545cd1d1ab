//! `cargo xtask vm-test`: proves ctx on real nohz_full kernels (issue 3).
//!
//! For each Debian suite: resolve and fetch its current cloud kernel (kernel.rs), build static
//! musl binaries of ctx and of the guest (artifacts.rs), write an initramfs (initramfs.rs), boot
//! it under qemu TCG with nohz_full=1-3 and read the serial console (qemu.rs). The guest
//! (xtask/guest) runs the scenarios and prints one check line per requirement and one verdict
//! line; this side fails the kernel on trouble in the kernel log, a timeout, a missing or
//! duplicate verdict, or any failed check, which it evaluates again from the measured value.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::ValueEnum;
use ctx_vm_proto::{Check, Verdict, scenario_name};

mod artifacts;
mod initramfs;
mod kernel;
mod qemu;

use kernel::{Kernel, Suite};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Which {
    Bookworm,
    Trixie,
    Sid,
    All,
}

impl Which {
    fn suites(self) -> Vec<Suite> {
        match self {
            Self::Bookworm => vec![Suite::Bookworm],
            Self::Trixie => vec![Suite::Trixie],
            Self::Sid => vec![Suite::Sid],
            Self::All => Suite::ALL.to_vec(),
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Debian suite whose current cloud kernel to boot: bookworm (6.1), trixie (6.12), sid (7.x).
    #[arg(long, value_enum, default_value_t = Which::All)]
    kernel: Which,
    /// Keep the work directory (initramfs, console logs) even when everything passed.
    #[arg(long)]
    keep: bool,
    /// Seconds one kernel may take from power-on to its verdict before qemu is killed.
    #[arg(long, default_value_t = 420)]
    timeout: u64,
    /// Busybox to put in the initramfs; must be statically linked.
    #[arg(long, default_value = "/bin/busybox")]
    busybox: PathBuf,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_owned)
}

fn minutes(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.1} s")
    } else {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    }
}

pub fn run(o: &Options) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let root = workspace_root();
    let vm = artifacts::target_dir(&root)?.join("vm");
    let cache = vm.join("kernels");
    let work = vm.join("run");

    let mut kernels = Vec::new();
    for s in o.kernel.suites() {
        let k = kernel::fetch(s, &cache)
            .with_context(|| format!("getting the {} cloud kernel", s.name()))?;
        eprintln!(
            "vm-test: {}: {} ({} {}){}",
            s.name(),
            k.release,
            k.package,
            k.version,
            if k.cached { ", cached" } else { "" }
        );
        kernels.push(k);
    }
    let t_fetch = t0.elapsed();

    eprintln!(
        "vm-test: building static ctx and guest binaries ({})",
        artifacts::MUSL
    );
    let bins = artifacts::build(&root)?;
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("clearing {}", work.display()))?;
    }
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let initrd = work.join("initramfs.cpio");
    initramfs::write(&initrd, &bins, &o.busybox)?;
    let t_build = t0.elapsed() - t_fetch;

    let mut results = Vec::new();
    for k in &kernels {
        let log = work.join(format!("{}-console.log", k.suite.name()));
        eprintln!(
            "vm-test: {}: booting {} with {}",
            k.suite.name(),
            k.release,
            qemu::CMDLINE
        );
        let name = k.suite.name();
        let outcome = qemu::boot(
            &k.vmlinuz,
            &initrd,
            &log,
            Duration::from_secs(o.timeout),
            &|p| eprintln!("  {name:<8} | {p}"),
        )?;
        let failures = evaluate(k, &outcome);
        print!("{}", table(k, &outcome, &failures));
        if !failures.is_empty() {
            print!("{}", tail(&log, 40));
        }
        results.push((k.suite, failures.is_empty(), outcome.elapsed, log));
    }

    let all_pass = results.iter().all(|r| r.1);
    println!(
        "vm-test: {} in {} (kernels {}, build {}, boots {}): {}",
        if all_pass { "PASS" } else { "FAIL" },
        minutes(t0.elapsed()),
        minutes(t_fetch),
        minutes(t_build),
        results
            .iter()
            .map(|r| minutes(r.2))
            .collect::<Vec<_>>()
            .join(" + "),
        results
            .iter()
            .map(|r| format!("{} {}", r.0.name(), if r.1 { "pass" } else { "FAIL" }))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if all_pass && !o.keep {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        println!(
            "vm-test: console logs and initramfs kept in {}",
            work.display()
        );
    }
    if !all_pass {
        bail!("vm-test failed on {}", {
            results
                .iter()
                .filter(|r| !r.1)
                .map(|r| r.0.name())
                .collect::<Vec<_>>()
                .join(", ")
        });
    }
    Ok(())
}

/// Everything that fails this kernel's run. Empty means pass.
fn evaluate(k: &Kernel, o: &qemu::Outcome) -> Vec<String> {
    let mut f = o.problems.clone();
    match o.verdicts.as_slice() {
        [] => f.push("no verdict line from the guest".into()),
        [Verdict::Pass] => {}
        [Verdict::Fail] => f.push("the guest's verdict is fail".into()),
        many => f.push(format!(
            "{} verdict lines, expected exactly one",
            many.len()
        )),
    }
    match &o.release {
        Some(r) if *r == k.release => {}
        Some(r) => f.push(format!("booted kernel {r}, expected {}", k.release)),
        None => f.push("the guest never reported its kernel".into()),
    }
    for c in &o.checks {
        let holds = c.required.holds(&c.measured);
        if holds != c.pass {
            f.push(format!(
                "check \"{}\": the guest says {}, the requirement says {}",
                c.name,
                if c.pass { "pass" } else { "fail" },
                if holds { "pass" } else { "fail" }
            ));
        } else if !holds {
            f.push(format!(
                "[{}] {}: {} (required {})",
                c.scenario, c.name, c.measured, c.required
            ));
        }
    }
    if !o.verdicts.is_empty() {
        for n in 1..=8u8 {
            if !o.checks.iter().any(|c| c.scenario == n) {
                f.push(format!(
                    "scenario {n} ({}) reported nothing",
                    scenario_name(n)
                ));
            }
        }
    }
    f
}

fn table(k: &Kernel, o: &qemu::Outcome, failures: &[String]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n== {}: kernel {} (Debian {} {}): {} in {} ==",
        k.suite.name(),
        o.release.as_deref().unwrap_or("?"),
        k.package,
        k.version,
        if failures.is_empty() { "PASS" } else { "FAIL" },
        minutes(o.elapsed)
    );
    let rows: Vec<[String; 5]> = o
        .checks
        .iter()
        .map(|c: &Check| {
            [
                format!("{} {}", c.scenario, scenario_name(c.scenario)),
                c.name.clone(),
                c.measured.to_string(),
                c.required.to_string(),
                if c.required.holds(&c.measured) {
                    "ok".into()
                } else {
                    "FAIL".into()
                },
            ]
        })
        .collect();
    let head = ["scenario", "check", "measured", "required", ""];
    let mut w = head.map(|h| h.chars().count());
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: &[String; 5]| {
        let mut s = String::from(" ");
        for (i, c) in cells.iter().enumerate() {
            let pad = w[i].saturating_sub(c.chars().count());
            s.push(' ');
            s.push_str(c);
            if i + 1 < cells.len() {
                s.push_str(&" ".repeat(pad + 1));
            }
        }
        s
    };
    let _ = writeln!(out, "{}", line(&head.map(str::to_owned)));
    for (r, c) in rows.iter().zip(&o.checks) {
        let _ = writeln!(out, "{}", line(r));
        if let Some(n) = &c.note {
            let _ = writeln!(out, "{:width$}    {n}", "", width = w[0] + 2);
        }
    }
    for f in failures {
        let _ = writeln!(out, "  failure: {f}");
    }
    out
}

fn tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = format!("  last {n} console lines ({}):\n", log.display());
    for l in &lines[lines.len().saturating_sub(n)..] {
        let _ = writeln!(out, "  | {l}");
    }
    out
}
