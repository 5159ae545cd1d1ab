//! The ctxtop screen rendered into ratatui's `TestBackend` from fake samples: golden screens at
//! 80×24 and with 64 CPUs, styles that carry meaning, and areas down to nothing. No kernel.
//!
//! The fake samples come from `CpuRecord`s driven by the same writer functions the eBPF
//! programs run (`ctx_common::writer`), through the real model, so what is drawn is what a
//! kernel timeline would produce.
//!
//! Goldens live in `tests/golden/` (see `common/golden.rs` for rewriting them).

mod common;

use std::time::Duration;

use common::golden;
use ctx::host::cpuset::CpuSet;
use ctx::model::{Facts, HookFact, Model, Origin, Sample};
use ctx::probes::hooks::HookStatus;
use ctx::sample::Snapshot;
use ctx::sample::records::{CpuRead, Records};
use ctx::tui::state::HISTORY;
use ctx::tui::{Action, SortKey, State, keys, render};
use ctx_common::CpuRecord;
use ctx_common::record::IrqKind;
use ctx_common::writer::{MainEvent, irq_arrived, main_event, nmi_enter, nmi_exit};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier};

const MS: u64 = 1_000_000;
const T0: u64 = 1_000 * MS;
/// Samples per fake interval (100 ms apart, as if `--sample-interval 100ms`).
const SAMPLES: u64 = 10;

/// The state a CPU is left in at the end of an interval.
#[derive(Clone, Copy, Debug, PartialEq)]
enum End {
    User,
    Kernel,
    Idle,
    Nmi,
}

/// One CPU over one 1 s interval: user, then kernel, then idle, in that order.
#[derive(Clone, Copy, Debug)]
struct Spec {
    user_ms: u64,
    kernel_ms: u64,
    /// IPIs (`call_function`) that interrupt user: an entry for nothing, the avoidable kind.
    ipis_in_user: u64,
    /// Reschedule IPIs while in kernel.
    ipis_in_kernel: u64,
    /// `irq_work` IPIs while idle: also avoidable.
    ipis_in_idle: u64,
    end: End,
}

/// One CPU's record and how its transitions are reported.
struct FakeCpu {
    rec: CpuRecord,
    /// Context tracking drives it (a `nohz_full` CPU); otherwise the syscall hooks do.
    ct: bool,
    events: Vec<(u64, Step)>,
}

#[derive(Clone, Copy, Debug)]
enum Step {
    Main(MainEvent),
    Irq(IrqKind),
    NmiEnter,
    NmiExit,
}

impl FakeCpu {
    fn new(ct: bool) -> Self {
        let mut c = Self {
            rec: CpuRecord::default(),
            ct,
            events: Vec::new(),
        };
        // Seen once before the first sample, so that every CPU has a state from the start.
        c.apply(T0 - MS, Step::Main(MainEvent::IdleExit));
        c
    }

    fn to_user(&self) -> Step {
        Step::Main(if self.ct {
            MainEvent::UserEnter
        } else {
            MainEvent::SysExit
        })
    }

    fn to_kernel(&self) -> Step {
        Step::Main(if self.ct {
            MainEvent::UserExit
        } else {
            MainEvent::SysEnter
        })
    }

    fn apply(&mut self, t: u64, s: Step) {
        let r = &raw mut self.rec;
        // SAFETY: the record is ours and single-threaded here, which is all the writer needs.
        unsafe {
            match s {
                Step::Main(ev) => main_event(&raw mut (*r).main, t, ev, self.ct),
                Step::Irq(k) => irq_arrived(&raw mut (*r).irq, &raw const (*r).main, t, k),
                Step::NmiEnter => nmi_enter(&raw mut (*r).nmi, &raw const (*r).main, t),
                Step::NmiExit => nmi_exit(&raw mut (*r).nmi, t),
            }
        }
    }

