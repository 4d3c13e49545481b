//! Image data sets: CIFAR-10 binary batches (plain or gzip-compressed), image folders
//! (`DIR/{train,test}/<class>/*.png|jpg`) and the built-in synthetic set; and the
//! atomic file writes every tinyres output goes through.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use flate2::read::GzDecoder;

/// Bytes of one CIFAR-10 record: a label, then 1024 R, 1024 G and 1024 B values.
pub const CIFAR_RECORD: usize = 1 + 3 * 32 * 32;

/// CIFAR-10's classes, label order.
pub const CIFAR_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Labeled images, HWC `u8`, all of one shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dataset {
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// Channels.
    pub channels: usize,
    /// Images back to back, HWC each.
    pub pixels: Vec<u8>,
    /// One label per image.
    pub labels: Vec<u8>,
    /// Class names, label order.
    pub class_names: Vec<String>,
}

/// Which part of a data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// `data_batch_*`.
    Train,
    /// `test_batch`.
    Test,
}

impl Dataset {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes of one image.
    pub fn image_len(&self) -> usize {
        self.height * self.width * self.channels
    }

    /// Image `i`, HWC.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.pixels[i * n..(i + 1) * n]
    }

    /// The first `n` images (all if fewer).
    pub fn truncate(&mut self, n: usize) {
        let n = n.min(self.len());
        self.labels.truncate(n);
        self.pixels.truncate(n * self.image_len());
    }

    /// Keeps the images of the first `classes` classes only (and their names).
    pub fn keep_classes_below(&mut self, classes: usize) {
        let n = self.image_len();
        let mut pixels = Vec::with_capacity(self.pixels.len());
        let mut labels = Vec::with_capacity(self.labels.len());
        for (i, &label) in self.labels.iter().enumerate() {
            if usize::from(label) < classes {
                pixels.extend_from_slice(&self.pixels[i * n..(i + 1) * n]);
                labels.push(label);
            }
        }
        (self.pixels, self.labels) = (pixels, labels);
        self.class_names.truncate(classes);
    }

    /// The data named on the command line: `synthetic`, an image folder (a directory
    /// with `train/` and `test/` of class subdirectories), or a CIFAR-10 batch file or
    /// directory.
    pub fn load(spec: &Path, split: Split) -> Result<Self> {
        if spec == Path::new("synthetic") {
            let (count, seed) = match split {
                Split::Train => (SYNTHETIC_TRAIN, 1),
                Split::Test => (SYNTHETIC_TEST, 2),
            };
            return Ok(synthetic(count, seed));
        }
        if Self::is_image_folder(spec) {
            return Self::load_folder(spec, split);
        }
        Self::load_cifar(spec, split)
    }

    /// Whether `spec` names an image folder (a directory with `train/` or `test/`).
    pub fn is_image_folder(spec: &Path) -> bool {
        spec.join("train").is_dir() || spec.join("test").is_dir()
    }

    /// As [`Dataset::load`], with every image at `height × width`: an image folder's
    /// images, of any sizes, are fitted as they are read ([`fit_image`]: torchvision's
    /// resize and centre crop), and other sources' images fitted the same way where
    /// they are of another size.
    pub fn load_fitted(spec: &Path, split: Split, (height, width): (usize, usize)) -> Result<Self> {
        if Self::is_image_folder(spec) {
            return Self::read_folder(spec, split, Some((height, width)));
        }
        let mut data = Self::load(spec, split)?;
        data.fit_to(height, width);
        Ok(data)
    }

    /// Every image fitted to `height × width` ([`fit_image`]); nothing changes where
    /// they are of that size already.
    pub fn fit_to(&mut self, height: usize, width: usize) {
        if (self.height, self.width) == (height, width) || self.channels != 3 {
            return;
        }
        let mut pixels = Vec::with_capacity(self.len() * height * width * 3);
        for i in 0..self.len() {
            let image = image::RgbImage::from_raw(
                self.width as u32,
                self.height as u32,
                self.image(i).to_vec(),
            )
            .expect("an image holds height × width × 3 bytes");
            pixels.extend_from_slice(fit_image(image, height, width).as_raw());
        }
        (self.pixels, self.height, self.width) = (pixels, height, width);
    }

    /// Reads `dir/train` or `dir/test`: one subdirectory per class (sorted by name:
    /// label 0 is the first), PNG or JPEG images in each, all of one size, as RGB.
    pub fn load_folder(dir: &Path, split: Split) -> Result<Self> {
        Self::read_folder(dir, split, None)
    }

    /// [`Dataset::load_folder`], with each image fitted to `fit` ([`fit_image`]) where
    /// given, so that images of any sizes can be read.
    fn read_folder(dir: &Path, split: Split, fit: Option<(usize, usize)>) -> Result<Self> {
        Self::read_images(folder_images(dir, split)?, fit)
    }

    /// Images to calibrate on (their labels are not used), each fitted to `height ×
    /// width`: `synthetic` or CIFAR-10 (the training batches), or any folder of PNG
    /// or JPEG images: a data set folder (its `train/`, else its `test/`), a folder of
    /// class subdirectories, or a folder of loose images.
    pub fn load_unlabeled(spec: &Path, (height, width): (usize, usize)) -> Result<Self> {
        if spec.join("test").is_dir() && !spec.join("train").is_dir() {
            return Self::load_fitted(spec, Split::Test, (height, width));
        }
        if spec.is_dir() && !Self::is_image_folder(spec) && holds_images(spec) {
            return Self::read_images(list_images(spec, true)?, Some((height, width)));
        }
        Self::load_fitted(spec, Split::Train, (height, width))
    }

    /// Reads a folder's images as RGB, fitted to `fit` where given.
    fn read_images(images: FolderImages, fit: Option<(usize, usize)>) -> Result<Self> {
        let FolderImages { class_names, files } = images;
        let mut data = Dataset {
            height: 0,
            width: 0,
            channels: 3,
            pixels: Vec::new(),
            labels: Vec::new(),
            class_names,
        };
        for (label, file) in files {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let mut image = decode_image(&file, &bytes)?;
            if let Some((height, width)) = fit {
                image = fit_image(image, height, width);
            }
            let (w, h) = (image.width() as usize, image.height() as usize);
            if data.labels.is_empty() {
                (data.height, data.width) = (h, w);
            } else if (h, w) != (data.height, data.width) {
                bail!(
                    "{}: {w}x{h} pixels, but the data set's images are {}x{} (all must be one size)",
                    file.display(),
                    data.width,
                    data.height
                );
            }
            data.pixels.extend_from_slice(image.as_raw());
            data.labels.push(label);
        }
        Ok(data)
    }

    /// The CIFAR-10 records of one batch file's bytes, gunzipped first where `name` ends in
    /// `.gz`; `name` is only read for that and for the errors.
    pub fn cifar_from_file_bytes(name: &Path, bytes: &[u8]) -> Result<Self> {
        let bytes = if name.extension().is_some_and(|e| e == "gz") {
            let mut plain = Vec::new();
            GzDecoder::new(bytes)
                .read_to_end(&mut plain)
                .with_context(|| format!("{}: not a valid gzip file", name.display()))?;
            std::borrow::Cow::Owned(plain)
        } else {
            std::borrow::Cow::Borrowed(bytes)
        };
        if bytes.is_empty() || bytes.len() % CIFAR_RECORD != 0 {
            bail!(
                "{}: {} bytes is not a whole number of {CIFAR_RECORD}-byte CIFAR-10 records",
                name.display(),
                bytes.len()
            );
        }
        let mut data = Dataset {
            height: 32,
            width: 32,
            channels: 3,
            pixels: Vec::with_capacity(bytes.len() / CIFAR_RECORD * 3 * 32 * 32),
            labels: Vec::with_capacity(bytes.len() / CIFAR_RECORD),
            class_names: CIFAR_CLASSES.iter().map(|s| s.to_string()).collect(),
        };
        for (r, record) in bytes.chunks_exact(CIFAR_RECORD).enumerate() {
            if record[0] > 9 {
                bail!(
                    "{}: record {r} has label {}, expected 0..=9",
                    name.display(),
                    record[0]
                );
            }
            data.labels.push(record[0]);
            let planes = &record[1..];
            for p in 0..32 * 32 {
                data.pixels
                    .extend([planes[p], planes[1024 + p], planes[2048 + p]]);
            }
        }
        Ok(data)
    }

    /// Reads a CIFAR-10 binary batch file (`.bin` or `.bin.gz`), or from a directory
    /// the batches of `split` (`data_batch_*.bin[.gz]` or `test_batch.bin[.gz]`).
    pub fn load_cifar(path: &Path, split: Split) -> Result<Self> {
        let files = if path.is_dir() {
            cifar_files(path, split)?
        } else if path.exists() {
            vec![path.to_path_buf()]
        } else {
            bail!("{}: no such file or directory", path.display());
        };
        let mut data = Dataset {
            height: 32,
            width: 32,
            channels: 3,
            pixels: Vec::new(),
            labels: Vec::new(),
            class_names: CIFAR_CLASSES.iter().map(|s| s.to_string()).collect(),
        };
        for file in files {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot open {}", file.display()))?;
            let batch = Self::cifar_from_file_bytes(&file, &bytes)?;
            data.pixels.extend(batch.pixels);
            data.labels.extend(batch.labels);
        }
        Ok(data)
    }
}

