//! ctx-daemon as users run it: the real binary attached to the host kernel, scraped by a real
//! Prometheus server (Debian's `prometheus` package), checked by promtool, killed with SIGKILL
//! and restarted. Needs root and `prometheus`/`promtool`; without them the tests say why and
//! return, unless `CTX_REQUIRE_KERNEL_TESTS=1` (set by CI).
#![allow(
    clippy::unwrap_used,
    reason = "test setup that fails should fail the test loudly"
)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());

fn required() -> bool {
    std::env::var("CTX_REQUIRE_KERNEL_TESTS").is_ok_and(|v| v == "1")
}

fn skip(test: &str, why: &str) {
    assert!(
        !required(),
        "{test}: cannot run ({why}) and CTX_REQUIRE_KERNEL_TESTS=1"
    );
    eprintln!("skipped {test}: {why}");
}

fn guard(test: &str, tools: &[&str]) -> Option<MutexGuard<'static, ()>> {
    let g = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip(test, "needs root to load eBPF programs");
        return None;
    }
    for t in tools {
        if Command::new(t).arg("--version").output().is_err() {
            skip(
                test,
                &format!("`{t}` not installed (Debian package prometheus)"),
            );
            return None;
        }
    }
    Some(g)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("ctx-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A ctx-daemon process with its own pin dir and port; detaches its pins on drop.
struct Daemon {
    child: Option<Child>,
    pin_dir: PathBuf,
    port: u16,
    log: PathBuf,
    config: PathBuf,
}

impl Daemon {
    fn start(tag: &str, dir: &Path) -> Self {
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/ctx-test-{tag}-{}", std::process::id()));
        let config = dir.join("ctx.toml");
        std::fs::write(&config, "").unwrap();
        let mut d = Self {
            child: None,
            pin_dir,
            port: free_port(),
            log: dir.join(format!("{tag}.log")),
            config,
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(&self.log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ctx-daemon"))
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--config")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if http_get(self.port, "/healthz").is_ok_and(|(s, _)| s == 200) {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        panic!("ctx-daemon did not become healthy:\n{}", self.log_text());
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn metrics(&self) -> String {
        let (s, body) = http_get(self.port, "/metrics").unwrap();
        assert_eq!(s, 200);
        body
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain kill(2) of our own child.
            unsafe { libc::kill(c.id().cast_signed(), libc::SIGTERM) };
            let _ = c.wait();
        }
        let _ = Command::new(env!("CARGO_BIN_EXE_ctx-daemon"))
            .arg("--detach")
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .output();
    }
}

/// Minimal HTTP/1.0 GET against loopback: (status, body).
fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
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

/// `name{labels} value` lines of the exposition, as a map.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

fn counters(text: &str) -> BTreeMap<String, f64> {
    let types: BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, t)| (n.to_owned(), t.to_owned()))
        .collect();
    samples(text)
        .into_iter()
        .filter(|(k, _)| {
            let name = k.split('{').next().unwrap_or(k);
            let base = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_count")
                .trim_end_matches("_sum");
            matches!(types.get(name).map(String::as_str), Some("counter"))
                || matches!(types.get(base).map(String::as_str), Some("histogram"))
        })
        .collect()
}

fn last_cpu() -> u32 {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    let set: ctx::host::cpuset::CpuSet = text.parse().unwrap();
    set.max().unwrap()
}

fn pin(cpu: u32) {
    // SAFETY: zeroed cpu_set_t is valid; cpu < 1024.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set);
    }
}

fn spinner(cpu: u32, stop: Arc<AtomicBool>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        pin(cpu);
        let mut x = 0u64;
        while !stop.load(Ordering::Relaxed) {
            for i in 0..100_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
    })
}

#[test]
fn promtool_accepts_a_real_scrape() {
    let Some(_g) = guard("promtool_accepts_a_real_scrape", &["promtool"]) else {
        return;
    };
    let dir = TempDir::new("promtool");
    let d = Daemon::start("promtool", &dir.0);
    thread::sleep(Duration::from_millis(1500));
    let text = d.metrics();
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool: {report}"
    );
    for cpu in ctx::host::system::SysRoot::default()
        .online()
        .unwrap()
        .iter()
    {
        assert!(
            text.contains(&format!("ctx_cpu_info{{cpu=\"{cpu}\"")),
            "no ctx_cpu_info for online CPU {cpu}"
        );
    }
}

