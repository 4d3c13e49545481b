//! Fuzzes the TensorFlow Lite import: the checked flatbuffer reader, the lowering
//! (`tinyres_compile::tflite::lower_tflite`) and, for what lowers, the blob writer
//! with the file's own quantization and the engine's parser on the result. Every
//! input must give a blob or an error, never a panic. Seeded with
//! `host/fuzz/seeds/tflite/` (see its README).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tinyres_compile::tflite::lower_tflite;
use tinyres_compile::writer::{AlignedBlob, Encoding, Memory};
use tinyres_compile::PreprocessingFlags;

fuzz_target!(|data: &[u8]| {
    let flags = PreprocessingFlags {
        range: Some(tinyres_compile::onnx::parse_range("0..255").unwrap()),
        ..Default::default()
    };
    let Ok(imported) = lower_tflite(data, &flags) else {
        return;
    };
    // Writing searches the memory plan with the parser: bound the work per input.
    if imported.network.layers.len() > 64 {
        return;
    }
    let written = match &imported.quantization {
        Some(given) => imported
            .network
            .to_blob_with(Encoding::Quantized(given), Memory::Min),
        None => imported.network.to_blob_with(Encoding::F32, Memory::Min),
    };
    if let Ok(blob) = written {
        tinyres_core::Model::parse(AlignedBlob::new(&blob).as_bytes())
            .expect("a written blob parses");
    }
});
