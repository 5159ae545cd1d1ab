//! The third archive of the systemd suite's initramfs, for one kernel: its virtio-net modules
//! with the `modules.*` indexes that udev's coldplug needs, built from the kernel's packages
//! while vm-test's kernel download has them at hand, and cached beside the kernel.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use super::walk;
use crate::vm::kernel::Extra;
use crate::vm::{cpio, fnv1a};

/// Modules virtio-net needs on Debian's cloud kernels; those built in are absent from the
/// package and skipped (6.12 and 7.x build virtio and virtio-pci in, 6.1 does not).
const NET_MODULES: [&str; 8] = [
    "virtio_net",
    "net_failover",
    "failover",
    "virtio",
    "virtio_ring",
    "virtio_pci",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
];

/// Libraries split out of `virtio_pci` in 5.14 and 5.15: older kernels (5.10) have neither, and
/// `virtio_pci` holds their code.
const SPLIT_OUT: [&str; 2] = ["virtio_pci_modern_dev", "virtio_pci_legacy_dev"];

/// What the names of the module archives start with.
const PREFIX: &str = "modules-";

/// Where the archive of `release` is cached in `cache`: `modules-RELEASE-KEY.cpio`, KEY
/// covering the module list.
fn archive(cache: &Path, release: &str) -> PathBuf {
    let key = fnv1a(&NET_MODULES.join(","));
    cache.join(format!("{PREFIX}{release}-{key:016x}.cpio"))
}

/// The kernel download's [`Extra`]: the virtio-net modules of each kernel.
pub struct NetModules;

impl Extra for NetModules {
    fn path(&self, dir: &Path, release: &str) -> PathBuf {
        archive(dir, release)
    }

    fn is_one(&self, file: &str) -> bool {
        file.starts_with(PREFIX) && Path::new(file).extension().is_some_and(|x| x == "cpio")
    }

    fn build(&self, debs: &[PathBuf], release: &str, dir: &Path) -> anyhow::Result<()> {
        build(debs, release, dir)
    }
}

/// Stages the modules under `usr/lib/modules/RELEASE` and packs them as [`archive`]. `debs`
/// are the kernel's packages (the image, and from 7.x `linux-modules-RELEASE`). Needs `depmod`
/// (Debian package kmod).
fn build(debs: &[PathBuf], release: &str, cache: &Path) -> anyhow::Result<()> {
    let out = archive(cache, release);
    if out.exists() {
        return Ok(());
    }
    let work = cache.join(format!("modules-{release}.build.{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    let r = (|| {
        let x = work.join("x");
        fs::create_dir_all(&x).with_context(|| format!("creating {}", x.display()))?;
        for d in debs {
            let s = Command::new("dpkg-deb")
                .arg("-x")
                .arg(d)
                .arg(&x)
                .status()
                .context("running dpkg-deb")?;
            if !s.success() {
                bail!("dpkg-deb -x {} failed ({s})", d.display());
            }
        }
        let src = ["usr/lib/modules", "lib/modules"]
            .iter()
            .map(|m| x.join(m).join(release))
            .find(|p| p.join("modules.order").exists())
            .with_context(|| {
                format!(
                    "no lib/modules/{release}/modules.order in {debs:?}: from 7.x the modules are \
                     in linux-modules-{release}"
                )
            })?;
        // depmod -b wants BASE/lib/modules; the image is merged-/usr, so the tree moves to
        // usr/lib/modules before packing (a "lib" directory would collide with /lib -> usr/lib).
        let stage = work.join("stage");
        let dst = stage.join("lib/modules").join(release);
        fs::create_dir_all(&dst)?;
        for f in [
            "modules.order",
            "modules.builtin",
            "modules.builtin.modinfo",
        ] {
            if src.join(f).exists() {
                fs::copy(src.join(f), dst.join(f)).with_context(|| format!("copying {f}"))?;
            }
        }
        let builtin = fs::read_to_string(src.join("modules.builtin")).unwrap_or_default();
        let took = copy_modules(&src, &dst, release, &builtin)?;
        let s = Command::new("depmod")
            .arg("-b")
            .arg(&stage)
            .arg(release)
            .status()
            .context("running depmod (apt-get install kmod)")?;
        if !s.success() {
            bail!("depmod -b {} {release} failed ({s})", stage.display());
        }
        // Every dependency depmod found must have come along.
        let dep = fs::read_to_string(dst.join("modules.dep")).context("reading modules.dep")?;
        for line in dep.lines() {
            for d in line.split_whitespace().skip(1) {
                if !dst.join(d).exists() {
                    bail!("{d}, needed by {line:?}, is missing from the staged modules");
                }
            }
        }
        if !builtin.contains("virtio_net.ko") && !dep.contains("virtio_net.ko") {
            bail!("depmod did not index virtio_net");
        }
        eprintln!(
            "vm-test: systemd: {release}: modules {}",
            if took.is_empty() {
                "none needed".to_owned()
            } else {
                took.join(", ")
            }
        );
        fs::create_dir_all(stage.join("usr"))?;
        fs::rename(stage.join("lib"), stage.join("usr/lib")).context("moving lib to usr/lib")?;
        for e in walk(&stage)? {
            if e.is_dir() {
                fs::set_permissions(&e, fs::Permissions::from_mode(0o755))?;
            }
        }
        let part = out.with_extension("cpio.part");
        cpio::pack(&stage, &part)?;
        fs::rename(&part, &out).with_context(|| format!("renaming to {}", out.display()))?;
        Ok(())
    })();
    let _ = fs::remove_dir_all(&work);
    r
}

/// Copies those of [`NET_MODULES`] that `release` does not build in from the unpacked tree
/// `src` to `dst`; returns their names.
fn copy_modules(
    src: &Path,
    dst: &Path,
    release: &str,
    builtin: &str,
) -> anyhow::Result<Vec<&'static str>> {
    let mut took = Vec::new();
    for m in NET_MODULES {
        let is_builtin = builtin
            .lines()
            .any(|l| l.rsplit('/').next().is_some_and(|f| f == format!("{m}.ko")));
        if is_builtin {
            continue;
        }
        let found = walk(&src.join("kernel"))?.into_iter().find(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n == format!("{m}.ko") || n.starts_with(&format!("{m}.ko."))
            })
        });
        let Some(p) = found else {
            if SPLIT_OUT.contains(&m) {
                continue;
            }
            bail!("{release} has {m} neither built in nor as a module: virtio-net cannot work");
        };
        let rel = p.strip_prefix(src)?;
        let to = dst.join(rel);
        fs::create_dir_all(to.parent().context("module without a directory")?)?;
        fs::copy(&p, &to).with_context(|| format!("copying {}", p.display()))?;
        took.push(m);
    }
    Ok(took)
}
