//! The ResNet family as one description that every stage reads (planning today;
//! training, export and compilation as they land): the paper's CIFAR networks
//! `resnet{20,32,44,56,110}` and their `plain*` twins, the MLPerf Tiny `resnet8`, with
//! basic or bottleneck blocks and shortcut options A, B or C.

use std::fmt;
use std::str::FromStr;

use crate::writer::{ConvSpec, DenseSpec, InputSpec, LayerSpec, Network, ResidualSpec};
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

/// A network of the family.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Architecture {
    /// Name as given on the command line.
    pub name: String,
    /// Input `(height, width, channels)`.
    pub input: (usize, usize, usize),
    /// Filters of the 3×3 stem convolution.
    pub stem_width: usize,
    /// Filters of each stage (the bottleneck's inner width for bottleneck blocks);
    /// every stage after the first halves the resolution.
    pub stage_widths: Vec<usize>,
    /// Blocks in each stage.
    pub blocks_per_stage: usize,
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
pub const NAMES: &str =
    "resnet8, resnet{20,32,44,56,110}, plain{20,32,44,56,110}, resnetN-bottleneck (N = 9n+2)";

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
                stem_width: 16,
                stage_widths: vec![16, 32, 64],
                blocks_per_stage: (depth - 2) / per_block,
                block,
                shortcut,
                classes: 10,
                padding: Padding::Symmetric,
            })
        };
        let lower = name.to_ascii_lowercase();
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
        2 + per_block * self.blocks_per_stage * self.stage_widths.len()
    }

    /// The network with He-uniform weights from `seed` and batch norm at its
    /// initial state (folded: scale 1, shift 0).
    pub fn network(&self, seed: u64) -> Result<Network> {
        let (h, w, c) = self.input;
        let mut b = NetBuilder {
            rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            layers: Vec::new(),
            shapes: vec![(h, w, c)],
        };
        let mut x = b.conv(self, 0, self.stem_width, 3, 1, true, None);
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
            for block in 0..self.blocks_per_stage {
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
        let oh = (h + padding[0] + padding[2] - k) / stride + 1;
        let ow = (w + padding[1] + padding[3] - k) / stride + 1;
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
                LayerSpec::GlobalAvgPool { .. } | LayerSpec::MaxPool(_) => 0,
            })
            .sum()
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
                    blocks_per_stage: 1,
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
