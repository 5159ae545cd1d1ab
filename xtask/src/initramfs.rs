//! The initramfs suite of `cargo xtask vm-test` (issue 3): a busybox initramfs whose init,
//! `ctx-vm-init`, runs the scenarios against ctx-daemon and ctxtop and prints one check line
//! per requirement and one verdict line; the host evaluates every check again.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, BufWriter};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};
use ctx_vm_proto::suite::INITRAMFS;

use crate::vm::artifacts::Binaries;
use crate::vm::cpio::{Newc, read_static};
use crate::vm::kernel::Kernel;
use crate::vm::qemu::Boot;
use crate::vm::transcript::{self, Outcome};

/// The busybox applets, as paths relative to the root (`bin/sh`, `usr/bin/awk`, ...).
fn applets(busybox: &Path) -> anyhow::Result<Vec<String>> {
    let out = Command::new(busybox)
        .arg("--list-full")
        .output()
        .with_context(|| format!("running {} --list-full", busybox.display()))?;
    if !out.status.success() {
        bail!("{} --list-full failed ({})", busybox.display(), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| l.contains('/') && !l.starts_with('/'))
        .map(str::to_owned)
        .collect())
}

/// Writes the suite's initramfs to `path`: busybox, the static ctx binaries, the guest's init
/// and its workload helper.
pub fn write(path: &Path, bins: &Binaries, busybox: &Path) -> anyhow::Result<()> {
    let busybox_bytes = read_static(busybox, "install busybox-static (not busybox)")?;
    let hint = "build for x86_64-unknown-linux-musl";
    let files = [
        ("init", read_static(&bins.init, hint)?),
        (
            "usr/bin/ctx-daemon",
            read_static(&bins.ctx.ctx_daemon, hint)?,
        ),
        ("usr/bin/ctxtop", read_static(&bins.ctx.ctxtop, hint)?),
        ("usr/bin/ctx-vm-work", read_static(&bins.work, hint)?),
        ("bin/busybox", busybox_bytes),
    ];
    let file = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut a = Newc::new(BufWriter::new(file));
    let mut dirs = BTreeSet::new();
    let mut names = BTreeSet::new();
    let mut mkdirs = |a: &mut Newc<_>, p: &str| -> io::Result<()> {
        let mut acc = String::new();
        for part in p.split('/').collect::<Vec<_>>().iter().rev().skip(1).rev() {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(part);
            if dirs.insert(acc.clone()) {
                a.dir(&acc)?;
            }
        }
        Ok(())
    };
    let io = |e: io::Error| anyhow::Error::new(e).context(format!("writing {}", path.display()));
    for d in [
        "dev", "proc", "sys", "run", "tmp", "root", "etc", "sbin", "usr/sbin",
    ] {
        mkdirs(&mut a, &format!("{d}/x")).map_err(io)?;
    }
    // The kernel opens /dev/console for init before anything is mounted.
    a.char_dev("dev/console", 0o600, 5, 1).map_err(io)?;
    for (name, bytes) in &files {
        mkdirs(&mut a, name).map_err(io)?;
        a.file(name, 0o755, bytes).map_err(io)?;
        names.insert((*name).to_owned());
    }
    for app in applets(busybox)? {
        if names.insert(app.clone()) {
            mkdirs(&mut a, &app).map_err(io)?;
            a.symlink(&app, "/bin/busybox").map_err(io)?;
        }
    }
    a.finish().map_err(io)?;
    Ok(())
}

/// Boots `k` with the suite's `initrd`, writes the console to `log`, and returns what was
/// seen. `progress` gets the guest's progress lines and the kernel's trouble as they come.
///
/// `quiet`: only errors and worse reach the serial console as they happen (panics, oopses,
/// `BUG:`, RCU stalls). Printing the sysrq-l backtraces of the NMI scenario to the console
/// held CPU 0 for seconds under TCG, long enough for the kernel's own `sched_tick_remote` check
/// to WARN. The guest forwards warnings from /dev/kmsg before its verdict instead.
pub fn boot(
    k: &Kernel,
    initrd: &Path,
    log: &Path,
    timeout: Duration,
    progress: &dyn Fn(&str),
) -> anyhow::Result<(Outcome, Vec<String>)> {
    let boot = Boot::new(k, initrd, 1024).params(["quiet"]);
    progress(&format!("booting {} with {}", k.release, boot.cmdline()));
    let o = transcript::boot(&mut boot.command(), log, timeout, progress, &mut |_| {})?;
    let failures = o.failures(&INITRAMFS, &k.release);
    Ok((o, failures))
}
