//! Classifies the images QEMU loaded, one defmt line each, then exits.
//!
//! Output (`defmt::println!`, always on): `image=I label=L class=C ticks=T` per image
//! and `done count=N`. `ticks` are core-clock ticks of the inference alone.
#![no_std]
#![no_main]

use cortex_m_rt::{entry, exception, ExceptionFrame};
use defmt_semihosting as _;
use tinyres_core::{Arena, Interpreter, Model};
use tinyres_firmware::cortex_m_support::{exit, start_tick_counter, ticks};
use tinyres_firmware::{image_region, model_partition, Images, ARENA_BYTES};

#[entry]
fn main() -> ! {
    static mut ARENA: Arena<ARENA_BYTES> = Arena::new();
    let Some(peripherals) = cortex_m::Peripherals::take() else {
        defmt::error!("peripherals already taken");
        exit(false);
    };
    start_tick_counter(peripherals.SYST);
    exit(classify_all(ARENA.as_mut_slice()))
}

fn classify_all(arena: &mut [u8]) -> bool {
    let model = match Model::parse(model_partition()) {
        Ok(model) => model,
        Err(e) => {
            defmt::error!("model: {}", e);
            return false;
        }
    };
    let images = match Images::parse(image_region()) {
        Ok(images) => images,
        Err(e) => {
            defmt::error!("images: {}", e);
            return false;
        }
    };
    let mut interpreter = match Interpreter::new(model, arena) {
        Ok(i) => i,
        Err(e) => {
            defmt::error!("arena: {}", e);
            return false;
        }
    };
    for i in 0..images.len() {
        let Some((pixels, label)) = images.get(i) else {
            return false;
        };
        let start = ticks();
        let class = interpreter.run(pixels);
        let elapsed = ticks() - start;
        match class {
            Ok(class) => defmt::println!(
                "image={=usize} label={=u8} class={=usize} ticks={=u64}",
                i,
                label,
                class,
                elapsed
            ),
            Err(e) => {
                defmt::error!("image {}: {}", i, e);
                return false;
            }
        }
    }
    defmt::println!("done count={=usize}", images.len());
    true
}

#[exception]
unsafe fn HardFault(frame: &ExceptionFrame) -> ! {
    defmt::error!("HardFault at pc={=u32:#x}", frame.pc());
    exit(false)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    defmt::error!("panic: {}", defmt::Display2Format(info));
    exit(false)
}
