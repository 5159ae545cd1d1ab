//! What ctxtop shows: one row per CPU from the last completed interval, plus the view's
//! settings (sort, filter, pause, scroll, interval). Updated from samples and key actions;
//! the renderer only reads it.

use std::cmp::Ordering;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use ctx_common::Source;

use crate::host::cpuset::CpuSet;
use crate::model::{Counts, CpuInterval, Facts, Interval, Sample, Shares, Totals};
use crate::tui::keys::Action;

/// Kernel-share points kept per CPU: the widest sparkline the view draws.
pub const HISTORY: usize = 60;

/// Interval steps for `+`/`-`. A step shorter than the sample interval is skipped: an interval
/// needs at least two samples.
pub const INTERVAL_STEPS: [Duration; 9] = [
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(30),
    Duration::from_secs(60),
];

/// Rates over the last interval, per second: the view's columns.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    pub kernel_entries: f64,
    pub nmis: f64,
    pub ipis: f64,
    /// IPIs that arrived while the CPU was in user or idle.
    pub avoidable_ipis: f64,
}

impl Rates {
    /// `None` for an empty interval (before the first one completes).
    fn of(c: &Counts, per_second: impl Fn(u64) -> Option<f64>) -> Option<Self> {
        Some(Self {
            kernel_entries: per_second(c.kernel_entries)?,
            nmis: per_second(c.nmis)?,
            ipis: per_second(c.ipis())?,
            avoidable_ipis: per_second(c.avoidable_ipis())?,
        })
    }
}

/// One CPU in the view: the model's interval, plus the kernel share of past intervals.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuRow {
    /// The last completed interval; before the first, the CPU as one sample shows it.
    pub iv: CpuInterval,
    /// Kernel share of past intervals, oldest first; `None` for an interval without data.
    pub kernel_hist: VecDeque<Option<f64>>,
}

impl CpuRow {
    pub fn cpu(&self) -> u32 {
        self.iv.facts.cpu
    }

    /// Shares of the interval; offline CPUs show none.
    pub fn pct(&self) -> Option<Shares> {
        self.iv.pct().filter(|_| self.iv.facts.online)
    }

    /// Per second over the interval; offline CPUs show none.
    pub fn rates(&self) -> Option<Rates> {
        if !self.iv.facts.online {
            return None;
        }
        Rates::of(&self.iv.counts, |n| self.iv.per_second(n))
    }

    fn kernel_pct(&self) -> Option<f64> {
        self.pct().map(|p| p.kernel)
    }
}

/// The ALL row over the rows shown: the model's totals, and the trend averaged.
#[derive(Clone, Debug, PartialEq)]
pub struct AllRow {
    pub totals: Totals,
    pub kernel_hist: Vec<Option<f64>>,
}

impl AllRow {
    pub fn rates(&self) -> Option<Rates> {
        Rates::of(&self.totals.counts, |n| self.totals.per_second(n))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortKey {
    Cpu,
    /// Kernel share, highest first: the CPUs being disturbed.
    Kernel,
    Ipis,
    Avoidable,
    /// Share of samples that needed an IPI.
    IpiNeeded,
    KernelEntries,
}

impl SortKey {
    pub const ALL: [SortKey; 6] = [
        Self::Cpu,
        Self::Kernel,
        Self::Ipis,
        Self::Avoidable,
        Self::IpiNeeded,
        Self::KernelEntries,
    ];

    #[must_use]
    pub fn next(self) -> Self {
        let i = Self::ALL.iter().position(|k| *k == self).unwrap_or(0);
        Self::ALL[(i + 1) % Self::ALL.len()]
    }

    /// As the column is headed.
    pub fn label(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Kernel => "%krn",
            Self::Ipis => "ipi/s",
            Self::Avoidable => "avoid/s",
            Self::IpiNeeded => "need%",
            Self::KernelEntries => "entry/s",
        }
    }

    fn value(self, r: &CpuRow) -> Option<f64> {
        match self {
            Self::Cpu => Some(f64::from(r.cpu())),
            Self::Kernel => r.kernel_pct(),
            Self::Ipis => r.rates().map(|x| x.ipis),
            Self::Avoidable => r.rates().map(|x| x.avoidable_ipis),
            Self::IpiNeeded => r.iv.need_pct(),
            Self::KernelEntries => r.rates().map(|x| x.kernel_entries),
        }
    }

    /// Highest first for every key but the CPU id; rows without data go last; ties keep CPU
    /// order so that the view does not shuffle between refreshes.
    fn cmp(self, a: &CpuRow, b: &CpuRow) -> Ordering {
        if self == Self::Cpu {
            return a.cpu().cmp(&b.cpu());
        }
        let by_value = match (self.value(a), self.value(b)) {
            (Some(x), Some(y)) => y.total_cmp(&x),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        };
        by_value.then(a.cpu().cmp(&b.cpu()))
    }
}

/// Whether the loop goes on after an action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Quit,
}

