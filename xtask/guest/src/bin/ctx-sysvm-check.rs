//! ctx-sysvm-check: runs inside the systemd VM as the service `ctx-sysvm-check.service`, with
//! ttyS0 as its stdout. It does what a user does after installing ctx (`systemd-sysusers`,
//! `systemctl enable`, `systemctl start`), then proves the unit's promises with systemd's own
//! view of the service: READY and STATUS, the user and capabilities, /metrics and /healthz, a
//! restart by systemd after `kill -9` with monotonic counters and no second attach, a clean
//! `systemctl stop`, the `systemd-analyze security` exposure, and a journal without errors.
//! It prints one check line per check of `ctx_vm_proto::suite::SYSTEMD`, one verdict, and
//! powers off.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use ctx_vm_guest::scenarios::{NO_CT, fallback};
use ctx_vm_guest::work::{self, Duty, Membarrier, ZeroReader};
use ctx_vm_guest::{emit, metrics, say, sys};
use ctx_vm_proto::expo::{self, Scrape, label};
use ctx_vm_proto::suite::{SYSTEMD, kernel_param, live};
use ctx_vm_proto::{Check, Line, Measured, Requirement, Verdict};

const UNIT: &str = "ctx.service";
const SYSUSERS: &str = "/usr/lib/sysusers.d/ctx.conf";
/// How long the workload runs at least, live window or not.
const WORK: Duration = Duration::from_secs(6);
/// How long systemd may take to restart ctx after `kill -9` (RestartSec=2s, then the start).
const RESTART_WITHIN: Duration = Duration::from_secs(90);
const CAP_PERFMON: u64 = 1 << 38;
const CAP_BPF: u64 = 1 << 39;
/// The workload's CPUs work this long out of every second (see [`Duty::Part`]).
const DUTY: Duty = Duty::Part {
    busy: Duration::from_millis(200),
    period: Duration::from_millis(1000),
};
/// The exposure `systemd-analyze security ctx` may report at most (issue 6).
const MAX_EXPOSURE: f64 = 2.5;

/// The scenarios of `SYSTEMD`, by number.
const BOOT: u8 = 1;
const INSTALL: u8 = 2;
const START: u8 = 3;
const WORKLOAD: u8 = 4;
const KILL: u8 = 5;
const STOP: u8 = 6;
const HARDENING: u8 = 7;

/// The checks made so far, by name; printed in `SYSTEMD.checks` order.
#[derive(Default)]
struct Checks(BTreeMap<String, Check>);

impl Checks {
    /// Records `c` and says how it went; returns whether it passed.
    fn record(&mut self, c: Check) -> bool {
        debug_assert!(
            SYSTEMD.checks.contains(&(c.scenario, c.name.as_str())),
            "{}",
            c.name
        );
        say!(
            "{} {}: {}{}",
            if c.pass { "ok" } else { "FAIL" },
            c.name,
            c.measured,
            c.note.as_ref().map_or(String::new(), |n| format!(" ({n})"))
        );
        let pass = c.pass;
        self.0.insert(c.name.clone(), c);
        pass
    }

    /// Prints every check, those never reached as failed, and the verdict.
    fn finish(mut self, release: &str, aborted: Option<&str>) -> Verdict {
        let checks: Vec<Check> = SYSTEMD
            .checks
            .iter()
            .map(|(scenario, name)| {
                self.0.remove(*name).unwrap_or_else(|| {
                    Check::broken(
                        *scenario,
                        *name,
                        format!("not run: {}", aborted.unwrap_or("the scenario ended early")),
                    )
                })
            })
            .collect();
        for c in &checks {
            emit(&Line::Check(c.clone()));
        }
        let verdict = SYSTEMD.verdict(&checks, release);
        emit(&Line::Verdict(verdict));
        verdict
    }
}

