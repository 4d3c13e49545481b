//! NEON (AArch64 Advanced SIMD) for the Cortex-A53 and later: int8 convolution over
//! the pixel groups of [`super::columns`], with the stable `core::arch::aarch64`
//! intrinsics. Windows of whole 16-byte chunks are read in place ([`dot_direct`]):
//! from the input, or at the borders from a tile of it padded with the zero point;
//! the others (a first layer's) from the column buffer ([`dot_block`]).
//!
//! Per 16 bytes of a filter and each of the group's four pixels: `SMULL`/`SMULL2`
//! multiply the 16 int8 pairs into 16-bit products (an int8 product always fits) and
//! `SADALP` adds neighbouring products into 32-bit lanes (a sum of two could not fit
//! 16 bits: that is why the products are not accumulated in 16 bits). Two filters
//! share each input load. ARMv8.0 has no `SDOT` (the A53 is ARMv8.0); the weights'
//! sums come once per layer from the column driver.
//!
//! Requantization and the residual add run eight channels at a time
//! ([`finish_row`]): `SQRDMULH` is TFLite's saturating rounding doubling high
//! multiply, and `SRSHL` by a negative amount after adding −1 to negative lanes
//! (when the shift is not zero) its rounding divide by a power of two, ties away
//! from zero. The same results as the scalar code, bit for bit.

use core::arch::aarch64::{
    int32x4_t, int8x16_t, int8x8_t, vaddq_s32, vaddvq_s32, vandq_s32, vcombine_s16, vdupq_n_s32,
    vget_high_s16, vget_low_s16, vget_low_s8, vmaxq_s32, vminq_s32, vmovl_s16, vmovl_s8, vmovn_s16,
    vmovn_s32, vmull_high_s8, vmull_s8, vpadalq_s16, vqaddq_s32, vqrdmulhq_n_s32, vqrdmulhq_s32,
    vrshlq_s32, vshlq_n_s32, vshlq_s32, vshrq_n_s32, vsubq_s32,
};
use core::arch::asm;
use core::ops::Range;

use super::columns::{
    column_offset, conv2d_i8_by_columns, each_filter, finish_row_scalar, weight_sums_scalar,
    Accumulators, Columns, ConvScratch, DirectWindow, ShortcutRow, CHANNEL_BLOCK, PIXELS,
};
use crate::error::Error;
use crate::kernels::{ConvShape, Requantize, Shortcut};
use crate::quant::{AddParams, AddTables};

/// `acc + Σ` of the 16 products `x·w`, pairwise into four 32-bit lanes.
#[inline(always)]
fn multiply_accumulate(acc: int32x4_t, x: int8x16_t, w: int8x16_t) -> int32x4_t {
    // SAFETY: NEON is part of the aarch64 targets this module is compiled for;
    // register-only.
    unsafe {
        let low = vmull_s8(vget_low_s8(x), vget_low_s8(w));
        let high = vmull_high_s8(x, w);
        vpadalq_s16(vpadalq_s16(acc, low), high)
    }
}

/// Bytes a short window ([`PaddedFilters`]) may have, padded to whole chunks.
const SHORT_WINDOW: usize = 32;

/// A first layer's filters (3×3 over three channels: 27 bytes), each padded with zeros
/// to whole 16-byte chunks and 16-byte aligned: as they are, [`dot_4`] copies each
/// chunk of each filter to an aligned buffer in every pixel group.
#[repr(C, align(16))]
struct PaddedFilters([i8; CHANNEL_BLOCK * SHORT_WINDOW]);

/// A 16-byte aligned chunk of weights (copied when the filter's own bytes are not).
#[repr(C, align(16))]
struct AlignedChunk([i8; 16]);

