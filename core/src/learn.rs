//! On-device learning of the last layer: the dense classifier over the pooled
//! features, in f32, trained by SGD with momentum and weight decay, with new classes
//! added from a few examples.
//!
//! The parameters live in a [`LastLayer`] whose capacity (`F` features, `C` classes)
//! is in its type, so its RAM is known when the firmware is built:
//! `size_of::<LastLayer<F, C>>() ≈ 4·C·(F + 1)` bytes. SGD's momentum lives in a
//! [`Momentum`] that the caller holds while it trains, over only the rows it trains
//! (`4·R·(F + 1)` bytes): a device that teaches one new class keeps one row of
//! momentum, not one per class. The arithmetic is plain f32 in a fixed order, so the
//! host reproduces the device bit-for-bit.

use crate::error::Error;
use crate::kernels::softmax_in_place;
use crate::model::{Bias, Layer, Model, Weights};
use crate::quant::dequantize_i8;

/// Stochastic gradient descent settings (PyTorch semantics, dampening 0).
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Sgd {
    /// Step size.
    pub learning_rate: f32,
    /// Momentum: `v ← momentum·v + g`.
    pub momentum: f32,
    /// L2 penalty on the weights (not the biases): `g ← g + weight_decay·w`.
    pub weight_decay: f32,
}

impl Sgd {
    /// Learning rate 0.01, momentum 0.9, weight decay 1e-4.
    pub const DEFAULT: Sgd = Sgd {
        learning_rate: 0.01,
        momentum: 0.9,
        weight_decay: 1e-4,
    };
}

impl Default for Sgd {
    /// [`Sgd::DEFAULT`].
    fn default() -> Self {
        Sgd::DEFAULT
    }
}

/// The trainable classifier: `logits = W·features + b` for up to `C` classes over up
/// to `F` features.
#[derive(Clone, Debug)]
pub struct LastLayer<const F: usize, const C: usize> {
    weights: [[f32; F]; C],
    bias: [f32; C],
    features: usize,
    classes: usize,
    /// Optimiser settings, changeable between steps.
    pub sgd: Sgd,
}

impl<const F: usize, const C: usize> LastLayer<F, C> {
    /// A layer with no classes, for a `static` that [`Self::load_model`] then fills in
    /// place.
    pub const EMPTY: Self = LastLayer {
        weights: [[0.0; F]; C],
        bias: [0.0; C],
        features: 1,
        classes: 0,
        sgd: Sgd::DEFAULT,
    };

    /// An empty layer over `features` features (no classes yet).
    pub fn new(features: usize, sgd: Sgd) -> Result<Self, Error> {
        if features == 0 || features > F {
            return Err(Error::Capacity {
                what: "last layer features",
                needed: features,
                capacity: F,
            });
        }
        Ok(LastLayer {
            weights: [[0.0; F]; C],
            bias: [0.0; C],
            features,
            classes: 0,
            sgd,
        })
    }

    /// Copies the model's classifier: its last layer must be a dense layer reading the
    /// pooled features. int8 weights and biases are dequantized.
    pub fn from_model(model: &Model<'_>, sgd: Sgd) -> Result<Self, Error> {
        let mut layer = Self::new(1, sgd)?;
        layer.load_model(model)?;
        Ok(layer)
    }

    /// [`Self::from_model`] in place, for firmware that keeps the layer in a static
    /// (no second copy on the stack). Leaves the layer unchanged on error; the
    /// optimiser settings are kept.
    pub fn load_model(&mut self, model: &Model<'_>) -> Result<(), Error> {
        let last = model.num_layers() - 1;
        let Layer::Dense(dense) = model.layer(last)? else {
            return Err(Error::Unsupported {
                what: "on-device learning needs a dense last layer",
            });
        };
        if Some(dense.input) != model.features_tensor() {
            return Err(Error::Unsupported {
                what: "the dense last layer must read the model's feature tensor",
            });
        }
        let input = model.tensor(dense.input)?;
        let output = model.tensor(dense.output)?;
        let (features, classes) = (input.len(), output.len());
        if features == 0 || features > F {
            return Err(Error::Capacity {
                what: "last layer features",
                needed: features,
                capacity: F,
            });
        }
        if classes > C {
            return Err(Error::Capacity {
                what: "last layer classes",
                needed: classes,
                capacity: C,
            });
        }
        self.features = features;
        self.classes = classes;
        for c in 0..classes {
            // int8: w = q · s_w[c] with s_w[c] = multiplier · 2^(shift − 31) · s_out / s_in.
            let weight_scale = match dense.requant {
                Some(r) => {
                    let m = f64::from(*r.multipliers.get(c).unwrap_or(&0));
                    let shift = *r.shifts.get(c).unwrap_or(&0);
                    (m * pow2(shift - 31) * f64::from(output.scale) / f64::from(input.scale)) as f32
                }
                None => 1.0,
            };
            for f in 0..features {
                let i = c * features + f;
                self.weights[c][f] = match dense.weights {
                    Weights::F32(w) => w[i],
                    Weights::F16(w) => w[i].to_f32(),
                    Weights::I8(w) => dequantize_i8(w[i], weight_scale, 0),
                };
            }
            self.bias[c] = match dense.bias {
                Bias::F32(b) => b[c],
                Bias::I32(b) => b[c] as f32 * input.scale * weight_scale,
            };
        }
        Ok(())
    }

