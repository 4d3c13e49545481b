//! The architecture seam: the kernels the engine calls, chosen at compile time.
//!
//! The portable kernels in [`crate::kernels`] are the definition and are always
//! compiled. An optimised kernel sits in a submodule here behind a `cfg` that
//! `build.rs` sets from the target (Rust's Arm target-feature `cfg`s are unstable), is
//! re-exported under the same name and signature in place of the portable one, and is
//! checked bit-exactly against it on its own instruction set: the `selftest`
//! firmware runs every kernel of this module against the portable one under QEMU on
//! each board (`tests/tests/end_to_end/qemu.rs`). No runtime CPU detection: a microcontroller's
//! core is known when the firmware is built.
//!
//! | `cfg` | cores | int8 convolution |
//! |---|---|---|
//! | `tinyres_arm_dsp` | Cortex-M4, M7, M33 (`-C target-cpu=cortex-m33`) | `cortex_m_dsp` (built for those targets only): SMLAD on pairs of pixels and channels |
//! | `tinyres_arm_mve` | Cortex-M55 (`-C target-cpu=cortex-m55`) | `helium`: VMLADAVA over 16 bytes |
//! | `target_arch = "aarch64"` | Cortex-A53 and later | `neon`: SMULL + SADALP over 16 bytes |
//! | `target_arch = "x86_64"` | hosts (`tinyres eval`) | [`x86`]: AVX2 (detected at run time) or SSE2, `PMADDWD` |
//! | `tinyres_arm_m_base` | Cortex-M0, M0+ (ARMv6-M), M3 | `armv6m`: four pixels per weight load, accumulators in r8–r12 |
//! | anything else | | the portable kernel |
//!
//! On x86-64 the kernels (AVX2 and SSE2) are tested against the portable ones by the
//! proptest suite (`core/tests/kernels.rs`), which runs on the host.

use crate::{
    error::Error,
    kernels::{ConvShape, Requantize, Shortcut},
    quant::AddTables,
};

#[cfg(tinyres_columns)]
#[allow(unsafe_code)]
pub mod columns;

#[cfg(tinyres_arm_m_base)]
#[allow(unsafe_code)]
pub mod armv6m;

#[cfg(all(target_arch = "arm", tinyres_arm_dsp))]
#[allow(unsafe_code)]
pub mod cortex_m_dsp;

#[cfg(all(target_arch = "arm", tinyres_arm_mve))]
#[allow(unsafe_code)]
pub mod helium;

#[cfg(target_arch = "aarch64")]
#[allow(unsafe_code)]
pub mod neon;

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub mod x86;

// Each arch kernel is `conv2d_i8_with`, working in a caller-owned `ConvScratch`: the
// engine keeps one for a whole run, so a kernel called once per step of rows does not
// zero kilobytes of buffers on each call. `conv2d_i8` has the portable kernel's
// signature.

// The M55 has the DSP extension too: Helium takes precedence.
#[cfg(all(target_arch = "arm", tinyres_arm_mve))]
pub use helium::conv2d_i8_with;

#[cfg(all(target_arch = "arm", tinyres_arm_dsp, not(tinyres_arm_mve)))]
pub use cortex_m_dsp::{conv2d_i8_with, ConvScratch};

#[cfg(tinyres_arm_m_base)]
pub use armv6m::{conv2d_i8_with, ConvScratch};

#[cfg(target_arch = "aarch64")]
pub use neon::conv2d_i8_with;

#[cfg(target_arch = "x86_64")]
pub use x86::conv2d_i8_with;

#[cfg(any(
    all(target_arch = "arm", tinyres_arm_mve),
    target_arch = "aarch64",
    target_arch = "x86_64"
))]
pub use columns::ConvScratch;

