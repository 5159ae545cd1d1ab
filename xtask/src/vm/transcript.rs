//! What a guest said on the console during one boot, and the one check of it both suites make:
//! exactly one verdict, the kernel that was meant to boot, every check evaluated again from its
//! measured value, every scenario that applies to the kernel heard from, and a verdict that
//! follows from all that.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ctx_vm_proto::suite::Suite;
use ctx_vm_proto::{Check, Line, PREFIX, Verdict};

use super::qemu::{self, Seen, Trouble};

/// A guest's lines of one boot.
#[derive(Debug, Default)]
pub struct Transcript {
    /// `uname -r` as the guest reported it.
    pub release: Option<String>,
    /// The live window the guest opened, in seconds.
    pub live: Option<u64>,
    pub checks: Vec<Check>,
    pub verdicts: Vec<Verdict>,
    /// Malformed guest lines, and kernel trouble in the records the guest forwarded.
    pub problems: Vec<String>,
}

impl Transcript {
    /// Takes in one console line. The guest's lines are recorded (a malformed one as a
    /// problem) and returned; everything else is left to the runner's kernel-trouble
    /// classifier. `progress` gets the guest's progress and the trouble it forwarded.
    pub fn feed(&mut self, line: &str, progress: &dyn Fn(&str)) -> (Seen, Option<Line>) {
        let Some(parsed) = Line::parse(qemu::from_prefix(line, PREFIX)) else {
            return (Seen::Other, None);
        };
        let l = match parsed {
            Ok(l) => l,
            Err(e) => {
                self.problems.push(e.to_string());
                return (Seen::Guest, None);
            }
        };
        match &l {
            Line::Kernel(r) => self.release = Some(r.clone()),
            Line::Kmsg(_, text) => {
                if let Some(Trouble::Fatal(what) | Trouble::Failure(what)) = qemu::trouble(text) {
                    progress(&format!("kernel log: {text}"));
                    self.problems.push(format!("{what}: {}", text.trim()));
                }
            }
            Line::Live(s) => self.live = Some(*s),
            Line::Check(c) => self.checks.push(c.clone()),
            Line::Verdict(v) => {
                self.verdicts.push(*v);
                return (Seen::Verdict, Some(l));
            }
            Line::Progress(p) => progress(p),
        }
        (Seen::Guest, Some(l))
    }

    /// Everything wrong with the transcript of a run of `suite` that was to boot `release`,
    /// failed checks included. Empty means pass.
    pub fn failures(&self, suite: &Suite, release: &str) -> Vec<String> {
        let mut f = self.problems.clone();
        match &self.release {
            Some(r) if r == release => {}
            Some(r) => f.push(format!("booted kernel {r}, expected {release}")),
            None => f.push("the guest never reported its kernel".into()),
        }
        for c in &self.checks {
            let holds = c.required.holds(&c.measured);
            if holds != c.pass {
                f.push(format!(
                    "check \"{}\": the guest says {}, the requirement says {}",
                    c.name,
                    Verdict::of(c.pass).as_str(),
                    Verdict::of(holds).as_str()
                ));
            } else if !holds {
                f.push(format!(
                    "[{} {}] {}: {} (required {}){}",
                    c.scenario,
                    suite.scenario_name(c.scenario),
                    c.name,
                    c.measured,
                    c.required,
                    c.note.as_ref().map_or(String::new(), |n| format!("; {n}"))
                ));
            }
        }
        f.extend(suite.gaps(&self.checks, release));
        let expected = suite.verdict(&self.checks, release);
        match self.verdicts.as_slice() {
            [] => f.push("no verdict line from the guest".into()),
            [v] if *v != expected => f.push(format!(
                "the guest's verdict is {} but its checks say {}",
                v.as_str(),
                expected.as_str()
            )),
            [_] => {}
            many => f.push(format!(
                "{} verdict lines, expected exactly one",
                many.len()
            )),
        }
        f
    }
}

