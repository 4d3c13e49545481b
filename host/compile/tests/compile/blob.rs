//! Blob validation: a corrupt or hostile blob gives an `Err` naming what is wrong, or
//! a model that runs without panicking; never a panic, never an out-of-bounds access.

use proptest::prelude::*;
use tinyres_compile::writer::{AlignedBlob, BlobOptions, Encoding, Memory};
use tinyres_core::{crc32, Error, Interpreter, Model};

/// A small net with every layer kind, an option-A shortcut and class names.
fn small_blobs() -> Vec<Vec<u8>> {
    let net = super::common::cifar_resnet_option_a(21, 1, 8, [4, 8, 16], 3);
    let mut network = net.to_network();
    network.class_names = vec!["cat".into(), "dog".into(), "ship".into()];
    let mut rng = super::common::Rng::new(3);
    let ranges = net.calibrate(&[rng.image(8 * 8 * 3), rng.image(8 * 8 * 3)]);
    [Encoding::F32, Encoding::F16, Encoding::Int8(&ranges)]
        .into_iter()
        .map(|e| network.to_blob(e).unwrap())
        .collect()
}

/// Parses `bytes`; if they are a valid model, runs an image through it. Returns the
/// parse result. Any panic fails the calling test.
fn parse_and_run(bytes: &[u8]) -> Result<(), Error> {
    let blob = AlignedBlob::new(bytes);
    let model = Model::parse(blob.as_bytes())?;
    let (h, w, c) = model.input_shape();
    if model.required_arena() > 1 << 22 || h * w * c > 1 << 20 {
        return Ok(()); // valid but too big to bother running here
    }
    let mut arena = vec![0u8; model.required_arena()];
    let mut interp = Interpreter::new(model, &mut arena)?;
    let _ = interp.run(&vec![100u8; h * w * c]);
    let _ = interp.logits(&mut vec![0.0; model.num_classes()]);
    let _ = interp.features(&mut vec![0.0; model.num_features()]);
    for i in 0..model.num_classes() {
        let _ = model.class_name(i);
    }
    Ok(())
}

