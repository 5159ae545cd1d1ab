//! The systemd suite of `cargo xtask vm-test` (issue 6): each kernel boots the cached Debian
//! rootfs with systemd as PID 1 and ctx installed as `cargo xtask install` installs it
//! (`sysvm`), and `ctx-sysvm-check` proves the unit's promises from inside. While the guest
//! holds its live window open, the host scrapes ctx through qemu's port forward: on the first
//! kernel of the run with Debian's Prometheus, the shipped rules and every dashboard query
//! (`sysvm::live::check`), on the others with one scrape (`sysvm::live::quick`).
//!
//! The console goes through the harness's runner (`qemu::run`): the same kernel-trouble
//! classifier, timeout and power-off grace as the initramfs suite.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use anyhow::Context as _;
use ctx_sysvm_guest::proto::{Line, PREFIX, Transcript};

use super::kernel::Kernel;
use super::qemu::{self, Seen};
use super::{grid, minutes};
use crate::rootfs::Rootfs;
use crate::sysvm::live::{self, LiveReport};
use crate::sysvm::{self, Forward, GuestBins};

/// How long the guest holds its live window open when the host says nothing.
const LIVE_HOLD: u64 = 300;
/// Seconds of 1 s scrapes before the rules and the dashboard queries are checked: enough for
/// the `rate()`s over 15 s windows in the rules and the dashboard to have two points.
const LIVE_SETTLE: Duration = Duration::from_secs(30);

/// What every kernel of the suite boots with: the Debian rootfs and the overlay with ctx.
pub struct Image {
    pub rootfs: Rootfs,
    pub overlay: PathBuf,
}

/// Builds (or finds cached) the rootfs, and writes the overlay into `work`.
pub fn image(cache: &Path, root: &Path, work: &Path, bins: &GuestBins) -> anyhow::Result<Image> {
    let rootfs = crate::rootfs::build_rootfs(cache)?;
    let overlay = sysvm::overlay(root, work, bins)?;
    Ok(Image { rootfs, overlay })
}

/// What the host did in the guest's live window.
#[derive(Debug)]
pub enum Live {
    /// Prometheus, the rules and the dashboard.
    Full(LiveReport),
    /// One scrape of /metrics and /healthz through the forward.
    Quick(String),
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub transcript: Transcript,
    /// Kernel trouble, timeouts, the host side of the live window: each fails the run.
    pub problems: Vec<String>,
    pub live: Option<Live>,
    pub elapsed: Duration,
    pub to_verdict: Option<Duration>,
}

/// The host's side of the live window, run on its own thread while the console is read:
/// checks ctx through the forward, then tells the guest to go on, whatever the check found.
fn host_side(
    root: PathBuf,
    work: PathBuf,
    fwd: Forward,
    prometheus: bool,
    gone: &AtomicBool,
) -> anyhow::Result<Live> {
    let r = if prometheus {
        live::check(&root, &work, fwd, LIVE_SETTLE, gone).map(Live::Full)
    } else {
        live::quick(fwd).map(Live::Quick)
    };
    let poked = live::poke(fwd);
    let live = r?;
    poked?;
    Ok(live)
}

/// Takes in one console line: the guest's lines go to the transcript (a malformed one is kept
/// there as a failure), anything else is left to the runner's kernel-trouble classifier.
fn feed(t: &mut Transcript, line: &str) -> (Seen, Option<Line>) {
    match t.feed(qemu::from_prefix(line, PREFIX)) {
        Some(l @ Line::Verdict(_)) => (Seen::Verdict, Some(l)),
        Some(l) => (Seen::Guest, Some(l)),
        None if line.contains(PREFIX) => (Seen::Guest, None),
        None => (Seen::Other, None),
    }
}

