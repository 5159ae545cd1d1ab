//! One interval, rendered: the `ctxtop --once` table and its JSON form.

use std::fmt::Write as _;

use ctx_common::record::IrqKind;
use ctx_common::{Arrival, CpuState, Verdict};
use serde::Serialize;

use crate::hooks::HookReport;
use crate::model::{CpuInterval, CpuView, Sample};

/// Context printed above the table and carried in the JSON.
#[derive(Clone, Debug, Serialize)]
pub struct Header {
    pub ctx_version: &'static str,
    pub host: String,
    pub kernel: String,
    pub interval_s: f64,
    pub sample_interval_s: f64,
    /// "loaded" (this process attached the programs) or "pinned" (a ctx-daemon's).
    pub probes: &'static str,
    pub nohz_full: String,
    pub isolated: String,
    /// The kernel's own context_tracking.state layout, derived from BTF, when known.
    pub kernel_ct_layout: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct HookLine {
    pub group: &'static str,
    pub tracepoint: &'static str,
    pub status: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Pct {
    pub user: f64,
    pub kernel: f64,
    pub idle: f64,
    pub nmi: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ByArrival {
    pub user: u64,
    pub kernel: u64,
    pub idle: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Samples {
    pub ipi_needed: u64,
    pub deferrable: u64,
    pub quiesced: u64,
}

/// One CPU in the JSON output; counts are over the interval.
#[derive(Clone, Debug, Serialize)]
pub struct CpuJson {
    pub cpu: u32,
    pub online: bool,
    pub nohz_full: bool,
    pub isolated: bool,
    pub source: &'static str,
    pub state: Option<&'static str>,
    pub verdict: Option<&'static str>,
    pub counter: u64,
    pub pct: Option<Pct>,
    pub kernel_entries: u64,
    pub syscalls: u64,
    pub page_faults: u64,
    pub idle_entries: u64,
    pub nmis: u64,
    /// Events that contradicted the mirrored mode (a transition the hooks missed).
    pub resyncs: u64,
    pub ipis: u64,
    pub avoidable_ipis: u64,
    pub interrupts: std::collections::BTreeMap<&'static str, ByArrival>,
    pub samples: Samples,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub header: Header,
    pub samples: u64,
    pub hooks: Vec<HookLine>,
    pub cpus: Vec<CpuJson>,
}

/// Pairs the first and last sample of an interval per CPU.
pub fn intervals(first: &Sample, last: &Sample) -> Vec<(CpuView, CpuInterval)> {
    let dt = last.taken_ns.saturating_sub(first.taken_ns);
    last.cpus
        .iter()
        .filter_map(|b| {
            let a = first.cpu(b.cpu)?;
            Some((b.clone(), CpuInterval::between(a, b, dt)))
        })
        .collect()
}

pub fn build(header: Header, hooks: &HookReport, first: &Sample, last: &Sample) -> Report {
    let rows = intervals(first, last);
    let samples = rows
        .iter()
        .map(|(_, iv)| iv.verdicts.iter().sum::<u64>())
        .max()
        .unwrap_or(0);
    let cpus = rows
        .iter()
        .map(|(v, iv)| {
            let mut interrupts = std::collections::BTreeMap::new();
            for k in IrqKind::ALL {
                let c = iv.irqs[k as usize];
                interrupts.insert(
                    k.as_str(),
                    ByArrival {
                        user: c[Arrival::User as usize],
                        kernel: c[Arrival::Kernel as usize],
                        idle: c[Arrival::Idle as usize],
                    },
                );
            }
            CpuJson {
                cpu: v.cpu,
                online: v.online,
                nohz_full: v.nohz_full,
                isolated: v.isolated,
                source: v.source.as_str(),
                state: v.state.map(CpuState::as_str),
                verdict: v.verdict.map(Verdict::as_str),
                counter: v.counter,
                pct: iv.pct.map(|p| Pct {
                    user: round2(p[0]),
                    kernel: round2(p[1]),
                    idle: round2(p[2]),
                    nmi: round2(p[3]),
                }),
                kernel_entries: iv.kernel_entries,
                syscalls: iv.syscalls,
                page_faults: iv.page_faults,
                idle_entries: iv.idle_entries,
                nmis: iv.nmis,
                resyncs: iv.resyncs,
                ipis: iv.ipis,
                avoidable_ipis: iv.avoidable_ipis,
                interrupts,
                samples: Samples {
                    ipi_needed: iv.verdicts[Verdict::IpiNeeded as usize],
                    deferrable: iv.verdicts[Verdict::Deferrable as usize],
                    quiesced: iv.verdicts[Verdict::Quiesced as usize],
                },
            }
        })
        .collect();
    Report {
        header,
        samples,
        hooks: hooks
            .hooks
            .iter()
            .map(|(h, s)| HookLine {
                group: h.group,
                tracepoint: h.tracepoint,
                status: s.to_string(),
            })
            .collect(),
        cpus,
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// ANSI colour for a state, used only when writing to a terminal.
fn colour(state: Option<CpuState>) -> &'static str {
    match state {
        Some(CpuState::User) => "\x1b[32m",
        Some(CpuState::Kernel) => "\x1b[33m",
        Some(CpuState::NmiFromUser | CpuState::NmiFromKernel) => "\x1b[31m",
        Some(CpuState::Idle) => "\x1b[2m",
        None => "",
    }
}

const HEAD: &str = "CPU NOHZ SOURCE            STATE            USER%  KERN%  IDLE%   NMI%   KENTRY     NMI    IPI  AVOID  VERDICT     NEED%";

fn opt_pct(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}

/// The text table. `tty` enables colour.
pub fn table(r: &Report, tty: bool) -> String {
    let h = &r.header;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "ctx {} on {} (kernel {}): {:.2} s interval, sampled every {:.0} ms ({} samples), programs {}",
        h.ctx_version,
        h.host,
        h.kernel,
        h.interval_s,
        h.sample_interval_s * 1e3,
        r.samples,
        if h.probes == "pinned" {
            "of the running ctx-daemon (pinned)"
        } else {
            "loaded by ctxtop"
        }
    );
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            s.to_owned()
        }
    };
    let _ = writeln!(
        out,
        "nohz_full: {}  isolated: {}",
        dash(&h.nohz_full),
        dash(&h.isolated)
    );
    let missing: Vec<String> = r
        .hooks
        .iter()
        .filter(|l| l.status != "attached" && l.status != "reused")
        .map(|l| format!("{}:{} {}", l.group, l.tracepoint, l.status))
        .collect();
    if !missing.is_empty() {
        let _ = writeln!(out, "hooks not in use: {}", missing.join("; "));
    }
    let _ = writeln!(
        out,
        "% of the interval per state; KENTRY, NMI, IPI and AVOID (IPIs that arrived in user or idle) are counts over it; NEED% = samples that needed an IPI"
    );
    let _ = writeln!(out, "{HEAD}");
    let mut all = [0.0f64; 4];
    let mut n_pct = 0usize;
    let mut sums = [0u64; 4];
    let mut need = [0u64; 2];
    for c in &r.cpus {
        if !c.online {
            let _ = writeln!(
                out,
                "{:>3} {:<4} offline",
                c.cpu,
                if c.nohz_full { "yes" } else { "-" }
            );
            continue;
        }
        let state = c.state.unwrap_or("-");
        let st = match c.state {
            Some("user") => Some(CpuState::User),
            Some("kernel") => Some(CpuState::Kernel),
            Some("idle") => Some(CpuState::Idle),
            Some(_) => Some(CpuState::NmiFromKernel),
            None => None,
        };
        let (on, off) = if tty && st.is_some() {
            (colour(st), "\x1b[0m")
        } else {
            ("", "")
        };
        let p = c.pct.as_ref();
        if let Some(p) = p {
            for (i, v) in [p.user, p.kernel, p.idle, p.nmi].iter().enumerate() {
                all[i] += v;
            }
            n_pct += 1;
        }
        let total = c.samples.ipi_needed + c.samples.deferrable + c.samples.quiesced;
        need[0] += c.samples.ipi_needed;
        need[1] += total;
        sums[0] += c.kernel_entries;
        sums[1] += c.nmis;
        sums[2] += c.ipis;
        sums[3] += c.avoidable_ipis;
        let _ = writeln!(
            out,
            "{:>3} {:<4} {:<17} {on}{:<15}{off} {:>6} {:>6} {:>6} {:>6} {:>8} {:>7} {:>6} {:>6}  {:<10} {:>6}",
            c.cpu,
            if c.nohz_full { "yes" } else { "-" },
            c.source,
            state,
            opt_pct(p.map(|p| p.user)),
            opt_pct(p.map(|p| p.kernel)),
            opt_pct(p.map(|p| p.idle)),
            opt_pct(p.map(|p| p.nmi)),
            c.kernel_entries,
            c.nmis,
            c.ipis,
            c.avoidable_ipis,
            c.verdict.unwrap_or("-"),
            opt_pct((total > 0).then(|| c.samples.ipi_needed as f64 * 100.0 / total as f64)),
        );
    }
    let avg = |i: usize| (n_pct > 0).then(|| all[i] / n_pct as f64);
    let _ = writeln!(
        out,
        "ALL {:<4} {:<17} {:<15} {:>6} {:>6} {:>6} {:>6} {:>8} {:>7} {:>6} {:>6}  {:<10} {:>6}",
        "",
        "",
        "",
        opt_pct(avg(0)),
        opt_pct(avg(1)),
        opt_pct(avg(2)),
        opt_pct(avg(3)),
        sums[0],
        sums[1],
        sums[2],
        sums[3],
        "",
        opt_pct((need[1] > 0).then(|| need[0] as f64 * 100.0 / need[1] as f64)),
    );
    out
}

#[cfg(test)]
mod tests {
    use ctx_common::CpuRecord;
    use ctx_common::writer::{MainEvent, main_event};

    use super::*;
    use crate::model::{Model, Topology};
    use crate::sample::{CpuRead, Snapshot};

    fn header() -> Header {
        Header {
            ctx_version: "0.0.0",
            host: "h".into(),
            kernel: "k".into(),
            interval_s: 1.0,
            sample_interval_s: 0.01,
            probes: "loaded",
            nohz_full: String::new(),
            isolated: String::new(),
            kernel_ct_layout: None,
        }
    }

    fn two_samples() -> (Sample, Sample) {
        let mut r0 = CpuRecord::default();
        let r1 = CpuRecord::default();
        unsafe { main_event(&raw mut r0.main, 10, MainEvent::SysExit, false) };
        let topo = Topology {
            online: "0-1".parse().unwrap(),
            syscalls_active: true,
            ..Default::default()
        };
        let mut m = Model::new();
        let s = |t: u64, r0: CpuRecord| Snapshot {
            taken_ns: t,
            cpus: vec![
                CpuRead {
                    cpu: 0,
                    record: r0,
                    read_ns: t,
                    stale: false,
                },
                CpuRead {
                    cpu: 1,
                    record: r1,
                    read_ns: t,
                    stale: false,
                },
            ],
            torn: 0,
            stale: 0,
            sweep_ns: 1,
        };
        let a = m.update(&s(1_000, r0), &topo);
        unsafe { main_event(&raw mut r0.main, 1_500, MainEvent::SysEnter, false) };
        let b = m.update(&s(2_000, r0), &topo);
        (a, b)
    }

    #[test]
    fn json_shape() {
        let (a, b) = two_samples();
        let r = build(header(), &HookReport::default(), &a, &b);
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["cpus"][0]["pct"]["user"], 50.0);
        assert_eq!(v["cpus"][0]["state"], "kernel");
        assert_eq!(v["cpus"][0]["kernel_entries"], 1);
        assert_eq!(v["cpus"][1]["state"], serde_json::Value::Null);
        assert_eq!(v["cpus"][1]["pct"], serde_json::Value::Null);
        assert!(v["cpus"][0]["interrupts"]["call_function"]["user"].is_u64());
        assert_eq!(v["interval_s"], 1.0);
    }

    #[test]
    fn table_has_a_row_per_cpu_and_no_escapes_off_tty() {
        let (a, b) = two_samples();
        let r = build(header(), &HookReport::default(), &a, &b);
        let t = table(&r, false);
        assert!(!t.contains('\x1b'));
        assert!(t.lines().any(|l| l.starts_with("  0 ")));
        assert!(t.lines().any(|l| l.starts_with("  1 ")));
        assert!(t.lines().any(|l| l.starts_with("ALL")));
        assert!(table(&r, true).contains('\x1b'));
    }
}
