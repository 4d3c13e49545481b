//! Image data sets: CIFAR-10 binary batches, plain or gzip-compressed.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
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
            let bytes = read_maybe_gz(&file)?;
            if bytes.is_empty() || bytes.len() % CIFAR_RECORD != 0 {
                bail!(
                    "{}: {} bytes is not a whole number of {CIFAR_RECORD}-byte CIFAR-10 records",
                    file.display(),
                    bytes.len()
                );
            }
            for (r, record) in bytes.chunks_exact(CIFAR_RECORD).enumerate() {
                if record[0] > 9 {
                    bail!(
                        "{}: record {r} has label {}, expected 0..=9",
                        file.display(),
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
        }
        Ok(data)
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

fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut bytes = Vec::new();
    if path.extension().is_some_and(|e| e == "gz") {
        GzDecoder::new(file)
            .read_to_end(&mut bytes)
            .with_context(|| format!("{}: not a valid gzip file", path.display()))?;
    } else {
        file.read_to_end(&mut bytes)
            .with_context(|| format!("cannot read {}", path.display()))?;
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
