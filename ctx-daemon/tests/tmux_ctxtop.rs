//! The real ctxtop binary in a real terminal: tmux runs a shell, the test types commands and
//! keys (`send-keys`) and reads the screen (`capture-pane`). Against the running kernel, so it
//! needs root and tmux; it skips with the reason otherwise.
//!
//! Checked: every online CPU has a row with a state; `s`, `i`, `p`, `+`/`-` and `?` change
//! what is shown as they should; `q`, Ctrl-C, SIGTERM and a panic all give the shell its
//! terminal back (normal screen, cursor shown, canonical mode with echo); `--once` on a
//! terminal never enters the alternate screen; with a ctx-daemon running, ctxtop reads its
//! pins. `CTX_BLESS=1` also rewrites `tests/ctxtop-screen.txt` (the README's screen) from a run
//! with a spinner on CPU 1. `CTXTOP_BIN=target/release/ctxtop` runs it all against a release build,
//! where a panic aborts and only the panic hook can restore the terminal.

mod common;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{CTX_DAEMON, Spinner, TEST_PIN_DIR, ctxtop_bin, skip, skip_reason};

static SERIAL: Mutex<()> = Mutex::new(());

const PROMPT: &str = "ctxtest$ ";
const TIMEOUT: Duration = Duration::from_secs(20);
const STATES: [&str; 5] = ["user", "kernel", "idle", "nmi/u", "nmi/k"];