/// The image files of a folder, in the order [`Dataset::load`] reads them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FolderImages {
    /// The class subdirectories' names, sorted (label 0 is the first).
    pub class_names: Vec<String>,
    /// `(label, file)` of every image: by class, then by file name.
    pub files: Vec<(u8, PathBuf)>,
}

/// The images of an image folder's split: class subdirectories sorted by name, files
/// sorted by name within each.
pub fn folder_images(dir: &Path, split: Split) -> Result<FolderImages> {
    let root = dir.join(match split {
        Split::Train => "train",
        Split::Test => "test",
    });
    list_images(&root, false)
}

/// The class subdirectories of `root` and their images; with `loose`, images directly
/// in `root` too, as one more class named after `root`.
fn list_images(root: &Path, loose: bool) -> Result<FolderImages> {
    let mut classes: Vec<PathBuf> = std::fs::read_dir(root)
        .with_context(|| format!("cannot read {}", root.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    classes.sort();
    if loose && !image_files(root)?.is_empty() {
        classes.push(root.to_path_buf());
    }
    if classes.is_empty() || classes.len() > 256 {
        bail!(
            "{}: expected 1 to 256 class subdirectories, found {}",
            root.display(),
            classes.len()
        );
    }
    let mut names = Vec::with_capacity(classes.len());
    let mut files = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        names.push(
            class
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        );
        files.extend(image_files(class)?.into_iter().map(|f| (label as u8, f)));
    }
    if files.is_empty() {
        bail!(
            "{}: no .png or .jpg images in the class subdirectories",
            root.display()
        );
    }
    Ok(FolderImages {
        class_names: names,
        files,
    })
}

/// The PNG and JPEG files directly in `dir`, sorted by name.
fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_image_name(p))
        .collect();
    files.sort();
    Ok(files)
}

