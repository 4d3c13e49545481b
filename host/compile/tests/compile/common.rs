//! Test networks described as a PyTorch user would (NCHW, OIHW weights, batch norm
//! unfolded), a naive float64 forward pass over that description, and the conversion
//! to the engine's `Network` (BN folded, OHWI, NHWC). The forward pass shares no code
//! with the engine, so agreement checks layout, folding, padding and shortcuts.

use tinyres_compile::writer::{
    ActivationRanges, ConvSpec, DenseSpec, InputSpec, LayerSpec, Network, ResidualSpec,
};
use tinyres_core::InputRange;

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u32(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 32) as u32
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f64 {
        f64::from(self.next_u32()) / f64::from(u32::MAX) * 2.0 - 1.0
    }
    pub fn image(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| (self.next_u32() >> 24) as u8).collect()
    }
}

pub struct BatchNorm {
    pub gamma: Vec<f64>,
    pub beta: Vec<f64>,
    pub mean: Vec<f64>,
    pub var: Vec<f64>,
}

pub const BN_EPS: f64 = 1e-5;

pub struct RefConv {
    pub input: usize,
    pub out_c: usize,
    pub in_c: usize,
    pub k: usize,
    pub stride: usize,
    /// top, left, bottom, right
    pub pads: [usize; 4],
    /// OIHW
    pub w: Vec<f64>,
    pub bn: BatchNorm,
    pub relu: bool,
    /// (tensor, stride, channel padding before, relu after add)
    pub residual: Option<(usize, usize, usize, bool)>,
}

pub enum RefOp {
    Conv(RefConv),
    Gap(usize),
    Dense {
        input: usize,
        out: usize,
        w: Vec<f64>,
        b: Vec<f64>,
    },
}

pub struct RefNet {
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    pub ops: Vec<RefOp>,
}

/// CHW tensor.
#[derive(Clone)]
pub struct Chw {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub data: Vec<f64>,
}

impl Chw {
    fn at(&self, c: usize, y: usize, x: usize) -> f64 {
        self.data[(c * self.h + y) * self.w + x]
    }
}

pub struct Trace {
    pub tensors: Vec<Chw>,
    /// Per op: the conv+BN(+ReLU) value before the residual add, if any.
    pub pre_add: Vec<Option<Chw>>,
}

impl RefNet {
    pub fn forward(&self, pixels: &[u8]) -> Trace {
        let mut data = vec![0.0; self.c * self.h * self.w];
        for y in 0..self.h {
            for x in 0..self.w {
                for c in 0..self.c {
                    let v = f64::from(pixels[(y * self.w + x) * self.c + c]);
                    data[(c * self.h + y) * self.w + x] = (v - self.mean[c]) / self.std[c];
                }
            }
        }
        let mut tensors = vec![Chw {
            c: self.c,
            h: self.h,
            w: self.w,
            data,
        }];
        let mut pre_add = Vec::new();
        for op in &self.ops {
            match op {
                RefOp::Conv(conv) => {
                    let x = &tensors[conv.input];
                    let mut y = conv2d(x, conv);
                    for c in 0..y.c {
                        let s = conv.bn.gamma[c] / (conv.bn.var[c] + BN_EPS).sqrt();
                        for v in &mut y.data[c * y.h * y.w..(c + 1) * y.h * y.w] {
                            *v = (*v - conv.bn.mean[c]) * s + conv.bn.beta[c];
                            if conv.relu {
                                *v = v.max(0.0);
                            }
                        }
                    }
                    match conv.residual {
                        None => pre_add.push(None),
                        Some((t, stride, pad, relu)) => {
                            pre_add.push(Some(y.clone()));
                            let s = &tensors[t];
                            // Option A written out: subsample, then zero-pad channels.
                            let mut sub = Chw {
                                c: y.c,
                                h: y.h,
                                w: y.w,
                                data: vec![0.0; y.data.len()],
                            };
                            for c in 0..s.c {
                                for yy in 0..y.h {
                                    for xx in 0..y.w {
                                        sub.data[((c + pad) * y.h + yy) * y.w + xx] =
                                            s.at(c, yy * stride, xx * stride);
                                    }
                                }
                            }
                            for (v, a) in y.data.iter_mut().zip(&sub.data) {
                                *v += a;
                                if relu {
                                    *v = v.max(0.0);
                                }
                            }
                        }
                    }
                    tensors.push(y);
                }
                RefOp::Gap(t) => {
                    let x = &tensors[*t];
                    let data = (0..x.c)
                        .map(|c| {
                            x.data[c * x.h * x.w..(c + 1) * x.h * x.w]
                                .iter()
                                .sum::<f64>()
                                / (x.h * x.w) as f64
                        })
                        .collect();
                    pre_add.push(None);
                    tensors.push(Chw {
                        c: x.c,
                        h: 1,
                        w: 1,
                        data,
                    });
                }
                RefOp::Dense { input, out, w, b } => {
                    let x = &tensors[*input];
                    assert_eq!(x.h * x.w, 1, "test nets pool before dense");
                    let data = (0..*out)
                        .map(|o| b[o] + (0..x.c).map(|i| w[o * x.c + i] * x.data[i]).sum::<f64>())
                        .collect();
                    pre_add.push(None);
                    tensors.push(Chw {
                        c: *out,
                        h: 1,
                        w: 1,
                        data,
                    });
                }
            }
        }
        Trace { tensors, pre_add }
    }

