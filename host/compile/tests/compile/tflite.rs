//! TensorFlow Lite models: int8 files compiled with their own quantization give the
//! output bytes of LiteRT's reference kernels (the oracle, `tests/models/litert_run.py`;
//! NOT CHECKED where it is not installed, required in CI by
//! `TINYRES_REQUIRE_LITERT=1`).

use std::path::{Path, PathBuf};
use std::process::Command;

use tinyres_compile::onnx::PreprocessingFlags;
use tinyres_compile::tflite::{import_tflite, lower_tflite, ImportedTflite};
use tinyres_compile::writer::{AlignedBlob, Encoding, Memory};
use tinyres_core::quant::quantize_i8;
use tinyres_core::{InputRange, Interpreter, Model};
use tinyres_data::{Dataset, Split};

fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data")
}

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/models")
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tinyres-tflite-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// The blob of an int8 `.tflite` with its own quantization.
fn int8_blob(imported: &ImportedTflite) -> AlignedBlob {
    let given = imported.quantization.as_ref().expect("an int8 model");
    AlignedBlob::new(
        &imported
            .network
            .to_blob_with(Encoding::Quantized(given), Memory::Min)
            .expect("writes"),
    )
}

/// The engine's raw output bytes for every image.
fn engine_outputs(blob: &AlignedBlob, data: &Dataset) -> Vec<Vec<u8>> {
    let model = Model::parse(blob.as_bytes()).expect("valid blob");
    let mut arena = vec![0u8; model.required_arena()];
    let mut interpreter = Interpreter::new(model, &mut arena).expect("arena fits");
    (0..data.len())
        .map(|i| {
            interpreter.run(data.image(i)).expect("runs");
            interpreter.output_bytes().unwrap().to_vec()
        })
        .collect()
}

/// The int8 input tensor the engine computes from each image: what LiteRT is fed.
fn int8_inputs(blob: &AlignedBlob, data: &Dataset) -> Vec<u8> {
    let model = Model::parse(blob.as_bytes()).unwrap();
    let input = model.tensor(0).unwrap();
    let channels = input.channels;
    let mut bytes = Vec::with_capacity(data.len() * input.len());
    for i in 0..data.len() {
        for (p, &px) in data.image(i).iter().enumerate() {
            let (mean, std) = model.preprocessing(p % channels).unwrap();
            let scaled = match model.input_range() {
                InputRange::Byte => f32::from(px),
                InputRange::Unit => f32::from(px) / 255.0,
            };
            let q = quantize_i8((scaled - mean) / std, input.scale, input.zero_point);
            bytes.push(q as u8);
        }
    }
    bytes
}

/// LiteRT's output bytes for each input (`inputs` back to back), or `None` (with a
/// note) where Python lacks it and CI has not asked for it.
fn litert(tflite: &Path, inputs: &[u8], count: usize) -> Option<Vec<Vec<u8>>> {
    let stem = tflite.file_stem().unwrap().to_string_lossy().into_owned();
    let (input_path, output_path) = (temp(&format!("{stem}.in")), temp(&format!("{stem}.out")));
    std::fs::write(&input_path, inputs).unwrap();
    let run = Command::new("python3")
        .arg(models().join("litert_run.py"))
        .args([tflite, &input_path, &output_path])
        .output()
        .expect("python3 runs");
    let text =
        String::from_utf8_lossy(&run.stdout).into_owned() + &String::from_utf8_lossy(&run.stderr);
    if run.status.code() == Some(3) && std::env::var_os("TINYRES_REQUIRE_LITERT").is_none() {
        eprintln!(
            "NOT CHECKED with LiteRT: {text} (pip install ai-edge-litert; CI sets TINYRES_REQUIRE_LITERT)"
        );
        return None;
    }
    assert!(run.status.success(), "{text}");
    let bytes = std::fs::read(&output_path).unwrap();
    Some(
        bytes
            .chunks(bytes.len() / count)
            .map(<[u8]>::to_vec)
            .collect(),
    )
}

/// `count` seeded random `side × side` RGB images.
fn random_images(count: usize, side: usize) -> Dataset {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let pixels = (0..count * side * side * 3)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    Dataset {
        height: side,
        width: side,
        channels: 3,
        pixels,
        labels: vec![0; count],
        class_names: (0..4).map(|c| c.to_string()).collect(),
    }
}

