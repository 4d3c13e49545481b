//! Whole networks: the engine's f32, f16 and int8 blobs against the float64
//! reference of `common`, the memory plan, and the arena contract.

use super::common::{RefNet, Rng};
use tinyres_compile::writer::{AlignedBlob, Encoding, LayerSpec, Memory};
use tinyres_core::kernels::{conv2d_f32, dense_f32};
use tinyres_core::{Arena, DType, Error, Interpreter, Model};

fn blob(net: &RefNet, encoding: Encoding<'_>) -> AlignedBlob {
    AlignedBlob::new(&net.to_network().to_blob(encoding).expect("writes"))
}

/// Runs `pixels` through the blob; returns (class, logits, features).
fn run(blob: &AlignedBlob, pixels: &[u8]) -> (usize, Vec<f32>, Vec<f32>) {
    let model = Model::parse(blob.as_bytes()).expect("valid blob");
    let mut arena = vec![0u8; model.required_arena()];
    let mut interp = Interpreter::new(model, &mut arena).expect("arena fits");
    let class = interp.run(pixels).expect("runs");
    let mut logits = vec![0.0; model.num_classes()];
    interp.logits(&mut logits).unwrap();
    let mut features = vec![0.0; model.num_features()];
    interp.features(&mut features).unwrap();
    (class, logits, features)
}

fn argmax(v: &[f64]) -> usize {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b })
}

/// Largest |engine − reference| relative to the reference logits' range.
fn relative_error(got: &[f32], want: &[f64]) -> f64 {
    let range =
        want.iter().fold(f64::MIN, |a, &b| a.max(b)) - want.iter().fold(f64::MAX, |a, &b| a.min(b));
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (f64::from(g) - w).abs())
        .fold(0.0, f64::max)
        / range.max(1e-9)
}

fn check_f32(net: &RefNet, images: usize, seed: u64) {
    let b = blob(net, Encoding::F32);
    let mut rng = Rng::new(seed);
    for _ in 0..images {
        let img = rng.image(net.h * net.w * net.c);
        let trace = net.forward(&img);
        let want = &trace.tensors.last().unwrap().data;
        let (class, logits, features) = run(&b, &img);
        let err = relative_error(&logits, want);
        assert!(err < 1e-5, "f32 logits differ by {err:e} of their range");
        assert_eq!(class, argmax(want));
        let pooled = &trace.tensors[net.to_network().features.unwrap()].data;
        for (f, p) in features.iter().zip(pooled) {
            assert!((f64::from(*f) - p).abs() <= 1e-4 * (1.0 + p.abs()));
        }
    }
}

#[test]
fn resnet8_f32_matches_independent_reference() {
    check_f32(&super::common::resnet8(1), 4, 10);
}

#[test]
fn option_a_resnet20_f32_matches_independent_reference() {
    check_f32(
        &super::common::cifar_resnet_option_a(2, 3, 16, [16, 32, 64], 10),
        2,
        11,
    );
}

#[test]
fn bottleneck_and_plain_blocks_f32_match_independent_reference() {
    check_f32(&super::common::bottleneck_net(3), 4, 12);
}

/// f16 weights: the error is that of rounding every weight to 11 significant bits
/// (relative 2^-12 ≈ 2.4e-4 per weight, round to nearest). Through ResNet-8 the
/// logits stay within `F16_LOGIT_BOUND` of the logit range (measured: about 2e-4).
/// Documented bound on f16-weight models: max logit error relative to the logit range.
const F16_LOGIT_BOUND: f64 = 2e-3;

#[test]
fn resnet8_f16_stays_within_documented_bound() {
    let net = super::common::resnet8(4);
    let b = blob(&net, Encoding::F16);
    assert_eq!(Model::parse(b.as_bytes()).unwrap().dtype(), DType::F16);
    let mut rng = Rng::new(13);
    let mut worst = 0.0f64;
    for _ in 0..4 {
        let img = rng.image(32 * 32 * 3);
        let (_, logits, _) = run(&b, &img);
        worst = worst.max(relative_error(&logits, &net.logits(&img)));
    }
    println!(
        "f16 ResNet-8: worst logit error {:.3e} of the logit range",
        worst
    );
    assert!(worst < F16_LOGIT_BOUND, "{worst}");
}

