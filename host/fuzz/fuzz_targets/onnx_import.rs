//! Fuzzes the ONNX import: tract's protobuf reader and graph analysis, then our
//! lowering (`tinyres_compile::import_onnx`), on arbitrary and mutated models. Every
//! input must give a model or an error, never a panic or an abort. Seeded with the
//! ONNX files of `tests/models/` (PyTorch and Keras exports, and refused graphs).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tinyres_compile::{import_onnx, PreprocessingFlags};
use tinyres_host_fuzz::scratch_file;

fuzz_target!(|data: &[u8]| {
    let path = scratch_file("model.onnx", data);
    let _ = import_onnx(&path, &PreprocessingFlags::default());
});
