//! Parsing and validation of the `.trm` blob. Nothing here panics on any input: every
//! offset, length, shape, enum value and count is checked before use, and weights
//! are borrowed in place from the blob.

use half::f16;

use crate::crc::crc32;
use crate::error::Error;
use crate::format::{self, flags, header, kind, layer as lf, tensor as tf, DType, InputRange};
use crate::kernels::ConvShape;
use crate::quant::{AddParams, Rounding, SoftmaxParams, SOFTMAX_OUTPUT_QUANTIZATION};
use crate::stream::{Group, Step};
use crate::winograd;

/// Reads little-endian fields of one record; every read is bounds-checked.
#[derive(Clone, Copy)]
struct Record<'a> {
    bytes: &'a [u8],
    what: &'static str,
    index: u16,
}

impl<'a> Record<'a> {
    fn field<const N: usize>(&self, offset: usize) -> Result<[u8; N], Error> {
        self.bytes
            .get(offset..offset + N)
            .and_then(|b| b.try_into().ok())
            .ok_or(Error::OutOfBounds {
                what: self.what,
                index: self.index,
            })
    }
    fn u8(&self, offset: usize) -> Result<u8, Error> {
        Ok(self.field::<1>(offset)?[0])
    }
    fn u16(&self, offset: usize) -> Result<u16, Error> {
        self.field(offset).map(u16::from_le_bytes)
    }
    fn u32(&self, offset: usize) -> Result<u32, Error> {
        self.field(offset).map(u32::from_le_bytes)
    }
    fn i32(&self, offset: usize) -> Result<i32, Error> {
        self.field(offset).map(i32::from_le_bytes)
    }
    fn f32(&self, offset: usize) -> Result<f32, Error> {
        self.field(offset).map(f32::from_le_bytes)
    }
}

/// A tensor (an activation buffer) of the model, NHWC with batch 1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TensorInfo {
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// Channels (innermost).
    pub channels: usize,
    /// Byte offset of the buffer in the arena.
    pub arena_offset: usize,
    /// int8 quantization scale (1.0 for float models).
    pub scale: f32,
    /// int8 zero point (0 for float models).
    pub zero_point: i32,
    /// Whether the values are f32: every tensor of an f32 or f16 model, and the
    /// tensors an int8 model's f32 head writes. Otherwise int8.
    pub float: bool,
    /// Rows its buffer holds: `height` for a whole tensor, fewer for a row window of
    /// a streamed group (FORMAT.md, "Streamed groups").
    pub rows_held: usize,
}

impl TensorInfo {
    /// `(height, width, channels)`.
    pub fn dims(&self) -> (usize, usize, usize) {
        (self.height, self.width, self.channels)
    }

    /// No tensor: zero elements.
    pub(crate) const EMPTY: TensorInfo = TensorInfo {
        height: 0,
        width: 0,
        channels: 0,
        arena_offset: 0,
        scale: 1.0,
        zero_point: 0,
        float: false,
        rows_held: 0,
    };

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.height * self.width * self.channels
    }

    /// Whether the tensor has no elements (never true in a valid model).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether its buffer holds only some of its rows (a streamed group's window).
    pub fn is_window(&self) -> bool {
        self.rows_held < self.height
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.width * self.channels * self.element_bytes()
    }

    /// Bytes of its arena buffer: every row, or the rows a window holds.
    pub fn buffer_bytes(&self) -> usize {
        self.rows_held * self.row_bytes()
    }

    /// Bytes of one element: 4 for f32, 1 for int8.
    pub fn element_bytes(&self) -> usize {
        if self.float {
            4
        } else {
            1
        }
    }
}

/// Weights of a layer, borrowed from the blob.
#[derive(Clone, Copy, Debug)]
pub enum Weights<'a> {
    /// f32 weights.
    F32(&'a [f32]),
    /// f16-stored weights.
    F16(&'a [f16]),
    /// Per-channel symmetric int8 weights.
    I8(&'a [i8]),
}

impl Weights<'_> {
    /// Number of weights.
    pub fn len(&self) -> usize {
        match self {
            Weights::F32(w) => w.len(),
            Weights::F16(w) => w.len(),
            Weights::I8(w) => w.len(),
        }
    }

    /// Bytes the weights take in the blob.
    pub fn byte_len(&self) -> usize {
        match self {
            Weights::F32(w) => 4 * w.len(),
            Weights::F16(w) => 2 * w.len(),
            Weights::I8(w) => w.len(),
        }
    }

    /// Whether there are no weights (never true in a valid model).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Biases of a layer, borrowed from the blob.
#[derive(Clone, Copy, Debug)]
pub enum Bias<'a> {
    /// f32 biases (f32 and f16 models).
    F32(&'a [f32]),
    /// int32 biases in units of `input_scale · weight_scale` (int8 models).
    I32(&'a [i32]),
}

impl Bias<'_> {
    /// Number of biases.
    pub fn len(&self) -> usize {
        match self {
            Bias::F32(b) => b.len(),
            Bias::I32(b) => b.len(),
        }
    }

    /// Whether there are no biases (never true in a valid model).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Per-output-channel requantization of an int8 layer.
#[derive(Clone, Copy, Debug)]
pub struct Requant<'a> {
    /// Q31 multipliers.
    pub multipliers: &'a [i32],
    /// Shifts (positive: left).
    pub shifts: &'a [i32],
    /// Zero point of the value produced (the pre-add value when a residual follows).
    pub output_zero_point: i32,
    /// A convolution's `bias − input_zero_point · Σ weights` per output channel
    /// (format version 3; checked at parse).
    pub folded_bias: Option<&'a [i32]>,
}

/// Where a residual (shortcut) input comes from and how it maps onto the output.
///
/// Output element `(y, x, c)` adds shortcut element `(y·stride, x·stride,
/// c − channel_offset)`, or zero where that channel does not exist: this is the
/// paper's option A (identity with stride-2 subsampling and zero-padded channels)
/// when `stride = 2`, and a plain identity shortcut when `stride = 1` and
/// `channel_offset = 0`. Options B and C are a 1×1 projection layer feeding an
/// identity shortcut.
#[derive(Clone, Copy, Debug)]
pub struct Residual {
    /// Tensor added to the output.
    pub tensor: u16,
    /// Spatial subsampling of the shortcut.
    pub stride: usize,
    /// Zero channels padded before the shortcut's channels.
    pub channel_offset: usize,
    /// ReLU after the add.
    pub relu: bool,
    /// int8 add parameters (int8 models only).
    pub add: AddParams,
}

/// A k×k convolution with folded batch norm, optional ReLU and optional residual add.
#[derive(Clone, Copy, Debug)]
pub struct Conv<'a> {
    /// Input tensor.
    pub input: u16,
    /// Output tensor.
    pub output: u16,
    /// Kernel rows.
    pub kernel_h: usize,
    /// Kernel columns.
    pub kernel_w: usize,
    /// Stride (both directions).
    pub stride: usize,
    /// Zero padding: top, left, bottom, right.
    pub padding: [usize; 4],
    /// ReLU on the convolution's output, before any residual add.
    pub relu: bool,
    /// OHWI weights.
    pub weights: Weights<'a>,
    /// One bias per output channel.
    pub bias: Bias<'a>,
    /// int8 requantization (int8 models only).
    pub requant: Option<Requant<'a>>,
    /// Residual add fused after the convolution.
    pub residual: Option<Residual>,
    /// The int8 weights' Winograd filters (format version 5, [`crate::winograd`];
    /// checked at parse), for the kernels that use them.
    pub winograd: Option<&'a [u8]>,
}

/// A fully connected layer over the flattened (NHWC) input.
#[derive(Clone, Copy, Debug)]
pub struct Dense<'a> {
    /// Input tensor.
    pub input: u16,
    /// Output tensor.
    pub output: u16,
    /// ReLU on the output.
    pub relu: bool,
    /// `[out][in]` weights.
    pub weights: Weights<'a>,
    /// One bias per output.
    pub bias: Bias<'a>,
    /// int8 requantization (int8 models only).
    pub requant: Option<Requant<'a>>,
    /// How the int8 requantization rounds (flag bit 3).
    pub rounding: Rounding,
}

