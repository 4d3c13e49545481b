//! Blobs written by the compiler and run by the engine, in one test binary: the format
//! and its validation against corrupt input, whole networks against a float
//! reference, and the on-device learner on real blobs.

mod blob;
mod common;
mod learn;
mod network;
mod streaming;
mod tflite;