/// `Σ x_p·w` for `p` in `0..4` over `filter`, the four pixels' columns as
/// [`column_offset`] lays them out. The last chunk's weights past the filter's end
/// count as zero, so the columns' bytes there do not matter.
#[inline(always)]
fn dot_4(columns: &Columns, filter: &[i8]) -> [i32; PIXELS] {
    // SAFETY: NEON is part of the aarch64 targets this module is compiled for.
    let zero = unsafe { vdupq_n_s32(0) };
    let mut acc = [zero; PIXELS];
    let aligned = filter.as_ptr().align_offset(16) == 0;
    let mut copy = AlignedChunk([0; 16]);
    for chunk in 0..filter.len().div_ceil(16) {
        let w = match filter.get(chunk * 16..chunk * 16 + 16) {
            Some(w) if aligned => w.as_ptr(),
            part => {
                // Misaligned (a window that is not a multiple of 16 bytes) or the
                // last, partial chunk: through an aligned copy, zero past the end.
                let part = part.unwrap_or(filter.get(chunk * 16..).unwrap_or(&[]));
                copy.0 = [0; 16];
                copy.0[..part.len()].copy_from_slice(part);
                copy.0.as_ptr()
            }
        };
        let base = column_offset(chunk, 0);
        let Some(x) = columns.0.get(base..base + 16 * PIXELS) else {
            break;
        };
        // SAFETY: NEON as above. Every load reads 16 bytes at a 16-byte aligned
        // address (the aligned filter's chunks, the copy, the chunks of the aligned
        // column buffer), as strict-alignment targets require: `w` points to 16
        // readable bytes, `x` is 64 bytes long.
        unsafe {
            let w = w.cast::<int8x16_t>().read();
            for (p, acc) in acc.iter_mut().enumerate() {
                let x = x.as_ptr().add(16 * p).cast::<int8x16_t>().read();
                *acc = multiply_accumulate(*acc, x, w);
            }
        }
    }
    // SAFETY: as above (register-only reductions).
    acc.map(|a| unsafe { vaddvq_s32(a) })
}

/// For the block's filters `i` (`window` bytes each, contiguous in `weights`):
/// `acc[p][i] = Σ x_p·w_i`, two filters at a time so that every loaded input
/// serves both: per 16 bytes, six loads, 16 `SMULL`/`SMULL2` and 16 `SADALP` for
/// 128 MACs. Windows that are not whole 16-byte chunks, or filters not 16-byte
/// aligned, go through [`dot_4`] one filter at a time. Inlined into both of
/// [`conv2d_i8_with`]'s drivers: called from two, it is not otherwise, and the
/// convolution's other layers then cost 3 % more.
#[inline(always)]
fn dot_block(columns: &Columns, weights: &[i8], window: usize, acc: &mut Accumulators) {
    if window % 16 != 0 || weights.as_ptr().align_offset(16) != 0 {
        return each_filter(dot_4)(columns, weights, window, acc);
    }
    let chunks = window / 16;
    let filters = (weights.len() / window).min(CHANNEL_BLOCK);
    let pairs = filters / 2;
    for pair in 0..pairs {
        let first = &weights[2 * pair * window..(2 * pair + 1) * window];
        let second = &weights[(2 * pair + 1) * window..(2 * pair + 2) * window];
        // SAFETY: NEON (see `multiply_accumulate`).
        let zero = unsafe { vdupq_n_s32(0) };
        let mut sums = [[zero; 2]; PIXELS];
        for chunk in 0..chunks {
            let base = column_offset(chunk, 0);
            let (Some(x), Some(w0), Some(w1)) = (
                columns.0.get(base..base + 16 * PIXELS),
                first.get(chunk * 16..chunk * 16 + 16),
                second.get(chunk * 16..chunk * 16 + 16),
            ) else {
                break;
            };
            // SAFETY: NEON as above. Every load reads 16 bytes at a 16-byte aligned
            // address, as strict-alignment targets require: the filters are
            // aligned (checked above; `window` is a multiple of 16) and so are the
            // chunks of the column buffer; `x` is 64 bytes long, `w0` and `w1` 16.
            unsafe {
                let w = [
                    w0.as_ptr().cast::<int8x16_t>().read(),
                    w1.as_ptr().cast::<int8x16_t>().read(),
                ];
                for (p, sums) in sums.iter_mut().enumerate() {
                    let x = x.as_ptr().add(16 * p).cast::<int8x16_t>().read();
                    for (sum, &w) in sums.iter_mut().zip(&w) {
                        *sum = multiply_accumulate(*sum, x, w);
                    }
                }
            }
        }
        for (row, sums) in acc.iter_mut().zip(&sums) {
            // SAFETY: NEON; register-only reductions.
            unsafe {
                row[2 * pair] = vaddvq_s32(sums[0]);
                row[2 * pair + 1] = vaddvq_s32(sums[1]);
            }
        }
    }
    if filters % 2 == 1 {
        let last = filters - 1;
        let products = dot_4(columns, &weights[last * window..(last + 1) * window]);
        for (row, product) in acc.iter_mut().zip(products) {
            row[last] = product;
        }
    }
}