/// Recomputes the header CRC after a test edited the blob.
pub fn reseal(bytes: &mut [u8]) {
    let crc = crc32(&bytes[16..]);
    bytes[12..16].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn valid_blobs_parse_and_carry_their_metadata() {
    for bytes in small_blobs() {
        let blob = AlignedBlob::new(&bytes);
        let model = Model::parse(blob.as_bytes()).unwrap();
        assert_eq!(model.input_shape(), (8, 8, 3));
        assert_eq!(model.num_classes(), 3);
        assert_eq!(model.class_name(2), Some("ship"));
        assert_eq!(model.class_name(3), None);
        assert_eq!(model.num_features(), 16);
        assert_eq!(model.blob_size(), bytes.len());
        parse_and_run(&bytes).unwrap();
    }
}

#[test]
fn every_truncation_is_an_error() {
    for bytes in small_blobs() {
        for len in 0..bytes.len() {
            let err = parse_and_run(&bytes[..len]).unwrap_err();
            assert!(matches!(err, Error::Truncated { .. }), "len {len}: {err:?}");
        }
    }
}

#[test]
fn a_lying_total_size_is_an_error_not_a_panic() {
    // The header claims a shorter blob and the CRC is recomputed to match: the tables
    // and weights then point past the end.
    for bytes in small_blobs() {
        for len in (64..bytes.len()).step_by(7) {
            let mut cut = bytes[..len].to_vec();
            cut[8..12].copy_from_slice(&(len as u32).to_le_bytes());
            reseal(&mut cut);
            assert!(parse_and_run(&cut).is_err(), "len {len}");
        }
    }
}

#[test]
fn trailing_bytes_after_the_model_are_ignored() {
    // A flash partition is larger than the model it holds.
    let mut bytes = small_blobs().remove(2);
    bytes.extend_from_slice(&[0xFF; 100]);
    parse_and_run(&bytes).unwrap();
}

#[test]
fn named_corruptions_give_named_errors() {
    let bytes = small_blobs().remove(2);
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = bytes.clone();
        f(&mut b);
        parse_and_run(&b).unwrap_err()
    };
    assert_eq!(with(&|b| b[0] = b'X'), Error::BadMagic);
    assert_eq!(with(&|b| b[4] = 9), Error::UnsupportedVersion(9));
    assert!(matches!(
        with(&|b| b[200] ^= 1),
        Error::ChecksumMismatch { .. }
    ));
    assert!(matches!(
        with(&|b| {
            b[16] = 7; // dtype
            reseal(b);
        }),
        Error::InvalidValue {
            what: "dtype",
            value: 7,
            ..
        }
    ));
    assert!(matches!(
        with(&|b| {
            b[40..44].copy_from_slice(&100u32.to_le_bytes()); // arena_size
            reseal(b);
        }),
        Error::OutOfBounds {
            what: "tensor buffer (beyond arena_size)",
            ..
        }
    ));
    // Put tensor 2 on top of tensor 1 while tensor 1 is still needed.
    let tensor_table = u32::from_le_bytes(bytes[24..28].try_into().unwrap()) as usize;
    let t1_offset = bytes[tensor_table + 24 + 8..tensor_table + 24 + 12].to_vec();
    assert!(matches!(
        with(&|b| {
            b[tensor_table + 48 + 8..tensor_table + 48 + 12].copy_from_slice(&t1_offset);
            reseal(b);
        }),
        Error::PlanConflict { .. }
    ));
    // An unknown layer kind.
    let layer_table = u32::from_le_bytes(bytes[28..32].try_into().unwrap()) as usize;
    assert!(matches!(
        with(&|b| {
            b[layer_table] = 99;
            reseal(b);
        }),
        Error::InvalidValue {
            what: "layer kind",
            value: 99,
            ..
        }
    ));
    // A format newer than this engine's.
    assert_eq!(
        with(&|b| {
            b[4..6].copy_from_slice(&(tinyres_core::format::VERSION + 1).to_le_bytes());
            reseal(b);
        }),
        Error::UnsupportedVersion(tinyres_core::format::VERSION + 1)
    );
    // The f32 head: beyond the last layer, or over a convolution.
    let num_layers = u16::from_le_bytes(bytes[20..22].try_into().unwrap());
    assert!(matches!(
        with(&|b| {
            b[44..46].copy_from_slice(&(num_layers + 1).to_le_bytes());
            reseal(b);
        }),
        Error::InvalidValue {
            what: "f32_head",
            ..
        }
    ));
    assert!(matches!(
        with(&|b| {
            b[44..46].copy_from_slice(&0u16.to_le_bytes());
            reseal(b);
        }),
        Error::InvalidValue { .. } | Error::OutOfBounds { .. }
    ));
    // A weights offset past the end.
    assert!(matches!(
        with(&|b| {
            b[layer_table + 20..layer_table + 24].copy_from_slice(&u32::MAX.to_le_bytes());
            reseal(b);
        }),
        Error::OutOfBounds {
            what: "weights",
            index: 0
        }
    ));
}

