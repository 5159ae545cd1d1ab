//! /init of the ctx test VM. Sets the machine up, starts ctx-daemon, runs the scenarios of
//! issue 3, prints one check line per requirement and exactly one verdict line, and powers off.
//! It never exits: PID 1 exiting is a kernel panic.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use ctx::host::system::{BPF_FS_MAGIC, fs_magic_is};
use ctx_vm_guest::probe::{PIN_DIR, Probe};
use ctx_vm_guest::procs::{self, CTX_DAEMON, Proc};
use ctx_vm_guest::scenarios::{Env, STEPS};
use ctx_vm_guest::{emit, say, sys};
use ctx_vm_proto::suite::INITRAMFS;
use ctx_vm_proto::{Check, Line, Measured, Requirement, Verdict};

fn main() {
    let checks = run();
    finish(&checks);
    sys::power_off()
}

/// Adds what one step reported, or a failed check per scenario of the step when it could not
/// run.
fn add(checks: &mut Vec<Check>, scenarios: &[u8], name: &str, r: anyhow::Result<Vec<Check>>) {
    match r {
        Ok(c) => checks.extend(c),
        Err(e) => {
            say!("[{scenarios:?}] {name}: {e:#}");
            checks.extend(
                scenarios
                    .iter()
                    .map(|n| Check::broken(*n, name, format!("{e:#}"))),
            );
        }
    }
}

/// `uname -r`.
fn release() -> anyhow::Result<String> {
    Ok(sys::read("/proc/sys/kernel/osrelease")?.trim().to_owned())
}

fn setup() -> anyhow::Result<()> {
    // Everything this process starts inherits CPU 0, the housekeeping CPU, unless it pins
    // itself elsewhere.
    sys::pin_self(0)?;
    // The guest's own memory must not draw khugepaged's IPIs into scenario 6; children get
    // the default back (procs::command).
    ctx::host::system::exclude_from_thp().context("prctl(PR_SET_THP_DISABLE)")?;
    for (source, target, fstype) in [
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
        ("devtmpfs", "/dev", "devtmpfs"),
        ("tmpfs", "/run", "tmpfs"),
        ("tmpfs", "/tmp", "tmpfs"),
    ] {
        sys::mount(source, target, fstype)?;
    }
    // Not needed by ctx; there for whoever boots the image by hand (--keep) to trace with.
    let _ = sys::mount("tracefs", "/sys/kernel/tracing", "tracefs");
    // Ends whatever the firmware left on the console line, so the next line starts clean.
    println!();
    emit(&Line::Kernel(release()?));
    // A kernel without NO_HZ_FULL has no such file; the host says when that is expected.
    let nohz = if ctx_vm_guest::scenarios::fallback() {
        "1-3".to_owned()
    } else {
        sys::read("/sys/devices/system/cpu/nohz_full")?
    };
    if nohz.trim() != "1-3" {
        bail!(
            "nohz_full is {:?}, not 1-3: boot with nohz_full=1-3 (and a kernel with NO_HZ_FULL)",
            nohz.trim()
        );
    }
    let online = sys::read("/sys/devices/system/cpu/online")?;
    if online.trim() != "0-3" {
        bail!(
            "online CPUs are {:?}, not 0-3: boot with -smp 4",
            online.trim()
        );
    }
    // For /metrics scrapes from inside the guest (busybox wget on loopback).
    ctx_vm_guest::metrics::loopback_up()?;
    let (tasks, irqs) = sys::move_to_housekeeping(0);
    say!("moved {tasks} tasks and {irqs} interrupts to CPU 0");
    Ok(())
}