/// A k×k max pool (the ImageNet ResNets' stem): each output value is the largest input
/// value in its window; padding is never chosen.
#[derive(Clone, Copy, Debug)]
pub struct MaxPool {
    /// Input tensor.
    pub input: u16,
    /// Output tensor (as many channels as the input; for int8, its quantization).
    pub output: u16,
    /// Window rows.
    pub kernel_h: usize,
    /// Window columns.
    pub kernel_w: usize,
    /// Stride (both directions).
    pub stride: usize,
    /// Padding: top, left, bottom, right (each smaller than the window).
    pub padding: [usize; 4],
}

/// A softmax over the channels of 1×1×C logits (TFLite's SOFTMAX).
#[derive(Clone, Copy, Debug)]
pub struct Softmax {
    /// Input tensor (the logits).
    pub input: u16,
    /// Output tensor (the probabilities; int8: in 1/256ths from −128).
    pub output: u16,
    /// The logits' multiplier.
    pub beta: f32,
    /// The int8 arithmetic's parameters (int8 layers only).
    pub int8: Option<SoftmaxParams>,
}

/// TFLite's MEAN over height and width: a global average that may requantize.
#[derive(Clone, Copy, Debug)]
pub struct Mean {
    /// Input tensor.
    pub input: u16,
    /// Output tensor, 1×1×C.
    pub output: u16,
    /// int8: the Q31 multiplier (input scale over output scale, divided by the pixel
    /// count) and its shift.
    pub requant: Option<(i32, i32)>,
}

/// One layer of the model.
#[derive(Clone, Copy, Debug)]
pub enum Layer<'a> {
    /// Convolution (with optional fused residual add).
    Conv(Conv<'a>),
    /// Global average pooling to 1×1×C.
    GlobalAvgPool {
        /// Input tensor.
        input: u16,
        /// Output tensor.
        output: u16,
    },
    /// Fully connected layer.
    Dense(Dense<'a>),
    /// Max pooling.
    MaxPool(MaxPool),
    /// Softmax.
    Softmax(Softmax),
    /// Mean over height and width (TFLite's MEAN).
    Mean(Mean),
}

impl Layer<'_> {
    /// The tensor this layer writes.
    pub fn output(&self) -> u16 {
        match self {
            Layer::Conv(c) => c.output,
            Layer::GlobalAvgPool { output, .. } => *output,
            Layer::Dense(d) => d.output,
            Layer::MaxPool(p) => p.output,
            Layer::Softmax(s) => s.output,
            Layer::Mean(m) => m.output,
        }
    }

    /// The tensors this layer reads: its input and, for a residual convolution, the
    /// shortcut.
    pub fn inputs(&self) -> (u16, Option<u16>) {
        match self {
            Layer::Conv(c) => (c.input, c.residual.map(|r| r.tensor)),
            Layer::GlobalAvgPool { input, .. } => (*input, None),
            Layer::Dense(d) => (d.input, None),
            Layer::MaxPool(p) => (p.input, None),
            Layer::Softmax(s) => (s.input, None),
            Layer::Mean(m) => (m.input, None),
        }
    }
}

/// A validated model blob. Cheap to copy; borrows the blob.
#[derive(Clone, Copy, Debug)]
pub struct Model<'a> {
    blob: &'a [u8],
    /// Format version (3 added row windows).
    version: u16,
    dtype: DType,
    input_range: InputRange,
    num_layers: u16,
    features: Option<u16>,
    /// First layer computed in f32 (`num_layers` for none; see `header::F32_HEAD`).
    f32_head: u16,
    tensor_table: usize,
    layer_table: usize,
    preprocess: usize,
    class_names: usize,
    arena_size: usize,
}

