//! TensorFlow Lite models (`.tflite`) lowered to the engine's layer set.
//!
//! The file is read with the checked flatbuffer reader of [`flatbuffer`], not with
//! tract: tract's TFLite front end turns quantized tensors into its own datum types,
//! which hold one scale and zero point per tensor, so a convolution's per-channel
//! weight scales would not reach us as the file states them. Here every scale, zero
//! point, int8 weight and int32 bias is taken as stored, and the writer derives the
//! requantization from them exactly as TFLite does ([`GivenQuantization`]). A float
//! model is lowered with its float weights and compiles as an ONNX model does.
//!
//! The lowering follows the operators in the file's order. A convolution whose output
//! only an ADD reads takes that ADD as its residual add; RESHAPE, SQUEEZE and the
//! DEQUANTIZE of the output are views; a PAD is folded into the convolution after it;
//! a QUANTIZE of the float input is the engine's own input quantization.

pub mod flatbuffer;

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use tinyres_core::format::InputRange;

use crate::onnx::{Preprocessing, PreprocessingFlags};
use crate::writer::{
    ConvSpec, DenseSpec, GivenQuantization, InputSpec, LayerSpec, MaxPoolSpec, Network,
    QuantizedParameters, ResidualSpec,
};
use flatbuffer::{Table, Vector};

/// A `.tflite` file starts with a root offset, then this identifier.
pub const FILE_IDENTIFIER: [u8; 4] = *b"TFL3";

/// Whether `bytes` look like a TensorFlow Lite flatbuffer.
pub fn is_tflite(bytes: &[u8]) -> bool {
    bytes.get(4..8) == Some(&FILE_IDENTIFIER[..])
}

/// A `.tflite` model lowered to the engine.
#[derive(Clone, Debug)]
pub struct ImportedTflite {
    /// The network in the engine's layer set. Weights are float: an int8 model's
    /// dequantized, for the float blob and the host's float reference.
    pub network: Network,
    /// An int8 model's own quantization, for [`crate::writer::Encoding::Quantized`].
    pub quantization: Option<GivenQuantization>,
    /// How raw pixels become the input.
    pub preprocessing: Preprocessing,
    /// A float model's final softmax, dropped: the engine's logits rank the same. An
    /// int8 model keeps its softmax, so that its output bytes are TFLite's.
    pub softmax_dropped: bool,
    /// What the file holds.
    pub summary: Summary,
}

/// What a `.tflite` file holds.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// The schema version the file states.
    pub schema_version: u32,
    /// The converter's description string.
    pub description: String,
    /// Operators of the graph, by name, in order.
    pub operators: Vec<String>,
    /// `int8` or `float32`.
    pub kind: &'static str,
}

/// Reads and lowers a `.tflite` file.
pub fn import_tflite(path: &Path, flags: &PreprocessingFlags) -> Result<ImportedTflite> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    lower_tflite(&bytes, flags).with_context(|| format!("{}", path.display()))
}

/// TensorFlow Lite's names of its built-in operators, by code (`BuiltinOperator` in
/// `schema.fbs`), as far as a ResNet converter's output and its near neighbours go.
const OPERATOR_NAMES: [&str; 61] = [
    "ADD",
    "AVERAGE_POOL_2D",
    "CONCATENATION",
    "CONV_2D",
    "DEPTHWISE_CONV_2D",
    "DEPTH_TO_SPACE",
    "DEQUANTIZE",
    "EMBEDDING_LOOKUP",
    "FLOOR",
    "FULLY_CONNECTED",
    "HASHTABLE_LOOKUP",
    "L2_NORMALIZATION",
    "L2_POOL_2D",
    "LOCAL_RESPONSE_NORMALIZATION",
    "LOGISTIC",
    "LSH_PROJECTION",
    "LSTM",
    "MAX_POOL_2D",
    "MUL",
    "RELU",
    "RELU_N1_TO_1",
    "RELU6",
    "RESHAPE",
    "RESIZE_BILINEAR",
    "RNN",
    "SOFTMAX",
    "SPACE_TO_DEPTH",
    "SVDF",
    "TANH",
    "CONCAT_EMBEDDINGS",
    "SKIP_GRAM",
    "CALL",
    "CUSTOM",
    "EMBEDDING_LOOKUP_SPARSE",
    "PAD",
    "UNIDIRECTIONAL_SEQUENCE_RNN",
    "GATHER",
    "BATCH_TO_SPACE_ND",
    "SPACE_TO_BATCH_ND",
    "TRANSPOSE",
    "MEAN",
    "SUB",
    "DIV",
    "SQUEEZE",
    "UNIDIRECTIONAL_SEQUENCE_LSTM",
    "STRIDED_SLICE",
    "BIDIRECTIONAL_SEQUENCE_RNN",
    "EXP",
    "TOPK_V2",
    "SPLIT",
    "LOG_SOFTMAX",
    "DELEGATE",
    "BIDIRECTIONAL_SEQUENCE_LSTM",
    "CAST",
    "PRELU",
    "MAXIMUM",
    "ARG_MAX",
    "MINIMUM",
    "LESS",
    "NEG",
    "PADV2",
];

mod op {
    pub const ADD: i32 = 0;
    pub const AVERAGE_POOL_2D: i32 = 1;
    pub const CONV_2D: i32 = 3;
    pub const DEQUANTIZE: i32 = 6;
    pub const FULLY_CONNECTED: i32 = 9;
    pub const MAX_POOL_2D: i32 = 17;
    pub const RESHAPE: i32 = 22;
    pub const SOFTMAX: i32 = 25;
    pub const CUSTOM: i32 = 32;
    pub const PAD: i32 = 34;
    pub const MEAN: i32 = 40;
    pub const SQUEEZE: i32 = 43;
    pub const STRIDED_SLICE: i32 = 45;
    pub const QUANTIZE: i32 = 114;
}

/// `TensorType` codes.
mod dtype {
    pub const FLOAT32: u8 = 0;
    pub const FLOAT16: u8 = 1;
    pub const INT32: u8 = 2;
    pub const INT8: u8 = 9;

    pub fn name(code: u8) -> String {
        const NAMES: [&str; 18] = [
            "FLOAT32",
            "FLOAT16",
            "INT32",
            "UINT8",
            "INT64",
            "STRING",
            "BOOL",
            "INT16",
            "COMPLEX64",
            "INT8",
            "FLOAT64",
            "COMPLEX128",
            "UINT64",
            "RESOURCE",
            "VARIANT",
            "UINT32",
            "UINT16",
            "INT4",
        ];
        NAMES
            .get(usize::from(code))
            .map_or_else(|| format!("type {code}"), |n| n.to_string())
    }
}

/// `ActivationFunctionType` codes.
mod activation {
    pub const NONE: u8 = 0;
    pub const RELU: u8 = 1;
    pub const RELU6: u8 = 3;
}

