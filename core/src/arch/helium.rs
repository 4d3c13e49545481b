//! Helium (M-profile vector extension) for the Cortex-M55: int8 convolution with
//! 16-lane dot products over the windows of [`super::columns`]'s pixel groups.
//!
//! Filters go two at a time where the window is whole 16-byte chunks: per chunk, two
//! `VLDRB` of weights, four loads of inputs (one per pixel of the group) and eight
//! `VMLADAVA.S8` (16 MACs each into a scalar accumulator), 128 MACs in 16 instructions
//! with the loop; one assembly block runs all the pairs of a block. The windows are
//! read in place ([`dot_direct`]), kernel row by kernel row: from the input where they
//! need no padding, and at the borders from a tile of the input that
//! [`super::columns`] pads with the zero point. A first layer's 3×3 windows over three
//! channels are read in place too, nine bytes a kernel row with the other lanes off
//! ([`dot_short_rows`]). Other windows come from the column buffer: whole chunks with
//! [`dot_pairs`], the rest one filter at a time in a tail-predicated low-overhead loop
//! (`DLSTP`/`LETP`, [`dot_each`]).
//!
//! Requantization and the residual add run four channels at a time, a group's
//! four pixels in one call ([`finish_group`]): `VQRDMULH` is TFLite's saturating
//! rounding doubling high multiply, and `VRSHL` by a negative amount after adding −1
//! to negative lanes (when the shift is not zero) is its rounding divide by a power of
//! two, ties away from zero; `VQADD`, `VMAX`, `VMIN` and a narrowing `VSTRB.32`
//! finish. A layer without left shifts (the usual case: every multiplier below one)
//! skips them. The same results as the scalar code, bit for bit.

use core::arch::asm;

use core::ops::Range;

use super::columns::{
    conv2d_i8_by_columns, finish_row_scalar, Accumulators, Columns, ConvScratch, DirectWindow,
    GroupBlock, ShortcutRow, CHANNEL_BLOCK, WINDOW_CAPACITY,
};
use crate::error::Error;
use crate::kernels::{ConvShape, Requantize, Shortcut};
use crate::quant::{AddParams, AddTables};

/// For the block's filters `i` (`window` bytes each, contiguous in `weights`):
/// `acc[p][i] = Σ x_p·w_i` over the four pixels' columns as
/// [`super::columns::column_offset`] lays them out. Windows of whole 16-byte chunks
/// go two filters at a time ([`dot_pairs`]); the rest (and an odd last filter) one at
/// a time in a tail-predicated loop ([`dot_each`]).
fn dot_block(columns: &Columns, weights: &[i8], window: usize, acc: &mut Accumulators) {
    if window == 0 || window > WINDOW_CAPACITY {
        return;
    }
    let filters = (weights.len() / window).min(CHANNEL_BLOCK);
    let mut done = 0;
    if window % 16 == 0 && filters >= 2 {
        done = filters / 2 * 2;
        dot_pairs(columns, &weights[..done * window], window, acc);
    }
    if done < filters {
        dot_each(
            columns,
            &weights[done * window..filters * window],
            window,
            acc,
            done,
        );
    }
}

/// For the filters `i` of `weights` (`window` bytes each, a multiple of 16; an even
/// number of filters, at most [`CHANNEL_BLOCK`]): `acc[p][i] = Σ x_p·w_i` over the
/// column buffer, with [`dot_pairs_unchecked`] (the window one row of `window` bytes,
/// each chunk's four pixels 16 bytes apart and the chunks 64).
///
/// Out of line, as [`dot_direct`] is: inlined into the group loop, the two cost the
/// code around them registers (MLPerf ResNet-8 on the M55: 4,296,658 instructions
/// inlined, 4,258,282 not; its 80/160-channel version 34,829,212 and 34,582,722; both
/// measured with a copy of the assembly of their own each).
#[inline(never)]
fn dot_pairs(columns: &Columns, weights: &[i8], window: usize, acc: &mut Accumulators) {
    let pairs = (weights.len() / (2 * window.max(1))).min(CHANNEL_BLOCK / 2);
    if window % 16 != 0 || window == 0 || pairs == 0 || window > WINDOW_CAPACITY {
        return;
    }
    // SAFETY: the kernel reads `2 · pairs · window ≤ weights.len()` bytes of weights,
    // and per pair, for `k < window / 16`, the 16 bytes at `64·k + 16·p` of the column
    // buffer (`p < 4`): below `4 · window ≤ COLUMN_BYTES`, at 16-byte aligned addresses
    // (the buffer is aligned). It writes `acc[p][i]` for `i < 2 · pairs ≤
    // CHANNEL_BLOCK`.
    unsafe {
        dot_pairs_unchecked::<16, 64>(
            columns.0.as_ptr(),
            1,
            window / 16,
            0,
            weights,
            pairs,
            window,
            acc,
        );
    }
}