impl<'a> Model<'a> {
    /// Parses and fully validates a blob. The blob must be 4-byte aligned (the
    /// weights are used in place) and may be longer than the model (a flash
    /// partition); bytes after the stated length are ignored.
    pub fn parse(blob: &'a [u8]) -> Result<Self, Error> {
        if blob.len() < format::HEADER_SIZE {
            return Err(Error::Truncated {
                needed: format::HEADER_SIZE,
                available: blob.len(),
            });
        }
        let head = Record {
            bytes: blob,
            what: "header",
            index: 0,
        };
        if head.field::<4>(header::MAGIC)? != format::MAGIC {
            return Err(Error::BadMagic);
        }
        let version = head.u16(header::VERSION)?;
        if version == 0 || version > format::VERSION {
            return Err(Error::UnsupportedVersion(version));
        }
        let header_size = head.u16(header::HEADER_SIZE)?;
        if usize::from(header_size) != format::HEADER_SIZE {
            return Err(invalid("header_size", 0, header_size.into()));
        }
        let total = head.u32(header::TOTAL_SIZE)? as usize;
        if total < format::HEADER_SIZE {
            return Err(invalid("total_size", 0, total as u32));
        }
        if blob.len() < total {
            return Err(Error::Truncated {
                needed: total,
                available: blob.len(),
            });
        }
        let blob = &blob[..total];
        if blob.as_ptr() as usize % 4 != 0 {
            return Err(Error::Misaligned { what: "blob" });
        }
        let stored = head.u32(header::CRC32)?;
        let computed = crc32(&blob[format::CRC_START..]);
        if stored != computed {
            return Err(Error::ChecksumMismatch { stored, computed });
        }

        let dtype_code = head.u8(header::DTYPE)?;
        let dtype = DType::from_code(dtype_code).ok_or(invalid("dtype", 0, dtype_code.into()))?;
        let range_code = head.u8(header::INPUT_RANGE)?;
        let input_range = InputRange::from_code(range_code).ok_or(invalid(
            "input_range",
            0,
            range_code.into(),
        ))?;
        let num_tensors = head.u16(header::NUM_TENSORS)?;
        let num_layers = head.u16(header::NUM_LAYERS)?;
        if num_layers == 0 || u32::from(num_tensors) != u32::from(num_layers) + 1 {
            return Err(invalid("num_tensors", 0, num_tensors.into()));
        }
        let features = match head.u16(header::FEATURES_TENSOR)? {
            format::NO_TENSOR => None,
            t if t < num_tensors => Some(t),
            t => return Err(invalid("features_tensor", 0, t.into())),
        };
        let f32_head = match (dtype, version) {
            (DType::Int8, 2..) => match head.u16(header::F32_HEAD)? {
                l if l <= num_layers => l,
                l => return Err(invalid("f32_head", 0, l.into())),
            },
            _ => num_layers,
        };
        let model = Model {
            blob,
            version,
            dtype,
            input_range,
            num_layers,
            features,
            f32_head,
            tensor_table: table(
                blob,
                head.u32(header::TENSOR_TABLE)?,
                usize::from(num_tensors) * format::TENSOR_RECORD_SIZE,
                "tensor_table",
            )?,
            layer_table: table(
                blob,
                head.u32(header::LAYER_TABLE)?,
                usize::from(num_layers) * format::LAYER_RECORD_SIZE,
                "layer_table",
            )?,
            preprocess: 0,
            class_names: head.u32(header::CLASS_NAMES)? as usize,
            arena_size: head.u32(header::ARENA_SIZE)? as usize,
        };
        let input = model.tensor(0)?;
        let model = Model {
            preprocess: table(
                blob,
                head.u32(header::PREPROCESS)?,
                2 * 4 * input.channels,
                "preprocess",
            )?,
            ..model
        };
        model.validate()?;
        model.check_winograd()?;
        Ok(model)
    }

    fn validate(&self) -> Result<(), Error> {
        for t in 0..=self.num_layers {
            self.tensor(t)?;
        }
        let logits = self.tensor(self.num_layers)?;
        let features = self.features.map(|t| self.tensor(t)).transpose()?;
        if logits.is_window() || features.is_some_and(|f| f.is_window()) {
            return Err(Error::StreamConflict {
                layer: self.num_layers - 1,
                what: "the logits and the features are read after the run: not windows",
            });
        }
        if logits.height != 1 || logits.width != 1 {
            return Err(Error::ShapeMismatch {
                layer: self.num_layers - 1,
                what: "the last layer must produce a 1x1xC logits tensor",
            });
        }
        for c in 0..self.tensor(0)?.channels {
            let (mean, std) = self.preprocessing(c)?;
            if !mean.is_finite() {
                return Err(invalid("preprocess mean", c as u16, mean.to_bits()));
            }
            if !(std.is_finite() && std > 0.0) {
                return Err(invalid("preprocess std", c as u16, std.to_bits()));
            }
        }
        for i in 0..self.num_layers {
            if let Layer::Conv(conv) = self.layer(i)? {
                self.check_folded_bias(i, &conv)?;
            }
        }
        self.validate_plan()?;
        self.validate_class_names()
    }

    /// No layer may write over a tensor that is still to be read. For every tensor `t`
    /// read by layer `j` (or, for the logits and features, read after the run), each
    /// layer `i` in `t..=j` must write outside `t`; the one exception is layer `j`
    /// itself adding an identity residual `t` in place (its output takes `t`'s exact
    /// bytes, and no later layer reads `t`, which the same rule checks).
    /// O(layers²) record decodes and no allocation.
    fn validate_plan(&self) -> Result<(), Error> {
        let mut i = 0;
        while i < self.num_layers {
            if self.starts_group(i)? {
                let group = Group::new(self, i)?;
                i = group.last() + 1;
                self.validate_group(group)?;
            } else {
                let (input, residual) = self.layer(i)?.inputs();
                for t in core::iter::once(input).chain(residual) {
                    if self.tensor(t)?.is_window() {
                        return Err(Error::StreamConflict {
                            layer: i,
                            what: "a layer outside a streamed group reads a row window",
                        });
                    }
                }
                i += 1;
            }
        }
        for j in 0..self.num_layers {
            let reader = self.layer(j)?;
            let (input, residual) = reader.inputs();
            self.check_live_range(input, j, None)?;
            if let (Some(t), Layer::Conv(conv)) = (residual, reader) {
                self.check_live_range(t, j, Some(conv))?;
            }
        }
        if let Some(features) = self.features {
            self.check_live_range(features, self.num_layers, None)?;
        }
        Ok(())
    }

    /// Whether layer `i` starts a streamed group: it writes a row window, or it is the
    /// first layer and the image is one.
    pub fn starts_group(&self, i: u16) -> Result<bool, Error> {
        let writes_window = self.tensor(i + 1)?.is_window();
        let reads_window = self.tensor(i)?.is_window();
        Ok((writes_window && !reads_window) || (i == 0 && reads_window))
    }

    /// The first layer of the streamed group layer `i` belongs to, if it belongs to
    /// one.
    fn group_start(&self, i: u16) -> Result<Option<u16>, Error> {
        let mut first = i;
        while first > 0 && self.tensor(first)?.is_window() {
            first -= 1;
        }
        let in_group = first < i || self.starts_group(first)?;
        Ok(in_group.then_some(first))
    }

