//! Runs the firmware in QEMU: builds it for a board, loads a model and images into
//! the emulated memory, decodes the defmt log and converts counts to instructions.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;

use crate::cycles;

use tinyres_data::Dataset;

/// How a board's firmware counts the work of an inference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Counter {
    /// SysTick on the core clock (Cortex-M) under `-icount shift=N`: every
    /// instruction advances the virtual clock by 2^N ns, and SysTick ticks at the
    /// board's core clock, which QEMU 7.2 sets per board (`sysclk_frq`): 25 MHz on
    /// mps2-an385/an386/an500, 20 MHz on mps2-an505, 32 MHz on mps3-an547. The
    /// `selftest` firmware checks each board's conversion against a loop of known
    /// length (`tests/tests/end_to_end/qemu.rs`); running with another shift could not catch a
    /// wrong clock, as the shift cancels out.
    SysTick {
        /// `-icount shift`.
        shift: u32,
        /// The core clock in Hz.
        clock_hz: u64,
    },
    /// The PMU's retired-instruction counter (Cortex-A), exact.
    Pmu,
}

/// An emulated board.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Board {
    /// Name on the command line.
    pub name: &'static str,
    /// QEMU program.
    pub qemu: &'static str,
    /// QEMU `-machine`.
    pub machine: &'static str,
    /// QEMU `-cpu`.
    pub cpu: &'static str,
    /// The core the firmware is built for, as reports name it (the QEMU CPU, or the
    /// core whose instruction set a build restricts itself to).
    pub core: &'static str,
    /// Rust target the firmware is built for.
    pub target: &'static str,
    /// Extra `-C` flags for this board's CPU.
    #[serde(skip)]
    pub rustflags: &'static str,
    /// Where QEMU loads the model (firmware/build.rs has the same table).
    #[serde(skip)]
    pub model_address: u32,
    /// Bytes of the model partition.
    #[serde(skip)]
    pub model_capacity: usize,
    /// Where QEMU loads the images.
    #[serde(skip)]
    pub images_address: u32,
    /// Bytes of the image region.
    #[serde(skip)]
    pub images_capacity: usize,
    /// QEMU `-m`, where the machine's default RAM does not hold the map.
    #[serde(skip)]
    pub memory: Option<&'static str>,
    /// How instructions are counted.
    pub counter: Counter,
    /// The core the cycle model estimates for this board (`m4`, `m3`; see
    /// [`crate::cycles`]), or `None` where there is no model of it.
    pub cycle_model: Option<&'static str>,
}

/// SysTick under `-icount shift=6` on a core clocked at `clock_hz`.
const fn systick(clock_hz: u64) -> Counter {
    Counter::SysTick { shift: 6, clock_hz }
}

/// A Cortex-M board of the mps2 family with the common memory map and its 25 MHz
/// core clock.
const fn mps2(name: &'static str, cpu: &'static str, target: &'static str) -> Board {
    Board {
        name,
        qemu: "qemu-system-arm",
        machine: name,
        cpu,
        core: cpu,
        target,
        rustflags: "",
        model_address: 0x0010_0000,
        model_capacity: 0x0010_0000,
        images_address: 0x0020_0000,
        images_capacity: 0x0020_0000,
        memory: None,
        counter: systick(25_000_000),
        cycle_model: None,
    }
}

/// Boards `tinyres run` supports; the first is the default.
pub const BOARDS: [Board; 7] = [
    Board {
        cycle_model: Some("m4"),
        ..mps2("mps2-an386", "cortex-m4", "thumbv7em-none-eabihf")
    },
    mps2("mps2-an500", "cortex-m7", "thumbv7em-none-eabihf"),
    // Secure aliases: the 0x0 map locks up on this board.
    Board {
        model_address: 0x1010_0000,
        images_address: 0x1020_0000,
        // The M33's DSP extension is optional: the CPU flag enables it (and so the
        // SMLAD kernels, see core/build.rs).
        rustflags: "-C target-cpu=cortex-m33",
        counter: systick(20_000_000),
        ..mps2("mps2-an505", "cortex-m33", "thumbv8m.main-none-eabihf")
    },
    Board {
        rustflags: "-C target-cpu=cortex-m55",
        model_address: 0x0100_0000,
        images_address: 0x6000_0000,
        counter: systick(32_000_000),
        ..mps2("mps3-an547", "cortex-m55", "thumbv8m.main-none-eabihf")
    },
    Board {
        cycle_model: Some("m3"),
        ..mps2("mps2-an385", "cortex-m3", "thumbv7m-none-eabi")
    },
    // A Cortex-M0+ build (ARMv6-M: the RP2040's and STM32G0's instruction set) on the
    // M3, which executes that subset of its own instruction set the same way; the
    // cycle model times it as an M0+.
    Board {
        name: "mps2-an385-v6m",
        core: "cortex-m0+",
        cycle_model: Some("m0plus"),
        ..mps2("mps2-an385", "cortex-m3", "thumbv6m-none-eabi")
    },
    Board {
        name: "virt-a53",
        qemu: "qemu-system-aarch64",
        machine: "virt",
        cpu: "cortex-a53",
        core: "cortex-a53",
        target: "aarch64-unknown-none",
        rustflags: "",
        // 56 MiB each, for an ImageNet ResNet-50 in int8 (31 MiB) and hundreds of
        // 224x224 images, in 256 MiB of RAM.
        model_address: 0x4100_0000,
        model_capacity: 0x0380_0000,
        images_address: 0x4480_0000,
        images_capacity: 0x0380_0000,
        memory: Some("256M"),
        counter: Counter::Pmu,
        cycle_model: None,
    },
];

impl Board {
    /// The board called `name`.
    pub fn by_name(name: &str) -> Result<Board> {
        match BOARDS.iter().find(|b| b.name == name) {
            Some(b) => Ok(*b),
            None => {
                let known: Vec<&str> = BOARDS.iter().map(|b| b.name).collect();
                bail!("unknown board {name:?}; supported: {}", known.join(", "))
            }
        }
    }

    /// `-icount` shift QEMU runs this board with.
    pub fn icount_shift(&self) -> u32 {
        match self.counter {
            Counter::SysTick { shift, .. } => shift,
            Counter::Pmu => 0,
        }
    }

    /// Instructions from a firmware count (`ticks` or `instructions`), rounded.
    pub fn instructions(&self, count: u64) -> u64 {
        match self.counter {
            Counter::SysTick { shift, clock_hz } => {
                // ticks / clock_hz seconds of virtual time, 2^shift ns per instruction.
                let ticks_per_instruction_scaled = u128::from(clock_hz) << shift;
                let scaled = u128::from(count) * 1_000_000_000;
                ((scaled + ticks_per_instruction_scaled / 2) / ticks_per_instruction_scaled) as u64
            }
            Counter::Pmu => count,
        }
    }
}

