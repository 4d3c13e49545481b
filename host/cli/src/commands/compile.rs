//! `tinyres compile`: an ONNX or TensorFlow Lite ResNet to a model blob, with its
//! per-layer report.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use tinyres_compile::report::describe;
use tinyres_compile::tflite::{import_tflite, is_tflite, ImportedTflite};
use tinyres_compile::writer::AlignedBlob;
use tinyres_compile::writer::Encoding;
use tinyres_compile::{import_onnx, to_blob, BlobOptions, Calibration, Dtype, Int8Options, Memory};
use tinyres_core::Model;
use tinyres_data::{write_atomically, Dataset};

use super::{check_fit, print_json, FitArgs, PreprocessingArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The model: ONNX (.onnx), or TensorFlow Lite (.tflite; an int8 one keeps its own
    /// quantization, byte-exact with TFLite's reference kernels).
    model: PathBuf,
    /// Numeric type of the blob (an int8 .tflite: int8 with its own quantization, or
    /// f32/f16 with its weights dequantized).
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
    /// The blob to write.
    #[arg(short, long, value_name = "FILE.trm", default_value = "model.trm")]
    output: PathBuf,
    /// int8 calibration images: `synthetic`, a CIFAR-10 directory or file, an image
    /// folder (its train/ split if it has one, else its test/ split, its class
    /// folders or its images). Default: the data the model was trained on, if its
    /// metadata says. An int8 .tflite needs none.
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
    #[command(flatten)]
    fit: FitArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// The blob an int8 `.tflite` compiles to with its own quantization (a float one:
/// f32), for the commands that take a `.tflite` where they take a blob.
pub fn tflite_blob(path: &std::path::Path, options: BlobOptions) -> Result<Vec<u8>> {
    let imported = import_tflite(path, &Default::default())?;
    let written = match &imported.quantization {
        Some(given) => imported
            .network
            .to_blob_with_options(Encoding::Quantized(given), options),
        None => imported.network.to_blob_with(Encoding::F32, options.memory),
    };
    written.map_err(|e| anyhow::anyhow!("{}: writing the blob: {e}", path.display()))
}

impl Args {
    fn blob_options(&self) -> BlobOptions {
        BlobOptions {
            memory: self.memory,
            winograd: self.winograd,
        }
    }
}

/// Whether `path` holds a TensorFlow Lite flatbuffer (by its identifier, whatever
/// its name).
pub fn holds_tflite(path: &std::path::Path) -> Result<bool> {
    use std::io::Read;
    let mut head = [0u8; 8];
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let n = file
        .read(&mut head)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(is_tflite(&head[..n]))
}

/// Loads `--calib` (or `default`) images for int8 calibration of a model with
/// `input` `(height, width)`.
fn calibration_images(
    args: &Args,
    default: Option<PathBuf>,
    input: (usize, usize),
) -> Result<(Dataset, PathBuf)> {
    let spec = args.calib.clone().or(default).with_context(|| {
        format!(
            "{}: int8 needs calibration images: give --calib DATA (the model's metadata does not name its training data)",
            args.model.display()
        )
    })?;
    let mut images = Dataset::load_unlabeled(&spec, input)?;
    images.truncate(args.calib_count);
    if images.is_empty() || args.calib_count == 0 {
        bail!("{}: the calibration set is empty", spec.display());
    }
    Ok((images, spec))
}

pub fn command(args: &Args) -> Result<()> {
    if holds_tflite(&args.model)? {
        return compile_tflite(args);
    }
    let started = Instant::now();
    let imported = import_onnx(&args.model, &args.preprocessing.flags()?)?;
    let lowered = started.elapsed().as_secs_f64();
    let calibration_data = if args.dtype == Dtype::Int8 {
        let input = &imported.network.input;
        Some(calibration_images(
            args,
            imported.training_data.clone(),
            (input.height, input.width),
        )?)
    } else {
        None
    };
    let calibrating = Instant::now();
    let bytes = to_blob(
        &imported.network,
        args.dtype,
        args.blob_options(),
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
    let fit = args.fit.fit(&model, bytes.len())?;
    check_fit(&fit)?;
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
            "fit": fit,
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
    if let Some(fit) = &fit {
        println!("\n{fit}");
    }
    Ok(())
}

/// Compiles a `.tflite` file: an int8 one with its own quantization (unless `--dtype`
/// asks for float), a float one as an ONNX file.
fn compile_tflite(args: &Args) -> Result<()> {
    let started = Instant::now();
    let imported: ImportedTflite = import_tflite(&args.model, &args.preprocessing.flags()?)?;
    let lowered = started.elapsed().as_secs_f64();
    let network = &imported.network;
    let given = imported
        .quantization
        .as_ref()
        .filter(|_| args.dtype == Dtype::Int8);
    if given.is_some() && args.calib.is_some() {
        bail!(
            "{}: an int8 .tflite keeps its own quantization; --calib calibrates float models only",
            args.model.display()
        );
    }
    let calibration_data = match (args.dtype, given) {
        (Dtype::Int8, None) => Some(calibration_images(
            args,
            None,
            (network.input.height, network.input.width),
        )?),
        _ => None,
    };
    let calibrating = Instant::now();
    let bytes = match given {
        Some(given) => network
            .to_blob_with_options(Encoding::Quantized(given), args.blob_options())
            .map_err(|e| anyhow::anyhow!("writing the blob: {e}"))?,
        None => to_blob(
            network,
            args.dtype,
            args.blob_options(),
            calibration_data.as_ref().map(|(images, _)| Int8Options {
                images,
                method: args.calibration,
                bias_correction: !args.no_bias_correction,
            }),
        )?,
    };
    let calibration_seconds = if calibration_data.is_some() {
        calibrating.elapsed().as_secs_f64()
    } else {
        0.0
    };
    let blob = AlignedBlob::new(&bytes);
    let model = Model::parse(blob.as_bytes())
        .map_err(|e| anyhow::anyhow!("the compiled blob does not validate: {e}"))?;
    let report = describe(&model)?;
    let fit = args.fit.fit(&model, bytes.len())?;
    check_fit(&fit)?;
    write_atomically(&args.output, &bytes)?;
    let seconds = started.elapsed().as_secs_f64();
    let quantization = if given.is_some() {
        "the model's own"
    } else if calibration_data.is_some() {
        "calibrated"
    } else {
        "none (float)"
    };
    if args.json {
        return print_json(&serde_json::json!({
            "tflite": args.model,
            "output": args.output,
            "file": imported.summary,
            "quantization": quantization,
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
            "fit": fit,
        }));
    }
    let softmax = if imported.softmax_dropped {
        ", final softmax dropped"
    } else {
        ""
    };
    println!(
        "{} ({} TensorFlow Lite, {} operators{softmax}) -> {}",
        args.model.display(),
        imported.summary.kind,
        imported.summary.operators.len(),
        args.output.display()
    );
    println!("int8 quantization: {quantization}");
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
    if let Some(fit) = &fit {
        println!("\n{fit}");
    }
    Ok(())
}
