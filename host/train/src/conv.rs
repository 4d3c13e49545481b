//! The training convolution: forward, and the gradients for the input and the weights,
//! on NCHW `f32` slices, as GEMMs over one image's im2col matrix at a time.
//!
//! burn's flex backend computes the weight gradient as a convolution whose kernel is
//! the whole output image (`[Cout, N, Ho, Wo]` over `[Cin, N, H, W]`), which its GEMM
//! packs badly, and the input gradient as a transposed convolution; together with
//! layout copies they were most of a training step (`host/BENCHMARKS.md`, "Training
//! throughput"). Here each image's columns (`K = Cin·kh·kw` rows of `Ho·Wo`) are built
//! once per pass, and the three products are the GEMMs a convolution is:
//!
//! - forward: `Y_n [Cout, HoWo] = W [Cout, K] · col(X_n) [K, HoWo]`;
//! - weights: `dW [Cout, K] = Σ_n dY_n [Cout, HoWo] · col(X_n)ᵀ [HoWo, K]`;
//! - input: `col(dX_n) = Wᵀ [K, Cout] · dY_n [Cout, HoWo]`, scattered back (col2im).
//!
//! Images go to the cores in fixed groups of [`IMAGES_PER_TASK`], whatever the number
//! of threads, and the groups' weight gradients are summed in group order: the result
//! does not depend on scheduling, so a resumed run repeats an uninterrupted one bit for
//! bit.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex};
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

/// Images per parallel task; also the granularity of the weight gradient's partial
/// sums (fixed, so that their order is).
pub const IMAGES_PER_TASK: usize = 8;

/// The shape of one convolution: input `[n, c_in, h, w]`, weights
/// `[c_out, c_in, kh, kw]`, stride and padding (`[top, left, bottom, right]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    /// Images.
    pub n: usize,
    /// Input channels.
    pub c_in: usize,
    /// Input rows.
    pub h: usize,
    /// Input columns.
    pub w: usize,
    /// Output channels.
    pub c_out: usize,
    /// Kernel rows.
    pub kh: usize,
    /// Kernel columns.
    pub kw: usize,
    /// Row and column stride.
    pub stride: [usize; 2],
    /// Zero padding: top, left, bottom, right.
    pub padding: [usize; 4],
}

impl ConvShape {
    /// Output rows.
    pub fn ho(&self) -> usize {
        (self.h + self.padding[0] + self.padding[2] - self.kh) / self.stride[0] + 1
    }

    /// Output columns.
    pub fn wo(&self) -> usize {
        (self.w + self.padding[1] + self.padding[3] - self.kw) / self.stride[1] + 1
    }

    /// Rows of the column matrix: `c_in · kh · kw`.
    fn k(&self) -> usize {
        self.c_in * self.kh * self.kw
    }

    /// Output pixels of one image.
    fn pixels_out(&self) -> usize {
        self.ho() * self.wo()
    }

    fn image_in(&self) -> usize {
        self.c_in * self.h * self.w
    }

    fn image_out(&self) -> usize {
        self.c_out * self.pixels_out()
    }

    /// A 1×1 convolution with stride 1 and no padding reads the image as its own
    /// column matrix.
    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == [1, 1] && self.padding == [0; 4]
    }
}

/// The output `[n, c_out, ho, wo]` of the convolution of `x` by `weights`.
pub fn forward(x: &[f32], weights: &[f32], shape: &ConvShape) -> Vec<f32> {
    check_lengths(x, weights, shape);
    let (k, pixels) = (shape.k(), shape.pixels_out());
    let mut y = vec![0f32; shape.n * shape.image_out()];
    y.par_chunks_mut(IMAGES_PER_TASK * shape.image_out())
        .zip(x.par_chunks(IMAGES_PER_TASK * shape.image_in()))
        .for_each(|(y_group, x_group)| {
            let mut columns = vec![0f32; if shape.is_pointwise() { 0 } else { k * pixels }];
            for (y_n, x_n) in y_group
                .chunks_mut(shape.image_out())
                .zip(x_group.chunks(shape.image_in()))
            {
                let columns = columns_of(x_n, shape, &mut columns);
                // Y_n [c_out, pixels] = W [c_out, k] · columns [k, pixels]
                matmul(
                    y_n,
                    (shape.c_out, pixels, k),
                    Operand::RowMajor(weights),
                    Operand::RowMajor(columns),
                    false,
                );
            }
        });
    y
}

