//! Whether a model fits a chip: its arena and the engine's stack in the chip's RAM, its
//! blob and the engine's code in the chip's flash.
//!
//! The engine's figures per core are measurements, not estimates: `.text` of the
//! engine size probe (`firmware/src/bin/engine_size.rs` at `opt-level = "s"`, the
//! core's target and CPU flags: `cargo tinyres bench --json`, `engine_text_bytes`;
//! `bash .ci/engine-size`), and the deepest stack of the `classify` firmware (the
//! engine, its scratch, and the firmware's thin frames around it; painted and scanned
//! on the device: `ram.stack_bytes`), rounded up to 256 B. The stack hardly depends on
//! the model: the kernels' scratch has a fixed size, and models of either numeric type
//! reach the same depth within tens of bytes, except on the Cortex-M DSP cores, where a
//! window of more than 576 taps (summed a chunk of kernel rows at a time) takes about
//! 400 B more; their figures are that deeper stack (MLPerf Tiny's large ResNet). With
//! Winograd filters the stack stays within those figures. `int8_resnet8_on_every_cortex_m_board_matches_the_host_engine`
//! (tests/tests/end_to_end/qemu.rs) checks the stack figures against the painted
//! measurement on every QEMU board.

use std::fmt;

use serde::Serialize;
use tinyres_core::Model;

/// A core as the engine is built for it.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Core {
    /// Its name, as Arm writes it.
    pub name: &'static str,
    /// The Rust target.
    pub target: &'static str,
    /// The `-C` flags that select its kernel (empty: the target alone does).
    pub rustflags: &'static str,
    /// The int8 convolution kernel that build selects (`arch::CONV2D_I8_KERNEL`).
    pub kernel: &'static str,
    /// Bytes of the engine's `.text`.
    pub engine_text: u64,
    /// Bytes of stack the engine needs, with the frames of a thin caller.
    pub stack: u64,
}

const CORTEX_M4F: Core = Core {
    name: "Cortex-M4F",
    target: "thumbv7em-none-eabihf",
    rustflags: "",
    kernel: "cortex-m-dsp",
    engine_text: 50_628,
    stack: 13_056,
};
const CORTEX_M7: Core = Core {
    name: "Cortex-M7",
    ..CORTEX_M4F
};
const CORTEX_M33: Core = Core {
    name: "Cortex-M33",
    target: "thumbv8m.main-none-eabihf",
    rustflags: "-C target-cpu=cortex-m33",
    kernel: "cortex-m-dsp",
    engine_text: 52_212,
    stack: 13_056,
};
const CORTEX_M55: Core = Core {
    name: "Cortex-M55",
    target: "thumbv8m.main-none-eabihf",
    rustflags: "-C target-cpu=cortex-m55",
    kernel: "helium",
    engine_text: 49_356,
    stack: 11_776,
};
const CORTEX_M3: Core = Core {
    name: "Cortex-M3",
    target: "thumbv7m-none-eabi",
    rustflags: "",
    kernel: "armv6m",
    engine_text: 40_444,
    stack: 11_264,
};
const CORTEX_M0_PLUS: Core = Core {
    name: "Cortex-M0+",
    target: "thumbv6m-none-eabi",
    rustflags: "",
    kernel: "armv6m",
    engine_text: 41_608,
    stack: 11_520,
};
/// Without the arena: the A53 firmware keeps it on its stack (52,288 B measured with
/// an 18,432 B arena).
const CORTEX_A53: Core = Core {
    name: "Cortex-A53",
    target: "aarch64-unknown-none",
    rustflags: "",
    kernel: "neon",
    engine_text: 58_104,
    stack: 34_048,
};

