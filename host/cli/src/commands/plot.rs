//! `tinyres plot`: the training curves of one or more runs in one PNG.

use std::path::{Path, PathBuf};

use anyhow::Result;
use tinyres_data::write_atomically;
use tinyres_train::train::{plot_run, read_metrics_csv, TrainConfig};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run directories (or their metrics.csv files).
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// The PNG to write.
    #[arg(short, long, default_value = "curves.png")]
    output: PathBuf,
}

pub fn command(args: &Args) -> Result<()> {
    let mut runs = Vec::new();
    for run in &args.runs {
        let csv = if run.is_dir() {
            run.join("metrics.csv")
        } else {
            run.clone()
        };
        let name = match TrainConfig::load(csv.parent().unwrap_or(Path::new("."))) {
            Ok(config) => config.arch.name,
            Err(_) => run.display().to_string(),
        };
        runs.push(plot_run(&name, &read_metrics_csv(&csv)?));
    }
    write_atomically(&args.output, &tinyres_plot::training_curves(&runs)?)?;
    println!("wrote {}", args.output.display());
    Ok(())
}
