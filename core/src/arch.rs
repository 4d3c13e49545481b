//! The architecture seam: the kernels the engine calls, chosen at compile time.
//!
//! Every target uses the portable reference kernels from [`crate::kernels`] today.
//! An optimised kernel (Cortex-M DSP `SMLAD`, Helium on M55, NEON on Cortex-A) goes in
//! a submodule of this file behind a `cfg` on its target feature, is re-exported here
//! under the same name and signature in place of the portable one, and is added to
//! the kernel test suite (`tests/kernels.rs`), which checks it bit-exactly (int8) or
//! within the documented tolerance (f32) against the portable kernel. No runtime CPU
//! detection: a microcontroller's core is known when the firmware is built.

pub(crate) use crate::kernels::{
    conv2d_f32, conv2d_i8, dense_f32, dense_i8, global_avg_pool_f32, global_avg_pool_i8,
    global_avg_pool_i8_to_f32,
};