fn operator_name(code: i32, custom: Option<&str>) -> String {
    match (code, custom) {
        (op::CUSTOM, Some(name)) => format!("CUSTOM {name:?}"),
        (op::QUANTIZE, _) => "QUANTIZE".to_string(),
        _ => usize::try_from(code)
            .ok()
            .and_then(|c| OPERATOR_NAMES.get(c))
            .map_or_else(|| format!("builtin operator {code}"), |n| n.to_string()),
    }
}

/// A tensor's quantization as the file states it.
#[derive(Clone, Debug, Default)]
struct Quantization {
    scales: Vec<f32>,
    zero_points: Vec<i64>,
    dimension: i32,
}

#[derive(Clone, Debug)]
struct Tensor<'a> {
    name: String,
    shape: Vec<i32>,
    dtype: u8,
    /// The constant data, when the tensor has any.
    data: Option<&'a [u8]>,
    quantization: Quantization,
}

impl Tensor<'_> {
    fn describe(&self, index: usize) -> String {
        format!("tensor {index} {:?}", self.name)
    }

    /// The one `(scale, zero point)` of an activation.
    fn per_tensor(&self, index: usize) -> Result<(f32, i32)> {
        let q = &self.quantization;
        ensure!(
            q.scales.len() == 1 && q.zero_points.len() == 1,
            "{} has {} scales and {} zero points: an activation needs one of each",
            self.describe(index),
            q.scales.len(),
            q.zero_points.len()
        );
        let (scale, zero_point) = (q.scales[0], q.zero_points[0]);
        ensure!(
            scale.is_finite() && scale > 0.0 && (-128..=127).contains(&zero_point),
            "{}: scale {scale} and zero point {zero_point} (int8 needs a positive scale and a zero point in -128..=127)",
            self.describe(index)
        );
        Ok((scale, zero_point as i32))
    }
}

#[derive(Clone, Debug)]
struct Operator<'a> {
    code: i32,
    name: String,
    inputs: Vec<i32>,
    outputs: Vec<i32>,
    options: Option<Table<'a>>,
}

/// The file's graph, checked for structure.
struct Graph<'a> {
    tensors: Vec<Tensor<'a>>,
    operators: Vec<Operator<'a>>,
    inputs: Vec<i32>,
    outputs: Vec<i32>,
    summary: Summary,
}

fn read_graph(bytes: &[u8]) -> Result<Graph<'_>> {
    let model = flatbuffer::root(bytes, &FILE_IDENTIFIER)
        .map_err(|e| anyhow::anyhow!("not a TensorFlow Lite model: {e}"))?;
    let version = model.u32(0, 0)?;
    ensure!(
        version == 3,
        "schema version {version}: the reader takes TFLite schema version 3"
    );
    let codes = model
        .vector(1, 4, "the operator codes")?
        .context("the model has no operator codes")?;
    let mut operator_codes = Vec::with_capacity(codes.len());
    for i in 0..codes.len() {
        let code = codes.table(i, "an operator code")?;
        let deprecated = i32::from(code.u8(0, 0)? as i8);
        let builtin = code.i32(3, 0)?;
        let custom = code.string(1, "a custom operator name")?;
        operator_codes.push((deprecated.max(builtin), custom));
    }
    let subgraphs = model
        .vector(2, 4, "the subgraphs")?
        .context("the model has no subgraph")?;
    ensure!(
        subgraphs.len() == 1,
        "{} subgraphs: the engine runs models of one graph (no control flow)",
        subgraphs.len()
    );
    let subgraph = subgraphs.table(0, "the subgraph")?;
    let description = model.string(3, "the description")?.unwrap_or_default();
    let buffers = match model.vector(4, 4, "the buffers")? {
        Some(v) => v,
        None => bail!("the model has no buffers"),
    };
    let mut buffer_data: Vec<Option<&[u8]>> = Vec::with_capacity(buffers.len());
    for i in 0..buffers.len() {
        let buffer = buffers.table(i, "a buffer")?;
        ensure!(
            buffer.u64(1, 0)? <= 1 && buffer.u64(2, 0)? == 0,
            "buffer {i} is stored outside the flatbuffer (the format for models over 2 GB), which the reader does not take"
        );
        buffer_data.push(
            buffer
                .vector(0, 1, "a buffer's data")?
                .map(|v| v.bytes())
                .filter(|d| !d.is_empty()),
        );
    }

    let tensor_tables = subgraph
        .vector(0, 4, "the tensors")?
        .context("the graph has no tensors")?;
    let mut tensors = Vec::with_capacity(tensor_tables.len());
    for i in 0..tensor_tables.len() {
        let t = tensor_tables.table(i, "a tensor")?;
        let name = t.string(3, "a tensor name")?.unwrap_or_default();
        let shape = t.vector(0, 4, "a tensor shape")?.map(|v| v.i32s());
        let buffer = t.u32(2, 0)? as usize;
        let data = match buffer_data.get(buffer) {
            Some(data) => *data,
            None => bail!(
                "tensor {i} {name:?} refers to buffer {buffer}; the model has {}",
                buffer_data.len()
            ),
        };
        ensure!(
            t.table(6, "sparsity parameters")?.is_none(),
            "tensor {i} {name:?} is sparse, which the engine does not take"
        );
        let quantization = match t.table(4, "quantization parameters")? {
            None => Quantization::default(),
            Some(q) => {
                ensure!(
                    q.u8(4, 0)? == 0,
                    "tensor {i} {name:?} has custom quantization details, which the engine does not take"
                );
                Quantization {
                    scales: q
                        .vector(2, 4, "scales")?
                        .map_or_else(Vec::new, |v| v.f32s()),
                    zero_points: q
                        .vector(3, 8, "zero points")?
                        .map_or_else(Vec::new, |v| v.i64s()),
                    dimension: q.i32(6, 0)?,
                }
            }
        };
        let shape = match shape {
            Some(shape) => shape,
            None => bail!("tensor {i} {name:?} has no shape"),
        };
        ensure!(
            shape.iter().all(|&d| d >= 0) && shape.len() <= 8,
            "tensor {i} {name:?} has shape {shape:?}: the engine needs fixed, non-negative dimensions"
        );
        // Bounded here, so that no product of a tensor's dimensions overflows later.
        element_count(&shape).with_context(|| format!("tensor {i} {name:?}"))?;
        tensors.push(Tensor {
            name,
            shape,
            dtype: t.u8(1, 0)?,
            data,
            quantization,
        });
    }
    let index_list = |v: Option<Vector<'_>>, what: &str| -> Result<Vec<i32>> {
        let list = v.map_or_else(Vec::new, |v| v.i32s());
        for &t in &list {
            ensure!(
                t == -1 || (0..tensors.len() as i64).contains(&i64::from(t)),
                "{what} names tensor {t}; the graph has {}",
                tensors.len()
            );
        }
        Ok(list)
    };
    let inputs = index_list(
        subgraph.vector(1, 4, "the graph inputs")?,
        "the graph input",
    )?;
    let outputs = index_list(
        subgraph.vector(2, 4, "the graph outputs")?,
        "the graph output",
    )?;
    let operator_tables = subgraph
        .vector(3, 4, "the operators")?
        .context("the graph has no operators")?;
    let mut operators = Vec::with_capacity(operator_tables.len());
    for i in 0..operator_tables.len() {
        let o = operator_tables.table(i, "an operator")?;
        let opcode = o.u32(0, 0)? as usize;
        let Some((code, custom)) = operator_codes.get(opcode) else {
            bail!(
                "operator {i} uses operator code {opcode}; the model has {}",
                operator_codes.len()
            );
        };
        let name = operator_name(*code, custom.as_deref());
        let what = format!("operator {i} ({name})");
        operators.push(Operator {
            code: *code,
            inputs: index_list(
                o.vector(1, 4, "operator inputs")?,
                &format!("{what}'s input"),
            )?,
            outputs: index_list(
                o.vector(2, 4, "operator outputs")?,
                &format!("{what}'s output"),
            )?,
            options: o.table(4, "builtin options")?,
            name,
        });
    }
    let kind = if tensors
        .iter()
        .any(|t| t.dtype == dtype::INT8 && t.data.is_some())
    {
        "int8"
    } else {
        "float32"
    };
    let summary = Summary {
        schema_version: version,
        description,
        operators: operators.iter().map(|o| o.name.clone()).collect(),
        kind,
    };
    Ok(Graph {
        tensors,
        operators,
        inputs,
        outputs,
        summary,
    })
}

