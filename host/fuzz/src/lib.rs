//! What the host fuzz targets share: the ONNX import takes a path, so its input is
//! written to a file of this process's own in the system's temporary directory first;
//! and the ONNX targets tell tract's panics (errors of the import's) from ours.

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

/// Keeps libFuzzer's panic hook (which aborts, so that the fuzzer reports the input)
/// for panics outside tract's code only. tract checks much with assertions, and the
/// ONNX import turns a panic inside tract into an error (`tract_step`); a panic
/// anywhere else is ours, a bug.
pub fn abort_on_panics_outside_tract() {
    let abort = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let in_tract = info
            .location()
            .is_some_and(|l| l.file().contains("/tract-"));
        if !in_tract {
            abort(info);
        }
    }));
}
