//! `tinyres`: the command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::time::Duration;
use tinyres_core::writer::{ActivationRanges, AlignedBlob, Encoding, LayerSpec};

use tinyres_core::{Interpreter, Model};
use tinyres_host::arch::{Architecture, Block, Shortcut, NAMES};
use tinyres_host::compile::{self, Calibration, Dtype, Int8Options, PreprocessingFlags};
use tinyres_host::data::{Dataset, Split};
use tinyres_host::qemu::{self, Board};
use tinyres_host::report::{self, describe};
use tinyres_host::train::{self, Schedule, TrainConfig};
use tinyres_host::write_atomically;

/// tinyres: residual networks trained on the workstation, run and fine-tuned on
/// microcontrollers.
#[derive(Parser)]
#[command(name = "tinyres", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The whole chain in one command: train a ResNet-8 with one class held out,
    /// export ONNX (checked through tract), compile int8, evaluate on the host,
    /// classify on an emulated Cortex-M4 in QEMU (checked against the host), learn the
    /// held-out class on the device, reboot and check it survived.
    Demo(DemoArgs),
    /// Show the layers, MACs, parameters, blob size and memory plan of an
    /// architecture, as the engine would run it (weights are untrained).
    Plan {
        #[command(flatten)]
        arch: ArchArgs,
        /// Numeric type of the blob.
        #[arg(long, value_enum, default_value_t = Dtype::Int8)]
        dtype: Dtype,
        /// Also write the blob, with untrained (He-initialised) weights: for sizing,
        /// testing firmware and seeding the fuzzer, not for predictions.
        #[arg(short, long, value_name = "FILE.trm")]
        output: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Train a network of the family with the paper's recipe (SGD, momentum 0.9,
    /// weight decay 1e-4, batch 128, lr 0.1 divided by 10 at 50 % and 75 %, crop and
    /// flip augmentation), with per-epoch metrics, curves and checkpoints.
    Train(TrainArgs),
    /// Write a trained run as ONNX, then check the file through tract against burn on
    /// real images; the file is kept only if they agree.
    Export {
        /// The run directory (`tinyres train --out`).
        run_dir: PathBuf,
        /// The ONNX file to write.
        #[arg(short, long, value_name = "FILE.onnx", default_value = "model.onnx")]
        output: PathBuf,
        /// Test images run through both burn and tract.
        #[arg(long, default_value_t = 64)]
        check: usize,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Draw training curves (error against epochs, training dashed, test bold) of one
    /// or more runs into one PNG, like Figure 6 of the paper.
    Plot {
        /// Run directories (or their metrics.csv files).
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// The PNG to write.
        #[arg(short, long, default_value = "curves.png")]
        output: PathBuf,
    },
    /// Boot the firmware in QEMU, classify images on the emulated device, count the
    /// instructions of each inference, and check every prediction against the engine
    /// run on the host.
    Run(RunArgs),
    /// Benchmark an int8 model on every emulated board (default: the MLPerf Tiny
    /// ResNet-8, compiled from its ONNX file): instructions per inference beside
    /// CMSIS-NN's, arena, flash (blob and engine code), identical predictions to the
    /// host engine, per-layer profile with --json.
    Bench(BenchArgs),
    /// Compile an ONNX ResNet (ours, PyTorch's, tf2onnx's) into a model blob for the
    /// device: f32, f16, or int8 calibrated on real images; prints the per-layer report.
    Compile(CompileArgs),
    /// Evaluate a model on the host: a blob (.trm) with the engine, exactly as the
    /// device runs it, or an ONNX file with tract. Top-1 accuracy, per-class accuracy,
    /// confusion matrix.
    Eval {
        /// The model: a blob (.trm) or an ONNX file (.onnx).
        model: PathBuf,
        /// `synthetic`, an image folder (DIR/test/<class>/*.png|jpg), or a CIFAR-10 batch
        /// (.bin/.bin.gz) or directory (test_batch).
        #[arg(long)]
        data: PathBuf,
        /// Evaluate at most this many images.
        #[arg(long)]
        limit: Option<usize>,
        /// Write `index,label,predicted` rows to this CSV file.
        #[arg(long, value_name = "FILE.csv")]
        predictions: Option<PathBuf>,
        /// Draw the confusion matrix into this PNG.
        #[arg(long, value_name = "FILE.png")]
        plot: Option<PathBuf>,
        #[command(flatten)]
        preprocessing: PreprocessingArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Write firmware and a model to a real board through a debug probe (probe-rs),
    /// or with --dry-run show the flash layout and what would be written.
    Flash {
        /// Chip name as probe-rs knows it (e.g. STM32F746NGHx, nRF52840_xxAA).
        #[arg(long)]
        chip: String,
        /// The model blob (.trm) for the model partition.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Firmware ELF built for this board (nRF52840: `cargo build --release
        /// --features nrf52840 --target-dir target/nrf52840` in firmware/).
        #[arg(long)]
        firmware: Option<PathBuf>,
        /// Images for the firmware to classify, written to the image partition (chips
        /// with a firmware board): `synthetic`, an image folder or CIFAR-10, test split.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Write at most this many images (default: as many as the partition holds).
        #[arg(long, requires = "data")]
        limit: Option<usize>,
        /// Put examples to learn from before the images (the `finetune` firmware learns
        /// from them on the board): shots of the model's next free class from this data's
        /// training split, each with a rehearsal image of a known class, as `tinyres run
        /// --finetune` does.
        #[arg(long, value_name = "DATA", requires_all = ["data", "model"])]
        finetune: Option<PathBuf>,
        /// Shots of the new class.
        #[arg(long, default_value_t = 20, requires = "finetune")]
        shots: usize,
        /// Only print the layout and what would be written.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Validate a model blob (.trm) and show what it holds.
    Inspect {
        /// The model blob.
        model: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args, Debug)]
struct DemoArgs {
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

fn demo_command(args: &DemoArgs) -> Result<()> {
    let staging = tinyres_host::demo::staging_path(&args.out)?;
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
    let report = tinyres_host::demo::run(&tinyres_host::demo::DemoOptions {
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
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!();
        print!("{}", report.to_table());
    }
    Ok(())
}

/// How raw pixels become an ONNX model's input, where its metadata does not say.
#[derive(clap::Args)]
struct PreprocessingArgs {
    /// Scale of the model's input: 0..255 (raw pixels) or 0..1 (pixels / 255).
    #[arg(long, value_name = "0..255|0..1")]
    input_range: Option<String>,
    /// Per-channel mean subtracted after scaling, comma-separated.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    mean: Vec<f32>,
    /// Per-channel standard deviation divided by, comma-separated.
    #[arg(long, value_delimiter = ',')]
    std: Vec<f32>,
}

impl PreprocessingArgs {
    fn flags(&self) -> Result<PreprocessingFlags> {
        Ok(PreprocessingFlags {
            range: self
                .input_range
                .as_deref()
                .map(compile::parse_range)
                .transpose()?,
            mean: (!self.mean.is_empty()).then(|| self.mean.clone()),
            std: (!self.std.is_empty()).then(|| self.std.clone()),
        })
    }
}

#[derive(clap::Args)]
struct CompileArgs {
    /// The ONNX model.
    model: PathBuf,
    /// Numeric type of the blob.
    #[arg(long, value_enum, default_value_t = Dtype::Int8)]
    dtype: Dtype,
    /// The blob to write.
    #[arg(short, long, value_name = "FILE.trm", default_value = "model.trm")]
    output: PathBuf,
    /// int8 calibration images: `synthetic`, a CIFAR-10 directory or file, an image
    /// folder (training split). Default: the data the model was trained on, if its
    /// metadata says.
    #[arg(long, value_name = "DATA")]
    calib: Option<PathBuf>,
    /// Calibration images used.
    #[arg(long, default_value_t = 500)]
    calib_count: usize,
    /// How activation ranges are chosen: mse (least expected squared error over the
    /// calibration histogram), percentile (99.999 % at each end) or minmax (TFLite's;
    /// on the MLPerf Tiny ResNet-8 0.8 points less accurate than mse).
    #[arg(long, value_enum, default_value_t = Calibration::Mse)]
    calibration: Calibration,
    /// Keep the float biases: do not compensate in them the mean error that rounding
    /// the weights to int8 puts in each output channel (on our CIFAR-10 ResNet-8 the
    /// compensation raises int8/f32 top-1 agreement from 97.8-98.4 % to 98.9-99.0 %).
    #[arg(long)]
    no_bias_correction: bool,
    #[command(flatten)]
    preprocessing: PreprocessingArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Which network: a named architecture, optionally changed by flags, or a file.
#[derive(clap::Args)]
struct ArchArgs {
    /// Architecture name: resnet8, resnet{20,32,44,56,110}, plain{..}, resnetN-bottleneck.
    #[arg(long, default_value = "resnet8")]
    arch: String,
    /// A JSON architecture file (the `arch` object of a run's config.json) instead
    /// of a name.
    #[arg(long, value_name = "FILE.json", conflicts_with = "arch")]
    arch_file: Option<PathBuf>,
    /// Shortcut option (A, B, C or none); default: the architecture's own.
    #[arg(long)]
    shortcut: Option<Shortcut>,
    /// Block type (basic or bottleneck); default: the architecture's own.
    #[arg(long)]
    block: Option<Block>,
    /// Number of classes; default: the architecture's own (10).
    #[arg(long)]
    classes: Option<usize>,
    /// Filters per stage, comma-separated (e.g. 16,32,64); the stem takes the first.
    #[arg(long, value_delimiter = ',')]
    widths: Vec<usize>,
    /// Blocks per stage (depth = 6n+2 for basic blocks).
    #[arg(long)]
    blocks_per_stage: Option<usize>,
}

impl ArchArgs {
    fn resolve(&self) -> Result<Architecture> {
        let mut arch = match &self.arch_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("{}: cannot read", path.display()))?;
                serde_json::from_str(&text)
                    .with_context(|| format!("{}: not an architecture file", path.display()))?
            }
            None => Architecture::by_name(&self.arch)
                .with_context(|| format!("known architectures: {NAMES}"))?,
        };
        arch.shortcut = self.shortcut.unwrap_or(arch.shortcut);
        arch.block = self.block.unwrap_or(arch.block);
        arch.classes = self.classes.unwrap_or(arch.classes);
        if !self.widths.is_empty() {
            arch.stem_width = self.widths[0];
            arch.stage_widths = self.widths.clone();
        }
        arch.blocks_per_stage = self.blocks_per_stage.unwrap_or(arch.blocks_per_stage);
        if arch.classes == 0 {
            bail!("--classes must be at least 1");
        }
        if arch.stage_widths.is_empty()
            || arch.stage_widths.contains(&0)
            || arch.blocks_per_stage == 0
        {
            bail!("--widths and --blocks-per-stage must be positive");
        }
        Ok(arch)
    }
}

#[derive(clap::Args)]
struct TrainArgs {
    #[command(flatten)]
    arch: ArchArgs,
    /// Training data: `synthetic` (built in), a CIFAR-10 directory (data_batch_*.bin,
    /// test_batch.bin, plain or .gz), or an image folder (DIR/{train,test}/<class>/).
    #[arg(long, default_value = "synthetic")]
    data: PathBuf,
    /// Test data, if not the test split of --data (e.g. a single CIFAR-10 batch file).
    #[arg(long)]
    test_data: Option<PathBuf>,
    /// Leave the data's last N classes out of training and testing, to be learned
    /// later on the device (`tinyres run --finetune`); the network gets the other
    /// classes' outputs.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        conflicts_with = "classes"
    )]
    hold_out: usize,
    /// Train on the first N training images only.
    #[arg(long)]
    limit: Option<usize>,
    /// The run directory: config, checkpoints, metrics.csv, curves.png, model.safetensors.
    #[arg(short, long, default_value = "runs/latest")]
    out: PathBuf,
    /// Continue the run in this directory where it stopped (its own settings apply).
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "out")]
    resume: Option<PathBuf>,
    /// Epochs.
    #[arg(long, default_value_t = 30)]
    epochs: usize,
    /// Batch size.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Base learning rate.
    #[arg(long, default_value_t = 0.1)]
    lr: f64,
    /// Learning-rate schedule: step (the paper's ÷10 at 50 % and 75 %), cosine, onecycle.
    #[arg(long, value_enum, default_value_t = Schedule::Step)]
    schedule: Schedule,
    /// Start at lr 0.01 until the training error is below 80 % (default: on for 110+
    /// layers, as the paper does for ResNet-110).
    #[arg(long)]
    warmup: Option<bool>,
    /// Turn off crop-and-flip augmentation.
    #[arg(long)]
    no_augment: bool,
    /// Seed of initialisation, shuffling and augmentation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print a JSON summary at the end.
    #[arg(long)]
    json: bool,
    /// No progress bar or per-epoch lines.
    #[arg(long)]
    quiet: bool,
}