    pub fn logits(&self, pixels: &[u8]) -> Vec<f64> {
        self.forward(pixels).tensors.pop().unwrap().data
    }

    /// The engine's description: BN folded into weights and bias, OIHW -> OHWI.
    pub fn to_network(&self) -> Network {
        let layers = self
            .ops
            .iter()
            .map(|op| match op {
                RefOp::Conv(c) => {
                    let mut weights = vec![0.0f32; c.w.len()];
                    let mut bias = vec![0.0f32; c.out_c];
                    for o in 0..c.out_c {
                        let s = c.bn.gamma[o] / (c.bn.var[o] + BN_EPS).sqrt();
                        bias[o] = (c.bn.beta[o] - c.bn.mean[o] * s) as f32;
                        for i in 0..c.in_c {
                            for ky in 0..c.k {
                                for kx in 0..c.k {
                                    weights[((o * c.k + ky) * c.k + kx) * c.in_c + i] =
                                        (c.w[((o * c.in_c + i) * c.k + ky) * c.k + kx] * s) as f32;
                                }
                            }
                        }
                    }
                    LayerSpec::Conv(ConvSpec {
                        input: c.input,
                        out_channels: c.out_c,
                        kernel: (c.k, c.k),
                        stride: c.stride,
                        padding: c.pads,
                        weights,
                        bias,
                        relu: c.relu,
                        residual: c.residual.map(|(tensor, stride, channel_offset, relu)| {
                            ResidualSpec {
                                tensor,
                                stride,
                                channel_offset,
                                relu,
                            }
                        }),
                    })
                }
                RefOp::Gap(t) => LayerSpec::GlobalAvgPool { input: *t },
                RefOp::Dense { input, out, w, b } => LayerSpec::Dense(DenseSpec {
                    input: *input,
                    out_features: *out,
                    weights: w.iter().map(|&v| v as f32).collect(),
                    bias: b.iter().map(|&v| v as f32).collect(),
                    relu: false,
                }),
            })
            .collect();
        let features = self
            .ops
            .iter()
            .position(|op| matches!(op, RefOp::Gap(_)))
            .map(|k| k + 1);
        Network {
            input: InputSpec {
                height: self.h,
                width: self.w,
                channels: self.c,
                range: InputRange::Byte,
                mean: self.mean.iter().map(|&v| v as f32).collect(),
                std: self.std.iter().map(|&v| v as f32).collect(),
            },
            layers,
            features,
            class_names: Vec::new(),
        }
    }

    /// Activation ranges observed by the float reference on `images`.
    pub fn calibrate(&self, images: &[Vec<u8>]) -> ActivationRanges {
        let n_tensors = self.ops.len() + 1;
        let mut tensors = vec![(f32::MAX, f32::MIN); n_tensors];
        let mut pre_add: Vec<Option<(f32, f32)>> = vec![None; self.ops.len()];
        let widen = |r: &mut (f32, f32), data: &[f64]| {
            for &v in data {
                r.0 = r.0.min(v as f32);
                r.1 = r.1.max(v as f32);
            }
        };
        for img in images {
            let trace = self.forward(img);
            for (r, t) in tensors.iter_mut().zip(&trace.tensors) {
                widen(r, &t.data);
            }
            for (r, p) in pre_add.iter_mut().zip(&trace.pre_add) {
                if let Some(p) = p {
                    widen(r.get_or_insert((f32::MAX, f32::MIN)), &p.data);
                }
            }
        }
        ActivationRanges { tensors, pre_add }
    }
}