/// How the firmware's defmt frames reach the host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// Semihosting writes to QEMU's console (the QEMU default).
    #[default]
    Semihosting,
    /// `defmt-rtt`, the hardware transport, read through QEMU's gdbstub as a probe
    /// reads it on a board (Cortex-M boards).
    Rtt,
}

/// The firmware package: `TINYRES_FIRMWARE_DIR`, else the checkout this binary was
/// built from.
pub fn firmware_dir() -> PathBuf {
    std::env::var_os("TINYRES_FIRMWARE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../firmware"))
}

/// Arena of the QEMU firmware builds unless a model needs more.
pub const DEFAULT_ARENA_BYTES: usize = 256 * 1024;

/// `cargo SUBCOMMAND` in the firmware package for `board`: its Rust target, the target
/// directory, the board's name for build.rs and its CPU flags (joined with the
/// firmware config's own flags: `RUSTFLAGS` would replace them, so it and the other
/// variables that would redirect the build are removed).
pub fn firmware_cargo(board: &Board, target_dir: &Path, subcommand: &[&str]) -> Command {
    let board_flags = format!(
        "CARGO_TARGET_{}_RUSTFLAGS",
        board.target.to_uppercase().replace(['-', '.'], "_")
    );
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo
        .current_dir(firmware_dir())
        .args(subcommand)
        .args(["--target", board.target])
        .arg("--target-dir")
        .arg(target_dir)
        .env("TINYRES_BOARD", board.name)
        .env(board_flags, board.rustflags)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_TARGET_DIR");
    cargo
}

/// The firmware's cargo target directory for `board`. Boards without CPU flags share
/// `firmware/target`: cargo keeps each Rust target's artifacts apart inside it, and
/// the host-side build scripts and proc macros (in a first build, 17 of a Rust
/// target's 27 CPU seconds) are compiled once for all of them. Boards of one Rust
/// target share the compiled dependencies (the engine, defmt, cortex-m), and only the
/// firmware crate itself is rebuilt for another board's memory layout, transport or
/// arena. A board with CPU flags has a directory of its own: flags that changed in a
/// shared one would make cargo rebuild everything each time.
pub fn firmware_target_dir(board: &Board) -> PathBuf {
    let shared = firmware_dir().join("target");
    match board.rustflags {
        "" => shared,
        _ => shared.join(format!("{}-{}", board.target, board.cpu)),
    }
}

/// Builds (if needed: cargo decides) firmware binary `bin` (`classify` or `finetune`)
/// for `board` with a static arena of `arena_bytes`, logging over `transport`;
/// returns the path of a copy of the ELF named after the arena size. Cargo's progress
/// goes to stderr.
///
/// Builds for other boards of the same target, other transports and other arenas
/// share one target directory and so one output path: the build and the copy happen
/// under a lock on that directory, and the caller boots the copy, which a concurrent
/// build cannot overwrite.
pub fn build_firmware(
    board: &Board,
    bin: &str,
    arena_bytes: usize,
    transport: Transport,
) -> Result<PathBuf> {
    if transport == Transport::Rtt && board.counter == Counter::Pmu {
        bail!(
            "the RTT transport is for the Cortex-M boards; {} logs over semihosting",
            board.name
        );
    }
    let dir = firmware_dir();
    if !dir.join("Cargo.toml").exists() {
        bail!(
            "firmware sources not found at {} (set TINYRES_FIRMWARE_DIR to the repository's firmware/)",
            dir.display()
        );
    }
    let target_dir = firmware_target_dir(board);
    std::fs::create_dir_all(&target_dir)
        .with_context(|| format!("cannot create {}", target_dir.display()))?;
    let lock_path = target_dir.join(".tinyres-build.lock");
    let lock = std::fs::File::create(&lock_path)
        .with_context(|| format!("cannot create {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("cannot lock {}", lock_path.display()))?;
    let status = firmware_cargo(
        board,
        &target_dir,
        &["build", "--quiet", "--release", "--bin", bin],
    )
    .args(match transport {
        Transport::Semihosting => &[][..],
        Transport::Rtt => &["--features", "rtt"][..],
    })
    .env("TINYRES_ARENA_BYTES", arena_bytes.to_string())
    // stdout carries only results.
    .stdout(std::io::stderr())
    .status()
    .context("cannot run cargo to build the firmware")?;
    if !status.success() {
        bail!(
            "building the firmware for {} ({}) failed",
            board.name,
            board.target
        );
    }
    let built = target_dir.join(board.target).join("release").join(bin);
    let transport_name = match transport {
        Transport::Semihosting => "semihosting",
        Transport::Rtt => "rtt",
    };
    let kept = target_dir
        .join("by-board")
        .join(board.name)
        .join(format!("{bin}-{transport_name}-arena{arena_bytes}"));
    std::fs::create_dir_all(kept.parent().unwrap_or(&target_dir))
        .with_context(|| format!("cannot create the directory of {}", kept.display()))?;
    let elf = std::fs::read(&built).with_context(|| format!("cannot read {}", built.display()))?;
    tinyres_data::write_atomically(&kept, &elf)?;
    drop(lock);
    Ok(kept)
}

/// One image as classified on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct DevicePrediction {
    /// Position in the data set.
    pub index: usize,
    /// True label.
    pub label: u8,
    /// Predicted class index.
    pub class: usize,
    /// Instructions the inference took.
    pub instructions: u64,
    /// Cycles the inference would take on the board's core, as the cycle model
    /// estimates them ([`crate::cycles`]); `None` without a model of the core.
    pub cycles: Option<u64>,
    /// CRC-32 of the raw bytes of the output tensor (`tinyres_core::crc32`), to compare
    /// with the host engine's output byte for byte (the classify firmware reports it).
    pub output_crc: Option<u32>,
}

/// The image region the firmware reads (see `Images` in firmware/src/lib.rs): the
/// images `train` (examples to learn from, first) then `test`, with their labels.
pub fn image_region(data: &Dataset, train: &[usize], test: &[usize]) -> Vec<u8> {
    let count = train.len() + test.len();
    let mut bytes = Vec::with_capacity(16 + count.next_multiple_of(16) + count * data.image_len());
    bytes.extend_from_slice(b"TRIM");
    bytes.extend_from_slice(&(count as u32).to_le_bytes());
    for field in [data.height, data.width, data.channels, train.len()] {
        bytes.extend_from_slice(&(field as u16).to_le_bytes());
    }
    bytes.extend(train.iter().chain(test).map(|&i| data.labels[i]));
    bytes.resize(16 + count.next_multiple_of(16), 0);
    for &i in train.iter().chain(test) {
        bytes.extend_from_slice(data.image(i));
    }
    bytes
}

/// Images that fit in one boot of `board`.
pub fn images_per_boot(board: &Board, image_len: usize) -> usize {
    ((board.images_capacity - 16) / (image_len + 1))
        .saturating_sub(16)
        .max(1)
}

/// The per-image lines of a log, checked to cover all `expected` images.
fn predictions(
    board: &Board,
    lines: &[String],
    indices: &[usize],
) -> Result<Vec<DevicePrediction>> {
    let mut predictions = Vec::new();
    for line in lines {
        if let Some(mut p) = parse_prediction(board, line, 0)? {
            p.index = *indices
                .get(p.index)
                .context("the firmware reported an image it was not given")?;
            predictions.push(p);
        }
    }
    if predictions.len() != indices.len() || !lines.iter().any(|l| l.starts_with("done ")) {
        bail!(
            "the firmware reported {} of {} images:\n{}",
            predictions.len(),
            indices.len(),
            lines.join("\n")
        );
    }
    Ok(predictions)
}

/// A board with its built firmware and a model, ready to boot.
#[derive(Clone, Debug)]
pub struct Device<'a> {
    /// The emulated board.
    pub board: Board,
    /// The firmware ELF ([`build_firmware`]).
    pub elf: PathBuf,
    /// The model blob loaded into the model partition.
    pub model: &'a [u8],
    /// How long one boot may take before it counts as hung.
    pub timeout: Duration,
    /// How the firmware's log reaches the host.
    pub transport: Transport,
    /// Whether `classify` boots on a board without a cycle model count instructions by
    /// function too ([`Device::count_functions`]).
    pub functions: bool,
}