/// The gradients of the convolution's input (where `input_gradient`) and weights for
/// the output gradient `dy` (`[n, c_out, ho, wo]`).
pub fn backward(
    x: &[f32],
    weights: &[f32],
    dy: &[f32],
    shape: &ConvShape,
    input_gradient: bool,
) -> (Option<Vec<f32>>, Vec<f32>) {
    check_lengths(x, weights, shape);
    assert_eq!(
        dy.len(),
        shape.n * shape.image_out(),
        "output gradient length"
    );
    let (k, pixels) = (shape.k(), shape.pixels_out());
    let mut dx = vec![0f32; if input_gradient { x.len() } else { 0 }];
    let transposed = input_gradient
        .then(|| TransposedConv::of(weights, shape))
        .flatten();
    let groups = shape.n.div_ceil(IMAGES_PER_TASK);
    let dx_groups: Vec<&mut [f32]> = if input_gradient {
        dx.chunks_mut(IMAGES_PER_TASK * shape.image_in()).collect()
    } else {
        (0..groups).map(|_| &mut [][..]).collect()
    };
    let partial_dw: Vec<Vec<f32>> = dx_groups
        .into_par_iter()
        .zip(x.par_chunks(IMAGES_PER_TASK * shape.image_in()))
        .zip(dy.par_chunks(IMAGES_PER_TASK * shape.image_out()))
        .map(|((dx_group, x_group), dy_group)| {
            let mut dw_column_major = vec![0f32; shape.c_out * k];
            let mut columns = vec![0f32; if shape.is_pointwise() { 0 } else { k * pixels }];
            // The input gradient's own column matrix: of dY_n for the transposed
            // convolution, else of the gradient of the forward pass's columns.
            let mut column_gradient = vec![
                0f32;
                match (&transposed, input_gradient) {
                    (Some(t), _) => t.shape.k() * t.shape.pixels_out(),
                    (None, true) => k * pixels,
                    (None, false) => 0,
                }
            ];
            for (n, (x_n, dy_n)) in x_group
                .chunks(shape.image_in())
                .zip(dy_group.chunks(shape.image_out()))
                .enumerate()
            {
                let columns = columns_of(x_n, shape, &mut columns);
                // dW [c_out, k] += dY_n [c_out, pixels] · columnsᵀ [pixels, k], column-major
                matmul_into(
                    &mut dw_column_major,
                    true,
                    (shape.c_out, k, pixels),
                    Operand::RowMajor(dy_n),
                    Operand::Transposed(columns),
                    n > 0,
                );
                if input_gradient {
                    let dx_n = &mut dx_group[n * shape.image_in()..(n + 1) * shape.image_in()];
                    if let Some(t) = &transposed {
                        // dX_n [c_in, h·w] = W' [c_in, c_out·kh·kw] · columns(dY_n)
                        let dy_columns = columns_of(dy_n, &t.shape, &mut column_gradient);
                        matmul(
                            dx_n,
                            (shape.c_in, shape.h * shape.w, t.shape.k()),
                            Operand::RowMajor(&t.weights),
                            Operand::RowMajor(dy_columns),
                            false,
                        );
                    } else if shape.is_pointwise() {
                        // dX_n [c_in, pixels] = Wᵀ [c_in, c_out] · dY_n
                        matmul(
                            dx_n,
                            (k, pixels, shape.c_out),
                            Operand::Transposed(weights),
                            Operand::RowMajor(dy_n),
                            false,
                        );
                    } else {
                        matmul(
                            &mut column_gradient,
                            (k, pixels, shape.c_out),
                            Operand::Transposed(weights),
                            Operand::RowMajor(dy_n),
                            false,
                        );
                        add_columns_into(&column_gradient, shape, dx_n);
                    }
                }
            }
            dw_column_major
        })
        .collect();
    let mut sum = vec![0f32; shape.c_out * k];
    for partial in &partial_dw {
        for (total, p) in sum.iter_mut().zip(partial) {
            *total += p;
        }
    }
    // Column-major [c_out, k] to the weights' row-major layout.
    let mut dw = vec![0f32; shape.c_out * k];
    for (t, taps) in sum.chunks_exact(shape.c_out).enumerate() {
        for (o, &value) in taps.iter().enumerate() {
            dw[o * k + t] = value;
        }
    }
    (input_gradient.then_some(dx), dw)
}

