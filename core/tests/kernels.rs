//! Every kernel against a naive reference written independently here: proptest over
//! shapes, strides, paddings and channel counts, plus named edge cases. The engine
//! calls kernels through `arch`: the int8 convolution tests run both the portable
//! kernel and this host's arch kernel (SSE2 on x86-64, NEON on aarch64). The
//! microcontroller kernels are checked on their own instruction sets by the
//! `selftest` firmware in QEMU (`tests/tests/end_to_end/qemu.rs`).

use proptest::prelude::*;
use tinyres_core::arch;
use tinyres_core::kernels::{self, ConvShape, Requantize, Shortcut, F32_RELATIVE_TOLERANCE};
use tinyres_core::quant::{self, AddParams, AddTables};

/// The int8 convolution's signature.
type ConvI8 = fn(
    &ConvShape,
    &[i8],
    i32,
    &[i8],
    &[i32],
    &Requantize<'_>,
    Option<(Shortcut<'_, i8>, &AddTables)>,
    &mut [i8],
) -> Result<(), tinyres_core::Error>;

/// The portable int8 convolution, the one the engine uses on this host and, on
/// x86-64, the SSE2 path of processors without AVX2.
#[cfg(not(target_arch = "x86_64"))]
const CONV_I8_KERNELS: [(&str, ConvI8); 2] = [
    ("portable", kernels::conv2d_i8),
    (arch::CONV2D_I8_KERNEL, arch::conv2d_i8),
];
#[cfg(target_arch = "x86_64")]
const CONV_I8_KERNELS: [(&str, ConvI8); 3] = [
    ("portable", kernels::conv2d_i8),
    (arch::CONV2D_I8_KERNEL, arch::conv2d_i8),
    ("sse2", arch::x86::conv2d_i8_sse2),
];

// ---------------------------------------------------------------- references

/// TFLite `SaturatingRoundingDoublingHighMul`, written as the exact rational
/// `floor((a·b + 2^30) / 2^31)` (round half towards +∞) in i128.
fn ref_high_mul(a: i32, b: i32) -> i32 {
    if a == i32::MIN && b == i32::MIN {
        return i32::MAX;
    }
    (i128::from(a) * i128::from(b) + (1 << 30)).div_euclid(1 << 31) as i32
}

/// TFLite `RoundingDivideByPOT`: `x / 2^e` rounded half away from zero.
fn ref_divide_pot(x: i32, e: u32) -> i32 {
    if e == 0 {
        return x;
    }
    let mag = (i64::from(x).abs() + (1i64 << (e - 1))) >> e;
    (if x < 0 { -mag } else { mag }) as i32
}

fn ref_requant(x: i32, multiplier: i32, shift: i32) -> i32 {
    let left = shift.max(0) as u32;
    let right = (-shift).max(0) as u32;
    // The C++ reference multiplies by (1 << left) in int32; two's complement wraps.
    let shifted = (i64::from(x) << left) as i32;
    ref_divide_pot(ref_high_mul(shifted, multiplier), right)
}

fn ref_add(p: &AddParams, a: i8, b: i8) -> i8 {
    let a = ref_requant(
        (i32::from(a) - p.input1_zero_point) << 20,
        p.input1_multiplier,
        p.input1_shift,
    );
    let b = ref_requant(
        (i32::from(b) - p.input2_zero_point) << 20,
        p.input2_multiplier,
        p.input2_shift,
    );
    let out = ref_requant(a + b, p.output_multiplier, p.output_shift) + p.output_zero_point;
    out.clamp(p.activation_min, p.activation_max) as i8
}

#[derive(Clone, Debug)]
struct Case {
    shape: ConvShape,
    pad_bottom: usize,
    pad_right: usize,
}

/// The input explicitly zero-padded to `(in_h + pt + pb) × (in_w + pl + pr)`, then a
/// direct sliding window: a different structure from the kernel, which skips taps.
fn ref_conv<T: Copy>(case: &Case, input: &[T], pad_value: T, mut tap: impl FnMut(usize, usize, T)) {
    let s = &case.shape;
    let ph = s.in_h + s.pad_top + case.pad_bottom;
    let pw = s.in_w + s.pad_left + case.pad_right;
    let mut padded = vec![pad_value; ph * pw * s.in_c];
    for y in 0..s.in_h {
        for x in 0..s.in_w {
            for c in 0..s.in_c {
                padded[((y + s.pad_top) * pw + x + s.pad_left) * s.in_c + c] =
                    input[(y * s.in_w + x) * s.in_c + c];
            }
        }
    }
    for oy in 0..s.out_h {
        for ox in 0..s.out_w {
            for co in 0..s.out_c {
                let out_index = (oy * s.out_w + ox) * s.out_c + co;
                for ky in 0..s.kernel_h {
                    for kx in 0..s.kernel_w {
                        for ci in 0..s.in_c {
                            let v = padded
                                [((oy * s.stride + ky) * pw + ox * s.stride + kx) * s.in_c + ci];
                            let w_index = ((co * s.kernel_h + ky) * s.kernel_w + kx) * s.in_c + ci;
                            tap(out_index, w_index, v);
                        }
                    }
                }
            }
        }
    }
}

fn ref_conv_f32(case: &Case, input: &[f32], weights: &[f32], bias: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let s = &case.shape;
    let n = s.out_h * s.out_w * s.out_c;
    let mut out: Vec<f64> = (0..n).map(|i| f64::from(bias[i % s.out_c])).collect();
    let mut magnitude: Vec<f64> = out.iter().map(|b| b.abs()).collect();
    ref_conv(case, input, 0.0, |o, w, x| {
        let p = f64::from(x) * f64::from(weights[w]);
        out[o] += p;
        magnitude[o] += p.abs();
    });
    (out, magnitude)
}

fn ref_conv_i8_acc(case: &Case, input: &[i8], zp: i32, weights: &[i8], bias: &[i32]) -> Vec<i32> {
    let s = &case.shape;
    let mut acc: Vec<i32> = (0..s.out_h * s.out_w * s.out_c)
        .map(|i| bias[i % s.out_c])
        .collect();
    ref_conv(case, input, zp as i8, |o, w, x| {
        acc[o] += (i32::from(x) - zp) * i32::from(weights[w]);
    });
    acc
}

/// Shortcut element for output (y, x, c): `Some(value)` or `None` for a padded channel.
fn ref_shortcut<T: Copy>(
    data: &[T],
    (h, w, c): (usize, usize, usize),
    stride: usize,
    offset: usize,
    y: usize,
    x: usize,
    ch: usize,
) -> Option<T> {
    let _ = h;
    if ch < offset || ch - offset >= c {
        return None;
    }
    Some(data[((y * stride) * w + x * stride) * c + ch - offset])
}

// ---------------------------------------------------------------- strategies

fn case() -> impl Strategy<Value = Case> {
    (
        1usize..=7,
        1usize..=7,
        1usize..=5,
        1usize..=6,
        1usize..=4,
        1usize..=4,
        1usize..=3,
    )
        .prop_flat_map(|(in_h, in_w, in_c, out_c, kh, kw, stride)| {
            (
                Just((in_h, in_w, in_c, out_c, kh, kw, stride)),
                0..kh,
                0..kw,
                0..kh,
                0..kw,
            )
        })
        .prop_filter_map(
            "kernel larger than padded input",
            |((in_h, in_w, in_c, out_c, kh, kw, stride), pt, pl, pb, pr)| {
                let (out_h, out_w) =
                    ConvShape::output_size(in_h, in_w, (kh, kw), stride, [pt, pl, pb, pr])?;
                Some(Case {
                    shape: ConvShape {
                        in_h,
                        in_w,
                        in_c,
                        out_h,
                        out_w,
                        out_c,
                        kernel_h: kh,
                        kernel_w: kw,
                        stride,
                        pad_top: pt,
                        pad_left: pl,
                    },
                    pad_bottom: pb,
                    pad_right: pr,
                })
            },
        )
}

fn sizes(s: &ConvShape) -> (usize, usize, usize) {
    (
        s.in_h * s.in_w * s.in_c,
        s.out_c * s.kernel_h * s.kernel_w * s.in_c,
        s.out_h * s.out_w * s.out_c,
    )
}

/// Residual geometry for an output shape: `(h, w, c, stride, channel_offset)`.
fn residual_for(s: &ConvShape) -> impl Strategy<Value = (usize, usize, usize, usize, usize)> {
    let (oh, ow, oc) = (s.out_h, s.out_w, s.out_c);
    (1usize..=2, 1..=oc).prop_flat_map(move |(stride, rc)| {
        let min_h = (oh - 1) * stride + 1;
        let min_w = (ow - 1) * stride + 1;
        (
            min_h..=min_h + 1,
            min_w..=min_w + 1,
            Just(rc),
            Just(stride),
            0..=oc - rc,
        )
    })
}

fn f32_vec(n: usize) -> impl Strategy<Value = Vec<f32>> {
    proptest::collection::vec(-4.0f32..4.0, n)
}

fn i8_vec(n: usize) -> impl Strategy<Value = Vec<i8>> {
    proptest::collection::vec(any::<i8>(), n)
}

fn requant_params(n: usize) -> impl Strategy<Value = (Vec<i32>, Vec<i32>)> {
    (
        proptest::collection::vec(1 << 30..i32::MAX, n),
        proptest::collection::vec(-12i32..=2, n),
    )
}

fn assert_close(got: &[f32], want: &[f64], magnitude: &[f64]) {
    for (i, ((&g, &w), &m)) in got.iter().zip(want).zip(magnitude).enumerate() {
        let tolerance = f64::from(F32_RELATIVE_TOLERANCE) * m + 1e-6;
        assert!(
            (f64::from(g) - w).abs() <= tolerance,
            "element {i}: got {g}, want {w} (±{tolerance})"
        );
    }
}

// ---------------------------------------------------------------- properties

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn conv_f32_matches_reference(
        (case, input, weights, bias, relu) in case().prop_flat_map(|c| {
            let (ni, nw, _) = sizes(&c.shape);
            let oc = c.shape.out_c;
            (Just(c), f32_vec(ni), f32_vec(nw), f32_vec(oc), any::<bool>())
        })
    ) {
        let (_, _, no) = sizes(&case.shape);
        let mut out = vec![0.0f32; no];
        kernels::conv2d_f32(&case.shape, &input, &weights, &bias, relu, None, &mut out).unwrap();
        let (mut want, magnitude) = ref_conv_f32(&case, &input, &weights, &bias);
        if relu {
            want.iter_mut().for_each(|v| *v = v.max(0.0));
        }
        assert_close(&out, &want, &magnitude);
    }

    #[test]
    fn conv_f32_with_mapped_residual_matches_reference(
        (case, input, weights, bias, (rh, rw, rc, rs, ro), shortcut, relu) in case().prop_flat_map(|c| {
            let (ni, nw, _) = sizes(&c.shape);
            let oc = c.shape.out_c;
            (Just(c.clone()), f32_vec(ni), f32_vec(nw), f32_vec(oc), residual_for(&c.shape), f32_vec(64 * 64), any::<bool>())
        })
    ) {
        let s = &case.shape;
        let shortcut = &shortcut[..rh * rw * rc];
        let mut out = vec![0.0f32; s.out_h * s.out_w * s.out_c];
        let mapped = Shortcut::Mapped { data: shortcut, height: rh, width: rw, channels: rc, stride: rs, channel_offset: ro };
        kernels::conv2d_f32(s, &input, &weights, &bias, false, Some((mapped, relu)), &mut out).unwrap();
        let (mut want, mut magnitude) = ref_conv_f32(&case, &input, &weights, &bias);
        for (i, (v, m)) in want.iter_mut().zip(&mut magnitude).enumerate() {
            let (y, x, c) = (i / s.out_c / s.out_w, i / s.out_c % s.out_w, i % s.out_c);
            let add = ref_shortcut(shortcut, (rh, rw, rc), rs, ro, y, x, c).unwrap_or(0.0);
            *v += f64::from(add);
            *m += f64::from(add.abs());
            if relu {
                *v = v.max(0.0);
            }
        }
        assert_close(&out, &want, &magnitude);
    }

    #[test]
    fn conv_f16_weights_compute_in_f32(
        (case, input, weights, bias) in case().prop_flat_map(|c| {
            let (ni, nw, _) = sizes(&c.shape);
            let oc = c.shape.out_c;
            (Just(c), f32_vec(ni), f32_vec(nw), f32_vec(oc))
        })
    ) {
        let halves: Vec<half::f16> = weights.iter().map(|&w| half::f16::from_f32(w)).collect();
        let rounded: Vec<f32> = halves.iter().map(|w| w.to_f32()).collect();
        let (_, _, no) = sizes(&case.shape);
        let (mut a, mut b) = (vec![0.0f32; no], vec![0.0f32; no]);
        kernels::conv2d_f32(&case.shape, &input, &halves, &bias, false, None, &mut a).unwrap();
        kernels::conv2d_f32(&case.shape, &input, &rounded, &bias, false, None, &mut b).unwrap();
        // f16 storage is exactly f32 computation over the rounded weights.
        prop_assert_eq!(a, b);
    }

    #[test]
    fn conv_i8_matches_reference(
        (case, input, weights, bias, (mults, shifts), in_zp, out_zp, relu) in case().prop_flat_map(|c| {
            let (ni, nw, _) = sizes(&c.shape);
            let oc = c.shape.out_c;
            (Just(c), i8_vec(ni), i8_vec(nw), proptest::collection::vec(-5000i32..5000, oc),
             requant_params(oc), -128i32..=127, -128i32..=127, any::<bool>())
        })
    ) {
        let s = &case.shape;
        let (min, max) = quant::activation_range(out_zp, relu);
        let requant = Requantize { multipliers: &mults, shifts: &shifts, output_zero_point: out_zp, activation_min: min, activation_max: max, folded_bias: None };
        let acc = ref_conv_i8_acc(&case, &input, in_zp, &weights, &bias);
        let want: Vec<i8> = acc.iter().enumerate().map(|(i, &a)| {
            let c = i % s.out_c;
            (ref_requant(a, mults[c], shifts[c]) + out_zp).clamp(min, max) as i8
        }).collect();
        for (name, conv) in CONV_I8_KERNELS {
            let mut out = vec![0i8; s.out_h * s.out_w * s.out_c];
            conv(s, &input, in_zp, &weights, &bias, &requant, None, &mut out).unwrap();
            prop_assert_eq!(&out, &want, "{}", name);
        }
    }

    #[test]
    fn conv_i8_with_residual_matches_reference(
        (case, input, weights, bias, (mults, shifts), (rh, rw, rc, rs, ro), shortcut, zps, scales, relu, in_place)
        in case().prop_flat_map(|c| {
            let (ni, nw, _) = sizes(&c.shape);
            let oc = c.shape.out_c;
            (Just(c.clone()), i8_vec(ni), i8_vec(nw), proptest::collection::vec(-5000i32..5000, oc),
             requant_params(oc), residual_for(&c.shape), i8_vec(64 * 64),
             (-128i32..=127, -128i32..=127, -128i32..=127, -128i32..=127),
             (0.01f32..1.0, 0.01f32..1.0, 0.01f32..1.0), any::<bool>(), any::<bool>())
        })
    ) {
        let s = &case.shape;
        let (in_zp, pre_zp, sc_zp, out_zp) = zps;
        let add = AddParams::from_scales((scales.0, pre_zp), (scales.1, sc_zp), (scales.2, out_zp), relu);
        let requant = Requantize { multipliers: &mults, shifts: &shifts, output_zero_point: pre_zp, activation_min: -128, activation_max: 127, folded_bias: None };
        let n = s.out_h * s.out_w * s.out_c;
        // In place: the shortcut has the output's shape and starts in the output buffer.
        let (geometry, data): ((usize, usize, usize, usize, usize), Vec<i8>) = if in_place {
            ((s.out_h, s.out_w, s.out_c, 1, 0), shortcut[..n].to_vec())
        } else {
            ((rh, rw, rc, rs, ro), shortcut[..rh * rw * rc].to_vec())
        };
        let (gh, gw, gc, gs, go) = geometry;
        let sc = if in_place {
            Shortcut::InPlace
        } else {
            Shortcut::Mapped { data: &data, height: gh, width: gw, channels: gc, stride: gs, channel_offset: go }
        };
        let acc = ref_conv_i8_acc(&case, &input, in_zp, &weights, &bias);
        let want: Vec<i8> = acc.iter().enumerate().map(|(i, &a)| {
            let c = i % s.out_c;
            let (y, x) = (i / s.out_c / s.out_w, i / s.out_c % s.out_w);
            let pre = (ref_requant(a, mults[c], shifts[c]) + pre_zp).clamp(-128, 127) as i8;
            let short = ref_shortcut(&data, (gh, gw, gc), gs, go, y, x, c).unwrap_or(sc_zp as i8);
            ref_add(&add, pre, short)
        }).collect();
        for (name, conv) in CONV_I8_KERNELS {
            let mut out = if in_place { data.clone() } else { vec![0i8; n] };
            conv(s, &input, in_zp, &weights, &bias, &requant, Some((sc, &AddTables::new(&add))), &mut out).unwrap();
            prop_assert_eq!(&out, &want, "{}", name);
        }
    }

    #[test]
    fn add_matches_reference(a in any::<i8>(), b in any::<i8>(),
        zps in (-128i32..=127, -128i32..=127, -128i32..=127),
        scales in (1e-4f32..10.0, 1e-4f32..10.0, 1e-4f32..10.0), relu in any::<bool>()) {
        let p = AddParams::from_scales((scales.0, zps.0), (scales.1, zps.1), (scales.2, zps.2), relu);
        prop_assert_eq!(p.add(a, b), ref_add(&p, a, b));
        // And it is the real sum, rounded, within one step of the output scale.
        let real = quant::dequantize_i8(a, scales.0, zps.0) + quant::dequantize_i8(b, scales.1, zps.1);
        let real = if relu { real.max(0.0) } else { real };
        let ideal = quant::quantize_i8(real, scales.2, zps.2);
        prop_assert!((i32::from(p.add(a, b)) - i32::from(ideal)).abs() <= 1, "{} vs {}", p.add(a, b), ideal);
    }

    #[test]
    fn pool_matches_reference(h in 1usize..6, w in 1usize..6, c in 1usize..6, seed in any::<u64>()) {
        let n = h * w * c;
        let input_i8: Vec<i8> = (0..n).map(|i| (seed.wrapping_mul(6364136223846793005).wrapping_add(i as u64).wrapping_mul(1442695040888963407) >> 56) as i8).collect();
        let input_f32: Vec<f32> = input_i8.iter().map(|&v| f32::from(v) * 0.37).collect();
        let mut out_i8 = vec![0i8; c];
        let mut out_f32 = vec![0f32; c];
        kernels::global_avg_pool_i8(&input_i8, h * w, &mut out_i8).unwrap();
        kernels::global_avg_pool_f32(&input_f32, h * w, &mut out_f32).unwrap();
        for ch in 0..c {
            let values: Vec<i64> = (0..h * w).map(|p| i64::from(input_i8[p * c + ch])).collect();
            let sum: i64 = values.iter().sum();
            let mean = sum as f64 / (h * w) as f64;
            // Round half away from zero.
            let want = mean.abs().add_half_floor() * mean.signum();
            prop_assert_eq!(f64::from(out_i8[ch]), want);
            let fmean: f64 = values.iter().map(|&v| f64::from(v as f32 * 0.37)).sum::<f64>() / (h * w) as f64;
            prop_assert!((f64::from(out_f32[ch]) - fmean).abs() <= 1e-4 * (1.0 + fmean.abs()));
        }
    }

    /// Max pooling, int8 and f32, against the explicitly padded sliding window, where
    /// padding is `None` and never chosen.
    #[test]
    fn max_pool_matches_reference(case in case(), seed in any::<u64>()) {
        let mut case = case;
        case.shape.out_c = case.shape.in_c;
        let s = case.shape;
        let input_i8: Vec<i8> = (0..s.in_h * s.in_w * s.in_c).map(|i| (seed.wrapping_mul(6364136223846793005).wrapping_add(i as u64).wrapping_mul(1442695040888963407) >> 56) as i8).collect();
        let input_f32: Vec<f32> = input_i8.iter().map(|&v| f32::from(v) * 0.37).collect();
        let present: Vec<Option<i8>> = input_i8.iter().copied().map(Some).collect();
        let mut want = vec![None::<i8>; s.out_h * s.out_w * s.out_c];
        ref_conv(&case, &present, None, |o, w, v| {
            if let (true, Some(v)) = (w % s.in_c == o % s.out_c, v) {
                want[o] = Some(want[o].map_or(v, |m| m.max(v)));
            }
        });
        // Padding smaller than the window: every window holds an input pixel.
        let want: Vec<i8> = want.into_iter().map(|m| m.expect("a pixel in every window")).collect();
        let mut got_i8 = vec![0i8; want.len()];
        let mut got_f32 = vec![0f32; want.len()];
        arch::max_pool(&s, &input_i8, &mut got_i8).unwrap();
        arch::max_pool(&s, &input_f32, &mut got_f32).unwrap();
        prop_assert_eq!(&got_i8, &want);
        let want_f32: Vec<f32> = want.iter().map(|&v| f32::from(v) * 0.37).collect();
        prop_assert_eq!(got_f32, want_f32);
    }

    /// The f32 head's pool: the unrounded mean of the dequantized input.
    #[test]
    fn pool_to_f32_is_the_mean_of_the_dequantized_input(h in 1usize..9, w in 1usize..9, c in 1usize..6, zero_point in -128i32..=127, seed in any::<u64>()) {
        let n = h * w * c;
        let input: Vec<i8> = (0..n).map(|i| (seed.wrapping_mul(6364136223846793005).wrapping_add(i as u64).wrapping_mul(1442695040888963407) >> 56) as i8).collect();
        let scale = 0.037;
        let mut out = vec![0f32; c];
        kernels::global_avg_pool_i8_to_f32(&input, zero_point, scale, h * w, &mut out).unwrap();
        for ch in 0..c {
            let mean = (0..h * w).map(|p| f64::from(quant::dequantize_i8(input[p * c + ch], scale, zero_point))).sum::<f64>() / (h * w) as f64;
            prop_assert!((f64::from(out[ch]) - mean).abs() <= 1e-5 * (1.0 + mean.abs()), "{} vs {}", out[ch], mean);
        }
    }

    #[test]
    fn dense_matches_reference(n_in in 1usize..40, n_out in 1usize..12, seed in any::<u32>(),
        in_zp in -128i32..=127, out_zp in -128i32..=127, relu in any::<bool>()) {
        let mut state = seed;
        let mut next = move || { state = state.wrapping_mul(1664525).wrapping_add(1013904223); (state >> 24) as i8 };
        let x: Vec<i8> = (0..n_in).map(|_| next()).collect();
        let w: Vec<i8> = (0..n_in * n_out).map(|_| next()).collect();
        let bias: Vec<i32> = (0..n_out).map(|_| i32::from(next()) * 37).collect();
        let mults: Vec<i32> = (0..n_out).map(|_| (1 << 30) + (i32::from(next()) << 20).abs()).collect();
        let shifts: Vec<i32> = (0..n_out).map(|_| -(i32::from(next()).abs() % 12)).collect();
        let (min, max) = quant::activation_range(out_zp, relu);
        let rq = Requantize { multipliers: &mults, shifts: &shifts, output_zero_point: out_zp, activation_min: min, activation_max: max, folded_bias: None };
        let mut out = vec![0i8; n_out];
        kernels::dense_i8(&x, in_zp, &w, &bias, &rq, quant::Rounding::Double, &mut out).unwrap();
        for o in 0..n_out {
            let acc: i32 = bias[o] + (0..n_in).map(|i| (i32::from(x[i]) - in_zp) * i32::from(w[o * n_in + i])).sum::<i32>();
            let want = (ref_requant(acc, mults[o], shifts[o]) + out_zp).clamp(min, max) as i8;
            prop_assert_eq!(out[o], want);
        }
        let xf: Vec<f32> = x.iter().map(|&v| f32::from(v) / 16.0).collect();
        let wf: Vec<f32> = w.iter().map(|&v| f32::from(v) / 64.0).collect();
        let bf: Vec<f32> = bias.iter().map(|&b| b as f32 / 1000.0).collect();
        let mut outf = vec![0f32; n_out];
        kernels::dense_f32(&xf, &wf, &bf, relu, &mut outf).unwrap();
        for o in 0..n_out {
            let mut want = f64::from(bf[o]);
            let mut mag = want.abs();
            for i in 0..n_in {
                let p = f64::from(xf[i]) * f64::from(wf[o * n_in + i]);
                want += p;
                mag += p.abs();
            }
            if relu { want = want.max(0.0); }
            assert_close(&outf[o..o + 1], &[want], &[mag]);
        }
    }
}