fn conv2d(x: &Chw, c: &RefConv) -> Chw {
    let [pt, pl, pb, pr] = c.pads;
    let oh = (x.h + pt + pb - c.k) / c.stride + 1;
    let ow = (x.w + pl + pr - c.k) / c.stride + 1;
    let mut out = Chw {
        c: c.out_c,
        h: oh,
        w: ow,
        data: vec![0.0; c.out_c * oh * ow],
    };
    for o in 0..c.out_c {
        for y in 0..oh {
            for xx in 0..ow {
                let mut acc = 0.0;
                for i in 0..c.in_c {
                    for ky in 0..c.k {
                        for kx in 0..c.k {
                            let iy = (y * c.stride + ky) as isize - pt as isize;
                            let ix = (xx * c.stride + kx) as isize - pl as isize;
                            if iy < 0 || ix < 0 || iy >= x.h as isize || ix >= x.w as isize {
                                continue;
                            }
                            acc += x.at(i, iy as usize, ix as usize)
                                * c.w[((o * c.in_c + i) * c.k + ky) * c.k + kx];
                        }
                    }
                }
                out.data[(o * oh + y) * ow + xx] = acc;
            }
        }
    }
    out
}

/// Builds conv ops with He-initialised weights and random BN statistics.
pub struct Builder {
    pub rng: Rng,
    pub ops: Vec<RefOp>,
    /// Channels and spatial size of every tensor so far.
    pub shapes: Vec<(usize, usize, usize)>,
    /// TensorFlow's SAME padding (extra row/column at the bottom/right) instead of
    /// PyTorch's symmetric k/2.
    pub same_tf: bool,
}

impl Builder {
    pub fn new(seed: u64, h: usize, w: usize, c: usize) -> Self {
        Builder {
            rng: Rng::new(seed),
            ops: Vec::new(),
            shapes: vec![(c, h, w)],
            same_tf: false,
        }
    }

    /// Adds a k×k conv with BN.
    pub fn conv(
        &mut self,
        input: usize,
        out_c: usize,
        k: usize,
        stride: usize,
        relu: bool,
        residual: Option<(usize, usize, usize, bool)>,
    ) -> usize {
        let (in_c, h, w) = self.shapes[input];
        let pads = if self.same_tf {
            let out = h.div_ceil(stride);
            let total = ((out - 1) * stride + k).saturating_sub(h);
            let out_w = w.div_ceil(stride);
            let total_w = ((out_w - 1) * stride + k).saturating_sub(w);
            [
                total / 2,
                total_w / 2,
                total - total / 2,
                total_w - total_w / 2,
            ]
        } else {
            [k / 2; 4]
        };
        let fan_in = (in_c * k * k) as f64;
        let gain = (6.0 / fan_in).sqrt();
        let w_: Vec<f64> = (0..out_c * in_c * k * k)
            .map(|_| self.rng.uniform() * gain)
            .collect();
        let bn = BatchNorm {
            gamma: (0..out_c)
                .map(|_| 0.8 + 0.4 * self.rng.uniform().abs())
                .collect(),
            beta: (0..out_c).map(|_| 0.1 * self.rng.uniform()).collect(),
            mean: (0..out_c).map(|_| 0.1 * self.rng.uniform()).collect(),
            var: (0..out_c)
                .map(|_| 0.8 + 0.4 * self.rng.uniform().abs())
                .collect(),
        };
        let oh = (h + pads[0] + pads[2] - k) / stride + 1;
        let ow = (w + pads[1] + pads[3] - k) / stride + 1;
        self.ops.push(RefOp::Conv(RefConv {
            input,
            out_c,
            in_c,
            k,
            stride,
            pads,
            w: w_,
            bn,
            relu,
            residual,
        }));
        self.shapes.push((out_c, oh, ow));
        self.shapes.len() - 1
    }

    pub fn gap(&mut self, input: usize) -> usize {
        let (c, _, _) = self.shapes[input];
        self.ops.push(RefOp::Gap(input));
        self.shapes.push((c, 1, 1));
        self.shapes.len() - 1
    }

