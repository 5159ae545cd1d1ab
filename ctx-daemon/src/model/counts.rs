//! Everything a CPU's record counts, cumulative: residency, events, interrupts by the state
//! they arrived in, and the sampler's verdicts. An interval is the difference of two
//! ([`Sub`]); the ALL row is their sum ([`AddAssign`]).
//!
//! A counter the programs start keeping is a field here, read from the record in
//! [`Counts::of`], and one entry in the metric catalogue.

use std::ops::{AddAssign, Sub};

use ctx_common::record::{N_ARRIVALS, N_IRQ_KINDS};
use ctx_common::{Arrival, CpuRecord, IrqKind, Residency, Verdict};

/// Interrupts by kind and by the state the CPU was in when each arrived.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Irqs([[u64; N_ARRIVALS]; N_IRQ_KINDS]);

impl Irqs {
    pub fn of(r: &CpuRecord) -> Self {
        Self(std::array::from_fn(|k| {
            std::array::from_fn(|a| r.irq_count(IrqKind::ALL[k], Arrival::ALL[a]))
        }))
    }

    pub fn get(&self, kind: IrqKind, arrival: Arrival) -> u64 {
        self.0[kind as usize][arrival as usize]
    }

    /// IPIs of every vector, in any state.
    pub fn ipis(&self) -> u64 {
        IrqKind::IPIS
            .iter()
            .flat_map(|k| self.0[*k as usize].iter())
            .sum()
    }

    /// IPIs that arrived in user or idle: nothing there needed them.
    pub fn avoidable_ipis(&self) -> u64 {
        IrqKind::IPIS
            .iter()
            .flat_map(|k| Arrival::ALL.iter().map(move |a| (*k, *a)))
            .filter(|(_, a)| a.avoidable())
            .map(|(k, a)| self.get(k, a))
            .sum()
    }

    #[cfg(test)]
    pub fn set(&mut self, kind: IrqKind, arrival: Arrival, n: u64) {
        self.0[kind as usize][arrival as usize] = n;
    }
}

/// Samples by the verdict each found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Samples([u64; 3]);

impl Samples {
    /// From counts in `Verdict::ALL` order, as the ledger keeps them.
    pub const fn from_array(by_verdict: [u64; 3]) -> Self {
        Self(by_verdict)
    }

    pub const fn as_array(&self) -> [u64; 3] {
        self.0
    }

    pub fn get(&self, v: Verdict) -> u64 {
        self.0[v as usize]
    }

    pub fn count(&mut self, v: Verdict) {
        self.0[v as usize] += 1;
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Percent of the samples that found the CPU needing an IPI; `None` without samples.
    pub fn need_pct(&self) -> Option<f64> {
        let total = self.total();
        (total > 0).then(|| self.get(Verdict::IpiNeeded) as f64 * 100.0 / total as f64)
    }

    /// Per verdict, the larger count: restoring never lowers what was counted.
    #[must_use]
    pub fn max(self, o: Self) -> Self {
        Self(std::array::from_fn(|i| self.0[i].max(o.0[i])))
    }
}

/// A CPU's cumulative counts at one sample, or their change over an interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// ns per state, including the interval still open at the sample.
    pub residency: Residency,
    /// User to kernel transitions (every entry where context tracking drives the CPU;
    /// syscalls otherwise).
    pub kernel_entries: u64,
    pub syscalls: u64,
    /// Page faults taken in user mode.
    pub page_faults: u64,
    pub idle_entries: u64,
    pub nmis: u64,
    /// Events that contradicted the mirrored mode (a transition no hook reported).
    pub resyncs: u64,
    pub irqs: Irqs,
    /// The sampler's verdicts.
    pub samples: Samples,
}

impl Counts {
    /// What `r` counts, with residency and verdicts as the model keeps them (never lower than
    /// at an earlier sample).
    pub fn of(r: &CpuRecord, residency: Residency, samples: Samples) -> Self {
        Self {
            residency,
            kernel_entries: r.main.kernel_entries,
            syscalls: r.main.syscalls,
            page_faults: r.main.page_faults,
            idle_entries: r.main.idle_entries,
            nmis: r.nmi.nmis,
            resyncs: r.main.resyncs,
            irqs: Irqs::of(r),
            samples,
        }
    }

    pub fn ipis(&self) -> u64 {
        self.irqs.ipis()
    }

    pub fn avoidable_ipis(&self) -> u64 {
        self.irqs.avoidable_ipis()
    }

    /// Every field, with `f` applied to each pair of values.
    fn zip(self, o: Self, f: impl Fn(u64, u64) -> u64) -> Self {
        let r = |a: Residency, b: Residency| Residency {
            user: f(a.user, b.user),
            kernel: f(a.kernel, b.kernel),
            idle: f(a.idle, b.idle),
            nmi: f(a.nmi, b.nmi),
        };
        Self {
            residency: r(self.residency, o.residency),
            kernel_entries: f(self.kernel_entries, o.kernel_entries),
            syscalls: f(self.syscalls, o.syscalls),
            page_faults: f(self.page_faults, o.page_faults),
            idle_entries: f(self.idle_entries, o.idle_entries),
            nmis: f(self.nmis, o.nmis),
            resyncs: f(self.resyncs, o.resyncs),
            irqs: Irqs(std::array::from_fn(|k| {
                std::array::from_fn(|a| f(self.irqs.0[k][a], o.irqs.0[k][a]))
            })),
            samples: Samples(std::array::from_fn(|i| {
                f(self.samples.0[i], o.samples.0[i])
            })),
        }
    }
}

/// What changed since `earlier`. Counters never go backwards; one that did (maps recreated
/// under the reader) counts as no change.
impl Sub for Counts {
    type Output = Counts;

    fn sub(self, earlier: Counts) -> Counts {
        self.zip(earlier, u64::saturating_sub)
    }
}

impl AddAssign for Counts {
    fn add_assign(&mut self, o: Counts) {
        *self = self.zip(o, u64::saturating_add);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn counts(seed: [u64; 4]) -> Counts {
        let mut irqs = Irqs::default();
        irqs.set(IrqKind::CallFunction, Arrival::User, seed[0]);
        irqs.set(IrqKind::Reschedule, Arrival::Kernel, seed[1]);
        irqs.set(IrqKind::LocalTimer, Arrival::Idle, seed[2]);
        Counts {
            residency: Residency {
                user: seed[0],
                kernel: seed[1],
                idle: seed[2],
                nmi: seed[3],
            },
            kernel_entries: seed[1],
            nmis: seed[3],
            irqs,
            samples: Samples::from_array([seed[0], seed[1], seed[2]]),
            ..Counts::default()
        }
    }

    #[test]
    fn ipis_count_vectors_not_timers_and_avoidable_ones_arrived_in_user_or_idle() {
        let c = counts([3, 4, 5, 0]);
        assert_eq!(c.ipis(), 7);
        assert_eq!(c.avoidable_ipis(), 3);
        assert_eq!(c.samples.need_pct(), Some(3.0 * 100.0 / 12.0));
        assert_eq!(Samples::default().need_pct(), None);
    }

    proptest! {
        /// Adding an interval to its start gives its end; a counter that went back is no
        /// change, never a wrap-around.
        #[test]
        fn sub_undoes_add_and_never_wraps(a in any::<[u32; 4]>(), d in any::<[u32; 4]>()) {
            let a = counts(a.map(u64::from));
            let d = counts(d.map(u64::from));
            let mut b = a;
            b += d;
            prop_assert_eq!(b - a, d);
            prop_assert_eq!(a - b, Counts::default());
        }
    }
}
