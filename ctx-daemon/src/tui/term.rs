//! The terminal guard: raw mode, the alternate screen and a hidden cursor while ctxtop runs,
//! and the terminal as it was afterwards, on every way out:
//!
//! * a normal return or an error: the guard's `Drop`;
//! * a panic: a hook chained in front of the previous one restores the terminal first, so
//!   the panic message lands on the normal screen. The release profile has `panic = "abort"`,
//!   which runs the hook but no `Drop`, so the hook is what counts there;
//! * Ctrl-C: raw mode delivers it as a key, which quits; SIGINT, SIGTERM and SIGHUP sent by
//!   others set a flag that the loop checks at every sample, and a second one exits at once;
//! * the terminal going away (a closed tmux pane, a dropped ssh session): [`Input::wait`]
//!   reports the hangup, and ctxtop quits. crossterm alone would spin on the end of file
//!   (seen: an orphaned ctxtop at 50 % CPU after `tmux kill-server`), which is why it is only
//!   asked to parse input that this poll found waiting.
//!
//! Probes need no such care: their links are file descriptors and go when the process does.

use std::fs::File;
use std::io::{self, Write as _};
use std::os::fd::{AsRawFd as _, RawFd};
use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ratatui::crossterm::{cursor, execute, terminal};

/// The terminal is in ctxtop's modes and needs restoring.
static ACTIVE: AtomicBool = AtomicBool::new(false);
static QUIT: AtomicBool = AtomicBool::new(false);
static HOOK: Once = Once::new();

/// Holds the terminal in raw mode on the alternate screen; restores it when dropped.
#[derive(Debug)]
pub struct TerminalGuard(());

impl TerminalGuard {
    pub fn enter() -> io::Result<Self> {
        install_panic_hook();
        terminal::enable_raw_mode()?;
        ACTIVE.store(true, Ordering::SeqCst);
        // From here on a failure leaves a half-set terminal: the guard exists, so `?` drops it
        // and restores.
        let guard = TerminalGuard(());
        execute!(io::stdout(), terminal::EnterAlternateScreen, cursor::Hide)?;
        Ok(guard)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore();
    }
}

/// Leaves the alternate screen, shows the cursor and ends raw mode. Runs once however many
/// paths reach it (drop, panic hook); errors are ignored, as there is nowhere left to report
/// them (the terminal may be gone, as after SIGHUP).
pub fn restore() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        let mut out = io::stdout();
        let _ = execute!(out, cursor::Show, terminal::LeaveAlternateScreen);
        let _ = out.flush();
        let _ = terminal::disable_raw_mode();
    }
}

fn install_panic_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}

extern "C" fn on_signal(sig: libc::c_int) {
    // Only async-signal-safe work: an atomic swap, and `_exit` when asked twice (the loop did
    // not get to the first request; whoever sends the second wants the process gone).
    if QUIT.swap(true, Ordering::SeqCst) {
        // SAFETY: _exit is async-signal-safe and ends the process without unwinding.
        unsafe { libc::_exit(128 + sig) };
    }
}

/// Turns SIGINT, SIGTERM and SIGHUP into a request to quit, so that the loop leaves through
/// the guard instead of the process dying with the terminal in raw mode.
pub fn catch_quit_signals() -> io::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the handler only
        // stores to an atomic, which is async-signal-safe.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&raw mut sa.sa_mask);
            libc::sigaction(sig, &raw const sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A quit signal arrived since [`catch_quit_signals`].
pub fn quit_requested() -> bool {
    QUIT.load(Ordering::SeqCst)
}

/// What [`Input::wait`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ready {
    /// Bytes are waiting: crossterm can parse them without blocking.
    Input,
    /// Nothing arrived in time (or a signal cut the wait short).
    Timeout,
    /// The terminal is gone.
    HungUp,
}

/// The terminal's input side, as crossterm reads it: stdin when that is a terminal,
/// `/dev/tty` otherwise.
#[derive(Debug)]
pub struct Input {
    fd: RawFd,
    _tty: Option<File>,
}

impl Input {
    pub fn open() -> io::Result<Self> {
        if crate::host::system::is_tty(libc::STDIN_FILENO) {
            return Ok(Self {
                fd: libc::STDIN_FILENO,
                _tty: None,
            });
        }
        let tty = File::options().read(true).open("/dev/tty")?;
        Ok(Self {
            fd: tty.as_raw_fd(),
            _tty: Some(tty),
        })
    }

    /// Columns and rows, straight from the terminal: one ioctl, cheap enough to ask at every
    /// wake-up, so a resize is seen without relying on crossterm's SIGWINCH plumbing.
    pub fn size(&self) -> Option<(u16, u16)> {
        // SAFETY: a zeroed winsize is valid; TIOCGWINSZ fills it.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ writes one winsize through the pointer.
        let rc = unsafe { libc::ioctl(self.fd, libc::TIOCGWINSZ, &mut ws) };
        (rc == 0).then_some((ws.ws_col, ws.ws_row))
    }

    /// Waits up to `timeout` for input.
    pub fn wait(&self, timeout: Duration) -> io::Result<Ready> {
        let mut p = libc::pollfd {
            fd: self.fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // Round up: a 0 ms timeout for 0.4 ms left would busy-loop until the deadline.
        let ms = i32::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd, count 1.
        let n = unsafe { libc::poll(&raw mut p, 1, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(Ready::Timeout)
            } else {
                Err(e)
            };
        }
        Ok(
            if p.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
                Ready::HungUp
            } else if p.revents & libc::POLLIN != 0 {
                Ready::Input
            } else {
                Ready::Timeout
            },
        )
    }
}