    /// Queues one interval starting at `t`, with only the transitions the spec needs (a
    /// spinner that stays in user makes none, as on a real `nohz_full` CPU).
    fn plan(&mut self, t: u64, s: Spec, previous: End) {
        let idle_ms = 1000 - s.user_ms - s.kernel_ms;
        let mut ev = Vec::new();
        let mut cur = previous;
        if cur == End::Nmi {
            ev.push((t, Step::NmiExit));
            cur = End::Kernel;
        }
        if cur == End::Idle {
            ev.push((t, Step::Main(MainEvent::IdleExit)));
            cur = End::Kernel;
        }
        if s.user_ms > 0 && cur != End::User {
            ev.push((t, self.to_user()));
            cur = End::User;
        }
        // Avoidable IPIs in user: the CPU leaves user for the interrupt and goes back 2 µs
        // later.
        for j in 0..s.ipis_in_user.min(s.user_ms) {
            let at = t + (j + 1) * s.user_ms * MS / (s.ipis_in_user + 1);
            ev.push((at, self.to_kernel()));
            ev.push((at, Step::Irq(IrqKind::CallFunction)));
            ev.push((at + 2_000, self.to_user()));
        }
        let tk = t + s.user_ms * MS;
        if s.user_ms < 1000 && cur == End::User {
            ev.push((tk, self.to_kernel()));
            cur = End::Kernel;
        }
        for j in 0..s.ipis_in_kernel {
            ev.push((tk + (j + 1) * 100_000, Step::Irq(IrqKind::Reschedule)));
        }
        let ti = tk + s.kernel_ms * MS;
        if idle_ms > 0 {
            ev.push((ti, Step::Main(MainEvent::IdleEnter)));
            cur = End::Idle;
        }
        for j in 0..s.ipis_in_idle.min(idle_ms) {
            let at = ti + (j + 1) * idle_ms * MS / (s.ipis_in_idle + 1);
            ev.push((at, Step::Irq(IrqKind::IrqWork)));
        }
        let te = t + 1000 * MS;
        match (s.end, cur) {
            (End::Idle, End::Idle) | (End::Kernel, End::Kernel) | (End::User, End::User) => {}
            (End::Idle, _) => ev.push((te, Step::Main(MainEvent::IdleEnter))),
            (End::Kernel, End::Idle) => ev.push((te, Step::Main(MainEvent::IdleExit))),
            (End::Kernel, _) => ev.push((te, self.to_kernel())),
            (End::User, End::Idle) => {
                ev.push((te, Step::Main(MainEvent::IdleExit)));
                ev.push((te, self.to_user()));
            }
            (End::User, _) => ev.push((te, self.to_user())),
            // Caught 5 ms into an NMI at the interval's last sample.
            (End::Nmi, _) => ev.push((te - 5 * MS, Step::NmiEnter)),
        }
        self.events.extend(ev);
    }

    fn run_until(&mut self, t: u64) {
        // Stable: events at one instant keep the order they were planned in.
        self.events.sort_by_key(|e| e.0);
        let due: Vec<(u64, Step)> = self.events.iter().copied().filter(|e| e.0 <= t).collect();
        self.events.retain(|e| e.0 > t);
        for (at, s) in due {
            self.apply(at, s);
        }
    }
}

/// A fake host: `specs(cpu, interval)` says what each CPU does in each interval.
struct Host {
    cpus: Vec<FakeCpu>,
    ends: Vec<End>,
    online: CpuSet,
    facts: Facts,
    model: Model,
}

impl Host {
    fn new(n: u32, nohz: &str, offline: &[u32]) -> Self {
        let nohz_full: CpuSet = nohz.parse().expect("a CPU list");
        let online: CpuSet = (0..n).filter(|c| !offline.contains(c)).collect();
        Self {
            cpus: (0..n)
                .map(|c| FakeCpu::new(nohz_full.contains(c)))
                .collect(),
            ends: vec![End::Kernel; n as usize],
            online,
            facts: facts(&nohz_full),
            model: Model::new(),
        }
    }

    fn sample(&mut self, t: u64) -> Sample {
        let snap = Snapshot {
            taken_ns: t,
            sweep_ns: 23_000,
            online: Some(self.online.clone()),
            records: Records {
                cpus: (0u32..)
                    .zip(self.cpus.iter_mut())
                    .map(|(cpu, c)| {
                        c.run_until(t);
                        CpuRead {
                            cpu,
                            record: c.rec,
                            read_ns: t,
                            stale: false,
                        }
                    })
                    .collect(),
                torn: 0,
                stale: 0,
            },
        };
        self.model.update(snap, &self.facts)
    }

    /// Runs `intervals` intervals into a fresh view.
    fn state(&mut self, intervals: u64, specs: impl Fn(u32, u64) -> Spec) -> State {
        let mut st = State::new(
            self.facts.clone(),
            Duration::from_secs(1),
            Duration::from_millis(100),
            None,
        );
        let mut first = self.sample(T0);
        st.show_sample(&first);
        for iv in 0..intervals {
            let t = T0 + iv * 1000 * MS;
            for ((c, cpu), end) in (0u32..).zip(self.cpus.iter_mut()).zip(&mut self.ends) {
                let s = specs(c, iv);
                cpu.plan(t, s, *end);
                *end = s.end;
            }
            let mut last = first.clone();
            for j in 1..=SAMPLES {
                last = self.sample(t + j * 1000 * MS / SAMPLES);
            }
            st.push_interval(&first, &last);
            first = last;
        }
        st
    }
}