/// A layer before the engine's tensors are numbered: it reads and writes file
/// tensors.
#[derive(Clone, Debug)]
struct Node {
    /// The layer, with file tensor indices where the engine's ids go.
    layer: LayerSpec,
    output: usize,
    /// Where the layer runs: its operator's index, or the ADD's it took in.
    order: usize,
    parameters: Option<QuantizedParameters>,
    /// The convolution's own output tensor, before a residual add taken in.
    pre_add: Option<usize>,
}

/// A shortcut view: output `(y, x, c)` reads `(y · stride, x · stride, c −
/// channel_offset)` of `source`, zero (the zero point in int8) in the padded channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Shortcut {
    source: usize,
    stride: usize,
    channel_offset: usize,
    /// `(height, width, channels)` of the view.
    dims: (usize, usize, usize),
}

/// The state of the lowering.
struct Lowering<'g, 'a> {
    graph: &'g Graph<'a>,
    int8: bool,
    nodes: Vec<Node>,
    /// The node writing each file tensor.
    producer: HashMap<usize, usize>,
    /// File tensors that are views of others (RESHAPE, SQUEEZE, DEQUANTIZE).
    alias: HashMap<usize, usize>,
    /// Views that flatten: only a dense layer or a softmax may read them.
    flattened: std::collections::HashSet<usize>,
    /// PAD outputs: the padded tensor and `[top, left, bottom, right]`.
    pads: HashMap<usize, (usize, [usize; 4])>,
    /// Option-A shortcuts (a STRIDED_SLICE subsampling height and width, a PAD of
    /// channels, or both): the tensor they map and how, for the ADD that reads them.
    shortcuts: HashMap<usize, Shortcut>,
    /// How many operators (and graph outputs) read each file tensor.
    readers: Vec<usize>,
    /// The file tensor the engine's input is (the graph's input, or its QUANTIZE).
    input: usize,
    softmax_dropped: bool,
}

/// Lowers the bytes of a `.tflite` file (the `tflite_import` fuzz target's entry).
pub fn lower_tflite(bytes: &[u8], flags: &PreprocessingFlags) -> Result<ImportedTflite> {
    let graph = read_graph(bytes)?;
    ensure!(
        graph.inputs.len() == 1 && graph.outputs.len() == 1,
        "the graph has {} inputs and {} outputs: the engine classifies one image into one output",
        graph.inputs.len(),
        graph.outputs.len()
    );
    let input = usize::try_from(graph.inputs[0]).context("the graph input is tensor -1")?;
    let input_tensor = &graph.tensors[input];
    ensure!(
        input_tensor.shape.len() == 4 && input_tensor.shape[0] == 1,
        "the input {} has shape {:?}: the engine takes one NHWC image, [1, height, width, channels]",
        input_tensor.describe(input),
        input_tensor.shape
    );
    ensure!(
        matches!(input_tensor.dtype, dtype::INT8 | dtype::FLOAT32),
        "the input {} is {}: the engine takes int8 or float32 inputs (convert with inference_input_type=tf.int8)",
        input_tensor.describe(input),
        dtype::name(input_tensor.dtype)
    );
    let mut readers = vec![0usize; graph.tensors.len()];
    for o in &graph.operators {
        for &t in &o.inputs {
            if let Ok(t) = usize::try_from(t) {
                readers[t] += 1;
            }
        }
    }
    for &t in &graph.outputs {
        if let Ok(t) = usize::try_from(t) {
            readers[t] += 1;
        }
    }
    let int8 = graph.summary.kind == "int8";
    let mut lowering = Lowering {
        graph: &graph,
        int8,
        nodes: Vec::new(),
        producer: HashMap::new(),
        alias: HashMap::new(),
        flattened: Default::default(),
        pads: HashMap::new(),
        shortcuts: HashMap::new(),
        readers,
        input,
        softmax_dropped: false,
    };
    // Operators that could not be lowered, and those downstream of them (not reported
    // again: the first failure is the one to fix).
    let mut refused = Vec::new();
    let mut failed = std::collections::HashSet::new();
    let mut downstream = 0;
    for (index, operator) in graph.operators.iter().enumerate() {
        let outputs = operator
            .outputs
            .iter()
            .filter_map(|&t| usize::try_from(t).ok());
        if operator
            .inputs
            .iter()
            .any(|&t| usize::try_from(t).is_ok_and(|t| failed.contains(&t)))
        {
            failed.extend(outputs);
            downstream += 1;
            continue;
        }
        if let Err(e) = lowering.lower(index, operator) {
            failed.extend(outputs);
            refused.push(format!("operator {index} ({}): {e:#}", operator.name));
        }
    }
    if !refused.is_empty() {
        let after = if downstream > 0 {
            format!(" (and {downstream} operator(s) that read their outputs)")
        } else {
            String::new()
        };
        bail!(
            "{} operator(s) the engine cannot run{after}:\n  {}",
            refused.len(),
            refused.join("\n  ")
        );
    }
    lowering.finish(flags)
}

