//! `tinyres export`: a trained run as ONNX, kept only if tract agrees with burn.

use std::path::PathBuf;

use anyhow::Result;
use tinyres_train::export::{export, PARITY_BUDGET};

use super::print_json;

#[derive(clap::Args, Debug)]
pub struct Args {
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
}

pub fn command(args: &Args) -> Result<()> {
    let report = export(&args.run_dir, &args.output, args.check)?;
    if args.json {
        return print_json(&report);
    }
    println!(
        "wrote {} ({} bytes, opset {}); tract agrees with burn on {} images: max |diff| {:.2e} over a logit range of {:.2} ({:.1e} relative, budget {PARITY_BUDGET:.0e}), top-1 identical on {}/{}",
        report.onnx.display(),
        report.bytes,
        report.opset,
        report.images_checked,
        report.max_abs_diff,
        report.logit_range,
        report.relative_diff,
        report.top1_agreement,
        report.images_checked
    );
    Ok(())
}