    /// A streamed group's buffers: its windows are disjoint from each other, from the
    /// whole tensors it reads and from the tensor it writes; and, replaying its
    /// schedule, no row it computes reads or overwrites an output row written before,
    /// and no row reads its own output bytes (a residual row may be exactly the output
    /// row: the identity shortcut added in place).
    fn validate_group(&self, mut group: Group<'a>) -> Result<(), Error> {
        let first = group.first();
        let last = group.last();
        let output = group.output();
        let output_bytes = self.byte_range(&output);
        let windows = group.windows();
        let whole_inputs = group.whole_inputs();
        for (n, &(t, window)) in windows.iter().flatten().enumerate() {
            let w = self.byte_range(&window);
            let clash = |other: &TensorInfo| overlaps(&w, &self.byte_range(other));
            if clash(&output)
                || windows.iter().flatten().skip(n + 1).any(|(_, o)| clash(o))
                || whole_inputs.iter().flatten().any(|(_, r)| clash(r))
            {
                return Err(Error::PlanConflict {
                    layer: last,
                    tensor: t,
                });
            }
        }
        let mut written_end = output_bytes.start;
        group.run(&mut |step| {
            let written = output_bytes.start..written_end;
            let conflict = |layer: u16, tensor: u16| Err(Error::PlanConflict { layer, tensor });
            match step {
                Step::Shift { from, to } => {
                    if overlaps(&(to..to + from.len()), &written) {
                        return conflict(first, first);
                    }
                }
                Step::ImageRows { output, .. } => {
                    if overlaps(&output, &written) {
                        return conflict(first, 0);
                    }
                }
                Step::ConvRow(row) => {
                    let conv = &row.conv;
                    if overlaps(&row.input, &written) || overlaps(&row.input, &row.output) {
                        return conflict(row.layer, conv.input);
                    }
                    if let (Some((bytes, t)), Some(r)) = (&row.residual, conv.residual) {
                        let in_place = *bytes == row.output
                            && r.stride == 1
                            && r.channel_offset == 0
                            && (t.width, t.channels)
                                == (row.output_tensor.width, row.output_tensor.channels);
                        if overlaps(bytes, &written) || (overlaps(bytes, &row.output) && !in_place)
                        {
                            return conflict(row.layer, r.tensor);
                        }
                    }
                    if row.layer == last {
                        written_end = row.output.end;
                    } else if overlaps(&row.output, &written) {
                        return conflict(row.layer, row.layer + 1);
                    }
                }
            }
            Ok(())
        })
    }

    /// Checks that layers `t..=last_reader` leave tensor `t` intact.
    fn check_live_range(
        &self,
        t: u16,
        last_reader: u16,
        residual_of: Option<Conv<'_>>,
    ) -> Result<(), Error> {
        let t_info = self.tensor(t)?;
        let live = self.byte_range(&t_info);
        for i in t..last_reader.saturating_add(1).min(self.num_layers) {
            let out = self.tensor(i + 1)?;
            let written = self.byte_range(&out);
            if written.start >= live.end || live.start >= written.end {
                continue;
            }
            // Inside a streamed group, rows interleave: `validate_group` checks it.
            if let Some(first) = self.group_start(i)? {
                if last_reader < self.num_layers && self.group_start(last_reader)? == Some(first) {
                    continue;
                }
            }
            let in_place = i == last_reader
                && residual_of.is_some_and(|conv| {
                    conv.residual
                        .is_some_and(|r| r.stride == 1 && r.channel_offset == 0)
                        && conv.input != t
                        && written == live
                        && (out.height, out.width, out.channels)
                            == (t_info.height, t_info.width, t_info.channels)
                });
            if !in_place {
                return Err(Error::PlanConflict {
                    layer: i,
                    tensor: t,
                });
            }
        }
        Ok(())
    }

    fn byte_range(&self, t: &TensorInfo) -> core::ops::Range<usize> {
        t.arena_offset..t.arena_offset + t.buffer_bytes()
    }

    /// How layer `i` computes: the model's dtype, or f32 in an int8 model's f32 head.
    fn layer_dtype(&self, i: u16) -> DType {
        if i >= self.f32_head {
            DType::F32
        } else {
            self.dtype
        }
    }

    fn validate_class_names(&self) -> Result<(), Error> {
        if self.class_names == 0 {
            return Ok(());
        }
        let rec = self.record(self.class_names, 4, "class_names", 0)?;
        let count = rec.u16(0)?;
        if usize::from(count) != self.num_classes() {
            return Err(invalid("class_names count", 0, count.into()));
        }
        let mut at = self.class_names + 4;
        for i in 0..count {
            let (name, next) = self.name_at(at, i)?;
            if name.is_empty() {
                return Err(invalid("class name length", i, 0));
            }
            at = next;
        }
        Ok(())
    }

    fn name_at(&self, at: usize, index: u16) -> Result<(&'a str, usize), Error> {
        let oob = Error::OutOfBounds {
            what: "class name",
            index,
        };
        let len = usize::from(*self.blob.get(at).ok_or(oob)?);
        let bytes = self.blob.get(at + 1..at + 1 + len).ok_or(oob)?;
        let name =
            core::str::from_utf8(bytes).map_err(|_| invalid("class name utf-8", index, 0))?;
        Ok((name, at + 1 + len))
    }

