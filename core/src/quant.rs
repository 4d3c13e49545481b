//! Fixed-point requantization exactly as the TFLite Micro reference kernels do it.
//!
//! A real multiplier `M` (for example `input_scale * weight_scale / output_scale`) is
//! stored as a Q31 fixed-point `multiplier` in `[2^30, 2^31)` and a power-of-two
//! `shift`, so that `M ≈ multiplier · 2^(shift − 31)`. Applying it to an `i32`
//! accumulator uses gemmlowp's two roundings (TFLite's default, without
//! `TFLITE_SINGLE_ROUNDING`): a saturating rounding doubling high multiply, then a
//! rounding right shift. CMSIS-NN's `arm_nn_requantize` gives the same results.

/// `(a · b · 2) >> 32`, rounded to nearest with ties towards +∞, saturating the one
/// overflowing case `a = b = i32::MIN` (gemmlowp `SaturatingRoundingDoublingHighMul`).
#[inline]
pub fn saturating_rounding_doubling_high_mul(a: i32, b: i32) -> i32 {
    if a == i32::MIN && b == i32::MIN {
        return i32::MAX;
    }
    let product = i64::from(a) * i64::from(b);
    // The reference adds a nudge of 2^30 (product ≥ 0) or 1 − 2^30 (product < 0) and
    // divides by 2^31 truncating towards zero. For a negative product that is
    // ⌈(p + 1 − 2^30) / 2^31⌉ = ⌊(p + 2^30) / 2^31⌋, the same floor as for a positive
    // one: so one add and an arithmetic shift, with no sign-dependent correction (the
    // test `requantization_is_exact_over_a_dense_sweep` checks it against the
    // reference's exact rational form). The result fits in i32 once the overflow
    // case is gone.
    ((product + (1 << 30)) >> 31) as i32
}

/// [`saturating_rounding_doubling_high_mul`] for `b != i32::MIN` (so that nothing
/// saturates) in 32-bit arithmetic: the 64-bit product from four 16×16-bit multiplies
/// (Hacker's Delight's `mulhs`), then the rounding. For cores without a 32×32→64-bit
/// multiply (ARMv6-M), where `i64` arithmetic is a library call.
#[cfg(any(test, tinyres_arm_m_base))]
#[inline(always)]
pub(crate) fn doubling_high_mul_32(a: i32, b: i32) -> i32 {
    let (a_low, a_high) = ((a as u32 & 0xFFFF) as i32, a >> 16);
    let (b_low, b_high) = ((b as u32 & 0xFFFF) as i32, b >> 16);
    // Each partial product and sum fits in i32: |high · low| < 2^31 − 2^16.
    let low = (a_low as u32).wrapping_mul(b_low as u32);
    let middle = a_high.wrapping_mul(b_low).wrapping_add((low >> 16) as i32);
    let cross = a_low.wrapping_mul(b_high).wrapping_add(middle & 0xFFFF);
    let high = a_high
        .wrapping_mul(b_high)
        .wrapping_add(middle >> 16)
        .wrapping_add(cross >> 16);
    let product_low = ((cross as u32) << 16) | (low & 0xFFFF);
    // (product + 2^30) >> 31, the high word carrying the low word's overflow.
    let nudged = product_low.wrapping_add(1 << 30);
    let carry = i32::from(nudged < product_low);
    high.wrapping_add(carry)
        .wrapping_shl(1)
        .wrapping_add((nudged >> 31) as i32)
}

/// `x / 2^exponent` rounded to nearest with ties away from zero (gemmlowp
/// `RoundingDivideByPOT`). `exponent` must be in `0..=31`.
#[inline]
pub fn rounding_divide_by_pot(x: i32, exponent: u32) -> i32 {
    debug_assert!(exponent <= 31);
    // 2^31 − 1 at most: fits u32 arithmetic (cheaper than i64 on 32-bit cores).
    let mask = ((1u32 << exponent) - 1) as i32;
    let remainder = x & mask;
    let threshold = (mask >> 1) + i32::from(x < 0);
    (x >> exponent) + i32::from(remainder > threshold)
}

/// Applies a quantized multiplier (`multiplier`, `shift`) to `x`, as TFLite's
/// `MultiplyByQuantizedMultiplier`. A positive `shift` is a left shift before the
/// multiply, a negative one a rounding right shift after it.
///
/// `shift` is clamped to `-31..=30`; blobs are validated to stay in that range.
#[inline]
pub fn multiply_by_quantized_multiplier(x: i32, multiplier: i32, shift: i32) -> i32 {
    QuantizedMultiplier::new(multiplier, shift).apply(x)
}

