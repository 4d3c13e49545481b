//! The blob writer: a float network description in, a validated
//! `.trm` blob out, as f32, f16-weight or calibrated int8.
//!
//! The host compiler lowers ONNX graphs to a [`Network`]; tests build networks by
//! hand. Tensor `0` is the input image; layer `k` writes tensor `k + 1`; layers run in
//! order. Weights are given in f32, convolutions in OHWI order (`[out][ky][kx][in]`),
//! dense layers as `[out][in]` over the NHWC-flattened input.

use std::fmt;

use half::f16;

use crate::plan::{align_up, plan_buffers, BufferRequest};
use tinyres_core::format::{
    self, flags, header, kind, layer as lf, tensor as tf, DType, InputRange,
};
use tinyres_core::kernels::ConvShape;
use tinyres_core::quant::{
    quantize_multiplier, AddParams, SoftmaxParams, SOFTMAX_OUTPUT_QUANTIZATION,
};

/// The input image and how raw pixels are normalised.
#[derive(Clone, Debug, PartialEq)]
pub struct InputSpec {
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// Channels.
    pub channels: usize,
    /// Scaling of raw pixels before normalisation.
    pub range: InputRange,
    /// Per-channel mean subtracted after scaling.
    pub mean: Vec<f32>,
    /// Per-channel standard deviation divided by after the mean.
    pub std: Vec<f32>,
}

/// A residual input added after a convolution (see [`tinyres_core::Residual`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResidualSpec {
    /// Tensor added.
    pub tensor: usize,
    /// Spatial subsampling of the shortcut (2 for option A across a stage).
    pub stride: usize,
    /// Zero channels padded before the shortcut's channels (option A).
    pub channel_offset: usize,
    /// ReLU after the add.
    pub relu: bool,
}

/// A convolution with batch norm folded into its weights and bias.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvSpec {
    /// Input tensor.
    pub input: usize,
    /// Output channels.
    pub out_channels: usize,
    /// `(rows, columns)` of the kernel.
    pub kernel: (usize, usize),
    /// Stride.
    pub stride: usize,
    /// Zero padding `[top, left, bottom, right]`.
    pub padding: [usize; 4],
    /// OHWI weights.
    pub weights: Vec<f32>,
    /// One bias per output channel.
    pub bias: Vec<f32>,
    /// ReLU on the convolution (before any residual add).
    pub relu: bool,
    /// Residual add after the convolution.
    pub residual: Option<ResidualSpec>,
}

impl ConvSpec {
    /// The kernel's view of this convolution from `(height, width, channels)` of its
    /// input and output tensors.
    pub fn shape(&self, input: (usize, usize, usize), output: (usize, usize, usize)) -> ConvShape {
        let padding = (self.padding[0], self.padding[1]);
        ConvShape::of_window(input, output, self.kernel, self.stride, padding)
    }
}

/// A max pool (the ImageNet ResNets' 3×3 stride-2 pool after the stem).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaxPoolSpec {
    /// Input tensor.
    pub input: usize,
    /// `(rows, columns)` of the window.
    pub kernel: (usize, usize),
    /// Stride in both directions.
    pub stride: usize,
    /// Padding `[top, left, bottom, right]`, never chosen (it counts as −∞).
    pub padding: [usize; 4],
}

impl MaxPoolSpec {
    /// The kernel's view of this pool from `(height, width, channels)` of its input
    /// and output tensors.
    pub fn shape(&self, input: (usize, usize, usize), output: (usize, usize, usize)) -> ConvShape {
        let padding = (self.padding[0], self.padding[1]);
        ConvShape::of_window(input, output, self.kernel, self.stride, padding)
    }
}

/// A fully connected layer.
#[derive(Clone, Debug, PartialEq)]
pub struct DenseSpec {
    /// Input tensor (flattened NHWC).
    pub input: usize,
    /// Outputs.
    pub out_features: usize,
    /// `[out][in]` weights.
    pub weights: Vec<f32>,
    /// One bias per output.
    pub bias: Vec<f32>,
    /// ReLU on the output.
    pub relu: bool,
}

/// One layer of a [`Network`].
#[derive(Clone, Debug, PartialEq)]
pub enum LayerSpec {
    /// Convolution.
    Conv(ConvSpec),
    /// Global average pooling of a tensor.
    GlobalAvgPool {
        /// Input tensor.
        input: usize,
    },
    /// Fully connected layer.
    Dense(DenseSpec),
    /// Max pooling.
    MaxPool(MaxPoolSpec),
    /// The mean over height and width, 1×1×C (TFLite's MEAN): a global average
    /// pool whose int8 output may have a quantization of its own.
    Mean {
        /// Input tensor.
        input: usize,
    },
    /// Softmax over the channels of a 1×1×C tensor (TFLite's SOFTMAX): the
    /// probabilities of `exp(beta · x)`. An int8 model computes it in int8.
    Softmax {
        /// Input tensor.
        input: usize,
        /// The logits' multiplier (1 for a plain softmax).
        beta: f32,
    },
}

impl LayerSpec {
    fn inputs(&self) -> (usize, Option<usize>) {
        match self {
            LayerSpec::Conv(c) => (c.input, c.residual.map(|r| r.tensor)),
            LayerSpec::GlobalAvgPool { input } => (*input, None),
            LayerSpec::Dense(d) => (d.input, None),
            LayerSpec::MaxPool(p) => (p.input, None),
            LayerSpec::Softmax { input, .. } | LayerSpec::Mean { input } => (*input, None),
        }
    }
}

/// A float network in the engine's layer set.
#[derive(Clone, Debug, PartialEq)]
pub struct Network {
    /// The input image.
    pub input: InputSpec,
    /// Layers in execution order; layer `k` writes tensor `k + 1`.
    pub layers: Vec<LayerSpec>,
    /// The pooled-feature tensor the on-device trainer reads (usually the global
    /// average pool's output).
    pub features: Option<usize>,
    /// Class names (empty, or one per logit).
    pub class_names: Vec<String>,
}

/// Why a network could not be written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteError(pub String);

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WriteError {}

/// The output `(rows, columns)` of a convolution's or a pool's window over `(h, w)`, or
/// what is wrong with the window.
fn window_output(
    (h, w): (usize, usize),
    kernel: (usize, usize),
    stride: usize,
    padding: [usize; 4],
) -> Result<(usize, usize), &'static str> {
    let (kh, kw) = kernel;
    if kh == 0 || kw == 0 || kh > 255 || kw > 255 || stride == 0 || stride > 255 {
        return Err("kernel and stride must be in 1..=255");
    }
    if padding[0].max(padding[2]) >= kh || padding[1].max(padding[3]) >= kw {
        return Err("padding must be smaller than the kernel");
    }
    ConvShape::output_size(h, w, kernel, stride, padding)
        .ok_or("kernel larger than the padded input")
}

fn fail<T>(msg: impl Into<String>) -> Result<T, WriteError> {
    Err(WriteError(msg.into()))
}

/// Observed real-valued range of every activation, for int8 quantization.
#[derive(Clone, Debug, PartialEq)]
pub struct ActivationRanges {
    /// `(min, max)` of each tensor (index = tensor id). The input's range is that of
    /// the preprocessed image. A global average pool's output is given its input's
    /// quantization regardless (the int8 pool keeps it).
    pub tensors: Vec<(f32, f32)>,
    /// For each layer, the `(min, max)` of the convolution's output before its
    /// residual add (`None` for layers without one).
    pub pre_add: Vec<Option<(f32, f32)>>,
}

/// Every activation of one float run: see [`Network::forward_f32`].
#[derive(Clone, Debug, PartialEq)]
pub struct ForwardTrace {
    /// Each tensor's values (index = tensor id), NHWC.
    pub tensors: Vec<Vec<f32>>,
    /// For each layer with a residual add, the convolution's value before the add.
    pub pre_add: Vec<Option<Vec<f32>>>,
}

