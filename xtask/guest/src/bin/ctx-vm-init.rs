//! /init of the ctx test VM. Sets the machine up, starts ctx-daemon, runs the scenarios of
//! issue 3, prints one check line per requirement and exactly one verdict line, and powers off.
//! It never exits: PID 1 exiting is a kernel panic.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use ctx::host::system::{BPF_FS_MAGIC, fs_magic_is};
use ctx_vm_guest::probe::{PIN_DIR, Probe};
use ctx_vm_guest::procs::{self, CTX_DAEMON, Proc};
use ctx_vm_guest::scenarios::{self, Load};
use ctx_vm_guest::{emit, say, sys};
use ctx_vm_proto::{Check, Line, Measured, Requirement, Verdict};

fn main() {
    let checks = run();
    finish(&checks);
    sys::power_off()
}

/// A check that failed because its scenario could not run.
fn broken(scenario: u8, name: &str, e: &anyhow::Error) -> Check {
    Check::new(
        scenario,
        name,
        Measured::error(format!("{e:#}")),
        Requirement::Equals {
            text: "no error".into(),
        },
    )
}

fn add(checks: &mut Vec<Check>, scenario: u8, name: &str, r: anyhow::Result<Vec<Check>>) {
    match r {
        Ok(c) => checks.extend(c),
        Err(e) => {
            say!("[{scenario}] {name}: {e:#}");
            checks.push(broken(scenario, name, &e));
        }
    }
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
    emit(&Line::Kernel(
        sys::read("/proc/sys/kernel/osrelease")?.trim().to_owned(),
    ));
    let nohz = sys::read("/sys/devices/system/cpu/nohz_full")?;
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
        checks.push(broken(0, "guest setup", &e));
        return checks;
    }
    let mut daemon = match start_daemon(&mut checks) {
        Ok(d) => d,
        Err(e) => {
            checks.push(broken(0, "ctx-daemon attaches", &e));
            return checks;
        }
    };
    let mut probe = match Probe::open() {
        Ok(p) => p,
        Err(e) => {
            checks.push(broken(0, "reading ctx-daemon's pins", &e));
            return checks;
        }
    };

    add(
        &mut checks,
        6,
        "no disturbance",
        scenarios::no_disturbance(&daemon, &mut probe),
    );
    match Load::start() {
        Ok(mut load) => {
            add(
                &mut checks,
                1,
                "user, idle, housekeeping",
                scenarios::user_idle_housekeeping(),
            );
            add(
                &mut checks,
                5,
                "ipi",
                scenarios::ipis(&mut load, &mut probe),
            );
            add(
                &mut checks,
                1,
                "kernel's own state",
                scenarios::kernel_state(&mut probe),
            );
            add(&mut checks, 2, "kernel", scenarios::kernel_bound(&mut load));
            add(&mut checks, 4, "nmi", scenarios::nmi(&mut load, &mut probe));
        }
        Err(e) => {
            say!("starting the workloads: {e:#}");
            for (n, name) in [
                (1, "user"),
                (2, "kernel"),
                (3, "idle"),
                (4, "nmi"),
                (5, "ipi"),
                (8, "housekeeping"),
            ] {
                checks.push(broken(n, name, &e));
            }
        }
    }
    add(&mut checks, 7, "hotplug", scenarios::hotplug(&mut daemon));
    drop(probe);
    add(&mut checks, 0, "teardown", teardown(daemon));
    checks
}

/// Prints every check, then the verdict, once.
fn finish(checks: &[Check]) {
    let covered = (1..=8).all(|n| checks.iter().any(|c| c.scenario == n));
    let pass = covered && checks.iter().all(|c| c.pass);
    if !pass {
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
    emit(&Line::Verdict(if pass {
        Verdict::Pass
    } else {
        Verdict::Fail
    }));
}

/// On failure, the children's logs help more than anything else.
fn dump_logs() {
    let Ok(dir) = std::fs::read_dir(procs::LOG_DIR) else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".log") {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        for l in &lines[lines.len().saturating_sub(20)..] {
            say!("| {name}: {l}");
        }
    }
}
