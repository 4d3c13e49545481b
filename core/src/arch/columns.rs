//! The column buffer (im2col) shared by the 16-byte-vector kernels (Helium, NEON,
//! x86), and the row finish every arch kernel shares.
//!
//! Output pixels go in groups of [`PIXELS`] along a row; their windows are copied
//! into a buffer on the stack, padding written as the input zero point, interleaved
//! 16 bytes at a time: `[pixel 1, pixel 2, pixel 3, pixel 0]` for bytes 0..16 of the
//! window, then for bytes 16..32, and so on (the order Helium's post-incrementing
//! loads want). A block kernel then computes the four dot products `Σ x_p·w` of each
//! filter of a block of up to [`CHANNEL_BLOCK`] channels into [`Accumulators`], and
//! a row finish requantizes each pixel's block and adds its shortcut. An arch module
//! may also give a block kernel that reads a group's windows in place ([`DirectDot`]:
//! Helium and NEON): such groups skip the copy, and the groups at the borders, whose
//! windows need padding, are read from a tile of the input padded with the zero point
//! (`fill_tile`), half the copying of the column buffer. An arch module may also
//! finish a group's block in one call ([`FinishGroup`]).
//!
//! The zero point is taken out once per layer: with padding at the zero point,
//! `Σ (x − zp)·w = Σ x·w − zp·Σ w` over the whole window, so each channel's `bias −
//! zp·Σ w` is a constant added before requantizing; in wrapping 32-bit arithmetic (a
//! ring) this equals the portable kernel's accumulator bit for bit.

use core::ops::Range;

use crate::error::Error;
use crate::kernels::{self, mapped_channel, ChannelRequantize, ConvShape, Requantize, Shortcut};
use crate::quant::{AddParams, AddTables};

/// Output pixels per group.
pub const PIXELS: usize = 4;
/// Taps per pixel the column buffer holds. On a microcontroller (Helium) a 3×3 window
/// over 64 channels, what its networks need, in 2.3 KiB of stack; on Cortex-A and
/// hosts, whose stacks are not scarce, 3×3 over 512 channels, the ImageNet ResNets'
/// widest (18 KiB; at 576, ResNet-18 at 224×224 took 6.7 G instructions on the A53,
/// most of them in the portable kernel). A larger window goes to the portable kernel.
pub const WINDOW_CAPACITY: usize = if cfg!(any(target_arch = "aarch64", target_arch = "x86_64")) {
    4608
} else {
    576
};
/// Bytes of the column buffer.
pub const COLUMN_BYTES: usize = PIXELS * WINDOW_CAPACITY;

/// The column buffer, 16-byte aligned so that every chunk is (strict-alignment
/// targets such as the A53 with its MMU off load vectors only from aligned
/// addresses).
#[repr(C, align(16))]
#[derive(Clone, Debug)]
pub struct Columns(pub [i8; COLUMN_BYTES]);

/// Copies 16 bytes; with one aligned 16-byte load and store when `source` is
/// 16-byte aligned (`destination` always is: a chunk of [`Columns`]), else byte by
/// byte where the target requires alignment.
#[inline(always)]
fn copy_chunk(destination: &mut [i8], source: &[i8]) {
    let (Ok(destination), Ok(source)) = (
        <&mut [i8; 16]>::try_from(destination),
        <&[i8; 16]>::try_from(source),
    ) else {
        return;
    };
    if source.as_ptr().align_offset(16) == 0 && destination.as_ptr().align_offset(16) == 0 {
        // SAFETY: both are 16 readable (writable) bytes at 16-byte aligned addresses.
        unsafe {
            destination
                .as_mut_ptr()
                .cast::<u128>()
                .write(source.as_ptr().cast::<u128>().read());
        }
    } else {
        *destination = *source;
    }
}

/// Where pixel `p`'s 16-byte chunk `chunk` of the window sits in the column buffer:
/// pixels 1, 2, 3 at offsets 16, 32, 48 of the chunk's 64 bytes, pixel 0 at 0.
#[inline]
pub fn column_offset(chunk: usize, p: usize) -> usize {
    (chunk * PIXELS + p) * 16
}

