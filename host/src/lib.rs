//! The host side of tinyres: the ResNet architecture family and reports on model
//! blobs. The `tinyres` binary is a thin command line over this library.

pub mod arch;
pub mod report;
