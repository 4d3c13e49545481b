//! Running a validated model inside a caller-provided arena.

use core::ops::Range;

use crate::arch;
use crate::error::Error;
use crate::format::{DType, InputRange, SECTION_ALIGN};
use crate::kernels::{self, ConvShape, Requantize, Shortcut};
use crate::model::{
    Bias, Conv, Dense, Layer, MaxPool, Mean, Model, Requant, Softmax, TensorInfo, Weights,
};
use crate::quant::{activation_range, dequantize_i8, quantize_i8, AddParams, AddTables};
use crate::stream::{Group, Step};

/// A statically allocated, 16-byte aligned arena of `N` bytes, so firmware can write
/// `static mut ARENA: Arena<49152> = Arena::new();` and pass it with no alignment
/// slack.
#[derive(Debug)]
#[repr(C, align(16))]
pub struct Arena<const N: usize>([u8; N]);

impl<const N: usize> Arena<N> {
    /// A zeroed arena.
    pub const fn new() -> Self {
        Arena([0; N])
    }

    /// The arena's bytes.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

impl<const N: usize> Default for Arena<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs a [`Model`] on images, one at a time, inside a borrowed arena.
#[derive(Debug)]
pub struct Interpreter<'m, 'a> {
    model: Model<'m>,
    arena: &'a mut [u8],
    has_run: bool,
}

impl<'m, 'a> Interpreter<'m, 'a> {
    /// Binds `model` to `arena`. The arena's start is aligned to 16 bytes internally;
    /// it must hold [`Model::arena_size`] bytes after that (so
    /// [`Model::required_arena`] bytes for an arbitrary slice, or an [`Arena`] of
    /// `arena_size()` bytes).
    pub fn new(model: Model<'m>, arena: &'a mut [u8]) -> Result<Self, Error> {
        let misalignment = arena.as_ptr().align_offset(SECTION_ALIGN);
        let needed = model.arena_size().saturating_add(misalignment);
        if arena.len() < needed {
            return Err(Error::ArenaTooSmall {
                needed,
                available: arena.len(),
            });
        }
        let arena = &mut arena[misalignment..needed];
        Ok(Interpreter {
            model,
            arena,
            has_run: false,
        })
    }

    /// The model being run.
    pub fn model(&self) -> &Model<'m> {
        &self.model
    }

    /// Runs one image and returns the predicted class. `pixels` are raw `u8` values in
    /// HWC order (`height · width · channels` of them), preprocessed as the blob says.
    pub fn run(&mut self, pixels: &[u8]) -> Result<usize, Error> {
        self.run_observed(pixels, |_| {})
    }

    /// As [`Interpreter::run`], calling `after_step(0)` once the input is written and
    /// `after_step(i + 1)` once layer `i` is done: a profiler reads its counter there.
    pub fn run_observed(
        &mut self,
        pixels: &[u8],
        mut after_step: impl FnMut(usize),
    ) -> Result<usize, Error> {
        self.has_run = false;
        let image = self.model.tensor(0)?;
        if pixels.len() != image.len() {
            return Err(Error::WrongLength {
                what: "input pixels",
                expected: image.len(),
                actual: pixels.len(),
            });
        }
        if !image.is_window() {
            self.write_image(pixels, &image)?;
        }
        after_step(0);
        let mut scratch = arch::ConvScratch::new();
        let mut group = Group::EMPTY;
        let mut i = 0;
        while i < self.model.num_layers() {
            if self.model.starts_group(i)? {
                group.decode(&self.model, i)?;
                let last = group.last();
                if group.reads_image() && !group.adds_residual() {
                    self.run_group_with_image_tables(&mut group, pixels, &mut scratch)?;
                } else {
                    self.run_group_with_add_tables(&mut group, pixels, &mut scratch)?;
                }
                // The group's layers ran interleaved, row by row: its time is
                // reported at its first layer.
                for layer in i..=last {
                    after_step(usize::from(layer) + 1);
                }
                i = last + 1;
                continue;
            }
            match self.model.layer(i)? {
                Layer::Conv(conv) => self.conv(&conv, &mut scratch)?,
                Layer::GlobalAvgPool { input, output } => self.pool(input, output)?,
                Layer::Dense(dense) => self.dense(&dense)?,
                Layer::MaxPool(pool) => self.max_pool(&pool)?,
                Layer::Softmax(softmax) => self.softmax(&softmax)?,
                Layer::Mean(mean) => self.mean(&mean)?,
            }
            after_step(usize::from(i) + 1);
            i += 1;
        }
        self.has_run = true;
        self.predicted_class()
    }

