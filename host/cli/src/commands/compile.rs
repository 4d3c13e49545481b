//! `tinyres compile`: an ONNX ResNet to a model blob, with its per-layer report.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use tinyres_compile::report::describe;
use tinyres_compile::writer::AlignedBlob;
use tinyres_compile::{import_onnx, to_blob, Calibration, Dtype, Int8Options, Memory};
use tinyres_core::Model;
use tinyres_data::{write_atomically, Dataset, Split};

use super::{print_json, PreprocessingArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The ONNX model.
    model: PathBuf,
    /// Numeric type of the blob.
    #[arg(long, value_enum, default_value_t = Dtype::Int8)]
    dtype: Dtype,
    /// Memory plan: min streams residual blocks row by row through small row windows
    /// and writes each block's output over its input; fast runs every layer over
    /// whole tensors.
    #[arg(long, value_enum, default_value_t = Memory::Min)]
    memory: Memory,
    /// The blob to write.
    #[arg(short, long, value_name = "FILE.trm", default_value = "model.trm")]
    output: PathBuf,
    /// int8 calibration images: `synthetic`, a CIFAR-10 directory or file, an image
    /// folder (training split). Default: the data the model was trained on, if its
    /// metadata says.
    #[arg(long, value_name = "DATA")]
    calib: Option<PathBuf>,
    /// Calibration images used.
    #[arg(long, default_value_t = 500)]
    calib_count: usize,
    /// How activation ranges are chosen: mse (least expected squared error over the
    /// calibration histogram), percentile (99.999 % at each end) or minmax (TFLite's;
    /// on the MLPerf Tiny ResNet-8 0.8 points less accurate than mse).
    #[arg(long, value_enum, default_value_t = Calibration::Mse)]
    calibration: Calibration,
    /// Keep the float biases: do not compensate in them the mean error that rounding
    /// the weights to int8 puts in each output channel (on our CIFAR-10 ResNet-8 the
    /// compensation raises int8/f32 top-1 agreement from 97.8-98.4 % to 98.9-99.0 %).
    #[arg(long)]
    no_bias_correction: bool,
    #[command(flatten)]
    preprocessing: PreprocessingArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn command(args: &Args) -> Result<()> {
    let started = Instant::now();
    let imported = import_onnx(&args.model, &args.preprocessing.flags()?)?;
    let lowered = started.elapsed().as_secs_f64();
    let calibration_data = if args.dtype == Dtype::Int8 {
        let spec = args.calib.clone().or(imported.training_data.clone()).with_context(|| {
            format!(
                "{}: int8 needs calibration images: give --calib DATA (the model's metadata does not name its training data)",
                args.model.display()
            )
        })?;
        let input = &imported.network.input;
        let mut images = Dataset::load_fitted(&spec, Split::Train, (input.height, input.width))?;
        images.truncate(args.calib_count);
        if images.is_empty() || args.calib_count == 0 {
            bail!("{}: the calibration set is empty", spec.display());
        }
        Some((images, spec))
    } else {
        None
    };
    let calibrating = Instant::now();
    let bytes = to_blob(
        &imported.network,
        args.dtype,
        args.memory,
        calibration_data.as_ref().map(|(images, _)| Int8Options {
            images,
            method: args.calibration,
            bias_correction: !args.no_bias_correction,
        }),
    )?;
    let calibration_seconds = if calibration_data.is_some() {
        calibrating.elapsed().as_secs_f64()
    } else {
        0.0
    };
    let blob = AlignedBlob::new(&bytes);
    let model = Model::parse(blob.as_bytes())
        .map_err(|e| anyhow::anyhow!("the compiled blob does not validate: {e}"))?;
    let report = describe(&model)?;
    write_atomically(&args.output, &bytes)?;
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        return print_json(&serde_json::json!({
            "onnx": args.model,
            "output": args.output,
            "layout": imported.layout,
            "memory": args.memory,
            "preprocessing": imported.preprocessing,
            "softmax_dropped": imported.softmax_dropped,
            "calibration": calibration_data.as_ref().map(|(images, spec)| serde_json::json!({
                "data": spec, "images": images.len(), "method": args.calibration,
            })),
            "lowering_seconds": lowered,
            "calibration_seconds": calibration_seconds,
            "seconds": seconds,
            "model": report,
        }));
    }
    let softmax = if imported.softmax_dropped {
        ", final softmax dropped"
    } else {
        ""
    };
    println!(
        "{} ({:?} input{softmax}) -> {}",
        args.model.display(),
        imported.layout,
        args.output.display()
    );
    if let Some((images, spec)) = &calibration_data {
        println!(
            "int8 calibration: {} images of {}, {:?} ranges, {calibration_seconds:.1} s",
            images.len(),
            spec.display(),
            args.calibration
        );
    }
    println!("compiled in {seconds:.2} s (lowering {lowered:.2} s)\n");
    print!("{}", report.to_table());
    Ok(())
}
