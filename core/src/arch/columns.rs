//! The column buffer (im2col) shared by the 16-byte-vector kernels (Helium, NEON):
//! output pixels go in groups of [`PIXELS`] along a row; their windows are copied
//! into a buffer on the stack, padding written as the input zero point, interleaved
//! 16 bytes at a time: `[pixel 1, pixel 2, pixel 3, pixel 0]` for bytes 0..16 of the
//! window, then for bytes 16..32, and so on (the order Helium's post-incrementing
//! loads want). A kernel then computes, per output channel, the four dot products
//! `Σ x_p·w` and the weights' sum `Σ w` over the window.
//!
//! The zero point is taken out afterwards: with padding at the zero point,
//! `Σ (x − zp)·w = Σ x·w − zp·Σ w` over the whole window, and in wrapping 32-bit
//! arithmetic (a ring) this equals the portable kernel's accumulator bit for bit.

use core::ops::Range;

use crate::error::Error;
use crate::kernels::{self, finish_i8, ConvShape, Requantize, Shortcut};
use crate::quant::{AddParams, AddTables};

/// Output pixels per group.
pub const PIXELS: usize = 4;
/// Taps per pixel the column buffer holds: a 3×3 window over 64 channels. A larger
/// window goes to the portable kernel.
pub const WINDOW_CAPACITY: usize = 576;
/// Bytes of the column buffer (stack).
pub const COLUMN_BYTES: usize = PIXELS * WINDOW_CAPACITY;

/// The column buffer.
pub type Columns = [i8; COLUMN_BYTES];

/// Where pixel `p`'s 16-byte chunk `chunk` of the window sits in the column buffer:
/// pixels 1, 2, 3 at offsets 16, 32, 48 of the chunk's 64 bytes, pixel 0 at 0.
#[inline]
pub fn column_offset(chunk: usize, p: usize) -> usize {
    (chunk * PIXELS + p) * 16
}

/// Copies the windows of output pixels `(oy, ox[p])` into `columns` as
/// [`column_offset`] lays them out, padding as the zero point. The caller has checked
/// that the window fits.
fn gather(
    shape: &ConvShape,
    input: &[i8],
    input_zero_point: i32,
    oy: usize,
    ox: [usize; PIXELS],
    columns: &mut Columns,
) {
    let c_in = shape.in_c;
    for (p, &x) in ox.iter().enumerate() {
        let mut at = 0;
        for ky in 0..shape.kernel_h {
            let iy = (oy * shape.stride + ky)
                .checked_sub(shape.pad_top)
                .filter(|&iy| iy < shape.in_h);
            for kx in 0..shape.kernel_w {
                let ix = (x * shape.stride + kx)
                    .checked_sub(shape.pad_left)
                    .filter(|&ix| ix < shape.in_w);
                let pixel = match (iy, ix) {
                    (Some(iy), Some(ix)) => Some(&input[(iy * shape.in_w + ix) * c_in..][..c_in]),
                    _ => None,
                };
                // Copy in runs that stay inside one 16-byte chunk.
                let mut done = 0;
                while done < c_in {
                    let chunk = at / 16;
                    let within = at % 16;
                    let run = (16 - within).min(c_in - done);
                    let to = column_offset(chunk, p) + within;
                    let dest = &mut columns[to..to + run];
                    match pixel {
                        Some(pixel) => dest.copy_from_slice(&pixel[done..done + run]),
                        None => dest.fill(input_zero_point as i8),
                    }
                    done += run;
                    at += run;
                }
            }
        }
    }
}

/// Output channels whose accumulators are kept at once (per pixel of a group).
pub const CHANNEL_BLOCK: usize = 64;

/// The shortcut of one output pixel's residual add, if the layer has one.
#[derive(Clone, Copy, Debug)]
pub enum ShortcutRow<'a> {
    /// No residual add.
    None,
    /// The output row itself holds the shortcut (identity, in place).
    InPlace,
    /// A separate row: output channel `c` adds `row[c − offset]`, the zero point
    /// outside it.
    Mapped(&'a [i8], usize),
}