impl<'a> Device<'a> {
    /// Makes [`Device::classify`] say where a boot's instructions went, by function,
    /// on every board: those with a cycle model always do; on the others QEMU then
    /// runs the plugin in its counting mode ([`cycles::COUNT_ONLY`]), somewhat slower.
    pub fn count_functions(mut self) -> Self {
        self.functions = true;
        self
    }

    /// Builds firmware binary `bin` for `board` (announcing it on stderr) with an arena
    /// of `arena_bytes`, logging over semihosting, ready to boot `model`.
    pub fn build(
        board: Board,
        bin: &str,
        model: &'a [u8],
        arena_bytes: usize,
        timeout: Duration,
    ) -> Result<Self> {
        Self::build_for(
            board,
            bin,
            model,
            arena_bytes,
            timeout,
            Transport::Semihosting,
        )
    }

    /// As [`Device::build`], logging over `transport`.
    pub fn build_for(
        board: Board,
        bin: &str,
        model: &'a [u8],
        arena_bytes: usize,
        timeout: Duration,
        transport: Transport,
    ) -> Result<Self> {
        eprintln!(
            "building the {bin} firmware for {} ({}, defmt over {}; a board's first build takes about a minute)",
            board.name,
            board.target,
            match transport {
                Transport::Semihosting => "semihosting",
                Transport::Rtt => "RTT",
            }
        );
        Ok(Device {
            board,
            elf: build_firmware(&board, bin, arena_bytes, transport)?,
            model,
            timeout,
            transport,
            functions: false,
        })
    }

    /// Boots the `classify` firmware with the images `range` of `data`; returns the
    /// device's predictions for them.
    /// On a board with a cycle model (and a C compiler to build it), each count also
    /// gets its estimated cycles, and the boot its cost by function; on the others,
    /// the boot's instructions by function if [`Device::count_functions`] asked.
    pub fn classify(&self, data: &Dataset, range: std::ops::Range<usize>) -> Result<ClassifyBoot> {
        let indices: Vec<usize> = range.collect();
        let work = tempdir()?;
        let model = match self.board.cycle_model {
            Some(_) => optional_cycle_model(&self.board),
            None if self.functions => instruction_counter(),
            None => None,
        };
        let run = self.boot(&image_region(data, &[], &indices), &work, model.as_ref());
        let _ = std::fs::remove_dir_all(&work);
        let (lines, trace) = run?;
        let mut boot = ClassifyBoot {
            predictions: predictions(&self.board, &lines, &indices)?,
            ram: ram_use(&lines)?,
            profile: profile_steps(&self.board, &lines)?,
            profile_cycles: None,
            functions: None,
        };
        if let (Some(trace), None) = (&trace, self.board.cycle_model) {
            boot.functions = Some(cycles::by_function(&self.elf, trace, false)?);
        } else if let Some(trace) = trace {
            // The firmware's counts in the order it took them: the profile's steps,
            // then the images (as its log has them).
            let steps = boot.profile.len();
            let counts: Vec<u64> = boot
                .profile
                .iter()
                .copied()
                .chain(boot.predictions.iter().map(|p| p.instructions))
                .collect();
            ensure!(
                lines.iter().position(|l| l.starts_with("step="))
                    <= lines.iter().position(|l| l.starts_with("image=")),
                "the firmware logged an image before its profile"
            );
            let estimated = cycles::intervals(&trace, &counts, 2)
                .with_context(|| format!("estimating cycles on {}", self.board.name))?;
            for (p, &c) in boot.predictions.iter_mut().zip(&estimated[steps..]) {
                p.cycles = Some(c);
            }
            boot.profile_cycles = Some(estimated[..steps].to_vec());
            boot.functions = Some(cycles::by_function(&self.elf, &trace, true)?);
        }
        Ok(boot)
    }

    /// Boots the `finetune` (or `teach`) firmware in `flash_dir` (which holds the flash
    /// image [`FLASH_IMAGE`]; created erased if missing): it restores its head, learns
    /// from the images `train` if there are any, saves, and classifies the images
    /// `test`.
    pub fn finetune(
        &self,
        data: &Dataset,
        train: &[usize],
        test: &[usize],
        flash_dir: &Path,
    ) -> Result<FinetuneBoot> {
        let flash = flash_dir.join(FLASH_IMAGE);
        if !flash.exists() {
            std::fs::write(&flash, vec![0xFF; FLASH_IMAGE_BYTES])
                .with_context(|| format!("cannot write {}", flash.display()))?;
        }
        let (lines, _) = self.boot(&image_region(data, train, test), flash_dir, None)?;
        let numbers = |line: &str, keys: &[&str]| -> Option<Vec<u32>> {
            keys.iter()
                .map(|k| log_field(line, k).and_then(|v| v.parse().ok()))
                .collect()
        };
        let restored = lines
            .iter()
            .find(|l| l.starts_with("restored slot="))
            .and_then(|l| numbers(l, &["slot", "seq"]))
            .map(|v| (v[0], v[1]));
        // The last save: the `teach` firmware saves after every burst of labels.
        let saved = lines
            .iter()
            .rfind(|l| l.starts_with("saved "))
            .and_then(|l| numbers(l, &["slot", "seq", "class"]))
            .map(|v| (v[0], v[1], v[2] as usize));
        if !train.is_empty() && saved.is_none() {
            bail!(
                "the firmware did not save what it learned:\n{}",
                lines.join("\n")
            );
        }
        Ok(FinetuneBoot {
            restored,
            saved,
            predictions: predictions(&self.board, &lines, test)?,
            ram: ram_use(&lines)?,
        })
    }

