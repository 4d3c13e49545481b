//! One module per subcommand: its arguments (a `clap::Args` struct) and the function
//! that runs it. What several commands share is here.

pub mod bench;
pub mod compile;
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
use tinyres_compile::arch::{Architecture, Block, Shortcut, NAMES};
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
    /// Architecture name: resnet8, resnet{20,32,44,56,110}, plain{..}, resnetN-bottleneck.
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
    /// Number of classes; default: the architecture's own (10).
    #[arg(long)]
    classes: Option<usize>,
    /// Filters per stage, comma-separated (e.g. 16,32,64); the stem takes the first.
    #[arg(long, value_delimiter = ',')]
    widths: Vec<usize>,
    /// Blocks per stage (depth = 6n+2 for basic blocks).
    #[arg(long)]
    blocks_per_stage: Option<usize>,
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
        arch.blocks_per_stage = self.blocks_per_stage.unwrap_or(arch.blocks_per_stage);
        if arch.classes == 0 {
            bail!("--classes must be at least 1");
        }
        if arch.stage_widths.is_empty()
            || arch.stage_widths.contains(&0)
            || arch.blocks_per_stage == 0
        {
            bail!("--widths and --blocks-per-stage must be positive");
        }
        Ok(arch)
    }
}