fn facts(nohz_full: &CpuSet) -> Facts {
    Facts {
        version: "0.0.0",
        host: "bench-07".into(),
        kernel: "6.12.117+deb13-cloud-amd64".into(),
        origin: Origin::Loaded,
        nohz_full: nohz_full.clone(),
        isolated: nohz_full.clone(),
        ct_cpus: nohz_full.clone(),
        syscalls_active: true,
        hooks: vec![HookFact {
            group: "ipi",
            tracepoint: "ipi_send_cpu",
            status: HookStatus::Absent,
        }],
        ..Facts::default()
    }
}

/// Four CPUs: two housekeeping ones on the syscall hooks, two `nohz_full` ones on context
/// tracking (one spinning in user, one getting disturbed).
fn small(cpu: u32, iv: u64) -> Spec {
    match cpu {
        0 => Spec {
            user_ms: 400,
            kernel_ms: 300 + 50 * (iv % 3),
            ipis_in_user: 0,
            ipis_in_kernel: 4,
            ipis_in_idle: 2,
            end: End::Kernel,
        },
        1 => Spec {
            user_ms: 100,
            kernel_ms: 50,
            ipis_in_user: 0,
            ipis_in_kernel: 1,
            ipis_in_idle: 6,
            end: End::Idle,
        },
        2 => Spec {
            user_ms: 1000,
            kernel_ms: 0,
            ipis_in_user: 0,
            ipis_in_kernel: 0,
            ipis_in_idle: 0,
            end: End::User,
        },
        _ => Spec {
            user_ms: 1000 - 100 * (iv % 5),
            kernel_ms: 100 * (iv % 5),
            ipis_in_user: 3,
            ipis_in_kernel: 0,
            ipis_in_idle: 0,
            end: if iv.is_multiple_of(2) {
                End::Kernel
            } else {
                End::User
            },
        },
    }
}

/// 64 CPUs: 0-1 housekeeping, 2-63 `nohz_full`; a pattern of spinners, disturbed CPUs, idle ones
/// and one caught in an NMI.
fn many(cpu: u32, iv: u64) -> Spec {
    if cpu < 2 {
        return small(cpu, iv);
    }
    let c = u64::from(cpu);
    match cpu % 8 {
        3 => Spec {
            user_ms: 900 - 100 * ((iv + c) % 4),
            kernel_ms: 100 + 100 * ((iv + c) % 4),
            ipis_in_user: 1 + c % 3,
            ipis_in_kernel: 0,
            ipis_in_idle: 0,
            end: End::Kernel,
        },
        5 => Spec {
            user_ms: 0,
            kernel_ms: 10,
            ipis_in_user: 0,
            ipis_in_kernel: 0,
            ipis_in_idle: c % 4,
            end: End::Idle,
        },
        7 => Spec {
            user_ms: 990,
            kernel_ms: 10,
            ipis_in_user: 0,
            ipis_in_kernel: 1,
            ipis_in_idle: 0,
            end: End::Nmi,
        },
        _ => Spec {
            user_ms: 1000,
            kernel_ms: 0,
            ipis_in_user: 0,
            ipis_in_kernel: 0,
            ipis_in_idle: 0,
            end: End::User,
        },
    }
}

fn small_state() -> State {
    Host::new(4, "2-3", &[]).state(8, small)
}

fn many_state() -> State {
    Host::new(64, "2-63", &[62]).state(12, many)
}

fn draw(st: &State, w: u16, h: u16) -> Buffer {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| render::render(st, f.area(), f.buffer_mut()))
        .unwrap();
    t.backend().buffer().clone()
}

/// The buffer's text, one line per row, trailing blanks kept (they are part of the screen).
fn text(b: &Buffer) -> String {
    let a = b.area;
    let mut out = String::new();
    for y in a.top()..a.bottom() {
        for x in a.left()..a.right() {
            out.push_str(b[(x, y)].symbol());
        }
        out.push('\n');
    }
    out
}

