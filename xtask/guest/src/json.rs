//! `ctxtop --json`, as a consumer reads it. Written against the documented output rather than
//! ctx's own `Report` type, so that a change to the JSON contract fails here.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
pub struct Report {
    pub kernel: String,
    pub interval_s: f64,
    pub sample_interval_s: f64,
    /// "pinned" when reading a ctx-daemon's maps.
    pub probes: String,
    pub nohz_full: String,
    pub samples: u64,
    pub hooks: Vec<Hook>,
    pub cpus: Vec<Cpu>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Hook {
    pub group: String,
    pub tracepoint: String,
    pub status: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Pct {
    pub user: f64,
    pub kernel: f64,
    pub idle: f64,
    pub nmi: f64,
}

impl Pct {
    pub fn sum(&self) -> f64 {
        self.user + self.kernel + self.idle + self.nmi
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub struct ByArrival {
    pub user: u64,
    pub kernel: u64,
    pub idle: u64,
}

#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub struct Samples {
    pub ipi_needed: u64,
    pub deferrable: u64,
    pub quiesced: u64,
}

impl Samples {
    pub fn total(&self) -> u64 {
        self.ipi_needed + self.deferrable + self.quiesced
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct Cpu {
    pub cpu: u32,
    pub online: bool,
    pub source: String,
    pub state: Option<String>,
    pub verdict: Option<String>,
    pub pct: Option<Pct>,
    pub kernel_entries: u64,
    pub syscalls: u64,
    pub page_faults: u64,
    pub nmis: u64,
    pub interrupts: BTreeMap<String, ByArrival>,
    pub samples: Samples,
}

impl Report {
    pub fn cpu(&self, n: u32) -> anyhow::Result<&Cpu> {
        self.cpus
            .iter()
            .find(|c| c.cpu == n)
            .ok_or_else(|| anyhow::anyhow!("ctxtop reported no CPU {n}"))
    }

    /// ctxtop must read the daemon's pins: attaching on its own would text-patch the kernel
    /// inside the measured window.
    pub fn require_pinned(&self) -> anyhow::Result<()> {
        if self.probes != "pinned" {
            anyhow::bail!(
                "ctxtop attached its own probes (probes {:?}) instead of reading ctx-daemon's pins",
                self.probes
            );
        }
        Ok(())
    }
}
