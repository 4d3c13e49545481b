//! `tinyres inspect`: validate a blob and show what it holds.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use tinyres_compile::report::{describe, dtype_name};
use tinyres_compile::writer::AlignedBlob;
use tinyres_core::Model;

use super::print_json;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The model blob.
    model: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn command(args: &Args) -> Result<()> {
    let bytes = std::fs::read(&args.model)
        .with_context(|| format!("cannot read {}", args.model.display()))?;
    let blob = AlignedBlob::new(&bytes);
    let parsed = match Model::parse(blob.as_bytes()) {
        Ok(m) => m,
        Err(e) => bail!("{}: {e}", args.model.display()),
    };
    let report = describe(&parsed)?;
    if args.json {
        return print_json(&report);
    }
    println!(
        "{} ({})\n",
        args.model.display(),
        dtype_name(parsed.dtype())
    );
    print!("{}", report.to_table());
    Ok(())
}
