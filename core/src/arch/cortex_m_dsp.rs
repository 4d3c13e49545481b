//! Cortex-M DSP extension (M4, M7, M33, M55): int8 convolution with dual 16-bit
//! multiply-accumulates.
//!
//! Output pixels go in pairs. The windows of a pair are first widened into a column
//! buffer on the stack (im2col): `x − zero_point` as 16-bit lanes, four taps at a time
//! as `[even taps of pixel 0, odd taps of pixel 0, even of pixel 1, odd of pixel 1]`
//! (`SXTAB16` widens bytes 0 and 2, then 1 and 3, adding `−zero_point` on the way),
//! padding as zero. Each pair of output channels then runs one assembly loop over the
//! window: a weight word is widened with `SXTB16` in the same even/odd order and
//! `SMLAD` multiplies both lanes and accumulates: 17 instructions for 16 MACs (two
//! column groups per iteration), with every input widened once per pixel pair and
//! every weight once per pixel pair, in the 13 registers inline assembly may use and
//! r7, saved and restored around the loop. The column buffer costs
//! [`COLUMN_WORDS`] × 4 bytes of stack; larger windows (and zero points outside
//! int8) go to the portable kernel.
//!
//! Accumulation wraps in 32 bits like the portable kernel's (`SMLAD` writes the
//! wrapped sum; it only sets the sticky Q flag, which nothing reads), so the results
//! are bit-identical to [`kernels::conv2d_i8`].

use core::arch::asm;
use core::ops::Range;

use super::columns::{
    finish_row_checked_layer, finish_row_scalar, layer_is_checked, ShortcutRow, CHANNEL_BLOCK,
};
use crate::error::Error;
use crate::kernels::{self, ConvShape, Requantize, Shortcut};
use crate::quant::AddTables;

