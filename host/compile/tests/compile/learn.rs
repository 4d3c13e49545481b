//! The on-device trainer and its persistence: gradients, class addition, capacity
//! limits, a power cut at every byte of a save, and flipped bits and arbitrary bytes
//! in the flash it loads from.

use std::cell::RefCell;
use std::rc::Rc;

use embedded_storage::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};
use tinyres_compile::writer::{AlignedBlob, Encoding};
use tinyres_core::learn::{FeatureMean, LastLayer, Momentum, Sgd};
use tinyres_core::persist::LayerStore;
use tinyres_core::{Error, Interpreter, Model};

fn small_net() -> super::common::RefNet {
    super::common::cifar_resnet_option_a(31, 1, 8, [4, 8, 16], 3)
}

fn features_and_logits(blob: &AlignedBlob, pixels: &[u8]) -> (Vec<f32>, Vec<f32>) {
    let model = Model::parse(blob.as_bytes()).unwrap();
    let mut arena = vec![0u8; model.required_arena()];
    let mut interp = Interpreter::new(model, &mut arena).unwrap();
    interp.run(pixels).unwrap();
    let mut f = vec![0.0; model.num_features()];
    let mut l = vec![0.0; model.num_classes()];
    interp.features(&mut f).unwrap();
    interp.logits(&mut l).unwrap();
    (f, l)
}

#[test]
fn copied_f32_classifier_reproduces_the_engine_bit_for_bit() {
    let blob = AlignedBlob::new(&small_net().to_network().to_blob(Encoding::F32).unwrap());
    let model = Model::parse(blob.as_bytes()).unwrap();
    let layer: LastLayer<16, 4> = LastLayer::from_model(&model, Sgd::default()).unwrap();
    assert_eq!((layer.num_features(), layer.num_classes()), (16, 3));
    let mut rng = super::common::Rng::new(1);
    for _ in 0..5 {
        let (features, logits) = features_and_logits(&blob, &rng.image(8 * 8 * 3));
        let mut mine = [0.0f32; 3];
        layer.logits(&features, &mut mine).unwrap();
        assert_eq!(mine.to_vec(), logits);
    }
}

#[test]
fn copied_int8_classifier_matches_the_dequantized_engine() {
    let net = small_net();
    let mut rng = super::common::Rng::new(2);
    let images: Vec<Vec<u8>> = (0..8).map(|_| rng.image(8 * 8 * 3)).collect();
    let ranges = net.calibrate(&images);
    let blob = AlignedBlob::new(&net.to_network().to_blob(Encoding::Int8(&ranges)).unwrap());
    let model = Model::parse(blob.as_bytes()).unwrap();
    let logits_tensor = model.tensor(model.num_layers()).unwrap();
    let (out_scale, out_zp) = (logits_tensor.scale, logits_tensor.zero_point);
    let layer: LastLayer<16, 4> = LastLayer::from_model(&model, Sgd::default()).unwrap();
    for img in &images {
        let (features, logits) = features_and_logits(&blob, img);
        let mut mine = [0.0f32; 3];
        layer.logits(&features, &mut mine).unwrap();
        for (a, b) in mine.iter().zip(&logits) {
            let q = (b / out_scale).round() as i32 + out_zp;
            if q == -128 || q == 127 {
                continue; // the engine's int8 logit saturated; the float head does not
            }
            // The engine rounds its int8 logits to the output scale; the float head does not.
            assert!(
                (a - b).abs() <= 1.01 * out_scale,
                "{a} vs {b} (scale {out_scale})"
            );
        }
    }
}

