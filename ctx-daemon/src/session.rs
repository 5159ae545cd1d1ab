//! A running view over the probes: open (or reuse) them, then sample and model in one call.

use std::path::PathBuf;
use std::time::Duration;

use aya::maps::{MapData, PerCpuArray};
use ctx_common::CpuRecord;

use crate::hooks::Role;
use crate::loader::{self, LoadError, LoadOptions, Origin, Probes};
use crate::model::{Model, Sample, Topology};
use crate::report::Header;
use crate::sample::{SampleError, Sampler};
use crate::system::{CpuSet, OnlineWatch, SysRoot};

/// How to get at the probes.
#[derive(Clone, Debug)]
pub enum Attach {
    /// Attach and pin under `pin_dir`, reusing whatever is pinned there (ctx-daemon).
    Daemon { pin_dir: PathBuf },
    /// Read a daemon's pinned maps when there are any; otherwise attach privately, detaching
    /// on exit (ctxtop).
    Viewer { pin_dir: PathBuf },
    /// Always attach privately.
    Standalone,
}

pub struct Session {
    pub probes: Probes,
    pub sampler: Sampler<PerCpuArray<MapData, CpuRecord>>,
    pub model: Model,
    pub sys: SysRoot,
    pub topo: Topology,
    pub possible: CpuSet,
    online: Option<OnlineWatch>,
}

impl Session {
    pub fn open(attach: &Attach, sys: SysRoot) -> Result<Self, LoadError> {
        let mut probes = match attach {
            Attach::Daemon { pin_dir } => loader::load(&LoadOptions {
                pin_dir: Some(pin_dir.clone()),
                sys: sys.clone(),
            })?,
            Attach::Viewer { pin_dir } => match loader::open_pinned(pin_dir, &sys)? {
                Some(p) => p,
                None => loader::load(&LoadOptions {
                    pin_dir: None,
                    sys: sys.clone(),
                })?,
            },
            Attach::Standalone => loader::load(&LoadOptions {
                pin_dir: None,
                sys: sys.clone(),
            })?,
        };
        let possible = sys.possible()?;
        let map = probes
            .take_cpu_map()
            .ok_or_else(|| LoadError::NoModeSource {
                detail: "per-CPU map already taken".into(),
            })?;
        let sampler = Sampler::new(map, possible.iter().collect());
        let topo = Topology {
            online: sys.online()?,
            nohz_full: sys.nohz_full(),
            isolated: sys.isolated(),
            ct_cpus: probes.ct_cpus.clone(),
            syscalls_active: probes.hooks.role_active(Role::Syscalls)
                || probes.origin == Origin::Pinned,
        };
        Ok(Self {
            probes,
            sampler,
            model: Model::new(),
            online: OnlineWatch::open(&sys).ok(),
            sys,
            topo,
            possible,
        })
    }

    /// One sweep over all CPUs, modelled. Re-reads the online set, so hotplug shows at once.
    pub fn sample(&mut self) -> Result<Sample, SampleError> {
        let online = match &mut self.online {
            Some(w) => w.read(),
            None => self.sys.online().ok(),
        };
        if let Some(online) = online {
            self.topo.online = online;
        }
        let snap = self.sampler.sweep()?;
        Ok(self.model.update(&snap, &self.topo))
    }

    pub fn header(&self, interval: Duration, sample_interval: Duration) -> Header {
        Header {
            ctx_version: crate::VERSION,
            host: self.sys.hostname(),
            kernel: self.sys.kernel_release(),
            interval_s: interval.as_secs_f64(),
            sample_interval_s: sample_interval.as_secs_f64(),
            probes: self.probes.origin.as_str(),
            nohz_full: self.topo.nohz_full.to_string(),
            isolated: self.topo.isolated.to_string(),
            kernel_ct_layout: self.probes.ct_layout.as_ref().map(|l| l.describe()),
        }
    }
}
