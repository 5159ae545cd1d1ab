//! Golden files: `tests/golden/<name>` must equal what a test produced, byte for byte.
//! `CTX_BLESS=1` rewrites them instead (then review the diff). Shared by the unit tests
//! (`src/test_util.rs` includes this file) and the integration tests.

use std::path::{Path, PathBuf};

/// Set to rewrite every golden file from what the tests produce.
pub const BLESS: &str = "CTX_BLESS";

pub fn blessing() -> bool {
    std::env::var_os(BLESS).is_some_and(|v| v == "1")
}

pub fn path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// Compares `got` with the golden file `name`, or rewrites it under `CTX_BLESS=1`.
pub fn check(name: &str, got: &str) {
    let path = path(name);
    if blessing() {
        std::fs::write(&path, got).expect("writing a golden file");
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "reading {}: {e}; run with {BLESS}=1 to create it",
            path.display()
        )
    });
    assert!(
        want == got,
        "{name} differs from its golden file ({BLESS}=1 rewrites it)\n--- want\n{want}--- got\n{got}"
    );
}
