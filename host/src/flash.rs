//! Writing firmware and a model to a real board with probe-rs: the flash layout of a
//! chip from probe-rs's target database, and the download itself.
//!
//! Layout: the firmware from the start of the boot flash; at the end of it, the two
//! slots of the learned head, each in erase sectors of its own (so saving one never
//! erases the other); just below them, the model partition, starting on a sector
//! boundary, so a new model can be written without rebuilding firmware. Sector sizes
//! come from the chip's flash algorithm in probe-rs's database: on a chip with
//! uniform 4 KiB sectors the store takes 8 KiB; on one whose last sectors are large
//! (the STM32F7's are 256 KiB) it takes two of them.

use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use probe_rs::config::{MemoryRegion, Registry, Target};
use serde::Serialize;

/// Bytes one slot of the learned head needs (the firmware's `SLOT_BYTES`).
pub const SLOT_BYTES: u64 = 4096;
/// Erase sector size assumed where probe-rs's database gives none.
const DEFAULT_SECTOR_BYTES: u64 = 4096;

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
    /// The learned-head store: both slots.
    pub head_store: Range<u64>,
    /// The two slots, each made of whole erase sectors.
    pub head_slots: [Range<u64>; 2],
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
    let sectors = erase_sectors(&target, &flash);
    let too_small = || {
        format!(
            "a {model_len}-byte model and two {SLOT_BYTES}-byte head slots do not fit in {chip}'s {} KiB of flash",
            (flash.end - flash.start) / 1024
        )
    };
    // Each slot: the fewest whole sectors at the end that hold SLOT_BYTES.
    let mut remaining = sectors.as_slice();
    let mut take_slot = || -> Option<Range<u64>> {
        let mut start = remaining.len();
        while start > 0 {
            start -= 1;
            if remaining[start..]
                .iter()
                .map(|s| s.end - s.start)
                .sum::<u64>()
                >= SLOT_BYTES
            {
                let slot = remaining[start].start..remaining.last()?.end;
                remaining = &remaining[..start];
                return Some(slot);
            }
        }
        None
    };
    let second = take_slot().with_context(too_small)?;
    let first = take_slot().with_context(too_small)?;
    let model_start = remaining
        .iter()
        .rev()
        .map(|s| s.start)
        .find(|&start| start + model_len <= first.start)
        .with_context(too_small)?;
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
        head_store: first.start..second.end,
        head_slots: [first, second],
    })
}

/// The erase sectors of `flash`, from the chip's flash algorithm that covers it
/// ([`DEFAULT_SECTOR_BYTES`] each where the database has none).
fn erase_sectors(target: &Target, flash: &Range<u64>) -> Vec<Range<u64>> {
    let properties = target
        .flash_algorithms
        .iter()
        .map(|a| &a.flash_properties)
        .find(|p| {
            p.address_range.start <= flash.start
                && flash.end <= p.address_range.end
                && !p.sectors.is_empty()
        });
    let (base, end, groups) = match properties {
        Some(p) => (
            p.address_range.start,
            p.address_range.end,
            p.sectors.iter().map(|d| (d.address, d.size)).collect(),
        ),
        None => (flash.start, flash.end, vec![(0, DEFAULT_SECTOR_BYTES)]),
    };
    let mut sectors = Vec::new();
    for (i, &(offset, size)) in groups.iter().enumerate() {
        let group_end = groups.get(i + 1).map_or(end, |&(next, _)| base + next);
        let mut at = base + offset;
        while size > 0 && at < group_end {
            sectors.push(at..(at + size).min(group_end));
            at += size;
        }
    }
    sectors.retain(|s| flash.start <= s.start && s.end <= flash.end);
    sectors
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
            "model       {}\nhead slot 1 {}\nhead slot 2 {}  (the learned head, saved to the older slot)\n",
            kib(&self.model),
            kib(&self.head_slots[0]),
            kib(&self.head_slots[1])
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