/// How the memory planner trades speed for RAM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Memory {
    /// The smallest arena: convolution groups (residual blocks, pairs of plain
    /// layers, the first layer with the image) stream row by row through small row
    /// windows, and a block's output is written over its input.
    #[default]
    Min,
    /// Every layer runs over whole tensors (the plan of format version 2).
    Fast,
}

/// How a network is laid out in its blob, besides its numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlobOptions {
    /// The memory plan.
    pub memory: Memory,
    /// Every int8 convolution that [`tinyres_core::winograd::applies`] to carries its
    /// Winograd filters (2.7× its weights' bytes more), from which the Cortex-M DSP
    /// kernel computes it with 1.5× fewer multiplies.
    pub winograd: bool,
}

/// A memory plan: where each tensor lives in the arena.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArenaPlan {
    /// Arena offset of each tensor.
    pub offsets: Vec<usize>,
    /// Rows each tensor's buffer holds: 0 for a whole tensor, fewer than its height
    /// for a row window.
    pub rows_held: Vec<usize>,
    /// Bytes the arena needs.
    pub peak: usize,
}

/// How to encode the network's numbers.
#[derive(Clone, Copy, Debug)]
pub enum Encoding<'a> {
    /// f32 weights and activations.
    F32,
    /// f16 weights, f32 activations.
    F16,
    /// TFLite int8 with the given activation ranges.
    Int8(&'a ActivationRanges),
    /// TFLite int8 with the quantization a `.tflite` file gives, taken as it is: the
    /// whole network, its head included, computes in int8.
    Quantized(&'a GivenQuantization),
}

impl Encoding<'_> {
    /// The blob's numeric type.
    pub fn dtype(&self) -> DType {
        match self {
            Encoding::F32 => DType::F32,
            Encoding::F16 => DType::F16,
            Encoding::Int8(_) | Encoding::Quantized(_) => DType::Int8,
        }
    }
}

/// int8 quantization as a `.tflite` file states it, for [`Encoding::Quantized`].
#[derive(Clone, Debug, PartialEq)]
pub struct GivenQuantization {
    /// `(scale, zero_point)` of every tensor (index = tensor id).
    pub tensors: Vec<(f32, i32)>,
    /// For each layer that adds a residual, the `(scale, zero_point)` of its
    /// convolution's output before the add (`None` for the other layers).
    pub pre_add: Vec<Option<(f32, i32)>>,
    /// Each convolution's and dense layer's stored parameters (`None` for the other
    /// layers).
    pub parameters: Vec<Option<QuantizedParameters>>,
}

/// A layer's int8 weights, as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedParameters {
    /// Weights in the layer's order (OHWI, or `[out][in]`).
    pub weights: Vec<i8>,
    /// One symmetric scale per output channel.
    pub weight_scales: Vec<f32>,
    /// int32 biases on the scale `input_scale · weight_scale` of each channel.
    pub bias: Vec<i32>,
}

/// int8 scale and zero point covering `[min, max]` (widened to include 0, as
/// TFLite's converter does).
pub fn quantization_for_range(min: f32, max: f32) -> (f32, i32) {
    let min = min.min(0.0);
    let max = max.max(0.0);
    let scale = if max > min && (max - min).is_finite() {
        (max - min) / 255.0
    } else {
        1.0
    };
    let zero_point = libm::roundf(-128.0 - min / scale) as i32;
    (scale, zero_point.clamp(-128, 127))
}

impl Network {
    /// `(height, width, channels)` of every tensor, checking every layer's sizes.
    pub fn tensor_shapes(&self) -> Result<Vec<(usize, usize, usize)>, WriteError> {
        let i = &self.input;
        if i.height == 0 || i.width == 0 || i.channels == 0 {
            return fail("input: every dimension must be at least 1");
        }
        if i.mean.len() != i.channels || i.std.len() != i.channels {
            return fail(format!(
                "input: {} mean and {} std values for {} channels",
                i.mean.len(),
                i.std.len(),
                i.channels
            ));
        }
        if i.std.iter().any(|&s| !(s.is_finite() && s > 0.0))
            || i.mean.iter().any(|m| !m.is_finite())
        {
            return fail("input: mean must be finite and std finite and positive");
        }
        if self.layers.is_empty() {
            return fail("network has no layers");
        }
        let mut shapes = vec![(i.height, i.width, i.channels)];
        for (k, layer) in self.layers.iter().enumerate() {
            let (input, residual) = layer.inputs();
            let at = |what: &str| format!("layer {k}: {what}");
            if input > k {
                return fail(at(&format!("input tensor {input} is not computed yet")));
            }
            let (h, w, c) = shapes[input];
            let shape = match layer {
                LayerSpec::Conv(conv) => {
                    let (kh, kw) = conv.kernel;
                    let (oh, ow) = window_output((h, w), conv.kernel, conv.stride, conv.padding)
                        .map_err(|e| WriteError(at(e)))?;
                    let n = conv.out_channels * kh * kw * c;
                    if conv.weights.len() != n {
                        return fail(at(&format!(
                            "{} weights, expected {n} (OHWI {}x{kh}x{kw}x{c})",
                            conv.weights.len(),
                            conv.out_channels
                        )));
                    }
                    if conv.bias.len() != conv.out_channels {
                        return fail(at(&format!(
                            "{} biases, expected {}",
                            conv.bias.len(),
                            conv.out_channels
                        )));
                    }
                    if let (Some(r), Some(t)) = (conv.residual, residual) {
                        if t > k {
                            return fail(at(&format!("residual tensor {t} is not computed yet")));
                        }
                        let (rh, rw, rc) = shapes[t];
                        if r.stride == 0
                            || r.stride > 255
                            || (oh - 1) * r.stride >= rh
                            || (ow - 1) * r.stride >= rw
                            || r.channel_offset + rc > conv.out_channels
                        {
                            return fail(at(&format!(
                                "residual {rh}x{rw}x{rc} (stride {}, channel offset {}) does not map onto output {oh}x{ow}x{}",
                                r.stride, r.channel_offset, conv.out_channels
                            )));
                        }
                    }
                    (oh, ow, conv.out_channels)
                }
                LayerSpec::GlobalAvgPool { .. } | LayerSpec::Mean { .. } => (1, 1, c),
                LayerSpec::MaxPool(pool) => {
                    let (oh, ow) = window_output((h, w), pool.kernel, pool.stride, pool.padding)
                        .map_err(|e| WriteError(at(e)))?;
                    (oh, ow, c)
                }
                LayerSpec::Softmax { beta, .. } => {
                    if (h, w) != (1, 1) || !beta.is_finite() {
                        return fail(at(&format!(
                            "softmax over a {h}x{w}x{c} tensor with beta {beta}: the engine's softmax takes 1x1xC logits and a finite beta"
                        )));
                    }
                    (1, 1, c)
                }
                LayerSpec::Dense(d) => {
                    let n = d.out_features * h * w * c;
                    if d.weights.len() != n || d.bias.len() != d.out_features {
                        return fail(at(&format!(
                            "{} weights and {} biases, expected {n} and {}",
                            d.weights.len(),
                            d.bias.len(),
                            d.out_features
                        )));
                    }
                    (1, 1, d.out_features)
                }
            };
            if shape.0 == 0
                || shape.2 == 0
                || shape.0 > 0xFFFF
                || shape.1 > 0xFFFF
                || shape.2 > 0xFFFF
            {
                return fail(at("output dimensions must be in 1..=65535"));
            }
            shapes.push(shape);
        }
        let last = shapes[shapes.len() - 1];
        if (last.0, last.1) != (1, 1) {
            return fail("the last layer must produce 1x1xC logits (add a pool or dense layer)");
        }
        if let Some(f) = self.features {
            if f >= shapes.len() {
                return fail(format!("features tensor {f} does not exist"));
            }
        }
        if !self.class_names.is_empty() && self.class_names.len() != last.2 {
            return fail(format!(
                "{} class names for {} classes",
                self.class_names.len(),
                last.2
            ));
        }
        if let Some(bad) = self
            .class_names
            .iter()
            .find(|n| n.is_empty() || n.len() > 255)
        {
            return fail(format!("class name {bad:?} must be 1..=255 bytes"));
        }
        Ok(shapes)
    }

