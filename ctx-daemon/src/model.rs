//! From raw records to what ctx reports: state, IPI verdict, residency that never goes back,
//! and deltas over an interval. Pure: no kernel, no clock, no I/O.

use std::collections::BTreeMap;

use ctx_common::record::{IrqKind, N_ARRIVALS, N_IRQ_KINDS};
use ctx_common::{Arrival, CpuState, Residency, Source, Verdict};

use crate::sample::Snapshot;
use crate::system::CpuSet;

/// Facts about CPUs that the records do not hold.
#[derive(Clone, Debug, Default)]
pub struct Topology {
    pub online: CpuSet,
    pub nohz_full: CpuSet,
    pub isolated: CpuSet,
    /// CPUs the loader handed to context tracking.
    pub ct_cpus: CpuSet,
    /// The syscall fallback is attached.
    pub syscalls_active: bool,
}

/// A CPU at one sample.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuView {
    pub cpu: u32,
    pub online: bool,
    pub nohz_full: bool,
    pub isolated: bool,
    pub source: SourceLabel,
    /// `None` until the CPU's first event: nothing is known about it yet.
    pub state: Option<CpuState>,
    pub counter: u64,
    pub verdict: Option<Verdict>,
    /// Cumulative ns per state, including the open interval; never decreases.
    pub residency: Residency,
    pub kernel_entries: u64,
    pub syscalls: u64,
    pub page_faults: u64,
    pub idle_entries: u64,
    pub nmis: u64,
    pub resyncs: u64,
    /// `[IrqKind][Arrival]`
    pub irqs: [[u64; N_ARRIVALS]; N_IRQ_KINDS],
    /// Samples by verdict, cumulative.
    pub verdicts: [u64; 3],
    /// The record is an earlier copy: this sweep kept catching the CPU mid-write.
    pub stale: bool,
}

/// Which hook drives a CPU, as reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceLabel {
    ContextTracking,
    Syscalls,
    None,
}

impl SourceLabel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ContextTracking => "context_tracking",
            Self::Syscalls => "syscalls",
            Self::None => "none",
        }
    }
}

impl CpuView {
    pub fn ipis(&self) -> u64 {
        IrqKind::IPIS
            .iter()
            .flat_map(|k| self.irqs[*k as usize].iter())
            .sum()
    }

    pub fn avoidable_ipis(&self) -> u64 {
        IrqKind::IPIS
            .iter()
            .map(|k| {
                Arrival::ALL
                    .iter()
                    .filter(|a| a.avoidable())
                    .map(|a| self.irqs[*k as usize][*a as usize])
                    .sum::<u64>()
            })
            .sum()
    }
}

/// One sweep, modelled.
#[derive(Clone, Debug)]
pub struct Sample {
    pub taken_ns: u64,
    pub sweep_ns: u64,
    pub torn: u32,
    pub stale: u32,
    pub cpus: Vec<CpuView>,
}

impl Sample {
    pub fn cpu(&self, cpu: u32) -> Option<&CpuView> {
        self.cpus.iter().find(|c| c.cpu == cpu)
    }
}

#[derive(Clone, Debug, Default)]
struct Track {
    /// Counter at the previous sample while online; `None` after a gap.
    counter: Option<u64>,
    raw: [u64; 4],
    read_ns: u64,
    exported: [u64; 4],
    verdicts: [u64; 3],
    seen: bool,
}

/// Residency readings may dip by a few ns (an NMI's time moves out of the state it interrupted
/// only once the NMI ends); a dip larger than this means the maps were recreated.
const RESET_NS: u64 = 1_000_000_000;
/// Slack on the "residency cannot grow faster than time" cap, for clock reads around a copy.
const GROWTH_SLACK_NS: u64 = 2_000_000;

/// Keeps per-CPU history between samples.
#[derive(Debug, Default)]
pub struct Model {
    tracks: BTreeMap<u32, Track>,
}