/// Copies the windows of output pixels `(oy, ox[p])` into `columns` as
/// [`column_offset`] lays them out, padding as the zero point, one kernel row at a
/// time: the padding left of the input, the input's contiguous run, the padding
/// right of it. The caller has checked that the window fits.
fn gather(
    shape: &ConvShape,
    input: &[i8],
    input_zero_point: i32,
    oy: usize,
    ox: [usize; PIXELS],
    columns: &mut Columns,
) {
    let c_in = shape.in_c;
    if c_in % 16 == 0 {
        // Whole 16-byte chunks (the input is 16-byte aligned in the arena).
        if let (Ok(source), Ok(chunks)) = (
            bytemuck::try_cast_slice::<i8, u128>(input),
            bytemuck::try_cast_slice_mut::<i8, u128>(&mut columns.0),
        ) {
            return gather_chunks(shape, source, input_zero_point, oy, ox, chunks);
        }
    }
    let row_bytes = shape.kernel_w * c_in;
    if shape.kernel_h * row_bytes <= SMALL_WINDOW {
        return gather_small(shape, input, input_zero_point, oy, ox, columns);
    }
    for (p, &x) in ox.iter().enumerate() {
        let (first_kx, end_kx) = shape.kernel_columns(x);
        let end_kx = end_kx.max(first_kx);
        for ky in 0..shape.kernel_h {
            let at = ky * row_bytes;
            let iy = (oy * shape.stride + ky)
                .checked_sub(shape.pad_top)
                .filter(|&iy| iy < shape.in_h);
            let Some(iy) = iy.filter(|_| first_kx < end_kx) else {
                put(
                    columns,
                    p,
                    at,
                    Fill::Value(input_zero_point as i8),
                    row_bytes,
                );
                continue;
            };
            let ix = x * shape.stride + first_kx - shape.pad_left;
            let source = (iy * shape.in_w + ix) * c_in;
            let valid = (end_kx - first_kx) * c_in;
            let before = first_kx * c_in;
            put(columns, p, at, Fill::Value(input_zero_point as i8), before);
            put(
                columns,
                p,
                at + before,
                Fill::Copy(&input[source..source + valid]),
                valid,
            );
            put(
                columns,
                p,
                at + before + valid,
                Fill::Value(input_zero_point as i8),
                row_bytes - before - valid,
            );
        }
    }
}

/// [`gather`] for channels in multiples of 16, a chunk (`u128`) at a time: chunk
/// `k` of pixel `p` is `chunks[k · PIXELS + p]`.
fn gather_chunks(
    shape: &ConvShape,
    input: &[u128],
    input_zero_point: i32,
    oy: usize,
    ox: [usize; PIXELS],
    chunks: &mut [u128],
) {
    let per_tap = shape.in_c / 16;
    let per_row = shape.kernel_w * per_tap;
    let padding = u128::from_ne_bytes([input_zero_point as i8 as u8; 16]);
    // Per pixel: the chunks of padding before the input, the input's chunks, and
    // where they start in the input row.
    let spans = ox.map(|x| {
        let (first_kx, end_kx) = shape.kernel_columns(x);
        let end_kx = end_kx.max(first_kx);
        let ix = (x * shape.stride + first_kx).saturating_sub(shape.pad_left);
        (
            first_kx * per_tap,
            (end_kx - first_kx) * per_tap,
            ix * per_tap,
        )
    });
    for ky in 0..shape.kernel_h {
        let iy = (oy * shape.stride + ky)
            .checked_sub(shape.pad_top)
            .filter(|&iy| iy < shape.in_h);
        let row_start = ky * per_row * PIXELS;
        for (p, &(before, valid, column)) in spans.iter().enumerate() {
            let mut at = row_start + p;
            let mut written = 0;
            if let Some(iy) = iy.filter(|_| valid > 0) {
                for _ in 0..before {
                    chunks[at] = padding;
                    at += PIXELS;
                }
                let start = iy * shape.in_w * per_tap + column;
                for &chunk in &input[start..start + valid] {
                    chunks[at] = chunk;
                    at += PIXELS;
                }
                written = before + valid;
            }
            for _ in written..per_row {
                chunks[at] = padding;
                at += PIXELS;
            }
        }
    }
}

