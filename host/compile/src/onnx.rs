//! `tinyres compile`: any ONNX ResNet, read by tract, lowered to the engine's layer list.
//!
//! tract loads the file, types it with a batch of one and declutters it; decluttering
//! already folds most batch norms into their convolutions and normalises the spellings
//! of different exporters (Gemm and MatMul become `EinSum`, strided slices
//! `Downsample`, NHWC inputs a `MoveAxis`). The lowering then walks the typed graph in
//! order and keeps, for every value, what it is in engine terms: a tensor with the role
//! of each of its axes, a constant, or a view of a tensor that only a residual add can
//! use (option A's subsampled, zero-padded shortcut). Per-channel scales and shifts
//! left after a convolution or dense layer fold into it, ReLUs and adds fuse into the
//! layer that produced their input, and anything else is reported by node name.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::writer::{
    ConvSpec, DenseSpec, InputSpec, LayerSpec, MaxPoolSpec, Network, ResidualSpec,
};
use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use tinyres_core::kernels::ConvShape;
use tinyres_core::InputRange;
use tract_onnx::pb::ModelProto;
use tract_onnx::prelude::*;

use tinyres_data::Dataset;
use tract_onnx::tract_core::ops::array::{Pad, PadMode};
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::cnn::{
    Conv, KernelFormat, MaxPool, PaddingSpec, PoolSpec, SumPool,
};
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::nn::{Reduce, Reducer, Softmax};
use tract_onnx::tract_core::ops::Downsample;
use tract_onnx::tract_hir::infer::Factoid;

/// Where an ONNX model's input comes from, as the device sees it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Preprocessing {
    /// Scaling of raw `u8` pixels before the mean and standard deviation.
    #[serde(serialize_with = "range_name")]
    pub range: InputRange,
    /// Per-channel mean, subtracted after scaling.
    pub mean: Vec<f32>,
    /// Per-channel standard deviation, divided by after the mean.
    pub std: Vec<f32>,
}

fn range_name<S: serde::Serializer>(range: &InputRange, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match range {
        InputRange::Byte => "0..255",
        InputRange::Unit => "0..1",
    })
}

/// Parses `0..255` or `0..1`.
pub fn parse_range(text: &str) -> Result<InputRange> {
    match text.trim() {
        "0..255" | "255" | "byte" => Ok(InputRange::Byte),
        "0..1" | "1" | "unit" => Ok(InputRange::Unit),
        other => bail!("input range {other:?}: expected 0..255 or 0..1"),
    }
}

/// Preprocessing given on the command line; each part overrides the model's metadata.
#[derive(Clone, Debug, Default)]
pub struct PreprocessingFlags {
    /// `--input-range`.
    pub range: Option<InputRange>,
    /// `--mean`.
    pub mean: Option<Vec<f32>>,
    /// `--std`.
    pub std: Option<Vec<f32>>,
}

/// The memory layout of the model's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Layout {
    /// Channels first (PyTorch, our export).
    Nchw,
    /// Channels last (Keras / tf2onnx).
    Nhwc,
}

/// An ONNX model lowered to the engine.
#[derive(Clone, Debug)]
pub struct Imported {
    /// The network in the engine's layer set, with float weights.
    pub network: Network,
    /// The ONNX input's layout.
    pub layout: Layout,
    /// The preprocessing recorded in the network's input.
    pub preprocessing: Preprocessing,
    /// Whether the graph ends in a softmax (dropped: the engine's logits rank the same).
    pub softmax_dropped: bool,
    /// The data it was trained on, if the metadata says.
    pub training_data: Option<std::path::PathBuf>,
}

/// What one axis of a tensor means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Batch,
    Channels,
    Height,
    Width,
    /// A size-1 axis added by the graph.
    Unit,
}

/// What a value of the typed graph is in engine terms.
#[derive(Clone, Debug)]
enum Value {
    /// Engine tensor `id` (0 = input); `roles[i]` is the meaning of axis `i`.
    Tensor {
        id: usize,
        roles: Vec<Role>,
        /// A global average pool's output still multiplied by this (a `ReduceSum`
        /// waiting for its division).
        scale: f32,
    },
    /// A tensor seen through a subsampling and zero channels around it.
    View(View),
    Const(Arc<Tensor>),
    /// Tensor `id` plus one constant per channel, the bias of the convolution that
    /// reads it: where a convolution's output is one pixel, tract folds its residual
    /// add into its bias, and the bias's constant onto the shortcut.
    ChannelBias {
        id: usize,
        bias: Vec<f32>,
    },
}

/// A tensor seen through a spatial subsampling and zero channels around it: usable as
/// a residual shortcut or as the input of a 1×1 convolution.
#[derive(Clone, Debug)]
struct View {
    id: usize,
    roles: Vec<Role>,
    stride_h: usize,
    stride_w: usize,
    channels_before: usize,
    channels_after: usize,
}

impl Value {
    /// The value as a view (a plain tensor is one with stride 1 and no padding), and
    /// the pending scale of an unfinished average; `None` for a constant.
    fn as_view(&self) -> Option<(View, f32)> {
        match self {
            Value::Tensor { id, roles, scale } => Some((
                View {
                    id: *id,
                    roles: roles.clone(),
                    stride_h: 1,
                    stride_w: 1,
                    channels_before: 0,
                    channels_after: 0,
                },
                *scale,
            )),
            Value::View(view) => Some((view.clone(), 1.0)),
            Value::Const(_) | Value::ChannelBias { .. } => None,
        }
    }
}

struct Lowering<'m> {
    model: &'m TypedModel,
    layers: Vec<LayerSpec>,
    /// `(height, width, channels)` of every engine tensor.
    shapes: Vec<(usize, usize, usize)>,
    values: HashMap<OutletId, Value>,
    features: Option<usize>,
    softmax_dropped: bool,
    unsupported: Vec<String>,
}

/// An ONNX file read by tract, with what its metadata and input say.
#[derive(Debug)]
pub struct OnnxFile {
    /// The graph as tract read it, before typing.
    inference: InferenceModel,
    /// The input's layout.
    pub layout: Layout,
    /// `(height, width, channels)` of one input image.
    pub input: (usize, usize, usize),
    /// How raw pixels become the input.
    pub preprocessing: Preprocessing,
    /// Class names from the metadata (empty if none).
    pub class_names: Vec<String>,
    /// The data it was trained on, if the metadata says (our exports do).
    pub training_data: Option<std::path::PathBuf>,
}

/// Runs one of tract's steps on a graph from a file. tract checks much with
/// assertions, so a malformed graph can make it panic (the `onnx_import` fuzz target
/// found one: a `Pad` with negative pads fails an assertion in `ShapeFact`); the panic
/// becomes an error, the file's reader's to report.
fn tract_step<T>(step: impl FnOnce() -> TractResult<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(step)) {
        Ok(result) => result.map_err(|e| anyhow::anyhow!("{e:#}")),
        Err(panic) => bail!(
            "an internal check of tract's failed on this graph: {}",
            tinyres_data::panic_message(panic.as_ref())
        ),
    }
}

/// The most elements a tensor that a graph sizes from its own constants may have: 16 M,
/// 64 MiB of `f32`. The largest tensor of an ImageNet ResNet-50 has 2.4 M, and a
/// microcontroller's model is thousands of times smaller. tract computes the constant
/// parts of a graph while typing it, and an allocation that fails there aborts the
/// process (no error, no unwinding): a 3 KB file whose `Pad` asked for 2 × 10^14
/// columns did. So the sizes such nodes ask for are checked before tract sees them.
const MAX_TENSOR_ELEMENTS: u128 = 1 << 24;

