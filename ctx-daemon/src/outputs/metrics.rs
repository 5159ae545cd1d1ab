//! Every metric ctx exports, described once in [`CATALOGUE`] with how it is rendered from the
//! model, and the exposition built from one scrape's view.
//!
//! Values come from a consistent [`ExportView`] handed over by the sampler: per-CPU figures from
//! one sweep of the kernel's records, and user-space counters exactly as last written to the
//! ledger, so a scrape never shows a counter value that a restart could lose. Offline CPUs have
//! no series.

use std::collections::BTreeMap;
use std::sync::Arc;

use ctx_common::{Arrival, CpuState, IrqKind, Verdict};
use prometheus::proto::MetricType::{COUNTER, GAUGE, HISTOGRAM};
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};

use crate::daemon::pinwatch::PinHealth;
use crate::host::cpuset::CpuSet;
use crate::model::sweeps::{DURATION_BUCKETS, SweepTotals};
use crate::model::{Counts, CpuSample, Facts, Sample, Samples};
use crate::probes::hooks::HookStatus;

/// What does not change while the daemon runs.
#[derive(Clone, Debug, Default)]
pub struct ExportStatic {
    pub facts: Facts,
    /// Only these CPUs are exported (`--cpus`); `None` exports all.
    pub cpus: Option<CpuSet>,
    /// The pins' state, kept current by the daemon's pin check (`None`: not watched).
    pub pins: Option<Arc<PinHealth>>,
}

/// One scrape's worth of data.
#[derive(Clone, Debug, Default)]
pub struct ExportView {
    pub sample: Arc<Sample>,
    /// Sample counts per CPU by verdict, as last persisted.
    pub verdicts: Arc<BTreeMap<u32, Samples>>,
    /// Sampler totals, as last persisted.
    pub totals: SweepTotals,
    pub last_sample_unix: f64,
    pub sampler_up: bool,
}

/// One exported CPU, as the per-CPU entries see it.
struct Cpu<'a> {
    /// The `cpu` label.
    label: String,
    sample: &'a CpuSample,
    /// Verdict counts as last persisted.
    verdicts: Samples,
}