/// [`DirectDot`] for Helium: the filters two at a time as [`dot_pairs`] computes
/// them, the pixels' windows read in place, kernel row by kernel row
/// ([`dot_pairs_unchecked`]). It applies to pixel steps of 16, 32, 64 and 128 bytes (the
/// immediate offsets of its loads), an even number of filters, and an input aligned to
/// 4 bytes (`VLDRW`).
///
/// Out of line: see [`dot_pairs`].
#[inline(never)]
fn dot_direct(input: &[i8], window: &DirectWindow, weights: &[i8], acc: &mut Accumulators) -> bool {
    if window.row_bytes % 16 != 0 {
        return dot_short_rows(input, window, weights, acc);
    }
    let Some(pairs) = window
        .filter_pairs(input, weights)
        .filter(|_| input.as_ptr() as usize % 4 == 0)
    else {
        return false;
    };
    let (source, rows, chunks, skip, bytes) = (
        input.as_ptr(),
        window.rows,
        window.row_bytes / 16,
        window.row_step - window.row_bytes,
        window.rows * window.row_bytes,
    );
    // SAFETY: the kernel reads `2 · pairs · bytes = weights.len()` bytes of weights, and
    // per pair, for kernel row `ky < rows`, pixel `p < 4` and `k < row_bytes / 16`, the
    // 16 bytes at `ky · row_step + p · pixel_step + 16·k` of `input`: within it
    // (`filter_pairs`), at 4-byte aligned addresses (the input is; the offsets are
    // multiples of 16), with `STEP = pixel_step`. It writes `acc[p][i]` for `i < 2 · pairs
    // ≤ CHANNEL_BLOCK`.
    unsafe {
        match window.pixel_step {
            16 => dot_pairs_unchecked::<16, 16>(
                source, rows, chunks, skip, weights, pairs, bytes, acc,
            ),
            32 => dot_pairs_unchecked::<32, 16>(
                source, rows, chunks, skip, weights, pairs, bytes, acc,
            ),
            64 => dot_pairs_unchecked::<64, 16>(
                source, rows, chunks, skip, weights, pairs, bytes, acc,
            ),
            128 => dot_pairs_unchecked::<128, 16>(
                source, rows, chunks, skip, weights, pairs, bytes, acc,
            ),
            _ => return false,
        }
    }
    true
}

/// [`dot_direct`] for kernel rows of 9 bytes, a first layer's 3×3 over three channels
/// (RGB) with stride 1 or 2: the filters two at a time, each kernel row of the four
/// pixels and the two filters loaded once with the lanes past the row off
/// ([`dot_short_rows_unchecked`]). The windows need no copying into the column buffer.
fn dot_short_rows(
    input: &[i8],
    window: &DirectWindow,
    weights: &[i8],
    acc: &mut Accumulators,
) -> bool {
    let Some(pairs) = window.filter_pairs(input, weights) else {
        return false;
    };
    let (source, rows, row_step) = (input.as_ptr(), window.rows, window.row_step);
    // SAFETY: the kernel reads the `2 · pairs` filters of `weights` (all of it) and, for
    // kernel row `ky < rows` and pixel `p < 4`, the 9 bytes at `ky · row_step + p ·
    // pixel_step` of `input`: within it (`filter_pairs`). It writes `acc[p][i]` for `i <
    // 2 · pairs ≤ CHANNEL_BLOCK`.
    unsafe {
        match (window.pixel_step, window.row_bytes) {
            (3, 9) => dot_short_rows_unchecked::<3, 9>(source, rows, row_step, weights, pairs, acc),
            (6, 9) => dot_short_rows_unchecked::<6, 9>(source, rows, row_step, weights, pairs, acc),
            _ => return false,
        }
    }
    true
}

/// Zeroes the eight accumulators of a pair of filters and four pixels (`VMLADAVA`
/// accumulates into even registers only): r0, r2, r4, r6 the first filter's, r8, r10,
/// r12, lr the second's.
macro_rules! zero_pair_accumulators {
    () => {
        concat!(
            "movs r0, #0\n",
            "movs r2, #0\n",
            "movs r4, #0\n",
            "movs r6, #0\n",
            "mov.w r8, #0\n",
            "mov.w r10, #0\n",
            "mov.w r12, #0\n",
            "mov.w lr, #0\n",
        )
    };
}

/// Stores the eight accumulators into `acc[p][i]` and `acc[p][i + 1]` (`r1` at
/// `acc[0][i]`, rows of CHANNEL_BLOCK = 64 i32) and moves `r1` to the next pair.
macro_rules! store_pair_accumulators {
    () => {
        concat!(
            "str r0, [r1]\n",
            "str r8, [r1, #4]\n",
            "str r2, [r1, #256]\n",
            "str r10, [r1, #260]\n",
            "str r4, [r1, #512]\n",
            "str r12, [r1, #516]\n",
            "str r6, [r1, #768]\n",
            "str lr, [r1, #772]\n",
            "adds r1, #8\n",
        )
    };
}

