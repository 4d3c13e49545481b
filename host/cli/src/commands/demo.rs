//! `tinyres demo`: the whole chain in one command, on the built-in synthetic data or
//! a real data set. Train a ResNet with one class held out → export ONNX (checked
//! through tract) → compile int8 → evaluate on the host → classify on an emulated
//! Cortex-M in QEMU (predictions checked against the host) → learn the held-out class
//! on the device → reboot and check that it survived.
//!
//! Every artifact is written into a staging directory beside the output directory,
//! which replaces the output directory only when the whole chain has succeeded: an
//! interrupted or failed demo leaves the previous output as it was, and nothing
//! half-written under the name a later run would read.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use tinyres_compile::arch::Architecture;
use tinyres_compile::eval;
use tinyres_compile::report::{describe, thousands, ModelReport};
use tinyres_compile::writer::AlignedBlob;
use tinyres_compile::{
    import_onnx, to_blob, BlobOptions, Calibration, Dtype, Int8Options, PreprocessingFlags,
};
use tinyres_core::Model;
use tinyres_data::{write_atomically, Dataset, Split};
use tinyres_device::qemu::{self, Board, Device, LearningReport};
use tinyres_train::export;
use tinyres_train::train::{self, CropStyle, RunOptions, Schedule, TrainConfig, TrainSummary};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// `synthetic` (built in, no download) or a data set as `tinyres train --data`
    /// takes (CIFAR-10 directory, image folder); its last class is held out of
    /// training and learned on the device.
    #[arg(long, default_value = "synthetic")]
    data: PathBuf,
    /// Where the artifacts go; replaced only when the whole demo succeeds.
    #[arg(short, long, default_value = "demo-out")]
    out: PathBuf,
    /// Emulated board (see `tinyres run --help`).
    #[arg(long, default_value = "mps2-an386")]
    board: String,
    /// The CI-sized version (under 3 minutes after the first build): a narrower
    /// network, fewer images, two epochs.
    #[arg(long)]
    fast: bool,
    /// Training epochs (default 3; 2 with --fast).
    #[arg(long)]
    epochs: Option<usize>,
    /// Train on the first N training images only (default: all; 1,500 with --fast).
    #[arg(long)]
    limit: Option<usize>,
    /// Shots of the held-out class the device learns from (default 50; 20 with --fast).
    #[arg(long)]
    shots: Option<usize>,
    /// Do not install what is missing (QEMU through apt-get, the firmware's Rust
    /// target through rustup); say what to run instead.
    #[arg(long)]
    no_install: bool,
    /// Print the report as JSON on stdout (it is also written to OUT/report.json).
    #[arg(long)]
    json: bool,
}

pub fn command(args: &Args) -> Result<()> {
    let staging = staging_path(&args.out)?;
    let out = args.out.clone();
    ctrlc::set_handler(move || {
        let _ = std::fs::remove_dir_all(&staging);
        eprintln!(
            "\ninterrupted: the demo's partial output was removed; {} was left as it was",
            out.display()
        );
        std::process::exit(130);
    })
    .context("cannot install the Ctrl-C handler")?;
    let report = run(&DemoOptions {
        data: args.data.clone(),
        out: args.out.clone(),
        board: args.board.clone(),
        fast: args.fast,
        epochs: args.epochs,
        train_limit: args.limit,
        shots: args.shots,
        install: !args.no_install,
    })?;
    if args.json {
        super::print_json(&report)?;
    } else {
        println!();
        print!("{}", report.to_table());
    }
    Ok(())
}

/// How big a demo to run.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Training data: `synthetic` or a data set `tinyres train --data` reads. Its
    /// last class is held out of training and learned on the device.
    pub data: PathBuf,
    /// Where the artifacts end up.
    pub out: PathBuf,
    /// The emulated board.
    pub board: String,
    /// The CI-sized version: a narrower network, fewer images and epochs.
    pub fast: bool,
    /// Epochs (default: 3, or 2 with `fast`).
    pub epochs: Option<usize>,
    /// Training images (default: all, or 1,500 with `fast`).
    pub train_limit: Option<usize>,
    /// Shots of the new class learned on the device (default 50; 20 with `fast`).
    pub shots: Option<usize>,
    /// Install QEMU or the firmware's Rust target if missing (see [`ensure_setup`]).
    pub install: bool,
}

