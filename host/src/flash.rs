//! Writing firmware and a model to a real board with probe-rs: the flash layout of a
//! chip from probe-rs's target database, and the download itself.
//!
//! Layout: the firmware from the start of the boot flash; at the end of it, the two
//! 4 KiB slots of the learned head; just below them, the model partition (the blob,
//! rounded up to 4 KiB), so a new model can be written without rebuilding firmware.

use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use probe_rs::config::{MemoryRegion, Registry};
use serde::Serialize;

/// Granularity of the partitions at the end of flash (a common erase sector size;
/// chips with larger sectors need the firmware's layout adjusted).
pub const PARTITION_ALIGN: u64 = 4096;
/// Bytes of the learned-head store: two slots.
pub const HEAD_STORE_BYTES: u64 = 2 * 4096;

/// Where everything goes on a chip.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Layout {
    /// Chip name as probe-rs knows it.
    pub chip: String,
    /// The boot flash.
    pub flash: Range<u64>,
    /// The first RAM region.
    pub ram: Range<u64>,
    /// The firmware's flash extent, if a firmware ELF was given.
    pub firmware: Option<Range<u64>>,
    /// The model partition.
    pub model: Range<u64>,
    /// The learned-head store (two slots).
    pub head_store: Range<u64>,
}

/// The layout of `model_len` bytes of model (and an optional firmware) on `chip`.
pub fn layout(chip: &str, model_len: u64, firmware: Option<&Path>) -> Result<Layout> {
    let registry = Registry::from_builtin_families();
    let target = registry
        .get_target_by_name(chip)
        .map_err(|e| anyhow::anyhow!("unknown chip {chip:?}: {e} (names as in `probe-rs chip list`, e.g. STM32F746NGHx, nRF52840_xxAA)"))?;
    let flash = target
        .memory_map
        .iter()
        .find_map(|r| match r {
            MemoryRegion::Nvm(n) if n.is_boot_memory() => Some(n.range.clone()),
            _ => None,
        })
        .or_else(|| {
            target.memory_map.iter().find_map(|r| match r {
                MemoryRegion::Nvm(n) => Some(n.range.clone()),
                _ => None,
            })
        })
        .with_context(|| format!("{chip} has no flash in probe-rs's database"))?;
    let ram = target
        .memory_map
        .iter()
        .find_map(|r| match r {
            MemoryRegion::Ram(r) => Some(r.range.clone()),
            _ => None,
        })
        .with_context(|| format!("{chip} has no RAM in probe-rs's database"))?;
    let head_start = (flash.end - HEAD_STORE_BYTES) / PARTITION_ALIGN * PARTITION_ALIGN;
    let model_start = head_start
        .checked_sub(model_len.next_multiple_of(PARTITION_ALIGN))
        .filter(|&start| start >= flash.start)
        .with_context(|| {
            format!(
                "a {model_len}-byte model does not fit in {chip}'s {} KiB of flash",
                (flash.end - flash.start) / 1024
            )
        })?;
    let firmware = match firmware {
        Some(path) => Some(firmware_extent(path, &flash)?),
        None => None,
    };
    if let Some(fw) = &firmware {
        if fw.end > model_start {
            bail!(
                "the firmware ends at {:#x}, past the model partition at {model_start:#x}: {} bytes too many",
                fw.end,
                fw.end - model_start
            );
        }
    }
    Ok(Layout {
        chip: target.name,
        flash,
        ram,
        firmware,
        model: model_start..model_start + model_len,
        head_store: head_start..head_start + HEAD_STORE_BYTES,
    })
}

/// The flash extent of an ELF's loadable segments inside `flash`.
fn firmware_extent(path: &Path, flash: &Range<u64>) -> Result<Range<u64>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.get(..4) != Some(&b"\x7fELF"[..]) || bytes.get(4) != Some(&1) {
        bail!("{}: not a 32-bit ELF firmware image", path.display());
    }
    let u16_at = |at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let bad = || anyhow::anyhow!("{}: truncated ELF", path.display());
    let (phoff, phentsize, phnum) = (
        u32_at(28).ok_or_else(bad)? as usize,
        usize::from(u16_at(42).ok_or_else(bad)?),
        usize::from(u16_at(44).ok_or_else(bad)?),
    );
    let mut extent: Option<Range<u64>> = None;
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let (kind, paddr, filesz) = (
            u32_at(at).ok_or_else(bad)?,
            u32_at(at + 12).ok_or_else(bad)?,
            u32_at(at + 16).ok_or_else(bad)?,
        );
        let (start, end) = (u64::from(paddr), u64::from(paddr) + u64::from(filesz));
        if kind != 1 || filesz == 0 || start < flash.start || end > flash.end {
            continue; // not PT_LOAD, or not in flash
        }
        extent = Some(match extent {
            Some(e) => e.start.min(start)..e.end.max(end),
            None => start..end,
        });
    }
    extent.with_context(|| {
        format!(
            "{} has nothing to load into flash at {:#x}..{:#x}",
            path.display(),
            flash.start,
            flash.end
        )
    })
}

impl Layout {
    /// The layout as text.
    pub fn to_table(&self) -> String {
        let kib = |r: &Range<u64>| {
            format!(
                "{:#010x}..{:#010x}  {:>8.1} KiB",
                r.start,
                r.end,
                (r.end - r.start) as f64 / 1024.0
            )
        };
        let mut s = format!(
            "chip        {}\nflash       {}\nram         {}\n",
            self.chip,
            kib(&self.flash),
            kib(&self.ram)
        );
        match &self.firmware {
            Some(fw) => s += &format!("firmware    {}\n", kib(fw)),
            None => s += "firmware    (not given: only the model partition is written)\n",
        }
        s += &format!(
            "model       {}\nhead store  {}  (two slots of the learned head)\n",
            kib(&self.model),
            kib(&self.head_store)
        );
        s
    }
}

/// Writes the firmware (if given) and the model through the first debug probe found.
pub fn write(layout: &Layout, firmware: Option<&PathBuf>, model: &[u8]) -> Result<()> {
    use probe_rs::flashing::{download_file_with_options, DownloadOptions, ElfLoader, ElfOptions};
    use probe_rs::{Session, SessionConfig};
    let mut session = Session::auto_attach(layout.chip.as_str(), SessionConfig::default())
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot attach to {} through a debug probe: {e}",
                layout.chip
            )
        })?;
    if let Some(elf) = firmware {
        download_file_with_options(
            &mut session,
            elf,
            ElfLoader(ElfOptions::default()),
            DownloadOptions::default(),
        )
        .with_context(|| format!("flashing {}", elf.display()))?;
    }
    let mut loader = session.target().flash_loader();
    loader
        .add_data(layout.model.start, model)
        .context("staging the model")?;
    loader
        .commit(&mut session, DownloadOptions::default())
        .context("writing the model partition")?;
    Ok(())
}
