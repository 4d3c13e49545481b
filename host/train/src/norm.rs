//! Batch normalisation in training mode on NCHW `f32` slices, one pass per quantity.
//!
//! burn computes a training batch norm's statistics and gradients through
//! `swap_dims(0, 1)` + `reshape` to `[C, N·H·W]`, which copies the activation four
//! times a step (its `copy_2d_tiled` was 7 % of a resnet20 step after the convolution
//! became [`crate::conv`]'s). Here a channel's values are read where they lie (`N`
//! runs of `H·W`), channels in parallel, sums in `f64`:
//!
//! - statistics: per channel the mean and the biased variance (what burn's running
//!   statistics take), two passes;
//! - forward: `y = γ·(x − μ)/σ + β`, `σ = sqrt(var + ε)`;
//! - backward: with `x̂ = (x − μ)/σ` and `M = N·H·W`, `dβ = Σ dy`, `dγ = Σ dy·x̂`,
//!   `dx = γ/σ · (dy − dβ/M − x̂·dγ/M)`.
//!
//! Each channel's sums run in one fixed order on one thread: results do not depend on
//! the number of threads.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex};
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use crate::conv::{f32s, slice};

/// `[n, channels, h·w]` of an NCHW activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NormShape {
    /// Images.
    pub n: usize,
    /// Channels.
    pub channels: usize,
    /// Pixels of one channel plane.
    pub plane: usize,
}

impl NormShape {
    fn count(&self) -> f64 {
        (self.n * self.plane) as f64
    }

    /// Channel `c`'s values: `n` planes, `channels · plane` apart.
    fn planes<'a>(&self, data: &'a [f32], c: usize) -> impl Iterator<Item = &'a [f32]> + 'a {
        let (stride, plane) = (self.channels * self.plane, self.plane);
        (0..self.n).map(move |i| &data[i * stride + c * plane..i * stride + (c + 1) * plane])
    }
}

/// Per channel the mean and the biased variance of `x`: `[means..., variances...]`.
pub fn statistics(x: &[f32], shape: &NormShape) -> Vec<f32> {
    assert_eq!(
        x.len(),
        shape.n * shape.channels * shape.plane,
        "input length"
    );
    let per_channel: Vec<(f32, f32)> = (0..shape.channels)
        .into_par_iter()
        .map(|c| {
            let sum: f64 = shape
                .planes(x, c)
                .map(|p| p.iter().map(|&v| f64::from(v)).sum::<f64>())
                .sum();
            let mean = sum / shape.count();
            let squares: f64 = shape
                .planes(x, c)
                .map(|p| {
                    p.iter()
                        .map(|&v| (f64::from(v) - mean).powi(2))
                        .sum::<f64>()
                })
                .sum();
            (mean as f32, (squares / shape.count()) as f32)
        })
        .collect();
    per_channel
        .iter()
        .map(|s| s.0)
        .chain(per_channel.iter().map(|s| s.1))
        .collect()
}

/// `γ·(x − μ)/σ + β` per channel, with the statistics of [`statistics`].
pub fn forward(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    stats: &[f32],
    epsilon: f64,
    shape: &NormShape,
) -> Vec<f32> {
    let (scale, shift) = affine(gamma, beta, stats, epsilon, shape.channels);
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(shape.plane)
        .zip(x.par_chunks(shape.plane))
        .enumerate()
        .for_each(|(i, (y_plane, x_plane))| {
            let c = i % shape.channels;
            for (y, &x) in y_plane.iter_mut().zip(x_plane) {
                *y = x * scale[c] + shift[c];
            }
        });
    y
}

