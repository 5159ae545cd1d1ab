//! What to say when the kernel's verifier refuses a program: a few words for the log line, the
//! status and the metric label, and the full log in a file under the state directory (it runs
//! to hundreds of lines, which do not belong in a journal).

use std::path::{Path, PathBuf};

/// Default for `--state-dir`: where ctx-daemon keeps files of its own (systemd's
/// `StateDirectory=ctx`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/ctx";

/// Longest reason ctx puts in a log line, a status or the `reason` label of `ctx_hook_info`.
pub const REASON_MAX: usize = 80;

/// Where a refused program's full verifier log went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogPlace {
    File(PathBuf),
    /// The file could not be written (the string says why); the log went to debug level.
    Debug(String),
}

impl std::fmt::Display for LogPlace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(p) => write!(f, "{}", p.display()),
            Self::Debug(why) => write!(f, "at debug level ({why})"),
        }
    }
}

/// Lines of a verifier log that are not the verdict: instructions and their source lines,
/// register states, branch and summary lines, and the notes 5.10 prints about the
/// program's own BTF argument types (which it then accepts).
fn is_noise(line: &str) -> bool {
    let l = line.trim();
    let starts_with_insn = l
        .split_once(':')
        .is_some_and(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
    l.is_empty()
        || starts_with_insn
        || l.starts_with(';')
        || l.split_whitespace().next().is_some_and(|t| {
            t.starts_with('R')
                && t.chars().nth(1).is_some_and(|c| c.is_ascii_digit())
                && t.contains('=')
        })
        || l.starts_with("from ")
        || l.starts_with("func#")
        || l.starts_with("processed ")
        || l.starts_with("verification time")
        || l.starts_with("stack depth")
        || l.starts_with("last_idx")
        || l.starts_with("regs=")
        || l.starts_with("parent ")
        || l.starts_with("propagating")
        || l.starts_with("mark_precise")
        || l.starts_with("Validating ")
        || l.starts_with("arg#") && l.ends_with("type is not a struct")
        || l.starts_with("Unrecognized arg#")
        || l.starts_with("-- ")
}

/// The verifier's verdict in a few words: the last line of `log` that is not an instruction,
/// a register state or a summary (the verifier stops at the first error, so that line is it).
pub fn reason(log: &str) -> String {
    let line = log
        .lines()
        .rev()
        .find(|l| !is_noise(l))
        .map_or("no verifier output", str::trim);
    shorten(line)
}

/// At most [`REASON_MAX`] characters, on one line.
pub fn shorten(s: &str) -> String {
    let one: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one.chars().count() <= REASON_MAX {
        one
    } else {
        let mut t: String = one.chars().take(REASON_MAX - 1).collect();
        t.push('…');
        t
    }
}

/// Writes `log` to `<state_dir>/verifier/<program>.log`.
pub fn write_log(state_dir: Option<&Path>, program: &str, log: &str) -> LogPlace {
    let Some(dir) = state_dir else {
        return LogPlace::Debug("no state directory".into());
    };
    let dir = dir.join("verifier");
    let path = dir.join(format!("{program}.log"));
    match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, log)) {
        Ok(()) => LogPlace::File(path),
        Err(e) => LogPlace::Debug(format!(
            "cannot write {}: {e}; set --state-dir or state_dir to a writable directory",
            path.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of the 5.10 log of `ctx_sched_switch` before the stack variant existed.
    const LOG_5_10: &str = "arg#0 type is not a struct\n\
        Unrecognized arg#0 type PTR\n\
        ; pub fn ctx_sched_switch(ctx: BtfTracePointContext) -> u32 {\n\
        0: (bf) r6 = r1\n\
        1: (85) call bpf_get_smp_processor_id#8\n\
        R0_w=inv(id=0) R6_w=ctx(id=0,off=0,imm=0) R10=fp0\n\
        from 12 to 40: R0=map_value(id=0,off=0,ks=4,vs=128,imm=0) R10=fp0\n\
        40: (85) call unknown#175\n\
        invalid func unknown#175\n\
        processed 45 insns (limit 1000000) max_states_per_insn 0 total_states 3 peak_states 3 mark_read 2\n";

    #[test]
    fn the_reason_is_the_verdict_not_the_noise() {
        assert_eq!(reason(LOG_5_10), "invalid func unknown#175");
        assert_eq!(reason(""), "no verifier output");
        assert_eq!(
            reason("0: (b7) r0 = 0\nR0 !read_ok\nprocessed 1 insns\n"),
            "R0 !read_ok"
        );
    }

    #[test]
    fn reasons_are_bounded_and_on_one_line() {
        let long = "x".repeat(500);
        let r = shorten(&format!("a\n{long}"));
        assert_eq!(r.chars().count(), REASON_MAX);
        assert!(!r.contains('\n'));
    }

    #[test]
    fn the_log_goes_to_the_state_dir_or_says_why_not() {
        let dir = std::env::temp_dir().join(format!("ctx-verify-{}", std::process::id()));
        let place = write_log(Some(&dir), "ctx_sched_switch", LOG_5_10);
        let file = dir.join("verifier/ctx_sched_switch.log");
        assert_eq!(place, LogPlace::File(file.clone()));
        assert_eq!(
            std::fs::read_to_string(&file).ok().as_deref(),
            Some(LOG_5_10)
        );
        let _ = std::fs::remove_dir_all(&dir);
        let blocked = write_log(Some(Path::new("/proc/ctx-no")), "p", "log");
        assert!(
            matches!(&blocked, LogPlace::Debug(why) if why.contains("/proc/ctx-no/verifier/p.log")
                && why.contains("--state-dir")),
            "{blocked:?}"
        );
    }
}