/// The convolution of `x` (`[n, c_in, h, w]`) by `weights` (`[c_out, c_in, kh, kw]`)
/// with this module's kernels, for tensors on the flex device, with or without autodiff
/// (its backward is [`backward`]). Other devices (the ONNX exporter's capture device)
/// must use burn's own `conv2d`: the operation exists for flex only.
pub fn conv2d(
    x: Tensor<4>,
    weights: Tensor<4>,
    stride: [usize; 2],
    padding: [usize; 4],
) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as TrainingConv>::training_conv2d(
        x.into_dispatch(),
        weights.into_dispatch(),
        stride,
        padding,
    ))
}

/// The convolution as an operation of burn's flex backend and of its autodiff wrapper.
#[backend_extension(Flex, Autodiff)]
pub trait TrainingConv: Backend {
    /// See [`conv2d`].
    fn training_conv2d(
        x: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        stride: [usize; 2],
        padding: [usize; 4],
    ) -> FloatTensor<Self>;
}

impl TrainingConv for Flex {
    fn training_conv2d(
        x: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        stride: [usize; 2],
        padding: [usize; 4],
    ) -> FloatTensor<Self> {
        flex_forward(&x, &weights, stride, padding)
    }
}

/// The backward step: the saved input and weights, stride and padding.
#[derive(Debug)]
struct TrainingConvBackward;

impl Backward<Flex, 2> for TrainingConvBackward {
    type State = (FlexTensor, FlexTensor, [usize; 2], [usize; 4]);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node, weights_node] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (x, weights, stride, padding) = ops.state;
        let shape = flex_shape(&x, &weights, stride, padding);
        let (x_data, weights_data, dy_data) = (f32s(&x), f32s(&weights), f32s(&dy));
        let (dx, dw) = backward(
            slice(&x_data),
            slice(&weights_data),
            slice(&dy_data),
            &shape,
            x_node.is_some(),
        );
        if let (Some(node), Some(dx)) = (x_node, dx) {
            let dims = [shape.n, shape.c_in, shape.h, shape.w];
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(dx, dims)));
        }
        if let Some(node) = weights_node {
            let dims = [shape.c_out, shape.c_in, shape.kh, shape.kw];
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(dw, dims)));
        }
    }
}

