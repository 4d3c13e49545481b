//! The firmware's instance of the on-device learning application
//! ([`tinyres_core::app`]): its head's capacity, its flash slots, and its errors, which
//! add the image region's to the application's.

pub use tinyres_core::app::{AppError, Labeled, Step, FINETUNE_EPOCHS, FINETUNE_SGD};
use tinyres_core::learn::LastLayer;

/// Feature capacity of the head (ResNet-8 and the CIFAR ResNets pool 64 features).
pub const MAX_FEATURES: usize = 64;
/// Class capacity of the head: ten classes and two new ones.
pub const MAX_CLASSES: usize = 12;
/// Bytes of each of the two flash slots holding the head (a flash image is twice this).
pub const SLOT_BYTES: u32 = 4096;

/// The trainable classifier the firmware uses.
pub type Head = LastLayer<MAX_FEATURES, MAX_CLASSES>;

/// The application over the firmware's head.
pub type App<'m, 'a, 'h, Button, Led, Flash> =
    tinyres_core::app::App<'m, 'a, 'h, Button, Led, Flash, MAX_FEATURES, MAX_CLASSES>;

/// Why a firmware program failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, defmt::Format)]
pub enum FirmwareError {
    /// The application: the engine, the trainer, the flash store or the pins.
    App(AppError),
    /// The image region (what the host wrote there is not an image set).
    Images(crate::ImagesError),
    /// A frame past the end of the image region.
    NoFrame {
        /// Its index.
        index: usize,
    },
}

impl From<AppError> for FirmwareError {
    fn from(e: AppError) -> Self {
        FirmwareError::App(e)
    }
}

impl From<tinyres_core::Error> for FirmwareError {
    fn from(e: tinyres_core::Error) -> Self {
        FirmwareError::App(AppError::Engine(e))
    }
}
