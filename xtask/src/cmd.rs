//! Running commands with a readable trace and errors that name the step.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, bail};

/// The workspace root (xtask's parent directory).
pub fn root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// Runs `cmd` from the workspace root, echoing it; fails naming `step`.
pub fn step(step: &str, cmd: &mut Command) -> anyhow::Result<()> {
    cmd.current_dir(root());
    eprintln!("==> {step}: {cmd:?}");
    let t = Instant::now();
    let status = cmd
        .status()
        .with_context(|| format!("{step}: cannot start {}", cmd.get_program().display()))?;
    eprintln!("<== {step}: {status} in {:.1} s", t.elapsed().as_secs_f64());
    if !status.success() {
        bail!("{step} failed ({status})");
    }
    Ok(())
}

pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
