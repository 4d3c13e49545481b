//! Checks the instruments and the kernels on the board itself.
//!
//! 1. The counter: a loop of known length (10^6 × `nop; subs; bne`, 3,000,000
//!    instructions) between two counter reads; the host converts the reading with the
//!    board's clock and must find 3,000,000 plus the few instructions of the reads
//!    (`calibration loop=3000000 ticks=T`, or `instructions=N` on Cortex-A).
//! 2. On Cortex-M, the cycle model's checks: short sequences whose cycles the core's
//!    Technical Reference Manual states exactly (ARMv7-M and later: pipelined loads, a
//!    load feeding the next load's address, an address computed by the instruction
//!    before, a store with a register offset after a load, LDM, a folded IT, MLA, SMLAD
//!    on DSP cores; an ARMv6-M build: loads, stores, LDM, MULS), each in a loop run for
//!    `TIMING_ITERATIONS` and twice that between two counter reads (`timing name=S
//!    iterations=N ticks=T`): the host subtracts the two, which leaves exactly the
//!    loop's body and its `subs; bne` per iteration (the reads cancel).
//! 3. The kernels: every kernel of `tinyres_core::arch` against the portable one in
//!    `tinyres_core::kernels`, bit for bit, on named edge cases (the ResNet-8 layers,
//!    windows at the column buffer's capacity and past it, extreme zero points, wrapping
//!    accumulators, every residual form) and on pseudo-random shapes and data, on this
//!    core's own instruction set. A case that Winograd filters apply to runs again
//!    with them (`arch::conv2d_i8_layer_with`), as a blob that carries them does. A
//!    mismatch logs the case and fails.
//!
//! Ends with `selftest kernel=NAME cases=N` and `done`.
#![no_std]
#![no_main]

use tinyres_core::arch;
use tinyres_core::kernels::{self, ConvShape, Requantize, Shortcut};
use tinyres_core::quant::{AddParams, AddTables};
use tinyres_core::winograd;
use tinyres_firmware::{counter_elapsed, counter_read, counter_start, exit, COUNTER};

/// Iterations of the calibration loop (three instructions each).
const CALIBRATION_ITERATIONS: u32 = 1_000_000;
/// Iterations of each timing sequence (run once, then twice as many).
#[cfg(target_arch = "arm")]
const TIMING_ITERATIONS: u32 = 1000;

/// Pseudo-random cases after the named ones.
const RANDOM_CASES: usize = 300;

/// Largest tensors a case may use (the ResNet-8 input layer: 32×32×16 out).
const MAX_INPUT: usize = 32 * 32 * 16;
const MAX_OUTPUT: usize = 32 * 32 * 16;
const MAX_WEIGHTS: usize = 68 * 3 * 3 * 68;
const MAX_CHANNELS: usize = 68;
/// Winograd filters of up to 16 × 66 channels (two channel blocks).
const MAX_WINOGRAD_BYTES: usize = winograd::filters_bytes(16, 66);

#[cfg(target_arch = "arm")]
#[cortex_m_rt::entry]
fn main() -> ! {
    counter_start();
    exit(selftest())
}

/// Called by the boot code with a stack of the arena and 1 MiB (aarch64.ld).
#[cfg(target_arch = "aarch64")]
#[no_mangle]
extern "C" fn main() -> ! {
    counter_start();
    exit(selftest())
}

