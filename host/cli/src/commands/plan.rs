//! `tinyres plan`: an architecture as the engine would run it, without training.

use std::path::PathBuf;

use anyhow::Result;
use tinyres_compile::report::describe;
use tinyres_compile::writer::{AlignedBlob, Encoding};
use tinyres_compile::{BlobOptions, Dtype, Memory};
use tinyres_core::Model;
use tinyres_data::write_atomically;

use super::{check_fit, print_json, ArchArgs, FitArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    arch: ArchArgs,
    /// Numeric type of the blob.
    #[arg(long, value_enum, default_value_t = Dtype::Int8)]
    dtype: Dtype,
    /// Memory plan: min streams residual blocks row by row through small row windows
    /// and writes each block's output over its input; fast runs every layer over
    /// whole tensors.
    #[arg(long, value_enum, default_value_t = Memory::Min)]
    memory: Memory,
    /// Store Winograd filters for the int8 3×3 stride-1 convolutions with 16 to 64 input
    /// channels (a multiple of 16) and output rows a multiple of 4 wide: the
    /// Cortex-M4/M7/M33 kernel then computes them with 1.5× fewer multiplies, for 2.7×
    /// those layers' weight bytes more in flash (other cores ignore them; the results
    /// are the same).
    #[arg(long)]
    winograd: bool,
    /// Also write the blob, with untrained (He-initialised) weights: for sizing,
    /// testing firmware and seeding the fuzzer, not for predictions.
    #[arg(short, long, value_name = "FILE.trm")]
    output: Option<PathBuf>,
    #[command(flatten)]
    fit: FitArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn command(args: &Args) -> Result<()> {
    let arch = args.arch.resolve()?;
    let network = arch.network(0)?;
    // The plan and sizes do not depend on the values: unit ranges stand in for
    // calibration.
    let unit_ranges = network.unit_ranges();
    let encoding = match args.dtype {
        Dtype::F32 => Encoding::F32,
        Dtype::F16 => Encoding::F16,
        Dtype::Int8 => Encoding::Int8(&unit_ranges),
    };
    let bytes = network.to_blob_with_options(
        encoding,
        BlobOptions {
            memory: args.memory,
            winograd: args.winograd,
        },
    )?;
    let blob = AlignedBlob::new(&bytes);
    let model = Model::parse(blob.as_bytes())?;
    let report = describe(&model)?;
    let fit = args.fit.fit(&model, bytes.len())?;
    check_fit(&fit)?;
    if let Some(path) = &args.output {
        write_atomically(path, &bytes)?;
    }
    if args.json {
        print_json(&serde_json::json!({
            "architecture": arch.name, "depth": arch.depth(), "model": report, "fit": fit,
        }))
    } else {
        println!("{arch}\n");
        print!("{}", report.to_table());
        if let Some(fit) = &fit {
            println!("\n{fit}");
        }
        Ok(())
    }
}