fn is_image_name(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
}

/// Whether `dir` holds PNG or JPEG images, directly or in a subdirectory.
fn holds_images(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.filter_map(|e| e.ok().map(|e| e.path())).any(|p| {
        if p.is_dir() {
            image_files(&p).is_ok_and(|f| !f.is_empty())
        } else {
            is_image_name(&p)
        }
    })
}

/// Images in the synthetic training split.
pub const SYNTHETIC_TRAIN: usize = 5000;
/// Images in the synthetic test split.
pub const SYNTHETIC_TEST: usize = 1000;

/// Names of the synthetic classes: one pattern each.
pub const SYNTHETIC_CLASSES: [&str; 10] = [
    "hstripes",
    "vstripes",
    "diagonal",
    "checker",
    "disc",
    "square",
    "cross",
    "ring",
    "hgradient",
    "vgradient",
];

/// A deterministic 10-class set of 32×32 RGB images: each class is a pattern (stripes,
/// checkerboard, disc, ring, gradients, ...) drawn with random phase, size, position
/// and colours plus pixel noise, so a small ResNet learns it to high accuracy in
/// minutes. Labels cycle 0..9; the same `(count, seed)` always gives the same images.
pub fn synthetic(count: usize, seed: u64) -> Dataset {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move |n: u32| -> u32 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 32) as u32) % n
    };
    let mut pixels = Vec::with_capacity(count * 32 * 32 * 3);
    let mut labels = Vec::with_capacity(count);
    for i in 0..count {
        let class = (i % 10) as u8;
        let half_period = 2 + next(3) as i32; // stripes 4..8 pixels wide
        let (dx, dy) = (next(8) as i32, next(8) as i32);
        let (cx, cy) = (10 + next(12) as i32, 10 + next(12) as i32);
        let r = 5 + next(5) as i32;
        let bg: [i32; 3] = [next(100) as i32, next(100) as i32, next(100) as i32];
        let fg: [i32; 3] = [
            155 + next(100) as i32,
            155 + next(100) as i32,
            155 + next(100) as i32,
        ];
        for y in 0..32i32 {
            for x in 0..32i32 {
                let d2 = (x - cx) * (x - cx) + (y - cy) * (y - cy);
                // How much foreground, in 0..=256.
                let t = match class {
                    0 => ((y + dy) / half_period % 2) * 256,
                    1 => ((x + dx) / half_period % 2) * 256,
                    2 => ((x + y + dx) / half_period % 2) * 256,
                    3 => (((x + dx) / half_period + (y + dy) / half_period) % 2) * 256,
                    4 => i32::from(d2 < r * r) * 256,
                    5 => i32::from((x - cx).abs() < r && (y - cy).abs() < r) * 256,
                    6 => i32::from((x - cx).abs() < 2 || (y - cy).abs() < 2) * 256,
                    7 => i32::from(d2 < (r + 1) * (r + 1) && d2 >= (r - 2) * (r - 2)) * 256,
                    8 => x * 256 / 31,
                    _ => y * 256 / 31,
                };
                for c in 0..3 {
                    let noise = next(33) as i32 - 16;
                    let v = bg[c] + (fg[c] - bg[c]) * t / 256 + noise;
                    pixels.push(v.clamp(0, 255) as u8);
                }
            }
        }
        labels.push(class);
    }
    Dataset {
        height: 32,
        width: 32,
        channels: 3,
        pixels,
        labels,
        class_names: SYNTHETIC_CLASSES.iter().map(|s| s.to_string()).collect(),
    }
}