impl<C: CheckpointStrategy> TrainingConv for Autodiff<Flex, C> {
    fn training_conv2d(
        x: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        stride: [usize; 2],
        padding: [usize; 4],
    ) -> FloatTensor<Self> {
        match TrainingConvBackward
            .prepare::<C>([x.node(), weights.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, weights) = (x.into_primitive(), weights.into_primitive());
                let y = flex_forward(&x, &weights, stride, padding);
                prep.finish((x, weights, stride, padding), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(flex_forward(
                x.primitive(),
                weights.primitive(),
                stride,
                padding,
            )),
        }
    }
}

/// `tensor` as contiguous `f32` (a cheap clone where it is already): what the
/// training kernels here and in [`crate::norm`] read.
pub(crate) fn f32s(tensor: &FlexTensor) -> FlexTensor {
    assert_eq!(
        tensor.dtype(),
        burn::tensor::DType::F32,
        "the training kernels take f32 tensors"
    );
    tensor.to_contiguous()
}

/// The values of a tensor from [`f32s`].
pub(crate) fn slice(tensor: &FlexTensor) -> &[f32] {
    tensor.as_slice::<f32>().expect("contiguous f32")
}

fn flex_shape(
    x: &FlexTensor,
    weights: &FlexTensor,
    stride: [usize; 2],
    padding: [usize; 4],
) -> ConvShape {
    let [n, c_in, h, w] = x.layout().shape().dims::<4>();
    let [c_out, weights_c_in, kh, kw] = weights.layout().shape().dims::<4>();
    assert_eq!(
        c_in, weights_c_in,
        "input channels of the input and the weights"
    );
    ConvShape {
        n,
        c_in,
        h,
        w,
        c_out,
        kh,
        kw,
        stride,
        padding,
    }
}

fn flex_forward(
    x: &FlexTensor,
    weights: &FlexTensor,
    stride: [usize; 2],
    padding: [usize; 4],
) -> FlexTensor {
    let shape = flex_shape(x, weights, stride, padding);
    let (x_data, weights_data) = (f32s(x), f32s(weights));
    let y = forward(slice(&x_data), slice(&weights_data), &shape);
    FlexTensor::from_data(TensorData::new(
        y,
        [shape.n, shape.c_out, shape.ho(), shape.wo()],
    ))
}

/// The input gradient of a stride-1 convolution as a convolution itself: of `dY` by
/// the kernel flipped in both axes with input and output channels swapped, padded by
/// `k − 1 − p` on each side. It reads `dY`'s column matrix in place, where the general
/// path writes the gradient of the input's column matrix and scatters it back (col2im,
/// 7.5 % of a resnet20 step).
struct TransposedConv {
    /// `[c_in, c_out, kh, kw]`, flipped.
    weights: Vec<f32>,
    /// One image of `dY` in, one image of `dX` out.
    shape: ConvShape,
}

impl TransposedConv {
    /// Where the convolution has stride 1, no padding of `kernel` or more and is not
    /// pointwise (whose input gradient is one product already).
    fn of(weights: &[f32], shape: &ConvShape) -> Option<Self> {
        let [top, left, bottom, right] = shape.padding;
        if shape.stride != [1, 1]
            || shape.is_pointwise()
            || top.max(bottom) >= shape.kh
            || left.max(right) >= shape.kw
        {
            return None;
        }
        let (kh, kw) = (shape.kh, shape.kw);
        let mut flipped = vec![0f32; weights.len()];
        for o in 0..shape.c_out {
            for c in 0..shape.c_in {
                for i in 0..kh {
                    for j in 0..kw {
                        flipped[((c * shape.c_out + o) * kh + kh - 1 - i) * kw + kw - 1 - j] =
                            weights[((o * shape.c_in + c) * kh + i) * kw + j];
                    }
                }
            }
        }
        Some(TransposedConv {
            weights: flipped,
            shape: ConvShape {
                n: 1,
                c_in: shape.c_out,
                h: shape.ho(),
                w: shape.wo(),
                c_out: shape.c_in,
                kh,
                kw,
                stride: [1, 1],
                padding: [kh - 1 - top, kw - 1 - left, kh - 1 - bottom, kw - 1 - right],
            },
        })
    }
}

fn check_lengths(x: &[f32], weights: &[f32], shape: &ConvShape) {
    assert_eq!(x.len(), shape.n * shape.image_in(), "input length");
    assert_eq!(weights.len(), shape.c_out * shape.k(), "weights length");
    assert!(
        shape.h + shape.padding[0] + shape.padding[2] >= shape.kh
            && shape.w + shape.padding[1] + shape.padding[3] >= shape.kw,
        "kernel larger than the padded input"
    );
}

/// One image's column matrix `[k, pixels]`: row `(c·kh + i)·kw + j` holds input channel
/// `c` at kernel tap `(i, j)` for every output pixel (zero where it falls in the
/// padding). A pointwise convolution's is the image itself.
///
/// `columns` must hold zeros, or the column matrix of another image of the same shape:
/// the entries that read padding are the same for every image and are left as they
/// are, so that they stay zero. (Filling them per image row cost a `memset` call for
/// one or two floats, a fifth of the im2col time.)
fn columns_of<'a>(x_n: &'a [f32], shape: &ConvShape, columns: &'a mut [f32]) -> &'a [f32] {
    if shape.is_pointwise() {
        return x_n;
    }
    let mut rows = columns.chunks_exact_mut(shape.pixels_out());
    for plane in x_n.chunks_exact(shape.h * shape.w) {
        for i in 0..shape.kh {
            for j in 0..shape.kw {
                let row = rows.next().expect("k rows");
                if shape.stride == [1, 1] && shape.wo() == shape.w {
                    shifted_plane_into(row, plane, shape, (i, j));
                } else {
                    tap_lines_into(row, plane, shape, (i, j));
                }
            }
        }
    }
    columns
}

/// The column-matrix row of tap `(i, j)` of a stride-1 convolution whose output is as
/// wide as its input: output pixel `q = oy·w + ox` reads input pixel `q + offset`,
/// with `offset = (i − top)·w + (j − left)`, so the row is one contiguous copy of the
/// plane from the first in-bounds pixel to the last. The copy also fills the pixels
/// of the intervening rows that read across a row's edge (the left and right
/// padding); those are zeroed after it.
fn shifted_plane_into(row: &mut [f32], plane: &[f32], shape: &ConvShape, (i, j): (usize, usize)) {
    let (w, ho) = (shape.w, shape.ho());
    let [top, left, ..] = shape.padding;
    // Output rows whose input row `oy + i − top` lies in 0..h.
    let rows_from = top.saturating_sub(i);
    let rows_to = (shape.h + top).saturating_sub(i).min(ho);
    let (first, end) = inside_columns(shape, j);
    if rows_from >= rows_to || first == end {
        return;
    }
    let from = rows_from * w + first;
    let to = (rows_to - 1) * w + end;
    // In bounds: `from` reads input row and column ≥ 0, `to − 1` reads row h − 1 or
    // less and column w − 1 or less (`inside_columns`).
    let source = (from + i * w + j) - (top * w + left);
    row[from..to].copy_from_slice(&plane[source..source + (to - from)]);
    for oy in rows_from..rows_to {
        let (left_edge, rest) = row[oy * w..(oy + 1) * w].split_at_mut(first);
        for value in left_edge.iter_mut().chain(&mut rest[end - first..]) {
            *value = 0.0;
        }
    }
}

/// The column-matrix row of tap `(i, j)`, output row by output row (any stride and
/// padding).
fn tap_lines_into(row: &mut [f32], plane: &[f32], shape: &ConvShape, (i, j): (usize, usize)) {
    let (ho, wo) = (shape.ho(), shape.wo());
    let [sh, sw] = shape.stride;
    let [top, left, ..] = shape.padding;
    let (first, end) = inside_columns(shape, j);
    if first == end {
        return;
    }
    for oy in 0..ho {
        let iy = (oy * sh + i).wrapping_sub(top);
        if iy >= shape.h {
            continue;
        }
        let line = &plane[iy * shape.w..(iy + 1) * shape.w];
        let out = &mut row[oy * wo + first..oy * wo + end];
        let source = first * sw + j - left;
        if sw == 1 {
            out.copy_from_slice(&line[source..source + end - first]);
        } else {
            for (value, &x) in out.iter_mut().zip(line[source..].iter().step_by(sw)) {
                *value = x;
            }
        }
    }
}

/// The output columns `first..end` whose kernel column `j` falls inside the input
/// (`0 <= ox·stride + j − left < w`); the others read padding.
fn inside_columns(shape: &ConvShape, j: usize) -> (usize, usize) {
    let (sw, left, wo) = (shape.stride[1], shape.padding[1], shape.wo());
    let first = left.saturating_sub(j).div_ceil(sw).min(wo);
    // The last input column, w − 1, is reached from ox ≤ (w − 1 + left − j) / sw.
    let end = match (shape.w - 1 + left).checked_sub(j) {
        Some(reach) => (reach / sw + 1).min(wo),
        None => 0,
    };
    (first, end.max(first))
}

/// Adds a column matrix's gradient back onto the image it was built from (the
/// transpose of [`columns_of`]).
fn add_columns_into(columns: &[f32], shape: &ConvShape, dx_n: &mut [f32]) {
    let (ho, wo) = (shape.ho(), shape.wo());
    let [sh, sw] = shape.stride;
    let [top, left, ..] = shape.padding;
    let mut rows = columns.chunks_exact(ho * wo);
    for plane in dx_n.chunks_exact_mut(shape.h * shape.w) {
        for i in 0..shape.kh {
            for j in 0..shape.kw {
                let row = rows.next().expect("k rows");
                let (first, end) = inside_columns(shape, j);
                for oy in 0..ho {
                    let iy = (oy * sh + i).wrapping_sub(top);
                    if iy >= shape.h {
                        continue;
                    }
                    let line = &mut plane[iy * shape.w..(iy + 1) * shape.w];
                    if first == end {
                        continue;
                    }
                    let source = first * sw + j - left;
                    let values = &row[oy * wo + first..oy * wo + end];
                    for (x, &value) in line[source..].iter_mut().step_by(sw).zip(values) {
                        *x += value;
                    }
                }
            }
        }
    }
}

/// A matrix operand of [`matmul`], row-major in memory, used as it is or transposed.
#[derive(Clone, Copy)]
enum Operand<'a> {
    RowMajor(&'a [f32]),
    Transposed(&'a [f32]),
}

/// `dst [m, n] (+)= lhs [m, k] · rhs [k, n]` (`accumulate` adds to `dst`), `dst`
/// row-major, on the calling thread: the parallelism is over images.
fn matmul(
    dst: &mut [f32],
    shape: (usize, usize, usize),
    lhs: Operand,
    rhs: Operand,
    accumulate: bool,
) {
    matmul_into(dst, false, shape, lhs, rhs, accumulate);
}

/// [`matmul`] into a row-major (`column_major` false) or column-major `dst`.
///
/// gemm's microkernel reads the left operand of the product it computes (after
/// transposing it, which it does for a row-major `dst`) down its columns; any other
/// layout it first copies into that one. The weight gradient's right operand is the
/// column matrix transposed (`[pixels, k]`, with a row stride of one column): as a
/// row-major product gemm copied all of it per image, reading it across rows of
/// thousands of floats, and that copy cost as much as the multiplication. Written
/// column-major, the product keeps `dY_n` (`c_out` rows, a tenth of the size) as the
/// operand gemm copies, and reads the column matrix in place.
fn matmul_into(
    dst: &mut [f32],
    column_major: bool,
    (m, n, k): (usize, usize, usize),
    lhs: Operand,
    rhs: Operand,
    accumulate: bool,
) {
    assert!(dst.len() >= m * n);
    let (dst_cs, dst_rs) = if column_major {
        (m as isize, 1)
    } else {
        (1, n as isize)
    };
    // (data, column stride, row stride) of each operand as the product reads it.
    let strides = |operand: Operand, rows: usize, columns: usize| match operand {
        Operand::RowMajor(data) => {
            assert!(data.len() >= rows * columns);
            (data.as_ptr(), 1isize, columns as isize)
        }
        Operand::Transposed(data) => {
            assert!(data.len() >= rows * columns);
            (data.as_ptr(), rows as isize, 1isize)
        }
    };
    let (lhs, lhs_cs, lhs_rs) = strides(lhs, m, k);
    let (rhs, rhs_cs, rhs_rs) = strides(rhs, k, n);
    // SAFETY: the asserts above keep every index gemm computes from these strides
    // (row r < rows, column c < columns of each operand) inside its slice; `dst` is
    // borrowed mutably and the operands shared, so they do not overlap.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_cs,
            dst_rs,
            accumulate,
            lhs,
            lhs_cs,
            lhs_rs,
            rhs,
            rhs_cs,
            rhs_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The convolution and its gradients by the definition, in f64.
    fn reference(
        x: &[f32],
        weights: &[f32],
        dy: &[f32],
        s: &ConvShape,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (ho, wo) = (s.ho(), s.wo());
        let mut y = vec![0f64; s.n * s.c_out * ho * wo];
        let mut dx = vec![0f64; x.len()];
        let mut dw = vec![0f64; weights.len()];
        for n in 0..s.n {
            for o in 0..s.c_out {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let out = ((n * s.c_out + o) * ho + oy) * wo + ox;
                        for c in 0..s.c_in {
                            for i in 0..s.kh {
                                for j in 0..s.kw {
                                    let iy =
                                        (oy * s.stride[0] + i) as isize - s.padding[0] as isize;
                                    let ix =
                                        (ox * s.stride[1] + j) as isize - s.padding[1] as isize;
                                    if iy < 0 || ix < 0 || iy >= s.h as isize || ix >= s.w as isize
                                    {
                                        continue;
                                    }
                                    let xi =
                                        ((n * s.c_in + c) * s.h + iy as usize) * s.w + ix as usize;
                                    let wi = ((o * s.c_in + c) * s.kh + i) * s.kw + j;
                                    y[out] += f64::from(x[xi]) * f64::from(weights[wi]);
                                    dx[xi] += f64::from(dy[out]) * f64::from(weights[wi]);
                                    dw[wi] += f64::from(dy[out]) * f64::from(x[xi]);
                                }
                            }
                        }
                    }
                }
            }
        }
        (y, dx, dw)
    }