/// `acc[p][i] = Σ x_p·w_i` for the `2 · pairs` filters of `weights` (`rows · ROW` bytes
/// each) and the four pixels whose windows start at `source`, `STEP` bytes apart: kernel
/// row `ky` of pixel `p` is the `ROW` bytes at `ky · row_step + p · STEP`. One assembly
/// block runs every pair: per kernel row, two weight and four input loads of `ROW`
/// lanes (the others off, and so zero) and eight `VMLADAVA.S8`; then eight stores into
/// the accumulators.
///
/// # Safety
///
/// Every pixel's kernel row so described must be `ROW` readable bytes; `weights` must
/// hold `2 · pairs · rows · ROW` bytes; `rows` and `pairs` must be at least 1, and `2 ·
/// pairs ≤ CHANNEL_BLOCK`; `ROW ≤ 16` and `3 · STEP ≤ 127` (the loads' immediates).
#[inline(always)]
unsafe fn dot_short_rows_unchecked<const STEP: usize, const ROW: usize>(
    source: *const i8,
    rows: usize,
    row_step: usize,
    weights: &[i8],
    pairs: usize,
    acc: &mut Accumulators,
) {
    // What each pair and each kernel row start from, read from memory (the loop needs
    // every register), and room for the caller's predicate (P0), restored at the end.
    let mut start = [source as usize, rows, row_step, rows * ROW, 0];
    // SAFETY: the reads are those the caller vouches for: per pair, `rows` times, `ROW`
    // bytes of each of the pair's filters (predicated loads: the lanes past `ROW` read
    // nothing) and the four pixels' `ROW` bytes at `r7 + p · STEP`, `r7` moving
    // `row_step` a row. It writes `acc[p][i]` and `acc[p][i + 1]` at `acc + 256·p + 4·i`
    // (rows of CHANNEL_BLOCK = 64 i32) for `i < 2 · pairs ≤ CHANNEL_BLOCK`, and
    // `start[4]`. VMLADAVA accumulates into even registers only: all eight are used, r6
    // (which LLVM reserves) and r7 (the frame pointer, here the input pointer) saved on
    // the stack and restored, as are the pointer to `start` and the pairs left. P0 (the
    // predicate, which no register class declares) is saved in `start` and restored;
    // the other registers it writes are declared, and q0–q5 (d0–d11).
    unsafe {
        asm!(
            "push {{r6, r7}}",
            "vmrs r0, p0",
            "str r0, [r9, #16]",
            "movs r0, #{row}",
            "vctp.8 r0",
            "ldr r5, [r9, #12]",
            "adds r5, r3, r5",
            "push {{r9, r11}}",
            "3:",
            "ldr r9, [sp]",
            "ldr r7, [r9]",
            "ldr r11, [r9, #4]",
            zero_pair_accumulators!(),
            "2:",
            "vpstt",
            "vldrbt.u8 q4, [r3], #{row}",
            "vldrbt.u8 q5, [r5], #{row}",
            "vpstttt",
            "vldrbt.u8 q0, [r7]",
            "vldrbt.u8 q1, [r7, #{step1}]",
            "vldrbt.u8 q2, [r7, #{step2}]",
            "vldrbt.u8 q3, [r7, #{step3}]",
            "vmladava.s8 r0, q0, q4",
            "vmladava.s8 r2, q1, q4",
            "vmladava.s8 r4, q2, q4",
            "vmladava.s8 r6, q3, q4",
            "vmladava.s8 r8, q0, q5",
            "vmladava.s8 r10, q1, q5",
            "vmladava.s8 r12, q2, q5",
            "vmladava.s8 lr, q3, q5",
            // The next kernel row.
            "ldr r9, [sp]",
            "ldr r9, [r9, #8]",
            "add r7, r9",
            "subs r11, #1",
            "bne 2b",
            store_pair_accumulators!(),
            // The first filter's pointer ended at the second's start, the second's at
            // the next pair's: the next pair starts there.
            "mov r3, r5",
            "ldr r9, [sp]",
            "ldr r9, [r9, #12]",
            "adds r5, r5, r9",
            "ldr r9, [sp, #4]",
            "subs r9, #1",
            "str r9, [sp, #4]",
            "bne 3b",
            "ldr r9, [sp]",
            "ldr r0, [r9, #16]",
            "vmsr p0, r0",
            "add sp, #8",
            "pop {{r6, r7}}",
            row = const ROW,
            step1 = const STEP,
            step2 = const 2 * STEP,
            step3 = const 3 * STEP,
            inout("r1") acc.as_mut_ptr().cast::<i32>() => _,
            inout("r3") weights.as_ptr() => _,
            inout("r9") start.as_mut_ptr() => _,
            inout("r11") pairs => _,
            out("r0") _,
            out("r2") _,
            out("r4") _,
            out("r5") _,
            out("r8") _,
            out("r10") _,
            out("r12") _,
            out("lr") _,
            out("d0") _, out("d1") _, out("d2") _, out("d3") _,
            out("d4") _, out("d5") _, out("d6") _, out("d7") _,
            out("d8") _, out("d9") _, out("d10") _, out("d11") _,
        );
    }
}

/// One chunk of [`dot_pairs_unchecked`]'s loop: two weight and four input loads and
/// eight `VMLADAVA.S8`, 128 MACs.
macro_rules! pairs_chunk {
    () => {
        concat!(
            "vldrb.u8 q4, [r3], #16\n",
            "vldrb.u8 q5, [r5], #16\n",
            "vldrw.u32 q1, [r7, #{step1}]\n",
            "vldrw.u32 q2, [r7, #{step2}]\n",
            "vldrw.u32 q3, [r7, #{step3}]\n",
            "vldrw.u32 q0, [r7], #{advance}\n",
            "vmladava.s8 r0, q0, q4\n",
            "vmladava.s8 r2, q1, q4\n",
            "vmladava.s8 r4, q2, q4\n",
            "vmladava.s8 r6, q3, q4\n",
            "vmladava.s8 r8, q0, q5\n",
            "vmladava.s8 r10, q1, q5\n",
            "vmladava.s8 r12, q2, q5\n",
            "vmladava.s8 lr, q3, q5\n",
        )
    };
}