/// What the demo measured, step by step (also written as `report.json`).
#[derive(Clone, Debug, Serialize)]
pub struct DemoReport {
    /// The output directory.
    pub out: PathBuf,
    /// Training data.
    pub data: PathBuf,
    /// The class held out of training and learned on the device.
    pub held_out_class: String,
    /// Training.
    pub train: TrainSummary,
    /// The ONNX export and its tract check.
    pub export: export::ExportReport,
    /// The int8 blob.
    pub model: ModelReport,
    /// Top-1 of the blob on the host engine, on the known classes' test images.
    pub host_accuracy: f64,
    /// Test images of the known classes evaluated on the host.
    pub host_images: usize,
    /// The device run.
    pub device: DeviceReport,
    /// On-device learning of the held-out class.
    pub learning: LearningReport,
    /// Seconds per step, in order.
    pub seconds: Vec<(String, f64)>,
}

/// What the device did when classifying.
#[derive(Clone, Debug, Serialize)]
pub struct DeviceReport {
    /// The emulated board.
    pub board: Board,
    /// Images classified.
    pub images: usize,
    /// Top-1 on them.
    pub accuracy: f64,
    /// Images where the device and the host engine agree (all, or the demo fails).
    pub identical_to_host: usize,
    /// Mean instructions per inference.
    pub instructions_per_inference: u64,
    /// Mean cycles per inference as the board's cycle model estimates them, where it
    /// has one.
    pub cycles_per_inference_estimated: Option<u64>,
    /// RAM the firmware used.
    pub ram: qemu::RamUse,
}

/// Sizes of one demo.
struct Sizes {
    widths: Vec<usize>,
    epochs: usize,
    train_limit: Option<usize>,
    calibration_images: usize,
    device_images: usize,
    learning_test_images: usize,
    shots: usize,
}

impl Sizes {
    fn new(options: &DemoOptions) -> Self {
        // The full demo learns from the K = 50 shots; --fast from 20, to stay
        // CI-sized.
        let (widths, epochs, limit, device_images, learning_test, shots) = if options.fast {
            (vec![8, 16, 32], 2, Some(1500), 20, 50, 20)
        } else {
            (vec![16, 32, 64], 3, None, 100, 200, 50)
        };
        Sizes {
            widths,
            epochs: options.epochs.unwrap_or(epochs),
            train_limit: options.train_limit.or(limit),
            calibration_images: 200,
            device_images,
            learning_test_images: learning_test,
            shots: options.shots.unwrap_or(shots),
        }
    }
}

/// Steps of the chain, for the `[k/N]` lines.
const STEPS: usize = 7;

/// Runs the demo, printing progress on stderr; returns what it measured. The output
/// directory is replaced only at the end, when every step has succeeded.
pub fn run(options: &DemoOptions) -> Result<DemoReport> {
    let board = Board::by_name(&options.board)?;
    ensure_setup(&board, options.install)?;
    let sizes = Sizes::new(options);
    let staging = staging_dir(&options.out)?;
    let result = run_in(options, &sizes, board, &staging);
    match result {
        Ok(mut report) => {
            replace_dir(&staging, &options.out)?;
            report.out = options.out.clone();
            Ok(report)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(e.context(format!(
                "the demo stopped; {} was left as it was",
                options.out.display()
            )))
        }
    }
}

/// Where this process stages the demo's output before it becomes `out`:
/// `.NAME.partial-PID` beside it.
pub fn staging_path(out: &Path) -> Result<PathBuf> {
    let name = out
        .file_name()
        .with_context(|| format!("{}: not a directory name", out.display()))?
        .to_string_lossy()
        .into_owned();
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok(parent.join(format!(".{name}.partial-{}", std::process::id())))
}

/// Creates the staging directory empty, after removing those of interrupted demos.
/// Fails early if `out`'s parent is not writable.
fn staging_dir(out: &Path) -> Result<PathBuf> {
    let staging = staging_path(out)?;
    let parent = staging.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let name = staging.file_name().unwrap_or_default().to_string_lossy();
    let prefix = &name[..name.rfind('-').unwrap_or(0) + 1];
    if let Ok(entries) = std::fs::read_dir(parent) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(prefix) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    std::fs::create_dir(&staging).with_context(|| {
        format!(
            "cannot write the demo's output beside {}: creating {} failed",
            out.display(),
            staging.display()
        )
    })?;
    Ok(staging)
}

