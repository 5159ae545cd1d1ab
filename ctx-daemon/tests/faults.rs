//! The fault suite: what a hostile operator does to ctx-daemon, done to the real binary on the
//! real kernel, on loopback, each case with its own pin dir under /sys/fs/bpf and its own port,
//! cleaned up with `--detach`. It prints (and writes to `target/faults.txt`, which
//! `cargo xtask test` shows) one row per case: the fault, the result and the figures.
//!
//! Needs root; skips with the reason otherwise, unless `CTX_REQUIRE_KERNEL_TESTS=1`. Every case
//! runs at the full size (wrk for 20 s, 2,000 idle + 100 slowloris connections).
#![allow(
    clippy::unwrap_used,
    reason = "test setup that fails should fail the test loudly"
)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const DAEMON: &str = env!("CARGO_BIN_EXE_ctx-daemon");
const CTXTOP: &str = env!("CARGO_BIN_EXE_ctxtop");

fn required() -> bool {
    std::env::var("CTX_REQUIRE_KERNEL_TESTS").is_ok_and(|v| v == "1")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn scratch(tag: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("faults-{tag}"));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

fn config() -> PathBuf {
    let p = Path::new(env!("CARGO_TARGET_TMPDIR")).join("faults-empty.toml");
    std::fs::write(&p, "").unwrap();
    p
}

/// A ctx-daemon with its own pin dir and port. Dropping it stops it and detaches the pins.
struct Daemon {
    child: Option<Child>,
    pin_dir: PathBuf,
    port: u16,
    log: PathBuf,
    extra: Vec<String>,
}

impl Daemon {
    fn new(tag: &str) -> Self {
        let pin_dir = PathBuf::from(format!(
            "/sys/fs/bpf/ctx-fault-{tag}-{}",
            std::process::id()
        ));
        let _ = Command::new(DAEMON)
            .args(["--detach", "--pin-dir"])
            .arg(&pin_dir)
            .output();
        Self {
            child: None,
            pin_dir,
            port: free_port(),
            log: scratch(tag).join("daemon.log"),
            extra: Vec::new(),
        }
    }

    fn command(&self) -> Command {
        let mut c = Command::new(DAEMON);
        c.arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--config")
            .arg(config())
            .args(&self.extra)
            .stdout(Stdio::null());
        c
    }

    /// Starts it without waiting for it to be ready; its log is appended to.
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        self.child = Some(self.command().stderr(log).spawn().unwrap());
    }

    fn start(&mut self) {
        self.spawn();
        self.wait_healthy();
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if get(self.port, "/healthz").is_ok_and(|(s, _)| s == 200) {
                return;
            }
            if let Some(c) = &mut self.child
                && let Ok(Some(st)) = c.try_wait()
            {
                panic!("ctx-daemon exited ({st}):\n{}", self.log_text());
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("ctx-daemon did not become healthy:\n{}", self.log_text());
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM; how long it took to exit, and whether it exited 0.
    fn term(&mut self) -> (Duration, bool) {
        let Some(mut c) = self.child.take() else {
            return (Duration::ZERO, false);
        };
        let t0 = Instant::now();
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(c.id().cast_signed(), libc::SIGTERM) };
        let st = c.wait().unwrap();
        (t0.elapsed(), st.success())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn metrics(&self) -> String {
        let (s, body) = get(self.port, "/metrics").unwrap();
        assert_eq!(s, 200, "{body}");
        body
    }

    fn value(&self, series: &str) -> f64 {
        samples(&self.metrics())
            .get(series)
            .copied()
            .unwrap_or(f64::NAN)
    }

    fn map(&self, name: &str) -> PathBuf {
        self.pin_dir.join("maps").join(name)
    }

    fn link(&self, tp: &str) -> PathBuf {
        self.pin_dir.join("links").join(tp)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.term();
        let _ = Command::new(DAEMON)
            .args(["--detach", "--pin-dir"])
            .arg(&self.pin_dir)
            .output();
        let _ = std::fs::remove_dir(&self.pin_dir);
    }
}

/// HTTP/1.0 GET on loopback: (status, body).
fn get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    get_timeout(port, path, Duration::from_secs(10))
}

fn get_timeout(port: u16, path: &str, t: Duration) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), t)?;
    s.set_read_timeout(Some(t))?;
    s.set_write_timeout(Some(t))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