/// [`super::columns::DirectDot`] for NEON: the filters two at a time as [`dot_block`] computes them,
/// the group's windows read in place, kernel row by kernel row. It applies to windows
/// of whole 16-byte chunks at 16-byte aligned addresses (the input, the pixel and row
/// steps, the filters), as strict-alignment targets require, and an even number of
/// filters.
fn dot_direct(input: &[i8], window: &DirectWindow, weights: &[i8], acc: &mut Accumulators) -> bool {
    let whole = |n: usize| n % 16 == 0;
    let aligned = whole(window.row_bytes)
        && whole(window.pixel_step)
        && whole(window.row_step)
        && input.as_ptr().align_offset(16) == 0
        && weights.as_ptr().align_offset(16) == 0;
    if !aligned || window.filter_pairs(input, weights).is_none() {
        return false;
    }
    let bytes = window.rows * window.row_bytes;
    let chunks = window.row_bytes / 16;
    for (pair, filters) in weights.chunks_exact(2 * bytes).enumerate() {
        let (first, second) = filters.split_at(bytes);
        // SAFETY: NEON (see `multiply_accumulate`).
        let zero = unsafe { vdupq_n_s32(0) };
        let mut sums = [[zero; 2]; PIXELS];
        for ky in 0..window.rows {
            let row = input[ky * window.row_step..].as_ptr();
            for chunk in 0..chunks {
                let at = (ky * chunks + chunk) * 16;
                // SAFETY: NEON as above. Every load reads 16 bytes at a 16-byte aligned
                // address (checked above: the input, the steps and the filters, whose
                // bytes are a multiple of 16): the filters' at `at + 16 ≤ bytes`, pixel
                // `p`'s at `ky · row_step + p · pixel_step + 16 · chunk`, within the
                // input (`filter_pairs`).
                unsafe {
                    let w = [
                        first.as_ptr().add(at).cast::<int8x16_t>().read(),
                        second.as_ptr().add(at).cast::<int8x16_t>().read(),
                    ];
                    for (p, sums) in sums.iter_mut().enumerate() {
                        let x = row
                            .add(p * window.pixel_step + 16 * chunk)
                            .cast::<int8x16_t>()
                            .read();
                        for (sum, &w) in sums.iter_mut().zip(&w) {
                            *sum = multiply_accumulate(*sum, x, w);
                        }
                    }
                }
            }
        }
        for (row, sums) in acc.iter_mut().zip(&sums) {
            // SAFETY: NEON; register-only reductions.
            unsafe {
                row[2 * pair] = vaddvq_s32(sums[0]);
                row[2 * pair + 1] = vaddvq_s32(sums[1]);
            }
        }
    }
    true
}

/// TFLite's rounding divide by `2^−negated_right` (ties away from zero), lane by
/// lane: `SRSHL` by the negative amount rounds ties up, so negative lanes first
/// lose 1 when the shift is not zero.
#[inline(always)]
fn rounding_divide(x: int32x4_t, negated_right: int32x4_t) -> int32x4_t {
    // SAFETY: NEON (see `multiply_accumulate`); register-only.
    unsafe {
        let fixup = vshrq_n_s32::<31>(vandq_s32(x, negated_right));
        vrshlq_s32(vqaddq_s32(x, fixup), negated_right)
    }
}

/// Four accumulators requantized (per-channel multipliers and shifts as vectors),
/// before narrowing.
#[inline(always)]
fn requantize_4(
    acc: &[i32],
    bases: &[i32],
    multipliers: &[i32],
    shifts: &[i32],
    requant: &Requantize<'_>,
) -> int32x4_t {
    debug_assert!(acc.len() >= 4 && bases.len() >= 4 && multipliers.len() >= 4);
    debug_assert!(shifts.len() >= 4);
    let (acc, bases, multipliers, shifts) = (
        load_4(acc),
        load_4(bases),
        load_4(multipliers),
        load_4(shifts),
    );
    // SAFETY: NEON (see `multiply_accumulate`); register-only.
    unsafe {
        let zero = vdupq_n_s32(0);
        let x = vaddq_s32(acc, bases);
        let x = vshlq_s32(x, vmaxq_s32(shifts, zero));
        let x = vqrdmulhq_s32(x, multipliers);
        let x = rounding_divide(x, vminq_s32(shifts, zero));
        let x = vqaddq_s32(x, vdupq_n_s32(requant.output_zero_point));
        vminq_s32(
            vmaxq_s32(x, vdupq_n_s32(requant.activation_min)),
            vdupq_n_s32(requant.activation_max),
        )
    }
}