impl Model {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts verdict counts from values kept across restarts.
    pub fn seed_verdicts(&mut self, cpu: u32, verdicts: [u64; 3]) {
        let t = self.tracks.entry(cpu).or_default();
        for (i, v) in verdicts.iter().enumerate() {
            t.verdicts[i] = t.verdicts[i].max(*v);
        }
    }

    pub fn verdicts(&self, cpu: u32) -> Option<[u64; 3]> {
        self.tracks.get(&cpu).map(|t| t.verdicts)
    }

    pub fn update(&mut self, snap: &Snapshot, topo: &Topology) -> Sample {
        let mut cpus = Vec::with_capacity(snap.cpus.len());
        for read in &snap.cpus {
            let cpu = read.cpu;
            let r = &read.record;
            let online = topo.online.contains(cpu);
            let t = self.tracks.entry(cpu).or_default();
            let started = r.started();
            let state = started.then(|| r.state());
            let counter = r.counter();

            let raw = r.residency(read.read_ns).as_array();
            if !t.seen {
                // First sight: start from the kernel's totals, so a restarted daemon continues
                // where the previous one stood.
                t.exported = raw;
                t.raw = raw;
                t.read_ns = read.read_ns;
                t.seen = true;
            } else if !read.stale {
                let elapsed = read.read_ns.saturating_sub(t.read_ns) + GROWTH_SLACK_NS;
                let mut d = [0u64; 4];
                for i in 0..4 {
                    if raw[i] + RESET_NS < t.raw[i] {
                        t.raw[i] = raw[i];
                    }
                    d[i] = raw[i].saturating_sub(t.raw[i]);
                    t.raw[i] = t.raw[i].max(raw[i]);
                }
                // A CPU's residency cannot grow faster than time; a larger jump is an interval
                // the CPU did not spend (hotplug without the cpuhp hook): drop the excess.
                let total: u64 = d.iter().sum();
                if total > elapsed {
                    for x in &mut d {
                        *x = (*x as u128 * elapsed as u128 / total as u128) as u64;
                    }
                }
                for (e, x) in t.exported.iter_mut().zip(d) {
                    *e += x;
                }
                t.read_ns = read.read_ns;
            }

            let verdict = match (online, state) {
                (true, Some(s)) if !read.stale => {
                    let v = Verdict::of(t.counter, counter, s);
                    t.verdicts[v as usize] += 1;
                    t.counter = Some(counter);
                    Some(v)
                }
                (true, Some(s)) => Some(Verdict::of(None, counter, s)),
                _ => {
                    t.counter = None;
                    None
                }
            };

            let source = match r.source() {
                Source::ContextTracking => SourceLabel::ContextTracking,
                Source::Syscalls => SourceLabel::Syscalls,
                Source::None if topo.ct_cpus.contains(cpu) => SourceLabel::ContextTracking,
                Source::None if topo.syscalls_active => SourceLabel::Syscalls,
                Source::None => SourceLabel::None,
            };

            let mut irqs = [[0u64; N_ARRIVALS]; N_IRQ_KINDS];
            for k in IrqKind::ALL {
                for a in Arrival::ALL {
                    irqs[k as usize][a as usize] = r.irq_count(k, a);
                }
            }
            let e = t.exported;
            cpus.push(CpuView {
                cpu,
                online,
                nohz_full: topo.nohz_full.contains(cpu),
                isolated: topo.isolated.contains(cpu),
                source,
                state,
                counter,
                verdict,
                residency: Residency {
                    user: e[0],
                    kernel: e[1],
                    idle: e[2],
                    nmi: e[3],
                },
                kernel_entries: r.main.kernel_entries,
                syscalls: r.main.syscalls,
                page_faults: r.main.page_faults,
                idle_entries: r.main.idle_entries,
                nmis: r.nmi.nmis,
                resyncs: r.main.resyncs,
                irqs,
                verdicts: t.verdicts,
                stale: read.stale,
            });
        }
        Sample {
            taken_ns: snap.taken_ns,
            sweep_ns: snap.sweep_ns,
            torn: snap.torn,
            stale: snap.stale,
            cpus,
        }
    }
}

