//! On-device learning in QEMU: the `finetune` firmware adds a class the model never
//! saw, saves its head to the flash image, and a second boot from the same flash image
//! restores it. The device must match the same application code run on the host
//! bit for bit: predictions and the flash contents.
//!
//! The model is ResNet-8 with an untrained (He-initialised) trunk and a classifier
//! trained on the host over its features for nine classes of the synthetic set; the
//! tenth (`vgradient`) is held out and learned on the device from five shots plus five
//! rehearsal images of old classes. (With a trained trunk from `tinyres train` the
//! same scenario gives the accuracy figures; this test is about exactness and
//! persistence.)

mod common;

use std::time::Duration;

use common::{Button, Led, MemFlash};
use tinyres_core::learn::{LastLayer, Sgd};
use tinyres_core::persist::LayerStore;
use tinyres_core::writer::{AlignedBlob, Encoding, LayerSpec, Network};
use tinyres_core::{Interpreter, Model};
use tinyres_firmware::app::{App, Head, FINETUNE_EPOCHS, SLOT_BYTES};
use tinyres_host::arch::Architecture;
use tinyres_host::data::{synthetic, Dataset};
use tinyres_host::qemu::{self, Board, FLASH_IMAGE};

const NEW_CLASS: u8 = 9;

/// ResNet-8 over nine synthetic classes: untrained trunk, head fitted on the host.
fn nine_class_model(train: &Dataset) -> Network {
    let arch = Architecture {
        classes: 9,
        ..Architecture::by_name("resnet8").unwrap()
    };
    let mut net = arch.network(21).unwrap();
    let old: Vec<usize> = (0..train.len())
        .filter(|&i| train.labels[i] != NEW_CLASS)
        .collect();
    let features: Vec<Vec<f32>> = old
        .iter()
        .map(|&i| net.forward_f32(train.image(i)).unwrap().tensors[net.features.unwrap()].clone())
        .collect();
    let mut head: LastLayer<64, 12> = LastLayer::new(
        64,
        Sgd {
            learning_rate: 0.05,
            ..Sgd::default()
        },
    )
    .unwrap();
    for class in 0..9u8 {
        let members: Vec<&Vec<f32>> = old
            .iter()
            .zip(&features)
            .filter(|(&i, _)| train.labels[i] == class)
            .map(|(_, f)| f)
            .collect();
        let mean: Vec<f32> = (0..64)
            .map(|j| members.iter().map(|f| f[j]).sum::<f32>() / members.len() as f32)
            .collect();
        head.add_class(&mean).unwrap();
    }
    for _ in 0..20 {
        for (&i, f) in old.iter().zip(&features) {
            head.train(f, usize::from(train.labels[i])).unwrap();
        }
    }
    let mut saved = Vec::new();
    head.save(|b| {
        saved.extend_from_slice(b);
        Ok(())
    })
    .unwrap();
    let values: Vec<f32> = saved[4..]
        .chunks(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    if let Some(LayerSpec::Dense(d)) = net.layers.last_mut() {
        d.weights = values[..9 * 64].to_vec();
        d.bias = values[9 * 64..].to_vec();
    }
    net
}

fn accuracy(data: &Dataset, predictions: &[qemu::DevicePrediction], new: bool) -> f64 {
    let chosen: Vec<_> = predictions
        .iter()
        .filter(|p| (data.labels[p.index] == NEW_CLASS) == new)
        .collect();
    chosen
        .iter()
        .filter(|p| p.class == usize::from(data.labels[p.index]))
        .count() as f64
        / chosen.len() as f64
}

#[test]
fn the_device_learns_a_new_class_persists_it_and_matches_the_host() {
    let train = synthetic(200, 11);
    let test = synthetic(40, 12);
    let network = nine_class_model(&train);
    let ranges = network.calibrate((0..20).map(|i| train.image(i))).unwrap();
    let blob = AlignedBlob::new(&network.to_blob(Encoding::Int8(&ranges)).unwrap());

    // Five shots of the new class and five rehearsal images of old ones, interleaved,
    // from a data set the device sees only now.
    let pool = synthetic(100, 13);
    let shots: Vec<usize> = (0..pool.len())
        .filter(|&i| pool.labels[i] == NEW_CLASS)
        .take(5)
        .collect();
    let rehearsal: Vec<usize> = (0..pool.len())
        .filter(|&i| pool.labels[i] != NEW_CLASS)
        .step_by(7)
        .take(5)
        .collect();
    let learn: Vec<usize> = shots
        .iter()
        .zip(&rehearsal)
        .flat_map(|(&a, &b)| [a, b])
        .collect();
    // One data set holding both, so the image region can be built from indices.
    let mut data = test.clone();
    for &i in &learn {
        data.pixels.extend_from_slice(pool.image(i));
        data.labels.push(pool.labels[i]);
    }
    let learn_indices: Vec<usize> = (test.len()..data.len()).collect();
    let test_indices: Vec<usize> = (0..test.len()).collect();

    let board = Board::by_name("mps2-an386").unwrap();
    let device = qemu::Device::build(
        board,
        "finetune",
        blob.as_bytes(),
        qemu::DEFAULT_ARENA_BYTES,
        Duration::from_secs(600),
    )
    .expect("firmware builds");
    let dir = std::env::temp_dir().join(format!("tinyres-finetune-{}", std::process::id()));
    let (fresh, learned) = (dir.join("fresh"), dir.join("learned"));
    std::fs::create_dir_all(&fresh).unwrap();
    std::fs::create_dir_all(&learned).unwrap();

    let before = device.finetune(&data, &[], &test_indices, &fresh).unwrap();
    assert_eq!((before.restored, before.saved), (None, None));
    let after = device
        .finetune(&data, &learn_indices, &test_indices, &learned)
        .unwrap();
    assert_eq!(after.saved, Some((0, 1, 9)));
    let reboot = device
        .finetune(&data, &[], &test_indices, &learned)
        .unwrap();
    assert_eq!(
        reboot.restored,
        Some((0, 1)),
        "the second boot restores the learned head"
    );
    let classes =
        |b: &qemu::FinetuneBoot| b.predictions.iter().map(|p| p.class).collect::<Vec<_>>();
    assert_eq!(
        classes(&reboot),
        classes(&after),
        "and predicts as the first did after learning"
    );

    // The same application code on the host: same predictions, same flash bytes.
    let model = Model::parse(blob.as_bytes()).unwrap();
    let mut arena = vec![0u8; model.required_arena()];
    let net = Interpreter::new(model, &mut arena).unwrap();
    let flash = MemFlash::erased(qemu::FLASH_IMAGE_BYTES);
    let store = LayerStore::new(flash.clone(), 0, SLOT_BYTES).unwrap();
    let mut head = Head::EMPTY;
    let (mut app, _) = App::new(
        net,
        &mut head,
        store,
        Button::default(),
        Led::default(),
        Sgd::default(),
    )
    .unwrap();
    let class = app
        .finetune(learn_indices.len(), FINETUNE_EPOCHS, |k| {
            learn_indices
                .get(k)
                .map(|&i| (data.image(i), data.labels[i]))
        })
        .unwrap();
    assert_eq!(class, 9);
    app.save().unwrap();
    let host: Vec<usize> = test_indices
        .iter()
        .map(|&i| app.classify(data.image(i)).unwrap())
        .collect();
    assert_eq!(
        classes(&after),
        host,
        "device and host predictions after learning"
    );
    let device_flash = std::fs::read(learned.join(FLASH_IMAGE)).unwrap();
    assert!(
        device_flash == *flash.0.borrow(),
        "device and host flash images differ"
    );

    println!(
        "new class: {:.0} % -> {:.0} %; old classes: {:.1} % -> {:.1} % ({} test images, {} shots)",
        100.0 * accuracy(&data, &before.predictions, true),
        100.0 * accuracy(&data, &after.predictions, true),
        100.0 * accuracy(&data, &before.predictions, false),
        100.0 * accuracy(&data, &after.predictions, false),
        test.len(),
        shots.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