/// How a quantized multiplier rounds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Rounding {
    /// gemmlowp's two roundings ([`multiply_by_quantized_multiplier`]): TFLite's
    /// convolutions, ADD, and TFLite Micro's kernels.
    #[default]
    Double,
    /// One rounding of the exact product, ties towards +∞
    /// ([`multiply_by_quantized_multiplier_single_rounding`]): what LiteRT's reference
    /// FULLY_CONNECTED computes for int8.
    Single,
}

/// `x · multiplier · 2^(shift − 31)` rounded once, to nearest with ties towards +∞,
/// as TFLite's `MultiplyByQuantizedMultiplier` under `TFLITE_SINGLE_ROUNDING`.
/// `shift` is clamped to `-31..=30`.
#[inline]
pub fn multiply_by_quantized_multiplier_single_rounding(
    x: i32,
    multiplier: i32,
    shift: i32,
) -> i32 {
    let total_shift = 31 - shift.clamp(-31, 30);
    let product = i64::from(x) * i64::from(multiplier) + (1i64 << (total_shift - 1));
    (product >> total_shift).clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
}

/// A quantized multiplier with its shift split once into a left and a right shift,
/// for kernels that apply it to many values: the same results as
/// [`multiply_by_quantized_multiplier`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuantizedMultiplier {
    multiplier: i32,
    left_shift: u32,
    right_shift: u32,
}

impl QuantizedMultiplier {
    /// `multiplier · 2^(shift − 31)`, `shift` clamped to `-31..=30`.
    #[inline]
    pub fn new(multiplier: i32, shift: i32) -> Self {
        let shift = shift.clamp(-31, 30);
        QuantizedMultiplier {
            multiplier,
            left_shift: shift.max(0) as u32,
            right_shift: (-shift).max(0) as u32,
        }
    }

    /// A multiplier whose shift is known to be in `-31..=30` and whose value is not
    /// `i32::MIN` (true of every blob that validates): [`Self::apply_checked_layer`]
    /// then skips the clamp and the one overflowing case, and gives the same results
    /// as [`Self::apply`].
    #[cfg(any(tinyres_columns, tinyres_arm_m_base))]
    #[inline(always)]
    pub(crate) fn new_checked_layer(multiplier: i32, shift: i32) -> Self {
        debug_assert!((-31..=30).contains(&shift) && multiplier != i32::MIN);
        QuantizedMultiplier {
            multiplier,
            left_shift: shift.max(0) as u32,
            right_shift: (-shift).max(0) as u32,
        }
    }

    /// [`Self::apply`] for a multiplier made by [`Self::new_checked_layer`]: with the
    /// multiplier not `i32::MIN`, the doubling high multiply cannot overflow.
    #[cfg(tinyres_columns)]
    #[inline(always)]
    pub(crate) fn apply_checked_layer(self, x: i32) -> i32 {
        let product = i64::from(x.wrapping_shl(self.left_shift)) * i64::from(self.multiplier);
        rounding_divide_by_pot(((product + (1 << 30)) >> 31) as i32, self.right_shift)
    }

    /// [`Self::apply_checked_layer`] in 32-bit arithmetic ([`doubling_high_mul_32`]),
    /// for the cores without a 32×32→64-bit multiply.
    #[cfg(tinyres_arm_m_base)]
    #[inline(always)]
    pub(crate) fn apply_checked_layer_32(self, x: i32) -> i32 {
        rounding_divide_by_pot(
            doubling_high_mul_32(x.wrapping_shl(self.left_shift), self.multiplier),
            self.right_shift,
        )
    }

    /// `x` times the multiplier, with TFLite's roundings.
    #[inline(always)]
    pub fn apply(self, x: i32) -> i32 {
        rounding_divide_by_pot(
            saturating_rounding_doubling_high_mul(x.wrapping_shl(self.left_shift), self.multiplier),
            self.right_shift,
        )
    }
}

