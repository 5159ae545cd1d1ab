//! Child processes of the guest: ctx-daemon, ctxtop and the workload helper. Every wait is
//! bounded, and a child still running when its handle drops is killed.

use std::fs::File;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};

pub const CTX_DAEMON: &str = "/usr/bin/ctx-daemon";
pub const CTXTOP: &str = "/usr/bin/ctxtop";
pub const WORK: &str = "/usr/bin/ctx-vm-work";
/// Where children's output goes: the console is reserved for the guest's own lines.
pub const LOG_DIR: &str = "/run/ctx-vm";

/// A command whose process starts with the kernel's default policy for transparent huge pages.
/// The guest keeps itself away from khugepaged (a collapse IPIs every CPU), but the setting is
/// inherited across fork and exec, and ctx-daemon, ctxtop and the workloads must run as they
/// would anywhere else: what they do about it is theirs to do.
fn command(program: &str) -> Command {
    use std::os::unix::process::CommandExt as _;
    let mut c = Command::new(program);
    // SAFETY: runs in the child between fork and exec; prctl is async-signal-safe and touches
    // no memory shared with the parent.
    unsafe {
        c.pre_exec(|| {
            if libc::prctl(libc::PR_SET_THP_DISABLE, 0, 0, 0, 0) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    c
}

pub struct Proc {
    pub name: String,
    child: Child,
    /// stderr (and stdout unless piped) of the child.
    pub log: PathBuf,
}

/// Where a child's stdout goes; stderr always goes to its log.
enum Out {
    Log,
    /// A pipe, and stdin from one too: the workload helper's commands and replies.
    Pipe,
    File(PathBuf),
}

impl Proc {
    /// Starts `program args` with its log in [`LOG_DIR`].
    fn start(name: &str, program: &str, args: &[&str], out: &Out) -> anyhow::Result<Self> {
        std::fs::create_dir_all(LOG_DIR).with_context(|| format!("creating {LOG_DIR}"))?;
        let log = Path::new(LOG_DIR).join(format!("{name}.log"));
        let create =
            |p: &Path| File::create(p).with_context(|| format!("creating {}", p.display()));
        let err = create(&log)?;
        let stdout = match out {
            Out::Log => Stdio::from(err.try_clone().context("duplicating a log descriptor")?),
            Out::Pipe => Stdio::piped(),
            Out::File(p) => Stdio::from(create(p)?),
        };
        let child = command(program)
            .args(args)
            .stdin(if matches!(out, Out::Pipe) {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(stdout)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {program}"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log,
        })
    }

    pub fn spawn(name: &str, program: &str, args: &[&str]) -> anyhow::Result<Self> {
        Self::start(name, program, args, &Out::Log)
    }

    pub fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    /// `None` while running.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn signal(&self, sig: libc::c_int) -> anyhow::Result<()> {
        // SAFETY: signalling our own child.
        if unsafe { libc::kill(self.pid(), sig) } != 0 {
            bail!(
                "signal {sig} to {}: {}",
                self.name,
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    pub fn wait_timeout(&mut self, limit: Duration) -> anyhow::Result<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().context("waiting for a child")? {
                return Ok(s);
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "{} did not finish within {:?}; killed it{}",
                    self.name,
                    limit,
                    self.tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last lines of the child's log, for error messages.
    pub fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(8)..].join(" | ");
        if tail.is_empty() {
            String::new()
        } else {
            format!(" (its log: {tail})")
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_none() {
            self.kill();
        }
    }
}

/// A workload helper that talks in lines: commands on stdin, replies on stdout.
pub struct Worker {
    pub proc: Proc,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Worker {
    /// Starts `ctx-vm-work args` and waits for its `ready` line.
    pub fn start(name: &str, args: &[&str], limit: Duration) -> anyhow::Result<Self> {
        let mut proc = Proc::start(name, WORK, args, &Out::Pipe)?;
        let stdin = proc.child.stdin.take().context("no stdin pipe")?;
        let stdout = proc.child.stdout.take().context("no stdout pipe")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut w = Self { proc, stdin, lines };
        w.expect("ready", limit)?;
        Ok(w)
    }

    /// Waits for a line starting with `prefix`; returns the rest.
    pub fn expect(&mut self, prefix: &str, limit: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    if let Some(rest) = l.strip_prefix(prefix) {
                        return Ok(rest.trim().to_owned());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    bail!(
                        "{}: no {prefix:?} within {limit:?}{}",
                        self.proc.name,
                        self.proc.tail()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.proc.exited();
                    return Err(anyhow!(
                        "{} exited ({status:?}) before saying {prefix:?}{}",
                        self.proc.name,
                        self.proc.tail()
                    ));
                }
            }
        }
    }

    pub fn send(&mut self, cmd: &str) -> anyhow::Result<()> {
        writeln!(self.stdin, "{cmd}")
            .and_then(|()| self.stdin.flush())
            .with_context(|| format!("sending {cmd:?} to {}", self.proc.name))
    }
}

/// Runs ctxtop to completion and returns its JSON lines, parsed. Its stdout goes to a file, so
/// a slow reader can never stall it.
pub fn ctxtop<T: serde::de::DeserializeOwned>(
    name: &str,
    args: &[&str],
    limit: Duration,
) -> anyhow::Result<Vec<T>> {
    let mut p = Ctxtop::start(name, args)?;
    p.finish(limit)
}

/// A ctxtop running in the background.
pub struct Ctxtop {
    proc: Proc,
    out: PathBuf,
}

impl Ctxtop {
    pub fn start(name: &str, args: &[&str]) -> anyhow::Result<Self> {
        let out = Path::new(LOG_DIR).join(format!("{name}.json"));
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        let proc = Proc::start(name, CTXTOP, &full, &Out::File(out.clone()))?;
        Ok(Self { proc, out })
    }

    pub fn finish<T: serde::de::DeserializeOwned>(
        &mut self,
        limit: Duration,
    ) -> anyhow::Result<Vec<T>> {
        let status = self.proc.wait_timeout(limit)?;
        if !status.success() {
            bail!("{} failed ({status}){}", self.proc.name, self.proc.tail());
        }
        let text = std::fs::read_to_string(&self.out)
            .with_context(|| format!("reading {}", self.out.display()))?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).with_context(|| {
                    format!("{} printed a line that is not its JSON", self.proc.name)
                })
            })
            .collect()
    }
}
