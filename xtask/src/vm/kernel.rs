//! The kernels vm-test boots ([`KERNELS`]), and Debian's current cloud kernel of each suite,
//! found and fetched with apt through a source list and state of our own under
//! `target/vm/kernels/<suite>/`: the host's apt configuration, lists and cache are never read
//! for sources nor written.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

/// One kernel that vm-test boots, and what is true of it. A new kernel is a row of
/// [`KERNELS`]; what differs about it (its facts, its command line) is said here.
#[derive(Debug, PartialEq, Eq)]
pub struct KernelSpec {
    /// What `--kernel` calls it, and the Debian suite whose current cloud kernel it is.
    pub name: &'static str,
    /// The kernel series the suite carried when the row was written, for `--help` and tables.
    pub series: &'static str,
    /// The CPUs booted `nohz_full` (with `rcu_nocbs`), which context tracking then drives; the
    /// guests check them. `None` would be a kernel without `NO_HZ_FULL`, whose CPUs all run
    /// on ctx's syscall fallback.
    pub nohz_full: Option<&'static str>,
}

impl KernelSpec {
    /// What this kernel adds to every boot's command line.
    pub fn params(&self) -> Vec<String> {
        match self.nohz_full {
            Some(cpus) => vec![format!("nohz_full={cpus}"), format!("rcu_nocbs={cpus}")],
            // CPUs 1-3 still leave the scheduler's domains, as a latency-minded host without
            // NO_HZ_FULL would do: otherwise every tick of a busy CPU 0 may send an idle one
            // the idle-balance kick (`kick_ilb()`, a call-function IPI) whatever ctx does, and
            // the no-disturbance scenario measures the scheduler. The second parameter tells
            // the guests what to expect, since no kernel file says "none was asked for".
            None => vec![
                "isolcpus=1-3".to_owned(),
                format!("{}=none", ctx_vm_proto::suite::NOHZ_PARAM),
            ],
        }
    }

    /// The row named `name`.
    pub fn named(name: &str) -> Option<&'static Self> {
        KERNELS.iter().find(|k| k.name == name)
    }
}

/// Every kernel `--kernel all` boots, in order.
pub const KERNELS: [KernelSpec; 4] = [
    KernelSpec {
        name: "bookworm",
        series: "6.1",
        nohz_full: Some("1-3"),
    },
    KernelSpec {
        name: "trixie",
        series: "6.12",
        nohz_full: Some("1-3"),
    },
    KernelSpec {
        name: "sid",
        series: "7.x",
        nohz_full: Some("1-3"),
    },
    // Debian's 5.10 cloud config has no NO_HZ_FULL: every CPU runs on the syscall fallback,
    // which this row exists to prove on the oldest kernel ctx supports.
    KernelSpec {
        name: "bullseye",
        series: "5.10",
        nohz_full: None,
    },
];

/// The metapackage that always depends on the suite's current cloud kernel.
const META: &str = "linux-image-cloud-amd64";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// Overrides the Debian mirror (kernels and the systemd suite's rootfs), e.g. for a CI cache.
pub const MIRROR_ENV: &str = "CTX_VM_DEBIAN_MIRROR";

/// The Debian mirror to fetch from.
pub fn mirror() -> String {
    std::env::var(MIRROR_ENV).unwrap_or_else(|_| DEFAULT_MIRROR.to_owned())
}

#[derive(Clone, Debug)]
pub struct Kernel {
    pub spec: &'static KernelSpec,
    /// The package the image came from (`linux-image-*`, or `linux-binary-*` from 7.x on).
    pub package: String,
    /// Debian version of the metapackage, e.g. `6.1.176-1`.
    pub version: String,
    /// What `uname -r` will say.
    pub release: String,
    pub vmlinuz: PathBuf,
    /// What [`Extra`] made of the kernel's packages, when asked for.
    pub extra: Option<PathBuf>,
    /// Everything asked for was already in the cache.
    pub cached: bool,
}

impl Kernel {
    /// The trixie kernel of [`crate::vm::transcript::fixture::RELEASE`], for tests.
    #[cfg(test)]
    pub fn fixture() -> Self {
        Self {
            spec: &KERNELS[1],
            package: "linux-image-6.12.117+deb13-cloud-amd64".into(),
            version: "6.12.117-1".into(),
            release: crate::vm::transcript::fixture::RELEASE.into(),
            vmlinuz: PathBuf::from("/k"),
            extra: None,
            cached: true,
        }
    }
}

