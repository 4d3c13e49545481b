//! One module per subcommand: its arguments (a `clap::Args` struct) and the function
//! that runs it. What several commands share is here.

pub mod bench;
pub mod compile;
pub mod cycles;
#[cfg(feature = "train")]
pub mod demo;
pub mod eval;
#[cfg(feature = "train")]
pub mod export;
#[cfg(feature = "flash")]
pub mod flash;
pub mod inspect;
pub mod plan;
#[cfg(feature = "train")]
pub mod plot;
pub mod run;
#[cfg(feature = "train")]
pub mod train;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tinyres_compile::arch::{Architecture, Block, Shortcut, StageBlocks, NAMES};
use tinyres_compile::fit::{Chip, Fit};
use tinyres_compile::onnx::parse_range;
use tinyres_compile::writer::AlignedBlob;
use tinyres_compile::PreprocessingFlags;
use tinyres_core::Model;

/// Prints `value` as pretty JSON on stdout.
pub fn print_json(value: &impl Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Reads a blob file into aligned memory and validates it.
pub fn load_blob(path: &Path) -> Result<AlignedBlob> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let blob = AlignedBlob::new(&bytes);
    if let Err(e) = Model::parse(blob.as_bytes()) {
        bail!("{}: {e}", path.display());
    }
    Ok(blob)
}

/// The chip a model must fit (`compile`, `plan`, `inspect`).
#[derive(clap::Args, Debug)]
pub struct FitArgs {
    /// Check that the model fits this chip or QEMU board: its arena and the engine's
    /// stack in RAM, its blob and the engine's code in flash (the engine's figures
    /// measured on the chip's core). A model that does not fit is refused, naming the
    /// figures. Chips: stm32f411, stm32f446, stm32l4r5, stm32h743, nrf52840, rp2040,
    /// stm32g071, and the QEMU boards of `tinyres run`.
    #[arg(long, value_name = "CHIP")]
    board: Option<String>,
    /// RAM the model may use, instead of the chip's (e.g. 96K: what your firmware
    /// leaves). Needs --board, for the core.
    #[arg(long, value_name = "BYTES", requires = "board", value_parser = tinyres_compile::fit::parse_size)]
    ram: Option<u64>,
    /// Flash the model and the engine may use, instead of the chip's (e.g. 256K).
    /// Needs --board.
    #[arg(long, value_name = "BYTES", requires = "board", value_parser = tinyres_compile::fit::parse_size)]
    flash: Option<u64>,
}

impl FitArgs {
    /// What `model` (its blob `blob_bytes` long) needs of the chip, if one was named.
    pub fn fit(&self, model: &Model<'_>, blob_bytes: usize) -> Result<Option<Fit>> {
        let Some(name) = &self.board else {
            return Ok(None);
        };
        let chip = Chip::by_name(name).map_err(anyhow::Error::msg)?;
        Ok(Some(Fit::new(
            model,
            blob_bytes as u64,
            Some(chip.name),
            chip.core,
            self.ram.unwrap_or(chip.ram),
            self.flash.unwrap_or(chip.flash),
        )))
    }
}

/// Refuses a model that does not fit (`bail!` with the figures).
pub fn check_fit(fit: &Option<Fit>) -> Result<()> {
    match fit {
        Some(fit) => fit.check().map_err(anyhow::Error::msg),
        None => Ok(()),
    }
}

/// How raw pixels become an ONNX model's input, where its metadata does not say.
#[derive(clap::Args, Debug)]
pub struct PreprocessingArgs {
    /// Scale of the model's input: 0..255 (raw pixels) or 0..1 (pixels / 255).
    #[arg(long, value_name = "0..255|0..1")]
    input_range: Option<String>,
    /// Per-channel mean subtracted after scaling, comma-separated.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    mean: Vec<f32>,
    /// Per-channel standard deviation divided by, comma-separated.
    #[arg(long, value_delimiter = ',')]
    std: Vec<f32>,
}