    /// Boots with an image region, QEMU running in `workdir` (where semihosting finds
    /// the flash image), with `cycle_model` if given; returns the decoded log and the
    /// model's trace, or the log in an error if the firmware failed.
    fn boot(
        &self,
        region: &[u8],
        workdir: &Path,
        cycle_model: Option<&CycleModel>,
    ) -> Result<(Vec<String>, Option<cycles::Trace>)> {
        let board = &self.board;
        if self.model.len() > board.model_capacity {
            bail!(
                "the model is {} bytes; {}'s model partition holds {}",
                self.model.len(),
                board.name,
                board.model_capacity
            );
        }
        if region.len() > board.images_capacity {
            bail!(
                "{} bytes of images do not fit in {}'s {}-byte image region",
                region.len(),
                board.name,
                board.images_capacity
            );
        }
        // QEMU runs in `workdir`: paths handed to it must not be relative to ours.
        let workdir = &std::path::absolute(workdir)
            .with_context(|| format!("{}: cannot make the path absolute", workdir.display()))?;
        let model_path = workdir.join("model.trm");
        let images_path = workdir.join("images.bin");
        std::fs::write(&model_path, self.model)
            .with_context(|| format!("cannot write {}", model_path.display()))?;
        std::fs::write(&images_path, region)
            .with_context(|| format!("cannot write {}", images_path.display()))?;
        let board = &self.board;
        let (log, success, trace) = run_qemu(
            board,
            &self.elf,
            &[
                (&model_path, board.model_address),
                (&images_path, board.images_address),
            ],
            workdir,
            self.timeout,
            self.transport,
            cycle_model,
        )?;
        let lines = decode_defmt(&self.elf, &log)?;
        if !success {
            bail!(
                "the firmware on {} failed:\n{}",
                board.name,
                lines.join("\n")
            );
        }
        Ok((lines, trace))
    }
}

/// What one boot of the `classify` firmware did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClassifyBoot {
    /// One per image.
    pub predictions: Vec<DevicePrediction>,
    /// RAM the firmware used.
    pub ram: RamUse,
    /// Instructions of each step of the first image's profiled run: the input, then
    /// one per layer (empty when the boot had no images).
    pub profile: Vec<u64>,
    /// The estimated cycles of the same steps, on a board with a cycle model.
    pub profile_cycles: Option<Vec<u64>>,
    /// The whole boot's instructions and estimated cycles by function, the costliest
    /// first, on a board with a cycle model; its instructions alone by function on
    /// another board if [`Device::count_functions`] asked.
    pub functions: Option<Vec<cycles::FunctionCost>>,
}

/// The `step=S ticks=T` (or `instructions=N`) lines of a classify log, in
/// instructions, checked to be numbered 0, 1, 2, ...
fn profile_steps(board: &Board, lines: &[String]) -> Result<Vec<u64>> {
    if let Some(line) = lines.iter().find(|l| l.starts_with("profile truncated")) {
        bail!("the device could not record every layer: {line}");
    }
    let mut steps = Vec::new();
    for line in lines.iter().filter(|l| l.starts_with("step=")) {
        let field = |name: &str| log_field(line, name).and_then(|v| v.parse::<u64>().ok());
        let (Some(step), Some(count)) = (field("step"), field("ticks").or(field("instructions")))
        else {
            bail!("bad profile line from the firmware: {line}");
        };
        if step != steps.len() as u64 {
            bail!("profile step {step} out of order in: {line}");
        }
        steps.push(board.instructions(count));
    }
    Ok(steps)
}

/// What the `selftest` firmware found on a board.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SelfTest {
    /// Instructions of the calibration loop as the board's counter measured them
    /// (converted with the board's clock).
    pub calibration_instructions: u64,
    /// Instructions the loop executes.
    pub calibration_expected: u64,
    /// The int8 convolution kernel of this build (`cortex-m-dsp`, `helium`, `neon`,
    /// `portable`).
    pub kernel: String,
    /// Kernel cases that matched the portable kernel bit for bit.
    pub cases: usize,
    /// The cycle model's check sequences (Cortex-M), each run for some iterations and
    /// for twice as many.
    pub timings: Vec<Timing>,
}

/// One run of a timing sequence of the `selftest` firmware.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Timing {
    /// The sequence.
    pub name: String,
    /// Iterations of its loop.
    pub iterations: u64,
    /// Instructions between the counter reads around it.
    pub instructions: u64,
    /// Their cycles as the board's cycle model estimates them, where it has one.
    pub cycles: Option<u64>,
}