/// Splits a real multiplier into a Q31 multiplier and a shift, as TFLite's
/// `QuantizeMultiplier`: `real ≈ multiplier · 2^(shift − 31)` with `multiplier` in
/// `[2^30, 2^31)`. Zero, negative, NaN and tiny values give `(0, 0)`; shifts above 30
/// saturate to the largest representable multiplier.
pub fn quantize_multiplier(real: f64) -> (i32, i32) {
    if real.is_nan() || real <= 0.0 {
        return (0, 0);
    }
    let (fraction, mut shift) = frexp(real);
    // round() is half away from zero, like std::round in the reference.
    let mut q = libm::round(fraction * (1i64 << 31) as f64) as i64;
    if q == 1i64 << 31 {
        q /= 2;
        shift += 1;
    }
    if shift < -31 {
        return (0, 0);
    }
    if shift > 30 {
        return (i32::MAX, 30);
    }
    (q as i32, shift)
}

/// `x = fraction · 2^exponent` with `fraction` in `[0.5, 1)`, for finite positive `x`.
fn frexp(x: f64) -> (f64, i32) {
    let bits = x.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    if biased == 0 {
        // Subnormal: scale into the normal range first.
        let (fraction, exponent) = frexp(x * f64::from_bits(0x4350_0000_0000_0000)); // 2^54
        return (fraction, exponent - 54);
    }
    let fraction = f64::from_bits((bits & !(0x7ff << 52)) | (1022 << 52));
    (fraction, biased - 1022)
}

/// Parameters of a TFLite-style int8 addition `out = a + b` where each side has its
/// own scale and zero point: both inputs are shifted left by [`ADD_LEFT_SHIFT`],
/// rescaled to twice the larger input scale, added, and rescaled to the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AddParams {
    /// Zero point of the first input.
    pub input1_zero_point: i32,
    /// Zero point of the second input.
    pub input2_zero_point: i32,
    /// Zero point of the output.
    pub output_zero_point: i32,
    /// Q31 multiplier of the first input.
    pub input1_multiplier: i32,
    /// Shift of the first input (≤ 0).
    pub input1_shift: i32,
    /// Q31 multiplier of the second input.
    pub input2_multiplier: i32,
    /// Shift of the second input (≤ 0).
    pub input2_shift: i32,
    /// Q31 multiplier of the output.
    pub output_multiplier: i32,
    /// Shift of the output.
    pub output_shift: i32,
    /// Lowest output value (−128, or the output zero point after a ReLU).
    pub activation_min: i32,
    /// Highest output value.
    pub activation_max: i32,
}

/// Left shift applied to both inputs of an int8 add before rescaling (TFLite uses 20
/// for int8).
pub const ADD_LEFT_SHIFT: u32 = 20;

impl AddParams {
    /// Computes the multipliers from the real scales, as TFLite's `PrepareGeneralSubOp`
    /// / `CalculateArithmeticOpData` for int8 ADD.
    pub fn from_scales(
        (input1_scale, input1_zero_point): (f32, i32),
        (input2_scale, input2_zero_point): (f32, i32),
        (output_scale, output_zero_point): (f32, i32),
        relu: bool,
    ) -> Self {
        let twice_max_input_scale = 2.0 * f64::from(input1_scale.max(input2_scale));
        let real_input1 = f64::from(input1_scale) / twice_max_input_scale;
        let real_input2 = f64::from(input2_scale) / twice_max_input_scale;
        let real_output =
            twice_max_input_scale / (f64::from(1u32 << ADD_LEFT_SHIFT) * f64::from(output_scale));
        let (input1_multiplier, input1_shift) = quantize_multiplier(real_input1);
        let (input2_multiplier, input2_shift) = quantize_multiplier(real_input2);
        let (output_multiplier, output_shift) = quantize_multiplier(real_output);
        let (activation_min, activation_max) = activation_range(output_zero_point, relu);
        AddParams {
            input1_zero_point,
            input2_zero_point,
            output_zero_point,
            input1_multiplier,
            input1_shift,
            input2_multiplier,
            input2_shift,
            output_multiplier,
            output_shift,
            activation_min,
            activation_max,
        }
    }

    /// Adds two int8 values (TFLite reference `AddElementwise` for int8).
    #[inline]
    pub fn add(&self, a: i8, b: i8) -> i8 {
        self.prepared().add(a, b)
    }

