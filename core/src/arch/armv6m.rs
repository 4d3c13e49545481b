//! The int8 convolution for Arm cores without the DSP extension: the Cortex-M0 and
//! M0+ (ARMv6-M: the RP2040, the STM32G0) and the Cortex-M3. ARMv6-M has no SIMD, no
//! multiply-accumulate and no sign-extending load with an immediate offset, and most
//! of its instructions reach only r0–r7.
//!
//! Four output pixels of a row go together. Their windows are copied into a column
//! buffer tap by tap, `[tap][pixel]`, each byte stored as `x + 128` (`x ^ 0x80`), an
//! unsigned byte that `LDRB` loads with an immediate offset: one pointer walks the
//! four pixels' bytes. Each weight is loaded once (`LDRSB`, indexed by a counter that
//! runs up to zero and ends the loop) and multiplied into the four pixels'
//! accumulators, kept in r8, r10, r11 and r12, which `ADD` reaches. Four taps a turn:
//! 3.6 instructions per multiply-accumulate.
//!
//! The `+ 128` comes out with the zero point, once per call: with padding stored as
//! `zp + 128`, `Σ (x − zp)·w = Σ (x + 128)·w − (zp + 128)·Σ w`, so each channel's
//! `bias − (zp + 128)·Σ w` is a constant added before requantizing; in wrapping 32-bit
//! arithmetic this equals the portable kernel's accumulator bit for bit.

use core::arch::asm;

use crate::error::Error;
use crate::kernels::{self, ChannelRequantize, ConvShape, Requantize, Shortcut};
use crate::quant::AddTables;

/// Output pixels per group.
const PIXELS: usize = 4;
/// Taps per pixel the column buffer holds: a 3×3 window over 64 channels (2.3 KiB of
/// stack). A larger window goes to the portable kernel.
const WINDOW_CAPACITY: usize = 576;
/// Output channels whose bases are kept (256 B of stack). More go to the portable
/// kernel.
const CHANNEL_CAPACITY: usize = 64;

/// The memory a convolution works in besides its input and output (2.5 KiB): the
/// column buffer and the channels' bases. The caller owns it and passes it to every
/// call; its contents between calls do not matter.
#[derive(Clone, Debug)]
pub struct ConvScratch {
    /// `[tap]`: the four pixels' bytes of the tap, pixel `p` in byte `p`.
    columns: [u32; WINDOW_CAPACITY],
    bases: [i32; CHANNEL_CAPACITY],
}

impl ConvScratch {
    /// A zeroed scratch.
    pub const fn new() -> Self {
        ConvScratch {
            columns: [0; WINDOW_CAPACITY],
            bases: [0; CHANNEL_CAPACITY],
        }
    }
}

impl Default for ConvScratch {
    fn default() -> Self {
        Self::new()
    }
}

/// TFLite int8 convolution, as [`kernels::conv2d_i8`] computes it (same arguments,
/// same checks, bit-identical results).
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
    let out_c = shape.out_c;
    if window > WINDOW_CAPACITY || window == 0 || out_c > CHANNEL_CAPACITY {
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
    kernels::check_conv_i8(shape, input, weights, bias, requant, residual, output)?;
    let ConvScratch { columns, bases } = scratch;
    let columns = &mut columns[..window];
    // The padding's stored byte, and the zero point it stands for with the 128.
    let padding = (input_zero_point as i8 as u8) ^ 0x80;
    let offset_zero_point = input_zero_point.wrapping_add(128);
    for ((base, filter), &bias) in bases.iter_mut().zip(weights.chunks_exact(window)).zip(bias) {
        let sum = filter
            .iter()
            .fold(0i32, |s, &w| s.wrapping_add(i32::from(w)));
        *base = bias.wrapping_sub(offset_zero_point.wrapping_mul(sum));
    }
    let add = residual.map(|(_, add)| add);
    // Requantized in 32-bit arithmetic where every blob that validates allows it.
    let checked_layer = kernels::layer_is_checked(requant);
    let checked_add = add.is_some_and(AddTables::output_is_checked);
    for oy in 0..shape.out_h {
        for ox in (0..shape.out_w).step_by(PIXELS) {
            // The last group of a row repeats its last pixel and keeps what it needs.
            let pixels: [usize; PIXELS] = core::array::from_fn(|p| (ox + p).min(shape.out_w - 1));
            let distinct = (shape.out_w - ox).min(PIXELS);
            if distinct < PIXELS || !gather_inside(shape, input, oy, pixels, columns) {
                let bytes: &mut [u8] = bytemuck::cast_slice_mut(columns);
                for (p, &x) in pixels.iter().enumerate() {
                    gather(shape, input, padding, oy, x, p, bytes);
                }
            }
            let shortcuts = pixels.map(|x| residual.as_ref().and_then(|(s, _)| s.row(oy, x)));
            let channels = weights
                .chunks_exact(window)
                .zip(requant.multipliers.iter().zip(requant.shifts))
                .zip(bases.iter());
            for (co, ((filter, (&multiplier, &shift)), &base)) in channels.enumerate() {
                let sums = dot4(bytemuck::cast_slice(columns), filter);
                let checked = ChannelRequantize::new_checked_layer(multiplier, shift, requant);
                for p in 0..distinct {
                    let at = (oy * shape.out_w + pixels[p]) * out_c + co;
                    let acc = sums[p].wrapping_add(base);
                    let value = if checked_layer {
                        checked.apply_checked_layer_32(acc)
                    } else {
                        requant.channel(co).apply(acc)
                    };
                    output[at] = match add {
                        None => value,
                        Some(add) => {
                            let shortcut =
                                kernels::shortcut_value(co, add, shortcuts[p], output[at]);
                            if checked_add {
                                add.add_32(value, shortcut)
                            } else {
                                add.add(value, shortcut)
                            }
                        }
                    };
                }
            }
        }
    }
    Ok(())
}

