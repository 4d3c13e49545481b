//! tinyres-core in a plain cortex-m-rt firmware: a model compiled into the binary
//! classifies a frame. `cargo run --release` runs it in QEMU.
#![no_std]
#![no_main]

use cortex_m_rt::entry;
use semihosting::{println, process};
use tinyres_core::{include_model, Arena, Error, Interpreter, Model};

/// The model: any blob from `tinyres compile`, 16-byte aligned in flash.
static MODEL: &[u8] = include_model!("../../../core/tests/fixtures/bottleneck-int8.trm");

/// Classifies one frame of raw `u8` pixels (height × width × channels, channels last).
fn classify(arena: &mut [u8], frame: &[u8]) -> Result<usize, Error> {
    let model = Model::parse(MODEL)?; // every field checked: Err, never a panic
    Interpreter::new(model, arena)?.run(frame) // Err if the arena is too small
}

#[entry]
fn main() -> ! {
    // At least the blob's arena (`tinyres inspect` prints it): static RAM, not stack.
    static mut ARENA: Arena<{ 4 * 1024 }> = Arena::new();
    // A frame from your camera or sensor; here a fixed 8×8 RGB gradient.
    let frame: [u8; 8 * 8 * 3] = core::array::from_fn(|i| (i * 5 % 256) as u8);
    match classify(ARENA.as_mut_slice(), &frame) {
        Ok(class) => {
            println!("class {class}");
            process::exit(0)
        }
        Err(e) => {
            println!("error: {e}");
            process::exit(1)
        }
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    process::exit(2)
}
