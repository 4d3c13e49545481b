//! Lays out the firmware for the board named by `TINYRES_BOARD` (default
//! `mps2-an386`, `virt-a53` for an aarch64 target, `nrf52840` with that feature):
//! writes the linker script (cortex-m-rt's `memory.x`, or the whole script for
//! Cortex-A) and `board.rs`, the addresses where QEMU (or `tinyres flash`, on a board)
//! puts the model and the images. Keep the table in step with `host/device/src/qemu.rs` and,
//! for boards with flash, `host/device/src/flash.rs`.

use std::env;
use std::fs;
use std::path::PathBuf;

struct Board {
    name: &'static str,
    arch: &'static str,
    /// Code memory, RAM: (origin, length).
    code: (u32, u32),
    ram: (u32, u32),
    model: (u32, u32),
    images: (u32, u32),
    /// Real hardware: the two 4 KiB flash slots of the learned head (origin, length),
    /// which QEMU boards keep in a host file instead.
    head_store: Option<(u32, u32)>,
    /// Arena bytes when `TINYRES_ARENA_BYTES` is not set.
    default_arena: u32,
    /// Bytes of stack (Cortex-M), at the bottom of RAM: `classify` on an int8 ResNet-8
    /// uses 11 to 13 KiB by core (`cargo tinyres run --json`, `ram.stack_bytes`).
    stack: u32,
}

/// The QEMU boards' arena: any ResNet-8 or ResNet-20 in f32 or int8 fits.
const QEMU_ARENA: u32 = 256 * 1024;
/// The QEMU Cortex-M boards' stack (the A53 keeps its arena on a stack of its own):
/// the selftest's kernel cases keep about 136 KiB of tensors and filters on it.
const QEMU_STACK: u32 = 160 * 1024;

/// The mps2 boards' common memory map (QEMU's mps2-an385/an386/an500).
const MPS2: Board = Board {
    name: "",
    arch: "arm",
    code: (0x0000_0000, 0x10_0000),
    ram: (0x2000_0000, 0x40_0000),
    model: (0x0010_0000, 0x10_0000),
    images: (0x0020_0000, 0x20_0000),
    head_store: None,
    default_arena: QEMU_ARENA,
    stack: QEMU_STACK,
};

const BOARDS: [Board; 8] = [
    Board {
        name: "mps2-an385",
        ..MPS2
    },
    // The Cortex-M0+ build (ARMv6-M, thumbv6m-none-eabi: the RP2040's instruction set)
    // on the same M3 board, which executes the ARMv6-M subset of its instruction set.
    Board {
        name: "mps2-an385-v6m",
        ..MPS2
    },
    Board {
        name: "mps2-an386",
        ..MPS2
    },
    Board {
        name: "mps2-an500",
        ..MPS2
    },
    // The secure aliases: the 0x0 map locks up on this board.
    Board {
        name: "mps2-an505",
        code: (0x1000_0000, 0x10_0000),
        ram: (0x3800_0000, 0x40_0000),
        model: (0x1010_0000, 0x10_0000),
        images: (0x1020_0000, 0x20_0000),
        ..MPS2
    },
    // ITCM for code, DTCM for data; model and images in the 2 MiB FPGA SRAM and in DDR.
    Board {
        name: "mps3-an547",
        code: (0x0000_0000, 0x8_0000),
        ram: (0x2000_0000, 0x8_0000),
        model: (0x0100_0000, 0x10_0000),
        images: (0x6000_0000, 0x20_0000),
        ..MPS2
    },
    // Linked at 0x40080000, leaving QEMU room for the device tree at the start of RAM;
    // RAM (data, and the stack that holds the arena) up to the model partition; model
    // and images of 56 MiB each (an ImageNet ResNet-50 in int8 is 31 MiB). QEMU runs it
    // with 256 MiB (host/device/src/qemu.rs).
    Board {
        name: "virt-a53",
        arch: "aarch64",
        code: (0x4008_0000, 0x10_0000),
        ram: (0x4018_0000, 0xE8_0000),
        model: (0x4100_0000, 0x380_0000),
        images: (0x4480_0000, 0x380_0000),
        head_store: None,
        default_arena: QEMU_ARENA,
        stack: QEMU_STACK,
    },
    // nRF52840 (nRF52840-DK): 1 MiB of flash in 4 KiB pages, 256 KiB of RAM. Fixed
    // partitions, so a new model or new images need no firmware rebuild: firmware
    // 256 KiB, model 256 KiB, images 504 KiB (164 CIFAR-sized frames), and the learned
    // head's two slots in the last two pages. The arena leaves 64 KiB of RAM for the
    // head, the learner and the stack; int8 ResNet-8 needs 32 KiB of it.
    Board {
        name: "nrf52840",
        arch: "arm",
        code: (0x0000_0000, 0x4_0000),
        ram: (0x2000_0000, 0x4_0000),
        model: (0x0004_0000, 0x4_0000),
        images: (0x0008_0000, 0x7_E000),
        head_store: Some((0x000F_E000, 0x2000)),
        default_arena: 192 * 1024,
        stack: 32 * 1024,
    },
];

