//! What ctx costs the CPUs it watches, and what watching costs the housekeeping CPU.
//!
//! 1. ns added per `getpid()` round trip on a pinned CPU, in four cases: nothing attached, an
//!    empty program on every hook ctx uses, a program that only reads the clock on the same
//!    hooks, and ctx's programs. Rounds interleave the cases (in rotating order) so drift hits
//!    all alike; the median of the rounds is reported.
//! 2. One sampler sweep (a per-CPU map copy of every CPU's record), median and p99.
//! 3. Memory: the per-CPU record and the sampler's resident set.
//! 4. ctx-daemon itself at its defaults: CPU time and resident memory in steady state, and the
//!    time to serve a scrape.
//!
//! Run by `cargo xtask bench`, which writes the table to BENCHMARKS.md. Needs root.
//! Arguments: `--rounds N` (default 7), `--calls N` per round (default 2000000),
//! `--out FILE` (markdown; default stdout).

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::{Context as _, bail};
use ctx::host::system::SysRoot;
use ctx::probes::attach::{self, Baseline, LoadOptions};
use ctx::session::{Attach, Session};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    Nothing,
    Empty,
    Clock,
    Ctx,
}

impl Case {
    fn label(self) -> &'static str {
        match self {
            Case::Nothing => "nothing attached",
            Case::Empty => "empty programs on the same hooks",
            Case::Clock => "programs that only read the clock, same hooks",
            Case::Ctx => "ctx's programs",
        }
    }
}

fn pin(cpu: u32) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is valid; cpu is below CPU_SETSIZE.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set)
    };
    if rc != 0 {
        bail!(
            "sched_setaffinity({cpu}): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn getpid_loop(n: u64) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        // SAFETY: getpid has no preconditions.
        unsafe { libc::syscall(libc::SYS_getpid) };
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    }
}

/// The nearest-rank percentile `p` (0-1) of `v`.
fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let last = v.len() - 1;
    // `p` in 0-1 keeps the rank in 0..=last.
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a rank between 0 and the last index"
    )]
    let i = (last as f64 * p).round() as usize;
    v[i.min(last)]
}

