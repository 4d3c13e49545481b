//! `tinyres eval`: a blob (or the blob a `.tflite` compiles to) on the host engine,
//! or an ONNX file through tract.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use tinyres_compile::eval::{evaluate, evaluate_onnx};
use tinyres_compile::onnx::read_onnx;
use tinyres_compile::writer::AlignedBlob;
use tinyres_compile::BlobOptions;
use tinyres_core::Model;
use tinyres_data::{folder_images, write_atomically, Dataset, Split};

use super::compile::{holds_tflite, tflite_blob};
use super::{load_blob, print_json, PreprocessingArgs};

/// Writes every image's raw output tensor (see `--outputs`).
fn write_outputs(blob: &[u8], data: &Dataset, path: &Path) -> Result<()> {
    use std::fmt::Write;
    let model = Model::parse(blob)?;
    let out = model.tensor(model.num_layers())?;
    let mut arena = vec![0u8; model.required_arena()];
    let mut interpreter = tinyres_core::Interpreter::new(model, &mut arena)?;
    let n = out.len();
    let mut csv = String::from("index");
    if !out.float {
        for i in 0..n {
            write!(csv, ",q{i}")?;
        }
    }
    for i in 0..n {
        write!(csv, ",v{i}")?;
    }
    csv.push('\n');
    let mut values = vec![0.0f32; n];
    for image in 0..data.len() {
        interpreter.run(data.image(image))?;
        write!(csv, "{image}")?;
        if !out.float {
            for &q in interpreter.output_bytes()? {
                write!(csv, ",{}", q as i8)?;
            }
        }
        interpreter.logits(&mut values)?;
        for v in &values {
            write!(csv, ",{v}")?;
        }
        csv.push('\n');
    }
    write_atomically(path, csv.as_bytes())
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The model: a blob (.trm), a TensorFlow Lite file (.tflite: compiled as
    /// `tinyres compile` does, then run by the engine) or an ONNX file (.onnx, run by
    /// tract).
    model: PathBuf,
    /// `synthetic`, an image folder (`DIR/test/<class>/*.png|jpg`, any sizes: resized and
    /// centre-cropped to the model's input), or a CIFAR-10 batch (.bin/.bin.gz) or
    /// directory (test_batch).
    #[arg(long)]
    data: PathBuf,
    /// Evaluate at most this many images.
    #[arg(long)]
    limit: Option<usize>,
    /// Write `index,file,label,predicted,label_name,predicted_name` rows to this CSV
    /// file (`file`: the image's path in an image folder's test/, empty for CIFAR-10
    /// and synthetic data).
    #[arg(long, value_name = "FILE.csv")]
    predictions: Option<PathBuf>,
    /// Write each image's raw output tensor to this CSV file: `index`, then the int8
    /// values `q0..` (an int8 output) and the values they stand for `v0..`
    /// (dequantized; an f32 output has these only). Blobs and .tflite files.
    #[arg(long, value_name = "FILE.csv")]
    outputs: Option<PathBuf>,
    /// Draw the confusion matrix into this PNG.
    #[arg(long, value_name = "FILE.png")]
    plot: Option<PathBuf>,
    #[command(flatten)]
    preprocessing: PreprocessingArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// The names of the first `count` images of an image folder's test split, relative to
/// it (`cat/0001.png`), or `None` for data that does not come from image files.
fn image_names(data: &Path, count: usize) -> Result<Option<Vec<String>>> {
    if !Dataset::is_image_folder(data) {
        return Ok(None);
    }
    let root = data.join("test");
    let images = folder_images(data, Split::Test)?;
    Ok(Some(
        images
            .files
            .iter()
            .take(count)
            .map(|(_, f)| {
                f.strip_prefix(&root)
                    .unwrap_or(f)
                    .to_string_lossy()
                    .into_owned()
            })
            .collect(),
    ))
}

pub fn command(args: &Args) -> Result<()> {
    let model = &args.model;
    // Images of another size are resized and centre-cropped to the model's input, as
    // torchvision evaluates.
    let load = |(height, width, _channels)| -> Result<Dataset> {
        let mut data = Dataset::load_fitted(&args.data, Split::Test, (height, width))?;
        if let Some(n) = args.limit {
            data.truncate(n);
        }
        Ok(data)
    };
    if args.outputs.is_some() && model.extension().is_some_and(|e| e == "onnx") {
        bail!(
            "--outputs writes a blob's output tensors: compile {} and evaluate the blob",
            model.display()
        );
    }
    let started = Instant::now();
    let (evaluation, data) = if model.extension().is_some_and(|e| e == "onnx") {
        let file = read_onnx(model, &args.preprocessing.flags()?)?;
        let data = load(file.input)?;
        (evaluate_onnx(&file, &data)?, data)
    } else {
        let blob = if holds_tflite(model)? {
            AlignedBlob::new(&tflite_blob(model, BlobOptions::default())?)
        } else {
            load_blob(model)?
        };
        let data = load(Model::parse(blob.as_bytes())?.input_shape())?;
        if let Some(path) = &args.outputs {
            write_outputs(blob.as_bytes(), &data, path)?;
        }
        (evaluate(blob.as_bytes(), &data)?, data)
    };

    let seconds = started.elapsed().as_secs_f64();
    if let Some(path) = &args.predictions {
        let files = image_names(&args.data, data.len())?;
        evaluation.write_predictions(path, files.as_deref())?;
    }
    if let Some(path) = &args.plot {
        let title = format!(
            "{}: {:.2} % top-1 on {} images",
            model.file_name().unwrap_or_default().to_string_lossy(),
            100.0 * evaluation.accuracy(),
            data.len()
        );
        let png =
            tinyres_plot::confusion_matrix(&evaluation.confusion, &evaluation.class_names, &title)?;
        write_atomically(path, &png)?;
    }
    if args.json {
        let mut value = evaluation.to_json();
        value["model"] = serde_json::json!(model);
        value["seconds"] = serde_json::json!(seconds);
        return print_json(&value);
    }
    println!(
        "{} on {} images ({seconds:.1} s)\n",
        model.display(),
        data.len()
    );
    print!("{}", evaluation.to_table());
    Ok(())
}