    /// `len` deterministic test values in [−1, 1], steps of 0.001 (xorshift from `seed`).
    pub(crate) fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// Every value within `1e-5 ·` the largest magnitude of the reference.
    fn assert_close(got: &[f32], expected: &[f64], what: &str) {
        assert_eq!(got.len(), expected.len(), "{what}");
        let scale = expected.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
        for (i, (g, e)) in got.iter().zip(expected).enumerate() {
            assert!(
                (f64::from(*g) - e).abs() <= 1e-5 * scale,
                "{what}[{i}]: {g} against {e}"
            );
        }
    }

    #[test]
    fn forward_and_gradients_match_the_definition() {
        let shapes = [
            // 3×3 stride 1, the residual blocks' convolutions (the input gradient as a
            // transposed convolution), and the same with uneven padding.
            (3, 4, 6, 6, 5, 3, [1, 1], [1, 1, 1, 1]),
            (2, 3, 6, 7, 4, 3, [1, 1], [0, 2, 2, 1]),
            // Padding as large as the kernel: the general path.
            (2, 2, 4, 4, 3, 3, [1, 1], [3, 0, 0, 1]),
            // 3×3 stride 2 with TensorFlow's asymmetric padding (bottom and right only).
            (2, 3, 7, 8, 4, 3, [2, 2], [0, 0, 1, 1]),
            // 1×1 stride 2 projections, and 1×1 stride 1 (the pointwise path).
            (9, 4, 6, 6, 8, 1, [2, 2], [0, 0, 0, 0]),
            (9, 4, 5, 3, 6, 1, [1, 1], [0, 0, 0, 0]),
            // The ImageNet stem: 7×7 stride 2, padding 3; more images than a task holds.
            (17, 3, 11, 9, 2, 7, [2, 2], [3, 3, 3, 3]),
            // A 2×2 image under the stem: some kernel columns see padding only.
            (2, 3, 2, 2, 2, 7, [2, 2], [3, 3, 3, 3]),
        ];
        for (i, &(n, c_in, h, w, c_out, k, stride, padding)) in shapes.iter().enumerate() {
            let shape = ConvShape {
                n,
                c_in,
                h,
                w,
                c_out,
                kh: k,
                kw: k,
                stride,
                padding,
            };
            let x = values(n * c_in * h * w, 1 + i as u64);
            let weights = values(c_out * c_in * k * k, 100 + i as u64);
            let dy = values(n * c_out * shape.ho() * shape.wo(), 200 + i as u64);
            let (y_ref, dx_ref, dw_ref) = reference(&x, &weights, &dy, &shape);
            assert_close(&forward(&x, &weights, &shape), &y_ref, "y");
            let (dx, dw) = backward(&x, &weights, &dy, &shape, true);
            assert_close(&dx.unwrap(), &dx_ref, "dx");
            assert_close(&dw, &dw_ref, "dw");
            let (none, dw_alone) = backward(&x, &weights, &dy, &shape, false);
            assert!(none.is_none());
            assert_eq!(dw_alone, dw);
        }
    }

