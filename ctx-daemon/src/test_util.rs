//! Helpers for the unit tests.

use std::error::Error;

/// The error as `{e:#}` prints it (each cause after `": "`, as anyhow does at the binaries'
/// edge), after checking that no message repeats one of its causes: a message that holds
/// `{source}` while also marking it `#[source]` would print the cause twice.
pub fn assert_causes_print_once(e: &(dyn Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cause = e.source();
    while let Some(c) = cause {
        parts.push(c.to_string());
        cause = c.source();
    }
    for (i, outer) in parts.iter().enumerate() {
        for inner in &parts[i + 1..] {
            assert!(
                !outer.contains(inner.as_str()),
                "{outer:?} repeats its cause {inner:?}"
            );
        }
    }
    parts.join(": ")
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
