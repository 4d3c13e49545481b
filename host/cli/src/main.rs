//! `tinyres`: the command line. Each subcommand is a module of [`commands`]; this file
//! only names them. Results (tables, `--json`) go to stdout; progress, installers and
//! errors to stderr.

mod commands;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use commands::{bench, compile, cycles, eval, inspect, plan, run};

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
    #[cfg(feature = "train")]
    Demo(commands::demo::Args),
    /// Show the layers, MACs, parameters, blob size and memory plan of an
    /// architecture, as the engine would run it (weights are untrained).
    Plan(plan::Args),
    /// Train a network of the family with the paper's recipe (SGD, momentum 0.9,
    /// weight decay 1e-4, batch 128, lr 0.1 divided by 10 at 50 % and 75 %, crop and
    /// flip augmentation), with per-epoch metrics, curves and checkpoints.
    #[cfg(feature = "train")]
    Train(commands::train::Args),
    /// Write a trained run as ONNX, then check the file through tract against burn on
    /// real images; the file is kept only if they agree.
    #[cfg(feature = "train")]
    Export(commands::export::Args),
    /// Draw training curves (error against epochs, training dashed, test bold) of one
    /// or more runs into one PNG, like Figure 6 of the paper.
    #[cfg(feature = "train")]
    Plot(commands::plot::Args),
    /// Boot the firmware in QEMU, classify images on the emulated device, count the
    /// instructions of each inference, and check every prediction against the engine
    /// run on the host.
    Run(run::Args),
    /// Benchmark an int8 model on every emulated board (default: the MLPerf Tiny
    /// ResNet-8, compiled from its ONNX file): instructions per inference beside
    /// CMSIS-NN's, arena, flash (blob and engine code), identical predictions to the
    /// host engine, per-layer profile with --json.
    Bench(bench::Args),
    /// Compile an ONNX ResNet (ours, PyTorch's, tf2onnx's) into a model blob for the
    /// device: f32, f16, or int8 calibrated on real images; prints the per-layer report.
    Compile(compile::Args),
    /// Evaluate a model on the host: a blob (.trm) with the engine, exactly as the
    /// device runs it, or an ONNX file with tract. Top-1 accuracy, per-class accuracy,
    /// confusion matrix.
    Eval(eval::Args),
    /// Write firmware and a model to a real board through a debug probe (probe-rs),
    /// or with --dry-run show the flash layout and what would be written.
    #[cfg(feature = "flash")]
    Flash(commands::flash::Args),
    /// Validate a model blob (.trm) and show what it holds.
    Inspect(inspect::Args),
    /// Estimate the cycles of any bare-metal ELF on an emulated Cortex-M4, M3 or M0+: the
    /// core's pipeline model applied to the instructions QEMU executes, for the whole
    /// run and between the program's reads of SysTick.
    Cycles(cycles::Args),
}

fn main() -> ExitCode {
    let outcome: Result<()> = match Cli::parse().command {
        #[cfg(feature = "train")]
        Command::Demo(args) => commands::demo::command(&args),
        Command::Plan(args) => plan::command(&args),
        #[cfg(feature = "train")]
        Command::Train(args) => commands::train::command(&args),
        #[cfg(feature = "train")]
        Command::Export(args) => commands::export::command(&args),
        #[cfg(feature = "train")]
        Command::Plot(args) => commands::plot::command(&args),
        Command::Run(args) => run::command(&args),
        Command::Bench(args) => bench::command(&args),
        Command::Compile(args) => compile::command(&args),
        Command::Eval(args) => eval::command(&args),
        #[cfg(feature = "flash")]
        Command::Flash(args) => commands::flash::command(&args),
        Command::Inspect(args) => inspect::command(&args),
        Command::Cycles(args) => cycles::command(&args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