/// Finds the first cell where `needle` starts on the line that starts with `line_prefix`.
fn find(b: &Buffer, line_prefix: &str, needle: &str) -> (u16, u16) {
    let t = text(b);
    for (y, l) in t.lines().enumerate() {
        if l.starts_with(line_prefix) {
            let col = l
                .find(needle)
                .unwrap_or_else(|| panic!("{needle:?} not on line {l:?}"));
            // Columns are cells; the prefix before the match may hold multi-byte glyphs.
            let x = l[..col].chars().count();
            let cell = |n: usize| u16::try_from(n).expect("within the test's screen");
            return (cell(x), cell(y));
        }
    }
    panic!("no line starting with {line_prefix:?} in\n{t}");
}

fn press(c: char) -> Action {
    keys::map(&KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)).expect("a mapped key")
}

#[test]
fn golden_80x24_four_cpus() {
    let st = small_state();
    golden::check("ctxtop-80x24.txt", &text(&draw(&st, 80, 24)));
}

#[test]
fn golden_64_cpus_sorted_by_kernel_share() {
    let mut st = many_state();
    st.apply(press('s'), 64);
    assert_eq!(st.sort, SortKey::Kernel);
    golden::check("ctxtop-64cpus-160x72.txt", &text(&draw(&st, 160, 72)));
}

#[test]
fn golden_64_cpus_at_80x24_scrolled_and_isolated() {
    let mut st = many_state();
    let page = render::page_rows(24);
    assert_eq!(page, 17);
    st.apply(press('i'), page);
    st.apply(
        keys::map(&KeyEvent::new(KeyCode::PageDown, KeyModifiers::NONE)).unwrap(),
        page,
    );
    assert_eq!(st.scroll, 17);
    golden::check(
        "ctxtop-64cpus-80x24-scrolled.txt",
        &text(&draw(&st, 80, 24)),
    );
}

#[test]
fn golden_help_80x24() {
    let mut st = small_state();
    st.apply(press('?'), 17);
    golden::check("ctxtop-help-80x24.txt", &text(&draw(&st, 80, 24)));
}

#[test]
fn every_cpu_has_a_row_with_its_state() {
    let st = small_state();
    let t = text(&draw(&st, 80, 24));
    for (prefix, state) in [(" 0  ", "kernel"), (" 1  ", "idle"), (" 2* ", "user")] {
        let l = t.lines().find(|l| l.starts_with(prefix)).unwrap();
        assert!(l[prefix.len()..].starts_with(state), "{l}");
    }
    assert!(t.lines().any(|l| l.starts_with("ALL")));
}

#[test]
#[expect(
    clippy::float_cmp,
    reason = "whole milliseconds in whole seconds: the shares and rates are exact"
)]
fn spinner_reads_full_user_and_disturbed_cpu_shows_avoidable_ipis() {
    let st = small_state();
    let cpu2 = st.rows.iter().find(|r| r.cpu() == 2).unwrap();
    assert_eq!(cpu2.pct().unwrap().user, 100.0);
    assert_eq!(cpu2.kernel_hist.len(), 8);
    let cpu3 = st.rows.iter().find(|r| r.cpu() == 3).unwrap();
    let r = cpu3.rates().unwrap();
    assert_eq!(r.avoidable_ipis, 3.0, "IPIs that interrupted user");
    assert_eq!(r.ipis, 3.0);
    let cpu1 = st.rows.iter().find(|r| r.cpu() == 1).unwrap();
    assert_eq!(
        cpu1.rates().unwrap().avoidable_ipis,
        6.0,
        "IPIs that woke idle"
    );
}

#[test]
fn state_verdict_and_avoidable_ipis_are_coloured() {
    let st = small_state();
    let b = draw(&st, 80, 24);
    let (x, y) = find(&b, " 2* ", "user");
    assert_eq!(b[(x, y)].fg, Color::Green);
    let (x, y) = find(&b, " 0  ", "kernel");
    assert_eq!(b[(x, y)].fg, Color::Yellow);
    let (x, y) = find(&b, " 0  ", "IPI");
    assert_eq!(b[(x, y)].fg, Color::Red);
    // Rows follow the column names: CPU 2 one line below... CPU 3 four lines below.
    let (x0, y) = find(&b, "CPU", "avoid");
    let hot = (x0..x0 + 5)
        .any(|x| b[(x, y + 4)].fg == Color::Red && b[(x, y + 4)].modifier.contains(Modifier::BOLD));
    assert!(hot, "CPU 3 had avoidable IPIs:\n{}", text(&b));
    let calm = (x0..x0 + 5).all(|x| b[(x, y + 3)].fg != Color::Red);
    assert!(calm, "CPU 2 had none");
}