/// Measured text when `ok`, else the error `failure`.
fn text_or_error(ok: bool, text: &str, failure: impl FnOnce() -> String) -> Measured {
    if ok {
        Measured::text(text)
    } else {
        Measured::error(failure())
    }
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn run(cmd: &str, args: &[&str]) -> anyhow::Result<Out> {
    let o = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    Ok(Out {
        ok: o.status.success(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    })
}

/// `systemctl show -p A,B,... unit` as a map.
fn show(unit: &str, props: &[&str]) -> anyhow::Result<BTreeMap<String, String>> {
    let o = run("systemctl", &["show", "-p", &props.join(","), unit])?;
    if !o.ok {
        bail!("systemctl show {unit} failed: {}", o.stderr.trim());
    }
    Ok(o.stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}

fn prop<'a>(m: &'a BTreeMap<String, String>, k: &str) -> &'a str {
    m.get(k).map_or("", String::as_str)
}

/// Unix time in whole seconds, as `journalctl --since=@` takes it.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Writes the journal of ctx since `since` (unix seconds) as progress, for a failure's context.
fn dump_journal(since: Option<u64>, lines: usize) {
    let since = since.map(|s| format!("--since=@{s}"));
    let n = lines.to_string();
    let mut args = vec!["-u", UNIT, "--no-pager", "-o", "short-monotonic", "-n", &n];
    if let Some(s) = &since {
        args.push(s);
    }
    if let Ok(o) = run("journalctl", &args) {
        for l in o.stdout.lines() {
            say!("journal: {l}");
        }
    }
}

/// Fields of /proc/PID/status.
fn proc_status(pid: &str) -> anyhow::Result<BTreeMap<String, String>> {
    Ok(sys::read(format!("/proc/{pid}/status"))?
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect())
}

fn hex(s: &str) -> u64 {
    u64::from_str_radix(s, 16).unwrap_or(u64::MAX)
}

fn caps(mask: u64) -> String {
    let mut names = Vec::new();
    if mask & CAP_PERFMON != 0 {
        names.push("perfmon");
    }
    if mask & CAP_BPF != 0 {
        names.push("bpf");
    }
    let other = mask & !(CAP_PERFMON | CAP_BPF);
    if other != 0 {
        names.push("others");
    }
    format!(
        "{mask:016x} ({})",
        if names.is_empty() {
            "none".into()
        } else {
            names.join(",")
        }
    )
}

/// Runs `f` on a thread pinned to `cpu`, saying what went wrong.
fn pinned(cpu: usize, name: &str, f: impl FnOnce() -> std::io::Result<()>) {
    if let Err(e) = sys::pin_self(cpu) {
        say!("{name}: {e:#}");
    }
    if let Err(e) = f() {
        say!("{name}: {e}");
    }
}

/// NMIs to every CPU (the backtraces go to the console).
fn sysrq_l() {
    if let Err(e) = std::fs::write("/proc/sysrq-trigger", "l") {
        say!("sysrq-l failed: {e}");
    }
}

/// Holds the live window: the workload runs, ctx serves, and the host's Prometheus scrapes it
/// through the forwarded port until the host sends `GET /done`, or `secs` pass.
fn live_window(secs: u64) -> anyhow::Result<()> {
    let l = TcpListener::bind(("0.0.0.0", live::POKE_PORT))
        .with_context(|| format!("listening on port {} for the host", live::POKE_PORT))?;
    l.set_nonblocking(true)?;
    emit(&Line::Live(secs));
    let t0 = Instant::now();
    let mut next_nmi = t0 + Duration::from_secs(10);
    loop {
        if Instant::now() >= next_nmi {
            sysrq_l();
            next_nmi += Duration::from_secs(10);
            let t = Instant::now();
            let h = metrics::get("/healthz").map(|r| r.status);
            say!(
                "local GET /healthz: {h:?} in {:.2} s",
                t.elapsed().as_secs_f64()
            );
        }
        match l.accept() {
            Ok((mut s, peer)) => {
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = [0u8; 512];
                let n = s.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]);
                let done = req.starts_with("GET /done");
                let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nok\n");
                if done {
                    say!(
                        "live window closed by the host ({peer}) after {:.0} s",
                        t0.elapsed().as_secs_f64()
                    );
                    return Ok(());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e).context("accepting the host's connection"),
        }
        if t0.elapsed() >= Duration::from_secs(secs) {
            say!("live window timed out after {secs} s; the host never said done");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn hooks(s: &Scrape) -> BTreeMap<(String, String), String> {
    s.metric("ctx_hook_info")
        .map(|(series, _)| {
            let l = |k: &str| label(series, k).unwrap_or_default().to_owned();
            ((l("group"), l("hook")), l("status"))
        })
        .collect()
}

/// Hooks attached in `first` that `later` reports reused, and what went wrong otherwise.
fn reuse(first: &Scrape, later: &Scrape) -> (usize, Vec<String>) {
    let a = hooks(first);
    let b = hooks(later);
    let mut bad = Vec::new();
    let mut n = 0;
    for (h, st) in &a {
        if st != "attached" && st != "reused" {
            continue;
        }
        match b.get(h).map(String::as_str) {
            Some("reused") => n += 1,
            other => bad.push(format!("{}:{} is {}", h.0, h.1, other.unwrap_or("gone"))),
        }
    }
    for (h, st) in &b {
        if st == "attached" {
            bad.push(format!("{}:{} attached again", h.0, h.1));
        }
    }
    if n == 0 && bad.is_empty() {
        bad.push("no hook attached at all".into());
    }
    (n, bad)
}

fn attached_at(s: &Scrape) -> Option<f64> {
    s.get("ctx_probes_attached_timestamp_seconds", &[])
}

/// Waits for systemd's boot to finish: "running", or "degraded" with the failed units.
fn boot(c: &mut Checks) -> anyhow::Result<()> {
    let o = run("systemctl", &["is-system-running", "--wait"])?;
    let state = o.stdout.trim().to_owned();
    let up = sys::read("/proc/uptime")?;
    let up = up.split_whitespace().next().unwrap_or("?");
    let mut note = format!("at {up} s uptime");
    if state != "running" {
        let f = run("systemctl", &["--failed", "--plain", "--no-legend"])?;
        let _ = write!(note, "; failed: {}", f.stdout.trim().replace('\n', "; "));
    }
    c.record(
        Check::new(
            BOOT,
            "boot reached running",
            Measured::text(state),
            Requirement::equals("running"),
        )
        .note(note),
    );

    if fallback() {
        // The file exists only where the kernel has NO_HZ_FULL.
        let nohz = sys::read("/sys/devices/system/cpu/nohz_full").ok();
        c.record(
            Check::not_applicable(BOOT, "nohz_full is 1-3", NO_CT)
                .note(format!("/sys/devices/system/cpu/nohz_full: {nohz:?}")),
        );
    } else {
        let nohz = sys::read("/sys/devices/system/cpu/nohz_full")?;
        c.record(Check::new(
            BOOT,
            "nohz_full is 1-3",
            Measured::text(nohz.trim()),
            Requirement::equals("1-3"),
        ));
    }

    // systemd (PID 1) mounts bpffs itself, early, with mode=700 (mount-setup.c); nothing else
    // in this image mounts anything there.
    let info = sys::read("/proc/self/mountinfo")?;
    let bpf = info.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let sep = f.iter().position(|x| *x == "-")?;
        (f.get(4) == Some(&"/sys/fs/bpf") && f.get(sep + 1) == Some(&"bpf"))
            .then(|| f.get(sep + 3).copied().unwrap_or("").to_owned())
    });
    let m = show("sys-fs-bpf.mount", &["ActiveState", "SubState"])?;
    let units = run(
        "systemctl",
        &[
            "list-units",
            "--type=mount",
            "--all",
            "--plain",
            "--no-legend",
        ],
    )?;
    say!(
        "mount units: {}",
        units
            .stdout
            .lines()
            .filter_map(|l| l
                .split_whitespace()
                .next()
                .map(|u| format!("{u} ({})", l.split_whitespace().nth(2).unwrap_or("?"))))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mode = bpf.as_deref().map_or("not mounted", |o| {
        o.split(',')
            .find(|x| x.starts_with("mode="))
            .unwrap_or("no mode")
    });
    c.record(
        Check::new(
            BOOT,
            "bpffs mounted on /sys/fs/bpf by systemd",
            Measured::text(mode),
            Requirement::equals("mode=700"),
        )
        .note(format!(
            "bpf on /sys/fs/bpf: {}; sys-fs-bpf.mount {}/{}",
            bpf.as_deref().unwrap_or("not mounted"),
            prop(&m, "ActiveState"),
            prop(&m, "SubState")
        )),
    );
    Ok(())
}

/// The fields of user ctx's line in /etc/passwd.
fn ctx_user() -> anyhow::Result<Option<Vec<String>>> {
    Ok(sys::read("/etc/passwd")?
        .lines()
        .find(|l| l.starts_with("ctx:"))
        .map(|l| l.split(':').map(str::to_owned).collect()))
}

/// `deploy/README.md`'s install steps after the files are in place.
fn install(c: &mut Checks) -> anyhow::Result<()> {
    let sysusers = run("systemd-sysusers", &[SYSUSERS])?;
    let user = ctx_user()?;
    let field = |i: usize| {
        user.as_ref()
            .and_then(|f| f.get(i))
            .map_or("?", String::as_str)
    };
    // sysusers gives system users uids from 1 to SYS_UID_MAX.
    let measured = match field(2).parse::<u32>() {
        Ok(0) => Measured::error("user ctx has uid 0, root's"),
        Ok(uid) if sysusers.ok => Measured::count(u64::from(uid), ""),
        _ => Measured::error(format!(
            "no user ctx in /etc/passwd; systemd-sysusers: {}",
            sysusers.stderr.trim()
        )),
    };
    if !c.record(
        Check::new(
            INSTALL,
            "systemd-sysusers created user ctx",
            measured,
            Requirement::AtMost {
                max: 999.0,
                of: "SYS_UID_MAX".into(),
            },
        )
        .note(format!(
            "gid {} home {} shell {}",
            field(3),
            field(5),
            field(6)
        )),
    ) {
        bail!("no user ctx");
    }
    let reload = run("systemctl", &["daemon-reload"])?;
    let enable = run("systemctl", &["enable", UNIT])?;
    let enabled = run("systemctl", &["is-enabled", UNIT])?;
    c.record(
        Check::new(
            INSTALL,
            "systemctl enable ctx",
            text_or_error(reload.ok && enable.ok, enabled.stdout.trim(), || {
                format!(
                    "daemon-reload {}, enable {}: {}",
                    reload.ok,
                    enable.ok,
                    enable.stderr.trim()
                )
            }),
            Requirement::equals("enabled"),
        )
        .note(enable.stderr.trim()),
    );
    Ok(())
}

/// `systemctl start ctx` and what systemd and ctx then show.
fn start(c: &mut Checks) -> anyhow::Result<Scrape> {
    let t0 = Instant::now();
    let since = unix_now();
    let started = run("systemctl", &["start", UNIT])?;
    let took = t0.elapsed().as_secs_f64();
    if !c.record(
        Check::new(
            START,
            "systemctl start ctx",
            text_or_error(started.ok, "succeeded", || {
                format!("failed after {took:.1} s: {}", started.stderr.trim())
            }),
            Requirement::equals("succeeded"),
        )
        .note(format!("took {took:.1} s")),
    ) {
        dump_journal(Some(since), 40);
        bail!("systemctl start ctx failed");
    }
    let props = show(
        UNIT,
        &[
            "ActiveState",
            "SubState",
            "StatusText",
            "NRestarts",
            "MainPID",
            "Type",
        ],
    )?;
    c.record(
        Check::new(
            START,
            "active and running",
            Measured::text(format!(
                "{}/{}",
                prop(&props, "ActiveState"),
                prop(&props, "SubState")
            )),
            Requirement::equals("active/running"),
        )
        .note(format!(
            "MainPID={} NRestarts={}",
            prop(&props, "MainPID"),
            prop(&props, "NRestarts")
        )),
    );
    // Type=notify: systemctl start returns, and the unit is active, only after READY=1.
    c.record(Check::all_of(
        START,
        "READY with a STATUS line",
        &[
            ("Type=notify", prop(&props, "Type") == "notify"),
            ("active", prop(&props, "ActiveState") == "active"),
            ("StatusText set", !prop(&props, "StatusText").is_empty()),
        ],
        format!(
            "Type={} StatusText=\"{}\"",
            prop(&props, "Type"),
            prop(&props, "StatusText")
        ),
    ));

    privileges(c, prop(&props, "MainPID"))?;
    served(c)
}

/// The main process runs as user ctx with `CAP_BPF` alone, and cannot regain more.
fn privileges(c: &mut Checks, pid: &str) -> anyhow::Result<()> {
    let st = proc_status(pid)?;
    let uid = ctx_user()?
        .and_then(|f| f.get(2).cloned())
        .unwrap_or_else(|| "?".into());
    let uids: Vec<&str> = st
        .get("Uid")
        .map_or(vec![], |u| u.split_whitespace().collect());
    let mask = |k: &str| hex(st.get(k).map_or("", String::as_str));
    let (eff, prm, amb, bnd) = (
        mask("CapEff"),
        mask("CapPrm"),
        mask("CapAmb"),
        mask("CapBnd"),
    );
    let nnp = st.get("NoNewPrivs").map_or("?", String::as_str);
    c.record(Check::all_of(
        START,
        "runs as ctx with CAP_BPF only",
        &[
            (
                "every uid is ctx's",
                uids.len() == 4 && uids.iter().all(|u| *u == uid),
            ),
            ("CapEff bpf", eff == CAP_BPF),
            ("CapPrm bpf", prm == CAP_BPF),
            ("CapAmb none", amb == 0),
            ("CapBnd bpf,perfmon", bnd == CAP_BPF | CAP_PERFMON),
            ("NoNewPrivs", nnp == "1"),
        ],
        format!(
            "uids {} (ctx is {uid}); CapEff {}, CapPrm {}, CapAmb {}, CapBnd {}; NoNewPrivs {nnp}",
            uids.join("/"),
            caps(eff),
            caps(prm),
            caps(amb),
            caps(bnd)
        ),
    ));

    Ok(())
}

/// /metrics and /healthz answer as the unit's configuration says; returns the scrape.
fn served(c: &mut Checks) -> anyhow::Result<Scrape> {
    let scrape = metrics::scrape();
    c.record(match &scrape {
        Ok(s) => {
            let cpus = |nohz_only: bool| -> BTreeSet<String> {
                s.metric("ctx_cpu_info")
                    .filter(|(series, _)| !nohz_only || label(series, "nohz_full") == Some("true"))
                    .filter_map(|(series, _)| label(series, "cpu").map(str::to_owned))
                    .collect()
            };
            let (all, nohz) = (cpus(false), cpus(true));
            let up = s.get("ctx_sampler_up", &[]);
            let build = s.metric("ctx_build_info").count();
            Check::all_of(
                START,
                "/metrics served",
                &[
                    (
                        "CPUs 0-3",
                        all == ["0", "1", "2", "3"].map(String::from).into(),
                    ),
                    (
                        if fallback() {
                            "no nohz_full CPU"
                        } else {
                            "nohz_full 1-3"
                        },
                        if fallback() {
                            nohz.is_empty()
                        } else {
                            nohz == ["1", "2", "3"].map(String::from).into()
                        },
                    ),
                    ("sampler up", up == Some(1.0)),
                    ("one ctx_build_info", build == 1),
                ],
                format!(
                    "{} samples; CPUs {all:?}, nohz_full {nohz:?}, ctx_sampler_up {up:?}, \
                     ctx_build_info {build}",
                    s.samples.len(),
                ),
            )
        }
        Err(e) => Check::broken(START, "/metrics served", format!("{e:#}")),
    });
    let healthz = metrics::get("/healthz");
    c.record(match &healthz {
        Ok(r) => Check::new(
            START,
            "/healthz is 200",
            Measured::count(u64::from(r.status), "HTTP"),
            Requirement::exactly(200, "OK"),
        )
        .note(r.text().trim()),
        Err(e) => Check::broken(START, "/healthz is 200", format!("{e:#}")),
    });
    scrape
}

/// The workload's window: sysrq-l, the live window, and a scrape after at least [`WORK`];
/// returns the scrape and how long it took.
fn loaded(live: Option<u64>) -> anyhow::Result<(Scrape, f64)> {
    say!(
        "workload: user spinner on CPU 2, /dev/zero reader on CPU 3, membarrier IPIs every 50 ms, \
         sysrq-l"
    );
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    sysrq_l();
    if let Some(secs) = live {
        live_window(secs)?;
    }
    // However soon the host closed the window, the counters get some work to count.
    std::thread::sleep(WORK.saturating_sub(t0.elapsed()));
    // Counters reach scrapes once a second (FLUSH_EVERY).
    std::thread::sleep(Duration::from_millis(1500));
    let t = Instant::now();
    let after = metrics::scrape()?;
    Ok((after, t.elapsed().as_secs_f64()))
}

/// Runs the workload (and the host's live window, when asked for) and checks that ctx saw it.
///
/// The load exercises what ctx reports on the `nohz_full` CPUs: a user-mode spinner alone on
/// CPU 2, a task reading /dev/zero (mostly in the kernel) on CPU 3, and expedited membarriers
/// from CPU 0 that send call-function IPIs to both; NMIs come from sysrq-l. The spinner and the
/// reader keep to [`DUTY`]: with both busy all the time, a GET /metrics took 5.8 s under TCG
/// and Prometheus' 1 s scrapes piled up. The load stops before the kill that follows: its busy
/// vCPUs would leave CPU 0 little of the emulator, and the restart would crawl.
fn workload(c: &mut Checks, live: Option<u64>) -> anyhow::Result<()> {
    let before = metrics::scrape()?;
    let stop = AtomicBool::new(false);
    let (after, took) = std::thread::scope(|s| {
        s.spawn(|| {
            pinned(2, "spinner", || {
                work::spin(DUTY, &stop);
                Ok(())
            });
        });
        s.spawn(|| pinned(3, "reader", || ZeroReader::new(64 << 10)?.run(DUTY, &stop)));
        s.spawn(|| {
            pinned(0, "membarrier", || {
                let mb = Membarrier::register()?;
                while !stop.load(Ordering::Relaxed) {
                    mb.ipi()?;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(())
            });
        });
        let r = loaded(live);
        stop.store(true, Ordering::Relaxed);
        r
    })?;
    // What ctx itself costs here: under TCG every instruction is emulated, so expect far more
    // than on hardware.
    let usage = show(UNIT, &["CPUUsageNSec", "ActiveEnterTimestampMonotonic"])?;
    let cpu = prop(&usage, "CPUUsageNSec")
        .parse::<f64>()
        .unwrap_or(f64::NAN)
        * 1e-9;
    let since = prop(&usage, "ActiveEnterTimestampMonotonic")
        .parse::<f64>()
        .unwrap_or(f64::NAN)
        * 1e-6;
    let up = sys::read("/proc/uptime")?
        .split_whitespace()
        .next()
        .and_then(|u| u.parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    let sweeps = after
        .get("ctx_sample_duration_seconds_count", &[])
        .unwrap_or(f64::NAN);
    let sweep_sum = after
        .get("ctx_sample_duration_seconds_sum", &[])
        .unwrap_or(f64::NAN);
    say!(
        "cost under TCG: GET /metrics {took:.2} s; ctx-daemon CPU {cpu:.1} s in {:.0} s active; \
         {sweeps} sweeps, mean sweep {:.0} us",
        up - since,
        sweep_sum / sweeps * 1e6
    );
    let delta =
        |name: &str, labels: &[(&str, &str)]| after.sum(name, labels) - before.sum(name, labels);
    let user2 = delta("ctx_cpu_seconds_total", &[("cpu", "2"), ("state", "user")]);
    let kern3 = delta(
        "ctx_cpu_seconds_total",
        &[("cpu", "3"), ("state", "kernel")],
    );
    let nmis = delta("ctx_cpu_nmis_total", &[]);
    let ipis2 = delta("ctx_cpu_ipis_received_total", &[("cpu", "2")]);
    let sweeps = delta("ctx_sweeps_total", &[]);
    c.record(Check::all_of(
        WORKLOAD,
        "counters move under the workload",
        &[
            ("CPU 2 user", user2 > 0.0),
            ("CPU 3 kernel", kern3 > 0.0),
            ("NMIs", nmis > 0.0),
            ("IPIs to CPU 2", ipis2 > 0.0),
            ("sweeps", sweeps > 0.0),
        ],
        format!(
            "CPU 2 user +{user2:.2} s, CPU 3 kernel +{kern3:.2} s, NMIs +{nmis}, IPIs to CPU 2 \
             +{ipis2}, sweeps +{sweeps}"
        ),
    ));
    Ok(())
}

/// The same pins: the attach time unchanged, and every hook of `first` reused in `later`.
fn same_pins(first: &Scrape, later: &Scrape) -> (Vec<(&'static str, bool)>, String) {
    let (n, bad) = reuse(first, later);
    let (ta, tb) = (attached_at(first), attached_at(later));
    (
        vec![
            ("attach time unchanged", ta.is_some() && ta == tb),
            ("every hook reused", bad.is_empty()),
        ],
        format!(
            "ctx_probes_attached_timestamp_seconds {ta:?} -> {tb:?}; {n} hooks reused{}",
            if bad.is_empty() {
                String::new()
            } else {
                format!("; {}", bad.join(", "))
            }
        ),
    )
}

/// `kill -9` of the main process: systemd restarts it, on the same pins.
fn kill9(c: &mut Checks) -> anyhow::Result<()> {
    let a = metrics::scrape()?;
    let p = show(UNIT, &["MainPID", "NRestarts"])?;
    let pid1 = prop(&p, "MainPID").to_owned();
    let n0: u64 = prop(&p, "NRestarts").parse().unwrap_or(0);
    let pid: libc::pid_t = pid1.parse().context("MainPID is not a number")?;
    if pid <= 0 {
        bail!("ctx has no main process (MainPID={pid1})");
    }
    let since = unix_now();
    // SAFETY: kill(2) with a pid systemd reported as the unit's main process.
    if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
        bail!("kill -9 {pid}: {}", std::io::Error::last_os_error());
    }
    let t0 = Instant::now();
    let back = |q: &BTreeMap<String, String>| {
        [
            (
                "NRestarts +1",
                prop(q, "NRestarts").parse::<u64>().unwrap_or(0) == n0 + 1,
            ),
            (
                "a new MainPID",
                prop(q, "MainPID") != pid1 && prop(q, "MainPID") != "0",
            ),
            (
                "active/running",
                prop(q, "ActiveState") == "active" && prop(q, "SubState") == "running",
            ),
        ]
    };
    let last = loop {
        let q = show(
            UNIT,
            &["MainPID", "NRestarts", "ActiveState", "SubState", "Result"],
        )?;
        if back(&q).iter().all(|(_, holds)| *holds) || t0.elapsed() > RESTART_WITHIN {
            break q;
        }
        // Each systemctl costs CPU 0 time under emulation: poll gently.
        std::thread::sleep(Duration::from_secs(1));
    };
    if !c.record(Check::all_of(
        KILL,
        "kill -9 restarted by systemd",
        &back(&last),
        format!(
            "NRestarts {n0} -> {}, MainPID {pid1} -> {}, {} {} after {:.1} s",
            prop(&last, "NRestarts"),
            prop(&last, "MainPID"),
            prop(&last, "ActiveState"),
            prop(&last, "SubState"),
            t0.elapsed().as_secs_f64()
        ),
    )) {
        dump_journal(Some(since), 40);
        bail!("ctx was not restarted");
    }
    // At once: what the restarted daemon restored; then after a flush or two.
    let b = metrics::scrape()?;
    std::thread::sleep(Duration::from_secs(2));
    let b2 = metrics::scrape()?;
    let m1 = expo::monotonic(&a, &b);
    let m2 = expo::monotonic(&b, &b2);
    let bad = |m: &expo::Monotonic| m.decreased.len() + m.missing.len() + m.untyped_totals.len();
    c.record(
        Check::new(
            KILL,
            "kill -9 counters monotonic",
            if m1.compared > 0 && m2.compared > 0 {
                Measured::count((bad(&m1) + bad(&m2)) as u64, "went down or vanished")
            } else {
                Measured::error("no counter to compare")
            },
            Requirement::exactly(0, "none"),
        )
        .note(format!(
            "before -> right after restart: {}; -> 2 s later: {}",
            m1.describe(),
            m2.describe()
        )),
    );
    let (conditions, detail) = same_pins(&a, &b);
    c.record(Check::all_of(
        KILL,
        "kill -9 no second attach",
        &conditions,
        detail,
    ));
    Ok(())
}

/// `systemctl stop ctx`: SIGTERM, a clean exit, nothing killed.
fn stop(c: &mut Checks) -> anyhow::Result<()> {
    let since = unix_now();
    let t0 = Instant::now();
    let o = run("systemctl", &["stop", UNIT])?;
    let took = t0.elapsed().as_secs_f64();
    let p = show(
        UNIT,
        &["ActiveState", "Result", "ExecMainCode", "ExecMainStatus"],
    )?;
    let j = run(
        "journalctl",
        &[
            "-u",
            UNIT,
            "--no-pager",
            "-o",
            "cat",
            &format!("--since=@{since}"),
        ],
    )?;
    let killed: Vec<&str> = j
        .stdout
        .lines()
        .filter(|l| {
            l.contains("SIGKILL") || l.contains("Killing process") || l.contains("timed out")
        })
        .collect();
    c.record(Check::all_of(
        STOP,
        "systemctl stop is clean",
        &[
            ("systemctl stop succeeded", o.ok),
            ("inactive", prop(&p, "ActiveState") == "inactive"),
            ("Result=success", prop(&p, "Result") == "success"),
            // CLD_EXITED, status 0: ctx returned from main on SIGTERM.
            (
                "exit status 0",
                prop(&p, "ExecMainCode") == "1" && prop(&p, "ExecMainStatus") == "0",
            ),
            ("nothing killed", killed.is_empty()),
        ],
        format!(
            "took {took:.1} s; ActiveState={} Result={} ExecMainCode={} ExecMainStatus={}{}",
            prop(&p, "ActiveState"),
            prop(&p, "Result"),
            prop(&p, "ExecMainCode"),
            prop(&p, "ExecMainStatus"),
            if killed.is_empty() {
                String::new()
            } else {
                format!("; journal: {}", killed.join(" / "))
            }
        ),
    ));
    Ok(())
}

fn restart_reuses(c: &mut Checks, first: &Scrape) -> anyhow::Result<()> {
    let name = "start after stop reuses the pins";
    let t0 = Instant::now();
    let o = run("systemctl", &["start", UNIT])?;
    let took = t0.elapsed().as_secs_f64();
    c.record(if o.ok {
        let d = metrics::scrape()?;
        let (conditions, detail) = same_pins(first, &d);
        Check::all_of(
            STOP,
            name,
            &conditions,
            format!("start took {took:.1} s; {detail}"),
        )
    } else {
        Check::broken(
            STOP,
            name,
            format!("systemctl start failed: {}", o.stderr.trim()),
        )
    });
    // Leave it stopped for good, cleanly; a failure here shows in the journal check.
    let _ = run("systemctl", &["stop", UNIT])?;
    Ok(())
}

fn security(c: &mut Checks) -> anyhow::Result<()> {
    let o = run("systemd-analyze", &["security", UNIT, "--no-pager"])?;
    let score = o
        .stdout
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for ctx.service:"))
        .and_then(|(_, r)| r.split_whitespace().next())
        .and_then(|s| s.parse::<f64>().ok());
    for l in o.stdout.lines().filter(|l| l.contains('✗')) {
        say!(
            "security: {}",
            l.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }
    c.record(Check::new(
        HARDENING,
        "systemd-analyze security exposure",
        score.map_or_else(
            || Measured::error(format!("no score in the output: {}", o.stderr.trim())),
            |s| Measured::value(s, ""),
        ),
        Requirement::AtMost {
            max: MAX_EXPOSURE,
            of: "issue 6".into(),
        },
    ));
    Ok(())
}

fn journal(c: &mut Checks) -> anyhow::Result<()> {
    let err = run(
        "journalctl",
        &["-u", UNIT, "-p", "err", "--no-pager", "-o", "cat", "-q"],
    )?;
    let all = run("journalctl", &["-u", UNIT, "--no-pager", "-o", "cat", "-q"])?;
    let errs: Vec<&str> = err
        .stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    // ctx logs to stderr, which journald stores at info: its level is in the text.
    let ctx_errs: Vec<&str> = all
        .stdout
        .lines()
        .filter(|l| {
            l.contains(" ERROR ")
                || l.starts_with("ERROR")
                || l.contains("error:")
                || l.contains("panicked")
        })
        .collect();
    let warns: Vec<&str> = all
        .stdout
        .lines()
        .filter(|l| l.contains(" WARN ") || l.starts_with("WARN"))
        .collect();
    let distinct: BTreeSet<&str> = warns.iter().copied().collect();
    for w in &distinct {
        say!("journal warning: {w}");
    }
    c.record(
        Check::new(
            HARDENING,
            "journal of ctx has no errors",
            if all.ok {
                Measured::count((errs.len() + ctx_errs.len()) as u64, "error lines")
            } else {
                Measured::error(format!("journalctl failed: {}", all.stderr.trim()))
            },
            Requirement::exactly(0, "none"),
        )
        .note(format!(
            "{} lines; {} at priority err or worse{}; {} ERROR lines from ctx{}; {} WARN lines \
             ({} distinct)",
            all.stdout.lines().count(),
            errs.len(),
            errs.first()
                .map_or(String::new(), |e| format!(" (first: {e})")),
            ctx_errs.len(),
            ctx_errs
                .first()
                .map_or(String::new(), |e| format!(" (first: {e})")),
            warns.len(),
            distinct.len()
        )),
    );
    Ok(())
}

fn scenario(c: &mut Checks, live: Option<u64>) -> anyhow::Result<()> {
    boot(c)?;
    install(c)?;
    let first = start(c)?;
    workload(c, live)?;
    kill9(c)?;
    stop(c)?;
    restart_reuses(c, &first)?;
    security(c)?;
    journal(c)?;
    Ok(())
}

fn main() -> ExitCode {
    let _ = sys::pin(0, &[0]);
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    emit(&Line::Kernel(release.to_owned()));
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let live = kernel_param(&cmdline, live::PARAM).and_then(|s| s.parse().ok());
    let mut c = Checks::default();
    let r = scenario(&mut c, live);
    let aborted = r.as_ref().err().map(|e| format!("{e:#}"));
    if let Some(e) = &aborted {
        say!("scenario stopped: {e}");
        if let Ok(o) = run("systemctl", &["status", UNIT, "--no-pager", "-l"]) {
            for l in o.stdout.lines() {
                say!("status: {l}");
            }
        }
    }
    let verdict = c.finish(release, aborted.as_deref());
    // Power off whatever the verdict: the host reads it from the console.
    let off = run("systemctl", &["poweroff", "--no-block"]);
    if !off.as_ref().is_ok_and(|o| o.ok) {
        say!("systemctl poweroff failed; powering off directly");
        sys::power_off();
    }
    if verdict == Verdict::Pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
