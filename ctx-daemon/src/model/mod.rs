//! The third stage: from what a sweep read to what ctx reports. Pure: no kernel, no clock, no
//! I/O.
//!
//! [`Model::update`] folds each part of a [`Snapshot`] into one [`Sample`] of [`CpuSample`]
//! rows, keeping per-CPU history between sweeps:
//!
//! * the online list into each CPU's [`CpuFacts`], with the session's [`Facts`];
//! * each record into the state, the [`verdicts`] and the [`counts`], whose residency
//!   [`residency`] keeps monotonic;
//! * the sweep's own figures into [`sweeps`] (by the daemon, which persists them).
//!
//! Outputs read [`CpuSample`], [`CpuInterval`] and [`Totals`] from [`cpu`], and [`Facts`]:
//! nothing else.

pub mod counts;
pub mod cpu;
pub mod facts;
pub mod residency;
pub mod sweeps;
pub mod verdicts;

use std::collections::BTreeMap;

use ctx_common::Source;

use crate::host::cpuset::CpuSet;
pub use crate::model::counts::{Counts, Irqs, Samples};
pub use crate::model::cpu::{
    CpuFacts, CpuInterval, CpuSample, CpuStatus, Interval, Shares, Totals,
};
pub use crate::model::facts::{Facts, HookFact, Origin};
use crate::model::residency::ResidencyTrack;
use crate::model::verdicts::VerdictTrack;
use crate::sample::Snapshot;

/// One sweep, modelled.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// `CLOCK_MONOTONIC` before the sweep's first copy.
    pub taken_ns: u64,
    pub sweep_ns: u64,
    /// Records caught mid-write and copied again.
    pub torn: u32,
    /// Records served from an earlier copy.
    pub stale: u32,
    /// Every possible CPU.
    pub cpus: Vec<CpuSample>,
}

impl Sample {
    pub fn cpu(&self, cpu: u32) -> Option<&CpuSample> {
        self.cpus.iter().find(|c| c.facts.cpu == cpu)
    }
}

/// Per-CPU history kept between sweeps.
#[derive(Debug, Default)]
struct Track {
    residency: ResidencyTrack,
    verdicts: VerdictTrack,
}

#[derive(Debug, Default)]
pub struct Model {
    tracks: BTreeMap<u32, Track>,
    /// The last online list a sweep could read.
    online: CpuSet,
}

impl Model {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts verdict counts from values kept across restarts.
    pub fn seed_verdicts(&mut self, cpu: u32, kept: Samples) {
        self.tracks.entry(cpu).or_default().verdicts.seed(kept);
    }

    pub fn verdicts(&self, cpu: u32) -> Option<Samples> {
        self.tracks.get(&cpu).map(|t| t.verdicts.samples())
    }

    pub fn update(&mut self, snap: Snapshot, facts: &Facts) -> Sample {
        if let Some(online) = snap.online {
            self.online = online;
        }
        let records = snap.records;
        let mut cpus = Vec::with_capacity(records.cpus.len());
        for read in &records.cpus {
            let cpu = read.cpu;
            let r = &read.record;
            let online = self.online.contains(cpu);
            let t = self.tracks.entry(cpu).or_default();
            let state = r.started().then(|| r.state());
            let counter = r.counter();
            let residency = t
                .residency
                .fold(r.residency(read.read_ns), read.read_ns, read.stale);
            let verdict = t.verdicts.fold(online, state, counter, read.stale);
            cpus.push(CpuSample {
                facts: CpuFacts {
                    cpu,
                    online,
                    nohz_full: facts.nohz_full.contains(cpu),
                    isolated: facts.isolated.contains(cpu),
                    source: source(r.source(), cpu, facts),
                },
                status: CpuStatus {
                    state,
                    verdict,
                    counter,
                    stale: read.stale,
                },
                counts: Counts::of(r, residency, t.verdicts.samples()),
            });
        }
        Sample {
            taken_ns: snap.taken_ns,
            sweep_ns: snap.sweep_ns,
            torn: records.torn,
            stale: records.stale,
            cpus,
        }
    }
}

/// The hook that drives a CPU: as its record says, or, before its first event, the one that
/// will.
fn source(recorded: Source, cpu: u32, facts: &Facts) -> Source {
    match recorded {
        Source::None if facts.ct_cpus.contains(cpu) => Source::ContextTracking,
        Source::None if facts.syscalls_active => Source::Syscalls,
        s => s,
    }
}

#[cfg(test)]
mod tests {
    use ctx_common::writer::{MainEvent, main_event};
    use ctx_common::{CpuRecord, CpuState, Verdict};

    use super::*;
    use crate::model::residency::GROWTH_SLACK_NS;
    use crate::test_util::snapshot;

    fn facts() -> Facts {
        Facts {
            nohz_full: "1".parse().unwrap(),
            ct_cpus: "1".parse().unwrap(),
            syscalls_active: true,
            ..Facts::default()
        }
    }

    #[test]
    fn verdicts_follow_the_counter() {
        let mut r = CpuRecord::default();
        let mut model = Model::new();
        let facts = facts();
        unsafe { main_event(&raw mut r.main, 100, MainEvent::UserEnter, true) };
        let s = model.update(snapshot(200, "0", &[r]), &facts);
        assert_eq!(s.cpus[0].status.state, Some(CpuState::User));
        assert_eq!(s.cpus[0].status.verdict, Some(Verdict::Deferrable));
        unsafe { main_event(&raw mut r.main, 300, MainEvent::UserExit, true) };
        let s = model.update(snapshot(400, "0", &[r]), &facts);
        assert_eq!(s.cpus[0].status.verdict, Some(Verdict::Quiesced));
        let s = model.update(snapshot(500, "0", &[r]), &facts);
        assert_eq!(s.cpus[0].status.verdict, Some(Verdict::IpiNeeded));
        assert_eq!(s.cpus[0].counts.samples, Samples::from_array([1, 1, 1]));
        assert_eq!(s.cpus[0].facts.source, Source::ContextTracking);
    }