/// The gradients `(dx, dγ, dβ)` for the output gradient `dy`.
pub fn backward(
    x: &[f32],
    gamma: &[f32],
    stats: &[f32],
    dy: &[f32],
    epsilon: f64,
    shape: &NormShape,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    assert_eq!(dy.len(), x.len(), "output gradient length");
    let channels = shape.channels;
    let inverse_std: Vec<f64> = stats[channels..]
        .iter()
        .map(|&v| 1.0 / (f64::from(v) + epsilon).sqrt())
        .collect();
    // (Σ dy, Σ dy·x̂) per channel.
    let sums: Vec<(f64, f64)> = (0..channels)
        .into_par_iter()
        .map(|c| {
            let mean = f64::from(stats[c]);
            shape
                .planes(dy, c)
                .zip(shape.planes(x, c))
                .fold((0.0, 0.0), |(sum, dot), (dy, x)| {
                    let (s, d) = dy.iter().zip(x).fold((0.0, 0.0), |(s, d), (&g, &v)| {
                        (s + f64::from(g), d + f64::from(g) * (f64::from(v) - mean))
                    });
                    (sum + s, dot + d)
                })
        })
        .collect();
    let d_beta: Vec<f32> = sums.iter().map(|s| s.0 as f32).collect();
    let d_gamma: Vec<f32> = sums
        .iter()
        .zip(&inverse_std)
        .map(|(s, inv)| (s.1 * inv) as f32)
        .collect();
    // dx = a·dy + b·x + c per channel, the three folded from the formula above.
    let m = shape.count();
    let coefficients: Vec<(f32, f32, f32)> = (0..channels)
        .map(|c| {
            let (inv, g) = (inverse_std[c], f64::from(gamma[c]));
            let mean = f64::from(stats[c]);
            let a = g * inv;
            let mean_dy = sums[c].0 / m;
            let mean_dy_xhat = sums[c].1 * inv / m;
            // x̂ = (x − μ)·inv, so a·(−x̂·mean_dy_xhat) = b·x + const.
            let b = -a * inv * mean_dy_xhat;
            let constant = -a * mean_dy - b * mean;
            (a as f32, b as f32, constant as f32)
        })
        .collect();
    let mut dx = vec![0f32; x.len()];
    dx.par_chunks_mut(shape.plane)
        .zip(x.par_chunks(shape.plane).zip(dy.par_chunks(shape.plane)))
        .enumerate()
        .for_each(|(i, (dx_plane, (x_plane, dy_plane)))| {
            let (a, b, constant) = coefficients[i % channels];
            for ((dx, &x), &g) in dx_plane.iter_mut().zip(x_plane).zip(dy_plane) {
                *dx = a * g + b * x + constant;
            }
        });
    (dx, d_gamma, d_beta)
}

/// Per channel the scale `γ/σ` and shift `β − γ·μ/σ` of the forward pass.
fn affine(
    gamma: &[f32],
    beta: &[f32],
    stats: &[f32],
    epsilon: f64,
    channels: usize,
) -> (Vec<f32>, Vec<f32>) {
    (0..channels)
        .map(|c| {
            let inv = 1.0 / (f64::from(stats[channels + c]) + epsilon).sqrt();
            let scale = f64::from(gamma[c]) * inv;
            (
                scale as f32,
                (f64::from(beta[c]) - scale * f64::from(stats[c])) as f32,
            )
        })
        .unzip()
}

/// The statistics of [`statistics`] of `x` (`[n, c, h, w]` on the flex device) as a
/// `[2, c]` tensor (means, then variances), outside the autodiff graph.
pub fn batch_statistics(x: Tensor<4>) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as TrainingNorm>::batch_statistics(
        x.detach().into_dispatch(),
    ))
}

/// Training batch norm of `x` (`[n, c, h, w]` on the flex device, with autodiff or
/// not) with the batch statistics `stats` of [`batch_statistics`]; differentiable in
/// `x`, `gamma` and `beta` (the gradient through the statistics included).
pub fn batch_norm(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    stats: Tensor<2>,
    epsilon: f64,
) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as TrainingNorm>::training_batch_norm(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        stats.into_dispatch(),
        epsilon,
    ))
}