#[test]
fn sgd_step_follows_the_cross_entropy_gradient() {
    let sgd = Sgd {
        learning_rate: 0.5,
        momentum: 0.0,
        weight_decay: 0.0,
    };
    let mut layer: LastLayer<3, 3> = LastLayer::new(3, sgd).unwrap();
    for mean in [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]] {
        layer.add_class(&mean).unwrap();
    }
    let x = [0.3f32, -0.2, 0.9];
    let mut before = [0.0f32; 3];
    layer.logits(&x, &mut before).unwrap();
    layer.train(&x, 0, &mut Momentum::<3, 3>::new(0)).unwrap();
    let mut after = [0.0f32; 3];
    layer.logits(&x, &mut after).unwrap();
    // dL/dz = p − onehot; dz/dW·x = |x|² + 1 (bias): Δz = −lr·(p − y)·(|x|² + 1).
    let max = before.iter().cloned().fold(f32::MIN, f32::max);
    let e: Vec<f64> = before.iter().map(|&z| f64::from(z - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    let norm = x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() + 1.0;
    for c in 0..3 {
        let p = e[c] / sum;
        let y = if c == 0 { 1.0 } else { 0.0 };
        let want = f64::from(before[c]) - 0.5 * (p - y) * norm;
        assert!(
            (f64::from(after[c]) - want).abs() < 1e-5,
            "class {c}: {} vs {want}",
            after[c]
        );
    }
}

#[test]
fn momentum_weight_decay_and_training_reduce_the_loss() {
    let mut layer: LastLayer<4, 2> = LastLayer::new(
        4,
        Sgd {
            learning_rate: 0.1,
            ..Sgd::default()
        },
    )
    .unwrap();
    layer.add_class(&[1.0, 1.0, 0.0, 0.0]).unwrap();
    layer.add_class(&[0.9, 1.1, 0.1, 0.0]).unwrap();
    let a = [1.0, 1.0, 0.5, 0.0];
    let b = [1.0, 1.0, 0.0, 0.5];
    let mut momentum = Momentum::<4, 2>::new(0);
    let first =
        layer.train(&a, 0, &mut momentum).unwrap() + layer.train(&b, 1, &mut momentum).unwrap();
    let mut last = first;
    for _ in 0..50 {
        last =
            layer.train(&a, 0, &mut momentum).unwrap() + layer.train(&b, 1, &mut momentum).unwrap();
    }
    assert!(last < 0.2 * first, "{first} -> {last}");
    assert_eq!(layer.predict(&a).unwrap(), 0);
    assert_eq!(layer.predict(&b).unwrap(), 1);
}

#[test]
fn added_class_is_imprinted_from_the_mean_feature() {
    let blob = AlignedBlob::new(&small_net().to_network().to_blob(Encoding::F32).unwrap());
    let model = Model::parse(blob.as_bytes()).unwrap();
    let mut layer: LastLayer<16, 4> = LastLayer::from_model(&model, Sgd::default()).unwrap();
    let mut mean: FeatureMean<16> = FeatureMean::new(16).unwrap();
    let shots: Vec<Vec<f32>> = (0..5)
        .map(|i| (0..16).map(|f| if f == i { 5.0 } else { 0.1 }).collect())
        .collect();
    for s in &shots {
        mean.add(s).unwrap();
    }
    assert_eq!(mean.count(), 5);
    let m = mean.mean();
    let new = layer.add_class(&m).unwrap();
    assert_eq!((new, layer.num_classes()), (3, 4));
    // Capacity is in the type: a fifth class does not fit.
    assert_eq!(
        layer.add_class(&m),
        Err(Error::Capacity {
            what: "last layer classes",
            needed: 5,
            capacity: 4
        })
    );
    assert!(matches!(
        layer.train(&m, 9, &mut Momentum::<16, 4>::new(0)),
        Err(Error::InvalidValue {
            what: "training label",
            ..
        })
    ));
    assert!(matches!(
        layer.logits(&m[..3], &mut [0.0; 4]),
        Err(Error::WrongLength {
            what: "features",
            ..
        })
    ));
    // Removing the last class and adding it again from the same mean gives the same
    // row: how a taught class is refined from more examples.
    let mut logits = [0.0; 4];
    layer.logits(&m, &mut logits).unwrap();
    assert_eq!(layer.remove_last_class(), Ok(3));
    assert_eq!(layer.num_classes(), 3);
    assert_eq!(layer.add_class(&m), Ok(3));
    let mut again = [0.0; 4];
    layer.logits(&m, &mut again).unwrap();
    assert_eq!(logits, again);
    let mut empty: LastLayer<16, 4> = LastLayer::new(16, Sgd::default()).unwrap();
    assert!(matches!(
        empty.remove_last_class(),
        Err(Error::Unsupported { .. })
    ));
    let too_small: Result<LastLayer<8, 4>, _> = LastLayer::from_model(&model, Sgd::default());
    assert!(matches!(
        too_small,
        Err(Error::Capacity {
            what: "last layer features",
            needed: 16,
            capacity: 8
        })
    ));
}

#[test]
fn learning_state_ram_is_known_at_build_time() {
    // ResNet-8: 64 features; room for its 10 classes plus 2 new ones.
    let bytes = size_of::<LastLayer<64, 12>>();
    // Weights for every row and bias; counts, settings and padding on top.
    assert!((4 * 12 * 65..4 * 12 * 65 + 64).contains(&bytes), "{bytes}");
    // The momentum of the rows being trained: one row to teach a new class.
    let momentum = size_of::<Momentum<64, 1>>();
    assert!((4 * 65..4 * 65 + 16).contains(&momentum), "{momentum}");
}

// ------------------------------------------------------------------ persistence

/// An in-memory NOR flash that loses power after a budget of bytes (erased or
/// written). A write cut inside a 4-byte word leaves that word half-programmed (NOR
/// writes can only clear bits); after the cut every operation fails.
#[derive(Clone)]
struct FakeFlash {
    memory: Rc<RefCell<Vec<u8>>>,
    budget: Option<usize>,
}

#[derive(Debug)]
struct PowerLost;

impl NorFlashError for PowerLost {
    fn kind(&self) -> NorFlashErrorKind {
        NorFlashErrorKind::Other
    }
}

impl ErrorType for FakeFlash {
    type Error = PowerLost;
}

impl FakeFlash {
    fn new(size: usize) -> Self {
        FakeFlash {
            memory: Rc::new(RefCell::new(vec![0xFF; size])),
            budget: None,
        }
    }

    fn spend(&mut self) -> Result<(), PowerLost> {
        match &mut self.budget {
            Some(0) => Err(PowerLost),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }
}

impl ReadNorFlash for FakeFlash {
    const READ_SIZE: usize = 1;
    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), PowerLost> {
        if self.budget == Some(0) {
            return Err(PowerLost);
        }
        let m = self.memory.borrow();
        bytes.copy_from_slice(&m[offset as usize..offset as usize + bytes.len()]);
        Ok(())
    }
    fn capacity(&self) -> usize {
        self.memory.borrow().len()
    }
}

impl NorFlash for FakeFlash {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = 256;
    fn erase(&mut self, from: u32, to: u32) -> Result<(), PowerLost> {
        assert!(from.is_multiple_of(256) && to.is_multiple_of(256));
        for at in from..to {
            self.spend()?;
            self.memory.borrow_mut()[at as usize] = 0xFF;
        }
        Ok(())
    }
    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), PowerLost> {
        assert!(
            offset.is_multiple_of(4) && bytes.len().is_multiple_of(4),
            "unaligned write"
        );
        for (i, &b) in bytes.iter().enumerate() {
            let at = offset as usize + i;
            if self.spend().is_err() {
                // Torn word: the rest of this word gets some of its bits cleared.
                let word_end = (at / 4 + 1) * 4;
                let mut m = self.memory.borrow_mut();
                for j in at..word_end.min(offset as usize + bytes.len()) {
                    m[j] &= bytes[j - offset as usize] | 0x0F;
                }
                return Err(PowerLost);
            }
            let mut m = self.memory.borrow_mut();
            assert_eq!(m[at] & b, b, "writing over unerased flash at {at}");
            m[at] &= b;
        }
        Ok(())
    }
}

