//! int8 calibration and the blob of a network in any numeric type: activation ranges
//! chosen over real images (min/max, percentile or least squared error), and the
//! rounding of the weights compensated in the biases.

use anyhow::{ensure, Context, Result};
use serde::Serialize;
use tinyres_data::Dataset;

use crate::writer::{ActivationRanges, BlobOptions, Encoding, Network};

/// How int8 activation ranges are chosen from the calibration images.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Calibration {
    /// The smallest and largest value seen (TFLite's default).
    Minmax,
    /// The [`PERCENTILE`]th percentile at each end: a few outliers no longer stretch
    /// the scale of every other value.
    Percentile,
    /// The range with the least expected squared error over the calibration
    /// histogram: clipping error of the values outside it plus the rounding error
    /// (step²/12) of the values inside.
    Mse,
}

/// The percentile kept by [`Calibration::Percentile`] (and `100 -` it at the low end).
pub const PERCENTILE: f64 = 99.999;

/// Histogram bins per tensor for [`Calibration::Percentile`] and [`Calibration::Mse`].
const BINS: usize = 4096;

/// What the int8 encoding learns from the calibration images.
#[derive(Clone, Debug)]
pub struct Calibrated {
    /// Each activation's range.
    pub ranges: ActivationRanges,
    /// Each tensor's mean over the images (index = tensor id), for
    /// [`Network::with_weight_rounding_compensated`].
    pub mean_tensors: Vec<Vec<f32>>,
}

/// Activation ranges and mean tensors of `network` over `images` (raw HWC `u8`).
pub fn calibrate(network: &Network, images: &Dataset, method: Calibration) -> Result<Calibrated> {
    ensure!(!images.is_empty(), "the calibration set is empty");
    let all = || (0..images.len()).map(|i| images.image(i));
    let minmax = network
        .calibrate(all())
        .map_err(|e| anyhow::anyhow!("calibration: {e}"))?;
    let histogram = |range: (f32, f32)| (range, vec![0u64; BINS]);
    let mut tensors: Vec<_> = minmax.tensors.iter().map(|&r| histogram(r)).collect();
    let mut pre_add: Vec<_> = minmax.pre_add.iter().map(|r| r.map(histogram)).collect();
    let count = |(range, bins): &mut ((f32, f32), Vec<u64>), values: &[f32]| {
        let width = (range.1 - range.0).max(f32::MIN_POSITIVE);
        for &v in values {
            let bin = (((v - range.0) / width) * BINS as f32) as usize;
            bins[bin.min(BINS - 1)] += 1;
        }
    };
    let mut sums: Vec<Vec<f64>> = Vec::new();
    for image in all() {
        let trace = network
            .forward_f32(image)
            .map_err(|e| anyhow::anyhow!("calibration: {e}"))?;
        sums.resize_with(trace.tensors.len(), Vec::new);
        for (sum, values) in sums.iter_mut().zip(&trace.tensors) {
            sum.resize(values.len(), 0.0);
            for (s, &v) in sum.iter_mut().zip(values) {
                *s += f64::from(v);
            }
        }
        if method == Calibration::Minmax {
            continue;
        }
        for (h, values) in tensors.iter_mut().zip(&trace.tensors) {
            count(h, values);
        }
        for (h, values) in pre_add.iter_mut().zip(&trace.pre_add) {
            if let (Some(h), Some(values)) = (h, values) {
                count(h, values);
            }
        }
    }
    let n = images.len() as f64;
    let mean_tensors = sums
        .iter()
        .map(|sum| sum.iter().map(|&s| (s / n) as f32).collect())
        .collect();
    let clip = |(range, bins): &((f32, f32), Vec<u64>)| match method {
        Calibration::Mse => least_squared_error_range(*range, bins),
        Calibration::Percentile => percentile_range(*range, bins),
        Calibration::Minmax => *range,
    };
    let ranges = ActivationRanges {
        tensors: tensors.iter().map(clip).collect(),
        pre_add: pre_add.iter().map(|h| h.as_ref().map(clip)).collect(),
    };
    Ok(Calibrated {
        ranges,
        mean_tensors,
    })
}

