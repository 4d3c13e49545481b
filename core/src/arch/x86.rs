//! x86-64 hosts (`tinyres eval`): int8 convolution over the column buffer of
//! [`super::columns`] with SSE2, which every x86-64 processor has (no runtime
//! detection needed).
//!
//! Per 16 bytes of a filter: the weights are widened to two vectors of eight 16-bit
//! lanes once (`PUNPCKLBW`/`PUNPCKHBW` with themselves, then an arithmetic shift right
//! by 8 sign-extends); each of the group's four pixels is widened the same way and
//! `PMADDWD` multiplies the lanes and adds neighbouring products into 32-bit lanes.
//! The weights' sum is a `PMADDWD` against ones.

use core::arch::x86_64::{
    __m128i, _mm_add_epi32, _mm_loadu_si128, _mm_madd_epi16, _mm_set1_epi16, _mm_setzero_si128,
    _mm_shuffle_epi32, _mm_srai_epi16, _mm_storeu_si128, _mm_unpackhi_epi8, _mm_unpacklo_epi8,
};

use super::columns::{
    column_offset, conv2d_i8_by_columns, each_filter, finish_row_scalar, weight_sums_scalar,
    Columns, PIXELS,
};
use crate::error::Error;
use crate::kernels::{ConvShape, Requantize, Shortcut};
use crate::quant::AddParams;

/// The 16 int8 values of `bytes` from `at` (zero past its end), sign-extended to
/// two vectors of eight i16.
#[inline(always)]
fn widen(bytes: &[i8], at: usize) -> (__m128i, __m128i) {
    let mut chunk = [0i8; 16];
    if let Some(full) = bytes.get(at..at + 16) {
        chunk.copy_from_slice(full);
    } else if let Some(part) = bytes.get(at..) {
        chunk[..part.len()].copy_from_slice(part);
    }
    // SAFETY: SSE2 is part of every x86-64 target; the load reads the 16-byte array
    // (unaligned load).
    unsafe {
        let v = _mm_loadu_si128(chunk.as_ptr().cast());
        (
            _mm_srai_epi16(_mm_unpacklo_epi8(v, v), 8),
            _mm_srai_epi16(_mm_unpackhi_epi8(v, v), 8),
        )
    }
}

/// The sum of the four i32 lanes.
#[inline(always)]
fn horizontal_sum(v: __m128i) -> i32 {
    // SAFETY: SSE2 (see `widen`); the store writes the 16-byte array.
    unsafe {
        let v = _mm_add_epi32(v, _mm_shuffle_epi32(v, 0b01_00_11_10));
        let v = _mm_add_epi32(v, _mm_shuffle_epi32(v, 0b10_11_00_01));
        let mut lanes = [0i32; 4];
        _mm_storeu_si128(lanes.as_mut_ptr().cast(), v);
        lanes[0]
    }
}

/// `(Σ x_p·w for p in 0..4, Σ w)` over `filter`, the four pixels' columns as
/// [`column_offset`] lays them out. Weights past the filter's end count as zero.
#[inline(always)]
fn dot_4(columns: &Columns, filter: &[i8]) -> ([i32; PIXELS], i32) {
    // SAFETY: SSE2 (see `widen`); register-only.
    let (zero, ones) = unsafe { (_mm_setzero_si128(), _mm_set1_epi16(1)) };
    let mut acc = [zero; PIXELS];
    let mut weight_sum = zero;
    for chunk in 0..filter.len().div_ceil(16) {
        let (w_low, w_high) = widen(filter, chunk * 16);
        for (p, acc) in acc.iter_mut().enumerate() {
            let (x_low, x_high) = widen(&columns.0, column_offset(chunk, p));
            // SAFETY: SSE2 (see `widen`); register-only.
            *acc = unsafe {
                _mm_add_epi32(
                    _mm_add_epi32(*acc, _mm_madd_epi16(x_low, w_low)),
                    _mm_madd_epi16(x_high, w_high),
                )
            };
        }
        // SAFETY: SSE2 (see `widen`); register-only.
        weight_sum = unsafe {
            _mm_add_epi32(
                _mm_add_epi32(weight_sum, _mm_madd_epi16(w_low, ones)),
                _mm_madd_epi16(w_high, ones),
            )
        };
    }
    (acc.map(horizontal_sum), horizontal_sum(weight_sum))
}

/// TFLite int8 convolution, as [`crate::kernels::conv2d_i8`] computes it (same
/// arguments, same checks, bit-identical results), with SSE2; see
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
        each_filter(dot_4),
        weight_sums_scalar,
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