#[derive(Clone, Debug)]
pub struct State {
    pub facts: Facts,
    pub interval: Duration,
    pub sample_interval: Duration,
    /// Every possible CPU, by id.
    pub rows: Vec<CpuRow>,
    /// `--cpus`: never show others.
    pub only: Option<CpuSet>,
    pub sort: SortKey,
    pub isolated_only: bool,
    pub paused: bool,
    pub help: bool,
    /// Index of the first row shown, among the rows that pass the filter.
    pub scroll: usize,
    /// Intervals shown so far; stands still while paused.
    pub refreshes: u64,
    /// Samples taken in the last interval shown.
    pub samples: u64,
    /// Wall time of the last sweep over the per-CPU map: what one sample costs.
    pub sweep_ns: u64,
}

impl State {
    pub fn new(
        facts: Facts,
        interval: Duration,
        sample_interval: Duration,
        only: Option<CpuSet>,
    ) -> Self {
        Self {
            facts,
            interval,
            sample_interval,
            rows: Vec::new(),
            only,
            sort: SortKey::Cpu,
            isolated_only: false,
            paused: false,
            help: false,
            scroll: 0,
            refreshes: 0,
            samples: 0,
            sweep_ns: 0,
        }
    }

    /// Shows the CPUs and their state before the first interval completes.
    pub fn show_sample(&mut self, s: &Sample) {
        self.rows = s
            .cpus
            .iter()
            .map(|c| CpuRow {
                iv: CpuInterval::start(c),
                kernel_hist: VecDeque::new(),
            })
            .collect();
        self.sweep_ns = s.sweep_ns;
    }

    /// Takes in one completed interval, from its first to its last sample.
    pub fn push_interval(&mut self, first: &Sample, last: &Sample) {
        let mut old: HashMap<u32, VecDeque<Option<f64>>> = std::mem::take(&mut self.rows)
            .into_iter()
            .map(|r| (r.cpu(), r.kernel_hist))
            .collect();
        let interval = Interval::between(first, last);
        self.samples = interval.samples();
        self.rows = interval
            .cpus
            .into_iter()
            .map(|iv| {
                let mut row = CpuRow {
                    iv,
                    kernel_hist: old.remove(&iv.facts.cpu).unwrap_or_default(),
                };
                if row.kernel_hist.len() == HISTORY {
                    row.kernel_hist.pop_front();
                }
                row.kernel_hist.push_back(row.kernel_pct());
                row
            })
            .collect();
        self.sweep_ns = last.sweep_ns;
        self.refreshes += 1;
    }

    /// The rows that pass `--cpus` and the isolated filter, in sort order.
    pub fn visible(&self) -> Vec<&CpuRow> {
        let mut v: Vec<&CpuRow> = self
            .rows
            .iter()
            .filter(|r| self.only.as_ref().is_none_or(|o| o.contains(r.cpu())))
            .filter(|r| !self.isolated_only || r.iv.facts.isolated_any())
            .collect();
        v.sort_by(|a, b| self.sort.cmp(a, b));
        v
    }

