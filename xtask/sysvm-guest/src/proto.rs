//! The console protocol of the systemd VM: one definition for `ctx-sysvm-check`, which prints
//! it on ttyS0, and for the host, which reads it back from qemu's serial console.
//!
//! ```text
//! ctx-sysvm: kernel 6.1.0-50-cloud-amd64
//! ctx-sysvm: live 240
//! ctx-sysvm: check ok systemctl start ctx: 4.1 s
//! ctx-sysvm: check FAIL kill -9 restarted by systemd: NRestarts 0 after 60 s (want 1)
//! ctx-sysvm: verdict fail
//! ```
//!
//! Anything else after the prefix is progress. The guest prints its checks, in the order of
//! [`CHECKS`], and then exactly one verdict, only after its workload has stopped, so that a
//! burst of kernel messages (sysrq backtraces) cannot land inside them. The host rejects a
//! missing, unknown or repeated check, a missing or repeated verdict, and a verdict that does
//! not follow from the checks.

use std::fmt;

/// Starts every line the guest prints.
pub const PREFIX: &str = "ctx-sysvm: ";

/// Kernel command-line parameter: hold the live window (workload running, ctx serving) for up
/// to this many seconds, until the host sends `GET /done` to [`POKE_PORT`].
pub const LIVE_PARAM: &str = "ctx.sysvm.live";

/// ctx's port, as `/etc/ctx/ctx.toml` sets it; the host forwards a loopback port to it.
pub const METRICS_PORT: u16 = 10977;

/// Where the guest listens, during the live window, for the host's `GET /done`.
pub const POKE_PORT: u16 = 10978;

/// Every check the guest makes, in the order it prints them. Names hold no `:`.
pub const CHECKS: [&str; 19] = [
    "boot reached running",
    "nohz_full is 1-3",
    "bpffs mounted on /sys/fs/bpf by systemd",
    "systemd-sysusers created user ctx",
    "systemctl enable ctx",
    "systemctl start ctx",
    "active and running",
    "READY with a STATUS line",
    "runs as ctx with CAP_BPF only",
    "/metrics served",
    "/healthz is 200",
    "counters move under the workload",
    "kill -9 restarted by systemd",
    "kill -9 counters monotonic",
    "kill -9 no second attach",
    "systemctl stop is clean",
    "start after stop reuses the pins",
    "systemd-analyze security exposure",
    "journal of ctx has no errors",
];

/// What the kinds of line other than progress start with, after [`PREFIX`].
const KEYWORDS: [&str; 4] = ["kernel ", "live ", "check ", "verdict "];

/// The exposure `systemd-analyze security ctx` may report at most (issue 6).
pub const MAX_EXPOSURE: f64 = 2.5;

#[derive(Clone, Debug, PartialEq)]
pub enum Line {
    /// `uname -r` of the guest.
    Kernel(String),
    /// The live window is open for at most this many seconds.
    Live(u64),
    Check {
        ok: bool,
        name: String,
        detail: String,
    },
    Verdict(bool),
    Progress(String),
}

