//! Training the ResNet family with burn (CPU, the `flex` backend): the model
//! ([`net`]), the paper's recipe with checkpoints and exact resume ([`train`]), and
//! ONNX export checked through tract ([`export`]); the training convolution's own
//! kernels ([`conv`]).

pub mod conv;
pub mod export;
pub mod net;
pub mod train;
