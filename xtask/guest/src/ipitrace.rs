//! Who sends IPIs to the `nohz_full` CPUs: kprobes on the x86 IPI send paths, read from tracefs.
//! Scenario 6 counts IPIs per /proc/interrupts row; this says where each one came from, so a
//! nonzero count explains itself. Diagnostic only: no requirement depends on it, and a kernel
//! without these functions or without kprobes just yields no attribution.
//!
//! Arming kprobes text-patches the kernel (and optimizing them, a few jiffies later, again),
//! which IPIs every CPU: arm before the windows and disarm after them.

use std::collections::BTreeMap;
use std::fs;

const TRACING: &str = "/sys/kernel/tracing";

/// (event, probe definition). `mask` is the first word of the target cpumask.
const PROBES: [(&str, &str); 4] = [
    ("cf", "native_send_call_func_ipi mask=+0(%di):x64"),
    ("cfs", "native_send_call_func_single_ipi cpu=%di:s32"),
    ("res", "native_smp_send_reschedule cpu=%di:s32"),
    // irq_work is raised by the CPU it runs on: a self-IPI.
    ("iwi", "arch_irq_work_raise"),
];

pub struct IpiTrace {
    armed: Vec<&'static str>,
}

fn w(file: &str, text: &str) -> bool {
    fs::write(format!("{TRACING}/{file}"), text).is_ok()
}

/// Appends one command to `kprobe_events` in a single write(2): tracefs parses every write as a
/// command of its own, so `writeln!` (several writes) would split it.
fn kprobe_cmd(cmd: &str) -> bool {
    use std::io::Write as _;
    fs::OpenOptions::new()
        .append(true)
        .open(format!("{TRACING}/kprobe_events"))
        .and_then(|mut f| f.write_all(format!("{cmd}\n").as_bytes()))
        .is_ok()
}

impl IpiTrace {
    /// Arms what it can; `None` when tracefs or kprobes are missing.
    pub fn arm() -> Option<Self> {
        let mut armed = Vec::new();
        for (name, def) in PROBES {
            if kprobe_cmd(&format!("p:ctxvm/{name} {def}"))
                && w(&format!("events/ctxvm/{name}/enable"), "1")
            {
                armed.push(name);
            }
        }
        if armed.is_empty() {
            return None;
        }
        w("buffer_size_kb", "4096");
        w("options/stacktrace", "1");
        w("trace", "");
        Some(Self { armed })
    }

    /// Senders of IPIs to CPUs 1-3 since the last call, as "count× kind comm: frames", most
    /// frequent first; then starts afresh.
    pub fn take(&self) -> Vec<String> {
        let text = fs::read_to_string(format!("{TRACING}/trace")).unwrap_or_default();
        w("trace", "");
        summarize(&text)
    }

    pub fn armed(&self) -> &[&'static str] {
        &self.armed
    }
}

impl Drop for IpiTrace {
    fn drop(&mut self) {
        w("options/stacktrace", "0");
        for name in &self.armed {
            w(&format!("events/ctxvm/{name}/enable"), "0");
        }
        for name in &self.armed {
            kprobe_cmd(&format!("-:ctxvm/{name}"));
        }
    }
}

/// Whether an event line targets a `nohz_full` CPU (1-3).
fn hits_nohz(kind: &str, on_cpu: u32, args: &str) -> bool {
    let arg = |key: &str| {
        args.split_whitespace()
            .find_map(|t| t.strip_prefix(key))
            .map(str::to_owned)
    };
    match kind {
        "cf" => arg("mask=").is_some_and(|m| {
            u64::from_str_radix(m.trim_start_matches("0x"), 16).is_ok_and(|v| v & 0b1110 != 0)
        }),
        "cfs" | "res" => arg("cpu=")
            .and_then(|c| c.parse::<u32>().ok())
            .is_some_and(|c| (1..=3).contains(&c)),
        "iwi" => (1..=3).contains(&on_cpu),
        _ => false,
    }
}

