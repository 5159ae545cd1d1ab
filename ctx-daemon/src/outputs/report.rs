//! One interval, rendered: the `ctxtop --once` table and its JSON form. Both read the model's
//! interval rows; the JSON is a thin serializing view of them whose shape the README documents.

use std::fmt::Write as _;

use ctx_common::{Arrival, CpuState, IrqKind, Verdict};
use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Serialize, Serializer};

use crate::model::{
    Counts, CpuInterval, Facts, Interval, Irqs, Origin, Sample, Samples, Shares, Totals,
};

/// One interval with what is printed above it.
#[derive(Clone, Debug)]
pub struct Report {
    pub facts: Facts,
    pub interval_s: f64,
    pub sample_interval_s: f64,
    /// Samples per CPU in the interval, over every CPU (before `--cpus` filters rows).
    pub samples: u64,
    pub interval: Interval,
}

impl Report {
    pub fn new(
        facts: Facts,
        interval_s: f64,
        sample_interval_s: f64,
        first: &Sample,
        last: &Sample,
    ) -> Self {
        let interval = Interval::between(first, last);
        Self {
            facts,
            interval_s,
            sample_interval_s,
            samples: interval.samples(),
            interval,
        }
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

impl Serialize for Report {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let f = &self.facts;
        let mut m = s.serialize_struct("Report", 12)?;
        m.serialize_field("ctx_version", f.version)?;
        m.serialize_field("host", &f.host)?;
        m.serialize_field("kernel", &f.kernel)?;
        m.serialize_field("interval_s", &self.interval_s)?;
        m.serialize_field("sample_interval_s", &self.sample_interval_s)?;
        m.serialize_field("probes", f.origin.as_str())?;
        m.serialize_field("nohz_full", &f.nohz_full.to_string())?;
        m.serialize_field("isolated", &f.isolated.to_string())?;
        m.serialize_field("kernel_ct_layout", &f.kernel_ct_layout)?;
        m.serialize_field("samples", &self.samples)?;
        let hooks: Vec<HookJson<'_>> = f.hooks.iter().map(HookJson).collect();
        m.serialize_field("hooks", &hooks)?;
        let cpus: Vec<CpuJson<'_>> = self.interval.cpus.iter().map(CpuJson).collect();
        m.serialize_field("cpus", &cpus)?;
        m.end()
    }
}

struct HookJson<'a>(&'a crate::model::HookFact);

impl Serialize for HookJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_struct("Hook", 3)?;
        m.serialize_field("group", self.0.group)?;
        m.serialize_field("tracepoint", self.0.tracepoint)?;
        m.serialize_field("status", &self.0.status.to_string())?;
        m.end()
    }
}

/// One CPU in the JSON output; counts are over the interval.
struct CpuJson<'a>(&'a CpuInterval);

impl Serialize for CpuJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let CpuInterval {
            facts,
            status,
            counts: c,
            ..
        } = self.0;
        let mut m = s.serialize_struct("Cpu", 19)?;
        m.serialize_field("cpu", &facts.cpu)?;
        m.serialize_field("online", &facts.online)?;
        m.serialize_field("nohz_full", &facts.nohz_full)?;
        m.serialize_field("isolated", &facts.isolated)?;
        m.serialize_field("source", facts.source.as_str())?;
        m.serialize_field("state", &status.state.map(CpuState::as_str))?;
        m.serialize_field("verdict", &status.verdict.map(Verdict::as_str))?;
        m.serialize_field("counter", &status.counter)?;
        m.serialize_field("pct", &self.0.pct().map(|p| p.map(round2)))?;
        m.serialize_field("kernel_entries", &c.kernel_entries)?;
        m.serialize_field("syscalls", &c.syscalls)?;
        m.serialize_field("page_faults", &c.page_faults)?;
        m.serialize_field("idle_entries", &c.idle_entries)?;
        m.serialize_field("nmis", &c.nmis)?;
        m.serialize_field("resyncs", &c.resyncs)?;
        m.serialize_field("ipis", &c.ipis())?;
        m.serialize_field("avoidable_ipis", &c.avoidable_ipis())?;
        m.serialize_field("interrupts", &IrqsJson(&c.irqs))?;
        m.serialize_field("samples", &SamplesJson(&c.samples))?;
        m.end()
    }
}

