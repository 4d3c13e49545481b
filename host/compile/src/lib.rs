//! The tinyres compiler: networks in, validated `.trm` model blobs out.
//!
//! - [`arch`]: the paper's ResNet family as layer lists (what `tinyres plan` sizes and
//!   `tinyres train` builds in burn);
//! - [`onnx`]: any ONNX ResNet, read by tract and lowered to the same layer lists;
//! - [`tflite`]: TensorFlow Lite models, int8 ones with their own quantization, lowered
//!   to the same layer lists;
//! - [`writer`]: a layer list to an f32, f16 or int8 blob, with its memory [`plan`];
//! - [`calibrate`]: int8 activation ranges from real images, and [`to_blob`];
//! - [`eval`]: a blob run by the engine on the host, or an ONNX file by tract;
//! - [`report`]: what a blob holds, per layer.
//!
//! The device crate (`tinyres-core`) keeps what runs on the device and the blob's
//! format definition; everything that only produces blobs lives here, on the host.

pub mod arch;
pub mod calibrate;
pub mod eval;
pub mod fit;
pub mod onnx;
pub mod plan;
pub mod report;
pub mod tflite;
pub mod writer;

pub use calibrate::{to_blob, Calibration, Dtype, Int8Options};
pub use onnx::{import_onnx, PreprocessingFlags};
pub use writer::{BlobOptions, Memory};
