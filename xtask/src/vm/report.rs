//! What vm-test prints: one table per boot, the same for both suites, and the console's tail
//! when a boot failed.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use ctx_vm_proto::suite::Suite;

use super::kernel::Kernel;
use super::transcript::Outcome;

pub fn minutes(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

pub fn ok(pass: bool) -> String {
    if pass { "ok" } else { "FAIL" }.into()
}

/// A table with a header, columns padded to their widest cell, the last column unpadded, every
/// line indented by two spaces, and a note line under some rows (indented under the second
/// column).
pub fn grid(head: &[&str], rows: &[Vec<String>], notes: &[Option<String>]) -> String {
    let mut w: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(x) = w.get_mut(i) {
                *x = (*x).max(c.chars().count());
            }
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::from(" ");
        for (i, c) in cells.iter().enumerate() {
            let pad = w
                .get(i)
                .copied()
                .unwrap_or(0)
                .saturating_sub(c.chars().count());
            s.push(' ');
            s.push_str(c);
            if i + 1 < cells.len() {
                s.push_str(&" ".repeat(pad + 1));
            }
        }
        s
    };
    let mut out = String::new();
    let head: Vec<String> = head.iter().map(|h| (*h).to_owned()).collect();
    let _ = writeln!(out, "{}", line(&head));
    for (i, r) in rows.iter().enumerate() {
        let _ = writeln!(out, "{}", line(r));
        if let Some(Some(n)) = notes.get(i) {
            let _ = writeln!(
                out,
                "{:width$}    {n}",
                "",
                width = w.first().copied().unwrap_or(0) + 2
            );
        }
    }
    out
}

/// A row the suite's host side adds under the guest's checks: (what, measured, required, ok).
pub type HostRow = (String, String, String, bool);

/// The table of one boot: a header with the kernel, the verdict and the times; one row per
/// check (scenario, check, measured, required, ok) with its note under it, then `host` rows;
/// then the failures.
pub fn table(
    suite: &Suite,
    k: &Kernel,
    o: &Outcome,
    host: &[HostRow],
    failures: &[String],
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n== {} {}: kernel {} (Debian {} {}): {} in {}{} ==",
        k.spec.name,
        suite.name,
        o.transcript.release.as_deref().unwrap_or("?"),
        k.package,
        k.version,
        if failures.is_empty() { "PASS" } else { "FAIL" },
        minutes(o.elapsed),
        o.to_verdict
            .map_or(String::new(), |v| format!(", verdict at {}", minutes(v)))
    );
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut notes = Vec::new();
    for c in &o.transcript.checks {
        rows.push(vec![
            format!("{} {}", c.scenario, suite.scenario_name(c.scenario)),
            c.name.clone(),
            c.measured.to_string(),
            c.required.to_string(),
            ok(c.required.holds(&c.measured)),
        ]);
        notes.push(c.note.clone().filter(|n| !n.is_empty()));
    }
    for (what, measured, required, pass) in host {
        rows.push(vec![
            "host".into(),
            what.clone(),
            measured.clone(),
            required.clone(),
            ok(*pass),
        ]);
        notes.push(None);
    }
    out.push_str(&grid(
        &["scenario", "check", "measured", "required", ""],
        &rows,
        &notes,
    ));
    for f in failures {
        let _ = writeln!(out, "  failure: {f}");
    }
    out
}

/// The last `n` lines of a console log.
pub fn tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = format!("  last {n} console lines ({}):\n", log.display());
    for l in &lines[lines.len().saturating_sub(n)..] {
        let _ = writeln!(out, "  | {l}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_pads_all_but_the_last_column() {
        let rows = vec![
            vec!["a".to_owned(), "ok".to_owned(), "x".to_owned()],
            vec!["long name".to_owned(), "FAIL".to_owned(), "y".to_owned()],
        ];
        assert_eq!(
            grid(
                &["check", "", "measured"],
                &rows,
                &[None, Some("why".into())]
            ),
            "  check            measured\n\
             \x20 a          ok    x\n\
             \x20 long name  FAIL  y\n\
             \x20              why\n"
        );
    }

    #[test]
    fn minutes_reads_well() {
        assert_eq!(minutes(Duration::from_millis(41_300)), "41.3 s");
        assert_eq!(minutes(Duration::from_secs(76)), "1m16s");
    }
}
