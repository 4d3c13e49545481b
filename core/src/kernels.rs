//! Portable reference kernels, NHWC, batch 1.
//!
//! These are the definition of what every layer computes: plain loops, no unsafe, no
//! architecture tricks. They are always compiled; faster kernels for a given
//! architecture live in [`crate::arch`] and are tested against these. Every kernel
//! checks the lengths of its slices against the shape it is given and returns
//! [`Error::WrongLength`] instead of indexing out of bounds.
//!
//! f32 kernels accumulate in f32 in a fixed order (bias, then kernel rows, columns and
//! input channels), so results are bit-identical on every target; they differ from a
//! float64 reference by rounding only (see [`F32_RELATIVE_TOLERANCE`]). int8 kernels
//! are exact: integer arithmetic with TFLite's rounding.

use half::f16;

use crate::error::Error;
use crate::quant::{
    multiply_by_quantized_multiplier_single_rounding, AddTables, QuantizedMultiplier, Rounding,
    SoftmaxParams,
};

/// Documented bound on the error of an f32 kernel: relative to the sum of absolute
/// products of a dot product, `|result − exact| ≤ F32_RELATIVE_TOLERANCE · Σ|x·w|`
/// for reductions of up to about 4,600 terms (`n · 2^−24` with a safety factor of
/// two for the products' own roundings).
pub const F32_RELATIVE_TOLERANCE: f32 = 5.5e-4;

/// Geometry of a 2-D convolution over an NHWC tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    /// Input rows.
    pub in_h: usize,
    /// Input columns.
    pub in_w: usize,
    /// Input channels.
    pub in_c: usize,
    /// Output rows.
    pub out_h: usize,
    /// Output columns.
    pub out_w: usize,
    /// Output channels.
    pub out_c: usize,
    /// Kernel rows.
    pub kernel_h: usize,
    /// Kernel columns.
    pub kernel_w: usize,
    /// Stride in both directions.
    pub stride: usize,
    /// Zero rows above the input.
    pub pad_top: usize,
    /// Zero columns left of the input.
    pub pad_left: usize,
}

impl ConvShape {
    /// The geometry of a `kernel` (rows, columns) window moving by `stride` over an
    /// `input` tensor (rows, columns, channels) to an `output` one, the input padded
    /// by `pad_top` rows and `pad_left` columns (the bottom and right padding follow
    /// from the output's size). A convolution's and a pool's alike.
    pub fn of_window(
        (in_h, in_w, in_c): (usize, usize, usize),
        (out_h, out_w, out_c): (usize, usize, usize),
        (kernel_h, kernel_w): (usize, usize),
        stride: usize,
        (pad_top, pad_left): (usize, usize),
    ) -> Self {
        ConvShape {
            in_h,
            in_w,
            in_c,
            out_h,
            out_w,
            out_c,
            kernel_h,
            kernel_w,
            stride,
            pad_top,
            pad_left,
        }
    }

    /// Output size for the given padding `[top, left, bottom, right]`; `None` when the
    /// kernel does not fit or the stride is zero.
    pub fn output_size(
        in_h: usize,
        in_w: usize,
        kernel: (usize, usize),
        stride: usize,
        padding: [usize; 4],
    ) -> Option<(usize, usize)> {
        let padded_h = in_h + padding[0] + padding[2];
        let padded_w = in_w + padding[1] + padding[3];
        if stride == 0 || padded_h < kernel.0 || padded_w < kernel.1 {
            return None;
        }
        Some((
            (padded_h - kernel.0) / stride + 1,
            (padded_w - kernel.1) / stride + 1,
        ))
    }

    pub(crate) fn check(
        &self,
        input: usize,
        weights: usize,
        bias: usize,
        output: usize,
    ) -> Result<(), Error> {
        let window = self.kernel_h * self.kernel_w * self.in_c;
        expect("conv input", self.in_h * self.in_w * self.in_c, input)?;
        expect("conv weights", self.out_c * window, weights)?;
        expect("conv bias", self.out_c, bias)?;
        expect("conv output", self.out_h * self.out_w * self.out_c, output)
    }