    fn record(
        &self,
        offset: usize,
        size: usize,
        what: &'static str,
        index: u16,
    ) -> Result<Record<'a>, Error> {
        let bytes = self
            .blob
            .get(offset..offset.saturating_add(size))
            .ok_or(Error::OutOfBounds { what, index })?;
        Ok(Record { bytes, what, index })
    }

    /// The numeric type of the model.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// How raw pixels are scaled before mean/std normalisation.
    pub fn input_range(&self) -> InputRange {
        self.input_range
    }

    /// Mean and standard deviation subtracted from / dividing channel `c` of the
    /// scaled pixels.
    pub fn preprocessing(&self, c: usize) -> Result<(f32, f32), Error> {
        let channels = self.tensor(0)?.channels;
        let rec = self.record(self.preprocess, 8 * channels, "preprocess", 0)?;
        Ok((rec.f32(4 * c)?, rec.f32(4 * (channels + c))?))
    }

    /// Bytes the memory plan needs (the plan's peak); see [`Model::required_arena`].
    pub fn arena_size(&self) -> usize {
        self.arena_size
    }

    /// Bytes an arena of unknown alignment must have: the plan's peak plus slack for
    /// aligning its start to 16 bytes. A [`crate::Arena`] needs only `arena_size()`.
    pub fn required_arena(&self) -> usize {
        self.arena_size + format::SECTION_ALIGN - 1
    }

    /// Number of layers.
    pub fn num_layers(&self) -> u16 {
        self.num_layers
    }

    /// Number of tensors (layers + 1: tensor 0 is the input, tensor `k + 1` the
    /// output of layer `k`).
    pub fn num_tensors(&self) -> u16 {
        self.num_layers + 1
    }

    /// `(height, width, channels)` of the input image.
    pub fn input_shape(&self) -> (usize, usize, usize) {
        let t = self.tensor(0).unwrap_or(TensorInfo::EMPTY);
        (t.height, t.width, t.channels)
    }

    /// Number of classes (length of the logits).
    pub fn num_classes(&self) -> usize {
        self.tensor(self.num_layers)
            .unwrap_or(TensorInfo::EMPTY)
            .len()
    }

    /// Length of the pooled feature vector (0 when the model names none).
    pub fn num_features(&self) -> usize {
        self.features
            .and_then(|t| self.tensor(t).ok())
            .map_or(0, |t| t.len())
    }

    /// The pooled-feature tensor, if the model names one.
    pub fn features_tensor(&self) -> Option<u16> {
        self.features
    }

    /// Name of class `i`, if the blob carries class names.
    pub fn class_name(&self, i: usize) -> Option<&'a str> {
        if self.class_names == 0 || i >= self.num_classes() {
            return None;
        }
        let mut at = self.class_names + 4;
        for k in 0..=i {
            let (name, next) = self.name_at(at, k as u16).ok()?;
            if k == i {
                return Some(name);
            }
            at = next;
        }
        None
    }

    /// Total bytes of the blob.
    pub fn blob_size(&self) -> usize {
        self.blob.len()
    }

    /// Tensor `t`, validated.
    pub fn tensor(&self, t: u16) -> Result<TensorInfo, Error> {
        if t > self.num_layers {
            return Err(invalid("tensor index", t, t.into()));
        }
        let rec = self.record(
            self.tensor_table + usize::from(t) * format::TENSOR_RECORD_SIZE,
            format::TENSOR_RECORD_SIZE,
            "tensor record",
            t,
        )?;
        let dim = |offset, what| -> Result<usize, Error> {
            match rec.u16(offset)? {
                0 => Err(invalid(what, t, 0)),
                d => Ok(usize::from(d)),
            }
        };
        let info = TensorInfo {
            height: dim(tf::HEIGHT, "tensor height")?,
            width: dim(tf::WIDTH, "tensor width")?,
            channels: dim(tf::CHANNELS, "tensor channels")?,
            arena_offset: rec.u32(tf::ARENA_OFFSET)? as usize,
            scale: rec.f32(tf::SCALE)?,
            zero_point: rec.i32(tf::ZERO_POINT)?,
            // Layer `k` writes tensor `k + 1`.
            float: self.dtype != DType::Int8 || t > self.f32_head,
            rows_held: 0,
        };
        // Version 3 added row windows; the field was reserved (zero) before.
        let rows_held = match rec.u16(tf::ROWS_HELD)? {
            0 => info.height,
            _ if self.version < 3 => info.height,
            r if usize::from(r) <= info.height => usize::from(r),
            r => {
                return Err(invalid(
                    "tensor rows_held (more than its height)",
                    t,
                    r.into(),
                ))
            }
        };
        let info = TensorInfo { rows_held, ..info };
        let bytes = info
            .rows_held
            .checked_mul(info.width)
            .and_then(|n| n.checked_mul(info.channels))
            .and_then(|n| n.checked_mul(info.element_bytes()))
            .ok_or(invalid("tensor size", t, u32::MAX))?;
        if info.arena_offset % 4 != 0 {
            return Err(Error::Misaligned {
                what: "tensor arena offset",
            });
        }
        match info.arena_offset.checked_add(bytes) {
            Some(end) if end <= self.arena_size => {}
            _ => {
                return Err(Error::OutOfBounds {
                    what: "tensor buffer (beyond arena_size)",
                    index: t,
                })
            }
        }
        if !info.float {
            if !(info.scale.is_finite() && info.scale > 0.0) {
                return Err(invalid("tensor scale", t, info.scale.to_bits()));
            }
            if !(-128..=127).contains(&info.zero_point) {
                return Err(invalid("tensor zero point", t, info.zero_point as u32));
            }
        }
        Ok(info)
    }

    /// Whether the last layer is a softmax: the output is then probabilities, not
    /// logits.
    pub fn ends_in_softmax(&self) -> Result<bool, Error> {
        Ok(matches!(
            self.layer(self.num_layers - 1)?,
            Layer::Softmax(_)
        ))
    }

    /// Layer `i`, validated against its tensors.
    pub fn layer(&self, i: u16) -> Result<Layer<'a>, Error> {
        if i >= self.num_layers {
            return Err(invalid("layer index", i, i.into()));
        }
        let rec = self.record(
            self.layer_table + usize::from(i) * format::LAYER_RECORD_SIZE,
            format::LAYER_RECORD_SIZE,
            "layer record",
            i,
        )?;
        let kind_code = rec.u8(lf::KIND)?;
        let flag_bits = rec.u8(lf::FLAGS)?;
        if flag_bits & !flags::ALL != 0 {
            return Err(invalid("layer flags", i, flag_bits.into()));
        }
        let input = rec.u16(lf::INPUT)?;
        let output = rec.u16(lf::OUTPUT)?;
        if output != i + 1 {
            return Err(invalid("layer output tensor", i, output.into()));
        }
        if input > i {
            return Err(invalid(
                "layer input tensor (not yet computed)",
                i,
                input.into(),
            ));
        }
        let in_t = self.tensor(input)?;
        let out_t = self.tensor(output)?;
        let relu = flag_bits & flags::RELU != 0;
        let mismatch = |what| Error::ShapeMismatch { layer: i, what };
        let in_f32_head = self.dtype == DType::Int8 && i >= self.f32_head;
        match kind_code {
            kind::CONV2D | kind::MAX_POOL if in_f32_head => {
                Err(invalid("f32 head layer kind", i, kind_code.into()))
            }
            kind::MAX_POOL => {
                if flag_bits != 0 {
                    return Err(invalid("layer flags", i, flag_bits.into()));
                }
                let (kernel_h, kernel_w, stride, padding) = window(&rec, &in_t, &out_t, i)?;
                if out_t.channels != in_t.channels || out_t.float != in_t.float {
                    return Err(mismatch(
                        "max pool output must have its input's channels and type",
                    ));
                }
                if !out_t.float
                    && (out_t.scale.to_bits(), out_t.zero_point)
                        != (in_t.scale.to_bits(), in_t.zero_point)
                {
                    return Err(mismatch("int8 max pool must keep its input's quantization"));
                }
                Ok(Layer::MaxPool(MaxPool {
                    input,
                    output,
                    kernel_h,
                    kernel_w,
                    stride,
                    padding,
                }))
            }
            kind::CONV2D => {
                if flag_bits & flags::SINGLE_ROUNDING != 0 {
                    return Err(invalid("layer flags", i, flag_bits.into()));
                }
                let (kernel_h, kernel_w, stride, padding) = window(&rec, &in_t, &out_t, i)?;
                let n_weights = out_t
                    .channels
                    .checked_mul(kernel_h * kernel_w)
                    .and_then(|n| n.checked_mul(in_t.channels))
                    .ok_or(mismatch("conv weight count overflows"))?;
                let weights = self.weights(&rec, n_weights)?;
                let bias = self.bias(&rec, out_t.channels)?;
                let winograd = if flag_bits & flags::WINOGRAD != 0 {
                    let shape = ConvShape::of_window(
                        (in_t.height, in_t.width, in_t.channels),
                        (out_t.height, out_t.width, out_t.channels),
                        (kernel_h, kernel_w),
                        stride,
                        (padding[0], padding[1]),
                    );
                    Some(self.winograd_filters(&rec, flag_bits, n_weights, &shape)?)
                } else {
                    None
                };
                let flagged_residual = flag_bits & flags::RESIDUAL != 0;
                let residual = if flagged_residual {
                    let tensor = rec.u16(lf::RESIDUAL_INPUT)?;
                    if tensor > i {
                        return Err(invalid(
                            "residual tensor (not yet computed)",
                            i,
                            tensor.into(),
                        ));
                    }
                    let r_t = self.tensor(tensor)?;
                    let r_stride = usize::from(rec.u8(lf::RESIDUAL_STRIDE)?);
                    let channel_offset = usize::from(rec.u16(lf::RESIDUAL_CHANNEL_OFFSET)?);
                    if r_stride == 0 {
                        return Err(invalid("residual stride", i, 0));
                    }
                    if (out_t.height - 1) * r_stride >= r_t.height
                        || (out_t.width - 1) * r_stride >= r_t.width
                        || channel_offset + r_t.channels > out_t.channels
                    {
                        return Err(mismatch("residual tensor does not map onto the output"));
                    }
                    let add = if self.dtype == DType::Int8 {
                        let p = AddParams {
                            input1_zero_point: zero_point(&rec, lf::PRE_ADD_ZERO_POINT, i)?,
                            input2_zero_point: r_t.zero_point,
                            output_zero_point: out_t.zero_point,
                            input1_multiplier: multiplier(&rec, lf::ADD_INPUT1_MULTIPLIER, i)?,
                            input1_shift: shift(&rec, lf::ADD_INPUT1_SHIFT, i)?,
                            input2_multiplier: multiplier(&rec, lf::ADD_INPUT2_MULTIPLIER, i)?,
                            input2_shift: shift(&rec, lf::ADD_INPUT2_SHIFT, i)?,
                            output_multiplier: multiplier(&rec, lf::ADD_OUTPUT_MULTIPLIER, i)?,
                            output_shift: shift(&rec, lf::ADD_OUTPUT_SHIFT, i)?,
                            activation_min: 0,
                            activation_max: 0,
                        };
                        let (activation_min, activation_max) = crate::quant::activation_range(
                            out_t.zero_point,
                            flag_bits & flags::RESIDUAL_RELU != 0,
                        );
                        AddParams {
                            activation_min,
                            activation_max,
                            ..p
                        }
                    } else {
                        AddParams::default()
                    };
                    Some(Residual {
                        tensor,
                        stride: r_stride,
                        channel_offset,
                        relu: flag_bits & flags::RESIDUAL_RELU != 0,
                        add,
                    })
                } else if flag_bits & flags::RESIDUAL_RELU != 0 {
                    return Err(invalid("layer flags", i, flag_bits.into()));
                } else {
                    None
                };
                let pre_add_zero_point = if residual.is_some() && self.dtype == DType::Int8 {
                    zero_point(&rec, lf::PRE_ADD_ZERO_POINT, i)?
                } else {
                    out_t.zero_point
                };
                Ok(Layer::Conv(Conv {
                    input,
                    output,
                    kernel_h,
                    kernel_w,
                    stride,
                    padding,
                    relu,
                    weights,
                    bias,
                    requant: self
                        .requant(&rec, out_t.channels, pre_add_zero_point)?
                        .map(|r| -> Result<Requant<'a>, Error> {
                            Ok(Requant {
                                folded_bias: self.folded_bias(&rec, out_t.channels)?,
                                ..r
                            })
                        })
                        .transpose()?,
                    residual,
                    winograd,
                }))
            }
            kind::GLOBAL_AVG_POOL => {
                if flag_bits != 0 {
                    return Err(invalid("layer flags", i, flag_bits.into()));
                }
                if (out_t.height, out_t.width, out_t.channels) != (1, 1, in_t.channels) {
                    return Err(mismatch("global average pool output must be 1x1xC"));
                }
                if !out_t.float
                    && (out_t.scale.to_bits(), out_t.zero_point)
                        != (in_t.scale.to_bits(), in_t.zero_point)
                {
                    return Err(mismatch(
                        "int8 average pool must keep its input's quantization",
                    ));
                }
                Ok(Layer::GlobalAvgPool { input, output })
            }
            kind::DENSE => {
                let allowed = if self.layer_dtype(i) == DType::Int8 && self.version >= 4 {
                    flags::RELU | flags::SINGLE_ROUNDING
                } else {
                    flags::RELU
                };
                if flag_bits & !allowed != 0 {
                    return Err(invalid("layer flags", i, flag_bits.into()));
                }
                if out_t.height != 1 || out_t.width != 1 {
                    return Err(mismatch("dense output must be 1x1xC"));
                }
                if in_f32_head && !in_t.float {
                    return Err(mismatch(
                        "an f32 head's dense layer must read an f32 tensor",
                    ));
                }
                Ok(Layer::Dense(Dense {
                    input,
                    output,
                    relu,
                    weights: self.weights(
                        &rec,
                        out_t
                            .channels
                            .checked_mul(in_t.len())
                            .ok_or(mismatch("dense weight count overflows"))?,
                    )?,
                    bias: self.bias(&rec, out_t.channels)?,
                    requant: self.requant(&rec, out_t.channels, out_t.zero_point)?,
                    rounding: if flag_bits & flags::SINGLE_ROUNDING != 0 {
                        Rounding::Single
                    } else {
                        Rounding::Double
                    },
                }))
            }
            kind::MEAN if self.version >= 4 => {
                if flag_bits != 0 {
                    return Err(invalid("layer flags", i, flag_bits.into()));
                }
                if (out_t.height, out_t.width, out_t.channels) != (1, 1, in_t.channels)
                    || in_t.float != out_t.float
                {
                    return Err(mismatch("mean output must be 1x1xC of its input's type"));
                }
                let requant = if out_t.float {
                    None
                } else {
                    let m = rec.i32(lf::MEAN_MULTIPLIER)?;
                    let s = rec.i32(lf::MEAN_SHIFT)?;
                    if m < 0 {
                        return Err(invalid("mean multiplier", i, m as u32));
                    }
                    if !(-31..=30).contains(&s) {
                        return Err(invalid("mean shift", i, s as u32));
                    }
                    Some((m, s))
                };
                Ok(Layer::Mean(Mean {
                    input,
                    output,
                    requant,
                }))
            }
            kind::SOFTMAX if self.version >= 4 => {
                if flag_bits != 0 {
                    return Err(invalid("layer flags", i, flag_bits.into()));
                }
                if (in_t.height, in_t.width) != (1, 1)
                    || in_t.dims() != out_t.dims()
                    || in_t.float != out_t.float
                {
                    return Err(mismatch(
                        "softmax input and output must be 1x1xC tensors of one type",
                    ));
                }
                let beta = f32::from_bits(rec.u32(lf::SOFTMAX_BETA)?);
                if !beta.is_finite() {
                    return Err(invalid("softmax beta", i, beta.to_bits()));
                }
                let int8 = if out_t.float {
                    None
                } else {
                    let (scale, zero_point) = SOFTMAX_OUTPUT_QUANTIZATION;
                    if (out_t.scale.to_bits(), out_t.zero_point) != (scale.to_bits(), zero_point) {
                        return Err(mismatch(
                            "an int8 softmax's output must have scale 1/256 and zero point -128",
                        ));
                    }
                    let params = SoftmaxParams {
                        input_multiplier: rec.i32(lf::SOFTMAX_INPUT_MULTIPLIER)?,
                        input_left_shift: rec.i32(lf::SOFTMAX_INPUT_LEFT_SHIFT)?,
                        diff_min: rec.i32(lf::SOFTMAX_DIFF_MIN)?,
                    };
                    if params.input_multiplier < 1 << 30 {
                        return Err(invalid(
                            "softmax input multiplier",
                            i,
                            params.input_multiplier as u32,
                        ));
                    }
                    if !(0..=31).contains(&params.input_left_shift) {
                        return Err(invalid(
                            "softmax input left shift",
                            i,
                            params.input_left_shift as u32,
                        ));
                    }
                    if params.diff_min > 0 {
                        return Err(invalid("softmax diff_min", i, params.diff_min as u32));
                    }
                    Some(params)
                };
                Ok(Layer::Softmax(Softmax {
                    input,
                    output,
                    beta,
                    int8,
                }))
            }
            other => Err(invalid("layer kind", i, other.into())),
        }
    }

    fn weights(&self, rec: &Record<'a>, count: usize) -> Result<Weights<'a>, Error> {
        let offset = rec.u32(lf::WEIGHTS)? as usize;
        let bytes = self.array(
            offset,
            count,
            self.layer_dtype(rec.index).weight_bytes(),
            "weights",
            rec.index,
        )?;
        Ok(match self.layer_dtype(rec.index) {
            DType::F32 => Weights::F32(cast(bytes, "f32 weights")?),
            DType::F16 => Weights::F16(cast(bytes, "f16 weights")?),
            DType::Int8 => Weights::I8(cast(bytes, "int8 weights")?),
        })
    }

    fn bias(&self, rec: &Record<'a>, count: usize) -> Result<Bias<'a>, Error> {
        let offset = rec.u32(lf::BIAS)? as usize;
        let bytes = self.array(offset, count, 4, "bias", rec.index)?;
        Ok(match self.layer_dtype(rec.index) {
            DType::F32 | DType::F16 => Bias::F32(cast(bytes, "f32 bias")?),
            DType::Int8 => Bias::I32(cast(bytes, "int32 bias")?),
        })
    }

    fn requant(
        &self,
        rec: &Record<'a>,
        channels: usize,
        output_zero_point: i32,
    ) -> Result<Option<Requant<'a>>, Error> {
        if self.layer_dtype(rec.index) != DType::Int8 {
            return Ok(None);
        }
        let m = self.array(
            rec.u32(lf::MULTIPLIERS)? as usize,
            channels,
            4,
            "multipliers",
            rec.index,
        )?;
        let s = self.array(
            rec.u32(lf::SHIFTS)? as usize,
            channels,
            4,
            "shifts",
            rec.index,
        )?;
        let multipliers: &[i32] = cast(m, "multipliers")?;
        let shifts: &[i32] = cast(s, "shifts")?;
        if let Some(&bad) = multipliers.iter().find(|&&m| m < 0) {
            return Err(invalid("requant multiplier", rec.index, bad as u32));
        }
        if let Some(&bad) = shifts.iter().find(|&&s| !(-31..=30).contains(&s)) {
            return Err(invalid("requant shift", rec.index, bad as u32));
        }
        Ok(Some(Requant {
            multipliers,
            shifts,
            output_zero_point,
            folded_bias: None,
        }))
    }

    /// An int8 convolution's folded biases: since version 3 they follow its `channels`
    /// biases in the bias array (FORMAT.md).
    fn folded_bias(&self, rec: &Record<'a>, channels: usize) -> Result<Option<&'a [i32]>, Error> {
        if self.version < 3 {
            return Ok(None);
        }
        let bias = rec.u32(lf::BIAS)? as usize;
        let bytes = self.array(
            bias.saturating_add(4 * channels),
            channels,
            4,
            "folded biases",
            rec.index,
        )?;
        cast(bytes, "folded biases").map(Some)
    }

    /// An int8 convolution's Winograd filters: since version 5, where its flag says so,
    /// at the first 16-byte boundary after its `count` weights (FORMAT.md), for a layer
    /// that [`winograd::applies`] accepts.
    fn winograd_filters(
        &self,
        rec: &Record<'a>,
        flag_bits: u8,
        count: usize,
        shape: &ConvShape,
    ) -> Result<&'a [u8], Error> {
        if self.version < 5 || self.layer_dtype(rec.index) != DType::Int8 {
            return Err(invalid("layer flags", rec.index, flag_bits.into()));
        }
        if !winograd::applies(shape) {
            return Err(Error::ShapeMismatch {
                layer: rec.index,
                what: "Winograd filters need a 3x3 stride-1 convolution, input channels a multiple of 16 up to 64, even output channels and output rows a multiple of 4 wide",
            });
        }
        let weights = rec.u32(lf::WEIGHTS)? as usize;
        let offset = weights
            .saturating_add(count)
            .next_multiple_of(format::SECTION_ALIGN);
        let bytes = winograd::filters_bytes(shape.in_c, shape.out_c);
        self.array(offset, bytes, 1, "Winograd filters", rec.index)
    }

    /// Every int8 convolution's Winograd filters are those of its weights. Called
    /// after [`Self::validate`], not from it: on top of its frame (3.6 KiB on the
    /// Cortex-M) this loop would deepen the engine's deepest stack.
    #[inline(never)]
    fn check_winograd(&self) -> Result<(), Error> {
        for i in 0..self.num_layers {
            if let Layer::Conv(conv) = self.layer(i)? {
                self.check_winograd_layer(i, &conv)?;
            }
        }
        Ok(())
    }

    /// An int8 convolution's Winograd filters are those of its weights.
    fn check_winograd_layer(&self, i: u16, conv: &Conv<'_>) -> Result<(), Error> {
        let (Some(filters), Weights::I8(weights)) = (conv.winograd, conv.weights) else {
            return Ok(());
        };
        let in_c = self.tensor(conv.input)?.channels;
        let out_c = self.tensor(conv.output)?.channels;
        let mut stored = filters
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]));
        let mut first_wrong = None;
        let mut n = 0u32;
        winograd::for_each_filter_value(weights, in_c, out_c, |value| {
            if first_wrong.is_none() && stored.next() != Some(value) {
                first_wrong = Some(n);
            }
            n += 1;
        });
        match first_wrong {
            Some(at) => Err(invalid("Winograd filter term", i, at)),
            None => Ok(()),
        }
    }

    /// An int8 convolution's folded biases equal `bias − input_zero_point · Σ w`
    /// (the kernels that use them must compute what the others do).
    fn check_folded_bias(&self, i: u16, conv: &Conv<'_>) -> Result<(), Error> {
        let (Some(requant), Weights::I8(weights), Bias::I32(bias)) =
            (conv.requant, conv.weights, conv.bias)
        else {
            return Ok(());
        };
        let Some(folded) = requant.folded_bias else {
            return Ok(());
        };
        let zero_point = self.tensor(conv.input)?.zero_point;
        let window = weights.len() / bias.len().max(1);
        for (c, (row, (&b, &f))) in weights
            .chunks_exact(window.max(1))
            .zip(bias.iter().zip(folded))
            .enumerate()
        {
            let sum: i32 = row.iter().map(|&w| i32::from(w)).sum();
            if f != b.wrapping_sub(zero_point.wrapping_mul(sum)) {
                return Err(invalid("folded bias", i, c as u32));
            }
        }
        Ok(())
    }

    fn array(
        &self,
        offset: usize,
        count: usize,
        elem: usize,
        what: &'static str,
        index: u16,
    ) -> Result<&'a [u8], Error> {
        count
            .checked_mul(elem)
            .and_then(|len| offset.checked_add(len))
            .and_then(|end| self.blob.get(offset..end))
            .ok_or(Error::OutOfBounds { what, index })
    }
}