    /// CPUs by the hook that drives them, when more than one hook does (online CPUs only).
    pub fn sources(&self) -> Vec<(Source, CpuSet)> {
        let mut out: Vec<(Source, CpuSet)> = Vec::new();
        for f in self.rows.iter().map(|r| r.iv.facts).filter(|f| f.online) {
            match out.iter_mut().find(|(s, _)| *s == f.source) {
                Some((_, set)) => set.insert(f.cpu),
                None => out.push((f.source, std::iter::once(f.cpu).collect())),
            }
        }
        out
    }

    /// Carries out a key action. `page` is how many rows the screen shows, for scrolling.
    pub fn apply(&mut self, action: Action, page: usize) -> Flow {
        if action == Action::Quit {
            return Flow::Quit;
        }
        if self.help {
            // Any key closes the help; it does nothing else, so the key that was meant to
            // close it cannot also change the view.
            self.help = false;
            return Flow::Continue;
        }
        let page = page.max(1);
        match action {
            Action::Quit => return Flow::Quit,
            Action::CycleSort => {
                self.sort = self.sort.next();
                self.scroll = 0;
            }
            Action::ToggleIsolated => {
                self.isolated_only = !self.isolated_only;
                self.scroll = 0;
            }
            Action::TogglePause => self.paused = !self.paused,
            Action::Longer => self.interval = self.longer_interval(),
            Action::Shorter => self.interval = self.shorter_interval(),
            Action::ToggleHelp => self.help = true,
            Action::Back | Action::Other => {}
            Action::Up => self.scroll = self.scroll.saturating_sub(1),
            Action::Down => self.scroll += 1,
            Action::PageUp => self.scroll = self.scroll.saturating_sub(page),
            Action::PageDown => self.scroll += page,
            Action::Top => self.scroll = 0,
            Action::Bottom => self.scroll = usize::MAX,
        }
        self.clamp_scroll(page);
        Flow::Continue
    }

    /// Keeps the last page full: scrolling stops when the last row reaches the bottom.
    pub fn clamp_scroll(&mut self, page: usize) {
        let n = self.visible().len();
        self.scroll = self.scroll.min(n.saturating_sub(page.max(1)));
    }

    fn longer_interval(&self) -> Duration {
        INTERVAL_STEPS
            .iter()
            .copied()
            .find(|s| *s > self.interval && *s >= self.sample_interval)
            .unwrap_or(self.interval)
    }

    fn shorter_interval(&self) -> Duration {
        INTERVAL_STEPS
            .iter()
            .rev()
            .copied()
            .find(|s| *s < self.interval && *s >= self.sample_interval * 2)
            .unwrap_or(self.interval)
    }
}

/// The ALL row over `rows`.
pub fn all_row(rows: &[&CpuRow]) -> AllRow {
    // Histories end together (every row gets a point per interval); average them aligned at
    // the newest point.
    let len = rows.iter().map(|r| r.kernel_hist.len()).max().unwrap_or(0);
    let kernel_hist = (0..len)
        .map(|back| {
            let pts: Vec<f64> = rows
                .iter()
                .filter_map(|r| {
                    let n = r.kernel_hist.len();
                    let i = (n + back).checked_sub(len)?;
                    r.kernel_hist.get(i).copied().flatten()
                })
                .collect();
            (!pts.is_empty()).then(|| pts.iter().sum::<f64>() / pts.len() as f64)
        })
        .collect();
    AllRow {
        totals: Totals::of(rows.iter().map(|r| &r.iv)),
        kernel_hist,
    }
}

#[cfg(test)]
mod tests {
    use ctx_common::{Arrival, CpuState, IrqKind, Residency, Verdict};

