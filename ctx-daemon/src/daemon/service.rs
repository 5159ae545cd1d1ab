//! The daemon's sampling loop and process hygiene: housekeeping affinity, dropping
//! capabilities once attached, and systemd notifications.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ctx_common::{Source, Verdict};
use tracing::{info, warn};

use crate::daemon::ledger::LedgerMap;
use crate::daemon::pinwatch::PinHealth;
use crate::host::cpuset::CpuSet;
use crate::host::system::{self, SysRoot};
use crate::model::sweeps::SweepTotals;
use crate::model::{Sample, Samples};
use crate::outputs::metrics::ExportView;
use crate::outputs::serve::Shared;
use crate::session::Session;

/// How often user-space counters are persisted (and, with them, published to scrapes).
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Restricts this process (and threads it starts later) to CPUs outside `nohz_full`, so ctx
/// never competes with the work it watches. Returns the set, or `None` when there is nothing
/// to avoid.
pub fn pin_to_housekeeping(sys: &SysRoot) -> Option<CpuSet> {
    let nohz = sys.nohz_full();
    if nohz.is_empty() {
        return None;
    }
    let online = sys.online().ok()?;
    let keep: CpuSet = online.iter().filter(|c| !nohz.contains(*c)).collect();
    if keep.is_empty() {
        warn!("every online CPU is nohz_full; leaving ctx's affinity alone");
        return None;
    }
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET is bounded by CPU_SETSIZE below.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for c in keep
            .iter()
            .filter(|c| (*c as usize) < libc::CPU_SETSIZE as usize)
        {
            libc::CPU_SET(c as usize, &mut set);
        }
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set)
    };
    if rc != 0 {
        warn!(
            "cannot move ctx to housekeeping CPUs {keep}: {}",
            std::io::Error::last_os_error()
        );
        return None;
    }
    Some(keep)
}

/// Keeps only what sampling needs once the programs are attached: `CAP_BPF` (reading maps is a
/// bpf(2) call, which `kernel.unprivileged_bpf_disabled` reserves for it on kernels before the
/// BPF-token rework) or `CAP_SYS_ADMIN` where the kernel predates `CAP_BPF`.
pub fn drop_capabilities() -> Result<String, caps::errors::CapsError> {
    use caps::{CapSet, Capability};
    let eff = caps::read(None, CapSet::Effective)?;
    let keep_one = if eff.contains(&Capability::CAP_BPF) {
        Capability::CAP_BPF
    } else {
        Capability::CAP_SYS_ADMIN
    };
    let keep: caps::CapsHashSet = [keep_one].into_iter().filter(|c| eff.contains(c)).collect();
    caps::clear(None, CapSet::Ambient)?;
    caps::set(None, CapSet::Effective, &keep)?;
    caps::set(None, CapSet::Permitted, &keep)?;
    caps::set(None, CapSet::Inheritable, &caps::CapsHashSet::new())?;
    Ok(keep
        .iter()
        .map(std::string::ToString::to_string)
        .collect::<Vec<_>>()
        .join(","))
}

