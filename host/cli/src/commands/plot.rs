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
        // The run directory's name, and the architecture where it says more.
        let dir = csv.parent().unwrap_or(Path::new("."));
        let dir_name = dir.file_name().map_or(run.display().to_string(), |n| {
            n.to_string_lossy().into_owned()
        });
        let name = match TrainConfig::load(dir) {
            Ok(config) if config.arch.name != dir_name => {
                format!("{dir_name} ({})", config.arch.name)
            }
            _ => dir_name,
        };
        runs.push(plot_run(&name, &read_metrics_csv(&csv)?));
    }
    write_atomically(&args.output, &tinyres_plot::training_curves(&runs)?)?;
    println!("wrote {}", args.output.display());
    Ok(())
}
