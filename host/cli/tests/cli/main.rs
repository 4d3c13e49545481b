//! The `tinyres` binary as a user runs it, in one test binary: every subcommand and its
//! errors, training with resume after `kill -9`, export checked by tract and
//! onnxruntime, compiling our and foreign ONNX files, and the demo.

mod commands;
mod common;
mod compile;
mod demo;
mod guides;
mod train;