    #[test]
    fn the_burn_operation_matches_burns_convolution_and_its_gradients() {
        use burn::nn::conv::Conv2dConfig;
        use burn::nn::PaddingConfig2d;
        use burn::tensor::Device;

        let device = Device::flex().autodiff();
        let (stride, padding) = ([2, 2], [0, 0, 1, 1]);
        let conv = Conv2dConfig::new([3, 4], [3, 3])
            .with_stride(stride)
            .with_padding(PaddingConfig2d::Explicit(0, 0, 1, 1))
            .with_bias(false)
            .init(&device);
        let tensor = |len, seed, dims: [usize; 4]| {
            Tensor::<4>::from_data(TensorData::new(values(len, seed), dims), &device)
        };
        let x = tensor(2 * 3 * 7 * 8, 1, [2, 3, 7, 8]).require_grad();
        // Output 3×4: a weighted sum of it is the loss, so every output has a gradient.
        let weighting = tensor(2 * 4 * 3 * 4, 2, [2, 4, 3, 4]);
        let weights = conv.weight.val();
        let to_vec = |t: Tensor<4>| t.into_data().try_to_vec::<f32>().unwrap();
        let ours = conv2d(x.clone(), weights.clone(), stride, padding);
        let theirs = conv.forward(x.clone());
        let (ours_y, theirs_y) = (to_vec(ours.clone()), to_vec(theirs.clone()));
        let grads_ours = (ours * weighting.clone()).sum().backward();
        let grads_theirs = (theirs * weighting).sum().backward();
        let pairs = [
            ("y", ours_y, theirs_y),
            (
                "dx",
                to_vec(x.grad(&grads_ours).unwrap()),
                to_vec(x.grad(&grads_theirs).unwrap()),
            ),
            (
                "dw",
                to_vec(weights.grad(&grads_ours).unwrap()),
                to_vec(weights.grad(&grads_theirs).unwrap()),
            ),
        ];
        for (what, ours, theirs) in pairs {
            let theirs: Vec<f64> = theirs.into_iter().map(f64::from).collect();
            assert_close(&ours, &theirs, what);
        }
    }

