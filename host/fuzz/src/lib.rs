//! What the host fuzz targets share: the ONNX import takes a path, so its input is
//! written to a file of this process's own in the system's temporary directory first.

use std::path::PathBuf;

/// A directory of this fuzzing process's own.
fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tinyres-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("the temporary directory is writable");
    dir
}

/// Writes `bytes` to `name` in [`scratch_dir`] and returns the path.
pub fn scratch_file(name: &str, bytes: &[u8]) -> PathBuf {
    let path = scratch_dir().join(name);
    std::fs::write(&path, bytes).expect("the temporary directory is writable");
    path
}