    /// The parameters with their multipliers decoded, for adding many values.
    #[inline]
    pub fn prepared(&self) -> PreparedAdd {
        PreparedAdd {
            input1_zero_point: self.input1_zero_point,
            input2_zero_point: self.input2_zero_point,
            output_zero_point: self.output_zero_point,
            input1: QuantizedMultiplier::new(self.input1_multiplier, self.input1_shift),
            input2: QuantizedMultiplier::new(self.input2_multiplier, self.input2_shift),
            output: QuantizedMultiplier::new(self.output_multiplier, self.output_shift),
            activation_min: self.activation_min,
            activation_max: self.activation_max,
        }
    }
}

/// [`AddParams`] with the multipliers decoded ([`AddParams::prepared`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PreparedAdd {
    input1_zero_point: i32,
    input2_zero_point: i32,
    output_zero_point: i32,
    input1: QuantizedMultiplier,
    input2: QuantizedMultiplier,
    output: QuantizedMultiplier,
    activation_min: i32,
    activation_max: i32,
}

impl PreparedAdd {
    /// Adds two int8 values (TFLite reference `AddElementwise` for int8).
    #[inline(always)]
    pub fn add(&self, a: i8, b: i8) -> i8 {
        let a = (i32::from(a) - self.input1_zero_point) << ADD_LEFT_SHIFT;
        let b = (i32::from(b) - self.input2_zero_point) << ADD_LEFT_SHIFT;
        let sum = self
            .output
            .apply(self.input1.apply(a).saturating_add(self.input2.apply(b)))
            .saturating_add(self.output_zero_point);
        // max/min rather than clamp: never a panic, whatever a blob holds.
        sum.max(self.activation_min).min(self.activation_max) as i8
    }
}

/// An int8 addition prepared for a whole tensor: the rescaled first and second
/// inputs for each of the 256 int8 values, looked up instead of computed (two of the
/// three multiplies per element), then the output multiplier. The same results as
/// [`AddParams::add`]; 2 KiB, built once per layer.
#[derive(Clone, Debug)]
pub struct AddTables {
    /// The parameters tabulated.
    pub params: AddParams,
    input1: [i32; 256],
    input2: [i32; 256],
    output: QuantizedMultiplier,
}

impl AddTables {
    /// Tables not yet filled: [`Self::tabulate`] fills them in place.
    pub const UNTABULATED: AddTables = AddTables {
        params: AddParams {
            input1_zero_point: 0,
            input2_zero_point: 0,
            output_zero_point: 0,
            input1_multiplier: 0,
            input1_shift: 0,
            input2_multiplier: 0,
            input2_shift: 0,
            output_multiplier: 0,
            output_shift: 0,
            activation_min: -128,
            activation_max: 127,
        },
        input1: [0; 256],
        input2: [0; 256],
        output: QuantizedMultiplier {
            multiplier: 0,
            left_shift: 0,
            right_shift: 0,
        },
    };

    /// Tabulates `params`' input rescales.
    pub fn new(params: &AddParams) -> Self {
        let mut tables = Self::UNTABULATED;
        tables.tabulate(params);
        tables
    }

    /// Tabulates `params` over what the tables held, in place: a firmware keeps one
    /// set for all its layers instead of a 2 KiB value built (and copied) per layer.
    pub fn tabulate(&mut self, params: &AddParams) {
        let prepared = params.prepared();
        let rescale = |table: &mut [i32; 256], zero_point: i32, multiplier: QuantizedMultiplier| {
            for (i, entry) in table.iter_mut().enumerate() {
                let q = i32::from(i as u8 as i8);
                *entry = multiplier.apply((q - zero_point) << ADD_LEFT_SHIFT);
            }
        };
        self.params = *params;
        rescale(
            &mut self.input1,
            prepared.input1_zero_point,
            prepared.input1,
        );
        rescale(
            &mut self.input2,
            prepared.input2_zero_point,
            prepared.input2,
        );
        self.output = prepared.output;
    }

    /// Whether [`Self::add_32`] (and the Cortex-M DSP kernel's row finish) applies: the
    /// output shift in `-31..=30` and the output multiplier not `i32::MIN` (true of
    /// every blob that validates).
    #[cfg(any(tinyres_arm_m_base, all(target_arch = "arm", tinyres_arm_dsp)))]
    pub(crate) fn output_is_checked(&self) -> bool {
        (-31..=30).contains(&self.params.output_shift) && self.params.output_multiplier != i32::MIN
    }

    /// The rescaled first and second inputs, by int8 value (as `u8`): what
    /// [`Self::add`] sums before its output multiplier.
    #[cfg(all(target_arch = "arm", tinyres_arm_dsp))]
    pub(crate) fn input_tables(&self) -> (&[i32; 256], &[i32; 256]) {
        (&self.input1, &self.input2)
    }

