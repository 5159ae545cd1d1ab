//! Draws a [`State`] into a ratatui [`Buffer`]. Pure: reads the state, writes only the buffer,
//! and clips to whatever area it is given, down to none at all.
//!
//! Screen, top to bottom: three header lines (host and probes; CPU sets and hook sources;
//! interval and view settings), two table-header lines (column groups with their unit, then
//! column names), one row per CPU, the ALL row, and a footer with the keys. Columns narrow
//! below 116 columns and the least important ones go below 75.

use ctx_common::{CpuState, Source, Verdict};
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph, Widget};

use crate::model::Origin;
use crate::tui::state::{AllRow, CpuRow, HISTORY, Rates, SortKey, State, all_row};

const HEADER_LINES: u16 = 3;
const TABLE_HEAD_LINES: u16 = 2;
/// The ALL row and the footer.
const FOOT_LINES: u16 = 2;
/// Below this width the narrow columns are used.
const WIDE_MIN: u16 = 116;

/// How many CPU rows a screen of `height` lines shows; the app scrolls by this much.
pub fn page_rows(height: u16) -> usize {
    usize::from(sections(height).body)
}

/// Draws the whole screen.
pub fn render(state: &State, area: Rect, buf: &mut Buffer) {
    let area = area.intersection(buf.area);
    if area.is_empty() {
        return;
    }
    let s = sections(area.height);
    let rows = state.visible();
    let cols = columns(area.width, cpu_width(state));
    let mut y = area.y;
    let put = |buf: &mut Buffer, l: &Line, y: &mut u16| {
        buf.set_line(area.x, *y, l, area.width);
        *y += 1;
    };

    let header = header_lines(state);
    for l in header.iter().take(usize::from(s.header)) {
        put(buf, l, &mut y);
    }
    if s.thead == 2 {
        put(buf, &group_line(&cols), &mut y);
    }
    if s.thead >= 1 {
        put(buf, &names_line(&cols, state.sort), &mut y);
    }

    let page = usize::from(s.body);
    let first = state.scroll.min(rows.len().saturating_sub(page));
    let body_end = y + s.body;
    if rows.is_empty() && page > 0 {
        put(buf, &Line::styled(empty_message(state), dim()), &mut y);
    } else {
        for r in rows.iter().skip(first).take(page) {
            put(buf, &cpu_line(&cols, r), &mut y);
        }
    }
    y = body_end;

    if s.foot == FOOT_LINES {
        put(buf, &all_line(&cols, &all_row(&rows)), &mut y);
        put(
            buf,
            &footer_line(area.width, first, page, rows.len()),
            &mut y,
        );
    }

    if state.help {
        help(state, area, buf);
    }
}

#[derive(Clone, Copy, Debug)]
struct Sections {
    header: u16,
    thead: u16,
    body: u16,
    foot: u16,
}

/// The full layout from 8 lines on; below that, only the column names and CPU rows, so that
/// a very short window still shows CPUs.
fn sections(height: u16) -> Sections {
    let fixed = HEADER_LINES + TABLE_HEAD_LINES + FOOT_LINES;
    if height > fixed {
        Sections {
            header: HEADER_LINES,
            thead: TABLE_HEAD_LINES,
            body: height - fixed,
            foot: FOOT_LINES,
        }
    } else {
        Sections {
            header: 0,
            thead: height.min(1),
            body: height.saturating_sub(1),
            foot: 0,
        }
    }
}

fn dim() -> Style {
    Style::new().fg(Color::DarkGray)
}

fn bold() -> Style {
    Style::new().add_modifier(Modifier::BOLD)
}

fn state_style(s: Option<CpuState>) -> Style {
    match s {
        Some(CpuState::User) => Style::new().fg(Color::Green),
        Some(CpuState::Kernel) => Style::new().fg(Color::Yellow),
        Some(CpuState::Idle) => dim(),
        Some(CpuState::NmiFromUser | CpuState::NmiFromKernel) => {
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
        }
        None => Style::new(),
    }
}

