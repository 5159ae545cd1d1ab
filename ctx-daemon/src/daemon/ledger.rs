//! Counters that only user space knows (the sampler's verdicts and its own totals), kept in a
//! pinned array map so that a restarted daemon continues them: Prometheus must never see one
//! of ctx's counters go backwards.
//!
//! Layout of `CTX_LEDGER`: entry `cpu` holds that CPU's sample counts by verdict in words 0-2;
//! entry `n` (the number of CPU slots) holds the sampler totals; entry `n + 1` holds the
//! sample-duration histogram's buckets. Words 6-7 of the totals were 0 before pin repairs were
//! counted there, which reads as "none yet".

use aya::maps::{Array, MapData};
use ctx_common::programs::MAP_LEDGER;
use ctx_common::record::{LEDGER_GLOBAL_ENTRIES, Ledger};
use thiserror::Error;

use crate::model::Samples;
use crate::model::sweeps::SweepTotals;

/// The sweep totals in the two global entries.
fn to_entries(t: SweepTotals) -> [Ledger; 2] {
    [
        Ledger {
            words: [
                t.sweeps,
                t.torn,
                t.stale,
                t.errors,
                t.duration_count,
                t.duration_sum_ns,
                t.pin_repairs,
                t.pin_repaired_unix_ns,
            ],
        },
        Ledger { words: t.buckets },
    ]
}

fn from_entries(a: &Ledger, b: &Ledger) -> SweepTotals {
    let w = a.words;
    SweepTotals {
        sweeps: w[0],
        torn: w[1],
        stale: w[2],
        errors: w[3],
        duration_count: w[4],
        duration_sum_ns: w[5],
        buckets: b.words,
        pin_repairs: w[6],
        pin_repaired_unix_ns: w[7],
    }
}

#[derive(Debug, Error)]
#[error(
    "{what} the counter ledger (map {MAP_LEDGER}) failed: counters only user space keeps may \
     repeat values after a restart; `ctx-daemon --detach` and a new start recreate it"
)]
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
        let slots = map.len().saturating_sub(LEDGER_GLOBAL_ENTRIES);
        Self { map, slots }
    }

    pub fn read_cpu(&self, cpu: u32) -> Result<Samples, LedgerError> {
        if cpu >= self.slots {
            return Ok(Samples::default());
        }
        let l = self.map.get(&cpu, 0).map_err(|source| LedgerError {
            what: "reading",
            source,
        })?;
        Ok(Samples::from_array([l.words[0], l.words[1], l.words[2]]))
    }

    pub fn write_cpu(&mut self, cpu: u32, verdicts: Samples) -> Result<(), LedgerError> {
        if cpu >= self.slots {
            return Ok(());
        }
        let mut words = [0u64; 8];
        words[..3].copy_from_slice(&verdicts.as_array());
        self.map
            .set(cpu, &Ledger { words }, 0)
            .map_err(|source| LedgerError {
                what: "writing",
                source,
            })
    }

    pub fn read_totals(&self) -> Result<SweepTotals, LedgerError> {
        let get = |i| {
            self.map.get(&i, 0).map_err(|source| LedgerError {
                what: "reading",
                source,
            })
        };
        Ok(from_entries(&get(self.slots)?, &get(self.slots + 1)?))
    }

    pub fn write_totals(&mut self, t: SweepTotals) -> Result<(), LedgerError> {
        for (i, e) in (self.slots..).zip(to_entries(t)) {
            self.map.set(i, &e, 0).map_err(|source| LedgerError {
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
    fn totals_round_trip_through_the_entries() {
        let mut t = SweepTotals {
            sweeps: 7,
            errors: 1,
            pin_repairs: 2,
            pin_repaired_unix_ns: 1_700_000_000_000_000_000,
            ..Default::default()
        };
        t.observe(20_000);
        let e = to_entries(t);
        assert_eq!(from_entries(&e[0], &e[1]), t);
    }

    #[test]
    fn errors_name_the_map_and_print_each_cause_once() {
        let e = LedgerError {
            what: "writing",
            source: aya::maps::MapError::KeyNotFound,
        };
        let shown = crate::test_util::printed_once(e);
        assert!(
            shown.contains("CTX_LEDGER") && shown.contains("--detach"),
            "{shown}"
        );
    }
}
