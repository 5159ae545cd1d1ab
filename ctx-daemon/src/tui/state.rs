//! What ctxtop shows: one row per CPU from the last completed interval, plus the view's
//! settings (sort, filter, pause, scroll, interval). Updated from samples and key actions;
//! the renderer only reads it.

use std::cmp::Ordering;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use ctx_common::{CpuState, Verdict};

use crate::loader::Origin;
use crate::model::{CpuView, Sample, SourceLabel};
use crate::report;
use crate::system::CpuSet;
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

/// Facts about the host and the probes, fixed for the session.
#[derive(Clone, Debug, Default)]
pub struct Info {
    pub version: &'static str,
    pub host: String,
    pub kernel: String,
    /// Whether ctxtop reads a daemon's pinned maps or loaded its own programs.
    pub origin: Option<Origin>,
    pub nohz_full: CpuSet,
    pub isolated: CpuSet,
    /// Hooks that are not attached, with why (`context_tracking:user_enter absent`).
    pub hooks_missing: Vec<String>,
}

/// Rates over the last interval, per second.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    pub kernel_entries: f64,
    pub nmis: f64,
    pub ipis: f64,
    /// IPIs that arrived while the CPU was in user or idle.
    pub avoidable_ipis: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CpuRow {
    pub cpu: u32,
    pub online: bool,
    pub nohz_full: bool,
    pub isolated: bool,
    pub source: SourceLabel,
    /// At the interval's last sample; `None` before the CPU's first event.
    pub state: Option<CpuState>,
    pub verdict: Option<Verdict>,
    /// user, kernel, idle, nmi % of the interval; `None` before the first interval or when
    /// the CPU accumulated no time.
    pub pct: Option<[f64; 4]>,
    pub rates: Option<Rates>,
    /// Samples in the interval by `Verdict as usize`.
    pub samples: [u64; 3],
    /// Kernel share of past intervals, oldest first; `None` for an interval without data.
    pub kernel_hist: VecDeque<Option<f64>>,
}

impl CpuRow {
    /// The row as one sample shows it: facts and state, no interval figures yet.
    fn at_sample(v: &CpuView) -> Self {
        Self {
            cpu: v.cpu,
            online: v.online,
            nohz_full: v.nohz_full,
            isolated: v.isolated,
            source: v.source,
            state: v.state,
            verdict: v.verdict,
            pct: None,
            rates: None,
            samples: [0; 3],
            kernel_hist: VecDeque::new(),
        }
    }
}

impl CpuRow {
    /// nohz_full or isolcpus: the CPUs an operator isolated.
    pub fn isolated_any(&self) -> bool {
        self.nohz_full || self.isolated
    }

    /// Share of the interval's samples that found the CPU needing an IPI.
    pub fn need_pct(&self) -> Option<f64> {
        share(
            self.samples[Verdict::IpiNeeded as usize],
            self.samples.iter().sum(),
        )
    }

    fn kernel_pct(&self) -> Option<f64> {
        self.pct.map(|p| p[1])
    }
}

fn share(part: u64, total: u64) -> Option<f64> {
    (total > 0).then(|| part as f64 * 100.0 / total as f64)
}