fn state_label(s: CpuState) -> &'static str {
    match s {
        CpuState::User => "user",
        CpuState::Kernel => "kernel",
        CpuState::Idle => "idle",
        CpuState::NmiFromUser => "nmi/u",
        CpuState::NmiFromKernel => "nmi/k",
    }
}

fn verdict_cell(v: Verdict, wide: bool) -> (&'static str, Style) {
    let label = match (v, wide) {
        (_, true) => v.as_str(),
        (Verdict::IpiNeeded, false) => "IPI",
        (Verdict::Deferrable, false) => "defer",
        (Verdict::Quiesced, false) => "quies",
    };
    let style = match v {
        Verdict::IpiNeeded => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        Verdict::Deferrable => Style::new().fg(Color::Green),
        Verdict::Quiesced => Style::new().fg(Color::Cyan),
    };
    (label, style)
}

/// Residency glyphs and colours, in the order of the percentage columns. Distinct glyphs keep
/// the bar readable without colour (a `tmux capture-pane`, a screenshot in a ticket).
const BAR: [(char, Color); 4] = [
    ('█', Color::Green),
    ('▒', Color::Yellow),
    ('·', Color::DarkGray),
    ('!', Color::Red),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Col {
    Cpu,
    State,
    Bar,
    Usr,
    Krn,
    Idl,
    Nmi,
    Entries,
    Nmis,
    Ipis,
    Avoid,
    Verdict,
    Need,
    Trend,
}

/// Columns in display order with their widths.
#[derive(Clone, Debug)]
struct Cols {
    list: Vec<(Col, u16)>,
    wide: bool,
}

impl Cols {
    #[cfg(test)]
    fn width(&self, c: Col) -> Option<u16> {
        self.list.iter().find(|(x, _)| *x == c).map(|(_, w)| *w)
    }
}

/// Wide enough for the highest CPU id plus the `nohz_full` mark, and for "ALL".
fn cpu_width(state: &State) -> u16 {
    let max = state.rows.iter().map(CpuRow::cpu).max().unwrap_or(0);
    // Four digits at most (8191).
    (narrow(max.to_string().len()) + 1).max(3)
}

/// Dropped in this order when even the narrow columns do not fit.
const DROP: [Col; 8] = [
    Col::Trend,
    Col::Bar,
    Col::Nmis,
    Col::Need,
    Col::Idl,
    Col::Entries,
    Col::Nmi,
    Col::Avoid,
];

fn columns(width: u16, cpu_w: u16) -> Cols {
    let wide = width >= WIDE_MIN;
    let (bar, pct, rate, verdict, need, trend_min) = if wide {
        (20, 5, 7, 10, 5, 10)
    } else {
        (8, 3, 5, 5, 5, 4)
    };
    let mut list = vec![
        (Col::Cpu, cpu_w),
        (Col::State, 6),
        (Col::Bar, bar),
        (Col::Usr, pct),
        (Col::Krn, pct),
        (Col::Idl, pct),
        (Col::Nmi, pct),
        (Col::Entries, rate),
        (Col::Nmis, if wide { rate } else { 4 }),
        (Col::Ipis, rate),
        (Col::Avoid, rate),
        (Col::Verdict, verdict),
        (Col::Need, need),
        (Col::Trend, trend_min),
    ];
    let used = |l: &[(Col, u16)]| -> u16 { l.iter().map(|(_, w)| w + 1).sum::<u16>() - 1 };
    for d in DROP {
        if used(&list) <= width {
            break;
        }
        list.retain(|(c, _)| *c != d);
    }
    // The trend takes what is left, up to the history kept.
    let spare = width.saturating_sub(used(&list));
    if let Some((_, w)) = list.iter_mut().find(|(c, _)| *c == Col::Trend) {
        *w = (*w + spare).min(narrow(HISTORY));
    }
    Cols { list, wide }
}

fn pad_left(s: &str, w: u16) -> String {
    format!("{s:>w$}", w = usize::from(w))
}

fn pad_right(s: &str, w: u16) -> String {
    format!("{s:<w$}", w = usize::from(w))
}

/// A percentage in `w` columns: one decimal where it fits (`0.4`, `12.5`), whole numbers in
/// three columns from 10 on, where a tenth no longer matters at a glance.
fn fmt_pct(x: f64, w: u16) -> String {
    if w >= 5 || x < 9.95 {
        format!("{x:.1}")
    } else {
        format!("{x:.0}")
    }
}

/// A rate in at most `w` columns: `0`, `2.5`, `1234`, `12.3k`, `123k`, `1.2M`.
fn fmt_rate(x: f64, w: u16) -> String {
    let w = usize::from(w);
    if x == 0.0 {
        return "0".into();
    }
    let candidates = [
        format!("{x:.1}"),
        format!("{x:.0}"),
        format!("{:.1}k", x / 1e3),
        format!("{:.0}k", x / 1e3),
        format!("{:.1}M", x / 1e6),
        format!("{:.0}M", x / 1e6),
        format!("{:.0}G", x / 1e9),
    ];
    // A decimal only below 10: above that it is noise at a glance.
    let skip = usize::from(x >= 9.95);
    candidates
        .into_iter()
        .skip(skip)
        .find(|c| c.len() <= w)
        .unwrap_or_else(|| "+".repeat(w.min(1)))
}

/// A count of cells or lines as a terminal coordinate; terminals stop at 65535 anyway.
fn narrow(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// Splits `w` cells among the four shares by largest remainder, so the bar is always `w` long.
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "each share's cells lie between 0 and `w`"
)]
fn bar_cells(p: [f64; 4], w: u16) -> [u16; 4] {
    let total: f64 = p.iter().sum();
    if total <= 0.0 {
        return [0; 4];
    }
    let exact = p.map(|x| x / total * f64::from(w));
    let mut cells = exact.map(|x| x.floor() as u16);
    let mut left = w.saturating_sub(cells.iter().sum());
    let mut order = [0usize, 1, 2, 3];
    order.sort_by(|a, b| {
        let fa = exact[*a] - exact[*a].floor();
        let fb = exact[*b] - exact[*b].floor();
        fb.total_cmp(&fa).then(a.cmp(b))
    });
    for i in order {
        if left == 0 {
            break;
        }
        cells[i] += 1;
        left -= 1;
    }
    cells
}