/// Copies the windows of four output pixels of row `oy` into `columns` a tap at a
/// time, if all four lie inside the input (no padding); `false` if one does not (the
/// caller then gathers pixel by pixel).
fn gather_inside(
    shape: &ConvShape,
    input: &[i8],
    oy: usize,
    pixels: [usize; PIXELS],
    columns: &mut [u32],
) -> bool {
    let top = oy * shape.stride;
    let (first, last) = (pixels[0] * shape.stride, pixels[PIXELS - 1] * shape.stride);
    if top < shape.pad_top
        || top + shape.kernel_h > shape.pad_top + shape.in_h
        || first < shape.pad_left
        || last + shape.kernel_w > shape.pad_left + shape.in_w
    {
        return false;
    }
    let c_in = shape.in_c;
    let row_bytes = shape.kernel_w * c_in;
    // Pixel p's window starts `p · stride · c_in` bytes after pixel 0's.
    let step = shape.stride * c_in;
    for (ky, taps) in columns.chunks_exact_mut(row_bytes).enumerate() {
        let start = ((top + ky - shape.pad_top) * shape.in_w + first - shape.pad_left) * c_in;
        let Some(run) = input.get(start..start + 3 * step + row_bytes) else {
            return false;
        };
        let (r0, r1, r2, r3) = (run, &run[step..], &run[2 * step..], &run[3 * step..]);
        for ((((tap, &x0), &x1), &x2), &x3) in taps.iter_mut().zip(r0).zip(r1).zip(r2).zip(r3) {
            *tap = u32::from_le_bytes([x0 as u8, x1 as u8, x2 as u8, x3 as u8]) ^ 0x8080_8080;
        }
    }
    true
}

/// Copies the window of output pixel `(oy, ox)` into slot `p` of `columns` (`[tap][p]`,
/// as `x ^ 0x80`), padding as `padding`.
fn gather(
    shape: &ConvShape,
    input: &[i8],
    padding: u8,
    oy: usize,
    ox: usize,
    p: usize,
    columns: &mut [u8],
) {
    let c_in = shape.in_c;
    let top = oy * shape.stride;
    let left = ox * shape.stride;
    let inside = top >= shape.pad_top
        && top + shape.kernel_h <= shape.pad_top + shape.in_h
        && left >= shape.pad_left
        && left + shape.kernel_w <= shape.pad_left + shape.in_w;
    if !inside {
        for byte in columns[p..].iter_mut().step_by(PIXELS) {
            *byte = padding;
        }
    }
    shape.for_each_kernel_row(oy, ox, |pixel, tap, taps| {
        let source = &input[pixel * c_in..(pixel + taps) * c_in];
        let slots = columns[tap * c_in * PIXELS + p..]
            .iter_mut()
            .step_by(PIXELS);
        for (slot, &x) in slots.zip(source) {
            *slot = (x as u8) ^ 0x80;
        }
    });
}