/// What one boot produced.
#[derive(Debug, Default)]
pub struct Outcome {
    pub transcript: Transcript,
    /// What the runner saw (kernel trouble, a timeout, qemu failing) and what the suite's host
    /// side found: each fails the run.
    pub problems: Vec<String>,
    /// Power-on to qemu's exit.
    pub elapsed: Duration,
    /// Power-on to the verdict.
    pub to_verdict: Option<Duration>,
}

impl Outcome {
    /// Everything that fails the run; empty means pass. The runner's findings first: a timeout
    /// or a panic explains what else went wrong.
    pub fn failures(&self, suite: &Suite, release: &str) -> Vec<String> {
        let mut f = self.problems.clone();
        f.extend(self.transcript.failures(suite, release));
        f
    }
}

/// Runs qemu (`cmd`), writing its console to `log`, and reads the guest's transcript from it.
/// `on_guest` sees each of the guest's lines as it comes; `progress` gets the guest's progress
/// and the kernel's trouble.
pub fn boot(
    cmd: &mut Command,
    log: &Path,
    timeout: Duration,
    progress: &dyn Fn(&str),
    on_guest: &mut dyn FnMut(&Line),
) -> anyhow::Result<Outcome> {
    let mut t = Transcript::default();
    let run = qemu::run(
        cmd,
        log,
        timeout,
        &mut |line| {
            let (seen, l) = t.feed(line, progress);
            if let Some(l) = &l {
                on_guest(l);
            }
            seen
        },
        progress,
    )?;
    Ok(Outcome {
        transcript: t,
        problems: run.problems,
        elapsed: run.elapsed,
        to_verdict: run.to_verdict,
    })
}

/// Transcripts for the suites' tests.
#[cfg(test)]
pub mod fixture {
    use ctx_vm_proto::suite::Suite;
    use ctx_vm_proto::{Check, Line, Measured, Requirement, Verdict};

    use super::Transcript;
    use crate::vm::qemu::Seen;

    pub const RELEASE: &str = "6.12.117+deb13-cloud-amd64";

    pub fn feed(t: &mut Transcript, l: &Line) -> Seen {
        t.feed(&l.to_string(), &|_| {}).0
    }

    /// A run of `suite` in which every scenario (and fixed check) passed.
    pub fn passing(suite: &Suite) -> Transcript {
        let mut t = Transcript::default();
        feed(&mut t, &Line::Kernel(RELEASE.into()));
        let ok = |scenario, name: &str| {
            Check::new(
                scenario,
                name,
                Measured::text("yes"),
                Requirement::equals("yes"),
            )
        };
        if suite.checks.is_empty() {
            for s in suite.scenarios {
                feed(&mut t, &Line::Check(ok(s.id, s.name)));
            }
        } else {
            for (id, name) in suite.checks {
                feed(&mut t, &Line::Check(ok(*id, name)));
            }
        }
        feed(&mut t, &Line::Verdict(Verdict::Pass));
        t
    }
}

#[cfg(test)]
mod tests {
    use ctx_vm_proto::suite::{INITRAMFS, SYSTEMD};
    use ctx_vm_proto::{Measured, Requirement};

    use super::fixture::{RELEASE, feed, passing};
    use super::*;

    #[test]
    fn clean_runs_pass() {
        for suite in [&INITRAMFS, &SYSTEMD] {
            assert_eq!(
                passing(suite).failures(suite, RELEASE),
                Vec::<String>::new(),
                "{}",
                suite.name
            );
        }
    }

    #[test]
    fn verdicts_must_be_one_and_follow_from_the_checks() {
        let mut t = passing(&INITRAMFS);
        t.verdicts.clear();
        assert_eq!(
            t.failures(&INITRAMFS, RELEASE),
            vec!["no verdict line from the guest"]
        );
        let mut t = passing(&INITRAMFS);
        feed(&mut t, &Line::Verdict(Verdict::Pass));
        assert_eq!(
            t.failures(&INITRAMFS, RELEASE),
            vec!["2 verdict lines, expected exactly one"]
        );
        let mut t = passing(&INITRAMFS);
        t.verdicts = vec![Verdict::Fail];
        assert_eq!(
            t.failures(&INITRAMFS, RELEASE),
            vec!["the guest's verdict is fail but its checks say pass"]
        );
    }