/// `count` seeded random `side × side` RGB images, each a random colour with noise of
/// ±40 around it: unlike uniform noise, whose average is about the same in every
/// image, they move a global average pool (and the softmax after it).
fn tinted_images(count: usize, side: usize) -> Dataset {
    let noise = random_images(count * 2, side);
    let mut data = random_images(count, side);
    let pixels_per_image = side * side * 3;
    for (i, image) in data.pixels.chunks_mut(pixels_per_image).enumerate() {
        let tint = &noise.pixels[(count + i) * pixels_per_image..][..3];
        for (p, value) in image.iter_mut().enumerate() {
            let offset = i32::from(*value % 81) - 40;
            *value = (i32::from(tint[p % 3]) + offset).clamp(0, 255) as u8;
        }
    }
    data
}

fn own_model(name: &str) -> PathBuf {
    models().join("tflite").join(name)
}

fn argmax(bytes: &[u8]) -> usize {
    (0..bytes.len()).fold(0, |b, i| {
        if bytes[i] as i8 > bytes[b] as i8 {
            i
        } else {
            b
        }
    })
}

/// An MLPerf Tiny int8 model on the 1,000 lossless CIFAR-10 test images: every output
/// byte equals LiteRT's reference kernels'; returns the top-1 accuracy.
fn mlperf_byte_exact(file: &str) -> Option<f64> {
    let tflite = shared().join("mlperf-tiny-ic/models").join(file);
    if !tflite.exists() {
        eprintln!("NOT CHECKED: {} is not there", tflite.display());
        return None;
    }
    let imported = import_tflite(&tflite, &PreprocessingFlags::default()).unwrap();
    let blob = int8_blob(&imported);
    let data = Dataset::load(
        &shared().join("cifar10/lossless_reference/test_batch_first1000.bin.gz"),
        Split::Test,
    )
    .unwrap();
    let ours = engine_outputs(&blob, &data);
    let theirs = litert(&tflite, &int8_inputs(&blob, &data), data.len())?;
    let differing: Vec<usize> = (0..data.len()).filter(|&i| ours[i] != theirs[i]).collect();
    assert!(
        differing.is_empty(),
        "{file}: {} of {} images differ from LiteRT; the first, image {}: ours {:?}, LiteRT {:?}",
        differing.len(),
        data.len(),
        differing[0],
        ours[differing[0]],
        theirs[differing[0]]
    );
    let correct = (0..data.len())
        .filter(|&i| argmax(&ours[i]) == usize::from(data.labels[i]))
        .count();
    Some(correct as f64 / data.len() as f64)
}

#[test]
fn mlperf_tiny_int8_resnet8_tflite_is_byte_exact_with_litert() {
    if let Some(accuracy) = mlperf_byte_exact("pretrainedResnet_quant.tflite") {
        // LiteRT's top-1 on these images: 88.0 %.
        assert!((accuracy - 0.880).abs() < 1e-9, "top-1 {accuracy}");
    }
}

#[test]
fn mlperf_tiny_large_int8_resnet_tflite_is_byte_exact_with_litert() {
    mlperf_byte_exact("pretrainedResnet_large_int8.tflite");
}

/// `tests/models/tflite/` (written by `tests/models/make_tflite.py`): a residual block,
/// a PAD folded into a stride-2 convolution with a fused RELU6, a max pool, and the
/// int8 head, as LiteRT computes them.
#[test]
fn own_int8_resnet_tflite_is_byte_exact_with_litert() {
    own_byte_exact("tiny_resnet_int8.tflite");
}

/// The same with a requantizing int8 MEAN for the global average pool.
#[test]
fn own_int8_resnet_with_a_mean_is_byte_exact_with_litert() {
    own_byte_exact("tiny_mean_int8.tflite");
}

/// TensorFlow's converter on the paper's CIFAR ResNet-20 with option-A shortcuts
/// (`tests/models/make_tflite_keras.py`): each is a STRIDED_SLICE and a PAD of
/// channels, which become the residual add's subsampled, zero-padded shortcut.
#[test]
fn converter_written_option_a_resnet20_is_byte_exact_with_litert() {
    own_byte_exact_on(
        "keras_resnet20_option_a_int8.tflite",
        random_images(100, 32),
    );
}

/// The same at 8×8 with one block per stage (a fuzz seed too).
#[test]
fn converter_written_tiny_option_a_resnet_is_byte_exact_with_litert() {
    own_byte_exact_on("keras_option_a_tiny_int8.tflite", tinted_images(500, 8));
}

/// TensorFlow's converter on bottleneck blocks with option-B projections.
#[test]
fn converter_written_bottleneck_net_is_byte_exact_with_litert() {
    own_byte_exact_on("keras_bottleneck_int8.tflite", tinted_images(200, 32));
}

fn own_byte_exact(name: &str) {
    own_byte_exact_on(name, random_images(500, 8));
}