fn cifar_files(dir: &Path, split: Split) -> Result<Vec<PathBuf>> {
    let stems: Vec<String> = match split {
        Split::Train => (1..=5).map(|i| format!("data_batch_{i}")).collect(),
        Split::Test => vec!["test_batch".to_string()],
    };
    let mut files = Vec::new();
    for stem in stems {
        let plain = dir.join(format!("{stem}.bin"));
        let gz = dir.join(format!("{stem}.bin.gz"));
        if plain.exists() {
            files.push(plain);
        } else if gz.exists() {
            files.push(gz);
        }
    }
    if files.is_empty() {
        bail!(
            "{}: no CIFAR-10 {} batches ({}.bin or .bin.gz)",
            dir.display(),
            if split == Split::Train {
                "training"
            } else {
                "test"
            },
            if split == Split::Train {
                "data_batch_N"
            } else {
                "test_batch"
            }
        );
    }
    Ok(files)
}

/// The largest width or height, in pixels, that [`decode_image`] decodes. Photos are a
/// few thousand pixels a side; a JPEG or PNG header of a few hundred bytes can declare
/// 65,535, which would cost seconds and gigabytes to decode before being shrunk to the
/// model's input. Such a file is refused from its header, before its pixels are
/// allocated.
pub const MAX_IMAGE_SIDE: u32 = 16_384;

/// One image file's bytes decoded as RGB, PNG or JPEG as `name`'s extension says; `name`
/// is only read for that and for the error. Images wider or taller than
/// [`MAX_IMAGE_SIDE`] are refused.
pub fn decode_image(name: &Path, bytes: &[u8]) -> Result<image::RgbImage> {
    decode_image_at_most(name, bytes, MAX_IMAGE_SIDE)
}

