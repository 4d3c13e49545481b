//! Fuzzes the ONNX import: tract's protobuf reader and graph analysis, then our
//! lowering (`tinyres_compile::import_onnx`), on arbitrary and mutated models. Every
//! input must give a model or an error, never a panic or an abort. Seeded with the
//! ONNX files of `tests/models/` (PyTorch and Keras exports, and refused graphs).
//!
//! tract checks much with assertions, and `import_onnx` turns a panic inside tract
//! into an error (`tract_step`); libFuzzer's panic hook aborts on every panic, caught
//! or not, so here it is kept for panics outside tract's code only: those are ours.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tinyres_compile::{import_onnx, PreprocessingFlags};
use tinyres_host_fuzz::{abort_on_panics_outside_tract, scratch_file};

fuzz_target!(
    init: {
        abort_on_panics_outside_tract();
    },
    |data: &[u8]| {
        let path = scratch_file("model.onnx", data);
        let _ = import_onnx(&path, &PreprocessingFlags::default());
    }
);