fn overlaps(a: &core::ops::Range<usize>, b: &core::ops::Range<usize>) -> bool {
    a.start < b.end && b.start < a.end
}

fn invalid(what: &'static str, index: u16, value: u32) -> Error {
    Error::InvalidValue { what, index, value }
}

fn table(blob: &[u8], offset: u32, len: usize, what: &'static str) -> Result<usize, Error> {
    let offset = offset as usize;
    if offset < format::HEADER_SIZE || offset % 4 != 0 {
        return Err(invalid(what, 0, offset as u32));
    }
    match offset.checked_add(len) {
        Some(end) if end <= blob.len() => Ok(offset),
        _ => Err(Error::OutOfBounds { what, index: 0 }),
    }
}

fn cast<'a, T: bytemuck::AnyBitPattern>(
    bytes: &'a [u8],
    what: &'static str,
) -> Result<&'a [T], Error> {
    bytemuck::try_cast_slice(bytes).map_err(|_| Error::Misaligned { what })
}

/// A convolution's or a pool's window: kernel rows and columns, stride and padding
/// `[top, left, bottom, right]`, checked against the layer's tensors.
fn window(
    rec: &Record<'_>,
    in_t: &TensorInfo,
    out_t: &TensorInfo,
    layer: u16,
) -> Result<(usize, usize, usize, [usize; 4]), Error> {
    let kernel_h = usize::from(rec.u8(lf::KERNEL_H)?);
    let kernel_w = usize::from(rec.u8(lf::KERNEL_W)?);
    let stride = usize::from(rec.u8(lf::STRIDE)?);
    let padding = [
        usize::from(rec.u8(lf::PAD_TOP)?),
        usize::from(rec.u8(lf::PAD_LEFT)?),
        usize::from(rec.u8(lf::PAD_BOTTOM)?),
        usize::from(rec.u8(lf::PAD_RIGHT)?),
    ];
    if kernel_h == 0 || kernel_w == 0 {
        return Err(invalid("kernel size", layer, 0));
    }
    if stride == 0 {
        return Err(invalid("stride", layer, 0));
    }
    let mismatch = |what| Error::ShapeMismatch { layer, what };
    // So every window of a pool holds an input pixel, and a convolution's padding
    // is never a whole row or column of taps.
    if padding[0].max(padding[2]) >= kernel_h || padding[1].max(padding[3]) >= kernel_w {
        return Err(mismatch("padding must be smaller than the kernel"));
    }
    let output = ConvShape::output_size(
        in_t.height,
        in_t.width,
        (kernel_h, kernel_w),
        stride,
        padding,
    );
    if output != Some((out_t.height, out_t.width)) {
        return Err(mismatch(
            "output size disagrees with kernel, stride, padding",
        ));
    }
    Ok((kernel_h, kernel_w, stride, padding))
}

fn zero_point(rec: &Record<'_>, offset: usize, layer: u16) -> Result<i32, Error> {
    match rec.i32(offset)? {
        zp @ -128..=127 => Ok(zp),
        zp => Err(invalid("zero point", layer, zp as u32)),
    }
}

fn multiplier(rec: &Record<'_>, offset: usize, layer: u16) -> Result<i32, Error> {
    match rec.i32(offset)? {
        m if m >= 0 => Ok(m),
        m => Err(invalid("add multiplier", layer, m as u32)),
    }
}

fn shift(rec: &Record<'_>, offset: usize, layer: u16) -> Result<i32, Error> {
    match rec.i32(offset)? {
        s @ -31..=30 => Ok(s),
        s => Err(invalid("add shift", layer, s as u32)),
    }
}