/// [`decode_image`] with its own bound on the width and height (the fuzzer's is smaller,
/// so that every input decodes in microseconds; the decoding is the same).
pub fn decode_image_at_most(name: &Path, bytes: &[u8], max_side: u32) -> Result<image::RgbImage> {
    let unreadable = || format!("{}: not a readable PNG or JPEG image", name.display());
    let format = image::ImageFormat::from_path(name).with_context(unreadable)?;
    let reader = || image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let (width, height) = reader().into_dimensions().with_context(unreadable)?;
    ensure!(
        width <= max_side && height <= max_side,
        "{}: {width}x{height} pixels; images of at most {max_side}x{max_side} are read",
        name.display()
    );
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(max_side);
    limits.max_image_height = Some(max_side);
    let mut reader = reader();
    reader.limits(limits);
    // The decoders are safe Rust, but a corrupt file can still make one panic (zune-jpeg
    // 0.5.15's AVX2 inverse DCT unwraps the missing slice when a block row falls past
    // the end of its output: regression test
    // `a_jpeg_that_panics_the_decoder_is_an_error`); what they leave behind is dropped.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reader.decode())) {
        Ok(decoded) => decoded
            .map(|image| image.to_rgb8())
            .with_context(unreadable),
        Err(panic) => bail!(
            "{}: not a readable {format:?} image (its decoder failed on it: {})",
            name.display(),
            panic_message(panic.as_ref())
        ),
    }
}

/// The message a caught panic carries (`panic!` with a literal or with a formatted
/// string), or nothing: for errors made of the panics of the libraries that read files.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// The centre crop's share of the resized image in torchvision's evaluation transform:
/// `Resize(256)` then `CenterCrop(224)`.
pub const CENTER_CROP_FRACTION: f64 = 224.0 / 256.0;

/// `image` at `height × width`, as torchvision evaluates ImageNet models: scaled (the
/// triangle filter, which averages over the source pixels when shrinking, as PIL's
/// antialiased bilinear does) so that a `height × width` window covers
/// [`CENTER_CROP_FRACTION`] of it along its tighter axis, then that window cut from
/// the centre. An image already of that size is returned as it is (not copied).
pub fn fit_image(image: image::RgbImage, height: usize, width: usize) -> image::RgbImage {
    let (in_w, in_h) = (f64::from(image.width()), f64::from(image.height()));
    let (out_w, out_h) = (width as u32, height as u32);
    if (image.width(), image.height()) == (out_w, out_h) {
        return image;
    }
    let scale = (f64::from(out_w) / CENTER_CROP_FRACTION / in_w)
        .max(f64::from(out_h) / CENTER_CROP_FRACTION / in_h);
    let scaled_w = ((in_w * scale).round() as u32).max(out_w);
    let scaled_h = ((in_h * scale).round() as u32).max(out_h);
    let scaled = image::imageops::resize(
        &image,
        scaled_w,
        scaled_h,
        image::imageops::FilterType::Triangle,
    );
    image::imageops::crop_imm(
        &scaled,
        (scaled_w - out_w) / 2,
        (scaled_h - out_h) / 2,
        out_w,
        out_h,
    )
    .to_image()
}

/// Writes `bytes` to a temporary file beside `path`, then renames it over `path`, so
/// an interrupted write never leaves a truncated file under the final name.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    let written = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.with_context(|| format!("cannot write {}", path.display()))
}