/// Builds and boots the `selftest` firmware on `board`: the counter against a loop of
/// known length, every arch kernel against the portable one (an error, with the
/// device's log, if any case differs).
pub fn selftest(board: &Board, timeout: Duration) -> Result<SelfTest> {
    let elf = build_firmware(
        board,
        "selftest",
        DEFAULT_ARENA_BYTES,
        Transport::Semihosting,
    )?;
    let work = tempdir()?;
    let model = optional_cycle_model(board);
    let run = run_qemu(
        board,
        &elf,
        &[],
        &work,
        timeout,
        Transport::Semihosting,
        model.as_ref(),
    );
    let _ = std::fs::remove_dir_all(&work);
    let (log, success, trace) = run?;
    let lines = decode_defmt(&elf, &log)?;
    if !success {
        bail!(
            "the selftest failed on {}:\n{}",
            board.name,
            lines.join("\n")
        );
    }
    let find = |prefix: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(prefix))
            .with_context(|| {
                format!(
                    "no `{prefix}` line in the selftest log:\n{}",
                    lines.join("\n")
                )
            })
    };
    let calibration = find("calibration ")?;
    let number = |line: &str, name: &str| -> Result<u64> {
        log_field(line, name)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {name} in selftest line: {line}"))
    };
    let count = |line: &str| {
        number(line, "ticks")
            .or_else(|_| number(line, "instructions"))
            .map(|c| board.instructions(c))
    };
    let summary = find("selftest ")?;
    let mut timings = lines
        .iter()
        .filter(|l| l.starts_with("timing "))
        .map(|line| {
            Ok(Timing {
                name: log_field(line, "name").unwrap_or_default().to_string(),
                iterations: number(line, "iterations")?,
                instructions: count(line)?,
                cycles: None,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let calibration_instructions = count(calibration)?;
    if let Some(trace) = trace {
        // The calibration loop, then the timings, in the order the firmware ran them.
        let counts: Vec<u64> = std::iter::once(calibration_instructions)
            .chain(timings.iter().map(|t| t.instructions))
            .collect();
        let estimated = cycles::intervals(&trace, &counts, 2)
            .with_context(|| format!("estimating the selftest's cycles on {}", board.name))?;
        for (t, &c) in timings.iter_mut().zip(&estimated[1..]) {
            t.cycles = Some(c);
        }
    }
    Ok(SelfTest {
        calibration_instructions,
        calibration_expected: number(calibration, "loop")?,
        kernel: log_field(summary, "kernel").unwrap_or_default().to_string(),
        cases: number(summary, "cases")? as usize,
        timings,
    })
}

/// What the cycle model saw of one run of any bare-metal ELF on a board ([`estimate_elf`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ElfCycles {
    /// Instructions of the whole run.
    pub instructions: u64,
    /// Its estimated cycles.
    pub cycles: u64,
    /// `(instructions, cycles)` between each two consecutive reads of SysTick's
    /// counter: the spans a firmware measures with it.
    pub intervals: Vec<(u64, u64)>,
    /// Whether the program exited with success (semihosting).
    pub success: bool,
    /// Instructions and estimated cycles by function, the costliest first.
    pub functions: Vec<cycles::FunctionCost>,
}

/// Runs `elf` on `board` with the cycle model: whole-run totals, and the spans between
/// the program's reads of SysTick's counter. Any bare-metal program for the board's
/// memory map runs (another runtime's build, say); its output is not read.
pub fn estimate_elf(board: &Board, elf: &Path, timeout: Duration) -> Result<ElfCycles> {
    let model = cycle_model(board)?;
    let elf = &std::path::absolute(elf)
        .with_context(|| format!("{}: cannot make the path absolute", elf.display()))?;
    ensure!(elf.is_file(), "{}: no such file", elf.display());
    let work = tempdir()?;
    let run = run_qemu(
        board,
        elf,
        &[],
        &work,
        timeout,
        Transport::Semihosting,
        Some(&model),
    );
    let _ = std::fs::remove_dir_all(&work);
    let (_, success, trace) = run?;
    let trace = trace.context("the cycle model recorded nothing")?;
    let functions = cycles::by_function(elf, &trace, true)?;
    Ok(ElfCycles {
        functions,
        instructions: trace.instructions,
        cycles: trace.cycles,
        intervals: trace
            .reads
            .windows(2)
            .map(|w| (w[1].0 - w[0].0, w[1].1 - w[0].1))
            .collect(),
        success,
    })
}

/// RAM a boot used, as the firmware measured it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct RamUse {
    /// Static data: .data and .bss, the arena included.
    pub static_bytes: usize,
    /// Deepest stack (from the painted stack's high-water mark).
    pub stack_bytes: usize,
}

/// The `done ... static_ram=S stack=T` line of a log.
fn ram_use(lines: &[String]) -> Result<RamUse> {
    let done = lines
        .iter()
        .find(|l| l.starts_with("done "))
        .context("the firmware log has no `done` line")?;
    let field = |name: &str| -> Result<usize> {
        log_field(done, name)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {name} in firmware line: {done}"))
    };
    Ok(RamUse {
        static_bytes: field("static_ram")?,
        stack_bytes: field("stack")?,
    })
}

/// What one boot of the `finetune` firmware did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FinetuneBoot {
    /// `(slot, sequence)` of the head restored from flash, if any.
    pub restored: Option<(u32, u32)>,
    /// `(slot, sequence, new class)` of the head learned and saved, if any.
    pub saved: Option<(u32, u32, usize)>,
    /// Predictions on the test images with the (restored or learned) head.
    pub predictions: Vec<DevicePrediction>,
    /// RAM the firmware used.
    pub ram: RamUse,
}

impl FinetuneBoot {
    /// Boots of one pass over the test images as one: the first boot's restored head,
    /// the head saved (by the learning boot), every prediction in order, the most RAM.
    fn joined(boots: Vec<FinetuneBoot>) -> FinetuneBoot {
        let mut joined = FinetuneBoot {
            restored: boots.first().and_then(|b| b.restored),
            saved: boots.iter().find_map(|b| b.saved),
            predictions: Vec::new(),
            ram: RamUse {
                static_bytes: 0,
                stack_bytes: 0,
            },
        };
        for boot in boots {
            joined.predictions.extend(boot.predictions);
            joined.ram.static_bytes = joined.ram.static_bytes.max(boot.ram.static_bytes);
            joined.ram.stack_bytes = joined.ram.stack_bytes.max(boot.ram.stack_bytes);
        }
        joined
    }
}

/// Bytes of the flash image the `finetune` firmware keeps its head in (two 4 KiB
/// slots; firmware/src/app.rs).
pub const FLASH_IMAGE_BYTES: usize = 8192;
/// Its file name, in the directory QEMU runs in.
pub const FLASH_IMAGE: &str = "tinyres-flash.bin";