/// The integer values of the constant `name` (an initializer or a `Constant` node's
/// output), if it is one.
fn constant_ints(graph: &tract_onnx::pb::GraphProto, name: &str) -> Option<Vec<i64>> {
    let tensor = graph
        .initializer
        .iter()
        .find(|t| t.name == name)
        .or_else(|| {
            graph
                .node
                .iter()
                .filter(|n| n.op_type == "Constant" && n.output.iter().any(|o| o == name))
                .find_map(|n| n.attribute.iter().find_map(|a| a.t.as_ref()))
        })?;
    if !tensor.int64_data.is_empty() {
        return Some(tensor.int64_data.clone());
    }
    let raw = tensor.raw_data.chunks_exact(8);
    Some(
        raw.map(|b| i64::from_le_bytes(b.try_into().unwrap_or_default()))
            .collect(),
    )
}

/// Refuses nodes that ask for a tensor of more than [`MAX_TENSOR_ELEMENTS`] through
/// their constants: `Pad` (its padding grows every axis), `ConstantOfShape` and
/// `Expand` (a shape), `Tile` (repeats).
fn refuse_huge_constants(graph: &tract_onnx::pb::GraphProto) -> Result<()> {
    for node in &graph.node {
        let asked = |input: usize| node.input.get(input).and_then(|n| constant_ints(graph, n));
        let factors: Vec<i64> = match node.op_type.as_str() {
            "Pad" => {
                let pads = asked(1).or_else(|| {
                    let attribute = node.attribute.iter().find(|a| a.name == "pads");
                    attribute.map(|a| a.ints.clone())
                });
                let pads = pads.unwrap_or_default();
                let (begin, end) = pads.split_at(pads.len() / 2);
                begin
                    .iter()
                    .zip(end)
                    // Saturating: a padding near i64::MAX is refused, not wrapped.
                    .map(|(b, e)| 1i64.saturating_add(*b.max(&0)).saturating_add(*e.max(&0)))
                    .collect()
            }
            "ConstantOfShape" => asked(0).unwrap_or_default(),
            "Expand" | "Tile" => asked(1).unwrap_or_default(),
            _ => continue,
        };
        let elements = factors
            .iter()
            .try_fold(1u128, |n, &f| n.checked_mul(f.max(0) as u128));
        let name = node_label(node);
        ensure!(
            elements.is_some_and(|n| n <= MAX_TENSOR_ELEMENTS),
            "{name} ({}) asks for a tensor of more than {MAX_TENSOR_ELEMENTS} elements \
             (size factors {factors:?}): no model for the engine holds one",
            node.op_type
        );
    }
    Ok(())
}

/// Refuses a `Transpose` whose `perm` is not a permutation of `0..n`. tract-onnx
/// 0.23.9 takes the attribute as it is, and for a repeated axis (`[3, 3, 3, 3]`) its
/// decomposition into cycles (`perm_to_cycles` in tract-core) never ends, growing a
/// vector until memory runs out.
fn refuse_transposes_that_do_not_permute(graph: &tract_onnx::pb::GraphProto) -> Result<()> {
    for node in graph.node.iter().filter(|n| n.op_type == "Transpose") {
        let Some(perm) = node.attribute.iter().find(|a| a.name == "perm") else {
            continue;
        };
        let mut seen = vec![false; perm.ints.len()];
        let permutes = perm.ints.iter().all(|&axis| {
            usize::try_from(axis)
                .ok()
                .and_then(|axis| seen.get_mut(axis))
                .is_some_and(|seen| !std::mem::replace(seen, true))
        });
        ensure!(
            permutes,
            "{} (Transpose) has perm {:?}, which is not a permutation of its axes",
            node_label(node),
            perm.ints
        );
    }
    Ok(())
}

/// How a node is known in messages: its name, or, as PyTorch leaves most nodes
/// unnamed, its first output.
fn node_label(node: &tract_onnx::pb::NodeProto) -> &str {
    match (node.name.as_str(), node.output.first()) {
        ("", Some(output)) => output.as_str(),
        (name, _) => name,
    }
}

/// The lowest rank of its data input (input 0) that an operator's shape rules in tract
/// assume. tract-onnx 0.23.9 reads the axes of that input through `DataFormat::shape`
/// (tract-core, `ops/nn/data_formats.rs`), which does not check the rank, and
/// `BaseDataShape` reads them with `get_unchecked`: the channel axis (1, so rank 2) for
/// `BatchNormalization`, and the spatial axes after it (rank 3: `hw_rank` is the rank
/// less 2, and one below that it wraps) for the convolutions and the pools. A rank below
/// this is a read past the end of the shape while tract analyses the graph: undefined
/// behaviour in a release build, an abort (not a panic) in a debug one. The global pools
/// index their input's axes 0 and 1 through tract's solver, which checks, but ONNX
/// defines them on N, C and spatial axes too, and no model for the engine has fewer.
fn min_data_rank(op_type: &str) -> Option<usize> {
    match op_type {
        "BatchNormalization" => Some(2),
        "Conv" | "ConvInteger" | "QLinearConv" | "ConvTranspose" | "MaxPool" | "AveragePool"
        | "GlobalAveragePool" | "GlobalMaxPool" | "GlobalLpPool" => Some(3),
        _ => None,
    }
}

/// The rank a value's declared type states, if it states a shape.
fn declared_rank(info: &tract_onnx::pb::ValueInfoProto) -> Option<usize> {
    let tract_onnx::pb::type_proto::Value::TensorType(tensor) =
        info.r#type.as_ref()?.value.as_ref()?;
    Some(tensor.shape.as_ref()?.dim.len())
}

/// The rank of `node`'s first output, if it follows from its inputs' known ranks (`rank`),
/// its attributes and its constant inputs, as tract reads them at operator set `opset`;
/// `None` when it does not, or for an operator not listed.
fn output_rank(
    graph: &tract_onnx::pb::GraphProto,
    opset: i64,
    node: &tract_onnx::pb::NodeProto,
    rank: impl Fn(&str) -> Option<usize>,
) -> Option<usize> {
    let input = |i: usize| node.input.get(i).filter(|n| !n.is_empty());
    let input_rank = |i: usize| rank(input(i)?);
    let attribute = |name: &str| node.attribute.iter().find(|a| a.name == name);
    // Squeeze, Unsqueeze and the reductions took their axes as an attribute, then as an
    // input from some operator set on; tract reads the one its operator set says.
    let axes = |input_since: i64| -> Option<usize> {
        if opset >= input_since {
            Some(constant_ints(graph, input(1)?)?.len())
        } else {
            Some(attribute("axes")?.ints.len())
        }
    };
    match node.op_type.as_str() {
        // tract's order of precedence among the value attributes.
        "Constant" => [
            "value",
            "value_int",
            "value_float",
            "value_ints",
            "value_floats",
        ]
        .iter()
        .find_map(|&name| {
            let a = attribute(name)?;
            Some(match name {
                "value" => a.t.as_ref()?.dims.len(),
                "value_int" | "value_float" => 0,
                _ => 1,
            })
        }),
        "Abs" | "Acos" | "Acosh" | "Asin" | "Asinh" | "Atan" | "Atanh" | "Cast" | "Ceil"
        | "Clip" | "Cos" | "Cosh" | "Dropout" | "Elu" | "Erf" | "Exp" | "Floor" | "HardSigmoid"
        | "HardSwish" | "Identity" | "LeakyRelu" | "Log" | "Neg" | "Not" | "PRelu"
        | "Reciprocal" | "Relu" | "Round" | "Selu" | "Sigmoid" | "Sign" | "Sin" | "Sinh"
        | "Softplus" | "Softsign" | "Sqrt" | "Tan" | "Tanh" => input_rank(0),
        "BatchNormalization" | "Conv" | "MaxPool" | "AveragePool" | "GlobalAveragePool"
        | "GlobalMaxPool" | "Pad" | "Slice" | "Transpose" | "Softmax" | "LogSoftmax" | "Concat" => {
            input_rank(0)
        }
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Max" | "Min" | "Sum" | "Mean" => {
            let inputs = node.input.iter().filter(|n| !n.is_empty());
            inputs
                .map(|n| rank(n))
                .collect::<Option<Vec<usize>>>()?
                .into_iter()
                .max()
        }
        "Flatten" | "Gemm" => Some(2),
        // NumPy's rule: a vector operand gains an axis for the product and loses it after.
        "MatMul" => {
            let (a, b) = (input_rank(0)?, input_rank(1)?);
            if a == 0 || b == 0 {
                return None;
            }
            Some(a.max(b).max(2) - usize::from(a == 1) - usize::from(b == 1))
        }
        "Reshape" => Some(constant_ints(graph, input(1)?)?.len()),
        "Shape" => Some(1),
        "Squeeze" => input_rank(0)?.checked_sub(axes(13)?),
        "Unsqueeze" => Some(input_rank(0)? + axes(13)?),
        op if op.starts_with("Reduce") => {
            let keepdims = attribute("keepdims").map_or(1, |a| a.i) == 1;
            if keepdims {
                return input_rank(0);
            }
            let since = if op == "ReduceSum" { 13 } else { 18 };
            let axes = axes(since).filter(|&n| n > 0)?;
            input_rank(0)?.checked_sub(axes)
        }
        _ => None,
    }
}

