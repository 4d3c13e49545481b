//! Fuzzes the CIFAR-10 batch reader (`Dataset::load_cifar`), plain and gzipped: the
//! first byte chooses, the rest is the file (compressed first for `.bin.gz`, so that
//! the reader's records are reached, and also taken as is, for a corrupt stream).
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use tinyres_data::{Dataset, Split};
use tinyres_host_fuzz::scratch_file;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, file)) = data.split_first() else {
        return;
    };
    let path = match mode % 3 {
        0 => scratch_file("batch.bin", file),
        1 => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(file).expect("writing to memory");
            scratch_file("batch.bin.gz", &gz.finish().expect("writing to memory"))
        }
        _ => scratch_file("raw.bin.gz", file),
    };
    if let Ok(set) = Dataset::load_cifar(&path, Split::Test) {
        assert_eq!(set.pixels.len(), set.len() * 32 * 32 * 3);
    }
});
