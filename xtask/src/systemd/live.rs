//! The host's side of the guest's live window: Debian's Prometheus on loopback scrapes the live
//! ctx through the forwarded port every second and evaluates `deploy/prometheus/ctx.rules.yml`
//! as shipped; then every recording rule and every dashboard query must return series, and
//! `deploy/test/dashboard_check.py --prometheus` must pass.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use std::{fmt, fs};

use anyhow::{Context as _, bail};
use ctx_vm_proto::expo::Scrape;
use ctx_vm_proto::http;

use crate::vm::report::HostRow;

const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Host loopback ports forwarded into the guest.
#[derive(Clone, Copy, Debug)]
pub struct Forward {
    /// To ctx's /metrics and /healthz (guest port 10977).
    pub metrics: u16,
    /// To the guest's poke listener (guest port 10978).
    pub poke: u16,
}

impl Forward {
    /// Two free loopback ports (free when asked; qemu binds them a moment later).
    pub fn free() -> anyhow::Result<Self> {
        let port = || -> anyhow::Result<(std::net::TcpListener, u16)> {
            let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
            let p = l.local_addr()?.port();
            Ok((l, p))
        };
        let (a, metrics) = port()?;
        let (b, poke) = port()?;
        drop((a, b));
        Ok(Self { metrics, poke })
    }

    pub fn metrics_addr(self) -> String {
        format!("127.0.0.1:{}", self.metrics)
    }

    pub fn poke_addr(self) -> String {
        format!("127.0.0.1:{}", self.poke)
    }
}

/// Asks the guest to close its live window.
pub fn poke(fwd: Forward) -> anyhow::Result<()> {
    let r = http::get(&fwd.poke_addr(), "/done", HTTP_TIMEOUT)
        .with_context(|| format!("telling the guest to go on ({})", fwd.poke_addr()))?;
    if r.status != 200 {
        bail!("the guest answered HTTP {} to /done", r.status);
    }
    Ok(())
}

/// Scrapes ctx once through the forwarded port: the forward and the guest's virtio-net work.
pub fn quick(fwd: Forward) -> anyhow::Result<String> {
    let m = http::get(&fwd.metrics_addr(), "/metrics", HTTP_TIMEOUT)
        .with_context(|| format!("GET /metrics through {}", fwd.metrics_addr()))?;
    let h = http::get(&fwd.metrics_addr(), "/healthz", HTTP_TIMEOUT)
        .with_context(|| format!("GET /healthz through {}", fwd.metrics_addr()))?;
    let s = Scrape::parse(&m.text()).map_err(|e| anyhow::anyhow!("parsing /metrics: {e}"))?;
    if m.status != 200 || h.status != 200 || s.samples.is_empty() {
        bail!(
            "through {}: /metrics HTTP {} ({} samples), /healthz HTTP {}",
            fwd.metrics_addr(),
            m.status,
            s.samples.len(),
            h.status
        );
    }
    Ok(format!(
        "host {} -> guest :10977: /metrics HTTP 200, {} samples; /healthz HTTP 200",
        fwd.metrics_addr(),
        s.samples.len()
    ))
}

/// Kills and reaps Prometheus when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Debug, Default)]
pub struct Query {
    /// The panel and target the expression comes from, when known.
    pub panel: String,
    pub expr: String,
    pub series: usize,
    pub min: f64,
    pub max: f64,
    pub error: Option<String>,
}

#[derive(Debug, Default)]
pub struct LiveReport {
    pub scrapes: f64,
    pub scrapes_ok: f64,
    pub scrape_avg: f64,
    pub scrape_max: f64,
    pub rules: usize,
    pub unhealthy: Vec<String>,
    /// Recording rules and how many series each returned.
    pub records: Vec<(String, usize)>,
    /// Alerts pending or firing, with their cpu label.
    pub alerts: Vec<String>,
    pub queries: Vec<Query>,
    pub checker_ok: bool,
    pub checker_out: String,
    pub took: Duration,
}