    use super::*;
    use crate::model::{CpuFacts, CpuStatus, Samples};

    /// A CPU over one second: `kernel` % kernel (the rest user), `ipis` reschedule IPIs
    /// in kernel, ten kernel entries, one sample in ten needing an IPI.
    fn row(cpu: u32, kernel: Option<u64>, ipis: u64, nohz: bool) -> CpuRow {
        let mut counts = Counts {
            residency: kernel.map_or_else(Residency::default, |k| Residency {
                user: (100 - k) * 10_000_000,
                kernel: k * 10_000_000,
                ..Residency::default()
            }),
            kernel_entries: 10,
            samples: Samples::from_array([1, 9, 0]),
            ..Counts::default()
        };
        counts.irqs.set(IrqKind::Reschedule, Arrival::Kernel, ipis);
        CpuRow {
            iv: CpuInterval {
                facts: CpuFacts {
                    cpu,
                    online: true,
                    nohz_full: nohz,
                    isolated: false,
                    source: Source::Syscalls,
                },
                status: CpuStatus {
                    state: Some(CpuState::User),
                    verdict: Some(Verdict::Deferrable),
                    counter: 2,
                    stale: false,
                },
                dt_ns: 1_000_000_000,
                counts,
            },
            kernel_hist: kernel.map(|k| k as f64).into_iter().map(Some).collect(),
        }
    }

    fn state(rows: Vec<CpuRow>) -> State {
        let mut s = State::new(
            Facts::default(),
            Duration::from_secs(1),
            Duration::from_millis(10),
            None,
        );
        s.rows = rows;
        s
    }

    fn ids(s: &State) -> Vec<u32> {
        s.visible().iter().map(|r| r.cpu()).collect()
    }

    #[test]
    fn sort_cycles_through_every_key_and_back() {
        let mut k = SortKey::Cpu;
        for _ in 0..SortKey::ALL.len() {
            k = k.next();
        }
        assert_eq!(k, SortKey::Cpu);
    }

    #[test]
    fn sort_by_kernel_puts_busiest_first_and_no_data_last() {
        let mut s = state(vec![
            row(0, Some(5), 1, false),
            row(1, None, 0, true),
            row(2, Some(50), 3, true),
            row(3, Some(5), 2, false),
        ]);
        assert_eq!(ids(&s), [0, 1, 2, 3]);
        s.apply(Action::CycleSort, 10);
        assert_eq!(s.sort, SortKey::Kernel);
        assert_eq!(ids(&s), [2, 0, 3, 1], "ties keep CPU order");
        s.apply(Action::CycleSort, 10);
        assert_eq!(s.sort, SortKey::Ipis);
        assert_eq!(ids(&s), [2, 3, 0, 1]);
    }

    #[test]
    fn isolated_filter_and_cpu_list_combine() {
        let mut s = state(vec![
            row(0, Some(1), 0, false),
            row(1, Some(1), 0, true),
            row(2, Some(1), 0, true),
        ]);
        s.rows[0].iv.facts.isolated = false;
        s.apply(Action::ToggleIsolated, 10);
        assert_eq!(ids(&s), [1, 2]);
        s.only = Some("0-1".parse().unwrap());
        assert_eq!(ids(&s), [1]);
        s.apply(Action::ToggleIsolated, 10);
        assert_eq!(ids(&s), [0, 1]);
    }

    #[test]
    fn scrolling_stops_at_the_last_full_page() {
        let mut s = state((0..10).map(|c| row(c, Some(1), 0, false)).collect());
        s.apply(Action::PageDown, 4);
        assert_eq!(s.scroll, 4);
        s.apply(Action::PageDown, 4);
        assert_eq!(s.scroll, 6, "rows 6-9 fill the last page");
        s.apply(Action::Down, 4);
        assert_eq!(s.scroll, 6);
        s.apply(Action::Up, 4);
        assert_eq!(s.scroll, 5);
        s.apply(Action::Top, 4);
        assert_eq!(s.scroll, 0);
        s.apply(Action::Bottom, 4);
        assert_eq!(s.scroll, 6);
        s.apply(Action::CycleSort, 4);
        assert_eq!(s.scroll, 0, "a new order starts at the top");
        s.apply(Action::Bottom, 20);
        assert_eq!(s.scroll, 0, "everything fits");
    }