/// Moves `staging` to `out`, replacing what was there.
fn replace_dir(staging: &Path, out: &Path) -> Result<()> {
    if out.exists() {
        let old = staging.with_extension("old");
        std::fs::rename(out, &old)
            .with_context(|| format!("cannot move the previous {} aside", out.display()))?;
        let _ = std::fs::remove_dir_all(&old);
    }
    std::fs::rename(staging, out)
        .with_context(|| format!("cannot move {} to {}", staging.display(), out.display()))
}

/// Makes sure the board's QEMU and the firmware's Rust target are installed. With
/// `install`, a missing one is installed (QEMU with apt-get, through sudo unless
/// root, never removing an installed package; the target with rustup), after saying
/// what will run; otherwise, or where
/// that is not possible, the error gives the command.
pub fn ensure_setup(board: &Board, install: bool) -> Result<()> {
    let runs = |program: &str, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !runs(board.qemu, &["--version"]) {
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        let command: &[&str] = if root {
            &["apt-get", "install", "-y", "--no-remove", "qemu-system-arm"]
        } else {
            &[
                "sudo",
                "apt-get",
                "install",
                "-y",
                "--no-remove",
                "qemu-system-arm",
            ]
        };
        let shown = command.join(" ");
        ensure!(
            install && runs("apt-get", &["--version"]),
            "{} is not installed (the demo boots the firmware in it): on Debian/Ubuntu, \
             `sudo apt-get install qemu-system-arm`; elsewhere your package manager's QEMU \
             with ARM system emulation",
            board.qemu
        );
        eprintln!("{} is missing; installing it: {shown}", board.qemu);
        // The installer's output is progress, not a result: stderr, like ours.
        let installed = std::process::Command::new(command[0])
            .args(&command[1..])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(std::io::stderr())
            .status()
            .is_ok_and(|s| s.success());
        ensure!(
            installed && runs(board.qemu, &["--version"]),
            "`{shown}` failed (with --no-remove apt refuses to install what would remove an \
             installed package, such as a newer qemu-utils); `sudo .ci/install-qemu` from the \
             repository installs QEMU beside what you have; then run the demo again"
        );
    }
    let installed_targets = std::process::Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    match installed_targets {
        Ok(o)
            if String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == board.target) => {}
        // Without rustup the toolchain manages its own targets: let cargo report it.
        Err(_) => {}
        Ok(_) => {
            let shown = format!("rustup target add {}", board.target);
            ensure!(install, "the firmware's Rust target is missing: `{shown}`");
            eprintln!("the firmware's Rust target is missing; installing it: {shown}");
            ensure!(
                runs("rustup", &["target", "add", board.target]),
                "`{shown}` failed"
            );
        }
    }
    Ok(())
}

fn step(k: usize, what: &str) {
    eprintln!("\n[{k}/{STEPS}] {what}");
}

