//! The ResNet family as one description that every stage reads (planning, training,
//! export and compilation): the paper's CIFAR networks `resnet{20,32,44,56,110}` and
//! their `plain*` twins, the MLPerf Tiny `resnet8`, the paper's ImageNet networks
//! `resnet{18,34,50,101,152}` and `plain{18,34}` (7×7 stem and max pool), with basic or
//! bottleneck blocks and shortcut options A, B or C.

use std::fmt;
use std::str::FromStr;

use crate::writer::{
    ConvSpec, DenseSpec, InputSpec, LayerSpec, MaxPoolSpec, Network, ResidualSpec,
};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tinyres_core::InputRange;

/// How a block's input reaches its output (He et al. 2016, section 4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Shortcut {
    /// Identity; where the shape changes, stride-2 subsampling and zero-padded
    /// channels (no parameters). The paper's choice on CIFAR-10.
    A,
    /// Identity; a 1×1 projection where the shape changes.
    B,
    /// A 1×1 projection on every block.
    C,
    /// No shortcut: the plain network.
    None,
}

impl FromStr for Shortcut {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "a" => Shortcut::A,
            "b" => Shortcut::B,
            "c" => Shortcut::C,
            "none" | "plain" => Shortcut::None,
            _ => bail!("unknown shortcut option {s:?} (expected A, B, C or none)"),
        })
    }
}

/// The residual block type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Block {
    /// Two 3×3 convolutions.
    Basic,
    /// 1×1 reduce, 3×3, 1×1 expand (×4).
    Bottleneck,
}

impl FromStr for Block {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "basic" => Ok(Block::Basic),
            "bottleneck" => Ok(Block::Bottleneck),
            _ => bail!("unknown block type {s:?} (expected basic or bottleneck)"),
        }
    }
}

/// Where a same-size 3×3 convolution puts its padding when the stride is 2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Padding {
    /// `k/2` on every side (PyTorch).
    Symmetric,
    /// TensorFlow `SAME`: the extra row and column go bottom and right (Keras models
    /// such as the MLPerf Tiny ResNet-8).
    TfSame,
}

/// The layers before the first stage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stem {
    /// A 3×3 stride-1 convolution (the paper's CIFAR-10 networks).
    #[default]
    Cifar,
    /// A 7×7 stride-2 convolution, then a 3×3 stride-2 max pool (the paper's ImageNet
    /// networks): the first stage sees a quarter of the input's rows and columns.
    ImageNet,
}

/// Blocks in each stage: one count for all, or one per stage (the ImageNet networks').
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StageBlocks {
    /// The same count in every stage.
    Each(usize),
    /// One count per stage.
    PerStage(Vec<usize>),
}

/// A network of the family.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Architecture {
    /// Name as given on the command line.
    pub name: String,
    /// Input `(height, width, channels)`.
    pub input: (usize, usize, usize),
    /// The layers before the first stage (absent in files from before the ImageNet
    /// networks: the CIFAR stem).
    #[serde(default)]
    pub stem: Stem,
    /// Filters of the stem convolution.
    pub stem_width: usize,
    /// Filters of each stage (the bottleneck's inner width for bottleneck blocks);
    /// every stage after the first halves the resolution.
    pub stage_widths: Vec<usize>,
    /// Blocks in each stage.
    pub blocks_per_stage: StageBlocks,
    /// Block type.
    pub block: Block,
    /// Shortcut option.
    pub shortcut: Shortcut,
    /// Output classes.
    pub classes: usize,
    /// Padding convention.
    pub padding: Padding,
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({} layers, {:?} blocks, shortcut {:?}, widths {:?})",
            self.name,
            self.depth(),
            self.block,
            self.shortcut,
            self.stage_widths
        )
    }
}

/// Names accepted by [`Architecture::by_name`].
pub const NAMES: &str = "resnet8, resnet{20,32,44,56,110}, plain{20,32,44,56,110}, \
resnetN-bottleneck (N = 9n+2), resnet{18,34,50,101,152} and plain{18,34} (ImageNet)";

