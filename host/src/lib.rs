//! The host side of tinyres: the ResNet architecture family, data readers, training
//! with burn, ONNX export checked through tract, reports on model blobs, and running
//! the firmware in QEMU. The `tinyres` binary is a thin command line over this library.

pub mod arch;
pub mod bench;
pub mod compile;
pub mod data;
pub mod demo;
pub mod eval;
pub mod export;
pub mod flash;
pub mod net;
pub mod plot;
pub mod qemu;
pub mod report;
pub mod rtt;
pub mod train;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Writes `bytes` to a temporary file beside `path`, then renames it over `path`, so
/// an interrupted write never leaves a truncated file under the final name.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    let written = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.with_context(|| format!("cannot write {}", path.display()))
}

/// `.NAME.tmp` beside `path`: where a file is staged before it replaces `path`.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.tmp"))
}