impl Line {
    /// `None` for lines that are not the guest's (kernel, systemd, firmware).
    pub fn parse(line: &str) -> Option<Result<Self, String>> {
        let rest = line.strip_prefix(PREFIX)?;
        let bad = |why: &str| Err(format!("malformed guest line {line:?}: {why}"));
        Some(if let Some(r) = rest.strip_prefix("kernel ") {
            Ok(Self::Kernel(r.trim().to_owned()))
        } else if let Some(r) = rest.strip_prefix("live ") {
            match r.trim().parse() {
                Ok(s) => Ok(Self::Live(s)),
                Err(_) => bad("live wants a number of seconds"),
            }
        } else if let Some(r) = rest.strip_prefix("check ") {
            let (ok, r) = if let Some(r) = r.strip_prefix("ok ") {
                (true, r)
            } else if let Some(r) = r.strip_prefix("FAIL ") {
                (false, r)
            } else {
                return Some(bad("check wants ok or FAIL"));
            };
            match r.split_once(": ") {
                Some((name, detail)) => Ok(Self::Check {
                    ok,
                    name: name.to_owned(),
                    detail: detail.to_owned(),
                }),
                None => bad("check wants NAME: DETAIL"),
            }
        } else if let Some(r) = rest.strip_prefix("verdict ") {
            match r.trim() {
                "pass" => Ok(Self::Verdict(true)),
                "fail" => Ok(Self::Verdict(false)),
                _ => bad("verdict wants pass or fail"),
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
            Self::Live(s) => write!(f, "live {s}"),
            Self::Check { ok, name, detail } => {
                // One line, whatever the detail holds.
                let detail = detail.replace(['\n', '\r'], " / ");
                write!(
                    f,
                    "check {} {name}: {detail}",
                    if *ok { "ok" } else { "FAIL" }
                )
            }
            Self::Verdict(p) => write!(f, "verdict {}", if *p { "pass" } else { "fail" }),
            // A progress text that starts like another kind of line is set off, so that it
            // parses back as progress.
            Self::Progress(p) if KEYWORDS.iter().any(|k| p.starts_with(k)) => write!(f, "- {p}"),
            Self::Progress(p) => f.write_str(p),
        }
    }
}

/// What the host makes of the guest's lines of one boot.
#[derive(Debug, Default)]
pub struct Transcript {
    pub kernel: Option<String>,
    pub live: Option<u64>,
    pub checks: Vec<(bool, String, String)>,
    pub verdicts: Vec<bool>,
    pub malformed: Vec<String>,
}

impl Transcript {
    /// Feeds one console line; returns what it was, when it was the guest's.
    pub fn feed(&mut self, line: &str) -> Option<Line> {
        match Line::parse(line)? {
            Err(e) => {
                self.malformed.push(e);
                None
            }
            Ok(l) => {
                match &l {
                    Line::Kernel(r) => self.kernel = Some(r.clone()),
                    Line::Live(s) => self.live = Some(*s),
                    Line::Check { ok, name, detail } => {
                        self.checks.push((*ok, name.clone(), detail.clone()))
                    }
                    Line::Verdict(v) => self.verdicts.push(*v),
                    Line::Progress(_) => {}
                }
                Some(l)
            }
        }
    }

    /// Everything wrong with the transcript, the failed checks included. Empty means pass.
    pub fn failures(&self) -> Vec<String> {
        let mut f = self.malformed.clone();
        if self.kernel.is_none() {
            f.push("the guest never reported its kernel".into());
        }
        for (i, want) in CHECKS.iter().enumerate() {
            let seen: Vec<_> = self.checks.iter().filter(|c| c.1 == *want).collect();
            match seen.as_slice() {
                [] => f.push(format!("check \"{want}\" missing")),
                [(true, ..)] => {}
                [(false, _, d)] => f.push(format!("{want}: {d}")),
                _ => f.push(format!("check \"{want}\" printed {} times", seen.len())),
            }
            if self.checks.get(i).is_some_and(|c| c.1 != *want) && seen.len() == 1 {
                f.push(format!("check \"{want}\" out of order"));
            }
        }
        for (_, name, _) in &self.checks {
            if !CHECKS.contains(&name.as_str()) {
                f.push(format!("unknown check \"{name}\""));
            }
        }
        let all_ok = self.checks.iter().all(|c| c.0) && self.checks.len() == CHECKS.len();
        match self.verdicts.as_slice() {
            [] => f.push("no verdict line from the guest".into()),
            [v] if *v != all_ok => f.push(format!(
                "the guest's verdict is {} but its checks say {}",
                if *v { "pass" } else { "fail" },
                if all_ok { "pass" } else { "fail" }
            )),
            [_] => {}
            many => f.push(format!("{} verdict lines, expected one", many.len())),
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        for l in [
            Line::Kernel("6.1.0-50-cloud-amd64".into()),
            Line::Live(240),
            Line::Check {
                ok: true,
                name: "systemctl start ctx".into(),
                detail: "4.1 s".into(),
            },
            Line::Check {
                ok: false,
                name: "kill -9 restarted by systemd".into(),
                detail: "NRestarts 0: after 60 s".into(),
            },
            Line::Verdict(false),
            Line::Progress("starting the workload".into()),
        ] {
            let s = l.to_string();
            assert!(!s.contains('\n'));
            assert_eq!(Line::parse(&s), Some(Ok(l)), "{s}");
        }
        // Progress that looks like another kind of line stays progress.
        let p = Line::Progress("live window closed after 4 s".into()).to_string();
        assert_eq!(
            Line::parse(&p),
            Some(Ok(Line::Progress("- live window closed after 4 s".into())))
        );
        assert_eq!(Line::parse("[    1.0] systemd[1]: started"), None);
        assert!(matches!(
            Line::parse("ctx-sysvm: verdict maybe"),
            Some(Err(_))
        ));
        assert!(matches!(
            Line::parse("ctx-sysvm: check ok no colon"),
            Some(Err(_))
        ));
    }

    #[test]
    fn check_names_parse_back() {
        for n in CHECKS {
            assert!(!n.contains(':'), "{n}");
        }
    }

    fn full(fail: Option<&str>, verdict: Option<bool>) -> Transcript {
        let mut t = Transcript::default();
        t.feed("ctx-sysvm: kernel 6.12.117+deb13-cloud-amd64");
        for n in CHECKS {
            let ok = fail != Some(n);
            t.feed(
                &Line::Check {
                    ok,
                    name: n.into(),
                    detail: "x".into(),
                }
                .to_string(),
            );
        }
        if let Some(v) = verdict {
            t.feed(&Line::Verdict(v).to_string());
        }
        t
    }

    #[test]
    fn transcript_rules() {
        assert!(full(None, Some(true)).failures().is_empty());
        let f = full(Some("kill -9 counters monotonic"), Some(false)).failures();
        assert_eq!(f, vec!["kill -9 counters monotonic: x".to_owned()]);
        // A pass verdict over a failed check is itself a failure.
        assert_eq!(
            full(Some("journal of ctx has no errors"), Some(true))
                .failures()
                .len(),
            2
        );
        assert_eq!(
            full(None, None).failures(),
            vec!["no verdict line from the guest".to_owned()]
        );
        let mut t = full(None, Some(true));
        t.feed("ctx-sysvm: verdict pass");
        assert_eq!(t.failures().len(), 1);
        let mut t = Transcript::default();
        t.feed("ctx-sysvm: kernel x");
        t.feed("ctx-sysvm: verdict pass");
        // Every check missing, and a pass verdict without them.
        assert_eq!(t.failures().len(), CHECKS.len() + 1);
    }
}