    /// Calls `f(first_input_pixel, first_kernel_tap, taps)` once per kernel row of the
    /// window of output pixel `(oy, ox)` that overlaps the input, with the run of
    /// `taps` horizontally adjacent taps that fall inside it (padding contributes zero
    /// and is skipped). The taps of one row are adjacent in both the NHWC input and
    /// the filter, so each call covers one contiguous `taps · in_c` slice of each, in
    /// the order columns, then channels.
    #[inline]
    pub(crate) fn for_each_kernel_row(
        &self,
        oy: usize,
        ox: usize,
        mut f: impl FnMut(usize, usize, usize),
    ) {
        let left = ox * self.stride;
        let (first_kx, end_kx) = self.kernel_columns(ox);
        if first_kx >= end_kx {
            return;
        }
        for ky in 0..self.kernel_h {
            let Some(iy) = (oy * self.stride + ky).checked_sub(self.pad_top) else {
                continue;
            };
            if iy >= self.in_h {
                continue;
            }
            let ix = left + first_kx - self.pad_left;
            f(
                iy * self.in_w + ix,
                ky * self.kernel_w + first_kx,
                end_kx - first_kx,
            );
        }
    }

    /// The kernel columns `first..end` that the window of output column `ox` has
    /// inside the input (the others fall on padding). Output columns with equal
    /// ranges read their inputs at the same offsets relative to their windows.
    #[inline]
    pub(crate) fn kernel_columns(&self, ox: usize) -> (usize, usize) {
        let left = ox * self.stride;
        let first_kx = self.pad_left.saturating_sub(left);
        let end_kx = self
            .kernel_w
            .min((self.in_w + self.pad_left).saturating_sub(left));
        (first_kx, end_kx)
    }
}

pub(crate) fn expect(what: &'static str, expected: usize, actual: usize) -> Result<(), Error> {
    if expected == actual {
        Ok(())
    } else {
        Err(Error::WrongLength {
            what,
            expected,
            actual,
        })
    }
}

/// A residual input added to a layer's output.
#[derive(Clone, Copy, Debug)]
pub enum Shortcut<'a, T> {
    /// The output buffer already holds the shortcut (identity mapping, same shape):
    /// each element is read just before it is overwritten.
    InPlace,
    /// A separate tensor, mapped onto the output as described at
    /// [`crate::Residual`]: output `(y, x, c)` adds `(y·stride, x·stride, c −
    /// channel_offset)`, zero outside the shortcut's channels.
    Mapped {
        /// The shortcut tensor.
        data: &'a [T],
        /// Its rows.
        height: usize,
        /// Its columns.
        width: usize,
        /// Its channels.
        channels: usize,
        /// Spatial subsampling.
        stride: usize,
        /// Zero channels before the shortcut's channels.
        channel_offset: usize,
    },
}

impl<'a, T: Copy> Shortcut<'a, T> {
    pub(crate) fn check(&self, out_h: usize, out_w: usize, out_c: usize) -> Result<(), Error> {
        if let Shortcut::Mapped {
            data,
            height,
            width,
            channels,
            stride,
            channel_offset,
        } = *self
        {
            expect("shortcut", height * width * channels, data.len())?;
            if stride == 0
                || (out_h - 1) * stride >= height
                || (out_w - 1) * stride >= width
                || channel_offset + channels > out_c
            {
                return Err(Error::WrongLength {
                    what: "shortcut shape",
                    expected: out_h * out_w * out_c,
                    actual: data.len(),
                });
            }
        }
        Ok(())
    }

    /// The shortcut row for output pixel `(oy, ox)` and the channel offset to apply,
    /// or `None` for in-place.
    #[inline]
    pub(crate) fn row(&self, oy: usize, ox: usize) -> Option<(&'a [T], usize)> {
        match *self {
            Shortcut::InPlace => None,
            Shortcut::Mapped {
                data,
                width,
                channels,
                stride,
                channel_offset,
                ..
            } => {
                let start = ((oy * stride) * width + ox * stride) * channels;
                Some((
                    data.get(start..start + channels).unwrap_or(&[]),
                    channel_offset,
                ))
            }
        }
    }
}

/// Channel `channel` of a mapped shortcut row whose channels start at `offset`, or
/// `padding` outside them (option A's added channels hold real zero: 0.0, or the
/// zero point in int8).
#[inline(always)]
pub(crate) fn mapped_channel<T: Copy>(row: &[T], offset: usize, channel: usize, padding: T) -> T {
    channel
        .checked_sub(offset)
        .and_then(|c| row.get(c))
        .copied()
        .unwrap_or(padding)
}

