//! Fuzzes the blob parser alone: `Model::parse` validates the header, the tensor and
//! layer tables, the memory plan (replaying every streamed group's schedule) and the
//! weights against their folded biases, and must return `Ok` or an `Err`, never panic.
//!
//! The CRC is recomputed first: otherwise nearly every input stops at the checksum.
//! Fast (no inference): this is the target that must run thousands of inputs a second.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tinyres_core::Model;
use tinyres_core_fuzz::aligned_blob_with_valid_crc;

fuzz_target!(|data: &[u8]| {
    let words = aligned_blob_with_valid_crc(data);
    let _ = Model::parse(&bytemuck::cast_slice::<u128, u8>(&words)[..data.len()]);
});