/// The firmware that learns on the device in `tinyres run --finetune`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LearnWith {
    /// `App::finetune` over the shots and rehearsal images.
    Finetune,
    /// `App::step` with the button held on each shot.
    Button,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Emulated board: mps2-an386 (Cortex-M4F), mps2-an500 (M7), mps2-an505 (M33),
    /// mps3-an547 (M55), mps2-an385 (M3, soft float), virt-a53 (Cortex-A53).
    #[arg(long, default_value = "mps2-an386")]
    board: String,
    /// The model blob (.trm).
    #[arg(long)]
    model: PathBuf,
    /// Images: `synthetic`, an image folder (DIR/test/<class>/*.png|jpg), or a CIFAR-10
    /// batch (.bin/.bin.gz) or directory (test_batch).
    #[arg(long)]
    data: PathBuf,
    /// Classify at most this many images.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Seconds one QEMU boot may take before it counts as hung.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Learn a new class on the device from this data (its training split): shots of
    /// the class labeled with the next free class index, plus as many images of known
    /// classes for rehearsal. Reports accuracy before and after, and checks that a
    /// second boot restores what was learned from the flash image.
    #[arg(long, value_name = "DATA")]
    finetune: Option<PathBuf>,
    /// Name of the new class (for the report).
    #[arg(long, requires = "finetune")]
    new_class: Option<String>,
    /// Shots of the new class to learn from.
    #[arg(long, default_value_t = 20, requires = "finetune")]
    shots: usize,
    /// How the device learns: `finetune` (the `finetune` firmware: imprint from the
    /// shots against the rehearsal images, SGD over both, the prior discounted) or
    /// `button` (the `teach` firmware, the interactive loop of a board: the button
    /// held on each shot, the class imprinted from the first five against the frames
    /// shown without the button, and re-imprinted with every later shot).
    #[arg(long, value_enum, default_value_t = LearnWith::Finetune, requires = "finetune")]
    learn_with: LearnWith,
    /// Directory holding the device's flash image (`tinyres-flash.bin`, created erased
    /// if missing); default: a fresh temporary directory.
    #[arg(long, requires = "finetune")]
    flash_dir: Option<PathBuf>,
    /// How the firmware's defmt log reaches the host: semihosting (QEMU's console) or
    /// RTT, the transport of a real board, read through QEMU's gdbstub as a debug probe
    /// reads it (Cortex-M boards).
    #[arg(long, value_enum, default_value_t = qemu::Transport::Semihosting)]
    transport: qemu::Transport,
    /// Also report instructions per layer, with MACs and MACs per instruction (the
    /// device profiles the first image once more, reading its counter after every
    /// layer).
    #[arg(long, conflicts_with = "finetune")]
    profile: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct BenchArgs {
    /// The float ONNX model to compile to int8 (raw 0..255 pixels, as the MLPerf Tiny
    /// ResNet-8 takes them). Default: `../shared/data/mlperf-tiny-ic/resnet8_float.onnx`
    /// beside the repository.
    #[arg(long, value_name = "FILE.onnx", conflicts_with = "model")]
    onnx: Option<PathBuf>,
    /// A compiled blob to benchmark instead of compiling one.
    #[arg(long, value_name = "FILE.trm")]
    model: Option<PathBuf>,
    /// Calibration images for the int8 compile. Default: `../shared/data/cifar10`.
    #[arg(long, value_name = "DATA")]
    calib: Option<PathBuf>,
    /// Test images. Default: the 1,000 lossless CIFAR-10 test images in
    /// `../shared/data/cifar10/lossless_reference/`.
    #[arg(long, value_name = "DATA")]
    data: Option<PathBuf>,
    /// Images per board.
    #[arg(long, default_value_t = 5)]
    images: usize,
    /// Boards (repeat the flag); default: all six.
    #[arg(long = "board")]
    boards: Vec<String>,
    /// Seconds one QEMU boot may take.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Print JSON (with each board's per-layer profile) instead of a table.
    #[arg(long)]
    json: bool,
}

