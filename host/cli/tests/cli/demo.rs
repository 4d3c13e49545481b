//! `tinyres demo`: the whole chain, and what happens when it cannot finish.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::common::{err, ok, tinyres};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tinyres-demo-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Names in `dir` that start with `.NAME.partial-` (staging left behind).
fn partials(dir: &Path, name: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!(".{name}.partial-")))
        .collect()
}

#[test]
fn fast_demo_runs_the_chain_and_replaces_the_output_at_the_end() {
    let dir = scratch("fast");
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("from-an-earlier-run"), b"x").unwrap();
    let report: serde_json::Value = serde_json::from_str(&ok(tinyres(&[
        "demo",
        "--fast",
        "--json",
        "--out",
        s(&out),
    ])))
    .unwrap();

    assert_eq!(report["held_out_class"], "vgradient");
    assert_eq!(report["model"]["classes"], 9);
    assert!(report["export"]["relative_diff"].as_f64().unwrap() <= 1e-4);
    let device = &report["device"];
    assert_eq!(device["identical_to_host"], device["images"]);
    assert!(device["instructions_per_inference"].as_u64().unwrap() > 1_000_000);
    let learning = &report["learning"];
    assert_eq!(learning["persisted"], true);
    assert_eq!(learning["new_class"], 9);
    assert_eq!(learning["new_class_accuracy"]["before"], 0.0);
    assert!(learning["new_class_accuracy"]["after"].as_f64().unwrap() > 0.0);
    for file in [
        "model.onnx",
        "model.trm",
        "confusion.png",
        "report.json",
        "run/config.json",
        "run/metrics.csv",
        "run/curves.png",
        "flash/tinyres-flash.bin",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    assert!(!out.join("from-an-earlier-run").exists());
    assert!(partials(&dir, "out").is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn demo_without_qemu_says_how_to_install_it() {
    let dir = scratch("noqemu");
    let out = dir.join("out");
    let output = Command::new(env!("CARGO_BIN_EXE_tinyres"))
        .args(["demo", "--fast", "--out", s(&out)])
        .env("PATH", s(&dir))
        .output()
        .unwrap();
    let stderr = err(output);
    assert!(
        stderr.contains("qemu-system-arm is not installed")
            && stderr.contains("apt-get install qemu-system-arm"),
        "{stderr}"
    );
    assert!(!out.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn demo_with_an_unwritable_output_fails_before_training() {
    let dir = scratch("unwritable");
    let file = dir.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let started = Instant::now();
    let stderr = err(tinyres(&["demo", "--fast", "--out", s(&file.join("out"))]));
    assert!(
        stderr.contains("cannot create") && stderr.contains("a-file"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "it trained first"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn interrupted_demo_leaves_the_previous_output_and_no_partial_files() {
    let dir = scratch("interrupt");
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("earlier-result"), b"kept").unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_tinyres"))
        .args(["demo", "--fast", "--out", s(&out)])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let staging = dir.join(format!(".out.partial-{}", child.id()));
    // Interrupt once training has written its run directory.
    let started = Instant::now();
    while !staging.join("run/config.json").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the demo never started training"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_eq!(std::fs::read(out.join("earlier-result")).unwrap(), b"kept");
    assert!(
        partials(&dir, "out").is_empty(),
        "{:?}",
        partials(&dir, "out")
    );
    let _ = std::fs::remove_dir_all(&dir);
}