/// Every counter series (histogram parts included) of an exposition.
fn counters(text: &str) -> BTreeMap<String, f64> {
    let types: BTreeMap<&str, &str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    samples(text)
        .into_iter()
        .filter(|(k, _)| {
            let name = k.split('{').next().unwrap_or(k);
            let base = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_count")
                .trim_end_matches("_sum");
            types.get(name) == Some(&"counter") || types.get(base) == Some(&"histogram")
        })
        .collect()
}

/// Nearest rank; `per_mille` 500 is the median.
fn percentile(sorted: &[Duration], per_mille: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) * per_mille / 1000).min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A small deterministic generator for kill points (no dependency for this).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

fn raise_fd_limit() {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointers to rlimit structs.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut rl);
        rl.rlim_cur = rl.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &raw const rl);
    }
}

/// One row of the results table.
struct Row {
    case: &'static str,
    ok: bool,
    figures: String,
}

type CaseResult = Result<String, String>;
type Case = (&'static str, fn() -> CaseResult);

fn check(cond: bool, why: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(why()) }
}

/// (a) 20 `kill -9`s at random points (the first during the first attach) and restarts while
/// a client scrapes every millisecond: no counter series of any scrape below an earlier one.
fn restarts_under_scrapes() -> CaseResult {
    let mut d = Daemon::new("a");
    let port = d.port;
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<BTreeMap<String, f64>>> = Arc::default();
    let decreases: Arc<Mutex<Vec<String>>> = Arc::default();
    let scrapes = Arc::new(AtomicU64::new(0));
    let scrape_loop = {
        let (stop, seen, decreases, scrapes) = (
            Arc::clone(&stop),
            Arc::clone(&seen),
            Arc::clone(&decreases),
            Arc::clone(&scrapes),
        );
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok((200, body)) = get_timeout(port, "/metrics", Duration::from_secs(2)) {
                    scrapes.fetch_add(1, Ordering::Relaxed);
                    let mut seen = seen.lock().unwrap();
                    for (k, v) in counters(&body) {
                        let prev = seen.entry(k.clone()).or_insert(v);
                        if v < *prev {
                            decreases
                                .lock()
                                .unwrap()
                                .push(format!("{k}: {prev} -> {v}"));
                        }
                        *prev = prev.max(v);
                    }
                }
                thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let mut rng = Lcg(0x5eed_0013);
    let mut served_before_kill = 0;
    for i in 0..20 {
        d.spawn();
        // The first kill lands during the first attach; the others anywhere in the first 2.5 s
        // (the ledger is written once a second, so some restarts carry counts forward).
        let wait = if i == 0 { 30 } else { rng.below(2500) };
        thread::sleep(Duration::from_millis(wait));
        if get_timeout(port, "/healthz", Duration::from_millis(200)).is_ok_and(|(s, _)| s == 200) {
            served_before_kill += 1;
        }
        d.kill9();
    }
    d.start();
    thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    scrape_loop.join().unwrap();
    let n = scrapes.load(Ordering::Relaxed);
    let series = seen.lock().unwrap().len();
    let dec = decreases.lock().unwrap().clone();
    let sweeps = d.value("ctx_sweeps_total");
    check(n > 100, || format!("only {n} scrapes answered"))?;
    check(series > 20, || format!("only {series} counter series"))?;
    check(dec.is_empty(), || {
        format!(
            "{} decreases, e.g. {}",
            dec.len(),
            dec.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
        )
    })?;
    Ok(format!(
        "20 kill -9 ({served_before_kill} after serving); {n} scrapes, {series} counter series, \
         0 decreases; ctx_sweeps_total {sweeps} at the end"
    ))
}

/// (b) 2,000 idle connections and 100 slowloris clients, then real scrapes.
fn idle_and_slowloris() -> CaseResult {
    raise_fd_limit();
    let mut d = Daemon::new("b");
    d.start();
    let port = d.port;
    let mut idle = Vec::new();
    for _ in 0..2000 {
        idle.push(TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?);
    }
    let mut slow = Vec::new();
    for _ in 0..100 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
        slow.push(s);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let dribbler = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            // One header byte per connection every 500 ms: never a whole request head.
            while !stop.load(Ordering::Relaxed) {
                for s in &mut slow {
                    let _ = s.write_all(b"X");
                }
                thread::sleep(Duration::from_millis(500));
            }
        })
    };
    // Within the 10 s header timeout, so every flood socket is still open.
    let mut lat = Vec::new();
    let mut failed = 0;
    let t0 = Instant::now();
    while lat.len() < 200 && t0.elapsed() < Duration::from_secs(7) {
        let t = Instant::now();
        match get_timeout(port, "/metrics", Duration::from_secs(5)) {
            Ok((200, body)) if body.contains("ctx_sweeps_total") => lat.push(t.elapsed()),
            _ => failed += 1,
        }
    }
    stop.store(true, Ordering::Relaxed);
    dribbler.join().unwrap();
    drop(idle);
    lat.sort();
    let (p50, p99) = (percentile(&lat, 500), percentile(&lat, 990));
    check(failed == 0 && lat.len() >= 50, || {
        format!("{} scrapes answered, {failed} failed", lat.len())
    })?;
    Ok(format!(
        "2000 idle + 100 slowloris open; {} scrapes ok, 0 failed; latency p50 {} p99 {}",
        lat.len(),
        ms(p50),
        ms(p99)
    ))
}

