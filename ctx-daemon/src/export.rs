//! Every metric ctx exports, described once, and the exposition built from one snapshot.
//!
//! Values come from a consistent [`ExportView`] handed over by the sampler: per-CPU figures from
//! one sweep of the kernel's records, and user-space counters exactly as last written to the
//! ledger, so a scrape never shows a counter value that a restart could lose. Offline CPUs have
//! no series.

use std::collections::BTreeMap;
use std::sync::Arc;

use ctx_common::record::IrqKind;
use ctx_common::{Arrival, CpuState, Verdict};
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};

use crate::ledger::{DURATION_BUCKETS, SamplerTotals};
use crate::model::{CpuView, Sample};
use crate::system::CpuSet;

/// What does not change while the daemon runs.
#[derive(Clone, Debug, Default)]
pub struct ExportStatic {
    pub version: String,
    pub kernel: String,
    /// `(group, hook, status)` for every hook ctx knows.
    pub hooks: Vec<(String, String, String)>,
    /// Only these CPUs are exported (`--cpus`); `None` exports all.
    pub cpus: Option<CpuSet>,
    /// When the programs were attached (Unix seconds), which survives daemon restarts.
    pub attached_unix: f64,
}

/// One scrape's worth of data.
#[derive(Clone, Debug)]
pub struct ExportView {
    pub sample: Arc<Sample>,
    /// Sample counts per CPU by verdict, as last persisted.
    pub verdicts: Arc<BTreeMap<u32, [u64; 3]>>,
    /// Sampler totals, as last persisted.
    pub totals: SamplerTotals,
    pub last_sample_unix: f64,
    pub sampler_up: bool,
}

struct Family(MetricFamily);

impl Family {
    fn new(name: &str, help: &str, t: MetricType) -> Self {
        let mut mf = MetricFamily::default();
        mf.set_name(name.to_owned());
        mf.set_help(help.to_owned());
        mf.set_field_type(t);
        Self(mf)
    }

    fn labels(labels: &[(&str, &str)]) -> Vec<LabelPair> {
        labels
            .iter()
            .map(|(k, v)| {
                let mut l = LabelPair::default();
                l.set_name((*k).to_owned());
                l.set_value((*v).to_owned());
                l
            })
            .collect()
    }

    fn counter(&mut self, labels: &[(&str, &str)], v: f64) {
        let mut m = Metric::default();
        m.set_label(Self::labels(labels));
        let mut c = Counter::default();
        c.set_value(v);
        m.set_counter(c);
        self.0.mut_metric().push(m);
    }

    fn gauge(&mut self, labels: &[(&str, &str)], v: f64) {
        let mut m = Metric::default();
        m.set_label(Self::labels(labels));
        let mut g = Gauge::default();
        g.set_value(v);
        m.set_gauge(g);
        self.0.mut_metric().push(m);
    }
}

/// The metric catalogue: name, help, type. Everything exported is listed here.
pub mod names {
    use prometheus::proto::MetricType::{self, COUNTER, GAUGE, HISTOGRAM};

    pub type Def = (&'static str, &'static str, MetricType);

