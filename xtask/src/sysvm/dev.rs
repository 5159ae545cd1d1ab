//! `cargo xtask sysvm-dev`: DEVELOPMENT GLUE that plays the part of `cargo xtask vm-test`'s
//! runner until the systemd scenario is wired into it. It takes kernels as directories of
//! Debian packages fetched by hand (TOOLCHAIN.md's recipe), boots each with the systemd image,
//! reads the serial console and serves the guest's live window. Replace: the package
//! handling by the harness's kernel.rs, the qemu loop by its qemu.rs, and [`trouble`] by its
//! `qemu::trouble`.

use std::fs::{self, File};
use std::io::{BufRead as _, BufReader, Read, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use ctx_sysvm_guest::proto::{Line, Transcript};

use super::{Forward, live};
use crate::{install, rootfs};

#[derive(Debug, clap::Args)]
pub struct Options {
    /// A directory with one kernel's Debian packages: linux-image-RELEASE, or from 7.x
    /// linux-binary-RELEASE and linux-modules-RELEASE. Repeat for more kernels.
    #[arg(long = "kernel", required = true, value_name = "DIR")]
    kernels: Vec<PathBuf>,
    /// In the first kernel's live window, run Prometheus with the rules and every dashboard
    /// query against the VM's ctx (the other kernels get one scrape through the forward).
    #[arg(long)]
    prometheus: bool,
    /// Seconds of 1 s scrapes before the rules and dashboard queries are checked.
    #[arg(long, default_value_t = 30)]
    settle: u64,
    /// Seconds one kernel may take from power-on to power-off.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

/// How long the guest holds its live window open when the host says nothing.
const LIVE_HOLD: u64 = 300;
const POWER_OFF_GRACE: Duration = Duration::from_secs(60);

/// Stand-in for the harness's `qemu::trouble`: kernel reports that fail a run, and whether the
/// guest can go on (false: stop qemu now).
pub fn trouble(line: &str) -> Option<(&'static str, bool)> {
    let msg = match line.trim_start().strip_prefix('[') {
        Some(r) => r.split_once(']').map_or(r, |(_, m)| m).trim_start(),
        None => line.trim_start(),
    };
    const FATAL: [(&str, &str); 6] = [
        ("Kernel panic - not syncing", "kernel panic"),
        ("detected stall", "RCU stall"),
        ("detected expedited stall", "RCU stall"),
        ("kthread starved for", "RCU grace-period kthread starved"),
        ("BUG: soft lockup", "soft lockup"),
        ("Watchdog detected hard LOCKUP", "hard lockup"),
    ];
    const FAILURE: [(&str, &str); 5] = [
        ("Oops:", "oops"),
        ("general protection fault", "general protection fault"),
        ("kernel BUG at", "kernel BUG"),
        ("Unable to handle kernel", "oops"),
        ("blocked for more than", "hung task"),
    ];
    if let Some((_, w)) = FATAL.iter().find(|(p, _)| msg.contains(p)) {
        return Some((w, false));
    }
    if let Some((_, w)) = FAILURE.iter().find(|(p, _)| msg.contains(p)) {
        return Some((w, true));
    }
    if msg.starts_with("BUG:") || msg.contains(" BUG: ") {
        return Some(("BUG", true));
    }
    if msg.starts_with("WARNING:") {
        return Some(("WARNING", true));
    }
    None
}

struct Kernel {
    release: String,
    vmlinuz: PathBuf,
    debs: Vec<PathBuf>,
}

/// Finds vmlinuz and the release in a directory of kernel packages.
fn kernel(dir: &Path, work: &Path) -> anyhow::Result<Kernel> {
    let mut debs: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    debs.sort();
    let x = work.join("kernel-x");
    let _ = fs::remove_dir_all(&x);
    fs::create_dir_all(&x)?;
    for d in &debs {
        let n = d
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !(n.starts_with("linux-image-") || n.starts_with("linux-binary-")) {
            continue;
        }
        let s = Command::new("dpkg-deb").arg("-x").arg(d).arg(&x).status()?;
        if !s.success() {
            bail!("dpkg-deb -x {} failed", d.display());
        }
    }
    let found = fs::read_dir(x.join("boot"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .or_else(|| {
            fs::read_dir(x.join("usr/lib/modules"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path().join("vmlinuz"))
                .find(|p| p.exists())
        })
        .with_context(|| format!("no vmlinuz in the packages of {}", dir.display()))?;
    let release = match found.file_name().map(|n| n.to_string_lossy().into_owned()) {
        Some(n) if n.starts_with("vmlinuz-") => n["vmlinuz-".len()..].to_owned(),
        _ => found
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .context("no release in the vmlinuz path")?,
    };
    let vmlinuz = work.join(format!("vmlinuz-{release}"));
    fs::copy(&found, &vmlinuz)?;
    let _ = fs::remove_dir_all(&x);
    Ok(Kernel {
        release,
        vmlinuz,
        debs,
    })
}

enum Event {
    Out(String),
    Err(String),
    Closed,
    Live(anyhow::Result<String>),
}

fn pump(r: impl Read, tx: Sender<Event>, wrap: fn(String) -> Event) {
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let s = String::from_utf8_lossy(&buf);
                let s = s.trim_end_matches(['\n', '\r']).replace('\r', "");
                if tx.send(wrap(s)).is_err() {
                    return;
                }
            }
        }
    }
}

struct Outcome {
    transcript: Transcript,
    problems: Vec<String>,
    live: Option<String>,
    to_first_line: Option<Duration>,
    to_verdict: Option<Duration>,
    total: Duration,
}

#[allow(
    clippy::too_many_arguments,
    reason = "development glue; the harness's runner replaces it"
)]
fn boot(
    root: &Path,
    work: &Path,
    k: &Kernel,
    initrd: &Path,
    prometheus: bool,
    settle: Duration,
    timeout: Duration,
    log: &Path,
) -> anyhow::Result<Outcome> {
    let fwd = Forward::free()?;
    let mut cmd = super::qemu_command(&k.vmlinuz, initrd, fwd, Some(LIVE_HOLD));
    let mut logf = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    writeln!(logf, "# {cmd:?}")?;
    let t0 = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64 (install qemu-system-x86)")?;
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().context("no stdout pipe from qemu")?;
    let err = child.stderr.take().context("no stderr pipe from qemu")?;
    let tx_out = tx.clone();
    let t_out = std::thread::spawn(move || {
        pump(out, tx_out.clone(), Event::Out);
        let _ = tx_out.send(Event::Closed);
    });
    let tx_err = tx.clone();
    let t_err = std::thread::spawn(move || pump(err, tx_err, Event::Err));

    let mut o = Outcome {
        transcript: Transcript::default(),
        problems: vec![],
        live: None,
        to_first_line: None,
        to_verdict: None,
        total: Duration::ZERO,
    };
    let deadline = t0 + timeout;
    let mut live_thread = None;
    loop {
        let limit = o
            .to_verdict
            .map_or(deadline, |v| deadline.min(t0 + v + POWER_OFF_GRACE));
        let ev = match rx.recv_timeout(limit.saturating_duration_since(Instant::now())) {
            Ok(ev) => ev,
            Err(RecvTimeoutError::Timeout) => {
                o.problems.push(if o.to_verdict.is_some() {
                    "the guest did not power off after its verdict; killed qemu".into()
                } else {
                    format!(
                        "timeout: no verdict within {} s; killed qemu",
                        timeout.as_secs()
                    )
                });
                let _ = child.kill();
                break;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let line = match ev {
            Event::Closed => break,
            Event::Err(l) => {
                writeln!(logf, "qemu: {l}")?;
                continue;
            }
            Event::Live(r) => {
                match r {
                    Ok(s) => {
                        eprintln!(
                            "  {:<8} | host: {}",
                            k.release,
                            s.lines().next().unwrap_or("")
                        );
                        o.live = Some(s);
                    }
                    Err(e) => {
                        eprintln!("  {:<8} | host: live check failed: {e:#}", k.release);
                        o.problems
                            .push(format!("host side of the live window: {e:#}"));
                    }
                }
                continue;
            }
            Event::Out(l) => l,
        };
        writeln!(logf, "{line}")?;
        match o.transcript.feed(&line) {
            Some(l) => {
                o.to_first_line.get_or_insert(t0.elapsed());
                match &l {
                    Line::Progress(p) => eprintln!("  {:<8} | {p}", k.release),
                    Line::Live(secs) => {
                        eprintln!("  {:<8} | live window open (up to {secs} s)", k.release);
                        let (root, work, tx) = (root.to_owned(), work.to_owned(), tx.clone());
                        live_thread = Some(std::thread::spawn(move || {
                            let r = if prometheus {
                                live::check(&root, &work, fwd, settle).map(|r| {
                                    let f = r.failures();
                                    let mut s = r.to_string();
                                    if !f.is_empty() {
                                        s.push_str(&format!("\n  FAILURES: {}", f.join("; ")));
                                    }
                                    (s, f.is_empty())
                                })
                            } else {
                                live::quick(fwd).map(|s| (s, true))
                            };
                            let poked = live::poke(fwd);
                            let r = match (r, poked) {
                                (Ok((s, true)), Ok(())) => Ok(s),
                                (Ok((s, false)), _) => Err(anyhow::anyhow!("{s}")),
                                (Err(e), _) => Err(e),
                                (Ok(_), Err(e)) => Err(e),
                            };
                            let _ = tx.send(Event::Live(r));
                        }));
                    }
                    Line::Verdict(_) => {
                        o.to_verdict.get_or_insert(t0.elapsed());
                    }
                    _ => {}
                }
            }
            None => {
                if let Some((what, go_on)) = trouble(&line) {
                    eprintln!("  {:<8} | kernel: {line}", k.release);
                    o.problems.push(format!("{what}: {}", line.trim()));
                    if !go_on {
                        let _ = child.kill();
                        break;
                    }
                }
            }
        }
    }
    let status = child.wait().context("waiting for qemu")?;
    o.total = t0.elapsed();
    let _ = t_out.join();
    let _ = t_err.join();
    if let Some(t) = live_thread {
        let _ = t.join();
    }
    // A live result that arrived after the console closed.
    while let Ok(ev) = rx.try_recv() {
        if let Event::Live(r) = ev {
            match r {
                Ok(s) => o.live = Some(s),
                Err(e) => o
                    .problems
                    .push(format!("host side of the live window: {e:#}")),
            }
        }
    }
    if !status.success() && o.problems.is_empty() {
        o.problems.push(format!("qemu exited with {status}"));
    }
    match &o.transcript.kernel {
        Some(r) if *r != k.release => o
            .problems
            .push(format!("booted {r}, expected {}", k.release)),
        _ => {}
    }
    if o.transcript.live.is_none() {
        o.problems
            .push("the guest never opened its live window".into());
    } else if o.live.is_none() && !o.problems.iter().any(|p| p.starts_with("host side")) {
        o.problems
            .push("the host side of the live window never finished".into());
    }
    Ok(o)
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.1} s", d.as_secs_f64()))
}

pub fn run(o: &Options) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let root = install::workspace_root();
    let cache = root.join("target/vm");
    let r = rootfs::build_rootfs(&cache)?;
    let packages = fs::read_to_string(&r.packages).map_or(0, |p| p.lines().count());
    eprintln!(
        "sysvm: rootfs {} ({:.0} MiB, {packages} packages{})",
        r.cpio.display(),
        r.bytes as f64 / f64::from(1 << 20),
        r.built_in.map_or(", cached".into(), |d| format!(
            ", built in {:.0} s",
            d.as_secs_f64()
        ))
    );
    let t_build = Instant::now();
    eprintln!(
        "sysvm: building ctx-daemon, ctxtop and ctx-sysvm-check ({})",
        install::MUSL
    );
    let bins = super::build_guest_bins(&root)?;
    let work = cache.join("sysvm-run");
    fs::create_dir_all(&work)?;
    let overlay = super::overlay(&root, &work, &bins)?;
    let build_took = t_build.elapsed();

    let mut results = Vec::new();
    for (i, dir) in o.kernels.iter().enumerate() {
        let k = kernel(dir, &work)?;
        let modules = super::kernel_modules(&k.debs, &k.release, &cache)?;
        let initrd = work.join(format!("initrd-{}.img", k.release));
        super::initrd(&[&r.cpio, &overlay, &modules], &initrd)?;
        let log = work.join(format!("console-{}.log", k.release));
        let prometheus = o.prometheus && i == 0;
        eprintln!(
            "sysvm: {}: booting ({:.0} MiB initramfs){}",
            k.release,
            fs::metadata(&initrd)?.len() as f64 / f64::from(1 << 20),
            if prometheus {
                ", with the Prometheus check"
            } else {
                ""
            }
        );
        let out = boot(
            &root,
            &work,
            &k,
            &initrd,
            prometheus,
            Duration::from_secs(o.settle),
            Duration::from_secs(o.timeout),
            &log,
        )?;
        let mut failures = out.problems.clone();
        failures.extend(out.transcript.failures());
        println!(
            "== {} ({})",
            k.release,
            if failures.is_empty() { "pass" } else { "FAIL" }
        );
        for (ok, name, detail) in &out.transcript.checks {
            println!("  {} {name}: {detail}", if *ok { "ok  " } else { "FAIL" });
        }
        if let Some(l) = &out.live {
            println!("  {}", l.replace('\n', "\n  "));
        }
        println!(
            "  timings: first guest line {}, verdict {}, power-off {}",
            secs(out.to_first_line),
            secs(out.to_verdict),
            secs(Some(out.total))
        );
        for f in &failures {
            println!("  failure: {f}");
        }
        println!("  console log: {}", log.display());
        if failures.is_empty() {
            // 94 MiB each; the parts stay cached.
            let _ = fs::remove_file(&initrd);
        }
        results.push((k.release, failures.is_empty(), out.total));
    }
    println!(
        "sysvm: {} in {:.0} s (build {:.0} s; boots {}): {}",
        if results.iter().all(|r| r.1) {
            "PASS"
        } else {
            "FAIL"
        },
        t0.elapsed().as_secs_f64(),
        build_took.as_secs_f64(),
        results
            .iter()
            .map(|r| format!("{:.0} s", r.2.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(" + "),
        results
            .iter()
            .map(|r| format!("{} {}", r.0, if r.1 { "pass" } else { "FAIL" }))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !results.iter().all(|r| r.1) {
        bail!("the systemd VM test failed");
    }
    Ok(())
}