/// Boots `k` with the systemd image, reads the console and serves the live window.
/// `prometheus`: the full live check (else one scrape). Console log and initrd go to `work`;
/// the initrd is removed again when the run passed.
pub fn boot(
    root: &Path,
    work: &Path,
    k: &Kernel,
    image: &Image,
    prometheus: bool,
    timeout: Duration,
    progress: &dyn Fn(&str),
) -> anyhow::Result<Outcome> {
    let name = k.suite.name();
    let modules = k
        .modules
        .as_deref()
        .with_context(|| format!("the {name} kernel was fetched without its modules archive"))?;
    let initrd = work.join(format!("{name}-systemd-initrd.img"));
    sysvm::initrd(&[&image.rootfs.cpio, &image.overlay, modules], &initrd)?;
    let bytes = fs::metadata(&initrd)
        .with_context(|| format!("reading {}", initrd.display()))?
        .len();
    progress(&format!(
        "initramfs {:.0} MiB: rootfs, overlay with ctx, {} modules",
        bytes as f64 / f64::from(1 << 20),
        k.release
    ));
    let mut o = Outcome::default();
    let log = work.join(format!("{name}-systemd-console.log"));
    let fwd = Forward::free()?;
    let mut cmd = sysvm::qemu_command(&k.vmlinuz, &initrd, fwd, Some(LIVE_HOLD));
    let gone = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let mut host = None;
    let run = qemu::run(
        &mut cmd,
        &log,
        timeout,
        &mut |line| {
            let (seen, l) = feed(&mut o.transcript, line);
            match l {
                Some(Line::Progress(p)) => progress(&p),
                Some(Line::Live(secs)) if host.is_none() => {
                    progress(&format!(
                        "live window open (up to {secs} s): {}",
                        if prometheus {
                            "Prometheus, rules and dashboard queries on the host"
                        } else {
                            "one scrape from the host"
                        }
                    ));
                    let (root, work, tx, gone) =
                        (root.to_owned(), work.to_owned(), tx.clone(), gone.clone());
                    host = Some(std::thread::spawn(move || {
                        let _ = tx.send(host_side(root, work, fwd, prometheus, &gone));
                    }));
                }
                _ => {}
            }
            seen
        },
        progress,
    );
    // Whatever happened to qemu, the host side must end before the next boot.
    gone.store(true, Ordering::Relaxed);
    if let Some(h) = host {
        let _ = h.join();
    }
    let run = run?;
    // The runner's findings first: a timeout or a panic explains what the host side saw.
    o.problems.extend(run.problems);
    match rx.try_recv() {
        Ok(Ok(live)) => o.live = Some(live),
        Ok(Err(e)) => o
            .problems
            .push(format!("host side of the live window: {e:#}")),
        Err(_) => {}
    }
    o.elapsed = run.elapsed;
    o.to_verdict = run.to_verdict;
    Ok(o)
}

/// Everything that fails this kernel's systemd run. Empty means pass.
pub fn evaluate(k: &Kernel, o: &Outcome) -> Vec<String> {
    let mut f = o.problems.clone();
    f.extend(o.transcript.failures());
    if let Some(r) = &o.transcript.kernel
        && *r != k.release
    {
        f.push(format!("booted kernel {r}, expected {}", k.release));
    }
    if o.transcript.live.is_none() {
        f.push("the guest never opened its live window".into());
    } else if o.live.is_none() && !o.problems.iter().any(|p| p.starts_with("host side")) {
        f.push("the host side of the live window never finished".into());
    }
    if let Some(Live::Full(r)) = &o.live {
        f.extend(r.failures());
    }
    f
}

fn ok(pass: bool) -> String {
    if pass { "ok" } else { "FAIL" }.into()
}