    /// Multiply-accumulates of one inference, per layer.
    pub fn macs(&self) -> Result<Vec<u64>, WriteError> {
        let shapes = self.tensor_shapes()?;
        Ok(self
            .layers
            .iter()
            .enumerate()
            .map(|(k, layer)| {
                let (_, _, c_in) = shapes[layer.inputs().0];
                let (oh, ow, oc) = shapes[k + 1];
                match layer {
                    LayerSpec::Conv(conv) => {
                        (oh * ow * oc * conv.kernel.0 * conv.kernel.1 * c_in) as u64
                    }
                    LayerSpec::GlobalAvgPool { .. } | LayerSpec::Mean { .. } => {
                        let (h, w, c) = shapes[layer.inputs().0];
                        (h * w * c) as u64
                    }
                    // Comparisons, not multiply-accumulates: one per window value.
                    LayerSpec::MaxPool(pool) => {
                        (oh * ow * oc * pool.kernel.0 * pool.kernel.1) as u64
                    }
                    LayerSpec::Dense(d) => d.weights.len() as u64,
                    LayerSpec::Softmax { .. } => oc as u64,
                }
            })
            .collect())
    }

    /// The first layer of the classifier head that an int8 blob computes in f32: the
    /// global average pool when only dense layers follow it (`layers.len()` when the
    /// network does not end that way). Rounding the pooled features and the logits to
    /// int8 costs top-1 agreement with the float model (on the MLPerf Tiny ResNet-8:
    /// 981 of 1,000 images with an int8 head, 990 with the f32 head) and saves almost
    /// nothing: the head is ~1 % of the weights and ~0.04 % of the MACs.
    pub fn f32_head(&self) -> usize {
        let dense_tail = self
            .layers
            .iter()
            .rev()
            .take_while(|l| matches!(l, LayerSpec::Dense(_)))
            .count();
        let pool = self.layers.len() - dense_tail;
        match pool.checked_sub(1).map(|k| &self.layers[k]) {
            Some(LayerSpec::GlobalAvgPool { .. }) if dense_tail > 0 => pool - 1,
            _ => self.layers.len(),
        }
    }

    /// The first layer a blob of `encoding` computes in f32: [`Network::f32_head`] for
    /// a calibrated int8 blob, none (the number of layers) otherwise.
    fn first_f32_layer(&self, encoding: Encoding<'_>) -> usize {
        match encoding {
            Encoding::Int8(_) => self.f32_head(),
            _ => self.layers.len(),
        }
    }

    /// Bytes of one element of every tensor in a blob of `dtype`: 4 for f32 and f16
    /// models; for int8, 1 except in the f32 head, which starts at layer `head`.
    fn element_bytes(&self, dtype: DType, head: usize) -> Vec<usize> {
        (0..=self.layers.len())
            .map(|t| match dtype {
                DType::Int8 if t <= head => 1,
                _ => 4,
            })
            .collect()
    }

    /// The layer ranges `first..=last` the streamed plan runs as groups
    /// (`tinyres_core`'s FORMAT.md, "Streamed groups"), and whether the image is a
    /// window. A conv's output becomes a row window when exactly one later
    /// convolution reads it, once, at most three layers on, with only convolutions in
    /// between; a run of layers with window outputs, plus the layer after it, is a
    /// group (at most four layers).
    fn stream_groups(&self) -> (Vec<(usize, usize)>, bool) {
        let n = self.layers.len();
        let is_conv = |k: usize| matches!(self.layers.get(k), Some(LayerSpec::Conv(_)));
        let mut reads: Vec<Vec<usize>> = vec![Vec::new(); n + 1];
        for (k, layer) in self.layers.iter().enumerate() {
            let (a, b) = layer.inputs();
            reads[a].push(k);
            if let Some(b) = b {
                reads[b].push(k);
            }
        }
        let single_conv_reader = |t: usize| match reads[t][..] {
            [m] => Some(m).filter(|&m| (t.saturating_sub(1)..=m).all(is_conv)),
            _ => None,
        };
        let image = single_conv_reader(0) == Some(0);
        // window[t]: tensor t (the output of conv t − 1) is a window.
        let mut window: Vec<bool> = (0..=n)
            .map(|t| {
                t >= 1
                    && t < n
                    && Some(t) != self.features
                    && single_conv_reader(t).is_some_and(|m| m + 1 - t <= 3)
            })
            .collect();
        loop {
            let mut groups = Vec::new();
            let mut changed = false;
            let mut k = 0;
            while k < n {
                if !(window[k + 1] || (k == 0 && image)) {
                    k += 1;
                    continue;
                }
                let first = k;
                let mut last = k;
                while window[last + 1] {
                    if last + 1 - first == format::MAX_STREAM_GROUP {
                        window[last + 1] = false;
                        changed = true;
                        break;
                    }
                    last += 1;
                }
                // Every window of the group is read inside it.
                for t in first + 1..=last {
                    if reads[t].iter().any(|&m| m > last) {
                        window[t] = false;
                        changed = true;
                    }
                }
                groups.push((first, last));
                k = last + 1;
            }
            if !changed {
                return (groups, image);
            }
        }
    }

    /// The memory plan for a blob of `dtype`: every tensor's arena offset and rows
    /// held (0: whole), and the arena's peak. See [`crate::plan`]. With `memory`
    /// [`Memory::Min`] the plan streams the groups of [`Network::stream_groups`]
    /// that `leads` does not switch off (`None`), placing each group's output
    /// `leads[g]` of its rows before its input so that it can be written over the
    /// input rows nothing reads any more.
    #[allow(clippy::too_many_arguments)]
    fn plan_arena(
        &self,
        dtype: DType,
        head: usize,
        groups: &[(usize, usize)],
        image_window: bool,
        leads: &[Option<usize>],
        rows_per_step: &[usize],
    ) -> Result<ArenaPlan, WriteError> {
        let shapes = self.tensor_shapes()?;
        let element_bytes = self.element_bytes(dtype, head);
        let n_layers = self.layers.len();
        let end = n_layers + 1;
        let row_bytes = |t: usize| shapes[t].1 * shapes[t].2 * element_bytes[t];
        let mut last_step: Vec<usize> = (0..shapes.len()).collect();
        for (k, layer) in self.layers.iter().enumerate() {
            let (a, b) = layer.inputs();
            last_step[a] = k + 1;
            if let Some(b) = b {
                last_step[b] = k + 1;
            }
        }
        last_step[n_layers] = end;
        if let Some(f) = self.features {
            last_step[f] = end;
        }
        let mut rows_held = vec![0; shapes.len()];
        // first_step[t]: the step that writes tensor t (layer t − 1 runs at step t).
        let mut first_step: Vec<usize> = (0..shapes.len()).collect();
        for ((&(first, last), lead), &rows) in groups.iter().zip(leads).zip(rows_per_step) {
            if lead.is_none() {
                continue;
            }
            // Inside a group every buffer is live from its first step to its last.
            for k in first..=last {
                let (a, b) = self.layers[k].inputs();
                for t in core::iter::once(a).chain(b) {
                    last_step[t] = last_step[t].max(last + 1);
                    if t > first || (t == 0 && image_window && first == 0) {
                        first_step[t] = first_step[t].min(first + 1);
                        rows_held[t] = self.window_rows(t, k, shapes[t].0, rows);
                    }
                }
            }
        }
        // Buffers: a tensor, or a chain of tensors sharing one buffer (an in-place
        // residual output, or a group's output placed over its input), each at a
        // relative offset in it.
        let mut buffer_of: Vec<usize> = (0..shapes.len()).collect();
        let mut relative: Vec<isize> = vec![0; shapes.len()];
        let bytes = |t: usize, rows_held: &[usize]| {
            let rows = if rows_held[t] == 0 {
                shapes[t].0
            } else {
                rows_held[t]
            };
            rows * row_bytes(t)
        };
        // In layer order, so that a chain grows from the buffer its input is in.
        for (k, layer) in self.layers.iter().enumerate() {
            let out = k + 1;
            let group = groups
                .iter()
                .zip(leads)
                .find_map(|(&(first, last), lead)| lead.filter(|_| last == k).map(|l| (first, l)));
            if let Some((first, lead)) = group {
                let (input, _) = self.layers[first].inputs();
                if rows_held[input] == 0 && last_step[input] == k + 1 {
                    let lead_bytes = align_up(lead * row_bytes(out), format::SECTION_ALIGN);
                    buffer_of[out] = buffer_of[input];
                    relative[out] = relative[input] - lead_bytes as isize;
                }
                continue;
            }
            if let LayerSpec::Conv(ConvSpec {
                input,
                residual: Some(r),
                ..
            }) = layer
            {
                if r.stride == 1
                    && r.channel_offset == 0
                    && shapes[r.tensor] == shapes[out]
                    && *input != r.tensor
                    && last_step[r.tensor] == k + 1
                    && rows_held[r.tensor] == 0
                {
                    buffer_of[out] = buffer_of[r.tensor];
                    relative[out] = relative[r.tensor];
                }
            }
        }
        let mut requests: Vec<BufferRequest> = (0..shapes.len())
            .map(|t| BufferRequest {
                size: 0,
                first_step: first_step[t],
                last_step: last_step[t],
            })
            .collect();
        let mut base = vec![0isize; shapes.len()];
        for t in 0..shapes.len() {
            base[buffer_of[t]] = base[buffer_of[t]].min(relative[t]);
        }
        for t in 0..shapes.len() {
            let b = buffer_of[t];
            let end = (relative[t] - base[b]) as usize + bytes(t, &rows_held);
            let request = &mut requests[b];
            request.size = request.size.max(align_up(end, format::SECTION_ALIGN));
            request.first_step = request.first_step.min(first_step[t]);
            request.last_step = request.last_step.max(last_step[t]);
        }
        let plan = plan_buffers(&requests, format::SECTION_ALIGN);
        let offsets = (0..shapes.len())
            .map(|t| {
                let b = buffer_of[t];
                plan.offsets[b] + (relative[t] - base[b]) as usize
            })
            .collect();
        Ok(ArenaPlan {
            offsets,
            rows_held,
            peak: plan.peak.max(format::SECTION_ALIGN),
        })
    }