/// Starts ctx-daemon and waits until it has attached and pinned everything. /sys/fs/bpf is left
/// unmounted on purpose: mounting it is ctx-daemon's job.
fn start_daemon(checks: &mut Vec<Check>) -> anyhow::Result<Proc> {
    let bpf = Path::new("/sys/fs/bpf");
    let before = fs_magic_is(bpf, BPF_FS_MAGIC);
    let t = Instant::now();
    let mut d = Proc::spawn(
        "ctx-daemon",
        CTX_DAEMON,
        &["--pin-dir", PIN_DIR, "--sample-interval", "10ms"],
    )?;
    while !Probe::daemon_ready()? {
        if let Some(s) = d.exited() {
            bail!("ctx-daemon exited ({s}) while attaching{}", d.tail());
        }
        if t.elapsed() > Duration::from_secs(300) {
            bail!("ctx-daemon did not attach within 300 s{}", d.tail());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    say!(
        "ctx-daemon attached and pinned in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let after = fs_magic_is(bpf, BPF_FS_MAGIC);
    checks.push(Check::new(
        0,
        "bpffs at /sys/fs/bpf",
        Measured::text(match (before, after) {
            (true, _) => "mounted before ctx-daemon",
            (false, true) => "mounted by ctx-daemon",
            (false, false) => "not mounted",
        }),
        Requirement::Equals {
            text: "mounted by ctx-daemon".into(),
        },
    ));
    Ok(d)
}

/// `ctx-daemon --check` beside the running daemon: every hook's program through the verifier,
/// none attached; none may fail. On a kernel without `bpf_task_pt_regs` it runs once more
/// with the helper's program forced, for the refusal's one line and its log file in the
/// console.
fn check_programs() -> anyhow::Result<Vec<Check>> {
    const STATE: &str = "/run/ctx-state";
    let run = |force: Option<&str>| -> anyhow::Result<String> {
        let mut cmd = std::process::Command::new(CTX_DAEMON);
        cmd.args(["--check", "--pin-dir", PIN_DIR, "--state-dir", STATE]);
        if let Some(p) = force {
            cmd.env(ctx::probes::attach::SWITCH_PROGRAM_ENV, p);
        }
        let out = cmd.output().context("running ctx-daemon --check")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for l in text.lines() {
            say!(
                "[check{}] {l}",
                force.map_or(String::new(), |p| format!(" {p}"))
            );
        }
        if !out.status.success() {
            bail!("ctx-daemon --check failed ({})", out.status);
        }
        Ok(text)
    };
    let text = run(None)?;
    let hooks: Vec<&str> = text.lines().filter(|l| l.starts_with("hook ")).collect();
    let failed: Vec<&str> = hooks
        .iter()
        .copied()
        .filter(|l| l.contains(": failed"))
        .collect();
    let loadable = hooks.iter().filter(|l| l.ends_with(": loadable")).count();
    if text.contains("ctx_sched_switch_stack") {
        run(Some("ctx_sched_switch"))?;
        let log = format!("{STATE}/verifier/ctx_sched_switch.log");
        if let Ok(l) = sys::read(&log) {
            say!("[check] {log}: {} lines", l.lines().count());
        }
    }
    Ok(vec![
        Check::new(
            0,
            "ctx-daemon --check: programs failed",
            Measured::count(failed.len() as u64, "programs"),
            Requirement::exactly(0, "none"),
        )
        .note(if failed.is_empty() {
            format!("{loadable} loadable")
        } else {
            failed.join("; ")
        }),
    ])
}

fn teardown(mut daemon: Proc) -> anyhow::Result<Vec<Check>> {
    daemon.signal(libc::SIGTERM)?;
    daemon.wait_timeout(Duration::from_secs(30))?;
    let mut detach = Proc::spawn(
        "ctx-daemon-detach",
        CTX_DAEMON,
        &["--detach", "--pin-dir", PIN_DIR],
    )?;
    let status = detach.wait_timeout(Duration::from_secs(120))?;
    if !status.success() {
        bail!("ctx-daemon --detach failed ({status}){}", detach.tail());
    }
    Ok(vec![Check::new(
        0,
        "ctx-daemon --detach removes its pins",
        Measured::text(if Path::new(PIN_DIR).exists() {
            "pins left behind"
        } else {
            "removed"
        }),
        Requirement::Equals {
            text: "removed".into(),
        },
    )])
}

fn run() -> Vec<Check> {
    let mut checks = Vec::new();
    if let Err(e) = setup() {
        checks.push(Check::broken(0, "guest setup", format!("{e:#}")));
        return checks;
    }
    let daemon = match start_daemon(&mut checks) {
        Ok(d) => d,
        Err(e) => {
            checks.push(Check::broken(0, "ctx-daemon attaches", format!("{e:#}")));
            return checks;
        }
    };
    add(&mut checks, &[0], "ctx-daemon --check", check_programs());
    let probe = match Probe::open() {
        Ok(p) => p,
        Err(e) => {
            checks.push(Check::broken(
                0,
                "reading ctx-daemon's pins",
                format!("{e:#}"),
            ));
            return checks;
        }
    };
    let release = release().unwrap_or_default();
    let mut env = Env::new(daemon, probe);
    for step in STEPS.iter().filter(|s| s.applies_to(&release)) {
        let r = (step.run)(&mut env);
        add(&mut checks, step.scenarios, step.name, r);
    }
    add(&mut checks, &[0], "teardown", teardown(env.into_daemon()));
    checks
}

/// Prints every check, then the verdict, once.
fn finish(checks: &[Check]) {
    let verdict = INITRAMFS.verdict(checks, &release().unwrap_or_default());
    if verdict == Verdict::Fail {
        dump_logs();
    }
    // KERN_WARNING and worse: the console only showed errors as they happened (quiet).
    match sys::kmsg(4) {
        Ok(records) => {
            for (level, text) in records {
                emit(&Line::Kmsg(level, text));
            }
        }
        Err(e) => say!("reading the kernel log: {e:#}"),
    }
    for c in checks {
        emit(&Line::Check(c.clone()));
    }
    emit(&Line::Verdict(verdict));
}

/// On failure, the children's logs help more than anything else.
fn dump_logs() {
    let Ok(dir) = std::fs::read_dir(procs::LOG_DIR) else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if Path::new(&name).extension().is_none_or(|x| x != "log") {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        for l in &lines[lines.len().saturating_sub(20)..] {
            say!("| {name}: {l}");
        }
    }
}
