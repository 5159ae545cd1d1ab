use which::which;

/// Rebuild the eBPF object when bpf-linker changes: a linker built against another LLVM is the
/// usual cause of "Invalid record" errors, and cargo would not notice the swap on its own.
fn main() {
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