trait AddHalfFloor {
    fn add_half_floor(self) -> f64;
}

impl AddHalfFloor for f64 {
    fn add_half_floor(self) -> f64 {
        (self + 0.5).floor()
    }
}

// ---------------------------------------------------------------- requantization sweep

/// `multiply_by_quantized_multiplier` is bit-exact against the rational reference over
/// a dense sweep: 2^16 evenly spread accumulators plus every boundary value, times
/// multipliers across `[2^30, 2^31)` and the edges, times every shift in `-31..=30`.
#[test]
fn requantization_is_exact_over_a_dense_sweep() {
    let mut xs: Vec<i32> = (0..1u32 << 16)
        .map(|i| (i << 16 | i.wrapping_mul(2654435761) >> 16) as i32)
        .collect();
    xs.extend([
        0,
        1,
        -1,
        2,
        -2,
        i32::MAX,
        i32::MIN,
        i32::MIN + 1,
        i32::MAX - 1,
        1 << 30,
        -(1 << 30),
    ]);
    xs.extend((-300..300).map(|v| v * 1000 + 500));
    let multipliers = [
        0,
        1,
        1 << 30,
        (1 << 30) + 1,
        1_518_500_250,
        1_859_775_393,
        i32::MAX - 1,
        i32::MAX,
        i32::MIN,
    ];
    let mut checked = 0u64;
    for &m in &multipliers {
        for shift in -31..=30 {
            for &x in &xs {
                assert_eq!(
                    quant::multiply_by_quantized_multiplier(x, m, shift),
                    ref_requant(x, m, shift),
                    "x={x} m={m} shift={shift}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 30_000_000);
}

#[test]
fn rounding_primitives_are_exact_on_ties() {
    // Ties of the high multiply round towards +inf; ties of the shift away from zero.
    assert_eq!(
        quant::saturating_rounding_doubling_high_mul(1 << 29, 1 << 1),
        1
    ); // 0.5 -> 1
    assert_eq!(
        quant::saturating_rounding_doubling_high_mul(-(1 << 29), 1 << 1),
        0
    ); // -0.5 -> 0
    assert_eq!(
        quant::saturating_rounding_doubling_high_mul(i32::MIN, i32::MIN),
        i32::MAX
    );
    assert_eq!(quant::rounding_divide_by_pot(5, 1), 3);
    assert_eq!(quant::rounding_divide_by_pot(-5, 1), -3);
    assert_eq!(quant::rounding_divide_by_pot(-6, 2), -2);
    assert_eq!(quant::rounding_divide_by_pot(i32::MIN, 31), -1);
    for x in -1000..1000 {
        for e in 0..12 {
            assert_eq!(quant::rounding_divide_by_pot(x, e), ref_divide_pot(x, e));
        }
    }
}

// ---------------------------------------------------------------- named edge cases

fn identity_requant(channels: usize) -> (Vec<i32>, Vec<i32>) {
    // multiplier 2^30 with shift 1 is exactly 1.0.
    (vec![1 << 30; channels], vec![1; channels])
}

#[test]
fn int8_saturates_at_both_ends() {
    let shape = ConvShape {
        in_h: 1,
        in_w: 1,
        in_c: 2,
        out_h: 1,
        out_w: 1,
        out_c: 2,
        kernel_h: 1,
        kernel_w: 1,
        stride: 1,
        pad_top: 0,
        pad_left: 0,
    };
    let (m, s) = identity_requant(2);
    let rq = Requantize {
        multipliers: &m,
        shifts: &s,
        output_zero_point: 0,
        activation_min: -128,
        activation_max: 127,
        folded_bias: None,
    };
    let mut out = [0i8; 2];
    // 127·127 + 127·127 and −128·127 + −128·127 are far outside int8.
    kernels::conv2d_i8(
        &shape,
        &[127, 127],
        0,
        &[127, 127, -128, -128],
        &[0, 0],
        &rq,
        None,
        &mut out,
    )
    .unwrap();
    assert_eq!(out, [127, -128]);
    kernels::conv2d_i8(
        &shape,
        &[-128, -128],
        0,
        &[127, 127, -128, -128],
        &[0, 0],
        &rq,
        None,
        &mut out,
    )
    .unwrap();
    assert_eq!(out, [-128, 127]);
}

#[test]
fn zero_points_at_extremes() {
    // Input zero point −128 (raw pixels − 128) and 127; padding contributes nothing.
    let shape = ConvShape {
        in_h: 1,
        in_w: 1,
        in_c: 1,
        out_h: 1,
        out_w: 1,
        out_c: 1,
        kernel_h: 3,
        kernel_w: 3,
        stride: 1,
        pad_top: 1,
        pad_left: 1,
    };
    let (m, s) = identity_requant(1);
    for (in_zp, out_zp, x, want) in [
        (-128, 127, -128i8, 127i8),
        (-128, -128, 127, 127),
        (127, -128, 127, -128),
        (127, 0, -128, -128),
    ] {
        let rq = Requantize {
            multipliers: &m,
            shifts: &s,
            output_zero_point: out_zp,
            activation_min: -128,
            activation_max: 127,
            folded_bias: None,
        };
        let mut out = [0i8; 1];
        kernels::conv2d_i8(&shape, &[x], in_zp, &[1; 9], &[0], &rq, None, &mut out).unwrap();
        let ideal = (i32::from(x) - in_zp + out_zp).clamp(-128, 127) as i8;
        assert_eq!(out[0], ideal);
        assert_eq!(out[0], want);
    }
    // A ReLU with the output zero point at 127 clamps everything to 127.
    let rq = Requantize {
        multipliers: &m,
        shifts: &s,
        output_zero_point: 127,
        activation_min: 127,
        activation_max: 127,
        folded_bias: None,
    };
    let mut out = [0i8; 1];
    kernels::conv2d_i8(&shape, &[-100], 0, &[1; 9], &[0], &rq, None, &mut out).unwrap();
    assert_eq!(out[0], 127);
}

#[test]
fn one_by_one_stride_two_projection_shortcut() {
    // Option B/C: a 1×1 stride-2 convolution samples every other pixel, no padding.
    let shape = ConvShape {
        in_h: 4,
        in_w: 4,
        in_c: 1,
        out_h: 2,
        out_w: 2,
        out_c: 1,
        kernel_h: 1,
        kernel_w: 1,
        stride: 2,
        pad_top: 0,
        pad_left: 0,
    };
    let input: Vec<f32> = (0..16).map(|v| v as f32).collect();
    let mut out = [0f32; 4];
    kernels::conv2d_f32(&shape, &input, &[2.0f32], &[1.0], false, None, &mut out).unwrap();
    assert_eq!(out, [1.0, 5.0, 17.0, 21.0]);
}

#[test]
fn option_a_shortcut_pads_channels_with_zero() {
    // Option A from a 4×4×2 stage to a 2×2×4 stage: the shortcut is subsampled by 2 and
    // its 2 channels are placed at channels 1..3 (one zero channel on each side).
    let shape = ConvShape {
        in_h: 2,
        in_w: 2,
        in_c: 1,
        out_h: 2,
        out_w: 2,
        out_c: 4,
        kernel_h: 1,
        kernel_w: 1,
        stride: 1,
        pad_top: 0,
        pad_left: 0,
    };
    let shortcut: Vec<f32> = (0..32).map(|v| v as f32).collect(); // 4×4×2
    let mut out = [0f32; 16];
    let sc = Shortcut::Mapped {
        data: &shortcut,
        height: 4,
        width: 4,
        channels: 2,
        stride: 2,
        channel_offset: 1,
    };
    kernels::conv2d_f32(
        &shape,
        &[0.0; 4],
        &[0.0f32; 4],
        &[0.0; 4],
        false,
        Some((sc, false)),
        &mut out,
    )
    .unwrap();
    // Pixel (y, x) takes shortcut pixel (2y, 2x) = index (8y + 2x)·... channels c0,c1.
    assert_eq!(
        out,
        [0.0, 0.0, 1.0, 0.0, 0.0, 4.0, 5.0, 0.0, 0.0, 16.0, 17.0, 0.0, 0.0, 20.0, 21.0, 0.0]
    );

    // int8: the padded channels hold the shortcut's zero point, i.e. real zero.
    let (m, s) = identity_requant(4);
    let rq = Requantize {
        multipliers: &m,
        shifts: &s,
        output_zero_point: 0,
        activation_min: -128,
        activation_max: 127,
        folded_bias: None,
    };
    let add = AddTables::new(&AddParams::from_scales(
        (1.0, 0),
        (1.0, -10),
        (1.0, 0),
        false,
    ));
    let sc8: Vec<i8> = (0..32).map(|v| v as i8).collect();
    let mapped = Shortcut::Mapped {
        data: &sc8,
        height: 4,
        width: 4,
        channels: 2,
        stride: 2,
        channel_offset: 1,
    };
    let mut out8 = [0i8; 16];
    kernels::conv2d_i8(
        &shape,
        &[0; 4],
        0,
        &[0; 4],
        &[0; 4],
        &rq,
        Some((mapped, &add)),
        &mut out8,
    )
    .unwrap();
    assert_eq!(
        out8,
        [0, 10, 11, 0, 0, 14, 15, 0, 0, 26, 27, 0, 0, 30, 31, 0]
    );
}

/// The ImageNet stem's pool (3×3, stride 2, padding 1) on negative values: padding
/// read as zero, a classic slip, would put 0 in every border output.
#[test]
fn max_pool_of_the_resnet_stem_never_takes_padding() {
    let shape = ConvShape {
        in_h: 4,
        in_w: 4,
        in_c: 1,
        out_h: 2,
        out_w: 2,
        out_c: 1,
        kernel_h: 3,
        kernel_w: 3,
        stride: 2,
        pad_top: 1,
        pad_left: 1,
    };
    let input: Vec<i8> = (0..16).map(|i| -100 + i).collect();
    let mut output = [0i8; 4];
    arch::max_pool(&shape, &input, &mut output).unwrap();
    // Windows: rows/cols {0,1} then {1,2,3}; the largest is the bottom-right pixel.
    assert_eq!(output, [-100 + 5, -100 + 7, -100 + 13, -100 + 15]);

    // A window wholly on padding (the model's checks refuse such padding) is an error.
    let all_padding = ConvShape {
        pad_top: 3,
        out_h: 3,
        ..shape
    };
    assert!(arch::max_pool(&all_padding, &input, &mut [0i8; 6]).is_err());
}

/// The ImageNet ResNets' widest windows, within and past the Cortex-A and host column
/// buffer (4,608 taps): every kernel of this host equals the portable one.
#[test]
fn arch_conv_i8_equals_portable_on_imagenet_windows() {
    for in_c in [128, 512, 520] {
        let shape = ConvShape {
            in_h: 3,
            in_w: 3,
            in_c,
            out_h: 3,
            out_w: 3,
            out_c: 3,
            kernel_h: 3,
            kernel_w: 3,
            stride: 1,
            pad_top: 1,
            pad_left: 1,
        };
        let input: Vec<i8> = (0..9 * in_c).map(|i| (i * 37 % 251) as i8).collect();
        let weights: Vec<i8> = (0..27 * in_c).map(|i| (i * 53 % 241) as i8).collect();
        let bias = [1000, -2000, 300];
        // A small multiplier: the sums of thousands of products stay inside int8.
        let (multipliers, shifts) = (vec![1 << 30; 3], vec![-14; 3]);
        let requant = Requantize {
            multipliers: &multipliers,
            shifts: &shifts,
            output_zero_point: -3,
            activation_min: -128,
            activation_max: 127,
            folded_bias: None,
        };
        let mut want = vec![0i8; 27];
        kernels::conv2d_i8(
            &shape, &input, 5, &weights, &bias, &requant, None, &mut want,
        )
        .unwrap();
        assert!(want.iter().any(|&v| v != want[0]), "{in_c}: {want:?}");
        for (name, conv) in &CONV_I8_KERNELS[1..] {
            let mut got = vec![0i8; 27];
            conv(&shape, &input, 5, &weights, &bias, &requant, None, &mut got).unwrap();
            assert_eq!(got, want, "{name}, 3×3×{in_c}");
        }
    }
}

#[test]
fn kernels_refuse_wrong_lengths_instead_of_panicking() {
    let shape = ConvShape {
        in_h: 2,
        in_w: 2,
        in_c: 1,
        out_h: 2,
        out_w: 2,
        out_c: 1,
        kernel_h: 1,
        kernel_w: 1,
        stride: 1,
        pad_top: 0,
        pad_left: 0,
    };
    let mut out = [0f32; 3];
    assert!(
        kernels::conv2d_f32(&shape, &[0.0; 4], &[0.0f32], &[0.0], false, None, &mut out).is_err()
    );
    let mut out = [0f32; 4];
    let bad = Shortcut::Mapped {
        data: &[0.0; 4],
        height: 1,
        width: 1,
        channels: 1,
        stride: 1,
        channel_offset: 0,
    };
    assert!(kernels::conv2d_f32(
        &shape,
        &[0.0; 4],
        &[0.0f32],
        &[0.0],
        false,
        Some((bad, false)),
        &mut out
    )
    .is_err());
    assert!(kernels::dense_f32(&[1.0; 3], &[1.0f32; 5], &[0.0; 2], false, &mut [0.0; 2]).is_err());
    assert!(kernels::global_avg_pool_i8(&[0; 5], 2, &mut [0; 2]).is_err());
    assert!(kernels::global_avg_pool_i8_to_f32(&[0; 5], 0, 1.0, 2, &mut [0.0; 2]).is_err());
    assert!(kernels::max_pool(&shape, &[0i8; 3], &mut [0; 4]).is_err());
    assert!(kernels::max_pool(&ConvShape { out_c: 2, ..shape }, &[0i8; 4], &mut [0; 8]).is_err());
}

#[test]
fn argmax_and_softmax() {
    assert_eq!(kernels::argmax(&[1.0, 3.0, 3.0, -1.0]), Some(1));
    assert_eq!(kernels::argmax(&[f32::NAN, 0.5]), Some(1));
    assert_eq!(kernels::argmax(&[]), None);
    let mut p = [1.0f32, 2.0, 3.0, 1000.0];
    kernels::softmax_in_place(&mut p);
    assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    assert!(p[3] > 0.999);
    let mut q = [0.0f32, (2.0f32).ln()];
    kernels::softmax_in_place(&mut q);
    assert!((q[0] - 1.0 / 3.0).abs() < 1e-6 && (q[1] - 2.0 / 3.0).abs() < 1e-6);
}

/// Wide layers (up to 40 channels in and out: the arch kernels' vector paths, their
/// channel blocks and tails), every residual form, aligned and one byte off: each
/// kernel of this host equals the portable one bit for bit.
#[derive(Clone, Debug)]
struct WideCase {
    shape: ConvShape,
    input: Vec<i8>,
    weights: Vec<i8>,
    bias: Vec<i32>,
    multipliers: Vec<i32>,
    shifts: Vec<i32>,
    zero_points: (i32, i32, i32, i32),
    relu: bool,
    /// 0: none, 1: in place, 2: mapped with stride 2 and a channel offset.
    residual: u8,
    skew: usize,
}

fn wide_case() -> impl Strategy<Value = WideCase> {
    (
        (
            1usize..=6,
            1usize..=6,
            1usize..=40,
            1usize..=40,
            1usize..=3,
            1usize..=2,
        ),
        any::<bool>(),
        0u8..3,
        0usize..2,
    )
        .prop_filter_map(
            "kernel larger than the padded input",
            |((h, w, in_c, out_c, k, stride), relu, residual, skew)| {
                let pad = k / 2;
                let (out_h, out_w) = ConvShape::output_size(h, w, (k, k), stride, [pad; 4])?;
                let shape = ConvShape {
                    in_h: h,
                    in_w: w,
                    in_c,
                    out_h,
                    out_w,
                    out_c,
                    kernel_h: k,
                    kernel_w: k,
                    stride,
                    pad_top: pad,
                    pad_left: pad,
                };
                Some((shape, relu, residual, skew))
            },
        )
        .prop_flat_map(|(shape, relu, residual, skew)| {
            let (ni, nw, _) = sizes(&shape);
            let oc = shape.out_c;
            (
                i8_vec(ni + skew),
                i8_vec(nw + skew),
                proptest::collection::vec(-100_000i32..100_000, oc),
                requant_params(oc),
                (-128i32..=127, -128i32..=127, -128i32..=127, -128i32..=127),
            )
                .prop_map(
                    move |(input, weights, bias, (multipliers, shifts), zero_points)| WideCase {
                        shape,
                        input,
                        weights,
                        bias,
                        multipliers,
                        shifts,
                        zero_points,
                        relu,
                        residual,
                        skew,
                    },
                )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn arch_conv_i8_equals_portable_on_wide_layers(case in wide_case(), shortcut in i8_vec(12 * 12 * 40)) {
        let s = &case.shape;
        let (in_zp, pre_zp, sc_zp, out_zp) = case.zero_points;
        let (min, max) = quant::activation_range(pre_zp, case.relu);
        let requant = Requantize { multipliers: &case.multipliers, shifts: &case.shifts, output_zero_point: pre_zp, activation_min: min, activation_max: max, folded_bias: None };
        let add = AddTables::new(&AddParams::from_scales((0.05, pre_zp), (0.07, sc_zp), (0.09, out_zp), case.relu));
        let n = s.out_h * s.out_w * s.out_c;
        // Mapped: the output subsampled from a shortcut twice its size, its channels
        // after an offset (option A).
        let mapped_c = s.out_c.div_ceil(2);
        let mapped = Shortcut::Mapped {
            data: &shortcut[..(2 * s.out_h - 1) * (2 * s.out_w - 1) * mapped_c],
            height: 2 * s.out_h - 1,
            width: 2 * s.out_w - 1,
            channels: mapped_c,
            stride: 2,
            channel_offset: s.out_c - mapped_c,
        };
        let residual = match case.residual {
            0 => None,
            1 => Some((Shortcut::InPlace, &add)),
            _ => Some((mapped, &add)),
        };
        let input = &case.input[case.skew..];
        let weights = &case.weights[case.skew..];
        let mut want = shortcut[..n].to_vec();
        kernels::conv2d_i8(s, input, in_zp, weights, &case.bias, &requant, residual, &mut want).unwrap();
        // With the folded biases a version-3 blob carries, as the engine passes them.
        let window = weights.len() / s.out_c;
        let folded: Vec<i32> = weights
            .chunks_exact(window)
            .zip(&case.bias)
            .map(|(row, &b)| b.wrapping_sub(in_zp.wrapping_mul(row.iter().map(|&w| i32::from(w)).sum())))
            .collect();
        let with_folded = Requantize { folded_bias: Some(&folded), ..requant };
        for (name, conv) in &CONV_I8_KERNELS[1..] {
            for requant in [&requant, &with_folded] {
                let mut got = shortcut[..n].to_vec();
                conv(s, input, in_zp, weights, &case.bias, requant, residual, &mut got).unwrap();
                prop_assert_eq!(&got, &want, "{} (folded biases given: {})", name, requant.folded_bias.is_some());
            }
        }
        // As the engine calls it: one scratch for every call, holding what the
        // previous cases (other shapes) left in it.
        for requant in [&requant, &with_folded] {
            let mut got = shortcut[..n].to_vec();
            SCRATCH.with_borrow_mut(|scratch| {
                arch::conv2d_i8_with(scratch, s, input, in_zp, weights, &case.bias, requant, residual, &mut got)
            }).unwrap();
            prop_assert_eq!(&got, &want, "{} with a reused scratch", arch::CONV2D_I8_KERNEL);
        }
    }
}

thread_local! {
    /// The scratch the wide-layer cases share, reused from case to case.
    static SCRATCH: std::cell::RefCell<arch::ConvScratch> =
        const { std::cell::RefCell::new(arch::ConvScratch::new()) };
}