/// A weight type computed in f32: f32 itself or f16-stored weights.
pub trait FloatWeight: Copy {
    /// The weight as f32.
    fn to_f32(self) -> f32;
}

impl FloatWeight for f32 {
    #[inline]
    fn to_f32(self) -> f32 {
        self
    }
}

impl FloatWeight for f16 {
    #[inline]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

/// f32 convolution with optional ReLU, then an optional residual add with optional
/// ReLU: `out = relu?(relu?(conv(x) + b) + shortcut)`.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_f32<W: FloatWeight>(
    shape: &ConvShape,
    input: &[f32],
    weights: &[W],
    bias: &[f32],
    relu: bool,
    residual: Option<(Shortcut<'_, f32>, bool)>,
    output: &mut [f32],
) -> Result<(), Error> {
    shape.check(input.len(), weights.len(), bias.len(), output.len())?;
    if let Some((shortcut, _)) = &residual {
        shortcut.check(shape.out_h, shape.out_w, shape.out_c)?;
    }
    let window = shape.kernel_h * shape.kernel_w * shape.in_c;
    let c_in = shape.in_c;
    for oy in 0..shape.out_h {
        for ox in 0..shape.out_w {
            let out_start = (oy * shape.out_w + ox) * shape.out_c;
            let out_row = &mut output[out_start..out_start + shape.out_c];
            let shortcut_row = residual.as_ref().and_then(|(s, _)| s.row(oy, ox));
            for (co, out) in out_row.iter_mut().enumerate() {
                let filter = &weights[co * window..(co + 1) * window];
                let mut acc = bias[co];
                shape.for_each_kernel_row(oy, ox, |pixel, tap, taps| {
                    let x = &input[pixel * c_in..(pixel + taps) * c_in];
                    let w = &filter[tap * c_in..(tap + taps) * c_in];
                    for (&x, &w) in x.iter().zip(w) {
                        acc += x * w.to_f32();
                    }
                });
                if relu {
                    acc = acc.max(0.0);
                }
                if let Some((_, residual_relu)) = residual {
                    let s = match shortcut_row {
                        None => *out,
                        Some((row, offset)) => mapped_channel(row, offset, co, 0.0),
                    };
                    acc += s;
                    if residual_relu {
                        acc = acc.max(0.0);
                    }
                }
                *out = acc;
            }
        }
    }
    Ok(())
}

/// Per-output-channel requantization of int32 accumulators to int8.
#[derive(Clone, Copy, Debug)]
pub struct Requantize<'a> {
    /// Q31 multipliers, one per output channel.
    pub multipliers: &'a [i32],
    /// Shifts, one per output channel.
    pub shifts: &'a [i32],
    /// Output zero point.
    pub output_zero_point: i32,
    /// Lowest output value.
    pub activation_min: i32,
    /// Highest output value.
    pub activation_max: i32,
    /// `bias − input_zero_point · Σ weights` of each output channel (wrapping i32),
    /// when the caller has it (format version 3 stores it): the kernels that fold the
    /// input zero point into the bias use it instead of summing the weights on every
    /// call. It must equal what they would compute; `None` makes them compute it.
    pub folded_bias: Option<&'a [i32]>,
}

impl Requantize<'_> {
    #[inline]
    pub(crate) fn apply(&self, acc: i32, channel: usize) -> i8 {
        self.channel(channel).apply(acc)
    }

    /// Channel `channel`'s parameters, decoded once for all of its outputs.
    #[inline]
    pub(crate) fn channel(&self, channel: usize) -> ChannelRequantize {
        ChannelRequantize::new(self.multipliers[channel], self.shifts[channel], self)
    }

    pub(crate) fn check(&self, channels: usize) -> Result<(), Error> {
        expect("requant multipliers", channels, self.multipliers.len())?;
        expect("requant shifts", channels, self.shifts.len())
    }
}

/// One output channel's requantization ([`Requantize::channel`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ChannelRequantize {
    multiplier: QuantizedMultiplier,
    output_zero_point: i32,
    activation_min: i32,
    activation_max: i32,
}