    /// Rows a window of tensor `t` (of `height` rows) needs for its reader, layer `k`,
    /// to compute `rows` output rows a step: the kernel's rows and `stride` more for each
    /// further row for its input, its shortcut rows for its shortcut.
    fn window_rows(&self, t: usize, k: usize, height: usize, rows: usize) -> usize {
        let needed = match &self.layers[k] {
            LayerSpec::Conv(c) if c.input == t => c.kernel.0 + (rows - 1) * c.stride,
            LayerSpec::Conv(ConvSpec {
                residual: Some(r), ..
            }) => (rows - 1) * r.stride + 1,
            _ => 1,
        };
        needed.min(height)
    }

    /// Runs the network in f32 on one raw image (HWC `u8`, preprocessed as the blob
    /// will be): every tensor, and for each layer with a residual the convolution's
    /// value before the add. The float reference for calibration and tests; it uses the
    /// portable kernels.
    pub fn forward_f32(&self, pixels: &[u8]) -> Result<ForwardTrace, WriteError> {
        let shapes = self.tensor_shapes()?;
        let (h, w, c) = shapes[0];
        if pixels.len() != h * w * c {
            return fail(format!(
                "image has {} bytes, the input is {h}x{w}x{c}",
                pixels.len()
            ));
        }
        let input = pixels
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                let scaled = match self.input.range {
                    InputRange::Byte => f32::from(p),
                    InputRange::Unit => f32::from(p) / 255.0,
                };
                (scaled - self.input.mean[i % c]) / self.input.std[i % c]
            })
            .collect();
        let mut tensors: Vec<Vec<f32>> = vec![input];
        let mut pre_add = Vec::with_capacity(self.layers.len());
        let kernel_error = |k: usize, e: tinyres_core::Error| WriteError(format!("layer {k}: {e}"));
        for (k, layer) in self.layers.iter().enumerate() {
            let (oh, ow, oc) = shapes[k + 1];
            let mut out = vec![0.0f32; oh * ow * oc];
            let (input, _) = layer.inputs();
            let (ih, iw, _) = shapes[input];
            let x = &tensors[input];
            match layer {
                LayerSpec::Conv(conv) => {
                    let shape = conv.shape(shapes[input], shapes[k + 1]);
                    tinyres_core::kernels::conv2d_f32(
                        &shape,
                        x,
                        &conv.weights,
                        &conv.bias,
                        conv.relu,
                        None,
                        &mut out,
                    )
                    .map_err(|e| kernel_error(k, e))?;
                    match conv.residual {
                        None => pre_add.push(None),
                        Some(r) => {
                            pre_add.push(Some(out.clone()));
                            let (_, rw, rc) = shapes[r.tensor];
                            let shortcut = &tensors[r.tensor];
                            for (i, v) in out.iter_mut().enumerate() {
                                let (y, xx, ch) = (i / oc / ow, i / oc % ow, i % oc);
                                if let Some(sc) =
                                    ch.checked_sub(r.channel_offset).filter(|&sc| sc < rc)
                                {
                                    *v += shortcut[((y * r.stride) * rw + xx * r.stride) * rc + sc];
                                }
                                if r.relu {
                                    *v = v.max(0.0);
                                }
                            }
                        }
                    }
                }
                LayerSpec::GlobalAvgPool { .. } | LayerSpec::Mean { .. } => {
                    pre_add.push(None);
                    tinyres_core::kernels::global_avg_pool_f32(x, ih * iw, &mut out)
                        .map_err(|e| kernel_error(k, e))?;
                }
                LayerSpec::MaxPool(pool) => {
                    pre_add.push(None);
                    let shape = pool.shape(shapes[input], shapes[k + 1]);
                    tinyres_core::kernels::max_pool(&shape, x, &mut out)
                        .map_err(|e| kernel_error(k, e))?;
                }
                LayerSpec::Dense(d) => {
                    pre_add.push(None);
                    tinyres_core::kernels::dense_f32(x, &d.weights, &d.bias, d.relu, &mut out)
                        .map_err(|e| kernel_error(k, e))?;
                }
                LayerSpec::Softmax { beta, .. } => {
                    pre_add.push(None);
                    for (o, &v) in out.iter_mut().zip(x) {
                        *o = beta * v;
                    }
                    tinyres_core::kernels::softmax_in_place(&mut out);
                }
            }
            tensors.push(out);
        }
        Ok(ForwardTrace { tensors, pre_add })
    }

    /// A copy whose biases cancel the mean error that rounding the weights to int8
    /// puts in each output channel ("bias correction", Nagel et al., *Data-Free
    /// Quantization*, ICCV 2019): a layer's output moves by `(Ŵ − W) · x`, whose mean
    /// over the calibration images is `(Ŵ − W) · E[x]`, computed here by running the
    /// layer on its mean input tensor and averaging each channel over the output
    /// positions (so zero padding at the borders is counted exactly). `mean_tensors`
    /// holds the mean of every tensor (index = tensor id, as [`Network::forward_f32`]
    /// numbers them) over the calibration images. Only the int8 blob should be written
    /// from the copy: in f32 the correction would be an error of its own.
    pub fn with_weight_rounding_compensated(
        &self,
        mean_tensors: &[Vec<f32>],
    ) -> Result<Network, WriteError> {
        let shapes = self.tensor_shapes()?;
        let sizes_match = mean_tensors.len() == shapes.len()
            && mean_tensors
                .iter()
                .zip(&shapes)
                .all(|(t, &(h, w, c))| t.len() == h * w * c);
        if !sizes_match {
            return fail("mean tensors do not match the network's tensors");
        }
        let kernel_error = |k: usize, e: tinyres_core::Error| WriteError(format!("layer {k}: {e}"));
        let mut corrected = self.clone();
        let head = self.f32_head();
        for (k, layer) in corrected.layers.iter_mut().enumerate().take(head) {
            let (oh, ow, oc) = shapes[k + 1];
            let mut error = vec![0.0f32; oh * ow * oc];
            let zero_bias = vec![0.0f32; oc];
            let bias = match layer {
                LayerSpec::Conv(conv) => {
                    let shape = conv.shape(shapes[conv.input], shapes[k + 1]);
                    let rounding = weight_rounding_error(&conv.weights, oc);
                    tinyres_core::kernels::conv2d_f32(
                        &shape,
                        &mean_tensors[conv.input],
                        &rounding,
                        &zero_bias,
                        false,
                        None,
                        &mut error,
                    )
                    .map_err(|e| kernel_error(k, e))?;
                    &mut conv.bias
                }
                LayerSpec::Dense(d) => {
                    let rounding = weight_rounding_error(&d.weights, oc);
                    tinyres_core::kernels::dense_f32(
                        &mean_tensors[d.input],
                        &rounding,
                        &zero_bias,
                        false,
                        &mut error,
                    )
                    .map_err(|e| kernel_error(k, e))?;
                    &mut d.bias
                }
                LayerSpec::GlobalAvgPool { .. }
                | LayerSpec::Mean { .. }
                | LayerSpec::MaxPool(_)
                | LayerSpec::Softmax { .. } => continue,
            };
            let positions = (oh * ow) as f32;
            for (c, b) in bias.iter_mut().enumerate() {
                *b -= error.iter().skip(c).step_by(oc).sum::<f32>() / positions;
            }
        }
        Ok(corrected)
    }

    /// Min/max activation ranges over `images` (raw HWC `u8` each), for int8.
    pub fn calibrate<'i>(
        &self,
        images: impl IntoIterator<Item = &'i [u8]>,
    ) -> Result<ActivationRanges, WriteError> {
        let mut ranges = ActivationRanges {
            tensors: vec![(f32::INFINITY, f32::NEG_INFINITY); self.layers.len() + 1],
            pre_add: vec![None; self.layers.len()],
        };
        let widen = |r: &mut (f32, f32), values: &[f32]| {
            for &v in values {
                r.0 = r.0.min(v);
                r.1 = r.1.max(v);
            }
        };
        let mut count = 0;
        for image in images {
            let trace = self.forward_f32(image)?;
            for (r, t) in ranges.tensors.iter_mut().zip(&trace.tensors) {
                widen(r, t);
            }
            for (r, p) in ranges.pre_add.iter_mut().zip(&trace.pre_add) {
                if let Some(p) = p {
                    widen(r.get_or_insert((f32::INFINITY, f32::NEG_INFINITY)), p);
                }
            }
            count += 1;
        }
        if count == 0 {
            return fail("calibration needs at least one image");
        }
        Ok(ranges)
    }

    /// Writes the network as a blob with the smallest memory plan
    /// ([`Memory::Min`]).
    pub fn to_blob(&self, encoding: Encoding<'_>) -> Result<Vec<u8>, WriteError> {
        self.to_blob_with(encoding, Memory::Min)
    }

    /// Writes the network as a blob with the memory plan `memory`.
    ///
    /// The streamed plan is searched with the engine's own validator: each group's
    /// output is first placed over its input (lead 0), and while `Model::parse`
    /// finds that a group's row would overwrite input rows still to be read, that
    /// group's output moves one of its rows further ahead of the input; a group that
    /// cannot share its input's buffer at all keeps its own. Then each group gets the
    /// most rows a step (8, 4 or 2: fewer kernel calls) whose larger windows keep the
    /// arena's peak.
    pub fn to_blob_with(
        &self,
        encoding: Encoding<'_>,
        memory: Memory,
    ) -> Result<Vec<u8>, WriteError> {
        let options = BlobOptions {
            memory,
            winograd: false,
        };
        self.to_blob_with_options(encoding, options)
    }

    /// [`Self::to_blob_with`] with the memory plan and the Winograd filters of
    /// `options`.
    pub fn to_blob_with_options(
        &self,
        encoding: Encoding<'_>,
        BlobOptions { memory, winograd }: BlobOptions,
    ) -> Result<Vec<u8>, WriteError> {
        let dtype = encoding.dtype();
        let head = self.first_f32_layer(encoding);
        let (groups, image_window) = match memory {
            Memory::Min => self.stream_groups(),
            Memory::Fast => (Vec::new(), false),
        };
        let mut leads: Vec<Option<usize>> = vec![Some(0); groups.len()];
        let mut rows_per_step = vec![1; groups.len()];
        let write = |leads: &[Option<usize>], rows_per_step: &[usize]| {
            let plan = self.plan_arena(dtype, head, &groups, image_window, leads, rows_per_step)?;
            let blob = self.encode(encoding, &plan, winograd)?;
            let parsed = tinyres_core::Model::parse(AlignedBlob::new(&blob).as_bytes())
                .map(|model| model.arena_size());
            Ok::<_, WriteError>((blob, parsed))
        };
        loop {
            let (blob, parsed) = write(&leads, &rows_per_step)?;
            let error = match parsed {
                Ok(peak) => {
                    // Then fewer, longer steps (fewer kernel calls) for each group whose
                    // larger windows still fit under the peak.
                    // Several rows a step write the output in larger pieces: its lead
                    // over the input may have to grow by up to that many rows.
                    let mut best = blob;
                    for g in 0..groups.len() {
                        let Some(lead) = leads[g] else { continue };
                        'rows: for rows in [8, 4, 2] {
                            rows_per_step[g] = rows;
                            for extra in 0..=rows {
                                leads[g] = Some(lead + extra);
                                // The plan's peak first (cheap): a larger lead only
                                // raises it.
                                let plan = self.plan_arena(
                                    dtype,
                                    head,
                                    &groups,
                                    image_window,
                                    &leads,
                                    &rows_per_step,
                                )?;
                                if plan.peak > peak {
                                    break;
                                }
                                if let (blob, Ok(_)) = write(&leads, &rows_per_step)? {
                                    best = blob;
                                    break 'rows;
                                }
                            }
                            rows_per_step[g] = 1;
                            leads[g] = Some(lead);
                        }
                    }
                    return Ok(best);
                }
                Err(e) => e,
            };
            let layer = match error {
                tinyres_core::Error::PlanConflict { layer, .. }
                | tinyres_core::Error::StreamConflict { layer, .. } => usize::from(layer),
                _ => return fail(format!("the written blob does not parse: {error}")),
            };
            let Some(g) = groups
                .iter()
                .zip(&leads)
                .position(|(&(first, last), lead)| {
                    lead.is_some() && (first..=last + 1).contains(&layer)
                })
            else {
                return fail(format!("the memory plan does not validate: {error}"));
            };
            let out_rows = self.tensor_shapes()?[groups[g].1 + 1].0;
            leads[g] = leads[g].map(|l| l + 1).filter(|&l| l <= out_rows);
        }
    }

    /// Activation ranges of -1..1 everywhere: what sizing and planning use in place of
    /// calibration (neither depends on the values).
    pub fn unit_ranges(&self) -> ActivationRanges {
        ActivationRanges {
            tensors: vec![(-1.0, 1.0); self.layers.len() + 1],
            pre_add: self
                .layers
                .iter()
                .map(|l| {
                    matches!(l, LayerSpec::Conv(c) if c.residual.is_some()).then_some((-1.0, 1.0))
                })
                .collect(),
        }
    }

    /// The memory plan [`Network::to_blob_with`] chooses, without the blob.
    pub fn plan_memory(&self, dtype: DType, memory: Memory) -> Result<ArenaPlan, WriteError> {
        let unit_ranges = self.unit_ranges();
        let encoding = match dtype {
            DType::F32 => Encoding::F32,
            DType::F16 => Encoding::F16,
            // The plan does not depend on the quantization.
            DType::Int8 => Encoding::Int8(&unit_ranges),
        };
        let blob = self.to_blob_with(encoding, memory)?;
        let aligned = AlignedBlob::new(&blob);
        let model = tinyres_core::Model::parse(aligned.as_bytes())
            .map_err(|e| WriteError(format!("the written blob does not parse: {e}")))?;
        let mut plan = ArenaPlan {
            offsets: Vec::new(),
            rows_held: Vec::new(),
            peak: model.arena_size(),
        };
        for t in 0..model.num_tensors() {
            let info = model
                .tensor(t)
                .map_err(|e| WriteError(format!("tensor {t}: {e}")))?;
            plan.offsets.push(info.arena_offset);
            plan.rows_held
                .push(if info.is_window() { info.rows_held } else { 0 });
        }
        Ok(plan)
    }

    /// Encodes the network with the memory plan `plan`.
    fn encode(
        &self,
        encoding: Encoding<'_>,
        plan: &ArenaPlan,
        winograd: bool,
    ) -> Result<Vec<u8>, WriteError> {
        let shapes = self.tensor_shapes()?;
        let dtype = encoding.dtype();
        let quant = match encoding {
            Encoding::Int8(ranges) => Some(self.tensor_quantization(ranges, shapes.len())?),
            Encoding::Quantized(given) => {
                self.check_given(given, shapes.len())?;
                Some(given.tensors.clone())
            }
            _ => None,
        };
        let (offsets, peak) = (&plan.offsets, plan.peak);
        let f32_head = self.first_f32_layer(encoding);
        let n_tensors = shapes.len();
        let n_layers = self.layers.len();
        if n_tensors > 0xFFFE {
            return fail("too many layers (at most 65533)");
        }

        let mut w = BlobBuilder::default();
        w.bytes.resize(format::HEADER_SIZE, 0);
        let tensor_table = w.reserve(n_tensors * format::TENSOR_RECORD_SIZE);
        let layer_table = w.reserve(n_layers * format::LAYER_RECORD_SIZE);

        for (t, &(h, wd, c)) in shapes.iter().enumerate() {
            let (scale, zero_point) = match &quant {
                Some(q) if t <= f32_head => q[t],
                _ => (1.0, 0),
            };
            let at = tensor_table + t * format::TENSOR_RECORD_SIZE;
            w.put(at + tf::HEIGHT, &(h as u16).to_le_bytes());
            w.put(at + tf::WIDTH, &(wd as u16).to_le_bytes());
            w.put(at + tf::CHANNELS, &(c as u16).to_le_bytes());
            w.put(
                at + tf::ROWS_HELD,
                &(plan.rows_held[t] as u16).to_le_bytes(),
            );
            w.put(at + tf::ARENA_OFFSET, &(offsets[t] as u32).to_le_bytes());
            w.put(at + tf::SCALE, &scale.to_le_bytes());
            w.put(at + tf::ZERO_POINT, &zero_point.to_le_bytes());
        }

        let preprocess: Vec<u8> = self
            .input
            .mean
            .iter()
            .chain(&self.input.std)
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let preprocess_offset = w.push(&preprocess);
        let class_names_offset = if self.class_names.is_empty() {
            0
        } else {
            let mut names = Vec::new();
            names.extend_from_slice(&(self.class_names.len() as u16).to_le_bytes());
            names.extend_from_slice(&[0, 0]);
            for n in &self.class_names {
                names.push(n.len() as u8);
                names.extend_from_slice(n.as_bytes());
            }
            w.push(&names)
        };

        for (k, layer) in self.layers.iter().enumerate() {
            let at = layer_table + k * format::LAYER_RECORD_SIZE;
            let (input, _) = layer.inputs();
            w.put(at + lf::INPUT, &(input as u16).to_le_bytes());
            w.put(at + lf::OUTPUT, &((k + 1) as u16).to_le_bytes());
            let scale_of = |t: usize| quant.as_ref().map_or(1.0, |q| q[t].0);
            let layer_dtype = if k >= f32_head { DType::F32 } else { dtype };
            match layer {
                LayerSpec::Conv(conv) => {
                    let mut bits = if conv.relu { flags::RELU } else { 0 };
                    w.put(at + lf::KIND, &[kind::CONV2D]);
                    w.put_window(at, conv.kernel, conv.stride, conv.padding);
                    let mut produced = quant.as_ref().map_or((1.0, 0), |q| q[k + 1]);
                    if let Some(r) = conv.residual {
                        bits |= flags::RESIDUAL;
                        if r.relu {
                            bits |= flags::RESIDUAL_RELU;
                        }
                        w.put(at + lf::RESIDUAL_INPUT, &(r.tensor as u16).to_le_bytes());
                        w.put(at + lf::RESIDUAL_STRIDE, &[r.stride as u8]);
                        w.put(
                            at + lf::RESIDUAL_CHANNEL_OFFSET,
                            &(r.channel_offset as u16).to_le_bytes(),
                        );
                        if let Some(q) = &quant {
                            produced = match encoding {
                                Encoding::Quantized(given) => match given.pre_add[k] {
                                    Some(pre_add) => pre_add,
                                    None => return fail(format!("layer {k}: the quantization gives no scale and zero point for the convolution before its residual add")),
                                },
                                Encoding::Int8(ranges) => match ranges.pre_add.get(k).copied() {
                                    Some(Some((lo, hi))) => quantization_for_range(lo, hi),
                                    _ => return fail(format!("layer {k}: int8 needs the range of the convolution before its residual add")),
                                },
                                Encoding::F32 | Encoding::F16 => unreachable!("float blobs have no quantization"),
                            };
                            let add =
                                AddParams::from_scales(produced, q[r.tensor], q[k + 1], r.relu);
                            for (field, v) in [
                                (lf::PRE_ADD_ZERO_POINT, produced.1),
                                (lf::ADD_INPUT1_MULTIPLIER, add.input1_multiplier),
                                (lf::ADD_INPUT1_SHIFT, add.input1_shift),
                                (lf::ADD_INPUT2_MULTIPLIER, add.input2_multiplier),
                                (lf::ADD_INPUT2_SHIFT, add.input2_shift),
                                (lf::ADD_OUTPUT_MULTIPLIER, add.output_multiplier),
                                (lf::ADD_OUTPUT_SHIFT, add.output_shift),
                            ] {
                                w.put(at + field, &v.to_le_bytes());
                            }
                        }
                    }
                    let in_c = shapes[input].2;
                    let filters = winograd
                        && layer_dtype == DType::Int8
                        && tinyres_core::winograd::applies(
                            &conv.shape(shapes[input], shapes[k + 1]),
                        );
                    if filters {
                        bits |= flags::WINOGRAD;
                    }
                    w.put(at + lf::FLAGS, &[bits]);
                    w.parameters(
                        at,
                        dtype,
                        Parameters {
                            weights: &conv.weights,
                            bias: &conv.bias,
                            given: given_parameters(encoding, k),
                        },
                        conv.out_channels,
                        (scale_of(input), produced.0),
                        quant.as_ref().map(|q| q[input].1),
                        filters.then_some(in_c),
                    );
                }
                LayerSpec::GlobalAvgPool { .. } => {
                    w.put(at + lf::KIND, &[kind::GLOBAL_AVG_POOL]);
                }
                LayerSpec::Mean { .. } => {
                    w.put(at + lf::KIND, &[kind::MEAN]);
                    if layer_dtype == DType::Int8 {
                        let (h, wd, _) = shapes[input];
                        let (m, s) = mean_multiplier(scale_of(input), scale_of(k + 1), h * wd);
                        w.put(at + lf::MEAN_MULTIPLIER, &m.to_le_bytes());
                        w.put(at + lf::MEAN_SHIFT, &s.to_le_bytes());
                    }
                }
                LayerSpec::MaxPool(pool) => {
                    w.put(at + lf::KIND, &[kind::MAX_POOL]);
                    w.put_window(at, pool.kernel, pool.stride, pool.padding);
                }
                LayerSpec::Dense(d) => {
                    w.put(at + lf::KIND, &[kind::DENSE]);
                    let mut bits = if d.relu { flags::RELU } else { 0 };
                    // TFLite's own FULLY_CONNECTED rounds once (LiteRT's reference kernel).
                    if matches!(encoding, Encoding::Quantized(_)) {
                        bits |= flags::SINGLE_ROUNDING;
                    }
                    w.put(at + lf::FLAGS, &[bits]);
                    w.parameters(
                        at,
                        layer_dtype,
                        Parameters {
                            weights: &d.weights,
                            bias: &d.bias,
                            given: given_parameters(encoding, k),
                        },
                        d.out_features,
                        (scale_of(input), scale_of(k + 1)),
                        None,
                        None,
                    );
                }
                LayerSpec::Softmax { beta, .. } => {
                    w.put(at + lf::KIND, &[kind::SOFTMAX]);
                    w.put(at + lf::SOFTMAX_BETA, &beta.to_le_bytes());
                    if layer_dtype == DType::Int8 {
                        let Some(p) = SoftmaxParams::from_scale(*beta, scale_of(input)) else {
                            return fail(format!(
                                "layer {k}: an int8 softmax of beta {beta} over logits of scale {} (TFLite needs beta times the scale above 2^-26)",
                                scale_of(input)
                            ));
                        };
                        w.put(
                            at + lf::SOFTMAX_INPUT_MULTIPLIER,
                            &p.input_multiplier.to_le_bytes(),
                        );
                        w.put(
                            at + lf::SOFTMAX_INPUT_LEFT_SHIFT,
                            &p.input_left_shift.to_le_bytes(),
                        );
                        w.put(at + lf::SOFTMAX_DIFF_MIN, &p.diff_min.to_le_bytes());
                    }
                }
            }
        }

        let total = w.bytes.len();
        let head = [
            (header::VERSION, format::VERSION.to_le_bytes().to_vec()),
            (
                header::HEADER_SIZE,
                (format::HEADER_SIZE as u16).to_le_bytes().to_vec(),
            ),
            (header::TOTAL_SIZE, (total as u32).to_le_bytes().to_vec()),
            (header::DTYPE, vec![dtype as u8]),
            (header::INPUT_RANGE, vec![self.input.range as u8]),
            (
                header::NUM_TENSORS,
                (n_tensors as u16).to_le_bytes().to_vec(),
            ),
            (header::NUM_LAYERS, (n_layers as u16).to_le_bytes().to_vec()),
            (
                header::FEATURES_TENSOR,
                self.features
                    .map_or(format::NO_TENSOR, |f| f as u16)
                    .to_le_bytes()
                    .to_vec(),
            ),
            (
                header::TENSOR_TABLE,
                (tensor_table as u32).to_le_bytes().to_vec(),
            ),
            (
                header::LAYER_TABLE,
                (layer_table as u32).to_le_bytes().to_vec(),
            ),
            (
                header::PREPROCESS,
                (preprocess_offset as u32).to_le_bytes().to_vec(),
            ),
            (
                header::CLASS_NAMES,
                (class_names_offset as u32).to_le_bytes().to_vec(),
            ),
            (header::ARENA_SIZE, (peak as u32).to_le_bytes().to_vec()),
            (header::F32_HEAD, (f32_head as u16).to_le_bytes().to_vec()),
        ];
        w.put(header::MAGIC, &format::MAGIC);
        for (at, bytes) in head {
            w.put(at, &bytes);
        }
        let crc = tinyres_core::crc32(&w.bytes[format::CRC_START..]);
        w.put(header::CRC32, &crc.to_le_bytes());
        Ok(w.bytes)
    }

    /// `(scale, zero_point)` of every tensor from the observed ranges.
    fn tensor_quantization(
        &self,
        ranges: &ActivationRanges,
        n_tensors: usize,
    ) -> Result<Vec<(f32, i32)>, WriteError> {
        if ranges.tensors.len() != n_tensors || ranges.pre_add.len() != self.layers.len() {
            return fail(format!(
                "activation ranges for {} tensors and {} layers, the network has {} and {}",
                ranges.tensors.len(),
                ranges.pre_add.len(),
                n_tensors,
                self.layers.len()
            ));
        }
        let mut q: Vec<(f32, i32)> = ranges
            .tensors
            .iter()
            .map(|&(lo, hi)| quantization_for_range(lo, hi))
            .collect();
        for (k, layer) in self.layers.iter().enumerate() {
            match layer {
                // Pools keep their input's quantization (TFLite's int8 pools require it).
                LayerSpec::GlobalAvgPool { input }
                | LayerSpec::MaxPool(MaxPoolSpec { input, .. }) => q[k + 1] = q[*input],
                // Probabilities in 1/256ths from −128 (TFLite's int8 softmax output).
                LayerSpec::Softmax { .. } => q[k + 1] = SOFTMAX_OUTPUT_QUANTIZATION,
                _ => {}
            }
        }
        Ok(q)
    }

    /// Checks that `given` has a quantization for every tensor and the parameters of
    /// every convolution and dense layer, of the sizes they need.
    fn check_given(&self, given: &GivenQuantization, n_tensors: usize) -> Result<(), WriteError> {
        let layers = self.layers.len();
        if given.tensors.len() != n_tensors
            || given.pre_add.len() != layers
            || given.parameters.len() != layers
        {
            return fail(format!(
                "the quantization covers {} tensors and {} layers, the network has {n_tensors} and {layers}",
                given.tensors.len(),
                given.parameters.len()
            ));
        }
        for (t, &(scale, zero_point)) in given.tensors.iter().enumerate() {
            if !(scale.is_finite() && scale > 0.0 && (-128..=127).contains(&zero_point)) {
                return fail(format!(
                    "tensor {t}: scale {scale} and zero point {zero_point} (int8 needs a positive scale and a zero point in -128..=127)"
                ));
            }
        }
        for (k, (layer, parameters)) in self.layers.iter().zip(&given.parameters).enumerate() {
            let (weights, outputs) = match layer {
                LayerSpec::Conv(c) => (c.weights.len(), c.out_channels),
                LayerSpec::Dense(d) => (d.weights.len(), d.out_features),
                _ => continue,
            };
            let fits = parameters.as_ref().is_some_and(|p| {
                p.weights.len() == weights
                    && p.bias.len() == outputs
                    && p.weight_scales.len() == outputs
                    && p.weight_scales.iter().all(|s| s.is_finite() && *s > 0.0)
            });
            if !fits {
                return fail(format!(
                    "layer {k}: the quantization needs {weights} int8 weights, {outputs} positive weight scales and {outputs} int32 biases"
                ));
            }
        }
        Ok(())
    }
}