    pub const CPU_SECONDS: Def = (
        "ctx_cpu_seconds_total",
        "Time each CPU spent per state (user, kernel, idle, nmi), from context-tracking (or syscall) transitions, including the interval still open at the sample.",
        COUNTER,
    );
    pub const CPU_STATE: Def = (
        "ctx_cpu_state",
        "State of each CPU at the latest sample (one-hot; seed encoding, idle kept apart). All zero until the CPU's first event.",
        GAUGE,
    );
    pub const CPU_IPI_NEEDED: Def = (
        "ctx_cpu_ipi_needed",
        "1 if a kernel change would need an IPI to reach this CPU at the latest sample (in kernel or NMI, counter unchanged since the previous sample).",
        GAUGE,
    );
    pub const CPU_SAMPLES: Def = (
        "ctx_cpu_samples_total",
        "Sampler verdicts per CPU: ipi_needed, deferrable (user or idle), quiesced (counter moved since the previous sample).",
        COUNTER,
    );
    pub const CPU_KERNEL_ENTRIES: Def = (
        "ctx_cpu_kernel_entries_total",
        "User to kernel transitions (every entry where context tracking drives the CPU; syscalls otherwise).",
        COUNTER,
    );
    pub const CPU_SYSCALLS: Def = ("ctx_cpu_syscalls_total", "Syscalls entered.", COUNTER);
    pub const CPU_PAGE_FAULTS: Def = (
        "ctx_cpu_page_faults_total",
        "Page faults taken in user mode.",
        COUNTER,
    );
    pub const CPU_IDLE_ENTRIES: Def = (
        "ctx_cpu_idle_entries_total",
        "Entries into the idle loop.",
        COUNTER,
    );
    pub const CPU_NMIS: Def = ("ctx_cpu_nmis_total", "NMIs handled.", COUNTER);
    pub const CPU_RESYNCS: Def = (
        "ctx_cpu_mirror_resyncs_total",
        "Events that contradicted the mirrored mode (a transition no hook reported); the mirror followed the event.",
        COUNTER,
    );
    pub const CPU_IPIS: Def = (
        "ctx_cpu_ipis_received_total",
        "IPIs received, by x86 vector and by the CPU's state when it arrived; arrivals in user or idle are the avoidable kind.",
        COUNTER,
    );
    pub const CPU_INTERRUPTS: Def = (
        "ctx_cpu_interrupts_total",
        "Interrupts other than IPIs (local_timer, device), by the CPU's state when they arrived.",
        COUNTER,
    );
    pub const CPU_INFO: Def = (
        "ctx_cpu_info",
        "Per-CPU facts: nohz_full membership and the hook source driving the CPU.",
        GAUGE,
    );
    pub const BUILD_INFO: Def = (
        "ctx_build_info",
        "ctx version and the running kernel.",
        GAUGE,
    );
    pub const HOOK_INFO: Def = (
        "ctx_hook_info",
        "Each kernel hook ctx knows, with its status (attached, reused, absent, failed, skipped, detected).",
        GAUGE,
    );
    pub const SAMPLE_DURATION: Def = (
        "ctx_sample_duration_seconds",
        "Time of one sweep over all CPUs' records (one map copy, retries included).",
        HISTOGRAM,
    );
    pub const SWEEPS: Def = ("ctx_sweeps_total", "Sweeps over all CPUs.", COUNTER);
    pub const SAMPLE_TORN: Def = (
        "ctx_sample_torn_total",
        "Per-CPU records copied while their CPU was writing them, and copied again.",
        COUNTER,
    );
    pub const SAMPLE_STALE: Def = (
        "ctx_sample_stale_total",
        "Per-CPU records still mid-write after every retry; the previous consistent copy was used.",
        COUNTER,
    );
    pub const SAMPLE_ERRORS: Def = (
        "ctx_sample_errors_total",
        "Sweeps that failed to read the per-CPU map.",
        COUNTER,
    );
    pub const LAST_SAMPLE: Def = (
        "ctx_last_sample_timestamp_seconds",
        "Unix time of the newest sweep.",
        GAUGE,
    );
    pub const SAMPLER_UP: Def = (
        "ctx_sampler_up",
        "1 while the sampler is fresh (it swept within the last second, or ten intervals).",
        GAUGE,
    );
    pub const ATTACHED: Def = (
        "ctx_probes_attached_timestamp_seconds",
        "Unix time the eBPF programs were attached (kept across daemon restarts).",
        GAUGE,
    );
}

fn fam(d: names::Def) -> Family {
    Family::new(d.0, d.1, d.2)
}

fn state_label(s: CpuState) -> &'static str {
    s.as_str()
}

const SEC: f64 = 1e-9;