/// Bytes 0 and 2 of `x`, sign-extended, each added to the 16-bit lanes of `offset`.
#[inline(always)]
fn sxtab16_even(offset: u32, x: u32) -> u32 {
    let result;
    // SAFETY: SXTAB16 reads and writes registers only; the DSP extension is present
    // (this module is compiled for `tinyres_arm_dsp` targets only, see build.rs).
    unsafe {
        asm!(
            "sxtab16 {r}, {o}, {x}",
            r = lateout(reg) result,
            o = in(reg) offset,
            x = in(reg) x,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    result
}

/// Bytes 1 and 3 of `x`, sign-extended, each added to the 16-bit lanes of `offset`.
#[inline(always)]
fn sxtab16_odd(offset: u32, x: u32) -> u32 {
    let result;
    // SAFETY: register-only DSP instruction, as for `sxtab16_even`.
    unsafe {
        asm!(
            "sxtab16 {r}, {o}, {x}, ror #8",
            r = lateout(reg) result,
            o = in(reg) offset,
            x = in(reg) x,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    result
}

/// Four int8 values as a little-endian word (one unaligned `LDR`).
#[inline(always)]
fn word(bytes: &[i8]) -> u32 {
    let mut four = [0i8; 4];
    four.copy_from_slice(bytes);
    u32::from_le_bytes(four.map(|b| b as u8))
}

/// The input zero point's negation in both 16-bit lanes, for `SXTAB16`; `None` for a
/// zero point outside int8 (then `x − zero_point` may not fit 16 bits).
fn lane_offset(input_zero_point: i32) -> Option<u32> {
    let zero_point = i8::try_from(input_zero_point).ok()?;
    let lane = u32::from((-i16::from(zero_point)) as u16);
    Some(lane | (lane << 16))
}

/// Taps per pixel the column buffer holds: a 3×3 window over 64 channels.
pub const WINDOW_CAPACITY: usize = 576;
/// Words of the column buffer: two pixels, two words per four taps.
pub const COLUMN_WORDS: usize = WINDOW_CAPACITY;
/// Taps per pixel of the byte staging used when the channels are not a multiple of
/// four (the first layer's 3×3×3 window and the like), rounded up to whole groups.
const STAGING_CAPACITY: usize = 160;

/// `acc[c][p] += Σ col_p[k]·w_c[k]` over `groups` groups of four taps, with
/// `columns` as laid out by [`widen_pair`] and `w1 = w0 + w1_offset`.
///
/// # Safety
///
/// `columns` must be 4-byte aligned and readable for `4 · groups` words; `w0` and
/// `w0 + w1_offset` readable for `4 · groups` bytes each (any alignment: Cortex-M
/// cores with the DSP extension load unaligned words unless configured to trap).
#[inline(always)]
unsafe fn mac_2x2(
    columns: *const u32,
    w0: *const i8,
    w1_offset: usize,
    groups: usize,
    acc: &mut [[i32; 2]; 2],
) {
    if groups == 0 {
        return;
    }
    let [[mut a00, mut a01], [mut a10, mut a11]] = *acc;
    let pairs = groups / 2;
    let (mut columns, mut w0) = (columns, w0);
    if pairs > 0 {
        // SAFETY: the caller guarantees the reads; the loop reads `8 · pairs ≤ 4 · groups`
        // words from `columns` and `2 · pairs` words from each filter (two groups per
        // iteration), and writes registers only, r7
        // included (the frame pointer, which LLVM cannot hand out: it is saved on the
        // stack and restored before the block ends; interrupts do not depend on it).
        unsafe {
            asm!(
                "push {{r7}}",
                "2:",
                // Both channels' weights, widened once: even/odd lanes.
                "ldr {w1_odd}, [{w0}, {w1_offset}]",
                "ldr {w0_odd}, [{w0}], #4",
                "sxtb16 {w1_even}, {w1_odd}",
                "sxtb16 {w1_odd}, {w1_odd}, ror #8",
                "sxtb16 r7, {w0_odd}",
                "sxtb16 {w0_odd}, {w0_odd}, ror #8",
                // Pixel 0 against both channels, then pixel 1.
                "ldrd {x_even}, {x_odd}, [{columns}], #8",
                "smlad {a00}, {x_even}, r7, {a00}",
                "smlad {a00}, {x_odd}, {w0_odd}, {a00}",
                "smlad {a01}, {x_even}, {w1_even}, {a01}",
                "smlad {a01}, {x_odd}, {w1_odd}, {a01}",
                "ldrd {x_even}, {x_odd}, [{columns}], #8",
                "smlad {a10}, {x_even}, r7, {a10}",
                "smlad {a10}, {x_odd}, {w0_odd}, {a10}",
                "smlad {a11}, {x_even}, {w1_even}, {a11}",
                "smlad {a11}, {x_odd}, {w1_odd}, {a11}",
                // The next group (the loop runs two per iteration).
                "ldr {w1_odd}, [{w0}, {w1_offset}]",
                "ldr {w0_odd}, [{w0}], #4",
                "sxtb16 {w1_even}, {w1_odd}",
                "sxtb16 {w1_odd}, {w1_odd}, ror #8",
                "sxtb16 r7, {w0_odd}",
                "sxtb16 {w0_odd}, {w0_odd}, ror #8",
                "ldrd {x_even}, {x_odd}, [{columns}], #8",
                "smlad {a00}, {x_even}, r7, {a00}",
                "smlad {a00}, {x_odd}, {w0_odd}, {a00}",
                "smlad {a01}, {x_even}, {w1_even}, {a01}",
                "smlad {a01}, {x_odd}, {w1_odd}, {a01}",
                "ldrd {x_even}, {x_odd}, [{columns}], #8",
                "smlad {a10}, {x_even}, r7, {a10}",
                "smlad {a10}, {x_odd}, {w0_odd}, {a10}",
                "smlad {a11}, {x_even}, {w1_even}, {a11}",
                "smlad {a11}, {x_odd}, {w1_odd}, {a11}",
                "cmp {columns}, {end}",
                "bne 2b",
                "pop {{r7}}",
                columns = inout(reg) columns => columns,
                w0 = inout(reg) w0 => w0,
                end = in(reg) columns.wrapping_add(8 * pairs),
                w1_offset = in(reg) w1_offset,
                a00 = inout(reg) a00,
                a01 = inout(reg) a01,
                a10 = inout(reg) a10,
                a11 = inout(reg) a11,
                x_even = out(reg) _,
                x_odd = out(reg) _,
                w0_odd = out(reg) _,
                w1_even = out(reg) _,
                w1_odd = out(reg) _,
                options(pure, readonly),
            );
        }
    }
    if groups % 2 == 1 {
        // SAFETY: as above: the last group, whose words follow the pairs'.
        unsafe {
            asm!(
                "push {{r7}}",
            // Both channels' weights, widened once: even/odd lanes.
                "ldr {w1_odd}, [{w0}, {w1_offset}]",
                "ldr {w0_odd}, [{w0}], #4",
                "sxtb16 {w1_even}, {w1_odd}",
                "sxtb16 {w1_odd}, {w1_odd}, ror #8",
                "sxtb16 r7, {w0_odd}",
                "sxtb16 {w0_odd}, {w0_odd}, ror #8",
            // Pixel 0 against both channels, then pixel 1.
                "ldrd {x_even}, {x_odd}, [{columns}], #8",
                "smlad {a00}, {x_even}, r7, {a00}",
                "smlad {a00}, {x_odd}, {w0_odd}, {a00}",
                "smlad {a01}, {x_even}, {w1_even}, {a01}",
                "smlad {a01}, {x_odd}, {w1_odd}, {a01}",
                "ldrd {x_even}, {x_odd}, [{columns}], #8",
                "smlad {a10}, {x_even}, r7, {a10}",
                "smlad {a10}, {x_odd}, {w0_odd}, {a10}",
                "smlad {a11}, {x_even}, {w1_even}, {a11}",
                "smlad {a11}, {x_odd}, {w1_odd}, {a11}",
                "pop {{r7}}",
                columns = inout(reg) columns => _,
                w0 = inout(reg) w0 => _,
            w1_offset = in(reg) w1_offset,
                a00 = inout(reg) a00,
                a01 = inout(reg) a01,
                a10 = inout(reg) a10,
                a11 = inout(reg) a11,
                x_even = out(reg) _,
                x_odd = out(reg) _,
                w0_odd = out(reg) _,
                w1_even = out(reg) _,
                w1_odd = out(reg) _,
                options(pure, readonly),
            );
        }
    }
    *acc = [[a00, a01], [a10, a11]];
}

/// A group of four taps of both pixels, as [`mac_2x2`] reads it: `[even taps of pixel
/// 0, odd taps of pixel 0, even of pixel 1, odd of pixel 1]`, 16-bit lanes.
type Quad = [u32; 4];

/// Four int8 taps widened to `x − zero_point` in 16-bit lanes: (even taps, odd taps).
#[inline(always)]
fn widen(offset: u32, four: &[i8]) -> (u32, u32) {
    let x = word(four);
    (sxtab16_even(offset, x), sxtab16_odd(offset, x))
}

/// Widens the windows of output pixels `(oy, ox[0])` and `(oy, ox[1])` into
/// `columns` (see the module's doc); when the channels are not a multiple of four,
/// through the window's bytes in `staging`, the window rounded up to whole groups
/// with taps that widen to zero. The caller has checked that the window fits.
///
/// Both pixels are widened in one pass and every group is written whole, through
/// iterators whose lengths the compiler knows: no bounds check and no spill in the
/// loop, which runs once per pixel pair and tap group. Not inlined: inside the
/// convolution's loops the compiler runs out of registers and spills in this loop.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn widen_pair(
    shape: &ConvShape,
    input: &[i8],
    input_zero_point: i32,
    offset: u32,
    oy: usize,
    ox: [usize; 2],
    columns: &mut [Quad; COLUMN_WORDS / 4],
    staging: &mut [[i8; STAGING_CAPACITY]; 2],
) {
    let c_in = shape.in_c;
    // The input pixel under tap (ky, kx) of output pixel (oy, x), or None in the padding.
    let pixel = |ky: usize, kx: usize, x: usize| -> Option<&[i8]> {
        let iy = (oy * shape.stride + ky).checked_sub(shape.pad_top)?;
        let ix = (x * shape.stride + kx).checked_sub(shape.pad_left)?;
        if iy < shape.in_h && ix < shape.in_w {
            input.get((iy * shape.in_w + ix) * c_in..)?.get(..c_in)
        } else {
            None
        }
    };
    if c_in % 4 == 0 {
        // Whole groups per tap: widen straight from the input, padding as zero.
        let mut quads = columns.iter_mut();
        for ky in 0..shape.kernel_h {
            for kx in 0..shape.kernel_w {
                let taps = quads.by_ref().take(c_in / 4);
                match (pixel(ky, kx, ox[0]), pixel(ky, kx, ox[1])) {
                    (Some(a), Some(b)) => {
                        for (quad, (a, b)) in taps.zip(a.chunks_exact(4).zip(b.chunks_exact(4))) {
                            let ((a_even, a_odd), (b_even, b_odd)) =
                                (widen(offset, a), widen(offset, b));
                            *quad = [a_even, a_odd, b_even, b_odd];
                        }
                    }
                    (Some(a), None) => {
                        for (quad, a) in taps.zip(a.chunks_exact(4)) {
                            let (a_even, a_odd) = widen(offset, a);
                            *quad = [a_even, a_odd, 0, 0];
                        }
                    }
                    (None, Some(b)) => {
                        for (quad, b) in taps.zip(b.chunks_exact(4)) {
                            let (b_even, b_odd) = widen(offset, b);
                            *quad = [0, 0, b_even, b_odd];
                        }
                    }
                    (None, None) => taps.for_each(|quad| *quad = [0; 4]),
                }
            }
        }
    } else {
        // Stage the window's bytes first (padding, and the taps that round the window
        // up to a whole group, as the zero point, which widens to zero), then widen
        // them four at a time.
        let padded = (shape.kernel_h * shape.kernel_w * c_in).next_multiple_of(4);
        for (bytes, &x) in staging.iter_mut().zip(&ox) {
            let bytes = &mut bytes[..padded];
            bytes.fill(input_zero_point as i8);
            let taps = bytes.chunks_exact_mut(c_in);
            let window =
                (0..shape.kernel_h).flat_map(|ky| (0..shape.kernel_w).map(move |kx| (ky, kx)));
            for (tap, (ky, kx)) in taps.zip(window) {
                if let Some(from) = pixel(ky, kx, x) {
                    // Byte by byte: the channels are few (three for an image), and a
                    // `copy_from_slice` of three bytes is a call to `memcpy`.
                    for (to, &from) in tap.iter_mut().zip(from) {
                        *to = from;
                    }
                }
            }
        }
        let [a, b] = &*staging;
        let groups = a[..padded].chunks_exact(4).zip(b[..padded].chunks_exact(4));
        for (quad, (a, b)) in columns.iter_mut().zip(groups) {
            let ((a_even, a_odd), (b_even, b_odd)) = (widen(offset, a), widen(offset, b));
            *quad = [a_even, a_odd, b_even, b_odd];
        }
    }
}

/// A rounded-up window reads up to three bytes past a filter: the next filter's, or
/// past the weights for the last ones, whose pair then goes through this padded copy,
/// made once for the pair it holds, not at every pixel pair.
struct Tail {
    filters: [[i8; STAGING_CAPACITY]; 2],
    holds: Option<[usize; 2]>,
}

/// The sums of output channels `channels` for the pixel pair widened in `columns`,
/// into `acc[pixel][channel − channels.start]`: a channel pair at a time, with the
/// channel doubled when the block's count is odd. Not inlined: inside the
/// convolution's loops the compiler spills the accumulators' setup around every
/// `mac_2x2`.
#[inline(never)]
fn block_sums(
    columns: &[Quad; COLUMN_WORDS / 4],
    weights: &[i8],
    window: usize,
    channels: Range<usize>,
    tail: &mut Tail,
    acc: &mut [[i32; CHANNEL_BLOCK]; 2],
) {
    let padded = window.next_multiple_of(4);
    let groups = padded / 4;
    // The caller's check that the window fits, made here too, so that this safe
    // function is sound on its own: one comparison a pixel pair.
    let Some(columns) = columns.get(..groups) else {
        return;
    };
    for co in channels.clone().step_by(2) {
        let pair = [co, (co + 1).min(channels.end - 1)];
        let (first, stride) = if pair[1] * window + padded <= weights.len() {
            (&weights[pair[0] * window..], (pair[1] - pair[0]) * window)
        } else {
            if tail.holds != Some(pair) {
                for (copy, c) in tail.filters.iter_mut().zip(pair) {
                    copy[..window].copy_from_slice(&weights[c * window..][..window]);
                }
                tail.holds = Some(pair);
            }
            (&tail.filters[0][..], STAGING_CAPACITY)
        };
        let mut sums = [[0i32; 2]; 2];
        // SAFETY: `columns` holds `groups` 4-word groups (`4 · groups` words), 4-byte
        // aligned as its `u32`s are; `first` and `first +
        // stride` are readable for `padded` bytes: in `weights`, the second filter's
        // end checked just above, or in `tail`, whose rows are `STAGING_CAPACITY ≥
        // padded` bytes, `stride` apart.
        unsafe {
            let columns = columns.as_ptr().cast::<u32>();
            mac_2x2(columns, first.as_ptr(), stride, groups, &mut sums);
        }
        for (row, sums) in acc.iter_mut().zip(sums) {
            row[co - channels.start] = sums[0];
            row[pair[1] - channels.start] = sums[1];
        }
    }
}

/// The memory the convolution works in besides its input and output (3.1 KiB): the
/// widened columns, the staged odd taps and the accumulators. The caller owns it
/// and passes it to every call (see [`crate::arch::ConvScratch`]); what it holds
/// between calls does not matter.
#[derive(Clone, Debug)]
pub struct ConvScratch {
    columns: [Quad; COLUMN_WORDS / 4],
    staging: [[i8; STAGING_CAPACITY]; 2],
    acc: [[i32; CHANNEL_BLOCK]; 2],
}

impl ConvScratch {
    /// A zeroed scratch.
    pub const fn new() -> Self {
        ConvScratch {
            columns: [[0; 4]; COLUMN_WORDS / 4],
            staging: [[0; STAGING_CAPACITY]; 2],
            acc: [[0; CHANNEL_BLOCK]; 2],
        }
    }
}

impl Default for ConvScratch {
    fn default() -> Self {
        Self::new()
    }
}

/// TFLite int8 convolution, as [`kernels::conv2d_i8`] computes it (same arguments,
/// same checks, bit-identical results), with `SMLAD`. A window over
/// [`WINDOW_CAPACITY`] taps (or over the staging capacity when the channels are not a
/// multiple of four) and a zero point outside int8 go to the portable kernel.
///
/// A pixel without a partner (an odd last column) and an odd last channel run
/// through the same 2×2 block with the pixel or channel doubled, and keep one of the
/// results.
///
/// It works in the caller's `scratch`, reused from call to call
/// ([`crate::arch::conv2d_i8`] makes one per call).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_i8_with(
    scratch: &mut ConvScratch,
    shape: &ConvShape,
    input: &[i8],
    input_zero_point: i32,
    weights: &[i8],
    bias: &[i32],
    requant: &Requantize<'_>,
    residual: Option<(Shortcut<'_, i8>, &AddTables)>,
    output: &mut [i8],
) -> Result<(), Error> {
    let window = shape.kernel_h * shape.kernel_w * shape.in_c;
    // Taps in whole groups of four: a window whose channels are not a multiple of
    // four is rounded up with taps of zero (their weights then multiply zero).
    let padded = window.next_multiple_of(4);
    let fits = if shape.in_c % 4 == 0 {
        window <= WINDOW_CAPACITY
    } else {
        padded <= STAGING_CAPACITY
    };
    let offset = lane_offset(input_zero_point);
    let (true, Some(offset)) = (fits, offset) else {
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
    };
    kernels::check_conv_i8(shape, input, weights, bias, requant, residual, output)?;
    let out_c = shape.out_c;
    let add = residual.map(|(_, add)| add);
    let mut tail = Tail {
        filters: [[0; STAGING_CAPACITY]; 2],
        holds: None,
    };
    // `acc`: a block of channels' accumulators for the two pixels, finished a row at
    // a time.
    let ConvScratch {
        columns,
        staging,
        acc,
    } = scratch;
    let finish_row = if layer_is_checked(requant) {
        finish_row_checked_layer
    } else {
        finish_row_scalar
    };
    for oy in 0..shape.out_h {
        for ox in (0..shape.out_w).step_by(2) {
            let pixels = [ox, (ox + 1).min(shape.out_w - 1)];
            let distinct_pixels = if pixels[0] == pixels[1] { 1 } else { 2 };
            widen_pair(
                shape,
                input,
                input_zero_point,
                offset,
                oy,
                pixels,
                columns,
                staging,
            );
            for block in (0..out_c).step_by(CHANNEL_BLOCK) {
                let channels = block..(block + CHANNEL_BLOCK).min(out_c);
                block_sums(columns, weights, window, channels.clone(), &mut tail, acc);
                for (p, &x) in pixels.iter().enumerate().take(distinct_pixels) {
                    let shortcut = ShortcutRow::at(residual, oy, x);
                    let out_start = (oy * shape.out_w + x) * out_c;
                    finish_row(
                        &acc[p][..channels.len()],
                        &bias[channels.clone()],
                        channels.clone(),
                        requant,
                        add,
                        shortcut,
                        &mut output[out_start..out_start + out_c],
                    );
                }
            }
        }
    }
    Ok(())
}
