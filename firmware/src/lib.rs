//! What the tinyres firmware binaries share: the application logic ([`app`], generic
//! over embedded-hal and embedded-storage, tested on the host), where QEMU (or `tinyres
//! flash`) puts the model and the images (per board, from build.rs), the board's pins
//! and flash ([`board`]), the image-region format, the instruction counter, the defmt
//! transport and the exits.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

include!(concat!(env!("OUT_DIR"), "/board.rs"));

/// A memory region filled by the host before boot.
///
/// # Safety
///
/// `address..address + len` must be readable memory that nothing writes while the
/// returned slice lives (the host fills these regions before the core starts: QEMU's
/// loader, or `tinyres flash` through a probe on a board).
unsafe fn host_region(address: usize, len: usize) -> &'static [u8] {
    // SAFETY: the caller guarantees the range is readable and not written for 'static.
    unsafe { core::slice::from_raw_parts(address as *const u8, len) }
}

/// The model partition.
pub fn model_partition() -> &'static [u8] {
    // SAFETY: MODEL_ADDRESS..+MODEL_CAPACITY is memory on every supported board's map
    // (build.rs's table) outside the firmware's code and RAM (memory.x keeps them
    // apart), written only by the host before reset (QEMU's loader, `tinyres flash`).
    unsafe { host_region(MODEL_ADDRESS, MODEL_CAPACITY) }
}

/// The image region.
pub fn image_region() -> &'static [u8] {
    // SAFETY: as for the model partition, IMAGES_ADDRESS..+IMAGES_CAPACITY is outside
    // the firmware and, on boards with a flash head store, below it; only the host
    // writes it, before reset.
    unsafe { host_region(IMAGES_ADDRESS, IMAGES_CAPACITY) }
}

/// Images to classify, as the host lays them out: `TRIM`, count (u32), height, width,
/// channels (u16 each), the number of leading images to learn from (u16; 0 for plain
/// classification), `count` label bytes padded to 16, then the `count` images, HWC
/// `u8` each.
#[derive(Clone, Copy, Debug)]
pub struct Images<'a> {
    labels: &'a [u8],
    pixels: &'a [u8],
    image_len: usize,
    train_count: usize,
}

/// Why the image region could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, defmt::Format)]
pub enum ImagesError {
    /// The region does not start with `TRIM`.
    BadMagic,
    /// The header's sizes do not fit the region.
    OutOfBounds,
}