    /// Writes the whole input tensor. Out of line, like the group runners below: the
    /// quantization tables are on the stack only while they are used.
    #[inline(never)]
    fn write_image(&mut self, pixels: &[u8], image: &TensorInfo) -> Result<(), Error> {
        let mut memory = IMAGE_TABLES_UNFILLED;
        let tables = self.image_tables(&mut memory)?;
        self.write_image_rows(pixels, tables, 0..image.height, self.byte_range(image))
    }

    /// An int8 image is quantized through one table per channel (more pixels than
    /// byte values: each value once), filled in `memory`; `None` for a float image or
    /// one with more channels than tables.
    fn image_tables<'t>(
        &self,
        memory: &'t mut [[u8; 256]; IMAGE_TABLE_CHANNELS],
    ) -> Result<Option<&'t [[u8; 256]]>, Error> {
        let image = self.model.tensor(0)?;
        match memory.get_mut(..image.channels) {
            Some(tables) if self.model.dtype() == DType::Int8 => {
                for (c, table) in tables.iter_mut().enumerate() {
                    let normalize = normalizer(&self.model, c)?;
                    *table = core::array::from_fn(|v| {
                        quantize_i8(normalize(v as u8), image.scale, image.zero_point) as u8
                    });
                }
                Ok(Some(&*tables))
            }
            _ => Ok(None),
        }
    }

    /// Runs a streamed group that quantizes the image's rows and adds no residual
    /// (a stem), with the image's tables.
    ///
    /// The image's tables (1 KiB) and the add's (2 KiB) each live in the frame of the
    /// runner of the groups that use them, never both on the stack: on-device
    /// learning has no kilobyte to spare.
    #[inline(never)]
    fn run_group_with_image_tables(
        &mut self,
        group: &mut Group<'m>,
        pixels: &[u8],
        scratch: &mut arch::ConvScratch,
    ) -> Result<(), Error> {
        let mut memory = IMAGE_TABLES_UNFILLED;
        let mut rows = RowContext {
            pixels,
            image_tables: self.image_tables(&mut memory)?,
            add_tables: None,
            scratch,
        };
        group.run(&mut |step| self.step(step, &mut rows))
    }

    /// Runs any other streamed group, with the int8 add's tables. Image rows, if it
    /// quantizes any besides adding a residual (no ResNet stem does both), are
    /// computed without tables: slower, the same values.
    #[inline(never)]
    fn run_group_with_add_tables(
        &mut self,
        group: &mut Group<'m>,
        pixels: &[u8],
        scratch: &mut arch::ConvScratch,
    ) -> Result<(), Error> {
        let mut add_tables = LayerAddTables {
            layer: None,
            tables: AddTables::UNTABULATED,
        };
        let mut rows = RowContext {
            pixels,
            image_tables: None,
            add_tables: Some(&mut add_tables),
            scratch,
        };
        group.run(&mut |step| self.step(step, &mut rows))
    }

    /// Executes one step of a streamed group.
    fn step(&mut self, step: Step<'_, 'm>, rows: &mut RowContext<'_>) -> Result<(), Error> {
        match step {
            Step::Shift { from, to } => {
                let end = to.checked_add(from.len());
                if from.end > self.arena.len() || end.is_none_or(|e| e > self.arena.len()) {
                    return Err(Error::OutOfBounds {
                        what: "row window",
                        index: 0,
                    });
                }
                self.arena.copy_within(from, to);
                Ok(())
            }
            Step::ImageRows {
                rows: image_rows,
                output,
            } => self.write_image_rows(rows.pixels, rows.image_tables, image_rows, output),
            Step::ConvRow(row) => {
                let shape = ConvShape {
                    in_h: row.input_rows,
                    in_w: row.input_tensor.width,
                    in_c: row.input_tensor.channels,
                    out_h: row.output_rows,
                    out_w: row.output_tensor.width,
                    out_c: row.output_tensor.channels,
                    kernel_h: row.conv.kernel_h,
                    kernel_w: row.conv.kernel_w,
                    stride: row.conv.stride,
                    pad_top: row.pad_top,
                    pad_left: row.conv.padding[1],
                };
                // The shortcut rows seen as a tensor of just those rows.
                let residual = row.residual.map(|(bytes, t)| {
                    let height = bytes.len() / t.row_bytes().max(1);
                    (bytes, TensorInfo { height, ..*t })
                });
                let tables = match (self.model.dtype(), row.conv.residual, &mut rows.add_tables) {
                    (DType::Int8, Some(r), Some(tables)) => Some(tables.of(row.layer, &r.add)),
                    _ => None,
                };
                self.convolve(
                    row.conv,
                    &shape,
                    row.input_tensor.zero_point,
                    row.input,
                    row.output,
                    residual,
                    tables,
                    rows.scratch,
                )
            }
        }
    }

    /// Runs one image and writes the class probabilities (softmax of the logits)
    /// into `probabilities`; returns the predicted class.
    pub fn classify(&mut self, pixels: &[u8], probabilities: &mut [f32]) -> Result<usize, Error> {
        let class = self.run(pixels)?;
        self.probabilities(probabilities)?;
        Ok(class)
    }

    /// The predicted class of the last run (argmax of the logits, first on ties).
    pub fn predicted_class(&self) -> Result<usize, Error> {
        let logits = self.output_tensor(self.model.num_layers())?;
        let mut best = (0, f32::NEG_INFINITY);
        for i in 0..logits.len() {
            let v = self.value(&logits, i)?;
            if v > best.1 {
                best = (i, v);
            }
        }
        Ok(best.0)
    }

    /// The output of the last run, dequantized for int8 models: the logits, or the
    /// probabilities of a model that ends in a softmax.
    pub fn logits(&self, logits: &mut [f32]) -> Result<(), Error> {
        let t = self.output_tensor(self.model.num_layers())?;
        self.read_f32(&t, logits, "logits")
    }

    /// The raw bytes of the last run's output tensor: one int8 value a byte for an
    /// int8 output, little-endian f32 otherwise (the tensor's quantization is
    /// `model().tensor(num_layers)`), for comparing with another runtime byte for byte.
    pub fn output_bytes(&self) -> Result<&[u8], Error> {
        let t = self.output_tensor(self.model.num_layers())?;
        self.arena
            .get(t.arena_offset..t.arena_offset + t.len() * if t.float { 4 } else { 1 })
            .ok_or(Error::OutOfBounds {
                what: "output tensor",
                index: 0,
            })
    }

    /// The class probabilities of the last run: the softmax of the logits, or, for a
    /// model that ends in its own softmax, its output (dequantized for int8).
    pub fn probabilities(&self, probabilities: &mut [f32]) -> Result<(), Error> {
        self.logits(probabilities)?;
        if !self.model.ends_in_softmax()? {
            kernels::softmax_in_place(probabilities);
        }
        Ok(())
    }

    /// The pooled features of the last run (the input of the classifier layer,
    /// dequantized for int8 models), for the on-device trainer.
    pub fn features(&self, features: &mut [f32]) -> Result<(), Error> {
        let t = self.model.features_tensor().ok_or(Error::WrongLength {
            what: "features (the model names no feature tensor)",
            expected: 0,
            actual: features.len(),
        })?;
        let t = self.output_tensor(t)?;
        self.read_f32(&t, features, "features")
    }

    fn output_tensor(&self, t: u16) -> Result<TensorInfo, Error> {
        if !self.has_run {
            return Err(Error::NotRun);
        }
        self.model.tensor(t)
    }

    fn read_f32(&self, t: &TensorInfo, out: &mut [f32], what: &'static str) -> Result<(), Error> {
        if out.len() != t.len() {
            return Err(Error::WrongLength {
                what,
                expected: t.len(),
                actual: out.len(),
            });
        }
        for (i, o) in out.iter_mut().enumerate() {
            *o = self.value(t, i)?;
        }
        Ok(())
    }

    fn value(&self, t: &TensorInfo, i: usize) -> Result<f32, Error> {
        let bytes = self
            .arena
            .get(self.byte_range(t))
            .ok_or(Error::OutOfBounds {
                what: "tensor buffer",
                index: 0,
            })?;
        if t.float {
            let at = 4 * i;
            let b = bytes.get(at..at + 4).ok_or(Error::OutOfBounds {
                what: "tensor element",
                index: 0,
            })?;
            Ok(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        } else {
            let q = *bytes.get(i).ok_or(Error::OutOfBounds {
                what: "tensor element",
                index: 0,
            })? as i8;
            Ok(dequantize_i8(q, t.scale, t.zero_point))
        }
    }

    fn byte_range(&self, t: &TensorInfo) -> Range<usize> {
        t.arena_offset..t.arena_offset + t.buffer_bytes()
    }

    /// Normalises (and for int8 quantizes, through `tables` when given: one per
    /// channel) image rows `rows` into the arena bytes `output`: the whole input tensor,
    /// or rows of the image window of a streamed first layer.
    fn write_image_rows(
        &mut self,
        pixels: &[u8],
        tables: Option<&[[u8; 256]]>,
        rows: Range<usize>,
        output: Range<usize>,
    ) -> Result<(), Error> {
        let t = self.model.tensor(0)?;
        let values = t.width * t.channels;
        let src = pixels
            .get(rows.start * values..rows.end * values)
            .ok_or(Error::OutOfBounds {
                what: "image rows",
                index: 0,
            })?;
        let bytes = self.arena.get_mut(output).ok_or(Error::OutOfBounds {
            what: "input buffer",
            index: 0,
        })?;
        if let Some(tables) = tables {
            for (b, (&px, table)) in bytes.iter_mut().zip(src.iter().zip(tables.iter().cycle())) {
                *b = table[usize::from(px)];
            }
            return Ok(());
        }
        let dtype = self.model.dtype();
        for c in 0..t.channels {
            let normalize = normalizer(&self.model, c)?;
            for (p, &px) in src.iter().enumerate().skip(c).step_by(t.channels) {
                match dtype {
                    DType::F32 | DType::F16 => {
                        if let Some(b) = bytes.get_mut(4 * p..4 * p + 4) {
                            b.copy_from_slice(&normalize(px).to_le_bytes());
                        }
                    }
                    DType::Int8 => {
                        if let Some(b) = bytes.get_mut(p) {
                            *b = quantize_i8(normalize(px), t.scale, t.zero_point) as u8;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs a whole-tensor convolution; an int8 one that adds a residual tabulates
    /// the add on its own frame, on the stack only while the layer runs.
    #[inline(never)]
    fn conv(&mut self, conv: &Conv<'_>, scratch: &mut arch::ConvScratch) -> Result<(), Error> {
        let in_t = self.model.tensor(conv.input)?;
        let out_t = self.model.tensor(conv.output)?;
        let shape = ConvShape::of_window(
            in_t.dims(),
            out_t.dims(),
            (conv.kernel_h, conv.kernel_w),
            conv.stride,
            (conv.padding[0], conv.padding[1]),
        );
        let residual = match conv.residual {
            None => None,
            Some(r) => {
                let t = self.model.tensor(r.tensor)?;
                Some((self.byte_range(&t), t))
            }
        };
        let mut add_tables = AddTables::UNTABULATED;
        let tables = match (self.model.dtype(), conv.residual) {
            (DType::Int8, Some(r)) => {
                add_tables.tabulate(&r.add);
                Some(&add_tables)
            }
            _ => None,
        };
        self.convolve(
            conv,
            &shape,
            in_t.zero_point,
            self.byte_range(&in_t),
            self.byte_range(&out_t),
            residual,
            tables,
            scratch,
        )
    }

    /// Runs `conv`'s kernel over `shape` (the whole layer, or one row of it) from the
    /// arena bytes `input` to `output`, adding the shortcut at `residual` (in place
    /// when those are the output's own bytes) with the int8 add's `tables`, the int8
    /// kernel working in `scratch`.
    #[allow(clippy::too_many_arguments)]
    fn convolve(
        &mut self,
        conv: &Conv<'_>,
        shape: &ConvShape,
        input_zero_point: i32,
        input: Range<usize>,
        output: Range<usize>,
        residual: Option<(Range<usize>, TensorInfo)>,
        tables: Option<&AddTables>,
        scratch: &mut arch::ConvScratch,
    ) -> Result<(), Error> {
        let split = Split::new(self.arena, output.clone())?;
        let input = split.input(input)?;
        let shortcut_bytes = match &residual {
            Some((r, _)) if *r == output => None,
            Some((r, _)) => Some(split.input(r.clone())?),
            None => None,
        };
        let residual = match (conv.residual, residual) {
            (Some(r), Some((_, t))) => Some((r, t)),
            _ => None,
        };
        match (self.model.dtype(), conv.weights, conv.bias) {
            (DType::F32 | DType::F16, weights, Bias::F32(bias)) => {
                let input: &[f32] = cast(input)?;
                let shortcut = match (residual, shortcut_bytes) {
                    (None, _) => None,
                    (Some((r, _)), None) => Some((Shortcut::InPlace, r.relu)),
                    (Some((r, t)), Some(bytes)) => {
                        Some((mapped(cast(bytes)?, &t, r.stride, r.channel_offset), r.relu))
                    }
                };
                let output: &mut [f32] = cast_mut(split.output)?;
                match weights {
                    Weights::F32(w) => {
                        arch::conv2d_f32(shape, input, w, bias, conv.relu, shortcut, output)
                    }
                    Weights::F16(w) => {
                        arch::conv2d_f32(shape, input, w, bias, conv.relu, shortcut, output)
                    }
                    Weights::I8(_) => Err(type_error()),
                }
            }
            (DType::Int8, Weights::I8(weights), Bias::I32(bias)) => {
                let requant = requantize(conv.requant, conv.relu)?;
                let input: &[i8] = cast(input)?;
                let shortcut = match (residual, shortcut_bytes) {
                    (None, _) => None,
                    (Some(_), None) => Some(Shortcut::InPlace),
                    (Some((r, t)), Some(bytes)) => {
                        Some(mapped(cast(bytes)?, &t, r.stride, r.channel_offset))
                    }
                };
                let residual = match (shortcut, tables) {
                    (Some(shortcut), Some(tables)) => Some((shortcut, tables)),
                    (None, _) => None,
                    (Some(_), None) => return Err(type_error()),
                };
                arch::conv2d_i8_layer_with(
                    scratch,
                    shape,
                    input,
                    input_zero_point,
                    (weights, conv.winograd),
                    bias,
                    &requant,
                    residual,
                    cast_mut(split.output)?,
                )
            }
            _ => Err(type_error()),
        }
    }

    fn pool(&mut self, input: u16, output: u16) -> Result<(), Error> {
        let in_t = self.model.tensor(input)?;
        let out_t = self.model.tensor(output)?;
        let in_range = self.byte_range(&in_t);
        let split = Split::new(self.arena, self.byte_range(&out_t))?;
        let input = split.input(in_range)?;
        let pixels = in_t.height * in_t.width;
        match (in_t.float, out_t.float) {
            (true, true) => {
                arch::global_avg_pool_f32(cast(input)?, pixels, cast_mut(split.output)?)
            }
            (false, false) => {
                arch::global_avg_pool_i8(cast(input)?, pixels, cast_mut(split.output)?)
            }
            (false, true) => arch::global_avg_pool_i8_to_f32(
                cast(input)?,
                in_t.zero_point,
                in_t.scale,
                pixels,
                cast_mut(split.output)?,
            ),
            (true, false) => Err(type_error()),
        }
    }

    fn max_pool(&mut self, pool: &MaxPool) -> Result<(), Error> {
        let in_t = self.model.tensor(pool.input)?;
        let out_t = self.model.tensor(pool.output)?;
        let shape = ConvShape::of_window(
            in_t.dims(),
            out_t.dims(),
            (pool.kernel_h, pool.kernel_w),
            pool.stride,
            (pool.padding[0], pool.padding[1]),
        );
        let in_range = self.byte_range(&in_t);
        let split = Split::new(self.arena, self.byte_range(&out_t))?;
        let input = split.input(in_range)?;
        match (in_t.float, out_t.float) {
            (true, true) => arch::max_pool::<f32>(&shape, cast(input)?, cast_mut(split.output)?),
            (false, false) => arch::max_pool::<i8>(&shape, cast(input)?, cast_mut(split.output)?),
            _ => Err(type_error()),
        }
    }

    fn mean(&mut self, mean: &Mean) -> Result<(), Error> {
        let Some(requant) = mean.requant else {
            return self.pool(mean.input, mean.output);
        };
        let in_t = self.model.tensor(mean.input)?;
        let out_t = self.model.tensor(mean.output)?;
        let in_range = self.byte_range(&in_t);
        let split = Split::new(self.arena, self.byte_range(&out_t))?;
        let input = split.input(in_range)?;
        kernels::mean_i8(
            cast(input)?,
            in_t.height * in_t.width,
            in_t.zero_point,
            requant,
            out_t.zero_point,
            cast_mut(split.output)?,
        )
    }

    fn softmax(&mut self, softmax: &Softmax) -> Result<(), Error> {
        let in_t = self.model.tensor(softmax.input)?;
        let out_t = self.model.tensor(softmax.output)?;
        let in_range = self.byte_range(&in_t);
        let split = Split::new(self.arena, self.byte_range(&out_t))?;
        let input = split.input(in_range)?;
        match softmax.int8 {
            Some(params) => kernels::softmax_i8(cast(input)?, &params, cast_mut(split.output)?),
            None => {
                let output: &mut [f32] = cast_mut(split.output)?;
                let input: &[f32] = cast(input)?;
                for (o, &x) in output.iter_mut().zip(input) {
                    *o = softmax.beta * x;
                }
                kernels::softmax_in_place(output);
                Ok(())
            }
        }
    }

    fn dense(&mut self, dense: &Dense<'_>) -> Result<(), Error> {
        let in_t = self.model.tensor(dense.input)?;
        let out_t = self.model.tensor(dense.output)?;
        let in_range = self.byte_range(&in_t);
        let split = Split::new(self.arena, self.byte_range(&out_t))?;
        let input = split.input(in_range)?;
        match (dense.weights, dense.bias) {
            (Weights::F32(w), Bias::F32(b)) => {
                arch::dense_f32(cast(input)?, w, b, dense.relu, cast_mut(split.output)?)
            }
            (Weights::F16(w), Bias::F32(b)) => {
                arch::dense_f32(cast(input)?, w, b, dense.relu, cast_mut(split.output)?)
            }
            (Weights::I8(w), Bias::I32(b)) => arch::dense_i8(
                cast(input)?,
                in_t.zero_point,
                w,
                b,
                &requantize(dense.requant, dense.relu)?,
                dense.rounding,
                cast_mut(split.output)?,
            ),
            _ => Err(type_error()),
        }
    }
}

fn requantize<'b>(requant: Option<Requant<'b>>, relu: bool) -> Result<Requantize<'b>, Error> {
    let r = requant.ok_or(type_error())?;
    let (activation_min, activation_max) = activation_range(r.output_zero_point, relu);
    Ok(Requantize {
        multipliers: r.multipliers,
        shifts: r.shifts,
        output_zero_point: r.output_zero_point,
        activation_min,
        activation_max,
        folded_bias: r.folded_bias,
    })
}

fn mapped<'b, T>(
    data: &'b [T],
    t: &TensorInfo,
    stride: usize,
    channel_offset: usize,
) -> Shortcut<'b, T> {
    Shortcut::Mapped {
        data,
        height: t.height,
        width: t.width,
        channels: t.channels,
        stride,
        channel_offset,
    }
}

/// int8 images with at most this many channels are quantized through a table per
/// channel (1 KiB of stack).
const IMAGE_TABLE_CHANNELS: usize = 4;

/// The image's tables before [`Interpreter::image_tables`] fills them.
const IMAGE_TABLES_UNFILLED: [[u8; 256]; IMAGE_TABLE_CHANNELS] = [[0; 256]; IMAGE_TABLE_CHANNELS];

/// What the steps of a streamed group share: the caller's pixels, the image's
/// quantization tables and the residual add's tables of the last layer that used
/// them (one layer of a group adds a residual: they are built once per group), the
/// kernel's scratch.
struct RowContext<'p> {
    pixels: &'p [u8],
    image_tables: Option<&'p [[u8; 256]]>,
    add_tables: Option<&'p mut LayerAddTables>,
    scratch: &'p mut arch::ConvScratch,
}

/// The int8 add's tables of the layer that last needed them. One set serves a whole
/// group, filled in place: a set per layer, or a value built and moved, would put
/// another 2 KiB on the stack, which on-device learning does not have to spare.
struct LayerAddTables {
    layer: Option<u16>,
    tables: AddTables,
}

impl LayerAddTables {
    /// The tables of `layer`'s add with `params`, tabulated unless they already are.
    fn of(&mut self, layer: u16, params: &AddParams) -> &AddTables {
        if self.layer != Some(layer) {
            self.tables.tabulate(params);
            self.layer = Some(layer);
        }
        &self.tables
    }
}

/// Maps a raw pixel of channel `c` to the value the model's preprocessing gives it.
fn normalizer(model: &Model<'_>, c: usize) -> Result<impl Fn(u8) -> f32, Error> {
    let (mean, std) = model.preprocessing(c)?;
    let input_range = model.input_range();
    Ok(move |px: u8| {
        let scaled = match input_range {
            InputRange::Byte => f32::from(px),
            InputRange::Unit => f32::from(px) / 255.0,
        };
        (scaled - mean) / std
    })
}

fn type_error() -> Error {
    Error::InvalidValue {
        what: "weight type for the model's dtype",
        index: 0,
        value: 0,
    }
}

fn cast<T: bytemuck::AnyBitPattern>(bytes: &[u8]) -> Result<&[T], Error> {
    bytemuck::try_cast_slice(bytes).map_err(|_| Error::Misaligned {
        what: "arena buffer",
    })
}

fn cast_mut<T: bytemuck::AnyBitPattern + bytemuck::NoUninit>(
    bytes: &mut [u8],
) -> Result<&mut [T], Error> {
    bytemuck::try_cast_slice_mut(bytes).map_err(|_| Error::Misaligned {
        what: "arena buffer",
    })
}

/// The arena cut around one layer's output: the output mutably, everything else
/// shared, so inputs can be borrowed at the same time as long as they do not
/// overlap the output (which the validated plan guarantees).
struct Split<'b> {
    before: &'b [u8],
    output: &'b mut [u8],
    after: &'b [u8],
    output_range: Range<usize>,
}

impl<'b> Split<'b> {
    fn new(arena: &'b mut [u8], output_range: Range<usize>) -> Result<Self, Error> {
        let oob = Error::OutOfBounds {
            what: "layer output buffer",
            index: 0,
        };
        if output_range.end > arena.len() || output_range.start > output_range.end {
            return Err(oob);
        }
        let (before, rest) = arena.split_at_mut(output_range.start);
        let (output, after) = rest.split_at_mut(output_range.end - output_range.start);
        Ok(Split {
            before,
            output,
            after,
            output_range,
        })
    }

    fn input(&self, range: Range<usize>) -> Result<&'b [u8], Error> {
        let found = if range.end <= self.output_range.start {
            self.before.get(range)
        } else if range.start >= self.output_range.end {
            let shift = self.output_range.end;
            self.after.get(range.start - shift..range.end - shift)
        } else {
            None
        };
        found.ok_or(Error::PlanConflict {
            layer: 0,
            tensor: 0,
        })
    }
}