fn selftest() -> bool {
    let start = counter_read();
    calibration_loop(CALIBRATION_ITERATIONS);
    let elapsed = counter_elapsed(start, counter_read());
    defmt::println!(
        "calibration loop={=u32} {=str}={=u64}",
        3 * CALIBRATION_ITERATIONS,
        COUNTER,
        elapsed
    );
    #[cfg(target_arch = "arm")]
    timings();
    let mut buffers = Buffers {
        input: [0; MAX_INPUT + 16],
        weights: [0; MAX_WEIGHTS + 16],
        winograd: [0; MAX_WINOGRAD_BYTES + 16],
        bias: [0; MAX_CHANNELS],
        multipliers: [0; MAX_CHANNELS],
        shifts: [0; MAX_CHANNELS],
        shortcut: [0; MAX_OUTPUT],
        reference: [0; MAX_OUTPUT],
        optimised: [0; MAX_OUTPUT],
        scratch: arch::ConvScratch::new(),
    };
    let mut rng = Rng(0x2545_F491);
    let mut cases = 0;
    // Every named case with aligned buffers, then one byte off.
    for skew in [0, 1] {
        for (i, case) in NAMED_CASES.iter().enumerate() {
            if !check_conv_i8(case, &mut buffers, &mut rng, i, skew) {
                return false;
            }
            cases += 1;
        }
    }
    for i in 0..RANDOM_CASES {
        let case = Case::random(&mut rng);
        if !check_conv_i8(&case, &mut buffers, &mut rng, NAMED_CASES.len() + i, i % 2) {
            return false;
        }
        cases += 1;
    }
    defmt::println!(
        "selftest kernel={=str} cases={=usize}",
        arch::CONV2D_I8_KERNEL,
        cases
    );
    defmt::println!("done");
    true
}

/// `iterations` × (`nop; subs; bne`): exactly three instructions per iteration.
#[inline(never)]
fn calibration_loop(iterations: u32) {
    // SAFETY: a register-only loop that ends when the counter reaches zero.
    #[cfg(target_arch = "arm")]
    unsafe {
        core::arch::asm!(
            "2:",
            "nop",
            "subs {n}, {n}, #1",
            "bne 2b",
            n = inout(reg) iterations => _,
            options(nomem, nostack),
        );
    }
    // SAFETY: as above.
    #[cfg(target_arch = "aarch64")]
    unsafe {
        core::arch::asm!(
            "2:",
            "nop",
            "subs {n:w}, {n:w}, #1",
            "b.ne 2b",
            n = inout(reg) iterations => _,
            options(nomem, nostack),
        );
    }
}