/// Runs QEMU, with `cycle_model` loaded if given (its trace written into `workdir`);
/// returns the firmware's defmt frames (the semihosting console, or what RTT carried),
/// whether the firmware exited with success, and the cycle model's trace.
fn run_qemu(
    board: &Board,
    elf: &Path,
    loads: &[(&Path, u32)],
    workdir: &Path,
    timeout: Duration,
    transport: Transport,
    cycle_model: Option<&CycleModel>,
) -> Result<(Vec<u8>, bool, Option<cycles::Trace>)> {
    let mut cmd = Command::new(board.qemu);
    let trace_path = workdir.join("cycles.txt");
    if let Some(model) = cycle_model {
        cmd.arg("-plugin").arg(format!(
            "{},core={},watch={:#x},out={}",
            model.plugin.display(),
            model.core,
            cycles::SYSTICK_CURRENT,
            trace_path.display()
        ));
    }
    // RTT: QEMU starts halted and waits on a gdbstub socket, which a reader thread
    // polls (crate::rtt). Unix socket paths are short: this one lives in the temp dir.
    let gdb_socket = std::env::temp_dir().join(format!(
        "tinyres-gdb-{}-{}.sock",
        std::process::id(),
        SOCKET_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let rtt_symbols = match transport {
        Transport::Semihosting => None,
        Transport::Rtt => {
            let _ = std::fs::remove_file(&gdb_socket);
            cmd.arg("-chardev")
                .arg(format!(
                    "socket,id=gdb,path={},server=on,wait=off",
                    gdb_socket.display()
                ))
                .args(["-gdb", "chardev:gdb", "-S"]);
            Some(crate::rtt::symbols(elf)?)
        }
    };
    cmd.args(["-machine", board.machine, "-cpu", board.cpu]);
    if let Some(memory) = board.memory {
        cmd.args(["-m", memory]);
    }
    cmd.args([
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        "none",
        "-nodefaults",
    ])
    .args(["-semihosting-config", "enable=on,target=native"])
    .args([
        "-icount",
        &format!("shift={},sleep=off", board.icount_shift()),
    ])
    .arg("-kernel")
    .arg(elf);
    for (file, address) in loads {
        cmd.arg("-device").arg(format!(
            "loader,file={},addr={address:#x},force-raw=on",
            file.display()
        ));
    }
    let mut child = cmd
        .current_dir(workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => anyhow::anyhow!(
                "{} is not installed (Debian/Ubuntu: sudo apt-get install qemu-system-arm, which also provides qemu-system-aarch64)",
                board.qemu
            ),
            _ => anyhow::anyhow!("cannot start {}: {e}", board.qemu),
        })?;
    let mut stdout = child.stdout.take().context("qemu stdout")?;
    let reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut bytes).map(|_| bytes)
    });
    let mut rtt_reader = rtt_symbols.map(|symbols| {
        let socket = gdb_socket.clone();
        std::thread::spawn(move || crate::rtt::read_up_channel(&socket, symbols, 4, timeout))
    });
    let stop = |child: &mut std::process::Child| {
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_file(&gdb_socket);
    };
    let mut rtt_log = None;
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        // The RTT reader ends when the guest exits, or on an error that leaves the
        // guest halted: then stop QEMU and say why.
        if let Some(finished) = rtt_reader.take_if(|r| r.is_finished()) {
            match finished.join() {
                Ok(Ok(bytes)) => rtt_log = Some(bytes),
                Ok(Err(e)) => {
                    stop(&mut child);
                    return Err(e.context(format!("reading RTT from QEMU ({})", board.name)));
                }
                Err(_) => {
                    stop(&mut child);
                    bail!("the RTT reader panicked");
                }
            }
        }
        if start.elapsed() > timeout {
            stop(&mut child);
            bail!(
                "QEMU ({}) did not finish within {} s: the firmware hung",
                board.name,
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = reader
        .join()
        .map_err(|_| anyhow::anyhow!("qemu stdout reader panicked"))??;
    let log = match (rtt_log, rtt_reader) {
        (Some(bytes), _) => bytes,
        (None, Some(rtt)) => rtt
            .join()
            .map_err(|_| anyhow::anyhow!("the RTT reader panicked"))?
            .with_context(|| format!("reading RTT from QEMU ({})", board.name))?,
        (None, None) => stdout,
    };
    let _ = std::fs::remove_file(&gdb_socket);
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }
    // A fault while entering the fault handler locks an M-profile core up, and QEMU
    // stops on it: what a stack overflow does, the stack sitting at the bottom of RAM
    // (firmware/build.rs) so that it runs off into unmapped memory.
    if let Some(lockup) = stderr.lines().find(|l| l.contains("Lockup")) {
        bail!(
            "the firmware on {} locked up ({}): a fault while handling a fault, as a stack overflow causes",
            board.name,
            lockup.trim_start_matches("qemu: fatal: ")
        );
    }
    if !status.success() && log.is_empty() {
        bail!(
            "QEMU ({}) failed: {}{}",
            board.name,
            status,
            if stderr.is_empty() {
                String::new()
            } else {
                format!("\n{stderr}")
            }
        );
    }
    let trace = cycle_model
        .map(|_| cycles::read_trace(&trace_path))
        .transpose()?;
    Ok((log, status.success(), trace))
}

/// Numbers the gdbstub sockets of one process's concurrent boots.
static SOCKET_COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Decodes defmt frames with the table in `elf`; one line per frame.
pub fn decode_defmt(elf: &Path, bytes: &[u8]) -> Result<Vec<String>> {
    decode_defmt_frames(&defmt_table(elf)?, bytes)
}

/// The defmt table of a firmware ELF: what its log frames' indices mean.
pub fn defmt_table(elf: &Path) -> Result<defmt_decoder::Table> {
    let elf_bytes = std::fs::read(elf).with_context(|| format!("cannot read {}", elf.display()))?;
    defmt_decoder::Table::parse(&elf_bytes)
        .map_err(|e| anyhow::anyhow!("{}: bad defmt table: {e}", elf.display()))?
        .with_context(|| format!("{} has no defmt table", elf.display()))
}

/// [`decode_defmt`] with the firmware's table already read.
pub fn decode_defmt_frames(table: &defmt_decoder::Table, bytes: &[u8]) -> Result<Vec<String>> {
    let mut decoder = table.new_stream_decoder();
    decoder.received(bytes);
    let mut lines = Vec::new();
    loop {
        match decoder.decode() {
            Ok(frame) => lines.push(format!(
                "{}{}",
                level_prefix(&frame),
                frame.display_message()
            )),
            Err(defmt_decoder::DecodeError::UnexpectedEof) => break,
            Err(defmt_decoder::DecodeError::Malformed) => {
                bail!("malformed defmt frame in the firmware output")
            }
        }
    }
    Ok(lines)
}

/// `ERROR ` or `WARN ` before such frames; nothing before `println!` and info lines,
/// which carry the results.
fn level_prefix(frame: &defmt_decoder::Frame<'_>) -> &'static str {
    match frame.level().map(|l| l.as_str()) {
        Some("error") => "ERROR ",
        Some("warn") => "WARN ",
        _ => "",
    }
}

/// The value of `name=value` in a firmware log line.
fn log_field<'l>(line: &'l str, name: &str) -> Option<&'l str> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
}

/// Parses `image=I label=L class=C ticks=T` (or `instructions=N`), with an optional
/// `output_crc=X` (hex); `offset` is the batch's first index.
fn parse_prediction(board: &Board, line: &str, offset: usize) -> Result<Option<DevicePrediction>> {
    if !line.starts_with("image=") {
        return Ok(None);
    }
    let field = |name: &str| -> Option<Result<u64>> {
        log_field(line, name).map(|v| {
            v.parse()
                .with_context(|| format!("bad {name} in firmware line: {line}"))
        })
    };
    let required = |name: &str| {
        field(name).with_context(|| format!("firmware line without {name}: {line}"))?
    };
    let count = match (field("ticks"), field("instructions")) {
        (Some(ticks), _) => ticks?,
        (None, Some(instructions)) => instructions?,
        (None, None) => bail!("firmware line without a count: {line}"),
    };
    Ok(Some(DevicePrediction {
        index: offset + required("image")? as usize,
        label: required("label")? as u8,
        class: required("class")? as usize,
        instructions: board.instructions(count),
        cycles: None,
        output_crc: log_field(line, "output_crc")
            .map(|v| {
                u32::from_str_radix(v.trim_start_matches("0x"), 16)
                    .with_context(|| format!("bad output_crc in firmware line: {line}"))
            })
            .transpose()?,
    }))
}

/// The cycle model of a board's core, ready to load into QEMU.
struct CycleModel {
    /// The plugin, built ([`cycles::plugin`]).
    plugin: PathBuf,
    /// Its `core=` argument.
    core: &'static str,
}