/// A chip, or a QEMU board, and the memory a firmware has on it.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Chip {
    /// Name on the command line (`--board`).
    pub name: &'static str,
    /// Boards that carry it.
    pub boards: &'static str,
    /// Its core.
    pub core: Core,
    /// Bytes of RAM: the largest contiguous SRAM, where the stack and the arena go.
    pub ram: u64,
    /// Bytes of flash for code and model.
    pub flash: u64,
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// Chips `--board` knows: common microcontrollers, then the QEMU boards `tinyres run`
/// emulates (their RAM and flash as the firmware's memory map gives them:
/// firmware/build.rs).
pub const CHIPS: &[Chip] = &[
    Chip {
        name: "stm32f411",
        boards: "STM32F411 \"Black Pill\", NUCLEO-F411RE",
        core: CORTEX_M4F,
        ram: 128 * KIB,
        flash: 512 * KIB,
    },
    Chip {
        name: "stm32f446",
        boards: "NUCLEO-F446RE",
        core: CORTEX_M4F,
        ram: 128 * KIB,
        flash: 512 * KIB,
    },
    Chip {
        name: "stm32l4r5",
        boards: "NUCLEO-L4R5ZI (X-CUBE-AI's MLPerf Tiny board)",
        core: CORTEX_M4F,
        ram: 640 * KIB,
        flash: 2 * MIB,
    },
    Chip {
        name: "stm32h743",
        boards: "NUCLEO-H743ZI (RAM: its 512 KiB AXI SRAM)",
        core: CORTEX_M7,
        ram: 512 * KIB,
        flash: 2 * MIB,
    },
    Chip {
        name: "nrf52840",
        boards: "nRF52840-DK, nRF52840 Dongle",
        core: CORTEX_M4F,
        ram: 256 * KIB,
        flash: MIB,
    },
    Chip {
        name: "rp2040",
        boards: "Raspberry Pi Pico (2 MiB of QSPI flash)",
        core: CORTEX_M0_PLUS,
        ram: 264 * KIB,
        flash: 2 * MIB,
    },
    Chip {
        name: "stm32g071",
        boards: "NUCLEO-G071RB",
        core: CORTEX_M0_PLUS,
        ram: 36 * KIB,
        flash: 128 * KIB,
    },
    Chip {
        name: "mps2-an386",
        boards: "QEMU",
        core: CORTEX_M4F,
        ram: 4 * MIB,
        flash: 2 * MIB,
    },
    Chip {
        name: "mps2-an500",
        boards: "QEMU",
        core: CORTEX_M7,
        ram: 4 * MIB,
        flash: 2 * MIB,
    },
    Chip {
        name: "mps2-an505",
        boards: "QEMU",
        core: CORTEX_M33,
        ram: 4 * MIB,
        flash: 2 * MIB,
    },
    Chip {
        name: "mps3-an547",
        boards: "QEMU (RAM: the DTCM)",
        core: CORTEX_M55,
        ram: 512 * KIB,
        flash: 512 * KIB + MIB,
    },
    Chip {
        name: "mps2-an385",
        boards: "QEMU",
        core: CORTEX_M3,
        ram: 4 * MIB,
        flash: 2 * MIB,
    },
    Chip {
        name: "mps2-an385-v6m",
        boards: "QEMU (the ARMv6-M build on the Cortex-M3)",
        core: CORTEX_M0_PLUS,
        ram: 4 * MIB,
        flash: 2 * MIB,
    },
    Chip {
        name: "virt-a53",
        boards: "QEMU",
        core: CORTEX_A53,
        ram: 0xE8 * 64 * KIB,
        flash: 57 * MIB,
    },
];

impl Chip {
    /// The chip called `name`, or an error listing the known ones.
    pub fn by_name(name: &str) -> Result<&'static Chip, String> {
        CHIPS.iter().find(|c| c.name == name).ok_or_else(|| {
            let known: Vec<&str> = CHIPS.iter().map(|c| c.name).collect();
            format!("unknown board '{name}'; known: {}", known.join(", "))
        })
    }
}

/// What a model needs of a chip, and what the chip has.
#[derive(Clone, Debug, Serialize)]
pub struct Fit {
    /// The chip, or `None` for a budget given as figures alone.
    pub chip: Option<&'static str>,
    /// The core whose engine figures are used.
    pub core: Core,
    /// Bytes of arena (the blob's peak, 16-byte aligned as `Arena<N>` is).
    pub arena: u64,
    /// Bytes of stack the engine needs.
    pub stack: u64,
    /// Bytes of RAM available.
    pub ram: u64,
    /// Bytes of the blob.
    pub blob: u64,
    /// Bytes of the engine's code.
    pub engine_text: u64,
    /// Bytes of flash available.
    pub flash: u64,
}

