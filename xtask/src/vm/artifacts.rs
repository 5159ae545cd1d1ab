//! What goes into the guests, built once per run for both suites: one
//! `cargo build --release --target x86_64-unknown-linux-musl` of ctx-daemon, ctxtop and the
//! guest crate's three programs.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context as _, bail};

use crate::cmd::cargo;
use crate::install::{self, MUSL};

pub struct Binaries {
    /// ctx as `cargo xtask install` installs it.
    pub ctx: install::Binaries,
    /// The initramfs suite's init and its workload helper.
    pub init: PathBuf,
    pub work: PathBuf,
    /// ctx-sysvm-check, the systemd suite's check.
    pub check: PathBuf,
}

/// The workspace's target directory, as cargo resolves it (`CARGO_TARGET_DIR`, config, ...).
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

pub fn build(root: &Path) -> anyhow::Result<Binaries> {
    let mut exes = install::build(root, MUSL, &["ctx-daemon", "ctx-vm-guest"])?;
    let mut take = |name: &str| {
        exes.remove(name)
            .with_context(|| format!("cargo build produced no {name} executable"))
    };
    Ok(Binaries {
        ctx: install::Binaries {
            ctx_daemon: take("ctx-daemon")?,
            ctxtop: take("ctxtop")?,
        },
        init: take("ctx-vm-init")?,
        work: take("ctx-vm-work")?,
        check: take("ctx-sysvm-check")?,
    })
}
