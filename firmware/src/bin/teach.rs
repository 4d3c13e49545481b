//! The interactive device loop, the product on a board: frame after frame from the
//! image region is classified (`App::step`); while the button is held, each frame is
//! labeled as the class being taught (collected, then imprinted as a new class, then
//! refining it); when the button is released after a burst of labels that changed
//! the head, the head is saved to flash, once per burst. The LED is lit while the new
//! class is recognised.
//!
//! On a board the frames cycle for ever. Under QEMU there is no button: the image
//! region's labels press it (a leading training frame labeled with the model's next
//! free class counts as a press), one pass runs, and the firmware exits.
//!
//! Output: `restored none` or `restored slot=S seq=N`; `labeled frame=I ...` per label
//! event; `saved slot=S seq=N class=C` after a burst; `image=I label=L class=C ticks=T`
//! per frame after the training frames; `done count=N`.
#![no_std]
#![no_main]

use tinyres_core::Arena;
use tinyres_firmware::app::{FirmwareError, Head, Labeled};
use tinyres_firmware::{
    board, counter_elapsed, counter_read, counter_start, exit, open_app, report, stack_paint,
    stack_used, static_ram, BoardApp, ARENA_BYTES, COUNTER,
};

#[cfg(target_arch = "arm")]
#[cortex_m_rt::entry]
fn main() -> ! {
    static mut ARENA: Arena<ARENA_BYTES> = Arena::new();
    static mut HEAD: Head = Head::EMPTY;
    stack_paint();
    counter_start();
    exit(report("teach", teach(ARENA.as_mut_slice(), HEAD)))
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
    exit(report("teach", teach(arena.as_mut_slice(), &mut head)))
}

fn teach(arena: &mut [u8], head: &mut Head) -> Result<(), FirmwareError> {
    // Borrowed where `open_app` returned it: moving the 0.9 KiB app out of the
    // `Result` would keep a second copy on the stack.
    let mut opened = open_app(arena, head);
    let (app, images) = opened.as_mut().map_err(|e| *e)?;
    let train = images.train_count();
    // Under QEMU, training frames with this label press the button: the model's next
    // free class, as the head was restored (the class being taught keeps its label
    // once it has been added).
    let taught = app.head().num_classes();
    let mut unsaved_labels = false;
    loop {
        for i in 0..images.len() {
            let (pixels, label) = images.get(i).ok_or(FirmwareError::NoFrame { index: i })?;
            board::press_for_label(i < train && usize::from(label) == taught);
            let start = counter_read();
            let step = app.step(pixels)?;
            let elapsed = counter_elapsed(start, counter_read());
            if let Some(labeled) = step.labeled {
                defmt::println!("labeled frame={=usize} {}", i, labeled);
                // Collecting the first examples leaves the head as it was.
                unsaved_labels |= !matches!(labeled, Labeled::Collected { .. });
            } else if unsaved_labels {
                save(app)?;
                unsaved_labels = false;
            }
            if i >= train {
                defmt::println!(
                    "image={=usize} label={=u8} class={=usize} {=str}={=u64}",
                    i - train,
                    label,
                    step.class,
                    COUNTER,
                    elapsed
                );
            }
        }
        if unsaved_labels {
            save(app)?;
            unsaved_labels = false;
        }
        if !board::FRAMES_CYCLE {
            break;
        }
    }
    defmt::println!(
        "done count={=usize} static_ram={=usize} stack={=usize}",
        images.len() - train,
        static_ram(),
        stack_used()
    );
    Ok(())
}

fn save(app: &mut BoardApp<'_, '_>) -> Result<(), FirmwareError> {
    let saved = app.save()?;
    defmt::println!(
        "saved slot={=u32} seq={=u32} class={=usize}",
        saved.slot,
        saved.sequence,
        app.new_class().unwrap_or(0)
    );
    Ok(())
}
