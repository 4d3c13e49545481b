//! Fuzzes the image-folder reader's decoding (`tinyres_data::decode_image`, what
//! `Dataset::load_folder` does with each file's bytes): PNG or JPEG as the first byte
//! chooses, the rest is the file. Any bytes give an RGB image or an error, never a panic
//! or an abort. In memory: the file system would cost more than the decoder.
//!
//! Images are bounded at [`MAX_SIDE`] pixels a side instead of the readers' 16,384: the
//! decoders run the same code whatever the size, and the time should go to code, not to
//! filling pixels (bounded only by the readers' limit, inputs of a few hundred bytes that
//! declare tens of thousands of columns took up to 41 s each here).
//!
//! `decode_image` turns a panic inside a decoder into an error (zune-jpeg can panic on a
//! corrupt file); libFuzzer's panic hook aborts on every panic, caught or not, so here it
//! is kept for panics outside the decoder crates only. A panic that is not caught still
//! aborts, when it reaches libfuzzer-sys.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

/// The largest width or height decoded.
const MAX_SIDE: u32 = 256;

fuzz_target!(
    init: {
        let abort = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_a_decoder = info.location().is_some_and(|l| {
                ["/zune-", "/png-", "/image-", "/fdeflate-", "/miniz_oxide-"]
                    .iter()
                    .any(|krate| l.file().contains(krate))
            });
            if !in_a_decoder {
                abort(info);
            }
        }));
    },
    |data: &[u8]| {
        let Some((&format, file)) = data.split_first() else {
            return;
        };
        let name = match format % 2 {
            0 => "image.png",
            _ => "image.jpg",
        };
        if let Ok(image) = tinyres_data::decode_image_at_most(Path::new(name), file, MAX_SIDE) {
            let (w, h) = (image.width() as usize, image.height() as usize);
            assert_eq!(image.as_raw().len(), w * h * 3);
        }
    }
);