/// How an entry fills its family.
#[derive(Clone, Copy)]
enum Render {
    /// One unlabelled counter per exported CPU, from its counts.
    CpuCounter(fn(&Counts) -> u64),
    /// Once per exported CPU, in CPU order.
    Cpu(fn(&mut Family, &Cpu<'_>)),
    /// One unlabelled counter, from the sweep totals.
    SweepCounter(fn(&SweepTotals) -> u64),
    /// Once.
    Host(fn(&mut Family, &ExportStatic, &ExportView)),
}

/// One metric: name, help, type, and how the model renders into it.
#[derive(Clone, Copy)]
pub struct Def {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: MetricType,
    render: Render,
}

const fn cpu(
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    render: fn(&mut Family, &Cpu<'_>),
) -> Def {
    Def {
        name,
        help,
        kind,
        render: Render::Cpu(render),
    }
}

/// A per-CPU counter read straight from [`Counts`].
const fn cpu_counter(name: &'static str, help: &'static str, get: fn(&Counts) -> u64) -> Def {
    Def {
        name,
        help,
        kind: COUNTER,
        render: Render::CpuCounter(get),
    }
}

/// A counter of the sampler's own, read straight from [`SweepTotals`].
const fn sweep_counter(
    name: &'static str,
    help: &'static str,
    get: fn(&SweepTotals) -> u64,
) -> Def {
    Def {
        name,
        help,
        kind: COUNTER,
        render: Render::SweepCounter(get),
    }
}

const fn host(
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    render: fn(&mut Family, &ExportStatic, &ExportView),
) -> Def {
    Def {
        name,
        help,
        kind,
        render: Render::Host(render),
    }
}

const SEC: f64 = 1e-9;

fn flag(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

/// Everything exported, in exposition order.
pub const CATALOGUE: [Def; 26] = [
    cpu(
        "ctx_cpu_seconds_total",
        "Time each CPU spent per state (user, kernel, idle, nmi), from context-tracking (or syscall) transitions, including the interval still open at the sample.",
        COUNTER,
        |f, c| {
            let r = c.sample.counts.residency;
            for (s, ns) in [
                ("user", r.user),
                ("kernel", r.kernel),
                ("idle", r.idle),
                ("nmi", r.nmi),
            ] {
                f.counter(&[("cpu", &c.label), ("state", s)], ns as f64 * SEC);
            }
        },
    ),
    cpu(
        "ctx_cpu_state",
        "State of each CPU at the latest sample (one-hot; seed encoding, idle kept apart). All zero until the CPU's first event.",
        GAUGE,
        |f, c| {
            for s in CpuState::ALL {
                let on = c.sample.status.state == Some(s);
                f.gauge(&[("cpu", &c.label), ("state", s.as_str())], flag(on));
            }
        },
    ),
    cpu(
        "ctx_cpu_ipi_needed",
        "1 if a kernel change would need an IPI to reach this CPU at the latest sample (in kernel or NMI, counter unchanged since the previous sample).",
        GAUGE,
        |f, c| {
            let needed = c.sample.status.verdict.is_some_and(Verdict::ipi_needed);
            f.gauge(&[("cpu", &c.label)], flag(needed));
        },
    ),
    cpu(
        "ctx_cpu_samples_total",
        "Sampler verdicts per CPU: ipi_needed, deferrable (user or idle), quiesced (counter moved since the previous sample).",
        COUNTER,
        |f, c| {
            for v in Verdict::ALL {
                let n = c.verdicts.get(v) as f64;
                f.counter(&[("cpu", &c.label), ("verdict", v.as_str())], n);
            }
        },
    ),
    cpu_counter(
        "ctx_cpu_kernel_entries_total",
        "User to kernel transitions (every entry where context tracking drives the CPU; syscalls otherwise).",
        |c| c.kernel_entries,
    ),
    cpu_counter("ctx_cpu_syscalls_total", "Syscalls entered.", |c| {
        c.syscalls
    }),
    cpu_counter(
        "ctx_cpu_page_faults_total",
        "Page faults taken in user mode.",
        |c| c.page_faults,
    ),
    cpu_counter(
        "ctx_cpu_idle_entries_total",
        "Entries into the idle loop.",
        |c| c.idle_entries,
    ),
    cpu_counter("ctx_cpu_nmis_total", "NMIs handled.", |c| c.nmis),
    cpu_counter(
        "ctx_cpu_mirror_resyncs_total",
        "Events that contradicted the mirrored mode (a transition no hook reported); the mirror followed the event.",
        |c| c.resyncs,
    ),
    cpu(
        "ctx_cpu_ipis_received_total",
        "IPIs received, by x86 vector and by the CPU's state when it arrived; arrivals in user or idle are the avoidable kind.",
        COUNTER,
        |f, c| irqs(f, c, true),
    ),
    cpu(
        "ctx_cpu_interrupts_total",
        "Interrupts other than IPIs (local_timer, device), by the CPU's state when they arrived.",
        COUNTER,
        |f, c| irqs(f, c, false),
    ),
    cpu(
        "ctx_cpu_info",
        "Per-CPU facts: nohz_full membership and the hook source driving the CPU.",
        GAUGE,
        |f, c| {
            let facts = &c.sample.facts;
            let nohz = if facts.nohz_full { "true" } else { "false" };
            let labels = [
                ("cpu", c.label.as_str()),
                ("nohz_full", nohz),
                ("source", facts.source.as_str()),
            ];
            f.gauge(&labels, 1.0);
        },
    ),
    host(
        "ctx_build_info",
        "ctx version and the running kernel.",
        GAUGE,
        |f, st, _| {
            let facts = &st.facts;
            f.gauge(
                &[("version", facts.version), ("kernel", &facts.kernel)],
                1.0,
            );
        },
    ),
    host(
        "ctx_hook_info",
        "Each kernel hook ctx knows, with its status (attached, reused, absent, failed, skipped, detected); a failed one also has its reason, in a few words.",
        GAUGE,
        |f, st, _| {
            let facts = &st.facts;
            for h in &facts.hooks {
                let labels = [
                    ("group", h.group),
                    ("hook", h.tracepoint),
                    ("status", h.status.label()),
                ];
                match &h.status {
                    // Bounded: one reason per hook, at most REASON_MAX characters.
                    HookStatus::Failed(why) => f.gauge(
                        &[labels[0], labels[1], ("reason", why.as_str()), labels[2]],
                        1.0,
                    ),
                    _ => f.gauge(&labels, 1.0),
                }
            }
            for (g, tp, present) in &facts.detected {
                let s = if *present { "detected" } else { "absent" };
                f.gauge(&[("group", g), ("hook", tp), ("status", s)], 1.0);
            }
        },
    ),
    host(
        "ctx_sample_duration_seconds",
        "Time of one sweep over all CPUs' records (one map copy, retries included).",
        HISTOGRAM,
        |f, _, v| f.histogram(&v.totals),
    ),
    sweep_counter("ctx_sweeps_total", "Sweeps over all CPUs.", |t| t.sweeps),
    sweep_counter(
        "ctx_sample_torn_total",
        "Per-CPU records copied while their CPU was writing them, and copied again.",
        |t| t.torn,
    ),
    sweep_counter(
        "ctx_sample_stale_total",
        "Per-CPU records still mid-write after every retry; the previous consistent copy was used.",
        |t| t.stale,
    ),
    sweep_counter(
        "ctx_sample_errors_total",
        "Sweeps that failed to read the per-CPU map.",
        |t| t.errors,
    ),
    host(
        "ctx_last_sample_timestamp_seconds",
        "Unix time of the newest sweep.",
        GAUGE,
        |f, _, v| f.gauge(&[], v.last_sample_unix),
    ),
    host(
        "ctx_sampler_up",
        "1 while the sampler is fresh (it swept within the last second, or ten intervals).",
        GAUGE,
        |f, _, v| f.gauge(&[], flag(v.sampler_up)),
    ),
    host(
        "ctx_probes_attached_timestamp_seconds",
        "Unix time the eBPF programs were attached (kept across daemon restarts).",
        GAUGE,
        |f, st, _| f.gauge(&[], st.facts.attached_unix),
    ),
    host(
        "ctx_pins_ok",
        "1 while every pinned map and link is in place and is the daemon's own; 0 when one is gone or replaced and could not be pinned again (see /healthz).",
        GAUGE,
        |f, st, _| f.gauge(&[], flag(st.pins.as_ref().is_none_or(|p| p.ok()))),
    ),
    sweep_counter(
        "ctx_pins_repairs_total",
        "Times pins were found missing, replaced or not matching this build and repaired (re-pinned while running, or a clean re-attach at start).",
        |t| t.pin_repairs,
    ),
    host(
        "ctx_pins_repaired_timestamp_seconds",
        "Unix time of the last pin repair (0: never).",
        GAUGE,
        |f, _, v| f.gauge(&[], v.totals.pin_repaired_unix_ns as f64 * SEC),
    ),
];

/// IPIs (`vector` label) or the other interrupts (`kind` label), by state at arrival.
fn irqs(f: &mut Family, c: &Cpu<'_>, ipis: bool) {
    let key = if ipis { "vector" } else { "kind" };
    for k in IrqKind::ALL.into_iter().filter(|k| k.is_ipi() == ipis) {
        for a in Arrival::ALL {
            let n = c.sample.counts.irqs.get(k, a) as f64;
            f.counter(
                &[("cpu", &c.label), (key, k.as_str()), ("state", a.as_str())],
                n,
            );
        }
    }
}

/// A metric family being filled.
struct Family(MetricFamily);

impl Family {
    fn new(d: &Def) -> Self {
        let mut mf = MetricFamily::default();
        mf.set_name(d.name.to_owned());
        mf.set_help(d.help.to_owned());
        mf.set_field_type(d.kind);
        Self(mf)
    }

    fn push(&mut self, labels: &[(&str, &str)], fill: impl FnOnce(&mut Metric)) {
        let mut m = Metric::default();
        m.set_label(
            labels
                .iter()
                .map(|(k, v)| {
                    let mut l = LabelPair::default();
                    l.set_name((*k).to_owned());
                    l.set_value((*v).to_owned());
                    l
                })
                .collect(),
        );
        fill(&mut m);
        self.0.mut_metric().push(m);
    }

    fn counter(&mut self, labels: &[(&str, &str)], v: f64) {
        self.push(labels, |m| {
            let mut c = Counter::default();
            c.set_value(v);
            m.set_counter(c);
        });
    }

    fn gauge(&mut self, labels: &[(&str, &str)], v: f64) {
        self.push(labels, |m| {
            let mut g = Gauge::default();
            g.set_value(v);
            m.set_gauge(g);
        });
    }

    fn histogram(&mut self, t: &SweepTotals) {
        self.push(&[], |m| {
            let mut h = Histogram::default();
            h.set_sample_count(t.duration_count);
            h.set_sample_sum(t.duration_sum_ns as f64 * SEC);
            let buckets = DURATION_BUCKETS
                .iter()
                .zip(t.buckets)
                .map(|(le, n)| {
                    let mut b = Bucket::default();
                    b.set_upper_bound(*le);
                    b.set_cumulative_count(n);
                    b
                })
                .collect();
            h.set_bucket(buckets);
            m.set_histogram(h);
        });
    }
}

/// Builds every family of the catalogue from one view.
pub fn families(st: &ExportStatic, v: &ExportView) -> Vec<MetricFamily> {
    let cpus: Vec<Cpu<'_>> = v
        .sample
        .cpus
        .iter()
        .filter(|c| c.facts.online && st.cpus.as_ref().is_none_or(|s| s.contains(c.facts.cpu)))
        .map(|c| Cpu {
            label: c.facts.cpu.to_string(),
            sample: c,
            verdicts: v.verdicts.get(&c.facts.cpu).copied().unwrap_or_default(),
        })
        .collect();
    CATALOGUE
        .iter()
        .map(|d| {
            let mut f = Family::new(d);
            match d.render {
                Render::CpuCounter(get) => cpus.iter().for_each(|c| {
                    f.counter(&[("cpu", &c.label)], get(&c.sample.counts) as f64);
                }),
                Render::Cpu(render) => cpus.iter().for_each(|c| render(&mut f, c)),
                Render::SweepCounter(get) => f.counter(&[], get(&v.totals) as f64),
                Render::Host(render) => render(&mut f, st, v),
            }
            f.0
        })
        .collect()
}

/// The text exposition format.
pub fn text(st: &ExportStatic, v: &ExportView) -> Result<String, prometheus::Error> {
    prometheus::TextEncoder::new().encode_to_string(&families(st, v))
}

#[cfg(test)]
pub(crate) mod tests {
    use ctx_common::CpuRecord;
    use ctx_common::writer::{MainEvent, irq_arrived, main_event};

    use super::*;
    use crate::model::{HookFact, Model};
    use crate::test_util::{golden, snapshot};

    /// A fixed two-CPU sample: CPU 0 on syscalls, CPU 1 `nohz_full` in user with one IPI that
    /// arrived in user; CPU 2 offline.
    pub(crate) fn fixture() -> (ExportStatic, ExportView) {
        let mut r0 = CpuRecord::default();
        let mut r1 = CpuRecord::default();
        let r2 = CpuRecord::default();
        unsafe {
            main_event(&raw mut r0.main, 1_000_000_000, MainEvent::SysExit, false);
            main_event(&raw mut r0.main, 1_500_000_000, MainEvent::SysEnter, false);
            main_event(&raw mut r1.main, 1_000_000_000, MainEvent::UserEnter, true);
            main_event(&raw mut r1.main, 1_200_000_000, MainEvent::UserExit, true);
            irq_arrived(
                &raw mut r1.irq,
                &raw const r1.main,
                1_200_001_000,
                IrqKind::CallFunctionSingle,
            );
            main_event(&raw mut r1.main, 1_250_000_000, MainEvent::UserEnter, true);
        }
        let facts = Facts {
            version: "0.1.0",
            kernel: "6.1.0-test".into(),
            nohz_full: "1".parse().unwrap(),
            ct_cpus: "1".parse().unwrap(),
            syscalls_active: true,
            hooks: vec![
                HookFact {
                    group: "context_tracking",
                    tracepoint: "user_enter",
                    status: HookStatus::Attached,
                },
                HookFact {
                    group: "sched",
                    tracepoint: "sched_switch",
                    status: HookStatus::Failed("verifier: invalid func unknown#175".into()),
                },
            ],
            detected: vec![("rcu", "rcu_dyntick", false)],
            attached_unix: 1_700_000_000.0,
            ..Facts::default()
        };
        let sample = Model::new().update(snapshot(2_000_000_000, "0-1", &[r0, r1, r2]), &facts);
        let mut totals = SweepTotals {
            sweeps: 10,
            ..Default::default()
        };
        totals.observe(30_000);
        let verdicts = BTreeMap::from([
            (0, Samples::from_array([1, 2, 3])),
            (1, Samples::from_array([0, 9, 1])),
        ]);
        (
            ExportStatic {
                facts,
                cpus: None,
                pins: None,
            },
            ExportView {
                sample: Arc::new(sample),
                verdicts: Arc::new(verdicts),
                totals,
                last_sample_unix: 1_700_000_100.5,
                sampler_up: true,
            },
        )
    }

    /// The exposition of the fixture, byte for byte (tests/golden/metrics.prom).
    #[test]
    fn golden_exposition() {
        let (st, v) = fixture();
        golden::check("metrics.prom", &text(&st, &v).unwrap());
    }

    #[test]
    fn offline_and_filtered_cpus_have_no_series() {
        let (mut st, v) = fixture();
        let t = text(&st, &v).unwrap();
        assert!(t.contains("cpu=\"1\""));
        assert!(!t.contains("cpu=\"2\""), "CPU 2 is offline");
        st.cpus = Some("1".parse().unwrap());
        let t = text(&st, &v).unwrap();
        assert!(!t.contains("cpu=\"0\""));
    }

    #[test]
    fn every_family_is_in_the_catalogue_once() {
        let (st, v) = fixture();
        let fams = families(&st, &v);
        assert_eq!(fams.len(), CATALOGUE.len());
        for (f, d) in fams.iter().zip(&CATALOGUE) {
            assert_eq!(f.name(), d.name);
        }
        for (i, d) in CATALOGUE.iter().enumerate() {
            assert!(
                CATALOGUE[..i].iter().all(|e| e.name != d.name),
                "{} twice",
                d.name
            );
        }
    }
}
