//! Shared by the integration tests: golden files, when a real-kernel test must skip, and a
//! pinned user-space spinner.

#![allow(dead_code, reason = "each test binary uses its own subset")]

pub mod golden;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ctx::host::cpuset::CpuSet;
use ctx::host::system::SysRoot;

/// The ctxtop under test: this build's, or `CTXTOP_BIN` (say, a release build, whose
/// `panic = "abort"` takes the panic hook's path out).
pub fn ctxtop_bin() -> String {
    std::env::var("CTXTOP_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_ctxtop").to_owned())
}
pub const CTX_DAEMON: &str = env!("CARGO_BIN_EXE_ctx-daemon");
/// Never the default pin dir: another ctx-daemon on this host may own that one.
pub const TEST_PIN_DIR: &str = "/sys/fs/bpf/ctx-tui";

/// Why a real-kernel test cannot run here, if it cannot.
pub fn skip_reason(need_cpu: Option<u32>, need_tools: &[&str]) -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root to load eBPF programs".into());
    }
    if let Some(cpu) = need_cpu
        && !online().contains(cpu)
    {
        return Some(format!("needs CPU {cpu} online"));
    }
    for tool in need_tools {
        let found = Command::new(tool)
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!("needs {tool} in PATH"));
        }
    }
    None
}

/// Says why a test is skipped, so a skip is never silent; with `CTX_REQUIRE_KERNEL_TESTS=1`
/// (set by CI, as for the host-kernel tests) a skip is a failure.
pub fn skip(test: &str, why: &str) {
    let required = std::env::var("CTX_REQUIRE_KERNEL_TESTS").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "{test}: cannot run ({why}) and CTX_REQUIRE_KERNEL_TESTS=1"
    );
    eprintln!("skipped {test}: {why}");
}

pub fn online() -> CpuSet {
    SysRoot::default()
        .online()
        .expect("reading the online CPUs")
}

/// CPUs an operator isolated: `nohz_full` or isolcpus.
pub fn isolated() -> CpuSet {
    let sys = SysRoot::default();
    sys.nohz_full()
        .iter()
        .chain(sys.isolated().iter())
        .collect()
}

/// A thread pinned to one CPU, spinning in user space until dropped; `SCHED_FIFO` as a trading
/// or vRAN spinner would be, so that the CPU really is ~100 % user even on a busy shared host
/// (at nice 0, parallel builds on the same CPU made the true share ~85 %, as /proc/stat
/// agreed). Only while the kernel throttles RT tasks, so the CPU's other tasks keep running;
/// otherwise nice -20.
pub struct Spinner {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Spinner {
    pub fn on(cpu: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            pin_current_thread(cpu);
            let fifo = rt_throttled()
                // SAFETY: plain syscalls on this thread with a valid sched_param.
                && unsafe {
                    let p = libc::sched_param { sched_priority: 1 };
                    libc::sched_setscheduler(0, libc::SCHED_FIFO, &raw const p) == 0
                };
            if !fifo {
                // SAFETY: a plain syscall on this thread.
                unsafe {
                    libc::setpriority(libc::PRIO_PROCESS, libc::gettid().cast_unsigned(), -20);
                }
            }
            let _ = ready_tx.send(());
            while !flag.load(Ordering::Relaxed) {
                let t = Instant::now();
                while t.elapsed() < Duration::from_millis(1) {
                    std::hint::spin_loop();
                }
                // One getpid a millisecond (0.03 % of the time): on a host where only the
                // syscall hooks drive the CPU, a task that blocked inside a syscall on this CPU
                // leaves the mirror in kernel until the next syscall exit here; this is that
                // exit. Context tracking needs no help.
                // SAFETY: getpid has no preconditions.
                unsafe { libc::syscall(libc::SYS_getpid) };
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("spinner started");
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// RT tasks get at most `sched_rt_runtime_us` of each period (-1 turns the limit off).
fn rt_throttled() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/sched_rt_runtime_us")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .is_some_and(|us| us >= 0)
}

pub fn pin_current_thread(cpu: u32) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET stays within it for any CPU below
    // CPU_SETSIZE; pid 0 is the calling thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw const set)
    };
    assert_eq!(rc, 0, "pinning to CPU {cpu}");
}

/// A CPU other than `busy` for ctxtop itself, so that it does not share the spinner's CPU.
pub fn other_cpu(busy: u32) -> u32 {
    online().iter().find(|c| *c != busy).unwrap_or(busy)
}