/// [`dot_pairs_unchecked`]'s assembly, its chunk loop's body the given copies of
/// [`pairs_chunk`] (the loop runs `start[1]` times).
macro_rules! pairs_asm {
    ($acc:expr, $weights:expr, $start:expr, $pairs:expr, $($chunk:expr),+) => {
        asm!(
            "push {{r6, r7}}",
            "ldr r5, [r9, #16]",
            "adds r5, r3, r5",
            "push {{r9, r11}}",
            "3:",
            "ldr r9, [sp]",
            "ldr r7, [r9]",
            "ldr r11, [r9, #12]",
            zero_pair_accumulators!(),
            "4:",
            "ldr r9, [sp]",
            "ldr r9, [r9, #4]",
            "2:",
            $($chunk,)+
            "subs r9, #1",
            "bne 2b",
            // The next kernel row of pixel 0's window.
            "ldr r9, [sp]",
            "ldr r9, [r9, #8]",
            "add r7, r9",
            "subs r11, #1",
            "bne 4b",
            store_pair_accumulators!(),
            // The first filter's pointer ended at the second's start, the second's at
            // the next pair's: the next pair starts there.
            "mov r3, r5",
            "ldr r9, [sp]",
            "ldr r9, [r9, #16]",
            "adds r5, r5, r9",
            "ldr r9, [sp, #4]",
            "subs r9, #1",
            "str r9, [sp, #4]",
            "bne 3b",
            "add sp, #8",
            "pop {{r6, r7}}",
            step1 = const STEP,
            step2 = const 2 * STEP,
            step3 = const 3 * STEP,
            advance = const ADVANCE,
            inout("r1") $acc => _,
            inout("r3") $weights => _,
            inout("r9") $start => _,
            inout("r11") $pairs => _,
            out("r0") _,
            out("r2") _,
            out("r4") _,
            out("r5") _,
            out("r8") _,
            out("r10") _,
            out("r12") _,
            out("lr") _,
            out("d0") _, out("d1") _, out("d2") _, out("d3") _,
            out("d4") _, out("d5") _, out("d6") _, out("d7") _,
            out("d8") _, out("d9") _, out("d10") _, out("d11") _,
        )
    };
}

/// `acc[p][i] = Σ x_p·w_i` for the `2 · pairs` filters of `weights` (`filter_bytes`
/// each) and the four pixels whose inputs start at `source`: for kernel row `ky <
/// rows` and chunk `k < chunks`, pixel `p`'s 16 bytes are at `ky · (chunks · ADVANCE +
/// skip) + k · ADVANCE + p · STEP`, and the filter's at `16 · (ky · chunks + k)`
/// (`filter_bytes = 16 · rows · chunks`). One assembly block runs every pair of
/// filters: per chunk, two weight and four input loads and eight `VMLADAVA.S8`, 128
/// MACs in 16 instructions with the loop (14 where the chunks of a row come in threes,
/// a 3×3 window's: the loop then runs a third as often over three chunks); then eight
/// stores into the accumulators.
///
/// # Safety
///
/// Every input chunk so described must be 16 readable bytes at a 4-byte aligned
/// address (`VLDRW`); `weights` must hold `2 · pairs · filter_bytes` bytes; `rows`,
/// `chunks` and `pairs` must be at least 1, and `2 · pairs ≤ CHANNEL_BLOCK`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn dot_pairs_unchecked<const STEP: usize, const ADVANCE: usize>(
    source: *const i8,
    rows: usize,
    chunks: usize,
    skip: usize,
    weights: &[i8],
    pairs: usize,
    filter_bytes: usize,
    acc: &mut Accumulators,
) {
    let by_threes = chunks % 3 == 0;
    // What each pair and each kernel row start from, read from memory: the loop needs
    // every register. The loop's count: chunks, or threes of chunks.
    let start = [
        source as usize,
        if by_threes { chunks / 3 } else { chunks },
        skip,
        rows,
        filter_bytes,
    ];
    let acc = acc.as_mut_ptr().cast::<i32>();
    // SAFETY: the reads are those the caller vouches for: per pair and kernel row, the
    // loop reads `chunks` times 16 bytes of each of the pair's filters and the four
    // pixels' 16 bytes at `r7 + p · STEP`, `r7` moving `ADVANCE` a chunk and `skip` a
    // row. It writes `acc[p][i]` and `acc[p][i + 1]` at `acc + 256·p + 4·i` (rows of
    // CHANNEL_BLOCK = 64 i32) for `i < 2 · pairs ≤ CHANNEL_BLOCK`. `start` is 20
    // readable bytes. VMLADAVA accumulates into even registers only: all eight are
    // used, r6 (which LLVM reserves) and r7 (the frame pointer, here the input pointer)
    // saved on the stack and restored, as are the pointer to `start` and the pairs
    // left, reloaded as needed; the other registers it writes are declared, and q0–q5
    // (d0–d11).
    unsafe {
        if by_threes {
            pairs_asm!(
                acc,
                weights.as_ptr(),
                start.as_ptr(),
                pairs,
                pairs_chunk!(),
                pairs_chunk!(),
                pairs_chunk!()
            );
        } else {
            pairs_asm!(acc, weights.as_ptr(), start.as_ptr(), pairs, pairs_chunk!());
        }
    }
}