#[derive(Default)]
struct BlobBuilder {
    bytes: Vec<u8>,
}

impl BlobBuilder {
    /// Appends zeroed space at the next aligned offset; returns its offset.
    fn reserve(&mut self, len: usize) -> usize {
        let at = align_up(self.bytes.len(), format::SECTION_ALIGN);
        self.bytes.resize(at + len, 0);
        at
    }

    fn push(&mut self, data: &[u8]) -> usize {
        let at = self.reserve(data.len());
        self.bytes[at..].copy_from_slice(data);
        at
    }

    /// A convolution's or a pool's kernel, stride and padding into the layer record at
    /// `at` ([`Network::tensor_shapes`] has checked that each fits a byte).
    fn put_window(
        &mut self,
        at: usize,
        kernel: (usize, usize),
        stride: usize,
        padding: [usize; 4],
    ) {
        self.put(at + lf::KERNEL_H, &[kernel.0 as u8]);
        self.put(at + lf::KERNEL_W, &[kernel.1 as u8]);
        self.put(at + lf::STRIDE, &[stride as u8]);
        self.put(at + lf::PAD_TOP, &[padding[0] as u8]);
        self.put(at + lf::PAD_LEFT, &[padding[1] as u8]);
        self.put(at + lf::PAD_BOTTOM, &[padding[2] as u8]);
        self.put(at + lf::PAD_RIGHT, &[padding[3] as u8]);
    }

