//! ctx-daemon's /metrics and /healthz as an operator reads them: on loopback, /metrics parsed
//! by the one text parser both guests and the host use.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};
use ctx_vm_proto::expo::Scrape;
use ctx_vm_proto::http;
use ctx_vm_proto::suite::live::METRICS_PORT;

/// Brings up loopback (an initramfs boots with it down).
pub fn loopback_up() -> anyhow::Result<()> {
    let s = Command::new("/bin/busybox")
        .args(["ip", "link", "set", "lo", "up"])
        .status()
        .context("running ip link set lo up")?;
    if !s.success() {
        bail!("ip link set lo up: {s}");
    }
    Ok(())
}

/// `GET path` from ctx on loopback; a response of any status is `Ok`.
pub fn get(path: &str) -> anyhow::Result<http::Response> {
    http::get(
        &format!("127.0.0.1:{METRICS_PORT}"),
        path,
        Duration::from_secs(20),
    )
    .with_context(|| format!("GET {path} from ctx on port {METRICS_PORT}"))
}

/// One scrape of /metrics.
pub fn scrape() -> anyhow::Result<Scrape> {
    let r = get("/metrics")?;
    if r.status != 200 {
        bail!("GET /metrics: HTTP {}", r.status);
    }
    Scrape::parse(&r.text()).map_err(|e| anyhow::anyhow!("parsing /metrics: {e}"))
}