impl LiveReport {
    /// The report's rows for the boot's table.
    pub fn rows(&self) -> Vec<HostRow> {
        let empty_records = self.records.iter().filter(|(_, n)| *n == 0).count();
        let series: Vec<usize> = self.records.iter().map(|(_, n)| *n).collect();
        let bad_queries = self
            .queries
            .iter()
            .filter(|q| q.error.is_some() || q.series == 0)
            .count();
        vec![
            (
                "Prometheus scrapes".into(),
                format!(
                    "{:.0} of {:.0} ok, scrape time mean {:.3} s, max {:.3} s",
                    self.scrapes_ok, self.scrapes, self.scrape_avg, self.scrape_max
                ),
                String::new(),
                true,
            ),
            (
                "rules healthy".into(),
                format!("{} rules, {} unhealthy", self.rules, self.unhealthy.len()),
                "none unhealthy".into(),
                self.unhealthy.is_empty(),
            ),
            (
                "recording rules return series".into(),
                format!(
                    "{} of {} (series per rule {}..{})",
                    self.records.len() - empty_records,
                    self.records.len(),
                    series.iter().min().copied().unwrap_or(0),
                    series.iter().max().copied().unwrap_or(0)
                ),
                "all".into(),
                empty_records == 0,
            ),
            (
                "dashboard queries return series".into(),
                format!(
                    "{} of {}",
                    self.queries.len() - bad_queries,
                    self.queries.len()
                ),
                "all".into(),
                bad_queries == 0,
            ),
            (
                "dashboard_check.py --prometheus".into(),
                if self.checker_ok { "passed" } else { "failed" }.into(),
                "passes".into(),
                self.checker_ok,
            ),
        ]
    }

    pub fn failures(&self) -> Vec<String> {
        let mut f: Vec<String> = self.unhealthy.clone();
        for (r, n) in &self.records {
            if *n == 0 {
                f.push(format!("recording rule {r} returned no series"));
            }
        }
        for q in &self.queries {
            if let Some(e) = &q.error {
                f.push(format!("dashboard query failed: {e}: {}", q.expr));
            } else if q.series == 0 {
                f.push(format!("dashboard query returned no series: {}", q.expr));
            }
        }
        if !self.checker_ok {
            f.push(format!(
                "dashboard_check.py --prometheus failed: {}",
                self.checker_out.trim()
            ));
        }
        f
    }
}

/// What the table's host rows sum up, item by item.
impl fmt::Display for LiveReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "live: Prometheus on the host, every rule and query")?;
        for (r, n) in &self.records {
            writeln!(f, "  record {r}: {n} series")?;
        }
        for a in &self.alerts {
            writeln!(f, "  alert {a}")?;
        }
        for q in &self.queries {
            match &q.error {
                Some(e) => writeln!(f, "  query FAILED ({e}): {}", q.expr)?,
                None => writeln!(
                    f,
                    "  query {:>2} series, {:>10} .. {:<10} {} {}",
                    q.series,
                    short(q.min),
                    short(q.max),
                    q.panel,
                    q.expr
                )?,
            }
        }
        writeln!(
            f,
            "  dashboard_check.py --prometheus: {}",
            if self.checker_ok { "ok" } else { "FAILED" }
        )?;
        for l in self.checker_out.lines() {
            writeln!(f, "    {l}")?;
        }
        write!(f, "  took {:.0} s", self.took.as_secs_f64())
    }
}

fn short(x: f64) -> String {
    if x.is_nan() {
        "-".into()
    } else if x != 0.0 && (x.abs() < 1e-3 || x.abs() >= 1e6) {
        format!("{x:.3e}")
    } else {
        format!("{x:.4}")
    }
}

/// "panel 'TITLE' REFID" for every target with an expression, in the order
/// `dashboard_check.py` lists them (panels depth-first, collapsed rows' panels after the row).
fn targets(dashboard: &Path) -> Vec<String> {
    fn walk(panels: &[serde_json::Value], out: &mut Vec<String>) {
        for p in panels {
            for t in p["targets"].as_array().into_iter().flatten() {
                if t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()) {
                    out.push(format!(
                        "[{} {}]",
                        p["title"].as_str().unwrap_or("?"),
                        t["refId"].as_str().unwrap_or("?")
                    ));
                }
            }
            walk(p["panels"].as_array().map_or(&[], Vec::as_slice), out);
        }
    }
    let mut out = Vec::new();
    if let Ok(d) = fs::read(dashboard)
        && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&d)
    {
        walk(v["panels"].as_array().map_or(&[], Vec::as_slice), &mut out);
    }
    out
}