/// For the filters `i` of `weights` (`window` bytes each): `acc[p][first + i] =
/// Σ x_p·w_i`. One assembly block runs every filter: the tail-predicated loop over
/// the window, then four stores to the accumulators.
fn dot_each(
    columns: &Columns,
    weights: &[i8],
    window: usize,
    acc: &mut Accumulators,
    first: usize,
) {
    let filters = (weights.len() / window.max(1)).min(CHANNEL_BLOCK.saturating_sub(first));
    if filters == 0 || window > WINDOW_CAPACITY {
        return;
    }
    // The loop's weight pointer moves 16 bytes per iteration, the last partial one
    // included: this much past the filter's end.
    let overshoot = window.next_multiple_of(16) - window;
    // SAFETY: per filter the loop reads `window` weights (`filters · window ≤
    // weights.len()`) and, per 16 of them, 64 bytes of `columns` (`PIXELS · 16 ·
    // ⌈window / 16⌉ ≤ COLUMN_BYTES`, WINDOW_CAPACITY being a multiple of 16);
    // DLSTP/LETP predicate the last iteration to the bytes left (inactive lanes read
    // nothing). It writes `acc[p][first + i]` at `acc + 256·p + 4·(first + i)` (rows
    // of CHANNEL_BLOCK = 64 i32) for `first + i < first + filters ≤ CHANNEL_BLOCK`.
    // r7 (the frame
    // pointer, which LLVM cannot hand out) is saved on the stack and restored; q0–q4
    // (d0–d9) are declared clobbered.
    unsafe {
        asm!(
            "push {{r7}}",
            "3:",
            "movs r0, #0",
            "movs r2, #0",
            "movs r4, #0",
            "mov.w r8, #0",
            "mov r7, {columns}",
            "dlstp.8 lr, {window}",
            "2:",
            "vldrb.u8 q4, [{w}], #16",
            "vldrb.u8 q1, [r7, #16]",
            "vldrb.u8 q2, [r7, #32]",
            "vldrb.u8 q3, [r7, #48]",
            "vldrb.u8 q0, [r7], #64",
            "vmladava.s8 r0, q0, q4",
            "vmladava.s8 r2, q1, q4",
            "vmladava.s8 r4, q2, q4",
            "vmladava.s8 r8, q3, q4",
            "letp lr, 2b",
            "subs {w}, {w}, {overshoot}",
            "str r0, [{acc}]",
            "str r2, [{acc}, #256]",
            "str r4, [{acc}, #512]",
            "str r8, [{acc}, #768]",
            "adds {acc}, #4",
            "subs {filters}, #1",
            "bne 3b",
            "pop {{r7}}",
            columns = in(reg) columns.0.as_ptr(),
            window = in(reg) window,
            overshoot = in(reg) overshoot,
            w = inout(reg) weights.as_ptr() => _,
            acc = inout(reg) acc.as_mut_ptr().cast::<i32>().wrapping_add(first) => _,
            filters = inout(reg) filters => _,
            // VMLADAVA accumulates into even registers only.
            out("r0") _,
            out("r2") _,
            out("r4") _,
            out("r8") _,
            out("lr") _,
            out("d0") _, out("d1") _, out("d2") _, out("d3") _,
            out("d4") _, out("d5") _, out("d6") _, out("d7") _,
            out("d8") _, out("d9") _,
        );
    }
}

/// Copies `source` into `destination`, as long as the shorter, 16 bytes at a time in
/// a tail-predicated loop (called per kernel row, memcpy costs several times more).
#[inline(always)]
pub(super) fn copy_run(destination: &mut [i8], source: &[i8]) {
    let n = destination.len().min(source.len());
    if n == 0 {
        return;
    }
    // SAFETY: the loop reads `n` bytes of `source` and writes `n` bytes of
    // `destination`, both at least `n` long: DLSTP/LETP predicate the last iteration to
    // the bytes left, and inactive lanes are neither read nor written. q0 (d0–d1) is
    // declared clobbered.
    unsafe {
        asm!(
            "dlstp.8 lr, lr",
            "2:",
            "vldrb.u8 q0, [{source}], #16",
            "vstrb.8 q0, [{destination}], #16",
            "letp lr, 2b",
            source = inout(reg) source.as_ptr() => _,
            destination = inout(reg) destination.as_mut_ptr() => _,
            inout("lr") n => _,
            out("d0") _,
            out("d1") _,
            options(nostack),
        );
    }
}

