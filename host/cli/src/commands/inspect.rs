//! `tinyres inspect`: validate a blob and show what it holds.

use std::path::PathBuf;

use anyhow::Result;
use tinyres_compile::report::{describe, dtype_name};
use tinyres_core::Model;

use super::{load_blob, print_json};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The model blob.
    model: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn command(args: &Args) -> Result<()> {
    let blob = load_blob(&args.model)?;
    // load_blob validated it.
    let parsed = Model::parse(blob.as_bytes())?;
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