/// The cycle model for `board`, built on first use, or why there is none.
fn cycle_model(board: &Board) -> Result<CycleModel> {
    let core = board.cycle_model.with_context(|| {
        let boards: Vec<&str> = BOARDS
            .iter()
            .filter(|b| b.cycle_model.is_some())
            .map(|b| b.name)
            .collect();
        format!(
            "{} ({}) has no cycle model: boards with one are {}",
            board.name,
            board.core,
            boards.join(", ")
        )
    })?;
    let plugin = cycles::plugin(&firmware_dir().join("target").join("qemu-plugin"))?;
    Ok(CycleModel { plugin, core })
}

/// The plugin counting instructions alone ([`cycles::COUNT_ONLY`]), or `None` where it
/// cannot be built (said once, on stderr).
fn instruction_counter() -> Option<CycleModel> {
    cycles::plugin(&firmware_dir().join("target").join("qemu-plugin"))
        .map(|plugin| CycleModel {
            plugin,
            core: cycles::COUNT_ONLY,
        })
        .map_err(|e| {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| eprintln!("warning: no instructions by function: {e:#}"));
        })
        .ok()
}

/// [`cycle_model`] where the board has one: `None` for the others, and where it cannot
/// be built (said once, on stderr).
fn optional_cycle_model(board: &Board) -> Option<CycleModel> {
    board.cycle_model?;
    cycle_model(board)
        .map_err(|e| {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| eprintln!("warning: cycles are not estimated: {e:#}"));
        })
        .ok()
}

fn tempdir() -> Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("tinyres-qemu-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prediction_lines() {
        let m4 = Board::by_name("mps2-an386").unwrap();
        let p = parse_prediction(
            &m4,
            "image=3 label=7 class=2 ticks=1600 output_crc=0x1a2b3c4d",
            100,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            p,
            DevicePrediction {
                index: 103,
                label: 7,
                class: 2,
                instructions: 1000,
                cycles: None,
                output_crc: Some(0x1a2b_3c4d)
            }
        );
        let a53 = Board::by_name("virt-a53").unwrap();
        let p = parse_prediction(
            &a53,
            "image=0 label=1 class=1 instructions=1234 output_crc=0",
            0,
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.instructions, 1234);
        assert_eq!(parse_prediction(&m4, "done count=4", 0).unwrap(), None);
        assert!(parse_prediction(&m4, "image=x label=1 class=1 ticks=1 output_crc=0", 0).is_err());
        assert!(parse_prediction(&m4, "image=1 label=1 class=1 ticks=1 output_crc=z", 0).is_err());
    }

    #[test]
    fn unknown_boards_are_named() {
        assert_eq!(Board::by_name("mps2-an386").unwrap().cpu, "cortex-m4");
        assert_eq!(Board::by_name("virt-a53").unwrap().icount_shift(), 0);
        let err = Board::by_name("esp32").unwrap_err().to_string();
        assert!(err.contains("esp32") && err.contains("mps2-an386"), "{err}");
    }
}

/// Classifies every image of `data` on `device` (the `classify` firmware), in as many
/// boots as the image region needs; `on_boot` hears each boot's range before it
/// starts. Returns the predictions and the most RAM any boot used.
pub fn classify_all(
    device: &Device<'_>,
    data: &Dataset,
    mut on_boot: impl FnMut(std::ops::Range<usize>),
) -> Result<Classified> {
    let per_boot = images_per_boot(&device.board, data.image_len());
    let mut predictions = Vec::with_capacity(data.len());
    let mut ram = RamUse {
        static_bytes: 0,
        stack_bytes: 0,
    };
    let mut profile = Vec::new();
    let mut profile_cycles = None;
    let mut functions = None;
    let mut start = 0;
    while start < data.len() {
        let end = (start + per_boot).min(data.len());
        on_boot(start..end);
        let boot = device.classify(data, start..end)?;
        if profile.is_empty() {
            profile = boot.profile;
            profile_cycles = boot.profile_cycles;
            functions = boot.functions;
        }
        predictions.extend(boot.predictions);
        ram.static_bytes = ram.static_bytes.max(boot.ram.static_bytes);
        ram.stack_bytes = ram.stack_bytes.max(boot.ram.stack_bytes);
        start = end;
    }
    Ok(Classified {
        predictions,
        ram,
        profile,
        profile_cycles,
        functions,
    })
}

/// Every image of a data set classified on the device, over as many boots as needed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Classified {
    /// One per image.
    pub predictions: Vec<DevicePrediction>,
    /// The most RAM any boot used.
    pub ram: RamUse,
    /// The first image's instructions per step (input, then each layer).
    pub profile: Vec<u64>,
    /// The estimated cycles of the same steps, on a board with a cycle model.
    pub profile_cycles: Option<Vec<u64>>,
    /// The first boot's instructions and estimated cycles by function (see
    /// [`ClassifyBoot::functions`]).
    pub functions: Option<Vec<cycles::FunctionCost>>,
}

/// What the device learned in [`learning_scenario`], measured.
#[derive(Clone, Debug, Serialize)]
pub struct LearningReport {
    /// Index of the class learned (the model's class count before).
    pub new_class: usize,
    /// Shots of the new class learned from.
    pub shots: usize,
    /// Images of known classes learned from alongside (rehearsal).
    pub rehearsal: usize,
    /// Test images classified before and after.
    pub test_images: usize,
    /// Accuracy on the new class's test images before and after learning.
    pub new_class_accuracy: BeforeAfter,
    /// Accuracy on the known classes' test images before and after learning.
    pub old_classes_accuracy: BeforeAfter,
    /// `(slot, sequence, class)` the learned head was saved under.
    pub saved: Option<(u32, u32, usize)>,
    /// RAM of the learning boot.
    pub ram: RamUse,
    /// `(slot, sequence)` the reboot restored.
    pub restored_on_reboot: Option<(u32, u32)>,
    /// The reboot restored the saved head and predicts exactly as after learning.
    pub persisted: bool,
    /// Predictions after learning.
    pub images: Vec<DevicePrediction>,
}

/// Accuracy before and after learning (`None`: no such test image).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct BeforeAfter {
    /// With the model as shipped.
    pub before: Option<f64>,
    /// With the head learned on the device.
    pub after: Option<f64>,
}

impl std::fmt::Display for BeforeAfter {
    /// `before -> after` as percentages (`n/a` where there was no such image).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let percent =
            |a: Option<f64>| a.map_or("n/a".to_string(), |a| format!("{:.1} %", 100.0 * a));
        write!(f, "{} -> {}", percent(self.before), percent(self.after))
    }
}

/// Rehearsal images of known classes the learning scenario sends per shot of the new
/// class, unless told otherwise. With the device's class-balanced loss
/// (`App::finetune`), 5 to 20 per shot gave the same accuracy on a 9-class CIFAR-10
/// ResNet-8 learning truck; with one per shot the old classes lost 2 to 4 points more.
pub const REHEARSAL_PER_SHOT: usize = 10;