    fn put(&mut self, at: usize, data: &[u8]) {
        self.bytes[at..at + data.len()].copy_from_slice(data);
    }

    /// Writes a layer's weights, biases and (int8) requantization and records their
    /// offsets in the layer record at `at`. int8 weights are the given ones, or else
    /// the float ones quantized; the requantization goes from `input_scale` times each
    /// channel's weight scale to `output_scale`, derived as TFLite derives it. An int8
    /// convolution whose input has zero point `folding_zero_point` gets its folded
    /// biases after its biases (FORMAT.md), and with `winograd_in_c` (its input
    /// channels) its Winograd filters after its weights.
    #[allow(clippy::too_many_arguments)]
    fn parameters(
        &mut self,
        at: usize,
        dtype: DType,
        Parameters {
            weights,
            bias,
            given,
        }: Parameters<'_>,
        out_channels: usize,
        (input_scale, output_scale): (f32, f32),
        folding_zero_point: Option<i32>,
        winograd_in_c: Option<usize>,
    ) {
        let (weights_off, bias_off) = match dtype {
            DType::F32 => (
                self.push(&le_bytes(weights.iter().map(|w| w.to_le_bytes()))),
                self.push(&le_bytes(bias.iter().map(|b| b.to_le_bytes()))),
            ),
            DType::F16 => (
                self.push(&le_bytes(
                    weights.iter().map(|&w| f16::from_f32(w).to_le_bytes()),
                )),
                self.push(&le_bytes(bias.iter().map(|b| b.to_le_bytes()))),
            ),
            DType::Int8 => {
                let per_channel = weights.len() / out_channels.max(1);
                let mut q_weights = Vec::with_capacity(weights.len());
                let mut q_bias = Vec::with_capacity(out_channels);
                let mut multipliers = Vec::with_capacity(out_channels);
                let mut shifts = Vec::with_capacity(out_channels);
                let mut requantize = |w_scale: f32| {
                    // TFLite: f64(input_scale) · f64(weight_scale) / f64(output_scale).
                    let bias_scale = f64::from(input_scale) * f64::from(w_scale);
                    let (m, s) = quantize_multiplier(bias_scale / f64::from(output_scale));
                    multipliers.push(m);
                    shifts.push(s);
                    bias_scale
                };
                match given {
                    Some(given) => {
                        q_weights.extend(given.weights.iter().map(|&w| w as u8));
                        q_bias.extend_from_slice(&given.bias);
                        for &w_scale in &given.weight_scales {
                            requantize(w_scale);
                        }
                    }
                    None => {
                        for (row, &b) in weights.chunks(per_channel.max(1)).zip(bias) {
                            let w_scale = weight_scale(row);
                            q_weights
                                .extend(row.iter().map(|&w| quantize_weight(w, w_scale) as u8));
                            let bias_scale = requantize(w_scale);
                            q_bias.push(libm::round(f64::from(b) / bias_scale) as i32);
                        }
                    }
                }
                if let Some(zero_point) = folding_zero_point {
                    let folded: Vec<i32> = q_weights
                        .chunks(per_channel.max(1))
                        .zip(&q_bias)
                        .map(|(row, &b)| {
                            let sum: i32 = row.iter().map(|&w| i32::from(w as i8)).sum();
                            b.wrapping_sub(zero_point.wrapping_mul(sum))
                        })
                        .collect();
                    q_bias.extend(folded);
                }
                let weights_off = self.push(&q_weights);
                if let Some(in_c) = winograd_in_c {
                    let signed: Vec<i8> = q_weights.iter().map(|&w| w as i8).collect();
                    let mut filters = Vec::with_capacity(tinyres_core::winograd::filters_bytes(
                        in_c,
                        out_channels,
                    ));
                    tinyres_core::winograd::for_each_filter_value(
                        &signed,
                        in_c,
                        out_channels,
                        |v| filters.extend_from_slice(&v.to_le_bytes()),
                    );
                    self.push(&filters);
                }
                let bias_off = self.push(&le_bytes(q_bias.iter().map(|b| b.to_le_bytes())));
                let m_off = self.push(&le_bytes(multipliers.iter().map(|m| m.to_le_bytes())));
                let s_off = self.push(&le_bytes(shifts.iter().map(|s| s.to_le_bytes())));
                self.put(at + lf::MULTIPLIERS, &(m_off as u32).to_le_bytes());
                self.put(at + lf::SHIFTS, &(s_off as u32).to_le_bytes());
                (weights_off, bias_off)
            }
        };
        self.put(at + lf::WEIGHTS, &(weights_off as u32).to_le_bytes());
        self.put(at + lf::BIAS, &(bias_off as u32).to_le_bytes());
    }
}