    /// Active classes.
    pub fn num_classes(&self) -> usize {
        self.classes
    }

    /// Features per example.
    pub fn num_features(&self) -> usize {
        self.features
    }

    /// Writes the logits of `features` into `logits` (length [`Self::num_classes`]).
    pub fn logits(&self, features: &[f32], logits: &mut [f32]) -> Result<(), Error> {
        self.check_features(features)?;
        if logits.len() != self.classes {
            return Err(Error::WrongLength {
                what: "logits",
                expected: self.classes,
                actual: logits.len(),
            });
        }
        for ((l, row), &b) in logits.iter_mut().zip(&self.weights).zip(&self.bias) {
            let mut acc = b;
            for (&w, &x) in row.iter().zip(features) {
                acc += w * x;
            }
            *l = acc;
        }
        Ok(())
    }

    /// The predicted class of `features` (first on ties).
    pub fn predict(&self, features: &[f32]) -> Result<usize, Error> {
        let mut logits = [0.0f32; C];
        self.logits(features, &mut logits[..self.classes])?;
        Ok(crate::kernels::argmax(&logits[..self.classes]).unwrap_or(0))
    }

    /// One SGD step on one example with softmax cross-entropy; returns the loss before
    /// the step. The loss weighs every class; only the rows `momentum` covers learn
    /// (rows [`Momentum::first_row`] on; rows and biases before them stay as they are).
    pub fn train<const R: usize>(
        &mut self,
        features: &[f32],
        label: usize,
        momentum: &mut Momentum<F, R>,
    ) -> Result<f32, Error> {
        self.train_weighted(features, label, 1.0, momentum)
    }

    /// [`Self::train`] with the example's loss multiplied by `weight` (finite, not
    /// negative; the weight decay is not): how a class seen in more or fewer examples
    /// than its share is given its share of the loss. Returns the loss before the step,
    /// unweighted. [`Self::train`] is weight 1.
    pub fn train_weighted<const R: usize>(
        &mut self,
        features: &[f32],
        label: usize,
        weight: f32,
        momentum: &mut Momentum<F, R>,
    ) -> Result<f32, Error> {
        if !(weight.is_finite() && weight >= 0.0) {
            return Err(Error::Unsupported {
                what: "an example's weight must be finite and not negative",
            });
        }
        if label >= self.classes {
            return Err(Error::InvalidValue {
                what: "training label",
                index: 0,
                value: label as u32,
            });
        }
        let first_row = momentum.first_row;
        if first_row >= self.classes {
            return Err(Error::InvalidValue {
                what: "momentum's first row (past the last class)",
                index: 0,
                value: first_row as u32,
            });
        }
        if self.classes - first_row > R {
            return Err(Error::Capacity {
                what: "momentum rows",
                needed: self.classes - first_row,
                capacity: R,
            });
        }
        let mut p = [0.0f32; C];
        let p = &mut p[..self.classes];
        self.logits(features, p)?;
        softmax_in_place(p);
        let loss = -libm::logf(p[label].max(f32::MIN_POSITIVE));
        let Sgd {
            learning_rate,
            momentum: beta,
            weight_decay,
        } = self.sgd;
        let rows = self.weights[first_row..]
            .iter_mut()
            .zip(&mut momentum.weights);
        let biases = self.bias[first_row..].iter_mut().zip(&mut momentum.bias);
        for (c, ((&p, (row, velocity)), (bias, bias_velocity))) in
            p[first_row..].iter().zip(rows).zip(biases).enumerate()
        {
            let g = weight * (p - if first_row + c == label { 1.0 } else { 0.0 });
            for ((w, v), &x) in row.iter_mut().zip(velocity.iter_mut()).zip(features) {
                *v = beta * *v + (g * x + weight_decay * *w);
                *w -= learning_rate * *v;
            }
            *bias_velocity = beta * *bias_velocity + g;
            *bias -= learning_rate * *bias_velocity;
        }
        Ok(loss)
    }