/// Builds every family from one view.
pub fn families(st: &ExportStatic, v: &ExportView) -> Vec<MetricFamily> {
    let cpus: Vec<&CpuView> = v
        .sample
        .cpus
        .iter()
        .filter(|c| c.online && st.cpus.as_ref().is_none_or(|s| s.contains(c.cpu)))
        .collect();

    let mut seconds = fam(names::CPU_SECONDS);
    let mut state = fam(names::CPU_STATE);
    let mut ipi_needed = fam(names::CPU_IPI_NEEDED);
    let mut samples = fam(names::CPU_SAMPLES);
    let mut kentries = fam(names::CPU_KERNEL_ENTRIES);
    let mut syscalls = fam(names::CPU_SYSCALLS);
    let mut faults = fam(names::CPU_PAGE_FAULTS);
    let mut idles = fam(names::CPU_IDLE_ENTRIES);
    let mut nmis = fam(names::CPU_NMIS);
    let mut resyncs = fam(names::CPU_RESYNCS);
    let mut ipis = fam(names::CPU_IPIS);
    let mut irqs = fam(names::CPU_INTERRUPTS);
    let mut info = fam(names::CPU_INFO);

    for c in cpus {
        let cpu = c.cpu.to_string();
        let cpu = cpu.as_str();
        let r = c.residency;
        for (s, ns) in [
            ("user", r.user),
            ("kernel", r.kernel),
            ("idle", r.idle),
            ("nmi", r.nmi),
        ] {
            seconds.counter(&[("cpu", cpu), ("state", s)], ns as f64 * SEC);
        }
        for s in CpuState::ALL {
            let on = c.state == Some(s);
            state.gauge(
                &[("cpu", cpu), ("state", state_label(s))],
                if on { 1.0 } else { 0.0 },
            );
        }
        let needed = c.verdict.is_some_and(Verdict::ipi_needed);
        ipi_needed.gauge(&[("cpu", cpu)], if needed { 1.0 } else { 0.0 });
        let vc = v.verdicts.get(&c.cpu).copied().unwrap_or_default();
        for vd in Verdict::ALL {
            samples.counter(
                &[("cpu", cpu), ("verdict", vd.as_str())],
                vc[vd as usize] as f64,
            );
        }
        kentries.counter(&[("cpu", cpu)], c.kernel_entries as f64);
        syscalls.counter(&[("cpu", cpu)], c.syscalls as f64);
        faults.counter(&[("cpu", cpu)], c.page_faults as f64);
        idles.counter(&[("cpu", cpu)], c.idle_entries as f64);
        nmis.counter(&[("cpu", cpu)], c.nmis as f64);
        resyncs.counter(&[("cpu", cpu)], c.resyncs as f64);
        for k in IrqKind::ALL {
            let fam = if k.is_ipi() { &mut ipis } else { &mut irqs };
            let key = if k.is_ipi() { "vector" } else { "kind" };
            for a in Arrival::ALL {
                fam.counter(
                    &[("cpu", cpu), (key, k.as_str()), ("state", a.as_str())],
                    c.irqs[k as usize][a as usize] as f64,
                );
            }
        }
        info.gauge(
            &[
                ("cpu", cpu),
                ("nohz_full", if c.nohz_full { "true" } else { "false" }),
                ("source", c.source.as_str()),
            ],
            1.0,
        );
    }

    let mut build = fam(names::BUILD_INFO);
    build.gauge(
        &[
            ("version", st.version.as_str()),
            ("kernel", st.kernel.as_str()),
        ],
        1.0,
    );
    let mut hooks = fam(names::HOOK_INFO);
    for (g, h, s) in &st.hooks {
        hooks.gauge(
            &[
                ("group", g.as_str()),
                ("hook", h.as_str()),
                ("status", s.as_str()),
            ],
            1.0,
        );
    }

    let t = &v.totals;
    let mut hist = Family::new(
        names::SAMPLE_DURATION.0,
        names::SAMPLE_DURATION.1,
        names::SAMPLE_DURATION.2,
    );
    {
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
        let mut m = Metric::default();
        m.set_histogram(h);
        hist.0.mut_metric().push(m);
    }
    let mut sweeps = fam(names::SWEEPS);
    sweeps.counter(&[], t.sweeps as f64);
    let mut torn = fam(names::SAMPLE_TORN);
    torn.counter(&[], t.torn as f64);
    let mut stale = fam(names::SAMPLE_STALE);
    stale.counter(&[], t.stale as f64);
    let mut errors = fam(names::SAMPLE_ERRORS);
    errors.counter(&[], t.errors as f64);
    let mut last = fam(names::LAST_SAMPLE);
    last.gauge(&[], v.last_sample_unix);
    let mut up = fam(names::SAMPLER_UP);
    up.gauge(&[], if v.sampler_up { 1.0 } else { 0.0 });
    let mut attached = fam(names::ATTACHED);
    attached.gauge(&[], st.attached_unix);

    [
        seconds, state, ipi_needed, samples, kentries, syscalls, faults, idles, nmis, resyncs,
        ipis, irqs, info, build, hooks, hist, sweeps, torn, stale, errors, last, up, attached,
    ]
    .into_iter()
    .map(|f| f.0)
    .collect()
}

