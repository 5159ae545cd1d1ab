//! The second stage: one sweep copies what the kernel holds about every CPU, without asking
//! any CPU to do anything (no IPI, nothing run on the CPUs being watched).
//!
//! A sweep reads a set of sources, each into its own field of [`Snapshot`], and the model
//! folds each field on its own:
//!
//! * [`online`]: the online CPU list (sysfs), first, so that a record is never read against a
//!   stale list;
//! * [`records`]: `CTX_CPU`, the per-CPU record the programs write (one `BPF_MAP_LOOKUP_ELEM`,
//!   torn copies read again).
//!
//! Data of another shape comes in the same way, as a reader here and an optional field of the
//! snapshot for sweeps that skip it: a compact verdict word per CPU read at every sweep while
//! the full records are read at scrape rate, tables that other CPUs write (IPI senders), and
//! `/proc/stat` times for CPUs that no program watches. New per-CPU data that a program writes
//! on its own CPU needs none of that: it is a part of the record, and comes with every sweep.

pub mod online;
pub mod records;

use thiserror::Error;

use crate::host::cpuset::CpuSet;
use crate::host::system::mono_now_ns;
use crate::sample::online::Online;
use crate::sample::records::{RecordReader, RecordSource, Records};

#[derive(Debug, Error)]
pub enum SampleError {
    #[error(
        "reading map {map} failed: if its pin was removed, restart ctx-daemon (or \
         `ctx-daemon --detach` and start again)"
    )]
    Read {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error(
        "map {map} returned {got} slots for {want} possible CPUs: the CPU count changed under \
         ctx; restart it"
    )]
    Shape {
        map: &'static str,
        got: usize,
        want: usize,
    },
}

/// What one sweep read.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// `CLOCK_MONOTONIC` before the first map copy.
    pub taken_ns: u64,
    /// Wall time of the map copies, retries included.
    pub sweep_ns: u64,
    /// CPUs online at the sweep; `None` when the list could not be read.
    pub online: Option<CpuSet>,
    pub records: Records,
}

/// Sweeps the set of sources.
pub struct Sampler<S> {
    online: Online,
    records: RecordReader<S>,
}

impl<S: RecordSource> Sampler<S> {
    /// `possible_cpus`: the CPU ids of the per-CPU maps' slots, in slot order.
    pub fn new(records: S, possible_cpus: Vec<u32>, online: Online) -> Self {
        Self {
            online,
            records: RecordReader::new(records, possible_cpus),
        }
    }

    /// The possible CPU ids, in the per-CPU maps' slot order.
    pub fn cpus(&self) -> &[u32] {
        self.records.cpus()
    }

    pub fn sweep(&mut self) -> Result<Snapshot, SampleError> {
        let online = self.online.read();
        let t0 = mono_now_ns();
        let records = self.records.read(t0)?;
        Ok(Snapshot {
            taken_ns: t0,
            sweep_ns: mono_now_ns().saturating_sub(t0),
            online,
            records,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::printed_once;

    #[test]
    fn errors_name_the_map_and_print_each_cause_once() {
        let shown = printed_once(SampleError::Read {
            map: "CTX_CPU",
            source: aya::maps::MapError::KeyNotFound,
        });
        assert!(
            shown.contains("CTX_CPU") && shown.contains("restart"),
            "{shown}"
        );
        let shown = printed_once(SampleError::Shape {
            map: "CTX_CPU",
            got: 1,
            want: 2,
        });
        assert!(shown.contains("1 slots for 2"), "{shown}");
    }
}
