//! `tinyres bench`: one int8 model on every emulated board, side by side with the
//! CMSIS-NN reference figures: instructions per inference, arena, flash (blob and
//! engine code), and whether the device's predictions equal the host engine's.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tinyres_core::{Interpreter, Model};

use tinyres_compile::report;
use tinyres_compile::writer::AlignedBlob;
use tinyres_compile::{
    import_onnx, to_blob, BlobOptions, Calibration, Dtype, Int8Options, Memory, PreprocessingFlags,
};
use tinyres_data::{Dataset, Split};
use tinyres_device::qemu::{self, Board};

use super::{load_blob, print_json};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The float ONNX model to compile to int8 (raw 0..255 pixels, as the MLPerf Tiny
    /// ResNet-8 takes them). Default: `../shared/data/mlperf-tiny-ic/resnet8_float.onnx`
    /// beside the repository.
    #[arg(long, value_name = "FILE.onnx", conflicts_with = "model")]
    onnx: Option<PathBuf>,
    /// A compiled blob, or an int8 TensorFlow Lite model (compiled with its own
    /// quantization), to benchmark instead of compiling the ONNX model.
    #[arg(long, value_name = "FILE.trm|FILE.tflite")]
    model: Option<PathBuf>,
    /// Memory plan of the compiled model (see `tinyres compile --memory`).
    #[arg(long, value_enum, default_value_t = Memory::Min)]
    memory: Memory,
    /// Winograd filters in the model bench compiles (see `tinyres compile --winograd`;
    /// a blob given with `--model` carries the filters it was compiled with).
    #[arg(long)]
    winograd: bool,
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
    /// Boards (repeat the flag); default: every board.
    #[arg(long = "board")]
    boards: Vec<String>,
    /// Seconds one QEMU boot may take.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Print JSON (with each board's per-layer profile) instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn command(args: &Args) -> Result<()> {
    let data_spec = args
        .data
        .clone()
        .unwrap_or_else(|| shared_data("cifar10/lossless_reference/test_batch_first1000.bin.gz"));
    let options = BlobOptions {
        memory: args.memory,
        winograd: args.winograd,
    };
    let bytes = match &args.model {
        Some(path) if super::compile::holds_tflite(path)? => {
            super::compile::tflite_blob(path, options)?
        }
        Some(path) if args.winograd => bail!(
            "{}: --winograd applies when bench compiles the model (an ONNX or .tflite file); a blob carries the filters it was compiled with (tinyres compile --winograd)",
            path.display()
        ),
        Some(path) => load_blob(path)?.as_bytes().to_vec(),
        None => {
            let onnx = args
                .onnx
                .clone()
                .unwrap_or_else(|| shared_data("mlperf-tiny-ic/resnet8_float.onnx"));
            let calib = args.calib.clone().unwrap_or_else(|| shared_data("cifar10"));
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
            let imported = import_onnx(&onnx, &flags)?;
            let input = &imported.network.input;
            let mut images = Dataset::load_unlabeled(&calib, (input.height, input.width))?;
            images.truncate(500);
            to_blob(
                &imported.network,
                Dtype::Int8,
                options,
                Some(Int8Options {
                    images: &images,
                    method: Calibration::Mse,
                    bias_correction: true,
                }),
            )?
        }
    };
    let blob = AlignedBlob::new(&bytes);
    let (height, width, _) = Model::parse(blob.as_bytes())?.input_shape();
    let mut data = Dataset::load_fitted(&data_spec, Split::Test, (height, width))?;
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
    let results = bench(
        blob.as_bytes(),
        &data,
        &boards,
        Duration::from_secs(args.timeout),
    )?;
    if args.json {
        print_json(&results)?;
    } else {
        print!("{}", table(&results));
        println!(
            "\n{} images per board from {}; CMSIS-NN: the MLPerf Tiny ResNet-8 under the same QEMU and counter (see host/BENCHMARKS.md)",
            data.len(),
            data_spec.display()
        );
        println!(
            "cycles (est.): {}\nMLPerf best: the best published MLPerf Tiny ResNet-8 latency on that core times its clock, measured on real chips: {}",
            tinyres_device::cycles::ASSUMPTIONS,
            PUBLISHED_RESNET8_CYCLES
                .iter()
                .map(|(board, _, whose)| format!("{board}: {whose}"))
                .collect::<Vec<_>>()
                .join("; ")
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

/// CMSIS-NN (commit 99f736a6, arm-none-eabi-gcc 12, best of -O2/-O3) computing the
/// MLPerf Tiny ResNet-8 int8 graph as TensorFlow Lite Micro calls it, counted in the
/// same QEMU 7.2 the same way (`-icount shift=6`, SysTick around the inference):
/// instructions per inference. From `../shared/DESIGN.md`; the reference arena is
/// 51,456 B.
pub const CMSIS_NN_RESNET8: [(&str, u64); 4] = [
    ("mps2-an386", 29_860_000),
    ("mps2-an500", 29_930_000),
    ("mps2-an505", 29_930_000),
    ("mps3-an547", 4_810_000),
];

/// The best published MLPerf Tiny image-classification (ResNet-8) result on each
/// core, in cycles (latency × clock; v1.2/v1.3, from `../shared/DESIGN.md`): measured on
/// real chips, where tinyres's cycles are estimated. The M3 has none.
pub const PUBLISHED_RESNET8_CYCLES: [(&str, u64, &str); 4] = [
    ("mps2-an386", 19_800_000, "X-CUBE-AI, STM32L4R5 at 120 MHz"),
    ("mps2-an500", 11_400_000, "X-CUBE-AI, STM32H7A3"),
    ("mps2-an505", 16_700_000, "Plumerai, STM32U575"),
    (
        "mps2-an385-v6m",
        97_400_000,
        "Bosch, STM32G0B1 (Cortex-M0+)",
    ),
];

/// One board's figures.
#[derive(Clone, Debug, Serialize)]
pub struct BoardResult {
    /// The board.
    pub board: Board,
    /// The int8 convolution kernel its firmware was built with (from its selftest).
    pub kernel: String,
    /// Mean instructions per inference over the images.
    pub instructions: u64,
    /// CMSIS-NN's count for the MLPerf ResNet-8 on this core, if measured.
    pub cmsis_nn_instructions: Option<u64>,
    /// Mean cycles per inference as the board's cycle model estimates them, where it
    /// has one.
    pub cycles_estimated: Option<u64>,
    /// The best published MLPerf Tiny ResNet-8 result on this core, in cycles, and
    /// whose it is.
    pub published_cycles: Option<(u64, &'static str)>,
    /// The model's arena (the plan's peak).
    pub arena_bytes: usize,
    /// Static RAM and deepest stack of the classify firmware.
    pub ram: qemu::RamUse,
    /// The model blob.
    pub blob_bytes: usize,
    /// `.text` of the engine size probe (`firmware/src/bin/engine_size.rs`: parser,
    /// planner, every kernel, the runtime's start-up code) built for this board.
    pub engine_text_bytes: u64,
    /// Whether every prediction, and every output tensor byte for byte, equals the
    /// host engine's.
    pub matches_host: bool,
    /// Images classified.
    pub images: usize,
    /// Instructions per layer of the first image (input first).
    pub profile: Vec<report::StepProfile>,
}

/// Runs `blob` on each of `boards` with the first `images` of `data`.
pub fn bench(
    blob: &[u8],
    data: &Dataset,
    boards: &[Board],
    timeout: Duration,
) -> Result<Vec<BoardResult>> {
    let model = Model::parse(blob).map_err(|e| anyhow::anyhow!("the model: {e}"))?;
    let layers = report::describe(&model)?;
    let mut arena = vec![0u8; model.required_arena()];
    let mut host = Interpreter::new(model, &mut arena)?;
    let host_runs = (0..data.len())
        .map(|i| {
            let class = host.run(data.image(i))?;
            Ok((class, tinyres_core::crc32(host.output_bytes()?)))
        })
        .collect::<Result<Vec<(usize, u32)>, tinyres_core::Error>>()?;
    let mut results = Vec::new();
    for board in boards {
        eprintln!("bench: {} ({})", board.name, board.core);
        let selftest = qemu::selftest(board, timeout)?;
        let device = qemu::Device::build(*board, "classify", blob, model.arena_size(), timeout)?;
        let classified = qemu::classify_all(&device, data, |_| {})?;
        let count = classified.predictions.len();
        let instructions = classified
            .predictions
            .iter()
            .map(|p| p.instructions)
            .sum::<u64>()
            / count.max(1) as u64;
        let cycles_estimated = classified
            .predictions
            .iter()
            .map(|p| p.cycles)
            .sum::<Option<u64>>()
            .map(|c| c / count.max(1) as u64);
        results.push(BoardResult {
            board: *board,
            kernel: selftest.kernel,
            instructions,
            cmsis_nn_instructions: CMSIS_NN_RESNET8
                .iter()
                .find(|(name, _)| *name == board.name)
                .map(|&(_, n)| n),
            cycles_estimated,
            published_cycles: PUBLISHED_RESNET8_CYCLES
                .iter()
                .find(|(name, ..)| *name == board.name)
                .map(|&(_, n, whose)| (n, whose)),
            arena_bytes: model.arena_size(),
            ram: classified.ram,
            blob_bytes: blob.len(),
            engine_text_bytes: engine_text_bytes(board)?,
            matches_host: classified.predictions.iter().all(|p| {
                let (class, crc) = host_runs[p.index];
                class == p.class && p.output_crc.is_none_or(|c| c == crc)
            }),
            images: count,
            profile: report::profile(
                &layers,
                &classified.profile,
                classified.profile_cycles.as_deref(),
            )?,
        });
    }
    Ok(results)
}

/// The results as a text table.
pub fn table(results: &[BoardResult]) -> String {
    let mut s = format!(
        "{:<14} {:<11} {:<13} {:>14} {:>14} {:>7} {:>14} {:>14} {:>9} {:>12} {:>12} {:>6}\n",
        "board",
        "core",
        "kernel",
        "instructions",
        "CMSIS-NN",
        "ratio",
        "cycles (est.)",
        "MLPerf best",
        "arena B",
        "blob B",
        "engine .text",
        "= host"
    );
    for r in results {
        let (cmsis, ratio) = match r.cmsis_nn_instructions {
            Some(n) => (
                report::thousands(n),
                format!("{:.2}", r.instructions as f64 / n as f64),
            ),
            None => ("-".to_string(), "-".to_string()),
        };
        let or_dash = |n: Option<u64>| n.map_or("-".to_string(), report::thousands);
        s += &format!(
            "{:<14} {:<11} {:<13} {:>14} {:>14} {:>7} {:>14} {:>14} {:>9} {:>12} {:>12} {:>6}\n",
            r.board.name,
            r.board.core,
            r.kernel,
            report::thousands(r.instructions),
            cmsis,
            ratio,
            or_dash(r.cycles_estimated),
            or_dash(r.published_cycles.map(|(n, _)| n)),
            report::thousands(r.arena_bytes as u64),
            report::thousands(r.blob_bytes as u64),
            report::thousands(r.engine_text_bytes),
            if r.matches_host { "yes" } else { "NO" }
        );
    }
    s
}

/// Builds the engine size probe for `board` (profile `size`, the board's CPU flags)
/// and returns its `.text` size.
pub fn engine_text_bytes(board: &Board) -> Result<u64> {
    let target_dir = qemu::firmware_target_dir(board);
    let status = qemu::firmware_cargo(
        board,
        &target_dir,
        &[
            "build",
            "--quiet",
            "--profile",
            "size",
            "--bin",
            "engine_size",
        ],
    )
    .status()
    .context("cannot run cargo to build the engine size probe")?;
    if !status.success() {
        bail!("building the engine size probe for {} failed", board.name);
    }
    section_size(
        &target_dir
            .join(board.target)
            .join("size")
            .join("engine_size"),
        ".text",
    )
}

/// Size of section `name` of an ELF file.
fn section_size(elf: &Path, name: &str) -> Result<u64> {
    use object::{Object, ObjectSection};
    let bytes = std::fs::read(elf).with_context(|| format!("cannot read {}", elf.display()))?;
    let file = object::File::parse(&*bytes)
        .with_context(|| format!("{}: not an ELF file", elf.display()))?;
    let section = file
        .section_by_name(name)
        .with_context(|| format!("{}: no {name} section", elf.display()))?;
    Ok(section.size())
}

/// Where the MLPerf Tiny artifacts are in this workplace (`../shared/data`, beside the
/// repository).
pub fn shared_data(relative: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data")
        .join(relative);
    // Shown in messages: without the `host/..` detour when the file exists.
    std::fs::canonicalize(&path).unwrap_or(path)
}