#[test]
fn training_from_a_row_leaves_the_rows_before_it_untouched() {
    let features = [0.3, -0.2, 0.9, 0.1, 0.0, 0.4, -0.7, 0.2];
    let (mut all, mut last) = (layer_with(0.5), layer_with(0.5));
    let (mut every_row, mut from_row_2) = (Momentum::<8, 4>::new(0), Momentum::<8, 1>::new(2));
    for label in [0, 2, 1, 2] {
        let loss_all = all.train(&features, label, &mut every_row).unwrap();
        let loss_last = last.train(&features, label, &mut from_row_2).unwrap();
        if label == 0 {
            assert_eq!(loss_all, loss_last, "same loss before any step");
        }
    }
    let fresh = layer_with(0.5);
    let logits = |layer: &LastLayer<8, 4>| {
        let mut l = [0.0; 3];
        layer.logits(&features, &mut l).unwrap();
        l
    };
    let (untouched, trained) = (logits(&fresh), logits(&last));
    assert_eq!(trained[..2], untouched[..2], "rows 0 and 1 are frozen");
    assert_ne!(trained[2], untouched[2], "row 2 learns");
    assert_ne!(logits(&all)[0], untouched[0], "plain train moves every row");
}

#[test]
fn momentum_must_cover_every_row_it_trains() {
    let features = [0.3, -0.2, 0.9, 0.1, 0.0, 0.4, -0.7, 0.2];
    let mut layer = layer_with(0.5);
    let before = layer.clone();
    // Three classes from row 1: two rows, one row of momentum.
    assert_eq!(
        layer.train(&features, 0, &mut Momentum::<8, 1>::new(1)),
        Err(Error::Capacity {
            what: "momentum rows",
            needed: 2,
            capacity: 1
        })
    );
    assert!(matches!(
        layer.train(&features, 0, &mut Momentum::<8, 4>::new(3)),
        Err(Error::InvalidValue {
            what: "momentum's first row (past the last class)",
            value: 3,
            ..
        })
    ));
    let logits = |layer: &LastLayer<8, 4>| {
        let mut l = [0.0; 3];
        layer.logits(&features, &mut l).unwrap();
        l
    };
    assert_eq!(
        logits(&layer),
        logits(&before),
        "a refused step changes nothing"
    );
}

