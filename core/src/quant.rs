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
    #[cfg(tinyres_columns)]
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

#[cfg(test)]
mod tests {
    use super::*;

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
