//! What became of each hook of the table (`ctx_common::programs::HOOKS`) when ctx attached.

use std::fmt;

use ctx_common::programs::{HookSpec, Role};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HookStatus {
    /// Attached by this process.
    Attached,
    /// Attached earlier and pinned; reused without attaching again.
    Reused,
    /// The kernel has no such tracepoint.
    Absent,
    /// Present but attaching failed; the string says why.
    Failed(String),
    /// Not attached by choice (its pair failed, or it is detect-only).
    Skipped(&'static str),
    /// Present in the kernel; ctx reports it and does not attach it.
    Detected,
}

impl HookStatus {
    pub fn active(&self) -> bool {
        matches!(self, Self::Attached | Self::Reused)
    }

    /// Short label for metrics and tables.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Attached => "attached",
            Self::Reused => "reused",
            Self::Absent => "absent",
            Self::Failed(_) => "failed",
            Self::Skipped(_) => "skipped",
            Self::Detected => "detected",
        }
    }
}

impl fmt::Display for HookStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Failed(why) => write!(f, "failed: {why}"),
            Self::Skipped(why) => write!(f, "skipped: {why}"),
            other => f.write_str(other.label()),
        }
    }
}

/// The outcome for every hook, in table order, plus the detect-only ones.
#[derive(Clone, Debug, Default)]
pub struct HookReport {
    pub hooks: Vec<(HookSpec, HookStatus)>,
    /// `(group, tracepoint, present)` for `ctx_common::programs::DETECTED_ONLY`.
    pub detected: Vec<(&'static str, &'static str, bool)>,
}

impl HookReport {
    pub fn status(&self, tracepoint: &str) -> Option<&HookStatus> {
        self.hooks
            .iter()
            .find(|(h, _)| h.tracepoint == tracepoint)
            .map(|(_, s)| s)
    }

    pub fn role_active(&self, role: Role) -> bool {
        let mut any = false;
        for (h, s) in &self.hooks {
            if h.role == role {
                if !s.active() && role.paired() {
                    return false;
                }
                any |= s.active();
            }
        }
        any
    }

    /// Bit `i` set: hook `i` of the table is active (`Meta::hooks_attached`).
    pub fn attached_mask(&self) -> u32 {
        self.hooks
            .iter()
            .enumerate()
            .filter(|(_, (_, s))| s.active())
            .fold(0, |m, (i, _)| m | 1 << i)
    }

    /// `group:tracepoint=label` for every hook, for one log line.
    pub fn summary(&self) -> String {
        self.hooks
            .iter()
            .map(|(h, s)| format!("{}:{}={}", h.group, h.tracepoint, s.label()))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use ctx_common::programs::HOOKS;

    use super::*;

    #[test]
    fn paired_roles_need_both() {
        let mut r = HookReport::default();
        r.hooks.push((HOOKS[0], HookStatus::Attached));
        r.hooks.push((HOOKS[1], HookStatus::Absent));
        assert!(!r.role_active(Role::ContextTracking));
        r.hooks[1].1 = HookStatus::Reused;
        assert!(r.role_active(Role::ContextTracking));
        assert_eq!(r.attached_mask(), 0b11);
    }
}
