//! Fuzzes the parser and, for every small blob it accepts, the plan and one
//! inference: `Interpreter::new`, `run` and the logits must return `Ok` or an `Err`,
//! never panic, and never touch memory outside the arena.
//!
//! Seeded with tiny valid models (8×8 inputs, `seeds/`), so that one input costs
//! microseconds; blobs whose arena or input is larger than a small model's are only
//! parsed (the `parse_blob` target covers that).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tinyres_core::{Interpreter, Model};
use tinyres_core_fuzz::aligned_blob_with_valid_crc;

/// The largest arena and input run: a few times the seeds'.
const MAX_ARENA: usize = 64 * 1024;
const MAX_PIXELS: usize = 16 * 16 * 4;

fuzz_target!(|data: &[u8]| {
    let words = aligned_blob_with_valid_crc(data);
    let Ok(model) = Model::parse(&bytemuck::cast_slice::<u128, u8>(&words)[..data.len()]) else {
        return;
    };
    let (h, w, c) = model.input_shape();
    let pixels = h.saturating_mul(w).saturating_mul(c);
    if model.required_arena() > MAX_ARENA || pixels > MAX_PIXELS {
        return;
    }
    let mut arena = vec![0u8; model.required_arena()];
    let Ok(mut interp) = Interpreter::new(model, &mut arena) else {
        return;
    };
    // Pixels that vary, so that every value path of the image quantization runs.
    let image: Vec<u8> = (0..pixels).map(|i| (i * 37) as u8).collect();
    let _ = interp.run(&image);
    let _ = interp.logits(&mut vec![0.0; model.num_classes()]);
});
