//! Helium (M-profile vector extension) for the Cortex-M55: int8 convolution with
//! 16-lane dot products over the column buffer of [`super::columns`].
//!
//! Each output channel runs one tail-predicated low-overhead loop (`DLSTP`/`LETP`)
//! over its window: one `VLDRB` of 16 weights, four of inputs (one per pixel of the
//! group), four `VMLADAVA.S8` (16 MACs each into a scalar accumulator) and one
//! `VADDVA.S8` (the weights' sum): 10 instructions for 64 MACs.

use core::arch::asm;

use super::columns::{conv2d_i8_by_columns, Columns, PIXELS, WINDOW_CAPACITY};
use crate::error::Error;
use crate::kernels::{ConvShape, Requantize, Shortcut};
use crate::quant::AddParams;

/// `(Σ x_p·w for p in 0..4, Σ w)` over `filter`, the four pixels' columns as
/// [`super::columns::column_offset`] lays them out.
#[inline(always)]
fn dot_4(columns: &Columns, filter: &[i8]) -> ([i32; PIXELS], i32) {
    let len = filter.len().min(WINDOW_CAPACITY);
    if len == 0 {
        return ([0; PIXELS], 0);
    }
    let (mut a0, mut a1, mut a2, mut a3, mut sum) = (0i32, 0i32, 0i32, 0i32, 0i32);
    // SAFETY: the loop reads `len` weights from `filter` and, per 16 of them, 64
    // bytes of `columns`: `PIXELS · 16 · ⌈len / 16⌉ ≤ COLUMN_BYTES` since
    // WINDOW_CAPACITY is a multiple of 16. DLSTP/LETP predicate the last
    // iteration's lanes to the `len` bytes left (loads of inactive lanes read
    // nothing and give zero); the loop writes the listed registers only. q0–q4 are
    // s0–s19, declared clobbered.
    unsafe {
        asm!(
            "dlstp.8 lr, {len}",
            "2:",
            "vldrb.u8 q4, [{w}], #16",
            "vldrb.u8 q1, [{x}, #16]",
            "vldrb.u8 q2, [{x}, #32]",
            "vldrb.u8 q3, [{x}, #48]",
            "vldrb.u8 q0, [{x}], #64",
            "vmladava.s8 r0, q0, q4",
            "vmladava.s8 r2, q1, q4",
            "vmladava.s8 r4, q2, q4",
            "vmladava.s8 r8, q3, q4",
            "vaddva.s8 r10, q4",
            "letp lr, 2b",
            len = in(reg) len,
            w = inout(reg) filter.as_ptr() => _,
            x = inout(reg) columns.as_ptr() => _,
            // VMLADAVA and VADDVA accumulate into even registers only.
            inout("r0") a0,
            inout("r2") a1,
            inout("r4") a2,
            inout("r8") a3,
            inout("r10") sum,
            out("lr") _,
            out("d0") _, out("d1") _, out("d2") _, out("d3") _,
            out("d4") _, out("d5") _, out("d6") _, out("d7") _,
            out("d8") _, out("d9") _,
            options(pure, readonly, nostack),
        );
    }
    ([a0, a1, a2, a3], sum)
}

/// TFLite int8 convolution, as [`crate::kernels::conv2d_i8`] computes it (same
/// arguments, same checks, bit-identical results), with Helium; see
/// [`conv2d_i8_by_columns`].
#[allow(clippy::too_many_arguments)]
pub fn conv2d_i8(
    shape: &ConvShape,
    input: &[i8],
    input_zero_point: i32,
    weights: &[i8],
    bias: &[i32],
    requant: &Requantize<'_>,
    residual: Option<(Shortcut<'_, i8>, &AddParams)>,
    output: &mut [i8],
) -> Result<(), Error> {
    conv2d_i8_by_columns(
        dot_4,
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
