//! Picks the architecture kernels for the target being built.
//!
//! Rust's `cfg(target_feature = "dsp")` and `"mve"` are unstable on Arm, so the
//! instruction set is read off the target name and the `-C target-cpu` /
//! `-C target-feature` flags cargo passes, and published as `cfg`s that
//! `src/arch/mod.rs` selects on:
//!
//! - `tinyres_arm_dsp`: the Cortex-M DSP extension (SMLAD, SXTAB16): every
//!   `thumbv7em` target (M4, M7); `thumbv8m.main` with `-C target-cpu=cortex-m33`,
//!   `cortex-m35p`, `cortex-m55`, `cortex-m85` or `-C target-feature=+dsp`.
//! - `tinyres_arm_mve`: Helium (M-profile vector extension, integer): `thumbv8m.main`
//!   with `-C target-cpu=cortex-m55` / `cortex-m85` or `-C target-feature=+mve`.
//! - `tinyres_columns`: any of the above, AArch64 or x86-64: the targets with arch
//!   kernels, which share `arch::columns`.
//! - `tinyres_arm_m_base`: the Cortex-M targets without the DSP extension (M0, M0+,
//!   M3, M23, and `thumbv8m.main` without a CPU flag): the `armv6m` kernel.
//! - `tinyres_thumb1`: ARMv6-M and ARMv8-M Baseline, whose Thumb-1 instruction set
//!   the `armv6m` kernel's assembly is written for (Thumb-2 cores get `MLA`).

use std::env;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(tinyres_arm_dsp)");
    println!("cargo::rustc-check-cfg=cfg(tinyres_arm_mve)");
    println!("cargo::rustc-check-cfg=cfg(tinyres_columns)");
    println!("cargo::rustc-check-cfg=cfg(tinyres_thumb1)");
    println!("cargo::rustc-check-cfg=cfg(tinyres_arm_m_base)");
    println!("cargo::rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    let target = env::var("TARGET").unwrap_or_default();
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let flags: Vec<&str> = flags.split('\x1f').collect();
    let mut cpu = None;
    let mut features = Vec::new();
    let mut pending: Option<&str> = None;
    for flag in &flags {
        // `-C target-cpu=X`, `-Ctarget-cpu=X`, and the same for target-feature.
        let option = match pending.take() {
            Some(_) => Some(*flag),
            None if *flag == "-C" || *flag == "--codegen" => {
                pending = Some(flag);
                None
            }
            None => flag.strip_prefix("-C"),
        };
        if let Some(option) = option {
            if let Some(value) = option.strip_prefix("target-cpu=") {
                cpu = Some(value.to_string());
            } else if let Some(value) = option.strip_prefix("target-feature=") {
                features.extend(value.split(',').map(str::to_string));
            }
        }
    }
    let has = |feature: &str| {
        // The last mention wins, as in rustc.
        features
            .iter()
            .rev()
            .find(|f| f.get(1..) == Some(feature))
            .map(|f| f.starts_with('+'))
    };
    let cpu = cpu.as_deref().unwrap_or("");
    let v8m_main = target.starts_with("thumbv8m.main");
    let mve = v8m_main && has("mve").unwrap_or(matches!(cpu, "cortex-m55" | "cortex-m85"));
    let dsp = mve
        || has("dsp").unwrap_or(
            target.starts_with("thumbv7em")
                || (v8m_main
                    && matches!(
                        cpu,
                        "cortex-m33" | "cortex-m35p" | "cortex-m55" | "cortex-m85"
                    )),
        );
    if dsp && target.starts_with("thumb") {
        println!("cargo::rustc-cfg=tinyres_arm_dsp");
    }
    // The arch kernels that share `arch::columns` (and its row finish): all but the
    // portable-only targets.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    if (dsp && target.starts_with("thumb")) || arch == "aarch64" || arch == "x86_64" {
        println!("cargo::rustc-cfg=tinyres_columns");
    }
    if mve {
        println!("cargo::rustc-cfg=tinyres_arm_mve");
    }
    // The M-profile cores without the DSP extension: the `armv6m` kernel.
    if target.starts_with("thumb") && !dsp {
        println!("cargo::rustc-cfg=tinyres_arm_m_base");
    }
    // Thumb-1 only (ARMv6-M, ARMv8-M Baseline): no MLA, and most instructions reach
    // only r0-r7 (the `armv6m` kernel's assembly differs).
    if target.starts_with("thumbv6m") || target.starts_with("thumbv8m.base") {
        println!("cargo::rustc-cfg=tinyres_thumb1");
    }
}
