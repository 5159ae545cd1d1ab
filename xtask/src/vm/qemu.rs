//! Booting one kernel under qemu and reading its serial console: the guest's protocol lines,
//! and the kernel's reports of trouble.

use std::fs::File;
use std::io::{BufRead as _, BufReader, Read, Write as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ctx_vm_proto::{Check, Line, PREFIX, Verdict};

/// The kernel command line. nohz_full/rcu_nocbs are the setup under test.
/// - `tsc=nowatchdog`: under TCG the clocksource watchdog checks the TSC of every CPU in turn
///   every 0.5 s (6.12: via `add_timer_on()` → `irq_work_queue_on()`; 7.2: via
///   `smp_call_function_single_async()`), which IPIs the idle nohz_full CPUs whatever ctx does
///   and makes scenario 6 a coin toss. Hardware with invariant, adjustable TSCs runs without
///   this watchdog.
/// - `quiet`: only errors and worse reach the serial console as they happen (panics, oopses,
///   `BUG:`, RCU stalls). Printing the sysrq-l backtraces of scenario 4 to the console held
///   CPU 0 for seconds under TCG, long enough for the kernel's own `sched_tick_remote` check
///   to WARN. The guest forwards warnings from /dev/kmsg before its verdict instead.
/// - `panic=-1`: a panic reboots at once, and `-no-reboot` turns that into qemu exiting.
pub const CMDLINE: &str = "console=ttyS0 nohz_full=1-3 rcu_nocbs=1-3 tsc=nowatchdog quiet panic=-1";

/// How long qemu gets to power off after the verdict.
const POWER_OFF_GRACE: Duration = Duration::from_secs(60);

/// A kernel report that fails the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trouble {
    /// The guest cannot go on: stop qemu now.
    Fatal(&'static str),
    /// Recorded; the guest may still finish and report.
    Failure(&'static str),
}

/// Classifies a kernel console line (not one of the guest's).
///
/// Fatal: panics, RCU stalls, lockups. Failures: oopses, `BUG:` and `WARNING:` splats, hung
/// tasks. `echo l > /proc/sysrq-trigger` (scenario 4) prints "NMI backtrace for cpu N" and a
/// call trace per CPU at KERN_WARNING: those are asked for and match none of these.
pub fn trouble(line: &str) -> Option<Trouble> {
    // Drop the printk timestamp, "[   12.345678] ".
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
    if let Some((_, what)) = FATAL.iter().find(|(p, _)| msg.contains(p)) {
        return Some(Trouble::Fatal(what));
    }
    if let Some((_, what)) = FAILURE.iter().find(|(p, _)| msg.contains(p)) {
        return Some(Trouble::Failure(what));
    }
    if msg.starts_with("BUG:") || msg.contains(" BUG: ") {
        return Some(Trouble::Failure("BUG"));
    }
    if msg.starts_with("WARNING:") {
        return Some(Trouble::Failure("WARNING"));
    }
    None
}

/// What one boot produced.
#[derive(Debug, Default)]
pub struct Outcome {
    pub release: Option<String>,
    pub checks: Vec<Check>,
    pub verdicts: Vec<Verdict>,
    /// Kernel trouble, timeouts, malformed guest lines: each fails the run.
    pub problems: Vec<String>,
    pub elapsed: Duration,
}

enum Event {
    Out(String),
    Err(String),
    Closed,
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

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Boots `vmlinuz` with `initrd`, writes the console to `log`, and returns what was seen.
/// `progress` gets the guest's progress lines and the kernel's trouble as they come.
pub fn boot(
    vmlinuz: &Path,
    initrd: &Path,
    log: &Path,
    timeout: Duration,
    progress: &dyn Fn(&str),
) -> anyhow::Result<Outcome> {
    let mut log = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-accel",
        // Multi-threaded TCG hangs on the int3 of text patching (TOOLCHAIN.md).
        "tcg,thread=single",
        "-cpu",
        "max",
        "-smp",
        "4",
        "-m",
        "1024",
        "-nographic",
        "-no-reboot",
    ])
    .arg("-kernel")
    .arg(vmlinuz)
    .arg("-initrd")
    .arg(initrd)
    .args(["-append", CMDLINE]);
    writeln!(log, "# {cmd:?}").context("writing the console log")?;
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64 (install qemu-system-x86)")?;
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().context("no stdout pipe from qemu")?;
    let err = child.stderr.take().context("no stderr pipe from qemu")?;
    let tx2 = tx.clone();
    let t_out = std::thread::spawn(move || {
        pump(out, tx2.clone(), Event::Out);
        let _ = tx2.send(Event::Closed);
    });
    let t_err = std::thread::spawn(move || pump(err, tx, Event::Err));

    let mut o = Outcome::default();
    let deadline = start + timeout;
    let mut verdict_at: Option<Instant> = None;
    loop {
        let limit = verdict_at.map_or(deadline, |t| deadline.min(t + POWER_OFF_GRACE));
        let ev = match rx.recv_timeout(limit.saturating_duration_since(Instant::now())) {
            Ok(ev) => ev,
            Err(RecvTimeoutError::Timeout) => {
                o.problems.push(if verdict_at.is_some() {
                    format!(
                        "the guest did not power off within {}s of its verdict; killed qemu",
                        POWER_OFF_GRACE.as_secs()
                    )
                } else {
                    format!(
                        "timeout: no verdict within {}s; killed qemu",
                        timeout.as_secs()
                    )
                });
                stop(&mut child);
                break;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let line = match ev {
            Event::Closed => break,
            Event::Err(l) => {
                writeln!(log, "qemu: {l}").context("writing the console log")?;
                continue;
            }
            Event::Out(l) => l,
        };
        writeln!(log, "{line}").context("writing the console log")?;
        // Firmware escape sequences can precede the guest's first line.
        let guest = line.find(PREFIX).map_or(line.as_str(), |i| &line[i..]);
        match Line::parse(guest) {
            Some(Ok(Line::Kernel(r))) => o.release = Some(r),
            Some(Ok(Line::Kmsg(_, text))) => match trouble(&text) {
                Some(Trouble::Fatal(what) | Trouble::Failure(what)) => {
                    progress(&format!("kernel log: {text}"));
                    o.problems.push(format!("{what}: {}", text.trim()));
                }
                None => {}
            },
            Some(Ok(Line::Check(c))) => o.checks.push(c),
            Some(Ok(Line::Verdict(v))) => {
                o.verdicts.push(v);
                verdict_at.get_or_insert_with(Instant::now);
            }
            Some(Ok(Line::Progress(p))) => progress(&p),
            Some(Err(e)) => o.problems.push(e.to_string()),
            None => match trouble(&line) {
                Some(Trouble::Fatal(what)) => {
                    progress(&format!("kernel: {line}"));
                    o.problems.push(format!("{what}: {}", line.trim()));
                    stop(&mut child);
                    break;
                }
                Some(Trouble::Failure(what)) => {
                    progress(&format!("kernel: {line}"));
                    o.problems.push(format!("{what}: {}", line.trim()));
                }
                None => {}
            },
        }
    }
    let status = child.wait().context("waiting for qemu")?;
    let _ = t_out.join();
    let _ = t_err.join();
    if !status.success() && o.problems.is_empty() {
        o.problems.push(format!("qemu exited with {status}"));
    }
    o.elapsed = start.elapsed();
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_trouble() {
        let f = |l: &str| trouble(l);
        assert_eq!(
            f("[    9.8] Kernel panic - not syncing: Attempted to kill init!"),
            Some(Trouble::Fatal("kernel panic"))
        );
        assert_eq!(
            f("[   30.1] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:"),
            Some(Trouble::Fatal("RCU stall"))
        );
        assert_eq!(
            f("[   30.1] rcu: INFO: rcu_sched self-detected stall on CPU"),
            Some(Trouble::Fatal("RCU stall"))
        );
        assert_eq!(
            f("[   30.1] watchdog: BUG: soft lockup - CPU#2 stuck for 22s!"),
            Some(Trouble::Fatal("soft lockup"))
        );
        assert_eq!(
            f("[    3.2] WARNING: CPU: 1 PID: 7 at kernel/foo.c:12 bar+0x1/0x2"),
            Some(Trouble::Failure("WARNING"))
        );
        assert_eq!(
            f("[    3.2] BUG: kernel NULL pointer dereference, address: 0000000000000000"),
            Some(Trouble::Failure("BUG"))
        );
        assert_eq!(
            f("[    3.2] Oops: 0000 [#1] PREEMPT SMP NOPTI"),
            Some(Trouble::Failure("oops"))
        );
        // What sysrq-l prints, and ordinary boot noise, is no trouble.
        for ok in [
            "[   20.1] NMI backtrace for cpu 2",
            "[   20.1] Call Trace:",
            "[   20.1] sysrq: Show backtrace of all active CPUs",
            "[    0.5] mtrr: your CPUs had inconsistent fixed MTRR settings",
            "SeaBIOS (version 1.16.2-debian-1.16.2-1)",
        ] {
            assert_eq!(f(ok), None, "{ok}");
        }
    }
}
