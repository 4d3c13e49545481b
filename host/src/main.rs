//! `tinyres`: the command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use tinyres_core::writer::{ActivationRanges, AlignedBlob, Encoding, LayerSpec};
use tinyres_core::Model;
use tinyres_host::arch::{Architecture, Block, Shortcut, NAMES};
use tinyres_host::report::{self, describe};

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
    /// Show the layers, MACs, parameters, blob size and memory plan of an
    /// architecture, as the engine would run it (weights are untrained).
    Plan {
        /// Architecture name: resnet8, resnet{20,32,44,56,110}, plain{..}, resnetN-bottleneck.
        #[arg(long, default_value = "resnet8")]
        arch: String,
        /// Numeric type of the blob.
        #[arg(long, value_enum, default_value_t = Dtype::Int8)]
        dtype: Dtype,
        /// Shortcut option (A, B, C or none); default: the architecture's own.
        #[arg(long)]
        shortcut: Option<Shortcut>,
        /// Block type (basic or bottleneck); default: the architecture's own.
        #[arg(long)]
        block: Option<Block>,
        /// Also write the blob, with untrained (He-initialised) weights: for sizing,
        /// testing firmware and seeding the fuzzer, not for predictions.
        #[arg(short, long, value_name = "FILE.trm")]
        output: Option<PathBuf>,
        /// Print JSON instead of a table.
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

#[derive(Clone, Copy, ValueEnum)]
enum Dtype {
    F32,
    F16,
    Int8,
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

/// Writes `bytes` to a temporary file beside `path`, then renames it over `path`, so
/// an interrupted write never leaves a truncated file under the final name.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let file_name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.tmp", file_name.to_string_lossy()));
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Plan {
            arch,
            dtype,
            shortcut,
            block,
            output,
            json,
        } => {
            let mut arch = Architecture::by_name(&arch)
                .with_context(|| format!("known architectures: {NAMES}"))?;
            arch.shortcut = shortcut.unwrap_or(arch.shortcut);
            arch.block = block.unwrap_or(arch.block);
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