/// `[top, left, bottom, right]` padding and the output size of TFLite's SAME or VALID
/// padding (`Padding` code 0 or 1) over `(h, w)`.
fn tflite_padding(
    padding: u8,
    (h, w): (usize, usize),
    (kh, kw): (usize, usize),
    stride: usize,
) -> Result<([usize; 4], (usize, usize))> {
    ensure!(
        h >= 1 && w >= 1 && kh >= 1 && kw >= 1 && stride >= 1,
        "a {kh}x{kw} window of stride {stride} over a {h}x{w} input"
    );
    match padding {
        // SAME: the output is ceil(in / stride); the odd pixel of padding goes at the
        // bottom and the right.
        0 => {
            let out = |n: usize| n.div_ceil(stride);
            let total = |n: usize, k: usize| ((out(n) - 1) * stride + k).saturating_sub(n);
            let (th, tw) = (total(h, kh), total(w, kw));
            Ok(([th / 2, tw / 2, th - th / 2, tw - tw / 2], (out(h), out(w))))
        }
        1 => {
            ensure!(
                kh <= h && kw <= w,
                "a {kh}x{kw} window with VALID padding over a {h}x{w} input"
            );
            Ok(([0; 4], ((h - kh) / stride + 1, (w - kw) / stride + 1)))
        }
        other => bail!("padding code {other} (expected SAME or VALID)"),
    }
}