/// (c) wrk at 256 connections, with the daemon's RSS before and after.
fn wrk_flood() -> CaseResult {
    if Command::new("wrk").arg("--version").output().is_err() {
        return Err("`wrk` is not installed (Debian package wrk; .ci/setup installs it)".into());
    }
    raise_fd_limit();
    let mut d = Daemon::new("c");
    d.start();
    thread::sleep(Duration::from_secs(1));
    let before = rss_kib(d.pid());
    let secs = 20;
    let out = Command::new("wrk")
        .args(["-t2", "-c256", &format!("-d{secs}s"), "--latency"])
        .arg(format!("http://127.0.0.1:{}/metrics", d.port))
        .output()
        .map_err(|e| format!("running wrk: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    thread::sleep(Duration::from_secs(1));
    let after = rss_kib(d.pid());
    let field = |key: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(key))
            .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    let rps = field("Requests/sec:");
    let p99 = field("99%");
    let errors = text
        .lines()
        .filter(|l| l.contains("Socket errors") || l.contains("Non-2xx"))
        .collect::<Vec<_>>()
        .join("; ");
    let healthy = get(d.port, "/healthz").is_ok_and(|(s, _)| s == 200);
    check(out.status.success() && healthy, || {
        format!("wrk or the daemon failed: {text}")
    })?;
    check(after < before + 64 * 1024, || {
        format!("RSS grew from {before} KiB to {after} KiB")
    })?;
    Ok(format!(
        "wrk -t2 -c256 -d{secs}s: {rps} req/s, p99 {p99}{}; RSS {:.1} -> {:.1} MiB",
        if errors.is_empty() {
            String::new()
        } else {
            format!(", {errors}")
        },
        before as f64 / 1024.0,
        after as f64 / 1024.0
    ))
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if f() {
            return Some(t0.elapsed());
        }
        thread::sleep(Duration::from_millis(50));
    }
    None
}