/// The live window's rows for the table, (check, measured, ok): what the host measured through
/// the forward.
fn live_rows(live: &Live) -> Vec<[String; 3]> {
    match live {
        Live::Quick(s) => vec![[
            "host scrape through the forward".into(),
            s.clone(),
            ok(true),
        ]],
        Live::Full(r) => {
            let empty_records = r.records.iter().filter(|(_, n)| *n == 0).count();
            let series: Vec<usize> = r.records.iter().map(|(_, n)| *n).collect();
            let bad_queries = r
                .queries
                .iter()
                .filter(|q| q.error.is_some() || q.series == 0)
                .count();
            vec![
                [
                    "host Prometheus scrapes".into(),
                    format!(
                        "{:.0} of {:.0} ok, scrape time mean {:.3} s, max {:.3} s",
                        r.scrapes_ok, r.scrapes, r.scrape_avg, r.scrape_max
                    ),
                    ok(true),
                ],
                [
                    "rules healthy".into(),
                    format!("{} rules, {} unhealthy", r.rules, r.unhealthy.len()),
                    ok(r.unhealthy.is_empty()),
                ],
                [
                    "recording rules return series".into(),
                    format!(
                        "{} of {} (series per rule {}..{})",
                        r.records.len() - empty_records,
                        r.records.len(),
                        series.iter().min().copied().unwrap_or(0),
                        series.iter().max().copied().unwrap_or(0)
                    ),
                    ok(empty_records == 0),
                ],
                [
                    "dashboard queries return series".into(),
                    format!("{} of {}", r.queries.len() - bad_queries, r.queries.len()),
                    ok(bad_queries == 0),
                ],
                [
                    "dashboard_check.py --prometheus".into(),
                    if r.checker_ok { "passed" } else { "failed" }.into(),
                    ok(r.checker_ok),
                ],
            ]
        }
    }
}

/// The per-kernel table of the systemd run, in the initramfs suite's style.
pub fn table(k: &Kernel, o: &Outcome, failures: &[String]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n== {} systemd: kernel {} (Debian {} {}): {} in {}{} ==",
        k.suite.name(),
        o.transcript.kernel.as_deref().unwrap_or("?"),
        k.package,
        k.version,
        if failures.is_empty() { "PASS" } else { "FAIL" },
        minutes(o.elapsed),
        o.to_verdict
            .map_or(String::new(), |v| format!(", verdict at {}", minutes(v)))
    );
    // The verdict before the measurement: the guest's details run long (capability masks).
    let mut rows: Vec<Vec<String>> = o
        .transcript
        .checks
        .iter()
        .map(|(pass, name, detail)| vec![name.clone(), ok(*pass), detail.clone()])
        .collect();
    if let Some(l) = &o.live {
        rows.extend(
            live_rows(l)
                .into_iter()
                .map(|[c, m, k]| vec![format!("live: {c}"), k, m]),
        );
    }
    out.push_str(&grid(&["check", "", "measured"], &rows));
    if let Some(Live::Full(r)) = &o.live {
        for l in r.to_string().lines() {
            let _ = writeln!(out, "    {l}");
        }
    }
    for f in failures {
        let _ = writeln!(out, "  failure: {f}");
    }
    out
}

#[cfg(test)]
mod tests {
    use ctx_sysvm_guest::proto::CHECKS;

    use super::*;
    use crate::sysvm::live::Query;
    use crate::vm::kernel::Suite;

    fn kernel() -> Kernel {
        Kernel {
            suite: Suite::Trixie,
            package: "linux-image-6.12.117+deb13-cloud-amd64".into(),
            version: "6.12.117-1".into(),
            release: "6.12.117+deb13-cloud-amd64".into(),
            vmlinuz: PathBuf::from("/nonexistent"),
            modules: None,
            cached: true,
        }
    }

    fn passing() -> Outcome {
        let mut t = Transcript::default();
        t.feed("ctx-sysvm: kernel 6.12.117+deb13-cloud-amd64");
        t.feed("ctx-sysvm: live 300");
        for n in CHECKS {
            t.feed(&format!("ctx-sysvm: check ok {n}: fine"));
        }
        t.feed("ctx-sysvm: verdict pass");
        Outcome {
            transcript: t,
            live: Some(Live::Quick("200".into())),
            ..Default::default()
        }
    }

