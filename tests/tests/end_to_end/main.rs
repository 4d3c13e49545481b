//! End-to-end tests across the crates, in one test binary: the architecture family on
//! the engine, the firmware's application logic on the host with mock pins and flash,
//! the real firmware in QEMU on every board (classification, kernels, learning), and
//! the command for Linux boards under QEMU user mode, and the QEMU installer.

mod app;
mod common;
mod corrupt_boots;
mod examples;
mod family_on_engine;
mod finetune;
mod install_qemu;
mod linux;
mod qemu;