/// The quantized multiplier of TFLite's int8 MEAN over `count` values from
/// `input_scale` to `output_scale`, the count folded in as `reference_ops::
/// QuantizedMeanOrSum` folds it: `(multiplier · 2^s) / count` with `2^s` the largest
/// power of two up to the count (at most 2^32 and 2^(31 + shift)).
fn mean_multiplier(input_scale: f32, output_scale: f32, count: usize) -> (i32, i32) {
    let (multiplier, shift) = quantize_multiplier(f64::from(input_scale) / f64::from(output_scale));
    let count = count.max(1) as i64;
    let s = (63 - count.leading_zeros() as i32)
        .min(32)
        .min(31 + shift)
        .max(0);
    (((i64::from(multiplier) << s) / count) as i32, shift - s)
}

/// A layer's weights: float, and the stored int8 ones when the model gives them.
struct Parameters<'a> {
    weights: &'a [f32],
    bias: &'a [f32],
    given: Option<&'a QuantizedParameters>,
}

/// Layer `k`'s stored int8 parameters, when `encoding` gives them.
fn given_parameters<'a>(encoding: Encoding<'a>, k: usize) -> Option<&'a QuantizedParameters> {
    match encoding {
        Encoding::Quantized(given) => given.parameters.get(k)?.as_ref(),
        _ => None,
    }
}

