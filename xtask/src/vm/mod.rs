//! `cargo xtask vm-test`: proves ctx on real nohz_full kernels, in two suites per kernel.
//!
//! For each Debian suite: resolve and fetch its current cloud kernel, and for the systemd suite
//! its virtio-net modules (kernel.rs); build static musl binaries of ctx and of both guests
//! (artifacts.rs); then boot each kernel under qemu TCG with nohz_full=1-3 and read the serial
//! console (qemu.rs):
//! - **initramfs** (issue 3): a busybox initramfs (initramfs.rs) whose guest (xtask/guest) runs
//!   the scenarios and prints one check line per requirement and one verdict line; this side
//!   evaluates every check again from the measured value.
//! - **systemd** (issue 6, systemd.rs): the cached Debian rootfs with systemd as PID 1 and ctx
//!   installed as a user installs it; its guest (xtask/sysvm-guest) checks the unit under
//!   systemd, and the host scrapes ctx through a port forward while the guest holds it live.
//!
//! Either suite fails the kernel on trouble in the kernel log (panic, RCU stall, oops, ...), a
//! timeout, a missing or duplicate verdict, or any failed check.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::ValueEnum;
use ctx_vm_proto::{Check, Verdict, scenario_name};

mod artifacts;
mod initramfs;
mod kernel;
pub mod qemu;
mod systemd;

use kernel::{Kernel, Suite};

use crate::sysvm;

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

/// Which test suites boot on each kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Tests {
    /// The scenarios, from a busybox initramfs.
    Initramfs,
    /// ctx as a systemd service, in a Debian rootfs with systemd as PID 1.
    Systemd,
    All,
}

impl Tests {
    fn initramfs(self) -> bool {
        matches!(self, Self::Initramfs | Self::All)
    }

    fn systemd(self) -> bool {
        matches!(self, Self::Systemd | Self::All)
    }
}

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Debian suite whose current cloud kernel to boot: bookworm (6.1), trixie (6.12), sid (7.x).
    #[arg(long, value_enum, default_value_t = Which::All)]
    kernel: Which,
    /// Which tests to run on each kernel: the initramfs scenarios, the systemd run, or both.
    /// The systemd run checks ctx from the host with Prometheus, the rules and the dashboard
    /// on the first kernel, and with one scrape on the others.
    #[arg(long, value_enum, default_value_t = Tests::All)]
    suite: Tests,
    /// Keep the work directory (initramfs, console logs) even when everything passed.
    #[arg(long)]
    keep: bool,
    /// Seconds one boot (of either suite) may take from power-on to its verdict before qemu is
    /// killed.
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

/// Where the VM tests keep kernels, the rootfs and their work directory: `TARGET/vm`.
pub fn cache_dir(root: &Path) -> anyhow::Result<PathBuf> {
    Ok(artifacts::target_dir(root)?.join("vm"))
}

/// One boot's result, for the summary.
struct Ran {
    kernel: Suite,
    tests: &'static str,
    pass: bool,
    elapsed: Duration,
}