/// The [`PERCENTILE`] range of a histogram of `BINS` bins over `low..high`.
fn percentile_range((low, high): (f32, f32), bins: &[u64]) -> (f32, f32) {
    let total: u64 = bins.iter().sum();
    let tail = ((1.0 - PERCENTILE / 100.0) * total as f64) as u64;
    let width = (high - low) / BINS as f32;
    let (mut below, mut first) = (0u64, 0usize);
    while first < BINS - 1 && below + bins[first] <= tail {
        below += bins[first];
        first += 1;
    }
    let (mut above, mut last) = (0u64, BINS - 1);
    while last > first && above + bins[last] <= tail {
        above += bins[last];
        last -= 1;
    }
    (low + width * first as f32, low + width * (last + 1) as f32)
}

/// The range, with ends on bin edges, that minimises the expected squared int8
/// quantization error of the values in a histogram of `BINS` bins over `low..high`:
/// values outside are clipped to the nearest end, values inside are off by a uniform
/// rounding error (step²/12). The low end is searched over the edges up to the 1st
/// percentile, the high end over those from the 99th; prefix sums make each
/// candidate O(1).
fn least_squared_error_range((low, high): (f32, f32), bins: &[u64]) -> (f32, f32) {
    let width = f64::from(high - low) / BINS as f64;
    let edge = |i: usize| f64::from(low) + width * i as f64;
    // prefix[i] = (count, Σ n·c, Σ n·c²) over bins 0..i, c the bin centre.
    let mut prefix = vec![(0f64, 0f64, 0f64); BINS + 1];
    for (i, &n) in bins.iter().enumerate() {
        let (n, c) = (n as f64, edge(i) + width / 2.0);
        let (count, sum, squares) = prefix[i];
        prefix[i + 1] = (count + n, sum + n * c, squares + n * c * c);
    }
    let total = prefix[BINS].0;
    let p1 = prefix
        .iter()
        .rposition(|p| p.0 * 100.0 <= total)
        .unwrap_or(0);
    let p99 = prefix
        .iter()
        .position(|p| p.0 * 100.0 >= total * 99.0)
        .unwrap_or(BINS);
    let error = |first: usize, end: usize| -> f64 {
        let (a, b) = (edge(first), edge(end));
        let (below_n, below_s, below_q) = prefix[first];
        let (all_n, all_s, all_q) = prefix[BINS];
        let (upto_n, upto_s, upto_q) = prefix[end];
        let (above_n, above_s, above_q) = (all_n - upto_n, all_s - upto_s, all_q - upto_q);
        let clipped_low = a * a * below_n - 2.0 * a * below_s + below_q;
        let clipped_high = above_q - 2.0 * b * above_s + b * b * above_n;
        let inside = upto_n - below_n;
        clipped_low + clipped_high + inside * ((b - a) / 255.0).powi(2) / 12.0
    };
    let mut best = (f64::INFINITY, 0, BINS);
    for first in 0..=p1.min(BINS - 1) {
        for end in p99.max(first + 1)..=BINS {
            let e = error(first, end);
            if e < best.0 {
                best = (e, first, end);
            }
        }
    }
    (edge(best.1) as f32, edge(best.2) as f32)
}

/// The numeric type of a compiled blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// 32-bit float weights and activations.
    F32,
    /// 16-bit float weights, 32-bit float activations.
    F16,
    /// TFLite int8: per-channel weights, per-tensor activations.
    Int8,
}

/// How int8 is calibrated.
#[derive(Clone, Copy, Debug)]
pub struct Int8Options<'d> {
    /// The calibration images.
    pub images: &'d Dataset,
    /// How activation ranges are chosen.
    pub method: Calibration,
    /// Compensate the mean error of the weights' rounding in the biases
    /// ([`Network::with_weight_rounding_compensated`]).
    pub bias_correction: bool,
}

/// The blob of an imported network; int8 needs calibration images.
pub fn to_blob(
    network: &Network,
    dtype: Dtype,
    options: BlobOptions,
    int8: Option<Int8Options<'_>>,
) -> Result<Vec<u8>> {
    let written = match dtype {
        Dtype::F32 => network.to_blob_with(Encoding::F32, options.memory),
        Dtype::F16 => network.to_blob_with(Encoding::F16, options.memory),
        Dtype::Int8 => {
            let int8 = int8.context("int8 needs calibration images (--calib DATA)")?;
            let calibrated = calibrate(network, int8.images, int8.method)?;
            let encoding = Encoding::Int8(&calibrated.ranges);
            if int8.bias_correction {
                network
                    .with_weight_rounding_compensated(&calibrated.mean_tensors)
                    .and_then(|corrected| corrected.to_blob_with_options(encoding, options))
            } else {
                network.to_blob_with_options(encoding, options)
            }
        }
    };
    written.map_err(|e| anyhow::anyhow!("writing the blob: {e}"))
}
