//! ctx's programs in the real host kernel, moved by real workloads. Nothing here is mocked.
//!
//! Needs root (`CAP_BPF` + `CAP_PERFMON`) and at least two CPUs. Without them the tests say why and
//! return, unless `CTX_REQUIRE_KERNEL_TESTS=1` (set by CI), which turns a skip into a failure.
//! The workloads measure CPU residency, so the tests run one at a time (a process-wide lock)
//! with the test thread pinned to the first CPU and the workload on the last.

#![allow(
    clippy::unwrap_used,
    reason = "test setup that fails should fail the test loudly"
)]

use std::fs::File;
use std::io::Read;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ctx::host::system::SysRoot;
use ctx::model::{CpuInterval, Sample};
use ctx::probes::attach::{self, LoadOptions};
use ctx::session::{Attach, Session};
use ctx_common::{CpuState, Source};

static SERIAL: Mutex<()> = Mutex::new(());

struct Env {
    _lock: MutexGuard<'static, ()>,
    control: u32,
    target: u32,
}

/// Returns `None` (after saying why) when this machine cannot run the test.
fn env(test: &str) -> Option<Env> {
    let lock = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let required = std::env::var("CTX_REQUIRE_KERNEL_TESTS").is_ok_and(|v| v == "1");
    let skip = |why: &str| {
        assert!(
            !required,
            "{test}: cannot run ({why}) and CTX_REQUIRE_KERNEL_TESTS=1"
        );
        eprintln!("skipped {test}: {why}");
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip("needs root to load eBPF programs");
        return None;
    }
    let online: Vec<u32> = SysRoot::default().online().ok()?.iter().collect();
    if online.len() < 2 {
        skip("needs two online CPUs");
        return None;
    }
    let control = online[0];
    let target = *online.last()?;
    pin(control);
    Some(Env {
        _lock: lock,
        control,
        target,
    })
}

fn pin(cpu: u32) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET stays in bounds for cpu < 1024.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        let rc = libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set);
        assert_eq!(rc, 0, "sched_setaffinity({cpu})");
    }
}

/// A thread pinned to `cpu` running `work` until told to stop.
struct Workload {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<u64>>,
}

impl Workload {
    fn start(cpu: u32, work: fn(&AtomicBool) -> u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let handle = thread::spawn(move || {
            pin(cpu);
            work(&s)
        });
        // Let the scheduler move it over and the first events land.
        thread::sleep(Duration::from_millis(100));
        Self {
            stop,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().map_or(0, |h| h.join().unwrap())
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Pure user-space loop: no syscalls (the clock is read through the vDSO).
fn spin_user(stop: &AtomicBool) -> u64 {
    let mut x = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for i in 0..100_000u64 {
            x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i));
        }
    }
    x
}

/// Long kernel-bound syscalls: 64 MiB read()s from /dev/zero.
fn read_zero(stop: &AtomicBool) -> u64 {
    let mut f = File::open("/dev/zero").unwrap();
    let mut buf = vec![0u8; 64 << 20];
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += f.read(&mut buf).unwrap() as u64;
    }
    n
}

fn getpid_storm(stop: &AtomicBool) -> u64 {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..1000 {
            // SAFETY: getpid has no preconditions.
            unsafe { libc::syscall(libc::SYS_getpid) };
        }
        n += 1000;
    }
    n
}

fn open() -> Session {
    Session::open(&Attach::Standalone, SysRoot::default()).expect("attaching ctx's programs")
}

/// Samples every 10 ms for `d`, as ctxtop does; returns the first and last sample.
fn observe(s: &mut Session, d: Duration) -> (Sample, Sample) {
    let first = s.sample().unwrap();
    let start = Instant::now();
    let mut last = first.clone();
    while start.elapsed() < d {
        thread::sleep(Duration::from_millis(10));
        last = s.sample().unwrap();
    }
    (first, last)
}

fn interval(first: &Sample, last: &Sample, cpu: u32) -> CpuInterval {
    let a = first.cpu(cpu).unwrap();
    let b = last.cpu(cpu).unwrap();
    CpuInterval::between(a, b, last.taken_ns - first.taken_ns)
}