/// The ALL row: percentages averaged over the rows shown, counts summed.
#[derive(Clone, Debug, PartialEq)]
pub struct Totals {
    pub cpus: usize,
    pub pct: Option<[f64; 4]>,
    pub rates: Option<Rates>,
    pub need_pct: Option<f64>,
    pub kernel_hist: Vec<Option<f64>>,
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
            Self::Cpu => Some(f64::from(r.cpu)),
            Self::Kernel => r.kernel_pct(),
            Self::Ipis => r.rates.map(|x| x.ipis),
            Self::Avoidable => r.rates.map(|x| x.avoidable_ipis),
            Self::IpiNeeded => r.need_pct(),
            Self::KernelEntries => r.rates.map(|x| x.kernel_entries),
        }
    }

    /// Highest first for every key but the CPU id; rows without data go last; ties keep CPU
    /// order so that the view does not shuffle between refreshes.
    fn cmp(self, a: &CpuRow, b: &CpuRow) -> Ordering {
        if self == Self::Cpu {
            return a.cpu.cmp(&b.cpu);
        }
        let by_value = match (self.value(a), self.value(b)) {
            (Some(x), Some(y)) => y.total_cmp(&x),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        };
        by_value.then(a.cpu.cmp(&b.cpu))
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
    pub info: Info,
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
        info: Info,
        interval: Duration,
        sample_interval: Duration,
        only: Option<CpuSet>,
    ) -> Self {
        Self {
            info,
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
        self.rows = s.cpus.iter().map(CpuRow::at_sample).collect();
        self.sweep_ns = s.sweep_ns;
    }

    /// Takes in one completed interval, from its first to its last sample.
    pub fn push_interval(&mut self, first: &Sample, last: &Sample) {
        let mut old: HashMap<u32, VecDeque<Option<f64>>> = std::mem::take(&mut self.rows)
            .into_iter()
            .map(|r| (r.cpu, r.kernel_hist))
            .collect();
        let mut rows = Vec::with_capacity(last.cpus.len());
        for (v, iv) in report::intervals(first, last) {
            let mut hist = old.remove(&v.cpu).unwrap_or_default();
            let pct = if v.online { iv.pct } else { None };
            if hist.len() == HISTORY {
                hist.pop_front();
            }
            hist.push_back(pct.map(|p| p[1]));
            rows.push(CpuRow {
                pct,
                rates: v.online.then(|| Rates {
                    kernel_entries: iv.per_sec(iv.kernel_entries),
                    nmis: iv.per_sec(iv.nmis),
                    ipis: iv.per_sec(iv.ipis),
                    avoidable_ipis: iv.per_sec(iv.avoidable_ipis),
                }),
                samples: iv.verdicts,
                kernel_hist: hist,
                ..CpuRow::at_sample(&v)
            });
        }
        self.rows = rows;
        self.samples = self
            .rows
            .iter()
            .map(|r| r.samples.iter().sum::<u64>())
            .max()
            .unwrap_or(0);
        self.sweep_ns = last.sweep_ns;
        self.refreshes += 1;
    }

    /// The rows that pass `--cpus` and the isolated filter, in sort order.
    pub fn visible(&self) -> Vec<&CpuRow> {
        let mut v: Vec<&CpuRow> = self
            .rows
            .iter()
            .filter(|r| self.only.as_ref().is_none_or(|o| o.contains(r.cpu)))
            .filter(|r| !self.isolated_only || r.isolated_any())
            .collect();
        v.sort_by(|a, b| self.sort.cmp(a, b));
        v
    }

    /// CPUs by the hook that drives them, when more than one hook does (online CPUs only).
    pub fn sources(&self) -> Vec<(SourceLabel, CpuSet)> {
        let mut out: Vec<(SourceLabel, CpuSet)> = Vec::new();
        for r in self.rows.iter().filter(|r| r.online) {
            match out.iter_mut().find(|(s, _)| *s == r.source) {
                Some((_, set)) => set.insert(r.cpu),
                None => out.push((r.source, std::iter::once(r.cpu).collect())),
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
pub fn totals(rows: &[&CpuRow]) -> Totals {
    let with_pct: Vec<[f64; 4]> = rows.iter().filter_map(|r| r.pct).collect();
    let pct = (!with_pct.is_empty()).then(|| {
        let mut p = [0.0; 4];
        for x in &with_pct {
            for i in 0..4 {
                p[i] += x[i];
            }
        }
        p.map(|v| v / with_pct.len() as f64)
    });
    let with_rates: Vec<Rates> = rows.iter().filter_map(|r| r.rates).collect();
    let rates = (!with_rates.is_empty()).then(|| {
        with_rates.iter().fold(Rates::default(), |a, r| Rates {
            kernel_entries: a.kernel_entries + r.kernel_entries,
            nmis: a.nmis + r.nmis,
            ipis: a.ipis + r.ipis,
            avoidable_ipis: a.avoidable_ipis + r.avoidable_ipis,
        })
    });
    let need: u64 = rows
        .iter()
        .map(|r| r.samples[Verdict::IpiNeeded as usize])
        .sum();
    let all: u64 = rows.iter().map(|r| r.samples.iter().sum::<u64>()).sum();
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
    Totals {
        cpus: rows.len(),
        pct,
        rates,
        need_pct: share(need, all),
        kernel_hist,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cpu: u32, kernel: Option<f64>, ipis: f64, nohz: bool) -> CpuRow {
        CpuRow {
            cpu,
            online: true,
            nohz_full: nohz,
            isolated: false,
            source: SourceLabel::Syscalls,
            state: Some(CpuState::User),
            verdict: Some(Verdict::Deferrable),
            pct: kernel.map(|k| [100.0 - k, k, 0.0, 0.0]),
            rates: Some(Rates {
                kernel_entries: 10.0,
                nmis: 0.0,
                ipis,
                avoidable_ipis: ipis / 2.0,
            }),
            samples: [1, 9, 0],
            kernel_hist: kernel.into_iter().map(Some).collect(),
        }
    }

    fn state(rows: Vec<CpuRow>) -> State {
        let mut s = State::new(
            Info::default(),
            Duration::from_secs(1),
            Duration::from_millis(10),
            None,
        );
        s.rows = rows;
        s
    }

    fn ids(s: &State) -> Vec<u32> {
        s.visible().iter().map(|r| r.cpu).collect()
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
            row(0, Some(5.0), 1.0, false),
            row(1, None, 0.0, true),
            row(2, Some(50.0), 3.0, true),
            row(3, Some(5.0), 2.0, false),
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
            row(0, Some(1.0), 0.0, false),
            row(1, Some(1.0), 0.0, true),
            row(2, Some(1.0), 0.0, true),
        ]);
        s.rows[0].isolated = false;
        s.apply(Action::ToggleIsolated, 10);
        assert_eq!(ids(&s), [1, 2]);
        s.only = Some("0-1".parse().unwrap());
        assert_eq!(ids(&s), [1]);
        s.apply(Action::ToggleIsolated, 10);
        assert_eq!(ids(&s), [0, 1]);
    }

    #[test]
    fn scrolling_stops_at_the_last_full_page() {
        let mut s = state((0..10).map(|c| row(c, Some(1.0), 0.0, false)).collect());
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
        let mut s = state(vec![row(0, Some(1.0), 0.0, true)]);
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
    fn totals_average_shares_and_sum_rates() {
        let a = row(0, Some(10.0), 4.0, false);
        let mut b = row(1, Some(30.0), 2.0, false);
        b.kernel_hist = [Some(0.0), Some(30.0)].into_iter().collect();
        let c = row(2, None, 0.0, false);
        let t = totals(&[&a, &b, &c]);
        assert_eq!(t.cpus, 3);
        assert_eq!(t.pct.map(|p| p[1]), Some(20.0));
        assert_eq!(t.rates.map(|r| r.ipis), Some(6.0));
        assert_eq!(t.need_pct, Some(10.0));
        assert_eq!(t.kernel_hist, [Some(0.0), Some(20.0)]);
        let empty = totals(&[]);
        assert_eq!(empty.pct, None);
        assert_eq!(empty.need_pct, None);
    }

    #[test]
    fn sources_are_grouped() {
        let mut s = state(vec![
            row(0, None, 0.0, false),
            row(1, None, 0.0, true),
            row(2, None, 0.0, true),
        ]);
        assert_eq!(s.sources().len(), 1);
        s.rows[1].source = SourceLabel::ContextTracking;
        s.rows[2].source = SourceLabel::ContextTracking;
        let src = s.sources();
        assert_eq!(src[1].0, SourceLabel::ContextTracking);
        assert_eq!(src[1].1.to_string(), "1-2");
    }
}
