//! Cortex-M DSP extension (M4, M7, M33, M55): int8 convolution with dual 16-bit
//! multiply-accumulates.
//!
//! Output pixels go in pairs. The windows of a pair are first widened into a column
//! buffer on the stack (im2col): `x − zero_point` as 16-bit lanes, four taps at a time
//! as `[even taps of pixel 0, odd taps of pixel 0, even of pixel 1, odd of pixel 1]`
//! (`SXTAB16` widens bytes 0 and 2, then 1 and 3, adding `−zero_point` on the way),
//! padding as zero, a kernel row inside the input in one assembly run. A first layer
//! whose channels are not a multiple of four (an image's three) has its filters padded
//! to four channels per tap once per call, and each tap is then read as one word.
//!
//! One assembly block then runs every pair of output channels of a block: for each, a
//! loop over the window where a weight word is widened with `SXTB16` in the same
//! even/odd order and `SMLAD` multiplies both lanes and accumulates, 17 instructions
//! for 16 MACs per group of four taps (four groups per iteration), with every input
//! widened once per pixel pair and every weight once per pixel pair, in the 13
//! registers inline assembly may use and r7, saved and restored around the block.
//! Loops start word-aligned (a taken branch to a 32-bit instruction that is not costs
//! the M4 a cycle more). The column buffer costs [`COLUMN_WORDS`] × 4 bytes of stack;
//! a larger window whose channels are a multiple of four is summed a chunk of kernel
//! rows at a time; others (a kernel row past the buffer, and zero points outside
//! int8) go to the portable kernel.
//!
//! The row finish requantizes with one `SMLAL` per output and saturates with `SSAT`
//! where the output range is the whole of int8; a residual add runs as a second pass
//! over the requantized row.
//!
//! Accumulation wraps in 32 bits like the portable kernel's (`SMLAD` writes the
//! wrapped sum; it only sets the sticky Q flag, which nothing reads), so the results
//! are bit-identical to [`kernels::conv2d_i8`].

use core::arch::asm;
use core::ops::Range;

use super::columns::{
    finish_row_checked_layer, finish_row_scalar, layer_is_checked, vector_finish_applies,
    ShortcutRow, CHANNEL_BLOCK,
};
use crate::error::Error;
use crate::kernels::{self, ConvShape, Requantize, Shortcut};
use crate::quant::AddTables;
use crate::winograd;