/// Refuses nodes whose data input has a rank below what tract's shape rules for them
/// index ([`min_data_rank`]), before tract analyses the graph: the `onnx_import` fuzz
/// target found a `BatchNormalization` of a rank-1 constant, on which tract read past
/// the end of a shape. Ranks are those the file states (initializers, `Constant` nodes,
/// the declared shapes of the graph's inputs and of its `value_info`, which tract
/// imposes on the values too) and those that follow from them through the operators of
/// a ResNet export ([`output_rank`]); an unknown rank passes, and tract sees that value
/// as it would have. Subgraphs (`If`, `Loop`, `Scan`) are checked too, seeing the ranks
/// of the graphs around them.
fn refuse_data_of_too_low_rank<'g>(
    graph: &'g tract_onnx::pb::GraphProto,
    opset: i64,
    outer: &HashMap<&'g str, usize>,
) -> Result<()> {
    let mut ranks = outer.clone();
    let declared = graph.input.iter().chain(&graph.value_info);
    let declared = declared.filter_map(|info| Some((info.name.as_str(), declared_rank(info)?)));
    let initializers = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t.dims.len()));
    // An initializer is the value of a graph input of its name (tract makes it a
    // constant), so it comes last and wins.
    ranks.extend(declared.chain(initializers));
    // Nodes are in any order in a file: each is tried once, then again whenever one of
    // its inputs gets a rank.
    let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, node) in graph.node.iter().enumerate() {
        for input in &node.input {
            readers.entry(input.as_str()).or_default().push(i);
        }
    }
    let mut pending: Vec<usize> = (0..graph.node.len()).rev().collect();
    while let Some(i) = pending.pop() {
        let node = &graph.node[i];
        let Some(output) = node.output.first().filter(|o| !o.is_empty()) else {
            continue;
        };
        if ranks.contains_key(output.as_str()) {
            continue;
        }
        if let Some(rank) = output_rank(graph, opset, node, |n| ranks.get(n).copied()) {
            ranks.insert(output, rank);
            pending.extend(readers.get(output.as_str()).into_iter().flatten());
        }
    }
    for node in &graph.node {
        let data = node.input.first().filter(|n| !n.is_empty());
        let min = min_data_rank(&node.op_type);
        if let (Some(data), Some(min)) = (data, min) {
            if let Some(&rank) = ranks.get(data.as_str()) {
                ensure!(
                    rank >= min,
                    "{} ({}) reads {data}, of rank {rank}, as its data: it needs rank {min} \
                     or more (a batch axis, a channel axis{}), and tract would read past the \
                     end of the shape",
                    node_label(node),
                    node.op_type,
                    if min > 2 { ", spatial axes" } else { "" }
                );
            }
        }
        let subgraphs = node
            .attribute
            .iter()
            .flat_map(|a| a.g.iter().chain(&a.graphs));
        for subgraph in subgraphs {
            refuse_data_of_too_low_rank(subgraph, opset, &ranks)?;
        }
    }
    Ok(())
}

/// Reads an ONNX file with tract and works out its input layout and preprocessing
/// (metadata first, `flags` override).
pub fn read_onnx(path: &Path, flags: &PreprocessingFlags) -> Result<OnnxFile> {
    let onnx = onnx();
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let proto: ModelProto = tract_step(|| onnx.proto_model_for_read(&mut bytes.as_slice()))
        .map_err(|e| anyhow::anyhow!("{}: not an ONNX model ({e})", path.display()))?;
    if let Some(graph) = &proto.graph {
        refuse_huge_constants(graph).with_context(|| format!("{}", path.display()))?;
        refuse_transposes_that_do_not_permute(graph)
            .with_context(|| format!("{}", path.display()))?;
        let opset = proto
            .opset_import
            .iter()
            .find(|import| import.domain.is_empty() || import.domain == "ai.onnx")
            .map_or(0, |import| import.version);
        refuse_data_of_too_low_rank(graph, opset, &HashMap::new())
            .with_context(|| format!("{}", path.display()))?;
    }
    let metadata: HashMap<String, String> = proto
        .metadata_props
        .iter()
        .map(|p| (p.key.clone(), p.value.clone()))
        .collect();
    let inference = tract_step(|| onnx.model_for_proto_model(&proto))
        .map_err(|e| anyhow::anyhow!("{}: tract cannot read the graph: {e:#}", path.display()))?;
    ensure!(
        inference.inputs.len() == 1 && inference.outputs.len() == 1,
        "{}: a classifier has one input and one output; this graph has {} and {}",
        path.display(),
        inference.inputs.len(),
        inference.outputs.len()
    );
    let input_fact = inference.input_fact(0)?;
    let dims: Vec<Option<usize>> = input_fact
        .shape
        .dims()
        .map(|d| d.concretize().and_then(|d| d.as_i64()).map(|d| d as usize))
        .collect();
    ensure!(
        dims.len() == 4,
        "{}: the input has rank {}, not an image batch (N, C, H, W or N, H, W, C)",
        path.display(),
        dims.len()
    );
    let layout = match metadata.get("tinyres.layout").map(String::as_str) {
        Some("NHWC") => Layout::Nhwc,
        Some(_) => Layout::Nchw,
        None => match (dims[1], dims[3]) {
            (Some(c), _) if c <= 4 => Layout::Nchw,
            (_, Some(c)) if c <= 4 => Layout::Nhwc,
            _ => bail!(
                "{}: cannot tell channels from rows in input shape {:?}",
                path.display(),
                dims
            ),
        },
    };
    let (c, h, w) = match layout {
        Layout::Nchw => (dims[1], dims[2], dims[3]),
        Layout::Nhwc => (dims[3], dims[1], dims[2]),
    };
    let (Some(c), Some(h), Some(w)) = (c, h, w) else {
        bail!(
            "{}: the input's channels, rows and columns must be fixed numbers, got {:?}",
            path.display(),
            dims
        );
    };
    // An empty image is no image, and tract-onnx 0.23.9 folds a convolution of an empty
    // input as a constant while simplifying the graph, where its im2col
    // (`Patcher::padded_2d`) breaks an unchecked access's precondition: out of bounds
    // in a release build.
    ensure!(
        c > 0 && h > 0 && w > 0,
        "{}: the input's channels, rows and columns must be at least 1, got {:?}",
        path.display(),
        dims
    );
    let preprocessing =
        preprocessing(&metadata, flags, c).with_context(|| format!("{}", path.display()))?;
    let class_names: Vec<String> = metadata
        .get("tinyres.class_names")
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default();
    Ok(OnnxFile {
        inference,
        layout,
        input: (h, w, c),
        preprocessing,
        class_names,
        training_data: metadata.get("tinyres.data").map(Into::into),
    })
}

