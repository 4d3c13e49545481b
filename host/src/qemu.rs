//! Runs the firmware in QEMU: builds it for a board, loads a model and images into
//! the emulated memory, decodes the defmt log and converts tick counts to
//! instructions.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::data::Dataset;

/// `-icount shift`: every instruction advances the virtual clock by 2^6 ns.
pub const ICOUNT_SHIFT: u32 = 6;
/// The mps2 boards' SysTick runs on the 25 MHz core clock: 40 ns per tick.
const TICK_NS: u64 = 40;

/// Where the firmware expects the model and the images (see firmware/src/lib.rs).
const MODEL_ADDRESS: u32 = 0x0010_0000;
const MODEL_CAPACITY: usize = 0x0010_0000;
const IMAGES_ADDRESS: u32 = 0x0020_0000;
const IMAGES_CAPACITY: usize = 0x0020_0000;

/// An emulated board.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Board {
    /// Name on the command line.
    pub name: &'static str,
    /// QEMU `-machine`.
    pub machine: &'static str,
    /// QEMU `-cpu`.
    pub cpu: &'static str,
    /// Rust target the firmware is built for.
    pub target: &'static str,
}

/// Boards `tinyres run` supports today.
pub const BOARDS: [Board; 3] = [
    Board {
        name: "mps2-an386",
        machine: "mps2-an386",
        cpu: "cortex-m4",
        target: "thumbv7em-none-eabihf",
    },
    Board {
        name: "mps2-an500",
        machine: "mps2-an500",
        cpu: "cortex-m7",
        target: "thumbv7em-none-eabihf",
    },
    Board {
        name: "mps2-an385",
        machine: "mps2-an385",
        cpu: "cortex-m3",
        target: "thumbv7m-none-eabi",
    },
];

impl Board {
    /// The board called `name`.
    pub fn by_name(name: &str) -> Result<Board> {
        match BOARDS.iter().find(|b| b.name == name) {
            Some(b) => Ok(*b),
            None => {
                let known: Vec<&str> = BOARDS.iter().map(|b| b.name).collect();
                bail!(
                    "unknown or not yet supported board {name:?}; supported: {} (mps2-an505, mps3-an547 and virt-a53 are planned)",
                    known.join(", ")
                )
            }
        }
    }
}

/// The firmware package: `TINYRES_FIRMWARE_DIR`, else the checkout this binary was
/// built from.
pub fn firmware_dir() -> PathBuf {
    std::env::var_os("TINYRES_FIRMWARE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../firmware"))
}

/// Arena of the QEMU firmware builds unless a model needs more.
pub const DEFAULT_ARENA_BYTES: usize = 256 * 1024;

/// Builds (if needed: cargo decides) the `classify` firmware for `board` with a static
/// arena of `arena_bytes`; returns the ELF's path. Cargo's progress goes to stderr.
pub fn build_firmware(board: &Board, arena_bytes: usize) -> Result<PathBuf> {
    let dir = firmware_dir();
    if !dir.join("Cargo.toml").exists() {
        bail!(
            "firmware sources not found at {} (set TINYRES_FIRMWARE_DIR to the repository's firmware/)",
            dir.display()
        );
    }
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(&dir)
        .args([
            "build",
            "--quiet",
            "--release",
            "--bin",
            "classify",
            "--target",
            board.target,
        ])
        // The firmware's own .cargo/config.toml holds its flags; these would replace them.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env("TINYRES_ARENA_BYTES", arena_bytes.to_string())
        .status()
        .context("cannot run cargo to build the firmware")?;
    if !status.success() {
        bail!(
            "building the firmware for {} ({}) failed",
            board.name,
            board.target
        );
    }
    Ok(dir
        .join("target")
        .join(board.target)
        .join("release")
        .join("classify"))
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
}

/// The image region the firmware reads (see `Images` in firmware/src/lib.rs).
pub fn image_region(data: &Dataset, range: std::ops::Range<usize>) -> Vec<u8> {
    let count = range.len();
    let mut bytes = Vec::with_capacity(16 + count.next_multiple_of(16) + count * data.image_len());
    bytes.extend_from_slice(b"TRIM");
    bytes.extend_from_slice(&(count as u32).to_le_bytes());
    for dim in [data.height, data.width, data.channels, 0] {
        bytes.extend_from_slice(&(dim as u16).to_le_bytes());
    }
    bytes.extend_from_slice(&data.labels[range.clone()]);
    bytes.resize(16 + count.next_multiple_of(16), 0);
    for i in range {
        bytes.extend_from_slice(data.image(i));
    }
    bytes
}

/// Images that fit in one boot.
pub fn images_per_boot(image_len: usize) -> usize {
    ((IMAGES_CAPACITY - 16) / (image_len + 1))
        .saturating_sub(16)
        .max(1)
}

