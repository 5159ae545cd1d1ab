//! The pipeline as both binaries run it: open (or reuse) the probes once, then sweep and model
//! in one call.

use std::path::PathBuf;

use aya::maps::{MapData, PerCpuArray};
use ctx_common::CpuRecord;
use ctx_common::programs::{MAP_CPU, Role};

use crate::host::btf::CtLayout;
use crate::host::cpuset::CpuSet;
use crate::host::system::SysRoot;
use crate::model::{Facts, HookFact, Model, Origin, Sample};
use crate::probes::attach::{self, LoadOptions};
use crate::probes::{LoadError, Probes, pins};
use crate::sample::online::Online;
use crate::sample::{SampleError, Sampler};

/// How to get at the probes.
#[derive(Clone, Debug)]
pub enum Attach {
    /// Attach and pin under `pin_dir`, reusing whatever is pinned there (ctx-daemon); a
    /// refused program's verifier log goes under `state_dir`.
    Daemon {
        pin_dir: PathBuf,
        state_dir: PathBuf,
    },
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
    pub facts: Facts,
    pub sys: SysRoot,
    pub possible: CpuSet,
}

impl Session {
    pub fn open(attach: &Attach, sys: SysRoot) -> Result<Self, LoadError> {
        let load = |pin_dir: Option<PathBuf>, state_dir: Option<PathBuf>| {
            attach::load(&LoadOptions {
                pin_dir,
                sys: sys.clone(),
                state_dir,
            })
        };
        let (mut probes, origin) = match attach {
            Attach::Daemon { pin_dir, state_dir } => (
                load(Some(pin_dir.clone()), Some(state_dir.clone()))?,
                Origin::Loaded,
            ),
            Attach::Viewer { pin_dir } => match pins::open_pinned(pin_dir, &sys)? {
                Some(p) => (p, Origin::Pinned),
                None => (load(None, None)?, Origin::Loaded),
            },
            Attach::Standalone => (load(None, None)?, Origin::Loaded),
        };
        let possible = sys.possible()?;
        let map = probes
            .take_cpu_map()
            .ok_or(LoadError::MissingMap { map: MAP_CPU })?;
        let sampler = Sampler::new(map, possible.iter().collect(), Online::open(&sys));
        Ok(Self {
            facts: facts(&sys, origin, &probes),
            probes,
            sampler,
            model: Model::new(),
            sys,
            possible,
        })
    }

    /// One sweep over all CPUs, modelled.
    pub fn sample(&mut self) -> Result<Sample, SampleError> {
        let snap = self.sampler.sweep()?;
        Ok(self.model.update(snap, &self.facts))
    }
}

/// What the outputs show about this host and these probes.
fn facts(sys: &SysRoot, origin: Origin, probes: &Probes) -> Facts {
    Facts {
        version: crate::VERSION,
        host: sys.hostname(),
        kernel: sys.kernel_release(),
        origin,
        nohz_full: sys.nohz_full(),
        isolated: sys.isolated(),
        ct_cpus: probes.ct_cpus.clone(),
        syscalls_active: probes.hooks.role_active(Role::Syscalls) || origin == Origin::Pinned,
        kernel_ct_layout: probes.ct_layout.as_ref().map(CtLayout::describe),
        hooks: probes
            .hooks
            .hooks
            .iter()
            .map(|(h, s)| HookFact {
                group: h.group,
                tracepoint: h.tracepoint,
                status: s.clone(),
            })
            .collect(),
        detected: probes.hooks.detected.clone(),
        attached_unix: probes.meta.attached_at_ns as f64 * 1e-9,
    }
}