    #[test]
    fn interval_steps_respect_the_sample_interval() {
        let mut s = state(vec![]);
        s.apply(Action::Longer, 1);
        assert_eq!(s.interval, Duration::from_secs(2));
        s.apply(Action::Shorter, 1);
        s.apply(Action::Shorter, 1);
        assert_eq!(s.interval, Duration::from_millis(500));
        for _ in 0..10 {
            s.apply(Action::Shorter, 1);
        }
        assert_eq!(s.interval, Duration::from_millis(100));
        s.sample_interval = Duration::from_millis(100);
        s.interval = Duration::from_secs(1);
        for _ in 0..10 {
            s.apply(Action::Shorter, 1);
        }
        assert_eq!(
            s.interval,
            Duration::from_millis(250),
            "two samples at least"
        );
        for _ in 0..20 {
            s.apply(Action::Longer, 1);
        }
        assert_eq!(s.interval, Duration::from_secs(60));
        // An interval between steps moves to the neighbouring step.
        s.interval = Duration::from_millis(1500);
        s.apply(Action::Longer, 1);
        assert_eq!(s.interval, Duration::from_secs(2));
    }

    #[test]
    fn help_swallows_the_key_that_closes_it_but_not_quit() {
        let mut s = state(vec![row(0, Some(1), 0, true)]);
        s.apply(Action::ToggleHelp, 1);
        assert!(s.help);
        s.apply(Action::ToggleIsolated, 1);
        assert!(!s.help);
        assert!(!s.isolated_only);
        s.apply(Action::ToggleHelp, 1);
        s.apply(Action::Other, 1);
        assert!(!s.help, "any key closes the help");
        s.apply(Action::ToggleHelp, 1);
        assert_eq!(
            s.apply(Action::Quit, 1),
            Flow::Quit,
            "q quits even from the help"
        );
        assert_eq!(s.apply(Action::TogglePause, 1), Flow::Continue);
        assert!(!s.help && !s.paused);
        s.apply(Action::TogglePause, 1);
        assert!(s.paused);
    }

    #[test]
    fn all_row_averages_shares_sums_rates_and_aligns_trends() {
        let a = row(0, Some(10), 4, false);
        let mut b = row(1, Some(30), 2, false);
        b.kernel_hist = [Some(0.0), Some(30.0)].into_iter().collect();
        let c = row(2, None, 0, false);
        let t = all_row(&[&a, &b, &c]);
        assert_eq!(t.totals.online, 3);
        assert_eq!(t.totals.pct.map(|p| p.kernel), Some(20.0));
        assert_eq!(t.rates().map(|r| r.ipis), Some(6.0));
        assert_eq!(t.totals.need_pct(), Some(10.0));
        assert_eq!(t.kernel_hist, [Some(0.0), Some(20.0)]);
        let empty = all_row(&[]);
        assert_eq!(empty.totals.pct, None);
        assert_eq!(empty.totals.need_pct(), None);
        assert_eq!(empty.rates(), None);
    }

    #[test]
    fn sources_are_grouped() {
        let mut s = state(vec![
            row(0, None, 0, false),
            row(1, None, 0, true),
            row(2, None, 0, true),
        ]);
        assert_eq!(s.sources().len(), 1);
        s.rows[1].iv.facts.source = Source::ContextTracking;
        s.rows[2].iv.facts.source = Source::ContextTracking;
        let src = s.sources();
        assert_eq!(src[1].0, Source::ContextTracking);
        assert_eq!(src[1].1.to_string(), "1-2");
    }
}
