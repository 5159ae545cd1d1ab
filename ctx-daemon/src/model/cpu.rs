//! The one CPU row every output reads: a CPU at one sample ([`CpuSample`]), over an interval
//! between two samples ([`CpuInterval`]), and the ALL row over many ([`Totals`]), with the
//! shares (percent of the interval per state, need%) computed here and nowhere else.

use ctx_common::{CpuState, Residency, Source, Verdict};
use serde::Serialize;

use crate::model::Sample;
use crate::model::counts::Counts;

/// What the records do not say about a CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuFacts {
    pub cpu: u32,
    pub online: bool,
    pub nohz_full: bool,
    /// `isolcpus=`.
    pub isolated: bool,
    /// The hook that drives its mirror.
    pub source: Source,
}

impl CpuFacts {
    /// `nohz_full` or isolcpus: the CPUs an operator isolated.
    pub fn isolated_any(&self) -> bool {
        self.nohz_full || self.isolated
    }
}

/// Where a CPU stands at a sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuStatus {
    /// `None` until the CPU's first event: nothing is known about it yet.
    pub state: Option<CpuState>,
    /// `None` while offline or before the first event.
    pub verdict: Option<Verdict>,
    /// The encoded counter.
    pub counter: u64,
    /// The record is an earlier copy: this sweep kept catching the CPU mid-write.
    pub stale: bool,
}

/// A CPU at one sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuSample {
    pub facts: CpuFacts,
    pub status: CpuStatus,
    /// Cumulative; none of them ever decreases.
    pub counts: Counts,
}

/// Percent of an interval per state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Shares {
    pub user: f64,
    pub kernel: f64,
    pub idle: f64,
    pub nmi: f64,
}

impl Shares {
    /// `None` when no time accrued (offline, or no event yet).
    pub fn of(r: &Residency) -> Option<Self> {
        let total = r.total();
        let pct = |ns: u64| ns as f64 * 100.0 / total as f64;
        (total > 0).then(|| Self {
            user: pct(r.user),
            kernel: pct(r.kernel),
            idle: pct(r.idle),
            nmi: pct(r.nmi),
        })
    }

    /// user, kernel, idle, nmi.
    pub fn as_array(&self) -> [f64; 4] {
        [self.user, self.kernel, self.idle, self.nmi]
    }

    #[must_use]
    pub fn map(self, f: impl Fn(f64) -> f64) -> Self {
        Self {
            user: f(self.user),
            kernel: f(self.kernel),
            idle: f(self.idle),
            nmi: f(self.nmi),
        }
    }
}

/// `n` events over `dt_ns`, per second; `None` for an empty interval.
pub fn per_second(n: u64, dt_ns: u64) -> Option<f64> {
    (dt_ns > 0).then(|| n as f64 * 1e9 / dt_ns as f64)
}

/// What changed on one CPU between two samples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuInterval {
    /// At the interval's last sample.
    pub facts: CpuFacts,
    /// At the interval's last sample.
    pub status: CpuStatus,
    pub dt_ns: u64,
    /// Over the interval.
    pub counts: Counts,
}

impl CpuInterval {
    pub fn between(first: &CpuSample, last: &CpuSample, dt_ns: u64) -> Self {
        Self {
            facts: last.facts,
            status: last.status,
            dt_ns,
            counts: last.counts - first.counts,
        }
    }

    /// A CPU as one sample shows it, before any interval: facts and state, nothing counted.
    pub fn start(s: &CpuSample) -> Self {
        Self {
            facts: s.facts,
            status: s.status,
            dt_ns: 0,
            counts: Counts::default(),
        }
    }

    /// Shares of the time the CPU accrued; `None` when it accrued none.
    pub fn pct(&self) -> Option<Shares> {
        Shares::of(&self.counts.residency)
    }

    /// Share of the interval's samples that found the CPU needing an IPI.
    pub fn need_pct(&self) -> Option<f64> {
        self.counts.samples.need_pct()
    }

    pub fn per_second(&self, n: u64) -> Option<f64> {
        per_second(n, self.dt_ns)
    }
}

/// Every CPU over one interval.
#[derive(Clone, Debug, PartialEq)]
pub struct Interval {
    pub dt_ns: u64,
    /// CPUs of the last sample that the first one had too.
    pub cpus: Vec<CpuInterval>,
}

impl Interval {
    pub fn between(first: &Sample, last: &Sample) -> Self {
        let dt_ns = last.taken_ns.saturating_sub(first.taken_ns);
        let cpus = last
            .cpus
            .iter()
            .filter_map(|b| Some(CpuInterval::between(first.cpu(b.facts.cpu)?, b, dt_ns)))
            .collect();
        Self { dt_ns, cpus }
    }

    /// Samples taken per CPU in the interval.
    pub fn samples(&self) -> u64 {
        self.cpus
            .iter()
            .map(|c| c.counts.samples.total())
            .max()
            .unwrap_or(0)
    }
}

/// The ALL row: over the online CPUs given, the shares averaged and the counts summed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Totals {
    pub dt_ns: u64,
    /// Online CPUs in the row.
    pub online: usize,
    /// The mean of the CPUs' shares, over those that accrued time.
    pub pct: Option<Shares>,
    pub counts: Counts,
}

impl Totals {
    pub fn of<'a>(rows: impl IntoIterator<Item = &'a CpuInterval>) -> Self {
        let mut t = Self {
            dt_ns: 0,
            online: 0,
            pct: None,
            counts: Counts::default(),
        };
        let mut sum = [0.0; 4];
        let mut with_pct = 0usize;
        for r in rows.into_iter().filter(|r| r.facts.online) {
            t.online += 1;
            t.dt_ns = t.dt_ns.max(r.dt_ns);
            t.counts += r.counts;
            if let Some(p) = r.pct() {
                for (s, x) in sum.iter_mut().zip(p.as_array()) {
                    *s += x;
                }
                with_pct += 1;
            }
        }
        t.pct = (with_pct > 0).then(|| {
            let [user, kernel, idle, nmi] = sum.map(|s| s / with_pct as f64);
            Shares {
                user,
                kernel,
                idle,
                nmi,
            }
        });
        t
    }

    pub fn need_pct(&self) -> Option<f64> {
        self.counts.samples.need_pct()
    }

    /// Summed over the CPUs, per second; `None` without an online CPU or an interval.
    pub fn per_second(&self, n: u64) -> Option<f64> {
        if self.online == 0 {
            return None;
        }
        per_second(n, self.dt_ns)
    }
}