fn bar_spans(p: Option<[f64; 4]>, w: u16) -> Vec<Span<'static>> {
    let Some(p) = p else {
        return vec![Span::raw(pad_right("-", w))];
    };
    bar_cells(p, w)
        .iter()
        .zip(BAR)
        .filter(|(n, _)| **n > 0)
        .map(|(n, (glyph, colour))| {
            Span::styled(
                std::iter::repeat_n(glyph, usize::from(*n)).collect::<String>(),
                Style::new().fg(colour),
            )
        })
        .collect()
}

const SPARK: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// Kernel share per interval on a fixed 0-100 % scale, newest on the right, so that rows
/// compare at a glance. Any kernel time shows above the floor.
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "a clamped share scaled to a glyph index, 0 to 7"
)]
fn sparkline(hist: &[Option<f64>], w: u16) -> String {
    let w = usize::from(w);
    let tail = &hist[hist.len().saturating_sub(w)..];
    let mut s = " ".repeat(w - tail.len());
    for p in tail {
        s.push(match p {
            None => ' ',
            Some(v) => {
                let i = (v.clamp(0.0, 100.0) / 100.0 * 7.0).ceil() as usize;
                SPARK[i.min(7)]
            }
        });
    }
    s
}

fn dash_or<T>(x: Option<T>, f: impl FnOnce(T) -> String) -> String {
    x.map_or_else(|| "-".to_owned(), f)
}

