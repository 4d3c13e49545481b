//! `tinyres flash`: firmware, a model and images onto a real board through a debug
//! probe (probe-rs), or with `--dry-run` the layout and what would be written.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use tinyres_core::Model;
use tinyres_data::{Dataset, Split};
use tinyres_device::flash::{self, Layout, FIRMWARE_BOARDS};
use tinyres_device::qemu;

use super::{load_blob, print_json};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Chip name as probe-rs knows it (e.g. STM32F746NGHx, nRF52840_xxAA).
    #[arg(long)]
    chip: String,
    /// The model blob (.trm) for the model partition.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Firmware ELF built for this board (nRF52840: `cargo build --release
    /// --features nrf52840 --target-dir target/nrf52840` in firmware/).
    #[arg(long)]
    firmware: Option<PathBuf>,
    /// Images for the firmware to classify, written to the image partition (chips
    /// with a firmware board): `synthetic`, an image folder or CIFAR-10, test split.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Write at most this many images (default: as many as the partition holds).
    #[arg(long, requires = "data")]
    limit: Option<usize>,
    /// Put examples to learn from before the images (the `finetune` firmware learns
    /// from them on the board): shots of the model's next free class from this data's
    /// training split, and rehearsal images of known classes, as `tinyres run
    /// --finetune` does.
    #[arg(long, value_name = "DATA", requires_all = ["data", "model"])]
    finetune: Option<PathBuf>,
    /// Shots of the new class.
    #[arg(long, default_value_t = 20, requires = "finetune")]
    shots: usize,
    /// Rehearsal images of known classes learned from beside the shots (default: 10
    /// per shot, fewer where the image partition would not hold them beside the
    /// test images: --limit of them, or half the partition).
    #[arg(long, requires = "finetune")]
    rehearsal: Option<usize>,
    /// Only print the layout and what would be written.
    #[arg(long)]
    dry_run: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn command(args: &Args) -> Result<()> {
    let &Args {
        ref chip,
        ref model,
        ref firmware,
        ref data,
        limit,
        ref finetune,
        shots,
        rehearsal,
        dry_run,
        json,
    } = args;
    if model.is_none() && firmware.is_none() && data.is_none() {
        bail!("nothing to flash: give --model, --firmware, --data or several");
    }
    let blob = model.as_deref().map(load_blob).transpose()?;
    let model_bytes = blob.as_ref().map_or(&[][..], |b| b.as_bytes());
    let layout = flash::layout(chip, model_bytes.len() as u64, firmware.as_deref())?;
    let parsed = blob
        .as_ref()
        .map(|b| Model::parse(b.as_bytes()))
        .transpose()
        .map_err(|e| anyhow::anyhow!("the model: {e}"))?;
    let learn = match (&finetune, &parsed) {
        (Some(pool), Some(model)) => Some((
            Dataset::load(pool, Split::Train)?,
            shots,
            rehearsal,
            model.num_classes(),
        )),
        _ => None,
    };
    let images = data
        .as_deref()
        .map(|path| flash_images(&layout, path, limit, learn.as_ref()))
        .transpose()?;
    if let (Some(images), Some(model)) = (&images, &parsed) {
        let input = model.input_shape();
        if input != images.shape {
            bail!(
                "the model expects {:?} (height, width, channels) images, the data holds {:?}",
                input,
                images.shape
            );
        }
    }
    let image_bytes = images.as_ref().map(|i| i.region.as_slice());
    if json {
        let value = serde_json::json!({
            "layout": layout,
            "dry_run": dry_run,
            "model_bytes": model_bytes.len(),
            "images": images.as_ref().map_or(0, |i| i.test),
            "learn_from": images.as_ref().map_or(0, |i| i.learn),
            "image_bytes": image_bytes.map_or(0, <[u8]>::len),
        });
        print_json(&value)?;
    } else {
        print!("{}", layout.to_table());
        let mut parts = Vec::new();
        if let Some(f) = &firmware {
            parts.push(f.display().to_string());
        }
        if !model_bytes.is_empty() {
            parts.push(format!(
                "{} bytes of model at {:#x}",
                model_bytes.len(),
                layout.model.start
            ));
        }
        if let (Some(images), Some(at)) = (&images, &layout.images) {
            let learn = if images.learn > 0 {
                format!("{} examples to learn from and ", images.learn)
            } else {
                String::new()
            };
            parts.push(format!(
                "{learn}{} images ({} bytes) at {:#x}",
                images.test,
                images.region.len(),
                at.start
            ));
        }
        println!(
            "{} {}",
            if dry_run { "would write" } else { "writing" },
            parts.join(" and ")
        );
    }
    if !dry_run {
        flash::write(&layout, firmware.as_ref(), model_bytes, image_bytes)?;
    }
    Ok(())
}

/// What goes to a board's image partition.
struct FlashImages {
    /// The `TRIM` region.
    region: Vec<u8>,
    /// Examples to learn from, at its start.
    learn: usize,
    /// Images to classify after them.
    test: usize,
    /// Height, width, channels of every image.
    shape: (usize, usize, usize),
}

/// The image region for a board's image partition: the first `limit` test images of
/// `path` (as many as fit by default), after the examples of `learn` (a training pool,
/// the shots and rehearsal images to take from it, the new class's index) if given.
fn flash_images(
    layout: &Layout,
    path: &Path,
    limit: Option<usize>,
    learn: Option<&(Dataset, usize, Option<usize>, usize)>,
) -> Result<FlashImages> {
    let Some(partition) = &layout.images else {
        bail!(
            "{} has no tinyres firmware board, so no image partition (boards: {})",
            layout.chip,
            FIRMWARE_BOARDS
                .iter()
                .map(|b| b.chip)
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    let test = Dataset::load(path, Split::Test)?;
    let capacity = (partition.end - partition.start) as usize;
    // Header, labels padded to 16, pixels.
    let fits = (capacity - 32) / (test.image_len() + 1);
    let set = match learn {
        Some((pool, shots, rehearsal, new_class)) => {
            if pool.image_len() != test.image_len() {
                bail!(
                    "the images to learn from are {} bytes each, the test images {}",
                    pool.image_len(),
                    test.image_len()
                );
            }
            let rehearsal = rehearsal.unwrap_or_else(|| {
                let wanted = shots * qemu::REHEARSAL_PER_SHOT;
                let test_images = limit.unwrap_or(fits / 2);
                wanted.min(fits.saturating_sub(shots + test_images))
            });
            Some(qemu::learning_set(
                *new_class, &test, pool, *shots, rehearsal,
            )?)
        }
        None => None,
    };
    let learn_count = set.as_ref().map_or(0, |s| s.learn.len());
    let room = fits.saturating_sub(learn_count);
    let count = limit.unwrap_or(room).min(test.len());
    if learn_count + count > fits {
        bail!(
            "{learn_count} examples and {count} images of {} bytes do not fit in the {capacity}-byte image partition (at most {fits} in all)",
            test.image_len()
        );
    }
    // The region puts the examples first, then the first `count` test images (indices
    // 0.. in the set as in `test`).
    let tests: Vec<usize> = (0..count).collect();
    let region = match set {
        Some(set) => qemu::image_region(&set.data, &set.learn, &tests),
        None => qemu::image_region(&test, &[], &tests),
    };
    Ok(FlashImages {
        region,
        learn: learn_count,
        test: count,
        shape: (test.height, test.width, test.channels),
    })
}