/// Parses the trace: an event line, then its stack as " => function" lines.
fn summarize(text: &str) -> Vec<String> {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut cur: Option<(String, Vec<String>)> = None;
    let mut flush = |cur: &mut Option<(String, Vec<String>)>| {
        if let Some((head, frames)) = cur.take() {
            // frames[0] is the probed function itself.
            let stack = frames
                .iter()
                .skip(1)
                .take(4)
                .cloned()
                .collect::<Vec<_>>()
                .join(" < ");
            *counts.entry(format!("{head}: {stack}")).or_default() += 1;
        }
    };
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        if let Some(f) = line.trim_start().strip_prefix("=> ") {
            if let Some((_, frames)) = cur.as_mut() {
                frames.push(f.split('+').next().unwrap_or(f).to_owned());
            }
            continue;
        }
        // "  comm-pid  [002] d..1.  12.345678: cfs: (native_...+0x4/0x20) cpu=2"
        let Some((left, rest)) = line.split_once("] ") else {
            continue;
        };
        let Some(on_cpu) = left
            .rsplit_once('[')
            .and_then(|(_, c)| c.trim().parse::<u32>().ok())
        else {
            continue;
        };
        let comm = left.split_whitespace().next().unwrap_or("?");
        let mut parts = rest.splitn(3, ": ");
        let (_, Some(kind), Some(args)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        flush(&mut cur);
        if hits_nohz(kind, on_cpu, args) {
            let target = args.split(") ").nth(1).unwrap_or("").trim();
            let what = if target.is_empty() {
                kind.to_owned()
            } else {
                format!("{kind} {target}")
            };
            cur = Some((format!("{what} from {comm} on CPU {on_cpu}"), Vec::new()));
        }
    }
    flush(&mut cur);
    let mut v: Vec<(u64, String)> = counts.into_iter().map(|(k, n)| (n, k)).collect();
    v.sort_by_key(|a| std::cmp::Reverse(a.0));
    v.into_iter().map(|(n, k)| format!("{n}× {k}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn senders_to_nohz_cpus() {
        let trace = "# tracer: nop\n\
            ctxtop-201   [000] d..1.  12.5: cf: (native_send_call_func_ipi+0x4/0x20) mask=0xe\n \
            => native_send_call_func_ipi\n => smp_call_function_many_cond\n => on_each_cpu_cond_mask\n \
            => flush_tlb_kernel_range\n => __purge_vmap_area_lazy\n => drain_vmap_area_work\n\
            <idle>-0   [000] d.h2.  13.0: res: (native_smp_send_reschedule+0x0/0x30) cpu=0\n \
            => native_smp_send_reschedule\n => resched_curr\n\
            kworker-9   [000] d..1.  14.0: cfs: (native_send_call_func_single_ipi+0x4/0x20) cpu=2\n \
            => native_send_call_func_single_ipi\n => generic_exec_single\n\
            kdamond-72   [002] d..2.  15.0: iwi: (arch_irq_work_raise+0x0/0x40)\n \
            => arch_irq_work_raise\n => irq_work_queue\n";
        let s = summarize(trace);
        assert_eq!(s.len(), 3, "{s:?}");
        assert!(s.iter().any(|l| l.starts_with("1× cf mask=0xe from ctxtop-201 on CPU 0: smp_call_function_many_cond < on_each_cpu_cond_mask < flush_tlb_kernel_range < __purge_vmap_area_lazy")), "{s:?}");
        assert!(s.iter().any(|l| l.contains("cfs cpu=2 from kworker-9")));
        assert!(
            s.iter()
                .any(|l| l.contains("1× iwi from kdamond-72 on CPU 2: irq_work_queue")),
            "{s:?}"
        );
        assert!(
            !s.iter().any(|l| l.contains("cpu=0")),
            "the IPI to CPU 0 is not counted"
        );
    }
}
