//! NEON (AArch64 Advanced SIMD) for the Cortex-A53 and later: int8 convolution over
//! the column buffer of [`super::columns`], with the stable `core::arch::aarch64`
//! intrinsics.
//!
//! Per 16 bytes of a filter and each of the group's four pixels: `SMULL`/`SMULL2`
//! multiply the 16 int8 pairs into 16-bit products (an int8 product always fits) and
//! `SADALP` adds neighbouring products into 32-bit lanes (a sum of two could not fit
//! 16 bits: that is why the products are not accumulated in 16 bits). `SADDLP` and
//! `SADALP` sum the weights. ARMv8.0 has no `SDOT` (the A53 is ARMv8.0).

use core::arch::aarch64::{
    int32x4_t, vaddvq_s32, vdupq_n_s32, vget_low_s8, vld1q_s8, vmull_high_s8, vmull_s8,
    vpadalq_s16, vpaddlq_s8,
};

use super::columns::{column_offset, conv2d_i8_by_columns, finish_row_scalar, Columns, PIXELS};
use crate::error::Error;
use crate::kernels::{ConvShape, Requantize, Shortcut};
use crate::quant::AddParams;

/// `acc + Σ` of the 16 products `x·w`, pairwise into four 32-bit lanes.
#[inline(always)]
fn multiply_accumulate(acc: int32x4_t, x: [i8; 16], w: [i8; 16]) -> int32x4_t {
    // SAFETY: NEON is part of the aarch64 targets this module is compiled for; the
    // loads read the two 16-byte arrays.
    unsafe {
        let (x, w) = (vld1q_s8(x.as_ptr()), vld1q_s8(w.as_ptr()));
        let low = vmull_s8(vget_low_s8(x), vget_low_s8(w));
        let high = vmull_high_s8(x, w);
        vpadalq_s16(vpadalq_s16(acc, low), high)
    }
}

/// 16 bytes of `bytes` from `at`, zero past its end.
#[inline(always)]
fn sixteen(bytes: &[i8], at: usize) -> [i8; 16] {
    let mut chunk = [0i8; 16];
    if let Some(full) = bytes.get(at..at + 16) {
        chunk.copy_from_slice(full);
    } else if let Some(part) = bytes.get(at..) {
        chunk[..part.len()].copy_from_slice(part);
    }
    chunk
}

/// `(Σ x_p·w for p in 0..4, Σ w)` over `filter`, the four pixels' columns as
/// [`column_offset`] lays them out. The last chunk's weights past the filter's end
/// count as zero, so the columns' bytes there do not matter.
#[inline(always)]
fn dot_4(columns: &Columns, filter: &[i8]) -> ([i32; PIXELS], i32) {
    // SAFETY: NEON is part of the aarch64 targets this module is compiled for.
    let zero = unsafe { vdupq_n_s32(0) };
    let mut acc = [zero; PIXELS];
    let mut weight_sum = zero;
    for chunk in 0..filter.len().div_ceil(16) {
        let w = sixteen(filter, chunk * 16);
        for (p, acc) in acc.iter_mut().enumerate() {
            *acc = multiply_accumulate(*acc, sixteen(columns, column_offset(chunk, p)), w);
        }
        // SAFETY: as above; the load reads the 16-byte array.
        weight_sum = unsafe { vpadalq_s16(weight_sum, vpaddlq_s8(vld1q_s8(w.as_ptr()))) };
    }
    // SAFETY: as above (register-only reductions).
    unsafe { (acc.map(|a| vaddvq_s32(a)), vaddvq_s32(weight_sum)) }
}

/// TFLite int8 convolution, as [`crate::kernels::conv2d_i8`] computes it (same
/// arguments, same checks, bit-identical results), with NEON; see
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
        finish_row_scalar,
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
