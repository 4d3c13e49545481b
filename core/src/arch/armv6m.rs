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
//! accumulators, kept in r8, r10, r11 and r12, which `ADD` reaches. Eight taps a turn:
//! 3.6 instructions per multiply-accumulate (2.6 with the M3's `MLA`).
//!
//! The `+ 128` comes out with the zero point, once per call: with padding stored as
//! `zp + 128`, `Σ (x − zp)·w = Σ (x + 128)·w − (zp + 128)·Σ w`, so each channel's
//! `bias − (zp + 128)·Σ w` is a constant added before requantizing; in wrapping 32-bit
//! arithmetic this equals the portable kernel's accumulator bit for bit. With the zero
//! point −128, as after every ReLU, the base is the bias itself.

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
    /// The input zero point, a tap's worth: what padding taps read.
    padding: [i8; WINDOW_CAPACITY],
    bases: [i32; CHANNEL_CAPACITY],
}

impl ConvScratch {
    /// A zeroed scratch.
    pub const fn new() -> Self {
        ConvScratch {
            columns: [0; WINDOW_CAPACITY],
            padding: [0; WINDOW_CAPACITY],
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
    let ConvScratch {
        columns,
        padding,
        bases,
    } = scratch;
    let columns = &mut columns[..window];
    let padding = &mut padding[..shape.in_c];
    padding.fill(input_zero_point as i8);
    // The zero point the stored bytes are offset from.
    let offset_zero_point = input_zero_point.wrapping_add(128);
    if offset_zero_point == 0 {
        // Zero point −128, as after every ReLU: the stored bytes are the codes' offsets
        // from it, and the bias is the base.
        bases[..out_c].copy_from_slice(bias);
    } else {
        for ((base, filter), &bias) in bases.iter_mut().zip(weights.chunks_exact(window)).zip(bias)
        {
            let sum = filter
                .iter()
                .fold(0i32, |s, &w| s.wrapping_add(i32::from(w)));
            *base = bias.wrapping_sub(offset_zero_point.wrapping_mul(sum));
        }
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
            gather(shape, input, padding, oy, pixels, columns);
            let shortcuts = pixels.map(|x| residual.as_ref().and_then(|(s, _)| s.row(oy, x)));
            let starts = pixels.map(|x| (oy * shape.out_w + x) * out_c);
            let channels = weights
                .chunks_exact(window)
                .zip(requant.multipliers.iter().zip(requant.shifts))
                .zip(bases.iter());
            for (co, ((filter, (&multiplier, &shift)), &base)) in channels.enumerate() {
                let sums = dot4(bytemuck::cast_slice(columns), filter);
                let values = if checked_layer {
                    let channel = ChannelRequantize::new_checked_layer(multiplier, shift, requant);
                    sums.map(|sum| channel.apply_checked_layer_32(sum.wrapping_add(base)))
                } else {
                    let channel = requant.channel(co);
                    sums.map(|sum| channel.apply(sum.wrapping_add(base)))
                };
                for p in 0..distinct {
                    let Some(out) = output.get_mut(starts[p] + co) else {
                        continue;
                    };
                    *out = match add {
                        None => values[p],
                        Some(add) => {
                            let shortcut = kernels::shortcut_value(co, add, shortcuts[p], *out);
                            if checked_add {
                                add.add_32(values[p], shortcut)
                            } else {
                                add.add(values[p], shortcut)
                            }
                        }
                    };
                }
            }
        }
    }
    Ok(())
}

/// Copies the windows of four output pixels of row `oy` into `columns`, a word per
/// tap and input channel (pixel `p` in byte `p`, as `x ^ 0x80`); taps outside the
/// input read `padding` (a tap's channels of the zero point).
fn gather(
    shape: &ConvShape,
    input: &[i8],
    padding: &[i8],
    oy: usize,
    pixels: [usize; PIXELS],
    columns: &mut [u32],
) {
    let c_in = shape.in_c;
    for (ky, row) in columns.chunks_exact_mut(shape.kernel_w * c_in).enumerate() {
        let iy = (oy * shape.stride + ky)
            .checked_sub(shape.pad_top)
            .filter(|&iy| iy < shape.in_h);
        for (kx, taps) in row.chunks_exact_mut(c_in).enumerate() {
            let [s0, s1, s2, s3] = pixels.map(|x| {
                let ix = (x * shape.stride + kx)
                    .checked_sub(shape.pad_left)
                    .filter(|&ix| ix < shape.in_w);
                match (iy, ix) {
                    (Some(iy), Some(ix)) => {
                        let start = (iy * shape.in_w + ix) * c_in;
                        input.get(start..start + c_in).unwrap_or(padding)
                    }
                    _ => padding,
                }
            });
            for ((((tap, &x0), &x1), &x2), &x3) in taps.iter_mut().zip(s0).zip(s1).zip(s2).zip(s3) {
                *tap = u32::from_le_bytes([x0 as u8, x1 as u8, x2 as u8, x3 as u8]) ^ 0x8080_8080;
            }
        }
    }
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
    // The first `taps % 8` taps go one at a time, the rest eight at a time.
    let end = filter.as_ptr_range().end;
    let index = -(taps as isize);
    let stop = index + (taps % 8) as isize;
    let (acc0, acc1, acc2, acc3): (i32, i32, i32, i32);
    // SAFETY: `index` runs over `-taps..0`, so every `end + index` is a byte of
    // `filter`; `column` advances 4 bytes a tap over the first `4 · taps` bytes of
    // `columns`, and each load reads at most 3 bytes past it within the same tap's 4
    // (31 in the 8-tap loop: its 8 taps). Registers r8, r10-r12 hold the four
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
            "adds {index}, #1",
            "ldrsb {w}, [{end}, {index}]",
            "ldrb {x}, [{column}, #16]",
            mac!("r8"),
            "ldrb {x}, [{column}, #17]",
            mac!("r10"),
            "ldrb {x}, [{column}, #18]",
            mac!("r11"),
            "ldrb {x}, [{column}, #19]",
            mac!("r12"),
            "adds {index}, #1",
            "ldrsb {w}, [{end}, {index}]",
            "ldrb {x}, [{column}, #20]",
            mac!("r8"),
            "ldrb {x}, [{column}, #21]",
            mac!("r10"),
            "ldrb {x}, [{column}, #22]",
            mac!("r11"),
            "ldrb {x}, [{column}, #23]",
            mac!("r12"),
            "adds {index}, #1",
            "ldrsb {w}, [{end}, {index}]",
            "ldrb {x}, [{column}, #24]",
            mac!("r8"),
            "ldrb {x}, [{column}, #25]",
            mac!("r10"),
            "ldrb {x}, [{column}, #26]",
            mac!("r11"),
            "ldrb {x}, [{column}, #27]",
            mac!("r12"),
            "adds {index}, #1",
            "ldrsb {w}, [{end}, {index}]",
            "ldrb {x}, [{column}, #28]",
            mac!("r8"),
            "ldrb {x}, [{column}, #29]",
            mac!("r10"),
            "ldrb {x}, [{column}, #30]",
            mac!("r11"),
            "ldrb {x}, [{column}, #31]",
            mac!("r12"),
            "adds {column}, #32",
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