impl OnnxFile {
    fn input_shape(&self, batch: usize) -> [usize; 4] {
        let (h, w, c) = self.input;
        match self.layout {
            Layout::Nchw => [batch, c, h, w],
            Layout::Nhwc => [batch, h, w, c],
        }
    }

    fn typed(&self, batch: usize) -> Result<TypedModel> {
        let input = f32::fact(self.input_shape(batch)).into();
        let typed = tract_step(|| {
            self.inference
                .clone()
                .with_input_fact(0, input)?
                .into_typed()
        })
        .map_err(|e| anyhow::anyhow!("tract cannot type the graph: {e:#}"))?;
        refuse_empty_tensors(&typed)?;
        tract_step(|| typed.into_decluttered())
            .map_err(|e| anyhow::anyhow!("tract cannot simplify the graph: {e:#}"))
    }

    /// The outputs of the model run by tract on raw HWC `u8` images, preprocessed as
    /// the file says; one output row per image.
    pub fn run(&self, data: &Dataset) -> Result<Vec<Vec<f32>>> {
        let (h, w, c) = self.input;
        ensure!(
            (data.height, data.width, data.channels) == (h, w, c),
            "the model takes {h}×{w}×{c} images, the data holds {}×{}×{}",
            data.height,
            data.width,
            data.channels
        );
        let plan = self.typed(1)?.into_optimized()?.into_runnable()?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let chunk = data.len().div_ceil(threads).max(1);
        let mut rows = vec![Vec::new(); data.len()];
        std::thread::scope(|scope| -> Result<()> {
            let workers: Vec<_> = rows
                .chunks_mut(chunk)
                .enumerate()
                .map(|(t, out)| {
                    let plan = &plan;
                    scope.spawn(move || -> Result<()> {
                        for (k, row) in out.iter_mut().enumerate() {
                            let input = self.input_tensor(data.image(t * chunk + k));
                            let output = plan.run(tvec!(input.into()))?;
                            *row = output[0]
                                .to_plain_array_view::<f32>()?
                                .iter()
                                .copied()
                                .collect();
                        }
                        Ok(())
                    })
                })
                .collect();
            for worker in workers {
                worker
                    .join()
                    .map_err(|_| anyhow::anyhow!("a tract thread panicked"))??;
            }
            Ok(())
        })?;
        Ok(rows)
    }

    fn input_tensor(&self, image: &[u8]) -> Tensor {
        let shape = self.input_shape(1);
        tract_ndarray::Array4::from_shape_vec(
            (shape[0], shape[1], shape[2], shape[3]),
            self.preprocess(image),
        )
        .expect("the shape holds the values")
        .into()
    }

    /// One raw HWC `u8` image as the model's input values, in its layout.
    pub fn preprocess(&self, image: &[u8]) -> Vec<f32> {
        let (h, w, c) = self.input;
        let p = &self.preprocessing;
        let scale = match p.range {
            InputRange::Byte => 1.0,
            InputRange::Unit => 1.0 / 255.0,
        };
        let value = |y: usize, x: usize, ch: usize| {
            (f32::from(image[(y * w + x) * c + ch]) * scale - p.mean[ch]) / p.std[ch]
        };
        let mut values = Vec::with_capacity(h * w * c);
        match self.layout {
            Layout::Nhwc => {
                for y in 0..h {
                    for x in 0..w {
                        for ch in 0..c {
                            values.push(value(y, x, ch));
                        }
                    }
                }
            }
            Layout::Nchw => {
                for ch in 0..c {
                    for y in 0..h {
                        for x in 0..w {
                            values.push(value(y, x, ch));
                        }
                    }
                }
            }
        }
        values
    }
}

/// Refuses a typed graph in which a node gives an empty tensor, such as a convolution
/// whose stride leaves no rows. tract-onnx 0.23.9 folds the convolutions of an empty
/// tensor as constants while simplifying the graph, and its im2col
/// (`Patcher::padded_2d`) then breaks an unchecked access's precondition: out of bounds
/// in a release build. An empty image is no image, so no model the engine runs has one.
fn refuse_empty_tensors(typed: &TypedModel) -> Result<()> {
    for node in typed.nodes() {
        for output in &node.outputs {
            if output.fact.shape.iter().any(|dim| dim.as_i64() == Some(0)) {
                bail!(
                    "{} ({}) gives a tensor of shape {:?}, which is empty",
                    node.name,
                    node.op.name(),
                    output.fact.shape
                );
            }
        }
    }
    Ok(())
}

/// Reads, types and lowers an ONNX file.
pub fn import_onnx(path: &Path, flags: &PreprocessingFlags) -> Result<Imported> {
    let file = read_onnx(path, flags)?;
    let typed = file
        .typed(1)
        .with_context(|| format!("{}", path.display()))?;
    let (h, w, c) = file.input;
    let layout = file.layout;
    let preprocessing = file.preprocessing.clone();
    let class_names = file.class_names.clone();
    let training_data = file.training_data.clone();
    let mut lowering = Lowering {
        model: &typed,
        layers: Vec::new(),
        shapes: vec![(h, w, c)],
        values: HashMap::new(),
        features: None,
        softmax_dropped: false,
        unsupported: Vec::new(),
    };
    let roles = match layout {
        Layout::Nchw => vec![Role::Batch, Role::Channels, Role::Height, Role::Width],
        Layout::Nhwc => vec![Role::Batch, Role::Height, Role::Width, Role::Channels],
    };
    lowering.values.insert(
        typed.input_outlets()?[0],
        Value::Tensor {
            id: 0,
            roles,
            scale: 1.0,
        },
    );
    // Nodes that could not be lowered, and those downstream of them (not reported
    // again: the first failure is the one to fix).
    let mut failed = std::collections::HashSet::new();
    for node_id in typed.eval_order()? {
        if typed.input_outlets()?.iter().any(|o| o.node == node_id) {
            continue;
        }
        let node = typed.node(node_id);
        if node.inputs.iter().any(|i| failed.contains(&i.node)) {
            failed.insert(node_id);
            if !known_op(node) {
                lowering.unsupported.push(format!(
                    "{} ({}): no engine equivalent",
                    node.name,
                    node.op.name()
                ));
            }
            continue;
        }
        if let Err(e) = lowering.lower(node) {
            failed.insert(node_id);
            lowering
                .unsupported
                .push(format!("{} ({}): {e:#}", node.name, node.op.name()));
        }
    }
    if !lowering.unsupported.is_empty() {
        bail!(
            "{}: {} node(s) the engine cannot run:\n  {}",
            path.display(),
            lowering.unsupported.len(),
            lowering.unsupported.join("\n  ")
        );
    }
    let output = typed.output_outlets()?[0];
    let Some(Value::Tensor { id, .. }) = lowering.values.get(&output) else {
        bail!(
            "{}: the output is not computed by the engine's layers",
            path.display()
        );
    };
    ensure!(
        matches!(lowering.layers.last(), Some(LayerSpec::Dense(_)))
            && *id == lowering.layers.len(),
        "{}: not a classifier: the graph must end in a fully connected layer (Gemm or MatMul), optionally followed by Softmax",
        path.display()
    );
    let classes = lowering.shapes[*id].2;
    let class_names = if class_names.len() == classes {
        class_names
    } else {
        Vec::new()
    };
    let network = Network {
        input: InputSpec {
            height: h,
            width: w,
            channels: c,
            range: preprocessing.range,
            mean: preprocessing.mean.clone(),
            std: preprocessing.std.clone(),
        },
        layers: lowering.layers,
        features: lowering.features,
        class_names,
    };
    network.tensor_shapes().map_err(|e| {
        anyhow::anyhow!(
            "{}: the lowered network is inconsistent: {e}",
            path.display()
        )
    })?;
    Ok(Imported {
        network,
        layout,
        preprocessing,
        softmax_dropped: lowering.softmax_dropped,
        training_data,
    })
}