/// One multiply-accumulate into a high register: `MULS` then `ADD` in Thumb-1
/// (ARMv6-M has no `MLA`, and `MULS` reaches only r0-r7); `MLA` in Thumb-2 (the M3).
#[cfg(tinyres_thumb1)]
macro_rules! mac {
    ($acc:literal) => {
        concat!("muls {x}, {w}, {x}\n", "add ", $acc, ", {x}")
    };
}
#[cfg(not(tinyres_thumb1))]
macro_rules! mac {
    ($acc:literal) => {
        concat!("mla ", $acc, ", {x}, {w}, ", $acc)
    };
}

/// `Σ_k columns[4k + p] · filter[k]` for the four pixels `p`.
#[inline(always)]
fn dot4(columns: &[u8], filter: &[i8]) -> [i32; PIXELS] {
    let taps = filter.len();
    if taps == 0 || columns.len() < PIXELS * taps {
        return [0; PIXELS];
    }
    // The weight loads index back from the filter's end: the index runs up to zero.
    // The first `taps % 4` taps go one at a time, the rest four at a time.
    let end = filter.as_ptr_range().end;
    let index = -(taps as isize);
    let stop = index + (taps % 4) as isize;
    let (acc0, acc1, acc2, acc3): (i32, i32, i32, i32);
    // SAFETY: `index` runs over `-taps..0`, so every `end + index` is a byte of
    // `filter`; `column` advances 4 bytes a tap over the first `4 · taps` bytes of
    // `columns`, and each load reads at most 3 bytes past it within the same tap's 4
    // (15 in the 4-tap loop: its 4 taps). Registers r8, r10-r12 hold the four
    // accumulators (Thumb-1 names them only as clobbers; `add` and `mla` reach them);
    // nothing is stored.
    unsafe {
        asm!(
            "movs {x}, #0",
            "mov r8, {x}",
            "mov r10, {x}",
            "mov r11, {x}",
            "mov r12, {x}",
            "cmp {index}, {stop}",
            "beq 3f",
            "2:",
            "ldrsb {w}, [{end}, {index}]",
            "ldrb {x}, [{column}, #0]",
            mac!("r8"),
            "ldrb {x}, [{column}, #1]",
            mac!("r10"),
            "ldrb {x}, [{column}, #2]",
            mac!("r11"),
            "ldrb {x}, [{column}, #3]",
            mac!("r12"),
            "adds {column}, #4",
            "adds {index}, #1",
            "cmp {index}, {stop}",
            "bne 2b",
            "3:",
            "cmp {index}, #0",
            "beq 5f",
            "4:",
            "ldrsb {w}, [{end}, {index}]",
            "ldrb {x}, [{column}, #0]",
            mac!("r8"),
            "ldrb {x}, [{column}, #1]",
            mac!("r10"),
            "ldrb {x}, [{column}, #2]",
            mac!("r11"),
            "ldrb {x}, [{column}, #3]",
            mac!("r12"),
            "adds {index}, #1",
            "ldrsb {w}, [{end}, {index}]",
            "ldrb {x}, [{column}, #4]",
            mac!("r8"),
            "ldrb {x}, [{column}, #5]",
            mac!("r10"),
            "ldrb {x}, [{column}, #6]",
            mac!("r11"),
            "ldrb {x}, [{column}, #7]",
            mac!("r12"),
            "adds {index}, #1",
            "ldrsb {w}, [{end}, {index}]",
            "ldrb {x}, [{column}, #8]",
            mac!("r8"),
            "ldrb {x}, [{column}, #9]",
            mac!("r10"),
            "ldrb {x}, [{column}, #10]",
            mac!("r11"),
            "ldrb {x}, [{column}, #11]",
            mac!("r12"),
            "adds {index}, #1",
            "ldrsb {w}, [{end}, {index}]",
            "ldrb {x}, [{column}, #12]",
            mac!("r8"),
            "ldrb {x}, [{column}, #13]",
            mac!("r10"),
            "ldrb {x}, [{column}, #14]",
            mac!("r11"),
            "ldrb {x}, [{column}, #15]",
            mac!("r12"),
            "adds {column}, #16",
            "adds {index}, #1",
            "bne 4b",
            "5:",
            "mov {w}, r8",
            "mov {x}, r10",
            "mov {end}, r11",
            "mov {stop}, r12",
            w = out(reg) acc0,
            x = out(reg) acc1,
            end = inout(reg) end => acc2,
            stop = inout(reg) stop => acc3,
            index = inout(reg) index => _,
            column = inout(reg) columns.as_ptr() => _,
            out("r8") _,
            out("r10") _,
            out("r11") _,
            out("r12") _,
            options(nostack, readonly),
        );
    }
    [acc0, acc1, acc2, acc3]
}
