//! Fuzzes the image-folder reader (`Dataset::load_folder`) on one image file: PNG or
//! JPEG as the first byte chooses, the rest is the file. Any bytes give a data set of
//! one image or an error, never a panic or an abort.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tinyres_data::{Dataset, Split};
use tinyres_host_fuzz::scratch_dir;

fuzz_target!(|data: &[u8]| {
    let Some((&format, file)) = data.split_first() else {
        return;
    };
    let class = scratch_dir().join("folder/test/only");
    std::fs::create_dir_all(&class).expect("the temporary directory is writable");
    let (write, other) = match format % 2 {
        0 => ("image.png", "image.jpg"),
        _ => ("image.jpg", "image.png"),
    };
    let _ = std::fs::remove_file(class.join(other));
    std::fs::write(class.join(write), file).expect("the temporary directory is writable");
    if let Ok(set) = Dataset::load_folder(&scratch_dir().join("folder"), Split::Test) {
        assert_eq!(set.len(), 1);
        assert_eq!(set.pixels.len(), set.height * set.width * 3);
    }
});