#[test]
fn a_weighted_step_scales_the_gradient_and_weight_one_is_a_plain_step() {
    let features = [0.3, -0.2, 0.9, 0.1, 0.0, 0.4, -0.7, 0.2];
    let logits = |layer: &LastLayer<8, 4>| {
        let mut l = [0.0; 3];
        layer.logits(&features, &mut l).unwrap();
        l
    };
    let (mut plain, mut one) = (layer_with(0.5), layer_with(0.5));
    let (mut m_plain, mut m_one) = (Momentum::<8, 4>::new(0), Momentum::<8, 4>::new(0));
    for label in [0, 2, 1, 2] {
        let a = plain.train(&features, label, &mut m_plain).unwrap();
        let b = one
            .train_weighted(&features, label, 1.0, &mut m_one)
            .unwrap();
        assert_eq!(a, b);
    }
    assert_eq!(
        logits(&plain),
        logits(&one),
        "weight 1 is bit for bit a plain step"
    );

    // Without weight decay, a step of weight 2 moves each logit twice as far.
    let no_decay = Sgd {
        weight_decay: 0.0,
        ..Sgd::default()
    };
    let (mut single, mut double) = (layer_with(0.5), layer_with(0.5));
    single.sgd = no_decay;
    double.sgd = no_decay;
    let start = logits(&single);
    single
        .train_weighted(&features, 1, 1.0, &mut Momentum::<8, 4>::new(0))
        .unwrap();
    double
        .train_weighted(&features, 1, 2.0, &mut Momentum::<8, 4>::new(0))
        .unwrap();
    let (once, twice) = (logits(&single), logits(&double));
    for (c, &s) in start.iter().enumerate() {
        let (moved_once, moved_twice) = (once[c] - s, twice[c] - s);
        assert!(
            (moved_twice - 2.0 * moved_once).abs() < 1e-5,
            "class {c}: {moved_once} then {moved_twice}"
        );
    }

    // Weight 0 only decays the weights; bad weights change nothing.
    let mut zero = layer_with(0.5);
    zero.sgd = no_decay;
    zero.train_weighted(&features, 1, 0.0, &mut Momentum::<8, 4>::new(0))
        .unwrap();
    assert_eq!(logits(&zero), start);
    for bad in [-1.0, f32::NAN, f32::INFINITY] {
        assert_eq!(
            zero.train_weighted(&features, 1, bad, &mut Momentum::<8, 4>::new(0)),
            Err(Error::Unsupported {
                what: "an example's weight must be finite and not negative"
            }),
            "{bad}"
        );
    }
    assert_eq!(logits(&zero), start);
}