#[test]
fn prometheus_sees_a_spinner_as_user_time() {
    let Some(_g) = guard("prometheus_sees_a_spinner_as_user_time", &["prometheus"]) else {
        return;
    };
    let dir = TempDir::new("prom");
    let cpu = last_cpu();
    let stop = Arc::new(AtomicBool::new(false));
    let spin = spinner(cpu, Arc::clone(&stop));
    let d = Daemon::start("prom", &dir.0);
    let prom_port = free_port();
    let cfg = dir.0.join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: ctx\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            d.port
        ),
    )
    .unwrap();
    let mut prom = Command::new("prometheus")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.0.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.0.join("prometheus.log")).unwrap())
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_secs(17));
    let q = format!("rate(ctx_cpu_seconds_total{{state=\"user\",cpu=\"{cpu}\"}}[10s])");
    let url = format!("/api/v1/query?query={}", urlencode(&q));
    let result = http_get(prom_port, &url);
    let _ = prom.kill();
    let _ = prom.wait();
    stop.store(true, Ordering::Relaxed);
    spin.join().unwrap();
    let (status, body) = result.unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let value: f64 = v["data"]["result"][0]["value"][1]
        .as_str()
        .unwrap_or_else(|| panic!("no result for {q}: {body}"))
        .parse()
        .unwrap();
    eprintln!("Prometheus: {q} = {value:.4}");
    assert!(value >= 0.9, "{q} = {value} < 0.9");
    std::fs::write(
        concat!(env!("CARGO_TARGET_TMPDIR"), "/prometheus-query.txt"),
        format!("{q} = {value}\n"),
    )
    .unwrap();
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
#[expect(
    clippy::float_cmp,
    reason = "the attach time is the same pinned value, printed the same way both times"
)]
fn counters_survive_kill_9_without_a_second_attach() {
    let Some(_g) = guard("counters_survive_kill_9_without_a_second_attach", &[]) else {
        return;
    };
    let dir = TempDir::new("restart");
    let mut d = Daemon::start("restart", &dir.0);
    thread::sleep(Duration::from_millis(2500));
    let before_text = d.metrics();
    let before = counters(&before_text);
    let attached = samples(&before_text)["ctx_probes_attached_timestamp_seconds"];
    d.kill9();
    d.spawn();
    let after_text = d.metrics();
    let after = counters(&after_text);
    let mut checked = 0;
    for (k, v) in &before {
        let a = after
            .get(k)
            .unwrap_or_else(|| panic!("{k} missing after restart"));
        assert!(a >= v, "{k} went backwards: {v} -> {a}");
        checked += 1;
    }
    assert!(checked > 20, "only {checked} counters compared");
    assert_eq!(
        samples(&after_text)["ctx_probes_attached_timestamp_seconds"],
        attached,
        "the restart attached again"
    );
    assert!(
        after_text.contains("status=\"reused\""),
        "hooks should be reused from pins"
    );
    assert!(!after_text.contains("hook=\"sys_enter\",status=\"attached\""));
    eprintln!("{checked} counters monotonic across SIGKILL + restart; no second attach");
}

fn run_daemon(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ctx-daemon"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_input_fails_with_a_clear_message() {
    // A bad flag: no privileges needed.
    let (code, err) = run_daemon(&["--sample-interval", "soon"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("invalid duration") && err.contains("10ms"),
        "{err}"
    );
    // The old spelling still works, and the error names the conventional one.
    let (code, err) = run_daemon(&["--listen", "nowhere"]);
    assert_ne!(code, 0);
    assert!(err.contains("--web.listen-address"), "{err}");
    let (code, err) = run_daemon(&["--web.telemetry-path", "metrics"]);
    assert_ne!(code, 0);
    assert!(err.contains("plain /path"), "{err}");
    let (code, err) = run_daemon(&["--config", "/nonexistent/ctx.toml"]);
    assert_ne!(code, 0);
    assert!(err.contains("/nonexistent/ctx.toml"), "{err}");

    let Some(_g) = guard("bad_input_fails_with_a_clear_message (root part)", &[]) else {
        return;
    };
    let dir = TempDir::new("bad");
    let cfg = dir.0.join("ctx.toml");
    std::fs::write(&cfg, "").unwrap();
    let cfg = cfg.to_str().unwrap();
    // Address in use.
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let (code, err) = run_daemon(&[
        "--listen",
        &addr,
        "--config",
        cfg,
        "--pin-dir",
        "/sys/fs/bpf/ctx-test-never",
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("cannot listen on") && err.contains("in use"),
        "{err}"
    );
    assert!(
        !Path::new("/sys/fs/bpf/ctx-test-never").exists(),
        "nothing may be attached when the port is taken"
    );
    // A pin dir that cannot be created (procfs).
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let (code, err) = run_daemon(&[
        "--listen",
        &listen,
        "--config",
        cfg,
        "--pin-dir",
        "/proc/ctx-pins",
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("/proc/ctx-pins") && err.contains("pin directory"),
        "{err}"
    );
    // A pin dir that is not on bpffs.
    let not_bpf = dir.0.join("pins");
    let (code, err) = run_daemon(&[
        "--listen",
        &listen,
        "--config",
        cfg,
        "--pin-dir",
        not_bpf.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("not on a bpf filesystem"), "{err}");
}
