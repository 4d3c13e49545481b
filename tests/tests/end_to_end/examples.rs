//! The examples under `examples/` are projects of their own, as a user's firmware is:
//! each builds for its chip with its own cargo configuration, and the ones QEMU can run
//! predict as the engine does on the host.

use std::path::{Path, PathBuf};
use std::process::Command;

use tinyres_core::{Interpreter, Model};

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

/// `cargo build --release` in an example, as its user would run it (without the
/// variables this test process inherits from cargo that would redirect the build).
fn build(dir: &Path) {
    let output = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--release", "--quiet"])
        .current_dir(dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "{}: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The plain cortex-m-rt example boots on QEMU's Cortex-M4 and prints the class the
/// host engine gives the same frame with the same blob.
#[test]
fn the_minimal_cortex_m_rt_example_predicts_as_the_host() {
    let dir = example("minimal");
    build(&dir);
    let elf = dir.join("target/thumbv7em-none-eabihf/release/tinyres-example-minimal");
    let output = Command::new("qemu-system-arm")
        .args(["-machine", "mps2-an386", "-cpu", "cortex-m4", "-nographic"])
        .args(["-semihosting-config", "enable=on,target=native", "-kernel"])
        .arg(&elf)
        .output()
        .expect("qemu-system-arm runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let device: usize = stdout
        .trim()
        .strip_prefix("class ")
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("unexpected output: {stdout}"));

    // The same blob and frame on the host (src/main.rs).
    static MODEL: &[u8] =
        tinyres_core::include_model!("../../../core/tests/fixtures/bottleneck-int8.trm");
    let frame: Vec<u8> = (0..8 * 8 * 3).map(|i| (i * 5 % 256) as u8).collect();
    let model = Model::parse(MODEL).unwrap();
    let mut arena = vec![0u8; model.required_arena()];
    let host = Interpreter::new(model, &mut arena)
        .unwrap()
        .run(&frame)
        .unwrap();
    assert_eq!(device, host);
}
