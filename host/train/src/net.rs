//! The ResNet family as a burn module, built from the same [`Architecture`] that
//! writes the engine's network: what `tinyres train` trains and `tinyres export` writes.
//!
//! Input: NCHW `f32`, already normalised (`(pixel / 255 - mean) / std` per channel).
//! Output: logits. Batch norm follows every convolution, as in the paper.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Initializer, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::module::{avg_pool2d, max_pool2d};
use burn::tensor::ops::{AvgPoolOptions, MaxPoolOptions, PadMode};
use burn::tensor::{Device, Tensor};

use tinyres_compile::arch::{Architecture, Block, ShortcutPlan, Stem};

use crate::{conv, norm};

/// He et al. 2015 ("Delving deep into rectifiers"), which the ResNet paper uses:
/// normal with standard deviation `sqrt(2 / fan_in)`.
const HE_NORMAL: Initializer = Initializer::KaimingNormal {
    gain: std::f64::consts::SQRT_2,
    fan_out_only: false,
};

/// A convolution without bias followed by batch norm.
#[derive(Module, Debug)]
pub struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm,
}

impl ConvBn {
    fn new(
        arch: &Architecture,
        (channels_in, channels_out): (usize, usize),
        kernel: usize,
        stride: usize,
        input_size: (usize, usize),
        device: &Device,
    ) -> Self {
        let [top, left, bottom, right] = arch.conv_padding(input_size, kernel, stride);
        ConvBn {
            conv: Conv2dConfig::new([channels_in, channels_out], [kernel, kernel])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(top, left, bottom, right))
                .with_bias(false)
                .with_initializer(HE_NORMAL)
                .init(device),
            bn: BatchNormConfig::new(channels_out).init(device),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        // On the flex device (training, and evaluation through `valid()`) the
        // convolution runs on tinyres's kernels (`conv`: burn's weight gradient was most
        // of a training step); elsewhere, the ONNX exporter's capture device among them,
        // on burn's `Conv2d`, which is what the exported graph holds.
        let PaddingConfig2d::Explicit(top, left, bottom, right) = self.conv.padding else {
            unreachable!("ConvBn::new pads explicitly");
        };
        let y = if x.device() == Device::flex() {
            conv::conv2d(
                x,
                self.conv.weight.val(),
                self.conv.stride,
                [top, left, bottom, right],
            )
        } else {
            self.conv.forward(x)
        };
        self.batch_norm(y)
    }

    /// `self.bn`'s forward pass; in training on the flex device with [`norm`]'s kernels
    /// (burn's transposes the activation four times a step), updating the running
    /// statistics as burn's `BatchNorm::forward` does.
    fn batch_norm(&self, y: Tensor<4>) -> Tensor<4> {
        let device = y.device();
        if !(device.is_autodiff() && self.bn.training.is_enabled() && device == Device::flex()) {
            return self.bn.forward(y);
        }
        let channels = y.dims()[1];
        let stats = norm::batch_statistics(y.clone());
        let output = norm::batch_norm(
            y,
            self.bn.gamma.val(),
            self.bn.beta.val(),
            stats.clone(),
            self.bn.epsilon,
        );
        let momentum = self.bn.momentum;
        let row = |r: usize| {
            stats
                .clone()
                .slice([r..r + 1, 0..channels])
                .reshape([channels])
        };
        let running_mean = self.bn.running_mean.value_sync().to_device(&device);
        let running_var = self.bn.running_var.value_sync().to_device(&device);
        self.bn.running_mean.update(
            running_mean
                .mul_scalar(1.0 - momentum)
                .add(row(0).mul_scalar(momentum))
                .detach(),
        );
        self.bn.running_var.update(
            running_var
                .mul_scalar(1.0 - momentum)
                .add(row(1).mul_scalar(momentum))
                .detach(),
        );
        output
    }
}

/// One block: the residual branch, and the shortcut as the architecture plans it.
#[derive(Module, Debug)]
pub struct ResidualBlock {
    branch: Vec<ConvBn>,
    projection: Option<ConvBn>,
    #[module(skip)]
    shortcut: ShortcutPlan,
}

