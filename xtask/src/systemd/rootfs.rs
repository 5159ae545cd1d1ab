//! The Debian root filesystem of the systemd VM: `debootstrap --variant=minbase bookworm` plus
//! systemd, as one uncompressed newc cpio archive that the kernel unpacks as its initramfs and
//! that systemd then runs from as PID 1 (`/init` is systemd).
//!
//! Why an initramfs and not a disk image: the Debian cloud kernels build virtio-blk (and on 6.1
//! virtio-pci) as modules, so a disk root needs a module-loading initramfs and a `switch_root`
//! in front of systemd. Measured on 6.1 under TCG, both reach `systemctl is-system-running`
//! = running in about 14 s (ext4 made by `mke2fs -d` on virtio-blk behind a busybox
//! initramfs: 14.4 s; this archive as the initramfs: 14.0-14.8 s). The initramfs has fewer
//! moving parts: no block-driver modules per kernel, no second init, no writable disk whose
//! state outlives a run; the per-run and per-kernel parts are archives appended to this one.
//! Uncompressed, because unpacking zstd in the emulated guest cost about 3 s more per boot
//! than the 60 MiB it saves on disk.
//!
//! Built with apt state of its own (debootstrap's), never the host's, and cached under
//! `target/vm/` by a key over everything that goes into it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::put;
use crate::cmd::is_root;
use crate::vm::kernel::{MIRROR_ENV, mirror};
use crate::vm::{cpio, fnv1a};

pub const SUITE: &str = "bookworm";
pub const VARIANT: &str = "minbase";
/// On top of minbase: systemd as init, D-Bus (logind and `systemd-analyze` talk over it),
/// udev and kmod (the per-kernel virtio-net module is loaded by udev's coldplug).
pub const PACKAGES: [&str; 5] = ["systemd", "systemd-sysv", "dbus", "udev", "kmod"];
/// Bump when `finish()` changes: it is part of the cache key.
const RECIPE: u32 = 1;

/// Removed after debootstrap: documentation, translations, apt's lists and downloads, iconv
/// modules, and udev's hardware database (whose rebuild would cost seconds at every boot).
const STRIP: [&str; 10] = [
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/lib/x86_64-linux-gnu/gconv",
    "usr/lib/udev/hwdb.d",
    "var/cache/apt",
    "var/lib/apt/lists",
    "var/log",
];

/// Units masked in the image: no login prompt on the console that carries the verdict, no
/// hardware-database rebuild, no periodic maintenance.
const MASK: [&str; 10] = [
    "serial-getty@ttyS0.service",
    "getty@tty1.service",
    "systemd-hwdb-update.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "systemd-timesyncd.service",
];

/// qemu's user network (slirp): the guest is 10.0.2.15, the host 10.0.2.2. A static address
/// avoids waiting for DHCP.
const NETWORK: &str = "[Match]\nName=en* eth*\n\n[Network]\nAddress=10.0.2.15/24\nGateway=10.0.2.2\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n";

pub struct Rootfs {
    pub cpio: PathBuf,
    pub bytes: u64,
    /// How long the build took; `None` when it came from the cache.
    pub built_in: Option<Duration>,
    /// `dpkg-query` of the image: one "package version" per line.
    pub packages: PathBuf,
}

pub fn key() -> String {
    format!(
        "{:016x}",
        fnv1a(&format!(
            "{SUITE}|{VARIANT}|{}|{}|{}|{RECIPE}",
            PACKAGES.join(","),
            MASK.join(","),
            STRIP.join(",")
        ))
    )
}

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Mount points at or below `dir`, deepest first (debootstrap mounts /proc and /sys inside
/// its target and may leave them behind when it fails).
fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return vec![];
    };
    let mut m: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    m.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    m
}

/// Removes a build directory, after unmounting whatever is still mounted inside it.
fn remove_tree(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for m in mounts_below(dir) {
        let _ = Command::new("umount").arg("-l").arg(&m).status();
    }
    if let Some(m) = mounts_below(dir).first() {
        bail!(
            "{} is still mounted; unmount it, then remove {}",
            m.display(),
            dir.display()
        );
    }
    fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}

fn clear_dir(dir: &Path) -> anyhow::Result<()> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let p = e.path();
        let ft = e.file_type()?;
        if ft.is_dir() {
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        }
        .with_context(|| format!("removing {}", p.display()))?;
    }
    Ok(())
}

/// Makes a debootstrapped tree a bootable, quiet test system.
fn finish(root: &Path) -> anyhow::Result<()> {
    for s in STRIP {
        clear_dir(&root.join(s))?;
    }
    let _ = fs::remove_file(root.join("usr/lib/udev/hwdb.bin"));
    let _ = fs::remove_file(root.join("etc/udev/hwdb.bin"));
    std::os::unix::fs::symlink("usr/lib/systemd/systemd", root.join("init"))
        .context("linking /init to systemd")?;
    put(&root.join("etc/hostname"), b"ctx-vm\n", 0o644)?;
    put(
        &root.join("etc/systemd/network/10-ctx-vm.network"),
        NETWORK.as_bytes(),
        0o644,
    )?;
    // The image's own systemctl, offline in a chroot: no host systemd needed.
    let mut c = Command::new("chroot");
    c.arg(root)
        .args(["systemctl", "--quiet", "mask"])
        .args(MASK);
    run(&mut c, "systemctl mask in the rootfs")?;
    let mut c = Command::new("chroot");
    c.arg(root)
        .args(["systemctl", "--quiet", "enable", "systemd-networkd.service"]);
    run(&mut c, "systemctl enable systemd-networkd in the rootfs")?;
    Ok(())
}