/// What changed on one CPU between two samples.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuInterval {
    pub cpu: u32,
    pub dt_ns: u64,
    /// Percent of the interval per state (user, kernel, idle, nmi); `None` when the CPU
    /// accumulated no time (offline, or no event yet).
    pub pct: Option<[f64; 4]>,
    pub kernel_entries: u64,
    pub syscalls: u64,
    pub page_faults: u64,
    pub idle_entries: u64,
    pub nmis: u64,
    pub resyncs: u64,
    pub irqs: [[u64; N_ARRIVALS]; N_IRQ_KINDS],
    pub ipis: u64,
    pub avoidable_ipis: u64,
    pub verdicts: [u64; 3],
}

impl CpuInterval {
    pub fn between(a: &CpuView, b: &CpuView, dt_ns: u64) -> Self {
        let ra = a.residency.as_array();
        let rb = b.residency.as_array();
        let d: Vec<u64> = (0..4).map(|i| rb[i].saturating_sub(ra[i])).collect();
        let total: u64 = d.iter().sum();
        let pct = (total > 0).then(|| {
            let mut p = [0.0; 4];
            for i in 0..4 {
                p[i] = d[i] as f64 * 100.0 / total as f64;
            }
            p
        });
        let irqs: [[u64; N_ARRIVALS]; N_IRQ_KINDS] = std::array::from_fn(|k| {
            std::array::from_fn(|s| b.irqs[k][s].saturating_sub(a.irqs[k][s]))
        });
        let verdicts: [u64; 3] =
            std::array::from_fn(|i| b.verdicts[i].saturating_sub(a.verdicts[i]));
        Self {
            cpu: b.cpu,
            dt_ns,
            pct,
            kernel_entries: b.kernel_entries.saturating_sub(a.kernel_entries),
            syscalls: b.syscalls.saturating_sub(a.syscalls),
            page_faults: b.page_faults.saturating_sub(a.page_faults),
            idle_entries: b.idle_entries.saturating_sub(a.idle_entries),
            nmis: b.nmis.saturating_sub(a.nmis),
            resyncs: b.resyncs.saturating_sub(a.resyncs),
            irqs,
            ipis: b.ipis().saturating_sub(a.ipis()),
            avoidable_ipis: b.avoidable_ipis().saturating_sub(a.avoidable_ipis()),
            verdicts,
        }
    }

    pub fn ipi_needed_share(&self) -> Option<f64> {
        let n: u64 = self.verdicts.iter().sum();
        (n > 0).then(|| self.verdicts[Verdict::IpiNeeded as usize] as f64 * 100.0 / n as f64)
    }