    #[test]
    fn unstarted_and_offline_cpus_have_no_verdict() {
        let r = CpuRecord::default();
        let mut model = Model::new();
        let s = model.update(snapshot(100, "0", &[r, r]), &facts());
        assert_eq!(s.cpus[0].status.state, None);
        assert_eq!(s.cpus[0].status.verdict, None);
        assert!(!s.cpus[1].facts.online);
        assert_eq!(
            s.cpus[1].facts.source,
            Source::ContextTracking,
            "nohz_full CPU 1"
        );
        assert_eq!(s.cpus[0].facts.source, Source::Syscalls);
    }

    #[test]
    fn an_unreadable_online_list_keeps_the_last_one() {
        let r = CpuRecord::default();
        let mut model = Model::new();
        model.update(snapshot(100, "0-1", &[r, r]), &facts());
        let mut snap = snapshot(200, "", &[r, r]);
        snap.online = None;
        let s = model.update(snap, &facts());
        assert!(s.cpus.iter().all(|c| c.facts.online));
    }

    #[test]
    fn residency_never_grows_faster_than_time() {
        let mut r = CpuRecord::default();
        let mut model = Model::new();
        let facts = facts();
        unsafe { main_event(&raw mut r.main, 1_000, MainEvent::UserEnter, true) };
        let a = model.update(snapshot(2_000, "0", &[r]), &facts);
        // A record that claims 100 s more than the 10 ms between two samples (say, a CPU that
        // came back from hotplug without the cpuhp hook): the excess is dropped.
        r.main.res_ns[1] += 100_000_000_000;
        let b = model.update(snapshot(10_002_000, "0", &[r]), &facts);
        let (a, b) = (a.cpus[0].counts.residency, b.cpus[0].counts.residency);
        let grew = b.total() - a.total();
        assert!(grew <= 10_000_000 + GROWTH_SLACK_NS, "grew {grew}");
        assert!(b.user >= a.user);
    }

    #[test]
    fn residency_is_monotonic_across_small_dips() {
        let mut r = CpuRecord::default();
        let mut model = Model::new();
        let facts = facts();
        unsafe { main_event(&raw mut r.main, 1_000, MainEvent::UserEnter, true) };
        let a = model.update(snapshot(10_000, "0", &[r]), &facts);
        // An NMI's time is carved out of user after it ends: user dips by 500 ns.
        r.nmi.ns_from[0] = 500;
        r.nmi.ns_total = 500;
        let b = model.update(snapshot(10_100, "0", &[r]), &facts);
        let (a, b) = (a.cpus[0].counts.residency, b.cpus[0].counts.residency);
        assert!(b.user >= a.user);
        assert!(b.nmi >= a.nmi);
    }

    #[test]
    fn interval_percentages_sum_to_100() {
        let mut r = CpuRecord::default();
        let mut model = Model::new();
        let facts = facts();
        unsafe { main_event(&raw mut r.main, 1_000, MainEvent::UserEnter, true) };
        let a = model.update(snapshot(1_000, "0", &[r]), &facts);
        unsafe { main_event(&raw mut r.main, 4_000, MainEvent::UserExit, true) };
        let b = model.update(snapshot(5_000, "0", &[r]), &facts);
        let iv = Interval::between(&a, &b);
        let p = iv.cpus[0].pct().unwrap();
        assert!((p.as_array().iter().sum::<f64>() - 100.0).abs() < 1e-9);
        assert!((p.user - 75.0).abs() < 1e-9);
        assert_eq!(iv.cpus[0].counts.kernel_entries, 1);
        assert_eq!(iv.dt_ns, 4_000);
    }

    #[test]
    fn totals_average_shares_over_online_cpus_and_sum_counts() {
        let mut r0 = CpuRecord::default();
        let mut r1 = CpuRecord::default();
        let r2 = CpuRecord::default();
        let mut model = Model::new();
        let facts = facts();
        unsafe {
            main_event(&raw mut r0.main, 1_000, MainEvent::SysExit, false);
            main_event(&raw mut r1.main, 1_000, MainEvent::UserEnter, true);
        }
        let a = model.update(snapshot(1_000, "0-1", &[r0, r1, r2]), &facts);
        unsafe {
            main_event(&raw mut r0.main, 3_000, MainEvent::SysEnter, false);
            main_event(&raw mut r1.main, 2_000, MainEvent::UserExit, true);
        }
        let b = model.update(snapshot(5_000, "0-1", &[r0, r1, r2]), &facts);
        let iv = Interval::between(&a, &b);
        let t = Totals::of(&iv.cpus);
        assert_eq!(t.online, 2, "CPU 2 is offline");
        // CPU 0: 50 % user; CPU 1: 25 % user.
        assert_eq!(t.pct.map(|p| p.user), Some(37.5));
        assert_eq!(t.counts.kernel_entries, 2);
        assert_eq!(t.counts.samples.total(), 2);
        assert_eq!(
            t.per_second(t.counts.kernel_entries),
            Some(2.0 * 1e9 / 4_000.0)
        );
        assert_eq!(iv.samples(), 1);
        assert_eq!(Totals::of(&[]).per_second(1), None);
    }
}