/// `debootstrap` of the image's suite, variant and packages into `tree`, with its downloads
/// cached in `debs` and its output in `log`.
fn debootstrap(tree: &Path, debs: &Path, mirror: &str, log: &Path) -> anyhow::Result<()> {
    let logf = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let status = Command::new("debootstrap")
        .arg(format!("--variant={VARIANT}"))
        .arg(format!("--include={}", PACKAGES.join(",")))
        .arg(format!("--cache-dir={}", debs.display()))
        .args([SUITE])
        .arg(tree)
        .arg(mirror)
        .stdout(logf.try_clone()?)
        .stderr(logf)
        .status()
        .context("running debootstrap")?;
    if !status.success() {
        let text = fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        bail!(
            "debootstrap failed ({status}); the end of its log:\n{}\n(network, or set \
             {MIRROR_ENV} to a reachable Debian mirror)",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(())
}

/// The cached rootfs archive, built first when the cache has none for the current key.
/// `cache` is the VM cache directory (`target/vm`).
pub fn build(cache: &Path) -> anyhow::Result<Rootfs> {
    let name = format!("rootfs-{SUITE}-{}", key());
    let cpio = cache.join(format!("{name}.cpio"));
    let packages = cache.join(format!("{name}.packages"));
    if let (Ok(m), true) = (fs::metadata(&cpio), packages.exists()) {
        return Ok(Rootfs {
            cpio,
            bytes: m.len(),
            built_in: None,
            packages,
        });
    }
    if !is_root() {
        bail!(
            "building the {SUITE} rootfs needs root: debootstrap chroots and creates device nodes"
        );
    }
    if Command::new("debootstrap")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_or(true, |s| !s.success())
    {
        bail!("debootstrap is missing: apt-get install debootstrap (or run .ci/setup)");
    }
    let t0 = Instant::now();
    fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let cache = cache
        .canonicalize()
        .with_context(|| format!("resolving {}", cache.display()))?;
    let debs = cache.join("debootstrap-debs");
    fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
    let build = cache.join(format!("{name}.build.{}", std::process::id()));
    remove_tree(&build)?;
    let tree = build.join("root");
    fs::create_dir_all(&tree).with_context(|| format!("creating {}", tree.display()))?;
    let mirror = mirror();
    eprintln!(
        "rootfs: debootstrap --variant={VARIANT} --include={} {SUITE} ({mirror})",
        PACKAGES.join(",")
    );
    let log = build.join("debootstrap.log");
    let r = (|| {
        debootstrap(&tree, &debs, &mirror, &log)?;
        // debootstrap is done with its mounts; nothing may stay mounted in what gets packed.
        if let Some(m) = mounts_below(&tree).first() {
            bail!("{} is still mounted after debootstrap", m.display());
        }
        let list = Command::new("dpkg-query")
            .arg(format!(
                "--admindir={}",
                tree.join("var/lib/dpkg").display()
            ))
            .args(["-W", "-f", "${Package} ${Version}\\n"])
            .output()
            .context("running dpkg-query on the rootfs")?;
        finish(&tree)?;
        let part = cpio.with_extension("cpio.part");
        cpio::pack(&tree, &part)?;
        fs::write(&packages, &list.stdout)
            .with_context(|| format!("writing {}", packages.display()))?;
        fs::rename(&part, &cpio).with_context(|| format!("renaming to {}", cpio.display()))?;
        Ok(())
    })();
    let cleanup = remove_tree(&build);
    r?;
    cleanup?;
    // Archives of an older recipe are of no further use.
    for e in fs::read_dir(&cache).into_iter().flatten().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&format!("rootfs-{SUITE}-")) && !n.starts_with(&name) {
            let _ = fs::remove_file(e.path());
        }
    }
    let bytes = fs::metadata(&cpio)?.len();
    let took = t0.elapsed();
    eprintln!(
        "rootfs: {} ({:.0} MiB, {} packages) built in {:.0} s",
        cpio.display(),
        bytes as f64 / f64::from(1 << 20),
        fs::read_to_string(&packages)?.lines().count(),
        took.as_secs_f64()
    );
    Ok(Rootfs {
        cpio,
        bytes,
        built_in: Some(took),
        packages,
    })
}

/// `cargo xtask rootfs`: builds the rootfs into the cache, or finds it there.
pub fn print() -> anyhow::Result<()> {
    let cache = crate::vm::cache_dir(&crate::cmd::root())?;
    let r = build(&cache)?;
    println!(
        "{} ({:.1} MiB, {} packages{})",
        r.cpio.display(),
        r.bytes as f64 / f64::from(1 << 20),
        fs::read_to_string(&r.packages)?.lines().count(),
        r.built_in.map_or(", cached".into(), |d| format!(
            ", built in {:.0} s",
            d.as_secs_f64()
        ))
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_stable_and_covers_the_recipe() {
        assert_eq!(key(), key());
        assert_eq!(key().len(), 16);
    }

    #[test]
    fn mounts_below_is_prefix_by_component() {
        // "/proc" is mounted; "/pro" is not a parent of it.
        assert!(mounts_below(Path::new("/pro")).is_empty());
        assert!(!mounts_below(Path::new("/proc")).is_empty());
    }
}
