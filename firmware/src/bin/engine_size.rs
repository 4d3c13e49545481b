//! A size probe, not an application: the smallest program that loads a blob and runs
//! an image with `tinyres-core`, so that `llvm-size` shows what the engine costs in
//! flash on each target (`.ci/engine-size`). It is linked but never run. On Cortex-M
//! the count includes cortex-m-rt's vector table and reset handler (under 1 KB).
#![no_std]
#![no_main]

use core::hint::black_box;
use core::panic::PanicInfo;

use tinyres_core::{Arena, Interpreter, Model};

#[repr(C, align(16))]
struct Aligned<T>(T);

/// Stands in for a model partition: `black_box` keeps the optimiser from knowing
/// its contents, so the whole parser, validator and every kernel are linked.
static BLOB: Aligned<[u8; 64]> = Aligned([0; 64]);

fn probe() -> ! {
    let mut arena: Arena<1024> = Arena::new();
    let mut probabilities = [0.0f32; 10];
    let mut features = [0.0f32; 64];
    let class = Model::parse(black_box(&BLOB.0[..]))
        .and_then(|model| Interpreter::new(model, arena.as_mut_slice()))
        .and_then(|mut interp| {
            let class = interp.classify(black_box(&[0u8; 3072]), &mut probabilities)?;
            interp.features(&mut features)?;
            Ok(class)
        });
    black_box((class.ok(), probabilities, features));
    loop {
        core::hint::spin_loop();
    }
}

#[cfg(target_arch = "arm")]
#[cortex_m_rt::entry]
fn main() -> ! {
    probe()
}

/// Entry point for the linker on targets without a runtime crate.
#[cfg(not(target_arch = "arm"))]
#[no_mangle]
pub extern "C" fn _start() -> ! {
    probe()
}

#[panic_handler]
fn panic(_: &PanicInfo) -> ! {
    loop {
        core::hint::spin_loop();
    }
}
