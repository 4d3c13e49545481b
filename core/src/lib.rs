#![doc = include_str!("../README.md")]
#![cfg_attr(not(test), no_std)]
#![deny(missing_docs)]
#![deny(unsafe_code)]

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

pub use crc::{crc32, crc32_update};
pub use engine::{Arena, Interpreter};
pub use error::Error;
pub use format::{DType, InputRange};
pub use model::{
    Bias, Conv, Dense, Layer, MaxPool, Mean, Model, Requant, Residual, Softmax, TensorInfo, Weights,
};
