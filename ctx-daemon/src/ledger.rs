//! Counters that only user space knows (the sampler's verdicts and its own totals), kept in a
//! pinned array map so that a restarted daemon continues them: Prometheus must never see one
//! of ctx's counters go backwards.
//!
//! Layout of `CTX_LEDGER`: entry `cpu` holds that CPU's sample counts by verdict in words 0-2;
//! entry `n` (the number of CPU slots) holds the sampler totals; entry `n + 1` holds the
//! sample-duration histogram's buckets.

use aya::maps::{Array, MapData};
use ctx_common::record::Ledger;
use thiserror::Error;

/// Upper bounds of `ctx_sample_duration_seconds` buckets, in seconds.
pub const DURATION_BUCKETS: [f64; 8] = [10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 5e-3];

/// Entries past the per-CPU ones.
pub const GLOBAL_ENTRIES: u32 = 2;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SamplerTotals {
    pub sweeps: u64,
    /// Records caught mid-write and copied again.
    pub torn: u64,
    /// Records still torn after every retry, served from an earlier copy.
    pub stale: u64,
    pub errors: u64,
    pub duration_count: u64,
    pub duration_sum_ns: u64,
    /// Cumulative counts per bucket of [`DURATION_BUCKETS`].
    pub buckets: [u64; 8],
}

impl SamplerTotals {
    pub fn observe(&mut self, sweep_ns: u64) {
        self.duration_count += 1;
        self.duration_sum_ns += sweep_ns;
        let s = sweep_ns as f64 * 1e-9;
        for (b, le) in self.buckets.iter_mut().zip(DURATION_BUCKETS) {
            if s <= le {
                *b += 1;
            }
        }
    }

    /// Field-wise maximum: restoring never lowers what this process already counted.
    pub fn max(self, o: Self) -> Self {
        let mut buckets = self.buckets;
        for (b, x) in buckets.iter_mut().zip(o.buckets) {
            *b = (*b).max(x);
        }
        Self {
            sweeps: self.sweeps.max(o.sweeps),
            torn: self.torn.max(o.torn),
            stale: self.stale.max(o.stale),
            errors: self.errors.max(o.errors),
            duration_count: self.duration_count.max(o.duration_count),
            duration_sum_ns: self.duration_sum_ns.max(o.duration_sum_ns),
            buckets,
        }
    }

    fn to_entries(self) -> [Ledger; 2] {
        [
            Ledger {
                words: [
                    self.sweeps,
                    self.torn,
                    self.stale,
                    self.errors,
                    self.duration_count,
                    self.duration_sum_ns,
                    0,
                    0,
                ],
            },
            Ledger {
                words: self.buckets,
            },
        ]
    }

    fn from_entries(a: &Ledger, b: &Ledger) -> Self {
        let w = a.words;
        Self {
            sweeps: w[0],
            torn: w[1],
            stale: w[2],
            errors: w[3],
            duration_count: w[4],
            duration_sum_ns: w[5],
            buckets: b.words,
        }
    }
}

#[derive(Debug, Error)]
#[error("{what} the counter ledger (pinned map CTX_LEDGER)")]
pub struct LedgerError {
    what: &'static str,
    #[source]
    source: aya::maps::MapError,
}

/// The ledger map and the number of per-CPU slots it has.
pub struct LedgerMap {
    map: Array<MapData, Ledger>,
    slots: u32,
}

impl LedgerMap {
    pub fn new(map: Array<MapData, Ledger>) -> Self {
        let slots = map.len().saturating_sub(GLOBAL_ENTRIES);
        Self { map, slots }
    }

    pub fn read_cpu(&self, cpu: u32) -> Result<[u64; 3], LedgerError> {
        if cpu >= self.slots {
            return Ok([0; 3]);
        }
        let l = self.map.get(&cpu, 0).map_err(|source| LedgerError {
            what: "reading",
            source,
        })?;
        Ok([l.words[0], l.words[1], l.words[2]])
    }

    pub fn write_cpu(&mut self, cpu: u32, verdicts: [u64; 3]) -> Result<(), LedgerError> {
        if cpu >= self.slots {
            return Ok(());
        }
        let mut words = [0u64; 8];
        words[..3].copy_from_slice(&verdicts);
        self.map
            .set(cpu, &Ledger { words }, 0)
            .map_err(|source| LedgerError {
                what: "writing",
                source,
            })
    }

    pub fn read_totals(&self) -> Result<SamplerTotals, LedgerError> {
        let get = |i| {
            self.map.get(&i, 0).map_err(|source| LedgerError {
                what: "reading",
                source,
            })
        };
        Ok(SamplerTotals::from_entries(
            &get(self.slots)?,
            &get(self.slots + 1)?,
        ))
    }

    pub fn write_totals(&mut self, t: SamplerTotals) -> Result<(), LedgerError> {
        for (i, e) in t.to_entries().into_iter().enumerate() {
            self.map
                .set(self.slots + i as u32, &e, 0)
                .map_err(|source| LedgerError {
                    what: "writing",
                    source,
                })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut t = SamplerTotals::default();
        t.observe(20_000); // 20 µs
        t.observe(2_000_000); // 2 ms
        t.observe(9_000_000); // 9 ms: only +Inf
        assert_eq!(t.buckets, [0, 1, 1, 1, 1, 1, 1, 2]);
        assert_eq!(t.duration_count, 3);
        let e = t.to_entries();
        assert_eq!(SamplerTotals::from_entries(&e[0], &e[1]), t);
    }

    #[test]
    fn restore_never_lowers() {
        let a = SamplerTotals {
            sweeps: 10,
            ..Default::default()
        };
        let b = SamplerTotals {
            sweeps: 7,
            errors: 1,
            ..Default::default()
        };
        let m = a.max(b);
        assert_eq!((m.sweeps, m.errors), (10, 1));
    }
}