fn preprocessing(
    metadata: &HashMap<String, String>,
    flags: &PreprocessingFlags,
    channels: usize,
) -> Result<Preprocessing> {
    let from_metadata = |key: &str| -> Result<Option<Vec<f32>>> {
        metadata
            .get(key)
            .map(|text| {
                serde_json::from_str(text)
                    .with_context(|| format!("metadata {key} is not a list of numbers: {text:?}"))
            })
            .transpose()
    };
    let range = match flags.range {
        Some(range) => range,
        None => match metadata.get("tinyres.input_range") {
            Some(text) => parse_range(text)?,
            None => bail!(
                "the model does not say how its input is scaled: give --input-range 0..255 or 0..1 (and --mean / --std if it normalises)"
            ),
        },
    };
    let mean = match &flags.mean {
        Some(mean) => mean.clone(),
        None => from_metadata("tinyres.mean")?.unwrap_or_else(|| vec![0.0; channels]),
    };
    let std = match &flags.std {
        Some(std) => std.clone(),
        None => from_metadata("tinyres.std")?.unwrap_or_else(|| vec![1.0; channels]),
    };
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

impl Lowering<'_> {
    fn value(&self, outlet: OutletId) -> Result<Value> {
        if let Some(value) = self.values.get(&outlet) {
            return Ok(value.clone());
        }
        let fact = self.model.outlet_fact(outlet)?;
        match &fact.konst {
            Some(k) => Ok(Value::Const(k.clone())),
            None => bail!("input {outlet:?} is not available"),
        }
    }

    /// Whether `node`'s only reader takes its output as a convolution's bias.
    fn is_a_convolutions_bias(&self, node: &TypedNode) -> bool {
        match self.model.outlet_successors(OutletId::new(node.id, 0)) {
            [inlet] => inlet.slot == 2 && self.model.node(inlet.node).op_is::<Conv>(),
            _ => false,
        }
    }

    fn consumers(&self, outlet: OutletId) -> usize {
        self.model.outlet_successors(outlet).len()
    }

    fn push(&mut self, layer: LayerSpec, shape: (usize, usize, usize)) -> usize {
        self.layers.push(layer);
        self.shapes.push(shape);
        self.layers.len()
    }

    /// The layer that wrote tensor `id`, if it may still be changed in place (it is
    /// the only reader of its output).
    fn layer_mut(&mut self, id: usize) -> Option<&mut LayerSpec> {
        id.checked_sub(1).and_then(|i| self.layers.get_mut(i))
    }

    fn lower(&mut self, node: &TypedNode) -> Result<()> {
        let out = OutletId::new(node.id, 0);
        if node.op_is::<tract_onnx::tract_core::ops::konst::Const>() {
            return Ok(());
        }
        let inputs: Vec<Value> = node
            .inputs
            .iter()
            .map(|&i| self.value(i))
            .collect::<Result<_>>()?;
        let value = if let Some(conv) = node.op_as::<Conv>() {
            self.conv(conv, &inputs)?
        } else if let Some(einsum) = node.op_as::<EinSum>() {
            self.einsum(einsum, &inputs)?
        } else if let Some(bin) = node.op_as::<TypedBinOp>() {
            let name = bin.0.name().to_string();
            self.binary(&name, &inputs, node)?
        } else if let Some(down) = node.op_as::<Downsample>() {
            self.downsample(down, &inputs[0])?
        } else if let Some(pad) = node.op_as::<Pad>() {
            self.pad(pad, &inputs[0])?
        } else if let Some(pool) = node.op_as::<SumPool>() {
            self.sum_pool(pool, &inputs[0])?
        } else if let Some(pool) = node.op_as::<MaxPool>() {
            self.max_pool(pool, &inputs[0])?
        } else if let Some(reduce) = node.op_as::<Reduce>() {
            self.reduce(reduce, &inputs[0])?
        } else if let Some(axis) = node.op_as::<AxisOp>() {
            self.axis_op(axis, &inputs[0], node)?
        } else if node.op_as::<Softmax>().is_some() {
            let is_output = self.model.output_outlets()?.contains(&out);
            ensure!(is_output, "a softmax inside the network");
            self.softmax_dropped = true;
            inputs[0].clone()
        } else {
            bail!("no engine equivalent");
        };
        self.values.insert(out, value);
        Ok(())
    }

    fn tensor(value: &Value) -> Result<(usize, &[Role])> {
        match value {
            Value::Tensor { id, roles, .. } => Ok((*id, roles)),
            _ => bail!("expects a tensor computed by the network"),
        }
    }

    fn conv(&mut self, conv: &Conv, inputs: &[Value]) -> Result<Value> {
        ensure!(
            conv.group == 1,
            "grouped convolution (group {})",
            conv.group
        );
        ensure!(conv.q_params.is_none(), "quantized convolution");
        let spec = &conv.pool_spec;
        let (id, roles) = Self::tensor(&inputs[0])?;
        let expected = Self::expected_roles(spec, roles)?;
        let (h, w, c) = self.shapes[id];
        let (kh, kw) = (spec.kernel_shape[0], spec.kernel_shape[1]);
        let Value::Const(kernel) = &inputs[1] else {
            bail!("weights are not constant");
        };
        let kernel = floats(kernel)?;
        let oc = spec.output_channels;
        ensure!(
            kernel.len() == oc * c * kh * kw,
            "kernel size {} for {oc}×{c}×{kh}×{kw}",
            kernel.len()
        );
        // To OHWI.
        let mut weights = vec![0f32; kernel.len()];
        for o in 0..oc {
            for y in 0..kh {
                for x in 0..kw {
                    for i in 0..c {
                        let source = match conv.kernel_fmt {
                            KernelFormat::OIHW => ((o * c + i) * kh + y) * kw + x,
                            KernelFormat::HWIO => ((y * kw + x) * c + i) * oc + o,
                            KernelFormat::OHWI => ((o * kh + y) * kw + x) * c + i,
                        };
                        weights[((o * kh + y) * kw + x) * c + i] = kernel[source];
                    }
                }
            }
        }
        let (s, padding, (oh, ow)) = Self::window(spec, (h, w))?;
        let (bias, residual) = match inputs.get(2) {
            Some(Value::Const(b)) => (broadcast(&floats(b)?, oc, "bias")?, None),
            None => (vec![0.0; oc], None),
            // Where the output is one pixel, tract folds a residual add into the bias:
            // the shortcut is then one value per channel (torchvision's last stage at
            // 32×32 inputs).
            Some(shortcut @ (Value::Tensor { .. } | Value::ChannelBias { .. })) => {
                let (id, bias) = match shortcut {
                    Value::Tensor { id, scale, .. } if *scale == 1.0 => (*id, vec![0.0; oc]),
                    Value::ChannelBias { id, bias } => (*id, bias.clone()),
                    _ => bail!("bias is an unfinished average"),
                };
                ensure!(
                    (oh, ow) == (1, 1) && self.shapes[id] == (1, 1, oc),
                    "bias is a computed tensor, not a shortcut of a one-pixel output"
                );
                let shortcut = ResidualSpec {
                    tensor: id,
                    stride: 1,
                    channel_offset: 0,
                    relu: false,
                };
                (bias, Some(shortcut))
            }
            Some(_) => bail!("bias is not constant"),
        };
        let new = self.push(
            LayerSpec::Conv(ConvSpec {
                input: id,
                out_channels: oc,
                kernel: (kh, kw),
                stride: s,
                padding,
                weights,
                bias,
                relu: false,
                residual,
            }),
            (oh, ow, oc),
        );
        Ok(Value::Tensor {
            id: new,
            roles: expected.to_vec(),
            scale: 1.0,
        })
    }

    /// A max pool: PyTorch's and TFLite's (padding never chosen, floor rounding).
    fn max_pool(&mut self, pool: &MaxPool, input: &Value) -> Result<Value> {
        ensure!(
            pool.with_index_outputs.is_none(),
            "max pool with its indices as a second output"
        );
        let spec = &pool.pool_spec;
        let (id, roles) = Self::tensor(input)?;
        let expected = Self::expected_roles(spec, roles)?;
        let (h, w, c) = self.shapes[id];
        let (stride, padding, (oh, ow)) = Self::window(spec, (h, w))?;
        let new = self.push(
            LayerSpec::MaxPool(MaxPoolSpec {
                input: id,
                kernel: (spec.kernel_shape[0], spec.kernel_shape[1]),
                stride,
                padding,
            }),
            (oh, ow, c),
        );
        Ok(Value::Tensor {
            id: new,
            roles: expected.to_vec(),
            scale: 1.0,
        })
    }

    /// The axis roles a convolution's or a pool's input must have for its data format,
    /// checked against the roles it has.
    fn expected_roles(spec: &PoolSpec, roles: &[Role]) -> Result<&'static [Role]> {
        ensure!(
            spec.dilations
                .as_ref()
                .is_none_or(|d| d.iter().all(|&d| d == 1)),
            "dilated window"
        );
        ensure!(spec.kernel_shape.len() == 2, "not a 2-D window");
        // tract drops a batch axis of 1 from some windows (after a 1×1 convolution it
        // has made an einsum): CHW and HWC.
        let format = spec.data_format;
        let expected: &'static [Role] = match (format.has_n(), format.c_is_last()) {
            (true, false) => &[Role::Batch, Role::Channels, Role::Height, Role::Width],
            (true, true) => &[Role::Batch, Role::Height, Role::Width, Role::Channels],
            (false, false) => &[Role::Channels, Role::Height, Role::Width],
            (false, true) => &[Role::Height, Role::Width, Role::Channels],
        };
        ensure!(
            roles == expected,
            "input axes {roles:?} do not match its data format {:?}",
            spec.data_format
        );
        Ok(expected)
    }

    /// A convolution's or a pool's stride, padding `[top, left, bottom, right]` and
    /// output `(rows, columns)` over an `h×w` input.
    fn window(
        spec: &PoolSpec,
        (h, w): (usize, usize),
    ) -> Result<(usize, [usize; 4], (usize, usize))> {
        let strides = spec.strides.clone().unwrap_or_else(|| tvec![1, 1]);
        ensure!(
            strides[0] == strides[1],
            "different strides per axis {strides:?}"
        );
        let s = strides[0];
        let (kh, kw) = (spec.kernel_shape[0], spec.kernel_shape[1]);
        let padding = match &spec.padding {
            PaddingSpec::Valid => [0; 4],
            PaddingSpec::Explicit(before, after)
            | PaddingSpec::ExplicitOnnxPool(before, after, false) => {
                [before[0], before[1], after[0], after[1]]
            }
            PaddingSpec::SameUpper | PaddingSpec::SameLower => {
                let total = |n: usize, k: usize| ((n.div_ceil(s) - 1) * s + k).saturating_sub(n);
                let (th, tw) = (total(h, kh), total(w, kw));
                if matches!(spec.padding, PaddingSpec::SameUpper) {
                    [th / 2, tw / 2, th - th / 2, tw - tw / 2]
                } else {
                    [th - th / 2, tw - tw / 2, th / 2, tw / 2]
                }
            }
            other => bail!("padding {other:?}"),
        };
        let output = ConvShape::output_size(h, w, (kh, kw), s, padding).with_context(|| {
            format!("a {kh}×{kw} window (stride {s}, padding {padding:?}) over a {h}×{w} input")
        })?;
        Ok((s, padding, output))
    }

    /// A 1×1 convolution (`NIHW,OI->NOHW` and the like) or a dense layer over pooled
    /// features (`mkba,kn->mn`).
    fn einsum(&mut self, einsum: &EinSum, inputs: &[Value]) -> Result<Value> {
        ensure!(inputs.len() == 2, "{}-input einsum", inputs.len());
        let formula = einsum.axes.to_string();
        let (operands, result) = formula
            .split_once("->")
            .with_context(|| format!("einsum {formula}"))?;
        let operands: Vec<Vec<char>> = operands.split(',').map(|s| s.chars().collect()).collect();
        let result: Vec<char> = result.chars().collect();
        let (data_index, weight) = match (&inputs[0], &inputs[1]) {
            (Value::Const(k), _) => (1, k.clone()),
            (_, Value::Const(k)) => (0, k.clone()),
            _ => bail!("einsum {formula} of two computed tensors"),
        };
        let data_letters = &operands[data_index];
        let weight_letters = &operands[1 - data_index];
        ensure!(
            weight_letters.len() == 2,
            "einsum {formula}: weights of rank {}",
            weight_letters.len()
        );
        let out_letter = *weight_letters
            .iter()
            .find(|l| !data_letters.contains(l))
            .with_context(|| format!("einsum {formula}"))?;
        let in_letter = *weight_letters
            .iter()
            .find(|l| data_letters.contains(l))
            .with_context(|| format!("einsum {formula}"))?;
        let (view, scale) = inputs[data_index]
            .as_view()
            .expect("the other input is the constant");
        ensure!(
            view.channels_before == 0 && view.channels_after == 0,
            "einsum {formula} over zero-padded channels"
        );
        ensure!(view.stride_h == view.stride_w, "different strides per axis");
        let (source, view_roles, stride) = (view.id, view.roles, (view.stride_h, view.stride_w));
        ensure!(
            view_roles.len() == data_letters.len(),
            "einsum {formula}: rank mismatch"
        );
        let role_of =
            |letter: char| view_roles[data_letters.iter().position(|&l| l == letter).unwrap()];
        ensure!(
            role_of(in_letter) == Role::Channels,
            "einsum {formula} does not sum over channels"
        );
        let (h, w, c) = self.shapes[source];
        let w_shape = weight.shape().to_vec();
        let values = floats(&weight)?;
        let in_axis = weight_letters.iter().position(|&l| l == in_letter).unwrap();
        ensure!(
            w_shape[in_axis] == c,
            "einsum {formula}: {} inputs for {c} channels",
            w_shape[in_axis]
        );
        let oc = w_shape[1 - in_axis];
        // [out][in] weights.
        let mut matrix = vec![0f32; oc * c];
        for o in 0..oc {
            for i in 0..c {
                let index = if in_axis == 0 { i * oc + o } else { o * c + i };
                matrix[o * c + i] = values[index] * scale;
            }
        }
        let spatial = data_letters
            .iter()
            .filter(|&&l| matches!(role_of(l), Role::Height | Role::Width))
            .filter(|&&l| result.contains(&l))
            .count();
        let result_roles: Vec<Role> = result
            .iter()
            .map(|&l| {
                if l == out_letter {
                    Role::Channels
                } else if data_letters.contains(&l) {
                    role_of(l)
                } else {
                    Role::Unit
                }
            })
            .collect();
        ensure!(
            spatial > 0 || (h.div_ceil(stride.0) == 1 && w.div_ceil(stride.1) == 1),
            "einsum {formula} drops a {h}×{w} map"
        );
        // Over one pixel, a dense layer (the classifier); a strided 1×1 convolution to
        // one pixel (a projection in the last stage at a small input) stays a
        // convolution below, though tract dropped its spatial axes.
        if spatial == 0 && (h, w) == (1, 1) {
            let new = self.push(
                LayerSpec::Dense(DenseSpec {
                    input: source,
                    out_features: oc,
                    weights: matrix,
                    bias: vec![0.0; oc],
                    relu: false,
                }),
                (1, 1, oc),
            );
            return Ok(Value::Tensor {
                id: new,
                roles: result_roles,
                scale: 1.0,
            });
        }
        ensure!(scale == 1.0, "einsum {formula} over an unfinished average");
        let s = stride.0;
        let new = self.push(
            LayerSpec::Conv(ConvSpec {
                input: source,
                out_channels: oc,
                kernel: (1, 1),
                stride: s,
                padding: [0; 4],
                weights: matrix,
                bias: vec![0.0; oc],
                relu: false,
                residual: None,
            }),
            (h.div_ceil(s), w.div_ceil(s), oc),
        );
        Ok(Value::Tensor {
            id: new,
            roles: result_roles,
            scale: 1.0,
        })
    }

    fn binary(&mut self, name: &str, inputs: &[Value], node: &TypedNode) -> Result<Value> {
        ensure!(inputs.len() == 2, "{name} of {} inputs", inputs.len());
        let single_reader = |lowering: &Self, i: usize| lowering.consumers(node.inputs[i]) == 1;
        match (name, &inputs[0], &inputs[1]) {
            ("Max", Value::Tensor { id, roles, scale }, Value::Const(k))
            | ("Max", Value::Const(k), Value::Tensor { id, roles, scale }) => {
                ensure!(
                    floats(k)?.iter().all(|&v| v == 0.0),
                    "max with a non-zero constant"
                );
                ensure!(*scale == 1.0, "ReLU of an unfinished average");
                let reader = single_reader(self, usize::from(matches!(inputs[0], Value::Const(_))));
                let layer = self.layer_mut(*id).context("ReLU of the input image")?;
                ensure!(reader, "ReLU of a tensor that is also read elsewhere");
                match layer {
                    LayerSpec::Conv(c) => match &mut c.residual {
                        Some(r) if !r.relu => r.relu = true,
                        None if !c.relu => c.relu = true,
                        _ => bail!("a second ReLU"),
                    },
                    LayerSpec::Dense(d) if !d.relu => d.relu = true,
                    _ => bail!("ReLU after a layer that cannot take one"),
                }
                Ok(Value::Tensor {
                    id: *id,
                    roles: roles.clone(),
                    scale: 1.0,
                })
            }
            (
                "Mul" | "Add" | "Sub" | "Div",
                Value::Tensor { id, roles, scale },
                Value::Const(k),
            )
            | ("Mul" | "Add", Value::Const(k), Value::Tensor { id, roles, scale }) => {
                let reader = single_reader(self, usize::from(matches!(inputs[0], Value::Const(_))));
                let values = floats(k)?;
                if name == "Add" && *scale == 1.0 && self.is_a_convolutions_bias(node) {
                    let channels = self.shapes[*id].2;
                    return Ok(Value::ChannelBias {
                        id: *id,
                        bias: per_channel(k, roles, channels)?,
                    });
                }
                // A scalar on an unfinished average (ReduceSum then a division).
                if *scale != 1.0 && values.len() == 1 && matches!(name, "Mul" | "Div") {
                    let factor = if name == "Mul" {
                        values[0]
                    } else {
                        1.0 / values[0]
                    };
                    return Ok(Value::Tensor {
                        id: *id,
                        roles: roles.clone(),
                        scale: scale * factor,
                    });
                }
                ensure!(*scale == 1.0, "{name} on an unfinished average");
                let channels = self.shapes[*id].2;
                let per_channel = per_channel(k, roles, channels)?;
                ensure!(
                    reader,
                    "{name} by a constant on a tensor that is also read elsewhere"
                );
                let layer = self
                    .layer_mut(*id)
                    .context("arithmetic on the input image (give --mean / --std instead)")?;
                let (weights, bias, fresh) = match layer {
                    LayerSpec::Conv(c) => {
                        (&mut c.weights, &mut c.bias, !c.relu && c.residual.is_none())
                    }
                    LayerSpec::Dense(d) => (&mut d.weights, &mut d.bias, !d.relu),
                    LayerSpec::GlobalAvgPool { .. }
                    | LayerSpec::Mean { .. }
                    | LayerSpec::MaxPool(_) => {
                        bail!("{name} after a pooling layer")
                    }
                    LayerSpec::Softmax { .. } => bail!("{name} after a softmax"),
                };
                ensure!(fresh, "{name} by a constant after a ReLU or an add");
                let per_output = weights.len() / channels;
                for (o, &v) in per_channel.iter().enumerate() {
                    match name {
                        "Mul" | "Div" => {
                            let f = if name == "Mul" { v } else { 1.0 / v };
                            weights[o * per_output..(o + 1) * per_output]
                                .iter_mut()
                                .for_each(|w| *w *= f);
                            bias[o] *= f;
                        }
                        "Add" => bias[o] += v,
                        _ => bias[o] -= v,
                    }
                }
                Ok(Value::Tensor {
                    id: *id,
                    roles: roles.clone(),
                    scale: 1.0,
                })
            }
            ("Add", a, b) => self.residual_add(a, b, node),
            _ => bail!("{name} of {} and {}", kind(&inputs[0]), kind(&inputs[1])),
        }
    }

    /// `a + b` where one side is a convolution whose output only this add reads: the
    /// add fuses into it, and the other side becomes its shortcut.
    fn residual_add(&mut self, a: &Value, b: &Value, node: &TypedNode) -> Result<Value> {
        let candidates = [(a, b, 0usize), (b, a, 1)];
        let mut choice = None;
        for (fused, other, index) in candidates {
            if let Value::Tensor { id, scale: 1.0, .. } = fused {
                let free = self.consumers(node.inputs[index]) == 1
                    && matches!(self.layers.get(id.wrapping_sub(1)), Some(LayerSpec::Conv(c)) if c.residual.is_none() && !c.relu);
                let Some((other_view, _)) = other.as_view() else {
                    bail!("add of a constant to a tensor that is also read elsewhere")
                };
                let other_id = other_view.id;
                if free
                    && *id > other_id
                    && choice.is_none_or(|(best, _): (usize, &Value)| *id > best)
                {
                    choice = Some((*id, other));
                }
            }
        }
        let (id, other) = choice.context(
            "add of two tensors where neither is a convolution computed after the other and read only by the add",
        )?;
        let (view, scale) = other.as_view().expect("checked above");
        ensure!(scale == 1.0, "add of an unfinished average");
        ensure!(view.stride_h == view.stride_w, "different strides per axis");
        let residual = ResidualSpec {
            tensor: view.id,
            stride: view.stride_h,
            channel_offset: view.channels_before,
            relu: false,
        };
        let roles = view.roles;
        let (oh, ow, oc) = self.shapes[id];
        let (sh, sw, sc) = self.shapes[residual.tensor];
        ensure!(
            sh.div_ceil(residual.stride) == oh
                && sw.div_ceil(residual.stride) == ow
                && residual.channel_offset + sc <= oc,
            "residual add of {sh}×{sw}×{sc} (stride {}, offset {}) to {oh}×{ow}×{oc}",
            residual.stride,
            residual.channel_offset
        );
        let Some(LayerSpec::Conv(conv)) = self.layer_mut(id) else {
            unreachable!()
        };
        conv.residual = Some(residual);
        Ok(Value::Tensor {
            id,
            roles,
            scale: 1.0,
        })
    }

    fn downsample(&mut self, down: &Downsample, input: &Value) -> Result<Value> {
        ensure!(down.modulo == 0, "subsampling from offset {}", down.modulo);
        let mut view = match input.as_view() {
            Some((view, 1.0)) => view,
            _ => bail!("subsampling of {}", kind(input)),
        };
        ensure!(
            view.channels_before == 0 && view.channels_after == 0,
            "subsampling after channel padding"
        );
        match view.roles.get(down.axis) {
            Some(Role::Height) => view.stride_h *= down.stride as usize,
            Some(Role::Width) => view.stride_w *= down.stride as usize,
            other => bail!("subsampling along {other:?}"),
        }
        Ok(Value::View(view))
    }

    fn pad(&mut self, pad: &Pad, input: &Value) -> Result<Value> {
        let PadMode::Constant(value) = &pad.mode else {
            bail!("padding mode {:?}", pad.mode);
        };
        ensure!(
            floats(value)?.iter().all(|&v| v == 0.0),
            "padding with a non-zero value"
        );
        let mut view = match input.as_view() {
            Some((view, scale))
                if scale == 1.0 && view.channels_before == 0 && view.channels_after == 0 =>
            {
                view
            }
            _ => bail!("padding of {}", kind(input)),
        };
        for (axis, &(before, after)) in pad.pads.iter().enumerate() {
            if before == 0 && after == 0 {
                continue;
            }
            ensure!(
                view.roles.get(axis) == Some(&Role::Channels),
                "zero padding along {:?} (only channels, as option A does)",
                view.roles.get(axis)
            );
            (view.channels_before, view.channels_after) = (before, after);
        }
        Ok(Value::View(view))
    }

    fn global_pool(&mut self, id: usize, roles: &[Role], scale: f32) -> Value {
        let (_, _, c) = self.shapes[id];
        let new = self.push(LayerSpec::GlobalAvgPool { input: id }, (1, 1, c));
        self.features = Some(new);
        let roles = roles
            .iter()
            .map(|r| {
                if matches!(r, Role::Height | Role::Width) {
                    Role::Unit
                } else {
                    *r
                }
            })
            .collect();
        Value::Tensor {
            id: new,
            roles,
            scale,
        }
    }

    fn sum_pool(&mut self, pool: &SumPool, input: &Value) -> Result<Value> {
        let (id, roles) = Self::tensor(input)?;
        let roles = roles.to_vec();
        let (h, w, _) = self.shapes[id];
        let spec = &pool.pool_spec;
        let no_padding = match &spec.padding {
            PaddingSpec::Valid => true,
            PaddingSpec::Explicit(b, a) => b.iter().chain(a).all(|&p| p == 0),
            _ => false,
        };
        // A 1×1 pool with a stride is a subsampling (how our export spells option A).
        if spec.kernel_shape.as_slice() == [1, 1] && no_padding {
            let strides = spec.strides.clone().unwrap_or_else(|| tvec![1, 1]);
            return Ok(Value::View(View {
                id,
                roles,
                stride_h: strides[0],
                stride_w: strides[1],
                channels_before: 0,
                channels_after: 0,
            }));
        }
        ensure!(
            spec.kernel_shape.as_slice() == [h, w]
                && matches!(spec.padding, PaddingSpec::Valid | PaddingSpec::Explicit(..)),
            "average pooling of {:?} over a {h}×{w} map (only global pooling)",
            spec.kernel_shape
        );
        let scale = if pool.normalize { 1.0 } else { (h * w) as f32 };
        Ok(self.global_pool(id, &roles, scale))
    }

    fn reduce(&mut self, reduce: &Reduce, input: &Value) -> Result<Value> {
        let (id, roles) = Self::tensor(input)?;
        let roles = roles.to_vec();
        ensure!(
            matches!(reduce.reducer, Reducer::Sum),
            "reduction {:?}",
            reduce.reducer
        );
        let mut axes: Vec<Role> = reduce.axes.iter().map(|&a| roles[a]).collect();
        axes.sort_by_key(|r| *r as u8);
        ensure!(
            axes == [Role::Height, Role::Width],
            "reduction over {axes:?} (only over rows and columns)"
        );
        let (h, w, _) = self.shapes[id];
        Ok(self.global_pool(id, &roles, (h * w) as f32))
    }

    fn axis_op(&mut self, op: &AxisOp, input: &Value, node: &TypedNode) -> Result<Value> {
        let (id, roles, scale) = match input {
            Value::Tensor { id, roles, scale } => (*id, roles.clone(), *scale),
            _ => bail!("axis change of {}", kind(input)),
        };
        let (h, w, c) = self.shapes[id];
        let size = |role: Role| match role {
            Role::Batch | Role::Unit => 1,
            Role::Channels => c,
            Role::Height => h,
            Role::Width => w,
        };
        let mut roles = roles;
        match op {
            AxisOp::Move(from, to) => {
                let role = roles.remove(*from);
                roles.insert(*to, role);
            }
            AxisOp::Rm(axis) => {
                ensure!(
                    size(roles[*axis]) == 1,
                    "removing axis {axis} of size {}",
                    size(roles[*axis])
                );
                roles.remove(*axis);
            }
            AxisOp::Add(axis) => roles.insert(*axis, Role::Unit),
            AxisOp::Reshape(..) => {
                // Flattening pooled features: only axes of size 1 besides the channels.
                let out_shape = self
                    .model
                    .outlet_fact(OutletId::new(node.id, 0))?
                    .shape
                    .as_concrete()
                    .map(<[usize]>::to_vec);
                let out_shape = out_shape.context("reshape to a symbolic shape")?;
                ensure!(
                    h == 1 && w == 1,
                    "reshape of a {h}×{w} map (only pooled features can be flattened)"
                );
                roles = out_shape
                    .iter()
                    .map(|&d| {
                        if d == c && c != 1 {
                            Role::Channels
                        } else {
                            Role::Unit
                        }
                    })
                    .collect();
                ensure!(
                    roles.iter().filter(|&&r| r == Role::Channels).count() == 1 || c == 1,
                    "reshape to {out_shape:?}"
                );
            }
        }
        Ok(Value::Tensor { id, roles, scale })
    }
}

