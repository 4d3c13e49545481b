//! Cortex-M: deterministic instruction counting with SysTick under `qemu -icount`.

use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m::peripheral::SYST;
use cortex_m_rt::{exception, ExceptionFrame};

/// What [`counter_read`] counts: core-clock ticks, which the host converts to
/// instructions (under `qemu -icount shift=N` the clock advances 2^N ns per
/// instruction; the mps2/mps3 core clock is 25 MHz).
#[cfg(not(feature = "nrf52840"))]
pub const COUNTER: &str = "ticks";
/// What [`counter_read`] counts: on a real core, SysTick on the core clock counts
/// CPU cycles.
#[cfg(feature = "nrf52840")]
pub const COUNTER: &str = "cycles";

/// SysTick wraps (24-bit counter, reload 2^24 − 1).
static WRAPS: AtomicU32 = AtomicU32::new(0);
const RELOAD: u32 = 0x00FF_FFFF;

/// A fault: logged with the faulting address, and QEMU exits with failure.
#[exception]
unsafe fn HardFault(frame: &ExceptionFrame) -> ! {
    defmt::error!("HardFault at pc={=u32:#x}", frame.pc());
    crate::exit(false)
}

#[exception]
fn SysTick() {
    // A load and a store, not `fetch_add`: ARMv6-M has no atomic read-modify-write,
    // and this handler is the only writer.
    WRAPS.store(WRAPS.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

/// Starts SysTick on the core clock, free running, counting wraps in its interrupt.
pub fn counter_start() {
    let Some(peripherals) = cortex_m::Peripherals::take() else {
        return;
    };
    // An ARMv6-M build (the one Arm target without atomic read-modify-write) runs on an
    // ARMv7-M core in QEMU, which would allow unaligned word and halfword accesses that
    // a Cortex-M0+ faults on: trap them, as the M0+ would (CCR.UNALIGN_TRP).
    #[cfg(not(target_has_atomic = "32"))]
    // SAFETY: sets one trap bit of the configuration register, before any code that
    // could depend on the others.
    unsafe {
        peripherals.SCB.ccr.modify(|ccr| ccr | 1 << 3);
    }
    let mut syst = peripherals.SYST;
    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(RELOAD);
    syst.clear_current();
    syst.enable_interrupt();
    syst.enable_counter();
}

/// Core clock ticks since [`counter_start`].
pub fn counter_read() -> u64 {
    loop {
        let before = WRAPS.load(Ordering::Relaxed);
        let current = SYST::get_current();
        if WRAPS.load(Ordering::Relaxed) == before {
            return u64::from(before) * (u64::from(RELOAD) + 1) + u64::from(RELOAD - current);
        }
    }
}

/// Ticks between two [`counter_read`]s.
pub fn counter_elapsed(start: u64, end: u64) -> u64 {
    end - start
}

extern "C" {
    /// Lowest stack address: the start of RAM (firmware/build.rs's memory.x).
    static _stack_end: u32;
    /// Initial stack pointer: the top of the stack region, below the static data.
    static _stack_start: u32;
    /// Start of .data, the first static data, from cortex-m-rt's link.x.
    static __sdata: u32;
    /// End of the static data (.data, .bss, .uninit), from cortex-m-rt's link.x.
    static __sheap: u32;
}

/// Bytes of RAM taken by static data (.data, .bss: the arena included).
pub fn static_ram() -> usize {
    // Only the addresses of the linker symbols are taken; nothing is read.
    core::ptr::addr_of!(__sheap) as usize - core::ptr::addr_of!(__sdata) as usize
}

/// The stack's extent: lowest address (the start of RAM) and top.
pub fn stack_bounds() -> (usize, usize) {
    // Only the addresses of the linker symbols are taken; nothing is read.
    (
        core::ptr::addr_of!(_stack_end) as usize,
        core::ptr::addr_of!(_stack_start) as usize,
    )
}

/// The current stack pointer.
pub fn stack_pointer() -> usize {
    cortex_m::register::msp::read() as usize
}
