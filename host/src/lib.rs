//! The host side of tinyres: the ResNet architecture family, data readers, reports on
//! model blobs, and running the firmware in QEMU. The `tinyres` binary is a thin command line over this library.

pub mod arch;
pub mod data;
pub mod eval;
pub mod flash;
pub mod qemu;
pub mod report;
