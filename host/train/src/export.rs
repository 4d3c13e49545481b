//! `tinyres export`: a trained run to ONNX, checked through tract before it is kept.
//!
//! The file: opset 18, input `input` (NCHW `f32`, batch dynamic, normalised as the
//! metadata says: `(pixel / 255 - mean) / std` per channel), output `logits`; metadata
//! keys `tinyres.*` hold the class names, the preprocessing and the architecture.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use burn::tensor::{Device, Tensor};
use burn_onnx::export::{AxisSpec, InputSpec, OnnxExporter};
use onnx_ir::{Message, ModelProto};
use serde::Serialize;

use crate::net::ResNet;
use crate::train::{self, TrainConfig};
use tinyres_data::{Dataset, Split};

/// Name of the graph input.
pub const INPUT_NAME: &str = "input";
/// Name of the graph output.
pub const OUTPUT_NAME: &str = "logits";
/// Largest difference allowed between tract and burn, relative to the logits' range.
pub const PARITY_BUDGET: f32 = 1e-4;

/// What `export` did and measured.
#[derive(Clone, Debug, Serialize)]
pub struct ExportReport {
    /// The ONNX file.
    pub onnx: PathBuf,
    /// Its size in bytes.
    pub bytes: usize,
    /// ONNX operator set.
    pub opset: i64,
    /// Images run through both burn and tract.
    pub images_checked: usize,
    /// Largest |tract - burn| over all logits.
    pub max_abs_diff: f32,
    /// Range (max - min) of burn's logits over the images.
    pub logit_range: f32,
    /// `max_abs_diff / logit_range`; at most [`PARITY_BUDGET`].
    pub relative_diff: f32,
    /// Images where tract's top-1 class equals burn's.
    pub top1_agreement: usize,
}

/// Exports `run_dir`'s model to `output`, then reads the file with tract, runs `check`
/// images of the run's test data through it and through burn, and keeps the file only
/// if they agree within [`PARITY_BUDGET`].
pub fn export(run_dir: &Path, output: &Path, check: usize) -> Result<ExportReport> {
    let config = TrainConfig::load(run_dir)?;
    // Two copies: the exporter moves its clone to a capture device, and clones share
    // batch-norm state (CONTRIBUTING.md, "burn 0.22 notes", pitfall 6).
    let reference = train::load_model(run_dir, &config)?;
    let for_export = train::load_model(run_dir, &config)?;
    let bytes = onnx_bytes(&for_export, &config)?;

    let mut data = Dataset::load_fitted(
        config.test_data.as_deref().unwrap_or(&config.data),
        Split::Test,
        config.input_size(),
    )?;
    data.truncate(check.max(1));
    let expected = train::predict(&reference, &data, &config)?;
    let got = tract_run::run_tract(&bytes, &data, &config)?;

    let (mut max_abs_diff, mut low, mut high) = (0f32, f32::INFINITY, f32::NEG_INFINITY);
    let mut top1_agreement = 0;
    for (e, g) in expected.iter().zip(&got) {
        for (a, b) in e.iter().zip(g) {
            max_abs_diff = max_abs_diff.max((a - b).abs());
            low = low.min(*a);
            high = high.max(*a);
        }
        top1_agreement +=
            usize::from(tinyres_compile::eval::argmax(e) == tinyres_compile::eval::argmax(g));
    }
    let logit_range = (high - low).max(f32::MIN_POSITIVE);
    let relative_diff = max_abs_diff / logit_range;
    ensure!(
        relative_diff <= PARITY_BUDGET,
        "tract disagrees with burn on the exported model: max |diff| {max_abs_diff:.3e} over a logit range of {logit_range:.3} ({relative_diff:.2e} > {PARITY_BUDGET:.0e}); {} not written",
        output.display()
    );
    tinyres_data::write_atomically(output, &bytes)?;
    Ok(ExportReport {
        onnx: output.to_path_buf(),
        bytes: bytes.len(),
        opset: 18,
        images_checked: data.len(),
        max_abs_diff,
        logit_range,
        relative_diff,
        top1_agreement,
    })
}

