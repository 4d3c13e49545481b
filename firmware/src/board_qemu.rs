//! The QEMU boards: no button or LED (labels come with the images), and the learned
//! head's flash is a host file reached through semihosting
//! ([`crate::semihosting_flash`]), so it survives a reboot as real flash would.

use embedded_hal::digital::{ErrorType, InputPin, OutputPin};

use crate::app::{AppError, SLOT_BYTES};
use crate::semihosting_flash::SemihostingFlash;

/// The flash image's file name, in the directory QEMU runs in.
const FLASH_FILE: &core::ffi::CStr = c"tinyres-flash.bin";

/// A pin QEMU does not have: never pressed, lights nothing.
pub struct Absent;

impl ErrorType for Absent {
    type Error = core::convert::Infallible;
}

impl InputPin for Absent {
    fn is_high(&mut self) -> Result<bool, Self::Error> {
        Ok(false)
    }
    fn is_low(&mut self) -> Result<bool, Self::Error> {
        Ok(true)
    }
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
pub type Button = Absent;
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
    Ok((Absent, Absent, flash))
}

/// QEMU always exits through semihosting.
pub fn before_exit() {}
