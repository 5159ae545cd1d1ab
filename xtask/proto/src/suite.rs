//! What each VM suite runs, in one place: its scenarios with the kernels they apply to, and the
//! checks the systemd suite prints. A guest runs what applies to the kernel it booted; the host
//! expects a report from every scenario that applies to that kernel, and nothing else.

use crate::check::Check;
use crate::line::Verdict;

/// A kernel version, as far as scenarios care: major and minor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion {
    pub major: u32,
    pub minor: u32,
}

impl KernelVersion {
    pub const fn new(major: u32, minor: u32) -> Self {
        Self { major, minor }
    }

    /// The version `uname -r` starts with: `6.12.117+deb13-cloud-amd64` is 6.12.
    pub fn of_release(release: &str) -> Option<Self> {
        let mut parts = release.split(|c: char| !c.is_ascii_digit());
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(Self { major, minor })
    }
}

/// One scenario of a suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scenario {
    pub id: u8,
    pub name: &'static str,
    /// The first kernel that has what the scenario needs (its tracepoints, say); `None`: every
    /// kernel.
    pub since: Option<KernelVersion>,
}

impl Scenario {
    const fn on_every_kernel(id: u8, name: &'static str) -> Self {
        Self {
            id,
            name,
            since: None,
        }
    }

    /// Whether the scenario runs on the kernel `uname -r` calls `release`. A release that does
    /// not parse runs only the scenarios every kernel has.
    pub fn applies_to(&self, release: &str) -> bool {
        self.since
            .is_none_or(|v| KernelVersion::of_release(release).is_some_and(|k| k >= v))
    }
}

/// The checks of a suite's harness itself (setup and teardown), which every run reports.
pub const SETUP: Scenario = Scenario::on_every_kernel(0, "setup");

/// A suite: the scenarios it runs and, where a run must print a fixed set of checks, those.
#[derive(Debug)]
pub struct Suite {
    pub name: &'static str,
    pub scenarios: &'static [Scenario],
    /// (scenario, check name) that a run prints exactly once each, in this order; empty where a
    /// scenario's checks depend on what it finds (the initramfs suite's per-row IPI checks).
    pub checks: &'static [(u8, &'static str)],
}

impl Suite {
    pub fn scenario(&self, id: u8) -> Option<&'static Scenario> {
        if id == SETUP.id {
            return Some(&SETUP);
        }
        self.scenarios.iter().find(|s| s.id == id)
    }

    pub fn scenario_name(&self, id: u8) -> &'static str {
        self.scenario(id).map_or("?", |s| s.name)
    }

    /// What a run's checks come to on the kernel `release`: pass when every check holds and
    /// nothing is missing ([`Suite::gaps`]). The guest prints it; the host works it out again
    /// and rejects a guest that disagrees.
    pub fn verdict(&self, checks: &[Check], release: &str) -> Verdict {
        Verdict::of(
            checks.iter().all(|c| c.required.holds(&c.measured))
                && self.gaps(checks, release).is_empty(),
        )
    }

    /// What is missing from a run's checks on the kernel `release`: a scenario that applies
    /// and reported nothing, a check of no scenario of the suite, and, where the suite has
    /// fixed checks, one missing, repeated, out of order or unknown.
    pub fn gaps(&self, checks: &[Check], release: &str) -> Vec<String> {
        let mut f = Vec::new();
        for s in self.applying(release) {
            if !checks.iter().any(|c| c.scenario == s.id) {
                f.push(format!("scenario {} ({}) reported nothing", s.id, s.name));
            }
        }
        for c in checks {
            if self.scenario(c.scenario).is_none() {
                f.push(format!(
                    "check \"{}\" of unknown scenario {}",
                    c.name, c.scenario
                ));
            }
            if !self.checks.is_empty() && !self.checks.iter().any(|(_, n)| *n == c.name) {
                f.push(format!("unknown check \"{}\"", c.name));
            }
        }
        for (i, (_, want)) in self.checks.iter().enumerate() {
            match checks.iter().filter(|c| c.name == *want).count() {
                0 => f.push(format!("check \"{want}\" missing")),
                1 if checks.get(i).is_some_and(|c| c.name != *want) => {
                    f.push(format!("check \"{want}\" out of order"));
                }
                1 => {}
                n => f.push(format!("check \"{want}\" printed {n} times")),
            }
        }
        f
    }

    /// The scenarios that must report on the kernel `release`.
    pub fn applying<'a>(
        &'a self,
        release: &'a str,
    ) -> impl Iterator<Item = &'static Scenario> + 'a {
        self.scenarios.iter().filter(move |s| s.applies_to(release))
    }
}

/// The scenarios of issue 3, from a busybox initramfs with ctx-vm-init as PID 1.
pub const INITRAMFS: Suite = Suite {
    name: "initramfs",
    scenarios: &[
        Scenario::on_every_kernel(1, "user"),
        Scenario::on_every_kernel(2, "kernel"),
        Scenario::on_every_kernel(3, "idle"),
        Scenario::on_every_kernel(4, "nmi"),
        Scenario::on_every_kernel(5, "ipi"),
        Scenario::on_every_kernel(6, "no disturbance"),
        Scenario::on_every_kernel(7, "hotplug"),
        Scenario::on_every_kernel(8, "housekeeping"),
        Scenario::on_every_kernel(9, "shared CPU"),
    ],
    checks: &[],
};