fn api(prom: &str, path: &str) -> anyhow::Result<serde_json::Value> {
    let r = http::get(prom, path, HTTP_TIMEOUT)
        .with_context(|| format!("GET {path} from Prometheus"))?;
    let v: serde_json::Value = serde_json::from_slice(&r.body).with_context(|| {
        format!(
            "Prometheus answered {path} with HTTP {} and no JSON",
            r.status
        )
    })?;
    if v["status"] != "success" {
        bail!("{}: {}", v["errorType"], v["error"]);
    }
    Ok(v["data"].clone())
}

fn query(prom: &str, q: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let d = api(prom, &format!("/api/v1/query?query={}", http::encode(q)))?;
    Ok(match d["result"].as_array() {
        Some(a) => a.clone(),
        // A scalar result: one value.
        None if d["resultType"] == "scalar" => vec![serde_json::json!({"value": d["result"]})],
        None => vec![],
    })
}

fn value(s: &serde_json::Value) -> f64 {
    s["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Fails once `gone` is set: the VM is no more, and nothing will answer.
fn alive(gone: &AtomicBool) -> anyhow::Result<()> {
    if gone.load(Ordering::Relaxed) {
        bail!("the VM is gone");
    }
    Ok(())
}

fn wait(
    what: &str,
    timeout: Duration,
    gone: &AtomicBool,
    mut f: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let mut last = None;
    while t0.elapsed() < timeout {
        alive(gone).with_context(|| format!("waiting for {what}"))?;
        match f() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    match last {
        Some(e) => Err(e).context(format!(
            "timed out after {}s waiting for {what}",
            timeout.as_secs()
        )),
        None => bail!("timed out after {}s waiting for {what}", timeout.as_secs()),
    }
}

/// Runs Prometheus against ctx at `fwd.metrics` for `settle` (1 s scrapes), then checks the
/// rules and the dashboard. `work` receives the config, data and log; `root` is the workspace.
/// Gives up early once `gone` is set (qemu exited).
/// Starts Prometheus on a free loopback port with its config and data in `dir`, scraping
/// `target` every second and evaluating `rules`; returns it (killed when dropped) and its
/// address.
fn start_prometheus(dir: &Path, rules: &Path, target: &str) -> anyhow::Result<(Reaped, String)> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: ctx\n    static_configs:\n      - targets: [\"{target}\"]\n",
            rules.display()
        ),
    )
    .context("writing prometheus.yml")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("finding a free port for Prometheus")?
        .port();
    let prom = format!("127.0.0.1:{port}");
    let log = fs::File::create(dir.join("prometheus.log")).context("creating prometheus.log")?;
    let child = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={prom}"))
        .arg("--log.level=warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting prometheus (apt-get install prometheus, or run .ci/setup)")?;
    Ok((Reaped(child), prom))
}

/// Every rule's health, every recording rule's series, and the alerts pending or firing.
fn rules_into(prom: &str, rep: &mut LiveReport) -> anyhow::Result<()> {
    for g in api(prom, "/api/v1/rules")?["groups"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        for r in g["rules"].as_array().cloned().unwrap_or_default() {
            rep.rules += 1;
            let name = r["name"].as_str().unwrap_or("?").to_owned();
            if r["health"] != "ok" {
                rep.unhealthy.push(format!(
                    "rule {name}: health {} ({})",
                    r["health"], r["lastError"]
                ));
            }
            if r["type"] == "recording" {
                let n = query(prom, &name)?.len();
                rep.records.push((name, n));
            } else {
                for a in r["alerts"].as_array().cloned().unwrap_or_default() {
                    rep.alerts.push(format!(
                        "{name} {} cpu={}",
                        a["state"].as_str().unwrap_or("?"),
                        a["labels"]["cpu"].as_str().unwrap_or("-")
                    ));
                }
            }
        }
    }

    Ok(())
}

/// Every dashboard query, as `dashboard_check.py` lists them for `target`, and the checker's
/// own run against Prometheus.
fn dashboard_into(
    prom: &str,
    checker: &Path,
    dashboard: &Path,
    target: &str,
    rep: &mut LiveReport,
) -> anyhow::Result<()> {
    let instance = format!("instance={target}");
    let list = Command::new("python3")
        .arg(checker)
        .arg(dashboard)
        .args(["--list", "--var", &instance])
        .output()
        .context("running python3 deploy/test/dashboard_check.py --list")?;
    if !list.status.success() {
        bail!(
            "dashboard_check.py --list failed: {}",
            String::from_utf8_lossy(&list.stderr)
        );
    }
    let listed = String::from_utf8_lossy(&list.stdout).into_owned();
    let exprs: Vec<&str> = listed
        .lines()
        .filter(|l| !l.starts_with("dashboard ") && !l.trim().is_empty())
        .collect();
    let mut panels = targets(dashboard);
    if panels.len() != exprs.len() {
        panels = vec![String::new(); exprs.len()];
    }
    for (expr, panel) in exprs.into_iter().zip(panels) {
        let mut q = Query {
            panel,
            expr: expr.to_owned(),
            min: f64::NAN,
            max: f64::NAN,
            ..Default::default()
        };
        match query(prom, expr) {
            Ok(r) => {
                q.series = r.len();
                let v: Vec<f64> = r.iter().map(value).filter(|v| !v.is_nan()).collect();
                q.min = v.iter().copied().fold(f64::NAN, f64::min);
                q.max = v.iter().copied().fold(f64::NAN, f64::max);
            }
            Err(e) => q.error = Some(format!("{e:#}")),
        }
        rep.queries.push(q);
    }
    let out = Command::new("python3")
        .arg(checker)
        .arg(dashboard)
        .arg("--prometheus")
        .arg(format!("http://{prom}"))
        .args(["--var", &instance])
        .output()
        .context("running python3 deploy/test/dashboard_check.py --prometheus")?;
    rep.checker_ok = out.status.success();
    rep.checker_out = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

pub fn check(
    root: &Path,
    work: &Path,
    fwd: Forward,
    settle: Duration,
    gone: &AtomicBool,
) -> anyhow::Result<LiveReport> {
    let t0 = Instant::now();
    let rules = root.join("deploy/prometheus/ctx.rules.yml");
    let dashboard = root.join("deploy/grafana/ctx-dashboard.json");
    let checker = root.join("deploy/test/dashboard_check.py");
    for p in [&rules, &dashboard, &checker] {
        if !p.exists() {
            bail!("{} is missing from the workspace", p.display());
        }
    }
    let dir = work.join("prometheus");
    let target = fwd.metrics_addr();
    let (_reaped, prom) = start_prometheus(&dir, &rules, &target)?;
    wait(
        "Prometheus to be ready",
        Duration::from_secs(60),
        gone,
        || Ok(http::get(&prom, "/-/ready", HTTP_TIMEOUT)?.status == 200),
    )?;
    wait(
        "Prometheus to scrape ctx",
        Duration::from_secs(120),
        gone,
        || Ok(query(&prom, "up{job=\"ctx\"} == 1")?.len() == 1),
    )?;
    let t_settle = Instant::now();
    while t_settle.elapsed() < settle {
        alive(gone).context("letting Prometheus scrape")?;
        std::thread::sleep(Duration::from_millis(250));
    }
    alive(gone)?;

    let one =
        |q: &str| -> anyhow::Result<f64> { Ok(query(&prom, q)?.first().map_or(f64::NAN, value)) };
    let mut rep = LiveReport {
        scrapes: one("count_over_time(up{job=\"ctx\"}[10m])")?,
        scrapes_ok: one("sum_over_time(up{job=\"ctx\"}[10m])")?,
        scrape_max: one("max_over_time(scrape_duration_seconds{job=\"ctx\"}[10m])")?,
        scrape_avg: one("avg_over_time(scrape_duration_seconds{job=\"ctx\"}[10m])")?,
        ..Default::default()
    };
    rules_into(&prom, &mut rep)?;
    dashboard_into(&prom, &checker, &dashboard, &target, &mut rep)?;
    rep.took = t0.elapsed();
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The panel labels line up with `dashboard_check.py`'s list of expressions.
    #[test]
    fn targets_match_the_checkers_list() {
        let root = crate::cmd::root();
        let dashboard = root.join("deploy/grafana/ctx-dashboard.json");
        let out = Command::new("python3")
            .arg(root.join("deploy/test/dashboard_check.py"))
            .arg(&dashboard)
            .arg("--list")
            .output()
            .unwrap();
        assert!(out.status.success());
        let listed = String::from_utf8(out.stdout).unwrap();
        let exprs = listed
            .lines()
            .filter(|l| !l.starts_with("dashboard "))
            .count();
        let t = targets(&dashboard);
        assert_eq!(t.len(), exprs, "{t:?}");
        assert!(
            t.iter().all(|l| l.starts_with('[') && !l.contains("[? ")),
            "{t:?}"
        );
    }
}