    /// [`Self::add`] in 32-bit arithmetic, for tables whose
    /// [`Self::output_is_checked`], on the cores without a 32×32→64-bit multiply.
    #[cfg(tinyres_arm_m_base)]
    #[inline(always)]
    pub(crate) fn add_32(&self, a: i8, b: i8) -> i8 {
        let a = self.input1[usize::from(a as u8)];
        let b = self.input2[usize::from(b as u8)];
        let sum = self
            .output
            .apply_checked_layer_32(a.saturating_add(b))
            .saturating_add(self.params.output_zero_point);
        sum.max(self.params.activation_min)
            .min(self.params.activation_max) as i8
    }

    /// Adds two int8 values (TFLite reference `AddElementwise` for int8).
    #[inline(always)]
    pub fn add(&self, a: i8, b: i8) -> i8 {
        let a = self.input1[usize::from(a as u8)];
        let b = self.input2[usize::from(b as u8)];
        let sum = self
            .output
            .apply(a.saturating_add(b))
            .saturating_add(self.params.output_zero_point);
        sum.max(self.params.activation_min)
            .min(self.params.activation_max) as i8
    }
}

/// The int8 output range of a layer: the full `-128..=127`, or from the quantized
/// zero upwards after a fused ReLU.
pub fn activation_range(output_zero_point: i32, relu: bool) -> (i32, i32) {
    let min = if relu {
        output_zero_point.clamp(-128, 127)
    } else {
        -128
    };
    (min, 127)
}

/// Quantizes a real value to int8 with round-half-away-from-zero and saturation.
#[inline]
pub fn quantize_i8(value: f32, scale: f32, zero_point: i32) -> i8 {
    let q = libm::roundf(value / scale);
    // `as` saturates on f32 → i32 and maps NaN to 0.
    (q as i32).saturating_add(zero_point).clamp(-128, 127) as i8
}

/// The real value of an int8.
#[inline]
pub fn dequantize_i8(q: i8, scale: f32, zero_point: i32) -> f32 {
    (i32::from(q) - zero_point) as f32 * scale
}

/// `(scale, zero_point)` of an int8 softmax's output: probabilities in 1/256ths from
/// −128, the only quantization TFLite's int8 SOFTMAX writes.
pub const SOFTMAX_OUTPUT_QUANTIZATION: (f32, i32) = (1.0 / 256.0, -128);

/// Integer bits of the rescaled logit differences (TFLite's `kScaledDiffIntegerBits`):
/// differences are Q5.26 fixed-point numbers.
const SOFTMAX_DIFF_INTEGER_BITS: i32 = 5;

/// Integer bits of the sum of the exponentials (TFLite's `kAccumulationIntegerBits`).
const SOFTMAX_SUM_INTEGER_BITS: i32 = 12;

/// Parameters of TFLite's int8 softmax (`reference_ops::Softmax`, which TFLite Micro
/// runs too).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SoftmaxParams {
    /// Q31 multiplier that turns a difference of int8 logits into Q5.26.
    pub input_multiplier: i32,
    /// Left shift applied with it (0..=31).
    pub input_left_shift: i32,
    /// The smallest difference from the largest logit that counts; a smaller one
    /// gives probability 0 (int8 −128).
    pub diff_min: i32,
}

impl SoftmaxParams {
    /// The parameters for logits of scale `input_scale` and multiplier `beta`, as
    /// TFLite's `PreprocessSoftmaxScaling` (with `QuantizeMultiplierGreaterThanOne`)
    /// and `CalculateInputRadius` derive them; `None` where TFLite refuses:
    /// `beta · input_scale` at most 2^−26, or not finite.
    pub fn from_scale(beta: f32, input_scale: f32) -> Option<Self> {
        let real = (f64::from(beta)
            * f64::from(input_scale)
            * f64::from(1u32 << (31 - SOFTMAX_DIFF_INTEGER_BITS)))
        .min(f64::from(i32::MAX));
        if real.is_nan() || real <= 1.0 {
            return None;
        }
        let (fraction, mut input_left_shift) = frexp(real);
        let mut multiplier = libm::round(fraction * (1i64 << 31) as f64) as i64;
        if multiplier == 1i64 << 31 {
            multiplier /= 2;
            input_left_shift += 1;
        }
        // real < 2^31 keeps the shift in 1..=31 and the multiplier below 2^31.
        let max_input_rescaled = f64::from((1 << SOFTMAX_DIFF_INTEGER_BITS) - 1)
            * (1u64 << (31 - SOFTMAX_DIFF_INTEGER_BITS)) as f64
            / (1u64 << input_left_shift) as f64;
        Some(SoftmaxParams {
            input_multiplier: multiplier as i32,
            input_left_shift,
            diff_min: -(libm::floor(max_input_rescaled) as i32),
        })
    }
}

