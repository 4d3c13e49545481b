#![doc = include_str!("../README.md")]
#![cfg_attr(not(test), no_std)]
#![deny(missing_docs)]
#![deny(unsafe_code)]

#[cfg(feature = "app")]
pub mod app;
pub mod arch;
mod crc;
mod engine;
mod error;
pub mod format;
pub mod kernels;
pub mod learn;
mod model;
pub mod persist;
pub mod quant;
mod stream;
pub mod winograd;

pub use crc::{crc32, crc32_update};

/// Includes a model blob (`.trm`) in the binary as a `&'static [u8]` aligned to 16 bytes,
/// as [`Model::parse`] needs it (at least 4; 16 keeps every weight array as aligned as
/// the writer laid it out, for the SIMD kernels). `include_bytes!` alone gives no
/// alignment. The path is relative to the file that invokes the macro, as
/// `include_bytes!`'s.
///
/// ```
/// static MODEL: &[u8] = tinyres_core::include_model!("../tests/fixtures/bottleneck-int8.trm");
///
/// assert_eq!(MODEL.as_ptr() as usize % 16, 0);
/// let model = tinyres_core::Model::parse(MODEL).unwrap();
/// assert!(model.arena_size() > 0);
/// ```
#[macro_export]
macro_rules! include_model {
    ($path:expr) => {{
        #[repr(C, align(16))]
        struct Aligned<T: ?Sized>(T);
        static ALIGNED: &Aligned<[u8]> = &Aligned(*include_bytes!($path));
        &ALIGNED.0
    }};
}
pub use engine::{Arena, Interpreter};
pub use error::Error;
pub use format::{DType, InputRange};
pub use model::{
    Bias, Conv, Dense, Layer, MaxPool, Mean, Model, Requant, Residual, Softmax, TensorInfo, Weights,
};