/// Finishes output channels `channels` of one pixel: `out[c] = finish(acc[c −
/// channels.start])`, requantized and added to the shortcut as
/// [`kernels::finish_i8`] defines. The portable version; an arch module may pass
/// a vectorised one to [`conv2d_i8_by_columns`].
pub fn finish_row_scalar(
    acc: &[i32],
    channels: Range<usize>,
    requant: &Requantize<'_>,
    add: Option<&AddTables>,
    shortcut: ShortcutRow<'_>,
    out: &mut [i8],
) {
    let row = match shortcut {
        ShortcutRow::Mapped(row, offset) => Some((row, offset)),
        ShortcutRow::None | ShortcutRow::InPlace => None,
    };
    for (&acc, co) in acc.iter().zip(channels) {
        out[co] = finish_i8(acc, co, &requant.channel(co), add, row, out[co]);
    }
}

/// TFLite int8 convolution, as [`kernels::conv2d_i8`] computes it (same arguments,
/// same checks, bit-identical results), with `dot` computing `(Σ x_p·w, Σ w)` for
/// the group's four pixels and one filter of `window` bytes and `finish` doing what
/// [`finish_row_scalar`] does. A window over [`WINDOW_CAPACITY`] taps goes to the
/// portable kernel.
///
/// The last group of a row repeats its last pixel to make four and keeps the
/// results it needs.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn conv2d_i8_by_columns(
    dot: impl Fn(&Columns, &[i8]) -> ([i32; PIXELS], i32),
    finish: impl Fn(
        &[i32],
        Range<usize>,
        &Requantize<'_>,
        Option<&AddTables>,
        ShortcutRow<'_>,
        &mut [i8],
    ),
    shape: &ConvShape,
    input: &[i8],
    input_zero_point: i32,
    weights: &[i8],
    bias: &[i32],
    requant: &Requantize<'_>,
    residual: Option<(Shortcut<'_, i8>, &AddParams)>,
    output: &mut [i8],
) -> Result<(), Error> {
    let window = shape.kernel_h * shape.kernel_w * shape.in_c;
    if window > WINDOW_CAPACITY || window == 0 {
        return kernels::conv2d_i8(
            shape,
            input,
            input_zero_point,
            weights,
            bias,
            requant,
            residual,
            output,
        );
    }
    shape.check(input.len(), weights.len(), bias.len(), output.len())?;
    requant.check(shape.out_c)?;
    if let Some((shortcut, _)) = &residual {
        shortcut.check(shape.out_h, shape.out_w, shape.out_c)?;
    }
    let out_c = shape.out_c;
    let add = residual.map(|(_, add)| AddTables::new(add));
    let mut columns: Columns = [0; COLUMN_BYTES];
    let mut acc = [[0i32; CHANNEL_BLOCK]; PIXELS];
    for oy in 0..shape.out_h {
        for ox in (0..shape.out_w).step_by(PIXELS) {
            let pixels: [usize; PIXELS] = core::array::from_fn(|p| (ox + p).min(shape.out_w - 1));
            let distinct = (shape.out_w - ox).min(PIXELS);
            gather(shape, input, input_zero_point, oy, pixels, &mut columns);
            for block in (0..out_c).step_by(CHANNEL_BLOCK) {
                let channels = block..(block + CHANNEL_BLOCK).min(out_c);
                let filters = weights[channels.start * window..channels.end * window]
                    .chunks_exact(window)
                    .zip(&bias[channels.clone()]);
                for (i, (filter, &bias)) in filters.enumerate() {
                    let (products, weight_sum) = dot(&columns, filter);
                    let base = bias.wrapping_sub(input_zero_point.wrapping_mul(weight_sum));
                    for (acc, product) in acc.iter_mut().zip(products) {
                        acc[i] = base.wrapping_add(product);
                    }
                }
                for (p, &x) in pixels.iter().enumerate().take(distinct) {
                    let shortcut = match residual {
                        None => ShortcutRow::None,
                        Some((Shortcut::InPlace, _)) => ShortcutRow::InPlace,
                        Some((shortcut @ Shortcut::Mapped { .. }, _)) => {
                            match shortcut.row(oy, x) {
                                Some((row, offset)) => ShortcutRow::Mapped(row, offset),
                                None => ShortcutRow::InPlace,
                            }
                        }
                    };
                    let out_start = (oy * shape.out_w + x) * out_c;
                    finish(
                        &acc[p][..channels.len()],
                        channels.clone(),
                        requant,
                        add.as_ref(),
                        shortcut,
                        &mut output[out_start..out_start + out_c],
                    );
                }
            }
        }
    }
    Ok(())
}
