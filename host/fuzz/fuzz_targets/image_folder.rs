//! Fuzzes the image-folder reader's decoding (`tinyres_data::decode_image`, what
//! `Dataset::load_folder` does with each file's bytes): PNG or JPEG as the first byte
//! chooses, the rest is the file. Any bytes give an RGB image or an error, never a panic
//! or an abort. In memory: the file system would cost more than the decoder.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&format, file)) = data.split_first() else {
        return;
    };
    let name = match format % 2 {
        0 => "image.png",
        _ => "image.jpg",
    };
    if let Ok(image) = tinyres_data::decode_image(Path::new(name), file) {
        let (w, h) = (image.width() as usize, image.height() as usize);
        assert_eq!(image.as_raw().len(), w * h * 3);
    }
});
