//! One check of a VM suite: what the guest measured, what it must satisfy, and the guest's own
//! reading of it. The host evaluates every check again from `measured` and `required`.

use std::fmt;

use serde::{Deserialize, Serialize};

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
    /// The kernel lacks what the check measures; `reason` says what. Holds only for a
    /// measurement of [`NOT_APPLICABLE`], so a check cannot pass this way by accident.
    NotApplicable {
        reason: String,
    },
}

/// What a check measures where its requirement is [`Requirement::NotApplicable`].
pub const NOT_APPLICABLE: &str = "n/a";

impl Requirement {
    pub fn holds(&self, m: &Measured) -> bool {
        match (self, m) {
            (Self::NotApplicable { .. }, Measured::Text { text }) => text == NOT_APPLICABLE,
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

impl Requirement {
    pub fn at_least(min: f64) -> Self {
        Self::AtLeast { min }
    }

    pub fn equals(text: &str) -> Self {
        Self::Equals {
            text: text.to_owned(),
        }
    }

    /// Exactly `target`, which came from `of`.
    pub fn exactly(target: u64, of: &str) -> Self {
        Self::Within {
            target: target as f64,
            tolerance: 0.0,
            of: of.to_owned(),
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
            Self::NotApplicable { reason } => write!(f, "n/a: {reason}"),
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

    /// A check that fails because its scenario could not run: `error` says why.
    pub fn broken(scenario: u8, name: impl Into<String>, error: impl Into<String>) -> Self {
        Self::new(
            scenario,
            name,
            Measured::error(error),
            Requirement::equals("no error"),
        )
    }

    /// A check the kernel cannot have (no context tracking, say): reported, with the reason,
    /// instead of failing.
    pub fn not_applicable(
        scenario: u8,
        name: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self::new(
            scenario,
            name,
            Measured::text(NOT_APPLICABLE),
            Requirement::NotApplicable {
                reason: reason.into(),
            },
        )
    }

    #[must_use]
    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }

    /// A check of several conditions: it measures how many fail, and requires none. The failed
    /// ones lead the note, then `detail`.
    pub fn all_of(
        scenario: u8,
        name: impl Into<String>,
        conditions: &[(&str, bool)],
        detail: impl Into<String>,
    ) -> Self {
        let unmet: Vec<&str> = conditions
            .iter()
            .filter(|(_, holds)| !holds)
            .map(|(c, _)| *c)
            .collect();
        let detail = detail.into();
        Self::new(
            scenario,
            name,
            Measured::count(
                unmet.len() as u64,
                &format!("of {} unmet", conditions.len()),
            ),
            Requirement::exactly(0, "all hold"),
        )
        .note(if unmet.is_empty() {
            detail
        } else {
            format!("unmet: {}; {detail}", unmet.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn all_of_counts_unmet_conditions() {
        let c = Check::all_of(
            3,
            "unit up",
            &[("active", true), ("notify", false)],
            "Type=simple",
        );
        assert!(!c.pass);
        assert_eq!(c.measured.to_string(), "1 of 2 unmet");
        assert_eq!(c.required.to_string(), "= 0 (all hold)");
        assert_eq!(c.note.as_deref(), Some("unmet: notify; Type=simple"));
        let ok = Check::all_of(3, "unit up", &[("active", true)], "fine");
        assert!(ok.pass && ok.note.as_deref() == Some("fine"));
    }
}
