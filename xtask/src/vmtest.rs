//! `cargo xtask vm-test`: proves ctx on real `nohz_full` kernels, in two suites per kernel.
//!
//! For each kernel of `vm::kernel::KERNELS`: resolve and fetch Debian's current cloud kernel,
//! and for the systemd suite its virtio-net modules; build the static musl binaries of ctx
//! and of the guests once; then boot each kernel under qemu TCG and read the serial console:
//! - **initramfs** (issue 3, `initramfs.rs`): a busybox initramfs whose guest runs the
//!   scenarios and prints one check line per requirement and one verdict line;
//! - **systemd** (issue 6, `systemd/`): a Debian rootfs with systemd as PID 1 and ctx installed
//!   as a user installs it; its guest checks the unit under systemd, and the host scrapes ctx
//!   through a port forward while the guest holds it live.
//!
//! Either suite fails the kernel on trouble in the kernel log (panic, RCU stall, oops, ...), a
//! timeout, a missing or duplicate verdict, or any check that fails when the host evaluates it
//! again (`vm::transcript`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::ValueEnum;
use clap::builder::PossibleValuesParser;
use ctx_vm_proto::suite::{INITRAMFS, SYSTEMD};

use crate::vm::kernel::{self, KERNELS, Kernel, KernelSpec};
use crate::vm::report::{self, minutes};
use crate::vm::{artifacts, cache_dir};
use crate::{cmd, initramfs, systemd};

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

/// What `--kernel` accepts: a row of the kernel table, or all of them.
fn kernel_choices() -> PossibleValuesParser {
    PossibleValuesParser::new(KERNELS.iter().map(|k| k.name).chain(["all"]))
}

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Debian suite whose current cloud kernel to boot: bookworm (6.1), trixie (6.12), sid
    /// (7.x), bullseye (5.10, every CPU on the syscall fallback), or all of them.
    #[arg(long, default_value = "all", value_parser = kernel_choices())]
    kernel: String,
    /// Which tests to run on each kernel: the initramfs scenarios, the systemd run, or both.
    /// The systemd run checks ctx from the host with Prometheus, the rules and the dashboard
    /// on the first kernel with isolated CPUs, and with one scrape on the others.
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

impl Options {
    fn kernels(&self) -> Vec<&'static KernelSpec> {
        match KernelSpec::named(&self.kernel) {
            Some(k) => vec![k],
            None => KERNELS.iter().collect(),
        }
    }
}

/// One boot's result, for the summary.
struct Ran {
    kernel: &'static str,
    tests: &'static str,
    pass: bool,
    elapsed: Duration,
}

