//! Writing firmware and a model to a real board with probe-rs: the flash layout of a
//! chip from probe-rs's target database, and the download itself.
//!
//! Layout on a chip the firmware has a board for ([`FIRMWARE_BOARDS`], the nRF52840):
//! the fixed partitions that firmware was linked with (firmware/build.rs): firmware,
//! model, images, and the learned head's two slots, so a new model or new images are
//! written without rebuilding the firmware.
//!
//! On any other chip, a proposal: the firmware from the start of the boot flash; at
//! the end of it, the two slots of the learned head, each in erase sectors of its own
//! (so saving one never erases the other); just below them, the model partition,
//! starting on a sector boundary. Sector sizes come from the chip's flash algorithm in
//! probe-rs's database: on a chip with uniform 4 KiB sectors the store takes 8 KiB; on
//! one whose last sectors are large (the STM32F7's are 256 KiB) it takes two of them.

use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use probe_rs::config::{MemoryRegion, Registry, Target};
use serde::Serialize;

/// Bytes one slot of the learned head needs (the firmware's `SLOT_BYTES`).
pub const SLOT_BYTES: u64 = 4096;
/// Erase sector size assumed where probe-rs's database gives none.
const DEFAULT_SECTOR_BYTES: u64 = 4096;

/// A chip the firmware is built for, with the partitions its build.rs entry fixes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirmwareBoard {
    /// Chip name as probe-rs knows it.
    pub chip: &'static str,
    /// `TINYRES_BOARD` and cargo feature of the firmware build.
    pub board: &'static str,
    /// Where the firmware's code may go.
    pub code: Range<u64>,
    /// The model partition.
    pub model: Range<u64>,
    /// The image region the firmware classifies (and learns) from.
    pub images: Range<u64>,
    /// The learned head's two slots, one 4 KiB page each.
    pub head_store: Range<u64>,
}

/// Boards the firmware builds for real hardware (firmware/build.rs has the same table).
pub const FIRMWARE_BOARDS: [FirmwareBoard; 1] = [FirmwareBoard {
    chip: "nRF52840_xxAA",
    board: "nrf52840",
    code: 0x0..0x4_0000,
    model: 0x4_0000..0x8_0000,
    images: 0x8_0000..0xF_E000,
    head_store: 0xF_E000..0x10_0000,
}];

/// Where everything goes on a chip.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Layout {
    /// Chip name as probe-rs knows it.
    pub chip: String,
    /// The firmware board whose fixed partitions these are, if the chip has one.
    pub board: Option<&'static str>,
    /// The boot flash.
    pub flash: Range<u64>,
    /// The first RAM region.
    pub ram: Range<u64>,
    /// The firmware's flash extent, if a firmware ELF was given.
    pub firmware: Option<Range<u64>>,
    /// The model partition (the model's extent in it).
    pub model: Range<u64>,
    /// The image region, on a chip with a firmware board.
    pub images: Option<Range<u64>>,
    /// The learned-head store: both slots.
    pub head_store: Range<u64>,
    /// The two slots, each made of whole erase sectors.
    pub head_slots: [Range<u64>; 2],
}

/// The layout of `model_len` bytes of model (and an optional firmware) on `chip`.
pub fn layout(chip: &str, model_len: u64, firmware: Option<&Path>) -> Result<Layout> {
    if let Some(board) = FIRMWARE_BOARDS
        .iter()
        .find(|b| b.chip.eq_ignore_ascii_case(chip))
    {
        return board_layout(board, model_len, firmware);
    }
    let (target, flash, ram) = chip_memory(chip)?;
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
        Some(path) => Some(firmware_extent(path, &flash, &ram)?),
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
        board: None,
        flash,
        ram,
        firmware,
        model: model_start..model_start + model_len,
        images: None,
        head_store: first.start..second.end,
        head_slots: [first, second],
    })
}

/// The boot flash and first RAM region of `chip` from probe-rs's database.
fn chip_memory(chip: &str) -> Result<(Target, Range<u64>, Range<u64>)> {
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
    // The Cortex-M SRAM region if there is one (the nRF52840 lists its code-bus
    // alias at 0x00800000 first), else the first RAM region.
    let rams: Vec<Range<u64>> = target
        .memory_map
        .iter()
        .filter_map(|r| match r {
            MemoryRegion::Ram(r) => Some(r.range.clone()),
            _ => None,
        })
        .collect();
    let ram = rams
        .iter()
        .find(|r| r.start == 0x2000_0000)
        .or(rams.first())
        .cloned()
        .with_context(|| format!("{chip} has no RAM in probe-rs's database"))?;
    Ok((target, flash, ram))
}

