//! Building what goes into the guest: static musl builds of ctx-daemon, ctxtop, the guest init
//! and the workload helper.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

pub const MUSL: &str = "x86_64-unknown-linux-musl";

pub struct Binaries {
    pub init: PathBuf,
    pub ctx_daemon: PathBuf,
    pub ctxtop: PathBuf,
    pub work: PathBuf,
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// The workspace's target directory, as cargo resolves it (CARGO_TARGET_DIR, config, ...).
pub fn target_dir(root: &Path) -> anyhow::Result<PathBuf> {
    let out = cargo()
        .current_dir(root)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata failed ({})", out.status);
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing cargo metadata")?;
    v["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("cargo metadata has no target_directory")
}

/// `cargo build --release --target x86_64-unknown-linux-musl` of the guest's programs; returns
/// where cargo put them.
pub fn build(root: &Path) -> anyhow::Result<Binaries> {
    let mut child = cargo()
        .current_dir(root)
        .args([
            "build",
            "--release",
            "--target",
            MUSL,
            "-p",
            "ctx-daemon",
            "-p",
            "ctx-vm-guest",
            "--bins",
            "--message-format=json-render-diagnostics",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo build")?;
    let stdout = child.stdout.take().context("no pipe from cargo")?;
    let mut exes = BTreeMap::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo's output")?;
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact"
            && let (Some(name), Some(exe)) =
                (msg["target"]["name"].as_str(), msg["executable"].as_str())
        {
            exes.insert(name.to_owned(), PathBuf::from(exe));
        }
    }
    let status = child.wait().context("waiting for cargo build")?;
    if !status.success() {
        bail!(
            "cargo build --target {MUSL} failed ({status}); if the target or bpf-linker is \
             missing, run .ci/setup"
        );
    }
    let mut take = |name: &str| {
        exes.remove(name)
            .with_context(|| format!("cargo build produced no {name} executable"))
    };
    Ok(Binaries {
        init: take("ctx-vm-init")?,
        ctx_daemon: take("ctx-daemon")?,
        ctxtop: take("ctxtop")?,
        work: take("ctx-vm-work")?,
    })
}
