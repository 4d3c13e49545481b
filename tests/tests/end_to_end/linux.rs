//! `tinyres-edge`, the command for Linux boards, cross-built for AArch64 and 32-bit Armv7
//! Linux and run under QEMU user mode: its classes and probabilities equal the host
//! engine's (what `tinyres eval` computes) on a CIFAR-10 batch and on an image folder
//! whose images are of another size than the model's input.
//!
//! Needs Debian's `qemu-user` and the cross linkers (`gcc-aarch64-linux-gnu`,
//! `gcc-arm-linux-gnueabihf`) and the two Rust targets; without them the test says
//! so and passes, unless `TINYRES_REQUIRE_QEMU_USER` is set (CI sets it).

use std::path::{Path, PathBuf};
use std::process::Command;

use tinyres_compile::eval::evaluate;
use tinyres_compile::writer::{AlignedBlob, Encoding};
use tinyres_core::kernels::F32_RELATIVE_TOLERANCE;
use tinyres_core::{Interpreter, Model};
use tinyres_data::{Dataset, Split};

use super::qemu::{images, int8_blob, resnet8, several_classes};

/// A Linux target: Rust's name, the cross linker, QEMU's user-mode emulator and the
/// sysroot it loads the C library from.
struct LinuxTarget {
    triple: &'static str,
    linker: &'static str,
    qemu: &'static str,
    sysroot: &'static str,
}