fn bench_command(args: &BenchArgs) -> Result<()> {
    use tinyres_host::bench;
    let data_spec = args.data.clone().unwrap_or_else(|| {
        bench::shared_data("cifar10/lossless_reference/test_batch_first1000.bin.gz")
    });
    let bytes = match &args.model {
        Some(path) => load_blob(path)?.as_bytes().to_vec(),
        None => {
            let onnx = args
                .onnx
                .clone()
                .unwrap_or_else(|| bench::shared_data("mlperf-tiny-ic/resnet8_float.onnx"));
            let calib = args
                .calib
                .clone()
                .unwrap_or_else(|| bench::shared_data("cifar10"));
            eprintln!(
                "bench: compiling {} to int8, calibrated on {}",
                onnx.display(),
                calib.display()
            );
            let flags = PreprocessingFlags {
                range: Some(tinyres_core::InputRange::Byte),
                mean: None,
                std: None,
            };
            let imported = compile::import_onnx(&onnx, &flags)?;
            let mut images = Dataset::load(&calib, Split::Train)?;
            images.truncate(500);
            compile::to_blob(
                &imported.network,
                Dtype::Int8,
                Some(Int8Options {
                    images: &images,
                    method: Calibration::Mse,
                    bias_correction: true,
                }),
            )?
        }
    };
    let blob = AlignedBlob::new(&bytes);
    let mut data = Dataset::load(&data_spec, Split::Test)?;
    data.truncate(args.images);
    if data.is_empty() {
        bail!("{}: no images", data_spec.display());
    }
    let boards = if args.boards.is_empty() {
        qemu::BOARDS.to_vec()
    } else {
        args.boards
            .iter()
            .map(|name| Board::by_name(name))
            .collect::<Result<Vec<_>>>()?
    };
    let results = bench::bench(
        blob.as_bytes(),
        &data,
        &boards,
        Duration::from_secs(args.timeout),
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        print!("{}", bench::table(&results));
        println!(
            "\n{} images per board from {}; CMSIS-NN: the MLPerf Tiny ResNet-8 under the same QEMU and counter (see host/BENCHMARKS.md)",
            data.len(),
            data_spec.display()
        );
    }
    if let Some(r) = results.iter().find(|r| !r.matches_host) {
        bail!(
            "the predictions on {} differ from the host engine's",
            r.board.name
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What goes to a board's image partition.
struct FlashImages {
    /// The `TRIM` region.
    region: Vec<u8>,
    /// Examples to learn from, at its start.
    learn: usize,
    /// Images to classify after them.
    test: usize,
    /// Height, width, channels of every image.
    shape: (usize, usize, usize),
}

/// The image region for a board's image partition: the first `limit` test images of
/// `path` (as many as fit by default), after the examples of `learn` (a training pool,
/// the shots to take from it, the new class's index) if given.
fn flash_images(
    layout: &tinyres_host::flash::Layout,
    path: &Path,
    limit: Option<usize>,
    learn: Option<&(Dataset, usize, usize)>,
) -> Result<FlashImages> {
    let Some(partition) = &layout.images else {
        bail!(
            "{} has no tinyres firmware board, so no image partition (boards: {})",
            layout.chip,
            tinyres_host::flash::FIRMWARE_BOARDS
                .iter()
                .map(|b| b.chip)
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    let test = Dataset::load(path, Split::Test)?;
    let capacity = (partition.end - partition.start) as usize;
    // Header, labels padded to 16, pixels.
    let fits = (capacity - 32) / (test.image_len() + 1);
    let set = match learn {
        Some((pool, shots, new_class)) => {
            if pool.image_len() != test.image_len() {
                bail!(
                    "the images to learn from are {} bytes each, the test images {}",
                    pool.image_len(),
                    test.image_len()
                );
            }
            Some(qemu::learning_set(*new_class, &test, pool, *shots)?)
        }
        None => None,
    };
    let learn_count = set.as_ref().map_or(0, |s| s.learn.len());
    let room = fits.saturating_sub(learn_count);
    let count = limit.unwrap_or(room).min(test.len());
    if learn_count + count > fits {
        bail!(
            "{learn_count} examples and {count} images of {} bytes do not fit in the {capacity}-byte image partition (at most {fits} in all)",
            test.image_len()
        );
    }
    // The region puts the examples first, then the first `count` test images (indices
    // 0.. in the set as in `test`).
    let tests: Vec<usize> = (0..count).collect();
    let region = match set {
        Some(set) => qemu::image_region(&set.data, &set.learn, &tests),
        None => qemu::image_region(&test, &[], &tests),
    };
    Ok(FlashImages {
        region,
        learn: learn_count,
        test: count,
        shape: (test.height, test.width, test.channels),
    })
}

/// Reads and validates a blob file.
fn load_blob(path: &Path) -> Result<AlignedBlob> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let blob = AlignedBlob::new(&bytes);
    if let Err(e) = Model::parse(blob.as_bytes()) {
        bail!("{}: {e}", path.display());
    }
    Ok(blob)
}

/// The learning scenario of `tinyres run --finetune`: three boots (before, learning,
/// reboot from the same flash image).
fn finetune_on_device(
    args: &RunArgs,
    board: Board,
    blob: &AlignedBlob,
    test: &Dataset,
    learn_from: &Path,
    arena: usize,
) -> Result<()> {
    let pool = Dataset::load(learn_from, Split::Train)?;
    let timeout = Duration::from_secs(args.timeout);
    let firmware = match args.learn_with {
        LearnWith::Finetune => "finetune",
        LearnWith::Button => "teach",
    };
    let device = qemu::Device::build_for(
        board,
        firmware,
        blob.as_bytes(),
        arena,
        timeout,
        args.transport,
    )?;
    let scratch = std::env::temp_dir().join(format!("tinyres-finetune-{}", std::process::id()));
    let flash_dir = args.flash_dir.clone().unwrap_or_else(|| scratch.clone());
    let report = qemu::learning_scenario(&device, test, &pool, args.shots, &flash_dir, |step| {
        eprintln!("{step}")
    });
    if args.flash_dir.is_none() {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    let report = report.with_context(|| format!("learning from {}", learn_from.display()))?;
    let name = args
        .new_class
        .clone()
        .unwrap_or_else(|| format!("class {}", report.new_class));
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        value["board"] = serde_json::to_value(device.board)?;
        value["new_class"] = serde_json::json!({ "index": report.new_class, "name": name });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!(
            "new class     {name} (index {}), {} shots + {} rehearsal images, on {}",
            report.new_class, report.shots, report.rehearsal, device.board.name
        );
        println!("new class     {}", report.new_class_accuracy);
        println!("old classes   {}", report.old_classes_accuracy);
        println!(
            "persistence   {}",
            if report.persisted {
                "the reboot restored the learned head (same predictions)"
            } else {
                "FAILED"
            }
        );
    }
    if !report.persisted {
        bail!("the second boot did not restore what the first learned");
    }
    Ok(())
}

fn run_on_device(args: &RunArgs) -> Result<()> {
    let board = Board::by_name(&args.board)?;
    let blob = load_blob(&args.model)?;
    let model = Model::parse(blob.as_bytes())?;
    let mut data = Dataset::load(&args.data, Split::Test)?;
    data.truncate(args.limit);
    if data.is_empty() {
        bail!("{}: no images", args.data.display());
    }
    let (h, w, c) = model.input_shape();
    if (h, w, c) != (data.height, data.width, data.channels) {
        bail!(
            "{} expects {h}x{w}x{c} images, {} holds {}x{}x{}",
            args.model.display(),
            args.data.display(),
            data.height,
            data.width,
            data.channels
        );
    }
    // Exactly the plan's peak, so the RAM the device reports is what the model needs.
    let arena = model.arena_size();
    if let Some(learn_from) = &args.finetune {
        return finetune_on_device(args, board, &blob, &data, learn_from, arena);
    }
    let timeout = Duration::from_secs(args.timeout);
    let device = qemu::Device::build_for(
        board,
        "classify",
        blob.as_bytes(),
        arena,
        timeout,
        args.transport,
    )?;

    let classified = qemu::classify_all(&device, &data, |range| {
        eprintln!(
            "booting {} in QEMU: images {}..{} of {}",
            board.name,
            range.start,
            range.end,
            data.len()
        )
    })?;
    let profile = if args.profile {
        Some(report::profile(&describe(&model)?, &classified.profile)?)
    } else {
        None
    };
    let (predictions, ram) = (classified.predictions, classified.ram);
    // The engine on the host: the device must agree with it on every image.
    let mut host_arena = vec![0u8; model.required_arena()];
    let mut host = Interpreter::new(model, &mut host_arena)?;
    let mut mismatches = Vec::new();
    for p in &predictions {
        let host_class = host.run(data.image(p.index))?;
        if host_class != p.class {
            mismatches.push((p.index, p.class, host_class));
        }
    }
    let correct = predictions
        .iter()
        .filter(|p| usize::from(p.label) == p.class)
        .count();
    let accuracy = correct as f64 / predictions.len() as f64;
    let total: u64 = predictions.iter().map(|p| p.instructions).sum();
    let mean = total / predictions.len() as u64;
    let (min, max) = predictions.iter().fold((u64::MAX, 0), |(lo, hi), p| {
        (lo.min(p.instructions), hi.max(p.instructions))
    });
    if args.json {
        let value = serde_json::json!({
            "board": board,
            "model": args.model,
            "images": predictions,
            "count": predictions.len(),
            "accuracy": accuracy,
            "instructions_per_inference": mean,
            "instructions_min": min,
            "instructions_max": max,
            "total_instructions": total,
            "matches_host": mismatches.is_empty(),
            "ram": ram,
            "profile": profile,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!(
            "{:>6} {:>6} {:>6} {:>14}",
            "index", "label", "class", "instructions"
        );
        for p in &predictions {
            println!(
                "{:>6} {:>6} {:>6} {:>14}",
                p.index,
                p.label,
                p.class,
                report::thousands(p.instructions)
            );
        }
        println!();
        println!(
            "board         {} ({}, QEMU -icount shift={})",
            board.name,
            board.cpu,
            board.icount_shift()
        );
        println!(
            "accuracy      {:.2} % ({correct}/{})",
            100.0 * accuracy,
            predictions.len()
        );
        println!(
            "instructions  {} per inference (min {}, max {})",
            report::thousands(mean),
            report::thousands(min),
            report::thousands(max)
        );
        println!(
            "RAM           {} static (arena {}) + {} stack",
            report::bytes(ram.static_bytes as u64),
            report::bytes(arena as u64),
            report::bytes(ram.stack_bytes as u64)
        );
        println!(
            "host engine   {}",
            if mismatches.is_empty() {
                "identical predictions".to_string()
            } else {
                format!("{} mismatches", mismatches.len())
            }
        );
        if let Some(rows) = &profile {
            println!(
                "\nprofile of image {} on {}:\n",
                predictions[0].index, board.name
            );
            print!("{}", report::profile_table(rows));
        }
    }
    if let Some(&(index, device, host)) = mismatches.first() {
        bail!("{} predictions differ from the host engine; first: image {index}, device {device}, host {host}", mismatches.len());
    }
    Ok(())
}

fn compile_command(args: &CompileArgs) -> Result<()> {
    let started = std::time::Instant::now();
    let imported = compile::import_onnx(&args.model, &args.preprocessing.flags()?)?;
    let lowered = started.elapsed().as_secs_f64();
    let mut calibration_seconds = 0.0;
    let calibration_data = if args.dtype == Dtype::Int8 {
        let spec = args.calib.clone().or(imported.training_data.clone()).with_context(|| {
            format!(
                "{}: int8 needs calibration images: give --calib DATA (the model's metadata does not name its training data)",
                args.model.display()
            )
        })?;
        let mut images = Dataset::load(&spec, Split::Train)?;
        images.truncate(args.calib_count);
        if images.is_empty() || args.calib_count == 0 {
            bail!("{}: the calibration set is empty", spec.display());
        }
        Some((images, spec))
    } else {
        None
    };
    let calibrating = std::time::Instant::now();
    let bytes = compile::to_blob(
        &imported.network,
        args.dtype,
        calibration_data.as_ref().map(|(images, _)| Int8Options {
            images,
            method: args.calibration,
            bias_correction: !args.no_bias_correction,
        }),
    )?;
    if calibration_data.is_some() {
        calibration_seconds = calibrating.elapsed().as_secs_f64();
    }
    let blob = AlignedBlob::new(&bytes);
    let model = Model::parse(blob.as_bytes())
        .map_err(|e| anyhow::anyhow!("the compiled blob does not validate: {e}"))?;
    let report = describe(&model)?;
    write_atomically(&args.output, &bytes)?;
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        let value = serde_json::json!({
            "onnx": args.model,
            "output": args.output,
            "layout": imported.layout,
            "preprocessing": imported.preprocessing,
            "softmax_dropped": imported.softmax_dropped,
            "calibration": calibration_data.as_ref().map(|(images, spec)| serde_json::json!({
                "data": spec, "images": images.len(), "method": args.calibration,
            })),
            "lowering_seconds": lowered,
            "calibration_seconds": calibration_seconds,
            "seconds": seconds,
            "model": report,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!(
            "{} ({:?} input{}) -> {}",
            args.model.display(),
            imported.layout,
            if imported.softmax_dropped {
                ", final softmax dropped"
            } else {
                ""
            },
            args.output.display()
        );
        if let Some((images, spec)) = &calibration_data {
            println!(
                "int8 calibration: {} images of {}, {:?} ranges, {calibration_seconds:.1} s",
                images.len(),
                spec.display(),
                args.calibration
            );
        }
        println!("compiled in {seconds:.2} s (lowering {lowered:.2} s)\n");
        print!("{}", report.to_table());
    }
    Ok(())
}

fn train_command(args: &TrainArgs) -> Result<()> {
    let (config, run_dir) = match &args.resume {
        Some(run_dir) => (None, run_dir.clone()),
        None => {
            let arch = args.arch.resolve()?;
            if args.epochs == 0 || args.batch == 0 {
                bail!("--epochs and --batch must be at least 1");
            }
            let warmup = args.warmup.unwrap_or(arch.depth() >= 110);
            let config = TrainConfig {
                data: args.data.clone(),
                test_data: args.test_data.clone(),
                train_limit: args.limit,
                epochs: args.epochs,
                batch: args.batch,
                lr: args.lr,
                momentum: 0.9,
                weight_decay: 1e-4,
                schedule: args.schedule,
                warmup,
                augment: !args.no_augment,
                seed: args.seed,
                // Filled in by `train` from the training data.
                mean: Vec::new(),
                std: Vec::new(),
                class_names: Vec::new(),
                held_out_classes: args.hold_out,
                arch,
            };
            (Some(config), args.out.clone())
        }
    };
    let options = train::RunOptions {
        run_dir,
        resume: args.resume.is_some(),
        progress: !args.quiet,
    };
    let summary = train::train(config, &options)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "{}: {} epochs, {} parameters, test accuracy {:.2} %, {:.0} images/s; run in {}",
            summary.arch,
            summary.epochs,
            summary.parameters,
            100.0 * summary.test_accuracy,
            summary.images_per_second,
            summary.run_dir.display()
        );
    }
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Plan {
            arch,
            dtype,
            output,
            json,
        } => {
            let arch = arch.resolve()?;
            let network = arch.network(0)?;
            // The plan and sizes do not depend on the values: unit ranges stand in for
            // calibration.
            let unit_ranges = ActivationRanges {
                tensors: vec![(-1.0, 1.0); network.layers.len() + 1],
                pre_add: network
                    .layers
                    .iter()
                    .map(|l| {
                        matches!(l, LayerSpec::Conv(c) if c.residual.is_some())
                            .then_some((-1.0, 1.0))
                    })
                    .collect(),
            };
            let encoding = match dtype {
                Dtype::F32 => Encoding::F32,
                Dtype::F16 => Encoding::F16,
                Dtype::Int8 => Encoding::Int8(&unit_ranges),
            };
            let bytes = network.to_blob(encoding)?;
            let blob = AlignedBlob::new(&bytes);
            let report = describe(&Model::parse(blob.as_bytes())?)?;
            if let Some(path) = &output {
                write_atomically(path, &bytes)?;
            }
            if json {
                let value = serde_json::json!({ "architecture": arch.name, "depth": arch.depth(), "model": report });
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                println!("{arch}\n");
                print!("{}", report.to_table());
            }
        }
        Command::Demo(args) => demo_command(&args)?,
        Command::Train(args) => train_command(&args)?,
        Command::Export {
            run_dir,
            output,
            check,
            json,
        } => {
            let report = tinyres_host::export::export(&run_dir, &output, check)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "wrote {} ({} bytes, opset {}); tract agrees with burn on {} images: max |diff| {:.2e} over a logit range of {:.2} ({:.1e} relative, budget {:.0e}), top-1 identical on {}/{}",
                    report.onnx.display(),
                    report.bytes,
                    report.opset,
                    report.images_checked,
                    report.max_abs_diff,
                    report.logit_range,
                    report.relative_diff,
                    tinyres_host::export::PARITY_BUDGET,
                    report.top1_agreement,
                    report.images_checked
                );
            }
        }
        Command::Plot { runs, output } => {
            let mut loaded = Vec::new();
            for run in &runs {
                let csv = if run.is_dir() {
                    run.join("metrics.csv")
                } else {
                    run.clone()
                };
                let name = match TrainConfig::load(csv.parent().unwrap_or(Path::new("."))) {
                    Ok(config) => config.arch.name,
                    Err(_) => run.display().to_string(),
                };
                loaded.push((name, train::read_metrics_csv(&csv)?));
            }
            let runs: Vec<(&str, &[train::EpochMetrics])> = loaded
                .iter()
                .map(|(name, metrics)| (name.as_str(), metrics.as_slice()))
                .collect();
            write_atomically(&output, &tinyres_host::plot::training_curves(&runs)?)?;
            println!("wrote {}", output.display());
        }
        Command::Run(args) => run_on_device(&args)?,
        Command::Bench(args) => bench_command(&args)?,
        Command::Flash {
            chip,
            model,
            firmware,
            data,
            limit,
            finetune,
            shots,
            dry_run,
            json,
        } => {
            if model.is_none() && firmware.is_none() && data.is_none() {
                bail!("nothing to flash: give --model, --firmware, --data or several");
            }
            let blob = model.as_deref().map(load_blob).transpose()?;
            let model_bytes = blob.as_ref().map_or(&[][..], |b| b.as_bytes());
            let layout =
                tinyres_host::flash::layout(&chip, model_bytes.len() as u64, firmware.as_deref())?;
            let parsed = blob
                .as_ref()
                .map(|b| Model::parse(b.as_bytes()))
                .transpose()
                .map_err(|e| anyhow::anyhow!("the model: {e}"))?;
            let learn = match (&finetune, &parsed) {
                (Some(pool), Some(model)) => Some((
                    Dataset::load(pool, Split::Train)?,
                    shots,
                    model.num_classes(),
                )),
                _ => None,
            };
            let images = data
                .as_deref()
                .map(|path| flash_images(&layout, path, limit, learn.as_ref()))
                .transpose()?;
            if let (Some(images), Some(model)) = (&images, &parsed) {
                let input = model.input_shape();
                if input != images.shape {
                    bail!(
                        "the model expects {:?} (height, width, channels) images, the data holds {:?}",
                        input,
                        images.shape
                    );
                }
            }
            let image_bytes = images.as_ref().map(|i| i.region.as_slice());
            if json {
                let value = serde_json::json!({
                    "layout": layout,
                    "dry_run": dry_run,
                    "model_bytes": model_bytes.len(),
                    "images": images.as_ref().map_or(0, |i| i.test),
                    "learn_from": images.as_ref().map_or(0, |i| i.learn),
                    "image_bytes": image_bytes.map_or(0, <[u8]>::len),
                });
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                print!("{}", layout.to_table());
                let mut parts = Vec::new();
                if let Some(f) = &firmware {
                    parts.push(f.display().to_string());
                }
                if !model_bytes.is_empty() {
                    parts.push(format!(
                        "{} bytes of model at {:#x}",
                        model_bytes.len(),
                        layout.model.start
                    ));
                }
                if let (Some(images), Some(at)) = (&images, &layout.images) {
                    let learn = if images.learn > 0 {
                        format!("{} examples to learn from and ", images.learn)
                    } else {
                        String::new()
                    };
                    parts.push(format!(
                        "{learn}{} images ({} bytes) at {:#x}",
                        images.test,
                        images.region.len(),
                        at.start
                    ));
                }
                println!(
                    "{} {}",
                    if dry_run { "would write" } else { "writing" },
                    parts.join(" and ")
                );
            }
            if !dry_run {
                tinyres_host::flash::write(&layout, firmware.as_ref(), model_bytes, image_bytes)?;
            }
        }
        Command::Compile(args) => compile_command(&args)?,
        Command::Eval {
            model,
            data,
            limit,
            predictions,
            plot,
            preprocessing,
            json,
        } => {
            let mut data = Dataset::load(&data, Split::Test)?;
            if let Some(n) = limit {
                data.truncate(n);
            }
            let started = std::time::Instant::now();
            let evaluation = if model.extension().is_some_and(|e| e == "onnx") {
                tinyres_host::eval::evaluate_onnx(&model, &data, &preprocessing.flags()?)?
            } else {
                let blob = load_blob(&model)?;
                tinyres_host::eval::evaluate(blob.as_bytes(), &data)?
            };
            if let Some(path) = &predictions {
                evaluation.write_predictions(path)?;
            }
            if let Some(path) = &plot {
                let title = format!(
                    "{}: {:.2} % top-1 on {} images",
                    model.file_name().unwrap_or_default().to_string_lossy(),
                    100.0 * evaluation.accuracy(),
                    data.len()
                );
                let png = tinyres_host::plot::confusion_matrix(
                    &evaluation.confusion,
                    &evaluation.class_names,
                    &title,
                )?;
                write_atomically(path, &png)?;
            }
            if json {
                let mut value = evaluation.to_json();
                value["model"] = serde_json::json!(model);
                value["seconds"] = serde_json::json!(started.elapsed().as_secs_f64());
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                println!(
                    "{} on {} images ({:.1} s)\n",
                    model.display(),
                    data.len(),
                    started.elapsed().as_secs_f64()
                );
                print!("{}", evaluation.to_table());
            }
        }
        Command::Inspect { model, json } => {
            let bytes = std::fs::read(&model)
                .with_context(|| format!("cannot read {}", model.display()))?;
            let blob = AlignedBlob::new(&bytes);
            let parsed = match Model::parse(blob.as_bytes()) {
                Ok(m) => m,
                Err(e) => bail!("{}: {e}", model.display()),
            };
            let report = describe(&parsed)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "{} ({})\n",
                    model.display(),
                    report::dtype_name(parsed.dtype())
                );
                print!("{}", report.to_table());
            }
        }
    }
    Ok(())
}