/// user, kernel, idle, nmi % of the interval.
fn pct(iv: &CpuInterval) -> [f64; 4] {
    iv.pct().expect("the CPU accrued time").as_array()
}

#[test]
fn ctx_sys_exit_user_spinner_reads_user() {
    let Some(e) = env("ctx_sys_exit_user_spinner_reads_user") else {
        return;
    };
    let mut session = open();
    let work = Workload::start(e.target, spin_user);
    let (first, last) = observe(&mut session, Duration::from_secs(2));
    work.finish();
    let iv = interval(&first, &last, e.target);
    let p = pct(&iv);
    eprintln!(
        "spinner on CPU {}: user {:.2}% kernel {:.2}% idle {:.2}% nmi {:.2}%",
        e.target, p[0], p[1], p[2], p[3]
    );
    assert!(p[0] >= 95.0, "user {:.2}% < 95%", p[0]);
    let v = last.cpu(e.target).unwrap();
    assert_eq!(
        v.status.state,
        Some(CpuState::User),
        "a spinning CPU reads user now"
    );
}

#[test]
fn ctx_sys_enter_kernel_bound_reads_kernel() {
    let Some(e) = env("ctx_sys_enter_kernel_bound_reads_kernel") else {
        return;
    };
    let mut session = open();
    let work = Workload::start(e.target, read_zero);
    let (first, last) = observe(&mut session, Duration::from_secs(2));
    let bytes = work.finish();
    let iv = interval(&first, &last, e.target);
    let p = pct(&iv);
    eprintln!(
        "read(/dev/zero, 64 MiB) on CPU {}: kernel {:.2}% user {:.2}% idle {:.2}% ({} MiB read)",
        e.target,
        p[1],
        p[0],
        p[2],
        bytes >> 20
    );
    assert!(p[1] >= 80.0, "kernel {:.2}% < 80%", p[1]);
}

#[test]
fn ctx_cpu_idle_idle_cpu_reads_idle() {
    let Some(e) = env("ctx_cpu_idle_idle_cpu_reads_idle") else {
        return;
    };
    let mut session = open();
    // Nothing runs on the target CPU; the sampler sleeps on the control CPU.
    thread::sleep(Duration::from_millis(200));
    let (first, last) = observe(&mut session, Duration::from_secs(2));
    let iv = interval(&first, &last, e.target);
    let p = pct(&iv);
    eprintln!(
        "idle CPU {}: idle {:.2}% kernel {:.2}% user {:.2}%",
        e.target, p[2], p[1], p[0]
    );
    assert!(p[2] >= 90.0, "idle {:.2}% < 90%", p[2]);
    let _ = e.control;
}

#[test]
fn ctx_sys_enter_counts_every_kernel_entry() {
    const N: u64 = 200_000;
    let Some(e) = env("ctx_sys_enter_counts_every_kernel_entry") else {
        return;
    };
    let mut session = open();
    let first = session.sample().unwrap();
    let target = e.target;
    thread::spawn(move || {
        pin(target);
        for _ in 0..N {
            // SAFETY: getpid has no preconditions.
            unsafe { libc::syscall(libc::SYS_getpid) };
        }
    })
    .join()
    .unwrap();
    let last = session.sample().unwrap();
    let iv = interval(&first, &last, e.target);
    eprintln!(
        "{N} getpid() on CPU {}: {} kernel entries, {} syscalls counted",
        e.target, iv.counts.kernel_entries, iv.counts.syscalls
    );
    assert!(
        iv.counts.kernel_entries >= N,
        "{} kernel entries < {N}",
        iv.counts.kernel_entries
    );
    assert!(iv.counts.syscalls >= N);
    let src = last.cpu(e.target).unwrap().facts.source;
    assert!(matches!(src, Source::Syscalls | Source::ContextTracking));
}

