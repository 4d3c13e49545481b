//! `tinyres train`: the paper's recipe on burn's CPU backend, with per-epoch metrics,
//! curves, atomic checkpoints and exact resume.
//!
//! A run directory holds:
//! - `config.json`: everything the run was started with (architecture, data, recipe,
//!   normalisation, class names); `--resume` reads it and export reads it.
//! - `checkpoint/`: the training state after the last finished epoch (model with its
//!   parameter ids, optimizer momentum, progress), replaced atomically as a whole.
//! - `model.safetensors`: the model after the last finished epoch.
//! - `metrics.csv`, `curves.png`.

use std::f64::consts::PI;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, ModuleOptimizer, SgdConfig};
use burn::store::{BurnpackStore, ModuleSnapshot, SafetensorsStore};
use burn::tensor::{Device, Int, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use tinyres_compile::arch::Architecture;
use tinyres_compile::eval::argmax;
use tinyres_data::{temp_path, write_atomically, Dataset, Split, CENTER_CROP_FRACTION};

use crate::net::ResNet;

/// How the learning rate moves over training.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// The paper's: divided by 10 at 50 % and at 75 % of training.
    Step,
    /// Cosine annealing from the base rate to zero.
    Cosine,
    /// One cycle: up from base/25 to base over the first 30 %, then down to base/25e4.
    Onecycle,
}

/// The learning rate at `progress` (finished fraction of training, 0..1).
pub fn learning_rate(schedule: Schedule, base: f64, progress: f64) -> f64 {
    let progress = progress.clamp(0.0, 1.0);
    match schedule {
        Schedule::Step => {
            let drops = usize::from(progress >= 0.5) + usize::from(progress >= 0.75);
            base * 0.1f64.powi(drops as i32)
        }
        Schedule::Cosine => 0.5 * base * (1.0 + (PI * progress).cos()),
        Schedule::Onecycle => {
            const RISE: f64 = 0.3;
            let (start, end) = (base / 25.0, base / 25.0e4);
            let cosine =
                |from: f64, to: f64, t: f64| to + (from - to) * 0.5 * (1.0 + (PI * t).cos());
            if progress < RISE {
                cosine(start, base, progress / RISE)
            } else {
                cosine(base, end, (progress - RISE) / (1.0 - RISE))
            }
        }
    }
}

/// How training images are cropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CropStyle {
    /// The paper's CIFAR-10 recipe: the image padded by [`PAD`] black pixels on every
    /// side, a random window of the input's size, a random horizontal flip.
    #[default]
    Padded,
    /// torchvision's ImageNet recipe (`RandomResizedCrop` and `RandomHorizontalFlip`):
    /// a random window of 8 % to 100 % of the image's area and an aspect ratio from 3/4
    /// to 4/3, scaled to the input's size (bilinear), a random flip. The images are
    /// held at the input's size ÷ [`CENTER_CROP_FRACTION`] (resized and centre-cropped
    /// as they are read), and the test images at the input's size, as torchvision
    /// evaluates.
    Resized,
}

/// The paper's warm-up for ResNet-110: this rate until the training error is below
/// [`WARMUP_UNTIL_ERROR`].
pub const WARMUP_LR: f64 = 0.01;
/// See [`WARMUP_LR`].
pub const WARMUP_UNTIL_ERROR: f64 = 0.8;
/// Batches over which the running training error is measured for the warm-up.
const WARMUP_WINDOW: usize = 20;

/// Everything a run is started with; saved as `config.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainConfig {
    /// The network.
    pub arch: Architecture,
    /// Training data as given (`synthetic`, a CIFAR-10 directory or file, an image folder).
    pub data: PathBuf,
    /// Test data, if not the training data's test split.
    pub test_data: Option<PathBuf>,
    /// Use only the first N training images.
    pub train_limit: Option<usize>,
    /// Epochs.
    pub epochs: usize,
    /// Batch size.
    pub batch: usize,
    /// Base learning rate.
    pub lr: f64,
    /// SGD momentum (dampening 0, not Nesterov).
    pub momentum: f64,
    /// L2 weight decay on every parameter.
    pub weight_decay: f64,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// Start at [`WARMUP_LR`] until the training error is below 80 % (the paper does
    /// this for ResNet-110).
    pub warmup: bool,
    /// Random crops and horizontal flips of the training images, as `crop` says.
    pub augment: bool,
    /// How training images are cropped (runs from before this field: the paper's).
    #[serde(default)]
    pub crop: CropStyle,
    /// Seed of initialisation, shuffling and augmentation.
    pub seed: u64,
    /// Per-channel mean of the training pixels, on the 0..1 scale (computed by
    /// [`train`] when a run starts).
    pub mean: Vec<f32>,
    /// Per-channel standard deviation, on the 0..1 scale (computed by [`train`]).
    pub std: Vec<f32>,
    /// Class names, label order (taken from the training data by [`train`]).
    pub class_names: Vec<String>,
    /// The data's last N classes are left out of training and testing (to be learned
    /// later, on the device); the network has the data's classes minus N outputs.
    #[serde(default)]
    pub held_out_classes: usize,
}

/// One row of `metrics.csv`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EpochMetrics {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean cross-entropy over the epoch's batches.
    pub train_loss: f64,
    /// Fraction of training images misclassified during the epoch (augmented, in
    /// training mode, as the paper's curves).
    pub train_error: f64,
    /// Fraction of test images misclassified by the model after the epoch.
    pub test_error: f64,
    /// Learning rate at the epoch's last step.
    pub lr: f64,
    /// Wall-clock seconds of the epoch's training steps.
    pub seconds: f64,
    /// Training images per second.
    pub images_per_second: f64,
}