    #[test]
    fn checks_are_evaluated_again() {
        // The guest claims a pass that its own measurement does not support.
        let mut t = passing(&INITRAMFS);
        let mut c = Check::new(
            1,
            "CPU 2 user share",
            Measured::value(97.0, "%"),
            Requirement::at_least(98.0),
        );
        c.pass = true;
        t.checks.push(c);
        let f = t.failures(&INITRAMFS, RELEASE);
        assert_eq!(
            f,
            vec![
                "check \"CPU 2 user share\": the guest says pass, the requirement says fail",
                "the guest's verdict is pass but its checks say fail"
            ]
        );
        // An honest failure names its scenario, value and requirement.
        let mut t = passing(&INITRAMFS);
        t.checks.push(
            Check::new(
                2,
                "CPU 3 kernel share",
                Measured::value(80.0, "%"),
                Requirement::at_least(90.0),
            )
            .note("user 20 %"),
        );
        t.verdicts = vec![Verdict::Fail];
        assert_eq!(
            t.failures(&INITRAMFS, RELEASE),
            vec!["[2 kernel] CPU 3 kernel share: 80 % (required ≥ 90); user 20 %"]
        );
    }

    #[test]
    fn every_applying_scenario_and_fixed_check_must_report() {
        let mut t = passing(&INITRAMFS);
        t.checks.retain(|c| c.scenario != 7);
        assert_eq!(
            t.failures(&INITRAMFS, RELEASE),
            vec![
                "scenario 7 (hotplug) reported nothing",
                "the guest's verdict is pass but its checks say fail"
            ]
        );
        let mut t = passing(&SYSTEMD);
        t.checks.swap(12, 13);
        let last = t.checks[18].clone();
        t.checks.push(last);
        t.verdicts = vec![Verdict::Fail];
        assert_eq!(
            t.failures(&SYSTEMD, RELEASE),
            vec![
                "check \"kill -9 restarted by systemd\" out of order",
                "check \"kill -9 counters monotonic\" out of order",
                "check \"journal of ctx has no errors\" printed 2 times"
            ]
        );
        let mut t = passing(&SYSTEMD);
        t.checks.pop();
        t.verdicts = vec![Verdict::Fail];
        assert_eq!(
            t.failures(&SYSTEMD, RELEASE),
            vec!["check \"journal of ctx has no errors\" missing"]
        );
    }

    #[test]
    fn console_lines() {
        let mut t = Transcript::default();
        let p = |_: &str| {};
        // Firmware escape sequences before the guest's first line.
        assert_eq!(
            t.feed(
                &format!("\x1b[2J\x1b[01;01H{PREFIX}kernel 6.1.0-50-cloud-amd64"),
                &p
            )
            .0,
            Seen::Guest
        );
        assert_eq!(t.release.as_deref(), Some("6.1.0-50-cloud-amd64"));
        assert_eq!(t.feed("[    0.5] some kernel line", &p).0, Seen::Other);
        // The kernel's warnings, forwarded from /dev/kmsg, are trouble; the guest goes on.
        assert_eq!(
            t.feed(
                &format!("{PREFIX}kmsg 4 WARNING: CPU: 0 PID: 42 at kernel/sched/core.c:5611 x"),
                &p
            )
            .0,
            Seen::Guest
        );
        assert_eq!(t.problems.len(), 1, "{:?}", t.problems);
        assert_eq!(
            t.feed(&format!("{PREFIX}live 300"), &p),
            (Seen::Guest, Some(Line::Live(300)))
        );
        // Malformed: the guest's, and a problem of the transcript, not kernel output.
        assert_eq!(
            t.feed(&format!("{PREFIX}verdict maybe"), &p),
            (Seen::Guest, None)
        );
        assert_eq!(t.problems.len(), 2);
        assert_eq!(
            t.feed(&format!("{PREFIX}verdict pass"), &p).0,
            Seen::Verdict
        );
        assert_eq!(t.verdicts, vec![Verdict::Pass]);
        assert_eq!(t.live, Some(300));
    }
}