/// int8: dequantized logits follow the float reference closely, and the top-1 class
/// agrees on most images (random weights give much flatter logits than a trained
/// net, so this is a wiring check; accuracy parity is measured on trained models).
fn check_int8(net: &RefNet, seed: u64) -> (f64, f64) {
    let mut rng = Rng::new(seed);
    let n = net.h * net.w * net.c;
    let calibration: Vec<Vec<u8>> = (0..16).map(|_| rng.image(n)).collect();
    let ranges = net.calibrate(&calibration);
    let b = blob(net, Encoding::Int8(&ranges));
    let mut agree = 0u32;
    let mut mean_err = 0.0;
    let count = 24u32;
    for _ in 0..count {
        let img = rng.image(n);
        let want = net.logits(&img);
        let (class, logits, _) = run(&b, &img);
        agree += u32::from(class == argmax(&want));
        mean_err += relative_error(&logits, &want) / f64::from(count);
    }
    (f64::from(agree) / f64::from(count), mean_err)
}

#[test]
fn resnet8_int8_follows_float_reference() {
    let (agreement, err) = check_int8(&super::common::resnet8(5), 14);
    println!(
        "int8 ResNet-8: top-1 agreement {agreement:.2}, mean max logit error {err:.3} of range"
    );
    assert!(err < 0.12, "{err}");
    assert!(agreement >= 0.75, "{agreement}");
}

#[test]
fn option_a_and_bottleneck_int8_follow_float_reference() {
    for (name, net) in [
        (
            "option A",
            super::common::cifar_resnet_option_a(6, 1, 16, [8, 16, 32], 10),
        ),
        ("bottleneck", super::common::bottleneck_net(7)),
    ] {
        let (agreement, err) = check_int8(&net, 15);
        println!("int8 {name}: top-1 agreement {agreement:.2}, mean max logit error {err:.3}");
        assert!(err < 0.12, "{name}: {err}");
        assert!(agreement >= 0.75, "{name}: {agreement}");
    }
}

#[test]
fn resnet8_whole_tensor_plan_peak_is_two_buffers() {
    let network = super::common::resnet8(8).to_network();
    let peak = |dtype| network.plan_memory(dtype, Memory::Fast).unwrap().peak;
    let (int8_peak, f32_peak) = (peak(DType::Int8), peak(DType::F32));
    println!("ResNet-8 whole-tensor arena peak: int8 {int8_peak} bytes, f32 {f32_peak} bytes");
    // Two 32×32×16 int8 buffers: the residual add runs in place.
    assert_eq!(int8_peak, 2 * 32 * 32 * 16);
    assert_eq!(f32_peak, 4 * int8_peak);
}

