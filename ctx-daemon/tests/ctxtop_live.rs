//! `ctxtop --once` and `--json` against the real kernel, with a user-space spinner pinned to
//! CPU 1: both must read that CPU as (almost) all user. Needs root; skips with the reason
//! otherwise.

mod common;

use std::os::unix::process::CommandExt as _;
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::Duration;

use common::{Spinner, ctxtop_bin, other_cpu, skip, skip_reason};

/// The tests share CPU 1 and load programs: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const SPIN_CPU: u32 = 1;

/// Runs ctxtop with private probes, pinned away from the spinner, stdout a pipe.
fn ctxtop(args: &[&str]) -> Output {
    let cpu = other_cpu(SPIN_CPU);
    let mut cmd = Command::new(ctxtop_bin());
    cmd.arg("--standalone").args(args);
    // SAFETY: the closure only makes one async-signal-safe syscall between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu as usize, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw const set);
            Ok(())
        });
    }
    let out = cmd.output().expect("running ctxtop");
    assert!(
        out.status.success(),
        "ctxtop {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn once_and_json_read_a_pinned_spinner_as_user() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(why) = skip_reason(Some(SPIN_CPU), &[]) {
        return skip("once_and_json_read_a_pinned_spinner_as_user", &why);
    }
    // Spins for the whole test: a settling pause, then two 1 s intervals (over 2 s).
    let _spin = Spinner::on(SPIN_CPU);
    std::thread::sleep(Duration::from_millis(300));

    let out = ctxtop(&["--once", "--interval", "1s", "--cpus", "1"]);
    let table = String::from_utf8(out.stdout).expect("utf-8 table");
    assert!(!table.contains('\x1b'), "escape codes in a pipe:\n{table}");
    let row = table
        .lines()
        .find(|l| l.trim_start().starts_with("1 "))
        .unwrap_or_else(|| panic!("no row for CPU 1:\n{table}"));
    // CPU NOHZ SOURCE STATE USER% ...
    let cols: Vec<&str> = row.split_whitespace().collect();
    let user: f64 = cols[4].parse().expect("USER% is a number");
    assert!(
        user >= 90.0,
        "CPU 1 user {user}% with a spinner on it:\n{table}"
    );
    assert!(
        !table.lines().any(|l| l.trim_start().starts_with("0 ")),
        "--cpus 1 shows CPU 1 only:\n{table}"
    );

    let out = ctxtop(&["--json", "--interval", "1s", "--cpus", "1"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let cpus = json["cpus"].as_array().expect("cpus array");
    assert_eq!(cpus.len(), 1, "{json}");
    let c = &cpus[0];
    assert_eq!(c["cpu"], 1);
    let user = c["pct"]["user"].as_f64().expect("pct.user");
    assert!(user >= 90.0, "CPU 1 user {user}% in JSON: {c}");
    assert_eq!(c["online"], true);
    // The shape other tools read: unchanged by the full-screen view.
    for key in [
        "ctx_version",
        "host",
        "kernel",
        "interval_s",
        "sample_interval_s",
        "probes",
        "nohz_full",
        "isolated",
        "samples",
        "hooks",
    ] {
        assert!(json.get(key).is_some(), "missing {key} in {json}");
    }
    assert_eq!(json["probes"], "loaded");
    // Sampled within the interval (how often depends on the CPU ctxtop gets on a busy host).
    assert!(json["samples"].as_u64().expect("samples") >= 2, "{json}");
}

#[test]
fn without_a_terminal_ctxtop_prints_tables() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(why) = skip_reason(None, &[]) {
        return skip("without_a_terminal_ctxtop_prints_tables", &why);
    }
    // No --once: stdout is a pipe, so no screen, one table per interval.
    let out = ctxtop(&["--interval", "0.3s", "--count", "2"]);
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert!(!text.contains('\x1b'), "escape codes in a pipe:\n{text}");
    assert_eq!(
        text.lines().filter(|l| l.starts_with("ALL")).count(),
        2,
        "{text}"
    );
    for cpu in common::online().iter() {
        let prefix = format!("{cpu:>3} ");
        assert_eq!(
            text.lines().filter(|l| l.starts_with(&prefix)).count(),
            2,
            "CPU {cpu} in each table:\n{text}"
        );
    }
}