#[test]
fn sorted_column_is_marked_and_pause_is_shown() {
    let mut st = small_state();
    st.apply(press('s'), 17);
    st.apply(press('p'), 17);
    let b = draw(&st, 80, 24);
    let (x, y) = find(&b, "CPU", "krn");
    assert!(b[(x, y)].modifier.contains(Modifier::REVERSED));
    let t = text(&b);
    assert!(t.lines().nth(2).unwrap().starts_with("PAUSED"), "{t}");
    // Highest kernel share first.
    let first_row = t.lines().nth(5).unwrap();
    assert!(first_row.starts_with(" 0  "), "{t}");
}

#[test]
fn keys_change_what_is_shown() {
    let mut st = small_state();
    let before = text(&draw(&st, 80, 24));
    st.apply(press('i'), 17);
    let isolated = text(&draw(&st, 80, 24));
    assert_ne!(before, isolated);
    assert!(!isolated.lines().any(|l| l.starts_with(" 0  ")));
    assert!(isolated.lines().any(|l| l.starts_with(" 2* ")));
    st.apply(press('+'), 17);
    assert!(text(&draw(&st, 80, 24)).contains("interval 2 s"));
    st.apply(press('-'), 17);
    st.apply(press('-'), 17);
    assert!(text(&draw(&st, 80, 24)).contains("interval 500 ms"));
}

#[test]
fn no_isolated_cpu_says_so() {
    let mut st = Host::new(2, "", &[]).state(2, small);
    st.apply(press('i'), 17);
    let t = text(&draw(&st, 80, 24));
    assert!(t.contains("no nohz_full or isolated CPU"), "{t}");
    assert!(t.contains("nohz_full - · isolated -"), "{t}");
}

#[test]
fn before_the_first_interval_numbers_are_dashes() {
    let mut host = Host::new(4, "2-3", &[]);
    let st = host.state(0, small);
    let t = text(&draw(&st, 80, 24));
    let row = t.lines().find(|l| l.starts_with(" 2* ")).unwrap();
    assert!(row.contains(" - "), "{row}");
    assert!(!row.contains("100"), "{row}");
}

#[test]
fn history_is_bounded() {
    let st = Host::new(2, "1", &[]).state(HISTORY as u64 + 5, small);
    assert!(st.rows.iter().all(|r| r.kernel_hist.len() == HISTORY));
}

#[test]
fn empty_and_tiny_areas_do_not_panic() {
    let mut st = many_state();
    for help in [false, true] {
        st.help = help;
        for w in 0..=24 {
            for h in 0..=12 {
                draw(&st, w, h);
            }
        }
        for (w, h) in [
            (80, 1),
            (1, 80),
            (300, 3),
            (79, 8),
            (80, 7),
            (115, 30),
            (116, 30),
        ] {
            draw(&st, w, h);
        }
        // An area smaller than the buffer, and one offset into it.
        let mut buf = Buffer::empty(Rect::new(0, 0, 40, 10));
        render::render(&st, Rect::new(5, 3, 20, 4), &mut buf);
        render::render(&st, Rect::new(39, 9, 10, 10), &mut buf);
        render::render(&st, Rect::new(0, 0, 0, 0), &mut buf);
    }
}

#[test]
fn a_short_window_still_shows_cpus() {
    let st = small_state();
    let t = text(&draw(&st, 80, 5));
    assert!(t.lines().next().unwrap().starts_with("CPU"), "{t}");
    assert!(t.lines().nth(1).unwrap().starts_with(" 0 "), "{t}");
}

#[test]
fn five_hundred_and_twelve_cpus_scroll_at_80x24() {
    let mut st = Host::new(512, "1-511", &[]).state(2, many);
    let page = render::page_rows(24);
    let t = text(&draw(&st, 80, 24));
    assert!(t.contains("CPUs 1-17 of 512"), "{t}");
    st.apply(
        keys::map(&KeyEvent::new(KeyCode::End, KeyModifiers::NONE)).expect("End"),
        page,
    );
    let t = text(&draw(&st, 80, 24));
    assert!(t.contains("CPUs 496-512 of 512"), "{t}");
    let last_row = t.lines().nth(21).expect("the last CPU row");
    assert!(last_row.starts_with("511* "), "{t}");
    // Four-digit CPU ids still leave every column on the row: cpu, state, bar, four shares,
    // four rates, verdict, need%, trend.
    assert_eq!(last_row.split_whitespace().count(), 14, "{last_row}");
}
