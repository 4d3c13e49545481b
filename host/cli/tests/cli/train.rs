//! `tinyres train` and `tinyres export` as a user runs them: the synthetic data, resume
//! after `kill -9`, and an ONNX file that tract, onnxruntime and burn agree on.

use super::common::{
    err, ok, tinyres, train_and_export, trained_resnet20, trained_resnet8, TrainedRun,
};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tinyres_data::{synthetic, Dataset, Split};
use tinyres_train::train::{self, batch_tensor_data, Crop, CropStyle, TrainConfig};

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tinyres-train-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let _ = std::fs::remove_dir_all(&path);
    path
}

/// A small run: a half-width network (8-16-32 filters), the first 300 synthetic
/// images, batch 50, seed 5.
fn small_run(out: &Path, arch: &str, epochs: usize) -> Vec<String> {
    [
        "train",
        "--arch",
        arch,
        "--widths",
        "8,16,32",
        "--data",
        "synthetic",
        "--limit",
        "300",
        "--batch",
        "50",
        "--seed",
        "5",
        "--quiet",
        "--epochs",
        &epochs.to_string(),
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([out.display().to_string()])
    .collect()
}

/// metrics.csv without the timing columns.
fn learning_columns(run: &Path) -> Vec<String> {
    std::fs::read_to_string(run.join("metrics.csv"))
        .unwrap()
        .lines()
        .map(|line| line.split(',').take(5).collect::<Vec<_>>().join(","))
        .collect()
}

#[test]
fn resume_after_kill_continues_exactly() {
    let whole = temp("whole");
    let args = small_run(&whole, "resnet8", 3);
    ok(tinyres(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    ));

    let killed = temp("killed");
    let args = small_run(&killed, "resnet8", 3);
    let mut child = Command::new(env!("CARGO_BIN_EXE_tinyres"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !killed.join("checkpoint/progress.json").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no checkpoint"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "ended before its first checkpoint"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Somewhere in the second epoch.
    std::thread::sleep(Duration::from_millis(500));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let done = std::fs::read_to_string(killed.join("metrics.csv")).unwrap();
    assert!(
        done.lines().count() < 4,
        "killed after the last epoch: {done}"
    );

    ok(tinyres(&[
        "train",
        "--quiet",
        "--resume",
        killed.to_str().unwrap(),
    ]));
    assert_eq!(learning_columns(&killed), learning_columns(&whole));
    // The same weights: the same logits, bit for bit.
    let logits = |run: &Path| {
        let config = TrainConfig::load(run).unwrap();
        let model = train::load_model(run, &config).unwrap();
        let mut data = Dataset::load(Path::new("synthetic"), Split::Test).unwrap();
        data.truncate(100);
        train::predict(&model, &data, &config).unwrap()
    };
    assert_eq!(
        logits(&killed),
        logits(&whole),
        "the resumed run ends with the same weights"
    );
    assert!(std::fs::read(killed.join("curves.png"))
        .unwrap()
        .starts_with(b"\x89PNG"));
    let plot = temp("both.png");
    ok(tinyres(&[
        "plot",
        whole.to_str().unwrap(),
        killed.to_str().unwrap(),
        "-o",
        plot.to_str().unwrap(),
    ]));
    assert!(std::fs::read(&plot).unwrap().starts_with(b"\x89PNG"));

    // Finished runs say so; a run from another architecture is refused.
    let again = err(tinyres(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    assert!(again.contains("already holds a run"), "{again}");
    let config_path = killed.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["arch"]["stage_widths"] = serde_json::json!([4, 8, 16]);
    config["epochs"] = serde_json::json!(4);
    std::fs::write(&config_path, config.to_string()).unwrap();
    let other = err(tinyres(&["train", "--resume", killed.to_str().unwrap()]));
    assert!(
        other.contains("not a checkpoint of this architecture"),
        "{other}"
    );
}

#[test]
fn synthetic_training_learns_and_reports_json() {
    let run = trained_resnet8();
    let summary = &run.summary;
    assert_eq!(summary["epochs"], 3);
    // 77,370 convolution and classifier weights, 4 batch-norm values on each of 336 channels.
    assert_eq!(summary["parameters"], 77_370 + 4 * 336);
    let accuracy = summary["test_accuracy"].as_f64().unwrap();
    assert!(
        accuracy > 0.5,
        "3 epochs on 2000 synthetic images: {accuracy}"
    );
    let metrics = std::fs::read_to_string(run.dir.join("metrics.csv")).unwrap();
    assert!(metrics
        .starts_with("epoch,train_loss,train_error,test_error,lr,seconds,images_per_second\n"));
    assert_eq!(metrics.lines().count(), 4);
}

#[test]
fn bad_input_is_a_one_line_error() {
    let missing = err(tinyres(&[
        "train",
        "--data",
        "/nonexistent/cifar",
        "--out",
        temp("x").to_str().unwrap(),
    ]));
    assert!(missing.contains("/nonexistent/cifar"), "{missing}");
    let arch = err(tinyres(&["train", "--arch", "vgg16"]));
    assert!(arch.contains("unknown architecture \"vgg16\""), "{arch}");
    let classes = err(tinyres(&[
        "train",
        "--classes",
        "5",
        "--data",
        "synthetic",
        "--out",
        temp("five").to_str().unwrap(),
    ]));
    assert!(
        classes.contains("has label 5, but the network has 5 classes"),
        "{classes}"
    );
    let no_run = err(tinyres(&["export", "/nonexistent/run"]));
    assert!(no_run.contains("not a training run directory"), "{no_run}");
    let no_resume = err(tinyres(&["train", "--resume", "/nonexistent/run"]));
    assert!(
        no_resume.contains("/nonexistent/run/config.json"),
        "{no_resume}"
    );
}

/// Exports a run and checks the file with onnxruntime and `onnx.checker` from Python:
/// the inputs and burn's logits go to files, the script compares.
fn export_and_check_with_onnxruntime(trained: &TrainedRun) {
    let run = &trained.dir;
    let onnx = run.join("export-check.onnx");
    let out = ok(tinyres(&[
        "export",
        run.to_str().unwrap(),
        "-o",
        onnx.to_str().unwrap(),
        "--json",
    ]));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        report["relative_diff"].as_f64().unwrap() <= 1e-4,
        "{report}"
    );
    assert_eq!(report["images_checked"], 64);

    let config = TrainConfig::load(run).unwrap();
    let model = train::load_model(run, &config).unwrap();
    let mut data = Dataset::load(Path::new("synthetic"), Split::Test).unwrap();
    data.truncate(32);
    let logits: Vec<f32> = train::predict(&model, &data, &config).unwrap().concat();
    let indices: Vec<usize> = (0..data.len()).collect();
    let input = batch_tensor_data(
        &data,
        &indices,
        &vec![Crop::NONE; 32],
        &config.mean,
        &config.std,
    );
    let to_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    std::fs::write(run.join("input.f32"), to_bytes(&input)).unwrap();
    std::fs::write(run.join("logits.f32"), to_bytes(&logits)).unwrap();

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/onnx_check.py");
    let python = Command::new("python3")
        .arg(&script)
        .arg(&onnx)
        .arg(run.join("input.f32"))
        .arg(run.join("logits.f32"))
        .output()
        .expect("python3 runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&python.stdout),
        String::from_utf8_lossy(&python.stderr)
    );
    if python.status.code() == Some(3) && std::env::var_os("TINYRES_REQUIRE_ONNXRUNTIME").is_none()
    {
        eprintln!("NOT CHECKED with onnxruntime: {text} (pip install onnx onnxruntime; CI sets TINYRES_REQUIRE_ONNXRUNTIME)");
        return;
    }
    assert!(python.status.success(), "{text}");
    eprintln!("{text}");
}

#[test]
fn resnet8_exports_onnx_that_tract_and_onnxruntime_agree_on() {
    export_and_check_with_onnxruntime(trained_resnet8());
}

#[test]
fn resnet20_option_a_exports_onnx_that_tract_and_onnxruntime_agree_on() {
    export_and_check_with_onnxruntime(trained_resnet20());
}

/// An image folder (`DIR/{train,test}/c<label>/*.png`) of synthetic images scaled to
/// three sizes, none of them 32×32: the readers must fit them to the network's input.
fn image_folder_of_mixed_sizes(dir: &Path, train: usize, test: usize) {
    for (split, data) in [("train", synthetic(train, 1)), ("test", synthetic(test, 2))] {
        for i in 0..data.len() {
            let class_dir = dir.join(split).join(format!("c{}", data.labels[i]));
            std::fs::create_dir_all(&class_dir).unwrap();
            let image = image::RgbImage::from_raw(32, 32, data.image(i).to_vec()).unwrap();
            let (w, h) = [(48, 40), (36, 44), (64, 64)][i % 3];
            image::imageops::resize(&image, w, h, image::imageops::FilterType::Triangle)
                .save(class_dir.join(format!("{i:04}.png")))
                .unwrap();
        }
    }
}

/// The paper's ImageNet layout (7×7/2 stem, 3×3/2 max pool, stages of 2 blocks, option
/// B) at a sixteenth of ResNet-18's width and CIFAR-10's size: it trains, its ONNX
/// export agrees with onnxruntime, and its f32 blob classifies every test image as the
/// ONNX file does under tract.
#[test]
fn resnet18_imagenet_layout_trains_exports_and_compiles() {
    // On an image folder of other sizes than the input's: torchvision's random resized
    // crops for training, resize and centre crop for testing, exporting and evaluating.
    let folder = temp("mixed-sizes");
    image_folder_of_mixed_sizes(&folder, 300, 100);
    let run = train_and_export(
        "resnet18",
        &[
            "--arch",
            "resnet18",
            "--widths",
            "4,8,16,32",
            "--classes",
            "10",
            "--input-size",
            "32",
            "--data",
            folder.to_str().unwrap(),
            "--epochs",
            "1",
        ],
    );
    let config = TrainConfig::load(&run.dir).unwrap();
    assert_eq!(config.crop, CropStyle::Resized);
    assert_eq!(config.stored_size(), (37, 37));
    // 45,102 weights, biases and batch-norm scales and shifts, and burn's count includes
    // batch norm's running means and variances (600 for 300 channels).
    assert_eq!(run.summary["parameters"], 45_702);
    export_and_check_with_onnxruntime(&run);
    let onnx = run.onnx();
    let blob = run.dir.join("model-f32.trm");
    ok(tinyres(&[
        "compile",
        onnx.to_str().unwrap(),
        "--dtype",
        "f32",
        "-o",
        blob.to_str().unwrap(),
    ]));
    let eval = |model: &Path| -> serde_json::Value {
        let out = ok(tinyres(&[
            "eval",
            model.to_str().unwrap(),
            "--data",
            folder.to_str().unwrap(),
            "--json",
        ]));
        serde_json::from_str(&out).unwrap()
    };
    let (tract, engine) = (eval(&onnx), eval(&blob));
    assert_eq!(tract["confusion"], engine["confusion"]);
    assert_eq!(engine["count"], 100);
}