impl Lowering<'_, '_> {
    fn tensor(&self, t: usize) -> &Tensor<'_> {
        &self.graph.tensors[t]
    }

    /// An operator's input `i`, a file tensor index.
    fn input_of(&self, operator: &Operator<'_>, i: usize) -> Result<usize> {
        let t = *operator
            .inputs
            .get(i)
            .with_context(|| format!("input {i} is missing"))?;
        usize::try_from(t).with_context(|| format!("input {i} is absent"))
    }

    fn output_of(&self, operator: &Operator<'_>) -> Result<usize> {
        ensure!(
            operator.outputs.len() == 1,
            "{} outputs (expected one)",
            operator.outputs.len()
        );
        usize::try_from(operator.outputs[0]).context("the output is absent")
    }

    /// The activation tensor `t` is, through views.
    fn resolve(&self, mut t: usize) -> usize {
        while let Some(&a) = self.alias.get(&t) {
            t = a;
        }
        t
    }

    /// An operator's activation input: the tensor it stands for, which the engine
    /// computes, and its `(height, width, channels)`.
    fn activation(&self, t: usize, spatial: bool) -> Result<(usize, (usize, usize, usize))> {
        let tensor = self.tensor(t);
        ensure!(
            tensor.data.is_none(),
            "{} is a constant where an activation is expected",
            tensor.describe(t)
        );
        ensure!(
            !self.pads.contains_key(&t),
            "{} is the output of a PAD, which the engine folds into a CONV_2D only",
            tensor.describe(t)
        );
        ensure!(
            !self.shortcuts.contains_key(&t),
            "{} subsamples or pads channels, which the engine does only in a residual ADD's shortcut",
            tensor.describe(t)
        );
        let resolved = self.resolve(t);
        ensure!(
            resolved == self.input || self.producer.contains_key(&resolved),
            "{} is not computed by any operator the engine runs",
            tensor.describe(t)
        );
        ensure!(
            !(spatial && self.flattened.contains(&t)),
            "{} is a flattened view, which only FULLY_CONNECTED and SOFTMAX read",
            tensor.describe(t)
        );
        let shape = &self.tensor(resolved).shape;
        let dims = match shape[..] {
            [1, h, w, c] => (h as usize, w as usize, c as usize),
            // A dense layer's output.
            [1, n] if !spatial => (1, 1, n as usize),
            _ => bail!(
                "{} has shape {shape:?}: the engine's activations are [1, height, width, channels]",
                self.tensor(resolved).describe(resolved)
            ),
        };
        self.check_activation_type(t)?;
        Ok((resolved, dims))
    }

    fn check_activation_type(&self, t: usize) -> Result<()> {
        let tensor = self.tensor(t);
        let expected = if self.int8 {
            dtype::INT8
        } else {
            dtype::FLOAT32
        };
        ensure!(
            tensor.dtype == expected,
            "{} is {}, in a model whose activations are {}: the engine runs int8 or float32 activations, not a mix",
            tensor.describe(t),
            dtype::name(tensor.dtype),
            dtype::name(expected)
        );
        if self.int8 {
            tensor.per_tensor(t)?;
        }
        Ok(())
    }

    /// The fused activation of an operator: whether it is a ReLU. A RELU6 is one
    /// exactly when 6 lies at or above the int8 output's largest value, as it does
    /// for the ranges TFLite's converter gives ReLU6 outputs.
    fn fused_relu(&self, code: u8, output: usize) -> Result<bool> {
        match code {
            activation::NONE => Ok(false),
            activation::RELU => Ok(true),
            activation::RELU6 if self.int8 => {
                let (scale, zero_point) = self.tensor(output).per_tensor(output)?;
                let six = i64::from(zero_point) + (6.0 / scale).round() as i64;
                ensure!(
                    six >= 127,
                    "a fused RELU6 that clips inside the output's range (6.0 is int8 {six}): the engine's int8 ReLU clips at 0 only"
                );
                Ok(true)
            }
            activation::RELU6 => {
                bail!("a fused RELU6 in a float model: the engine's float ReLU clips at 0 only")
            }
            other => bail!("fused activation {other} (the engine fuses NONE, RELU and RELU6)"),
        }
    }

    /// Constant `t` as floats: float32 as stored, float16 widened.
    fn constant_floats(&self, t: usize) -> Result<Vec<f32>> {
        let tensor = self.tensor(t);
        let data = tensor
            .data
            .with_context(|| format!("{} has no data", tensor.describe(t)))?;
        let count = element_count(&tensor.shape)?;
        let floats: Vec<f32> = match tensor.dtype {
            dtype::FLOAT32 if data.len() == 4 * count => data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            dtype::FLOAT16 if data.len() == 2 * count => data
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => bail!(
                "{} is {} with {} bytes for {count} values: expected float32 weights",
                tensor.describe(t),
                dtype::name(other),
                data.len()
            ),
        };
        Ok(floats)
    }

    /// Constant `t` as `i32`s (INT32 data).
    fn constant_ints(&self, t: usize) -> Result<Vec<i32>> {
        let tensor = self.tensor(t);
        let data = tensor
            .data
            .with_context(|| format!("{} must be a constant", tensor.describe(t)))?;
        let count = element_count(&tensor.shape)?;
        ensure!(
            tensor.dtype == dtype::INT32 && data.len() == 4 * count,
            "{} is {} with {} bytes: expected {count} INT32 values",
            tensor.describe(t),
            dtype::name(tensor.dtype),
            data.len()
        );
        Ok(data
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// A convolution's or dense layer's weights `w` (`outputs` rows) and optional bias
    /// `b`, for an input of `input_scale`: float weights, and for an int8 model the
    /// stored ones with their per-channel scales.
    fn weights(
        &self,
        w: usize,
        b: Option<usize>,
        outputs: usize,
        input: usize,
    ) -> Result<(Vec<f32>, Vec<f32>, Option<QuantizedParameters>)> {
        let wt = self.tensor(w);
        let count = element_count(&wt.shape)?;
        if !self.int8 {
            let weights = self.constant_floats(w)?;
            let bias = match b {
                Some(b) => self.constant_floats(b)?,
                None => vec![0.0; outputs],
            };
            ensure!(
                bias.len() == outputs,
                "{} biases for {outputs} outputs",
                bias.len()
            );
            return Ok((weights, bias, None));
        }
        let data = wt
            .data
            .with_context(|| format!("{} must be a constant", wt.describe(w)))?;
        ensure!(
            wt.dtype == dtype::INT8 && data.len() == count,
            "{} is {} with {} bytes: the engine takes int8 weights ({count} bytes)",
            wt.describe(w),
            dtype::name(wt.dtype),
            data.len()
        );
        let q = &wt.quantization;
        let weight_scales = match q.scales.len() {
            1 => vec![q.scales[0]; outputs],
            n if n == outputs && q.dimension == 0 => q.scales.clone(),
            n => bail!(
                "{} has {n} scales along dimension {}: the engine takes one scale per output channel (dimension 0) or one for all",
                wt.describe(w),
                q.dimension
            ),
        };
        ensure!(
            weight_scales.iter().all(|s| s.is_finite() && *s > 0.0),
            "{} has a scale that is not positive",
            wt.describe(w)
        );
        ensure!(
            q.zero_points.len() == q.scales.len() && q.zero_points.iter().all(|&z| z == 0),
            "{} has non-zero weight zero points: the engine takes symmetric int8 weights",
            wt.describe(w)
        );
        let weights: Vec<i8> = data.iter().map(|&b| b as i8).collect();
        let bias = match b {
            Some(b) => {
                let bt = self.tensor(b);
                ensure!(
                    bt.dtype == dtype::INT32,
                    "{} is {}: an int8 model's biases are int32",
                    bt.describe(b),
                    dtype::name(bt.dtype)
                );
                self.constant_ints(b)?
            }
            None => vec![0; outputs],
        };
        ensure!(
            bias.len() == outputs,
            "{} biases for {outputs} outputs",
            bias.len()
        );
        let (input_scale, _) = self.tensor(input).per_tensor(input)?;
        let per_row = count / outputs.max(1);
        let float_weights = weights
            .iter()
            .enumerate()
            .map(|(i, &q)| f32::from(q) * weight_scales[i / per_row.max(1)])
            .collect();
        let float_bias = bias
            .iter()
            .zip(&weight_scales)
            .map(|(&b, &s)| (f64::from(b) * f64::from(input_scale) * f64::from(s)) as f32)
            .collect();
        Ok((
            float_weights,
            float_bias,
            Some(QuantizedParameters {
                weights,
                weight_scales,
                bias,
            }),
        ))
    }

    fn push(&mut self, index: usize, layer: LayerSpec, output: usize) {
        self.push_with(index, layer, output, None);
    }

    fn push_with(
        &mut self,
        index: usize,
        layer: LayerSpec,
        output: usize,
        parameters: Option<QuantizedParameters>,
    ) {
        self.producer.insert(output, self.nodes.len());
        self.nodes.push(Node {
            layer,
            output,
            order: index,
            parameters,
            pre_add: None,
        });
    }

    /// Whether `t`'s quantization equals `u`'s (int8), for operators that keep it.
    fn same_quantization(&self, t: usize, u: usize) -> Result<bool> {
        if !self.int8 {
            return Ok(true);
        }
        let (a, b) = (self.tensor(t).per_tensor(t)?, self.tensor(u).per_tensor(u)?);
        Ok(a.0.to_bits() == b.0.to_bits() && a.1 == b.1)
    }

    fn lower(&mut self, index: usize, operator: &Operator<'_>) -> Result<()> {
        let options = operator.options;
        let option_u8 = |id, default| options.map_or(Ok(default), |o| o.u8(id, default));
        let option_i32 = |id, default| options.map_or(Ok(default), |o| o.i32(id, default));
        match operator.code {
            op::CONV_2D => {
                let output = self.output_of(operator)?;
                let mut raw = self.input_of(operator, 0)?;
                // A PAD before the convolution becomes its padding.
                let mut extra = [0usize; 4];
                if let Some(&(padded, pads)) = self.pads.get(&raw) {
                    ensure!(
                        self.readers[raw] == 1,
                        "the output of a PAD read by more than this convolution"
                    );
                    raw = padded;
                    extra = pads;
                }
                let (x, (h, w, c)) = self.activation(raw, true)?;
                let weights = self.input_of(operator, 1)?;
                let wshape = &self.tensor(weights).shape;
                let [o, kh, kw, ci] = wshape[..] else {
                    bail!("weights of shape {wshape:?} (expected OHWI, 4 dimensions)");
                };
                let (o, kh, kw, ci) = (o as usize, kh as usize, kw as usize, ci as usize);
                ensure!(
                    ci == c,
                    "{kh}x{kw} weights over {ci} channels on an input of {c} channels (grouped convolutions are not supported)"
                );
                let stride_w = option_i32(1, 0)?;
                let stride_h = option_i32(2, 0)?;
                ensure!(
                    stride_w == stride_h && stride_w >= 1,
                    "strides {stride_h}x{stride_w}: the engine takes one stride, the same across and down"
                );
                let (dilation_w, dilation_h) = (option_i32(4, 1)?, option_i32(5, 1)?);
                ensure!(
                    dilation_w == 1 && dilation_h == 1,
                    "dilation {dilation_h}x{dilation_w}: the engine's convolutions are not dilated"
                );
                let stride = stride_w as usize;
                let (ph, pw) = (h + extra[0] + extra[2], w + extra[1] + extra[3]);
                let (mut padding, (oh, ow)) =
                    tflite_padding(option_u8(0, 0)?, (ph, pw), (kh, kw), stride)?;
                for (p, e) in padding.iter_mut().zip(extra) {
                    *p += e;
                }
                self.check_output(output, (oh, ow, o))?;
                let relu = self.fused_relu(option_u8(3, 0)?, output)?;
                let bias = operator
                    .inputs
                    .get(2)
                    .and_then(|&b| usize::try_from(b).ok());
                let (weights, bias, parameters) = self.weights(weights, bias, o, x)?;
                let layer = LayerSpec::Conv(ConvSpec {
                    input: x,
                    out_channels: o,
                    kernel: (kh, kw),
                    stride,
                    padding,
                    weights,
                    bias,
                    relu,
                    residual: None,
                });
                self.push_with(index, layer, output, parameters);
            }
            op::ADD => {
                let output = self.output_of(operator)?;
                let a = self.input_of(operator, 0)?;
                let b = self.input_of(operator, 1)?;
                // A side is an activation (a view of itself), or an option-A shortcut
                // view of one.
                let (va, vb) = (self.shortcut_view(a)?, self.shortcut_view(b)?);
                let (da, db) = (va.dims, vb.dims);
                ensure!(
                    da == db,
                    "an ADD of a {da:?} and a {db:?} tensor: the engine adds tensors of one shape"
                );
                self.check_output(output, da)?;
                let relu = self.fused_relu(option_u8(0, 0)?, output)?;
                // The side to take the add in: a convolution that nothing else reads;
                // of two, the one with the larger kernel (the block's main path, not a
                // 1×1 projection: the projection then runs first and the block's
                // input is free sooner), else the later one.
                let candidate = |t: usize, raw: usize| {
                    self.producer.get(&t).copied().filter(|&n| {
                        raw == t
                            && self.readers[t] == 1
                            && matches!(
                                &self.nodes[n].layer,
                                LayerSpec::Conv(ConvSpec { residual: None, .. })
                            )
                    })
                };
                let kernel = |n: usize| match &self.nodes[n].layer {
                    LayerSpec::Conv(c) => (c.kernel.0 * c.kernel.1, n),
                    _ => (0, n),
                };
                let (node, shortcut) = match (candidate(va.source, a), candidate(vb.source, b)) {
                    (Some(na), Some(nb)) if kernel(nb) > kernel(na) => (nb, va),
                    (Some(na), _) => (na, vb),
                    (None, Some(nb)) => (nb, va),
                    (None, None) => bail!(
                        "neither input is a convolution's output read only by this ADD: the engine adds a residual in the convolution that produces one side"
                    ),
                };
                let node_output = self.nodes[node].output;
                let pre_add = self.nodes[node].output;
                self.producer.remove(&node_output);
                let entry = &mut self.nodes[node];
                if let LayerSpec::Conv(conv) = &mut entry.layer {
                    conv.residual = Some(ResidualSpec {
                        tensor: shortcut.source,
                        stride: shortcut.stride,
                        channel_offset: shortcut.channel_offset,
                        relu,
                    });
                }
                entry.output = output;
                entry.order = index;
                entry.pre_add = Some(pre_add);
                self.producer.insert(output, node);
            }
            op::AVERAGE_POOL_2D | op::MAX_POOL_2D => {
                let output = self.output_of(operator)?;
                let (x, (h, w, c)) = self.activation(self.input_of(operator, 0)?, true)?;
                let (stride_w, stride_h) = (option_i32(1, 0)?, option_i32(2, 0)?);
                let (fw, fh) = (option_i32(3, 0)?, option_i32(4, 0)?);
                ensure!(
                    fw >= 1 && fh >= 1 && stride_w >= 1 && stride_w == stride_h,
                    "a {fh}x{fw} window with strides {stride_h}x{stride_w}: the engine takes one stride, the same across and down"
                );
                ensure!(
                    option_u8(5, 0)? == activation::NONE,
                    "a fused activation on a pool"
                );
                let kernel = (fh as usize, fw as usize);
                let stride = stride_w as usize;
                let (padding, (oh, ow)) = tflite_padding(option_u8(0, 0)?, (h, w), kernel, stride)?;
                self.check_output(output, (oh, ow, c))?;
                ensure!(
                    self.same_quantization(x, output)?,
                    "the pool's output is quantized differently from its input (TFLite's int8 pools keep it)"
                );
                if operator.code == op::AVERAGE_POOL_2D {
                    ensure!(
                        (oh, ow) == (1, 1) && kernel == (h, w),
                        "a {}x{} average pool over {h}x{w}: the engine pools globally (the window is the whole input)",
                        kernel.0,
                        kernel.1
                    );
                    self.push(index, LayerSpec::GlobalAvgPool { input: x }, output);
                } else {
                    let layer = LayerSpec::MaxPool(MaxPoolSpec {
                        input: x,
                        kernel,
                        stride,
                        padding,
                    });
                    self.push(index, layer, output);
                }
            }
            op::MEAN => {
                let output = self.output_of(operator)?;
                let (x, (_, _, c)) = self.activation(self.input_of(operator, 0)?, true)?;
                let mut axes = self.constant_ints(self.input_of(operator, 1)?)?;
                axes.sort_unstable();
                ensure!(
                    axes == [1, 2],
                    "a MEAN over axes {axes:?}: the engine averages over height and width (axes 1 and 2)"
                );
                self.check_elements(output, c)?;
                // int8: TFLite's MEAN arithmetic (it rounds unlike AVERAGE_POOL_2D and
                // may requantize); float: a global average pool.
                let layer = if self.int8 {
                    LayerSpec::Mean { input: x }
                } else {
                    LayerSpec::GlobalAvgPool { input: x }
                };
                self.push(index, layer, output);
            }
            op::FULLY_CONNECTED => {
                let output = self.output_of(operator)?;
                let raw = self.input_of(operator, 0)?;
                let (x, (h, w, c)) = self.activation(raw, false)?;
                let weights = self.input_of(operator, 1)?;
                let wshape = &self.tensor(weights).shape;
                let [o, i] = wshape[..] else {
                    bail!("weights of shape {wshape:?} (expected [outputs, inputs])");
                };
                let (o, i) = (o as usize, i as usize);
                ensure!(
                    i == h * w * c,
                    "{i} inputs per output on an input of {h}x{w}x{c} values"
                );
                ensure!(
                    option_u8(1, 0)? == 0,
                    "shuffled weights (weights_format SHUFFLED4x16INT8)"
                );
                self.check_elements(output, o)?;
                let relu = self.fused_relu(option_u8(0, 0)?, output)?;
                let bias = operator
                    .inputs
                    .get(2)
                    .and_then(|&b| usize::try_from(b).ok());
                let (weights, bias, parameters) = self.weights(weights, bias, o, x)?;
                let layer = LayerSpec::Dense(DenseSpec {
                    input: x,
                    out_features: o,
                    weights,
                    bias,
                    relu,
                });
                self.push_with(index, layer, output, parameters);
            }
            op::SOFTMAX => {
                let output = self.output_of(operator)?;
                let raw = self.input_of(operator, 0)?;
                let (x, (h, w, c)) = self.activation(raw, false)?;
                ensure!(
                    (h, w) == (1, 1),
                    "a softmax over a {h}x{w}x{c} tensor: the engine's softmax takes the logits"
                );
                self.check_elements(output, c)?;
                let beta = options.map_or(Ok(0.0), |o| o.f32(0, 0.0))?;
                if self.int8 {
                    let (scale, zero_point) = self.tensor(output).per_tensor(output)?;
                    ensure!(
                        scale == 1.0 / 256.0 && zero_point == -128,
                        "the int8 softmax's output has scale {scale} and zero point {zero_point}; TFLite's int8 softmax writes 1/256 and -128"
                    );
                    self.push(index, LayerSpec::Softmax { input: x, beta }, output);
                } else {
                    ensure!(
                        beta > 0.0,
                        "softmax beta {beta}: a float model's softmax is dropped (the logits rank the same) only for a positive beta"
                    );
                    ensure!(
                        self.graph.outputs.iter().any(|&o| o as usize == output),
                        "a softmax that is not the model's output"
                    );
                    self.alias.insert(output, raw);
                    self.flattened.insert(output);
                    self.softmax_dropped = true;
                }
            }
            op::RESHAPE | op::SQUEEZE => {
                let output = self.output_of(operator)?;
                let raw = self.input_of(operator, 0)?;
                let (x, (h, w, c)) = self.activation(raw, false)?;
                self.check_elements(output, h * w * c)?;
                ensure!(
                    self.same_quantization(x, output)?,
                    "the output is quantized differently from the input"
                );
                self.alias.insert(output, raw);
                let shape = &self.tensor(output).shape;
                if shape.len() != 4 || shape[..] != self.tensor(x).shape[..] {
                    self.flattened.insert(output);
                }
            }
            op::DEQUANTIZE => {
                let output = self.output_of(operator)?;
                let raw = self.input_of(operator, 0)?;
                ensure!(
                    self.graph.outputs.iter().any(|&o| o as usize == output),
                    "a DEQUANTIZE that is not the model's output"
                );
                self.activation(raw, false)?;
                self.alias.insert(output, raw);
                if self.flattened.contains(&raw) {
                    self.flattened.insert(output);
                }
            }
            op::QUANTIZE => {
                let output = self.output_of(operator)?;
                let raw = self.input_of(operator, 0)?;
                ensure!(
                    raw == self.input
                        && self.tensor(raw).dtype == dtype::FLOAT32
                        && self.int8
                        && self.tensor(output).dtype == dtype::INT8,
                    "a QUANTIZE other than the float input's into int8"
                );
                self.tensor(output).per_tensor(output)?;
                ensure!(
                    self.tensor(output).shape == self.tensor(raw).shape,
                    "a QUANTIZE that changes the shape"
                );
                self.input = output;
            }
            op::PAD => {
                let output = self.output_of(operator)?;
                let raw = self.input_of(operator, 0)?;
                let pads = self.constant_ints(self.input_of(operator, 1)?)?;
                if let [0, 0, 0, 0, 0, 0, before, after] = pads[..] {
                    if before != 0 || after != 0 {
                        return self.pad_channels(raw, (before, after), output);
                    }
                }
                let (x, (h, w, c)) = self.activation(raw, true)?;
                let [0, 0, top, bottom, left, right, 0, 0] = pads[..] else {
                    bail!(
                        "paddings {pads:?}: the engine pads height and width before a convolution, or channels in a residual shortcut"
                    );
                };
                ensure!(
                    [top, bottom, left, right]
                        .iter()
                        .all(|p| (0..=255).contains(p)),
                    "paddings {pads:?}: each must be in 0..=255"
                );
                let pad = [top as usize, left as usize, bottom as usize, right as usize];
                self.check_output(output, (h + pad[0] + pad[2], w + pad[1] + pad[3], c))?;
                ensure!(
                    self.same_quantization(x, output)?,
                    "the output is quantized differently from the input"
                );
                self.pads.insert(output, (x, pad));
            }
            op::STRIDED_SLICE => self.subsample(operator)?,
            _ => bail!("no engine equivalent"),
        }
        Ok(())
    }

    /// The activation or shortcut view `t` as a shortcut view (an activation maps
    /// itself: stride 1, no channel offset).
    fn shortcut_view(&self, t: usize) -> Result<Shortcut> {
        if let Some(view) = self.shortcuts.get(&t) {
            return Ok(*view);
        }
        let (source, dims) = self.activation(t, true)?;
        Ok(Shortcut {
            source,
            stride: 1,
            channel_offset: 0,
            dims,
        })
    }

    /// A PAD of channels only (option A's zero channels): a shortcut view.
    fn pad_channels(
        &mut self,
        raw: usize,
        (before, after): (i32, i32),
        output: usize,
    ) -> Result<()> {
        let view = self.shortcut_view(raw)?;
        let (h, w, c) = view.dims;
        ensure!(
            (0..=255).contains(&before) && (0..=4096).contains(&after),
            "channel paddings {before} and {after}: each must be in 0..=255 before and 0..=4096 after"
        );
        let channels = c + before as usize + after as usize;
        let padded = Shortcut {
            channel_offset: view.channel_offset + before as usize,
            dims: (h, w, channels),
            ..view
        };
        self.add_shortcut(raw, output, padded)
    }

    /// Records `output` as the shortcut view `view` of the operator's input `raw`: the
    /// output has the view's shape and the input's quantization (TFLite's STRIDED_SLICE
    /// and PAD keep it).
    fn add_shortcut(&mut self, raw: usize, output: usize, view: Shortcut) -> Result<()> {
        self.check_output(output, view.dims)?;
        ensure!(
            self.same_quantization(raw, output)?,
            "the output is quantized differently from the input"
        );
        self.shortcuts.insert(output, view);
        Ok(())
    }

    /// A STRIDED_SLICE that keeps every `stride`-th row and column from the first and
    /// every channel (option A's subsampling): a shortcut view.
    fn subsample(&mut self, operator: &Operator<'_>) -> Result<()> {
        let output = self.output_of(operator)?;
        let raw = self.input_of(operator, 0)?;
        let view = self.shortcut_view(raw)?;
        let (h, w, c) = view.dims;
        let begin = self.constant_ints(self.input_of(operator, 1)?)?;
        let end = self.constant_ints(self.input_of(operator, 2)?)?;
        let strides = self.constant_ints(self.input_of(operator, 3)?)?;
        ensure!(
            begin.len() == 4 && end.len() == 4 && strides.len() == 4,
            "begin, end and strides of {}, {} and {} values (expected 4 each)",
            begin.len(),
            end.len(),
            strides.len()
        );
        let options = operator.options;
        let option = |id| options.map_or(Ok(0), |o| o.i32(id, 0));
        let (begin_mask, end_mask) = (option(0)?, option(1)?);
        for (name, id) in [("ellipsis", 2), ("new_axis", 3), ("shrink_axis", 4)] {
            ensure!(
                option(id)? == 0,
                "a {name}_mask: the engine subsamples without reshaping"
            );
        }
        ensure!(
            options.map_or(Ok(0), |o| o.u8(5, 0))? == 0,
            "end given as an offset from begin"
        );
        // TFLite's StridedSlice for positive strides: negative indices count from the
        // end, a masked begin is 0 and a masked end the dimension, both clamped.
        let dims = [1, h, w, c];
        let mut counts = [0usize; 4];
        for axis in 0..4 {
            let dim = dims[axis] as i64;
            let resolve = |i: i32| {
                let i = i64::from(i);
                (if i < 0 { i + dim } else { i }).clamp(0, dim)
            };
            let first = if begin_mask >> axis & 1 == 1 {
                0
            } else {
                resolve(begin[axis])
            };
            let last = if end_mask >> axis & 1 == 1 {
                dim
            } else {
                resolve(end[axis])
            };
            let stride = i64::from(strides[axis]);
            ensure!(
                first == 0 && stride >= 1,
                "begin {begin:?} and strides {strides:?}: the engine subsamples from the first row, column and channel, forwards"
            );
            counts[axis] = ((last - first).max(0) as usize).div_ceil(stride as usize);
        }
        let stride = strides[1] as usize;
        ensure!(
            strides[2] == strides[1] && strides[3] == 1 && counts[0] == 1 && counts[3] == c,
            "strides {strides:?} over a {h}x{w}x{c} tensor: the engine subsamples rows and columns by one stride and keeps every channel"
        );
        ensure!(
            counts[1] == h.div_ceil(stride) && counts[2] == w.div_ceil(stride),
            "a slice of {}x{} of a {h}x{w} tensor: the engine subsamples whole rows and columns",
            counts[1],
            counts[2]
        );
        let subsampled = Shortcut {
            stride: view.stride * stride,
            dims: (counts[1], counts[2], c),
            ..view
        };
        self.add_shortcut(raw, output, subsampled)
    }

    /// Checks that an operator's output tensor is `[1, h, w, c]`.
    fn check_output(&self, output: usize, (h, w, c): (usize, usize, usize)) -> Result<()> {
        let tensor = self.tensor(output);
        let expected = [1, h as i64, w as i64, c as i64];
        ensure!(
            tensor.shape.iter().map(|&d| i64::from(d)).eq(expected),
            "the output {} has shape {:?}, the engine computes {expected:?}",
            tensor.describe(output),
            tensor.shape
        );
        self.check_activation_type(output)
    }

    /// Checks that an operator's output tensor holds `n` values.
    fn check_elements(&self, output: usize, n: usize) -> Result<()> {
        let tensor = self.tensor(output);
        ensure!(
            element_count(&tensor.shape)? == n,
            "the output {} has shape {:?}, the engine computes {n} values",
            tensor.describe(output),
            tensor.shape
        );
        self.check_activation_type(output)
    }

    /// Orders the layers, numbers the engine's tensors and builds the network.
    fn finish(mut self, flags: &PreprocessingFlags) -> Result<ImportedTflite> {
        let graph = self.graph;
        let output = usize::try_from(graph.outputs[0]).context("the graph output is absent")?;
        let output = self.resolve(output);
        self.nodes.sort_by_key(|n| n.order);
        let mut id: HashMap<usize, usize> = HashMap::from([(self.input, 0)]);
        for (k, node) in self.nodes.iter().enumerate() {
            id.insert(node.output, k + 1);
        }
        ensure!(
            !self.nodes.is_empty() && id.get(&output) == Some(&self.nodes.len()),
            "the model's output is not the last layer's (every operator's output but the last must be read)"
        );
        let engine_id = |t: usize| {
            id.get(&t)
                .copied()
                .with_context(|| format!("tensor {t} is read before it is computed"))
        };
        let mut layers = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let mut layer = node.layer.clone();
            match &mut layer {
                LayerSpec::Conv(c) => {
                    c.input = engine_id(c.input)?;
                    if let Some(r) = &mut c.residual {
                        r.tensor = engine_id(r.tensor)?;
                    }
                }
                LayerSpec::GlobalAvgPool { input }
                | LayerSpec::Mean { input }
                | LayerSpec::Softmax { input, .. } => *input = engine_id(*input)?,
                LayerSpec::Dense(d) => d.input = engine_id(d.input)?,
                LayerSpec::MaxPool(p) => p.input = engine_id(p.input)?,
            }
            layers.push(layer);
        }
        ensure!(
            matches!(layers.last(), Some(LayerSpec::Dense(_) | LayerSpec::Softmax { .. })),
            "not a classifier: the graph must end in FULLY_CONNECTED, optionally followed by SOFTMAX"
        );
        let features = layers
            .iter()
            .rposition(|l| matches!(l, LayerSpec::GlobalAvgPool { .. } | LayerSpec::Mean { .. }))
            .map(|k| k + 1);

        let input = self.tensor(self.input);
        let shape = &self.tensor(graph.inputs[0] as usize).shape;
        let (h, w, c) = (shape[1] as usize, shape[2] as usize, shape[3] as usize);
        let preprocessing = self.preprocessing(flags, c)?;
        let network = Network {
            input: InputSpec {
                height: h,
                width: w,
                channels: c,
                range: preprocessing.range,
                mean: preprocessing.mean.clone(),
                std: preprocessing.std.clone(),
            },
            layers,
            features,
            class_names: Vec::new(),
        };
        network
            .tensor_shapes()
            .map_err(|e| anyhow::anyhow!("the lowered network is inconsistent: {e}"))?;
        let quantization = if self.int8 {
            let mut tensors = vec![input.per_tensor(self.input)?];
            let mut pre_add = Vec::with_capacity(self.nodes.len());
            for node in &self.nodes {
                tensors.push(self.tensor(node.output).per_tensor(node.output)?);
                pre_add.push(
                    node.pre_add
                        .map(|t| self.tensor(t).per_tensor(t))
                        .transpose()?,
                );
            }
            Some(GivenQuantization {
                tensors,
                pre_add,
                parameters: self.nodes.iter().map(|n| n.parameters.clone()).collect(),
            })
        } else {
            None
        };
        Ok(ImportedTflite {
            network,
            quantization,
            preprocessing,
            softmax_dropped: self.softmax_dropped,
            summary: graph.summary.clone(),
        })
    }

    /// How raw pixels become the input: the flags, or for an int8 input what its
    /// quantization covers (0..255 for a scale of 1, 0..1 for a scale of 1/255, both
    /// from zero point −128: the two spellings of a byte image).
    fn preprocessing(&self, flags: &PreprocessingFlags, channels: usize) -> Result<Preprocessing> {
        let range = match flags.range {
            Some(range) => range,
            None => {
                let input = self.tensor(self.input);
                ensure!(
                    input.dtype == dtype::INT8,
                    "the model's float input does not say how pixels are scaled: give --input-range 0..255 or 0..1 (and --mean / --std if it normalises)"
                );
                match input.per_tensor(self.input)? {
                    (1.0, -128) => InputRange::Byte,
                    (scale, -128) if (scale - 1.0 / 255.0).abs() < 1e-9 => InputRange::Unit,
                    (scale, zero_point) => bail!(
                        "the int8 input's scale {scale} and zero point {zero_point} are neither raw pixels' (1, -128) nor pixels / 255's (1/255, -128): give --input-range 0..255 or 0..1 and --mean / --std to say what the model expects"
                    ),
                }
            }
        };
        let mean = flags.mean.clone().unwrap_or_else(|| vec![0.0; channels]);
        let std = flags.std.clone().unwrap_or_else(|| vec![1.0; channels]);
        ensure!(
            mean.len() == channels && std.len() == channels,
            "--mean and --std need one value per input channel ({channels}); got {} and {}",
            mean.len(),
            std.len()
        );
        ensure!(
            std.iter().all(|&s| s > 0.0 && s.is_finite()),
            "--std values must be positive"
        );
        Ok(Preprocessing { range, mean, std })
    }
}

/// The number of values of a shape, refusing sizes beyond 2^31.
fn element_count(shape: &[i32]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?))
        .filter(|&n| n <= 1 << 31)
        .with_context(|| format!("shape {shape:?} is too large"))
}
