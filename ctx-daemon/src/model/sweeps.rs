//! The sampler's own totals: sweeps, torn and stale copies, failures, and how long sweeps
//! take.

use crate::model::Sample;

/// Upper bounds of the sweep-duration histogram's buckets, in seconds.
pub const DURATION_BUCKETS: [f64; 8] = [10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 5e-3];

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepTotals {
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
    /// Times the pins were found missing or mismatched and repaired (at start or while
    /// running), and when that last happened (`CLOCK_REALTIME` ns, 0: never). Kept with the
    /// other counters so that they, too, survive restarts.
    pub pin_repairs: u64,
    pub pin_repaired_unix_ns: u64,
}

impl SweepTotals {
    /// Counts one sweep that succeeded.
    pub fn count(&mut self, s: &Sample) {
        self.sweeps += 1;
        self.torn += u64::from(s.torn);
        self.stale += u64::from(s.stale);
        self.observe(s.sweep_ns);
    }

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
    #[must_use]
    pub fn max(self, o: Self) -> Self {
        Self {
            sweeps: self.sweeps.max(o.sweeps),
            torn: self.torn.max(o.torn),
            stale: self.stale.max(o.stale),
            errors: self.errors.max(o.errors),
            duration_count: self.duration_count.max(o.duration_count),
            duration_sum_ns: self.duration_sum_ns.max(o.duration_sum_ns),
            buckets: std::array::from_fn(|i| self.buckets[i].max(o.buckets[i])),
            pin_repairs: self.pin_repairs.max(o.pin_repairs),
            pin_repaired_unix_ns: self.pin_repaired_unix_ns.max(o.pin_repaired_unix_ns),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut t = SweepTotals::default();
        t.observe(20_000); // 20 µs
        t.observe(2_000_000); // 2 ms
        t.observe(9_000_000); // 9 ms: only +Inf
        assert_eq!(t.buckets, [0, 1, 1, 1, 1, 1, 1, 2]);
        assert_eq!(t.duration_count, 3);
    }

    #[test]
    fn restore_never_lowers() {
        let a = SweepTotals {
            sweeps: 10,
            ..Default::default()
        };
        let b = SweepTotals {
            sweeps: 7,
            errors: 1,
            ..Default::default()
        };
        let m = a.max(b);
        assert_eq!((m.sweeps, m.errors), (10, 1));
    }
}