/// `.NAME.tmp` beside `path`: where a file is staged before it replaces `path`.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.tmp"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_image_folders_with_sorted_class_names() {
        let dir = std::env::temp_dir().join(format!("tinyres-folder-{}", std::process::id()));
        for (class, value) in [("cat", 10u8), ("ant", 200u8)] {
            let class_dir = dir.join("test").join(class);
            std::fs::create_dir_all(&class_dir).unwrap();
            for i in 0..2u8 {
                let img =
                    image::RgbImage::from_fn(4, 3, |x, _| image::Rgb([value, value + i, x as u8]));
                img.save(class_dir.join(format!("{i}.png"))).unwrap();
            }
        }
        let data = Dataset::load(&dir, Split::Test).unwrap();
        assert_eq!(data.class_names, ["ant", "cat"]);
        assert_eq!(
            (data.height, data.width, data.channels, data.len()),
            (3, 4, 3, 4)
        );
        assert_eq!(data.labels, [0, 0, 1, 1]);
        assert_eq!(&data.image(1)[..6], &[200, 201, 0, 200, 201, 1]);

        let odd = dir.join("test").join("cat").join("odd.png");
        image::RgbImage::new(5, 5).save(&odd).unwrap();
        let err = Dataset::load(&dir, Split::Test).unwrap_err().to_string();
        assert!(
            err.contains("odd.png: 5x5 pixels") && err.contains("4x3"),
            "{err}"
        );
        std::fs::write(&odd, b"not an image").unwrap();
        let err = Dataset::load(&dir, Split::Test).unwrap_err().to_string();
        assert!(err.contains("odd.png: not a readable PNG or JPEG"), "{err}");
        let err = Dataset::load(&dir, Split::Train).unwrap_err().to_string();
        assert!(err.contains("cannot read"), "{err}");
    }

    #[test]
    fn keeping_the_first_classes_keeps_their_images_in_order() {
        let all = synthetic(30, 3);
        let mut kept = all.clone();
        kept.keep_classes_below(9);
        assert_eq!(kept.len(), 27);
        assert_eq!(kept.class_names.len(), 9);
        let originals: Vec<usize> = (0..all.len()).filter(|&i| all.labels[i] < 9).collect();
        for (k, &i) in originals.iter().enumerate() {
            assert_eq!(
                (kept.labels[k], kept.image(k)),
                (all.labels[i], all.image(i))
            );
        }
    }

    #[test]
    fn synthetic_set_is_deterministic_and_balanced() {
        let a = synthetic(50, 7);
        assert_eq!(a, synthetic(50, 7));
        assert_ne!(a.pixels, synthetic(50, 8).pixels);
        assert_eq!(a.len(), 50);
        for c in 0..10 {
            assert_eq!(a.labels.iter().filter(|&&l| l == c).count(), 5);
        }
        let test = Dataset::load(Path::new("synthetic"), Split::Test).unwrap();
        assert_eq!(
            (test.len(), test.class_names[4].as_str()),
            (SYNTHETIC_TEST, "disc")
        );
        // Different patterns differ: the mean image of two classes is far apart.
        let mean = |class: u8| -> Vec<f64> {
            let images: Vec<&[u8]> = (0..a.len())
                .filter(|&i| a.labels[i] == class)
                .map(|i| a.image(i))
                .collect();
            (0..3072)
                .map(|p| {
                    images.iter().map(|im| f64::from(im[p])).sum::<f64>() / images.len() as f64
                })
                .collect()
        };
        let (h, v) = (mean(8), mean(9));
        let distance: f64 = h.iter().zip(&v).map(|(a, b)| (a - b).abs()).sum::<f64>() / 3072.0;
        assert!(distance > 20.0, "{distance}");
    }

    fn write_records(path: &Path, records: &[(u8, u8)]) {
        let mut bytes = Vec::new();
        for &(label, fill) in records {
            bytes.push(label);
            for plane in 0..3u8 {
                bytes.extend(std::iter::repeat_n(fill.wrapping_add(plane), 1024));
            }
        }
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn reads_plain_and_gz_batches_as_hwc() {
        let dir = std::env::temp_dir().join(format!("tinyres-data-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write_records(&dir.join("test_batch.bin"), &[(3, 10), (9, 20)]);
        let data = Dataset::load_cifar(&dir, Split::Test).unwrap();
        assert_eq!(data.labels, [3, 9]);
        assert_eq!(&data.image(1)[..6], &[20, 21, 22, 20, 21, 22]);

        let raw = std::fs::read(dir.join("test_batch.bin")).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &raw).unwrap();
        std::fs::write(dir.join("data_batch_1.bin.gz"), gz.finish().unwrap()).unwrap();
        assert_eq!(Dataset::load_cifar(&dir, Split::Train).unwrap(), data);

        std::fs::write(dir.join("bad.bin"), [0u8; 3074]).unwrap();
        let err = Dataset::load_cifar(&dir.join("bad.bin"), Split::Test)
            .unwrap_err()
            .to_string();
        assert!(err.contains("3074 bytes is not a whole number"), "{err}");
        write_records(&dir.join("label.bin"), &[(12, 0)]);
        let err = Dataset::load_cifar(&dir.join("label.bin"), Split::Test)
            .unwrap_err()
            .to_string();
        assert!(err.contains("record 0 has label 12"), "{err}");
        let err = Dataset::load_cifar(&dir.join("missing"), Split::Test)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no such file"), "{err}");
    }

    #[test]
    fn fitting_resizes_the_shorter_side_then_crops_the_centre() {
        // 80 wide, 40 high, left half black, right half white, a red centre column.
        let image = image::RgbImage::from_fn(80, 40, |x, _| match x {
            40 => image::Rgb([255, 0, 0]),
            x if x < 40 => image::Rgb([0, 0, 0]),
            _ => image::Rgb([255, 255, 255]),
        });
        let fitted = fit_image(image, 28, 28);
        assert_eq!(fitted.dimensions(), (28, 28));
        // Shorter side 40 -> 32 (28 / 0.875), so 80 -> 64; the crop keeps columns 18..46
        // of the scaled image: black on the left, white on the right, red in the middle.
        assert_eq!(fitted.get_pixel(0, 14).0, [0, 0, 0]);
        assert_eq!(fitted.get_pixel(27, 14).0, [255, 255, 255]);
        let middle = fitted.get_pixel(14, 14).0;
        assert!(middle[0] > middle[1], "{middle:?}");
        assert_eq!(fit_image(fitted.clone(), 28, 28), fitted);
    }

    #[test]
    fn fitted_folders_take_images_of_any_size() {
        let dir = std::env::temp_dir().join(format!("tinyres-fitted-{}", std::process::id()));
        for (class, (w, h)) in [("a", (40, 30)), ("b", (20, 50))] {
            let class_dir = dir.join("test").join(class);
            std::fs::create_dir_all(&class_dir).unwrap();
            image::RgbImage::from_pixel(w, h, image::Rgb([7, 8, 9]))
                .save(class_dir.join("0.png"))
                .unwrap();
        }
        let err = Dataset::load(&dir, Split::Test).unwrap_err().to_string();
        assert!(err.contains("all must be one size"), "{err}");
        let data = Dataset::load_fitted(&dir, Split::Test, (16, 12)).unwrap();
        assert_eq!((data.height, data.width, data.len()), (16, 12, 2));
        assert!(data.pixels.chunks(3).all(|p| p == [7, 8, 9]));
        let mut cifar = synthetic(3, 1);
        cifar.fit_to(24, 24);
        assert_eq!(
            (cifar.height, cifar.width, cifar.pixels.len()),
            (24, 24, 3 * 24 * 24 * 3)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// One of the image fuzzer's slow inputs (2.3 s under AddressSanitizer, 50 MB): a
    /// 352-byte JPEG whose header declares 65,287 × 254 pixels. Refused from its header.
    #[test]
    fn an_image_declaring_a_huge_size_is_refused_before_decoding() {
        let mut jpeg = std::io::Cursor::new(Vec::new());
        image::RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3]))
            .write_to(&mut jpeg, image::ImageFormat::Jpeg)
            .unwrap();
        let mut jpeg = jpeg.into_inner();
        let name = Path::new("huge.jpg");
        assert_eq!(decode_image(name, &jpeg).unwrap().dimensions(), (8, 8));
        // Start of frame: marker, length (2 bytes), precision, height, width.
        let frame = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        jpeg[frame + 5..frame + 9].copy_from_slice(&[0x00, 0xFE, 0xFF, 0x07]);
        let err = decode_image(name, &jpeg).unwrap_err().to_string();
        assert_eq!(
            err,
            "huge.jpg: 65287x254 pixels; images of at most 16384x16384 are read"
        );
        let err = decode_image_at_most(name, &jpeg[..frame + 9], 1 << 16).unwrap_err();
        assert!(format!("{err:#}").starts_with("huge.jpg: not a readable PNG or JPEG image"));
    }

    /// The image fuzzer's first crash: 785 bytes of corrupt JPEG on which zune-jpeg
    /// 0.5.15's AVX2 inverse DCT unwraps `None` (on a machine without AVX2 its scalar
    /// one runs instead, and may decode the file).
    #[test]
    fn a_jpeg_that_panics_the_decoder_is_an_error() {
        let bytes = include_bytes!("../tests/fixtures/jpeg-idct-panic.jpg");
        if let Err(err) = decode_image(Path::new("corrupt.jpg"), bytes) {
            let err = format!("{err:#}");
            assert!(err.starts_with("corrupt.jpg: not a readable"), "{err}");
        }
    }
}
