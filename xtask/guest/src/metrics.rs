//! ctx-daemon's /metrics as an operator reads it: busybox wget on loopback.

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::{Context as _, bail};

pub const URL: &str = "http://127.0.0.1:10977/metrics";
const BUSYBOX: &str = "/bin/busybox";

/// Brings up loopback (an initramfs boots with it down).
pub fn loopback_up() -> anyhow::Result<()> {
    let s = Command::new(BUSYBOX)
        .args(["ip", "link", "set", "lo", "up"])
        .status()
        .context("running ip link set lo up")?;
    if !s.success() {
        bail!("ip link set lo up: {s}");
    }
    Ok(())
}

/// One scrape: `name{labels}` → value.
pub fn scrape() -> anyhow::Result<Scrape> {
    let out = Command::new(BUSYBOX)
        .args(["wget", "-q", "-O", "-", URL])
        .output()
        .context("running busybox wget")?;
    if !out.status.success() {
        bail!(
            "wget {URL}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8(out.stdout).context("/metrics is not UTF-8")?;
    Ok(Scrape(
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_owned(), v.parse().ok()?))
            })
            .collect(),
    ))
}

pub struct Scrape(pub BTreeMap<String, f64>);

impl Scrape {
    pub fn get(&self, series: &str) -> Option<f64> {
        self.0.get(series).copied()
    }

    /// Sum over series whose key starts with `prefix` and contains every one of `labels`.
    pub fn sum(&self, prefix: &str, labels: &[&str]) -> f64 {
        self.0
            .iter()
            .filter(|(k, _)| k.starts_with(prefix) && labels.iter().all(|l| k.contains(l)))
            .map(|(_, v)| v)
            .sum()
    }
}
