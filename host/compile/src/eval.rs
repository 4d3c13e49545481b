//! Evaluating a model on the host: a blob with the engine, exactly as the device runs
//! it, or an ONNX file with tract.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tinyres_core::{Interpreter, Model};

use crate::onnx::OnnxFile;
use tinyres_data::Dataset;

/// Predictions and their tally.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evaluation {
    /// Predicted class of each image.
    pub predictions: Vec<usize>,
    /// True label of each image.
    pub labels: Vec<usize>,
    /// `confusion[label][predicted]`.
    pub confusion: Vec<Vec<u32>>,
    /// Class names (from the model, else from the data).
    pub class_names: Vec<String>,
}

/// One class's row of the report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClassAccuracy {
    /// Class index.
    pub class: usize,
    /// Class name.
    pub name: String,
    /// Images with this label.
    pub count: u32,
    /// Fraction of them predicted correctly.
    pub accuracy: f64,
}

/// Runs every image of `data` through the blob, on all cores (one arena each).
pub fn evaluate(blob: &[u8], data: &Dataset) -> Result<Evaluation> {
    let model = Model::parse(blob)?;
    let (h, w, c) = model.input_shape();
    if (h, w, c) != (data.height, data.width, data.channels) {
        bail!(
            "the model expects {h}x{w}x{c} images, the data holds {}x{}x{}",
            data.height,
            data.width,
            data.channels
        );
    }
    let classes = model.num_classes();
    if let Some(&bad) = data.labels.iter().find(|&&l| usize::from(l) >= classes) {
        bail!("the data has label {bad}, the model only {classes} classes");
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(data.len().max(1));
    let chunk = data.len().div_ceil(threads.max(1)).max(1);
    let mut predictions = vec![0usize; data.len()];
    std::thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = predictions
            .chunks_mut(chunk)
            .enumerate()
            .map(|(t, out)| {
                scope.spawn(move || -> Result<()> {
                    let mut arena = vec![0u8; model.required_arena()];
                    let mut interp = Interpreter::new(model, &mut arena)?;
                    for (k, p) in out.iter_mut().enumerate() {
                        *p = interp.run(data.image(t * chunk + k))?;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("an evaluation thread panicked"))??;
        }
        Ok(())
    })?;
    let names: Vec<String> = (0..classes)
        .map_while(|i| model.class_name(i).map(str::to_string))
        .collect();
    Ok(Evaluation::new(predictions, data, classes, &names))
}

/// The engine's logits for every image of `data` (for parity checks).
pub fn logits(blob: &[u8], data: &Dataset) -> Result<Vec<Vec<f32>>> {
    let model = Model::parse(blob)?;
    let mut arena = vec![0u8; model.required_arena()];
    let mut interpreter = Interpreter::new(model, &mut arena)?;
    let mut rows = Vec::with_capacity(data.len());
    for i in 0..data.len() {
        interpreter.run(data.image(i))?;
        let mut row = vec![0f32; model.num_classes()];
        interpreter.logits(&mut row)?;
        rows.push(row);
    }
    Ok(rows)
}

/// Runs every image of `data` through an ONNX model read by [`crate::onnx::read_onnx`], with
/// tract, preprocessed as the file's metadata (or the flags it was read with) says.
pub fn evaluate_onnx(file: &OnnxFile, data: &Dataset) -> Result<Evaluation> {
    let outputs = file.run(data)?;
    let classes = outputs.first().map_or(0, Vec::len);
    if let Some(&bad) = data.labels.iter().find(|&&l| usize::from(l) >= classes) {
        bail!("the data has label {bad}, the model only {classes} classes");
    }
    let predictions = outputs.iter().map(|row| argmax(row)).collect();
    Ok(Evaluation::new(
        predictions,
        data,
        classes,
        &file.class_names,
    ))
}

/// Index of the largest value: the engine's own argmax (first on ties, NaN skipped).
pub fn argmax(values: &[f32]) -> usize {
    tinyres_core::kernels::argmax(values).unwrap_or(0)
}

impl Evaluation {
    /// Tallies `predictions` against `data`'s labels; names come from the model,
    /// else from the data, else are the class numbers.
    pub fn new(
        predictions: Vec<usize>,
        data: &Dataset,
        classes: usize,
        model_names: &[String],
    ) -> Self {
        let labels: Vec<usize> = data.labels.iter().map(|&l| usize::from(l)).collect();
        let mut confusion = vec![vec![0u32; classes]; classes];
        for (&l, &p) in labels.iter().zip(&predictions) {
            confusion[l][p] += 1;
        }
        let class_names = (0..classes)
            .map(|i| {
                model_names
                    .get(i)
                    .or_else(|| data.class_names.get(i))
                    .cloned()
                    .unwrap_or_else(|| i.to_string())
            })
            .collect();
        Evaluation {
            predictions,
            labels,
            confusion,
            class_names,
        }
    }

    /// Top-1 accuracy.
    pub fn accuracy(&self) -> f64 {
        let correct = self
            .labels
            .iter()
            .zip(&self.predictions)
            .filter(|(l, p)| l == p)
            .count();
        correct as f64 / self.labels.len().max(1) as f64
    }

    /// Accuracy per class.
    pub fn per_class(&self) -> Vec<ClassAccuracy> {
        self.confusion
            .iter()
            .enumerate()
            .map(|(class, row)| {
                let count: u32 = row.iter().sum();
                ClassAccuracy {
                    class,
                    name: self.class_names[class].clone(),
                    count,
                    accuracy: if count == 0 {
                        0.0
                    } else {
                        f64::from(row[class]) / f64::from(count)
                    },
                }
            })
            .collect()
    }

    /// The report as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "count": self.labels.len(),
            "accuracy": self.accuracy(),
            "per_class": self.per_class(),
            "confusion": self.confusion,
        })
    }

    /// Accuracy, per-class accuracy and the confusion matrix as text.
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "top-1 accuracy  {:.2} % of {} images\n",
            100.0 * self.accuracy(),
            self.labels.len()
        );
        let _ = writeln!(
            s,
            "{:>3} {:<12} {:>6} {:>9}",
            "#", "class", "images", "accuracy"
        );
        for c in self.per_class() {
            let _ = writeln!(
                s,
                "{:>3} {:<12} {:>6} {:>8.1}%",
                c.class,
                c.name,
                c.count,
                100.0 * c.accuracy
            );
        }
        let _ = writeln!(s, "\nconfusion (rows: label, columns: predicted)");
        let _ = write!(s, "{:>4}", "");
        for p in 0..self.confusion.len() {
            let _ = write!(s, "{p:>6}");
        }
        let _ = writeln!(s);
        for (l, row) in self.confusion.iter().enumerate() {
            let _ = write!(s, "{l:>4}");
            for v in row {
                let _ = write!(s, "{v:>6}");
            }
            let _ = writeln!(s);
        }
        s
    }

    /// Writes `index,file,label,predicted,label_name,predicted_name` rows: `file`
    /// names each image where `files` gives them (an image folder's), and is empty
    /// otherwise.
    pub fn write_predictions(&self, path: &Path, files: Option<&[String]>) -> Result<()> {
        let name = |class: usize| {
            self.class_names
                .get(class)
                .map_or_else(String::new, |n| csv_field(n))
        };
        let mut csv = String::from("index,file,label,predicted,label_name,predicted_name\n");
        for (i, (&l, &p)) in self.labels.iter().zip(&self.predictions).enumerate() {
            let file = files
                .and_then(|f| f.get(i))
                .map_or_else(String::new, |f| csv_field(f));
            let _ = writeln!(csv, "{i},{file},{l},{p},{},{}", name(l), name(p));
        }
        std::fs::write(path, csv).with_context(|| format!("cannot write {}", path.display()))
    }
}

/// A CSV field: quoted (with quotes doubled) where it holds a comma, a quote or a
/// line break.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}