fn bpftool_map(path: &Path, kind: &str, value: u32) -> Result<(), String> {
    let out = Command::new("bpftool")
        .args(["map", "create"])
        .arg(path)
        .args(["type", kind, "key", "4", "value", &value.to_string()])
        .args(["entries", "1", "name", "ctx_fault"])
        .output()
        .map_err(|e| format!("bpftool: {e}"))?;
    check(out.status.success(), || {
        format!(
            "bpftool map create: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// (d) each pin removed or replaced, while the daemon runs and while it is stopped.
#[expect(clippy::too_many_lines, reason = "one case, read top to bottom")]
fn pins_removed_or_replaced() -> CaseResult {
    let mut d = Daemon::new("d");
    d.start();
    let mut notes = Vec::new();
    // Running: every map pin and two links, one at a time, then a replaced map.
    let mut worst = Duration::ZERO;
    let mut saw_503 = 0;
    let targets: Vec<PathBuf> = [
        "CTX_CPU",
        "CTX_CONFIG",
        "CTX_META",
        "CTX_LEDGER",
        "AYA_LOGS",
        "TASK_MODE",
    ]
    .iter()
    .map(|m| d.map(m))
    .chain([d.link("sys_enter"), d.link("cpu_idle")])
    .filter(|p| p.exists())
    .collect();
    for p in &targets {
        let repairs = d.value("ctx_pins_repairs_total");
        std::fs::remove_file(p).unwrap();
        if get(d.port, "/healthz").is_ok_and(|(s, _)| s == 503) {
            saw_503 += 1;
        }
        let took = wait_until(Duration::from_secs(6), || {
            p.exists()
                && get(d.port, "/healthz").is_ok_and(|(s, _)| s == 200)
                && d.value("ctx_pins_repairs_total") > repairs
        })
        .ok_or_else(|| {
            format!(
                "{} not repaired while running:\n{}",
                p.display(),
                d.log_text()
            )
        })?;
        worst = worst.max(took);
    }
    notes.push(format!(
        "running: {} pins removed one by one, each pinned again within {} (503 seen before repair {saw_503}x)",
        targets.len(),
        ms(worst)
    ));
    let sweeps = d.value("ctx_sweeps_total");
    let cpu = d.map("CTX_CPU");
    std::fs::remove_file(&cpu).unwrap();
    bpftool_map(&cpu, "percpu_array", 448)?;
    wait_until(Duration::from_secs(6), || {
        d.log_text().matches("pinned again").count() > targets.len()
            && get(d.port, "/healthz").is_ok_and(|(s, _)| s == 200)
    })
    .ok_or_else(|| format!("replaced CTX_CPU not repaired:\n{}", d.log_text()))?;
    let attached = d.value("ctx_probes_attached_timestamp_seconds");
    check(d.value("ctx_sweeps_total") >= sweeps, || {
        "sweeps went back".into()
    })?;
    notes
        .push("running: CTX_CPU replaced by a stranger of the same shape, ours pinned back".into());

    // Stopped: each fault, then a start.
    let stopped: [(&str, &str); 6] = [
        ("remove maps/CTX_CPU", "pins CTX_CPU missing"),
        (
            "replace maps/CTX_CPU (same shape)",
            "pin=\"maps/CTX_CPU\" field=\"id\"",
        ),
        ("replace maps/CTX_META (value 8)", "field=\"value size\""),
        ("replace maps/CTX_META (never written)", "field=\"magic\""),
        ("remove links/sys_enter", ""),
        (
            "remove maps/CTX_LEDGER",
            "counter ledger pin maps/CTX_LEDGER is missing",
        ),
    ];
    for (what, logged) in stopped {
        let before = d.value("ctx_sweeps_total");
        let repairs = d.value("ctx_pins_repairs_total");
        d.term();
        match what {
            "remove maps/CTX_CPU" => std::fs::remove_file(d.map("CTX_CPU")).unwrap(),
            "replace maps/CTX_CPU (same shape)" => {
                std::fs::remove_file(d.map("CTX_CPU")).unwrap();
                bpftool_map(&d.map("CTX_CPU"), "percpu_array", 448)?;
            }
            "replace maps/CTX_META (value 8)" => {
                std::fs::remove_file(d.map("CTX_META")).unwrap();
                bpftool_map(&d.map("CTX_META"), "array", 8)?;
            }
            "replace maps/CTX_META (never written)" => {
                std::fs::remove_file(d.map("CTX_META")).unwrap();
                bpftool_map(&d.map("CTX_META"), "array", 72)?;
            }
            "remove links/sys_enter" => std::fs::remove_file(d.link("sys_enter")).unwrap(),
            _ => std::fs::remove_file(d.map("CTX_LEDGER")).unwrap(),
        }
        let log_len = d.log_text().len();
        d.start();
        let log = d.log_text()[log_len..].to_owned();
        check(log.contains(logged), || {
            format!("{what}: log lacks {logged:?}:\n{log}")
        })?;
        let after = d.value("ctx_sweeps_total");
        let text = d.metrics();
        if what.contains("LEDGER") {
            check(after < before, || {
                format!("{what}: a new ledger, yet sweeps {before} -> {after}")
            })?;
        } else {
            check(after >= before, || {
                format!("{what}: sweeps {before} -> {after}")
            })?;
        }
        if what == "remove links/sys_enter" {
            check(
                text.contains("hook=\"sys_enter\",status=\"attached\"")
                    && text.contains("status=\"reused\""),
                || format!("{what}: only the missing hook should attach"),
            )?;
        } else if !what.contains("LEDGER") {
            check(d.value("ctx_pins_repairs_total") > repairs, || {
                format!("{what}: no repair counted")
            })?;
        }
    }
    let reattached = d.value("ctx_probes_attached_timestamp_seconds") > attached;
    notes.push(format!(
        "stopped: CTX_CPU removed, CTX_CPU replaced by a same-shape map (told by the id recorded in CTX_META), CTX_META wrong size, CTX_META never written -> WARN naming pin and field, clean re-attach{}, ledger kept; a removed link re-attached alone; CTX_LEDGER removed -> WARN, those counters restart",
        if reattached { "" } else { " (attach time unchanged?)" }
    ));
    Ok(notes.join("; "))
}

/// (e) two daemons started at once on one fresh pin dir.
fn two_daemons() -> CaseResult {
    let mut a = Daemon::new("e");
    let mut b = Daemon::new("e");
    b.log = scratch("e2").join("daemon.log");
    a.spawn();
    b.spawn();
    let mut winner = None;
    let mut loser = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && (winner.is_none() || loser.is_none()) {
        for (i, d) in [&mut a, &mut b].into_iter().enumerate() {
            if let Some(c) = &mut d.child
                && let Ok(Some(st)) = c.try_wait()
            {
                loser = Some((i, st));
                d.child = None;
            }
            if d.child.is_some() && get(d.port, "/healthz").is_ok_and(|(s, _)| s == 200) {
                winner = Some(i);
            }
        }
        thread::sleep(Duration::from_millis(50));
    }
    let (Some(w), Some((l, st))) = (winner, loser) else {
        return Err(format!(
            "expected one running and one exited: winner {winner:?}, loser {loser:?}\n{}\n{}",
            a.log_text(),
            b.log_text()
        ));
    };
    check(w != l && !st.success(), || format!("loser exited {st}"))?;
    let (wd, ld) = if w == 0 { (&a, &b) } else { (&b, &a) };
    let msg = ld.log_text();
    let holder = format!("PID {}", wd.pid());
    check(msg.contains(&holder), || {
        format!("loser's message lacks {holder}: {msg}")
    })?;
    let line = msg
        .lines()
        .find(|l| l.contains(&holder))
        .unwrap_or_default()
        .trim()
        .to_owned();
    Ok(format!("one runs, the other exits {st}: \"{line}\""))
}

/// (f) each bad flag: a clear error naming the cause, and a non-zero exit.
fn bad_flags() -> CaseResult {
    let cfg = config();
    let cfg = cfg.to_str().unwrap();
    let port = format!("127.0.0.1:{}", free_port());
    let cases: [(&[&str], &str); 9] = [
        (&["--sample-interval", "0"], "--sample-interval"),
        (&["--sample-interval", "1ns"], "outside"),
        (&["--sample-interval", "1e30"], "--sample-interval"),
        (&["--sample-interval", "100000000000"], "--sample-interval"),
        (&["--cpus", "999"], "999"),
        (&["--cpus", ""], "--cpus"),
        (
            &["--config", "/nonexistent/ctx.toml"],
            "/nonexistent/ctx.toml",
        ),
        (
            &["--check", "--pin-dir", "/proc/ctx-pins"],
            "/proc/ctx-pins",
        ),
        (&["--web.max-connections", "0"], "max-connections"),
    ];
    let mut shown = Vec::new();
    for (args, want) in cases {
        let mut c = Command::new(DAEMON);
        if !args.contains(&"--config") {
            c.args(["--config", cfg]);
        }
        let out = c
            .args(["--listen", &port])
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let code = out.status.code().unwrap_or(-1);
        check(code != 0 && code != 134 && err.contains(want), || {
            format!("{args:?}: exit {code}, wanted an error with {want:?}: {err}")
        })?;
        check(err.matches("os error").count() <= 1, || {
            format!("{args:?}: a cause printed twice: {err}")
        })?;
        shown.push(format!("{} -> {code}", args.join(" ")));
    }
    Ok(format!(
        "{} refused with the cause: {}",
        cases.len(),
        shown.join(", ")
    ))
}

/// (g) SIGTERM at 1 s, 20 s and 60 s sample intervals: out within about a second, with the
/// ledger written (the next start continues from the final sweep count).
fn sigterm_at_long_intervals() -> CaseResult {
    let mut d = Daemon::new("g");
    let mut figures = Vec::new();
    let mut last = 0.0;
    for iv in ["1s", "20s", "60s"] {
        d.extra = vec!["--sample-interval".into(), iv.into()];
        d.start();
        thread::sleep(Duration::from_millis(1500));
        let seen = d.value("ctx_sweeps_total");
        check(seen >= last, || {
            format!("{iv}: sweeps {last} -> {seen} across the restart")
        })?;
        let (took, ok) = d.term();
        check(ok && took < Duration::from_millis(1500), || {
            format!("{iv}: exit ok={ok} after {took:?}")
        })?;
        let log = d.log_text();
        let stopped = log
            .lines()
            .rev()
            .find_map(|l| {
                l.split("sweeps=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or(0.0);
        check(stopped >= seen, || {
            format!("{iv}: final sweeps {stopped} < served {seen}")
        })?;
        last = stopped;
        figures.push(format!("{iv}: {}", ms(took)));
    }
    d.extra.clear();
    d.start();
    let after = d.value("ctx_sweeps_total");
    check(after >= last, || {
        format!("ledger not written: {last} -> {after}")
    })?;
    Ok(format!(
        "exit after SIGTERM {}; the next start continues at {after} >= {last} sweeps",
        figures.join(", ")
    ))
}

/// (h) ctxtop as `nobody`, with `CAP_BPF` and `CAP_PERFMON` (so it could attach), against a daemon
/// whose pin dir sits in a 0700 directory: it refuses with the fix and attaches nothing.
fn ctxtop_cannot_see_the_pins() -> CaseResult {
    let parent = PathBuf::from(format!("/sys/fs/bpf/ctx-fault-h-{}", std::process::id()));
    let _ = std::fs::create_dir(&parent);
    std::fs::set_permissions(&parent, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let mut d = Daemon::new("h");
    d.pin_dir = parent.join("pins");
    d.start();
    let links_before = std::fs::read_dir(d.pin_dir.join("links")).map_or(0, Iterator::count);
    let out = Command::new("setpriv")
        .args(["--reuid", "nobody", "--regid", "nogroup", "--clear-groups"])
        .args([
            "--inh-caps",
            "+bpf,+perfmon",
            "--ambient-caps",
            "+bpf,+perfmon",
        ])
        .arg(CTXTOP)
        .args(["--once", "--interval", "100ms", "--pin-dir"])
        .arg(&d.pin_dir)
        .output()
        .map_err(|e| format!("setpriv: {e}"))?;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let links_after = std::fs::read_dir(d.pin_dir.join("links")).map_or(0, Iterator::count);
    drop(d);
    let _ = std::fs::remove_dir(&parent);
    check(!out.status.success(), || "ctxtop succeeded".into())?;
    check(err.contains("rather than attaching a second copy"), || {
        format!("no fix named: {err}")
    })?;
    check(!err.contains("attached"), || format!("it attached: {err}"))?;
    check(links_before == links_after, || "links changed".into())?;
    let line = err.lines().next().unwrap_or_default().trim().to_owned();
    Ok(format!(
        "exit {}: \"{line}\"",
        out.status.code().unwrap_or(-1)
    ))
}

fn table(rows: &[Row]) -> String {
    let mut s = String::from("ctx fault suite (ctx-daemon/tests/faults.rs)\n");
    let _ = writeln!(s, "{:<34} {:<6} figures", "case", "result");
    for r in rows {
        let _ = writeln!(
            s,
            "{:<34} {:<6} {}",
            r.case,
            if r.ok { "ok" } else { "FAIL" },
            r.figures
        );
    }
    s
}

#[test]
fn fault_suite() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            !required(),
            "fault_suite: cannot run (needs root) and CTX_REQUIRE_KERNEL_TESTS=1"
        );
        eprintln!("skipped fault_suite: needs root to load eBPF programs");
        return;
    }
    let only = std::env::var("CTX_FAULTS_ONLY").unwrap_or_default();
    let cases: [Case; 8] = [
        ("a kill -9 restarts, 1 ms scrapes", restarts_under_scrapes),
        ("b 2000 idle + 100 slowloris", idle_and_slowloris),
        ("c wrk 256 connections", wrk_flood),
        ("d pins removed or replaced", pins_removed_or_replaced),
        ("e two daemons, one pin dir", two_daemons),
        ("f bad flags", bad_flags),
        ("g SIGTERM at 1 s/20 s/60 s", sigterm_at_long_intervals),
        ("h ctxtop as nobody, 0700 pins", ctxtop_cannot_see_the_pins),
    ];
    let mut rows = Vec::new();
    for (case, run) in cases {
        if !only.is_empty() && !only.contains(&case[..1]) {
            continue;
        }
        let t0 = Instant::now();
        let r = std::panic::catch_unwind(run).unwrap_or_else(|p| {
            Err(p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "panicked".into()))
        });
        let secs = t0.elapsed().as_secs_f64();
        let (ok, figures) = match r {
            Ok(f) => (true, format!("{f} [{secs:.0} s]")),
            Err(e) => (false, format!("{e} [{secs:.0} s]")),
        };
        eprintln!("{case}: {}", if ok { "ok" } else { "FAIL" });
        rows.push(Row { case, ok, figures });
    }
    let t = table(&rows);
    eprint!("{t}");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map_or_else(|| PathBuf::from("faults.txt"), |p| p.join("faults.txt"));
    let _ = std::fs::write(&out, &t);
    let failed: Vec<&str> = rows.iter().filter(|r| !r.ok).map(|r| r.case).collect();
    assert!(failed.is_empty(), "failed: {failed:?}\n{t}");
}
