//! x86-64 hosts (`tinyres eval`): int8 convolution over the column buffer of
//! [`super::columns`], with AVX2 where the processor has it (detected once with
//! CPUID: hosts vary, unlike a microcontroller) and SSE2, which every x86-64
//! processor has, elsewhere.
//!
//! AVX2, two filters at a time: `VPMOVSXBW` widens 16 int8 to 16 i16 lanes, then
//! `VPMADDWD` multiplies and adds neighbouring products into eight i32 lanes: per 16
//! bytes, six widenings, eight multiply-adds and eight adds for 128 MACs.
//!
//! SSE2, one filter at a time: per 16 bytes of a filter, the weights are widened to two vectors of eight 16-bit
//! lanes once (`PUNPCKLBW`/`PUNPCKHBW` with themselves, then an arithmetic shift right
//! by 8 sign-extends); each of the group's four pixels is widened the same way and
//! `PMADDWD` multiplies the lanes and adds neighbouring products into 32-bit lanes.

use core::arch::x86_64::{
    __cpuid, __cpuid_count, __m128i, __m256i, _mm256_add_epi32, _mm256_add_epi64, _mm256_and_si256,
    _mm256_blend_epi32, _mm256_castsi256_si128, _mm256_cmpgt_epi32, _mm256_cvtepi8_epi16,
    _mm256_extracti128_si256, _mm256_loadu_si256, _mm256_madd_epi16, _mm256_max_epi32,
    _mm256_min_epi32, _mm256_mul_epi32, _mm256_set1_epi32, _mm256_set1_epi64x,
    _mm256_setzero_si256, _mm256_slli_epi64, _mm256_sllv_epi32, _mm256_srav_epi32,
    _mm256_srli_epi32, _mm256_srli_epi64, _mm256_sub_epi32, _mm_add_epi32, _mm_loadu_si128,
    _mm_madd_epi16, _mm_packs_epi16, _mm_packs_epi32, _mm_setzero_si128, _mm_shuffle_epi32,
    _mm_srai_epi16, _mm_storel_epi64, _mm_storeu_si128, _mm_unpackhi_epi8, _mm_unpacklo_epi8,
    _xgetbv,
};

use core::ops::Range;
use core::sync::atomic::{AtomicU8, Ordering};

use super::columns::{
    column_offset, conv2d_i8_by_columns, each_filter, finish_row_scalar, weight_sums_scalar,
    Accumulators, Columns, ConvScratch, ShortcutRow, CHANNEL_BLOCK, PIXELS,
};
use crate::error::Error;
use crate::kernels::{ConvShape, Requantize, Shortcut};
use crate::quant::AddTables;

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

/// `Σ x_p·w` for `p` in `0..4` over `filter`, the four pixels' columns as
/// [`column_offset`] lays them out. Weights past the filter's end count as zero.
#[inline(always)]
fn dot_4(columns: &Columns, filter: &[i8]) -> [i32; PIXELS] {
    // SAFETY: SSE2 (see `widen`); register-only.
    let mut acc = [unsafe { _mm_setzero_si128() }; PIXELS];
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
    }
    acc.map(horizontal_sum)
}

/// Whether the processor and the operating system support AVX2 (CPUID leaf 7
/// EBX bit 5; OSXSAVE, with XCR0 enabling the XMM and YMM state), checked once.
fn has_avx2() -> bool {
    const UNKNOWN: u8 = 0;
    const NO: u8 = 1;
    const YES: u8 = 2;
    static STATE: AtomicU8 = AtomicU8::new(UNKNOWN);
    match STATE.load(Ordering::Relaxed) {
        NO => false,
        YES => true,
        _ => {
            let yes = detect_avx2();
            STATE.store(if yes { YES } else { NO }, Ordering::Relaxed);
            yes
        }
    }
}

fn detect_avx2() -> bool {
    let leaf1 = __cpuid(1);
    let (osxsave, avx) = (leaf1.ecx & (1 << 27) != 0, leaf1.ecx & (1 << 28) != 0);
    if !(osxsave && avx) || __cpuid(0).eax < 7 {
        return false;
    }
    // SAFETY: OSXSAVE is set, so XGETBV is available.
    let xcr0 = unsafe { xcr0() };
    xcr0 & 0b110 == 0b110 && __cpuid_count(7, 0).ebx & (1 << 5) != 0
}

