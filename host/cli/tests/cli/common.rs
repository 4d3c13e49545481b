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

/// A run that several tests read: trained once per test process, the first time a test
/// asks for it, with its `--json` summary, and exported to `RUN/model.onnx`.
pub struct TrainedRun {
    pub dir: std::path::PathBuf,
    pub summary: serde_json::Value,
}

impl TrainedRun {
    pub fn onnx(&self) -> std::path::PathBuf {
        self.dir.join("model.onnx")
    }
}

pub fn train_and_export(name: &str, args: &[&str]) -> TrainedRun {
    let dir = std::env::temp_dir().join(format!("tinyres-runs-{}/{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_arg = dir.to_str().unwrap();
    let mut all = vec!["train", "--quiet", "--json"];
    if !args.contains(&"--data") {
        all.extend_from_slice(&["--data", "synthetic"]);
    }
    all.extend_from_slice(args);
    all.extend_from_slice(&["--out", dir_arg]);
    let summary = serde_json::from_str(&ok(tinyres(&all))).unwrap();
    let onnx = dir.join("model.onnx");
    ok(tinyres(&["export", dir_arg, "-o", onnx.to_str().unwrap()]));
    TrainedRun { dir, summary }
}

/// A resnet8 trained on the synthetic set until it is right most of the time.
pub fn trained_resnet8() -> &'static TrainedRun {
    static RUN: std::sync::OnceLock<TrainedRun> = std::sync::OnceLock::new();
    RUN.get_or_init(|| {
        train_and_export(
            "resnet8",
            &[
                "--arch",
                "resnet8",
                "--limit",
                "2000",
                "--epochs",
                "3",
                "--schedule",
                "onecycle",
            ],
        )
    })
}

/// A resnet20 (option A shortcuts) at half width (8-16-32 filters: its shortcuts, depth
/// and export are what the tests check), 3 epochs on 1,000 synthetic images: 30 s on
/// two cores where the full width took 48 s for 2 epochs. Its int8 blob agrees with the
/// f32 blob on 999 of the first 1,000 test images (2 epochs: 993, too near the 99 %
/// bar).
pub fn trained_resnet20() -> &'static TrainedRun {
    static RUN: std::sync::OnceLock<TrainedRun> = std::sync::OnceLock::new();
    RUN.get_or_init(|| {
        train_and_export(
            "resnet20",
            &[
                "--arch",
                "resnet20",
                "--widths",
                "8,16,32",
                "--limit",
                "1000",
                "--batch",
                "50",
                "--epochs",
                "3",
                "--schedule",
                "onecycle",
            ],
        )
    })
}
