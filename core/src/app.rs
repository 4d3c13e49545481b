//! The on-device learning application: classify frames with the model's trunk and a
//! trainable head, learn a new class from labeled frames, and persist what was learned.
//!
//! Generic over embedded-hal 1.0 (a button whose press marks the current frame as an
//! example of the class being taught, an LED lit while that class is recognised) and
//! embedded-storage (the flash holding the learned head), so the same code runs in any
//! firmware with a HAL: the tinyres firmware, the examples in `examples/`, and yours.
//! Enabled by the `app` feature.
//!
//! A firmware keeps the head in a static, opens the [`LayerStore`] on its flash, calls
//! [`App::new`], then [`App::step`] on every frame, and [`App::save`] after a step that
//! labeled one. `examples/embassy-stm32f4`, `examples/rtic-nrf52840` and
//! `examples/rp2040` in the tinyres repository do exactly that on their chips.

use core::fmt;

use embedded_hal::digital::{ErrorType, InputPin, OutputPin};
use embedded_storage::nor_flash::NorFlash;

use crate::learn::{FeatureMean, LastLayer, Momentum, Sgd};
use crate::persist::{LayerStore, SlotState};
use crate::{Error, Interpreter};

/// Examples whose mean feature initialises a new class before SGD takes over.
pub const DEFAULT_IMPRINT_SHOTS: u32 = 5;
/// Passes of SGD over the examples in [`App::finetune`] as the `finetune` firmware
/// runs it.
pub const FINETUNE_EPOCHS: usize = 4;
/// The optimiser of the `finetune` firmware: [`App::finetune`] starts from its rate
/// and decays it to zero. Chosen on a 9-class CIFAR-10 ResNet-8 learning truck with
/// the host measurement `learning_rule_on_a_trained_trunk`
/// (tests/tests/end_to_end/finetune.rs; figures in host/BENCHMARKS.md).
pub const FINETUNE_SGD: Sgd = Sgd {
    learning_rate: 0.03,
    ..Sgd::DEFAULT
};

/// Why a step failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum AppError {
    /// The engine, the trainer or the flash store.
    Engine(Error),
    /// The button or the LED.
    Pin,
    /// [`App::finetune`]'s source of examples had none at this index.
    NoExample {
        /// Its index.
        index: usize,
    },
    /// [`App::finetune`] was given no example of the new class.
    NoShot,
}

impl From<Error> for AppError {
    fn from(e: Error) -> Self {
        AppError::Engine(e)
    }
}

impl fmt::Display for AppError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            AppError::Engine(e) => e.fmt(f),
            AppError::Pin => f.write_str("the button or the LED failed"),
            AppError::NoExample { index } => write!(f, "no example {index} to learn from"),
            AppError::NoShot => f.write_str("no example of the new class to learn from"),
        }
    }
}

/// A pin wired active low, read and driven as active high, as [`App`] expects (pressed
/// = high, lit = high): most boards' buttons pull to ground, and many LEDs sink.
#[derive(Clone, Copy, Debug)]
pub struct ActiveLow<P>(pub P);

impl<P: ErrorType> ErrorType for ActiveLow<P> {
    type Error = P::Error;
}

impl<P: InputPin> InputPin for ActiveLow<P> {
    fn is_high(&mut self) -> Result<bool, Self::Error> {
        self.0.is_low()
    }
    fn is_low(&mut self) -> Result<bool, Self::Error> {
        self.0.is_high()
    }
}

impl<P: OutputPin> OutputPin for ActiveLow<P> {
    fn set_low(&mut self) -> Result<(), Self::Error> {
        self.0.set_high()
    }
    fn set_high(&mut self) -> Result<(), Self::Error> {
        self.0.set_low()
    }
}

/// What labeling a frame did.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Labeled {
    /// Collected towards the new class's initial weights (`count` so far).
    Collected {
        /// Examples collected.
        count: u32,
    },
    /// The new class now exists, imprinted from the collected examples.
    Added {
        /// Its index.
        class: usize,
    },
    /// The new class's row re-imprinted from all its examples so far.
    Refined {
        /// Examples of the new class so far.
        count: u32,
    },
}

/// The result of one [`App::step`].
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Step {
    /// Predicted class (after any learning this step did).
    pub class: usize,
    /// What the label event did, if the button was pressed.
    pub labeled: Option<Labeled>,
}

