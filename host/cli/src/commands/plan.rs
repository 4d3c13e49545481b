//! `tinyres plan`: an architecture as the engine would run it, without training.

use std::path::PathBuf;

use anyhow::Result;
use tinyres_compile::report::describe;
use tinyres_compile::writer::{ActivationRanges, AlignedBlob, Encoding, LayerSpec};
use tinyres_compile::Dtype;
use tinyres_core::Model;
use tinyres_data::write_atomically;

use super::{print_json, ArchArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
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
}

pub fn command(args: &Args) -> Result<()> {
    let arch = args.arch.resolve()?;
    let network = arch.network(0)?;
    // The plan and sizes do not depend on the values: unit ranges stand in for
    // calibration.
    let unit_ranges = ActivationRanges {
        tensors: vec![(-1.0, 1.0); network.layers.len() + 1],
        pre_add: network
            .layers
            .iter()
            .map(|l| matches!(l, LayerSpec::Conv(c) if c.residual.is_some()).then_some((-1.0, 1.0)))
            .collect(),
    };
    let encoding = match args.dtype {
        Dtype::F32 => Encoding::F32,
        Dtype::F16 => Encoding::F16,
        Dtype::Int8 => Encoding::Int8(&unit_ranges),
    };
    let bytes = network.to_blob(encoding)?;
    let blob = AlignedBlob::new(&bytes);
    let report = describe(&Model::parse(blob.as_bytes())?)?;
    if let Some(path) = &args.output {
        write_atomically(path, &bytes)?;
    }
    if args.json {
        print_json(&serde_json::json!({
            "architecture": arch.name, "depth": arch.depth(), "model": report,
        }))
    } else {
        println!("{arch}\n");
        print!("{}", report.to_table());
        Ok(())
    }
}