/// gemmlowp's `SaturatingRoundingMultiplyByPOT`: `x · 2^exponent`, rounded (right
/// shifts) or saturated (left shifts).
fn multiply_by_pot(x: i32, exponent: i32) -> i32 {
    if exponent >= 0 {
        let shifted = i64::from(x) << exponent;
        shifted.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
    } else {
        rounding_divide_by_pot(x, (-exponent) as u32)
    }
}

/// gemmlowp's `exp_on_interval_between_negative_one_quarter_and_0_excl`: `exp(a)` for
/// a Q0.31 `a` in `[−1/4, 0)`, a Taylor series around −1/8.
fn exp_on_interval_between_negative_one_quarter_and_0_excl(a: i32) -> i32 {
    let mul = saturating_rounding_doubling_high_mul;
    // exp(−1/8) and 1/3 in Q0.31.
    const EXP_MINUS_ONE_EIGHTH: i32 = 1_895_147_668;
    const ONE_THIRD: i32 = 715_827_883;
    let x = a.wrapping_add(1 << 28);
    let x2 = mul(x, x);
    let x3 = mul(x2, x);
    let x4 = mul(x2, x2);
    let x4_over_4 = multiply_by_pot(x4, -2);
    let polynomial = multiply_by_pot(
        mul(x4_over_4.wrapping_add(x3), ONE_THIRD).wrapping_add(x2),
        -1,
    );
    EXP_MINUS_ONE_EIGHTH.wrapping_add(mul(EXP_MINUS_ONE_EIGHTH, x.wrapping_add(polynomial)))
}

/// gemmlowp's `exp_on_negative_values` for a Q5.26 `a ≤ 0`: `exp(a)` in Q0.31.
fn exp_on_negative_values(a: i32) -> i32 {
    const FRACTIONAL_BITS: i32 = 31 - SOFTMAX_DIFF_INTEGER_BITS;
    let one_quarter = 1i32 << (FRACTIONAL_BITS - 2);
    let mask = one_quarter - 1;
    let a_mod_quarter_minus_one_quarter = (a & mask).wrapping_sub(one_quarter);
    let mut result = exp_on_interval_between_negative_one_quarter_and_0_excl(multiply_by_pot(
        a_mod_quarter_minus_one_quarter,
        SOFTMAX_DIFF_INTEGER_BITS,
    ));
    let remainder = a_mod_quarter_minus_one_quarter.wrapping_sub(a);
    // exp(−2^k) in Q0.31 for k = −2..=4: one factor per bit of the remainder.
    const BARREL: [(i32, i32); 7] = [
        (-2, 1_672_461_947),
        (-1, 1_302_514_674),
        (0, 790_015_084),
        (1, 290_630_308),
        (2, 39_332_535),
        (3, 720_401),
        (4, 242),
    ];
    for (exponent, multiplier) in BARREL {
        if remainder & (1 << (FRACTIONAL_BITS + exponent)) != 0 {
            result = saturating_rounding_doubling_high_mul(result, multiplier);
        }
    }
    if a == 0 {
        i32::MAX
    } else {
        result
    }
}

/// gemmlowp's `one_over_one_plus_x_for_x_in_0_1`: `1 / (1 + a)` for a Q0.31 `a` in
/// `[0, 1)`, as Q0.31, by three Newton-Raphson steps in Q2.29.
fn one_over_one_plus_x_for_x_in_0_1(a: i32) -> i32 {
    let mul = saturating_rounding_doubling_high_mul;
    // RoundingHalfSum(a, One): (a + 1) / 2 rounded away from zero.
    let sum = i64::from(a) + i64::from(i32::MAX);
    let half_denominator = ((sum + if sum >= 0 { 1 } else { -1 }) / 2) as i32;
    // 48/17 and −32/17 in Q2.29.
    const FORTY_EIGHT_OVER_SEVENTEEN: i32 = 1_515_870_810;
    const MINUS_THIRTY_TWO_OVER_SEVENTEEN: i32 = -1_010_580_540;
    const ONE_Q2_29: i32 = 1 << 29;
    let mut x = FORTY_EIGHT_OVER_SEVENTEEN
        .wrapping_add(mul(half_denominator, MINUS_THIRTY_TWO_OVER_SEVENTEEN));
    for _ in 0..3 {
        let half_denominator_times_x = mul(half_denominator, x);
        let one_minus = ONE_Q2_29.wrapping_sub(half_denominator_times_x);
        x = x.wrapping_add(multiply_by_pot(mul(x, one_minus), 2));
    }
    multiply_by_pot(x, 1)
}