/// A private tmux server (its own socket), running `sh` in one pane; killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(name: &str, width: u16, height: u16) -> Self {
        let t = Self {
            socket: format!("ctxtop-test-{}-{name}", std::process::id()),
        };
        t.tmux(&[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
            &format!("env PS1='{PROMPT}' TERM=tmux-256color /bin/sh"),
        ]);
        t.wait("the shell prompt", |s| s.contains(PROMPT.trim_end()));
        t
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("running tmux");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types a command line and presses Enter.
    fn run(&self, line: &str) {
        self.tmux(&["send-keys", "-t", "t", "-l", line]);
        self.tmux(&["send-keys", "-t", "t", "Enter"]);
    }

    fn key(&self, k: &str) {
        self.tmux(&["send-keys", "-t", "t", k]);
    }

    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", "t"])
    }

    fn var(&self, name: &str) -> String {
        self.tmux(&["display-message", "-p", "-t", "t", &format!("#{{{name}}}")])
            .trim()
            .to_owned()
    }

    fn wait(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if ok(&s) {
                return s;
            }
            assert!(
                start.elapsed() < TIMEOUT,
                "timed out waiting for {what}; screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for ctxtop's screen to show refresh `n` or later.
    fn wait_refresh(&self, n: u64) -> String {
        self.wait(&format!("refresh #{n}"), |s| {
            refresh(s).is_some_and(|r| r >= n)
        })
    }

    /// The shell has the terminal back: ctxtop is gone, the normal screen shows the prompt,
    /// the cursor is visible, and the tty is back in canonical mode with echo.
    fn assert_restored(&self, how: &str) {
        let start = Instant::now();
        while self.var("pane_current_command") != "sh" || self.var("alternate_on") != "0" {
            assert!(
                start.elapsed() < TIMEOUT,
                "{how}: ctxtop still holds the terminal:\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(self.var("cursor_flag"), "1", "{how}: cursor hidden");
        self.run("clear; stty -a | tr ' ' '\\n' | grep -xE -- '-?(icanon|echo)' | sort | tr '\\n' ' '; echo :stty");
        let s = self.wait("stty output", |s| s.contains("echo icanon :stty"));
        assert!(
            !s.contains("-icanon") && !s.contains("-echo "),
            "{how}: tty left in raw mode:\n{s}"
        );
        self.run("clear");
        self.wait("a clear screen", |s| s.trim() == PROMPT.trim());
    }

    /// The pid of the program running in the pane's shell.
    fn child_pid(&self) -> u32 {
        let sh = self.var("pane_pid");
        let children = std::fs::read_to_string(format!("/proc/{sh}/task/{sh}/children"))
            .expect("reading the shell's children");
        children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the shell {sh} runs nothing"))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

/// The `#N` refresh counter in the header.
fn refresh(screen: &str) -> Option<u64> {
    let line = screen.lines().nth(2)?;
    let at = line.find(" #")?;
    line[at + 2..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// CPU rows: (cpu, state, %krn), in screen order.
fn rows(screen: &str) -> Vec<(u32, String, Option<f64>)> {
    screen
        .lines()
        .filter_map(|l| {
            let mut t = l.split_whitespace();
            let cpu = t.next()?.trim_end_matches('*').parse().ok()?;
            let state = t.next()?.to_owned();
            let _bar = t.next()?;
            let _usr = t.next()?;
            let krn = t.next().and_then(|k| k.parse().ok());
            Some((cpu, state, krn))
        })
        .collect()
}

fn cpu_ids(screen: &str) -> Vec<u32> {
    rows(screen).iter().map(|r| r.0).collect()
}

fn ctxtop_cmd(args: &str) -> String {
    format!("{} {args}", ctxtop_bin())
}

fn skip_unless_ready(test: &str) -> Option<std::sync::MutexGuard<'static, ()>> {
    let guard = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(why) = skip_reason(None, &["tmux"]) {
        skip(test, &why);
        return None;
    }
    Some(guard)
}

/// One screen line per online CPU.
fn rows_for_cpus() -> u16 {
    u16::try_from(common::online().len()).expect("fewer CPUs than a terminal has lines")
}

fn height_for_all_cpus() -> u16 {
    (rows_for_cpus() + 8).max(24)
}

#[test]
fn keys_change_the_view_and_q_restores_the_terminal() {
    let Some(_serial) = skip_unless_ready("keys_change_the_view_and_q_restores_the_terminal")
    else {
        return;
    };
    let online: Vec<u32> = common::online().iter().collect();
    let isolated: Vec<u32> = common::isolated()
        .iter()
        .filter(|c| online.contains(c))
        .collect();
    let tm = Tmux::start("keys", 80, height_for_all_cpus());
    tm.run(&ctxtop_cmd("--standalone --interval 0.5s"));
    let s = tm.wait_refresh(2);
    assert_eq!(
        tm.var("alternate_on"),
        "1",
        "full screen on the alternate screen"
    );
    assert!(s.contains("probes loaded by ctxtop"), "{s}");

    // Every online CPU has a row with a state.
    let r = rows(&s);
    assert_eq!(
        cpu_ids(&s),
        online,
        "one row per online CPU, in order:\n{s}"
    );
    for (cpu, state, krn) in &r {
        assert!(
            STATES.contains(&state.as_str()),
            "CPU {cpu} state {state}:\n{s}"
        );
        assert!(krn.is_some(), "CPU {cpu} has a kernel share:\n{s}");
    }

    // s: sorted by kernel share, highest first.
    tm.key("s");
    let s = tm.wait("sort by %krn", |s| s.contains("sort %krn"));
    let krn: Vec<f64> = rows(&s).iter().filter_map(|r| r.2).collect();
    assert!(
        krn.windows(2).all(|w| w[0] >= w[1]),
        "not by kernel share: {krn:?}\n{s}"
    );
    for _ in 1..6 {
        tm.key("s");
    }
    tm.wait("sort back to cpu", |s| s.contains("sort cpu"));

    // i: isolated CPUs only (none on a host without nohz_full or isolcpus).
    tm.key("i");
    let s = tm.wait("the isolated filter", |s| s.contains("isolated CPUs"));
    if isolated.is_empty() {
        assert!(s.contains("no nohz_full or isolated CPU"), "{s}");
        assert!(cpu_ids(&s).is_empty(), "{s}");
    } else {
        assert_eq!(cpu_ids(&s), isolated, "{s}");
    }
    tm.key("i");
    let s = tm.wait("all CPUs again", |s| s.contains("all CPUs"));
    assert_eq!(cpu_ids(&s), online, "{s}");

    // p: the view stands still while sampling goes on, and moves again after.
    tm.key("p");
    let paused = tm.wait("PAUSED", |s| s.contains("PAUSED"));
    let n = refresh(&paused).expect("refresh counter");
    std::thread::sleep(Duration::from_millis(1500));
    let still = tm.screen();
    assert_eq!(still, paused, "the screen changed while paused");
    tm.key("p");
    let s = tm.wait_refresh(n + 1);
    assert!(!s.contains("PAUSED"), "{s}");

    // + and -: the interval steps.
    tm.key("+");
    tm.wait("a 1 s interval", |s| s.contains("interval 1 s"));
    tm.key("-");
    tm.wait("back to 500 ms", |s| s.contains("interval 500 ms"));

    // ?: the help, closed by any key.
    tm.key("?");
    tm.wait("the help", |s| {
        s.contains("help ─") && s.contains("nohz_full")
    });
    tm.key("x");
    tm.wait("the help closed", |s| !s.contains("help ─"));

    tm.key("q");
    tm.assert_restored("q");
}

#[test]
fn ctrl_c_sigterm_and_a_panic_restore_the_terminal() {
    let Some(_serial) = skip_unless_ready("ctrl_c_sigterm_and_a_panic_restore_the_terminal") else {
        return;
    };
    let tm = Tmux::start("exits", 80, 24);

    tm.run(&ctxtop_cmd("--standalone --interval 0.3s"));
    tm.wait_refresh(1);
    tm.key("C-c");
    tm.assert_restored("Ctrl-C");

    tm.run(&ctxtop_cmd("--standalone --interval 0.3s"));
    tm.wait_refresh(1);
    let pid = tm.child_pid();
    // SAFETY: kill has no memory-safety preconditions; the pid is ctxtop, started above.
    assert_eq!(unsafe { libc::kill(pid.cast_signed(), libc::SIGTERM) }, 0);
    tm.assert_restored("SIGTERM");

    tm.run(&format!(
        "CTXTOP_TEST_PANIC=1 RUST_BACKTRACE=0 {}",
        ctxtop_cmd("--standalone --interval 0.3s")
    ));
    let s = tm.wait("the panic message", |s| s.contains("panicked"));
    assert!(
        s.contains("CTXTOP_TEST_PANIC"),
        "the panic message is printed on the normal screen:\n{s}"
    );
    tm.assert_restored("a panic");
}

#[test]
fn once_on_a_terminal_never_enters_the_alternate_screen() {
    let Some(_serial) = skip_unless_ready("once_on_a_terminal_never_enters_the_alternate_screen")
    else {
        return;
    };
    let tm = Tmux::start("once", 200, 24);
    // Everything ctxtop writes to the terminal, byte for byte.
    let log = std::env::temp_dir().join(format!("ctxtop-once-{}.raw", std::process::id()));
    let _ = std::fs::remove_file(&log);
    tm.tmux(&[
        "pipe-pane",
        "-t",
        "t",
        "-o",
        &format!("cat > {}", log.display()),
    ]);
    tm.run(&format!(
        "{}; echo rc=$?",
        ctxtop_cmd("--standalone --once --interval 0.3s")
    ));
    let s = tm.wait("the table", |s| s.contains("rc=0"));
    assert!(s.lines().any(|l| l.starts_with("ALL")), "{s}");
    tm.tmux(&["pipe-pane", "-t", "t"]);
    let raw = std::fs::read(&log).expect("reading the pane log");
    let _ = std::fs::remove_file(&log);
    let raw = String::from_utf8_lossy(&raw);
    assert!(
        !raw.contains("\x1b[?1049h"),
        "--once entered the alternate screen"
    );
    assert!(
        ["\x1b[32m", "\x1b[33m", "\x1b[2m", "\x1b[31m"]
            .iter()
            .any(|c| raw.contains(c)),
        "a terminal gets the states in colour"
    );
}

/// Starts a ctx-daemon on the test pin dir; stops it and removes its pins on drop.
struct Daemon {
    child: Child,
}

impl Daemon {
    fn start() -> Self {
        let dir = Path::new(TEST_PIN_DIR);
        if dir.exists() {
            detach();
        }
        let mut child = Command::new(CTX_DAEMON)
            .args(["--pin-dir", TEST_PIN_DIR])
            .env("CTX_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting ctx-daemon");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("attached") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(TIMEOUT).expect("ctx-daemon attached");
        Self { child }
    }
}

fn detach() {
    let st = Command::new(CTX_DAEMON)
        .args(["--detach", "--pin-dir", TEST_PIN_DIR])
        .env("CTX_LOG", "warn")
        .status()
        .expect("ctx-daemon --detach");
    assert!(st.success(), "ctx-daemon --detach failed");
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        detach();
    }
}

#[test]
fn with_a_daemon_ctxtop_reads_its_pins() {
    let Some(_serial) = skip_unless_ready("with_a_daemon_ctxtop_reads_its_pins") else {
        return;
    };
    let _daemon = Daemon::start();
    let tm = Tmux::start("pins", 80, height_for_all_cpus());
    tm.run(&ctxtop_cmd(&format!(
        "--pin-dir {TEST_PIN_DIR} --interval 0.5s"
    )));
    let s = tm.wait_refresh(1);
    assert!(s.contains("probes of ctx-daemon (pinned)"), "{s}");
    assert_eq!(cpu_ids(&s), common::online().iter().collect::<Vec<_>>());
    tm.key("q");
    tm.assert_restored("q with pins");
    assert!(
        Path::new(TEST_PIN_DIR).join("maps").exists(),
        "ctxtop leaves the daemon's pins alone"
    );
}

/// A real screen with a spinner on CPU 1, for the README. Checks that the view reads the
/// spinner as user; `CTX_BLESS=1` saves it as `tests/ctxtop-screen.txt`.
#[test]
fn screen_with_a_spinner() {
    let Some(_serial) = skip_unless_ready("screen_with_a_spinner") else {
        return;
    };
    if let Some(why) = skip_reason(Some(1), &["taskset"]) {
        return skip("screen_with_a_spinner", &why);
    }
    let _spin = Spinner::on(1);
    // Just tall enough for every CPU: the capture goes into the README.
    let tm = Tmux::start("screen", 80, (rows_for_cpus() + 8).max(10));
    let away = common::other_cpu(1);
    tm.run(&format!(
        "taskset -c {away} {}",
        ctxtop_cmd("--standalone --interval 1s")
    ));
    let s = tm.wait_refresh(10);
    let cpu1 = rows(&s)
        .into_iter()
        .find(|r| r.0 == 1)
        .unwrap_or_else(|| panic!("no CPU 1 row:\n{s}"));
    let usr: f64 = s
        .lines()
        .find(|l| l.split_whitespace().next().map(|t| t.trim_end_matches('*')) == Some("1"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|u| u.parse().ok())
        .expect("CPU 1 usr%");
    assert!(usr >= 90.0, "CPU 1 usr {usr}% under a spinner:\n{s}");
    assert_eq!(cpu1.1, "user", "the spinner's CPU is in user now:\n{s}");
    tm.key("q");
    tm.assert_restored("q");
    if common::golden::blessing() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/ctxtop-screen.txt");
        let trimmed: String = s.lines().map(|l| l.trim_end().to_owned() + "\n").collect();
        std::fs::write(&path, trimmed.trim_end().to_owned() + "\n").expect("saving the screen");
    }
}
