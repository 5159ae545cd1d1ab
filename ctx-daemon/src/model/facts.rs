//! What is fixed for a session: the host, where the probes came from and what became of each
//! hook, and the CPU sets the records do not hold. The outputs read these instead of the
//! probes themselves.

use std::fmt;

use crate::host::cpuset::CpuSet;
use crate::probes::hooks::HookStatus;

/// Where a session's probes came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Origin {
    /// This process loaded and attached them.
    #[default]
    Loaded,
    /// Reused from pins left by a ctx-daemon.
    Pinned,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Loaded => "loaded",
            Self::Pinned => "pinned",
        }
    }
}

/// One hook and what became of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookFact {
    pub group: &'static str,
    pub tracepoint: &'static str,
    pub status: HookStatus,
}

impl fmt::Display for HookFact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{} {}", self.group, self.tracepoint, self.status)
    }
}

#[derive(Clone, Debug, Default)]
pub struct Facts {
    pub version: &'static str,
    pub host: String,
    pub kernel: String,
    pub origin: Origin,
    pub nohz_full: CpuSet,
    /// `isolcpus=` domain-isolated CPUs.
    pub isolated: CpuSet,
    /// CPUs the loader handed to context tracking.
    pub ct_cpus: CpuSet,
    /// The syscall fallback is attached (or, for pinned probes, assumed to be).
    pub syscalls_active: bool,
    /// The kernel's own `context_tracking.state` layout (from BTF), described, when known.
    pub kernel_ct_layout: Option<String>,
    /// Every hook of the table, in table order.
    pub hooks: Vec<HookFact>,
    /// Hooks looked for but never attached: `(group, tracepoint, present)`.
    pub detected: Vec<(&'static str, &'static str, bool)>,
    /// When the programs were attached (Unix seconds), which survives daemon restarts.
    pub attached_unix: f64,
}

impl Facts {
    /// Hooks that are not attached, with why.
    pub fn hooks_not_in_use(&self) -> impl Iterator<Item = &HookFact> {
        self.hooks.iter().filter(|h| !h.status.active())
    }
}