/// Whether the lowering knows this kind of operation at all.
fn known_op(node: &TypedNode) -> bool {
    node.op_is::<Conv>()
        || node.op_is::<EinSum>()
        || node.op_is::<TypedBinOp>()
        || node.op_is::<Downsample>()
        || node.op_is::<Pad>()
        || node.op_is::<SumPool>()
        || node.op_is::<MaxPool>()
        || node.op_is::<Reduce>()
        || node.op_is::<AxisOp>()
        || node.op_is::<Softmax>()
        || node.op_is::<tract_onnx::tract_core::ops::konst::Const>()
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Tensor { .. } => "a tensor",
        Value::View(_) => "a subsampled or padded tensor",
        Value::Const(_) => "a constant",
        Value::ChannelBias { .. } => "a tensor plus a constant per channel",
    }
}

fn floats(tensor: &Tensor) -> Result<Vec<f32>> {
    let cast = tensor.cast_to::<f32>()?;
    Ok(cast.to_plain_array_view::<f32>()?.iter().copied().collect())
}

/// A constant of one value or one value per channel, as a per-channel vector.
fn broadcast(values: &[f32], channels: usize, what: &str) -> Result<Vec<f32>> {
    match values.len() {
        1 => Ok(vec![values[0]; channels]),
        n if n == channels => Ok(values.to_vec()),
        n => bail!("{what} has {n} values for {channels} channels"),
    }
}

/// A constant broadcast against a tensor with these axis roles, as one value per
/// channel; fails if it varies along any other axis.
fn per_channel(constant: &Tensor, roles: &[Role], channels: usize) -> Result<Vec<f32>> {
    let values = floats(constant)?;
    let shape = constant.shape();
    if values.len() == 1 {
        return Ok(vec![values[0]; channels]);
    }
    // Align the constant's axes to the tensor's last axes (numpy broadcasting).
    let offset = roles
        .len()
        .checked_sub(shape.len())
        .context("constant of higher rank")?;
    for (axis, &d) in shape.iter().enumerate() {
        let role = roles[axis + offset];
        ensure!(
            d == 1 || role == Role::Channels,
            "a constant that varies along {role:?}, not only channels"
        );
    }
    broadcast(&values, channels, "constant")
}