/// The device application over a head of up to `F` features and `C` classes. The head
/// (`4·F·C` bytes and more: 3.1 KiB for 64 features and 12 classes) is borrowed so that
/// firmware can keep it in a static instead of on the stack.
#[derive(Debug)]
pub struct App<'m, 'a, 'h, Button, Led, Flash, const F: usize, const C: usize> {
    net: Interpreter<'m, 'a>,
    head: &'h mut LastLayer<F, C>,
    store: LayerStore<Flash>,
    button: Button,
    led: Led,
    collected: FeatureMean<F>,
    /// Mean feature of examples that are not the new class: frames shown without the
    /// button, or [`App::finetune`]'s rehearsal images.
    others: FeatureMean<F>,
    new_class: Option<usize>,
    imprint_shots: u32,
    features: [f32; F],
}

impl<
        'm,
        'a,
        'h,
        Button: InputPin,
        Led: OutputPin,
        Flash: NorFlash,
        const F: usize,
        const C: usize,
    > App<'m, 'a, 'h, Button, Led, Flash, F, C>
{
    /// Fills `head` with the model's own classifier, replaced by the newest head saved
    /// in `store` if there is one (returned).
    pub fn new(
        net: Interpreter<'m, 'a>,
        head: &'h mut LastLayer<F, C>,
        mut store: LayerStore<Flash>,
        button: Button,
        led: Led,
        sgd: Sgd,
    ) -> Result<(Self, Option<SlotState>), AppError> {
        head.sgd = sgd;
        head.load_model(net.model())?;
        let restored = store.load(head)?;
        let collected = FeatureMean::new(head.num_features())?;
        let app = App {
            net,
            head,
            store,
            button,
            led,
            others: collected.clone(),
            collected,
            new_class: None,
            imprint_shots: DEFAULT_IMPRINT_SHOTS,
            features: [0.0; F],
        };
        Ok((app, restored))
    }

    /// Examples to collect before a new class is added (at least 1).
    pub fn set_imprint_shots(&mut self, shots: u32) {
        self.imprint_shots = shots.max(1);
    }

    /// The head (for inspection and host-side comparison).
    pub fn head(&self) -> &LastLayer<F, C> {
        self.head
    }

    /// The class being taught, once it has been added.
    pub fn new_class(&self) -> Option<usize> {
        self.new_class
    }

    /// Classifies a frame with the trunk and the head.
    pub fn classify(&mut self, pixels: &[u8]) -> Result<usize, AppError> {
        self.extract(pixels)?;
        Ok(self
            .head
            .predict(&self.features[..self.head.num_features()])?)
    }

    /// One frame of the device loop: a pressed button labels the frame as the new
    /// class; then the frame is classified and the LED shows whether it is the new
    /// class. Frames shown without the button are remembered (as a mean feature) as
    /// what the new class is not.
    pub fn step(&mut self, pixels: &[u8]) -> Result<Step, AppError> {
        let pressed = self.button.is_high().map_err(|_| AppError::Pin)?;
        let labeled = if pressed {
            Some(self.label(pixels)?)
        } else {
            None
        };
        let class = self.classify(pixels)?;
        if !pressed {
            self.others
                .add(&self.features[..self.head.num_features()])?;
        }
        let lit = Some(class) == self.new_class;
        self.led.set_state(lit.into()).map_err(|_| AppError::Pin)?;
        Ok(Step { class, labeled })
    }

    /// The frame is an example of the new class: collect it, add the class once
    /// enough are collected, and refine it with every example after that. A button
    /// gives positive examples only, so the class learns by imprinting
    /// ([`LastLayer::add_class_between`]: between the mean of its examples and the mean
    /// of the frames shown without the button), not by SGD, which on positives alone
    /// pushes the new row over the old classes (measured: old classes 100 → 78 % on
    /// the synthetic demo trunk after 20 shots; imprinting keeps 90 %+).
    pub fn label(&mut self, pixels: &[u8]) -> Result<Labeled, AppError> {
        self.extract(pixels)?;
        let n = self.head.num_features();
        self.collected.add(&self.features[..n])?;
        let count = self.collected.count();
        match self.new_class {
            Some(_) => {
                self.imprint()?;
                Ok(Labeled::Refined { count })
            }
            None if count < self.imprint_shots => Ok(Labeled::Collected { count }),
            None => Ok(Labeled::Added {
                class: self.imprint()?,
            }),
        }
    }

    /// Learns a new class from `count` labeled examples fetched by `example(i)`. Those
    /// labeled with the next free class index are shots of the new class; the others
    /// are examples of known classes, kept for rehearsal. The new class is imprinted
    /// from the shots' mean feature (contrasted with the others' mean when there are
    /// any, see [`LastLayer::add_class_between`]), then `epochs` passes of SGD over all
    /// examples train the new class's row only (the old rows, fitted on the full
    /// training set, would overfit the few rehearsal images).
    ///
    /// Each class gets an equal share of the loss, as in the test set the head will
    /// meet: the shots together weigh as much as one old class's rehearsal images,
    /// however many there are of each ([`LastLayer::train_weighted`]). The learning
    /// rate falls linearly from the head's rate to zero over the steps, so the row
    /// ends where the examples agree rather than where the last few pushed it.
    /// Returns the new class's index.
    #[inline(never)]
    pub fn finetune<'p>(
        &mut self,
        count: usize,
        epochs: usize,
        mut example: impl FnMut(usize) -> Option<(&'p [u8], u8)>,
    ) -> Result<usize, AppError> {
        let new_class = self.head.num_classes();
        let n = self.head.num_features();
        // A class of its own, whatever was taught before.
        self.new_class = None;
        self.collected.clear();
        self.others.clear();
        for i in 0..count {
            let (pixels, label) = example(i).ok_or(AppError::NoExample { index: i })?;
            self.extract(pixels)?;
            if usize::from(label) == new_class {
                self.collected.add(&self.features[..n])?;
            } else {
                self.others.add(&self.features[..n])?;
            }
        }
        if self.collected.count() == 0 {
            return Err(AppError::NoShot);
        }
        let class = self.imprint()?;
        // The rate decays step by step; the head's own settings are back afterwards,
        // whether or not training failed.
        let sgd = self.head.sgd;
        let trained = self.train_new_row(class, count, epochs, &mut example);
        self.head.sgd = sgd;
        trained?;
        Ok(class)
    }

    /// `epochs` passes of class-balanced SGD over the examples, on row `class` only,
    /// the learning rate falling linearly from the head's to zero.
    fn train_new_row<'p>(
        &mut self,
        class: usize,
        count: usize,
        epochs: usize,
        example: &mut impl FnMut(usize) -> Option<(&'p [u8], u8)>,
    ) -> Result<(), AppError> {
        let n = self.head.num_features();
        // The new class is the last row: `class` old classes before it.
        let (shot_weight, rehearsal_weight) =
            balanced_weights(self.collected.count(), self.others.count(), class);
        let peak = self.head.sgd.learning_rate;
        let steps = (epochs * count) as f32;
        // Only the new row learns: one row of momentum.
        let mut momentum = Momentum::<F, 1>::new(class);
        for epoch in 0..epochs {
            for i in 0..count {
                let (pixels, label) = example(i).ok_or(AppError::NoExample { index: i })?;
                self.extract(pixels)?;
                let label = usize::from(label);
                let weight = if label == class {
                    shot_weight
                } else {
                    rehearsal_weight
                };
                let done = (epoch * count + i) as f32 / steps;
                self.head.sgd.learning_rate = peak * (1.0 - done);
                self.head
                    .train_weighted(&self.features[..n], label, weight, &mut momentum)?;
            }
        }
        Ok(())
    }

    /// Writes the head to the older flash slot.
    #[inline(never)]
    pub fn save(&mut self) -> Result<SlotState, AppError> {
        Ok(self.store.save(self.head)?)
    }

    /// Adds the new class from the shots collected, or re-imprints it once added: told
    /// apart from the other examples' mean when there are any
    /// ([`LastLayer::add_class_between`]), else imprinted from the shots' mean alone.
    /// Out of line: its two means stay off the stack of the inference it alternates with.
    #[inline(never)]
    fn imprint(&mut self) -> Result<usize, AppError> {
        let n = self.head.num_features();
        // The shots' mean goes in the feature buffer: no second 256-byte array on the
        // stack (learning has 8 KiB of RAM beyond inference, and uses all of it).
        self.features = self.collected.mean();
        let shots = &self.features[..n];
        if self.new_class.is_some() {
            // Only this app adds classes, so the class it taught is the last row.
            self.head.remove_last_class()?;
        }
        let class = if self.others.count() > 0 {
            self.head
                .add_class_between(shots, &self.others.mean()[..n])?
        } else {
            self.head.add_class(shots)?
        };
        self.new_class = Some(class);
        Ok(class)
    }

    #[inline(never)]
    fn extract(&mut self, pixels: &[u8]) -> Result<(), AppError> {
        self.net.run(pixels)?;
        let n = self.head.num_features();
        self.net.features(&mut self.features[..n])?;
        Ok(())
    }
}

/// Loss weights of a shot and of a rehearsal image so that the new class and each of
/// the `old_classes` classes carry an equal share of the loss, the mean weight being 1
/// (no rehearsal: the shots alone, weight 1).
fn balanced_weights(shots: u32, rehearsal: u32, old_classes: usize) -> (f32, f32) {
    if rehearsal == 0 {
        return (1.0, 0.0);
    }
    let (shots, rehearsal) = (shots as f32, rehearsal as f32);
    let classes = (old_classes + 1) as f32;
    let examples = shots + rehearsal;
    (
        examples / shots / classes,
        examples / rehearsal * (classes - 1.0) / classes,
    )
}
