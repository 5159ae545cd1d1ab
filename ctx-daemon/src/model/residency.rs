//! Residency that never goes back: the record's readings, with their small dips absorbed and
//! impossible jumps dropped.

use ctx_common::Residency;

/// Residency readings may dip by a few ns (an NMI's time moves out of the state it interrupted
/// only once the NMI ends); a dip larger than this means the maps were recreated.
const RESET_NS: u64 = 1_000_000_000;
/// Slack on the "residency cannot grow faster than time" cap, for clock reads around a copy.
pub(crate) const GROWTH_SLACK_NS: u64 = 2_000_000;

/// One CPU's residency as the model exports it.
#[derive(Clone, Debug, Default)]
pub struct ResidencyTrack {
    /// The highest reading seen per state (user, kernel, idle, nmi).
    raw: [u64; 4],
    read_ns: u64,
    exported: [u64; 4],
    seen: bool,
}

impl ResidencyTrack {
    /// Folds a reading taken at `read_ns` (`CLOCK_MONOTONIC`); a stale copy changes nothing.
    pub fn fold(&mut self, reading: Residency, read_ns: u64, stale: bool) -> Residency {
        let raw = reading.as_array();
        if !self.seen {
            // First sight: start from the kernel's totals, so a restarted daemon continues
            // where the previous one stood.
            self.exported = raw;
            self.raw = raw;
            self.read_ns = read_ns;
            self.seen = true;
        } else if !stale {
            let elapsed = read_ns.saturating_sub(self.read_ns) + GROWTH_SLACK_NS;
            let mut d = [0u64; 4];
            for ((d, raw), seen) in d.iter_mut().zip(raw).zip(&mut self.raw) {
                if raw + RESET_NS < *seen {
                    *seen = raw;
                }
                *d = raw.saturating_sub(*seen);
                *seen = (*seen).max(raw);
            }
            // A CPU's residency cannot grow faster than time; a larger jump is an interval
            // the CPU did not spend (hotplug without the cpuhp hook): drop the excess.
            let total: u64 = d.iter().sum();
            if total > elapsed {
                for x in &mut d {
                    // At most `elapsed`, so the quotient fits.
                    *x = u64::try_from(u128::from(*x) * u128::from(elapsed) / u128::from(total))
                        .unwrap_or(u64::MAX);
                }
            }
            for (e, x) in self.exported.iter_mut().zip(d) {
                *e += x;
            }
            self.read_ns = read_ns;
        }
        let [user, kernel, idle, nmi] = self.exported;
        Residency {
            user,
            kernel,
            idle,
            nmi,
        }
    }
}