pub fn run(o: &Options) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let root = workspace_root();
    let vm = cache_dir(&root)?;
    let cache = vm.join("kernels");
    let work = vm.join("run");
    let (with_initramfs, with_systemd) = (o.suite.initramfs(), o.suite.systemd());

    let mut kernels = Vec::new();
    for s in o.kernel.suites() {
        let k = kernel::fetch(s, &cache, with_systemd)
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
    let t = Instant::now();
    let bins = artifacts::build(&root)?;
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("clearing {}", work.display()))?;
    }
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let initrd = work.join("initramfs.cpio");
    if with_initramfs {
        initramfs::write(&initrd, &bins, &o.busybox)?;
    }
    let t_build = t.elapsed();
    let t = Instant::now();
    let image = if with_systemd {
        let i = systemd::image(&vm, &root, &work, &bins.systemd())?;
        eprintln!(
            "vm-test: systemd image: rootfs {} ({:.0} MiB, {}), overlay {}",
            i.rootfs.cpio.display(),
            i.rootfs.bytes as f64 / f64::from(1 << 20),
            i.rootfs
                .built_in
                .map_or("cached".into(), |d| format!("built in {}", minutes(d))),
            i.overlay.display()
        );
        Some(i)
    } else {
        None
    };
    let t_rootfs = t.elapsed();

    let mut results = Vec::new();
    for (i, k) in kernels.iter().enumerate() {
        let name = k.suite.name();
        let progress = |p: &str| eprintln!("  {name:<8} | {p}");
        if with_initramfs {
            eprintln!(
                "vm-test: {name}: initramfs: booting {} with {}",
                k.release,
                qemu::CMDLINE
            );
            let log = work.join(format!("{name}-console.log"));
            let outcome = qemu::boot(
                &k.vmlinuz,
                &initrd,
                &log,
                Duration::from_secs(o.timeout),
                &progress,
            )?;
            let failures = evaluate(k, &outcome);
            print!("{}", table(k, &outcome, &failures));
            if !failures.is_empty() {
                print!("{}", tail(&log, 40));
            }
            results.push(Ran {
                kernel: k.suite,
                tests: "initramfs",
                pass: failures.is_empty(),
                elapsed: outcome.elapsed,
            });
        }
        if let Some(image) = &image {
            // The Prometheus, rules and dashboard check needs one kernel: the first.
            let prometheus = i == 0;
            eprintln!(
                "vm-test: {name}: systemd: booting {} with {}",
                k.release,
                sysvm::CMDLINE
            );
            let outcome = systemd::boot(
                &root,
                &work,
                k,
                image,
                prometheus,
                Duration::from_secs(o.timeout),
                &progress,
            )?;
            let failures = systemd::evaluate(k, &outcome);
            print!("{}", systemd::table(k, &outcome, &failures));
            let log = work.join(format!("{name}-systemd-console.log"));
            if failures.is_empty() {
                // ~95 MiB each, and its parts stay cached.
                let _ = std::fs::remove_file(work.join(format!("{name}-systemd-initrd.img")));
            } else {
                print!("{}", tail(&log, 40));
            }
            results.push(Ran {
                kernel: k.suite,
                tests: "systemd",
                pass: failures.is_empty(),
                elapsed: outcome.elapsed,
            });
        }
    }

    let all_pass = results.iter().all(|r| r.pass);
    println!(
        "{}",
        summary(
            t0.elapsed(),
            t_fetch,
            t_build,
            image
                .as_ref()
                .map(|i| (t_rootfs, i.rootfs.built_in.is_none())),
            &results
        )
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
        bail!(
            "vm-test failed: {}",
            results
                .iter()
                .filter(|r| !r.pass)
                .map(|r| format!("{} {}", r.kernel.name(), r.tests))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// The final line: the verdict, the total time and its parts, and each kernel's suites.
fn summary(
    total: Duration,
    fetch: Duration,
    build: Duration,
    rootfs: Option<(Duration, bool)>,
    results: &[Ran],
) -> String {
    let mut kernels: Vec<Suite> = Vec::new();
    for r in results {
        if !kernels.contains(&r.kernel) {
            kernels.push(r.kernel);
        }
    }
    let per_kernel = kernels
        .iter()
        .map(|k| {
            let runs = results
                .iter()
                .filter(|r| r.kernel == *k)
                .map(|r| {
                    format!(
                        "{} {} {}",
                        r.tests,
                        if r.pass { "pass" } else { "FAIL" },
                        minutes(r.elapsed)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            format!("{} ({runs})", k.name())
        })
        .collect::<Vec<_>>()
        .join("; ");
    let boots: Duration = results.iter().map(|r| r.elapsed).sum();
    format!(
        "vm-test: {} in {} (kernels {}, build {}{}, boots {}): {per_kernel}",
        if results.iter().all(|r| r.pass) {
            "PASS"
        } else {
            "FAIL"
        },
        minutes(total),
        minutes(fetch),
        minutes(build),
        rootfs.map_or(String::new(), |(d, cached)| format!(
            ", rootfs{} {}",
            if cached { " (cached)" } else { "" },
            minutes(d)
        )),
        minutes(boots)
    )
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

/// A table with a header, columns padded to their widest cell, the last column unpadded, and
/// every line indented by two spaces.
fn grid(head: &[&str], rows: &[Vec<String>]) -> String {
    grid_with_notes(head, rows, &[])
}

/// [`grid`], with a note line under some rows (indented under the second column).
fn grid_with_notes(head: &[&str], rows: &[Vec<String>], notes: &[Option<String>]) -> String {
    let mut w: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(x) = w.get_mut(i) {
                *x = (*x).max(c.chars().count());
            }
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::from(" ");
        for (i, c) in cells.iter().enumerate() {
            let pad = w
                .get(i)
                .copied()
                .unwrap_or(0)
                .saturating_sub(c.chars().count());
            s.push(' ');
            s.push_str(c);
            if i + 1 < cells.len() {
                s.push_str(&" ".repeat(pad + 1));
            }
        }
        s
    };
    let mut out = String::new();
    let head: Vec<String> = head.iter().map(|h| (*h).to_owned()).collect();
    let _ = writeln!(out, "{}", line(&head));
    for (i, r) in rows.iter().enumerate() {
        let _ = writeln!(out, "{}", line(r));
        if let Some(Some(n)) = notes.get(i) {
            let _ = writeln!(
                out,
                "{:width$}    {n}",
                "",
                width = w.first().copied().unwrap_or(0) + 2
            );
        }
    }
    out
}

fn table(k: &Kernel, o: &qemu::Outcome, failures: &[String]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n== {} initramfs: kernel {} (Debian {} {}): {} in {} ==",
        k.suite.name(),
        o.release.as_deref().unwrap_or("?"),
        k.package,
        k.version,
        if failures.is_empty() { "PASS" } else { "FAIL" },
        minutes(o.elapsed)
    );
    let rows: Vec<Vec<String>> = o
        .checks
        .iter()
        .map(|c: &Check| {
            vec![
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
    let notes: Vec<Option<String>> = o.checks.iter().map(|c| c.note.clone()).collect();
    out.push_str(&grid_with_notes(
        &["scenario", "check", "measured", "required", ""],
        &rows,
        &notes,
    ));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_lists_both_suites_per_kernel() {
        let s = Duration::from_secs;
        let ran = |kernel, tests, pass, secs| Ran {
            kernel,
            tests,
            pass,
            elapsed: s(secs),
        };
        let r = [
            ran(Suite::Bookworm, "initramfs", true, 41),
            ran(Suite::Bookworm, "systemd", true, 76),
            ran(Suite::Sid, "initramfs", true, 48),
            ran(Suite::Sid, "systemd", false, 45),
        ];
        assert_eq!(
            summary(s(300), s(20), s(2), Some((s(42), false)), &r),
            "vm-test: FAIL in 5m00s (kernels 20.0 s, build 2.0 s, rootfs 42.0 s, boots 3m30s): \
             bookworm (initramfs pass 41.0 s, systemd pass 1m16s); sid (initramfs pass 48.0 s, \
             systemd FAIL 45.0 s)"
        );
        assert!(
            summary(s(90), s(1), s(1), Some((s(0), true)), &r[..2]).starts_with(
                "vm-test: PASS in 1m30s (kernels 1.0 s, build 1.0 s, rootfs (cached) 0.0 s,"
            )
        );
        assert!(!summary(s(90), s(1), s(1), None, &r[..1]).contains("rootfs"));
    }

    #[test]
    fn grid_pads_all_but_the_last_column() {
        let rows = vec![
            vec!["a".to_owned(), "ok".to_owned(), "x".to_owned()],
            vec!["long name".to_owned(), "FAIL".to_owned(), "y".to_owned()],
        ];
        assert_eq!(
            grid_with_notes(
                &["check", "", "measured"],
                &rows,
                &[None, Some("why".into())]
            ),
            "  check            measured\n\
             \x20 a          ok    x\n\
             \x20 long name  FAIL  y\n\
             \x20              why\n"
        );
    }
}
