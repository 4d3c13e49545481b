//! `tinyres train`: a network of the family, trained with the paper's recipe.

use std::path::PathBuf;

use anyhow::{bail, Result};
use tinyres_data::Dataset;
use tinyres_train::train::{self, CropStyle, RunOptions, Schedule, TrainConfig};

use super::{print_json, ArchArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    arch: ArchArgs,
    /// Training data: `synthetic` (built in), a CIFAR-10 directory (data_batch_*.bin,
    /// test_batch.bin, plain or .gz), or an image folder (`DIR/{train,test}/<class>/`).
    #[arg(long, default_value = "synthetic")]
    data: PathBuf,
    /// Test data, if not the test split of --data (e.g. a single CIFAR-10 batch file).
    #[arg(long)]
    test_data: Option<PathBuf>,
    /// Leave the data's last N classes out of training and testing, to be learned
    /// later on the device (`tinyres run --finetune`); the network gets the other
    /// classes' outputs.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        conflicts_with = "classes"
    )]
    hold_out: usize,
    /// Train on the first N training images only.
    #[arg(long)]
    limit: Option<usize>,
    /// The run directory: config, checkpoints, metrics.csv, curves.png, model.safetensors.
    #[arg(short, long, default_value = "runs/latest")]
    out: PathBuf,
    /// Continue the run in this directory where it stopped (its own settings apply).
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "out")]
    resume: Option<PathBuf>,
    /// Epochs.
    #[arg(long, default_value_t = 30)]
    epochs: usize,
    /// Batch size.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Base learning rate.
    #[arg(long, default_value_t = 0.1)]
    lr: f64,
    /// Learning-rate schedule: step (the paper's ÷10 at 50 % and 75 %), cosine, onecycle.
    #[arg(long, value_enum, default_value_t = Schedule::Step)]
    schedule: Schedule,
    /// Start at lr 0.01 until the training error is below 80 % (default: on for 110+
    /// layers, as the paper does for ResNet-110).
    #[arg(long)]
    warmup: Option<bool>,
    /// Turn off crop-and-flip augmentation.
    #[arg(long)]
    no_augment: bool,
    /// Training crops: `padded` (the paper's CIFAR-10 recipe: 4 black pixels around the
    /// image, a random window of the input's size), `resized` (torchvision's ImageNet
    /// recipe: a random window of 8-100 % of the area and aspect 3/4-4/3 scaled to the
    /// input, from images held at input/0.875; test images resized and centre-cropped).
    /// Both flip at random. Default: resized for image folders (of any image size),
    /// padded for CIFAR-10 batches and the synthetic set.
    #[arg(long, value_enum)]
    crop: Option<CropStyle>,
    /// Seed of initialisation, shuffling and augmentation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print a JSON summary at the end.
    #[arg(long)]
    json: bool,
    /// No progress bar or per-epoch lines.
    #[arg(long)]
    quiet: bool,
}

pub fn command(args: &Args) -> Result<()> {
    let (config, run_dir) = match &args.resume {
        Some(run_dir) => (None, run_dir.clone()),
        None => (Some(config(args)?), args.out.clone()),
    };
    let options = RunOptions {
        run_dir,
        resume: args.resume.is_some(),
        progress: !args.quiet,
    };
    let summary = train::train(config, &options)?;
    if args.json {
        return print_json(&summary);
    }
    println!(
        "{}: {} epochs, {} parameters, test accuracy {:.2} %, {:.0} images/s; run in {}",
        summary.arch,
        summary.epochs,
        summary.parameters,
        100.0 * summary.test_accuracy,
        summary.images_per_second,
        summary.run_dir.display()
    );
    Ok(())
}

/// A new run's configuration from the flags.
fn config(args: &Args) -> Result<TrainConfig> {
    let arch = args.arch.resolve()?;
    if args.epochs == 0 || args.batch == 0 {
        bail!("--epochs and --batch must be at least 1");
    }
    Ok(TrainConfig {
        data: args.data.clone(),
        test_data: args.test_data.clone(),
        train_limit: args.limit,
        epochs: args.epochs,
        batch: args.batch,
        lr: args.lr,
        momentum: 0.9,
        weight_decay: 1e-4,
        schedule: args.schedule,
        warmup: args.warmup.unwrap_or(arch.depth() >= 110),
        augment: !args.no_augment,
        crop: args
            .crop
            .unwrap_or(if Dataset::is_image_folder(&args.data) {
                CropStyle::Resized
            } else {
                CropStyle::Padded
            }),
        seed: args.seed,
        // Filled in by `train` from the training data.
        mean: Vec::new(),
        std: Vec::new(),
        class_names: Vec::new(),
        held_out_classes: args.hold_out,
        arch,
    })
}
