//! Builds the eBPF object (ctx-ebpf) for the bpfel target and leaves it in `OUT_DIR/ctx`.

use std::path::PathBuf;
use std::{env, fs};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// Must match rust-toolchain.toml: bpf-linker is built against this rustc's LLVM (22).
const EBPF_TOOLCHAIN: &str = "1.98.0";

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    println!("cargo::rerun-if-env-changed=CTX_SKIP_EBPF");
    if env::var_os("CTX_SKIP_EBPF").is_some_and(|v| v == "1") {
        // For tooling that only type-checks (no bpf-linker needed); the loader refuses an empty
        // object with a message that names this variable.
        println!("cargo::warning=CTX_SKIP_EBPF=1: building without the eBPF object");
        fs::write(out_dir.join("ctx"), []).context("writing the empty eBPF stub")?;
        return Ok(());
    }
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../ctx-ebpf");
    // `-Z build-std=core` needs unstable cargo features on the pinned stable toolchain; the
    // variable only reaches the nested eBPF build that aya-build spawns.
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };
    // aya-build forwards every line of the nested cargo's stderr as a `cargo::warning`, so its
    // progress ("Compiling ...", about 30 lines on a fresh build) read as warnings. Quiet, it
    // prints none; rustc's diagnostics still come through its JSON messages, real warnings
    // and errors included.
    // SAFETY: as above.
    unsafe { env::set_var("CARGO_TERM_QUIET", "true") };
    aya_build::build_ebpf(
        [Package {
            name: "ctx-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        Toolchain::Custom(EBPF_TOOLCHAIN),
    )
    .context(
        "building the eBPF programs (needs bpf-linker and the pinned toolchain: run .ci/setup)",
    )
}