fn run_in(
    options: &DemoOptions,
    sizes: &Sizes,
    board: Board,
    staging: &Path,
) -> Result<DemoReport> {
    let mut seconds = Vec::new();
    let mut timed = |name: &str, started: Instant| {
        seconds.push((name.to_string(), started.elapsed().as_secs_f64()));
    };

    // The data: its last class is held out.
    let train_data = Dataset::load(&options.data, Split::Train)?;
    let classes = train_data.class_names.len();
    ensure!(
        classes >= 3,
        "{}: the demo needs at least 3 classes (one is held out), found {classes}",
        options.data.display()
    );
    let held_out = train_data.class_names[classes - 1].clone();

    let started = Instant::now();
    let mut arch = Architecture::by_name("resnet8")?;
    arch.stem_width = sizes.widths[0];
    arch.stage_widths = sizes.widths.clone();
    step(
        1,
        &format!(
            "train a ResNet-8 (widths {:?}) on {} for {} epochs, class {held_out:?} held out for the device",
            sizes.widths,
            options.data.display(),
            sizes.epochs
        ),
    );
    let run_dir = staging.join("run");
    let config = TrainConfig {
        arch,
        data: options.data.clone(),
        test_data: None,
        train_limit: sizes.train_limit,
        epochs: sizes.epochs,
        batch: 64,
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 1e-4,
        schedule: Schedule::Onecycle,
        warmup: false,
        augment: true,
        crop: CropStyle::Padded,
        seed: 0,
        mean: Vec::new(),
        std: Vec::new(),
        class_names: Vec::new(),
        held_out_classes: 1,
    };
    let train = train::train(
        Some(config),
        &RunOptions {
            run_dir: run_dir.clone(),
            resume: false,
            progress: true,
        },
    )?;
    eprintln!(
        "      test accuracy {:.1} % on the {} known classes, {:.0} images/s",
        100.0 * train.test_accuracy,
        classes - 1,
        train.images_per_second
    );
    timed("train", started);

    let started = Instant::now();
    step(2, "export ONNX and check it through tract");
    let onnx = staging.join("model.onnx");
    let export = export::export(&run_dir, &onnx, 64)?;
    eprintln!(
        "      model.onnx ({} bytes): tract agrees with burn on {} images, max |diff| {:.1e} ({:.1e} of the logit range)",
        export.bytes, export.images_checked, export.max_abs_diff, export.relative_diff
    );
    timed("export", started);

    let started = Instant::now();
    step(
        3,
        &format!(
            "compile int8, calibrated on {} training images",
            sizes.calibration_images
        ),
    );
    let imported = import_onnx(&onnx, &PreprocessingFlags::default())?;
    let mut calibration = train_data.clone();
    calibration.keep_classes_below(classes - 1);
    calibration.truncate(sizes.calibration_images);
    let bytes = to_blob(
        &imported.network,
        Dtype::Int8,
        BlobOptions::default(),
        Some(Int8Options {
            images: &calibration,
            method: Calibration::Mse,
            bias_correction: true,
        }),
    )?;
    let blob = AlignedBlob::new(&bytes);
    let model = Model::parse(blob.as_bytes())
        .map_err(|e| anyhow::anyhow!("the compiled blob does not validate: {e}"))?;
    let model_report = describe(&model)?;
    let trm = staging.join("model.trm");
    write_atomically(&trm, &bytes)?;
    eprintln!(
        "      model.trm: {} parameters, {} MACs, flash {} B, arena {} B",
        thousands(model_report.params),
        thousands(model_report.macs),
        thousands(model_report.flash_bytes),
        thousands(model_report.arena_bytes)
    );
    timed("compile", started);

    let started = Instant::now();
    step(4, "evaluate the int8 blob on the host engine");
    let mut test = Dataset::load(&options.data, Split::Test)?;
    let mut known = test.clone();
    known.keep_classes_below(classes - 1);
    let evaluation = eval::evaluate(blob.as_bytes(), &known)?;
    let png = tinyres_plot::confusion_matrix(
        &evaluation.confusion,
        &evaluation.class_names,
        &format!(
            "int8 on the host: {:.1} % top-1 on {} images",
            100.0 * evaluation.accuracy(),
            known.len()
        ),
    )?;
    write_atomically(&staging.join("confusion.png"), &png)?;
    eprintln!(
        "      {:.1} % top-1 on {} test images (confusion.png)",
        100.0 * evaluation.accuracy(),
        known.len()
    );
    timed("eval", started);

    let started = Instant::now();
    step(
        5,
        &format!(
            "classify {} images on {} ({}) in QEMU",
            sizes.device_images, board.name, board.core
        ),
    );
    let timeout = Duration::from_secs(600);
    let arena = model.arena_size();
    let device = Device::build(board, "classify", blob.as_bytes(), arena, timeout)?;
    known.truncate(sizes.device_images);
    let qemu::Classified {
        predictions, ram, ..
    } = qemu::classify_all(&device, &known, |_| {})?;
    let host: Vec<usize> = evaluation.predictions[..known.len()].to_vec();
    let identical = predictions
        .iter()
        .filter(|p| host[p.index] == p.class)
        .count();
    ensure!(
        identical == predictions.len(),
        "the device and the host engine disagree on {} of {} images",
        predictions.len() - identical,
        predictions.len()
    );
    let correct = predictions
        .iter()
        .filter(|p| usize::from(p.label) == p.class)
        .count();
    let device_report = DeviceReport {
        board,
        images: predictions.len(),
        accuracy: correct as f64 / predictions.len() as f64,
        identical_to_host: identical,
        instructions_per_inference: predictions.iter().map(|p| p.instructions).sum::<u64>()
            / predictions.len() as u64,
        cycles_per_inference_estimated: predictions
            .iter()
            .map(|p| p.cycles)
            .sum::<Option<u64>>()
            .map(|c| c / predictions.len() as u64),
        ram,
    };
    eprintln!(
        "      {:.1} % top-1, predictions identical to the host engine, {} instructions per inference, RAM {} B static + {} B stack",
        100.0 * device_report.accuracy,
        thousands(device_report.instructions_per_inference),
        thousands(ram.static_bytes as u64),
        thousands(ram.stack_bytes as u64)
    );
    timed("device", started);

    let started = Instant::now();
    step(
        6,
        &format!(
            "learn {held_out:?} on the device from {} shots, then reboot",
            sizes.shots
        ),
    );
    let device = Device::build(board, "finetune", blob.as_bytes(), arena, timeout)?;
    test.truncate(sizes.learning_test_images);
    let learning = qemu::learning_scenario(
        &device,
        &test,
        &train_data,
        sizes.shots,
        sizes.shots * qemu::REHEARSAL_PER_SHOT,
        &staging.join("flash"),
        |boot| eprintln!("      {boot}"),
    )?;
    if !learning.persisted {
        bail!("the reboot did not restore what the device learned");
    }
    timed("learn", started);

    step(7, "summary");
    // Paths as they will be once the staging directory is the output directory.
    let mut train = train;
    train.run_dir = options.out.join("run");
    let mut export = export;
    export.onnx = options.out.join("model.onnx");
    let report = DemoReport {
        out: options.out.clone(),
        data: options.data.clone(),
        held_out_class: held_out,
        train,
        export,
        model: model_report,
        host_accuracy: evaluation.accuracy(),
        host_images: evaluation.predictions.len(),
        device: device_report,
        learning,
        seconds,
    };
    write_atomically(
        &staging.join("report.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    Ok(report)
}

impl DemoReport {
    /// The closing summary: one line per step, then where the artifacts are.
    pub fn to_table(&self) -> String {
        let seconds = |name: &str| {
            self.seconds
                .iter()
                .find(|(n, _)| n == name)
                .map_or(String::new(), |(_, s)| format!("{s:.1} s"))
        };
        let learning = &self.learning;
        let rows = [
            (
                "train",
                format!(
                    "{}, {} epochs: {:.1} % test accuracy ({} classes)",
                    self.train.arch,
                    self.train.epochs,
                    100.0 * self.train.test_accuracy,
                    self.model.classes
                ),
                seconds("train"),
            ),
            (
                "export",
                format!(
                    "model.onnx: tract = burn within {:.1e} of the logit range",
                    self.export.relative_diff
                ),
                seconds("export"),
            ),
            (
                "compile",
                format!(
                    "model.trm int8: {} params, {} MACs, flash {} B, arena {} B",
                    thousands(self.model.params),
                    thousands(self.model.macs),
                    thousands(self.model.flash_bytes),
                    thousands(self.model.arena_bytes)
                ),
                seconds("compile"),
            ),
            (
                "eval",
                format!(
                    "host engine: {:.1} % on {} images",
                    100.0 * self.host_accuracy,
                    self.host_images
                ),
                seconds("eval"),
            ),
            (
                "device",
                format!(
                    "{} ({}): {:.1} % on {} images, identical to the host, {} instructions/inference{}",
                    self.device.board.name,
                    self.device.board.core,
                    100.0 * self.device.accuracy,
                    self.device.images,
                    thousands(self.device.instructions_per_inference),
                    self.device
                        .cycles_per_inference_estimated
                        .map_or(String::new(), |c| format!(" ({} cycles, estimated)", thousands(c)))
                ),
                seconds("device"),
            ),
            (
                "learn",
                format!(
                    "{:?} from {} shots: new class {}, old classes {}",
                    self.held_out_class,
                    learning.shots,
                    learning.new_class_accuracy,
                    learning.old_classes_accuracy
                ),
                seconds("learn"),
            ),
            (
                "reboot",
                "the learned class survived: the flash image restored it".to_string(),
                String::new(),
            ),
        ];
        let mut out = String::new();
        for (name, what, time) in rows {
            out.push_str(&format!("  {name:<8} {time:>8}  {what}\n"));
        }
        let dir = self.out.display();
        out.push_str(&format!(
            "\nwritten to {dir}/:\n  run/           training run: config.json, metrics.csv, curves.png, checkpoint/, model.safetensors\n  model.onnx     the ONNX export\n  model.trm      the int8 blob for the device\n  confusion.png  the host evaluation's confusion matrix\n  flash/         the device's flash image with the learned head\n  report.json    everything above, as JSON\n"
        ));
        out
    }
}
