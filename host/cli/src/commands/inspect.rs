//! `tinyres inspect`: validate a blob and show what it holds.

use std::path::PathBuf;

use anyhow::Result;
use tinyres_compile::report::{describe, dtype_name};
use tinyres_core::Model;

use super::{check_fit, load_blob, print_json, FitArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The model blob.
    model: PathBuf,
    #[command(flatten)]
    fit: FitArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn command(args: &Args) -> Result<()> {
    let blob = load_blob(&args.model)?;
    // load_blob validated it.
    let parsed = Model::parse(blob.as_bytes())?;
    let report = describe(&parsed)?;
    // A model that does not fit is shown, then refused (exit status 1).
    let fit = args.fit.fit(&parsed, blob.as_bytes().len())?;
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        if let (Some(fit), Some(object)) = (&fit, value.as_object_mut()) {
            object.insert("fit".into(), serde_json::to_value(fit)?);
        }
        print_json(&value)?;
        return check_fit(&fit);
    }
    println!(
        "{} ({})\n",
        args.model.display(),
        dtype_name(parsed.dtype())
    );
    print!("{}", report.to_table());
    if let Some(fit) = &fit {
        println!("\n{fit}");
    }
    check_fit(&fit)
}