/// Batch norm's training operations on burn's flex backend and its autodiff wrapper.
#[backend_extension(Flex, Autodiff)]
pub trait TrainingNorm: Backend {
    /// See [`batch_statistics`].
    fn batch_statistics(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// See [`batch_norm`].
    fn training_batch_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self>;
}

impl TrainingNorm for Flex {
    fn batch_statistics(x: FloatTensor<Self>) -> FloatTensor<Self> {
        flex_statistics(&x)
    }

    fn training_batch_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        flex_forward(&x, &gamma, &beta, &stats, epsilon)
    }
}

/// No gradient flows into the statistics: they enter [`batch_norm`], whose backward
/// differentiates through them itself, and the running statistics.
#[derive(Debug)]
struct StatisticsBackward;

impl Backward<Flex, 1> for StatisticsBackward {
    type State = ();

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        grads.consume::<Flex>(&ops.node);
    }
}

/// The backward step of [`batch_norm`]: the saved input, γ, statistics and ε.
#[derive(Debug)]
struct BatchNormBackward;

impl Backward<Flex, 3> for BatchNormBackward {
    type State = (FlexTensor, FlexTensor, FlexTensor, f64);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node, gamma_node, beta_node] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (x, gamma, stats, epsilon) = ops.state;
        let shape = flex_shape(&x);
        let (x, gamma, stats, dy) = (f32s(&x), f32s(&gamma), f32s(&stats), f32s(&dy));
        let (dx, d_gamma, d_beta) = backward(
            slice(&x),
            slice(&gamma),
            slice(&stats),
            slice(&dy),
            epsilon,
            &shape,
        );
        let channels = [shape.channels];
        if let Some(node) = x_node {
            let dims = x.layout().shape().dims::<4>();
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(dx, dims)));
        }
        if let Some(node) = gamma_node {
            let grad = FlexTensor::from_data(TensorData::new(d_gamma, channels));
            grads.register::<Flex>(node.id, grad);
        }
        if let Some(node) = beta_node {
            let grad = FlexTensor::from_data(TensorData::new(d_beta, channels));
            grads.register::<Flex>(node.id, grad);
        }
    }
}

impl<C: CheckpointStrategy> TrainingNorm for Autodiff<Flex, C> {
    fn batch_statistics(x: FloatTensor<Self>) -> FloatTensor<Self> {
        StatisticsBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateless(flex_statistics(x.primitive()))
    }

    fn training_batch_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        match BatchNormBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, gamma, beta) = (
                    x.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                );
                let stats = stats.into_primitive();
                let y = flex_forward(&x, &gamma, &beta, &stats, epsilon);
                prep.finish((x, gamma, stats, epsilon), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(flex_forward(
                x.primitive(),
                gamma.primitive(),
                beta.primitive(),
                stats.primitive(),
                epsilon,
            )),
        }
    }
}

fn flex_shape(x: &FlexTensor) -> NormShape {
    let [n, channels, h, w] = x.layout().shape().dims::<4>();
    NormShape {
        n,
        channels,
        plane: h * w,
    }
}

fn flex_statistics(x: &FlexTensor) -> FlexTensor {
    let shape = flex_shape(x);
    let x = f32s(x);
    FlexTensor::from_data(TensorData::new(
        statistics(slice(&x), &shape),
        [2, shape.channels],
    ))
}

