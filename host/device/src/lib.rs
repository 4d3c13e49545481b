//! The firmware on devices: built per board and run in QEMU with its defmt log read
//! over semihosting or RTT ([`qemu`], [`rtt`]), and boards flashed through a debug
//! probe ([`flash`], feature `flash`: probe-rs); cycles estimated by a model of the
//! core under QEMU ([`cycles`]).

pub mod cycles;
#[cfg(feature = "flash")]
pub mod flash;
pub mod qemu;
pub mod rtt;
