//! The full-screen loop: one thread that samples every `sample_interval` (as `--once` does, so
//! that the verdict shares mean the same), closes an interval every `interval`, and waits for
//! keys in between with timeouts no longer than the time to the next sample.

use std::io;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{self, Event};

use crate::host::cpuset::CpuSet;
use crate::session::Session;
use crate::tui::state::{Flow, State};
use crate::tui::term::{self, Input, Ready, TerminalGuard};
use crate::tui::{keys, render};

#[derive(Clone, Debug)]
pub struct Options {
    pub interval: Duration,
    pub sample_interval: Duration,
    /// Quit after this many intervals (`--count`).
    pub count: Option<u64>,
    pub cpus: Option<CpuSet>,
}

/// Fault injection for the terminal-restore test: with this set, ctxtop panics after its
/// first full screen, and the test checks that the shell gets its terminal back.
const PANIC_ENV: &str = "CTXTOP_TEST_PANIC";

const MAX_EVENTS_PER_ROUND: usize = 64;

/// Runs the full-screen view until `q`, a quit signal, a hangup or `--count` intervals.
///
/// # Panics
/// On purpose after the first full screen, when `CTXTOP_TEST_PANIC` is set (the
/// terminal-restore test).
pub fn run(session: &mut Session, opts: &Options) -> anyhow::Result<()> {
    term::catch_quit_signals().context("installing signal handlers")?;
    let mut state = State::new(
        session.facts.clone(),
        opts.interval,
        opts.sample_interval,
        opts.cpus.clone(),
    );
    let mut first = session.sample().context("sampling")?;
    state.show_sample(&first);

    let input = Input::open().context("opening the terminal for input")?;
    let guard = TerminalGuard::enter().context("setting up the terminal")?;
    let mut terminal =
        Terminal::new(CrosstermBackend::new(io::stdout())).context("setting up the terminal")?;
    let inject_panic = std::env::var_os(PANIC_ENV).is_some();

    let mut start = Instant::now();
    let mut next_sample = start + opts.sample_interval;
    let mut intervals = 0u64;
    let mut dirty = true;
    let mut size = input.size();
    loop {
        if term::quit_requested() {
            break;
        }
        let now_size = input.size();
        if now_size != size {
            size = now_size;
            if let Some((_, h)) = size {
                state.clamp_scroll(render::page_rows(h));
            }
            dirty = true;
        }
        if dirty {
            terminal.draw(|f| render::render(&state, f.area(), f.buffer_mut()))?;
            dirty = false;
            #[expect(clippy::manual_assert, reason = "an injected fault, not a check")]
            if inject_panic && state.refreshes > 0 {
                panic!("{PANIC_ENV} is set: panicking with the screen up");
            }
        }

        let deadline = start + state.interval;
        let wake = next_sample.min(deadline);
        match input.wait(wake.saturating_duration_since(Instant::now()))? {
            Ready::HungUp => break,
            Ready::Timeout => {}
            Ready::Input => {
                // Bounded, so that a flood of input cannot hold off the next sample.
                for _ in 0..MAX_EVENTS_PER_ROUND {
                    if !event::poll(Duration::ZERO)? {
                        break;
                    }
                    match event::read()? {
                        Event::Key(k) => {
                            if let Some(a) = keys::map(&k) {
                                let page = render::page_rows(size.map_or(24, |(_, h)| h));
                                if state.apply(a, page) == Flow::Quit {
                                    finish(terminal, guard);
                                    return Ok(());
                                }
                                dirty = true;
                            }
                        }
                        Event::Resize(_, h) => {
                            state.clamp_scroll(render::page_rows(h));
                            dirty = true;
                        }
                        _ => {}
                    }
                }
            }
        }

        let now = Instant::now();
        let deadline = start + state.interval;
        if now >= deadline {
            // Close the interval on a fresh sample, as `--once` does.
            let last = session.sample().context("sampling")?;
            if !state.paused {
                state.push_interval(&first, &last);
                dirty = true;
            }
            intervals += 1;
            if opts.count.is_some_and(|n| intervals >= n) {
                break;
            }
            first = last;
            start = now;
            next_sample = now + opts.sample_interval;
        } else if now >= next_sample {
            // The model counts each sample's verdict; the sample itself is not kept.
            session.sample().context("sampling")?;
            next_sample += opts.sample_interval;
            // Fell behind (a slow terminal, a stopped process): resume the cadence from now
            // instead of sampling in a burst.
            if next_sample < now {
                next_sample = now + opts.sample_interval;
            }
        }
    }
    finish(terminal, guard);
    Ok(())
}

/// Lets go of the terminal before restoring it.
fn finish(terminal: Terminal<CrosstermBackend<io::Stdout>>, guard: TerminalGuard) {
    drop(terminal);
    drop(guard);
}
