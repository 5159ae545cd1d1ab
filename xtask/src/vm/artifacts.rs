//! Building what goes into the guests: static musl builds of ctx-daemon, ctxtop, the
//! initramfs guest's init and workload helper, and the systemd guest's check.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

use crate::install;
pub use crate::install::MUSL;
use crate::sysvm::GuestBins;

pub struct Binaries {
    pub init: PathBuf,
    pub ctx_daemon: PathBuf,
    pub ctxtop: PathBuf,
    pub work: PathBuf,
    /// ctx-sysvm-check, the systemd guest's check.
    pub check: PathBuf,
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

/// One `cargo build --release --target x86_64-unknown-linux-musl` of every program that goes
/// into a guest: ctx's two, the initramfs guest's init and workload helper, and the systemd
/// guest's check.
pub fn build(root: &Path) -> anyhow::Result<Binaries> {
    let mut exes = install::build(
        root,
        MUSL,
        &["ctx-daemon", "ctx-vm-guest", "ctx-sysvm-guest"],
    )?;
    let mut take = |name: &str| {
        exes.remove(name)
            .with_context(|| format!("cargo build produced no {name} executable"))
    };
    Ok(Binaries {
        init: take("ctx-vm-init")?,
        ctx_daemon: take("ctx-daemon")?,
        ctxtop: take("ctxtop")?,
        work: take("ctx-vm-work")?,
        check: take("ctx-sysvm-check")?,
    })
}

impl Binaries {
    /// What the systemd guest gets: ctx as `cargo xtask install` installs it, and the check.
    pub fn systemd(&self) -> GuestBins {
        GuestBins {
            ctx: install::Binaries {
                ctx_daemon: self.ctx_daemon.clone(),
                ctxtop: self.ctxtop.clone(),
            },
            check: self.check.clone(),
        }
    }
}