/// Boots `elf` on `board` with `model` and the images `range` of `data`; returns the
/// device's predictions for them.
pub fn classify(
    board: &Board,
    elf: &Path,
    model: &[u8],
    data: &Dataset,
    range: std::ops::Range<usize>,
    timeout: Duration,
) -> Result<Vec<DevicePrediction>> {
    if model.len() > MODEL_CAPACITY {
        bail!(
            "the model is {} bytes; the QEMU model partition holds {MODEL_CAPACITY}",
            model.len()
        );
    }
    let region = image_region(data, range.clone());
    if region.len() > IMAGES_CAPACITY {
        bail!(
            "{} images do not fit in the {IMAGES_CAPACITY}-byte image region",
            range.len()
        );
    }
    let work = tempdir()?;
    let model_path = work.join("model.trm");
    let images_path = work.join("images.bin");
    std::fs::write(&model_path, model)
        .with_context(|| format!("cannot write {}", model_path.display()))?;
    std::fs::write(&images_path, &region)
        .with_context(|| format!("cannot write {}", images_path.display()))?;
    let output = run_qemu(
        board,
        elf,
        &[(&model_path, MODEL_ADDRESS), (&images_path, IMAGES_ADDRESS)],
        timeout,
    );
    let _ = std::fs::remove_dir_all(&work);
    let (log, success) = output?;
    let lines = decode_defmt(elf, &log)?;
    if !success {
        bail!(
            "the firmware on {} failed:\n{}",
            board.name,
            lines.join("\n")
        );
    }
    let mut predictions = Vec::new();
    for line in &lines {
        if let Some(p) = parse_prediction(line, range.start)? {
            predictions.push(p);
        }
    }
    if predictions.len() != range.len() || !lines.iter().any(|l| l.starts_with("done ")) {
        bail!(
            "the firmware reported {} of {} images:\n{}",
            predictions.len(),
            range.len(),
            lines.join("\n")
        );
    }
    Ok(predictions)
}

/// Runs QEMU; returns its standard output (the semihosting console: defmt frames) and
/// whether the firmware exited with success.
fn run_qemu(
    board: &Board,
    elf: &Path,
    loads: &[(&Path, u32)],
    timeout: Duration,
) -> Result<(Vec<u8>, bool)> {
    let mut cmd = Command::new("qemu-system-arm");
    cmd.args(["-machine", board.machine, "-cpu", board.cpu])
        .args([
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            "none",
            "-nodefaults",
        ])
        .args(["-semihosting-config", "enable=on,target=native"])
        .args(["-icount", &format!("shift={ICOUNT_SHIFT},sleep=off")])
        .arg("-kernel")
        .arg(elf);
    for (file, address) in loads {
        cmd.arg("-device").arg(format!(
            "loader,file={},addr={address:#x},force-raw=on",
            file.display()
        ));
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => anyhow::anyhow!(
                "qemu-system-arm is not installed (Debian/Ubuntu: sudo apt-get install qemu-system-arm)"
            ),
            _ => anyhow::anyhow!("cannot start qemu-system-arm: {e}"),
        })?;
    let mut stdout = child.stdout.take().context("qemu stdout")?;
    let reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut bytes).map(|_| bytes)
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
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
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }
    if !status.success() && stdout.is_empty() {
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
    Ok((stdout, status.success()))
}

/// Decodes defmt frames with the table in `elf`; one line per frame.
pub fn decode_defmt(elf: &Path, bytes: &[u8]) -> Result<Vec<String>> {
    let elf_bytes = std::fs::read(elf).with_context(|| format!("cannot read {}", elf.display()))?;
    let table = defmt_decoder::Table::parse(&elf_bytes)
        .map_err(|e| anyhow::anyhow!("{}: bad defmt table: {e}", elf.display()))?
        .with_context(|| format!("{} has no defmt table", elf.display()))?;
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

/// Parses `image=I label=L class=C ticks=T`; `offset` is the batch's first index.
fn parse_prediction(line: &str, offset: usize) -> Result<Option<DevicePrediction>> {
    if !line.starts_with("image=") {
        return Ok(None);
    }
    let field = |name: &str| -> Result<u64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
            .with_context(|| format!("firmware line without {name}: {line}"))?
            .parse()
            .with_context(|| format!("bad {name} in firmware line: {line}"))
    };
    let ticks = field("ticks")?;
    Ok(Some(DevicePrediction {
        index: offset + field("image")? as usize,
        label: field("label")? as u8,
        class: field("class")? as usize,
        instructions: ticks_to_instructions(ticks),
    }))
}

/// SysTick ticks (40 ns each) to instructions (2^ICOUNT_SHIFT ns each), rounded.
pub fn ticks_to_instructions(ticks: u64) -> u64 {
    let ns_per_instruction = 1u64 << ICOUNT_SHIFT;
    (ticks * TICK_NS + ns_per_instruction / 2) / ns_per_instruction
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
        let p = parse_prediction("image=3 label=7 class=2 ticks=1600", 100)
            .unwrap()
            .unwrap();
        assert_eq!(
            p,
            DevicePrediction {
                index: 103,
                label: 7,
                class: 2,
                instructions: 1000
            }
        );
        assert_eq!(parse_prediction("done count=4", 0).unwrap(), None);
        assert!(parse_prediction("image=x label=1 class=1 ticks=1", 0).is_err());
    }

    #[test]
    fn unknown_boards_are_named() {
        assert_eq!(Board::by_name("mps2-an386").unwrap().cpu, "cortex-m4");
        let err = Board::by_name("esp32").unwrap_err().to_string();
        assert!(err.contains("esp32") && err.contains("mps2-an386"), "{err}");
    }
}
