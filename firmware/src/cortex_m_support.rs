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

/// Bytes at the top of the stack region kept for the exception handlers (the main
/// stack, MSP): the program runs on the process stack (PSP) below them. An overflow of
/// the process stack runs off the start of RAM; the fault it raises cannot be stacked
/// there, and is taken on the main stack, which is intact: the handler logs it.
const HANDLER_STACK: u32 = 1024;

// Before RAM is initialised (cortex-m-rt calls `__pre_init` first thing, with nothing
// on the stack): the process stack starts `HANDLER_STACK` bytes below the top of the
// stack region, and Thread mode uses it (CONTROL.SPSEL); the main stack keeps the
// top for the handlers. Registers only; ARMv6-M has all of it.
core::arch::global_asm!(
    ".section .text.__pre_init, \"ax\"",
    ".global __pre_init",
    ".type __pre_init, %function",
    ".thumb_func",
    "__pre_init:",
    "ldr r0, =_stack_start",
    "msr msp, r0",
    "ldr r1, ={handler}",
    "subs r0, r0, r1",
    "msr psp, r0",
    "movs r0, #2",
    "msr control, r0",
    "isb",
    "bx lr",
    handler = const HANDLER_STACK,
);

/// A fault: logged, and QEMU exits with failure. A frame below the stack region is a
/// stack overflow: its registers could not be saved, so only the stack pointer is
/// told.
#[exception]
unsafe fn HardFault(frame: &ExceptionFrame) -> ! {
    let sp = frame as *const ExceptionFrame as usize;
    let (bottom, _) = stack_bounds();
    if sp < bottom + core::mem::size_of::<ExceptionFrame>() {
        defmt::error!(
            "HardFault: stack overflow (the stack pointer {=usize:#x} reached the bottom of the stack, {=usize:#x})",
            sp,
            bottom
        );
    } else {
        defmt::error!("HardFault at pc={=u32:#x}", frame.pc());
    }
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
    /// The top of the stack region, below the static data: the handlers' stack above,
    /// the program's below.
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

/// The program's (process) stack's extent: lowest address (the start of RAM) and top
/// (below the handlers' stack).
pub fn stack_bounds() -> (usize, usize) {
    // Only the addresses of the linker symbols are taken; nothing is read.
    (
        core::ptr::addr_of!(_stack_end) as usize,
        core::ptr::addr_of!(_stack_start) as usize - HANDLER_STACK as usize,
    )
}

/// The program's stack pointer (the process stack's).
pub fn stack_pointer() -> usize {
    cortex_m::register::psp::read() as usize
}
