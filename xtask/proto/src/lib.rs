//! The console protocol of the ctx test VM: one definition for the guest that prints it and for
//! `cargo xtask vm-test`, which reads it back from the serial console.
//!
//! Every line the guest prints starts with [`PREFIX`]. Three kinds carry meaning:
//!
//! ```text
//! ctx-vm: kernel 6.1.0-50-cloud-amd64
//! ctx-vm: check {"scenario":1,"name":"CPU 2 user share","measured":...,"required":...,"pass":true}
//! ctx-vm: kmsg 4 WARNING: CPU: 0 PID: 42 at kernel/sched/core.c:5611 sched_tick_remote+0x14e/0x1b0
//! ctx-vm: verdict pass
//! ```
//!
//! The console runs at `quiet` (errors and worse), so that what a scenario asks the kernel to
//! print (the per-CPU backtraces of `echo l > /proc/sysrq-trigger`) does not hold CPU 0 in the
//! serial driver for seconds. Before its verdict the guest forwards every kernel log record of
//! warning level or worse from /dev/kmsg as a `kmsg` line, so a `WARNING:` is still seen.
//!
//! Anything else after the prefix is a progress message. The guest prints its checks and the
//! verdict only after every scenario has finished, when the kernel is quiet, so that no kernel
//! message can land in the middle of them. The verdict line is printed exactly once, last.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Starts every line the guest prints.
pub const PREFIX: &str = "ctx-vm: ";

/// The scenarios of issue 3, by number. 0 is the harness's own setup and teardown.
pub const SCENARIOS: [(u8, &str); 9] = [
    (0, "setup"),
    (1, "user"),
    (2, "kernel"),
    (3, "idle"),
    (4, "nmi"),
    (5, "ipi"),
    (6, "no disturbance"),
    (7, "hotplug"),
    (8, "housekeeping"),
];

pub fn scenario_name(n: u8) -> &'static str {
    SCENARIOS
        .iter()
        .find(|(i, _)| *i == n)
        .map_or("?", |(_, name)| name)
}

/// What was measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Measured {
    Value {
        value: f64,
        unit: String,
    },
    Text {
        text: String,
    },
    /// The measurement could not be taken; the text says why.
    Error {
        error: String,
    },
}

impl Measured {
    pub fn value(value: f64, unit: &str) -> Self {
        Self::Value {
            value,
            unit: unit.to_owned(),
        }
    }

    pub fn count(n: u64, unit: &str) -> Self {
        Self::value(n as f64, unit)
    }

    pub fn text(text: impl Into<String>) -> Self {
        Self::Text { text: text.into() }
    }

    pub fn error(error: impl Into<String>) -> Self {
        Self::Error {
            error: error.into(),
        }
    }
}

impl fmt::Display for Measured {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Value { value, unit } => {
                write!(f, "{}", num(*value))?;
                if !unit.is_empty() {
                    write!(f, " {unit}")?;
                }
                Ok(())
            }
            Self::Text { text } => f.write_str(text),
            Self::Error { error } => write!(f, "error: {error}"),
        }
    }
}

/// What a measurement must satisfy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Requirement {
    AtLeast {
        min: f64,
    },
    /// Strictly greater.
    Above {
        min: f64,
    },
    /// `max` came from another measurement, named by `of`.
    AtMost {
        max: f64,
        of: String,
    },
    /// `target` came from another measurement, named by `of`.
    Within {
        target: f64,
        tolerance: f64,
        of: String,
    },
    Equals {
        text: String,
    },
}

impl Requirement {
    pub fn holds(&self, m: &Measured) -> bool {
        match (self, m) {
            (_, Measured::Error { .. }) => false,
            (Self::AtLeast { min }, Measured::Value { value, .. }) => value >= min,
            (Self::Above { min }, Measured::Value { value, .. }) => value > min,
            (Self::AtMost { max, .. }, Measured::Value { value, .. }) => value <= max,
            (
                Self::Within {
                    target, tolerance, ..
                },
                Measured::Value { value, .. },
            ) => (value - target).abs() <= *tolerance,
            (Self::Equals { text }, Measured::Text { text: t }) => t == text,
            _ => false,
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AtLeast { min } => write!(f, "≥ {}", num(*min)),
            Self::Above { min } => write!(f, "> {}", num(*min)),
            Self::AtMost { max, of } => write!(f, "≤ {} ({of})", num(*max)),
            Self::Within {
                target,
                tolerance,
                of,
            } if *tolerance == 0.0 => write!(f, "= {} ({of})", num(*target)),
            Self::Within {
                target,
                tolerance,
                of,
            } => write!(f, "{} ± {} ({of})", num(*target), num(*tolerance)),
            Self::Equals { text } => write!(f, "= {text}"),
        }
    }
}

