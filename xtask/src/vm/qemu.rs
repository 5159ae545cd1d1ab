//! The qemu machine of both suites ([`Boot`]), and the runner that reads its serial console:
//! every line to the suite's handler, the kernel's reports of trouble classified here.

use std::fs::File;
use std::io::{BufRead as _, BufReader, Read, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::kernel::Kernel;

/// What every boot's command line holds, whatever the suite and the kernel (the kernel's row
/// adds its `nohz_full` set, the suite what its guest needs):
/// - `tsc=nowatchdog`: under TCG the clocksource watchdog checks the TSC of every CPU in turn
///   every 0.5 s (6.12: via `add_timer_on()` → `irq_work_queue_on()`; 7.2: via
///   `smp_call_function_single_async()`), which IPIs the idle `nohz_full` CPUs whatever ctx does
///   and makes the no-disturbance scenario a coin toss. Hardware with invariant, adjustable
///   TSCs runs without this watchdog.
/// - `panic=-1`: a panic reboots at once, and `-no-reboot` turns that into qemu exiting.
const BASE_PARAMS: [&str; 2] = ["tsc=nowatchdog", "panic=-1"];

/// One boot: the machine every suite boots (single-threaded TCG, serial console on stdio, no
/// reboot on panic) with this boot's kernel, initramfs, size and command line.
#[derive(Clone, Debug)]
pub struct Boot {
    pub vmlinuz: PathBuf,
    pub initrd: PathBuf,
    pub mem_mib: u32,
    /// vCPUs: CPU 0 for housekeeping, the others for the kernel's `nohz_full` set.
    pub smp: u32,
    /// The kernel command line after `console=ttyS0`.
    pub params: Vec<String>,
    /// More qemu options (devices, networks).
    pub args: Vec<String>,
}

impl Boot {
    /// A boot of `k` with `initrd`: 4 vCPUs, the base command line and the kernel's own.
    pub fn new(k: &Kernel, initrd: &Path, mem_mib: u32) -> Self {
        let mut params = k.spec.params();
        params.extend(BASE_PARAMS.map(str::to_owned));
        Self {
            vmlinuz: k.vmlinuz.clone(),
            initrd: initrd.to_owned(),
            mem_mib,
            smp: 4,
            params,
            args: Vec::new(),
        }
    }

    /// Adds parameters to the kernel command line.
    #[must_use]
    pub fn params<const N: usize>(mut self, params: [&str; N]) -> Self {
        self.params.extend(params.map(str::to_owned));
        self
    }

    pub fn cmdline(&self) -> String {
        format!("console=ttyS0 {}", self.params.join(" "))
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new("qemu-system-x86_64");
        c.args([
            "-accel",
            // Multi-threaded TCG hangs on the int3 of text patching (TOOLCHAIN.md).
            "tcg,thread=single",
            "-cpu",
            "max",
            "-nographic",
            "-no-reboot",
        ])
        .args(["-smp", &self.smp.to_string()])
        .args(["-m", &self.mem_mib.to_string()])
        .args(&self.args)
        .arg("-kernel")
        .arg(&self.vmlinuz)
        .arg("-initrd")
        .arg(&self.initrd)
        .args(["-append", &self.cmdline()]);
        c
    }
}

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
/// call trace per CPU at `KERN_WARNING`: those are asked for and match none of these.
pub fn trouble(line: &str) -> Option<Trouble> {
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
    // Drop the printk timestamp, "[   12.345678] ".
    let msg = match line.trim_start().strip_prefix('[') {
        Some(r) => r.split_once(']').map_or(r, |(_, m)| m).trim_start(),
        None => line.trim_start(),
    };
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

/// What the console handler made of one line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Not the guest's (kernel, systemd, firmware): the runner looks for kernel trouble in it.
    Other,
    /// One of the guest's lines.
    Guest,
    /// The guest's verdict: from now on qemu has [`POWER_OFF_GRACE`] to exit.
    Verdict,
}

/// What the runner itself saw of one boot; the guest's lines are the handler's.
#[derive(Debug, Default)]
pub struct Run {
    /// Kernel trouble, a timeout, qemu failing: each fails the run.
    pub problems: Vec<String>,
    /// Power-on to qemu's exit.
    pub elapsed: Duration,
    /// Power-on to the first verdict.
    pub to_verdict: Option<Duration>,
}

enum Event {
    Out(String),
    Err(String),
    Closed,
}

fn pump(r: impl Read, tx: &Sender<Event>, wrap: fn(String) -> Event) {
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

/// The part of a console line from the guest's `prefix` on: firmware escape sequences (or a
/// kernel message that the UART interleaved) can precede a guest line.
pub fn from_prefix<'a>(line: &'a str, prefix: &str) -> &'a str {
    line.find(prefix).map_or(line, |i| &line[i..])
}

