//! The sampler's verdicts: at each sample, whether a kernel change would need an IPI to reach
//! the CPU, and how many samples found each verdict.

use ctx_common::{CpuState, Verdict};

use crate::model::counts::Samples;

/// One CPU's verdict history.
#[derive(Clone, Debug, Default)]
pub struct VerdictTrack {
    /// Counter at the previous sample while online; `None` after a gap.
    counter: Option<u64>,
    samples: Samples,
}

impl VerdictTrack {
    /// The verdict at this sample. Only fresh copies of online CPUs count: an earlier copy
    /// (`old_copy`, the sweep kept catching the CPU mid-write) shows the verdict of its own
    /// state, without comparing counters.
    pub fn fold(
        &mut self,
        online: bool,
        state: Option<CpuState>,
        counter: u64,
        old_copy: bool,
    ) -> Option<Verdict> {
        match (online, state) {
            (true, Some(s)) if !old_copy => {
                let v = Verdict::of(self.counter, counter, s);
                self.samples.count(v);
                self.counter = Some(counter);
                Some(v)
            }
            (true, Some(s)) => Some(Verdict::of(None, counter, s)),
            _ => {
                self.counter = None;
                None
            }
        }
    }

    pub fn samples(&self) -> Samples {
        self.samples
    }

    /// Starts from counts kept across restarts, never below what this process counted.
    pub fn seed(&mut self, kept: Samples) {
        self.samples = self.samples.max(kept);
    }
}