/// The text exposition format.
pub fn text(st: &ExportStatic, v: &ExportView) -> Result<String, prometheus::Error> {
    prometheus::TextEncoder::new().encode_to_string(&families(st, v))
}

/// The families every exposition has, also with no CPU online (for docs and tests).
pub fn catalogue() -> Vec<names::Def> {
    use names::*;
    vec![
        CPU_SECONDS,
        CPU_STATE,
        CPU_IPI_NEEDED,
        CPU_SAMPLES,
        CPU_KERNEL_ENTRIES,
        CPU_SYSCALLS,
        CPU_PAGE_FAULTS,
        CPU_IDLE_ENTRIES,
        CPU_NMIS,
        CPU_RESYNCS,
        CPU_IPIS,
        CPU_INTERRUPTS,
        CPU_INFO,
        BUILD_INFO,
        HOOK_INFO,
        SAMPLE_DURATION,
        SWEEPS,
        SAMPLE_TORN,
        SAMPLE_STALE,
        SAMPLE_ERRORS,
        LAST_SAMPLE,
        SAMPLER_UP,
        ATTACHED,
    ]
}

#[cfg(test)]
pub(crate) mod tests {
    use ctx_common::CpuRecord;
    use ctx_common::writer::{MainEvent, irq_arrived, main_event};

    use super::*;
    use crate::model::{Model, Topology};
    use crate::sample::{CpuRead, Snapshot};

    /// A fixed two-CPU sample: CPU 0 on syscalls, CPU 1 nohz_full in user with one IPI that
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
        let topo = Topology {
            online: "0-1".parse().unwrap(),
            nohz_full: "1".parse().unwrap(),
            ct_cpus: "1".parse().unwrap(),
            syscalls_active: true,
            ..Default::default()
        };
        let snap = Snapshot {
            taken_ns: 2_000_000_000,
            cpus: [r0, r1, r2]
                .iter()
                .enumerate()
                .map(|(i, r)| CpuRead {
                    cpu: i as u32,
                    record: *r,
                    read_ns: 2_000_000_000,
                    stale: false,
                })
                .collect(),
            torn: 0,
            stale: 0,
            sweep_ns: 30_000,
        };
        let sample = Model::new().update(&snap, &topo);
        let mut totals = SamplerTotals {
            sweeps: 10,
            ..Default::default()
        };
        totals.observe(30_000);
        let verdicts = BTreeMap::from([(0, [1, 2, 3]), (1, [0, 9, 1])]);
        (
            ExportStatic {
                version: "0.1.0".into(),
                kernel: "6.1.0-test".into(),
                hooks: vec![
                    (
                        "context_tracking".into(),
                        "user_enter".into(),
                        "attached".into(),
                    ),
                    ("rcu".into(), "rcu_dyntick".into(), "absent".into()),
                ],
                cpus: None,
                attached_unix: 1_700_000_000.0,
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
        let got = text(&st, &v).unwrap();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/metrics.prom");
        if std::env::var_os("CTX_BLESS").is_some() {
            std::fs::write(path, &got).unwrap();
        }
        let want = std::fs::read_to_string(path).unwrap();
        assert_eq!(
            got, want,
            "exposition changed; rerun with CTX_BLESS=1 and review the diff"
        );
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
    fn every_family_is_in_the_catalogue() {
        let (st, v) = fixture();
        let fams = families(&st, &v);
        let cat: Vec<&str> = catalogue().iter().map(|d| d.0).collect();
        assert_eq!(fams.len(), cat.len());
        for f in &fams {
            assert!(cat.contains(&f.name()), "{} not in the catalogue", f.name());
        }
    }
}
