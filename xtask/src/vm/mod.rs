//! What both suites of `cargo xtask vm-test` share: the kernels they boot and how they are
//! fetched ([`kernel`]), the static guest binaries ([`artifacts`]), initramfs archives
//! ([`cpio`]), the qemu machine and its console runner ([`qemu`]), the one check of a guest's
//! transcript ([`transcript`]) and the tables that report it ([`report`]).

use std::path::{Path, PathBuf};

pub mod artifacts;
pub mod cpio;
pub mod kernel;
pub mod qemu;
pub mod report;
pub mod transcript;

/// Where the VM tests keep kernels, the rootfs and their work directory: `TARGET/vm`.
pub fn cache_dir(root: &Path) -> anyhow::Result<PathBuf> {
    Ok(artifacts::target_dir(root)?.join("vm"))
}

/// FNV-1a: a stable key for a cached file's name, over what went into it (not a security
/// boundary).
pub fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_its_published_vectors() {
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