    #[test]
    fn results_do_not_depend_on_the_number_of_threads() {
        let shape = ConvShape {
            n: 37,
            c_in: 8,
            h: 8,
            w: 8,
            c_out: 8,
            kh: 3,
            kw: 3,
            stride: [1, 1],
            padding: [1, 1, 1, 1],
        };
        let x = values(shape.n * 8 * 64, 3);
        let weights = values(8 * 8 * 9, 4);
        let dy = values(shape.n * 8 * 64, 5);
        let run = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| backward(&x, &weights, &dy, &shape, true))
        };
        assert_eq!(run(1), run(3));
    }
}
/// A measurement, not a check (`#[ignore]`): the convolution's rate on resnet20's three
/// stage shapes, batch 128, forward, backward and the weight gradient alone. Run with
/// `cargo test -p tinyres-train --lib convolution_rates -- --ignored --nocapture`.
#[cfg(test)]
mod rates {
    use super::*;
    use std::time::Instant;

    /// Mean seconds of `repeats` calls of `f`, after one call to warm up.
    fn seconds<T>(repeats: u32, mut f: impl FnMut() -> T) -> f64 {
        std::hint::black_box(f());
        let start = Instant::now();
        for _ in 0..repeats {
            std::hint::black_box(f());
        }
        start.elapsed().as_secs_f64() / f64::from(repeats)
    }