impl Architecture {
    /// The named architecture with the paper's defaults (CIFAR-10: 32×32×3, 10
    /// classes, widths 16/32/64, option A; `resnet8` is MLPerf Tiny's: option B,
    /// TensorFlow padding).
    pub fn by_name(name: &str) -> Result<Self> {
        let cifar = |depth: usize, block: Block, shortcut: Shortcut| -> Result<Self> {
            let per_block = match block {
                Block::Basic => 6,
                Block::Bottleneck => 9,
            };
            if depth < 2 + per_block || !(depth - 2).is_multiple_of(per_block) {
                bail!("depth {depth} is not {per_block}n+2 for {block:?} blocks");
            }
            Ok(Architecture {
                name: name.to_string(),
                input: (32, 32, 3),
                stem: Stem::Cifar,
                stem_width: 16,
                stage_widths: vec![16, 32, 64],
                blocks_per_stage: StageBlocks::Each((depth - 2) / per_block),
                block,
                shortcut,
                classes: 10,
                padding: Padding::Symmetric,
            })
        };
        // The paper's Table 1: 224×224, stages 64-128-256-512, option B (its default
        // for the comparisons of Table 3 onwards), 1,000 classes.
        let imagenet = |blocks: [usize; 4], block: Block, shortcut: Shortcut| Architecture {
            name: name.to_string(),
            input: (224, 224, 3),
            stem: Stem::ImageNet,
            stem_width: 64,
            stage_widths: vec![64, 128, 256, 512],
            blocks_per_stage: StageBlocks::PerStage(blocks.to_vec()),
            block,
            shortcut,
            classes: 1000,
            padding: Padding::Symmetric,
        };
        let lower = name.to_ascii_lowercase();
        match lower.as_str() {
            "resnet18" => return Ok(imagenet([2, 2, 2, 2], Block::Basic, Shortcut::B)),
            "resnet34" => return Ok(imagenet([3, 4, 6, 3], Block::Basic, Shortcut::B)),
            "resnet50" => return Ok(imagenet([3, 4, 6, 3], Block::Bottleneck, Shortcut::B)),
            "resnet101" => return Ok(imagenet([3, 4, 23, 3], Block::Bottleneck, Shortcut::B)),
            "resnet152" => return Ok(imagenet([3, 8, 36, 3], Block::Bottleneck, Shortcut::B)),
            "plain18" => return Ok(imagenet([2, 2, 2, 2], Block::Basic, Shortcut::None)),
            "plain34" => return Ok(imagenet([3, 4, 6, 3], Block::Basic, Shortcut::None)),
            _ => {}
        }
        if lower == "resnet8" {
            return Ok(Architecture {
                shortcut: Shortcut::B,
                padding: Padding::TfSame,
                ..cifar(8, Block::Basic, Shortcut::B)?
            });
        }
        let parse_depth = |digits: &str| -> Result<usize> {
            digits
                .parse()
                .map_err(|_| anyhow::anyhow!("unknown architecture {name:?}; known: {NAMES}"))
        };
        if let Some(rest) = lower.strip_prefix("resnet") {
            if let Some(depth) = rest.strip_suffix("-bottleneck") {
                return cifar(parse_depth(depth)?, Block::Bottleneck, Shortcut::B);
            }
            return cifar(parse_depth(rest)?, Block::Basic, Shortcut::A);
        }
        if let Some(rest) = lower.strip_prefix("plain") {
            return cifar(parse_depth(rest)?, Block::Basic, Shortcut::None);
        }
        bail!("unknown architecture {name:?}; known: {NAMES}")
    }

    /// Weighted layers, counted as the paper does (convolutions and the classifier,
    /// not projections).
    pub fn depth(&self) -> usize {
        let per_block = match self.block {
            Block::Basic => 2,
            Block::Bottleneck => 3,
        };
        let blocks: usize = (0..self.stage_widths.len())
            .map(|stage| self.blocks_in(stage))
            .sum();
        2 + per_block * blocks
    }