/// TFLite's `GetReciprocal`: `1 / x` for a Q12.19 `x > 0`, as a Q0.31 scale and the
/// number of bits `x` has above 1.
fn reciprocal(x: i32) -> (i32, i32) {
    let headroom_plus_one = (x as u32).leading_zeros();
    let bits_over_unit = SOFTMAX_SUM_INTEGER_BITS - headroom_plus_one as i32;
    let shifted_sum_minus_one =
        ((x as u32).wrapping_shl(headroom_plus_one)).wrapping_sub(1 << 31) as i32;
    (
        one_over_one_plus_x_for_x_in_0_1(shifted_sum_minus_one),
        bits_over_unit,
    )
}

/// TFLite's int8 softmax (`reference_ops::Softmax`) of `input` into `output` (same
/// length; output scale 1/256, zero point −128).
pub fn softmax_i8(params: &SoftmaxParams, input: &[i8], output: &mut [i8]) {
    let Some(&max) = input.iter().max() else {
        return;
    };
    let rescaled = |x: i8| -> Option<i32> {
        let diff = i32::from(x) - i32::from(max);
        (diff >= params.diff_min).then(|| {
            saturating_rounding_doubling_high_mul(
                diff.wrapping_shl(params.input_left_shift as u32),
                params.input_multiplier,
            )
        })
    };
    let mut sum_of_exps: i32 = 0;
    for &x in input {
        if let Some(diff) = rescaled(x) {
            sum_of_exps = sum_of_exps.wrapping_add(multiply_by_pot(
                exp_on_negative_values(diff),
                -SOFTMAX_SUM_INTEGER_BITS,
            ));
        }
    }
    let (scale, bits_over_unit) = reciprocal(sum_of_exps);
    for (o, &x) in output.iter_mut().zip(input) {
        *o = match rescaled(x) {
            Some(diff) => {
                let exp = exp_on_negative_values(diff);
                let unsaturated = rounding_divide_by_pot(
                    saturating_rounding_doubling_high_mul(scale, exp),
                    (bits_over_unit + 31 - 8).clamp(0, 31) as u32,
                );
                (unsaturated - 128).clamp(-128, 127) as i8
            }
            None => -128,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn the_32_bit_high_multiply_equals_the_64_bit_one(a: i32, b in (i32::MIN + 1)..=i32::MAX) {
            prop_assert_eq!(doubling_high_mul_32(a, b), saturating_rounding_doubling_high_mul(a, b));
        }
    }

    #[test]
    fn the_32_bit_high_multiply_at_the_edges() {
        let edges = [
            i32::MIN,
            i32::MIN + 1,
            -65537,
            -65536,
            -65535,
            -32769,
            -32768,
            -1,
            0,
            1,
            32767,
            32768,
            65535,
            65536,
            1 << 30,
            (1 << 30) + 1,
            i32::MAX - 1,
            i32::MAX,
        ];
        for a in edges {
            for b in edges.into_iter().filter(|&b| b != i32::MIN) {
                assert_eq!(
                    doubling_high_mul_32(a, b),
                    saturating_rounding_doubling_high_mul(a, b),
                    "{a} · {b}"
                );
            }
        }
    }

    #[test]
    fn frexp_matches_definition() {
        for &x in &[
            1.0f64,
            0.5,
            0.75,
            3.0,
            1e-12,
            123456.789,
            f64::MIN_POSITIVE / 8.0,
        ] {
            let (f, e) = frexp(x);
            assert!((0.5..1.0).contains(&f), "{x}: {f}");
            // Scaled by 2^100 so that powi of a very negative exponent does not underflow.
            assert_eq!(f * 2f64.powi(e + 100), x * 2f64.powi(100));
        }
    }

    #[test]
    fn quantize_multiplier_round_trips() {
        for &m in &[0.5f64, 0.25, 0.0001234, 0.99999999, 1.5, 7.0, 0.3333] {
            let (q, s) = quantize_multiplier(m);
            assert!((1 << 30..=i32::MAX).contains(&q), "{m}: {q}");
            let back = f64::from(q) * 2f64.powi(s - 31);
            assert!((back - m).abs() <= m * 1e-9, "{m} -> {back}");
        }
        assert_eq!(quantize_multiplier(0.0), (0, 0));
        assert_eq!(quantize_multiplier(-1.0), (0, 0));
        assert_eq!(quantize_multiplier(1e-20), (0, 0));
    }

    #[test]
    fn add_of_equal_scales_is_plain_addition() {
        let p = AddParams::from_scales((0.5, 0), (0.5, 0), (0.5, 0), false);
        assert_eq!(p.add(3, 4), 7);
        assert_eq!(p.add(-100, -100), -128);
        assert_eq!(p.add(100, 100), 127);
        let relu = AddParams::from_scales((0.5, 0), (0.5, 0), (0.5, 0), true);
        assert_eq!(relu.add(-3, 1), 0);
    }
}

#[cfg(test)]
mod softmax_tests {
    use super::*;

    /// `(scale, logits, TFLite's reference output)`, from TFLite's
    /// `reference_ops::Softmax` compiled with gemmlowp, and (the last) from LiteRT's
    /// BUILTIN_REF interpreter on the MLPerf Tiny ResNet-8's logits of CIFAR-10 test
    /// image 32.
    #[allow(clippy::type_complexity)]
    const CASES: &[(f32, &[i8], &[i8])] = &[
        (0.1, &[10, 20, 30, -128], &[-105, -65, 42, -128]),
        (
            0.0625,
            &[127, 100, 0, -50, 126, -128],
            &[-8, -106, -128, -128, -15, -128],
        ),
        (
            1.0 / 256.0,
            &[-128, 0, 127, 64, -1],
            &[-100, -82, -52, -69, -82],
        ),
        (
            0.25,
            &[1, 2, 3, 4, 5, 6, 7, 8],
            &[-117, -113, -109, -104, -97, -88, -77, -63],
        ),
        (20.0, &[5, 5, 4], &[0, 0, -128]),
        (0.1, &[-7], &[127]),
        (
            0.171_853_51,
            &[-22, -19, 18, 12, 31, -13, 19, -12, -1, -22],
            &[-128, -128, -107, -120, 72, -128, -103, -128, -127, -128],
        ),
    ];

    #[test]
    fn softmax_params_are_tflites() {
        let p = |scale| SoftmaxParams::from_scale(1.0, scale).unwrap();
        assert_eq!(
            p(0.1),
            SoftmaxParams {
                input_multiplier: 1_717_986_944,
                input_left_shift: 23,
                diff_min: -248
            }
        );
        assert_eq!(
            p(1.0 / 256.0),
            SoftmaxParams {
                input_multiplier: 1 << 30,
                input_left_shift: 19,
                diff_min: -3968
            }
        );
        assert_eq!(
            p(20.0),
            SoftmaxParams {
                input_multiplier: 1_342_177_280,
                input_left_shift: 31,
                diff_min: 0
            }
        );
        assert_eq!(SoftmaxParams::from_scale(1.0, 1e-9), None);
    }

    #[test]
    fn int8_softmax_gives_tflites_reference_bytes() {
        for &(scale, input, expected) in CASES {
            let params = SoftmaxParams::from_scale(1.0, scale).unwrap();
            let mut output = vec![0i8; input.len()];
            softmax_i8(&params, input, &mut output);
            assert_eq!(output, expected, "scale {scale}, logits {input:?}");
        }
    }
}

#[cfg(test)]
mod mean_tests {
    /// TFLite's worked case: equal scales and zero points −128, 7×7 values, ten of them
    /// 127 and 39 of −128: `(2^30 · 2^5) / 49` and shift `1 − 5`, output −76.
    #[test]
    fn int8_mean_gives_tflites_reference_value() {
        let mut input = [-128i8; 49];
        input[..10].fill(127);
        let mut output = [0i8; 1];
        crate::kernels::mean_i8(&input, 49, -128, (701_219_150, -4), -128, &mut output).unwrap();
        assert_eq!(output, [-76]);
    }
}