/// The selected kernel ([`conv2d_i8_with`]) with a scratch of its own for the call: the
/// portable kernel's signature and results, for callers that convolve once.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_i8(
    shape: &ConvShape,
    input: &[i8],
    input_zero_point: i32,
    weights: &[i8],
    bias: &[i32],
    requant: &Requantize<'_>,
    residual: Option<(Shortcut<'_, i8>, &AddTables)>,
    output: &mut [i8],
) -> Result<(), Error> {
    conv2d_i8_with(
        &mut ConvScratch::new(),
        shape,
        input,
        input_zero_point,
        weights,
        bias,
        requant,
        residual,
        output,
    )
}

/// [`conv2d_i8_with`] for a layer that may carry Winograd filters
/// ([`crate::winograd`]): the kernel that uses them (Cortex-M DSP) takes them; the
/// others compute from the weights alone. The same results either way.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_i8_layer_with(
    scratch: &mut ConvScratch,
    shape: &ConvShape,
    input: &[i8],
    input_zero_point: i32,
    (weights, winograd): (&[i8], Option<&[u8]>),
    bias: &[i32],
    requant: &Requantize<'_>,
    residual: Option<(Shortcut<'_, i8>, &AddTables)>,
    output: &mut [i8],
) -> Result<(), Error> {
    #[cfg(all(target_arch = "arm", tinyres_arm_dsp, not(tinyres_arm_mve)))]
    if let Some(filters) = winograd {
        return cortex_m_dsp::conv2d_i8_winograd_with(
            scratch,
            shape,
            input,
            input_zero_point,
            weights,
            filters,
            bias,
            requant,
            residual,
            output,
        );
    }
    // Only the Cortex-M DSP kernel reads the filters.
    let _ = winograd;
    conv2d_i8_with(
        scratch,
        shape,
        input,
        input_zero_point,
        weights,
        bias,
        requant,
        residual,
        output,
    )
}

#[cfg(not(any(
    all(target_arch = "arm", any(tinyres_arm_dsp, tinyres_arm_m_base)),
    target_arch = "aarch64",
    target_arch = "x86_64"
)))]
pub use portable::{conv2d_i8_with, ConvScratch};

/// The portable kernel needs no scratch: the seam's types and names, for the targets
/// without an optimised kernel (32-bit Arm Linux).
#[cfg(not(any(
    all(target_arch = "arm", any(tinyres_arm_dsp, tinyres_arm_m_base)),
    target_arch = "aarch64",
    target_arch = "x86_64"
)))]
mod portable {
    use super::{AddTables, ConvShape, Error, Requantize, Shortcut};
    use crate::kernels;

    /// Nothing: the portable kernel keeps its few values in registers and on the
    /// stack.
    #[derive(Clone, Debug, Default)]
    pub struct ConvScratch;

    impl ConvScratch {
        /// The (empty) scratch.
        pub const fn new() -> Self {
            ConvScratch
        }
    }

    /// [`kernels::conv2d_i8`]; `_scratch` is unused.
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d_i8_with(
        _scratch: &mut ConvScratch,
        shape: &ConvShape,
        input: &[i8],
        input_zero_point: i32,
        weights: &[i8],
        bias: &[i32],
        requant: &Requantize<'_>,
        residual: Option<(Shortcut<'_, i8>, &AddTables)>,
        output: &mut [i8],
    ) -> Result<(), Error> {
        kernels::conv2d_i8(
            shape,
            input,
            input_zero_point,
            weights,
            bias,
            requant,
            residual,
            output,
        )
    }
}

pub use crate::kernels::{
    conv2d_f32, dense_f32, dense_i8, global_avg_pool_f32, global_avg_pool_i8,
    global_avg_pool_i8_to_f32, max_pool,
};

/// The name of the int8 convolution kernel this build uses, for logs and reports.
pub const CONV2D_I8_KERNEL: &str = if cfg!(all(target_arch = "arm", tinyres_arm_mve)) {
    "helium"
} else if cfg!(all(target_arch = "arm", tinyres_arm_dsp)) {
    "cortex-m-dsp"
} else if cfg!(tinyres_arm_m_base) {
    "armv6m"
} else if cfg!(target_arch = "aarch64") {
    "neon"
} else if cfg!(target_arch = "x86_64") {
    "x86-avx2-or-sse2"
} else {
    "portable"
};