/// A timing sequence: its name and a loop of it run `iterations` times. Each loop
/// starts on a 32-byte boundary, so that it never straddles one of QEMU's 1 KiB
/// pages: QEMU ends a translation block at a page boundary, and the cycle model
/// estimated one cycle more per iteration for a folded-IT loop split there (seen on the
/// M3 when the firmware's layout moved the loop across 0x3400).
#[cfg(target_arch = "arm")]
type Timed = (&'static str, fn(u32, *mut u32));

/// The timing sequences of this build's instruction set. ARMv6-M (the one Arm target
/// without atomic read-modify-write) has no Thumb-2: its own, shorter set.
#[cfg(all(target_arch = "arm", target_has_atomic = "32"))]
const SEQUENCES: [Timed; 8] = [
    ("loads", timed::loads),
    ("load_use_address", timed::load_use_address),
    ("computed_address", timed::computed_address),
    ("store_after_load", timed::store_after_load),
    ("ldm", timed::ldm),
    ("folded_it", timed::folded_it),
    ("mla", timed::mla),
    ("smlad", timed::smlad),
];
#[cfg(all(target_arch = "arm", not(target_has_atomic = "32")))]
const SEQUENCES: [Timed; 4] = [
    ("loads", timed_v6m::loads),
    ("stores", timed_v6m::stores),
    ("ldm", timed_v6m::ldm),
    ("muls", timed_v6m::muls),
];

/// Runs and logs every timing sequence (see the module's documentation).
#[cfg(target_arch = "arm")]
fn timings() {
    // Word 0 holds the buffer's own address (a pointer for the load-use chain); the
    // rest are data for the loads and the register-offset store.
    let mut buffer = [0u32; 8];
    buffer[0] = buffer.as_ptr() as u32;
    // The cores with the DSP extension (SMLAD) run one of these kernels.
    let dsp = matches!(arch::CONV2D_I8_KERNEL, "cortex-m-dsp" | "helium");
    for (name, sequence) in SEQUENCES {
        if name == "smlad" && !dsp {
            continue;
        }
        for iterations in [TIMING_ITERATIONS, 2 * TIMING_ITERATIONS] {
            let elapsed = time(sequence, iterations, buffer.as_mut_ptr());
            defmt::println!(
                "timing name={=str} iterations={=u32} {=str}={=u64}",
                name,
                iterations,
                COUNTER,
                elapsed
            );
        }
    }
}

/// The count of one run of `sequence`. Not inlined: both runs of a sequence go through
/// the same instructions around it, which cancel exactly in their difference.
#[cfg(target_arch = "arm")]
#[inline(never)]
fn time(sequence: fn(u32, *mut u32), iterations: u32, buffer: *mut u32) -> u64 {
    let start = counter_read();
    sequence(core::hint::black_box(iterations), buffer);
    counter_elapsed(start, counter_read())
}

/// The ARMv6-M timing sequences: each a loop of its body and `subs; bne`, `n` ≥ 1
/// times, in 16-bit instructions on low registers.
#[cfg(all(target_arch = "arm", not(target_has_atomic = "32")))]
mod timed_v6m {
    use core::arch::asm;

    /// Four loads: 2 each on the M0+ (no pipelining).
    #[inline(never)]
    pub fn loads(n: u32, buffer: *mut u32) {
        // SAFETY: reads the first four words of the caller's eight-word buffer.
        unsafe {
            asm!(
                ".p2align 5",
                "2:",
                "ldr r2, [r1]",
                "ldr r3, [r1, #4]",
                "ldr r2, [r1, #8]",
                "ldr r3, [r1, #12]",
                "subs r0, r0, #1",
                "bne 2b",
                inout("r0") n => _, in("r1") buffer, out("r2") _, out("r3") _,
                options(readonly, nostack),
            );
        }
    }

    /// Two stores: 2 each.
    #[inline(never)]
    pub fn stores(n: u32, buffer: *mut u32) {
        // SAFETY: writes words 4 and 5 of the buffer.
        unsafe {
            asm!(
                ".p2align 5",
                "2:",
                "str r0, [r1, #16]",
                "str r0, [r1, #20]",
                "subs r0, r0, #1",
                "bne 2b",
                inout("r0") n => _, in("r1") buffer,
                options(nostack),
            );
        }
    }

    /// A copy of the pointer, then LDM of three registers with writeback: 1 + (1 + 3).
    #[inline(never)]
    pub fn ldm(n: u32, buffer: *mut u32) {
        // SAFETY: reads the first three words of the buffer.
        unsafe {
            asm!(
                ".p2align 5",
                "2:",
                "mov r2, r1",
                "ldm r2!, {{r3, r4, r5}}",
                "subs r0, r0, #1",
                "bne 2b",
                inout("r0") n => _, in("r1") buffer,
                out("r2") _, out("r3") _, out("r4") _, out("r5") _,
                options(readonly, nostack),
            );
        }
    }

    /// Four multiplies: 1 each with the single-cycle multiplier.
    #[inline(never)]
    pub fn muls(n: u32, _buffer: *mut u32) {
        // SAFETY: registers only.
        unsafe {
            asm!(
                "movs r2, #3",
                "movs r3, #1",
                ".p2align 5",
                "2:",
                "muls r3, r2, r3",
                "muls r3, r2, r3",
                "muls r3, r2, r3",
                "muls r3, r2, r3",
                "subs r0, r0, #1",
                "bne 2b",
                inout("r0") n => _, out("r2") _, out("r3") _,
                options(nomem, nostack),
            );
        }
    }
}

/// The timing sequences: each a loop of its body and `subs; bne`, `n` ≥ 1 times.
#[cfg(all(target_arch = "arm", target_has_atomic = "32"))]
mod timed {
    use core::arch::asm;

    /// Four loads in a row: the first 2 cycles, the others 1 (pipelined).
    #[inline(never)]
    pub fn loads(n: u32, buffer: *mut u32) {
        // SAFETY: reads the first four words of the caller's eight-word buffer.
        unsafe {
            asm!(
                ".p2align 5",
                "2:",
                "ldr {a}, [{p}]",
                "ldr {b}, [{p}, #4]",
                "ldr {a}, [{p}, #8]",
                "ldr {b}, [{p}, #12]",
                "subs {n}, {n}, #1",
                "bne 2b",
                n = inout(reg) n => _, p = in(reg) buffer, a = out(reg) _, b = out(reg) _,
                options(readonly, nostack),
            );
        }
    }

    /// A load whose result is the next load's address: 2 + 2.
    #[inline(never)]
    pub fn load_use_address(n: u32, buffer: *mut u32) {
        // SAFETY: word 0 of the buffer holds the buffer's own address.
        unsafe {
            asm!(
                ".p2align 5",
                "2:",
                "ldr {a}, [{p}]",
                "ldr {b}, [{a}]",
                "subs {n}, {n}, #1",
                "bne 2b",
                n = inout(reg) n => _, p = in(reg) buffer, a = out(reg) _, b = out(reg) _,
                options(readonly, nostack),
            );
        }
    }

    /// An address computed by the instruction before the load: 1 + 2 + 1 (no
    /// forwarding to the address).
    #[inline(never)]
    pub fn computed_address(n: u32, buffer: *mut u32) {
        // SAFETY: reads word 1 of the buffer.
        unsafe {
            asm!(
                ".p2align 5",
                "2:",
                "add {a}, {p}, #4",
                "ldr {b}, [{a}]",
                "subs {n}, {n}, #1",
                "bne 2b",
                n = inout(reg) n => _, p = in(reg) buffer, a = out(reg) _, b = out(reg) _,
                options(readonly, nostack),
            );
        }
    }

    /// A store with a register offset right after a load: 2 + 1.
    #[inline(never)]
    pub fn store_after_load(n: u32, buffer: *mut u32) {
        // SAFETY: reads word 1 and writes word 2 (offset 8) of the buffer.
        unsafe {
            asm!(
                "movs {o}, #8",
                ".p2align 5",
                "2:",
                "ldr {a}, [{p}, #4]",
                "str {a}, [{p}, {o}]",
                "subs {n}, {n}, #1",
                "bne 2b",
                n = inout(reg) n => _, p = in(reg) buffer, a = out(reg) _, o = out(reg) _,
                options(nostack),
            );
        }
    }

    /// LDM of four registers: 1 + 4.
    #[inline(never)]
    pub fn ldm(n: u32, buffer: *mut u32) {
        // SAFETY: reads the first four words of the buffer.
        unsafe {
            asm!(
                ".p2align 5",
                "2:",
                "ldm {p}, {{r2, r3, r4, r5}}",
                "subs {n}, {n}, #1",
                "bne 2b",
                n = inout(reg) n => _, p = in(reg) buffer,
                out("r2") _, out("r3") _, out("r4") _, out("r5") _,
                options(readonly, nostack),
            );
        }
    }

    /// An IT after a 16-bit instruction is folded into it: CMP 1, IT 0, ADD 1.
    #[inline(never)]
    pub fn folded_it(n: u32, _buffer: *mut u32) {
        // SAFETY: registers only.
        unsafe {
            asm!(
                "movs r1, #0",
                ".p2align 5",
                "2:",
                // Low registers: 16-bit encodings.
                "cmp r0, r0",
                "it eq",
                "addeq r1, r1, #1",
                "subs r0, r0, #1",
                "bne 2b",
                inout("r0") n => _, out("r1") _,
                options(nomem, nostack),
            );
        }
    }

    /// Four multiply-accumulates: 1 each on the M4, 2 on the M3.
    #[inline(never)]
    pub fn mla(n: u32, _buffer: *mut u32) {
        // SAFETY: registers only.
        unsafe {
            asm!(
                "movs {x}, #3",
                ".p2align 5",
                "2:",
                "mla {a}, {x}, {x}, {a}",
                "mla {a}, {x}, {x}, {a}",
                "mla {a}, {x}, {x}, {a}",
                "mla {a}, {x}, {x}, {a}",
                "subs {n}, {n}, #1",
                "bne 2b",
                n = inout(reg) n => _, a = inout(reg) 0u32 => _, x = out(reg) _,
                options(nomem, nostack),
            );
        }
    }

    /// Four SMLADs: 1 each. Encoded (SMLAD r3, r4, r5, r3): the ARMv7-M assembler of
    /// the M3's build does not take the DSP instructions, and only DSP cores run this.
    #[inline(never)]
    pub fn smlad(n: u32, _buffer: *mut u32) {
        // SAFETY: registers only; called on cores with the DSP extension.
        unsafe {
            asm!(
                ".p2align 5",
                "2:",
                ".inst.w 0xfb243305",
                ".inst.w 0xfb243305",
                ".inst.w 0xfb243305",
                ".inst.w 0xfb243305",
                "subs {n}, {n}, #1",
                "bne 2b",
                n = inout(reg) n => _,
                inout("r3") 0u32 => _, in("r4") 0x0001_0002u32, in("r5") 0x0003_0004u32,
                options(nomem, nostack),
            );
        }
    }
}

/// xorshift32: deterministic data for the cases.
struct Rng(u32);

impl Rng {
    fn next(&mut self) -> u32 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x
    }

    /// Uniform in `low..=high`.
    fn range(&mut self, low: i32, high: i32) -> i32 {
        let span = (high - low) as u32 + 1;
        low + (self.next() % span) as i32
    }

    fn size(&mut self, low: usize, high: usize) -> usize {
        self.range(low as i32, high as i32) as usize
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Residual {
    None,
    InPlace,
    /// A separate shortcut tensor subsampled by `stride`, its channels placed after
    /// `channel_offset` zero channels (option A).
    Mapped {
        stride: usize,
        channel_offset: usize,
    },
}

/// One convolution to check.
#[derive(Clone, Copy)]
struct Case {
    in_h: usize,
    in_w: usize,
    in_c: usize,
    out_c: usize,
    kernel: usize,
    stride: usize,
    /// `[top, left, bottom, right]`.
    padding: [usize; 4],
    /// `None`: random.
    input_zero_point: Option<i32>,
    /// Bias magnitude: accumulators that wrap need large ones.
    bias_range: i32,
    relu: bool,
    residual: Residual,
}

const fn named(in_hw: usize, in_c: usize, out_c: usize, kernel: usize, stride: usize) -> Case {
    let pad = kernel / 2;
    Case {
        in_h: in_hw,
        in_w: in_hw,
        in_c,
        out_c,
        kernel,
        stride,
        padding: [pad, pad, pad, pad],
        input_zero_point: None,
        bias_range: 1 << 14,
        relu: true,
        residual: Residual::None,
    }
}

const NAMED_CASES: [Case; 24] = [
    // ResNet-8 (MLPerf Tiny): the 3-channel first layer, the 16-channel block with its
    // in-place residual, the strided 3×3 and its 1×1 projection, the 64-channel 3×3 at
    // the column buffer's capacity (576 taps).
    named(32, 3, 16, 3, 1),
    // The same with stride 2 (Helium reads both in place, nine bytes a kernel row).
    named(17, 3, 6, 3, 2),
    Case {
        residual: Residual::InPlace,
        ..named(32, 16, 16, 3, 1)
    },
    Case {
        padding: [0, 0, 1, 1],
        ..named(32, 16, 32, 3, 2)
    },
    Case {
        relu: false,
        ..named(32, 16, 32, 1, 2)
    },
    named(8, 64, 8, 3, 1),
    // Windows read in place (Helium) with pixels 128 bytes apart, and an odd number of
    // filters, which goes through the column buffer instead.
    named(9, 64, 4, 3, 2),
    named(8, 32, 5, 3, 1),
    // Past the column buffer: 3×3×68 = 612 taps (Cortex-M DSP: two kernel rows, then
    // one), and 3×3×18 = 162 staged bytes; 612 taps over two channel blocks, the
    // top and bottom rows all padding for some chunks.
    named(6, 68, 4, 3, 1),
    named(3, 68, 66, 3, 1),
    named(6, 18, 5, 3, 1),
    // The ImageNet ResNets' 3×3 layers over 128 and 512 channels (within the Cortex-A
    // column buffer, 4,608 taps; past the microcontrollers'), and past 4,608.
    named(4, 128, 2, 3, 1),
    named(3, 512, 2, 3, 1),
    named(3, 520, 1, 3, 1),
    // Zero points at both ends of int8, and a constant input at the zero point.
    Case {
        input_zero_point: Some(-128),
        ..named(5, 8, 3, 3, 1)
    },
    Case {
        input_zero_point: Some(127),
        ..named(5, 7, 3, 3, 2)
    },
    // Accumulators that wrap around i32.
    Case {
        bias_range: i32::MAX,
        ..named(4, 12, 6, 3, 1)
    },
    // One output column and one output channel (partners doubled).
    Case {
        in_w: 1,
        ..named(5, 4, 1, 3, 1)
    },
    // Option A: the shortcut subsampled by 2 into the last channels.
    Case {
        residual: Residual::Mapped {
            stride: 2,
            channel_offset: 4,
        },
        ..named(8, 8, 12, 3, 2)
    },
    Case {
        residual: Residual::Mapped {
            stride: 1,
            channel_offset: 0,
        },
        ..named(7, 5, 5, 3, 1)
    },
    // Winograd filters (the Cortex-M DSP kernel): ResNet-8's 32-channel block with its
    // identity shortcut; a sub-block and a half of filter pairs; two channel blocks.
    Case {
        residual: Residual::Mapped {
            stride: 1,
            channel_offset: 0,
        },
        ..named(16, 32, 16, 3, 1)
    },
    named(8, 16, 18, 3, 1),
    Case {
        relu: false,
        ..named(4, 16, 66, 3, 1)
    },
    // A kernel as large as the input, no padding.
    Case {
        padding: [0, 0, 0, 0],
        ..named(3, 16, 6, 3, 1)
    },
];

impl Case {
    fn random(rng: &mut Rng) -> Case {
        if rng.size(0, 3) == 0 {
            return Case::random_winograd(rng);
        }
        let kernel = rng.size(1, 3);
        let residual = match rng.size(0, 2) {
            0 => Residual::None,
            1 => Residual::InPlace,
            _ => Residual::Mapped {
                stride: rng.size(1, 2),
                channel_offset: 0,
            },
        };
        Case {
            in_h: rng.size(1, 9),
            in_w: rng.size(1, 9),
            in_c: rng.size(1, 24),
            out_c: rng.size(1, 9),
            kernel,
            stride: rng.size(1, 2),
            padding: [0; 4].map(|_| rng.size(0, kernel - 1)),
            input_zero_point: None,
            bias_range: if rng.size(0, 9) == 0 {
                i32::MAX
            } else {
                1 << 16
            },
            relu: rng.size(0, 1) == 1,
            residual,
        }
    }
}

impl Case {
    /// A shape that Winograd filters apply to (3×3, stride 1, 16 or 32 input
    /// channels, an even number of filters, output rows 4, 8 or 12 wide), its padding
    /// anything a 3×3 kernel allows.
    fn random_winograd(rng: &mut Rng) -> Case {
        let padding = [0; 4].map(|_| rng.size(0, 2));
        let out_w = 4 * rng.size(1, 3);
        Case {
            in_h: rng.size(1, 6),
            in_w: out_w + 2 - padding[1] - padding[3],
            in_c: 16 * rng.size(1, 2),
            out_c: 2 * rng.size(1, 8),
            padding,
            residual: match rng.size(0, 2) {
                0 => Residual::None,
                1 => Residual::InPlace,
                _ => Residual::Mapped {
                    stride: 1,
                    channel_offset: 0,
                },
            },
            bias_range: 1 << 16,
            relu: rng.size(0, 1) == 1,
            ..named(1, 16, 2, 3, 1)
        }
    }
}

/// 16-byte aligned, as the engine's arena and blob are; a case with `skew` 1 uses
/// the input and weights one byte further, to check the misaligned paths too.
#[repr(C, align(16))]
struct Buffers {
    input: [i8; MAX_INPUT + 16],
    weights: [i8; MAX_WEIGHTS + 16],
    winograd: [u8; MAX_WINOGRAD_BYTES + 16],
    bias: [i32; MAX_CHANNELS],
    multipliers: [i32; MAX_CHANNELS],
    shifts: [i32; MAX_CHANNELS],
    shortcut: [i8; MAX_OUTPUT],
    reference: [i8; MAX_OUTPUT],
    optimised: [i8; MAX_OUTPUT],
    /// The arch kernel's scratch, reused by every case as the engine reuses it for
    /// every layer: each case starts with what the previous one left there.
    scratch: arch::ConvScratch,
}

fn fill_i8(values: &mut [i8], rng: &mut Rng) {
    for v in values {
        *v = rng.next() as i8;
    }
}

/// Runs one case through the arch kernel and the portable one, the input and
/// weights `skew` bytes past an aligned address; `false` (logged) if they differ, in
/// results or in whether they accept the case.
fn check_conv_i8(case: &Case, b: &mut Buffers, rng: &mut Rng, index: usize, skew: usize) -> bool {
    let Some((out_h, out_w)) = ConvShape::output_size(
        case.in_h,
        case.in_w,
        (case.kernel, case.kernel),
        case.stride,
        case.padding,
    ) else {
        // A shape without output: nothing to compare.
        return true;
    };
    let mut residual = case.residual;
    let shape = ConvShape {
        in_h: case.in_h,
        in_w: case.in_w,
        in_c: case.in_c,
        out_h,
        out_w,
        out_c: case.out_c,
        kernel_h: case.kernel,
        kernel_w: case.kernel,
        stride: case.stride,
        pad_top: case.padding[0],
        pad_left: case.padding[1],
    };
    let input_len = shape.in_h * shape.in_w * shape.in_c;
    let window = case.kernel * case.kernel * case.in_c;
    let weights_len = shape.out_c * window;
    let output_len = out_h * out_w * shape.out_c;
    if input_len > MAX_INPUT || weights_len > MAX_WEIGHTS || output_len > MAX_OUTPUT {
        defmt::error!("selftest case {=usize} exceeds the buffers", index);
        return false;
    }
    let input = &mut b.input[skew..skew + input_len];
    fill_i8(input, rng);
    let zero_point = case
        .input_zero_point
        .unwrap_or_else(|| rng.range(-128, 127));
    if case.input_zero_point.is_some() && index % 2 == 1 {
        // Half the fixed-zero-point cases see only the zero point (and so only zeros).
        input.fill(zero_point as i8);
    }
    fill_i8(&mut b.weights[skew..skew + weights_len], rng);
    for c in 0..shape.out_c {
        b.bias[c] = rng.range(-case.bias_range, case.bias_range);
        b.multipliers[c] = rng.range(1 << 30, i32::MAX);
        // A third of the cases shift right by 2 bits or more (the Cortex-M DSP row
        // finish's range), a third right only (the kernels' right-only
        // requantization), a third mix in left shifts.
        b.shifts[c] = match index % 3 {
            0 => rng.range(-12, -2),
            1 => rng.range(-12, 0),
            _ => rng.range(-12, 1),
        };
    }
    let output_zero_point = rng.range(-128, 127);
    let (activation_min, activation_max) =
        tinyres_core::quant::activation_range(output_zero_point, case.relu);
    let requant = Requantize {
        multipliers: &b.multipliers[..shape.out_c],
        shifts: &b.shifts[..shape.out_c],
        output_zero_point,
        activation_min,
        activation_max,
        folded_bias: None,
    };
    let add = AddTables::new(&AddParams::from_scales(
        (0.02 + rng.size(0, 100) as f32 * 0.001, output_zero_point),
        (0.02 + rng.size(0, 100) as f32 * 0.001, rng.range(-128, 127)),
        (0.03 + rng.size(0, 100) as f32 * 0.001, rng.range(-128, 127)),
        case.relu,
    ));
    // The mapped shortcut: as large as the stride needs, its channels after the offset.
    let (sc_h, sc_w, sc_c) = match residual {
        Residual::Mapped {
            stride,
            channel_offset,
        } => (
            (out_h - 1) * stride + 1,
            (out_w - 1) * stride + 1,
            shape.out_c.saturating_sub(channel_offset).max(1),
        ),
        _ => (0, 0, 0),
    };
    if let Residual::Mapped { channel_offset, .. } = &mut residual {
        *channel_offset = (*channel_offset).min(shape.out_c - sc_c);
    }
    let shortcut_len = sc_h * sc_w * sc_c;
    if shortcut_len > MAX_OUTPUT {
        defmt::error!("selftest case {=usize} exceeds the buffers", index);
        return false;
    }
    fill_i8(&mut b.shortcut[..shortcut_len], rng);
    // An in-place residual reads the output's previous contents: the same in every
    // run, drawn again from one seed.
    let seed = rng.next() | 1;
    fill_i8(&mut b.reference[..output_len], &mut Rng(seed));
    fill_i8(&mut b.optimised[..output_len], &mut Rng(seed));
    let (reference, optimised) = (&mut b.reference, &mut b.optimised);
    let shortcut = match residual {
        Residual::None => None,
        Residual::InPlace => Some((Shortcut::InPlace, &add)),
        Residual::Mapped {
            stride,
            channel_offset,
        } => Some((
            Shortcut::Mapped {
                data: &b.shortcut[..shortcut_len],
                height: sc_h,
                width: sc_w,
                channels: sc_c,
                stride,
                channel_offset,
            },
            &add,
        )),
    };
    let weights = &b.weights[skew..skew + weights_len];
    let bias = &b.bias[..shape.out_c];
    let input = &b.input[skew..skew + input_len];
    let expected = kernels::conv2d_i8(
        &shape,
        input,
        zero_point,
        weights,
        bias,
        &requant,
        shortcut,
        &mut reference[..output_len],
    );
    let mut kernel = "conv2d_i8";
    let mut got = arch::conv2d_i8_with(
        &mut b.scratch,
        &shape,
        input,
        zero_point,
        weights,
        bias,
        &requant,
        shortcut,
        &mut optimised[..output_len],
    );
    let differs = |reference: &[i8], optimised: &[i8]| {
        reference[..output_len]
            .iter()
            .zip(&optimised[..output_len])
            .position(|(a, b)| a != b)
    };
    let mut first_difference = differs(&reference[..], &optimised[..]);
    let filters_len = winograd::filters_bytes(shape.in_c, shape.out_c);
    let with_filters = winograd::applies(&shape) && filters_len <= MAX_WINOGRAD_BYTES;
    if with_filters && got == expected && first_difference.is_none() {
        let filters = &mut b.winograd[skew..skew + filters_len];
        let mut written = 0;
        winograd::for_each_filter_value(weights, shape.in_c, shape.out_c, |v| {
            filters[written..written + 2].copy_from_slice(&v.to_le_bytes());
            written += 2;
        });
        fill_i8(&mut optimised[..output_len], &mut Rng(seed));
        kernel = "conv2d_i8 with Winograd filters";
        got = arch::conv2d_i8_layer_with(
            &mut b.scratch,
            &shape,
            input,
            zero_point,
            (weights, Some(&*filters)),
            bias,
            &requant,
            shortcut,
            &mut optimised[..output_len],
        );
        first_difference = differs(&reference[..], &optimised[..]);
    }
    if expected != got || first_difference.is_some() {
        defmt::error!(
            "selftest case {=usize}: {=str} differs from the portable kernel at element {} (input {=usize}x{=usize}x{=usize}, {=usize} out channels, kernel {=usize}, stride {=usize}, padding {}, zero point {=i32}; results {} vs {})",
            index,
            kernel,
            first_difference,
            shape.in_h,
            shape.in_w,
            shape.in_c,
            shape.out_c,
            case.kernel,
            case.stride,
            case.padding,
            zero_point,
            got,
            expected
        );
        return false;
    }
    true
}
