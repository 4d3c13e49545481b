//! Winograd F(2,3) filters of int8 3×3 convolutions, for kernels that compute two
//! output pixels of a row with four multiplications per kernel row and channel
//! instead of six.
//!
//! For a kernel row `g0, g1, g2` and four inputs `d0..d3` along the row, with the
//! filter terms doubled so that they stay integers,
//!
//! ```text
//! U = [2·g0, g0 + g1 + g2, g0 − g1 + g2, 2·g2]
//! V = [d0 − d2, d1 + d2, d2 − d1, d1 − d3]
//! M_k = Σ over kernel rows and channels of U_k · V_k
//! y0 = (M0 + M1 + M2) / 2 = Σ g0·d0 + g1·d1 + g2·d2
//! y1 = (M1 − M2 − M3) / 2 = Σ g0·d1 + g1·d2 + g2·d3
//! ```
//!
//! exactly, in integers: the halving divides an even number. `U` fits 16 bits (at most
//! 3·128 in magnitude) and so does `V` for inputs less their zero point (at most 2·255).
//!
//! A blob stores the filters of a layer that [`applies`] accepts after its int8
//! weights, when the layer's flag says so (FORMAT.md), as 16-bit values in the order
//! [`for_each_filter_value`] gives them: the order in which a kernel with dual 16-bit
//! multiply-accumulates reads them. The parser checks them against the weights.

use crate::kernels::ConvShape;

/// Most input channels a layer with Winograd filters may have. The Cortex-M DSP
/// kernel keeps the terms of two pixel pairs over the three kernel rows, 12 words a
/// channel, in its column buffer, which every model's stack carries: 64 channels
/// (3 KiB) keep it 768 B above what the direct kernel needs, and cover ResNet-8.
pub const MAX_IN_CHANNELS: usize = 64;

/// Whether an int8 convolution may carry Winograd filters: a 3×3 kernel at stride 1,
/// input channels a multiple of 16 (whole groups of four for every kernel row, four
/// at a time) up to [`MAX_IN_CHANNELS`], an even number of output channels (filters
/// go in pairs) and output rows a multiple of four pixels wide (the kernel computes
/// four at a time): the layers the kernel computes from the filters.
pub const fn applies(shape: &ConvShape) -> bool {
    shape.kernel_h == 3
        && shape.kernel_w == 3
        && shape.stride == 1
        && shape.in_c > 0
        && shape.in_c % 16 == 0
        && shape.in_c <= MAX_IN_CHANNELS
        && shape.out_c > 0
        && shape.out_c % 2 == 0
        && shape.out_w > 0
        && shape.out_w % 4 == 0
}

/// Bytes of a layer's Winograd filters: four 16-bit terms per filter, kernel row and
/// input channel.
pub const fn filters_bytes(in_c: usize, out_c: usize) -> usize {
    2 * 4 * 3 * in_c * out_c
}

/// Calls `value` with every term of the Winograd filters of OHWI int8 weights of a
/// 3×3 kernel (`out_c × 3 × 3 × in_c`, as [`applies`] accepts), in the stored order:
/// for each pair of filters, for each term `k` of `U`, for each kernel row, for each
/// group of four input channels, the pair's first filter then its second, each as the
/// channels `4g, 4g + 2, 4g + 1, 4g + 3` (the even and the odd lanes of the kernel's
/// two words). Calls nothing if the weights are not `out_c × 9 × in_c`.
pub fn for_each_filter_value(
    weights: &[i8],
    in_c: usize,
    out_c: usize,
    mut value: impl FnMut(i16),
) {
    if weights.len() != 9 * in_c * out_c || in_c % 4 != 0 || out_c % 2 != 0 {
        return;
    }
    // Term `k` of channel `c` of a kernel row (its three taps of `in_c` channels).
    let term = |k: usize, taps: &[i8], c: usize| -> i16 {
        let g = [taps[c], taps[in_c + c], taps[2 * in_c + c]].map(i16::from);
        match k {
            0 => 2 * g[0],
            1 => g[0] + g[1] + g[2],
            2 => g[0] - g[1] + g[2],
            _ => 2 * g[2],
        }
    };
    for pair in weights.chunks_exact(18 * in_c) {
        let (first, second) = pair.split_at(9 * in_c);
        for k in 0..4 {
            for (first, second) in first
                .chunks_exact(3 * in_c)
                .zip(second.chunks_exact(3 * in_c))
            {
                for group in 0..in_c / 4 {
                    for taps in [first, second] {
                        for lane in [0, 2, 1, 3] {
                            value(term(k, taps, 4 * group + lane));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The identities in the module's doc, over every int8 filter row against inputs
    /// at the extremes of their range.
    #[test]
    fn two_outputs_from_four_products_are_exact() {
        let inputs = [
            [-255, 255, -255, 255],
            [255, 255, -255, -1],
            [0, -7, 254, 3],
        ];
        for g0 in (-128i32..=127).step_by(5) {
            for g1 in [-128, -1, 0, 1, 127] {
                for g2 in [-128, 0, 127, 64] {
                    let u = [2 * g0, g0 + g1 + g2, g0 - g1 + g2, 2 * g2];
                    assert!(u.iter().all(|&t| i16::try_from(t).is_ok()));
                    for d in inputs {
                        let v = [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]];
                        let m: [i32; 4] = core::array::from_fn(|k| u[k] * v[k]);
                        assert_eq!((m[0] + m[1] + m[2]) / 2, g0 * d[0] + g1 * d[1] + g2 * d[2]);
                        assert_eq!((m[1] - m[2] - m[3]) / 2, g0 * d[1] + g1 * d[2] + g2 * d[3]);
                    }
                }
            }
        }
    }

    #[test]
    fn values_come_in_the_stored_order() {
        let (in_c, out_c) = (16, 2);
        let weights: [i8; 9 * 16 * 2] = core::array::from_fn(|i| (i % 251) as i8);
        let mut values = [0i16; 4 * 3 * 16 * 2];
        let mut n = 0;
        for_each_filter_value(&weights, in_c, out_c, |v| {
            values[n] = v;
            n += 1;
        });
        assert_eq!(2 * n, filters_bytes(in_c, out_c));
        let w = |f: usize, row: usize, column: usize, c: usize| {
            i16::from(weights[((f * 3 + row) * 3 + column) * in_c + c])
        };
        // k = 1, row 2, group 3, second filter, lane 1 (channel 4·3 + 2).
        let index = |k: usize, row: usize, group: usize, f: usize, lane: usize| {
            ((k * 3 + row) * 4 + group) * 8 + f * 4 + lane
        };
        let at = index(1, 2, 3, 1, 1);
        let c = 14;
        assert_eq!(values[at], w(1, 2, 0, c) + w(1, 2, 1, c) + w(1, 2, 2, c));
        // k = 3, row 0, group 0, first filter, lane 2 (channel 1).
        let at = index(3, 0, 0, 0, 2);
        assert_eq!(values[at], 2 * w(0, 0, 2, 1));
    }
}
