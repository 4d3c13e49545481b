//! Cortex-A53 on QEMU `virt`: boot code, exception vectors that report and exit, a
//! guard page below the stack, a single-core critical section, and the PMU's
//! retired-instruction counter.

use core::arch::{asm, global_asm};

/// What [`counter_read`] counts: retired instructions (PMU event 0x08, exact under
/// `qemu -icount shift=0`).
pub const COUNTER: &str = "instructions";

// Boot: stack, FP/NEON on (Rust uses SIMD registers freely), .bss zeroed, vectors, the
// stack guard, main.
//
// The guard: with the MMU off nothing in RAM faults, so hardware watchpoint 0 watches
// the 4 KiB page below the stack (aarch64.ld) for stores from EL1 (DBGWCR0_EL1: MASK 12,
// BAS 0xFF, LSC store, PAC EL1, enabled), with debug exceptions on at EL1 (MDSCR_EL1
// MDE and KDE, the OS lock cleared, PSTATE.D clear). A store into it, as an overflowing
// stack makes, raises a watchpoint exception, which the vectors report.
global_asm!(
    r#"
    .section .text.boot, "ax"
    .global _start
_start:
    ldr x0, =__stack_top
    mov sp, x0
    mrs x0, CPACR_EL1
    orr x0, x0, #(3 << 20)
    msr CPACR_EL1, x0
    ldr x0, =tinyres_vectors
    msr VBAR_EL1, x0
    ldr x0, =__stack_guard
    msr DBGWVR0_EL1, x0
    ldr x0, =((12 << 24) | (0xff << 5) | (0b10 << 3) | (0b01 << 1) | 1)
    msr DBGWCR0_EL1, x0
    msr OSLAR_EL1, xzr
    mrs x0, MDSCR_EL1
    orr x0, x0, #(1 << 15)
    orr x0, x0, #(1 << 13)
    msr MDSCR_EL1, x0
    isb
    msr DAIFClr, #8
    isb
    ldr x0, =__bss_start
    ldr x1, =__bss_end
1:  cmp x0, x1
    b.hs 2f
    str xzr, [x0], #8
    b 1b
2:  bl main
3:  wfe
    b 3b

    .section .text.vectors, "ax"
    .balign 2048
tinyres_vectors:
    .set i, 0
    .rept 16
    .balign 128
    mov x0, #i
    b tinyres_exception_entry
    .set i, i + 1
    .endr
tinyres_exception_entry:
    mrs x1, ESR_EL1
    mrs x2, ELR_EL1
    mrs x3, FAR_EL1
    ldr x3, =__stack_top
    mov sp, x3
    bl tinyres_exception
"#
);

/// ESR_EL1's exception class of a watchpoint hit at the same exception level.
const WATCHPOINT: u64 = 0x35;

/// Any exception: this firmware enables no interrupts, so it is a fault; a watchpoint
/// hit is a store into the guard page below the stack, an overflow.
#[no_mangle]
extern "C" fn tinyres_exception(vector: u64, esr: u64, elr: u64, far: u64) -> ! {
    if esr >> 26 == WATCHPOINT {
        defmt::error!(
            "exception: stack overflow (a store at {=u64:#x}, in the guard page below the stack, from {=u64:#x})",
            far,
            elr
        );
    } else {
        defmt::error!(
            "exception: vector {=u64} ESR {=u64:#x} at {=u64:#x}",
            vector,
            esr,
            elr
        );
    }
    crate::exit(false)
}

struct SingleCore;
critical_section::set_impl!(SingleCore);

// SAFETY: one core runs and no interrupt is ever unmasked, so nothing can preempt a
// critical section: acquiring needs no state.
unsafe impl critical_section::Impl for SingleCore {
    unsafe fn acquire() -> critical_section::RawRestoreState {}
    unsafe fn release(_: critical_section::RawRestoreState) {}
}

/// Starts PMU event counter 0 on INST_RETIRED, counting at EL0 and EL1.
pub fn counter_start() {
    // SAFETY: writes to the PMU configuration registers only, at EL1 where they are
    // accessible; no memory is touched.
    unsafe {
        asm!(
            "msr PMEVTYPER0_EL0, {event}",
            "msr PMCNTENSET_EL0, {enable}",
            "msr PMCR_EL0, {control}",
            "isb",
            event = in(reg) 0x08u64,
            enable = in(reg) 1u64,
            control = in(reg) 0b11u64, // E: enable, P: reset event counters
            options(nomem, nostack)
        );
    }
}

/// Retired instructions since [`counter_start`], modulo 2^32 (the counter is 32 bits;
/// [`counter_elapsed`] is exact for intervals under 2^32 instructions).
pub fn counter_read() -> u64 {
    let value: u64;
    // SAFETY: reads a PMU counter register; no memory is touched.
    unsafe {
        asm!("isb", "mrs {value}, PMEVCNTR0_EL0", value = out(reg) value, options(nomem, nostack));
    }
    value
}

/// Instructions between two [`counter_read`]s.
pub fn counter_elapsed(start: u64, end: u64) -> u64 {
    u64::from((end as u32).wrapping_sub(start as u32))
}

extern "C" {
    /// Lowest stack address, from aarch64.ld.
    static __stack_bottom: u8;
    /// Initial stack pointer.
    static __stack_top: u8;
}

/// Bytes of RAM taken by static data: from the start of RAM to the stack, which
/// aarch64.ld places after it.
pub fn static_ram() -> usize {
    stack_bounds().0 - crate::RAM_ORIGIN
}

/// The stack's extent: lowest address and top.
pub fn stack_bounds() -> (usize, usize) {
    // Only the addresses of the linker symbols are taken; nothing is read.
    (
        core::ptr::addr_of!(__stack_bottom) as usize,
        core::ptr::addr_of!(__stack_top) as usize,
    )
}

/// The current stack pointer.
pub fn stack_pointer() -> usize {
    let sp: usize;
    // SAFETY: copies the stack pointer into a register; no memory is touched.
    unsafe {
        asm!("mov {sp}, sp", sp = out(reg) sp, options(nomem, nostack, preserves_flags));
    }
    sp
}
