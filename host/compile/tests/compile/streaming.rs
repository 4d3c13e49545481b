//! The streamed memory plan (`Memory::Min`) against the whole-tensor plan
//! (`Memory::Fast`): bit-identical results for every member of the family, in f32 and
//! int8, in a smaller arena; and a streamed plan that a blob breaks is refused.

use super::blob::reseal;
use super::common::Rng;
use tinyres_compile::arch::{Architecture, Padding, Shortcut};
use tinyres_compile::writer::{AlignedBlob, Encoding, Memory, Network};
use tinyres_core::format::{tensor as tf, TENSOR_RECORD_SIZE};
use tinyres_core::{Error, Interpreter, Model};

/// Logits and features of `pixels`, as bit patterns.
fn outputs(blob: &AlignedBlob, pixels: &[u8]) -> (Vec<u32>, Vec<u32>) {
    let model = Model::parse(blob.as_bytes()).expect("valid blob");
    let mut arena = vec![0u8; model.required_arena()];
    let mut net = Interpreter::new(model, &mut arena).expect("arena fits");
    net.run(pixels).expect("runs");
    let mut logits = vec![0.0f32; model.num_classes()];
    net.logits(&mut logits).unwrap();
    let mut features = vec![0.0f32; model.num_features()];
    net.features(&mut features).unwrap();
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect();
    (bits(logits), bits(features))
}

fn family() -> Vec<Architecture> {
    let by_name = |name: &str| Architecture::by_name(name).unwrap();
    vec![
        // Option B, TensorFlow padding (the MLPerf Tiny ResNet-8).
        by_name("resnet8"),
        // Option A: stride-2 identity with zero channels.
        by_name("resnet20"),
        Architecture {
            shortcut: Shortcut::C,
            padding: Padding::Symmetric,
            ..by_name("resnet8")
        },
        by_name("resnet11-bottleneck"),
        by_name("plain20"),
    ]
}

fn blobs(network: &Network, encoding: Encoding<'_>) -> (AlignedBlob, AlignedBlob) {
    let write = |memory| AlignedBlob::new(&network.to_blob_with(encoding, memory).unwrap());
    (write(Memory::Fast), write(Memory::Min))
}

/// An untrained MLPerf Tiny-style ResNet-8 in int8 (unit activation ranges), planned
/// with whole tensors and streamed.
fn resnet8_int8_blobs() -> (AlignedBlob, AlignedBlob) {
    let network = Architecture::by_name("resnet8")
        .unwrap()
        .network(1)
        .unwrap();
    blobs(&network, Encoding::Int8(&network.unit_ranges()))
}

#[test]
fn streamed_plans_equal_whole_tensor_plans_bit_for_bit_in_less_memory() {
    let mut rng = Rng::new(17);
    for arch in family() {
        let network = arch.network(3).unwrap();
        let images: Vec<Vec<u8>> = (0..3).map(|_| rng.image(32 * 32 * 3)).collect();
        let ranges = network.calibrate(images.iter().map(Vec::as_slice)).unwrap();
        for encoding in [Encoding::F32, Encoding::F16, Encoding::Int8(&ranges)] {
            let (fast, min) = blobs(&network, encoding);
            let arena = |b: &AlignedBlob| Model::parse(b.as_bytes()).unwrap().arena_size();
            println!(
                "{} {:?}: arena {} B whole-tensor, {} B streamed",
                arch.name,
                encoding.dtype(),
                arena(&fast),
                arena(&min)
            );
            assert!(arena(&min) < arena(&fast), "{}", arch.name);
            for image in &images {
                assert_eq!(
                    outputs(&fast, image),
                    outputs(&min, image),
                    "{} {:?}",
                    arch.name,
                    encoding.dtype()
                );
            }
        }
    }
}

#[test]
fn resnet8_int8_streams_in_at_most_18_kib() {
    let (fast, min) = resnet8_int8_blobs();
    let fast = Model::parse(fast.as_bytes()).unwrap();
    let min = Model::parse(min.as_bytes()).unwrap();
    // Two 32×32×16 int8 buffers, the residual add in place.
    assert_eq!(fast.arena_size(), 2 * 32 * 32 * 16);
    // One 32×32×16 buffer, three rows of the block's middle tensor and one of its
    // projection; the image is read from the caller's buffer.
    assert_eq!(min.arena_size(), 32 * 32 * 16 + 3 * 16 * 32 + 16 * 32);
    assert!(min.tensor(0).unwrap().is_window());
}

/// A copy of `blob` with `value` written at field `field` of tensor `t`'s record, and
/// the CRC updated.
fn with_tensor_field(blob: &AlignedBlob, t: usize, field: usize, value: &[u8]) -> AlignedBlob {
    let mut blob = blob.clone();
    let bytes = blob.as_bytes_mut();
    let table = u32::from_le_bytes(bytes[24..28].try_into().unwrap()) as usize;
    let at = table + t * TENSOR_RECORD_SIZE + field;
    bytes[at..at + value.len()].copy_from_slice(value);
    reseal(bytes);
    blob
}

fn with_rows_held(blob: &AlignedBlob, t: usize, rows: u16) -> AlignedBlob {
    with_tensor_field(blob, t, tf::ROWS_HELD, &rows.to_le_bytes())
}

#[test]
fn a_window_too_small_or_read_outside_its_group_is_refused() {
    let (fast, min) = resnet8_int8_blobs();
    // Tensor 2 is the first block's middle tensor: four rows, for a 3×3 reader that
    // computes two rows a step (the block is under the arena's peak, which allows it).
    let model = Model::parse(min.as_bytes()).unwrap();
    assert_eq!(model.tensor(2).unwrap().rows_held, 4);
    match Model::parse(with_rows_held(&min, 2, 2).as_bytes()) {
        Err(Error::StreamConflict { .. }) => {}
        other => panic!("a two-row window for a 3x3 reader: {other:?}"),
    }
    // The block's input is read by two layers: it cannot be a window.
    match Model::parse(with_rows_held(&fast, 1, 3).as_bytes()) {
        Err(Error::StreamConflict { .. } | Error::PlanConflict { .. }) => {}
        other => panic!("a window with two readers: {other:?}"),
    }
}

#[test]
fn an_output_row_written_over_input_rows_still_needed_is_refused() {
    let (_, min) = resnet8_int8_blobs();
    let model = Model::parse(min.as_bytes()).unwrap();
    // The second block (stride 2) writes its 16×16×32 output over its 32×32×16 input,
    // from the input's first byte. Moving the output up by one input row makes its
    // first rows land on input rows the block's first convolution has not read yet.
    let (stride2_out, offset) = (1..model.num_tensors())
        .map(|t| (t, model.tensor(t).unwrap()))
        .find(|(_, t)| (t.height, t.channels) == (16, 32) && !t.is_window())
        .map(|(t, info)| (usize::from(t), info.arena_offset))
        .unwrap();
    let moved = (offset + 32 * 16 * 4) as u32;
    let broken = with_tensor_field(&min, stride2_out, tf::ARENA_OFFSET, &moved.to_le_bytes());
    match Model::parse(broken.as_bytes()) {
        Err(Error::PlanConflict { .. }) => {}
        other => panic!("an output over unread input rows: {other:?}"),
    }
}