fn layer_with(seed: f32) -> LastLayer<8, 4> {
    let mut layer = LastLayer::new(8, Sgd::default()).unwrap();
    for c in 0..3 {
        let row: Vec<f32> = (0..8).map(|f| seed + (c * 8 + f) as f32 * 0.25).collect();
        layer.add_class(&row).unwrap();
    }
    layer
}

fn saved_bytes<const F: usize, const C: usize>(layer: &LastLayer<F, C>) -> Vec<u8> {
    let mut out = Vec::new();
    layer
        .save(|b| {
            out.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
    out
}

/// What a freshly booted device finds: the saved layer, or `None` when no slot is valid.
fn boot(flash: &FakeFlash) -> Option<Vec<u8>> {
    let mut store = LayerStore::new(
        FakeFlash {
            memory: flash.memory.clone(),
            budget: None,
        },
        0,
        256,
    )
    .unwrap();
    let mut layer = layer_with(100.0); // stands for the blob's original classifier
    store.load(&mut layer).unwrap().map(|_| saved_bytes(&layer))
}

#[test]
fn save_and_load_round_trip_and_alternate_slots() {
    let flash = FakeFlash::new(1024);
    let mut store = LayerStore::new(flash.clone(), 0, 256).unwrap();
    assert_eq!(store.newest().unwrap(), None);
    let a = layer_with(1.0);
    let s1 = store.save(&a).unwrap();
    let b = layer_with(2.0);
    let s2 = store.save(&b).unwrap();
    let s3 = store.save(&a).unwrap();
    assert_eq!(
        (
            s1.slot,
            s1.sequence,
            s2.slot,
            s2.sequence,
            s3.slot,
            s3.sequence
        ),
        (0, 1, 1, 2, 0, 3)
    );
    assert_eq!(boot(&flash), Some(saved_bytes(&a)));
}

#[test]
fn a_power_cut_at_any_byte_of_a_save_keeps_old_or_new_weights() {
    let old = layer_with(1.0);
    let new = layer_with(-7.5);
    for first_save in [false, true] {
        let base = FakeFlash::new(1024);
        if first_save {
            LayerStore::new(base.clone(), 0, 256)
                .unwrap()
                .save(&old)
                .unwrap();
        }
        let before = boot(&base);
        let mut cuts = 0;
        for budget in 0.. {
            let flash = FakeFlash {
                memory: Rc::new(RefCell::new(base.memory.borrow().clone())),
                budget: Some(budget),
            };
            let mut store = LayerStore::new(flash.clone(), 0, 256).unwrap();
            let completed = store.save(&new).is_ok();
            let found = boot(&flash);
            if completed {
                assert_eq!(found, Some(saved_bytes(&new)), "budget {budget}");
                break;
            }
            assert!(
                found == before || found == Some(saved_bytes(&new)),
                "budget {budget}: {found:?}"
            );
            cuts += 1;
        }
        // Erase of one 256-byte slot, the payload and the header were all interrupted.
        assert!(cuts > 256 + saved_bytes(&new).len(), "{cuts}");
    }
}

/// What a device booting from `memory` finds (`load` must not fail or panic on any
/// contents): the saved layer's bytes, or `None`.
fn boot_from(memory: Vec<u8>) -> Option<Vec<u8>> {
    boot(&FakeFlash {
        memory: Rc::new(RefCell::new(memory)),
        budget: None,
    })
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    /// Bits flipped anywhere in a flash image holding an older and a newer head (a
    /// worn or disturbed flash): a boot finds one of the two heads or none, never a
    /// mix, never a panic.
    #[test]
    fn flipped_bits_in_the_head_store_yield_the_old_head_the_new_head_or_none(
        flips in proptest::collection::vec((0usize..512, 0u8..8), 1..24)
    ) {
        let (old, new) = (layer_with(1.0), layer_with(-7.5));
        let flash = FakeFlash::new(512);
        let mut store = LayerStore::new(flash.clone(), 0, 256).unwrap();
        store.save(&old).unwrap();
        store.save(&new).unwrap();
        let mut memory = flash.memory.borrow().clone();
        for (byte, bit) in flips {
            memory[byte] ^= 1 << bit;
        }
        let found = boot_from(memory);
        proptest::prop_assert!(
            found.is_none() || found == Some(saved_bytes(&old)) || found == Some(saved_bytes(&new)),
            "{found:?}"
        );
    }

    /// Arbitrary bytes (a flash never written by the store, or written by something
    /// else): no head, and no panic.
    #[test]
    fn arbitrary_flash_contents_yield_no_head(
        memory in proptest::collection::vec(proptest::prelude::any::<u8>(), 512)
    ) {
        proptest::prop_assert_eq!(boot_from(memory), None);
    }
}

#[test]
fn sequence_numbers_wrap_around() {
    let flash = FakeFlash::new(1024);
    let mut store = LayerStore::new(flash.clone(), 0, 256).unwrap();
    store.save(&layer_with(1.0)).unwrap();
    // Forge slot 0's sequence to just below the wrap, re-sealing its CRC.
    {
        let mut m = flash.memory.borrow_mut();
        m[4..8].copy_from_slice(&(u32::MAX - 1).to_le_bytes());
        let len = u32::from_le_bytes(m[8..12].try_into().unwrap()) as usize;
        let mut crc = tinyres_core::crc32_update(0, &m[4..12]);
        crc = tinyres_core::crc32_update(crc, &m[16..16 + len]);
        m[12..16].copy_from_slice(&crc.to_le_bytes());
    }
    let latest = layer_with(3.0);
    let s = store.save(&layer_with(2.0)).unwrap();
    assert_eq!(s.sequence, u32::MAX);
    let s = store.save(&latest).unwrap();
    assert_eq!((s.slot, s.sequence), (0, 0));
    assert_eq!(boot(&flash), Some(saved_bytes(&latest)));
}

#[test]
fn store_configuration_errors() {
    let flash = FakeFlash::new(1024);
    assert!(matches!(
        LayerStore::new(flash.clone(), 100, 256),
        Err(Error::Misaligned { .. })
    ));
    assert!(matches!(
        LayerStore::new(flash.clone(), 0, 1024),
        Err(Error::OutOfBounds { .. })
    ));
    let big: LastLayer<64, 16> = {
        let mut l = LastLayer::new(64, Sgd::default()).unwrap();
        l.add_class(&[1.0; 64]).unwrap();
        l
    };
    let mut store = LayerStore::new(flash, 0, 256).unwrap();
    assert!(matches!(
        store.save(&big),
        Err(Error::Capacity {
            what: "flash slot",
            ..
        })
    ));
}