/// ctx as a systemd service (issue 6), from a Debian rootfs with systemd as PID 1 and
/// ctx-sysvm-check as a service.
pub const SYSTEMD: Suite = Suite {
    name: "systemd",
    scenarios: &[
        Scenario::on_every_kernel(1, "boot"),
        Scenario::on_every_kernel(2, "install"),
        Scenario::on_every_kernel(3, "start"),
        Scenario::on_every_kernel(4, "workload"),
        Scenario::on_every_kernel(5, "kill -9"),
        Scenario::on_every_kernel(6, "stop"),
        Scenario::on_every_kernel(7, "hardening"),
    ],
    checks: &[
        (1, "boot reached running"),
        (1, "nohz_full is 1-3"),
        (1, "bpffs mounted on /sys/fs/bpf by systemd"),
        (2, "systemd-sysusers created user ctx"),
        (2, "systemctl enable ctx"),
        (3, "systemctl start ctx"),
        (3, "active and running"),
        (3, "READY with a STATUS line"),
        (3, "runs as ctx with CAP_BPF only"),
        (3, "/metrics served"),
        (3, "/healthz is 200"),
        (4, "counters move under the workload"),
        (5, "kill -9 restarted by systemd"),
        (5, "kill -9 counters monotonic"),
        (5, "kill -9 no second attach"),
        (6, "systemctl stop is clean"),
        (6, "start after stop reuses the pins"),
        (7, "systemd-analyze security exposure"),
        (7, "journal of ctx has no errors"),
    ],
};

/// The systemd suite's live window: the host scrapes ctx through qemu's port forwards while
/// the guest holds it open.
pub mod live {
    /// Kernel command-line parameter: hold the live window (workload running, ctx serving) for
    /// up to this many seconds, until the host sends `GET /done` to [`POKE_PORT`].
    pub const PARAM: &str = "ctx.vm.live";

    /// ctx's port, as `/etc/ctx/ctx.toml` sets it; the host forwards a loopback port to it.
    pub const METRICS_PORT: u16 = 10977;

    /// Where the guest listens, during the live window, for the host's `GET /done`.
    pub const POKE_PORT: u16 = 10978;
}

/// Kernel command-line parameter the host adds for a kernel without `NO_HZ_FULL`
/// (`ctx.vm.nohz=none`): the guests then expect every CPU on ctx's syscall fallback, and report
/// what needs context tracking as n/a.
pub const NOHZ_PARAM: &str = "ctx.vm.nohz";

/// Whether a kernel command line says the kernel has no `nohz_full` (see [`NOHZ_PARAM`]).
pub fn no_nohz_full(cmdline: &str) -> bool {
    kernel_param(cmdline, NOHZ_PARAM) == Some("none")
}

/// The value of `name=VALUE` on a kernel command line.
pub fn kernel_param<'a>(cmdline: &'a str, name: &str) -> Option<&'a str> {
    cmdline
        .split_whitespace()
        .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_releases() {
        let v = |r| KernelVersion::of_release(r);
        assert_eq!(
            v("6.12.117+deb13-cloud-amd64"),
            Some(KernelVersion::new(6, 12))
        );
        assert_eq!(v("6.1.0-50-cloud-amd64"), Some(KernelVersion::new(6, 1)));
        assert_eq!(
            v("7.2.13+deb14-cloud-amd64"),
            Some(KernelVersion::new(7, 2))
        );
        assert_eq!(v("5.10.0-32-cloud-amd64"), Some(KernelVersion::new(5, 10)));
        assert_eq!(v("garbage"), None);
        assert!(KernelVersion::new(6, 12) > KernelVersion::new(6, 5));
        assert!(KernelVersion::new(7, 0) > KernelVersion::new(6, 18));
    }

    #[test]
    fn scenarios_apply_from_their_kernel_on() {
        let csd = Scenario {
            id: 9,
            name: "ipi callbacks",
            since: Some(KernelVersion::new(6, 5)),
        };
        assert!(!csd.applies_to("6.1.0-50-cloud-amd64"));
        assert!(csd.applies_to("6.12.117+deb13-cloud-amd64"));
        assert!(csd.applies_to("7.2.13+deb14-cloud-amd64"));
        assert!(!csd.applies_to("?"));
        assert_eq!(INITRAMFS.applying("?").count(), INITRAMFS.scenarios.len());
    }

    #[test]
    fn registries_are_consistent() {
        for suite in [&INITRAMFS, &SYSTEMD] {
            let mut ids: Vec<u8> = suite.scenarios.iter().map(|s| s.id).collect();
            ids.dedup();
            assert_eq!(ids.len(), suite.scenarios.len(), "{}", suite.name);
            assert!(!ids.contains(&SETUP.id), "{}", suite.name);
            for (id, name) in suite.checks {
                assert!(suite.scenario(*id).is_some(), "{name}");
            }
        }
        assert_eq!(SYSTEMD.scenario_name(5), "kill -9");
        assert_eq!(INITRAMFS.scenario_name(0), "setup");
        assert_eq!(INITRAMFS.scenario_name(42), "?");
    }

    #[test]
    fn params() {
        let c = "console=ttyS0 ctx.vm.live=90 quiet";
        assert_eq!(kernel_param(c, live::PARAM), Some("90"));
        assert_eq!(kernel_param(c, "console"), Some("ttyS0"));
        assert_eq!(kernel_param(c, "quiet"), None);
        assert_eq!(kernel_param(c, "ctx.vm"), None);
    }
}