#[test]
fn runs_in_a_static_arena_of_exactly_the_plan_size() {
    let net = super::common::resnet8(9);
    let mut rng = Rng::new(16);
    let ranges = net.calibrate(&[rng.image(3072)]);
    let b = blob(&net, Encoding::Int8(&ranges));
    let model = Model::parse(b.as_bytes()).unwrap();
    // One 32×32×16 int8 buffer and 2 KiB of row windows (the streamed plan).
    assert_eq!(model.arena_size(), 18 * 1024);
    let mut arena: Box<Arena<{ 18 * 1024 }>> = Box::default();
    let mut interp = Interpreter::new(model, arena.as_mut_slice()).unwrap();
    let img = rng.image(3072);
    let class = interp.run(&img).unwrap();
    let mut probs = [0.0f32; 10];
    assert_eq!(interp.classify(&img, &mut probs).unwrap(), class);
    assert!((probs.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    assert_eq!(interp.predicted_class().unwrap(), class);
}

#[test]
fn refuses_a_small_arena_with_the_size_it_needs() {
    let b = blob(&super::common::resnet8(10), Encoding::F32);
    let model = Model::parse(b.as_bytes()).unwrap();
    let mut arena: Box<Arena<1024>> = Box::default();
    match Interpreter::new(model, arena.as_mut_slice()) {
        Err(Error::ArenaTooSmall { needed, available }) => {
            assert_eq!(needed, model.arena_size());
            assert_eq!(available, 1024);
        }
        other => panic!("{other:?}"),
    }
    // A misaligned slice needs the alignment slack on top.
    let mut raw = vec![0u8; model.arena_size() + 16];
    let start = raw.as_ptr().align_offset(16) + 1;
    let err = Interpreter::new(model, &mut raw[start..start + model.arena_size()]).unwrap_err();
    assert_eq!(
        err,
        Error::ArenaTooSmall {
            needed: model.arena_size() + 15,
            available: model.arena_size()
        }
    );
}

#[test]
fn wrong_input_and_output_lengths_are_errors() {
    let b = blob(&super::common::resnet8(11), Encoding::F32);
    let model = Model::parse(b.as_bytes()).unwrap();
    let mut arena = vec![0u8; model.required_arena()];
    let mut interp = Interpreter::new(model, &mut arena).unwrap();
    let mut logits = [0.0f32; 10];
    assert_eq!(interp.logits(&mut logits), Err(Error::NotRun));
    assert!(matches!(
        interp.run(&[0; 100]),
        Err(Error::WrongLength {
            expected: 3072,
            actual: 100,
            ..
        })
    ));
    interp.run(&[7; 3072]).unwrap();
    assert!(matches!(
        interp.logits(&mut [0.0; 3]),
        Err(Error::WrongLength { expected: 10, .. })
    ));
    assert!(matches!(
        interp.features(&mut [0.0; 3]),
        Err(Error::WrongLength { expected: 64, .. })
    ));
}

/// The TFLite per-channel weight rounding (symmetric, largest magnitude on ±127), as
/// the int8 blob stores it, back in f32.
fn dequantized_weights(weights: &[f32], out_channels: usize) -> Vec<f32> {
    weights
        .chunks(weights.len() / out_channels)
        .flat_map(|row| {
            let scale = row.iter().fold(0.0f32, |m, w| m.max(w.abs())) / 127.0;
            row.iter()
                .map(move |&w| (w / scale).round().clamp(-127.0, 127.0) * scale)
        })
        .collect()
}

/// Per-channel mean over positions of one conv or dense layer's output (no ReLU, no
/// residual) on `input`, with the given weights and biases.
fn mean_output(
    layer: &LayerSpec,
    weights: &[f32],
    bias: &[f32],
    input: &[f32],
    input_shape: (usize, usize, usize),
    (oh, ow, oc): (usize, usize, usize),
) -> Vec<f32> {
    let mut out = vec![0.0f32; oh * ow * oc];
    match layer {
        LayerSpec::Conv(conv) => {
            let shape = conv.shape(input_shape, (oh, ow, oc));
            conv2d_f32(&shape, input, weights, bias, false, None, &mut out).unwrap();
        }
        _ => dense_f32(input, weights, bias, false, &mut out).unwrap(),
    }
    (0..oc)
        .map(|c| out.iter().skip(c).step_by(oc).sum::<f32>() / (oh * ow) as f32)
        .collect()
}

/// Bias correction: with the int8-rounded weights and the corrected biases, every
/// int8 layer's output, averaged over positions, is the same on its mean input as the
/// float layer's; the weights themselves are untouched, and so is the f32 head.
#[test]
fn weight_rounding_compensation_keeps_each_layers_mean_output() {
    let net = super::common::resnet8(7).to_network();
    let shapes = net.tensor_shapes().unwrap();
    let mut rng = Rng::new(8);
    let means: Vec<Vec<f32>> = shapes
        .iter()
        .map(|&(h, w, c)| (0..h * w * c).map(|_| rng.uniform() as f32 * 2.0).collect())
        .collect();
    let corrected = net.with_weight_rounding_compensated(&means).unwrap();
    let mut checked = 0;
    for (k, (layer, fixed)) in net.layers.iter().zip(&corrected.layers).enumerate() {
        let (input, (weights, bias), (same_weights, new_bias)) = match (layer, fixed) {
            (LayerSpec::Conv(a), LayerSpec::Conv(b)) => {
                (a.input, (&a.weights, &a.bias), (&b.weights, &b.bias))
            }
            (LayerSpec::Dense(a), LayerSpec::Dense(b)) => {
                (a.input, (&a.weights, &a.bias), (&b.weights, &b.bias))
            }
            _ => continue,
        };
        assert_eq!(weights, same_weights, "layer {k}: weights changed");
        if k >= net.f32_head() {
            assert_eq!(bias, new_bias, "layer {k} of the f32 head: bias changed");
            continue;
        }
        let (in_shape, out_shape) = (shapes[input], shapes[k + 1]);
        let float = mean_output(layer, weights, bias, &means[input], in_shape, out_shape);
        let rounded = dequantized_weights(weights, out_shape.2);
        let int8 = mean_output(
            layer,
            &rounded,
            new_bias,
            &means[input],
            in_shape,
            out_shape,
        );
        for (f, q) in float.iter().zip(&int8) {
            assert!(
                (f - q).abs() <= 1e-4 * (1.0 + f.abs()),
                "layer {k}: {f} vs {q}"
            );
        }
        checked += 1;
    }
    assert!(checked >= 7, "{checked}");
    assert_eq!(
        net.f32_head(),
        net.layers.len() - 2,
        "pool and dense run in f32"
    );
}