fn main() {
    println!("cargo:rerun-if-env-changed=TINYRES_BOARD");
    println!("cargo:rerun-if-env-changed=TINYRES_ARENA_BYTES");
    println!("cargo:rerun-if-changed=aarch64.ld");
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let nrf52840 = env::var_os("CARGO_FEATURE_NRF52840").is_some();
    let default_board = if nrf52840 {
        "nrf52840"
    } else if arch == "aarch64" {
        "virt-a53"
    } else {
        "mps2-an386"
    };
    let name = env::var("TINYRES_BOARD").unwrap_or_else(|_| default_board.to_string());
    let Some(board) = BOARDS.iter().find(|b| b.name == name) else {
        let names: Vec<&str> = BOARDS.iter().map(|b| b.name).collect();
        panic!("TINYRES_BOARD={name} is not one of {}", names.join(", "));
    };
    // The board's drivers come with its feature.
    if (name == "nrf52840") != nrf52840 {
        panic!("the nrf52840 board and the `nrf52840` feature go together (TINYRES_BOARD={name})");
    }
    // Any other architecture is the host, building the library for its tests.
    let host = arch != "arm" && arch != "aarch64";
    if !host && board.arch != arch {
        panic!("board {name} needs a {} target, not {arch}", board.arch);
    }
    let arena: u32 = match env::var("TINYRES_ARENA_BYTES") {
        Ok(text) => text.parse().unwrap_or_else(|_| {
            panic!("TINYRES_ARENA_BYTES must be a decimal number of bytes, not {text:?}")
        }),
        Err(_) => board.default_arena,
    };
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let (code, ram) = (board.code, board.ram);
    if host {
        // No linker script: the library only.
    } else if arch == "arm" {
        // The stack sits at the bottom of RAM, below the static data (the layout of
        // flip-link): an overflow runs off the start of RAM into unmapped memory and
        // faults, where with cortex-m-rt's default (the stack at the top, growing down
        // towards .bss) it would silently overwrite the statics, the arena among them.
        let stack = board.stack;
        let memory = format!(
            "/* Generated by build.rs for {name}. */\nMEMORY\n{{\n  FLASH : ORIGIN = {:#010x}, LENGTH = {:#x}\n  STACK : ORIGIN = {:#010x}, LENGTH = {stack:#x}\n  RAM   : ORIGIN = {:#010x}, LENGTH = {:#x}\n}}\n\
             _stack_start = ORIGIN(STACK) + LENGTH(STACK);\n_stack_end = ORIGIN(STACK);\n",
            code.0,
            code.1,
            ram.0,
            ram.0 + stack,
            ram.1 - stack
        );
        fs::write(out.join("memory.x"), memory).expect("OUT_DIR is writable");
    } else {
        let script = fs::read_to_string("aarch64.ld").expect("aarch64.ld is readable");
        let script = script
            .replace("@CODE_ORIGIN@", &format!("{:#010x}", code.0))
            .replace("@CODE_LENGTH@", &format!("{:#x}", code.1))
            .replace("@RAM_ORIGIN@", &format!("{:#010x}", ram.0))
            .replace("@RAM_LENGTH@", &format!("{:#x}", ram.1))
            // The arena lives on the boot stack, with 1 MiB for everything else.
            .replace("@STACK_SIZE@", &format!("{:#x}", arena + 0x10_0000));
        fs::write(out.join("tinyres-aarch64.ld"), script).expect("OUT_DIR is writable");
    }
    let mut constants = format!(
        "/// Board this firmware was built for.\npub const BOARD: &str = \"{name}\";\n\
         /// The model partition: QEMU loads the `.trm` blob here.\npub const MODEL_ADDRESS: usize = {:#x};\n\
         /// Bytes reserved for the model partition.\npub const MODEL_CAPACITY: usize = {:#x};\n\
         /// The image region: QEMU loads the images to classify here.\npub const IMAGES_ADDRESS: usize = {:#x};\n\
         /// Bytes reserved for the image region.\npub const IMAGES_CAPACITY: usize = {:#x};\n\
         /// Start of the RAM the firmware's data, arena and stack live in.\npub const RAM_ORIGIN: usize = {:#x};\n\
         /// Bytes of the static activation arena (`TINYRES_ARENA_BYTES`, else the board's default).\npub const ARENA_BYTES: usize = {arena};\n",
        board.model.0, board.model.1, board.images.0, board.images.1, board.ram.0
    );
    if let Some((origin, length)) = board.head_store {
        constants.push_str(&format!(
            "/// The learned head's two flash slots.\npub const HEAD_STORE_ADDRESS: usize = {origin:#x};\n\
             /// Bytes of both slots.\npub const HEAD_STORE_BYTES: usize = {length:#x};\n"
        ));
    }
    fs::write(out.join("board.rs"), constants).expect("OUT_DIR is writable");
    println!("cargo:rustc-link-search={}", out.display());
}