/// Integers print without decimals, others with two.
fn num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}

/// One measured value against one requirement of a scenario.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub scenario: u8,
    pub name: String,
    pub measured: Measured,
    pub required: Requirement,
    /// As the guest evaluated it; xtask evaluates it again and rejects a disagreement.
    pub pass: bool,
    /// Detail that explains the number (per-CPU breakdown, the other window, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Check {
    pub fn new(
        scenario: u8,
        name: impl Into<String>,
        measured: Measured,
        required: Requirement,
    ) -> Self {
        let pass = required.holds(&measured);
        Self {
            scenario,
            name: name.into(),
            measured,
            required,
            pass,
            note: None,
        }
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "fail",
        }
    }
}

/// A console line that came from the guest.
#[derive(Clone, Debug, PartialEq)]
pub enum Line {
    Kernel(String),
    /// A kernel log record of warning level or worse: (level, text).
    Kmsg(u8, String),
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
    /// `None` for lines that are not the guest's (kernel messages, firmware).
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
            Self::Check(c) => {
                let json = serde_json::to_string(c).map_err(|_| fmt::Error)?;
                write!(f, "check {json}")
            }
            Self::Verdict(v) => write!(f, "verdict {}", v.as_str()),
            Self::Progress(p) => f.write_str(p),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            Line::Check(c),
            Line::Verdict(Verdict::Fail),
            Line::Progress("[6] stopped window".into()),
        ] {
            let text = l.to_string();
            assert!(text.starts_with(PREFIX));
            assert_eq!(Line::parse(&text).unwrap().unwrap(), l);
        }
        assert!(Line::parse("[    1.0] Kernel panic - not syncing").is_none());
        assert!(Line::parse("ctx-vm: verdict maybe").unwrap().is_err());
        assert!(Line::parse("ctx-vm: check {").unwrap().is_err());
    }

    #[test]
    fn requirements() {
        let v = |x| Measured::value(x, "%");
        assert!(Requirement::AtLeast { min: 98.0 }.holds(&v(98.0)));
        assert!(!Requirement::AtLeast { min: 98.0 }.holds(&v(97.99)));
        assert!(!Requirement::Above { min: 0.0 }.holds(&v(0.0)));
        let w = Requirement::Within {
            target: 10.0,
            tolerance: 2.0,
            of: "x".into(),
        };
        assert!(w.holds(&v(12.0)) && w.holds(&v(8.0)) && !w.holds(&v(12.5)));
        let at_most = Requirement::AtMost {
            max: 0.0,
            of: "stopped".into(),
        };
        assert!(at_most.holds(&v(0.0)) && !at_most.holds(&v(1.0)));
        let eq = Requirement::Equals {
            text: "context_tracking".into(),
        };
        assert!(eq.holds(&Measured::text("context_tracking")));
        assert!(!eq.holds(&Measured::text("syscalls")));
        assert!(!eq.holds(&v(1.0)), "a number never equals a text");
        assert!(!Requirement::AtLeast { min: 0.0 }.holds(&Measured::error("no JSON")));
    }

    #[test]
    fn display() {
        assert_eq!(Measured::value(99.5, "%").to_string(), "99.50 %");
        assert_eq!(Measured::count(3, "").to_string(), "3");
        assert_eq!(Requirement::AtLeast { min: 98.0 }.to_string(), "≥ 98");
        assert_eq!(
            Requirement::Within {
                target: 1.0,
                tolerance: 0.0,
                of: "NMI Δ".into()
            }
            .to_string(),
            "= 1 (NMI Δ)"
        );
    }
}