impl ResidualBlock {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut y = x.clone();
        let last = self.branch.len() - 1;
        for (i, layer) in self.branch.iter().enumerate() {
            y = layer.forward(y);
            if i < last {
                y = relu(y);
            }
        }
        let shortcut = match (self.shortcut, &self.projection) {
            (ShortcutPlan::None, _) => return relu(y),
            (ShortcutPlan::Projection, Some(projection)) => projection.forward(x),
            (
                ShortcutPlan::ZeroPad {
                    stride,
                    channel_offset,
                },
                _,
            ) => {
                let [_, channels_in, _, _] = x.dims();
                let [_, channels_out, _, _] = y.dims();
                let (before, after) = (channel_offset, channels_out - channels_in - channel_offset);
                // A 1×1 average pool with this stride is the paper's subsampling; unlike
                // a strided slice it exports with a dynamic batch axis.
                let subsampled = if stride > 1 {
                    avg_pool2d(x, AvgPoolOptions::new([1, 1]).with_stride([stride, stride]))
                } else {
                    x
                };
                subsampled.pad(
                    [(0, 0), (before, after), (0, 0), (0, 0)],
                    PadMode::Constant(0.0),
                )
            }
            _ => x,
        };
        relu(y + shortcut)
    }
}

/// A network of the family.
#[derive(Module, Debug)]
pub struct ResNet {
    stem: ConvBn,
    /// `(kernel, stride, [top, left, bottom, right])` of the ImageNet stem's max pool.
    #[module(skip)]
    stem_pool: Option<(usize, usize, [usize; 4])>,
    blocks: Vec<ResidualBlock>,
    classifier: Linear,
}

impl ResNet {
    /// The network with He-normal convolutions, batch norm at scale 1 and shift 0, and
    /// burn's default classifier initialisation; random draws come from `device`'s seed.
    pub fn new(arch: &Architecture, device: &Device) -> Self {
        let (h, w, c) = arch.input;
        let (stem, stem_pool, mut size) = match arch.stem {
            Stem::Cifar => (
                ConvBn::new(arch, (c, arch.stem_width), 3, 1, (h, w), device),
                None,
                (h, w),
            ),
            Stem::ImageNet => {
                let stem = ConvBn::new(arch, (c, arch.stem_width), 7, 2, (h, w), device);
                let after_conv = arch.window_output((h, w), 7, 2);
                let pool = arch.conv_padding(after_conv, 3, 2);
                (
                    stem,
                    Some((3, 2, pool)),
                    arch.window_output(after_conv, 3, 2),
                )
            }
        };
        let mut blocks = Vec::new();
        for plan in arch.blocks() {
            let mut branch = Vec::new();
            let output_size = (size.0.div_ceil(plan.stride), size.1.div_ceil(plan.stride));
            match arch.block {
                Block::Basic => {
                    let channels = (plan.in_channels, plan.width);
                    branch.push(ConvBn::new(arch, channels, 3, plan.stride, size, device));
                    let channels = (plan.width, plan.out_channels);
                    branch.push(ConvBn::new(arch, channels, 3, 1, output_size, device));
                }
                Block::Bottleneck => {
                    let channels = (plan.in_channels, plan.width);
                    branch.push(ConvBn::new(arch, channels, 1, 1, size, device));
                    let channels = (plan.width, plan.width);
                    branch.push(ConvBn::new(arch, channels, 3, plan.stride, size, device));
                    let channels = (plan.width, plan.out_channels);
                    branch.push(ConvBn::new(arch, channels, 1, 1, output_size, device));
                }
            }
            let projection = (plan.shortcut == ShortcutPlan::Projection).then(|| {
                let channels = (plan.in_channels, plan.out_channels);
                ConvBn::new(arch, channels, 1, plan.stride, size, device)
            });
            blocks.push(ResidualBlock {
                branch,
                projection,
                shortcut: plan.shortcut,
            });
            size = output_size;
        }
        let features = arch
            .blocks()
            .last()
            .map_or(arch.stem_width, |plan| plan.out_channels);
        ResNet {
            stem,
            stem_pool,
            blocks,
            classifier: LinearConfig::new(features, arch.classes).init(device),
        }
    }

    /// Logits `[batch, classes]` of a normalised NCHW batch.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = relu(self.stem.forward(x));
        if let Some((kernel, stride, [top, left, bottom, right])) = self.stem_pool {
            let options = MaxPoolOptions::new([kernel, kernel])
                .with_stride([stride, stride])
                .with_padding_pairs([(top, bottom), (left, right)]);
            x = max_pool2d(x, options);
        }
        for block in &self.blocks {
            x = block.forward(x);
        }
        let [_, _, h, w] = x.dims();
        // Global average pooling as a pool over the whole map: exports as one
        // GlobalAveragePool / AveragePool node.
        let pooled = avg_pool2d(x, AvgPoolOptions::new([h, w]));
        self.classifier.forward(pooled.flatten::<2>(1, 3))
    }
}