fn flex_forward(
    x: &FlexTensor,
    gamma: &FlexTensor,
    beta: &FlexTensor,
    stats: &FlexTensor,
    epsilon: f64,
) -> FlexTensor {
    let shape = flex_shape(x);
    let dims = x.layout().shape().dims::<4>();
    let (x, gamma, beta, stats) = (f32s(x), f32s(gamma), f32s(beta), f32s(stats));
    let y = forward(
        slice(&x),
        slice(&gamma),
        slice(&beta),
        slice(&stats),
        epsilon,
        &shape,
    );
    FlexTensor::from_data(TensorData::new(y, dims))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Param;
    use burn::nn::BatchNormConfig;
    use burn::tensor::Device;

    /// The convolution tests' values spread to [−2, 3].
    fn values(len: usize, seed: u64) -> Vec<f32> {
        crate::conv::tests::values(len, seed)
            .into_iter()
            .map(|v| 2.5 * v + 0.5)
            .collect()
    }

    #[test]
    fn matches_burns_training_batch_norm_and_its_gradients() {
        let device = Device::flex().autodiff();
        let dims = [3, 4, 5, 6];
        let len = dims.iter().product();
        let mut bn = BatchNormConfig::new(4).init(&device);
        let gamma_values = TensorData::new(vec![1.75f32, 0.5, -1.25, 2.0], [4]);
        bn.gamma = Param::from_tensor(Tensor::<1>::from_data(gamma_values, &device));
        // Two copies of the input: burn consumes a graph's tape in its backward pass.
        let input: Vec<f32> = values(len, 7).iter().map(|v| 3.0 * v + 1.0).collect();
        let x =
            Tensor::<4>::from_data(TensorData::new(input.clone(), dims), &device).require_grad();
        let x_burn = Tensor::<4>::from_data(TensorData::new(input, dims), &device).require_grad();
        let weighting = Tensor::<4>::from_data(TensorData::new(values(len, 8), dims), &device);
        let (gamma, beta) = (bn.gamma.val(), bn.beta.val());
        let stats = batch_statistics(x.clone());
        let ours = batch_norm(
            x.clone(),
            gamma.clone(),
            beta.clone(),
            stats.clone(),
            bn.epsilon,
        );
        let theirs = bn.forward(x_burn.clone());
        let grads_ours = (ours.clone() * weighting.clone()).sum().backward();
        let grads_theirs = (theirs.clone() * weighting).sum().backward();
        let to_vec = |data: TensorData| data.try_to_vec::<f32>().unwrap();
        let close = |what: &str, a: Vec<f32>, b: Vec<f32>| {
            assert_eq!(a.len(), b.len());
            let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
            for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                assert!(
                    (x - y).abs() <= 2e-5 * scale,
                    "{what}[{i}]: {x} against {y}"
                );
            }
        };
        close("y", to_vec(ours.into_data()), to_vec(theirs.into_data()));
        close(
            "dx",
            to_vec(x.grad(&grads_ours).unwrap().into_data()),
            to_vec(x_burn.grad(&grads_theirs).unwrap().into_data()),
        );
        close(
            "dgamma",
            to_vec(gamma.grad(&grads_ours).unwrap().into_data()),
            to_vec(gamma.grad(&grads_theirs).unwrap().into_data()),
        );
        close(
            "dbeta",
            to_vec(beta.grad(&grads_ours).unwrap().into_data()),
            to_vec(beta.grad(&grads_theirs).unwrap().into_data()),
        );
        // burn's forward left the batch's statistics in its running ones (momentum 0.1
        // from mean 0, variance 1): the same mean and variance as ours.
        let stats = to_vec(stats.into_data());
        let running_mean = to_vec(bn.running_mean.value_sync().into_data());
        let running_var = to_vec(bn.running_var.value_sync().into_data());
        for c in 0..4 {
            assert!(
                (running_mean[c] - 0.1 * stats[c]).abs() < 1e-5,
                "{running_mean:?} {stats:?}"
            );
            assert!((running_var[c] - (0.9 + 0.1 * stats[4 + c])).abs() < 1e-5);
        }
    }

    #[test]
    fn results_do_not_depend_on_the_number_of_threads() {
        let shape = NormShape {
            n: 9,
            channels: 5,
            plane: 49,
        };
        let len = 9 * 5 * 49;
        let (x, dy) = (values(len, 1), values(len, 2));
        let (gamma, beta) = (values(5, 3), values(5, 4));
        let run = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| {
                    let stats = statistics(&x, &shape);
                    let y = forward(&x, &gamma, &beta, &stats, 1e-5, &shape);
                    (y, backward(&x, &gamma, &stats, &dy, 1e-5, &shape))
                })
        };
        assert_eq!(run(1), run(3));
    }
}