/// The model as ONNX bytes, with our input/output names and metadata.
fn onnx_bytes(model: &ResNet, config: &TrainConfig) -> Result<Vec<u8>> {
    let device = Device::flex();
    let (h, w, c) = config.arch.input;
    let sample = Tensor::<4>::zeros([2, c, h, w], &device);
    let validation = Tensor::<4>::zeros([3, c, h, w], &device);
    let specs = [InputSpec::new([
        AxisSpec::dynamic("batch"),
        AxisSpec::Static,
        AxisSpec::Static,
        AxisSpec::Static,
    ])];
    let onnx = OnnxExporter::new()
        .export_dynamic(model, sample, validation, &specs, ResNet::forward)
        .map_err(|e| anyhow::anyhow!("ONNX export of {}: {e}", config.arch.name))?;
    let mut proto =
        ModelProto::parse_from_bytes(onnx.as_bytes()).context("reading back the exported ONNX")?;
    let graph = proto.graph.as_mut().context("the export has no graph")?;
    ensure!(
        graph.input.len() == 1 && graph.output.len() == 1,
        "the export has {} inputs and {} outputs",
        graph.input.len(),
        graph.output.len()
    );
    let renames = [
        (graph.input[0].name.clone(), INPUT_NAME),
        (graph.output[0].name.clone(), OUTPUT_NAME),
    ];
    for (old, new) in &renames {
        for node in graph.node.iter_mut() {
            for name in node.input.iter_mut().chain(node.output.iter_mut()) {
                if name == old {
                    *name = new.to_string();
                }
            }
        }
    }
    // ONNX's Pad takes its constant value as a scalar; burn writes a one-element
    // vector, which tract refuses.
    let pad_values: Vec<String> = graph
        .node
        .iter()
        .filter(|n| n.op_type == "Pad" && n.input.len() > 2)
        .map(|n| n.input[2].clone())
        .collect();
    for initializer in graph.initializer.iter_mut() {
        if pad_values.contains(&initializer.name) && initializer.dims == [1] {
            initializer.dims.clear();
        }
    }
    for node in graph.node.iter_mut() {
        if node.op_type == "Constant" && node.output.iter().any(|o| pad_values.contains(o)) {
            for attribute in node.attribute.iter_mut() {
                if let Some(t) = attribute.t.as_mut() {
                    if t.dims == [1] {
                        t.dims.clear();
                    }
                }
            }
        }
    }
    graph.input[0].name = INPUT_NAME.into();
    graph.output[0].name = OUTPUT_NAME.into();
    graph.name = config.arch.name.clone();

    proto.producer_name = "tinyres".into();
    proto.producer_version = env!("CARGO_PKG_VERSION").into();
    proto.doc_string = format!(
        "{}. Input `{INPUT_NAME}`: NCHW float32, (pixel / 255 - mean) / std per channel (RGB). Output `{OUTPUT_NAME}`: one score per class.",
        config.arch
    );
    let metadata = [
        ("tinyres.arch", config.arch.name.clone()),
        ("tinyres.layout", "NCHW".to_string()),
        ("tinyres.input_range", "0..1".to_string()),
        ("tinyres.data", config.data.display().to_string()),
        ("tinyres.mean", serde_json::to_string(&config.mean)?),
        ("tinyres.std", serde_json::to_string(&config.std)?),
        (
            "tinyres.class_names",
            serde_json::to_string(&config.class_names)?,
        ),
    ];
    for (key, value) in metadata {
        proto.metadata_props.push(Default::default());
        let entry = proto.metadata_props.last_mut().expect("just pushed");
        entry.key = key.into();
        entry.value = value;
    }
    proto.write_to_bytes().context("writing the ONNX protobuf")
}

/// The tract side of the check, apart: tract's prelude has its own `Tensor`.
mod tract_run {
    use anyhow::{Context, Result};
    use tract_onnx::prelude::*;

    use crate::train::{batch_tensor_data, Crop, TrainConfig};
    use tinyres_data::Dataset;

    /// Logits of `data` from an ONNX model run by tract, with the run's preprocessing.
    pub fn run_tract(bytes: &[u8], data: &Dataset, config: &TrainConfig) -> Result<Vec<Vec<f32>>> {
        let (h, w, c) = config.arch.input;
        let n = data.len();
        let model = onnx()
            .model_for_read(&mut std::io::Cursor::new(bytes))
            .context("tract cannot read the exported ONNX")?
            .with_input_fact(0, f32::fact([n, c, h, w]).into())?
            .into_optimized()
            .context("tract cannot optimise the exported ONNX")?
            .into_runnable()?;
        let indices: Vec<usize> = (0..n).collect();
        let pixels = batch_tensor_data(
            data,
            &indices,
            &vec![Crop::NONE; n],
            &config.mean,
            &config.std,
        );
        let input = tract_ndarray::Array4::from_shape_vec((n, c, h, w), pixels)?;
        let outputs = model.run(tvec!(Tensor::from(input).into()))?;
        let logits = outputs[0].to_plain_array_view::<f32>()?;
        let classes = logits.shape()[1];
        let flat: Vec<f32> = logits.iter().copied().collect();
        Ok(flat.chunks(classes).map(<[f32]>::to_vec).collect())
    }
}
