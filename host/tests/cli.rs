//! The `tinyres` binary as a user runs it.

use std::path::PathBuf;
use std::process::{Command, Output};

use tinyres_core::writer::Encoding;
use tinyres_host::arch::Architecture;

fn tinyres(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tinyres"))
        .args(args)
        .output()
        .expect("runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tinyres-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn plan_resnet8_int8_reports_the_mlperf_budget() {
    let out = tinyres(&["plan", "--arch", "resnet8", "--dtype", "int8", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let model = &v["model"];
    assert_eq!(model["macs"], 12_505_728);
    assert_eq!(model["params"], 77_706);
    assert!(model["arena_bytes"].as_u64().unwrap() <= 48 * 1024);
    assert!(model["flash_bytes"].as_u64().unwrap() <= 90_000);
    assert_eq!(model["layers"].as_array().unwrap().len(), 11);

    let table = tinyres(&["plan"]);
    assert!(table.status.success());
    assert!(
        stdout(&table).contains("arena peak   32,768 B (32.0 KiB)"),
        "{}",
        stdout(&table)
    );
}

#[test]
fn plan_accepts_every_family_member_and_option() {
    for args in [
        &["plan", "--arch", "resnet110", "--dtype", "f16"][..],
        &["plan", "--arch", "plain20"],
        &["plan", "--arch", "resnet20", "--shortcut", "C"],
        &["plan", "--arch", "resnet29-bottleneck", "--shortcut", "A"],
    ] {
        let out = tinyres(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn plan_writes_a_blob_that_inspect_reads() {
    let path = temp("resnet8-untrained.trm");
    let out = tinyres(&[
        "plan",
        "--arch",
        "resnet8",
        "-o",
        path.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let planned: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let inspected = tinyres(&["inspect", path.to_str().unwrap(), "--json"]);
    let inspected: serde_json::Value = serde_json::from_str(&stdout(&inspected)).unwrap();
    assert_eq!(planned["model"], inspected);
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        inspected["flash_bytes"].as_u64().unwrap()
    );

    let out = tinyres(&["plan", "-o", "/nonexistent-dir/x.trm"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot write /nonexistent-dir/.x.trm.tmp"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn unknown_architecture_is_a_one_line_error() {
    let out = tinyres(&["plan", "--arch", "vgg16"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("vgg16") && err.contains("resnet8"), "{err}");
}

#[test]
fn inspect_reads_a_blob_and_names_corruption() {
    let network = Architecture::by_name("resnet20")
        .unwrap()
        .network(7)
        .unwrap();
    let path = temp("resnet20.trm");
    let bytes = network.to_blob(Encoding::F16).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    let out = tinyres(&["inspect", path.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["dtype"], "f16");
    assert_eq!(v["flash_bytes"], bytes.len());

    let mut corrupt = bytes.clone();
    corrupt[100] ^= 0x40;
    std::fs::write(&path, &corrupt).unwrap();
    let out = tinyres(&["inspect", path.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("checksum mismatch"),
        "{}",
        stderr(&out)
    );

    std::fs::write(&path, &bytes[..1000]).unwrap();
    let out = tinyres(&["inspect", path.to_str().unwrap()]);
    assert!(
        stderr(&out).contains("truncated: needs"),
        "{}",
        stderr(&out)
    );

    let out = tinyres(&["inspect", "/nonexistent/model.trm"]);
    assert!(
        stderr(&out).contains("cannot read /nonexistent/model.trm"),
        "{}",
        stderr(&out)
    );
}
