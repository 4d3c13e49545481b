//! Fuzzes the flash store of the learned head (`persist::LayerStore`), as a device
//! meets it at boot. The first byte chooses what the rest is:
//!
//! - 0: the whole flash region (two 256-byte slots), arbitrary: `load` must return
//!   `Ok` or an `Err` and never panic; a head it restores fits the layer's capacity.
//! - 1: bit flips (two bytes each: position and bit) on a region that holds an older
//!   and a newer head: the boot finds the older, the newer or none, never a mixture.
//! - 2: a power budget (two bytes) for saving the newer head over a region holding the
//!   older, then bit flips: the boot finds the older, the newer or none.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tinyres_core::learn::{LastLayer, Sgd};
use tinyres_core::persist::LayerStore;
use tinyres_core_fuzz::MemFlash;

const SLOT: u32 = 256;
type Head = LastLayer<8, 4>;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let mut memory = vec![0xFF; 2 * SLOT as usize];
            let n = rest.len().min(memory.len());
            memory[..n].copy_from_slice(&rest[..n]);
            let mut head = head_with(0.0);
            if let Ok(Some(_)) = boot(memory, &mut head) {
                assert!(head.num_classes() <= 4 && head.num_features() == 8);
            }
        }
        1 => {
            let memory = saved_twice(None);
            check_old_new_or_none(flipped(memory, rest));
        }
        _ => {
            let Some((budget, flips)) = rest.split_first_chunk::<2>() else {
                return;
            };
            let memory = saved_twice(Some(usize::from(u16::from_le_bytes(*budget))));
            check_old_new_or_none(flipped(memory, flips));
        }
    }
});

/// A head with three classes whose weights depend on `seed`.
fn head_with(seed: f32) -> Head {
    let mut head = Head::new(8, Sgd::default()).unwrap();
    for c in 0..3 {
        let row: Vec<f32> = (0..8).map(|f| seed + (c * 8 + f) as f32 * 0.25).collect();
        head.add_class(&row).unwrap();
    }
    head
}

fn saved(head: &Head) -> Vec<u8> {
    let mut bytes = Vec::new();
    head.save(|b| {
        bytes.extend_from_slice(b);
        Ok(())
    })
    .unwrap();
    bytes
}

/// The region after saving the older head, then the newer one (with the power lost
/// after `budget` bytes of that second save, if given).
fn saved_twice(budget: Option<usize>) -> Vec<u8> {
    let mut store = LayerStore::new(
        MemFlash {
            memory: vec![0xFF; 2 * SLOT as usize],
            budget: None,
        },
        0,
        SLOT,
    )
    .unwrap();
    store.save(&head_with(1.0)).unwrap();
    let mut flash = store.release();
    flash.budget = budget;
    let mut store = LayerStore::new(flash, 0, SLOT).unwrap();
    let _ = store.save(&head_with(-7.5));
    store.release().memory
}

/// Each two bytes flip one bit of the 512-byte region: byte `2·b0 + (b1 >> 7)`, bit
/// `b1 & 7`.
fn flipped(mut memory: Vec<u8>, flips: &[u8]) -> Vec<u8> {
    let len = memory.len();
    for flip in flips.chunks_exact(2) {
        let at = usize::from(flip[0]) * 2 + usize::from(flip[1] >> 7);
        memory[at % len] ^= 1 << (flip[1] & 7);
    }
    memory
}

fn boot(
    memory: Vec<u8>,
    head: &mut Head,
) -> Result<Option<tinyres_core::persist::SlotState>, tinyres_core::Error> {
    let mut store = LayerStore::new(
        MemFlash {
            memory,
            budget: None,
        },
        0,
        SLOT,
    )?;
    store.load(head)
}

fn check_old_new_or_none(memory: Vec<u8>) {
    let mut head = head_with(0.0);
    let untouched = saved(&head);
    let found = match boot(memory, &mut head) {
        Ok(Some(_)) => saved(&head),
        // No head, or a read error: the head is left as it was (the model's own).
        _ => {
            assert_eq!(saved(&head), untouched, "a failed load left a changed head");
            return;
        }
    };
    assert!(
        found == saved(&head_with(1.0)) || found == saved(&head_with(-7.5)),
        "a mixture of heads was restored"
    );
}