    /// Blocks in stage `stage` (0 past the listed stages: [`Self::check`] refuses that).
    pub fn blocks_in(&self, stage: usize) -> usize {
        match &self.blocks_per_stage {
            StageBlocks::Each(n) => *n,
            StageBlocks::PerStage(counts) => counts.get(stage).copied().unwrap_or(0),
        }
    }

    /// What is wrong with the description, if anything: no stages, a zero width or
    /// block count, per-stage counts that do not match the stages, no classes.
    pub fn check(&self) -> Result<()> {
        let (h, w, c) = self.input;
        if h == 0 || w == 0 || c == 0 {
            bail!("{}: the input must be at least 1×1×1", self.name);
        }
        if self.classes == 0 {
            bail!("{}: at least 1 class", self.name);
        }
        if self.stage_widths.is_empty() || self.stage_widths.contains(&0) || self.stem_width == 0 {
            bail!("{}: widths must be positive", self.name);
        }
        if let StageBlocks::PerStage(counts) = &self.blocks_per_stage {
            if counts.len() != self.stage_widths.len() {
                bail!(
                    "{}: {} block counts for {} stages",
                    self.name,
                    counts.len(),
                    self.stage_widths.len()
                );
            }
        }
        if (0..self.stage_widths.len()).any(|stage| self.blocks_in(stage) == 0) {
            bail!("{}: every stage needs at least one block", self.name);
        }
        Ok(())
    }

    /// The network with He-uniform weights from `seed` and batch norm at its
    /// initial state (folded: scale 1, shift 0).
    pub fn network(&self, seed: u64) -> Result<Network> {
        self.check()?;
        let (h, w, c) = self.input;
        let mut b = NetBuilder {
            rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            layers: Vec::new(),
            shapes: vec![(h, w, c)],
        };
        let mut x = match self.stem {
            Stem::Cifar => b.conv(self, 0, self.stem_width, 3, 1, true, None),
            Stem::ImageNet => {
                let stem = b.conv(self, 0, self.stem_width, 7, 2, true, None);
                let (sh, sw, _) = b.shapes[stem];
                let pool = MaxPoolSpec {
                    input: stem,
                    kernel: (3, 3),
                    stride: 2,
                    padding: self.conv_padding((sh, sw), 3, 2),
                };
                let (ph, pw) = self.window_output((sh, sw), 3, 2);
                b.layer(LayerSpec::MaxPool(pool), |(_, _, c)| (ph, pw, c))
            }
        };
        for plan in self.blocks() {
            x = self.block(&mut b, x, &plan);
        }
        let pooled = b.layer(LayerSpec::GlobalAvgPool { input: x }, |(_, _, c)| (1, 1, c));
        let features = b.shapes[pooled].2;
        let bound = (6.0 / features as f64).sqrt();
        let weights = (0..self.classes * features)
            .map(|_| b.uniform(bound))
            .collect();
        let classes = self.classes;
        b.layer(
            LayerSpec::Dense(DenseSpec {
                input: pooled,
                out_features: classes,
                weights,
                bias: vec![0.0; classes],
                relu: false,
            }),
            |_| (1, 1, classes),
        );
        Ok(Network {
            input: InputSpec {
                height: h,
                width: w,
                channels: c,
                range: InputRange::Unit,
                mean: vec![0.0; c],
                std: vec![1.0; c],
            },
            layers: b.layers,
            features: Some(pooled),
            class_names: Vec::new(),
        })
    }