/// Four i32 from the start of `values` (at least four), with `LD1 {v.4s}`, which
/// needs 4-byte alignment only: the intrinsic's generic load is split into scalar
/// loads on strict-alignment targets when 16-byte alignment cannot be proved.
#[inline(always)]
fn load_4(values: &[i32]) -> int32x4_t {
    assert!(values.len() >= 4);
    let v;
    // SAFETY: reads 16 bytes of `values` (checked above), 4-byte aligned as an i32
    // slice; writes the output register only.
    unsafe {
        asm!(
            "ld1 {{{v:v}.4s}}, [{p}]",
            v = out(vreg) v,
            p = in(reg) values.as_ptr(),
            options(pure, readonly, nostack, preserves_flags),
        );
    }
    v
}

/// Eight int8 from the start of `bytes` (at least eight), with `LD1 {v.8b}` (byte
/// alignment).
#[inline(always)]
fn load_8(bytes: &[i8]) -> int8x8_t {
    assert!(bytes.len() >= 8);
    let v;
    // SAFETY: reads 8 bytes of `bytes` (checked above); writes the output register.
    unsafe {
        asm!(
            "ld1 {{{v:v}.8b}}, [{p}]",
            v = out(vreg) v,
            p = in(reg) bytes.as_ptr(),
            options(pure, readonly, nostack, preserves_flags),
        );
    }
    v
}

/// Stores eight int8 at the start of `bytes` (at least eight), with `ST1 {v.8b}`.
#[inline(always)]
fn store_8(bytes: &mut [i8], v: int8x8_t) {
    assert!(bytes.len() >= 8);
    // SAFETY: writes 8 bytes of `bytes` (checked above); byte alignment suffices.
    unsafe {
        asm!(
            "st1 {{{v:v}.8b}}, [{p}]",
            v = in(vreg) v,
            p = in(reg) bytes.as_mut_ptr(),
            options(nostack, preserves_flags),
        );
    }
}

/// Eight int8 lanes from two vectors of values already within int8.
#[inline(always)]
fn narrow(low: int32x4_t, high: int32x4_t) -> int8x8_t {
    // SAFETY: NEON (see `multiply_accumulate`); register-only.
    unsafe { vmovn_s16(vcombine_s16(vmovn_s32(low), vmovn_s32(high))) }
}

/// TFLite's int8 ADD of eight value and shortcut lanes (see [`AddParams::add`]);
/// the input shifts are `≤ 0`.
#[inline(always)]
fn add_8(values: int8x8_t, shortcut: int8x8_t, add: &AddParams) -> int8x8_t {
    let negated_right = |shift: i32| -(-shift).max(0);
    // SAFETY: NEON (see `multiply_accumulate`); register-only.
    unsafe {
        let rescale = |v: int32x4_t, zero_point: i32, multiplier: i32, shift: i32| {
            let v = vshlq_n_s32::<20>(vsubq_s32(v, vdupq_n_s32(zero_point)));
            rounding_divide(
                vqrdmulhq_n_s32(v, multiplier),
                vdupq_n_s32(negated_right(shift)),
            )
        };
        let halves = |v: int8x8_t| {
            let wide = vmovl_s8(v);
            [
                vmovl_s16(vget_low_s16(wide)),
                vmovl_s16(vget_high_s16(wide)),
            ]
        };
        let (a, b) = (halves(values), halves(shortcut));
        let sum = |i: usize| {
            let a = rescale(
                a[i],
                add.input1_zero_point,
                add.input1_multiplier,
                add.input1_shift,
            );
            let b = rescale(
                b[i],
                add.input2_zero_point,
                add.input2_multiplier,
                add.input2_shift,
            );
            let x = vshlq_s32(vqaddq_s32(a, b), vdupq_n_s32(add.output_shift.max(0)));
            let x = rounding_divide(
                vqrdmulhq_n_s32(x, add.output_multiplier),
                vdupq_n_s32(negated_right(add.output_shift)),
            );
            let x = vqaddq_s32(x, vdupq_n_s32(add.output_zero_point));
            vminq_s32(
                vmaxq_s32(x, vdupq_n_s32(add.activation_min)),
                vdupq_n_s32(add.activation_max),
            )
        };
        narrow(sum(0), sum(1))
    }
}