/// Windows up to this many bytes (first layers: 3×3×3, 5×5×1, 7×7×1) are built
/// whole on the stack, then copied in chunks.
const SMALL_WINDOW: usize = 64;

/// [`gather`] for windows of at most [`SMALL_WINDOW`] bytes: each pixel's window
/// is assembled contiguously (padding as the zero point), then copied as chunks.
fn gather_small(
    shape: &ConvShape,
    input: &[i8],
    input_zero_point: i32,
    oy: usize,
    ox: [usize; PIXELS],
    columns: &mut Columns,
) {
    let c_in = shape.in_c;
    let row_bytes = shape.kernel_w * c_in;
    let window = shape.kernel_h * row_bytes;
    let padding = u128::from_ne_bytes([input_zero_point as i8 as u8; 16]);
    let input_row = shape.in_w * c_in;
    // The first input row of the windows, if all their rows are inside the input.
    let rows_inside = (oy * shape.stride)
        .checked_sub(shape.pad_top)
        .filter(|&iy| iy + shape.kernel_h <= shape.in_h);
    for (p, &x) in ox.iter().enumerate() {
        // Chunks, 16-byte aligned: filled with four vector stores where an i8 array's
        // fill is a call to memset.
        let mut chunks = [padding; SMALL_WINDOW / 16];
        let bytes: &mut [i8] = bytemuck::cast_slice_mut(&mut chunks);
        let (first_kx, end_kx) = shape.kernel_columns(x);
        if let (Some(iy), 0, true) = (rows_inside, first_kx, end_kx == shape.kernel_w) {
            // No padding: each kernel row is one run of the input (whose rows, holding
            // the windows, are not empty).
            let from = (iy * shape.in_w + x * shape.stride - shape.pad_left) * c_in;
            if let Some(input) = input.get(from..) {
                for (row, source) in bytes[..window]
                    .chunks_exact_mut(row_bytes)
                    .zip(input.chunks(input_row))
                {
                    copy_run(row, source);
                }
            }
        } else if first_kx < end_kx {
            let ix = x * shape.stride + first_kx - shape.pad_left;
            let valid = (end_kx - first_kx) * c_in;
            for ky in 0..shape.kernel_h {
                let Some(iy) = (oy * shape.stride + ky)
                    .checked_sub(shape.pad_top)
                    .filter(|&iy| iy < shape.in_h)
                else {
                    continue;
                };
                let from = (iy * shape.in_w + ix) * c_in;
                let to = ky * row_bytes + first_kx * c_in;
                copy_run(&mut bytes[to..to + valid], &input[from..from + valid]);
            }
        }
        for chunk in 0..window.div_ceil(16) {
            let to = column_offset(chunk, p);
            copy_chunk(
                &mut columns.0[to..to + 16],
                &bytes[chunk * 16..chunk * 16 + 16],
            );
        }
    }
}

/// Copies `source` into `destination`, as long as the shorter: a short run, such as
/// a first layer's 9-byte kernel row, with Helium's tail-predicated loop on the M55
/// (elsewhere a plain loop).
#[inline(always)]
fn copy_run(destination: &mut [i8], source: &[i8]) {
    #[cfg(all(target_arch = "arm", tinyres_arm_mve))]
    super::helium::copy_run(destination, source);
    #[cfg(not(all(target_arch = "arm", tinyres_arm_mve)))]
    for (d, &v) in destination.iter_mut().zip(source) {
        *d = v;
    }
}

/// What [`put`] writes.
#[derive(Clone, Copy)]
enum Fill<'a> {
    /// These bytes.
    Copy(&'a [i8]),
    /// This byte, repeated.
    Value(i8),
}

