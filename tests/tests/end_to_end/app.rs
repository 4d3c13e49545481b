//! The firmware's application logic on the host, with mock pins and flash: the button
//! labels frames, the new class is imprinted and trained, the LED follows it, and the
//! learned head survives a "reboot" through the flash store.

use super::common::{Button, Led, MemFlash};
use tinyres_compile::arch::Architecture;
use tinyres_compile::writer::{AlignedBlob, Encoding};
use tinyres_core::learn::Sgd;
use tinyres_core::persist::LayerStore;
use tinyres_core::{Interpreter, Model};
use tinyres_data::synthetic;
use tinyres_firmware::app::{App, Head, Labeled, SLOT_BYTES};

fn small_blob() -> AlignedBlob {
    let arch = Architecture {
        input: (8, 8, 3),
        classes: 4,
        ..Architecture::by_name("resnet8").unwrap()
    };
    AlignedBlob::new(&arch.network(5).unwrap().to_blob(Encoding::F32).unwrap())
}

/// 8×8 crops of the synthetic set: frames of a few patterns.
fn frame(i: usize) -> Vec<u8> {
    let data = synthetic(20, 3);
    let image = data.image(i % 20);
    (0..8)
        .flat_map(|y| image[y * 96..y * 96 + 24].to_vec())
        .collect()
}

/// The head's parameters as the flash store saves them.
fn saved_bytes(head: &Head) -> Vec<u8> {
    let mut bytes = Vec::new();
    head.save(|b| {
        bytes.extend_from_slice(b);
        Ok(())
    })
    .unwrap();
    bytes
}

#[test]
fn button_labels_frames_and_the_led_follows_the_new_class() {
    let blob = small_blob();
    let model = Model::parse(blob.as_bytes()).unwrap();
    let mut arena = vec![0u8; model.required_arena()];
    let net = Interpreter::new(model, &mut arena).unwrap();
    let flash = MemFlash::erased(2 * SLOT_BYTES as usize);
    let store = LayerStore::new(flash.clone(), 0, SLOT_BYTES).unwrap();
    let (button, led) = (Button::default(), Led::default());
    let mut head = Head::EMPTY;
    let (mut app, restored) = App::new(
        net,
        &mut head,
        store,
        button.clone(),
        led.clone(),
        Sgd::default(),
    )
    .unwrap();
    assert_eq!(restored, None);
    app.set_imprint_shots(3);
    assert_eq!(app.head().num_classes(), 4);

    // Unlabeled frames: classified with the model's own four classes, LED off.
    let step = app.step(&frame(0)).unwrap();
    assert!(step.class < 4 && step.labeled.is_none() && !led.0.get());

    // Labeled frames of one pattern (class 6 of the synthetic set: frames 6 and 16).
    button.0.set(true);
    let outcomes: Vec<Labeled> = [6, 16, 6, 16, 6]
        .iter()
        .map(|&i| app.step(&frame(i)).unwrap().labeled.unwrap())
        .collect();
    assert_eq!(outcomes[0], Labeled::Collected { count: 1 });
    assert_eq!(outcomes[1], Labeled::Collected { count: 2 });
    assert_eq!(outcomes[2], Labeled::Added { class: 4 });
    assert_eq!(outcomes[3], Labeled::Refined { count: 4 });
    assert_eq!(outcomes[4], Labeled::Refined { count: 5 });
    assert_eq!(app.new_class(), Some(4));
    button.0.set(false);
    let step = app.step(&frame(16)).unwrap();
    assert_eq!(step.class, 4, "the taught pattern is recognised");
    assert!(led.0.get(), "the LED shows the new class");

    let saved = app.save().unwrap();
    assert_eq!((saved.slot, saved.sequence), (0, 1));
    let head_before_reboot = saved_bytes(app.head());
    drop(app);

    // Reboot: same model, same flash.
    let model = Model::parse(blob.as_bytes()).unwrap();
    let mut arena = vec![0u8; model.required_arena()];
    let net = Interpreter::new(model, &mut arena).unwrap();
    let store = LayerStore::new(flash, 0, SLOT_BYTES).unwrap();
    let mut head = Head::EMPTY;
    let (mut app, restored) = App::new(
        net,
        &mut head,
        store,
        Button::default(),
        Led::default(),
        Sgd::default(),
    )
    .unwrap();
    assert_eq!(restored.map(|s| s.sequence), Some(1));
    assert_eq!(app.head().num_classes(), 5);
    assert!(
        saved_bytes(app.head()) == head_before_reboot,
        "the restored head differs"
    );
    assert_eq!(app.classify(&frame(16)).unwrap(), 4);
}