    pub fn dense(&mut self, input: usize, out: usize) -> usize {
        let (c, _, _) = self.shapes[input];
        let gain = (6.0 / c as f64).sqrt();
        let w = (0..out * c).map(|_| self.rng.uniform() * gain).collect();
        let b = (0..out).map(|_| 0.1 * self.rng.uniform()).collect();
        self.ops.push(RefOp::Dense { input, out, w, b });
        self.shapes.push((out, 1, 1));
        self.shapes.len() - 1
    }

    pub fn finish(self, mean: Vec<f64>, std: Vec<f64>) -> RefNet {
        let (c, h, w) = self.shapes[0];
        RefNet {
            h,
            w,
            c,
            mean,
            std,
            ops: self.ops,
        }
    }
}

pub const CIFAR_MEAN: [f64; 3] = [125.3, 123.0, 113.9];
pub const CIFAR_STD: [f64; 3] = [63.0, 62.1, 66.7];

/// The MLPerf Tiny image-classification ResNet-8 (Keras: SAME padding, 1×1 stride-2
/// projection shortcuts without BN... here with BN folded in, which only changes the
/// values, not the graph), 32×32×3 in, 10 classes out.
pub fn resnet8(seed: u64) -> RefNet {
    let mut b = Builder::new(seed, 32, 32, 3);
    b.same_tf = true;
    let mut x = b.conv(0, 16, 3, 1, true, None);
    // Stack 1: identity shortcut.
    let y = b.conv(x, 16, 3, 1, true, None);
    x = b.conv(y, 16, 3, 1, false, Some((x, 1, 0, true)));
    // Stacks 2 and 3: 1×1 stride-2 projection shortcut (option B).
    for filters in [32, 64] {
        let y = b.conv(x, filters, 3, 2, true, None);
        let shortcut = b.conv(x, filters, 1, 2, false, None);
        x = b.conv(y, filters, 3, 1, false, Some((shortcut, 1, 0, true)));
    }
    let pooled = b.gap(x);
    b.dense(pooled, 10);
    b.finish(CIFAR_MEAN.to_vec(), CIFAR_STD.to_vec())
}

/// A CIFAR ResNet (6n+2 layers) with the paper's option-A shortcuts and PyTorch
/// padding, on a `size`×`size` input: n = 1 gives ResNet-8-A, n = 3 ResNet-20.
pub fn cifar_resnet_option_a(
    seed: u64,
    n: usize,
    size: usize,
    widths: [usize; 3],
    classes: usize,
) -> RefNet {
    let mut b = Builder::new(seed, size, size, 3);
    let mut x = b.conv(0, widths[0], 3, 1, true, None);
    let mut channels = widths[0];
    for (stage, &width) in widths.iter().enumerate() {
        for block in 0..n {
            let stride = if stage > 0 && block == 0 { 2 } else { 1 };
            let y = b.conv(x, width, 3, stride, true, None);
            let pad = (width - channels) / 2;
            x = b.conv(y, width, 3, 1, false, Some((x, stride, pad, true)));
            channels = width;
        }
    }
    let pooled = b.gap(x);
    b.dense(pooled, classes);
    b.finish(CIFAR_MEAN.to_vec(), CIFAR_STD.to_vec())
}

/// A bottleneck ResNet (1×1, 3×3, 1×1 with 4× expansion) with option-C projections on
/// every block, plus a plain (shortcut-free) tail block.
pub fn bottleneck_net(seed: u64) -> RefNet {
    let mut b = Builder::new(seed, 12, 12, 3);
    let mut x = b.conv(0, 16, 3, 1, true, None);
    for (width, stride) in [(4, 1), (8, 2)] {
        let a = b.conv(x, width, 1, 1, true, None);
        let m = b.conv(a, width, 3, stride, true, None);
        let projection = b.conv(x, width * 4, 1, stride, false, None);
        x = b.conv(m, width * 4, 1, 1, false, Some((projection, 1, 0, true)));
    }
    // Plain block: no shortcut.
    let p = b.conv(x, 32, 3, 1, true, None);
    x = b.conv(p, 32, 3, 1, true, None);
    let pooled = b.gap(x);
    b.dense(pooled, 5);
    b.finish(vec![127.5; 3], vec![64.0; 3])
}