/// Joins cells with one space.
fn join(cells: Vec<Vec<Span<'static>>>) -> Line<'static> {
    let mut spans = Vec::new();
    for (i, c) in cells.into_iter().enumerate() {
        if i > 0 {
            spans.push(Span::raw(" "));
        }
        spans.extend(c);
    }
    Line::from(spans)
}

fn cpu_line(cols: &Cols, r: &CpuRow) -> Line<'static> {
    let cell = |c: Col, w: u16| -> Vec<Span<'static>> {
        let num = |s: String, style: Style| vec![Span::styled(pad_left(&s, w), style)];
        let (facts, status) = (&r.iv.facts, &r.iv.status);
        if !facts.online && c != Col::Cpu {
            return match c {
                Col::State => vec![Span::styled(pad_right("off", w), dim())],
                _ => num("-".into(), dim()),
            };
        }
        let shares = r.pct().map(|p| p.as_array());
        let rates = r.rates();
        let pct = |i: usize| num(dash_or(shares, |p| fmt_pct(p[i], w)), Style::new());
        let rate = |f: fn(&Rates) -> f64, style: Style| {
            num(dash_or(rates.as_ref(), |x| fmt_rate(f(x), w)), style)
        };
        match c {
            Col::Cpu => {
                let mark = if facts.nohz_full { "*" } else { " " };
                vec![Span::raw(pad_left(&format!("{}{mark}", facts.cpu), w))]
            }
            Col::State => vec![Span::styled(
                pad_right(status.state.map_or("-", state_label), w),
                state_style(status.state),
            )],
            Col::Bar => bar_spans(shares, w),
            Col::Usr => pct(0),
            Col::Krn => pct(1),
            Col::Idl => pct(2),
            Col::Nmi => pct(3),
            Col::Entries => rate(|x| x.kernel_entries, Style::new()),
            Col::Nmis => rate(|x| x.nmis, Style::new()),
            Col::Ipis => rate(|x| x.ipis, Style::new()),
            Col::Avoid => {
                let hot = rates.is_some_and(|x| x.avoidable_ipis > 0.0);
                let style = if hot {
                    Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
                } else {
                    Style::new()
                };
                rate(|x| x.avoidable_ipis, style)
            }
            Col::Verdict => match status.verdict {
                Some(v) => {
                    let (label, style) = verdict_cell(v, cols.wide);
                    vec![Span::styled(pad_right(label, w), style)]
                }
                None => vec![Span::raw(pad_right("-", w))],
            },
            Col::Need => num(
                dash_or(r.iv.need_pct(), |p| fmt_pct(p, w.min(4))),
                Style::new(),
            ),
            Col::Trend => {
                let hist: Vec<Option<f64>> = r.kernel_hist.iter().copied().collect();
                vec![Span::styled(
                    sparkline(&hist, w),
                    Style::new().fg(Color::Yellow),
                )]
            }
        }
    };
    join(cols.list.iter().map(|(c, w)| cell(*c, *w)).collect())
}

fn all_line(cols: &Cols, t: &AllRow) -> Line<'static> {
    let shares = t.totals.pct.map(|p| p.as_array());
    let rates = t.rates();
    let cell = |c: Col, w: u16| -> Vec<Span<'static>> {
        let num = |s: String| vec![Span::raw(pad_left(&s, w))];
        let pct = |i: usize| num(dash_or(shares, |p| fmt_pct(p[i], w)));
        let rate = |f: fn(&Rates) -> f64| num(dash_or(rates.as_ref(), |x| fmt_rate(f(x), w)));
        match c {
            Col::Cpu => vec![Span::raw(pad_right("ALL", w))],
            Col::State | Col::Verdict => vec![Span::raw(pad_right("", w))],
            Col::Bar => bar_spans(shares, w),
            Col::Usr => pct(0),
            Col::Krn => pct(1),
            Col::Idl => pct(2),
            Col::Nmi => pct(3),
            Col::Entries => rate(|x| x.kernel_entries),
            Col::Nmis => rate(|x| x.nmis),
            Col::Ipis => rate(|x| x.ipis),
            Col::Avoid => rate(|x| x.avoidable_ipis),
            Col::Need => num(dash_or(t.totals.need_pct(), |p| fmt_pct(p, w.min(4)))),
            Col::Trend => vec![Span::styled(
                sparkline(&t.kernel_hist, w),
                Style::new().fg(Color::Yellow),
            )],
        }
    };
    join(cols.list.iter().map(|(c, w)| cell(*c, *w)).collect()).style(bold())
}

