//! Helpers for the unit tests.

use std::error::Error;

/// The error as `{e:#}` prints it at the binaries' edge (anyhow: each cause after `": "`),
/// after checking that no message repeats one of its causes: a message that holds `{source}`
/// while also marking it `#[source]` would print the cause twice.
pub fn printed_once<E: Error + Send + Sync + 'static>(e: E) -> String {
    let e = anyhow::Error::new(e);
    let parts: Vec<String> = e.chain().map(ToString::to_string).collect();
    for (i, outer) in parts.iter().enumerate() {
        for inner in &parts[i + 1..] {
            assert!(
                !outer.contains(inner.as_str()),
                "{outer:?} repeats its cause {inner:?}"
            );
        }
    }
    format!("{e:#}")
}

/// A sweep that read `records` (CPU `i` in slot `i`) at `t`, with `online` online.
pub fn snapshot(
    t: u64,
    online: &str,
    records: &[ctx_common::CpuRecord],
) -> crate::sample::Snapshot {
    use crate::sample::records::{CpuRead, Records};
    crate::sample::Snapshot {
        taken_ns: t,
        sweep_ns: 30_000,
        online: Some(online.parse().expect("a CPU list")),
        records: Records {
            cpus: (0u32..)
                .zip(records)
                .map(|(cpu, r)| CpuRead {
                    cpu,
                    record: *r,
                    read_ns: t,
                    stale: false,
                })
                .collect(),
            torn: 0,
            stale: 0,
        },
    }
}

#[path = "../tests/common/golden.rs"]
pub mod golden;
