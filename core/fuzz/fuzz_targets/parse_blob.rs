//! Fuzzes the blob parser and, for every blob it accepts, one inference.
//!
//! The input is taken as a blob whose CRC is recomputed first (otherwise nearly every
//! input stops at the checksum). Run from `core/`: `cargo +nightly fuzz run parse_blob`
//! (see core/README.md).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tinyres_core::{crc32, Interpreter, Model};

fuzz_target!(|data: &[u8]| {
    // The engine reads blobs from 16-byte aligned memory.
    let mut words = vec![0u128; data.len().div_ceil(16)];
    let bytes = &mut bytemuck::cast_slice_mut::<u128, u8>(&mut words)[..data.len()];
    bytes.copy_from_slice(data);
    if bytes.len() >= 16 {
        let crc = crc32(&bytes[16..]);
        bytes[12..16].copy_from_slice(&crc.to_le_bytes());
    }
    let Ok(model) = Model::parse(bytes) else {
        return;
    };
    let (h, w, c) = model.input_shape();
    if model.required_arena() > 1 << 22 || h * w * c > 1 << 20 {
        return;
    }
    let mut arena = vec![0u8; model.required_arena()];
    if let Ok(mut interp) = Interpreter::new(model, &mut arena) {
        let _ = interp.run(&vec![128u8; h * w * c]);
        let _ = interp.logits(&mut vec![0.0; model.num_classes()]);
    }
});