/// The images of the learning scenario, as one data set.
#[derive(Clone, Debug)]
pub struct LearningSet {
    /// The test images (indices `0..test.len()`), then the examples to learn from.
    pub data: Dataset,
    /// Indices of the examples in `data`: each shot of the new class followed by its
    /// share of the rehearsal images of known classes.
    pub learn: Vec<usize>,
    /// Shots of the new class among them.
    pub shots: usize,
    /// Rehearsal images among them.
    pub rehearsal: usize,
}

/// `test`, followed by the first `shots` images of `pool` labeled `new_class` (the
/// model's next free class index), each followed by its share of the first
/// `rehearsal` images of known classes.
pub fn learning_set(
    new_class: usize,
    test: &Dataset,
    pool: &Dataset,
    shots: usize,
    rehearsal: usize,
) -> Result<LearningSet> {
    let shot_indices: Vec<usize> = (0..pool.len())
        .filter(|&i| usize::from(pool.labels[i]) == new_class)
        .take(shots)
        .collect();
    if shot_indices.is_empty() {
        bail!(
            "no image to learn from is labeled {new_class} (the model has classes 0..{}, so the new class must be labeled {new_class})",
            new_class.saturating_sub(1)
        );
    }
    let rehearsal: Vec<usize> = (0..pool.len())
        .filter(|&i| usize::from(pool.labels[i]) < new_class)
        .take(rehearsal)
        .collect();
    let (k, r) = (shot_indices.len(), rehearsal.len());
    let mut data = test.clone();
    let mut learn = Vec::new();
    for (s, shot) in shot_indices.iter().enumerate() {
        for &i in std::iter::once(shot).chain(&rehearsal[s * r / k..(s + 1) * r / k]) {
            data.pixels.extend_from_slice(pool.image(i));
            data.labels.push(pool.labels[i]);
            learn.push(data.len() - 1);
        }
    }
    Ok(LearningSet {
        data,
        learn,
        shots: k,
        rehearsal: r,
    })
}

/// The on-device learning scenario, three passes of the `finetune` firmware on
/// `device`: the model as shipped on `test`; learning the next free class from
/// `shots` images of it in `pool` (plus `rehearsal` images of known classes), then
/// `test` again; a reboot with the same flash image, which must restore what was
/// learned. The flash image lives in `flash_dir`. Each pass takes as many boots as
/// the board's image region needs: the learning boot holds the examples and the
/// first test images, later boots restore the head from flash and classify the rest.
pub fn learning_scenario(
    device: &Device<'_>,
    test: &Dataset,
    pool: &Dataset,
    shots: usize,
    rehearsal: usize,
    flash_dir: &Path,
    mut on_boot: impl FnMut(&str),
) -> Result<LearningReport> {
    let model =
        tinyres_core::Model::parse(device.model).map_err(|e| anyhow::anyhow!("the model: {e}"))?;
    let new_class = model.num_classes();
    let LearningSet {
        data,
        learn,
        shots,
        rehearsal,
    } = learning_set(new_class, test, pool, shots, rehearsal)?;
    let per_boot = images_per_boot(&device.board, data.image_len());
    if learn.len() >= per_boot {
        bail!(
            "{} examples to learn from ({shots} shots, {rehearsal} rehearsal images) leave no room for a test image in {}'s image region ({per_boot} images of {} bytes): use fewer",
            learn.len(),
            device.board.name,
            data.image_len()
        );
    }
    let test_indices: Vec<usize> = (0..test.len()).collect();
    // The learning boot classifies the test images that fit beside the examples.
    let first = (per_boot - learn.len()).min(test_indices.len());
    let later: Vec<&[usize]> = test_indices[first..].chunks(per_boot).collect();
    let boots = 1 + later.len();
    let fresh = tempdir()?;
    std::fs::create_dir_all(flash_dir)
        .with_context(|| format!("cannot create {}", flash_dir.display()))?;
    on_boot(&format!(
        "pass 1/3: the model as shipped, on {} test images",
        test.len()
    ));
    // Every test image with the head the flash in `dir` holds, in as many boots as
    // they need.
    let classify_all = |dir: &Path| -> Result<Vec<FinetuneBoot>> {
        test_indices
            .chunks(per_boot)
            .map(|chunk| device.finetune(&data, &[], chunk, dir))
            .collect()
    };
    let before = classify_all(&fresh);
    let _ = std::fs::remove_dir_all(&fresh);
    let before = FinetuneBoot::joined(before?);
    on_boot(&format!(
        "pass 2/3: learning from {shots} shots and {rehearsal} rehearsal images{}",
        if boots > 1 {
            format!(", then {} more boots for the test images", boots - 1)
        } else {
            String::new()
        }
    ));
    let learned = device.finetune(&data, &learn, &test_indices[..first], flash_dir)?;
    let mut after = vec![learned];
    for chunk in &later {
        let boot = device.finetune(&data, &[], chunk, flash_dir)?;
        if boot.restored.map(|r| r.1) != after[0].saved.map(|s| s.1) {
            bail!("a boot after learning did not restore the head just learned");
        }
        after.push(boot);
    }
    let after = FinetuneBoot::joined(after);
    on_boot("pass 3/3: reboot with the same flash image");
    let reboot = classify_all(flash_dir)?;
    let restored_everywhere = reboot.iter().all(|b| b.restored == reboot[0].restored);
    let reboot = FinetuneBoot::joined(reboot);
    let classes = |b: &FinetuneBoot| b.predictions.iter().map(|p| p.class).collect::<Vec<_>>();
    let persisted = restored_everywhere
        && reboot.restored.is_some()
        && reboot.restored.map(|r| r.1) == after.saved.map(|s| s.1)
        && classes(&reboot) == classes(&after);
    let accuracy = |b: &FinetuneBoot, new: bool| -> Option<f64> {
        let chosen: Vec<_> = b
            .predictions
            .iter()
            .filter(|p| (usize::from(p.label) == new_class) == new)
            .collect();
        (!chosen.is_empty()).then(|| {
            chosen
                .iter()
                .filter(|p| p.class == usize::from(p.label))
                .count() as f64
                / chosen.len() as f64
        })
    };
    Ok(LearningReport {
        new_class,
        shots,
        rehearsal,
        test_images: test.len(),
        new_class_accuracy: BeforeAfter {
            before: accuracy(&before, true),
            after: accuracy(&after, true),
        },
        old_classes_accuracy: BeforeAfter {
            before: accuracy(&before, false),
            after: accuracy(&after, false),
        },
        saved: after.saved,
        ram: after.ram,
        restored_on_reboot: reboot.restored,
        persisted,
        images: after.predictions,
    })
}