/// `{"call_function": {"user": n, "kernel": n, "idle": n}, ...}`, kinds in name order.
struct IrqsJson<'a>(&'a Irqs);

impl Serialize for IrqsJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut kinds = IrqKind::ALL;
        kinds.sort_by_key(|k| k.as_str());
        let mut m = s.serialize_map(Some(kinds.len()))?;
        for k in kinds {
            m.serialize_entry(k.as_str(), &ByArrival(self.0, k))?;
        }
        m.end()
    }
}

struct ByArrival<'a>(&'a Irqs, IrqKind);

impl Serialize for ByArrival<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(Arrival::ALL.len()))?;
        for a in Arrival::ALL {
            m.serialize_entry(a.as_str(), &self.0.get(self.1, a))?;
        }
        m.end()
    }
}

/// `{"ipi_needed": n, "deferrable": n, "quiesced": n}`.
struct SamplesJson<'a>(&'a Samples);

impl Serialize for SamplesJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(Verdict::ALL.len()))?;
        for v in Verdict::ALL {
            m.serialize_entry(v.as_str(), &self.0.get(v))?;
        }
        m.end()
    }
}

/// ANSI colour for a state, used only when writing to a terminal.
fn colour(state: CpuState) -> &'static str {
    match state {
        CpuState::User => "\x1b[32m",
        CpuState::Kernel => "\x1b[33m",
        CpuState::NmiFromUser | CpuState::NmiFromKernel => "\x1b[31m",
        CpuState::Idle => "\x1b[2m",
    }
}

const HEAD: &str = "CPU NOHZ SOURCE            STATE            USER%  KERN%  IDLE%   NMI%   KENTRY     NMI    IPI  AVOID  VERDICT     NEED%";

fn opt_pct(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}

fn dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// The text table. `tty` enables colour.
pub fn table(r: &Report, tty: bool) -> String {
    let facts = &r.facts;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "ctx {} on {} (kernel {}): {:.2} s interval, sampled every {:.0} ms ({} samples), programs {}",
        facts.version,
        facts.host,
        facts.kernel,
        r.interval_s,
        r.sample_interval_s * 1e3,
        r.samples,
        match facts.origin {
            Origin::Pinned => "of the running ctx-daemon (pinned)",
            Origin::Loaded => "loaded by ctxtop",
        }
    );
    let _ = writeln!(
        out,
        "nohz_full: {}  isolated: {}",
        dash(&facts.nohz_full.to_string()),
        dash(&facts.isolated.to_string())
    );
    let missing: Vec<String> = facts.hooks_not_in_use().map(ToString::to_string).collect();
    if !missing.is_empty() {
        let _ = writeln!(out, "hooks not in use: {}", missing.join("; "));
    }
    let _ = writeln!(
        out,
        "% of the interval per state; KENTRY, NMI, IPI and AVOID (IPIs that arrived in user or idle) are counts over it; NEED% = samples that needed an IPI"
    );
    let _ = writeln!(out, "{HEAD}");
    for c in &r.interval.cpus {
        let nohz = if c.facts.nohz_full { "yes" } else { "-" };
        if !c.facts.online {
            let _ = writeln!(out, "{:>3} {nohz:<4} offline", c.facts.cpu);
            continue;
        }
        let state = c.status.state;
        let (on, off) = match state {
            Some(s) if tty => (colour(s), "\x1b[0m"),
            _ => ("", ""),
        };
        let _ = writeln!(
            out,
            "{:>3} {nohz:<4} {:<17} {on}{:<15}{off} {}  {:<10} {:>6}",
            c.facts.cpu,
            c.facts.source.as_str(),
            state.map_or("-", CpuState::as_str),
            figures(c.pct(), &c.counts),
            c.status.verdict.map_or("-", Verdict::as_str),
            opt_pct(c.need_pct()),
        );
    }
    let all = Totals::of(&r.interval.cpus);
    let _ = writeln!(
        out,
        "ALL {:<4} {:<17} {:<15} {}  {:<10} {:>6}",
        "",
        "",
        "",
        figures(all.pct, &all.counts),
        "",
        opt_pct(all.need_pct()),
    );
    out
}