impl ChannelRequantize {
    /// A channel's requantization from its multiplier and shift and the layer's
    /// output parameters.
    #[inline(always)]
    pub(crate) fn new(multiplier: i32, shift: i32, requant: &Requantize<'_>) -> Self {
        ChannelRequantize {
            multiplier: QuantizedMultiplier::new(multiplier, shift),
            output_zero_point: requant.output_zero_point,
            activation_min: requant.activation_min,
            activation_max: requant.activation_max,
        }
    }

    /// As [`Self::new`] for a layer whose shifts are all in `-31..=30` and
    /// multipliers all other than `i32::MIN` (checked once by the caller: see
    /// [`layer_is_checked`]); apply it with [`Self::apply_checked_layer`].
    #[cfg(any(tinyres_columns, tinyres_arm_m_base))]
    #[inline(always)]
    pub(crate) fn new_checked_layer(multiplier: i32, shift: i32, requant: &Requantize<'_>) -> Self {
        ChannelRequantize {
            multiplier: QuantizedMultiplier::new_checked_layer(multiplier, shift),
            output_zero_point: requant.output_zero_point,
            activation_min: requant.activation_min,
            activation_max: requant.activation_max,
        }
    }

    /// [`Self::apply`] for a requantization made by [`Self::new_checked_layer`].
    #[cfg(tinyres_columns)]
    #[inline(always)]
    pub(crate) fn apply_checked_layer(&self, acc: i32) -> i8 {
        let v = self
            .multiplier
            .apply_checked_layer(acc)
            .saturating_add(self.output_zero_point);
        v.max(self.activation_min).min(self.activation_max) as i8
    }

    /// [`Self::apply_checked_layer`] in 32-bit arithmetic, for the cores without a
    /// 32×32→64-bit multiply.
    #[cfg(tinyres_arm_m_base)]
    #[inline(always)]
    pub(crate) fn apply_checked_layer_32(&self, acc: i32) -> i8 {
        let v = self
            .multiplier
            .apply_checked_layer_32(acc)
            .saturating_add(self.output_zero_point);
        v.max(self.activation_min).min(self.activation_max) as i8
    }

    /// The accumulator requantized to int8.
    #[inline(always)]
    pub(crate) fn apply(&self, acc: i32) -> i8 {
        let v = self
            .multiplier
            .apply(acc)
            .saturating_add(self.output_zero_point);
        // max/min rather than clamp: never a panic, whatever a blob holds.
        v.max(self.activation_min).min(self.activation_max) as i8
    }
}

/// `Σ (x − zero_point)·w` in wrapping i32 arithmetic, computed as `Σ x·w −
/// zero_point·Σ w` (the same value: wrapping arithmetic is a ring), which keeps the
/// inner loop to 8-bit products that compilers vectorise.
#[inline]
fn dot_i8(x: &[i8], w: &[i8], zero_point: i32) -> i32 {
    let mut products = 0i32;
    let mut weight_sum = 0i32;
    for (&x, &w) in x.iter().zip(w) {
        products = products.wrapping_add(i32::from(x) * i32::from(w));
        weight_sum = weight_sum.wrapping_add(i32::from(w));
    }
    products.wrapping_sub(zero_point.wrapping_mul(weight_sum))
}

/// TFLite int8 convolution: `acc = bias + Σ (x − input_zero_point)·w` in i32,
/// requantized per output channel, then an optional TFLite-style int8 residual add.
/// Padding stands for the input zero point and so contributes nothing.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_i8(
    shape: &ConvShape,
    input: &[i8],
    input_zero_point: i32,
    weights: &[i8],
    bias: &[i32],
    requant: &Requantize<'_>,
    residual: Option<(Shortcut<'_, i8>, &AddTables)>,
    output: &mut [i8],
) -> Result<(), Error> {
    check_conv_i8(shape, input, weights, bias, requant, residual, output)?;
    let window = shape.kernel_h * shape.kernel_w * shape.in_c;
    let c_in = shape.in_c;
    let add = residual.map(|(_, add)| add);
    for oy in 0..shape.out_h {
        for ox in 0..shape.out_w {
            let out_start = (oy * shape.out_w + ox) * shape.out_c;
            let out_row = &mut output[out_start..out_start + shape.out_c];
            let shortcut_row = residual.as_ref().and_then(|(s, _)| s.row(oy, ox));
            for (co, out) in out_row.iter_mut().enumerate() {
                let filter = &weights[co * window..(co + 1) * window];
                let mut acc = bias[co];
                shape.for_each_kernel_row(oy, ox, |pixel, tap, taps| {
                    let x = &input[pixel * c_in..(pixel + taps) * c_in];
                    let w = &filter[tap * c_in..(tap + taps) * c_in];
                    acc = acc.wrapping_add(dot_i8(x, w, input_zero_point));
                });
                *out = finish_i8(acc, co, &requant.channel(co), add, shortcut_row, *out);
            }
        }
    }
    Ok(())
}