    /// Adds a class whose weight row is `mean_feature` scaled to the average norm of the
    /// existing rows (weight imprinting), with the average existing bias; returns its
    /// index.
    pub fn add_class(&mut self, mean_feature: &[f32]) -> Result<usize, Error> {
        self.check_features(mean_feature)?;
        if self.classes == C {
            return Err(Error::Capacity {
                what: "last layer classes",
                needed: C + 1,
                capacity: C,
            });
        }
        let norm = |v: &[f32]| libm::sqrtf(v.iter().map(|x| x * x).sum());
        let (target_norm, bias) = if self.classes == 0 {
            (1.0, 0.0)
        } else {
            let n = self.classes as f32;
            let norms: f32 = self.weights[..self.classes]
                .iter()
                .map(|r| norm(&r[..self.features]))
                .sum();
            (norms / n, self.bias[..self.classes].iter().sum::<f32>() / n)
        };
        let scale = match norm(mean_feature) {
            m if m > 0.0 => target_norm / m,
            _ => 0.0,
        };
        let c = self.classes;
        for (w, &x) in self.weights[c].iter_mut().zip(mean_feature) {
            *w = x * scale;
        }
        self.bias[c] = bias;
        self.classes += 1;
        Ok(c)
    }

    /// Removes the last class (the one added last), so that it can be added again
    /// from updated examples: how a class taught from positive examples alone keeps
    /// learning, since SGD on positives only would push its row over the old classes.
    /// Returns its index.
    pub fn remove_last_class(&mut self) -> Result<usize, Error> {
        if self.classes == 0 {
            return Err(Error::Unsupported {
                what: "removing a class from a head without classes",
            });
        }
        self.classes -= 1;
        Ok(self.classes)
    }

    /// Adds a class told apart from known examples: its weight row points from
    /// `mean_others` (the mean feature of examples of existing classes) to
    /// `mean_feature` (of the new class), scaled to the average norm of the existing
    /// rows, and its bias puts the midpoint of the two means exactly on the decision
    /// boundary with the best existing class there. Pooled ReLU features share a large
    /// common component; imprinting the plain mean would make the new class win
    /// everywhere. Returns the new class's index.
    pub fn add_class_between(
        &mut self,
        mean_feature: &[f32],
        mean_others: &[f32],
    ) -> Result<usize, Error> {
        self.check_features(mean_feature)?;
        self.check_features(mean_others)?;
        let mut direction = [0.0f32; F];
        let mut midpoint = [0.0f32; F];
        for (((d, m), &a), &b) in direction
            .iter_mut()
            .zip(midpoint.iter_mut())
            .zip(mean_feature)
            .zip(mean_others)
        {
            *d = a - b;
            *m = 0.5 * (a + b);
        }
        let n = self.features;
        let mut existing = [0.0f32; C];
        let best_at_midpoint = if self.classes == 0 {
            0.0
        } else {
            self.logits(&midpoint[..n], &mut existing[..self.classes])?;
            existing[..self.classes]
                .iter()
                .copied()
                .fold(f32::NEG_INFINITY, f32::max)
        };
        let class = self.add_class(&direction[..n])?;
        let at_midpoint: f32 = self.weights[class][..n]
            .iter()
            .zip(&midpoint[..n])
            .map(|(w, x)| w * x)
            .sum();
        self.bias[class] = best_at_midpoint - at_midpoint;
        Ok(class)
    }

    /// Bytes [`Self::save`] writes: two u16 counts, then the weights and biases as f32.
    pub fn saved_len(&self) -> usize {
        4 + 4 * self.classes * (self.features + 1)
    }

    /// Serialises the weights and biases, [`Self::saved_len`]
    /// bytes in all, by calling `sink` with consecutive pieces.
    pub fn save(&self, mut sink: impl FnMut(&[u8]) -> Result<(), Error>) -> Result<(), Error> {
        sink(&(self.classes as u16).to_le_bytes())?;
        sink(&(self.features as u16).to_le_bytes())?;
        for row in &self.weights[..self.classes] {
            for w in &row[..self.features] {
                sink(&w.to_le_bytes())?;
            }
        }
        for b in &self.bias[..self.classes] {
            sink(&b.to_le_bytes())?;
        }
        Ok(())
    }