/// [`finish_row_scalar`] with NEON, eight channels a step (the rest scalar), for
/// parameters that [`super::columns::vector_finish_applies`] to.
#[inline(always)]
fn finish_row(
    acc: &[i32],
    bases: &[i32],
    channels: Range<usize>,
    requant: &Requantize<'_>,
    add: Option<&AddTables>,
    shortcut: ShortcutRow<'_>,
    out: &mut [i8],
) {
    let (Some(multipliers), Some(shifts)) = (
        requant.multipliers.get(channels.clone()),
        requant.shifts.get(channels.clone()),
    ) else {
        return finish_row_scalar(acc, bases, channels, requant, add, shortcut, out);
    };
    let vectors = acc.len().min(bases.len()).min(channels.len()) / 8 * 8;
    if out.len() < channels.end {
        return finish_row_scalar(acc, bases, channels, requant, add, shortcut, out);
    }
    for i in (0..vectors).step_by(8) {
        let c = channels.start + i;
        let low = requantize_4(
            &acc[i..],
            &bases[i..],
            &multipliers[i..],
            &shifts[i..],
            requant,
        );
        let high = requantize_4(
            &acc[i + 4..],
            &bases[i + 4..],
            &multipliers[i + 4..],
            &shifts[i + 4..],
            requant,
        );
        let mut values = narrow(low, high);
        if let Some(tables) = add {
            let shortcut = match shortcut {
                ShortcutRow::None | ShortcutRow::InPlace => load_8(&out[c..c + 8]),
                // These very channels (an identity shortcut in another buffer, or
                // a projection's output): loaded from where they are.
                ShortcutRow::Mapped(source, 0) if source.len() >= c + 8 => {
                    load_8(&source[c..c + 8])
                }
                ShortcutRow::Mapped(source, offset) => {
                    let mut row = [0i8; 8];
                    for (k, r) in row.iter_mut().enumerate() {
                        *r = ShortcutRow::mapped(source, offset, c + k, tables);
                    }
                    load_8(&row)
                }
            };
            values = add_8(values, shortcut, &tables.params);
        }
        store_8(&mut out[c..c + 8], values);
    }
    finish_row_scalar(
        &acc[vectors..],
        &bases[vectors..],
        channels.start + vectors..channels.end,
        requant,
        add,
        shortcut,
        out,
    );
}

/// TFLite int8 convolution, as [`crate::kernels::conv2d_i8`] computes it (same
/// arguments, same checks, bit-identical results), with NEON; see
/// [`conv2d_i8_by_columns`].
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
    let padded = window.next_multiple_of(16);
    if window % 16 != 0
        && padded <= SHORT_WINDOW
        && shape.out_c <= CHANNEL_BLOCK
        && weights.len() == shape.out_c * window
    {
        // One block of short filters, padded once per call: `dot_block` then takes
        // them two at a time (the column buffer's chunks past the window multiply
        // zeros), and the weights' sums come from the filters as they are. A driver
        // of its own: one driver choosing the filters in its block kernel costs the
        // A53 2.2 % (MLPerf ResNet-8: 7,675,362 instructions, against 7,507,107).
        let mut filters = PaddedFilters([0; CHANNEL_BLOCK * SHORT_WINDOW]);
        for (to, from) in filters
            .0
            .chunks_exact_mut(padded)
            .zip(weights.chunks_exact(window))
        {
            to[..window].copy_from_slice(from);
        }
        let padded_weights = &filters.0[..shape.out_c * padded];
        return conv2d_i8_by_columns(
            |columns, _, _, acc| dot_block(columns, padded_weights, padded, acc),
            None,
            None,
            weight_sums_scalar,
            // A closure of its own per driver, so that each inlines it.
            |acc, bases, channels, requant, add, shortcut, out| {
                finish_row(acc, bases, channels, requant, add, shortcut, out)
            },
            scratch,
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
    conv2d_i8_by_columns(
        dot_block,
        Some(dot_direct),
        None,
        weight_sums_scalar,
        |acc, bases, channels, requant, add, shortcut, out| {
            finish_row(acc, bases, channels, requant, add, shortcut, out)
        },
        scratch,
        shape,
        input,
        input_zero_point,
        weights,
        bias,
        requant,
        residual,
        output,
    )
}