/// A run's metrics as `tinyres_plot` draws them.
pub fn plot_run(name: &str, metrics: &[EpochMetrics]) -> tinyres_plot::Run {
    tinyres_plot::Run {
        name: name.to_string(),
        epochs: metrics
            .iter()
            .map(|m| tinyres_plot::Epoch {
                epoch: m.epoch,
                train_error: m.train_error,
                test_error: m.test_error,
            })
            .collect(),
    }
}

/// What survives between epochs besides the weights and the optimizer.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Progress {
    epochs_done: usize,
    warmup_done: bool,
    metrics: Vec<EpochMetrics>,
}

/// The result of a finished run.
#[derive(Clone, Debug, Serialize)]
pub struct TrainSummary {
    /// The run directory.
    pub run_dir: PathBuf,
    /// Architecture name.
    pub arch: String,
    /// Epochs trained in all (this invocation and earlier ones).
    pub epochs: usize,
    /// Trainable parameters.
    pub parameters: usize,
    /// Top-1 test accuracy after the last epoch.
    pub test_accuracy: f64,
    /// Training error of the last epoch.
    pub train_error: f64,
    /// Mean training throughput of this invocation.
    pub images_per_second: f64,
    /// Seconds spent training in this invocation.
    pub seconds: f64,
    /// Per-epoch metrics.
    pub metrics: Vec<EpochMetrics>,
}

const CONFIG: &str = "config.json";
const CHECKPOINT: &str = "checkpoint";
const MODEL: &str = "model.safetensors";
const METRICS: &str = "metrics.csv";
const CURVES: &str = "curves.png";

/// Images per evaluation batch.
const EVAL_BATCH: usize = 250;