/// XCR0, the state components the operating system saves.
///
/// # Safety
///
/// The processor must support XGETBV (CPUID.1:ECX.OSXSAVE).
#[target_feature(enable = "xsave")]
unsafe fn xcr0() -> u64 {
    // SAFETY: the caller guarantees XGETBV.
    unsafe { _xgetbv(0) }
}

/// The sum of the eight i32 lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn horizontal_sum_256(v: __m256i) -> i32 {
    horizontal_sum(_mm_add_epi32(
        _mm256_castsi256_si128(v),
        _mm256_extracti128_si256::<1>(v),
    ))
}

/// 16 weights from `filter` at `at` (zero past its end), widened to i16 lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn widen_weights(filter: &[i8], at: usize) -> __m256i {
    if let Some(full) = filter.get(at..at + 16) {
        // SAFETY: the load reads the 16 bytes of `full` (unaligned load).
        return _mm256_cvtepi8_epi16(unsafe { _mm_loadu_si128(full.as_ptr().cast()) });
    }
    let mut chunk = [0i8; 16];
    if let Some(part) = filter.get(at..) {
        chunk[..part.len()].copy_from_slice(part);
    }
    // SAFETY: the load reads the 16-byte array (unaligned load).
    _mm256_cvtepi8_epi16(unsafe { _mm_loadu_si128(chunk.as_ptr().cast()) })
}

/// `acc[p][i] = Σ x_p·w_i` for the block's filters, two at a time (see the module's
/// documentation).
#[target_feature(enable = "avx2")]
fn dot_block_avx2(columns: &Columns, weights: &[i8], window: usize, acc: &mut Accumulators) {
    let filters = (weights.len() / window.max(1)).min(CHANNEL_BLOCK);
    let chunks = window.div_ceil(16);
    let mut i = 0;
    while i < filters {
        let pair = (filters - i).min(2);
        let mut sums = [[_mm256_setzero_si256(); 2]; PIXELS];
        for chunk in 0..chunks {
            let first = &weights[i * window..][..window];
            let second = &weights[(i + pair - 1) * window..][..window];
            let w = [
                widen_weights(first, chunk * 16),
                widen_weights(second, chunk * 16),
            ];
            for (p, sums) in sums.iter_mut().enumerate() {
                let at = column_offset(chunk, p);
                let Some(x) = columns.0.get(at..at + 16) else {
                    continue;
                };
                // SAFETY: the load reads 16 bytes of `x` (unaligned load).
                let x = _mm256_cvtepi8_epi16(unsafe { _mm_loadu_si128(x.as_ptr().cast()) });
                for (sum, &w) in sums.iter_mut().zip(&w) {
                    *sum = _mm256_add_epi32(*sum, _mm256_madd_epi16(x, w));
                }
            }
        }
        for (row, sums) in acc.iter_mut().zip(&sums) {
            for f in 0..pair {
                row[i + f] = horizontal_sum_256(sums[f]);
            }
        }
        i += pair;
    }
}

/// The block kernel: AVX2 where available, else SSE2 one filter at a time.
fn dot_block(columns: &Columns, weights: &[i8], window: usize, acc: &mut Accumulators) {
    if has_avx2() {
        // SAFETY: the processor supports AVX2 (checked just above).
        unsafe { dot_block_avx2(columns, weights, window, acc) }
    } else {
        each_filter(dot_4)(columns, weights, window, acc)
    }
}

