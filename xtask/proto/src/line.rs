//! The console protocol of both VM suites: one definition for the guests that print it and for
//! `cargo xtask vm-test`, which reads it back from the serial console.
//!
//! Every line a guest prints starts with [`PREFIX`]. These kinds carry meaning:
//!
//! ```text
//! ctx-vm: kernel 6.1.0-50-cloud-amd64
//! ctx-vm: kmsg 4 WARNING: CPU: 0 PID: 42 at kernel/sched/core.c:5611 sched_tick_remote+0x14e/0x1b0
//! ctx-vm: live 300
//! ctx-vm: check {"scenario":1,"name":"CPU 2 user share","measured":...,"required":...,"pass":true}
//! ctx-vm: verdict pass
//! ```
//!
//! `kmsg` forwards a kernel log record of warning level or worse: the initramfs console runs at
//! `quiet`, so that what a scenario asks the kernel to print (the per-CPU backtraces of sysrq-l)
//! does not hold CPU 0 in the serial driver for seconds. `live` says the systemd guest holds its
//! live window open for the host. Anything else after the prefix is progress.
//!
//! A guest prints its checks and then exactly one verdict, last, only after its workloads have
//! stopped and the kernel is quiet, so that no kernel message can land in the middle of them.

use std::fmt;

use crate::check::Check;

/// Starts every line a guest prints.
pub const PREFIX: &str = "ctx-vm: ";

/// What the kinds of line other than progress start with, after [`PREFIX`].
const KEYWORDS: [&str; 5] = ["kernel ", "kmsg ", "live ", "check ", "verdict "];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
}

impl Verdict {
    pub fn of(pass: bool) -> Self {
        if pass { Self::Pass } else { Self::Fail }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "fail",
        }
    }
}

/// A console line that came from a guest.
#[derive(Clone, Debug, PartialEq)]
pub enum Line {
    /// `uname -r` of the guest.
    Kernel(String),
    /// A kernel log record of warning level or worse: (level, text).
    Kmsg(u8, String),
    /// The live window is open for at most this many seconds.
    Live(u64),
    Check(Check),
    Verdict(Verdict),
    Progress(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineError {
    pub line: String,
    pub reason: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed guest line {:?}: {}", self.line, self.reason)
    }
}

impl std::error::Error for LineError {}

impl Line {
    /// `None` for lines that are not a guest's (kernel messages, systemd, firmware).
    pub fn parse(line: &str) -> Option<Result<Self, LineError>> {
        let rest = line.strip_prefix(PREFIX)?;
        let err = |reason: String| LineError {
            line: line.to_owned(),
            reason,
        };
        Some(if let Some(r) = rest.strip_prefix("kernel ") {
            Ok(Self::Kernel(r.trim().to_owned()))
        } else if let Some(r) = rest.strip_prefix("kmsg ") {
            let (level, text) = r.split_once(' ').unwrap_or((r, ""));
            level
                .parse()
                .map(|l| Self::Kmsg(l, text.to_owned()))
                .map_err(|_| err(format!("bad kmsg level {level:?}")))
        } else if let Some(r) = rest.strip_prefix("live ") {
            r.trim()
                .parse()
                .map(Self::Live)
                .map_err(|_| err("live wants a number of seconds".into()))
        } else if let Some(r) = rest.strip_prefix("check ") {
            serde_json::from_str(r)
                .map(Self::Check)
                .map_err(|e| err(e.to_string()))
        } else if let Some(r) = rest.strip_prefix("verdict ") {
            match r.trim() {
                "pass" => Ok(Self::Verdict(Verdict::Pass)),
                "fail" => Ok(Self::Verdict(Verdict::Fail)),
                other => Err(err(format!("unknown verdict {other:?}"))),
            }
        } else {
            Ok(Self::Progress(rest.to_owned()))
        })
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(PREFIX)?;
        match self {
            Self::Kernel(r) => write!(f, "kernel {r}"),
            Self::Kmsg(l, t) => write!(f, "kmsg {l} {t}"),
            Self::Live(s) => write!(f, "live {s}"),
            Self::Check(c) => {
                let json = serde_json::to_string(c).map_err(|_| fmt::Error)?;
                write!(f, "check {json}")
            }
            Self::Verdict(v) => write!(f, "verdict {}", v.as_str()),
            // One line, whatever the text holds; a progress text that starts like another kind
            // of line is set off, so that it parses back as progress.
            Self::Progress(p) => {
                let p = p.replace(['\n', '\r'], " / ");
                if KEYWORDS.iter().any(|k| p.starts_with(k)) {
                    write!(f, "- {p}")
                } else {
                    f.write_str(&p)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{Measured, Requirement};

    #[test]
    fn lines_round_trip() {
        let c = Check::new(
            5,
            "CAL IPIs arriving in user on CPU 2",
            Measured::count(201, "IPIs"),
            Requirement::Within {
                target: 200.0,
                tolerance: 2.0,
                of: "/proc/interrupts CAL Δ".into(),
            },
        )
        .note("call_function_single 201/0/0");
        assert!(c.pass);
        for l in [
            Line::Kernel("6.1.0-50-cloud-amd64".into()),
            Line::Kmsg(
                4,
                "WARNING: CPU: 0 PID: 42 at kernel/sched/core.c:5611".into(),
            ),
            Line::Live(240),
            Line::Check(c),
            Line::Verdict(Verdict::Fail),
            Line::Progress("[6] stopped window".into()),
        ] {
            let text = l.to_string();
            assert!(text.starts_with(PREFIX) && !text.contains('\n'), "{text}");
            assert_eq!(Line::parse(&text).unwrap().unwrap(), l);
        }
        assert!(Line::parse("[    1.0] Kernel panic - not syncing").is_none());
        assert!(Line::parse("ctx-vm: verdict maybe").unwrap().is_err());
        assert!(Line::parse("ctx-vm: check {").unwrap().is_err());
        assert!(Line::parse("ctx-vm: live soon").unwrap().is_err());
    }

    #[test]
    fn progress_stays_progress() {
        let p = Line::Progress("live window closed after 4 s\nbye".into()).to_string();
        assert_eq!(
            Line::parse(&p),
            Some(Ok(Line::Progress(
                "- live window closed after 4 s / bye".into()
            )))
        );
    }
}