    /// Every residual block in order, with its shapes and how its shortcut is formed:
    /// the one description that the engine network ([`Self::network`]) and the trainer's
    /// burn model both follow.
    pub fn blocks(&self) -> Vec<BlockPlan> {
        let mut plans = Vec::new();
        let mut in_channels = self.stem_width;
        for (stage, &width) in self.stage_widths.iter().enumerate() {
            for block in 0..self.blocks_in(stage) {
                let stride = if stage > 0 && block == 0 { 2 } else { 1 };
                let out_channels = match self.block {
                    Block::Basic => width,
                    Block::Bottleneck => 4 * width,
                };
                let reshapes = stride != 1 || in_channels != out_channels;
                let shortcut = match (self.shortcut, reshapes) {
                    (Shortcut::None, _) => ShortcutPlan::None,
                    (Shortcut::A, true) => ShortcutPlan::ZeroPad {
                        stride,
                        channel_offset: (out_channels - in_channels.min(out_channels)) / 2,
                    },
                    (Shortcut::A | Shortcut::B, false) => ShortcutPlan::Identity,
                    (Shortcut::B, true) | (Shortcut::C, _) => ShortcutPlan::Projection,
                };
                plans.push(BlockPlan {
                    in_channels,
                    width,
                    out_channels,
                    stride,
                    shortcut,
                });
                in_channels = out_channels;
            }
        }
        plans
    }

    /// Padding `[top, left, bottom, right]` of a `k`×`k` convolution with this stride
    /// over an `h`×`w` input, by the architecture's convention.
    pub fn conv_padding(&self, (h, w): (usize, usize), k: usize, stride: usize) -> [usize; 4] {
        match self.padding {
            Padding::Symmetric => [k / 2; 4],
            Padding::TfSame => {
                let total = |n: usize| ((n.div_ceil(stride) - 1) * stride + k).saturating_sub(n);
                let (th, tw) = (total(h), total(w));
                [th / 2, tw / 2, th - th / 2, tw - tw / 2]
            }
        }
    }

    /// Output `(rows, columns)` of a `k`×`k` window (k odd: 1, 3 or 7) with this stride
    /// over an `h`×`w` input padded by [`Self::conv_padding`], which always pads the
    /// input to at least the window.
    pub fn window_output(&self, (h, w): (usize, usize), k: usize, stride: usize) -> (usize, usize) {
        let [top, left, bottom, right] = self.conv_padding((h, w), k, stride);
        (
            (h + top + bottom - k) / stride + 1,
            (w + left + right - k) / stride + 1,
        )
    }

    fn block(&self, b: &mut NetBuilder, x: usize, plan: &BlockPlan) -> usize {
        let &BlockPlan {
            width,
            out_channels: out_c,
            stride,
            shortcut,
            ..
        } = plan;
        let identity = |stride, channel_offset| ResidualSpec {
            tensor: x,
            stride,
            channel_offset,
            relu: true,
        };
        // The residual branch, and the projection computed just before the last
        // convolution so that the plan keeps as few buffers live as possible.
        let inner = match self.block {
            Block::Basic => b.conv(self, x, width, 3, stride, true, None),
            Block::Bottleneck => {
                let reduced = b.conv(self, x, width, 1, 1, true, None);
                b.conv(self, reduced, width, 3, stride, true, None)
            }
        };
        let residual = match shortcut {
            ShortcutPlan::None => None,
            ShortcutPlan::Identity => Some(identity(1, 0)),
            ShortcutPlan::ZeroPad {
                stride,
                channel_offset,
            } => Some(identity(stride, channel_offset)),
            ShortcutPlan::Projection => {
                let projection = b.conv(self, x, out_c, 1, stride, false, None);
                Some(ResidualSpec {
                    tensor: projection,
                    stride: 1,
                    channel_offset: 0,
                    relu: true,
                })
            }
        };
        let k = match self.block {
            Block::Basic => 3,
            Block::Bottleneck => 1,
        };
        let plain = shortcut == ShortcutPlan::None;
        b.conv(self, inner, out_c, k, 1, plain, residual)
    }
}

