//! `tinyres eval`: a blob on the host engine, or an ONNX file through tract.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use tinyres_compile::eval::{evaluate, evaluate_onnx};
use tinyres_compile::onnx::read_onnx;
use tinyres_core::Model;
use tinyres_data::{write_atomically, Dataset, Split};

use super::{load_blob, print_json, PreprocessingArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The model: a blob (.trm) or an ONNX file (.onnx).
    model: PathBuf,
    /// `synthetic`, an image folder (DIR/test/<class>/*.png|jpg, any sizes: resized and
    /// centre-cropped to the model's input), or a CIFAR-10 batch (.bin/.bin.gz) or
    /// directory (test_batch).
    #[arg(long)]
    data: PathBuf,
    /// Evaluate at most this many images.
    #[arg(long)]
    limit: Option<usize>,
    /// Write `index,label,predicted` rows to this CSV file.
    #[arg(long, value_name = "FILE.csv")]
    predictions: Option<PathBuf>,
    /// Draw the confusion matrix into this PNG.
    #[arg(long, value_name = "FILE.png")]
    plot: Option<PathBuf>,
    #[command(flatten)]
    preprocessing: PreprocessingArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
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
    let started = Instant::now();
    let (evaluation, data) = if model.extension().is_some_and(|e| e == "onnx") {
        let file = read_onnx(model, &args.preprocessing.flags()?)?;
        let data = load(file.input)?;
        (evaluate_onnx(&file, &data)?, data)
    } else {
        let blob = load_blob(model)?;
        let data = load(Model::parse(blob.as_bytes())?.input_shape())?;
        (evaluate(blob.as_bytes(), &data)?, data)
    };
    let seconds = started.elapsed().as_secs_f64();
    if let Some(path) = &args.predictions {
        evaluation.write_predictions(path)?;
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