impl Fit {
    /// What `model` (a blob of `blob_bytes`) needs on `core`, against `ram` and `flash`.
    pub fn new(
        model: &Model<'_>,
        blob_bytes: u64,
        chip: Option<&'static str>,
        core: Core,
        ram: u64,
        flash: u64,
    ) -> Fit {
        Fit {
            chip,
            core,
            arena: model.arena_size() as u64,
            stack: core.stack,
            ram,
            blob: blob_bytes,
            engine_text: core.engine_text,
            flash,
        }
    }

    /// Bytes of RAM needed: arena and stack.
    pub fn ram_needed(&self) -> u64 {
        self.arena + self.stack
    }

    /// Bytes of flash needed: blob and engine.
    pub fn flash_needed(&self) -> u64 {
        self.blob + self.engine_text
    }

    /// Whether both fit.
    pub fn fits(&self) -> bool {
        self.ram_needed() <= self.ram && self.flash_needed() <= self.flash
    }

    /// `Err` naming every figure that does not fit.
    pub fn check(&self) -> Result<(), String> {
        if self.fits() {
            return Ok(());
        }
        let mut lines = vec![format!(
            "the model does not fit {}:",
            self.chip.unwrap_or("the budget")
        )];
        if self.ram_needed() > self.ram {
            lines.push(format!("  {}", self.ram_line()));
        }
        if self.flash_needed() > self.flash {
            lines.push(format!("  {}", self.flash_line()));
        }
        Err(lines.join("\n"))
    }

    fn ram_line(&self) -> String {
        format!(
            "RAM    {} B needed (arena {} + stack {}) of {} B ({})",
            thousands(self.ram_needed()),
            thousands(self.arena),
            thousands(self.stack),
            thousands(self.ram),
            share(self.ram_needed(), self.ram)
        )
    }

    fn flash_line(&self) -> String {
        format!(
            "flash  {} B needed (blob {} + engine {}) of {} B ({})",
            thousands(self.flash_needed()),
            thousands(self.blob),
            thousands(self.engine_text),
            thousands(self.flash),
            share(self.flash_needed(), self.flash)
        )
    }
}

impl fmt::Display for Fit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.fits() { "fits" } else { "does not fit" };
        writeln!(
            f,
            "{verdict} {} ({}, {}, {} kernel)",
            self.chip.unwrap_or("the budget"),
            self.core.name,
            self.core.target,
            self.core.kernel
        )?;
        writeln!(f, "  {}", self.ram_line())?;
        writeln!(f, "  {}", self.flash_line())?;
        write!(
            f,
            "  (the engine's stack and code measured on the {}; your firmware's own code, data and frames come on top)",
            self.core.name
        )
    }
}

fn share(needed: u64, available: u64) -> String {
    if available == 0 {
        return "none available".into();
    }
    format!("{:.0} %", needed as f64 * 100.0 / available as f64)
}

fn thousands(n: u64) -> String {
    crate::report::thousands(n)
}

/// A size as a user writes it: bytes, or with a `K`/`KiB` or `M`/`MiB` suffix (binary
/// units, as chip datasheets use them).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit() && c != '_')
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    let number: u64 = digits
        .replace('_', "")
        .parse()
        .map_err(|_| format!("'{text}' is not a size (bytes, or with K or M: 256K, 1M)"))?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => KIB,
        "m" | "mib" | "mb" => MIB,
        _ => return Err(format!("'{text}': unknown unit '{unit}' (use K or M)")),
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("'{text}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("256K"), Ok(256 * 1024));
        assert_eq!(parse_size("2MiB"), Ok(2 * 1024 * 1024));
        assert_eq!(parse_size("1_024 kb"), Ok(1024 * 1024));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("K").is_err());
    }

    #[test]
    fn every_chip_is_found_by_its_name_and_an_unknown_one_lists_them() {
        for chip in CHIPS {
            assert_eq!(Chip::by_name(chip.name).unwrap().name, chip.name);
        }
        let error = Chip::by_name("stm32f999").unwrap_err();
        assert!(
            error.contains("rp2040") && error.contains("virt-a53"),
            "{error}"
        );
    }
}