    pub fn per_sec(&self, n: u64) -> f64 {
        if self.dt_ns == 0 {
            0.0
        } else {
            n as f64 * 1e9 / self.dt_ns as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use ctx_common::CpuRecord;
    use ctx_common::writer::{MainEvent, main_event};

    use super::*;
    use crate::sample::{CpuRead, Snapshot};

    fn topo(online: &str) -> Topology {
        Topology {
            online: online.parse().unwrap(),
            nohz_full: "1".parse().unwrap(),
            ct_cpus: "1".parse().unwrap(),
            syscalls_active: true,
            ..Default::default()
        }
    }

    fn snap(t: u64, recs: &[CpuRecord]) -> Snapshot {
        Snapshot {
            taken_ns: t,
            cpus: recs
                .iter()
                .enumerate()
                .map(|(i, r)| CpuRead {
                    cpu: i as u32,
                    record: *r,
                    read_ns: t,
                    stale: false,
                })
                .collect(),
            torn: 0,
            stale: 0,
            sweep_ns: 0,
        }
    }

    #[test]
    fn verdicts_follow_the_counter() {
        let mut r = CpuRecord::default();
        let mut m = Model::new();
        let tp = topo("0");
        unsafe { main_event(&raw mut r.main, 100, MainEvent::UserEnter, true) };
        let s = m.update(&snap(200, &[r]), &tp);
        assert_eq!(s.cpus[0].state, Some(CpuState::User));
        assert_eq!(s.cpus[0].verdict, Some(Verdict::Deferrable));
        unsafe { main_event(&raw mut r.main, 300, MainEvent::UserExit, true) };
        let s = m.update(&snap(400, &[r]), &tp);
        assert_eq!(s.cpus[0].verdict, Some(Verdict::Quiesced));
        let s = m.update(&snap(500, &[r]), &tp);
        assert_eq!(s.cpus[0].verdict, Some(Verdict::IpiNeeded));
        assert_eq!(s.cpus[0].verdicts, [1, 1, 1]);
        assert_eq!(s.cpus[0].source, SourceLabel::ContextTracking);
    }

    #[test]
    fn unstarted_and_offline_cpus_have_no_verdict() {
        let r = CpuRecord::default();
        let mut m = Model::new();
        let s = m.update(&snap(100, &[r, r]), &topo("0"));
        assert_eq!(s.cpus[0].state, None);
        assert_eq!(s.cpus[0].verdict, None);
        assert!(!s.cpus[1].online);
        assert_eq!(
            s.cpus[1].source,
            SourceLabel::ContextTracking,
            "nohz_full CPU 1"
        );
        assert_eq!(s.cpus[0].source, SourceLabel::Syscalls);
    }

    #[test]
    fn residency_never_grows_faster_than_time() {
        let mut r = CpuRecord::default();
        let mut m = Model::new();
        let tp = topo("0");
        unsafe { main_event(&raw mut r.main, 1_000, MainEvent::UserEnter, true) };
        let a = m.update(&snap(2_000, &[r]), &tp);
        // A record that claims 100 s more than the 10 ms between two samples (say, a CPU that
        // came back from hotplug without the cpuhp hook): the excess is dropped.
        r.main.res_ns[1] += 100_000_000_000;
        let b = m.update(&snap(10_002_000, &[r]), &tp);
        let grew = b.cpus[0].residency.total() - a.cpus[0].residency.total();
        assert!(grew <= 10_000_000 + GROWTH_SLACK_NS, "grew {grew}");
        assert!(b.cpus[0].residency.user >= a.cpus[0].residency.user);
    }

    #[test]
    fn residency_is_monotonic_across_small_dips() {
        let mut r = CpuRecord::default();
        let mut m = Model::new();
        let tp = topo("0");
        unsafe { main_event(&raw mut r.main, 1_000, MainEvent::UserEnter, true) };
        let a = m.update(&snap(10_000, &[r]), &tp);
        // An NMI's time is carved out of user after it ends: user dips by 500 ns.
        r.nmi.ns_from[0] = 500;
        r.nmi.ns_total = 500;
        let b = m.update(&snap(10_100, &[r]), &tp);
        assert!(b.cpus[0].residency.user >= a.cpus[0].residency.user);
        assert!(b.cpus[0].residency.nmi >= a.cpus[0].residency.nmi);
    }

    #[test]
    fn interval_percentages_sum_to_100() {
        let mut r = CpuRecord::default();
        let mut m = Model::new();
        let tp = topo("0");
        unsafe { main_event(&raw mut r.main, 1_000, MainEvent::UserEnter, true) };
        let a = m.update(&snap(1_000, &[r]), &tp);
        unsafe { main_event(&raw mut r.main, 4_000, MainEvent::UserExit, true) };
        let b = m.update(&snap(5_000, &[r]), &tp);
        let iv = CpuInterval::between(&a.cpus[0], &b.cpus[0], 4_000);
        let p = iv.pct.unwrap();
        assert!((p.iter().sum::<f64>() - 100.0).abs() < 1e-9);
        assert!((p[0] - 75.0).abs() < 1e-9);
        assert_eq!(iv.kernel_entries, 1);
    }
}