fn arg(name: &str) -> Option<String> {
    let mut it = std::env::args();
    while let Some(a) = it.next() {
        if a == name {
            return it.next();
        }
    }
    None
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

struct Daemon {
    window_s: f64,
    cpu_pct: f64,
    rss_kib: u64,
    hwm_kib: u64,
    scrape_us: f64,
    scrape_bytes: usize,
}

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|t| {
            let rest = t.rsplit_once(')')?.1.to_owned();
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

fn http_get(port: u16) -> anyhow::Result<usize> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut b = Vec::new();
    s.read_to_end(&mut b)?;
    Ok(b.len())
}

/// Runs the real ctx-daemon with a private pin dir and port, and measures it.
fn daemon_steady_state() -> anyhow::Result<Daemon> {
    let pin = format!("/sys/fs/bpf/ctx-bench-{}", std::process::id());
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ctx-daemon"))
        .args(["--pin-dir", &pin, "--config", "/dev/null"])
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting ctx-daemon")?;
    let pid = child.id();
    let result = (|| -> anyhow::Result<Daemon> {
        let t = Instant::now();
        while http_get(port).is_err() {
            if t.elapsed().as_secs() > 60 {
                bail!("ctx-daemon did not serve within 60 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        std::thread::sleep(std::time::Duration::from_secs(2));
        let window = std::time::Duration::from_secs(10);
        let (a, t0) = (cpu_ticks(pid), Instant::now());
        std::thread::sleep(window);
        let (b, dt) = (cpu_ticks(pid), t0.elapsed().as_secs_f64());
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..100 {
            let t = Instant::now();
            bytes = http_get(port)?;
            times.push(t.elapsed().as_nanos() as f64 / 1e3);
        }
        Ok(Daemon {
            window_s: dt,
            cpu_pct: (b - a) as f64 / hz / dt * 100.0,
            rss_kib: status_kib(pid, "VmRSS:"),
            hwm_kib: status_kib(pid, "VmHWM:"),
            scrape_us: median(&mut times),
            scrape_bytes: bytes,
        })
    })();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::process::Command::new(env!("CARGO_BIN_EXE_ctx-daemon"))
        .args(["--detach", "--pin-dir", &pin])
        .output();
    result
}

/// Per case, ns per `getpid()` in each round.
struct HookCost {
    cpu: u32,
    rounds: usize,
    calls: u64,
    results: Vec<Vec<f64>>,
    /// Medians, by case.
    med: [f64; 4],
    empty_hooks: Vec<&'static str>,
    ctx_hooks: String,
}

const CASES: [Case; 4] = [Case::Nothing, Case::Empty, Case::Clock, Case::Ctx];

impl HookCost {
    fn added(&self, case: Case) -> f64 {
        self.med[case as usize] - self.med[Case::Nothing as usize]
    }
}

fn hook_cost(sys: &SysRoot, cpu: u32, rounds: usize, calls: u64) -> anyhow::Result<HookCost> {
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); CASES.len()];
    let mut empty_hooks = Vec::new();
    let mut ctx_hooks = String::new();
    for r in 0..rounds {
        for k in 0..CASES.len() {
            let i = (r + k) % CASES.len();
            let case = CASES[i];
            let _empty;
            let _ctx;
            match case {
                Case::Nothing => {}
                Case::Empty | Case::Clock => {
                    let which = if case == Case::Empty {
                        Baseline::Empty
                    } else {
                        Baseline::Clock
                    };
                    let e = attach::load_baseline(sys, which)
                        .context("attaching the baseline programs")?;
                    empty_hooks.clone_from(&e.attached);
                    _empty = e;
                }
                Case::Ctx => {
                    let p = attach::load(&LoadOptions {
                        pin_dir: None,
                        sys: sys.clone(),
                        state_dir: None,
                    })
                    .context("attaching ctx's programs")?;
                    ctx_hooks = p.hooks.summary();
                    _ctx = p;
                }
            }
            getpid_loop(calls / 10);
            results[i].push(getpid_loop(calls));
        }
        eprintln!("round {}/{rounds} done", r + 1);
    }
    let mut med = [0.0; 4];
    for (m, r) in med.iter_mut().zip(&mut results) {
        *m = median(r);
    }
    Ok(HookCost {
        cpu,
        rounds,
        calls,
        results,
        med,
        empty_hooks,
        ctx_hooks,
    })
}

/// Sweeps with ctx attached.
struct SamplerCost {
    possible: usize,
    sweep_med_us: f64,
    sweep_p99_us: f64,
    rss_kib: u64,
}

fn sampler_cost(sys: &SysRoot) -> anyhow::Result<SamplerCost> {
    let mut s = Session::open(&Attach::Standalone, sys.clone())?;
    let mut sweeps = Vec::new();
    for _ in 0..2000 {
        let snap = s.sampler.sweep()?;
        sweeps.push(snap.sweep_ns as f64);
    }
    Ok(SamplerCost {
        possible: s.possible.len(),
        sweep_med_us: median(&mut sweeps.clone()) / 1e3,
        sweep_p99_us: percentile(&mut sweeps, 0.99) / 1e3,
        rss_kib: rss_kib(),
    })
}

fn write_hooks(out: &mut String, h: &HookCost) -> std::fmt::Result {
    let (added_empty, added_clock, added_ctx) = (
        h.added(Case::Empty),
        h.added(Case::Clock),
        h.added(Case::Ctx),
    );
    let ratio = added_ctx / added_empty;
    let ratio_clock = added_ctx / added_clock;
    writeln!(out, "## getpid() round trip on CPU {}", h.cpu)?;
    writeln!(out)?;
    writeln!(
        out,
        "Median of {} interleaved rounds of {} calls each; ns per call.",
        h.rounds, h.calls
    )?;
    writeln!(out)?;
    writeln!(out, "| case | ns/call | added ns | rounds (ns/call) |")?;
    writeln!(out, "|---|---:|---:|---|")?;
    for (i, c) in CASES.iter().enumerate() {
        let rs: Vec<String> = h.results[i].iter().map(|x| format!("{x:.1}")).collect();
        writeln!(
            out,
            "| {} | {:.1} | {:.1} | {} |",
            c.label(),
            h.med[i],
            h.added(*c),
            rs.join(" ")
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "ctx adds {added_ctx:.1} ns per round trip, {ratio:.2}× what empty programs on the same hooks add ({added_empty:.1} ns); target ≤ 1.30×: **{}**.",
        if ratio <= 1.3 { "met" } else { "missed" }
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "Reading the clock alone (`bpf_ktime_get_ns`, which residency needs at every transition) adds {added_clock:.1} ns; ctx adds {ratio_clock:.2}× that."
    )?;
    writeln!(out)?;
    writeln!(out, "Baseline programs on: {}.", h.empty_hooks.join(", "))?;
    writeln!(out)?;
    writeln!(out, "ctx hooks: {}.", h.ctx_hooks)?;
    writeln!(out)
}

fn write_sampler(out: &mut String, s: &SamplerCost, d: &Daemon) -> std::fmt::Result {
    let record = size_of::<ctx_common::CpuRecord>();
    writeln!(out, "## Sampler")?;
    writeln!(out)?;
    writeln!(out, "| measure | value |")?;
    writeln!(out, "|---|---:|")?;
    writeln!(
        out,
        "| sweep over {} possible CPUs, median | {:.1} µs |",
        s.possible, s.sweep_med_us
    )?;
    writeln!(out, "| sweep, p99 of 2000 | {:.1} µs |", s.sweep_p99_us)?;
    writeln!(out, "| kernel memory per CPU (one record) | {record} B |")?;
    writeln!(
        out,
        "| bytes copied per sweep | {} B |",
        record * s.possible
    )?;
    writeln!(
        out,
        "| benchmark process RSS after sampling | {} KiB |",
        s.rss_kib
    )?;
    writeln!(out)?;
    writeln!(out, "## ctx-daemon at its defaults (10 ms sampling)")?;
    writeln!(out)?;
    writeln!(out, "| measure | value |")?;
    writeln!(out, "|---|---:|")?;
    writeln!(
        out,
        "| CPU time over {:.0} s of steady state | {:.2} % of one CPU |",
        d.window_s, d.cpu_pct
    )?;
    writeln!(out, "| resident memory, steady state | {} KiB |", d.rss_kib)?;
    writeln!(
        out,
        "| resident memory, peak (BTF parsed at start) | {} KiB |",
        d.hwm_kib
    )?;
    writeln!(
        out,
        "| GET /metrics, median of 100 ({} bytes) | {:.0} µs |",
        d.scrape_bytes, d.scrape_us
    )?;
    writeln!(out)
}

fn write_machine(out: &mut String, sys: &SysRoot, online: usize) -> std::fmt::Result {
    writeln!(out, "## Machine")?;
    writeln!(out)?;
    writeln!(out, "- CPU: {} ({online} online)", cpu_model())?;
    writeln!(out, "- kernel: {}", sys.kernel_release())?;
    writeln!(
        out,
        "- nohz_full: {}",
        if sys.nohz_full().is_empty() {
            "none (the syscall fallback drives every CPU)".into()
        } else {
            sys.nohz_full().to_string()
        }
    )?;
    // Both explain the cost of the clock and of any program call: a helper call goes through
    // a retpoline when spectre_v2 is mitigated that way, and the clocksource sets the read cost.
    let read = |p: &str| {
        std::fs::read_to_string(p).map_or_else(|_| "unknown".to_string(), |s| s.trim().to_string())
    };
    writeln!(
        out,
        "- clocksource: {}",
        read("/sys/devices/system/clocksource/clocksource0/current_clocksource")
    )?;
    writeln!(
        out,
        "- spectre_v2: {}",
        read("/sys/devices/system/cpu/vulnerabilities/spectre_v2")
    )
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes --bench; ignore anything we do not know.
    let rounds: usize = arg("--rounds").map_or(Ok(7), |v| v.parse())?;
    let calls: u64 = arg("--calls").map_or(Ok(2_000_000), |v| v.parse())?;
    if rounds < 5 {
        bail!("--rounds must be at least 5 (the median of fewer says little)");
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark loads eBPF programs: run it as root");
    }
    let sys = SysRoot::default();
    let online = sys.online()?;
    let cpu = online.max().context("no online CPU")?;
    pin(cpu)?;

    let hooks = hook_cost(&sys, cpu, rounds, calls)?;
    let sampler = sampler_cost(&sys)?;
    let daemon = daemon_steady_state()?;

    let mut out = String::new();
    write_hooks(&mut out, &hooks)?;
    write_sampler(&mut out, &sampler, &daemon)?;
    write_machine(&mut out, &sys, online.len())?;
    match arg("--out") {
        Some(p) => std::fs::write(&p, &out).with_context(|| format!("writing {p}"))?,
        None => print!("{out}"),
    }
    let (added_empty, added_clock, added_ctx) = (
        hooks.added(Case::Empty),
        hooks.added(Case::Clock),
        hooks.added(Case::Ctx),
    );
    eprintln!(
        "added: empty {added_empty:.1} ns, clock {added_clock:.1} ns, ctx {added_ctx:.1} ns; ratio to empty {:.2} (target <= 1.30), to clock {:.2}",
        added_ctx / added_empty,
        added_ctx / added_clock
    );
    Ok(())
}
