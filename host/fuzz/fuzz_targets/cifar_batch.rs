//! Fuzzes the CIFAR-10 batch reader (`Dataset::cifar_from_file_bytes`, what
//! `Dataset::load_cifar` does with each file's bytes), plain and gzipped: the first byte
//! chooses, the rest is the file (compressed first for `.bin.gz`, so that the reader's
//! records are reached, and also taken as is, for a corrupt stream). In memory: the
//! file system would cost more than the reader.
#![no_main]

use std::io::Write;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tinyres_data::Dataset;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, file)) = data.split_first() else {
        return;
    };
    let read = match mode % 3 {
        0 => Dataset::cifar_from_file_bytes(Path::new("batch.bin"), file),
        1 => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(file).expect("writing to memory");
            let gz = gz.finish().expect("writing to memory");
            Dataset::cifar_from_file_bytes(Path::new("batch.bin.gz"), &gz)
        }
        _ => Dataset::cifar_from_file_bytes(Path::new("raw.bin.gz"), file),
    };
    if let Ok(set) = read {
        assert_eq!(set.pixels.len(), set.len() * 32 * 32 * 3);
    }
});