impl PreprocessingArgs {
    /// The flags as the compiler takes them.
    pub fn flags(&self) -> Result<PreprocessingFlags> {
        Ok(PreprocessingFlags {
            range: self.input_range.as_deref().map(parse_range).transpose()?,
            mean: (!self.mean.is_empty()).then(|| self.mean.clone()),
            std: (!self.std.is_empty()).then(|| self.std.clone()),
        })
    }
}

/// Which network: a named architecture, optionally changed by flags, or a file.
#[derive(clap::Args, Debug)]
pub struct ArchArgs {
    /// Architecture name: resnet8, resnet{20,32,44,56,110}, plain{..}, resnetN-bottleneck
    /// (CIFAR-10 layout); resnet{18,34,50,101,152}, plain{18,34} (ImageNet layout).
    #[arg(long, default_value = "resnet8")]
    arch: String,
    /// A JSON architecture file (the `arch` object of a run's config.json) instead
    /// of a name.
    #[arg(long, value_name = "FILE.json", conflicts_with = "arch")]
    arch_file: Option<PathBuf>,
    /// Shortcut option (A, B, C or none); default: the architecture's own.
    #[arg(long)]
    shortcut: Option<Shortcut>,
    /// Block type (basic or bottleneck); default: the architecture's own.
    #[arg(long)]
    block: Option<Block>,
    /// Number of classes; default: the architecture's own (10 for the CIFAR layout,
    /// 1,000 for the ImageNet one).
    #[arg(long)]
    classes: Option<usize>,
    /// Filters per stage, comma-separated (e.g. 16,32,64); the stem takes the first.
    #[arg(long, value_delimiter = ',')]
    widths: Vec<usize>,
    /// Blocks per stage: one count for every stage (depth = 6n+2 for basic blocks) or
    /// one per stage, comma-separated (ResNet-18: 2,2,2,2).
    #[arg(long, value_delimiter = ',')]
    blocks_per_stage: Vec<usize>,
    /// Input image size, `N` or `HxW` (RGB); default: the architecture's own (32 for
    /// the CIFAR layout, 224 for the ImageNet one).
    #[arg(long, value_name = "N|HxW", value_parser = parse_input_size)]
    input_size: Option<(usize, usize)>,
}

/// `N` or `HxW`, each at least 1.
fn parse_input_size(text: &str) -> Result<(usize, usize)> {
    let number = |t: &str| -> Result<usize> {
        match t.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => bail!("{text:?}: expected N or HxW with positive numbers"),
        }
    };
    match text.split_once(['x', 'X']) {
        Some((h, w)) => Ok((number(h)?, number(w)?)),
        None => number(text).map(|n| (n, n)),
    }
}

impl ArchArgs {
    /// The architecture the flags describe.
    pub fn resolve(&self) -> Result<Architecture> {
        let mut arch = match &self.arch_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("{}: cannot read", path.display()))?;
                serde_json::from_str(&text)
                    .with_context(|| format!("{}: not an architecture file", path.display()))?
            }
            None => Architecture::by_name(&self.arch)
                .with_context(|| format!("known architectures: {NAMES}"))?,
        };
        arch.shortcut = self.shortcut.unwrap_or(arch.shortcut);
        arch.block = self.block.unwrap_or(arch.block);
        arch.classes = self.classes.unwrap_or(arch.classes);
        if !self.widths.is_empty() {
            arch.stem_width = self.widths[0];
            arch.stage_widths = self.widths.clone();
        }
        match self.blocks_per_stage[..] {
            [] => {}
            [n] => arch.blocks_per_stage = StageBlocks::Each(n),
            ref counts => arch.blocks_per_stage = StageBlocks::PerStage(counts.to_vec()),
        }
        if let Some((h, w)) = self.input_size {
            arch.input = (h, w, arch.input.2);
        }
        arch.check().context(
            "check --widths, --blocks-per-stage, --classes and --input-size (all positive; \
             as many block counts as widths)",
        )?;
        Ok(arch)
    }
}