pub fn run(o: &Options) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let root = cmd::root();
    let vm = cache_dir(&root)?;
    let work = vm.join("run");
    let kernels = fetch(o, &vm.join("kernels"))?;
    let t_fetch = t0.elapsed();
    let ready = prepare(o, &root, &vm, &work)?;
    let mut results = Vec::new();
    // The Prometheus, rules and dashboard check needs one kernel: the first with nohz_full
    // CPUs, since the rules and panels of the isolated set have no series without them.
    let prometheus = kernels.iter().position(|k| k.spec.nohz_full.is_some());
    for (i, k) in kernels.iter().enumerate() {
        results.extend(boot(o, &root, &work, k, prometheus == Some(i), &ready)?);
    }
    let all_pass = results.iter().all(|r| r.pass);
    println!(
        "{}",
        summary(
            t0.elapsed(),
            t_fetch,
            ready.build,
            ready
                .image
                .as_ref()
                .map(|i| (ready.rootfs, i.rootfs.built_in.is_none())),
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
                .map(|r| format!("{} {}", r.kernel, r.tests))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// Every kernel asked for, with the systemd suite's modules when that suite runs.
fn fetch(o: &Options, cache: &Path) -> anyhow::Result<Vec<Kernel>> {
    let extra: Option<&dyn kernel::Extra> =
        o.suite.systemd().then_some(&systemd::modules::NetModules);
    let mut kernels = Vec::new();
    for spec in o.kernels() {
        let k = kernel::fetch(spec, cache, extra)
            .with_context(|| format!("getting the {} cloud kernel", spec.name))?;
        eprintln!(
            "vm-test: {}: {} ({} {}){}",
            spec.name,
            k.release,
            k.package,
            k.version,
            if k.cached { ", cached" } else { "" }
        );
        kernels.push(k);
    }
    Ok(kernels)
}

/// What every kernel boots with, built once: the initramfs suite's archive and the systemd
/// suite's image.
struct Ready {
    initrd: Option<PathBuf>,
    image: Option<systemd::Image>,
    /// How long the binaries and the initramfs took, and the rootfs.
    build: Duration,
    rootfs: Duration,
}

fn prepare(o: &Options, root: &Path, vm: &Path, work: &Path) -> anyhow::Result<Ready> {
    eprintln!(
        "vm-test: building static ctx and guest binaries ({})",
        crate::install::MUSL
    );
    let t = Instant::now();
    let bins = artifacts::build(root)?;
    if work.exists() {
        std::fs::remove_dir_all(work).with_context(|| format!("clearing {}", work.display()))?;
    }
    std::fs::create_dir_all(work).with_context(|| format!("creating {}", work.display()))?;
    let initrd = if o.suite.initramfs() {
        let path = work.join("initramfs.cpio");
        initramfs::write(&path, &bins, &o.busybox)?;
        Some(path)
    } else {
        None
    };
    let build = t.elapsed();
    let t = Instant::now();
    let image = if o.suite.systemd() {
        let i = systemd::image(vm, root, work, &bins)?;
        eprintln!(
            "vm-test: systemd image: rootfs {} ({} MiB, {}), overlay {}",
            i.rootfs.cpio.display(),
            i.rootfs.bytes >> 20,
            i.rootfs
                .built_in
                .map_or("cached".into(), |d| format!("built in {}", minutes(d))),
            i.overlay.display()
        );
        Some(i)
    } else {
        None
    };
    Ok(Ready {
        initrd,
        image,
        build,
        rootfs: t.elapsed(),
    })
}

/// Boots `k` in each suite asked for and prints each boot's table.
fn boot(
    o: &Options,
    root: &Path,
    work: &Path,
    k: &Kernel,
    prometheus: bool,
    ready: &Ready,
) -> anyhow::Result<Vec<Ran>> {
    let name = k.spec.name;
    let timeout = Duration::from_secs(o.timeout);
    let progress = |p: &str| eprintln!("  {name:<8} | {p}");
    let mut results = Vec::new();
    if let Some(initrd) = &ready.initrd {
        let log = work.join(format!("{name}-console.log"));
        let (outcome, failures) = initramfs::boot(k, initrd, &log, timeout, &progress)?;
        print!("{}", report::table(&INITRAMFS, k, &outcome, &[], &failures));
        if !failures.is_empty() {
            print!("{}", report::tail(&log, 40));
        }
        results.push(Ran {
            kernel: name,
            tests: INITRAMFS.name,
            pass: failures.is_empty(),
            elapsed: outcome.elapsed,
        });
    }
    if let Some(image) = &ready.image {
        let (outcome, live, failures) =
            systemd::boot(root, work, k, image, prometheus, timeout, &progress)?;
        let host = live.as_ref().map(systemd::host_rows).unwrap_or_default();
        print!("{}", report::table(&SYSTEMD, k, &outcome, &host, &failures));
        if let Some(systemd::Live::Full(r)) = &live {
            for l in r.to_string().lines() {
                println!("    {l}");
            }
        }
        if !failures.is_empty() {
            let log = work.join(format!("{name}-systemd-console.log"));
            print!("{}", report::tail(&log, 40));
        }
        results.push(Ran {
            kernel: name,
            tests: SYSTEMD.name,
            pass: failures.is_empty(),
            elapsed: outcome.elapsed,
        });
    }
    Ok(results)
}

/// The final line: the verdict, the total time and its parts, and each kernel's suites.
fn summary(
    total: Duration,
    fetch: Duration,
    build: Duration,
    rootfs: Option<(Duration, bool)>,
    results: &[Ran],
) -> String {
    let mut kernels: Vec<&str> = Vec::new();
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
            format!("{k} ({runs})")
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
            ran("bookworm", "initramfs", true, 41),
            ran("bookworm", "systemd", true, 76),
            ran("sid", "initramfs", true, 48),
            ran("sid", "systemd", false, 45),
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
    fn every_kernel_of_the_table_is_a_choice() {
        let all = Options {
            kernel: "all".into(),
            suite: Tests::All,
            keep: false,
            timeout: 1,
            busybox: PathBuf::new(),
        };
        assert_eq!(all.kernels().len(), KERNELS.len());
        let one = Options {
            kernel: "trixie".into(),
            ..all
        };
        assert_eq!(one.kernels(), vec![&KERNELS[1]]);
    }
}