/// The fixed partitions of a chip the firmware has a board for.
fn board_layout(board: &FirmwareBoard, model_len: u64, firmware: Option<&Path>) -> Result<Layout> {
    let (target, flash, ram) = chip_memory(board.chip)?;
    let capacity = board.model.end - board.model.start;
    if model_len > capacity {
        bail!(
            "the model is {model_len} bytes; the {} firmware's model partition at {:#x} holds {capacity}",
            board.board,
            board.model.start
        );
    }
    let firmware = match firmware {
        Some(path) => Some(firmware_extent(path, &flash, &ram)?),
        None => None,
    };
    if let Some(fw) = &firmware {
        if fw.start < board.code.start || fw.end > board.code.end {
            bail!(
                "the firmware spans {:#x}..{:#x}, outside the {} firmware's code partition {:#x}..{:#x}: build it with TINYRES_BOARD={} --features {}",
                fw.start,
                fw.end,
                board.board,
                board.code.start,
                board.code.end,
                board.board,
                board.board
            );
        }
    }
    let middle = board.head_store.start + (board.head_store.end - board.head_store.start) / 2;
    Ok(Layout {
        chip: target.name,
        board: Some(board.board),
        flash,
        ram,
        firmware,
        model: board.model.start..board.model.start + model_len,
        images: Some(board.images.clone()),
        head_store: board.head_store.clone(),
        head_slots: [board.head_store.start..middle, middle..board.head_store.end],
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

/// The flash extent of an ELF's loadable segments inside `flash`; every segment that
/// lives in RAM (`.data`, `.bss`, the arena) must fit in `ram`, which catches a
/// firmware built for another board.
fn firmware_extent(path: &Path, flash: &Range<u64>, ram: &Range<u64>) -> Result<Range<u64>> {
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
        let (kind, vaddr, paddr, filesz, memsz) = (
            u32_at(at).ok_or_else(bad)?,
            u32_at(at + 8).ok_or_else(bad)?,
            u32_at(at + 12).ok_or_else(bad)?,
            u32_at(at + 16).ok_or_else(bad)?,
            u32_at(at + 20).ok_or_else(bad)?,
        );
        let in_ram = u64::from(vaddr)..u64::from(vaddr) + u64::from(memsz);
        if kind == 1
            && memsz > 0
            && !flash.contains(&in_ram.start)
            && !(ram.start <= in_ram.start && in_ram.end <= ram.end)
        {
            bail!(
                "{}: a segment at {:#x}..{:#x} is outside the chip's RAM {:#x}..{:#x} (built for another board?)",
                path.display(),
                in_ram.start,
                in_ram.end,
                ram.start,
                ram.end
            );
        }
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
        s += &format!("model       {}\n", kib(&self.model));
        if let Some(images) = &self.images {
            s += &format!("images      {}\n", kib(images));
        }
        s += &format!(
            "head slot 1 {}\nhead slot 2 {}  (the learned head, saved to the older slot)\n",
            kib(&self.head_slots[0]),
            kib(&self.head_slots[1])
        );
        match self.board {
            Some(board) => {
                s += &format!("partitions  fixed by the {board} firmware (firmware/build.rs)\n")
            }
            None => s += "partitions  proposed (no tinyres firmware board for this chip)\n",
        }
        s
    }
}

/// Writes the firmware (if given), the model and the image region (if given: the
/// `TRIM` region [`crate::qemu::image_region`] lays out) through the first debug probe
/// found.
pub fn write(
    layout: &Layout,
    firmware: Option<&PathBuf>,
    model: &[u8],
    images: Option<&[u8]>,
) -> Result<()> {
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
    if !model.is_empty() {
        loader
            .add_data(layout.model.start, model)
            .context("staging the model")?;
    }
    if let (Some(region), Some(bytes)) = (&layout.images, images) {
        loader
            .add_data(region.start, bytes)
            .context("staging the images")?;
    }
    loader
        .commit(&mut session, DownloadOptions::default())
        .context("writing the model and image partitions")?;
    Ok(())
}