fn name(c: Col, w: u16, wide: bool) -> &'static str {
    match c {
        Col::Cpu => "CPU",
        Col::State => "state",
        Col::Bar if w >= 19 => "█usr ▒krn ·idl !nmi",
        Col::Bar if w >= 8 => "█u▒k·i!n",
        Col::Bar => "",
        Col::Usr => "usr",
        Col::Krn => "krn",
        Col::Idl => "idl",
        Col::Nmi | Col::Nmis => "nmi",
        Col::Entries => "entry",
        Col::Ipis => "ipi",
        Col::Avoid => "avoid",
        Col::Verdict if wide => "verdict",
        Col::Verdict => "now",
        Col::Need => "need%",
        Col::Trend => "%krn",
    }
}

fn sorted_col(k: SortKey) -> Col {
    match k {
        SortKey::Cpu => Col::Cpu,
        SortKey::Kernel => Col::Krn,
        SortKey::Ipis => Col::Ipis,
        SortKey::Avoidable => Col::Avoid,
        SortKey::IpiNeeded => Col::Need,
        SortKey::KernelEntries => Col::Entries,
    }
}

/// Numbers, and the trend, whose newest point is on the right.
fn right_aligned(c: Col) -> bool {
    !matches!(c, Col::Cpu | Col::State | Col::Bar | Col::Verdict)
}

fn names_line(cols: &Cols, sort: SortKey) -> Line<'static> {
    let sorted = sorted_col(sort);
    join(
        cols.list
            .iter()
            .map(|(c, w)| {
                let n = name(*c, *w, cols.wide);
                let text = if right_aligned(*c) {
                    pad_left(n, *w)
                } else {
                    pad_right(n, *w)
                };
                let style = if *c == sorted {
                    bold().add_modifier(Modifier::REVERSED)
                } else {
                    bold()
                };
                vec![Span::styled(text, style)]
            })
            .collect(),
    )
}

/// Column groups, each labelled with its unit over the columns it spans.
fn group_line(cols: &Cols) -> Line<'static> {
    const GROUPS: [(&str, &[Col]); 4] = [
        (
            "% of interval",
            &[Col::Bar, Col::Usr, Col::Krn, Col::Idl, Col::Nmi],
        ),
        (
            "per second",
            &[Col::Entries, Col::Nmis, Col::Ipis, Col::Avoid],
        ),
        ("IPI", &[Col::Verdict, Col::Need]),
        ("trend", &[Col::Trend]),
    ];
    let mut spans = Vec::new();
    let mut i = 0;
    while i < cols.list.len() {
        let (c, w) = cols.list[i];
        let group = GROUPS.iter().find(|(_, members)| members.contains(&c));
        let Some((label, members)) = group else {
            spans.push(Span::raw(" ".repeat(usize::from(w + 1))));
            i += 1;
            continue;
        };
        let mut span_w = 0u16;
        while i < cols.list.len() && members.contains(&cols.list[i].0) {
            span_w += cols.list[i].1 + 1;
            i += 1;
        }
        // The group label covers its columns, not the gap after the last one.
        let inner = span_w - 1;
        spans.push(Span::styled(rule(label, inner), dim()));
        spans.push(Span::raw(" "));
    }
    Line::from(spans)
}

/// `── label ──` in exactly `w` columns (the label alone, cut, when there is no room).
fn rule(label: &str, w: u16) -> String {
    let w = usize::from(w);
    let n = label.chars().count();
    if w < n + 2 {
        return label.chars().take(w).collect::<String>() + &" ".repeat(w.saturating_sub(n));
    }
    let left = (w - n - 2) / 2;
    let right = w - n - 2 - left;
    format!("{} {label} {}", "─".repeat(left), "─".repeat(right))
}

fn fmt_duration(d: std::time::Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 1000.0 {
        format!("{} ms", trim(ms))
    } else {
        format!("{} s", trim(ms / 1e3))
    }
}