    #[test]
    fn evaluate_passes_a_clean_run() {
        let k = kernel();
        let o = passing();
        assert_eq!(evaluate(&k, &o), Vec::<String>::new());
        let t = table(&k, &o, &[]);
        assert!(
            t.contains("== trixie systemd: kernel 6.12.117+deb13-cloud-amd64"),
            "{t}"
        );
        assert!(t.contains("PASS"), "{t}");
        for n in CHECKS {
            assert!(t.contains(n), "{n}: {t}");
        }
    }

    #[test]
    fn evaluate_fails_on_each_cause() {
        let k = kernel();
        // Kernel trouble seen by the runner.
        let mut o = passing();
        o.problems.push("RCU stall: rcu: INFO: ...".into());
        assert_eq!(evaluate(&k, &o).len(), 1);
        // Another kernel booted.
        let mut o = passing();
        o.transcript.kernel = Some("6.1.0-50-cloud-amd64".into());
        assert_eq!(
            evaluate(&k, &o),
            vec!["booted kernel 6.1.0-50-cloud-amd64, expected 6.12.117+deb13-cloud-amd64"]
        );
        // The live window never opened, or the host never finished it.
        let mut o = passing();
        o.transcript.live = None;
        o.live = None;
        assert_eq!(
            evaluate(&k, &o),
            vec!["the guest never opened its live window"]
        );
        let mut o = passing();
        o.live = None;
        assert_eq!(
            evaluate(&k, &o),
            vec!["the host side of the live window never finished"]
        );
        // ... unless its failure is already recorded.
        o.problems
            .push("host side of the live window: connection refused".into());
        assert_eq!(evaluate(&k, &o).len(), 1);
        // A duplicate verdict.
        let mut o = passing();
        o.transcript.feed("ctx-sysvm: verdict pass");
        assert_eq!(evaluate(&k, &o), vec!["2 verdict lines, expected one"]);
        // A dashboard query without series fails the run and its row.
        let mut o = passing();
        o.live = Some(Live::Full(LiveReport {
            checker_ok: true,
            records: vec![("instance:ctx_x:sum".into(), 1)],
            queries: vec![Query {
                expr: "ctx_y".into(),
                ..Default::default()
            }],
            ..Default::default()
        }));
        let f = evaluate(&k, &o);
        assert_eq!(f, vec!["dashboard query returned no series: ctx_y"]);
        let t = table(&k, &o, &f);
        assert!(
            t.lines()
                .any(|l| l.contains("dashboard queries return series")
                    && l.split_whitespace().rev().take(4).collect::<Vec<_>>()
                        == ["1", "of", "0", "FAIL"]),
            "{t}"
        );
        assert!(t.contains("FAIL in"), "{t}");
    }

    #[test]
    fn console_lines() {
        let mut t = Transcript::default();
        assert_eq!(
            feed(
                &mut t,
                "[   30.1] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:"
            ),
            (Seen::Other, None)
        );
        assert_eq!(
            feed(&mut t, "\x1b[0mctx-sysvm: kernel 6.1.0-50-cloud-amd64"),
            (
                Seen::Guest,
                Some(Line::Kernel("6.1.0-50-cloud-amd64".into()))
            )
        );
        assert_eq!(
            feed(&mut t, "ctx-sysvm: live 300"),
            (Seen::Guest, Some(Line::Live(300)))
        );
        // Malformed: the guest's, and a failure of the transcript, not kernel output.
        assert_eq!(
            feed(&mut t, "ctx-sysvm: verdict maybe"),
            (Seen::Guest, None)
        );
        assert_eq!(t.malformed.len(), 1);
        assert_eq!(
            feed(&mut t, "ctx-sysvm: verdict fail"),
            (Seen::Verdict, Some(Line::Verdict(false)))
        );
    }
}