fn own_byte_exact_on(name: &str, data: Dataset) {
    let tflite = own_model(name);
    let imported = import_tflite(&tflite, &PreprocessingFlags::default()).unwrap();
    let blob = int8_blob(&imported);
    let ours = engine_outputs(&blob, &data);
    let Some(theirs) = litert(&tflite, &int8_inputs(&blob, &data), data.len()) else {
        return;
    };
    let differing = (0..data.len()).filter(|&i| ours[i] != theirs[i]).count();
    assert_eq!(differing, 0, "{differing} of {} images differ", data.len());
    // Not saturated: the outputs vary from image to image.
    let distinct: std::collections::HashSet<&Vec<u8>> = ours.iter().collect();
    assert!(
        distinct.len() >= data.len() / 10,
        "{} distinct outputs",
        distinct.len()
    );
}

/// The same network behind a float input (QUANTIZE) and output (DEQUANTIZE): the
/// engine's quantized input and dequantized output equal LiteRT's.
#[test]
fn a_float_interface_int8_tflite_is_exact_with_litert() {
    let tflite = own_model("tiny_float_io_int8.tflite");
    let flags = PreprocessingFlags {
        range: Some(InputRange::Byte),
        ..Default::default()
    };
    let imported = import_tflite(&tflite, &flags).unwrap();
    let blob = int8_blob(&imported);
    let data = random_images(200, 8);
    let model = Model::parse(blob.as_bytes()).unwrap();
    let mut arena = vec![0u8; model.required_arena()];
    let mut interpreter = Interpreter::new(model, &mut arena).unwrap();
    let mut probabilities = vec![0.0f32; 4];
    let ours: Vec<Vec<u8>> = (0..data.len())
        .map(|i| {
            interpreter.run(data.image(i)).unwrap();
            interpreter.probabilities(&mut probabilities).unwrap();
            probabilities.iter().flat_map(|p| p.to_le_bytes()).collect()
        })
        .collect();
    let inputs: Vec<u8> = data
        .pixels
        .iter()
        .flat_map(|&p| f32::from(p).to_le_bytes())
        .collect();
    let Some(theirs) = litert(&tflite, &inputs, data.len()) else {
        return;
    };
    assert_eq!(ours, theirs);
}

#[test]
fn refused_tflite_models_name_the_operator_and_tensor() {
    let error = |name: &str| {
        format!(
            "{:#}",
            import_tflite(&own_model(name), &PreprocessingFlags::default()).unwrap_err()
        )
    };
    let tanh = error("tiny_with_tanh.tflite");
    assert!(
        tanh.contains("operator 1 (TANH): no engine equivalent")
            && tanh.contains("and 9 operator(s) that read their outputs"),
        "{tanh}"
    );
    let int16 = error("tiny_int16_activations.tflite");
    assert!(
        int16.contains("operator 0 (CONV_2D)") && int16.contains("\"conv0\" is INT16"),
        "{int16}"
    );
    let onnx = error("../torch_option_b.onnx");
    assert!(onnx.contains("not a TensorFlow Lite model"), "{onnx}");
}

/// Regression (found by the `tflite_import` fuzz target after 1.47 million inputs): a
/// tensor whose dimensions multiply past 2^64 overflowed the FULLY_CONNECTED check of
/// its input count (a panic with overflow checks, a wrong comparison without). Every
/// tensor's element count is bounded when the file is read.
#[test]
fn a_tensor_whose_dimensions_overflow_is_refused() {
    let tflite = models().join("regressions/tflite-dimensions-whose-product-overflows.tflite");
    let error = format!(
        "{:#}",
        import_tflite(&tflite, &PreprocessingFlags::default()).unwrap_err()
    );
    assert!(error.contains("is too large"), "{error}");
}

/// Every truncation and thousands of byte corruptions of a model give a model or an
/// error, never a panic, and whatever lowers writes a blob that parses.
#[test]
fn corrupt_tflite_files_are_errors_not_panics() {
    let bytes = std::fs::read(own_model("tiny_resnet_int8.tflite")).unwrap();
    let flags = PreprocessingFlags::default();
    let check = |candidate: &[u8]| {
        if let Ok(imported) = lower_tflite(candidate, &flags) {
            if let Some(given) = &imported.quantization {
                if let Ok(blob) = imported
                    .network
                    .to_blob_with(Encoding::Quantized(given), Memory::Min)
                {
                    Model::parse(AlignedBlob::new(&blob).as_bytes()).expect("parses");
                }
            }
        }
    };
    for len in 0..bytes.len() {
        check(&bytes[..len]);
    }
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..5000 {
        let mut corrupt = bytes.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() % corrupt.len() as u64) as usize;
            corrupt[at] = next() as u8;
        }
        check(&corrupt);
    }
}
