//! The nRF52840 (nRF52840-DK): button 1 (P0.11) labels, LED 1 (P0.13) shows the new
//! class, both active low; the learned head lives in the last two 4 KiB flash pages,
//! written through the NVMC flash controller (`nrf52840-hal`'s `NorFlash`). defmt goes
//! out over RTT; the model and images are the flash partitions `tinyres flash` writes.

use nrf52840_hal::gpio::{p0, Input, Level, Output, Pin, PullUp, PushPull};
use nrf52840_hal::nvmc::Nvmc;
use nrf52840_hal::pac;
use tinyres_core::app::ActiveLow;

use crate::app::{AppError, SLOT_BYTES};
use crate::{HEAD_STORE_ADDRESS, HEAD_STORE_BYTES};

const _: () = assert!(HEAD_STORE_BYTES == 2 * SLOT_BYTES as usize);

/// The frames cycle for ever: the device keeps classifying (and learning).
pub const FRAMES_CYCLE: bool = true;

/// Nothing: on a board a person presses the button (QEMU's boards press it from the
/// image labels).
pub fn press_for_label(_: bool) {}

/// Button 1: pressed marks the frame as an example of the class being taught.
pub type Button = ActiveLow<Pin<Input<PullUp>>>;
/// LED 1: lit while the new class is recognised.
pub type Led = ActiveLow<Pin<Output<PushPull>>>;
/// The flash holding the learned head's two slots from offset 0.
pub type HeadFlash = Nvmc<pac::NVMC>;

/// The button, the LED and the head's flash (once: an error the second time).
pub fn take() -> Result<(Button, Led, HeadFlash), AppError> {
    let Some(peripherals) = pac::Peripherals::take() else {
        defmt::error!("board peripherals already taken");
        return Err(AppError::Pin);
    };
    let port = p0::Parts::new(peripherals.P0);
    let button = ActiveLow(port.p0_11.into_pullup_input().degrade());
    let led = ActiveLow(port.p0_13.into_push_pull_output(Level::High).degrade());
    // SAFETY: HEAD_STORE_ADDRESS..+HEAD_STORE_BYTES is the last two pages of the
    // nRF52840's flash, outside the firmware (memory.x ends the code at 256 KiB) and
    // the model and image partitions; `Peripherals::take` succeeding above means this
    // runs once, so no other reference to these pages exists.
    let store =
        unsafe { core::slice::from_raw_parts_mut(HEAD_STORE_ADDRESS as *mut u8, HEAD_STORE_BYTES) };
    Ok((button, led, Nvmc::new(peripherals.NVMC, store)))
}

/// Without a debugger there is nobody to exit to (a semihosting call would fault):
/// park the core. With one (`probe-rs run`), semihosting's exit reports the status.
pub fn before_exit() {
    if !cortex_m::peripheral::DCB::is_debugger_attached() {
        loop {
            cortex_m::asm::wfi();
        }
    }
}
