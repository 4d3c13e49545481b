//! On-device learning: restores the learned head from flash (under QEMU a host file,
//! `tinyres-flash.bin`, through semihosting; on the nRF52840 its last two pages),
//! learns from the leading training images of the image region if there are any,
//! saves the head, then classifies the remaining images with it.
//!
//! Learning is `App::finetune` with `FINETUNE_EPOCHS` passes of SGD over the
//! training images.
//!
//! Output: `restored none` or `restored slot=S seq=N`; `saved slot=S seq=N` after
//! learning; `image=I label=L class=C ticks=T` (or `instructions=`) per test image;
//! `done count=N`.
#![no_std]
#![no_main]

use tinyres_core::Arena;
use tinyres_firmware::app::{FirmwareError, Head, FINETUNE_EPOCHS};
use tinyres_firmware::{
    counter_elapsed, counter_read, counter_start, exit, open_app, report, stack_paint, stack_used,
    static_ram, ARENA_BYTES, COUNTER,
};

#[cfg(target_arch = "arm")]
#[cortex_m_rt::entry]
fn main() -> ! {
    static mut ARENA: Arena<ARENA_BYTES> = Arena::new();
    static mut HEAD: Head = Head::EMPTY;
    stack_paint();
    counter_start();
    exit(report("finetune", finetune(ARENA.as_mut_slice(), HEAD)))
}

/// Called by the boot code with a stack of the arena and 1 MiB (aarch64.ld), which
/// holds the arena.
#[cfg(target_arch = "aarch64")]
#[no_mangle]
extern "C" fn main() -> ! {
    stack_paint();
    let mut arena: Arena<ARENA_BYTES> = Arena::new();
    let mut head = Head::EMPTY;
    counter_start();
    exit(report(
        "finetune",
        finetune(arena.as_mut_slice(), &mut head),
    ))
}

fn finetune(arena: &mut [u8], head: &mut Head) -> Result<(), FirmwareError> {
    // Borrowed where `open_app` returned it: moving the 0.9 KiB app out of the
    // `Result` would keep a second copy on the stack.
    let mut opened = open_app(arena, head);
    let (app, images) = opened.as_mut().map_err(|e| *e)?;

    let train = images.train_count();
    if train > 0 {
        let class = app.finetune(train, FINETUNE_EPOCHS, |i| images.get(i))?;
        let saved = app.save()?;
        defmt::println!(
            "saved slot={=u32} seq={=u32} class={=usize}",
            saved.slot,
            saved.sequence,
            class
        );
    }

    for i in train..images.len() {
        let (pixels, label) = images.get(i).ok_or(FirmwareError::NoFrame { index: i })?;
        let start = counter_read();
        let class = app.classify(pixels)?;
        let elapsed = counter_elapsed(start, counter_read());
        defmt::println!(
            "image={=usize} label={=u8} class={=usize} {=str}={=u64}",
            i - train,
            label,
            class,
            COUNTER,
            elapsed
        );
    }
    defmt::println!(
        "done count={=usize} static_ram={=usize} stack={=usize}",
        images.len() - train,
        static_ram(),
        stack_used()
    );
    Ok(())
}