/// The sequence pair against the real kernel copy: a syscall storm rewrites the target CPU's
/// record millions of times a second while the sampler copies it as fast as it can. In every
/// record the sampler accepts, closed residency minus the last transition time is the same
/// constant (both move together in every write); a torn copy would break it.
#[test]
fn ctx_sys_enter_snapshots_are_never_torn() {
    let Some(e) = env("ctx_sys_enter_snapshots_are_never_torn") else {
        return;
    };
    let mut session = open();
    let work = Workload::start(e.target, getpid_storm);
    let idx = session
        .sampler
        .cpus()
        .iter()
        .position(|c| *c == e.target)
        .unwrap();
    let mut invariant = None;
    let (mut sweeps, mut torn, mut stale) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(1) {
        let snap = session.sampler.sweep().unwrap();
        sweeps += 1;
        torn += u64::from(snap.records.torn);
        stale += u64::from(snap.records.stale);
        let r = &snap.records.cpus[idx].record;
        assert!(r.consistent());
        if r.main.offline != 0 || r.main.last_ts == 0 {
            continue;
        }
        let inv =
            r.main.res_ns.iter().map(|x| i128::from(*x)).sum::<i128>() - i128::from(r.main.last_ts);
        match invariant {
            None => invariant = Some(inv),
            Some(i) => assert_eq!(i, inv, "torn record accepted: {:?}", r.main),
        }
    }
    let calls = work.finish();
    eprintln!(
        "{sweeps} sweeps during {calls} getpid(): {torn} copies caught mid-write and re-read, {stale} served stale"
    );
    assert!(sweeps > 1000);
}

#[test]
fn ctxtop_once_json_covers_every_online_cpu() {
    let Some(e) = env("ctxtop_once_json_covers_every_online_cpu") else {
        return;
    };
    let out = Command::new(env!("CARGO_BIN_EXE_ctxtop"))
        .args(["--once", "--json", "--interval", "0.5s", "--standalone"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ctxtop failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let online: Vec<u32> = SysRoot::default().online().unwrap().iter().collect();
    let cpus = v["cpus"].as_array().unwrap();
    for c in &online {
        let row = cpus
            .iter()
            .find(|r| r["cpu"] == *c)
            .unwrap_or_else(|| panic!("no row for online CPU {c}"));
        assert_eq!(row["online"], true);
        assert!(row["state"].is_string(), "CPU {c} has no state: {row}");
        assert!(row["pct"]["user"].is_number());
    }
    assert!(v["samples"].as_u64().unwrap() > 10);
    let sys_src = v["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h["tracepoint"] == "sys_enter" && h["status"] == "attached");
    assert!(sys_src);
    let _ = e.control;
}

/// Without kernel BTF, ctx still attaches every raw tracepoint and says what it had to skip.
#[test]
fn ctx_sched_switch_skipped_without_btf() {
    let Some(_e) = env("ctx_sched_switch_skipped_without_btf") else {
        return;
    };
    let root = std::env::temp_dir().join(format!("ctx-nobtf-{}", std::process::id()));
    let cpu = root.join("sys/devices/system/cpu");
    std::fs::create_dir_all(&cpu).unwrap();
    for f in ["online", "possible"] {
        std::fs::copy(format!("/sys/devices/system/cpu/{f}"), cpu.join(f)).unwrap();
    }
    let sys = SysRoot {
        sys: root.join("sys"),
        proc: "/proc".into(),
    };
    let p = attach::load(&LoadOptions {
        pin_dir: None,
        sys,
        state_dir: None,
    })
    .unwrap();
    let _ = std::fs::remove_dir_all(&root);
    assert!(p.hooks.status("sys_enter").unwrap().active());
    assert!(!p.hooks.status("sched_switch").unwrap().active());
    assert!(p.ct_layout.is_none());
}

/// Without `CAP_BPF`/`CAP_PERFMON` the binaries stop with a message that names the fix.
#[test]
fn ctxtop_without_capabilities_says_what_is_missing() {
    let Some(_e) = env("ctxtop_without_capabilities_says_what_is_missing") else {
        return;
    };
    for bin in [
        env!("CARGO_BIN_EXE_ctxtop"),
        env!("CARGO_BIN_EXE_ctx-daemon"),
    ] {
        let out = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
                bin,
            ])
            .args(["--pin-dir", "/sys/fs/bpf/ctx-test-nocaps"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bin} ran without capabilities");
        assert!(
            err.contains("CAP_BPF") && err.contains("run as root"),
            "{bin}: {err}"
        );
    }
}