/// At most three decimals, trailing zeros dropped: `2.5`, `1`, `0.25`.
fn trim(x: f64) -> String {
    let s = format!("{x:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn set_or_dash(s: &crate::host::cpuset::CpuSet) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

fn header_lines(state: &State) -> [Line<'static>; 3] {
    let i = &state.facts;
    let probes = match i.origin {
        Origin::Pinned => "probes of ctx-daemon (pinned)",
        Origin::Loaded => "probes loaded by ctxtop",
    };
    let l1 = Line::from(vec![
        Span::styled("ctxtop", bold()),
        Span::raw(format!(" · {} · kernel {} · {probes}", i.host, i.kernel)),
    ]);

    let sources = state.sources();
    let src = match sources.as_slice() {
        [] => "-".to_owned(),
        [(s, _)] => s.as_str().to_owned(),
        many => many
            .iter()
            .map(|(s, set)| format!("{} {set}", short_source(*s)))
            .collect::<Vec<_>>()
            .join(", "),
    };
    let l2 = Line::raw(format!(
        "nohz_full {} · isolated {} · source {src}",
        set_or_dash(&i.nohz_full),
        set_or_dash(&i.isolated),
    ));

    let mut l3 = Vec::new();
    if state.paused {
        l3.push(Span::styled(
            "PAUSED",
            Style::new()
                .fg(Color::Yellow)
                .add_modifier(Modifier::REVERSED | Modifier::BOLD),
        ));
        l3.push(Span::raw(" · "));
    }
    let shown = match (&state.only, state.isolated_only) {
        (_, true) => "isolated CPUs".to_owned(),
        (Some(o), false) => format!("CPUs {o}"),
        (None, false) => "all CPUs".to_owned(),
    };
    // Settings first: they are what a key just changed, and a narrow screen cuts the end.
    l3.push(Span::raw(format!(
        "interval {} · sort {} · {shown} · #{} · {} samples at {} · sweep {} µs",
        fmt_duration(state.interval),
        state.sort.label(),
        state.refreshes,
        state.samples,
        fmt_duration(state.sample_interval),
        state.sweep_ns / 1000,
    )));
    [l1, l2, Line::from(l3)]
}

/// A source among several in the header; CPUs that no hook drives yet read better as such.
fn short_source(s: Source) -> &'static str {
    match s {
        Source::None => "no hook",
        s => s.as_str(),
    }
}

fn empty_message(state: &State) -> String {
    if state.isolated_only {
        "no nohz_full or isolated CPU on this host (i shows all)".into()
    } else {
        "no CPU to show (--cpus matches none)".into()
    }
}

fn footer_line(width: u16, first: usize, page: usize, n: usize) -> Line<'static> {
    let keys = "q quit  s sort  i isolated  p pause  +/- interval  ? help";
    let pos = if n > page {
        format!(" CPUs {}-{} of {n} ↑↓", first + 1, (first + page).min(n))
    } else {
        String::new()
    };
    let room = usize::from(width).saturating_sub(pos.chars().count());
    let keys: String = keys.chars().take(room).collect();
    Line::from(vec![
        Span::styled(format!("{keys:<room$}"), dim()),
        Span::styled(pos, bold()),
    ])
}