    #[test]
    #[ignore = "a measurement: prints GFLOP/s"]
    fn convolution_rates_on_resnet20_stages() {
        const IMAGES: usize = 128;
        for (channels, side) in [(16usize, 32usize), (32, 16), (64, 8)] {
            let shape = ConvShape {
                n: IMAGES,
                c_in: channels,
                h: side,
                w: side,
                c_out: channels,
                kh: 3,
                kw: 3,
                stride: [1, 1],
                padding: [1, 1, 1, 1],
            };
            let x = tests::values(IMAGES * channels * side * side, 1);
            let weights = tests::values(channels * channels * 9, 2);
            let dy = tests::values(IMAGES * channels * side * side, 3);
            let flops = 2.0 * (IMAGES * channels * channels * 9 * side * side) as f64;
            let forward_s = seconds(5, || forward(&x, &weights, &shape));
            let backward_s = seconds(5, || backward(&x, &weights, &dy, &shape, true));
            let weights_s = seconds(5, || backward(&x, &weights, &dy, &shape, false));
            println!(
                "{channels} channels, {side}x{side}: forward {:.1} ms ({:.0} GFLOP/s), \
                 backward {:.1} ms ({:.0}), weight gradient alone {:.1} ms ({:.0})",
                forward_s * 1e3,
                flops / forward_s / 1e9,
                backward_s * 1e3,
                2.0 * flops / backward_s / 1e9,
                weights_s * 1e3,
                flops / weights_s / 1e9,
            );
        }
    }
}