/// Defines a function that runs one register-only instruction, `$template` with
/// operands `{a}`, `{b}` and the result `{r}`.
macro_rules! one_instruction {
    ($(#[$doc:meta])* fn $name:ident($a:ident: $ta:ty, $b:ident: $tb:ty) -> $r:ty = $template:literal) => {
        $(#[$doc])*
        #[inline(always)]
        fn $name($a: $ta, $b: $tb) -> $r {
            let result;
            // SAFETY: one instruction that reads and writes registers only; the DSP
            // extension is present (this module is compiled for `tinyres_arm_dsp`
            // targets only, see build.rs).
            unsafe {
                asm!(
                    $template,
                    r = lateout(reg) result,
                    a = in(reg) $a,
                    b = in(reg) $b,
                    options(pure, nomem, nostack, preserves_flags),
                );
            }
            result
        }
    };
}

one_instruction! {
    /// Bytes 0 and 2 of `x`, sign-extended, each added to the 16-bit lanes of `offset`.
    fn sxtab16_even(offset: u32, x: u32) -> u32 = "sxtab16 {r}, {a}, {b}"
}

one_instruction! {
    /// Bytes 1 and 3 of `x`, sign-extended, each added to the 16-bit lanes of `offset`.
    fn sxtab16_odd(offset: u32, x: u32) -> u32 = "sxtab16 {r}, {a}, {b}, ror #8"
}

one_instruction! {
    /// `x << n` for `n` in `0..=31`: one `LSL` by register (Rust's `<<` masks `n` first).
    fn lsl(x: i32, n: u32) -> i32 = "lsl {r}, {a}, {b}"
}

one_instruction! {
    /// `x >> n` (arithmetic) for `n` in `0..=31`: one `ASR` by register.
    fn asr(x: i32, n: u32) -> i32 = "asr {r}, {a}, {b}"
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
/// Filter pairs per call of [`winograd_sums`] on the Winograd path.
const WINOGRAD_PAIRS: usize = 4;
/// Input channels the Winograd path takes at most ([`conv2d_i8_winograd_with`]): its
/// four terms of three kernel rows, for two pixel pairs, fill the column buffer.
pub const WINOGRAD_CHANNELS: usize = winograd::MAX_IN_CHANNELS;
/// Words of the column buffer: two pixels' windows, two words per four taps, or the
/// Winograd path's terms of two pixel pairs (two words per four channels, per term,
/// kernel row and pair).
pub const COLUMN_WORDS: usize = if 12 * WINOGRAD_CHANNELS > WINDOW_CAPACITY {
    12 * WINOGRAD_CHANNELS
} else {
    WINDOW_CAPACITY
};
/// Taps per pixel of the byte staging used when the channels are not a multiple of
/// four and the filters padded to whole groups per tap do not fit [`STAGING_BYTES`],
/// rounded up to whole groups.
const STAGING_CAPACITY: usize = 160;
/// Bytes of the staging buffer: the staging of two pixels' windows, or a layer's
/// filters with their channels padded to a multiple of four ([`pad_filters`]): a
/// first layer's sixteen 3×3×3 filters.
const STAGING_BYTES: usize = 576;

/// One group of four taps in [`mac_2x2`]'s loop, 16 MACs: both channels' weights and
/// pixel 0's taps loaded in one run (a load after a load takes one cycle, not two),
/// the weights widened once (even and odd lanes), then pixel 0 against both channels,
/// then pixel 1.
macro_rules! mac_group {
    () => {
        concat!(
            "ldr {w1_odd}, [{w0}, {w1_offset}]\n",
            "ldr {w0_odd}, [{w0}], #4\n",
            "ldr {x_even}, [{columns}], #4\n",
            "ldr {x_odd}, [{columns}], #4\n",
            "sxtb16 {w1_even}, {w1_odd}\n",
            "sxtb16 {w1_odd}, {w1_odd}, ror #8\n",
            "sxtb16 r7, {w0_odd}\n",
            "sxtb16 {w0_odd}, {w0_odd}, ror #8\n",
            "smlad {a00}, {x_even}, r7, {a00}\n",
            "smlad {a00}, {x_odd}, {w0_odd}, {a00}\n",
            "smlad {a01}, {x_even}, {w1_even}, {a01}\n",
            "smlad {a01}, {x_odd}, {w1_odd}, {a01}\n",
            "ldrd {x_even}, {x_odd}, [{columns}], #8\n",
            "smlad {a10}, {x_even}, r7, {a10}\n",
            "smlad {a10}, {x_odd}, {w0_odd}, {a10}\n",
            "smlad {a11}, {x_even}, {w1_even}, {a11}\n",
            "smlad {a11}, {x_odd}, {w1_odd}, {a11}\n",
        )
    };
}

/// Runs `$body` (assembly text using [`mac_group`]'s operands) once, with r7 saved
/// around it; `columns` and `w0` are advanced past what it read (into `_`: dropped).
macro_rules! mac_asm {
    ($columns:ident => $columns_out:tt, $w0:ident => $w0_out:tt, $w1_offset:ident, $a:ident, [$($body:expr),+] $(, $extra:ident = $value:expr)?) => {
        asm!(
            "push {{r7}}",
            $($body),+,
            "pop {{r7}}",
            columns = inout(reg) $columns => $columns_out,
            w0 = inout(reg) $w0 => $w0_out,
            w1_offset = in(reg) $w1_offset,
            a00 = inout(reg) $a[0],
            a01 = inout(reg) $a[1],
            a10 = inout(reg) $a[2],
            a11 = inout(reg) $a[3],
            x_even = out(reg) _,
            x_odd = out(reg) _,
            w0_odd = out(reg) _,
            w1_even = out(reg) _,
            w1_odd = out(reg) _,
            $($extra = in(reg) $value,)?
            options(pure, readonly),
        )
    };
}

/// `acc[c][p] += Σ col_p[k]·w_c[k]` over `groups` groups of four taps, with
/// `columns` as laid out by [`widen_pair`] and `w1 = w0 + w1_offset`: two groups per
/// iteration of the loop (17 instructions and 16 MACs each), then the one left over.
/// [`block_sums_by_pairs`] runs the common case; this one serves odd channel counts
/// and windows rounded up to whole groups.
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
    let [[a00, a01], [a10, a11]] = *acc;
    let mut a = [a00, a01, a10, a11];
    let (mut columns, mut w0) = (columns, w0);
    let pairs = groups / 2;
    // The two blocks read `4 · groups` words from `columns` and `groups` words from
    // each filter in all, each group's after the one before.
    if pairs > 0 {
        let end = columns.wrapping_add(8 * pairs);
        // SAFETY: the caller guarantees the reads (the first `8 · pairs` words and
        // `2 · pairs` of each filter's); the block writes registers only, r7
        // included (the frame pointer, which LLVM cannot hand out: it is saved on the
        // stack and restored before the block ends; interrupts do not depend on it).
        unsafe {
            mac_asm!(
                columns => columns,
                w0 => w0,
                w1_offset,
                a,
                [
                    ".p2align 2",
                    "2:",
                    mac_group!(),
                    mac_group!(),
                    "cmp {columns}, {end}",
                    "bne 2b"
                ],
                end = end
            );
        }
    }
    if groups % 2 == 1 {
        // SAFETY: as above, for the last group.
        unsafe {
            mac_asm!(columns => _, w0 => _, w1_offset, a, [mac_group!()]);
        }
    }
    *acc = [[a[0], a[1]], [a[2], a[3]]];
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

/// Widens `source`, a run of one pixel's kernel row, into lanes `2 · pixel` and
/// `2 · pixel + 1` of `quads` (as [`widen_pair`] lays them out), as many groups as the
/// shorter holds: one load, two `SXTAB16` and two stores a group.
#[inline(always)]
fn widen_run(offset: u32, source: &[i8], quads: &mut [Quad], pixel: usize) {
    let groups = quads.len().min(source.len() / 4);
    if groups == 0 || pixel > 1 {
        return;
    }
    let out = quads.as_mut_ptr().cast::<u32>();
    // SAFETY: the loop reads `4 · groups` bytes of `source` (unaligned word loads,
    // which these cores allow) and writes words `2 · pixel` and `2 · pixel + 1` of
    // `groups` quads of `quads`, all within their slices by the `min` above; it writes
    // registers only otherwise.
    unsafe {
        asm!(
            ".p2align 2",
            "2:",
            "ldr {x}, [{source}], #4",
            "sxtab16 {t}, {offset}, {x}",
            "sxtab16 {x}, {offset}, {x}, ror #8",
            "str {t}, [{out}]",
            "str {x}, [{out}, #4]",
            "add {out}, {out}, #16",
            "cmp {out}, {end}",
            "bne 2b",
            source = inout(reg) source.as_ptr() => _,
            out = inout(reg) out.wrapping_add(2 * pixel) => _,
            end = in(reg) out.wrapping_add(2 * pixel + 4 * groups),
            offset = in(reg) offset,
            x = out(reg) _,
            t = out(reg) _,
            options(nostack),
        );
    }
}

/// Widens the words `{x}` (pixel 0) and `{y}` (pixel 1) with `{offset}` into the quad
/// at `{out}` and advances `{out}` past it: four `SXTAB16` and four stores.
macro_rules! widen_store {
    () => {
        concat!(
            "sxtab16 {t}, {offset}, {x}\n",
            "sxtab16 {x}, {offset}, {x}, ror #8\n",
            "str {t}, [{out}]\n",
            "sxtab16 {t}, {offset}, {y}\n",
            "sxtab16 {y}, {offset}, {y}, ror #8\n",
            "str {x}, [{out}, #4]\n",
            "str {t}, [{out}, #8]\n",
            "str {y}, [{out}, #12]\n",
            "add {out}, {out}, #16\n",
        )
    };
}

/// Two windows' place in the input for [`widen_windows`].
struct InputWindow {
    /// Bytes from one kernel row to the next: an input row.
    row_step: usize,
    /// Groups of four bytes in a kernel row.
    row_groups: usize,
    /// Kernel rows.
    rows: usize,
}

/// Widens the windows that start at `starts` in `input`, both whole inside it, into
/// `quads` as [`widen_pair`] lays them out: every kernel row in one assembly block
/// (two loads, four `SXTAB16` and four stores a group). False, having written
/// nothing, if a window runs past `input` or the quads do not hold it.
#[inline(always)]
fn widen_windows(
    offset: u32,
    input: &[i8],
    starts: [usize; 2],
    window: &InputWindow,
    quads: &mut [Quad],
) -> bool {
    let row_bytes = 4 * window.row_groups;
    let span = (window.rows.saturating_sub(1)) * window.row_step + row_bytes;
    let fits = |start: usize| {
        start
            .checked_add(span)
            .is_some_and(|end| end <= input.len())
    };
    if window.rows == 0
        || window.row_groups == 0
        || window.row_step < row_bytes
        || !fits(starts[0])
        || !fits(starts[1])
        || window.rows * window.row_groups > quads.len()
    {
        return false;
    }
    let base = input.as_ptr();
    // SAFETY: for each of `rows` kernel rows the loop reads `row_bytes` bytes at `start
    // + row · row_step` for both starts, all within `input` (`span` checked above;
    // unaligned word loads, which these cores allow), and writes `rows · row_groups ≤
    // quads.len()` quads of `quads` in order; registers otherwise.
    unsafe {
        asm!(
            ".p2align 2",
            "3:",
            "mov {count}, {row_groups}",
            "2:",
            "ldr {x}, [{a}], #4",
            "ldr {y}, [{b}], #4",
            widen_store!(),
            "subs {count}, {count}, #1",
            "bne 2b",
            "add {a}, {a}, {skip}",
            "add {b}, {b}, {skip}",
            "subs {rows}, {rows}, #1",
            "bne 3b",
            a = inout(reg) base.wrapping_add(starts[0]) => _,
            b = inout(reg) base.wrapping_add(starts[1]) => _,
            out = inout(reg) quads.as_mut_ptr() => _,
            rows = inout(reg) window.rows => _,
            row_groups = in(reg) window.row_groups,
            skip = in(reg) window.row_step - row_bytes,
            offset = in(reg) offset,
            count = out(reg) _,
            x = out(reg) _,
            y = out(reg) _,
            t = out(reg) _,
            options(nostack),
        );
    }
    true
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
    staging: &mut [i8; STAGING_BYTES],
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
        // Whole groups per tap: widen straight from the input, padding as zero; a
        // kernel row that both windows have whole inside the input in one run, else
        // each pixel's part of it inside the input in a run of its own.
        let per_tap = c_in / 4;
        let per_row = (shape.kernel_w * per_tap).max(1);
        let whole_rows = ox
            .iter()
            .all(|&x| shape.kernel_columns(x) == (0, shape.kernel_w));
        if whole_rows {
            if let Some(iy) = (oy * shape.stride)
                .checked_sub(shape.pad_top)
                .filter(|&iy| iy + shape.kernel_h <= shape.in_h)
            {
                // Both windows whole inside the input: one assembly block.
                let [a, b] =
                    ox.map(|x| (iy * shape.in_w + x * shape.stride - shape.pad_left) * c_in);
                let window = InputWindow {
                    row_step: shape.in_w * c_in,
                    row_groups: per_row,
                    rows: shape.kernel_h,
                };
                if widen_windows(offset, input, [a, b], &window, columns) {
                    return;
                }
            }
        }
        let rows = columns.chunks_exact_mut(per_row).take(shape.kernel_h);
        for (ky, row) in rows.enumerate() {
            let iy = (oy * shape.stride + ky)
                .checked_sub(shape.pad_top)
                .filter(|&iy| iy < shape.in_h);
            let Some(iy) = iy else {
                row.fill([0; 4]);
                continue;
            };
            let run = |x: usize, first: usize, end: usize| {
                let start = (iy * shape.in_w + x * shape.stride + first - shape.pad_left) * c_in;
                input.get(start..start + (end - first) * c_in)
            };
            if whole_rows {
                // This kernel row of both windows inside the input, in one run each.
                let [a, b] =
                    ox.map(|x| (iy * shape.in_w + x * shape.stride - shape.pad_left) * c_in);
                let one_row = InputWindow {
                    row_step: per_row * 4,
                    row_groups: per_row,
                    rows: 1,
                };
                if widen_windows(offset, input, [a, b], &one_row, row) {
                    continue;
                }
            }
            for (pixel, &x) in ox.iter().enumerate() {
                let (first, end) = shape.kernel_columns(x);
                let end = end.max(first);
                let lanes = 2 * pixel..2 * pixel + 2;
                let (inside, after) = row.split_at_mut((end * per_tap).min(row.len()));
                let (before, inside) = inside.split_at_mut((first * per_tap).min(inside.len()));
                for quad in before.iter_mut().chain(after) {
                    quad[lanes.clone()].fill(0);
                }
                match run(x, first, end) {
                    Some(source) => widen_run(offset, source, inside, pixel),
                    None => inside
                        .iter_mut()
                        .for_each(|quad| quad[lanes.clone()].fill(0)),
                }
            }
        }
    } else {
        // Stage the window's bytes first (padding, and the taps that round the window
        // up to a whole group, as the zero point, which widens to zero), then widen
        // them four at a time.
        let padded = (shape.kernel_h * shape.kernel_w * c_in).next_multiple_of(4);
        let (a, b) = staging.split_at_mut(STAGING_CAPACITY);
        for (bytes, &x) in [a, b].into_iter().zip(&ox) {
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
        let (a, b) = staging.split_at(STAGING_CAPACITY);
        let groups = a[..padded].chunks_exact(4).zip(b[..padded].chunks_exact(4));
        for (quad, (a, b)) in columns.iter_mut().zip(groups) {
            let ((a_even, a_odd), (b_even, b_odd)) = (widen(offset, a), widen(offset, b));
            *quad = [a_even, a_odd, b_even, b_odd];
        }
    }
}

/// Copies `weights` (filters of `kernel_taps` taps of `in_c` channels) into `padded`
/// with each tap's channels padded with zeros to `lanes` (`in_c` rounded up to a
/// multiple of four), for [`widen_pair_padded`]. The caller has checked that they fit.
fn pad_filters(weights: &[i8], in_c: usize, lanes: usize, padded: &mut [i8]) {
    for (to, from) in padded
        .chunks_exact_mut(lanes)
        .zip(weights.chunks_exact(in_c))
    {
        let (taps, zeros) = to.split_at_mut(in_c);
        taps.copy_from_slice(from);
        zeros.fill(0);
    }
}

/// Widens the windows of output pixels `(oy, ox[0])` and `(oy, ox[1])` into `columns`
/// for filters padded by [`pad_filters`]: each tap's `in_c` channels (not a multiple
/// of four) are read as whole words at the input pixel, the bytes past its channels
/// (the next pixel's, or zero past the input's end) widening to values whose weights
/// are zero. Padding taps widen to zero. No staging: one load and two `SXTAB16` per
/// pixel and group, where staging a first layer's window byte by byte took most of its
/// time. Not inlined, as [`widen_pair`].
#[inline(never)]
fn widen_pair_padded(
    shape: &ConvShape,
    input: &[i8],
    offset: u32,
    oy: usize,
    ox: [usize; 2],
    columns: &mut [Quad; COLUMN_WORDS / 4],
) {
    let c_in = shape.in_c;
    let groups = c_in.div_ceil(4);
    let whole_rows = groups == 1
        && ox
            .iter()
            .all(|&x| shape.kernel_columns(x) == (0, shape.kernel_w));
    let mut quad = 0;
    for ky in 0..shape.kernel_h {
        let iy = (oy * shape.stride + ky)
            .checked_sub(shape.pad_top)
            .filter(|&iy| iy < shape.in_h);
        if let (Some(iy), true) = (iy, whole_rows) {
            // Both windows' kernel rows inside the input: a word per tap, in one run.
            let run = |x: usize| {
                let start = (iy * shape.in_w + x * shape.stride - shape.pad_left) * c_in;
                input.get(start..start + (shape.kernel_w - 1) * c_in + 4)
            };
            let quads = columns.get_mut(quad..quad + shape.kernel_w);
            if let (Some(a), Some(b), Some(quads)) = (run(ox[0]), run(ox[1]), quads) {
                widen_strided(offset, a, b, c_in, quads);
                quad += shape.kernel_w;
                continue;
            }
        }
        for kx in 0..shape.kernel_w {
            // Where the input pixel under tap (ky, kx) of each output pixel starts, or
            // None in the padding.
            let [a, b] = ox.map(|x| {
                let ix = (x * shape.stride + kx).checked_sub(shape.pad_left)?;
                let iy = iy?;
                (ix < shape.in_w).then_some((iy * shape.in_w + ix) * c_in)
            });
            for g in 0..groups {
                let [(a_even, a_odd), (b_even, b_odd)] = [a, b].map(|start| match start {
                    Some(start) => {
                        let x = word_at(input, start + 4 * g);
                        (sxtab16_even(offset, x), sxtab16_odd(offset, x))
                    }
                    None => (0, 0),
                });
                if let Some(quad) = columns.get_mut(quad) {
                    *quad = [a_even, a_odd, b_even, b_odd];
                }
                quad += 1;
            }
        }
    }
}

/// Widens one word of each of `a` and `b` per quad of `quads`, the words `step` bytes
/// apart (a kernel row's taps of up to four channels), as [`widen_pair`] lays them out:
/// two loads, four `SXTAB16` and four stores a tap. Nothing if `a` or `b` is shorter
/// than the last word's end.
#[inline(always)]
fn widen_strided(offset: u32, a: &[i8], b: &[i8], step: usize, quads: &mut [Quad]) {
    let Some(last) = quads.len().checked_sub(1) else {
        return;
    };
    if a.len().min(b.len()) < last * step + 4 {
        return;
    }
    let out = quads.as_mut_ptr().cast::<u32>();
    // SAFETY: the loop reads the words at `t · step` of `a` and of `b` for `t ≤ last`,
    // within both slices as checked above (unaligned word loads, which these cores
    // allow), and writes the `last + 1` quads of `quads`; registers otherwise.
    unsafe {
        asm!(
            ".p2align 2",
            "2:",
            "ldr {x}, [{a}]",
            "ldr {y}, [{b}]",
            "add {a}, {a}, {step}",
            "add {b}, {b}, {step}",
            widen_store!(),
            "cmp {out}, {end}",
            "bne 2b",
            a = inout(reg) a.as_ptr() => _,
            b = inout(reg) b.as_ptr() => _,
            out = inout(reg) out => _,
            end = in(reg) out.wrapping_add(4 * quads.len()),
            step = in(reg) step,
            offset = in(reg) offset,
            x = out(reg) _,
            y = out(reg) _,
            t = out(reg) _,
            options(nostack),
        );
    }
}

/// The four bytes of `input` at `at` as a word; bytes past its end read as zero.
#[inline(always)]
fn word_at(input: &[i8], at: usize) -> u32 {
    match input.get(at..at + 4) {
        Some(four) => word(four),
        None => word_past_end(input, at),
    }
}

/// [`word_at`] where the word runs past the end of `input`.
#[cold]
#[inline(never)]
fn word_past_end(input: &[i8], at: usize) -> u32 {
    let mut four = [0u8; 4];
    for (to, &from) in four.iter_mut().zip(input.get(at..).unwrap_or(&[])) {
        *to = from as u8;
    }
    u32::from_le_bytes(four)
}

/// A rounded-up window reads up to three bytes past a filter: the next filter's, or
/// past the weights for the last ones, whose pair then goes through this padded copy,
/// made once for the pair it holds, not at every pixel pair.
struct Tail {
    filters: [[i8; STAGING_CAPACITY]; 2],
    holds: Option<[usize; 2]>,
}

/// The sums of output channels `channels` for the pixel pair widened in `columns`
/// (`window` taps), into `acc[pixel][channel − channels.start]`: a channel pair at a
/// time, with the channel doubled when the block's count is odd. Channel `c`'s taps
/// are the `window` bytes at `c · filter` of `weights`: a whole filter (`filter ==
/// window`), or the part of it that a chunk of kernel rows covers. Not inlined:
/// inside the convolution's loops the compiler spills the accumulators' setup around
/// every `mac_2x2`.
#[inline(never)]
fn block_sums(
    columns: &[Quad; COLUMN_WORDS / 4],
    weights: &[i8],
    (window, filter): (usize, usize),
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
    if window > filter || channels.is_empty() {
        return;
    }
    if window % 4 == 0
        && channels.len() % 2 == 0
        && channels.len() <= CHANNEL_BLOCK
        && (channels.end - 1) * filter + window <= weights.len()
    {
        let weights = &weights[channels.start * filter..];
        return block_sums_by_pairs(columns, weights, (window, filter), channels.len(), acc);
    }
    for co in channels.clone().step_by(2) {
        let pair = [co, (co + 1).min(channels.end - 1)];
        let (first, stride) = if pair[1] * filter + padded <= weights.len() {
            (&weights[pair[0] * filter..], (pair[1] - pair[0]) * filter)
        } else {
            if tail.holds != Some(pair) {
                for (copy, c) in tail.filters.iter_mut().zip(pair) {
                    copy[..window].copy_from_slice(&weights[c * filter..][..window]);
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

/// [`block_sums_by_pairs`]'s assembly block, with `$leftover` (assembly text) run
/// after each pair's loop over the groups four at a time: for each channel pair, the
/// accumulators zeroed, the groups, the four sums stored, and `w0` moved on to the
/// next pair's first filter. `$sweep` holds the outer
/// loop's state; the pointer to it stays in `x_even` where the loop does not use it,
/// and on the stack.
macro_rules! pairs_asm {
    ($sweep:ident, $weights:ident, $filter:ident, [$($leftover:expr),*]) => {
        asm!(
            "push {{r7}}",
            "push {{{x_even}}}",
            ".p2align 2",
            "3:",
            "ldr {columns}, [{x_even}]",
            "ldr {end}, [{x_even}, #4]",
            "movs {a00}, #0",
            "movs {a01}, #0",
            "movs {a10}, #0",
            "movs {a11}, #0",
            "cmp {columns}, {end}",
            "beq 4f",
            ".p2align 2",
            "2:",
            mac_group!(),
            mac_group!(),
            mac_group!(),
            mac_group!(),
            "cmp {columns}, {end}",
            "bne 2b",
            "4:",
            $($leftover,)*
            // The pair's sums stored; `w0`, past the first filter's taps, moves on to
            // the next pair's (`skip`).
            "ldr {x_even}, [sp]",
            "ldr {x_odd}, [{x_even}, #12]",
            "str {a00}, [{x_odd}]",
            "str {a01}, [{x_odd}, #4]",
            "str {a10}, [{x_odd}, #{pixel_1}]",
            "str {a11}, [{x_odd}, #{pixel_1_next}]",
            "adds {x_odd}, {x_odd}, #8",
            "str {x_odd}, [{x_even}, #12]",
            "ldr {w0_odd}, [{x_even}, #20]",
            "ldr {x_odd}, [{x_even}, #16]",
            "add {w0}, {w0}, {w0_odd}",
            "subs {x_odd}, {x_odd}, #1",
            "str {x_odd}, [{x_even}, #16]",
            "bne 3b",
            "add sp, sp, #4",
            "pop {{r7}}",
            pixel_1 = const 4 * CHANNEL_BLOCK,
            pixel_1_next = const 4 * CHANNEL_BLOCK + 4,
            columns = out(reg) _,
            w0 = inout(reg) $weights.as_ptr() => _,
            end = out(reg) _,
            w1_offset = in(reg) $filter,
            a00 = out(reg) _,
            a01 = out(reg) _,
            a10 = out(reg) _,
            a11 = out(reg) _,
            x_even = inout(reg) &raw mut $sweep => _,
            x_odd = out(reg) _,
            w0_odd = out(reg) _,
            w1_even = out(reg) _,
            w1_odd = out(reg) _,
        )
    };
}

/// What [`block_sums_by_pairs`]'s outer loop keeps in memory: its registers all serve
/// the inner loop.
#[repr(C)]
struct Sweep {
    /// The first group of the columns.
    columns: *const u32,
    /// The end of the groups taken four at a time.
    fours_end: *const u32,
    /// The end of all groups.
    end: *const u32,
    /// Where the next channel pair's pixel-0 sums go (pixel 1's `CHANNEL_BLOCK` words
    /// further).
    acc: *mut i32,
    /// Channel pairs left.
    pairs: usize,
    /// Bytes from the end of a pair's first filter's taps to the next pair's first
    /// tap: its second filter, and the rest of the first (`2 · filter − window`).
    skip: usize,
}

/// [`block_sums`] for an even number `filters` (at most [`CHANNEL_BLOCK`]) of filters
/// `filter` bytes apart in `weights`, over `window` taps of each, in whole groups (a
/// multiple of four): every channel pair in one assembly block, which resets the
/// accumulators, runs [`mac_group`] over the window (four groups per iteration, then
/// one at a time) and stores the four sums into `acc`, with no Rust code between
/// pairs.
fn block_sums_by_pairs(
    columns: &[Quad],
    weights: &[i8],
    (window, filter): (usize, usize),
    filters: usize,
    acc: &mut [[i32; CHANNEL_BLOCK]; 2],
) {
    let groups = columns.len();
    if window != 4 * groups
        || window == 0
        || window > filter
        || filters < 2
        || filters % 2 == 1
        || filters > CHANNEL_BLOCK
        || (filters - 1) * filter + window > weights.len()
    {
        return;
    }
    let first = columns.as_ptr().cast::<u32>();
    let mut sweep = Sweep {
        columns: first,
        fours_end: first.wrapping_add(16 * (groups / 4)),
        end: first.wrapping_add(4 * groups),
        acc: acc.as_mut_ptr().cast::<i32>(),
        pairs: filters / 2,
        skip: 2 * filter - window,
    };
    // SAFETY: for each pair `i < filters / 2 ≤ CHANNEL_BLOCK / 2` the block reads the
    // `4 · groups` words of `columns` (4-byte aligned, as its `u32`s are) and `window =
    // 4 · groups` bytes of each of the pair's two filters (at `2i · filter` and one
    // `filter` further; unaligned word loads, which these cores allow), all within
    // `weights` (the last filter's taps end at `(filters − 1) · filter + window`,
    // checked above); it writes the pair's four sums to `acc[0][2i..2i + 2]` and
    // `acc[1][2i..2i + 2]`, and the `sweep` it was handed. r7 (the frame pointer,
    // which LLVM cannot hand out) is saved and restored around the block, as is the
    // pointer to `sweep` it pushes; the stack is back where it was when the block
    // ends. A window of at least four groups, a multiple of four, skips the leftover
    // loop (`groups % 4 == 0` there).
    unsafe {
        if groups % 4 == 0 {
            pairs_asm!(sweep, weights, filter, []);
        } else {
            pairs_asm!(
                sweep,
                weights,
                filter,
                [
                    // The groups left over, one at a time.
                    "ldr {x_even}, [sp]",
                    "ldr {end}, [{x_even}, #8]",
                    "cmp {columns}, {end}",
                    "beq 6f",
                    ".p2align 2",
                    "5:",
                    mac_group!(),
                    "cmp {columns}, {end}",
                    "bne 5b",
                    "6:"
                ]
            );
        }
    }
}

/// One group of four channels of a unit of [`winograd_sums`]: the two filters' term
/// words, then each pixel pair's term words (`columns` moves on 64 bytes, to the
/// group's next kernel row or channels), eight `SMLAD` into `a00..a11`.
macro_rules! winograd_group {
    () => {
        concat!(
            "ldr {u0_even}, [{filters}], #4\n",
            "ldr {u0_odd}, [{filters}], #4\n",
            "ldr {u1_even}, [{filters}], #4\n",
            "ldr {u1_odd}, [{filters}], #4\n",
            "ldr {x_even}, [{columns}], #4\n",
            "ldr {x_odd}, [{columns}], #4\n",
            "smlad {a00}, {x_even}, {u0_even}, {a00}\n",
            "smlad {a00}, {x_odd}, {u0_odd}, {a00}\n",
            "smlad {a01}, {x_even}, {u1_even}, {a01}\n",
            "smlad {a01}, {x_odd}, {u1_odd}, {a01}\n",
            "ldrd {x_even}, {x_odd}, [{columns}], #56\n",
            "smlad {a10}, {x_even}, {u0_even}, {a10}\n",
            "smlad {a10}, {x_odd}, {u0_odd}, {a10}\n",
            "smlad {a11}, {x_even}, {u1_even}, {a11}\n",
            "smlad {a11}, {x_odd}, {u1_odd}, {a11}\n",
        )
    };
}

/// What [`winograd_sums`]' loop over units keeps in memory.
#[repr(C)]
struct WinogradSweep {
    /// The first group of the next unit's term.
    next: *const u32,
    /// The first group of term 4, which is term 0's (16 bytes past term 3's).
    wrap: *const u32,
    /// The first group of term 0.
    first: *const u32,
    /// Bytes from a term's first group to its end (64 a group).
    span: usize,
    /// Where the next unit's four sums go.
    sums: *mut i32,
    /// Units left.
    units: usize,
}

/// The Winograd sums of four pixels ([`winograd_inputs`]' `columns`, `in_c` input
/// channels) for `pairs` filter pairs whose filters start `filters` (as
/// [`crate::winograd`] stores them): for each filter pair `p` and each term `k`, a
/// unit of eight `SMLAD` per group of four channels (four groups per iteration, 15
/// instructions each), into `sums[16·p + 4·k..][..4]` as (pixel pair 0 with the first
/// filter, pixel pair 0 with the second, pixel pair 1 with the first, pixel pair 1
/// with the second).
fn winograd_sums(columns: &[Quad], filters: &[u8], in_c: usize, pairs: usize, sums: &mut [i32]) {
    let term_groups = 3 * (in_c / 4);
    if in_c % 16 != 0
        || in_c == 0
        || pairs == 0
        || columns.len() < 4 * term_groups
        || filters.len() < pairs * 48 * in_c
        || sums.len() < 16 * pairs
    {
        return;
    }
    let first = columns.as_ptr().cast::<u32>();
    let mut sweep = WinogradSweep {
        next: first,
        wrap: first.wrapping_add(16),
        first,
        span: 64 * term_groups,
        sums: sums.as_mut_ptr(),
        units: 4 * pairs,
    };
    // SAFETY: unit `u < 4 · pairs` reads the four words of term `k = u % 4` in each of
    // the `term_groups` groups of `columns` (at `16 · (4g + k)`: in bounds, `columns`
    // holds `4 · term_groups` quads, checked above; 4-byte aligned as its `u32`s are,
    // which `LDRD` needs) and the next `16 · term_groups`
    // bytes of `filters` (unaligned word loads, which these cores allow; `pairs · 48
    // · in_c` bytes in all, checked above), and writes four sums at `sums[4u..]`
    // (`16 · pairs` in all, checked) and the `sweep` it was handed. It pushes the
    // pointer to `sweep` and pops it before it ends. `term_groups` is a multiple of
    // four (`in_c` of 16), so each unit's loop runs whole iterations.
    unsafe {
        asm!(
            "push {{{x_even}}}",
            ".p2align 2",
            "3:",
            // This unit's term, and the next unit's: the next term, or term 0.
            "ldr {columns}, [{x_even}]",
            "ldr {end}, [{x_even}, #4]",
            "adds {x_odd}, {columns}, #16",
            "cmp {x_odd}, {end}",
            "it eq",
            "ldreq {x_odd}, [{x_even}, #8]",
            "str {x_odd}, [{x_even}]",
            "ldr {x_odd}, [{x_even}, #12]",
            "add {end}, {columns}, {x_odd}",
            "movs {a00}, #0",
            "movs {a01}, #0",
            "movs {a10}, #0",
            "movs {a11}, #0",
            ".p2align 2",
            "2:",
            winograd_group!(),
            winograd_group!(),
            winograd_group!(),
            winograd_group!(),
            "cmp {columns}, {end}",
            "bne 2b",
            "ldr {x_even}, [sp]",
            "ldr {x_odd}, [{x_even}, #16]",
            "str {a00}, [{x_odd}], #4",
            "str {a01}, [{x_odd}], #4",
            "str {a10}, [{x_odd}], #4",
            "str {a11}, [{x_odd}], #4",
            "str {x_odd}, [{x_even}, #16]",
            "ldr {x_odd}, [{x_even}, #20]",
            "subs {x_odd}, {x_odd}, #1",
            "str {x_odd}, [{x_even}, #20]",
            "bne 3b",
            "add sp, sp, #4",
            columns = out(reg) _,
            filters = inout(reg) filters.as_ptr() => _,
            end = out(reg) _,
            a00 = out(reg) _,
            a01 = out(reg) _,
            a10 = out(reg) _,
            a11 = out(reg) _,
            x_even = inout(reg) &raw mut sweep => _,
            x_odd = out(reg) _,
            u0_even = out(reg) _,
            u0_odd = out(reg) _,
            u1_even = out(reg) _,
            u1_odd = out(reg) _,
        );
    }
}

/// One lane (`$lane`: `""` even channels, `", ror #8"` odd) of [`winograd_inputs`]'
/// group: the six pixels' words loaded through their pointers, widened, and the
/// eight terms (four of each pixel pair) stored at `$at` bytes into their quads.
macro_rules! winograd_lane {
    ($lane:literal, $at:literal) => {
        concat!(
            "ldr {w0}, [{pixels}]\n",
            "ldr {w1}, [{pixels}, #4]\n",
            "ldr {w2}, [{pixels}, #8]\n",
            "ldr {w3}, [{pixels}, #12]\n",
            "ldr {w4}, [{pixels}, #16]\n",
            "ldr {w5}, [{pixels}, #20]\n",
            "ldr {w0}, [{w0}, {group}]\n",
            "ldr {w1}, [{w1}, {group}]\n",
            "ldr {w2}, [{w2}, {group}]\n",
            "ldr {w3}, [{w3}, {group}]\n",
            "ldr {w4}, [{w4}, {group}]\n",
            "ldr {w5}, [{w5}, {group}]\n",
            "sxtab16 {w0}, {offset}, {w0}",
            $lane,
            "\n",
            "sxtab16 {w1}, {offset}, {w1}",
            $lane,
            "\n",
            "sxtab16 {w2}, {offset}, {w2}",
            $lane,
            "\n",
            "sxtab16 {w3}, {offset}, {w3}",
            $lane,
            "\n",
            "sxtab16 {w4}, {offset}, {w4}",
            $lane,
            "\n",
            "sxtab16 {w5}, {offset}, {w5}",
            $lane,
            "\n",
            "ssub16 {t}, {w0}, {w2}\n",
            "str {t}, [{out}, #",
            $at,
            "]\n",
            "sadd16 {t}, {w1}, {w2}\n",
            "str {t}, [{out}, #16 + ",
            $at,
            "]\n",
            "ssub16 {t}, {w2}, {w1}\n",
            "str {t}, [{out}, #32 + ",
            $at,
            "]\n",
            "ssub16 {t}, {w1}, {w3}\n",
            "str {t}, [{out}, #48 + ",
            $at,
            "]\n",
            "ssub16 {t}, {w2}, {w4}\n",
            "str {t}, [{out}, #8 + ",
            $at,
            "]\n",
            "sadd16 {t}, {w3}, {w4}\n",
            "str {t}, [{out}, #24 + ",
            $at,
            "]\n",
            "ssub16 {t}, {w4}, {w3}\n",
            "str {t}, [{out}, #40 + ",
            $at,
            "]\n",
            "ssub16 {t}, {w3}, {w5}\n",
            "str {t}, [{out}, #56 + ",
            $at,
            "]\n",
        )
    };
}

/// The Winograd terms of output pixels `x0..x0 + 4` of row `oy` (two pairs) into
/// `columns`: for kernel row `r` and group `g` of four channels, the four quads at
/// `4 · (r · groups + g)`, one a term `k`, each `[pair 0 even channels, pair 0 odd,
/// pair 1 even, pair 1 odd]` of `V_k` ([`crate::winograd`]), the inputs widened to
/// `x − zero_point`. Each kernel row runs in one assembly block over six pixel
/// pointers, the input's pixels or `padding` (a pixel of zero points, which widen to
/// zero) where the window leaves the input. The caller has checked the shapes
/// ([`conv2d_i8_winograd_with`]).
#[inline(never)]
fn winograd_inputs(
    shape: &ConvShape,
    input: &[i8],
    offset: u32,
    padding: &[i8],
    (oy, x0): (usize, usize),
    columns: &mut [Quad; COLUMN_WORDS / 4],
) {
    let in_c = shape.in_c;
    let groups = in_c / 4;
    if in_c == 0 || padding.len() != in_c || in_c % 4 != 0 || 12 * groups > columns.len() {
        return;
    }
    if input.len() < shape.in_h * shape.in_w * in_c {
        return;
    }
    for row in 0..3 {
        // Row and column indices that wrap below zero fail the `<` tests as those
        // past the end do.
        let iy = (oy + row).wrapping_sub(shape.pad_top);
        let first = (x0 as isize - shape.pad_left as isize) * in_c as isize;
        let row_start = input
            .as_ptr()
            .wrapping_add(iy.wrapping_mul(shape.in_w * in_c));
        let pixels: [*const i8; 6] = core::array::from_fn(|j| {
            let ix = (x0 + j).wrapping_sub(shape.pad_left);
            if iy < shape.in_h && ix < shape.in_w {
                row_start.wrapping_offset(first + (j * in_c) as isize)
            } else {
                padding.as_ptr()
            }
        });
        let out = columns[4 * row * groups..].as_mut_ptr().cast::<u32>();
        // SAFETY: each of the six pointers is valid for `in_c` bytes: a pixel `(iy,
        // ix)` of `input` with `iy < in_h` and `ix < in_w`, whose `in_h · in_w · in_c`
        // bytes `input` holds (checked), or `padding`, whose length is `in_c`
        // (checked); the block reads the
        // word at each `group < in_c` (unaligned word loads, which these cores
        // allow) and writes 16 words a group from `out`: quads `4 · row · groups ..
        // 4 · (row + 1) · groups` of `columns`, within its `12 · groups` (checked).
        unsafe {
            asm!(
                ".p2align 2",
                "2:",
                winograd_lane!("", "0"),
                winograd_lane!(", ror #8", "4"),
                "adds {group}, {group}, #4",
                "adds {out}, {out}, #64",
                "cmp {group}, {end}",
                "bne 2b",
                pixels = in(reg) pixels.as_ptr(),
                group = inout(reg) 0usize => _,
                end = in(reg) in_c,
                out = inout(reg) out => _,
                offset = in(reg) offset,
                t = out(reg) _,
                w0 = out(reg) _,
                w1 = out(reg) _,
                w2 = out(reg) _,
                w3 = out(reg) _,
                w4 = out(reg) _,
                w5 = out(reg) _,
                options(nostack),
            );
        }
    }
}

/// [`conv2d_i8_with`] for a layer with Winograd filters (`filters`, as
/// [`crate::winograd`] stores them): output pixels four at a time (two pairs), each
/// pair from four terms of three kernel rows instead of two pixels' nine taps, 1.5×
/// fewer `SMLAD`s that read 16-bit filter terms instead of widening int8 weights;
/// bit-identical results. A layer this path does not take (a row width not a multiple
/// of four, filters of the wrong size for the shape, a zero point outside int8) goes
/// to [`conv2d_i8_with`].
#[allow(clippy::too_many_arguments)]
pub fn conv2d_i8_winograd_with(
    scratch: &mut ConvScratch,
    shape: &ConvShape,
    input: &[i8],
    input_zero_point: i32,
    weights: &[i8],
    filters: &[u8],
    bias: &[i32],
    requant: &Requantize<'_>,
    residual: Option<(Shortcut<'_, i8>, &AddTables)>,
    output: &mut [i8],
) -> Result<(), Error> {
    let (in_c, out_c) = (shape.in_c, shape.out_c);
    let takes = winograd::applies(shape) && filters.len() == winograd::filters_bytes(in_c, out_c);
    let (true, Some(zero_point), Some(offset)) = (
        takes,
        i8::try_from(input_zero_point).ok(),
        lane_offset(input_zero_point),
    ) else {
        return conv2d_i8_with(
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
    };
    kernels::check_conv_i8(shape, input, weights, bias, requant, residual, output)?;
    let zero_point = (zero_point, offset);
    conv2d_i8_winograd(
        scratch, shape, input, zero_point, filters, bias, requant, residual, output,
    );
    Ok(())
}

/// [`conv2d_i8_winograd_with`] once it has checked the arguments and found that the
/// path takes the layer. Not inlined: its frame (the padding pixel, the sums) then
/// exists only while it runs, not under every convolution of the engine.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn conv2d_i8_winograd(
    scratch: &mut ConvScratch,
    shape: &ConvShape,
    input: &[i8],
    (zero_point, offset): (i8, u32),
    filters: &[u8],
    bias: &[i32],
    requant: &Requantize<'_>,
    residual: Option<(Shortcut<'_, i8>, &AddTables)>,
    output: &mut [i8],
) {
    let (in_c, out_c) = (shape.in_c, shape.out_c);
    let padding = [zero_point; WINOGRAD_CHANNELS];
    let padding = &padding[..in_c];
    let finish = Finish::new(requant, residual);
    let ConvScratch {
        columns,
        acc,
        second_pair,
        ..
    } = scratch;
    // The pixel pairs' sums (each as `acc` is for the pixel pair of the other path).
    let mut pixel_pairs = [acc, second_pair];
    // The four terms' sums of each (pixel pair, filter) of `WINOGRAD_PAIRS` filter
    // pairs, from one call of `winograd_sums`.
    let mut sums = [0i32; 16 * WINOGRAD_PAIRS];
    let pair_bytes = 48 * in_c;
    for oy in 0..shape.out_h {
        for x0 in (0..shape.out_w).step_by(4) {
            winograd_inputs(shape, input, offset, padding, (oy, x0), columns);
            for block in (0..out_c).step_by(CHANNEL_BLOCK) {
                let channels = block..(block + CHANNEL_BLOCK).min(out_c);
                for first in (channels.start..channels.end).step_by(2 * WINOGRAD_PAIRS) {
                    let pairs = WINOGRAD_PAIRS.min((channels.end - first) / 2);
                    winograd_sums(
                        columns,
                        &filters[first / 2 * pair_bytes..],
                        in_c,
                        pairs,
                        &mut sums,
                    );
                    // Each pair's four terms of each (pixel pair, filter) into the
                    // pair's two outputs: halving exact (module winograd).
                    for (filter_pair, terms) in sums.chunks_exact(16).take(pairs).enumerate() {
                        for j in 0..4 {
                            let m = [terms[j], terms[4 + j], terms[8 + j], terms[12 + j]];
                            let (pixel_pair, c) = (
                                &mut pixel_pairs[j / 2],
                                first - block + 2 * filter_pair + j % 2,
                            );
                            pixel_pair[0][c] = m[0].wrapping_add(m[1]).wrapping_add(m[2]) >> 1;
                            pixel_pair[1][c] = m[1].wrapping_sub(m[2]).wrapping_sub(m[3]) >> 1;
                        }
                    }
                }
                for (half, pixel_pair) in pixel_pairs.iter().enumerate() {
                    let x = x0 + 2 * half;
                    finish.pixels(
                        &pixel_pair[..],
                        [x, x + 1],
                        oy,
                        shape,
                        bias,
                        channels.clone(),
                        output,
                    );
                }
            }
        }
    }
}

/// The memory the convolution works in besides its input and output (4.6 KiB): the
/// widened columns (or the Winograd path's terms), the staged odd taps and the
/// accumulators. The caller owns it
/// and passes it to every call (see [`crate::arch::ConvScratch`]); what it holds
/// between calls does not matter.
#[derive(Clone, Debug)]
pub struct ConvScratch {
    columns: [Quad; COLUMN_WORDS / 4],
    staging: [i8; STAGING_BYTES],
    acc: [[i32; CHANNEL_BLOCK]; 2],
    /// The Winograd path's sums of its second pixel pair (`acc` holds the first's).
    second_pair: [[i32; CHANNEL_BLOCK]; 2],
}

impl ConvScratch {
    /// A zeroed scratch.
    pub const fn new() -> Self {
        ConvScratch {
            columns: [[0; 4]; COLUMN_WORDS / 4],
            staging: [0; STAGING_BYTES],
            acc: [[0; CHANNEL_BLOCK]; 2],
            second_pair: [[0; CHANNEL_BLOCK]; 2],
        }
    }
}

impl Default for ConvScratch {
    fn default() -> Self {
        Self::new()
    }
}

/// `ssat #8`: `x` saturated to `-128..=127`.
#[inline(always)]
fn saturate_i8(x: i32) -> i8 {
    let result: i32;
    // SAFETY: a register-only saturation; the DSP extension's Q flag is not read.
    unsafe {
        asm!(
            "ssat {r}, #8, {x}",
            r = lateout(reg) result,
            x = in(reg) x,
            options(pure, nomem, nostack),
        );
    }
    result as i8
}

/// A quantized multiplier `M ≥ 0` whose shift `−r` is in `-31..=-2` (a right shift
/// of 2 to 31 bits), decoded for [`Rescale::apply`]. Real layers scale down by far
/// more than 4 (TFLite's convolution multipliers are `≥ 0`); [`finish_row_dsp_applies`]
/// sends other layers to the scalar finish.
#[derive(Clone, Copy)]
struct Rescale {
    multiplier: i32,
    /// `2^(r − 2)`: the high word of the rounding constant `2^30 + 2^(30 + r)`.
    rounding: i32,
    /// `r − 1`: the shift that takes the high word to the result.
    shift: u32,
}

/// Whether [`Rescale`] takes a multiplier and shift.
fn rescale_applies(multiplier: i32, shift: i32) -> bool {
    multiplier >= 0 && (-31..=-2).contains(&shift)
}

impl Rescale {
    #[inline(always)]
    fn new(multiplier: i32, shift: i32) -> Self {
        // `shift` is negative: `-shift` without `abs`'s test of its sign.
        let right = shift.wrapping_neg() as u32;
        Rescale {
            multiplier,
            rounding: lsl(1, right - 2),
            shift: right - 1,
        }
    }

    /// `x` times the multiplier: the value of
    /// [`crate::quant::multiply_by_quantized_multiplier`] (TFLite's two roundings), as
    /// one 64-bit sum. With `P = x·M` and `h = ⌊(P + 2^30) / 2^31⌋` (the doubling high
    /// multiply), TFLite's result is `⌊(h + 2^(r−1) − [h < 0]) / 2^r⌋`, which is
    /// `⌊(P + 2^30 + 2^(30+r) − [h < 0]·2^31) / 2^(31+r)⌋` (a floor of a floor), and
    /// `[h < 0]` may be `[x < 0]` (where they differ, `P ∈ [−2^30, 0)`, both sums
    /// round to 0 for `r ≥ 1`; `M ≥ 0`). The sum starts at that constant, minus
    /// `2^31` where `x < 0`, takes `P` in one `SMLAL`, and its high word shifted right
    /// by `r − 1` is the result (`31 + r ≥ 32`). The selftest checks it against the
    /// portable kernel on the boards, shifts of −12..=−2 in a third of its cases.
    #[inline(always)]
    fn apply(self, x: i32) -> i32 {
        let low = (x as u32 & 0x8000_0000) | 0x4000_0000;
        let high = self.rounding + (x >> 31);
        let start = (i64::from(high) << 32) | i64::from(low);
        let sum = start + i64::from(x) * i64::from(self.multiplier);
        asr((sum >> 32) as i32, self.shift)
    }
}

/// `value + zero_point` clamped to `min..=max` and cast to int8, as the portable
/// kernel finishes an output: with `FULL_RANGE` (`min` −128, `max` 127: no ReLU, or a
/// ReLU whose zero is −128) one `SSAT`.
#[inline(always)]
fn to_i8<const FULL_RANGE: bool>(value: i32, zero_point: i32, min: i32, max: i32) -> i8 {
    let value = value.saturating_add(zero_point);
    if FULL_RANGE {
        saturate_i8(value)
    } else {
        value.max(min).min(max) as i8
    }
}

/// Whether [`finish_row_dsp`] applies: the layer's requantization and the add's, if
/// any, checked as [`vector_finish_applies`] and [`AddTables::output_is_checked`] say
/// (true of every blob that validates), and every multiplier and shift in
/// [`Rescale`]'s range.
fn finish_row_dsp_applies(requant: &Requantize<'_>, add: Option<&AddTables>) -> bool {
    vector_finish_applies(requant, add.map(|add| &add.params))
        && add.is_none_or(|add| {
            add.output_is_checked()
                && rescale_applies(add.params.output_multiplier, add.params.output_shift)
        })
        && requant.multipliers.len() == requant.shifts.len()
        && (requant.multipliers.iter().zip(requant.shifts))
            .all(|(&multiplier, &shift)| rescale_applies(multiplier, shift))
}

/// `out[i] = requantize(acc[i] + bases[i])` with channel `i`'s multiplier and shift,
/// for an output range narrower than int8 (a clamp).
#[inline(always)]
fn requantize_row_clamped(
    acc: &[i32],
    bases: &[i32],
    multipliers: &[i32],
    shifts: &[i32],
    requant: &Requantize<'_>,
    out: &mut [i8],
) {
    let zero_point = requant.output_zero_point;
    let (min, max) = (requant.activation_min, requant.activation_max);
    let values = acc.iter().zip(bases).zip(multipliers.iter().zip(shifts));
    for (out, ((&acc, &base), (&multiplier, &shift))) in out.iter_mut().zip(values) {
        let value = Rescale::new(multiplier, shift).apply(acc.wrapping_add(base));
        *out = to_i8::<false>(value, zero_point, min, max);
    }
}

/// [`Rescale::apply`] of `{x}` and [`to_i8`]'s `QADD` and `SSAT` in assembly, given
/// the rounding's high word `2^(r − 2)` in the register `$rounding` names and `r − 1`
/// in `{shift}`; the byte stored at `{out} + {i}`, and `{i}` counted up (flags set).
macro_rules! rescale_store {
    ($rounding:literal) => {
        concat!(
            // The high word less one where x < 0; the low word `2^30`, plus `2^31`
            // where x < 0.
            "add {high}, ",
            $rounding,
            ", {x}, asr #31\n",
            "and {low}, {x}, #0x80000000\n",
            "orr {low}, {low}, #0x40000000\n",
            "smlal {low}, {high}, {x}, {multiplier}\n",
            "asr {high}, {high}, {shift}\n",
            "qadd {high}, {high}, {zero_point}\n",
            "ssat {high}, #8, {high}\n",
            "strb {high}, [{out}, {i}]\n",
            "adds {i}, {i}, #1\n",
        )
    };
}

/// One output of [`requantize_row_full_range`]'s loop.
macro_rules! requantize_one {
    () => {
        concat!(
            "ldr {x}, [{acc}, {i}, lsl #2]\n",
            "ldr {high}, [{bases}, {i}, lsl #2]\n",
            "ldr {multiplier}, [{multipliers}, {i}, lsl #2]\n",
            "ldr {shift}, [{shifts}, {i}, lsl #2]\n",
            "add {x}, {x}, {high}\n",
            // shift = −r: `r − 1`, then the rounding's high word `2^(r − 2)`.
            "mvn {shift}, {shift}\n",
            "sub {high}, {shift}, #1\n",
            "lsl {high}, {one}, {high}\n",
            rescale_store!("{high}"),
        )
    };
}

/// [`requantize_row_clamped`] for the whole int8 range, in assembly: [`Rescale::apply`]
/// and [`to_i8`]'s `QADD` and `SSAT`, 17 instructions an output with the decoding of
/// the shift, two outputs an iteration, whatever registers the compiler would have
/// given the loop. Every `shifts[i]` must be in [`Rescale`]'s range, as
/// [`finish_row_dsp_applies`] checks.
#[inline(always)]
fn requantize_row_full_range(
    acc: &[i32],
    bases: &[i32],
    multipliers: &[i32],
    shifts: &[i32],
    zero_point: i32,
    out: &mut [i8],
) {
    let n = out
        .len()
        .min(acc.len())
        .min(bases.len())
        .min(multipliers.len())
        .min(shifts.len());
    if n == 0 {
        return;
    }
    // The loop counts `i` from −n up to 0 and reads element `n + i` through pointers
    // one past the `n`th element.
    let end = |slice: &[i32]| slice[n..].as_ptr();
    // SAFETY: the loop reads elements 0..n of the four input slices and writes bytes
    // 0..n of `out`, all of which exist (`n` is the shortest length); the pointers are
    // one past element n − 1 of each, and `i` runs over −n..0. The flags and the DSP
    // extension's Q flag (set by a saturating `QADD`) are not read after the block.
    unsafe {
        asm!(
            // Two outputs an iteration; an odd count enters at the second.
            "tst {i}, #1",
            "bne 3f",
            ".p2align 2",
            "2:",
            requantize_one!(),
            "3:",
            requantize_one!(),
            "bne 2b",
            acc = in(reg) end(acc),
            bases = in(reg) end(bases),
            multipliers = in(reg) end(multipliers),
            shifts = in(reg) end(shifts),
            out = in(reg) out[n..].as_mut_ptr(),
            i = inout(reg) n.wrapping_neg() => _,
            one = in(reg) 1u32,
            zero_point = in(reg) zero_point,
            x = out(reg) _,
            high = out(reg) _,
            low = out(reg) _,
            multiplier = out(reg) _,
            shift = out(reg) _,
            options(nostack),
        );
    }
}

/// `out[i] = add(values[i], shortcut[i])` as [`AddTables::add`] computes it, for
/// tables whose [`AddTables::output_is_checked`] and an output range narrower than
/// int8 (a clamp); `shortcut` `None` reads it from `out` itself (an in-place
/// residual).
#[inline(always)]
fn add_row_clamped(values: &[i8], shortcut: Option<&[i8]>, add: &AddTables, out: &mut [i8]) {
    let (first, second) = add.input_tables();
    let p = &add.params;
    let rescale = Rescale::new(p.output_multiplier, p.output_shift);
    let (zero_point, min, max) = (p.output_zero_point, p.activation_min, p.activation_max);
    let sum = |value: i8, shortcut: i8| {
        let rescaled =
            first[usize::from(value as u8)].saturating_add(second[usize::from(shortcut as u8)]);
        to_i8::<false>(rescale.apply(rescaled), zero_point, min, max)
    };
    match shortcut {
        None => {
            for (out, &value) in out.iter_mut().zip(values) {
                *out = sum(value, *out);
            }
        }
        Some(shortcut) => {
            for ((out, &value), &shortcut) in out.iter_mut().zip(values).zip(shortcut) {
                *out = sum(value, shortcut);
            }
        }
    }
}

/// [`add_row_clamped`] for the whole int8 range, in assembly: the two tables' sum
/// (`QADD`), [`Rescale::apply`] and [`to_i8`]'s `QADD` and `SSAT`, 15 instructions an
/// output. The add's output multiplier and shift must be in [`Rescale`]'s range, as
/// [`finish_row_dsp_applies`] checks.
#[inline(always)]
fn add_row_full_range(values: &[i8], shortcut: Option<&[i8]>, add: &AddTables, out: &mut [i8]) {
    let (first, second) = add.input_tables();
    let p = &add.params;
    let rescale = Rescale::new(p.output_multiplier, p.output_shift);
    let n = out
        .len()
        .min(values.len())
        .min(shortcut.map_or(usize::MAX, <[i8]>::len));
    if n == 0 {
        return;
    }
    // The loop counts `i` from −n up to 0 through pointers one past the `n`th byte; an
    // in-place shortcut is `out` itself, each byte read before it is written.
    let out_end = out[n..].as_mut_ptr();
    let shortcut_end = shortcut.map_or(out_end.cast_const(), |s| s[n..].as_ptr());
    // SAFETY: the loop reads bytes 0..n of `values` and of the shortcut (`out` where
    // in place) and writes bytes 0..n of `out`, all of which exist (`n` is the
    // shortest length), and reads the tables at a byte's unsigned value, below their
    // 256 entries. The flags and the Q flag are not read after the block.
    unsafe {
        asm!(
            ".p2align 2",
            "2:",
            "ldrb {x}, [{values}, {i}]",
            "ldrb {high}, [{shortcut}, {i}]",
            "ldr {x}, [{first}, {x}, lsl #2]",
            "ldr {high}, [{second}, {high}, lsl #2]",
            "qadd {x}, {x}, {high}",
            rescale_store!("{rounding}"),
            "bne 2b",
            values = in(reg) values[n..].as_ptr(),
            shortcut = in(reg) shortcut_end,
            out = in(reg) out_end,
            i = inout(reg) n.wrapping_neg() => _,
            first = in(reg) first.as_ptr(),
            second = in(reg) second.as_ptr(),
            rounding = in(reg) rescale.rounding,
            multiplier = in(reg) rescale.multiplier,
            shift = in(reg) rescale.shift,
            zero_point = in(reg) p.output_zero_point,
            x = out(reg) _,
            high = out(reg) _,
            low = out(reg) _,
            options(nostack),
        );
    }
}

/// Whether a layer's output range is exactly the whole of int8 (see [`to_i8`]; a
/// wider range clamps, then wraps in `as i8`, as the portable kernel does).
fn full_range(min: i32, max: i32) -> bool {
    min == -128 && max == 127
}

/// [`finish_row_scalar`] for a layer that [`finish_row_dsp_applies`] to, over the
/// pixels of a pair at once (one call, one set of checks and buffers): the same
/// results. Pixel `p` finishes `acc[p]` into `out[p · out_c..][channels]` with
/// `shortcuts[p]`. With a residual add in two passes, the requantized row into a
/// buffer and then the add, so that each loop keeps its constants in registers.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn finish_pixels_dsp(
    acc: &[[i32; CHANNEL_BLOCK]],
    bases: &[i32],
    channels: Range<usize>,
    requant: &Requantize<'_>,
    add: Option<&AddTables>,
    shortcuts: [ShortcutRow<'_>; 2],
    out: &mut [i8],
    out_c: usize,
) {
    let (Some(multipliers), Some(shifts)) = (
        requant.multipliers.get(channels.clone()),
        requant.shifts.get(channels.clone()),
    ) else {
        return;
    };
    let width = channels.len().min(CHANNEL_BLOCK);
    let conv_full = full_range(requant.activation_min, requant.activation_max);
    let zero_point = requant.output_zero_point;
    let pixels = acc.iter().zip(out.chunks_exact_mut(out_c));
    let Some(add) = add else {
        for (acc, out) in pixels {
            let Some(out) = out.get_mut(channels.clone()) else {
                return;
            };
            if conv_full {
                requantize_row_full_range(acc, bases, multipliers, shifts, zero_point, out);
            } else {
                requantize_row_clamped(acc, bases, multipliers, shifts, requant, out);
            }
        }
        return;
    };
    let add_full = full_range(add.params.activation_min, add.params.activation_max);
    let mut values = [0i8; CHANNEL_BLOCK];
    let values = &mut values[..width];
    // The shortcut's channels, where they are not the output's own.
    let mut mapped = [0i8; CHANNEL_BLOCK];
    for ((acc, out), shortcut) in pixels.zip(shortcuts) {
        let Some(out) = out.get_mut(channels.clone()) else {
            return;
        };
        if conv_full {
            requantize_row_full_range(acc, bases, multipliers, shifts, zero_point, values);
        } else {
            requantize_row_clamped(acc, bases, multipliers, shifts, requant, values);
        }
        let shortcut = match shortcut {
            ShortcutRow::None | ShortcutRow::InPlace => None,
            ShortcutRow::Mapped(row, offset) => {
                let direct = channels
                    .start
                    .checked_sub(offset)
                    .and_then(|start| row.get(start..start + width));
                Some(direct.unwrap_or_else(|| {
                    for (value, co) in mapped.iter_mut().zip(channels.clone()) {
                        *value = ShortcutRow::mapped(row, offset, co, add);
                    }
                    &mapped[..width]
                }))
            }
        };
        if add_full {
            add_row_full_range(values, shortcut, add, out);
        } else {
            add_row_clamped(values, shortcut, add, out);
        }
    }
}

/// A row finish of [`finish_row_scalar`]'s signature.
type FinishRow = fn(
    &[i32],
    &[i32],
    Range<usize>,
    &Requantize<'_>,
    Option<&AddTables>,
    ShortcutRow<'_>,
    &mut [i8],
);

/// How a layer's sums become its outputs (requantized, a residual added), decided
/// once per call: [`finish_pixels_dsp`] where it applies, else the layer's row finish.
struct Finish<'r, 'a> {
    requant: &'r Requantize<'a>,
    residual: Option<(Shortcut<'r, i8>, &'r AddTables)>,
    dsp: bool,
    row: FinishRow,
}

impl<'r, 'a> Finish<'r, 'a> {
    fn new(
        requant: &'r Requantize<'a>,
        residual: Option<(Shortcut<'r, i8>, &'r AddTables)>,
    ) -> Self {
        let add = residual.map(|(_, add)| add);
        let row: FinishRow = if layer_is_checked(requant) {
            finish_row_checked_layer
        } else {
            finish_row_scalar
        };
        Finish {
            requant,
            residual,
            dsp: finish_row_dsp_applies(requant, add),
            row,
        }
    }

    /// Finishes `acc[p]`, the sums of output channels `channels`, into output pixel
    /// `(oy, pixels[p])` of `output`; once when both are the same pixel (an odd last
    /// column).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn pixels(
        &self,
        acc: &[[i32; CHANNEL_BLOCK]],
        pixels: [usize; 2],
        oy: usize,
        shape: &ConvShape,
        bias: &[i32],
        channels: Range<usize>,
        output: &mut [i8],
    ) {
        let out_c = shape.out_c;
        let distinct = if pixels[0] == pixels[1] { 1 } else { 2 };
        let add = self.residual.map(|(_, add)| add);
        if self.dsp {
            let start = (oy * shape.out_w + pixels[0]) * out_c;
            finish_pixels_dsp(
                &acc[..distinct],
                &bias[channels.clone()],
                channels,
                self.requant,
                add,
                pixels.map(|x| ShortcutRow::at(self.residual, oy, x)),
                &mut output[start..start + distinct * out_c],
                out_c,
            );
            return;
        }
        for (p, &x) in pixels.iter().enumerate().take(distinct) {
            let start = (oy * shape.out_w + x) * out_c;
            (self.row)(
                &acc[p][..channels.len()],
                &bias[channels.clone()],
                channels.clone(),
                self.requant,
                add,
                ShortcutRow::at(self.residual, oy, x),
                &mut output[start..start + out_c],
            );
        }
    }
}

/// The convolution over kernel rows `first..first + rows` of `shape` alone, for the
/// same output pixels: its shape and the input it reads. Row `ky` of the chunk is
/// row `first + ky` of the kernel; the input is seen from the first row that the
/// chunk's top row can reach, the padding above it shrunk by as many rows.
fn kernel_rows<'a>(
    shape: &ConvShape,
    input: &'a [i8],
    first: usize,
    rows: usize,
) -> (ConvShape, &'a [i8]) {
    let skipped = first.saturating_sub(shape.pad_top).min(shape.in_h);
    let chunk = ConvShape {
        in_h: shape.in_h - skipped,
        kernel_h: rows,
        pad_top: shape.pad_top.saturating_sub(first),
        ..*shape
    };
    let row_bytes = shape.in_w * shape.in_c;
    (chunk, input.get(skipped * row_bytes..).unwrap_or(&[]))
}

/// TFLite int8 convolution, as [`kernels::conv2d_i8`] computes it (same arguments,
/// same checks, bit-identical results), with `SMLAD`. A window over
/// [`WINDOW_CAPACITY`] taps whose channels are a multiple of four runs in chunks of
/// kernel rows ([`kernel_rows`]), their sums added; a kernel row over that capacity,
/// a window over the staging capacity when the channels are not a multiple of four,
/// and a zero point outside int8 go to the portable kernel.
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
    let args = (shape, input, input_zero_point, weights, bias);
    if shape.in_c % 4 == 0 && window > WINDOW_CAPACITY {
        conv2d_i8_dsp::<true>(scratch, args, requant, residual, output)
    } else {
        conv2d_i8_dsp::<false>(scratch, args, requant, residual, output)
    }
}

/// [`conv2d_i8_with`] for a window that takes chunks of kernel rows (`CHUNKED`) or
/// not: two functions, so that the common one carries neither the chunks' branches
/// nor their sums' buffer on its stack.
#[inline(never)]
fn conv2d_i8_dsp<const CHUNKED: bool>(
    scratch: &mut ConvScratch,
    (shape, input, input_zero_point, weights, bias): (&ConvShape, &[i8], i32, &[i8], &[i32]),
    requant: &Requantize<'_>,
    residual: Option<(Shortcut<'_, i8>, &AddTables)>,
    output: &mut [i8],
) -> Result<(), Error> {
    let window = shape.kernel_h * shape.kernel_w * shape.in_c;
    // Channels not a multiple of four: each tap padded to whole groups, where the
    // padded filters fit the staging buffer ([`widen_pair_padded`]), else the window
    // rounded up with taps of zero (their weights then multiply zero).
    let lanes = shape.in_c.next_multiple_of(4);
    let padded_window = shape.kernel_h * shape.kernel_w * lanes;
    let pad_channels = shape.in_c % 4 != 0
        && padded_window <= WINDOW_CAPACITY
        && shape.out_c * padded_window <= STAGING_BYTES;
    let padded = window.next_multiple_of(4);
    // A window past the column buffer, in whole groups per tap, is summed a chunk of
    // kernel rows at a time, as many as the buffer holds.
    let row_taps = shape.kernel_w * shape.in_c;
    let chunk_rows = (WINDOW_CAPACITY / row_taps.max(1)).min(shape.kernel_h);
    let fits = if CHUNKED {
        chunk_rows > 0
    } else if shape.in_c % 4 == 0 || pad_channels {
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
        ..
    } = scratch;
    // The staging buffer holds the padded filters, or serves `widen_pair`.
    let (weights, window, mut staging) = if pad_channels {
        let padded_weights = &mut staging[..shape.out_c * padded_window];
        pad_filters(weights, shape.in_c, lanes, padded_weights);
        (&*padded_weights, padded_window, None)
    } else {
        (weights, window, Some(staging))
    };
    let finish = Finish::new(requant, residual);
    for oy in 0..shape.out_h {
        for ox in (0..shape.out_w).step_by(2) {
            let pixels = [ox, (ox + 1).min(shape.out_w - 1)];
            match staging.as_deref_mut() {
                _ if CHUNKED => {}
                None => widen_pair_padded(shape, input, offset, oy, pixels, columns),
                Some(staging) => widen_pair(
                    shape,
                    input,
                    input_zero_point,
                    offset,
                    oy,
                    pixels,
                    columns,
                    staging,
                ),
            }
            for block in (0..out_c).step_by(CHANNEL_BLOCK) {
                let channels = block..(block + CHANNEL_BLOCK).min(out_c);
                if let (true, Some(staging)) = (CHUNKED, staging.as_deref_mut()) {
                    // Each chunk is widened again for every block of channels: the
                    // blocks' sums of all chunks would need a buffer of every output
                    // channel, and a chunk's widening is about 1 % of its MACs with a
                    // block (64 channels × two pixels × its taps).
                    let mut sums = [[0i32; CHANNEL_BLOCK]; 2];
                    for first in (0..shape.kernel_h).step_by(chunk_rows) {
                        let rows = chunk_rows.min(shape.kernel_h - first);
                        let (chunk, chunk_input) = kernel_rows(shape, input, first, rows);
                        widen_pair(
                            &chunk,
                            chunk_input,
                            input_zero_point,
                            offset,
                            oy,
                            pixels,
                            columns,
                            staging,
                        );
                        let taps = (rows * row_taps, window);
                        let chunk_weights = &weights[first * row_taps..];
                        block_sums(
                            columns,
                            chunk_weights,
                            taps,
                            channels.clone(),
                            &mut tail,
                            acc,
                        );
                        // Wrapping, as the portable kernel's one sum over the window.
                        for (sums, part) in sums.iter_mut().zip(acc.iter()) {
                            for (sum, &part) in sums.iter_mut().zip(part) {
                                *sum = sum.wrapping_add(part);
                            }
                        }
                    }
                    *acc = sums;
                } else {
                    let taps = (window, window);
                    block_sums(columns, weights, taps, channels.clone(), &mut tail, acc);
                }
                finish.pixels(&acc[..], pixels, oy, shape, bias, channels, output);
            }
        }
    }
    Ok(())
}