fn help(state: &State, area: Rect, buf: &mut Buffer) {
    let mut lines: Vec<Line> = [
        "q  Ctrl-C    quit",
        "s            sort: cpu, %krn, ipi/s, avoid/s, need%, entry/s",
        "i            only isolated CPUs (nohz_full or isolcpus)",
        "p            pause the view; sampling goes on",
        "+  -         longer / shorter interval",
        "↑ ↓ PgUp PgDn Home End   scroll",
        "?  Esc       close this help",
        "",
        "CPU *        nohz_full",
        "state        now: user, kernel, idle, nmi/u (NMI from user), nmi/k",
        "█u▒k·i!n     user, kernel, idle, NMI share of the interval",
        "entry        kernel entries: every one with context tracking,",
        "             syscalls where only the syscall hooks drive the CPU",
        "avoid        IPIs that arrived in user or idle (nothing needed them)",
        "now          verdict at the last sample: IPI needed, defer(rable)",
        "             until the next kernel entry, quies(ced) since the last",
        "need%        samples in the interval that needed an IPI",
        "trend        kernel share per interval, 0-100 %, newest right",
    ]
    .into_iter()
    .map(Line::raw)
    .collect();
    let mut missing = state.facts.hooks_not_in_use().peekable();
    if missing.peek().is_some() {
        lines.push(Line::raw(""));
        lines.push(Line::raw("hooks not in use:"));
        lines.extend(missing.map(|h| Line::raw(format!("  {h}"))));
    }
    let w = area.width.min(76);
    let h = area.height.min(narrow(lines.len()) + 2);
    let r = Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    );
    Clear.render(r, buf);
    Paragraph::new(lines)
        .block(Block::bordered().title(format!(" ctxtop {} help ", state.facts.version)))
        .render(r, buf);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_fit_their_column() {
        for (x, want) in [
            (0.0, "0"),
            (0.25, "0.2"),
            (2.5, "2.5"),
            (12.4, "12"),
            (1234.0, "1234"),
            (12_345.0, "12345"),
            (123_456.0, "123k"),
            (1_234_567.0 / 10.0, "123k"),
            (1_234_567.0, "1235k"),
            (12_345_678.0, "12.3M"),
        ] {
            assert_eq!(fmt_rate(x, 5), want, "{x}");
        }
        assert_eq!(fmt_rate(12_345.0, 4), "12k");
        assert_eq!(fmt_rate(12_345.0, 5), "12345");
        assert_eq!(fmt_rate(123_456.0, 6), "123456");
        assert_eq!(fmt_rate(1e15, 3), "+");
    }

    #[test]
    fn percentages_fit_three_columns() {
        assert_eq!(fmt_pct(0.04, 3), "0.0");
        assert_eq!(fmt_pct(9.94, 3), "9.9");
        assert_eq!(fmt_pct(9.96, 3), "10");
        assert_eq!(fmt_pct(100.0, 3), "100");
        assert_eq!(fmt_pct(100.0, 5), "100.0");
    }

    #[test]
    fn bar_is_always_full_width() {
        for p in [
            [33.3, 33.3, 33.4, 0.0],
            [99.0, 0.5, 0.5, 0.0],
            [0.0, 0.0, 0.0, 100.0],
            [12.5, 12.5, 12.5, 62.5],
        ] {
            for w in [1, 7, 8, 20] {
                assert_eq!(bar_cells(p, w).iter().sum::<u16>(), w, "{p:?} in {w}");
            }
        }
        assert_eq!(bar_cells([0.0; 4], 8), [0; 4]);
        assert_eq!(bar_cells([50.0, 50.0, 0.0, 0.0], 8), [4, 4, 0, 0]);
    }

    #[test]
    fn sparkline_is_right_aligned_on_a_fixed_scale() {
        assert_eq!(sparkline(&[Some(0.0), Some(100.0)], 4), "  ▁█");
        assert_eq!(sparkline(&[Some(0.1), None, Some(50.0)], 2), " ▅");
        assert_eq!(sparkline(&[], 0), "");
    }

    #[test]
    fn columns_fit_80_and_grow_wide() {
        let c = columns(80, 4);
        let used: u16 = c.list.iter().map(|(_, w)| w + 1).sum::<u16>() - 1;
        assert_eq!(used, 80);
        assert_eq!(c.list.len(), 14, "every column at 80");
        assert!(!c.wide);
        let c = columns(200, 4);
        assert!(c.wide);
        assert_eq!(c.width(Col::Trend), Some(narrow(HISTORY)));
        let c = columns(40, 4);
        assert!(c.width(Col::Trend).is_none());
        assert!(c.width(Col::Krn).is_some());
        assert!(c.width(Col::Verdict).is_some());
    }

    #[test]
    fn rules_fill_their_width() {
        assert_eq!(rule("IPI", 11), "─── IPI ───");
        assert_eq!(rule("per second", 4), "per ");
        assert_eq!(rule("IPI", 5), " IPI ");
        assert_eq!(rule("x", 0), "");
    }

    #[test]
    fn durations_read_naturally() {
        use std::time::Duration;
        assert_eq!(fmt_duration(Duration::from_secs(1)), "1 s");
        assert_eq!(fmt_duration(Duration::from_millis(2500)), "2.5 s");
        assert_eq!(fmt_duration(Duration::from_millis(10)), "10 ms");
        assert_eq!(fmt_duration(Duration::from_millis(250)), "250 ms");
    }
}