const TARGETS: [LinuxTarget; 2] = [
    LinuxTarget {
        triple: "aarch64-unknown-linux-gnu",
        linker: "aarch64-linux-gnu-gcc",
        qemu: "qemu-aarch64",
        sysroot: "/usr/aarch64-linux-gnu",
    },
    LinuxTarget {
        triple: "armv7-unknown-linux-gnueabihf",
        linker: "arm-linux-gnueabihf-gcc",
        qemu: "qemu-arm",
        sysroot: "/usr/arm-linux-gnueabihf",
    },
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// What is missing to cross-build and emulate, if anything.
fn missing_tools() -> Vec<String> {
    let installed_targets = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut missing = Vec::new();
    for target in &TARGETS {
        for tool in [target.linker, target.qemu] {
            if Command::new(tool).arg("--version").output().is_err() {
                missing.push(tool.to_string());
            }
        }
        if !installed_targets.lines().any(|t| t == target.triple) {
            missing.push(format!("the Rust target {}", target.triple));
        }
    }
    missing
}

/// `tinyres-edge` built for every target in [`TARGETS`] (one cargo run, its own target
/// directory: the test binary's cargo holds the workspace's), or `None` where the tools
/// are missing and not required.
fn cross_built() -> Option<Vec<PathBuf>> {
    let missing = missing_tools();
    if !missing.is_empty() {
        let text = format!("missing {}", missing.join(", "));
        assert!(
            std::env::var_os("TINYRES_REQUIRE_QEMU_USER").is_none(),
            "TINYRES_REQUIRE_QEMU_USER is set: {text}"
        );
        eprintln!(
            "NOT CHECKED under qemu-user: {text} (apt-get install qemu-user gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf; rustup target add aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)"
        );
        return None;
    }
    let target_dir = workspace().join("target/linux");
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo
        .current_dir(workspace())
        .args(["build", "-p", "tinyres-edge", "--target-dir"])
        .arg(&target_dir);
    for target in &TARGETS {
        cargo.args(["--target", target.triple]);
        let variable = format!(
            "CARGO_TARGET_{}_LINKER",
            target.triple.to_uppercase().replace('-', "_")
        );
        cargo.env(variable, target.linker);
    }
    let status = cargo.status().expect("cargo runs");
    assert!(status.success(), "cross-building tinyres-edge failed");
    Some(
        TARGETS
            .iter()
            .map(|t| target_dir.join(t.triple).join("debug/tinyres-edge"))
            .collect(),
    )
}

/// `tinyres-edge --json MODEL INPUTS...` under the target's emulator.
fn edge_json(
    target: &LinuxTarget,
    binary: &Path,
    model: &Path,
    inputs: &[&Path],
) -> serde_json::Value {
    let output = Command::new(target.qemu)
        .arg("-L")
        .arg(target.sysroot)
        .arg(binary)
        .arg("--json")
        .arg(model)
        .args(inputs)
        .output()
        .expect("qemu-user runs");
    assert!(
        output.status.success(),
        "{} tinyres-edge failed: {}",
        target.triple,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("tinyres-edge prints JSON")
}

/// The host engine's class and probability of every image.
fn host_predictions(blob: &AlignedBlob, data: &Dataset) -> Vec<(usize, f32)> {
    let model = Model::parse(blob.as_bytes()).unwrap();
    let mut arena = vec![0u8; model.required_arena()];
    let mut interpreter = Interpreter::new(model, &mut arena).unwrap();
    let mut probabilities = vec![0f32; model.num_classes()];
    (0..data.len())
        .map(|i| {
            let class = interpreter
                .classify(data.image(i), &mut probabilities)
                .unwrap();
            (class, probabilities[class])
        })
        .collect()
}

/// `data` as a CIFAR-10 batch file: per record a label, then the R, G and B planes.
fn write_cifar_batch(data: &Dataset, path: &Path) {
    let mut bytes = Vec::new();
    for i in 0..data.len() {
        bytes.push(data.labels[i]);
        let image = data.image(i);
        for channel in 0..3 {
            bytes.extend(image.iter().skip(channel).step_by(3));
        }
    }
    std::fs::write(path, bytes).unwrap();
}

/// An image folder (`DIR/test/<class>/*.png`) of `data`'s images scaled to 40×48, so
/// that the readers must fit them back to the model's 32×32.
fn write_image_folder(data: &Dataset, dir: &Path) {
    for i in 0..data.len() {
        let class_dir = dir.join("test").join(format!("class{}", data.labels[i]));
        std::fs::create_dir_all(&class_dir).unwrap();
        let image = image::RgbImage::from_raw(32, 32, data.image(i).to_vec()).unwrap();
        image::imageops::resize(&image, 48, 40, image::imageops::FilterType::Triangle)
            .save(class_dir.join(format!("{i:03}.png")))
            .unwrap();
    }
}

#[test]
fn linux_command_under_qemu_user_equals_the_host_engine() {
    let Some(binaries) = cross_built() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("tinyres-linux-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let data = images(24, 5);
    let batch = dir.join("batch.bin");
    write_cifar_batch(&data, &batch);
    write_image_folder(&data, &dir.join("folder"));
    // What `tinyres eval` reads: the batch as it is, the folder fitted to 32×32.
    let cifar = Dataset::load(&batch, Split::Test).unwrap();
    assert_eq!(cifar.pixels, data.pixels);
    let folder = Dataset::load_fitted(&dir.join("folder"), Split::Test, (32, 32)).unwrap();

    let net = resnet8();
    let f32_blob = AlignedBlob::new(&net.to_blob(Encoding::F32).unwrap());
    for (dtype, blob) in [("int8", int8_blob(&net)), ("f32", f32_blob)] {
        let model = dir.join(format!("{dtype}.trm"));
        std::fs::write(&model, blob.as_bytes()).unwrap();
        for (name, input, images) in [
            ("CIFAR-10 batch", batch.clone(), &cifar),
            ("image folder", dir.join("folder/test"), &folder),
        ] {
            let expected = host_predictions(&blob, images);
            let eval = evaluate(blob.as_bytes(), images).unwrap();
            assert_eq!(
                expected.iter().map(|p| p.0).collect::<Vec<_>>(),
                eval.predictions
            );
            several_classes(eval.predictions.clone());
            for (target, binary) in TARGETS.iter().zip(&binaries) {
                let report = edge_json(target, binary, &model, &[&input]);
                let rows = report["images"].as_array().unwrap();
                assert_eq!(rows.len(), images.len(), "{dtype} {name} {}", target.triple);
                for (i, (row, (class, probability))) in rows.iter().zip(&expected).enumerate() {
                    let context = format!("{dtype}, {name}, image {i}, {}", target.triple);
                    assert_eq!(row["class"], *class, "{context}");
                    let edge_probability = row["probability"].as_f64().unwrap() as f32;
                    // int8 is exact on every instruction set; f32 sums in another order
                    // on NEON than on x86-64: within the engine's f32 tolerance.
                    let tolerance = if dtype == "int8" {
                        0.0
                    } else {
                        F32_RELATIVE_TOLERANCE
                    };
                    assert!(
                        (edge_probability - probability).abs() <= tolerance,
                        "{context}: probability {edge_probability} against {probability}"
                    );
                }
                if name == "CIFAR-10 batch" {
                    let correct = eval.accuracy() * images.len() as f64;
                    let edge_correct = report["accuracy"].as_f64().unwrap() * images.len() as f64;
                    assert!(
                        (correct - edge_correct).abs() < 1e-6,
                        "{dtype} {}",
                        target.triple
                    );
                }
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