/// Something a suite builds from a kernel's packages while they are at hand (the systemd
/// suite's virtio-net modules), cached beside the kernel.
pub trait Extra {
    /// Where the file for `release` is cached in `dir`.
    fn path(&self, dir: &Path, release: &str) -> PathBuf;
    /// Whether `file` in a kernel's cache directory is one of these, of any release.
    fn is_one(&self, file: &str) -> bool;
    /// Builds it at [`Extra::path`] from `debs`, the kernel's packages that hold its modules.
    fn build(&self, debs: &[PathBuf], release: &str, dir: &Path) -> anyhow::Result<()>;
}

struct Apt {
    dir: PathBuf,
}

impl Apt {
    fn new(dir: &Path, suite: &str) -> anyhow::Result<Self> {
        if !Path::new(KEYRING).exists() {
            bail!("{KEYRING} is missing: install debian-archive-keyring");
        }
        for sub in ["lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let mirror = mirror();
        // deb822 needs the .sources suffix; one-line format would need .list.
        let sources = format!(
            "Types: deb\nURIs: {mirror}\nSuites: {suite}\nComponents: main\nArchitectures: amd64\n\
             Targets: Packages\nSigned-By: {KEYRING}\n"
        );
        let path = dir.join("ctx.sources");
        if fs::read_to_string(&path).ok().as_deref() != Some(sources.as_str()) {
            fs::write(&path, sources).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    fn command(&self, tool: &str) -> Command {
        let d = |s: &str| self.dir.join(s).display().to_string();
        let mut c = Command::new(tool);
        for o in [
            format!("Dir::Etc::SourceList={}", d("ctx.sources")),
            "Dir::Etc::SourceParts=/dev/null".to_owned(),
            format!("Dir::State::Lists={}", d("lists")),
            format!("Dir::Cache={}", d("cache")),
            "Acquire::Languages=none".to_owned(),
            // Downloads land in our directory, which the _apt sandbox user cannot write.
            "APT::Sandbox::User=root".to_owned(),
        ] {
            c.arg("-o").arg(o);
        }
        c.current_dir(&self.dir);
        c
    }

    fn run(&self, tool: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut c = self.command(tool);
        c.args(args);
        let out = c
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {tool} (is apt installed?)"))?;
        if !out.status.success() {
            bail!(
                "{tool} {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn update(&self) -> anyhow::Result<()> {
        self.run("apt-get", &["-q", "update"]).map(drop)
    }

    fn has_lists(&self) -> bool {
        fs::read_dir(self.dir.join("lists")).is_ok_and(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
        })
    }

    fn show(&self, package: &str) -> anyhow::Result<BTreeMap<String, String>> {
        let text = self.run("apt-cache", &["show", "--no-all-versions", package])?;
        let fields = parse_stanza(&text);
        if fields.is_empty() {
            bail!("apt-cache knows no package {package}");
        }
        Ok(fields)
    }

    /// Downloads `package` into our directory and returns the .deb.
    fn download(&self, package: &str) -> anyhow::Result<PathBuf> {
        self.run("apt-get", &["-q", "download", package])?;
        let prefix = format!("{package}_");
        fs::read_dir(&self.dir)
            .with_context(|| format!("listing {}", self.dir.display()))?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.extension().is_some_and(|x| x == "deb")
                    && p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
            })
            .with_context(|| format!("apt-get download {package} left no .deb"))
    }
}

/// The first stanza of `apt-cache show`: field name to value, continuation lines joined.
fn parse_stanza(text: &str) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    let mut last: Option<String> = None;
    for line in text.lines() {
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(k) = &last
                && let Some(v) = fields.get_mut(k)
            {
                let v: &mut String = v;
                v.push(' ');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            fields.insert(k.to_owned(), v.trim().to_owned());
            last = Some(k.to_owned());
        }
    }
    fields
}

/// Package names in a Depends field, alternatives included, without versions.
fn depends(field: &str) -> Vec<String> {
    field
        .split([',', '|'])
        .filter_map(|d| d.split_whitespace().next())
        .map(|n| n.split(':').next().unwrap_or(n).to_owned())
        .filter(|n| !n.is_empty())
        .collect()
}

/// What the suite's kernel is made of in the archive.
#[derive(Debug, PartialEq, Eq)]
struct Packages {
    /// `uname -r` of the kernel.
    release: String,
    /// The package that holds vmlinuz.
    image: String,
    /// The path of vmlinuz in `image`.
    member: String,
    /// The packages that hold the modules and their indexes (`modules.order`,
    /// `modules.builtin`): the image itself before 7.x; from 7.x `linux-modules-RELEASE` and
    /// `linux-base-RELEASE`.
    modules: Vec<String>,
}

/// Resolves the packages from the metapackage's Depends, and the Depends of its image package
/// (`image_depends`, given the package's name).
fn packages(
    meta_depends: &str,
    image_depends: impl FnOnce(&str) -> anyhow::Result<String>,
) -> anyhow::Result<Packages> {
    let image = depends(meta_depends)
        .into_iter()
        .find(|n| n.starts_with("linux-image-") && n != META)
        .with_context(|| format!("{META} depends on no linux-image-*"))?;
    let release = image
        .strip_prefix("linux-image-")
        .unwrap_or(&image)
        .to_owned();
    // From 7.x the image package is empty: vmlinuz ships in linux-binary-RELEASE, the modules
    // in linux-modules-RELEASE, and their indexes and the config in linux-base-RELEASE.
    let deps = depends(&image_depends(&image)?);
    let dep = |prefix: &str| {
        let want = format!("{prefix}{release}");
        deps.iter()
            .find(|n| **n == want)
            .cloned()
            .with_context(|| format!("{image} depends on linux-binary-{release} but not {want}"))
    };
    Ok(if deps.iter().any(|n| n.starts_with("linux-binary-")) {
        Packages {
            member: format!("./usr/lib/modules/{release}/vmlinuz"),
            image: dep("linux-binary-")?,
            modules: vec![dep("linux-modules-")?, dep("linux-base-")?],
            release,
        }
    } else {
        Packages {
            member: format!("./boot/vmlinuz-{release}"),
            modules: vec![image.clone()],
            image,
            release,
        }
    })
}

/// Resolves the current cloud kernel of `spec`'s suite and makes sure its image is in `cache`;
/// with `extra`, also what that builds from the kernel's packages. The packages themselves are
/// not kept.
pub fn fetch(
    spec: &'static KernelSpec,
    cache: &Path,
    extra: Option<&dyn Extra>,
) -> anyhow::Result<Kernel> {
    let suite = spec.name;
    let dir = cache.join(suite);
    let apt = Apt::new(&dir, suite)?;
    if let Err(e) = apt.update() {
        if !apt.has_lists() {
            return Err(e).with_context(|| {
                format!("fetching the {suite} package lists (network, or set {MIRROR_ENV})")
            });
        }
        eprintln!(
            "vm-test: warning: {suite}: apt-get update failed, using the package lists of an \
             earlier run: {e:#}"
        );
    }
    let meta = apt.show(META)?;
    let version = meta.get("Version").cloned().unwrap_or_default();
    let p = packages(meta.get("Depends").map_or("", String::as_str), |image| {
        Ok(apt.show(image)?.get("Depends").cloned().unwrap_or_default())
    })
    .with_context(|| format!("resolving the {suite} cloud kernel"))?;
    let release = p.release.clone();
    let vmlinuz = dir.join(format!("vmlinuz-{release}"));
    let extra_path = extra.map(|x| x.path(&dir, &release));
    let have_image = vmlinuz.metadata().is_ok_and(|m| m.len() > 0);
    let have_extra = extra_path.as_ref().is_none_or(|p| p.exists());
    let cached = have_image && have_extra;
    if !cached {
        let mut names = Vec::new();
        if !have_image {
            names.push(p.image.clone());
        }
        if !have_extra {
            for m in &p.modules {
                if !names.contains(m) {
                    names.push(m.clone());
                }
            }
        }
        eprintln!("vm-test: {suite}: downloading {}", names.join(", "));
        let mut debs = Vec::new();
        let r = (|| {
            for n in &names {
                debs.push((n, apt.download(n)?));
            }
            let deb = |name: &String| debs.iter().find(|d| d.0 == name).map(|d| d.1.clone());
            if !have_image {
                let d = deb(&p.image).context("the image package was not downloaded")?;
                extract(&d, &p.member, &vmlinuz)?;
            }
            if let Some(x) = extra.filter(|_| !have_extra) {
                let d: Vec<PathBuf> = p.modules.iter().filter_map(deb).collect();
                x.build(&d, &release, &dir)?;
            }
            anyhow::Ok(())
        })();
        for (_, d) in &debs {
            let _ = fs::remove_file(d);
        }
        r?;
        // Older kernels of this suite are of no further use.
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            let old = name.starts_with("vmlinuz-") || extra.is_some_and(|x| x.is_one(&name));
            if old && path != vmlinuz && Some(&path) != extra_path.as_ref() {
                let _ = fs::remove_file(path);
            }
        }
    }
    Ok(Kernel {
        spec,
        package: p.image,
        version,
        release,
        vmlinuz,
        extra: extra_path,
        cached,
    })
}

