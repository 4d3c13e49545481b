//! The QEMU boards: no button (the image region's labels press it) and no LED, and
//! the learned head's flash is a host file reached through semihosting
//! ([`crate::semihosting_flash`]), so it survives a reboot as real flash would.

use core::sync::atomic::{AtomicBool, Ordering};

use embedded_hal::digital::{ErrorType, InputPin, OutputPin};

use crate::app::{AppError, SLOT_BYTES};
use crate::semihosting_flash::SemihostingFlash;

/// The flash image's file name, in the directory QEMU runs in.
const FLASH_FILE: &core::ffi::CStr = c"tinyres-flash.bin";

/// One pass over the frames, then the firmware exits.
pub const FRAMES_CYCLE: bool = false;

/// Whether the label button is "held": set from the image region's labels.
static PRESSED: AtomicBool = AtomicBool::new(false);

/// Holds the button while a frame whose label marks it as an example of the class
/// being taught is shown (QEMU's stand-in for a person pressing it).
pub fn press_for_label(pressed: bool) {
    PRESSED.store(pressed, Ordering::Relaxed);
}

/// The label button, pressed by [`press_for_label`].
pub struct LabelButton;

impl ErrorType for LabelButton {
    type Error = core::convert::Infallible;
}

impl InputPin for LabelButton {
    fn is_high(&mut self) -> Result<bool, Self::Error> {
        Ok(PRESSED.load(Ordering::Relaxed))
    }
    fn is_low(&mut self) -> Result<bool, Self::Error> {
        Ok(!PRESSED.load(Ordering::Relaxed))
    }
}

/// An LED QEMU does not have: lights nothing.
pub struct Absent;

impl ErrorType for Absent {
    type Error = core::convert::Infallible;
}

impl OutputPin for Absent {
    fn set_low(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
    fn set_high(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// The label button.
pub type Button = LabelButton;
/// The LED lit while the new class is recognised.
pub type Led = Absent;
/// The flash holding the learned head's two slots from offset 0.
pub type HeadFlash = SemihostingFlash;

/// The button, the LED and the head's flash.
pub fn take() -> Result<(Button, Led, HeadFlash), AppError> {
    let flash = SemihostingFlash::open(FLASH_FILE, 2 * SLOT_BYTES as usize).map_err(|_| {
        defmt::error!("cannot open the flash image tinyres-flash.bin");
        AppError::Engine(tinyres_core::Error::Storage { operation: "open" })
    })?;
    Ok((LabelButton, Absent, flash))
}

/// QEMU always exits through semihosting.
pub fn before_exit() {}