/// One residual block of an [`Architecture`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockPlan {
    /// Channels in.
    pub in_channels: usize,
    /// Filters of the 3×3 convolutions (the inner width of a bottleneck).
    pub width: usize,
    /// Channels out.
    pub out_channels: usize,
    /// Stride of the block's first 3×3 convolution and of its shortcut.
    pub stride: usize,
    /// How the input reaches the output.
    pub shortcut: ShortcutPlan,
}

/// The shortcut of one block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShortcutPlan {
    /// None: a plain network.
    None,
    /// The input as it is.
    Identity,
    /// Option A where the shape changes: every `stride`-th pixel, the channels placed
    /// from `channel_offset` with zeros around them.
    ZeroPad {
        /// Subsampling step.
        stride: usize,
        /// Zero channels before the input's channels.
        channel_offset: usize,
    },
    /// A 1×1 convolution with batch norm (options B and C).
    Projection,
}

struct NetBuilder {
    rng: u64,
    layers: Vec<LayerSpec>,
    shapes: Vec<(usize, usize, usize)>,
}

impl NetBuilder {
    /// Uniform in `[-bound, bound)` (xorshift64*).
    fn uniform(&mut self, bound: f64) -> f32 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let bits = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
        ((bits as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * bound) as f32
    }

    fn layer(
        &mut self,
        layer: LayerSpec,
        shape: impl FnOnce((usize, usize, usize)) -> (usize, usize, usize),
    ) -> usize {
        let input = match &layer {
            LayerSpec::Conv(c) => c.input,
            LayerSpec::GlobalAvgPool { input } => *input,
            LayerSpec::Dense(d) => d.input,
            LayerSpec::MaxPool(p) => p.input,
            LayerSpec::Softmax { input, .. } | LayerSpec::Mean { input } => *input,
        };
        let out = shape(self.shapes[input]);
        self.layers.push(layer);
        self.shapes.push(out);
        self.shapes.len() - 1
    }

