//! Running the `tinyres` binary as a user does, for the integration tests.

use std::process::{Command, Output};

/// `tinyres ARGS...`, waited for.
pub fn tinyres(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tinyres"))
        .args(args)
        .output()
        .expect("runs")
}

/// The stdout of a run that must succeed (else both streams in the panic).
pub fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The stderr of a run that must fail.
pub fn err(output: Output) -> String {
    assert!(!output.status.success(), "should fail");
    String::from_utf8_lossy(&output.stderr).into_owned()
}