/// Writes `len` bytes of pixel `p`'s window from window position `at`, in pieces
/// that stay inside one 16-byte chunk (whole chunks copied at once).
#[inline(always)]
fn put(columns: &mut Columns, p: usize, at: usize, fill: Fill<'_>, len: usize) {
    let mut done = 0;
    while done < len {
        let position = at + done;
        let within = position % 16;
        let run = (16 - within).min(len - done);
        let to = column_offset(position / 16, p) + within;
        let dest = &mut columns.0[to..to + run];
        match fill {
            Fill::Copy(source) if run == 16 => copy_chunk(dest, &source[done..done + 16]),
            // Short pieces: a plain loop, not a call to memcpy.
            Fill::Copy(source) => {
                for (d, &v) in dest.iter_mut().zip(&source[done..done + run]) {
                    *d = v;
                }
            }
            Fill::Value(v) => {
                for d in dest.iter_mut() {
                    *d = v;
                }
            }
        }
        done += run;
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

impl<'a> ShortcutRow<'a> {
    /// The shortcut of output pixel `(oy, ox)` for a layer's `residual`.
    #[inline]
    pub fn at(residual: Option<(Shortcut<'a, i8>, &AddTables)>, oy: usize, ox: usize) -> Self {
        match residual {
            None => ShortcutRow::None,
            // `row` is `None` for an in-place shortcut.
            Some((shortcut, _)) => shortcut
                .row(oy, ox)
                .map_or(ShortcutRow::InPlace, |(row, offset)| {
                    ShortcutRow::Mapped(row, offset)
                }),
        }
    }

    /// Channel `channel` of a [`ShortcutRow::Mapped`] row (the add's zero point
    /// outside its channels).
    #[inline(always)]
    pub fn mapped(row: &[i8], offset: usize, channel: usize, add: &AddTables) -> i8 {
        mapped_channel(row, offset, channel, add.params.input2_zero_point as i8)
    }
}

/// Finishes output channels `channels` of one pixel: with `i = c − channels.start`,
/// `out[c] = finish(acc[i] + bases[i])`, requantized and added to the shortcut as
/// `kernels::finish_i8` defines. The portable version; an arch module may pass
/// a vectorised one to [`conv2d_i8_by_columns`].
pub fn finish_row_scalar(
    acc: &[i32],
    bases: &[i32],
    channels: Range<usize>,
    requant: &Requantize<'_>,
    add: Option<&AddTables>,
    shortcut: ShortcutRow<'_>,
    out: &mut [i8],
) {
    finish_row::<false>(acc, bases, channels, requant, add, shortcut, out)
}

/// [`finish_row_scalar`] for a layer that [`layer_is_checked`] approves: the same
/// results, without the per-output shift clamp and overflow test.
pub fn finish_row_checked_layer(
    acc: &[i32],
    bases: &[i32],
    channels: Range<usize>,
    requant: &Requantize<'_>,
    add: Option<&AddTables>,
    shortcut: ShortcutRow<'_>,
    out: &mut [i8],
) {
    finish_row::<true>(acc, bases, channels, requant, add, shortcut, out)
}

pub use crate::kernels::layer_is_checked;

#[inline(always)]
fn finish_row<const CHECKED_LAYER: bool>(
    acc: &[i32],
    bases: &[i32],
    channels: Range<usize>,
    requant: &Requantize<'_>,
    add: Option<&AddTables>,
    shortcut: ShortcutRow<'_>,
    out: &mut [i8],
) {
    let (Some(out), Some(multipliers), Some(shifts)) = (
        out.get_mut(channels.clone()),
        requant.multipliers.get(channels.clone()),
        requant.shifts.get(channels.clone()),
    ) else {
        return;
    };
    // One loop per case, each over plain slices: the parameters stay in registers.
    let values = acc.iter().zip(bases).zip(multipliers.iter().zip(shifts));
    let requantize = |((&acc, &base), (&multiplier, &shift)): ((&i32, &i32), (&i32, &i32))| {
        if CHECKED_LAYER {
            ChannelRequantize::new_checked_layer(multiplier, shift, requant)
                .apply_checked_layer(acc.wrapping_add(base))
        } else {
            ChannelRequantize::new(multiplier, shift, requant).apply(acc.wrapping_add(base))
        }
    };
    match (add, shortcut) {
        (None, _) => {
            for (out, value) in out.iter_mut().zip(values) {
                *out = requantize(value);
            }
        }
        (Some(add), ShortcutRow::None | ShortcutRow::InPlace) => {
            for (out, value) in out.iter_mut().zip(values) {
                *out = add.add(requantize(value), *out);
            }
        }
        (Some(add), ShortcutRow::Mapped(row, offset)) => {
            for ((out, value), co) in out.iter_mut().zip(values).zip(channels) {
                *out = add.add(requantize(value), ShortcutRow::mapped(row, offset, co, add));
            }
        }
    }
}

/// Whether a vectorised [`finish_row_scalar`] may run: the layer is checked
/// ([`layer_is_checked`]) and, for a residual add, the input shifts are `≤ 0` and
/// every shift in `-31..=30` (true of every blob that validates; other parameters
/// take the scalar code).
pub fn vector_finish_applies(requant: &Requantize<'_>, add: Option<&AddParams>) -> bool {
    layer_is_checked(requant)
        && add.is_none_or(|p| {
            p.input1_shift <= 0
                && p.input2_shift <= 0
                && [p.input1_shift, p.input2_shift, p.output_shift]
                    .iter()
                    .all(|s| (-31..=30).contains(s))
        })
}

/// Accumulators of a pixel group: `[pixel][channel of the block]`.
pub type Accumulators = [[i32; CHANNEL_BLOCK]; PIXELS];

/// Where a group's windows lie in the input when a block kernel reads them in place:
/// four evenly spaced output pixels whose windows need no padding. Pixel `p`'s kernel
/// row `ky` is the `row_bytes` bytes at `ky · row_step + p · pixel_step` of the input
/// slice handed over with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirectWindow {
    /// Bytes between two pixels' windows: the stride times the input channels.
    pub pixel_step: usize,
    /// Bytes of a window's kernel row: kernel columns times input channels.
    pub row_bytes: usize,
    /// Bytes between two kernel rows: an input row.
    pub row_step: usize,
    /// Kernel rows.
    pub rows: usize,
}

impl DirectWindow {
    /// The pairs of filters in `weights` for a block kernel that takes them two at a
    /// time, if `weights` holds a whole, even number of filters (`rows · row_bytes`
    /// bytes each), at least two and at most [`CHANNEL_BLOCK`], and the four pixels'
    /// windows lie within `input` (kernel rows that do not overlap).
    #[inline(always)]
    pub fn filter_pairs(&self, input: &[i8], weights: &[i8]) -> Option<usize> {
        let bytes = self.rows * self.row_bytes;
        if bytes == 0 || self.row_step < self.row_bytes {
            return None;
        }
        let filters = weights.len() / bytes;
        // The last byte any pixel's window reads, plus one.
        let span =
            (self.rows - 1) * self.row_step + (PIXELS - 1) * self.pixel_step + self.row_bytes;
        (filters >= 2
            && filters % 2 == 0
            && filters <= CHANNEL_BLOCK
            && filters * bytes == weights.len()
            && span <= input.len())
        .then_some(filters / 2)
    }
}

/// A block kernel that reads a group's windows in place, without the column buffer:
/// `dot(input, window, weights, acc)` sets `acc[p][i] = Σ x_p·w_i` for the filters of
/// `weights` (`window.rows · window.row_bytes` bytes each) and returns true, or returns
/// false, having written nothing, where it does not apply (the group then goes through
/// the column buffer).
pub type DirectDot = fn(&[i8], &DirectWindow, &[i8], &mut Accumulators) -> bool;

/// One block of output channels of a pixel group, computed and ready to finish: pixel
/// `p`'s (`p < pixels`) channel `c` of `channels` is `finish(acc[p][c − channels.start]
/// + bases[c − channels.start])`, requantized and added to its shortcut as
/// [`finish_row_scalar`] does, for output pixels `(oy, ox + p)`.
#[derive(Clone, Debug)]
pub struct GroupBlock<'a, 'r> {
    /// The block's dot products.
    pub acc: &'a Accumulators,
    /// Each channel's `bias − zero_point · Σ w`: the block's channels.
    pub bases: &'a [i32],
    /// The block's output channels.
    pub channels: Range<usize>,
    /// The layer's requantization.
    pub requant: &'a Requantize<'r>,
    /// The layer's residual add, if it has one.
    pub residual: Option<(Shortcut<'r, i8>, &'a AddTables)>,
    /// The output row.
    pub oy: usize,
    /// The group's first output column.
    pub ox: usize,
    /// The group's pixels that exist (the last group of a row may have fewer than
    /// [`PIXELS`]).
    pub pixels: usize,
    /// Output channels: the distance between two pixels in the output.
    pub out_c: usize,
}

/// A row finish for a whole group: `finish(block, output)` finishes `block` into
/// `output`, the group's `block.pixels · block.out_c` output bytes, and returns true;
/// or returns false, having written nothing, where it does not apply (each pixel then
/// takes the row finish). Called only where [`vector_finish_applies`].
pub type FinishGroup = fn(&GroupBlock<'_, '_>, &mut [i8]) -> bool;

/// Where the windows of output pixels `ox..ox + PIXELS` of row `oy` start in the input
/// (pixel `ox`'s first byte) if they can be read in place: all four pixels exist and no
/// window needs padding (the [`DirectDot`] says whether it reads such windows).
fn direct_start(shape: &ConvShape, oy: usize, ox: usize) -> Option<usize> {
    if ox + PIXELS > shape.out_w {
        return None;
    }
    let iy = (oy * shape.stride).checked_sub(shape.pad_top)?;
    let ix = (ox * shape.stride).checked_sub(shape.pad_left)?;
    let last_ix = ix + (PIXELS - 1) * shape.stride;
    (iy + shape.kernel_h <= shape.in_h && last_ix + shape.kernel_w <= shape.in_w)
        .then_some((iy * shape.in_w + ix) * shape.in_c)
}

/// Copies the part of the input that the windows of output pixels `ox..ox + PIXELS` of
/// row `oy` read into `columns`, as a tile of `kernel_h` rows of `tile_w` input pixels,
/// padding as the zero point: a kernel that reads windows in place ([`DirectDot`]) then
/// reads a group at the borders from there, with half the copying of the column buffer
/// (a 3×3 window's six input columns, not four pixels' three each). The caller has
/// checked that the tile fits in `columns` and that the channels come in whole 16-byte
/// chunks. False if the input is not 16-byte aligned (or too short), and then the
/// tile is not whole.
fn fill_tile(
    shape: &ConvShape,
    input: &[i8],
    input_zero_point: i32,
    oy: usize,
    ox: usize,
    tile_w: usize,
    columns: &mut Columns,
) -> bool {
    let (Ok(source), Ok(tile)) = (
        bytemuck::try_cast_slice::<i8, u128>(input),
        bytemuck::try_cast_slice_mut::<i8, u128>(&mut columns.0),
    ) else {
        return false;
    };
    let per_pixel = shape.in_c / 16;
    let padding = u128::from_ne_bytes([input_zero_point as i8 as u8; 16]);
    // The tile's columns, in the padded input's coordinates from `left`: those left of
    // the input (`..first`) and those inside it (`first..end`).
    let left = ox * shape.stride;
    let first = shape.pad_left.saturating_sub(left).min(tile_w);
    let end = (shape.in_w + shape.pad_left)
        .saturating_sub(left)
        .clamp(first, tile_w);
    let ix = (left + first).saturating_sub(shape.pad_left);
    let rows = tile.chunks_exact_mut((tile_w * per_pixel).max(1));
    for (ky, row) in rows.take(shape.kernel_h).enumerate() {
        let iy = (oy * shape.stride + ky)
            .checked_sub(shape.pad_top)
            .filter(|&iy| iy < shape.in_h && first < end);
        let Some(iy) = iy else {
            row.fill(padding);
            continue;
        };
        let (before, rest) = row.split_at_mut(first * per_pixel);
        let (inside, after) = rest.split_at_mut((end - first) * per_pixel);
        let start = (iy * shape.in_w + ix) * per_pixel;
        let Some(run) = source.get(start..start + inside.len()) else {
            return false;
        };
        before.fill(padding);
        copy_run(bytemuck::cast_slice_mut(inside), bytemuck::cast_slice(run));
        after.fill(padding);
    }
    true
}

/// Where a group's block kernels read its windows.
#[derive(Clone, Copy)]
enum Windows<'a> {
    /// In place, from here on in the input ([`direct_start`]).
    InPlace(&'a [i8]),
    /// From the tile that [`fill_tile`] copied into the column buffer.
    Tile,
    /// From the column buffer, gathered.
    Columns,
}

/// The memory a convolution works in besides its input and output (3.3 KiB): the
/// column buffer, the accumulators and a block's bias bases. The caller owns it and
/// passes it to every call: a streamed group calls the kernel once per step of rows,
/// and zeroing a fresh buffer on each call cost more than 3 % of the M55's
/// instructions for ResNet-8. Its contents between calls do not matter: each call
/// writes what it reads.
#[derive(Clone, Debug)]
pub struct ConvScratch {
    columns: Columns,
    acc: Accumulators,
    bases: [i32; CHANNEL_BLOCK],
}

impl ConvScratch {
    /// A zeroed scratch.
    pub const fn new() -> Self {
        ConvScratch {
            columns: Columns([0; COLUMN_BYTES]),
            acc: [[0; CHANNEL_BLOCK]; PIXELS],
            bases: [0; CHANNEL_BLOCK],
        }
    }
}

impl Default for ConvScratch {
    fn default() -> Self {
        Self::new()
    }
}

/// A block kernel from a one-filter kernel `dot` returning `Σ x_p·w` for the group's
/// four pixels (see [`conv2d_i8_by_columns`]).
#[inline(always)]
pub fn each_filter(
    dot: impl Fn(&Columns, &[i8]) -> [i32; PIXELS],
) -> impl Fn(&Columns, &[i8], usize, &mut Accumulators) {
    move |columns, weights, window, acc| {
        for (i, filter) in weights.chunks_exact(window).take(CHANNEL_BLOCK).enumerate() {
            let products = dot(columns, filter);
            for (row, product) in acc.iter_mut().zip(products) {
                row[i] = product;
            }
        }
    }
}

/// `sums[i] = Σ w_i` over the block's filters of `window` bytes.
pub fn weight_sums_scalar(weights: &[i8], window: usize, sums: &mut [i32; CHANNEL_BLOCK]) {
    for (sum, filter) in sums.iter_mut().zip(weights.chunks_exact(window.max(1))) {
        *sum = filter.iter().map(|&w| i32::from(w)).sum();
    }
}

/// TFLite int8 convolution, as [`kernels::conv2d_i8`] computes it (same arguments,
/// same checks, bit-identical results), with `dot_block(columns, weights, window,
/// acc)` setting `acc[p][i] = Σ x_p·w_i` for the group's four pixels and the block's
/// filters of `window` bytes (at most [`CHANNEL_BLOCK`]), `direct` (if any) doing the
/// same for the groups whose windows it reads in place ([`DirectDot`]), `weight_sums` doing what
/// [`weight_sums_scalar`] does and `vector_finish` what [`finish_row_scalar`] does,
/// for the layers [`vector_finish_applies`] to (the others take
/// [`finish_row_scalar`]). Each channel's `bias − zero_point · Σ w` is computed once
/// per layer (once per block and pixel group past [`CHANNEL_BLOCK`] channels). A
/// window over [`WINDOW_CAPACITY`] taps goes to the portable kernel.
///
/// A `finish_group`, where given, finishes each group's block whole ([`FinishGroup`]).
///
/// The last group of a row repeats its last pixel to make four and keeps the
/// results it needs.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn conv2d_i8_by_columns(
    dot_block: impl Fn(&Columns, &[i8], usize, &mut Accumulators),
    direct: Option<DirectDot>,
    finish_group: Option<FinishGroup>,
    weight_sums: impl Fn(&[i8], usize, &mut [i32; CHANNEL_BLOCK]),
    vector_finish: impl Fn(
        &[i32],
        &[i32],
        Range<usize>,
        &Requantize<'_>,
        Option<&AddTables>,
        ShortcutRow<'_>,
        &mut [i8],
    ),
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
    kernels::check_conv_i8(shape, input, weights, bias, requant, residual, output)?;
    let out_c = shape.out_c;
    let add = residual.map(|(_, add)| add);
    let vector = vector_finish_applies(requant, residual.map(|(_, add)| &add.params));
    let ConvScratch {
        columns,
        acc,
        bases,
    } = scratch;
    let block_bases = |channels: Range<usize>, bases: &mut [i32; CHANNEL_BLOCK]| {
        if let Some(folded) = requant.folded_bias.and_then(|f| f.get(channels.clone())) {
            bases[..folded.len()].copy_from_slice(folded);
            return;
        }
        let mut sums = [0i32; CHANNEL_BLOCK];
        weight_sums(
            &weights[channels.start * window..channels.end * window],
            window,
            &mut sums,
        );
        for ((base, sum), &bias) in bases.iter_mut().zip(sums).zip(&bias[channels]) {
            *base = bias.wrapping_sub(input_zero_point.wrapping_mul(sum));
        }
    };
    let single_block = out_c <= CHANNEL_BLOCK;
    if single_block {
        block_bases(0..out_c, bases);
    }
    let in_place = DirectWindow {
        pixel_step: shape.stride * shape.in_c,
        row_bytes: shape.kernel_w * shape.in_c,
        row_step: shape.in_w * shape.in_c,
        rows: shape.kernel_h,
    };
    // The groups at the borders, for a kernel that reads windows in place: a tile of
    // the input around them ([`fill_tile`]), where it fits the column buffer.
    let tile_w = (PIXELS - 1) * shape.stride + shape.kernel_w;
    let tile = DirectWindow {
        row_step: tile_w * shape.in_c,
        ..in_place
    };
    let tile_bytes = shape.kernel_h * tile.row_step;
    let tiles = direct.is_some() && shape.in_c % 16 == 0 && tile_bytes <= COLUMN_BYTES;
    for oy in 0..shape.out_h {
        for ox in (0..shape.out_w).step_by(PIXELS) {
            let pixels: [usize; PIXELS] = core::array::from_fn(|p| (ox + p).min(shape.out_w - 1));
            let distinct = (shape.out_w - ox).min(PIXELS);
            let unpadded = direct
                .and(direct_start(shape, oy, ox))
                .and_then(|start| input.get(start..));
            let mut windows = if let Some(source) = unpadded {
                Windows::InPlace(source)
            } else if tiles
                && ox + PIXELS <= shape.out_w
                && fill_tile(shape, input, input_zero_point, oy, ox, tile_w, columns)
            {
                Windows::Tile
            } else {
                // Gathered before the blocks, as always where nothing reads in place.
                gather(shape, input, input_zero_point, oy, pixels, columns);
                Windows::Columns
            };
            for block in (0..out_c).step_by(CHANNEL_BLOCK) {
                let channels = block..(block + CHANNEL_BLOCK).min(out_c);
                if !single_block {
                    block_bases(channels.clone(), bases);
                }
                let block_weights = &weights[channels.start * window..channels.end * window];
                let read_in_place = match (direct, windows) {
                    (Some(dot), Windows::InPlace(source)) => {
                        dot(source, &in_place, block_weights, acc)
                    }
                    (Some(dot), Windows::Tile) => {
                        dot(&columns.0[..tile_bytes], &tile, block_weights, acc)
                    }
                    _ => false,
                };
                if !read_in_place {
                    // The tile, if there was one, is overwritten: the column buffer
                    // serves the group's remaining blocks.
                    if !matches!(windows, Windows::Columns) {
                        gather(shape, input, input_zero_point, oy, pixels, columns);
                        windows = Windows::Columns;
                    }
                    dot_block(columns, block_weights, window, acc);
                }
                if let (true, Some(finish)) = (vector, finish_group) {
                    let block = GroupBlock {
                        acc,
                        bases: &bases[..channels.len()],
                        channels: channels.clone(),
                        requant,
                        residual,
                        oy,
                        ox,
                        pixels: distinct,
                        out_c,
                    };
                    let start = (oy * shape.out_w + ox) * out_c;
                    if finish(&block, &mut output[start..start + distinct * out_c]) {
                        continue;
                    }
                }
                for (p, &x) in pixels.iter().enumerate().take(distinct) {
                    let shortcut = ShortcutRow::at(residual, oy, x);
                    let out_start = (oy * shape.out_w + x) * out_c;
                    let acc = &acc[p][..channels.len()];
                    let bases = &bases[..channels.len()];
                    let out = &mut output[out_start..out_start + out_c];
                    if vector {
                        vector_finish(acc, bases, channels.clone(), requant, add, shortcut, out);
                    } else {
                        finish_row_scalar(
                            acc,
                            bases,
                            channels.clone(),
                            requant,
                            add,
                            shortcut,
                            out,
                        );
                    }
                }
            }
        }
    }
    Ok(())
}