impl<'a> Images<'a> {
    /// Parses the region.
    pub fn parse(region: &'a [u8]) -> Result<Self, ImagesError> {
        if region.get(..4) != Some(b"TRIM") {
            return Err(ImagesError::BadMagic);
        }
        let word = |at: usize| {
            region
                .get(at..at + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let half = |at: usize| {
            region
                .get(at..at + 2)
                .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])))
        };
        let (Some(count), Some(h), Some(w), Some(c), Some(train_count)) =
            (word(4), half(8), half(10), half(12), half(14))
        else {
            return Err(ImagesError::OutOfBounds);
        };
        let count = count as usize;
        let image_len = h * w * c;
        let labels_end = 16 + count.next_multiple_of(16);
        let pixels_end = count
            .checked_mul(image_len)
            .and_then(|n| n.checked_add(labels_end))
            .ok_or(ImagesError::OutOfBounds)?;
        let (Some(labels), Some(pixels)) = (
            region.get(16..16 + count),
            region.get(labels_end..pixels_end),
        ) else {
            return Err(ImagesError::OutOfBounds);
        };
        if train_count > count {
            return Err(ImagesError::OutOfBounds);
        }
        Ok(Images {
            labels,
            pixels,
            image_len,
            train_count,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// How many leading images are training examples.
    pub fn train_count(&self) -> usize {
        self.train_count
    }

    /// Image `i` and its label.
    pub fn get(&self, i: usize) -> Option<(&'a [u8], u8)> {
        let start = i.checked_mul(self.image_len)?;
        Some((
            self.pixels.get(start..start + self.image_len)?,
            *self.labels.get(i)?,
        ))
    }
}

pub mod app;
#[cfg(all(target_os = "none", not(feature = "nrf52840")))]
pub mod semihosting_flash;

#[cfg(all(target_os = "none", not(feature = "nrf52840")))]
#[path = "board_qemu.rs"]
pub mod board;
#[cfg(all(target_os = "none", feature = "nrf52840"))]
#[path = "board_nrf52840.rs"]
pub mod board;

// The defmt transport: RTT (what a probe reads) with the `rtt` feature, else
// semihosting (QEMU's console).
#[cfg(all(target_os = "none", feature = "rtt"))]
use defmt_rtt as _;
#[cfg(all(target_os = "none", not(feature = "rtt")))]
use defmt_semihosting as _;

/// The application as the `finetune` and `teach` firmware run it on this board.
#[cfg(target_os = "none")]
pub type BoardApp<'a, 'h> = app::App<'static, 'a, 'h, board::Button, board::Led, board::HeadFlash>;

/// Opens the application on this board: the model partition's network in `arena`, the
/// head from the model's classifier or, if the board's flash holds a saved one, from
/// there (logged: `restored none` or `restored slot=S seq=N`), the board's button and
/// LED; and the image region.
#[cfg(target_os = "none")]
#[inline(never)]
pub fn open_app<'a, 'h>(
    arena: &'a mut [u8],
    head: &'h mut app::Head,
) -> Result<(BoardApp<'a, 'h>, Images<'static>), app::FirmwareError> {
    use tinyres_core::persist::LayerStore;
    let model = tinyres_core::Model::parse(model_partition())?;
    let images = Images::parse(image_region()).map_err(app::FirmwareError::Images)?;
    let (button, led, flash) = board::take()?;
    let store = LayerStore::new(flash, 0, app::SLOT_BYTES)?;
    let net = tinyres_core::Interpreter::new(model, arena)?;
    let (app, restored) = app::App::new(net, head, store, button, led, app::FINETUNE_SGD)?;
    match restored {
        Some(s) => defmt::println!("restored slot={=u32} seq={=u32}", s.slot, s.sequence),
        None => defmt::println!("restored none"),
    }
    Ok((app, images))
}

/// Logs why `program` failed, if it did (`program: error`); whether it succeeded, for
/// [`exit`].
#[cfg(target_os = "none")]
pub fn report(program: &str, result: Result<(), app::FirmwareError>) -> bool {
    match result {
        Ok(()) => true,
        Err(e) => {
            defmt::error!("{=str}: {}", program, e);
            false
        }
    }
}

/// Ends the program with success or failure: semihosting `SYS_EXIT`, which QEMU and
/// `probe-rs run` both turn into their exit status. Under RTT it first waits until the
/// host has read every frame (when one is attached).
#[cfg(target_os = "none")]
pub fn exit(success: bool) -> ! {
    defmt::flush();
    board::before_exit();
    semihosting::process::exit(if success { 0 } else { 1 })
}

/// A panic on the device: logged, then [`exit`] with failure.
#[cfg(target_os = "none")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    defmt::error!("panic: {}", defmt::Display2Format(info));
    exit(false)
}

#[cfg(target_arch = "aarch64")]
mod aarch64_support;
#[cfg(target_arch = "arm")]
mod cortex_m_support;

#[cfg(target_arch = "aarch64")]
pub use aarch64_support::{counter_elapsed, counter_read, counter_start, static_ram, COUNTER};
#[cfg(target_arch = "aarch64")]
use aarch64_support::{stack_bounds, stack_pointer};
#[cfg(target_arch = "arm")]
pub use cortex_m_support::{counter_elapsed, counter_read, counter_start, static_ram, COUNTER};
#[cfg(target_arch = "arm")]
use cortex_m_support::{stack_bounds, stack_pointer};

/// Pattern painted over the free stack to find its high-water mark.
#[cfg(target_os = "none")]
const STACK_PAINT: u32 = 0x5A5A_5A5A;

/// Paints the free stack below the current frame (leaving 256 bytes of margin) so
/// that [`stack_used`] can find how deep the stack went. Call it first thing.
#[cfg(target_os = "none")]
pub fn stack_paint() {
    let (bottom, _) = stack_bounds();
    let limit = stack_pointer().saturating_sub(256);
    let mut at = bottom.next_multiple_of(4);
    while at + 4 <= limit {
        // SAFETY: `bottom..limit` is stack memory below the live frames: nothing is
        // stored there (no heap), and the address is 4-byte aligned.
        unsafe { (at as *mut u32).write_volatile(STACK_PAINT) };
        at += 4;
    }
}

/// Bytes of stack used since [`stack_paint`]: from the top down to the lowest word
/// that no longer holds the paint.
#[cfg(target_os = "none")]
pub fn stack_used() -> usize {
    let (bottom, top) = stack_bounds();
    let mut at = bottom.next_multiple_of(4);
    // SAFETY: reads aligned words of the stack region below the live frames.
    while at < top && unsafe { (at as *const u32).read_volatile() } == STACK_PAINT {
        at += 4;
    }
    top - at
}