/// The int8 scale of one output channel's weights (TFLite: symmetric, per channel,
/// the largest magnitude on ±127).
fn weight_scale(row: &[f32]) -> f32 {
    let max_abs = row.iter().fold(0.0f32, |m, w| m.max(w.abs()));
    if max_abs > 0.0 {
        max_abs / 127.0
    } else {
        1.0
    }
}

fn quantize_weight(w: f32, scale: f32) -> i8 {
    libm::roundf(w / scale).clamp(-127.0, 127.0) as i8
}

/// `dequantize(quantize(w)) − w` for OHWI or `[out][in]` weights of `out_channels`
/// rows: the error the int8 encoding puts in each weight.
fn weight_rounding_error(weights: &[f32], out_channels: usize) -> Vec<f32> {
    let per_channel = (weights.len() / out_channels.max(1)).max(1);
    weights
        .chunks(per_channel)
        .flat_map(|row| {
            let scale = weight_scale(row);
            row.iter()
                .map(move |&w| f32::from(quantize_weight(w, scale)) * scale - w)
        })
        .collect()
}

fn le_bytes<const N: usize>(items: impl Iterator<Item = [u8; N]>) -> Vec<u8> {
    items.flatten().collect()
}

/// A copy of a blob in 16-byte aligned memory, for [`tinyres_core::Model::parse`] when the
/// bytes come from a file or a `Vec<u8>` of unknown alignment.
#[derive(Clone, Debug)]
pub struct AlignedBlob {
    words: Vec<u128>,
    len: usize,
}

impl AlignedBlob {
    /// Copies `bytes`.
    pub fn new(bytes: &[u8]) -> Self {
        let mut words = vec![0u128; bytes.len().div_ceil(16)];
        bytemuck::cast_slice_mut::<u128, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
        AlignedBlob {
            words,
            len: bytes.len(),
        }
    }

    /// The blob's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &bytemuck::cast_slice::<u128, u8>(&self.words)[..self.len]
    }

    /// The blob's bytes, mutably (tests corrupt blobs through this).
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut::<u128, u8>(&mut self.words)[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TFLite's folding for equal scales over 7×7: 2^30 and shift 1, then s = 5.
    #[test]
    fn the_mean_multiplier_folds_the_count_as_tflite_does() {
        assert_eq!(
            mean_multiplier(0.023_529_412, 0.023_529_412, 49),
            (701_219_150, -4)
        );
        // One value: plain requantization.
        assert_eq!(mean_multiplier(1.0, 2.0, 1), (1 << 30, 0));
    }
}
