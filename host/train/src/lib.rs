//! Training the ResNet family with burn (CPU, the `flex` backend): the model
//! ([`net`]), the paper's recipe with checkpoints and exact resume ([`train`]), and
//! ONNX export checked through tract ([`export`]); the training convolution's and
//! batch norm's own kernels ([`conv`], [`norm`]).

pub mod conv;
pub mod export;
pub mod net;
pub mod norm;
pub mod train;