/// Every requantization shift in `-31..=30` and no multiplier `i32::MIN` (true of
/// every blob that validates): the arch kernels may then requantize with
/// `ChannelRequantize::new_checked_layer`.
#[cfg(any(tinyres_columns, tinyres_arm_m_base))]
pub fn layer_is_checked(requant: &Requantize<'_>) -> bool {
    // Folds over every element, not a short-circuiting `all`: it runs on every kernel
    // call, once per step of rows in a streamed group, and the fold saved 0.4 % of the
    // M55's instructions for a streamed ResNet-8 (measured).
    let (lowest, highest) = requant
        .shifts
        .iter()
        .fold((0, 0), |(lo, hi), &s| (s.min(lo), s.max(hi)));
    let has_min = requant
        .multipliers
        .iter()
        .fold(false, |found, &m| found | (m == i32::MIN));
    lowest >= -31 && highest <= 30 && !has_min
}

/// The checks every int8 convolution kernel makes before touching its slices: their
/// lengths against the shape, the requantization's per-channel arrays, and the
/// shortcut's geometry.
pub(crate) fn check_conv_i8(
    shape: &ConvShape,
    input: &[i8],
    weights: &[i8],
    bias: &[i32],
    requant: &Requantize<'_>,
    residual: Option<(Shortcut<'_, i8>, &AddTables)>,
    output: &[i8],
) -> Result<(), Error> {
    shape.check(input.len(), weights.len(), bias.len(), output.len())?;
    requant.check(shape.out_c)?;
    if let Some((shortcut, _)) = &residual {
        shortcut.check(shape.out_h, shape.out_w, shape.out_c)?;
    }
    Ok(())
}

/// The int8 output of channel `co` from its accumulator: requantized, then, if the
/// layer has a residual (`add`), added to the shortcut: `shortcut_row`'s channel
/// `co − offset` (zero point outside it) or, for an in-place residual, `previous`,
/// the output's old value. Every int8 convolution kernel ends with this.
#[inline(always)]
pub(crate) fn finish_i8(
    acc: i32,
    co: usize,
    requant: &ChannelRequantize,
    add: Option<&AddTables>,
    shortcut_row: Option<(&[i8], usize)>,
    previous: i8,
) -> i8 {
    add_residual(requant.apply(acc), co, add, shortcut_row, previous)
}

/// A requantized output `value` of channel `co`, added to the shortcut if the layer
/// has a residual (`add`), as [`finish_i8`] does.
#[inline(always)]
pub(crate) fn add_residual(
    value: i8,
    co: usize,
    add: Option<&AddTables>,
    shortcut_row: Option<(&[i8], usize)>,
    previous: i8,
) -> i8 {
    match add {
        None => value,
        Some(add) => add.add(value, shortcut_value(co, add, shortcut_row, previous)),
    }
}

/// The shortcut that channel `co`'s output adds: `shortcut_row`'s channel `co −
/// offset` (the add's zero point outside it) or, for an in-place residual,
/// `previous`, the output's old value.
#[inline(always)]
pub(crate) fn shortcut_value(
    co: usize,
    add: &AddTables,
    shortcut_row: Option<(&[i8], usize)>,
    previous: i8,
) -> i8 {
    match shortcut_row {
        None => previous,
        Some((row, offset)) => mapped_channel(row, offset, co, add.params.input2_zero_point as i8),
    }
}

/// Max pooling of an NHWC tensor, for f32 and int8 alike: each output value is the
/// largest input value in its `kernel_h×kernel_w` window (`shape.in_c == shape.out_c`
/// channels; `shape` as for a convolution). Padding is never chosen: it counts as −∞,
/// as in PyTorch and TFLite. int8 is exact: the output keeps the input's scale and zero
/// point, as TFLite's int8 MAX_POOL_2D requires, so the largest value is the largest
/// code. A NaN input is passed on only where it comes first in its window.
pub fn max_pool<T: Copy + PartialOrd>(
    shape: &ConvShape,
    input: &[T],
    output: &mut [T],
) -> Result<(), Error> {
    let channels = shape.in_c;
    expect("pool output channels", channels, shape.out_c)?;
    expect(
        "pool input",
        shape.in_h * shape.in_w * channels,
        input.len(),
    )?;
    expect(
        "pool output",
        shape.out_h * shape.out_w * channels,
        output.len(),
    )?;
    if channels == 0 {
        return Ok(());
    }
    for (o, out) in output.chunks_exact_mut(channels).enumerate() {
        let (oy, ox) = (o / shape.out_w, o % shape.out_w);
        let mut pixels = 0;
        let mut in_bounds = true;
        shape.for_each_kernel_row(oy, ox, |pixel, _, taps| {
            let Some(run) = input.get(pixel * channels..(pixel + taps) * channels) else {
                in_bounds = false;
                return;
            };
            for window_pixel in run.chunks_exact(channels) {
                if pixels == 0 {
                    out.copy_from_slice(window_pixel);
                } else {
                    for (max, &x) in out.iter_mut().zip(window_pixel) {
                        if x > *max {
                            *max = x;
                        }
                    }
                }
                pixels += 1;
            }
        });
        if !in_bounds || pixels == 0 {
            // Padding as large as the window: the model's checks refuse it.
            return Err(Error::InvalidValue {
                what: "pool padding",
                index: 0,
                value: shape.pad_top.max(shape.pad_left) as u32,
            });
        }
    }
    Ok(())
}

/// f32 global average pooling of an `h×w×c` tensor to `c` values.
pub fn global_avg_pool_f32(input: &[f32], pixels: usize, output: &mut [f32]) -> Result<(), Error> {
    let channels = output.len();
    expect("pool input", pixels * channels, input.len())?;
    output.fill(0.0);
    for pixel in input.chunks_exact(channels.max(1)) {
        for (o, &x) in output.iter_mut().zip(pixel) {
            *o += x;
        }
    }
    let n = pixels as f32;
    for o in output.iter_mut() {
        *o /= n;
    }
    Ok(())
}

/// int8 global average pooling: the i32 sum per channel divided by the pixel count,
/// rounded half away from zero (TFLite's int8 average pool); the output keeps the
/// input's scale and zero point.
pub fn global_avg_pool_i8(input: &[i8], pixels: usize, output: &mut [i8]) -> Result<(), Error> {
    let channels = output.len();
    expect("pool input", pixels * channels, input.len())?;
    if pixels == 0 {
        return Ok(());
    }
    for (c, o) in output.iter_mut().enumerate() {
        let sum: i32 = input
            .iter()
            .skip(c)
            .step_by(channels)
            .map(|&x| i32::from(x))
            .sum();
        let n = pixels as i32;
        let rounded = if sum >= 0 {
            (sum + n / 2) / n
        } else {
            (sum - n / 2) / n
        };
        *o = rounded.clamp(-128, 127) as i8;
    }
    Ok(())
}

/// Global average pooling of an int8 tensor into f32, for an int8 model's f32
/// classifier head: the i32 sum of `q − zero_point` per channel, times
/// `scale / pixels`. The mean is not rounded back to int8, so the features keep the
/// precision that averaging gains.
pub fn global_avg_pool_i8_to_f32(
    input: &[i8],
    zero_point: i32,
    scale: f32,
    pixels: usize,
    output: &mut [f32],
) -> Result<(), Error> {
    let channels = output.len();
    expect("pool input", pixels * channels, input.len())?;
    if pixels == 0 {
        return Ok(());
    }
    let per_unit = scale / pixels as f32;
    for (c, o) in output.iter_mut().enumerate() {
        let sum: i32 = input
            .iter()
            .skip(c)
            .step_by(channels)
            .map(|&x| i32::from(x) - zero_point)
            .sum();
        *o = sum as f32 * per_unit;
    }
    Ok(())
}

/// f32 fully connected layer with `[out][in]` weights and optional ReLU.
pub fn dense_f32<W: FloatWeight>(
    input: &[f32],
    weights: &[W],
    bias: &[f32],
    relu: bool,
    output: &mut [f32],
) -> Result<(), Error> {
    let n_in = input.len();
    expect("dense weights", output.len() * n_in, weights.len())?;
    expect("dense bias", output.len(), bias.len())?;
    for ((o, row), &b) in output
        .iter_mut()
        .zip(weights.chunks_exact(n_in.max(1)))
        .zip(bias)
    {
        let mut acc = b;
        for (&x, &w) in input.iter().zip(row) {
            acc += x * w.to_f32();
        }
        *o = if relu { acc.max(0.0) } else { acc };
    }
    Ok(())
}

/// TFLite int8 fully connected layer with per-output-channel requantization, rounded
/// as `rounding` says.
pub fn dense_i8(
    input: &[i8],
    input_zero_point: i32,
    weights: &[i8],
    bias: &[i32],
    requant: &Requantize<'_>,
    rounding: Rounding,
    output: &mut [i8],
) -> Result<(), Error> {
    let n_in = input.len();
    expect("dense weights", output.len() * n_in, weights.len())?;
    expect("dense bias", output.len(), bias.len())?;
    requant.check(output.len())?;
    for (co, (o, row)) in output
        .iter_mut()
        .zip(weights.chunks_exact(n_in.max(1)))
        .enumerate()
    {
        let mut acc = bias[co];
        for (&x, &w) in input.iter().zip(row) {
            acc = acc.wrapping_add((i32::from(x) - input_zero_point) * i32::from(w));
        }
        *o = match rounding {
            Rounding::Double => requant.apply(acc, co),
            Rounding::Single => {
                let scaled = multiply_by_quantized_multiplier_single_rounding(
                    acc,
                    requant.multipliers[co],
                    requant.shifts[co],
                );
                scaled
                    .saturating_add(requant.output_zero_point)
                    .clamp(requant.activation_min, requant.activation_max) as i8
            }
        };
    }
    Ok(())
}

/// Index of the largest value (the first one on ties; NaN never wins).
pub fn argmax(values: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in values.iter().enumerate() {
        if !v.is_nan() && best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i)
}

/// TFLite's int8 MEAN over the `pixels` positions of an NHWC `input` into
/// `output.len()` channels (`reference_ops::QuantizedMeanOrSum`): the i32 sum of each
/// channel's raw values, minus `input_zero_point` per value, times the quantized
/// multiplier (`multiplier`, `shift`, the pixel count folded in), plus the output zero
/// point, saturated.
pub fn mean_i8(
    input: &[i8],
    pixels: usize,
    input_zero_point: i32,
    (multiplier, shift): (i32, i32),
    output_zero_point: i32,
    output: &mut [i8],
) -> Result<(), Error> {
    let channels = output.len();
    expect("mean input", pixels * channels, input.len())?;
    for (c, o) in output.iter_mut().enumerate() {
        let sum = input
            .iter()
            .skip(c)
            .step_by(channels.max(1))
            .fold(0i32, |s, &x| s.wrapping_add(i32::from(x)));
        let shifted = (i64::from(sum) - i64::from(input_zero_point) * pixels as i64) as i32;
        let scaled = crate::quant::multiply_by_quantized_multiplier(shifted, multiplier, shift);
        *o = scaled.saturating_add(output_zero_point).clamp(-128, 127) as i8;
    }
    Ok(())
}

/// TFLite's int8 softmax of `input` into `output` (1/256ths from −128): see
/// [`crate::quant::softmax_i8`].
pub fn softmax_i8(input: &[i8], params: &SoftmaxParams, output: &mut [i8]) -> Result<(), Error> {
    expect("softmax output", input.len(), output.len())?;
    crate::quant::softmax_i8(params, input, output);
    Ok(())
}

/// Numerically stable softmax, in place: logits in, probabilities out.
pub fn softmax_in_place(values: &mut [f32]) {
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in values.iter_mut() {
        *v = libm::expf(*v - max);
        sum += *v;
    }
    for v in values.iter_mut() {
        *v /= sum;
    }
}
