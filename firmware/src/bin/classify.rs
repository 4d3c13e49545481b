//! Classifies the images QEMU loaded, one defmt line each, then exits.
//!
//! Output (`defmt::println!`, always on): `image=I label=L class=C ticks=T
//! output_crc=X` (Cortex-M: core-clock ticks) or `... instructions=N ...` (Cortex-A:
//! retired instructions) per image, counting the inference alone, and the CRC-32 of
//! the output tensor's raw bytes (the host compares them with its own engine's), then
//! `done count=N`.
//!
//! Before that, image 0 runs once more with a counter reading after each step (the
//! input, then every layer): `step=S ticks=T` lines, which `tinyres run --profile`
//! turns into a per-layer report. Each step's count includes one counter read (a
//! few instructions); the per-image counts above are taken without them, except on
//! Cortex-A, whose 32-bit counter is read after every layer (see `timed_run`).
#![no_std]
#![no_main]

use tinyres_core::{crc32, Arena, Error, Interpreter, Model};
use tinyres_firmware::{
    counter_elapsed, counter_read, counter_start, exit, image_region, model_partition, stack_paint,
    stack_used, static_ram, Images, ARENA_BYTES, COUNTER,
};

#[cfg(target_arch = "arm")]
#[cortex_m_rt::entry]
fn main() -> ! {
    static mut ARENA: Arena<ARENA_BYTES> = Arena::new();
    stack_paint();
    counter_start();
    exit(classify_all(ARENA.as_mut_slice()))
}

/// Called by the boot code with a stack of the arena and 1 MiB (aarch64.ld), which
/// holds the arena.
#[cfg(target_arch = "aarch64")]
#[no_mangle]
extern "C" fn main() -> ! {
    stack_paint();
    let mut arena: Arena<ARENA_BYTES> = Arena::new();
    counter_start();
    exit(classify_all(arena.as_mut_slice()))
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
    if !profile(&mut interpreter, &images) {
        return false;
    }
    for i in 0..images.len() {
        let Some((pixels, label)) = images.get(i) else {
            return false;
        };
        let (class, elapsed) = timed_run(&mut interpreter, pixels);
        match class {
            Ok(class) => defmt::println!(
                "image={=usize} label={=u8} class={=usize} {=str}={=u64} output_crc={=u32:#x}",
                i,
                label,
                class,
                COUNTER,
                elapsed,
                interpreter.output_bytes().map_or(0, crc32)
            ),
            Err(e) => {
                defmt::error!("image {}: {}", i, e);
                return false;
            }
        }
    }
    defmt::println!(
        "done count={=usize} static_ram={=usize} stack={=usize}",
        images.len(),
        static_ram(),
        stack_used()
    );
    true
}

/// Runs one image and counts its ticks or instructions. The Cortex-A counter is 32 bits
/// (4.3 G instructions; an ImageNet ResNet-18 in int8 takes 6.7 G there): on it the
/// count is summed layer by layer, exact while each layer stays under 2^32 (for a
/// counter read per layer, a few instructions each). Elsewhere the counter is read
/// before and after.
fn timed_run(interpreter: &mut Interpreter<'_, '_>, pixels: &[u8]) -> (Result<usize, Error>, u64) {
    if cfg!(target_arch = "aarch64") {
        let mut total = 0;
        let mut last = counter_read();
        let mut add_since_last = || {
            let now = counter_read();
            total += counter_elapsed(last, now);
            last = now;
        };
        let class = interpreter.run_observed(pixels, |_| add_since_last());
        add_since_last();
        (class, total)
    } else {
        let start = counter_read();
        let class = interpreter.run(pixels);
        (class, counter_elapsed(start, counter_read()))
    }
}

/// Steps recorded per inference: the input and up to 255 layers (the plain and
/// residual 152-layer networks have fewer).
const PROFILE_STEPS: usize = 256;

/// Runs image 0 with a counter reading after every step and logs each step's count.
/// The readings are kept as their low 32 bits (1 KiB for 256 steps): differences
/// taken with wrapping arithmetic are exact while a step stays under 2^32 ticks.
fn profile(interpreter: &mut Interpreter<'_, '_>, images: &Images<'_>) -> bool {
    let Some((pixels, _)) = images.get(0) else {
        return true;
    };
    let mut marks: heapless::Vec<u32, PROFILE_STEPS> = heapless::Vec::new();
    let mut truncated = false;
    let start = counter_read() as u32;
    let result = interpreter.run_observed(pixels, |_| {
        truncated |= marks.push(counter_read() as u32).is_err();
    });
    if let Err(e) = result {
        defmt::error!("image 0: {}", e);
        return false;
    }
    let mut last = start;
    for (step, &mark) in marks.iter().enumerate() {
        defmt::println!(
            "step={=usize} {=str}={=u32}",
            step,
            COUNTER,
            mark.wrapping_sub(last)
        );
        last = mark;
    }
    if truncated {
        defmt::println!("profile truncated steps={=usize}", PROFILE_STEPS);
    }
    true
}
