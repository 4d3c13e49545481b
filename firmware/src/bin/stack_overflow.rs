//! Overflows its stack on purpose: the tests check that the overflow stops the
//! firmware with a fault that its handler logs, never overwriting its static data
//! (Cortex-M: the stack at the bottom of RAM, firmware/build.rs; Cortex-A: a watched
//! guard page below the stack, src/aarch64_support.rs).
#![no_std]
#![no_main]

use tinyres_firmware::exit;

/// Recurses with a kilobyte of frame per call until the stack runs out.
#[inline(never)]
fn deeper(depth: u32) -> u32 {
    let frame = core::hint::black_box([depth as u8; 1024]);
    if depth == u32::MAX {
        return 0;
    }
    deeper(depth + 1).wrapping_add(u32::from(frame[depth as usize % 1024]))
}

#[cfg(target_arch = "arm")]
#[cortex_m_rt::entry]
fn main() -> ! {
    defmt::println!("recursing");
    let reached = deeper(0);
    defmt::println!("returned {=u32}: the stack did not overflow", reached);
    exit(false)
}

/// Called by the boot code (aarch64.ld).
#[cfg(target_arch = "aarch64")]
#[no_mangle]
extern "C" fn main() -> ! {
    defmt::println!("recursing");
    let reached = deeper(0);
    defmt::println!("returned {=u32}: the stack did not overflow", reached);
    exit(false)
}