    #[allow(clippy::too_many_arguments)]
    fn conv(
        &mut self,
        arch: &Architecture,
        input: usize,
        out_c: usize,
        k: usize,
        stride: usize,
        relu: bool,
        residual: Option<ResidualSpec>,
    ) -> usize {
        let (h, w, in_c) = self.shapes[input];
        let padding = arch.conv_padding((h, w), k, stride);
        let bound = (6.0 / (in_c * k * k) as f64).sqrt();
        let weights = (0..out_c * k * k * in_c)
            .map(|_| self.uniform(bound))
            .collect();
        let (oh, ow) = arch.window_output((h, w), k, stride);
        self.layer(
            LayerSpec::Conv(ConvSpec {
                input,
                out_channels: out_c,
                kernel: (k, k),
                stride,
                padding,
                weights,
                bias: vec![0.0; out_c],
                relu,
                residual,
            }),
            |_| (oh, ow, out_c),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(net: &Network) -> usize {
        net.layers
            .iter()
            .map(|l| match l {
                LayerSpec::Conv(c) => c.weights.len() + c.bias.len(),
                LayerSpec::Dense(d) => d.weights.len() + d.bias.len(),
                LayerSpec::GlobalAvgPool { .. }
                | LayerSpec::Mean { .. }
                | LayerSpec::MaxPool(_)
                | LayerSpec::Softmax { .. } => 0,
            })
            .sum()
    }

    /// torchvision's parameter counts (`sum(p.numel())`), less one of batch norm's two
    /// parameters per channel (folded into the convolution's bias here). MACs as
    /// [`Network::macs`] counts them (with the pools' comparisons and sums): the paper's
    /// Table 1 gives 1.8 × 10⁹ for ResNet-18, and 3.8 × 10⁹ for ResNet-50, whose
    /// stride sits in the first 1×1 convolution; here, as in torchvision, it sits in
    /// the 3×3 (4.1 × 10⁹).
    #[test]
    fn imagenet_resnets_match_torchvision() {
        for (name, torchvision, bn_channels, macs) in [
            ("resnet18", 11_689_512, 4_800, 1_815_904_768),
            ("resnet50", 25_557_032, 26_560, 4_091_090_944),
        ] {
            let net = Architecture::by_name(name).unwrap().network(1).unwrap();
            assert_eq!(params(&net), torchvision - bn_channels, "{name}");
            assert_eq!(net.macs().unwrap().iter().sum::<u64>(), macs, "{name}");
            let pools = net
                .layers
                .iter()
                .filter(|l| matches!(l, LayerSpec::MaxPool(_)));
            assert_eq!(pools.count(), 1, "{name}");
        }
        let resnet34 = Architecture::by_name("resnet34").unwrap();
        assert_eq!(resnet34.depth(), 34);
        assert_eq!(Architecture::by_name("resnet152").unwrap().depth(), 152);
        assert_eq!(
            Architecture::by_name("plain34").unwrap().shortcut,
            Shortcut::None
        );
    }

    /// Architecture files from before the ImageNet networks (no `stem`, one block count)
    /// still read, as the CIFAR layout.
    #[test]
    fn old_architecture_files_read_as_the_cifar_layout() {
        let mut old = serde_json::to_value(Architecture::by_name("resnet20").unwrap()).unwrap();
        assert_eq!(old["blocks_per_stage"], 3);
        old.as_object_mut().unwrap().remove("stem");
        let read: Architecture = serde_json::from_value(old).unwrap();
        assert_eq!(read, Architecture::by_name("resnet20").unwrap());
        let mut bad = Architecture::by_name("resnet18").unwrap();
        bad.blocks_per_stage = StageBlocks::PerStage(vec![2, 2]);
        let e = bad.network(1).unwrap_err().to_string();
        assert!(e.contains("2 block counts for 4 stages"), "{e}");
    }

    #[test]
    fn resnet8_matches_mlperf_tiny() {
        let net = Architecture::by_name("resnet8")
            .unwrap()
            .network(1)
            .unwrap();
        // MLPerf Tiny: 78,666 parameters (78.7k), of which 960 are batch norm's, folded
        // here; 12.5 M MACs.
        assert_eq!(params(&net), 78_666 - 960);
        let macs: u64 = net.macs().unwrap().iter().sum();
        assert!((12_400_000..12_700_000).contains(&macs), "{macs}");
    }

    #[test]
    fn paper_depths_and_parameter_counts() {
        // The paper's Table 6: ResNet-20 0.27 M, ResNet-110 1.7 M parameters.
        for (name, depth, approx) in [("resnet20", 20, 270_000), ("resnet110", 110, 1_700_000)] {
            let arch = Architecture::by_name(name).unwrap();
            assert_eq!(arch.depth(), depth);
            let p = params(&arch.network(0).unwrap()) as f64;
            assert!((p / f64::from(approx) - 1.0).abs() < 0.05, "{name}: {p}");
        }
        assert_eq!(
            Architecture::by_name("plain56").unwrap().shortcut,
            Shortcut::None
        );
        assert_eq!(
            Architecture::by_name("resnet29-bottleneck")
                .unwrap()
                .depth(),
            29
        );
        assert!(Architecture::by_name("resnet21").is_err());
        assert!(Architecture::by_name("vgg16").is_err());
    }

    #[test]
    fn every_option_builds_a_valid_network() {
        for shortcut in [Shortcut::A, Shortcut::B, Shortcut::C, Shortcut::None] {
            for block in [Block::Basic, Block::Bottleneck] {
                let arch = Architecture {
                    shortcut,
                    block,
                    blocks_per_stage: StageBlocks::Each(1),
                    ..Architecture::by_name("resnet20").unwrap()
                };
                let net = arch.network(3).unwrap();
                net.tensor_shapes().unwrap();
                assert!(!net
                    .to_blob(crate::writer::Encoding::F32)
                    .unwrap()
                    .is_empty());
            }
        }
    }
}