/// systemd's notify protocol; a no-op when not started by systemd.
pub fn notify(states: &[sd_notify::NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some()
        && let Err(e) = sd_notify::notify(states)
    {
        warn!("sd_notify: {e}");
    }
}

/// A stop request the sampler waits on: its sleep ends the moment stop is asked, so SIGTERM
/// stops the daemon promptly at any interval (and the final ledger write is not cut off by
/// systemd's stop timeout). The per-sweep check is a plain atomic load; the mutex and condvar
/// serve only the sleep.
#[derive(Default)]
pub struct Stop {
    fast: AtomicBool,
    asked: Mutex<bool>,
    cv: Condvar,
}

impl Stop {
    pub fn ask(&self) {
        self.fast.store(true, Ordering::Release);
        *self.asked.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.cv.notify_all();
    }

    pub fn asked(&self) -> bool {
        self.fast.load(Ordering::Acquire)
    }

    /// Sleeps for `d` or until stop is asked; true when it was.
    pub fn wait(&self, d: Duration) -> bool {
        if self.asked() {
            return true;
        }
        let deadline = Instant::now() + d;
        let mut g = self.asked.lock().unwrap_or_else(PoisonError::into_inner);
        while !*g {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = self
                .cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }
}

/// The daemon's sampling thread: sweeps, persists user-space counters, publishes to scrapes.
pub struct SamplingLoop {
    pub session: Session,
    pub ledger: Option<LedgerMap>,
    pub shared: Arc<Shared>,
    pub interval: Duration,
    pub totals: SweepTotals,
    /// How often to feed systemd's watchdog (`None`: not asked to).
    pub watchdog: Option<Duration>,
    /// Pin repairs, counted by the pin check and persisted here with the other counters.
    pub pins: Option<Arc<PinHealth>>,
}

fn unix_now() -> f64 {
    system::realtime_now_ns() as f64 * 1e-9
}

/// One-line state of the host for `STATUS=`.
pub fn status_line(s: &Sample) -> String {
    let online = s.cpus.iter().filter(|c| c.facts.online).count();
    let needed = s
        .cpus
        .iter()
        .filter(|c| c.status.verdict.is_some_and(Verdict::ipi_needed))
        .count();
    let ct = s
        .cpus
        .iter()
        .filter(|c| c.facts.source == Source::ContextTracking)
        .count();
    format!("sampling {online} CPUs ({ct} via context tracking); {needed} would need an IPI now")
}

impl SamplingLoop {
    /// Restores user-space counters kept across restarts.
    pub fn restore(&mut self) {
        let Some(l) = &self.ledger else { return };
        match l.read_totals() {
            Ok(t) => self.totals = self.totals.max(t),
            Err(e) => warn!("{e}"),
        }
        if let Some(p) = &self.pins {
            p.seed(self.totals.pin_repairs, self.totals.pin_repaired_unix_ns);
        }
        for cpu in self.session.possible.iter() {
            match l.read_cpu(cpu) {
                Ok(v) => self.session.model.seed_verdicts(cpu, v),
                Err(e) => warn!("{e}"),
            }
        }
    }

    /// The view served until the sampler's first publish. It carries the counters read back
    /// from the ledger (call [`Self::restore`] first): an empty view here would serve sweeps,
    /// samples and torn reads at 0 right after a restart, below what scrapes saw before it.
    pub fn initial_view(&self, first: &Sample) -> ExportView {
        ExportView {
            sample: Arc::new(first.clone()),
            verdicts: Arc::new(self.verdicts()),
            totals: self.totals,
            last_sample_unix: unix_now(),
            sampler_up: true,
        }
    }

    fn verdicts(&self) -> BTreeMap<u32, Samples> {
        self.session
            .possible
            .iter()
            .filter_map(|c| self.session.model.verdicts(c).map(|v| (c, v)))
            .collect()
    }

    /// Persists, then returns what was persisted (what scrapes may show).
    fn flush(&mut self) -> (Arc<BTreeMap<u32, Samples>>, SweepTotals) {
        let verdicts = self.verdicts();
        if let Some(p) = &self.pins {
            self.totals.pin_repairs = self.totals.pin_repairs.max(p.repairs());
            self.totals.pin_repaired_unix_ns =
                self.totals.pin_repaired_unix_ns.max(p.repaired_unix_ns());
        }
        if let Some(l) = &mut self.ledger {
            let mut ok = l
                .write_totals(self.totals)
                .map_err(|e| warn!("{e}"))
                .is_ok();
            for (cpu, v) in &verdicts {
                ok &= l.write_cpu(*cpu, *v).map_err(|e| warn!("{e}")).is_ok();
            }
            if !ok {
                warn!("counter ledger not updated; counters may repeat values after a restart");
            }
        }
        (Arc::new(verdicts), self.totals)
    }

    /// One sweep. Returns the sample on success.
    pub fn step(&mut self) -> Option<Sample> {
        match self.session.sample() {
            Ok(s) => {
                self.totals.count(&s);
                Some(s)
            }
            Err(e) => {
                self.totals.errors += 1;
                warn!("sampling failed: {e}");
                None
            }
        }
    }

    /// Samples every `interval` until `stop`, publishing each sweep; user-space counters are
    /// persisted and published once per [`FLUSH_EVERY`].
    pub fn run(mut self, stop: &Stop) {
        let mut persisted = self.flush();
        let mut last_flush = Instant::now();
        let mut last_status = Instant::now();
        let mut last_dog = Instant::now();
        let mut next = Instant::now() + self.interval;
        while !stop.asked() {
            if let Some(s) = self.step() {
                let taken = s.taken_ns;
                let latest = Arc::new(s);
                if last_flush.elapsed() >= FLUSH_EVERY {
                    persisted = self.flush();
                    last_flush = Instant::now();
                }
                self.shared.publish(
                    ExportView {
                        sample: Arc::clone(&latest),
                        verdicts: Arc::clone(&persisted.0),
                        totals: persisted.1,
                        last_sample_unix: unix_now(),
                        sampler_up: true,
                    },
                    taken,
                );
                if let Some(every) = self.watchdog
                    && last_dog.elapsed() >= every
                {
                    notify(&[sd_notify::NotifyState::Watchdog]);
                    last_dog = Instant::now();
                }
                if last_status.elapsed() >= Duration::from_secs(10) {
                    let line = status_line(&latest);
                    notify(&[sd_notify::NotifyState::Status(&line)]);
                    last_status = Instant::now();
                }
            }
            let now = Instant::now();
            let stopped = if next > now {
                let s = stop.wait(next - now);
                next += self.interval;
                s
            } else {
                // Fell behind (sweeps slower than the interval, or the process was stopped):
                // rest a full interval rather than sweep back to back, so a starved
                // housekeeping CPU still has time for scrapes, and do not try to catch up.
                let s = stop.wait(self.interval);
                next = Instant::now() + self.interval;
                s
            };
            if stopped {
                break;
            }
        }
        self.flush();
        info!(sweeps = self.totals.sweeps, "sampler stopped");
    }
}

/// The time after which a sweep counts as stale: ten intervals, and at least a second.
pub fn max_age(interval: Duration) -> u64 {
    u64::try_from(interval.as_nanos().saturating_mul(10))
        .unwrap_or(u64::MAX)
        .max(1_000_000_000)
}

#[cfg(test)]
mod stop_tests {
    use super::*;

    #[test]
    fn stop_cuts_a_long_wait_short() {
        let stop = Arc::new(Stop::default());
        let s = Arc::clone(&stop);
        let t = std::thread::spawn(move || {
            let t0 = Instant::now();
            (s.wait(Duration::from_secs(60)), t0.elapsed())
        });
        std::thread::sleep(Duration::from_millis(20));
        stop.ask();
        let (asked, took) = t.join().unwrap();
        assert!(asked && took < Duration::from_secs(5), "{took:?}");
        assert!(!Stop::default().wait(Duration::from_millis(1)));
    }
}