/// `sums[i] = Σ w_i` over the block's filters of `window` bytes: one
/// tail-predicated `VADDVA.S8` loop per filter.
fn weight_sums(weights: &[i8], window: usize, sums: &mut [i32; CHANNEL_BLOCK]) {
    for (sum, filter) in sums.iter_mut().zip(weights.chunks_exact(window.max(1))) {
        let mut total = 0i32;
        // SAFETY: the loop reads the filter's `window` bytes (DLSTP/LETP predicate
        // the last iteration) and writes the listed registers; q0 (d0–d1) is
        // declared clobbered.
        unsafe {
            asm!(
                "dlstp.8 lr, {len}",
                "2:",
                "vldrb.u8 q0, [{w}], #16",
                "vaddva.s8 r0, q0",
                "letp lr, 2b",
                len = in(reg) filter.len(),
                w = inout(reg) filter.as_ptr() => _,
                // VADDVA accumulates into an even register only.
                inout("r0") total,
                out("lr") _,
                out("d0") _,
                out("d1") _,
                options(pure, readonly, nostack),
            );
        }
        *sum = total;
    }
}

/// TFLite int8 convolution, as [`crate::kernels::conv2d_i8`] computes it (same
/// arguments, same checks, bit-identical results), with Helium; see
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
    conv2d_i8_by_columns(
        dot_block,
        Some(dot_direct),
        // Decided once per call: per block it would cost a scan of the shifts.
        Some(if requant.shifts.iter().all(|&shift| shift <= 0) {
            finish_group::<true>
        } else {
            finish_group::<false>
        }),
        weight_sums,
        finish_row,
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

/// [`requantize_row`]'s assembly: after `$setup`, per four channels the accumulators
/// plus the bases, then `$load_shifts` (the shifts into q4, or q1), `$left` (what
/// shifts left, if anything), the doubling high multiply, `$right` (the right shifts into q4, if not
/// there), the rounding right shift, the zero point, the clamp and a narrowing store.
macro_rules! requantize_asm {
    ($acc:expr, $bases:expr, $shifts:expr, $multipliers:expr, $out:expr, $requant:expr, $n:expr,
     $setup:expr, $load_shifts:expr, $left:expr, $right:expr) => {
        asm!(
            "vdup.32 q6, {min}",
            "vdup.32 q7, {max}",
            $setup,
            "dlstp.32 lr, lr",
            "2:",
            "vldrw.u32 q0, [{acc}], #16",
            "vldrw.u32 q1, [{bases}], #16",
            "vadd.i32 q0, q0, q1",
            $load_shifts,
            "vldrw.u32 q2, [{multipliers}], #16",
            $left,
            "vqrdmulh.s32 q0, q0, q2",
            $right,
            // Rounding right shift by −q4, ties away from zero.
            "vand q5, q0, q4",
            "vshr.s32 q5, q5, #31",
            "vqadd.s32 q0, q0, q5",
            "vrshl.s32 q0, q0, q4",
            "vqadd.s32 q0, q0, {zero_point}",
            "vmax.s32 q0, q0, q6",
            "vmin.s32 q0, q0, q7",
            "vstrb.32 q0, [r0], #4",
            "letp lr, 2b",
            acc = inout(reg) $acc => _,
            bases = inout(reg) $bases => _,
            shifts = inout(reg) $shifts => _,
            multipliers = inout(reg) $multipliers => _,
            // The narrowing store takes a low register only.
            inout("r0") $out => _,
            zero_point = in(reg) $requant.output_zero_point,
            min = in(reg) $requant.activation_min,
            max = in(reg) $requant.activation_max,
            inout("lr") $n => _,
            out("d0") _, out("d1") _, out("d2") _, out("d3") _,
            out("d4") _, out("d5") _, out("d6") _, out("d7") _,
            out("d8") _, out("d9") _, out("d10") _, out("d11") _,
            out("d12") _, out("d13") _, out("d14") _, out("d15") _,
            options(nostack),
        )
    };
}

/// `out[i] = clamp(rdpot(srdhm((acc[i] + bases[i]) << left_i, multiplier_i), right_i) + zp)` for
/// four channels at a time, as [`crate::quant::QuantizedMultiplier::apply`] and the
/// requantization compute it. Every shift must be in `-31..=30`, and with
/// `RIGHT_ONLY` at most 0 (no left shift: three instructions fewer per four channels).
fn requantize_row<const RIGHT_ONLY: bool>(
    acc: &[i32],
    bases: &[i32],
    multipliers: &[i32],
    shifts: &[i32],
    requant: &Requantize<'_>,
    out: &mut [i8],
) {
    let n = out
        .len()
        .min(acc.len())
        .min(multipliers.len())
        .min(shifts.len());
    if n == 0 {
        return;
    }
    let (acc, bases, shifts, multipliers, out) = (
        acc.as_ptr(),
        bases.as_ptr(),
        shifts.as_ptr(),
        multipliers.as_ptr(),
        out.as_mut_ptr(),
    );
    if RIGHT_ONLY {
        // The shifts are the right shifts, negated.
        // SAFETY: the loop reads `n` i32s from `acc`, `bases`, `multipliers` and
        // `shifts` and writes `n` bytes to `out`, all at least `n` long (DLSTP/LETP
        // predicate the last iteration to the elements left); q0–q7 (d0–d15) are
        // declared clobbered.
        unsafe {
            requantize_asm!(
                acc,
                bases,
                shifts,
                multipliers,
                out,
                requant,
                n,
                "",
                "vldrw.u32 q4, [{shifts}], #16",
                "",
                ""
            );
        }
    } else {
        // x << max(shift, 0) before the multiply, −min(shift, 0) after it.
        // SAFETY: as for the block above.
        unsafe {
            requantize_asm!(
                acc,
                bases,
                shifts,
                multipliers,
                out,
                requant,
                n,
                "vmov.i32 q3, #0",
                "vldrw.u32 q1, [{shifts}], #16",
                "vmax.s32 q4, q1, q3\nvshl.s32 q0, q0, q4",
                "vmin.s32 q4, q1, q3"
            );
        }
    }
}

/// The vector constants of [`add_row`] for one add, loaded from memory (there are not
/// enough registers to pass them all): −right shifts of the three multipliers, then
/// the output range.
struct AddConstants([[i32; 4]; 5]);

impl AddConstants {
    fn new(add: &AddParams) -> Self {
        let negated_right = |shift: i32| -(-shift).max(0);
        AddConstants([
            [negated_right(add.input1_shift); 4],
            [negated_right(add.input2_shift); 4],
            [negated_right(add.output_shift); 4],
            [add.activation_min; 4],
            [add.activation_max; 4],
        ])
    }
}

/// `out[i] = values[i] + shortcut[i]` as TFLite's int8 ADD computes it (see
/// [`AddParams::add`]), four at a time; `shortcut` `None` reads it from `out`
/// itself (an in-place residual). The input shifts must be `≤ 0` and every
/// shift in `-31..=30` (true of every validated blob).
fn add_row(
    values: &[i8],
    shortcut: Option<&[i8]>,
    add: &AddParams,
    constants: &AddConstants,
    out: &mut [i8],
) {
    let n = out
        .len()
        .min(values.len())
        .min(shortcut.map_or(usize::MAX, <[i8]>::len));
    if n == 0 {
        return;
    }
    let constants = &constants.0;
    // SAFETY: the loop reads `n` bytes of `values` and of the shortcut (`shortcut`,
    // or `out` itself, each element read before the same iteration writes it) and
    // writes `n` bytes to `out`, all at least `n` long (DLSTP/LETP predicate the
    // last iteration); `constants` is 80 readable bytes; q0–q7 are declared
    // clobbered.
    unsafe {
        asm!(
            "vldrw.u32 q3, [{constants}]",
            "vldrw.u32 q4, [{constants}, #16]",
            "vldrw.u32 q5, [{constants}, #32]",
            "vldrw.u32 q6, [{constants}, #48]",
            "vldrw.u32 q7, [{constants}, #64]",
            "dlstp.32 lr, lr",
            "2:",
            // The first input: ((v − zp1) << 20) times its multiplier.
            "vldrb.s32 q0, [r0], #4",
            "vsub.i32 q0, q0, {zp1}",
            "vshl.i32 q0, q0, #20",
            "vqrdmulh.s32 q0, q0, {m1}",
            "vand q1, q0, q3",
            "vshr.s32 q1, q1, #31",
            "vqadd.s32 q0, q0, q1",
            "vrshl.s32 q0, q0, q3",
            // The second (the shortcut), likewise.
            "vldrb.s32 q2, [r1], #4",
            "vsub.i32 q2, q2, {zp2}",
            "vshl.i32 q2, q2, #20",
            "vqrdmulh.s32 q2, q2, {m2}",
            "vand q1, q2, q4",
            "vshr.s32 q1, q1, #31",
            "vqadd.s32 q2, q2, q1",
            "vrshl.s32 q2, q2, q4",
            // Their saturating sum times the output multiplier.
            "vqadd.s32 q0, q0, q2",
            "vshl.s32 q0, {left3}",
            "vqrdmulh.s32 q0, q0, {m3}",
            "vand q1, q0, q5",
            "vshr.s32 q1, q1, #31",
            "vqadd.s32 q0, q0, q1",
            "vrshl.s32 q0, q0, q5",
            "vqadd.s32 q0, q0, {zp_out}",
            "vmax.s32 q0, q0, q6",
            "vmin.s32 q0, q0, q7",
            "vstrb.32 q0, [r2], #4",
            "letp lr, 2b",
            constants = in(reg) constants.as_ptr(),
            // The widening loads and narrowing store take low registers only.
            inout("r0") values.as_ptr() => _,
            inout("r1") shortcut.map_or(out.as_ptr(), <[i8]>::as_ptr) => _,
            inout("r2") out.as_mut_ptr() => _,
            zp1 = in(reg) add.input1_zero_point,
            zp2 = in(reg) add.input2_zero_point,
            m1 = in(reg) add.input1_multiplier,
            m2 = in(reg) add.input2_multiplier,
            m3 = in(reg) add.output_multiplier,
            left3 = in(reg) add.output_shift.max(0),
            zp_out = in(reg) add.output_zero_point,
            inout("lr") n => _,
            out("d0") _, out("d1") _, out("d2") _, out("d3") _,
            out("d4") _, out("d5") _, out("d6") _, out("d7") _,
            out("d8") _, out("d9") _, out("d10") _, out("d11") _,
            out("d12") _, out("d13") _, out("d14") _, out("d15") _,
            options(nostack),
        );
    }
}

/// [`finish_row_scalar`] with Helium: requantization, then the residual add (its
/// shortcut gathered into a contiguous row first), four channels at a time, for
/// parameters that [`super::columns::vector_finish_applies`] to.
fn finish_row(
    acc: &[i32],
    bases: &[i32],
    channels: Range<usize>,
    requant: &Requantize<'_>,
    add: Option<&AddTables>,
    shortcut: ShortcutRow<'_>,
    out: &mut [i8],
) {
    let multipliers = requant.multipliers.get(channels.clone());
    let shifts = requant.shifts.get(channels.clone());
    let (Some(multipliers), Some(shifts), Some(out_block)) =
        (multipliers, shifts, out.get(channels.clone()))
    else {
        return finish_row_scalar(acc, bases, channels, requant, add, shortcut, out);
    };
    let n = out_block.len();
    if n > CHANNEL_BLOCK {
        return finish_row_scalar(acc, bases, channels, requant, add, shortcut, out);
    }
    let Some(tables) = add else {
        return requantize_row::<false>(
            acc,
            bases,
            multipliers,
            shifts,
            requant,
            &mut out[channels],
        );
    };
    requantize_and_add::<false>(
        acc,
        bases,
        multipliers,
        shifts,
        channels,
        requant,
        (tables, &AddConstants::new(&tables.params)),
        shortcut,
        &mut [0; CHANNEL_BLOCK],
        out,
    );
}

/// One pixel's block of channels `channels` (at most [`CHANNEL_BLOCK`]; `multipliers`
/// and `shifts` theirs) requantized into `values`, then added to the pixel's `shortcut`
/// into `out[channels]` (`out` the pixel's output row), with the add's tables and
/// [`AddConstants`].
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn requantize_and_add<const RIGHT_ONLY: bool>(
    acc: &[i32],
    bases: &[i32],
    multipliers: &[i32],
    shifts: &[i32],
    channels: Range<usize>,
    requant: &Requantize<'_>,
    (tables, constants): (&AddTables, &AddConstants),
    shortcut: ShortcutRow<'_>,
    values: &mut [i8; CHANNEL_BLOCK],
    out: &mut [i8],
) {
    let n = channels.len().min(CHANNEL_BLOCK);
    let values = &mut values[..n];
    requantize_row::<RIGHT_ONLY>(acc, bases, multipliers, shifts, requant, values);
    let out_block = &mut out[channels.clone()];
    match shortcut {
        // A row holding these very channels (an identity shortcut read from another
        // buffer, as a streamed block reads its input, or a projection's output) is
        // added from where it is; others are gathered channel by channel first.
        ShortcutRow::Mapped(source, 0) if source.len() >= channels.end => add_row(
            values,
            source.get(channels),
            &tables.params,
            constants,
            out_block,
        ),
        ShortcutRow::Mapped(source, offset) => {
            let mut gathered = [0i8; CHANNEL_BLOCK];
            for (g, c) in gathered.iter_mut().zip(channels) {
                *g = ShortcutRow::mapped(source, offset, c, tables);
            }
            add_row(
                values,
                Some(&gathered[..n]),
                &tables.params,
                constants,
                out_block,
            );
        }
        // In place: the output row holds the shortcut.
        ShortcutRow::None | ShortcutRow::InPlace => {
            add_row(values, None, &tables.params, constants, out_block)
        }
    }
}

/// [`super::columns::FinishGroup`] for Helium: [`finish_row`] for the group's pixels, the add's
/// constants computed once for them all (called per pixel, the finish's set-up cost
/// as much as its four-lane loops). `RIGHT_ONLY`: no shift of the layer is positive.
fn finish_group<const RIGHT_ONLY: bool>(block: &GroupBlock<'_, '_>, out: &mut [i8]) -> bool {
    let GroupBlock {
        acc,
        bases,
        ref channels,
        requant,
        residual,
        oy,
        ox,
        pixels,
        out_c,
    } = *block;
    let n = channels.len();
    let (Some(multipliers), Some(shifts), Some(bases)) = (
        requant.multipliers.get(channels.clone()),
        requant.shifts.get(channels.clone()),
        bases.get(..n),
    ) else {
        return false;
    };
    if n == 0 || n > CHANNEL_BLOCK || channels.end > out_c || out.len() < pixels * out_c {
        return false;
    }
    let rows = out.chunks_exact_mut(out_c).zip(acc).take(pixels);
    let Some((shortcut, tables)) = residual else {
        for (row, acc) in rows {
            requantize_row::<RIGHT_ONLY>(
                &acc[..n],
                bases,
                multipliers,
                shifts,
                requant,
                &mut row[channels.clone()],
            );
        }
        return true;
    };
    let constants = AddConstants::new(&tables.params);
    let mut values = [0i8; CHANNEL_BLOCK];
    for (p, (row, acc)) in rows.enumerate() {
        requantize_and_add::<RIGHT_ONLY>(
            &acc[..n],
            bases,
            multipliers,
            shifts,
            channels.clone(),
            requant,
            (tables, &constants),
            ShortcutRow::at(Some((shortcut, tables)), oy, ox + p),
            &mut values,
            row,
        );
    }
    true
}