/// Eight accumulators (plus their bases) requantized as
/// [`crate::quant::QuantizedMultiplier::apply`] and the requantization compute
/// them, exactly: the doubling high multiply from 64-bit products of the even and
/// odd lanes (`VPMULDQ`), TFLite's rounding divide with per-lane shifts, and the
/// saturating add of the zero point done as a clamp to `[min − zp, max − zp]` before
/// adding it (the same result without a saturating 32-bit add). Multipliers must not
/// be `i32::MIN` and shifts must be in `-31..=30`.
#[inline]
#[target_feature(enable = "avx2")]
fn requantize_8(
    x: __m256i,
    multipliers: __m256i,
    shifts: __m256i,
    requant: &Requantize<'_>,
) -> __m256i {
    let zero = _mm256_setzero_si256();
    let one = _mm256_set1_epi32(1);
    let x = _mm256_sllv_epi32(x, _mm256_max_epi32(shifts, zero));
    let right = _mm256_sub_epi32(zero, _mm256_min_epi32(shifts, zero));
    let nudge = _mm256_set1_epi64x(1 << 30);
    let even = _mm256_srli_epi64::<31>(_mm256_add_epi64(_mm256_mul_epi32(x, multipliers), nudge));
    let odd = _mm256_srli_epi64::<31>(_mm256_add_epi64(
        _mm256_mul_epi32(
            _mm256_srli_epi64::<32>(x),
            _mm256_srli_epi64::<32>(multipliers),
        ),
        nudge,
    ));
    let high = _mm256_blend_epi32::<0b1010_1010>(even, _mm256_slli_epi64::<32>(odd));
    let mask = _mm256_sub_epi32(_mm256_sllv_epi32(one, right), one);
    let threshold = _mm256_add_epi32(_mm256_srli_epi32::<1>(mask), _mm256_srli_epi32::<31>(high));
    let round = _mm256_cmpgt_epi32(_mm256_and_si256(high, mask), threshold);
    let divided = _mm256_sub_epi32(_mm256_srav_epi32(high, right), round);
    let zero_point = i64::from(requant.output_zero_point);
    let bound =
        |b: i32| (i64::from(b) - zero_point).clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32;
    let clamped = _mm256_min_epi32(
        _mm256_max_epi32(divided, _mm256_set1_epi32(bound(requant.activation_min))),
        _mm256_set1_epi32(bound(requant.activation_max)),
    );
    _mm256_add_epi32(clamped, _mm256_set1_epi32(requant.output_zero_point))
}

/// [`finish_row_scalar`] with AVX2 requantization, eight channels a step (the
/// residual add through its lookup tables; the rest scalar), for parameters that
/// [`super::columns::vector_finish_applies`] to.
#[target_feature(enable = "avx2")]
fn finish_row_avx2(
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
        // SAFETY: every load reads 8 i32s at `i..i + 8` of a slice at least
        // `vectors ≥ i + 8` long (unaligned loads); the store writes the 8 bytes
        // `out[c..c + 8]` (`c + 8 ≤ channels.end ≤ out.len()`).
        let values: [i8; 8] = unsafe {
            let load = |s: &[i32]| _mm256_loadu_si256(s[i..i + 8].as_ptr().cast());
            let x = _mm256_add_epi32(load(acc), load(bases));
            let v = requantize_8(x, load(multipliers), load(shifts), requant);
            let words =
                _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
            let mut bytes = [0i8; 8];
            _mm_storel_epi64(bytes.as_mut_ptr().cast(), _mm_packs_epi16(words, words));
            bytes
        };
        let out = &mut out[c..c + 8];
        match (add, shortcut) {
            (None, _) => out.copy_from_slice(&values),
            (Some(add), ShortcutRow::None | ShortcutRow::InPlace) => {
                for (o, v) in out.iter_mut().zip(values) {
                    *o = add.add(v, *o);
                }
            }
            (Some(add), ShortcutRow::Mapped(row, offset)) => {
                for (k, (o, v)) in out.iter_mut().zip(values).enumerate() {
                    *o = add.add(v, ShortcutRow::mapped(row, offset, c + k, add));
                }
            }
        }
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
/// arguments, same checks, bit-identical results), with AVX2 or SSE2; see
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
    let avx2 = has_avx2();
    conv2d_i8_by_columns(
        dot_block,
        None,
        None,
        weight_sums_scalar,
        |acc, bases, channels, requant, add, shortcut, out| {
            if avx2 {
                // SAFETY: the processor supports AVX2 (`has_avx2` above).
                unsafe { finish_row_avx2(acc, bases, channels, requant, add, shortcut, out) }
            } else {
                finish_row_scalar(acc, bases, channels, requant, add, shortcut, out)
            }
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

/// TFLite int8 convolution, as [`crate::kernels::conv2d_i8`] computes it (same
/// arguments, same checks, bit-identical results), with SSE2 only: what a processor
/// without AVX2 runs, public so that the kernel tests check it on every host.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_i8_sse2(
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
        each_filter(dot_4),
        None,
        None,
        weight_sums_scalar,
        finish_row_scalar,
        &mut ConvScratch::new(),
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