/// The share and count columns, alike in a CPU's row and the ALL row.
fn figures(p: Option<Shares>, n: &Counts) -> String {
    format!(
        "{:>6} {:>6} {:>6} {:>6} {:>8} {:>7} {:>6} {:>6}",
        opt_pct(p.map(|p| p.user)),
        opt_pct(p.map(|p| p.kernel)),
        opt_pct(p.map(|p| p.idle)),
        opt_pct(p.map(|p| p.nmi)),
        n.kernel_entries,
        n.nmis,
        n.ipis(),
        n.avoidable_ipis(),
    )
}

#[cfg(test)]
mod tests {
    use ctx_common::CpuRecord;
    use ctx_common::writer::{MainEvent, irq_arrived, main_event};

    use super::*;
    use crate::model::{HookFact, Model};
    use crate::probes::hooks::HookStatus;
    use crate::test_util::{golden, snapshot};

    /// CPU 0 on syscalls, half user; CPU 1 `nohz_full` on context tracking, with an IPI that
    /// found it in user; CPU 2 offline.
    fn report() -> Report {
        let mut r0 = CpuRecord::default();
        let mut r1 = CpuRecord::default();
        let r2 = CpuRecord::default();
        unsafe {
            main_event(&raw mut r0.main, 10, MainEvent::SysExit, false);
            main_event(&raw mut r1.main, 10, MainEvent::UserEnter, true);
        }
        let facts = Facts {
            version: "0.0.0",
            host: "h".into(),
            kernel: "k".into(),
            nohz_full: "1".parse().unwrap(),
            ct_cpus: "1".parse().unwrap(),
            syscalls_active: true,
            hooks: vec![HookFact {
                group: "rcu",
                tracepoint: "rcu_dyntick",
                status: HookStatus::Absent,
            }],
            ..Facts::default()
        };
        let mut m = Model::new();
        let a = m.update(snapshot(1_000, "0-1", &[r0, r1, r2]), &facts);
        unsafe {
            main_event(&raw mut r0.main, 1_500, MainEvent::SysEnter, false);
            main_event(&raw mut r1.main, 1_200, MainEvent::UserExit, true);
            irq_arrived(
                &raw mut r1.irq,
                &raw const r1.main,
                1_201,
                IrqKind::CallFunction,
            );
            main_event(&raw mut r1.main, 1_300, MainEvent::UserEnter, true);
        }
        let b = m.update(snapshot(2_000, "0-1", &[r0, r1, r2]), &facts);
        Report::new(facts, 1.0, 0.01, &a, &b)
    }

    /// The JSON and the table of the fixture, byte for byte (the JSON's shape is the one the
    /// README documents).
    #[test]
    fn golden_json_and_table() {
        let r = report();
        golden::check("report.json", &(serde_json::to_string(&r).unwrap() + "\n"));
        golden::check("report.txt", &table(&r, false));
    }

    #[test]
    fn table_has_a_row_per_cpu_and_no_escapes_off_tty() {
        let r = report();
        let t = table(&r, false);
        assert!(!t.contains('\x1b'));
        assert!(t.lines().any(|l| l.starts_with("  0 ")));
        assert!(t.lines().any(|l| l.starts_with("  1 ")));
        assert!(t.lines().any(|l| l.starts_with("ALL")));
        assert!(t.contains("hooks not in use: rcu:rcu_dyntick absent"));
        assert!(table(&r, true).contains('\x1b'));
    }
}