impl TrainConfig {
    /// Reads `RUN_DIR/config.json`.
    pub fn load(run_dir: &Path) -> Result<Self> {
        let path = run_dir.join(CONFIG);
        let text = fs::read_to_string(&path)
            .with_context(|| format!("{}: not a training run directory", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{}: malformed", path.display()))
    }

    /// `(height, width)` of the network's input: the test images' size.
    pub fn input_size(&self) -> (usize, usize) {
        (self.arch.input.0, self.arch.input.1)
    }

    /// `(height, width)` the training images are held at: the input's size for
    /// [`CropStyle::Padded`], the input's ÷ [`CENTER_CROP_FRACTION`] (rounded up) for
    /// [`CropStyle::Resized`], which crops from them (torchvision's 256 for 224).
    pub fn stored_size(&self) -> (usize, usize) {
        let (h, w) = self.input_size();
        match self.crop {
            CropStyle::Padded => (h, w),
            CropStyle::Resized => {
                let stored = |n: usize| (n as f64 / CENTER_CROP_FRACTION - 1e-9).ceil() as usize;
                (stored(h), stored(w))
            }
        }
    }

    /// The number of training steps per epoch for `images` training images.
    fn steps_per_epoch(&self, images: usize) -> usize {
        images.div_ceil(self.batch)
    }
}

/// Per-channel mean and standard deviation of a data set's pixels, 0..1 scale.
pub fn channel_statistics(data: &Dataset) -> (Vec<f32>, Vec<f32>) {
    let c = data.channels;
    let mut sum = vec![0f64; c];
    let mut sum_sq = vec![0f64; c];
    for (i, &p) in data.pixels.iter().enumerate() {
        let v = f64::from(p) / 255.0;
        sum[i % c] += v;
        sum_sq[i % c] += v * v;
    }
    let n = (data.pixels.len() / c.max(1)).max(1) as f64;
    let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
    let std = sum_sq
        .iter()
        .zip(&mean)
        .map(|(sq, m)| ((sq / n - m * m).max(0.0).sqrt().max(1e-3)) as f32)
        .collect();
    (mean.iter().map(|&m| m as f32).collect(), std)
}

/// SplitMix64: shuffling and augmentation draws, reproducible from `(seed, epoch)`.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for this seed and stream.
    pub fn new(seed: u64, stream: u64) -> Self {
        Rng(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`, 53 bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// `0..n` in random order (Fisher–Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            order.swap(i, self.below(i + 1));
        }
        order
    }
}

/// How one image is augmented: the crop's top-left corner in the image padded by
/// [`PAD`] on every side, and whether it is mirrored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Crop {
    /// Row of the crop in the padded image, `0..=2*PAD`.
    pub top: usize,
    /// Column of the crop in the padded image, `0..=2*PAD`.
    pub left: usize,
    /// Mirror left to right.
    pub flip: bool,
}

/// Zero padding around an image before the random crop (the paper's 4 pixels).
pub const PAD: usize = 4;

impl Crop {
    /// No change.
    pub const NONE: Crop = Crop {
        top: PAD,
        left: PAD,
        flip: false,
    };

    /// A random crop and flip.
    pub fn random(rng: &mut Rng) -> Self {
        Crop {
            top: rng.below(2 * PAD + 1),
            left: rng.below(2 * PAD + 1),
            flip: rng.below(2) == 1,
        }
    }
}

/// Writes images `indices` of `data` (HWC `u8`) as one normalised NCHW `f32` batch,
/// each cropped from its padded image as `crops` says. The padding is black pixels,
/// normalised like the rest (torchvision pads the raw image, then normalises).
pub fn batch_tensor_data(
    data: &Dataset,
    indices: &[usize],
    crops: &[Crop],
    mean: &[f32],
    std: &[f32],
) -> Vec<f32> {
    let (h, w, c) = (data.height, data.width, data.channels);
    let mut out = vec![0f32; indices.len() * c * h * w];
    for (n, (&index, crop)) in indices.iter().zip(crops).enumerate() {
        let image = data.image(index);
        for ch in 0..c {
            let plane = &mut out[(n * c + ch) * h * w..(n * c + ch + 1) * h * w];
            let black = (0.0 - mean[ch]) / std[ch];
            for y in 0..h {
                for x in 0..w {
                    let source_x = if crop.flip { w - 1 - x } else { x };
                    let (py, px) = (y + crop.top, source_x + crop.left);
                    plane[y * w + x] = if py < PAD || px < PAD || py - PAD >= h || px - PAD >= w {
                        black
                    } else {
                        let p = image[((py - PAD) * w + (px - PAD)) * c + ch];
                        (f32::from(p) / 255.0 - mean[ch]) / std[ch]
                    };
                }
            }
        }
    }
    out
}

/// One image's window for [`CropStyle::Resized`]: rows `top..top + height` and columns
/// `left..left + width` of the stored image, scaled to the input's size, mirrored or
/// not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResizedCrop {
    /// First row of the window.
    pub top: usize,
    /// First column of the window.
    pub left: usize,
    /// Rows of the window.
    pub height: usize,
    /// Columns of the window.
    pub width: usize,
    /// Mirror left to right.
    pub flip: bool,
}

/// Smallest share of the image's area a random window covers (torchvision's default).
pub const RESIZED_CROP_MIN_AREA: f64 = 0.08;
/// Aspect ratios (width / height) of the random windows (torchvision's default).
pub const RESIZED_CROP_RATIO: (f64, f64) = (3.0 / 4.0, 4.0 / 3.0);

impl ResizedCrop {
    /// The centred `out_h × out_w` window of an `image_h × image_w` image, unscaled and
    /// unmirrored: torchvision's evaluation crop of an image held at the input's size
    /// ÷ [`CENTER_CROP_FRACTION`].
    pub fn centre((image_h, image_w): (usize, usize), (out_h, out_w): (usize, usize)) -> Self {
        let (height, width) = (out_h.min(image_h), out_w.min(image_w));
        ResizedCrop {
            top: (image_h - height) / 2,
            left: (image_w - width) / 2,
            height,
            width,
            flip: false,
        }
    }

    /// torchvision's `RandomResizedCrop.get_params` on an `image_h × image_w` image:
    /// up to ten draws of an area share and a log-uniform aspect ratio; where none
    /// fits, the whole image cut to the nearest allowed ratio, centred. Then a flip
    /// with probability 1/2.
    pub fn random(rng: &mut Rng, (image_h, image_w): (usize, usize)) -> Self {
        let area = (image_h * image_w) as f64;
        let (low, high) = (RESIZED_CROP_RATIO.0.ln(), RESIZED_CROP_RATIO.1.ln());
        let mut window = None;
        for _ in 0..10 {
            let target =
                area * (RESIZED_CROP_MIN_AREA + (1.0 - RESIZED_CROP_MIN_AREA) * rng.unit());
            let ratio = (low + (high - low) * rng.unit()).exp();
            let width = (target * ratio).sqrt().round() as usize;
            let height = (target / ratio).sqrt().round() as usize;
            if (1..=image_w).contains(&width) && (1..=image_h).contains(&height) {
                let top = rng.below(image_h - height + 1);
                let left = rng.below(image_w - width + 1);
                window = Some((top, left, height, width));
                break;
            }
        }
        let (top, left, height, width) = window.unwrap_or_else(|| {
            let ratio = image_w as f64 / image_h as f64;
            let (height, width) = if ratio < RESIZED_CROP_RATIO.0 {
                let height = (image_w as f64 / RESIZED_CROP_RATIO.0).round() as usize;
                (height.min(image_h), image_w)
            } else if ratio > RESIZED_CROP_RATIO.1 {
                let width = (image_h as f64 * RESIZED_CROP_RATIO.1).round() as usize;
                (image_h, width.min(image_w))
            } else {
                (image_h, image_w)
            };
            ((image_h - height) / 2, (image_w - width) / 2, height, width)
        });
        ResizedCrop {
            top,
            left,
            height,
            width,
            flip: rng.below(2) == 1,
        }
    }
}

/// Source position and the weight of the next pixel, for output pixel `i` of `out`
/// scaled from `size` source pixels starting at `start` (bilinear, half-pixel centres
/// as PyTorch's `align_corners=False`, clamped to the window).
fn bilinear_tap(i: usize, out: usize, start: usize, size: usize) -> (usize, usize, f32) {
    let scale = size as f32 / out as f32;
    let position = ((i as f32 + 0.5) * scale - 0.5).max(0.0);
    let first = (position as usize).min(size - 1);
    let next = (first + 1).min(size - 1);
    (start + first, start + next, position - first as f32)
}

/// Writes images `indices` of `data` (HWC `u8`) as one normalised NCHW `f32` batch of
/// `out_h × out_w` images, each the window `crops` gives scaled bilinearly (no
/// antialiasing: windows are at most [`CENTER_CROP_FRACTION`]⁻¹ larger than the output
/// along an axis where the images are held at the size [`CropStyle::Resized`] says).
pub fn resized_batch_tensor_data(
    data: &Dataset,
    indices: &[usize],
    crops: &[ResizedCrop],
    (out_h, out_w): (usize, usize),
    mean: &[f32],
    std: &[f32],
) -> Vec<f32> {
    let (w, c) = (data.width, data.channels);
    let mut out = vec![0f32; indices.len() * c * out_h * out_w];
    for (n, (&index, crop)) in indices.iter().zip(crops).enumerate() {
        let image = data.image(index);
        let rows: Vec<_> = (0..out_h)
            .map(|y| bilinear_tap(y, out_h, crop.top, crop.height))
            .collect();
        let columns: Vec<_> = (0..out_w)
            .map(|x| {
                let x = if crop.flip { out_w - 1 - x } else { x };
                bilinear_tap(x, out_w, crop.left, crop.width)
            })
            .collect();
        for ch in 0..c {
            let plane = &mut out[(n * c + ch) * out_h * out_w..(n * c + ch + 1) * out_h * out_w];
            let pixel = |y: usize, x: usize| f32::from(image[(y * w + x) * c + ch]);
            for (y, &(y0, y1, fy)) in rows.iter().enumerate() {
                for (x, &(x0, x1, fx)) in columns.iter().enumerate() {
                    let top = pixel(y0, x0) + (pixel(y0, x1) - pixel(y0, x0)) * fx;
                    let bottom = pixel(y1, x0) + (pixel(y1, x1) - pixel(y1, x0)) * fx;
                    let value = top + (bottom - top) * fy;
                    plane[y * out_w + x] = (value / 255.0 - mean[ch]) / std[ch];
                }
            }
        }
    }
    out
}

/// Options of one `tinyres train` invocation besides the config.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Where the run lives.
    pub run_dir: PathBuf,
    /// Continue the run in `run_dir` instead of starting one.
    pub resume: bool,
    /// Show a progress bar.
    pub progress: bool,
}

/// Makes glibc's allocator keep the memory a training step frees for the next step.
///
/// A step allocates and frees the same activation and gradient buffers, megabytes
/// each, every time. By default glibc serves such blocks with `mmap` (above a threshold
/// that it raises only up to 32 MiB) and gives the top of its heap back to the kernel
/// past a trim threshold, so every step faulted its buffers in again, page by page,
/// with the kernel zeroing each page: 8 % of a resnet20 step under `perf`. A fixed
/// threshold at glibc's largest (32 MiB on 64-bit targets; a batch of resnet20's first
/// stage is 8 MiB) puts them on the heap, and an infinite trim threshold keeps it.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const MMAP_THRESHOLD: libc::c_int = 32 << 20;
        const TRIM_THRESHOLD: libc::c_int = libc::c_int::MAX;
        // SAFETY: mallopt only changes two tuning parameters of glibc's allocator;
        // it is thread-safe and takes no pointers. It returns 0 when it refuses a
        // value, which leaves the default: slower, still correct.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        }
    }
}

/// Starts or resumes a run and trains to the configured number of epochs. A new run
/// fills in its config's normalisation and class names from the training data.
pub fn train(config: Option<TrainConfig>, options: &RunOptions) -> Result<TrainSummary> {
    keep_freed_memory();
    let run_dir = &options.run_dir;
    let (mut config, new_run) = if options.resume {
        ensure!(
            config.is_none(),
            "--resume continues with the run's own config.json"
        );
        (TrainConfig::load(run_dir)?, false)
    } else {
        let config = config.context("no training configuration")?;
        if run_dir.join(CONFIG).exists() {
            bail!(
                "{}: already holds a run; continue it with --resume {0} or choose another --out",
                run_dir.display()
            );
        }
        (config, true)
    };

    let mut train_data = Dataset::load_fitted(&config.data, Split::Train, config.stored_size())?;
    let classes = train_data.class_names.len();
    if config.held_out_classes > 0 {
        ensure!(
            config.held_out_classes < classes,
            "{}: cannot hold out {} of its {classes} classes",
            config.data.display(),
            config.held_out_classes
        );
        train_data.keep_classes_below(classes - config.held_out_classes);
    }
    if new_run {
        if config.held_out_classes > 0 {
            config.arch.classes = classes - config.held_out_classes;
        }
        // Over the whole training set, before any --limit.
        (config.mean, config.std) = channel_statistics(&train_data);
        config.class_names = train_data.class_names.clone();
        fs::create_dir_all(run_dir)
            .with_context(|| format!("{}: cannot create the run directory", run_dir.display()))?;
        write_atomically(
            &run_dir.join(CONFIG),
            serde_json::to_string_pretty(&config)?.as_bytes(),
        )?;
    }
    if let Some(limit) = config.train_limit {
        train_data.truncate(limit);
    }
    let mut test_data = Dataset::load_fitted(
        config.test_data.as_deref().unwrap_or(&config.data),
        Split::Test,
        config.input_size(),
    )?;
    if config.held_out_classes > 0 {
        test_data.keep_classes_below(config.arch.classes);
    }
    check_data(&config, &train_data, config.stored_size(), "training")?;
    check_data(&config, &test_data, config.input_size(), "test")?;

    let device = Device::flex().autodiff();
    device.seed(config.seed);
    let mut model = ResNet::new(&config.arch, &device);
    let mut optimizer = sgd(&config);
    let mut progress = Progress::default();
    if options.resume {
        (model, optimizer, progress) = load_checkpoint(run_dir, model, optimizer)?;
    }
    let parameters = model.num_params();

    let steps_per_epoch = config.steps_per_epoch(train_data.len());
    let total_steps = steps_per_epoch * config.epochs;
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let started = Instant::now();
    let mut images_trained = 0usize;
    let mut recent_errors: Vec<f64> = Vec::new();

    for epoch in progress.epochs_done..config.epochs {
        let bar = progress_bar(options.progress, steps_per_epoch, epoch, config.epochs);
        let mut rng = Rng::new(config.seed, epoch as u64 + 1);
        let order = rng.permutation(train_data.len());
        let epoch_start = Instant::now();
        let (mut loss_sum, mut wrong, mut seen) = (0f64, 0usize, 0usize);
        let mut lr = 0.0;
        for (step, indices) in order.chunks(config.batch).enumerate() {
            let global_step = epoch * steps_per_epoch + step;
            lr = if config.warmup && !progress.warmup_done {
                WARMUP_LR
            } else {
                learning_rate(
                    config.schedule,
                    config.lr,
                    global_step as f64 / total_steps as f64,
                )
            };
            let pixels = match config.crop {
                CropStyle::Padded => {
                    let crops: Vec<Crop> = indices
                        .iter()
                        .map(|_| match config.augment {
                            true => Crop::random(&mut rng),
                            false => Crop::NONE,
                        })
                        .collect();
                    batch_tensor_data(&train_data, indices, &crops, &config.mean, &config.std)
                }
                CropStyle::Resized => {
                    let stored = config.stored_size();
                    let crops: Vec<ResizedCrop> = indices
                        .iter()
                        .map(|_| match config.augment {
                            true => ResizedCrop::random(&mut rng, stored),
                            false => ResizedCrop::centre(stored, config.input_size()),
                        })
                        .collect();
                    resized_batch_tensor_data(
                        &train_data,
                        indices,
                        &crops,
                        config.input_size(),
                        &config.mean,
                        &config.std,
                    )
                }
            };
            let (x, y) = batch(&train_data, indices, pixels, &config, &device);
            let logits = model.forward(x);
            let batch_wrong = count_wrong(logits.clone(), &train_data, indices);
            let loss = loss_fn.forward(logits, y);
            let loss_value = f64::from(loss.clone().into_scalar::<f32>());
            ensure!(
                loss_value.is_finite(),
                "training diverged at epoch {} step {step}: loss is {loss_value} (try a lower --lr)",
                epoch + 1
            );
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optimizer.step(lr, model, grads);

            loss_sum += loss_value * indices.len() as f64;
            wrong += batch_wrong;
            seen += indices.len();
            images_trained += indices.len();
            if config.warmup && !progress.warmup_done {
                recent_errors.push(batch_wrong as f64 / indices.len() as f64);
                let window = &recent_errors[recent_errors.len().saturating_sub(WARMUP_WINDOW)..];
                if window.len() == WARMUP_WINDOW
                    && window.iter().sum::<f64>() / (WARMUP_WINDOW as f64) < WARMUP_UNTIL_ERROR
                {
                    progress.warmup_done = true;
                }
            }
            bar.set_message(format!(
                "loss {:.3}  acc {:.1}%  {:.0} img/s  lr {lr:.4}",
                loss_sum / seen as f64,
                100.0 * (1.0 - wrong as f64 / seen as f64),
                seen as f64 / epoch_start.elapsed().as_secs_f64()
            ));
            bar.inc(1);
        }
        let seconds = epoch_start.elapsed().as_secs_f64();
        bar.finish_and_clear();

        let eval_model = model.valid();
        let test_error = test_error(&eval_model, &test_data, &config)?;
        let metrics = EpochMetrics {
            epoch: epoch + 1,
            train_loss: loss_sum / seen as f64,
            train_error: wrong as f64 / seen as f64,
            test_error,
            lr,
            seconds,
            images_per_second: seen as f64 / seconds,
        };
        if options.progress {
            eprintln!(
                "epoch {:>3}/{}  loss {:.4}  train error {:5.2}%  test error {:5.2}%  lr {:.4}  {:.0} s  {:.0} img/s",
                metrics.epoch,
                config.epochs,
                metrics.train_loss,
                100.0 * metrics.train_error,
                100.0 * metrics.test_error,
                metrics.lr,
                metrics.seconds,
                metrics.images_per_second
            );
        }
        progress.metrics.push(metrics);
        progress.epochs_done = epoch + 1;
        save_epoch(run_dir, &config, &model, &eval_model, &optimizer, &progress)?;
    }

    let last = progress
        .metrics
        .last()
        .context("the run has no finished epoch")?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(TrainSummary {
        run_dir: run_dir.clone(),
        arch: config.arch.name.clone(),
        epochs: progress.epochs_done,
        parameters,
        test_accuracy: 1.0 - last.test_error,
        train_error: last.train_error,
        images_per_second: images_trained as f64 / seconds.max(1e-9),
        seconds,
        metrics: progress.metrics.clone(),
    })
}

/// Checks `data` against the network: images of `(h, w)` (as they are held: see
/// [`TrainConfig::stored_size`]) and the network's channels, labels below its classes.
fn check_data(
    config: &TrainConfig,
    data: &Dataset,
    (h, w): (usize, usize),
    what: &str,
) -> Result<()> {
    let c = config.arch.input.2;
    ensure!(
        !data.is_empty(),
        "{}: the {what} set is empty",
        config.data.display()
    );
    ensure!(
        (data.height, data.width, data.channels) == (h, w, c),
        "the {what} images are {}×{}×{}, but {} takes {h}×{w}×{c}",
        data.height,
        data.width,
        data.channels,
        config.arch.name
    );
    if let Some(&label) = data
        .labels
        .iter()
        .find(|&&l| usize::from(l) >= config.arch.classes)
    {
        bail!(
            "the {what} set has label {label}, but the network has {} classes (--classes)",
            config.arch.classes
        );
    }
    Ok(())
}

fn sgd(config: &TrainConfig) -> ModuleOptimizer {
    SgdConfig::new()
        .with_momentum(Some(
            MomentumConfig::new()
                .with_momentum(config.momentum)
                .with_dampening(0.0)
                .with_nesterov(false),
        ))
        .with_weight_decay(Some(WeightDecayConfig::new(config.weight_decay as f32)))
        .init()
}

/// The batch of images `indices` of `data` whose normalised NCHW `pixels` (at the
/// network's input size) are given, and their labels.
fn batch(
    data: &Dataset,
    indices: &[usize],
    pixels: Vec<f32>,
    config: &TrainConfig,
    device: &Device,
) -> (Tensor<4>, Tensor<1, Int>) {
    let (h, w, c) = config.arch.input;
    let shape = [indices.len(), c, h, w];
    let x = Tensor::<4>::from_data(TensorData::new(pixels, shape), device);
    let labels: Vec<i64> = indices.iter().map(|&i| i64::from(data.labels[i])).collect();
    let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [indices.len()]), device);
    (x, y)
}

fn count_wrong(logits: Tensor<2>, data: &Dataset, indices: &[usize]) -> usize {
    let predicted = logits.argmax(1).into_data();
    let predicted = predicted.iter::<i64>();
    predicted
        .zip(indices)
        .filter(|(p, &i)| *p != i64::from(data.labels[i]))
        .count()
}

/// Logits of the whole data set, in order, from a model in evaluation mode.
pub fn predict(model: &ResNet, data: &Dataset, config: &TrainConfig) -> Result<Vec<Vec<f32>>> {
    let device = Device::flex();
    let mut out = Vec::with_capacity(data.len());
    let all: Vec<usize> = (0..data.len()).collect();
    for indices in all.chunks(EVAL_BATCH) {
        let crops = vec![Crop::NONE; indices.len()];
        let pixels = batch_tensor_data(data, indices, &crops, &config.mean, &config.std);
        let (x, _) = batch(data, indices, pixels, config, &device);
        let logits = model.forward(x);
        let classes = logits.dims()[1];
        let values = logits
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("reading logits: {e:?}"))?;
        out.extend(values.chunks(classes).map(<[f32]>::to_vec));
    }
    Ok(out)
}

fn test_error(model: &ResNet, data: &Dataset, config: &TrainConfig) -> Result<f64> {
    let logits = predict(model, data, config)?;
    let wrong = logits
        .iter()
        .zip(&data.labels)
        .filter(|(l, &label)| argmax(l) != usize::from(label))
        .count();
    Ok(wrong as f64 / data.len() as f64)
}

fn progress_bar(show: bool, steps: usize, epoch: usize, epochs: usize) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({eta})")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("epoch {}/{epochs}", epoch + 1));
    bar
}

/// Writes the epoch's checkpoint directory (replacing the previous one atomically),
/// the eval-mode model, the metrics and the curves.
fn save_epoch(
    run_dir: &Path,
    config: &TrainConfig,
    model: &ResNet,
    eval_model: &ResNet,
    optimizer: &ModuleOptimizer,
    progress: &Progress,
) -> Result<()> {
    let checkpoint = run_dir.join(CHECKPOINT);
    let staging = temp_path(&checkpoint);
    let previous = run_dir.join(format!("{CHECKPOINT}.old"));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging)
        .with_context(|| format!("{}: cannot create", staging.display()))?;
    let write = || -> Result<()> {
        let mut store = BurnpackStore::from_file(staging.join("model.bpk")).overwrite(true);
        model
            .save_into(&mut store)
            .map_err(|e| anyhow::anyhow!("saving the model: {e}"))?;
        optimizer
            .save(staging.join("optimizer.bpk"))
            .map_err(|e| anyhow::anyhow!("saving the optimizer: {e:?}"))?;
        fs::write(
            staging.join("progress.json"),
            serde_json::to_string_pretty(progress)?,
        )?;
        Ok(())
    };
    write().with_context(|| format!("{}: cannot write the checkpoint", staging.display()))?;
    // checkpoint → checkpoint.old, staging → checkpoint: a crash in between leaves
    // checkpoint.old, which resume falls back to.
    let _ = fs::remove_dir_all(&previous);
    if checkpoint.exists() {
        fs::rename(&checkpoint, &previous)?;
    }
    fs::rename(&staging, &checkpoint)?;
    let _ = fs::remove_dir_all(&previous);

    let mut store = SafetensorsStore::from_bytes(None);
    eval_model
        .save_into(&mut store)
        .map_err(|e| anyhow::anyhow!("saving the model: {e}"))?;
    let bytes = store
        .get_bytes()
        .map_err(|e| anyhow::anyhow!("saving the model: {e}"))?;
    write_atomically(&run_dir.join(MODEL), &bytes)?;

    write_atomically(
        &run_dir.join(METRICS),
        metrics_csv(&progress.metrics).as_bytes(),
    )?;
    let png = tinyres_plot::training_curves(&[plot_run(&config.arch.name, &progress.metrics)])?;
    write_atomically(&run_dir.join(CURVES), &png)?;
    Ok(())
}

fn load_checkpoint(
    run_dir: &Path,
    mut model: ResNet,
    optimizer: ModuleOptimizer,
) -> Result<(ResNet, ModuleOptimizer, Progress)> {
    let mut dir = run_dir.join(CHECKPOINT);
    if !dir.exists() {
        dir = run_dir.join(format!("{CHECKPOINT}.old"));
    }
    if !dir.exists() {
        bail!(
            "{}: no checkpoint yet (the run stopped before its first epoch ended); start it again",
            run_dir.display()
        );
    }
    let progress: Progress = serde_json::from_str(
        &fs::read_to_string(dir.join("progress.json"))
            .with_context(|| format!("{}: cannot read", dir.join("progress.json").display()))?,
    )
    .with_context(|| format!("{}: malformed", dir.join("progress.json").display()))?;
    let path = dir.join("model.bpk");
    let mut store = BurnpackStore::from_file(&path);
    let applied = model.load_from(&mut store).map_err(|e| {
        anyhow::anyhow!(
            "{}: not a checkpoint of this architecture ({})",
            path.display(),
            first_line(&e.to_string())
        )
    })?;
    ensure!(
        applied.is_success() && applied.missing.is_empty(),
        "{}: not a checkpoint of this architecture ({} missing, {} errors)",
        path.display(),
        applied.missing.len(),
        applied.errors.len()
    );
    let optimizer = optimizer
        .load(dir.join("optimizer.bpk"))
        .map_err(|e| anyhow::anyhow!("{}: {e:?}", dir.join("optimizer.bpk").display()))?;
    Ok((model, optimizer, progress))
}

/// Loads `RUN_DIR/model.safetensors` into the run's architecture, for inference.
pub fn load_model(run_dir: &Path, config: &TrainConfig) -> Result<ResNet> {
    let device = Device::flex();
    let mut model = ResNet::new(&config.arch, &device);
    let path = run_dir.join(MODEL);
    ensure!(
        path.exists(),
        "{}: missing (the run has no finished epoch yet)",
        path.display()
    );
    let mut store = SafetensorsStore::from_file(&path);
    let applied = model.load_from(&mut store).map_err(|e| {
        anyhow::anyhow!(
            "{}: does not match {} ({})",
            path.display(),
            config.arch.name,
            first_line(&e.to_string())
        )
    })?;
    ensure!(
        applied.is_success() && applied.missing.is_empty(),
        "{}: does not match {} ({} missing, {} errors)",
        path.display(),
        config.arch.name,
        applied.missing.len(),
        applied.errors.len()
    );
    Ok(model)
}

/// The start of a long library error, enough to say what is wrong.
fn first_line(text: &str) -> String {
    const MAX: usize = 160;
    let line = text.lines().next().unwrap_or_default();
    match line.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_string(),
    }
}

/// The `metrics.csv` text.
pub fn metrics_csv(metrics: &[EpochMetrics]) -> String {
    let mut csv =
        String::from("epoch,train_loss,train_error,test_error,lr,seconds,images_per_second\n");
    for m in metrics {
        csv.push_str(&format!(
            "{},{:.6},{:.6},{:.6},{:.6},{:.3},{:.1}\n",
            m.epoch,
            m.train_loss,
            m.train_error,
            m.test_error,
            m.lr,
            m.seconds,
            m.images_per_second
        ));
    }
    csv
}

/// Parses a `metrics.csv` (for `tinyres plot`).
pub fn read_metrics_csv(path: &Path) -> Result<Vec<EpochMetrics>> {
    let text =
        fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        let fields: Vec<&str> = line.split(',').collect();
        let parse = |i: usize| -> Result<f64> {
            fields
                .get(i)
                .and_then(|f| f.parse().ok())
                .with_context(|| format!("{}:{}: malformed row {line:?}", path.display(), n + 1))
        };
        out.push(EpochMetrics {
            epoch: parse(0)? as usize,
            train_loss: parse(1)?,
            train_error: parse(2)?,
            test_error: parse(3)?,
            lr: parse(4)?,
            seconds: parse(5)?,
            images_per_second: parse(6)?,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tinyres_data::synthetic;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn step_schedule_divides_by_ten_at_half_and_three_quarters() {
        // The paper: 0.1, then 0.01 at 32k and 0.001 at 48k of 64k iterations.
        for (progress, lr) in [
            (0.0, 0.1),
            (0.4999, 0.1),
            (0.5, 0.01),
            (0.7499, 0.01),
            (0.75, 0.001),
            (1.0, 0.001),
        ] {
            assert!(
                close(learning_rate(Schedule::Step, 0.1, progress), lr),
                "{progress}"
            );
        }
    }

    #[test]
    fn cosine_and_onecycle_schedules_have_their_shapes() {
        assert!(close(learning_rate(Schedule::Cosine, 0.1, 0.0), 0.1));
        assert!(close(learning_rate(Schedule::Cosine, 0.1, 0.5), 0.05));
        assert!(close(learning_rate(Schedule::Cosine, 0.1, 1.0), 0.0));
        assert!(close(
            learning_rate(Schedule::Onecycle, 0.1, 0.0),
            0.1 / 25.0
        ));
        assert!(close(learning_rate(Schedule::Onecycle, 0.1, 0.3), 0.1));
        assert!(close(
            learning_rate(Schedule::Onecycle, 0.1, 1.0),
            0.1 / 25.0e4
        ));
        let mut previous = 0.0;
        for i in 0..=30 {
            let lr = learning_rate(Schedule::Onecycle, 0.1, f64::from(i) / 100.0);
            assert!(lr >= previous, "rises until 30 %");
            previous = lr;
        }
    }

    #[test]
    fn augmentation_pads_crops_and_flips_into_normalised_nchw() {
        let data = synthetic(3, 9);
        let (mean, std) = (vec![0.5; 3], vec![0.25; 3]);
        let out = batch_tensor_data(&data, &[2, 0], &[Crop::NONE; 2], &mean, &std);
        assert_eq!(out.len(), 2 * 3 * 32 * 32);
        // Crop::NONE is the image itself, channel planes first.
        let pixel =
            |image: usize, y: usize, x: usize, c: usize| data.image(image)[(y * 32 + x) * 3 + c];
        let normalised = |p: u8| (f32::from(p) / 255.0 - 0.5) / 0.25;
        assert_eq!(out[0], normalised(pixel(2, 0, 0, 0)));
        assert_eq!(out[32 * 32 + 5], normalised(pixel(2, 0, 5, 1)));
        assert_eq!(out[3 * 32 * 32], normalised(pixel(0, 0, 0, 0)));

        // The top-left crop of the padded image: 4 black rows and columns, then the image.
        let corner = Crop {
            top: 0,
            left: 0,
            flip: false,
        };
        let out = batch_tensor_data(&data, &[1], &[corner], &mean, &std);
        let black = (0.0 - 0.5) / 0.25;
        assert!(out[..4 * 32].iter().all(|&v| v == black));
        assert_eq!(out[4 * 32 + 3], black);
        assert_eq!(out[4 * 32 + 4], normalised(pixel(1, 0, 0, 0)));

        // A flip mirrors each row.
        let flip = Crop {
            flip: true,
            ..Crop::NONE
        };
        let out = batch_tensor_data(&data, &[1], &[flip], &mean, &std);
        assert_eq!(out[0], normalised(pixel(1, 0, 31, 0)));
        assert_eq!(out[31], normalised(pixel(1, 0, 0, 0)));

        // Random crops stay within the 4-pixel margin and flip about half the time.
        let mut rng = Rng::new(1, 2);
        let crops: Vec<Crop> = (0..1000).map(|_| Crop::random(&mut rng)).collect();
        assert!(crops.iter().all(|c| c.top <= 2 * PAD && c.left <= 2 * PAD));
        assert!(crops.iter().any(|c| c.top == 0) && crops.iter().any(|c| c.left == 2 * PAD));
        let flips = crops.iter().filter(|c| c.flip).count();
        assert!((400..600).contains(&flips), "{flips}");
    }

    #[test]
    fn resized_crops_scale_windows_bilinearly_into_normalised_nchw() {
        let data = synthetic(2, 9);
        let (mean, std) = (vec![0.5; 3], vec![0.25; 3]);
        // The whole image at its own size is the image: what the padded crop gives.
        let whole = ResizedCrop::centre((32, 32), (32, 32));
        assert_eq!(
            resized_batch_tensor_data(&data, &[1, 0], &[whole; 2], (32, 32), &mean, &std),
            batch_tensor_data(&data, &[1, 0], &[Crop::NONE; 2], &mean, &std)
        );
        // The centre crop of a 37×37 image to 32×32 (torchvision's evaluation crop).
        assert_eq!(
            ResizedCrop::centre((37, 37), (32, 32)),
            ResizedCrop {
                top: 2,
                left: 2,
                height: 32,
                width: 32,
                flip: false
            }
        );
        // Halving a 2×2 window averages it; a flip of a 1×2 window scaled to 1×4
        // mirrors the interpolated row.
        let normalised = |v: f32| (v / 255.0 - 0.5) / 0.25;
        let pixel = |y: usize, x: usize| f32::from(data.image(0)[(y * 32 + x) * 3]);
        let two_by_two = ResizedCrop {
            top: 4,
            left: 6,
            height: 2,
            width: 2,
            flip: false,
        };
        let out = resized_batch_tensor_data(&data, &[0], &[two_by_two], (1, 1), &mean, &std);
        let average = (pixel(4, 6) + pixel(4, 7) + pixel(5, 6) + pixel(5, 7)) / 4.0;
        assert!((out[0] - normalised(average)).abs() < 1e-5);
        let row = ResizedCrop {
            height: 1,
            width: 2,
            ..two_by_two
        };
        let (a, b) = (pixel(4, 6), pixel(4, 7));
        let expected = [a, a + (b - a) * 0.25, a + (b - a) * 0.75, b].map(normalised);
        let out = resized_batch_tensor_data(&data, &[0], &[row], (1, 4), &mean, &std);
        assert!(out[..4]
            .iter()
            .zip(&expected)
            .all(|(o, e)| (o - e).abs() < 1e-5));
        let flipped = ResizedCrop { flip: true, ..row };
        let out = resized_batch_tensor_data(&data, &[0], &[flipped], (1, 4), &mean, &std);
        assert!(out[..4]
            .iter()
            .rev()
            .zip(&expected)
            .all(|(o, e)| (o - e).abs() < 1e-5));
    }

    #[test]
    fn random_resized_crops_keep_torchvisions_area_and_ratio_ranges() {
        let mut rng = Rng::new(3, 4);
        let (h, w) = (37, 50);
        let crops: Vec<ResizedCrop> = (0..2000)
            .map(|_| ResizedCrop::random(&mut rng, (h, w)))
            .collect();
        for c in &crops {
            assert!(c.height >= 1 && c.width >= 1, "{c:?}");
            assert!(c.top + c.height <= h && c.left + c.width <= w, "{c:?}");
            let ratio = c.width as f64 / c.height as f64;
            // Rounding to whole pixels moves the ratio a little past its range.
            assert!((0.6..=1.6).contains(&ratio), "{c:?}");
            let share = (c.width * c.height) as f64 / (h * w) as f64;
            assert!((0.06..=1.0).contains(&share), "{c:?}");
        }
        let small = crops
            .iter()
            .filter(|c| c.width * c.height < h * w / 4)
            .count();
        let flips = crops.iter().filter(|c| c.flip).count();
        // Area shares are uniform in [0.08, 1]: about 18 % fall below a quarter.
        assert!((250..750).contains(&small), "{small}");
        assert!((800..1200).contains(&flips), "{flips}");
        // Reproducible from the seed (exact resume depends on it).
        let mut again = Rng::new(3, 4);
        assert_eq!(crops[0], ResizedCrop::random(&mut again, (h, w)));
        // A strip no draw fits falls back to the widest allowed window, centred.
        let strip = ResizedCrop::random(&mut Rng::new(1, 1), (2, 200));
        assert_eq!((strip.height, strip.top), (2, 0));
        assert!(strip.width <= 3, "{strip:?}");
    }

    #[test]
    fn shuffles_are_permutations_reproducible_per_epoch() {
        let a = Rng::new(7, 1).permutation(100);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(a, Rng::new(7, 1).permutation(100));
        assert_ne!(a, Rng::new(7, 2).permutation(100));
    }

    #[test]
    fn channel_statistics_of_a_known_set() {
        let mut data = synthetic(2, 1);
        data.pixels = [0u8, 255, 51].repeat(2 * 32 * 32);
        let (mean, std) = channel_statistics(&data);
        assert!((mean[0] - 0.0).abs() < 1e-6 && (mean[1] - 1.0).abs() < 1e-6);
        assert!((mean[2] - 0.2).abs() < 1e-6);
        assert!(
            std.iter().all(|&s| s == 1e-3),
            "constant channels get the floor"
        );
    }

    #[test]
    fn metrics_csv_round_trips() {
        let metrics = vec![EpochMetrics {
            epoch: 1,
            train_loss: 2.25,
            train_error: 0.5,
            test_error: 0.25,
            lr: 0.1,
            seconds: 12.5,
            images_per_second: 100.0,
        }];
        let dir = std::env::temp_dir().join(format!("tinyres-metrics-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("metrics.csv");
        fs::write(&path, metrics_csv(&metrics)).unwrap();
        assert_eq!(read_metrics_csv(&path).unwrap(), metrics);
        fs::write(&path, "epoch,train_loss\n1,x\n").unwrap();
        let err = read_metrics_csv(&path).unwrap_err().to_string();
        assert!(err.contains("metrics.csv:2: malformed"), "{err}");
    }
}