    /// Replaces the parameters with `len` bytes saved by [`Self::save`], pulled four at
    /// a time from `next_word`. The counts are validated
    /// against this layer's capacity and features before anything changes; if
    /// `next_word` fails part-way the layer is left mixed and should be rebuilt with
    /// [`Self::from_model`].
    pub fn restore(
        &mut self,
        len: usize,
        mut next_word: impl FnMut() -> Result<[u8; 4], Error>,
    ) -> Result<(), Error> {
        if len < 4 {
            return Err(Error::Truncated {
                needed: 4,
                available: len,
            });
        }
        let counts = next_word()?;
        let classes = usize::from(u16::from_le_bytes([counts[0], counts[1]]));
        let features = usize::from(u16::from_le_bytes([counts[2], counts[3]]));
        if features != self.features {
            return Err(Error::InvalidValue {
                what: "saved feature count",
                index: 0,
                value: features as u32,
            });
        }
        if classes > C {
            return Err(Error::Capacity {
                what: "last layer classes",
                needed: classes,
                capacity: C,
            });
        }
        let needed = 4 + 4 * classes * (features + 1);
        if len != needed {
            return Err(Error::WrongLength {
                what: "saved last layer",
                expected: needed,
                actual: len,
            });
        }
        for row in &mut self.weights[..classes] {
            for w in &mut row[..features] {
                *w = f32::from_le_bytes(next_word()?);
            }
        }
        for b in &mut self.bias[..classes] {
            *b = f32::from_le_bytes(next_word()?);
        }
        self.classes = classes;
        Ok(())
    }

    fn check_features(&self, features: &[f32]) -> Result<(), Error> {
        if features.len() == self.features {
            Ok(())
        } else {
            Err(Error::WrongLength {
                what: "features",
                expected: self.features,
                actual: features.len(),
            })
        }
    }
}

/// SGD's momentum (PyTorch's velocity `v`, one per parameter) for the rows of a
/// [`LastLayer`] that a round of training updates: rows `first_row..first_row + R` and
/// their biases, zero at the start. Training every row of a `LastLayer<F, C>` takes a
/// `Momentum<F, C>` from row 0; teaching a new class takes one row from the new
/// class's index.
#[derive(Clone, Debug)]
pub struct Momentum<const F: usize, const R: usize> {
    first_row: usize,
    weights: [[f32; F]; R],
    bias: [f32; R],
}

impl<const F: usize, const R: usize> Momentum<F, R> {
    /// Zero momentum for rows `first_row` on.
    pub const fn new(first_row: usize) -> Self {
        Momentum {
            first_row,
            weights: [[0.0; F]; R],
            bias: [0.0; R],
        }
    }

    /// The first row trained.
    pub fn first_row(&self) -> usize {
        self.first_row
    }
}

/// Running mean of the features of one class's first examples, for
/// [`LastLayer::add_class`].
#[derive(Clone, Debug)]
pub struct FeatureMean<const F: usize> {
    sum: [f32; F],
    count: u32,
    features: usize,
}

impl<const F: usize> FeatureMean<F> {
    /// An empty mean over `features` features (at most `F`).
    pub fn new(features: usize) -> Result<Self, Error> {
        if features == 0 || features > F {
            return Err(Error::Capacity {
                what: "feature mean",
                needed: features,
                capacity: F,
            });
        }
        Ok(FeatureMean {
            sum: [0.0; F],
            count: 0,
            features,
        })
    }

    /// Adds one example.
    pub fn add(&mut self, features: &[f32]) -> Result<(), Error> {
        if features.len() != self.features {
            return Err(Error::WrongLength {
                what: "features",
                expected: self.features,
                actual: features.len(),
            });
        }
        for (s, &x) in self.sum.iter_mut().zip(features) {
            *s += x;
        }
        self.count += 1;
        Ok(())
    }

    /// Forgets every example (the feature count stays).
    pub fn clear(&mut self) {
        self.sum = [0.0; F];
        self.count = 0;
    }

    /// Examples added.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The mean (all zeros before the first example).
    pub fn mean(&self) -> [f32; F] {
        let mut mean = [0.0; F];
        if self.count > 0 {
            let n = self.count as f32;
            for (m, &s) in mean.iter_mut().zip(&self.sum[..self.features]) {
                *m = s / n;
            }
        }
        mean
    }

    /// Features per example.
    pub fn features(&self) -> usize {
        self.features
    }
}

/// `2^e` for the small exponents of requantization, without libm.
fn pow2(e: i32) -> f64 {
    f64::from_bits(((1023 + i64::from(e.clamp(-1022, 1023))) as u64) << 52)
}