/// A small int8 net with Winograd filters: exactly the layers that they apply to
/// carry them (the 16-channel 3×3 stride-1 layers on rows 12 pixels wide, not those on
/// rows 6 and 3 wide: the kernel takes four pixels at a time), each term the transform
/// of the weights; a wrong term, or the flag on a layer they do not apply to, is a
/// named error.
#[test]
fn winograd_filters_are_written_where_they_apply_and_checked() {
    use tinyres_core::kernels::ConvShape;
    use tinyres_core::{format, winograd, Layer, Weights};
    let net = super::common::cifar_resnet_option_a(21, 1, 12, [16, 16, 16], 3);
    let network = net.to_network();
    let mut rng = super::common::Rng::new(3);
    let ranges = net.calibrate(&[rng.image(12 * 12 * 3), rng.image(12 * 12 * 3)]);
    let bytes = network
        .to_blob_with_options(
            Encoding::Int8(&ranges),
            BlobOptions {
                memory: Memory::Min,
                winograd: true,
            },
        )
        .unwrap();
    let blob = AlignedBlob::new(&bytes);
    let model = Model::parse(blob.as_bytes()).unwrap();
    let mut carrying = Vec::new();
    let mut first_conv = None;
    for i in 0..model.num_layers() {
        let Ok(Layer::Conv(conv)) = model.layer(i) else {
            continue;
        };
        first_conv.get_or_insert(i);
        let [input, output] = [conv.input, conv.output].map(|t| {
            let t = model.tensor(t).unwrap();
            (t.height, t.width, t.channels)
        });
        let (in_c, out_c) = (input.2, output.2);
        let shape = ConvShape::of_window(
            input,
            output,
            (conv.kernel_h, conv.kernel_w),
            conv.stride,
            (conv.padding[0], conv.padding[1]),
        );
        let applies = winograd::applies(&shape);
        assert_eq!(conv.winograd.is_some(), applies, "layer {i}");
        if let (Some(filters), Weights::I8(weights)) = (conv.winograd, conv.weights) {
            let mut expected = Vec::new();
            winograd::for_each_filter_value(weights, in_c, out_c, |v| {
                expected.extend_from_slice(&v.to_le_bytes())
            });
            assert_eq!(filters, &expected[..], "layer {i}");
            carrying.push((i, weights.len()));
        }
    }
    assert_eq!(carrying.len(), 2);
    parse_and_run(&bytes).unwrap();
    let layer_table = u32::from_le_bytes(bytes[28..32].try_into().unwrap()) as usize;
    let record = |i: u16| layer_table + usize::from(i) * format::LAYER_RECORD_SIZE;
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = bytes.clone();
        f(&mut b);
        reseal(&mut b);
        parse_and_run(&b).unwrap_err()
    };
    let (layer, n_weights) = carrying[0];
    let weights_at = record(layer) + format::layer::WEIGHTS;
    let weights = u32::from_le_bytes(bytes[weights_at..weights_at + 4].try_into().unwrap());
    let filters = (weights as usize + n_weights).next_multiple_of(format::SECTION_ALIGN);
    assert_eq!(
        with(&|b| b[filters + 6] ^= 1),
        Error::InvalidValue {
            what: "Winograd filter term",
            index: layer,
            value: 3
        }
    );
    let first = first_conv.unwrap();
    assert!(matches!(
        with(&|b| b[record(first) + format::layer::FLAGS] |= format::flags::WINOGRAD),
        Error::ShapeMismatch { layer, .. } if layer == first
    ));
}

#[test]
fn a_misaligned_blob_is_refused() {
    let bytes = small_blobs().remove(0);
    let mut shifted = AlignedBlob::new(&[&[0u8][..], &bytes].concat());
    let err = Model::parse(&shifted.as_bytes_mut()[1..]).unwrap_err();
    assert_eq!(err, Error::Misaligned { what: "blob" });
}

/// Every byte of the header and the tensor and layer tables, set to each of a few
/// hostile values with the CRC recomputed: an error or a model that runs.
#[test]
fn single_byte_sweep_of_header_and_tables() {
    for bytes in small_blobs() {
        let layer_table = u32::from_le_bytes(bytes[28..32].try_into().unwrap()) as usize;
        let num_layers = usize::from(u16::from_le_bytes(bytes[20..22].try_into().unwrap()));
        let end = layer_table + num_layers * 64;
        for at in 0..end {
            if (12..16).contains(&at) {
                continue; // the CRC itself
            }
            for value in [
                0u8,
                1,
                0x7F,
                0x80,
                0xFF,
                bytes[at] ^ 1,
                bytes[at].wrapping_add(16),
            ] {
                let mut b = bytes.clone();
                b[at] = value;
                reseal(&mut b);
                let _ = parse_and_run(&b);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Random mutations anywhere, resealed so the CRC does not hide them.
    #[test]
    fn mutated_blobs_never_panic(
        which in 0usize..3,
        mutations in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        reseal_crc in proptest::bool::weighted(0.9),
    ) {
        let mut b = small_blobs().swap_remove(which);
        for (at, value) in mutations {
            let at = at % b.len();
            b[at] = value;
        }
        if reseal_crc {
            reseal(&mut b);
        }
        let _ = parse_and_run(&b);
    }

    /// Arbitrary bytes behind a valid-looking header.
    #[test]
    fn random_bytes_never_panic(mut body in proptest::collection::vec(any::<u8>(), 64..2048)) {
        body[0..4].copy_from_slice(b"TRM\0");
        body[4..6].copy_from_slice(&1u16.to_le_bytes());
        body[6..8].copy_from_slice(&64u16.to_le_bytes());
        let len = body.len() as u32;
        body[8..12].copy_from_slice(&len.to_le_bytes());
        reseal(&mut body);
        let _ = parse_and_run(&body);
    }
}