/// `dpkg-deb --fsys-tarfile deb | tar -xO member > out`, through a temporary file.
fn extract(deb: &Path, member: &str, out: &Path) -> anyhow::Result<()> {
    let tmp = out.with_extension("part");
    let file = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .spawn()
        .context("running dpkg-deb")?;
    let pipe = dpkg.stdout.take().context("no pipe from dpkg-deb")?;
    let tar = Command::new("tar")
        .args(["-xO", member])
        .stdin(pipe)
        .stdout(file)
        .status()
        .context("running tar")?;
    let dpkg = dpkg.wait().context("waiting for dpkg-deb")?;
    if !dpkg.success() || !tar.success() {
        bail!(
            "extracting {member} from {} failed (dpkg-deb {dpkg}, tar {tar}): the package layout \
             may have changed",
            deb.display()
        );
    }
    if tmp.metadata().map_or(0, |m| m.len()) == 0 {
        bail!("{member} in {} is empty", deb.display());
    }
    fs::rename(&tmp, out).with_context(|| format!("renaming to {}", out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stanza_and_depends() {
        let text = "Package: linux-image-cloud-amd64\nVersion: 7.2.13-1\nDepends: linux-base-cloud-amd64 (= 7.2.13-1),\n linux-image-7.2.13+deb14-cloud-amd64 (= 7.2.13-1)\nDescription: x\n\nPackage: other\n";
        let f = parse_stanza(text);
        assert_eq!(f["Version"], "7.2.13-1");
        assert_eq!(
            depends(&f["Depends"]),
            vec![
                "linux-base-cloud-amd64",
                "linux-image-7.2.13+deb14-cloud-amd64"
            ]
        );
        assert_eq!(
            depends("dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, kmod:any"),
            vec!["dracut", "initramfs-tools", "linux-initramfs-tool", "kmod"]
        );
        assert!(parse_stanza("").is_empty());
    }

    #[test]
    fn packages_before_and_from_7x() {
        // Debian's Depends, as seen on 2026-11-24.
        let p = packages("linux-image-6.1.0-50-cloud-amd64 (= 6.1.176-1)", |image| {
            assert_eq!(image, "linux-image-6.1.0-50-cloud-amd64");
            Ok(
                "kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | \
                    linux-initramfs-tool"
                    .into(),
            )
        })
        .unwrap();
        assert_eq!(
            p,
            Packages {
                release: "6.1.0-50-cloud-amd64".into(),
                image: "linux-image-6.1.0-50-cloud-amd64".into(),
                member: "./boot/vmlinuz-6.1.0-50-cloud-amd64".into(),
                modules: vec!["linux-image-6.1.0-50-cloud-amd64".into()],
            }
        );
        let r = "7.2.13+deb14-cloud-amd64";
        let p = packages(
            &format!("linux-base-cloud-amd64 (= 7.2.13-1), linux-image-{r} (= 7.2.13-1)"),
            |_| {
                Ok(format!(
                    "dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, \
                     linux-base-{r} (= 7.2.13-1), linux-binary-{r} (= 7.2.13-1), \
                     linux-modules-{r} (= 7.2.13-1)"
                ))
            },
        )
        .unwrap();
        assert_eq!(p.release, r);
        assert_eq!(p.image, format!("linux-binary-{r}"));
        assert_eq!(p.member, format!("./usr/lib/modules/{r}/vmlinuz"));
        assert_eq!(
            p.modules,
            vec![format!("linux-modules-{r}"), format!("linux-base-{r}")]
        );
        // A split image without its modules package is an error, not a silent half.
        let e = packages(&format!("linux-image-{r}"), |_| {
            Ok(format!("linux-binary-{r}, linux-base-{r}"))
        })
        .unwrap_err();
        assert!(e.to_string().contains("linux-modules-"), "{e}");
        assert!(packages("linux-base", |_| Ok(String::new())).is_err());
    }
}