/// Runs qemu (`cmd`, which must not have stdout or stderr set), writes its console to `log`,
/// hands every console line to `on_line`, and fails the run on kernel trouble in the lines that
/// are not the guest's: fatal trouble (panic, RCU stall, lockup) kills qemu at once. qemu is
/// also killed when `timeout` passes without a verdict, or when it does not power off within
/// [`POWER_OFF_GRACE`] of the verdict. `progress` gets the trouble as it comes.
pub fn run(
    cmd: &mut Command,
    log: &Path,
    timeout: Duration,
    on_line: &mut dyn FnMut(&str) -> Seen,
    progress: &dyn Fn(&str),
) -> anyhow::Result<Run> {
    let mut log = File::create(log).with_context(|| format!("creating {}", log.display()))?;
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
        pump(out, &tx2, Event::Out);
        let _ = tx2.send(Event::Closed);
    });
    let t_err = std::thread::spawn(move || pump(err, &tx, Event::Err));

    let mut r = Run::default();
    let deadline = start + timeout;
    let mut verdict_at: Option<Instant> = None;
    loop {
        let limit = verdict_at.map_or(deadline, |t| deadline.min(t + POWER_OFF_GRACE));
        let ev = match rx.recv_timeout(limit.saturating_duration_since(Instant::now())) {
            Ok(ev) => ev,
            Err(RecvTimeoutError::Timeout) => {
                r.problems.push(if verdict_at.is_some() {
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
        match on_line(&line) {
            Seen::Guest => {}
            Seen::Verdict => {
                let now = verdict_at.get_or_insert_with(Instant::now);
                r.to_verdict.get_or_insert(now.duration_since(start));
            }
            Seen::Other => match trouble(&line) {
                Some(Trouble::Fatal(what)) => {
                    progress(&format!("kernel: {line}"));
                    r.problems.push(format!("{what}: {}", line.trim()));
                    stop(&mut child);
                    break;
                }
                Some(Trouble::Failure(what)) => {
                    progress(&format!("kernel: {line}"));
                    r.problems.push(format!("{what}: {}", line.trim()));
                }
                None => {}
            },
        }
    }
    let status = child.wait().context("waiting for qemu")?;
    let _ = t_out.join();
    let _ = t_err.join();
    if !status.success() && r.problems.is_empty() {
        r.problems.push(format!("qemu exited with {status}"));
    }
    r.elapsed = start.elapsed();
    Ok(r)
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

    /// A stand-in for qemu: a shell script printing console lines.
    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    fn run_sh(script: &str, timeout: Duration) -> (Run, Vec<String>) {
        let log = std::env::temp_dir().join(format!(
            "xtask-qemu-run-{}-{:x}.log",
            std::process::id(),
            crate::vm::fnv1a(script)
        ));
        let mut seen = Vec::new();
        let r = run(
            &mut sh(script),
            &log,
            timeout,
            &mut |l| {
                seen.push(l.to_owned());
                match l {
                    "verdict" => Seen::Verdict,
                    l if l.starts_with("guest") => Seen::Guest,
                    _ => Seen::Other,
                }
            },
            &|_| {},
        )
        .unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.starts_with("# "), "{text}");
        std::fs::remove_file(&log).unwrap();
        (r, seen)
    }

    #[test]
    fn runner_kills_on_fatal_trouble_and_times_out() {
        // A panic kills the emulator at once: `exec` so that the kill reaches the sleeper.
        let t = Instant::now();
        let (r, seen) = run_sh(
            "echo '[    9.8] Kernel panic - not syncing: x'; exec sleep 30",
            Duration::from_secs(20),
        );
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        assert!(r.problems[0].starts_with("kernel panic: "));
        assert_eq!(seen.len(), 1);
        // No verdict in time.
        let (r, _) = run_sh("exec sleep 30", Duration::from_secs(1));
        assert_eq!(
            r.problems,
            vec!["timeout: no verdict within 1s; killed qemu".to_owned()]
        );
        assert!(r.elapsed < Duration::from_secs(10));
        assert_eq!(r.to_verdict, None);
    }

    #[test]
    fn runner_records_failures_verdicts_and_exit() {
        // A warning is recorded and the guest goes on; the guest's own lines are not
        // classified, whatever they say.
        let (r, seen) = run_sh(
            "echo '[ 2.0] WARNING: CPU: 1 PID: 7 at kernel/x.c:1 f'; \
             echo 'guest WARNING: Kernel panic - not syncing'; echo verdict",
            Duration::from_secs(20),
        );
        assert_eq!(seen.len(), 3);
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        assert!(r.problems[0].starts_with("WARNING: "));
        assert!(r.to_verdict.is_some());
        // A clean verdict and exit.
        let (r, _) = run_sh("echo verdict", Duration::from_secs(20));
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        // qemu failing without any other trouble is a failure of its own.
        let (r, _) = run_sh("echo verdict; exit 3", Duration::from_secs(20));
        assert_eq!(r.problems.len(), 1);
        assert!(
            r.problems[0].starts_with("qemu exited with"),
            "{:?}",
            r.problems
        );
    }

    #[test]
    fn from_prefix_skips_what_precedes_a_guest_line() {
        assert_eq!(from_prefix("abc", "x: "), "abc");
        assert_eq!(from_prefix("zzx: abc", "x: "), "x: abc");
    }

    #[test]
    fn boot_command_line() {
        let k = Kernel::fixture();
        let b = Boot::new(&k, Path::new("/i"), 1024).params(["quiet"]);
        assert_eq!(
            b.cmdline(),
            "console=ttyS0 nohz_full=1-3 rcu_nocbs=1-3 tsc=nowatchdog panic=-1 quiet"
        );
        let args: Vec<String> = b
            .command()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(args.contains(&"tcg,thread=single".to_owned()));
        assert_eq!(args.last(), Some(&b.cmdline()));
    }
}
