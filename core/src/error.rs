use core::fmt;

/// Everything that can go wrong when loading a blob or running a model.
///
/// Small and `Copy` so firmware can log and return it without allocating. Each
/// variant names what was wrong; `what` fields are static names of blob fields as
/// they appear in `FORMAT.md`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Error {
    /// The blob is shorter than its header or than the length its header states.
    Truncated {
        /// Bytes the blob must have.
        needed: usize,
        /// Bytes it has.
        available: usize,
    },
    /// The first four bytes are not `TRM\0`: this is not a tinyres model.
    BadMagic,
    /// The blob was written for a format version this engine does not read.
    UnsupportedVersion(u16),
    /// The stored CRC-32 does not match the blob's contents.
    ChecksumMismatch {
        /// CRC stored in the header.
        stored: u32,
        /// CRC computed over the blob.
        computed: u32,
    },
    /// A buffer is not aligned as the engine needs for zero-copy access.
    Misaligned {
        /// Which buffer.
        what: &'static str,
    },
    /// A section, table entry or array reaches outside the blob.
    OutOfBounds {
        /// Which field.
        what: &'static str,
        /// Index of the layer or tensor it belongs to (0 for header fields).
        index: u16,
    },
    /// A field holds a value the format does not allow (unknown enum, zero
    /// dimension, non-positive scale, ...).
    InvalidValue {
        /// Which field.
        what: &'static str,
        /// Index of the layer or tensor it belongs to (0 for header fields).
        index: u16,
        /// The offending value (truncated to 32 bits).
        value: u32,
    },
    /// A layer's tensor shapes do not agree with its parameters.
    ShapeMismatch {
        /// The layer.
        layer: u16,
        /// What disagrees.
        what: &'static str,
    },
    /// The memory plan would let a layer overwrite a tensor that is still needed.
    PlanConflict {
        /// The layer whose output overlaps.
        layer: u16,
        /// The live tensor it would overwrite.
        tensor: u16,
    },
    /// A streamed group of layers (FORMAT.md, "Streamed groups") breaks a rule.
    StreamConflict {
        /// The layer (or, for a window, the index of its tensor) where it shows.
        layer: u16,
        /// The rule broken.
        what: &'static str,
    },
    /// The arena passed in cannot hold the model's memory plan.
    ArenaTooSmall {
        /// Bytes needed, including alignment slack.
        needed: usize,
        /// Bytes given.
        available: usize,
    },
    /// An input or output buffer passed in has the wrong length.
    WrongLength {
        /// Which buffer.
        what: &'static str,
        /// Length expected.
        expected: usize,
        /// Length given.
        actual: usize,
    },
    /// Outputs were read before any image was run.
    NotRun,
    /// A fixed-capacity structure is too small for the model or the request.
    Capacity {
        /// What ran out.
        what: &'static str,
        /// Size needed.
        needed: usize,
        /// Size available.
        capacity: usize,
    },
    /// The model lacks something the operation needs.
    Unsupported {
        /// What is missing.
        what: &'static str,
    },
    /// The flash device reported an error.
    Storage {
        /// The operation that failed.
        operation: &'static str,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::Truncated { needed, available } => {
                write!(f, "blob truncated: needs {needed} bytes, has {available}")
            }
            Error::BadMagic => f.write_str("not a tinyres model (bad magic)"),
            Error::UnsupportedVersion(v) => write!(f, "unsupported blob format version {v}"),
            Error::ChecksumMismatch { stored, computed } => write!(
                f,
                "blob checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
            ),
            Error::Misaligned { what } => write!(f, "{what} is not aligned"),
            Error::OutOfBounds { what, index } => {
                write!(f, "{what} of entry {index} lies outside the blob")
            }
            Error::InvalidValue { what, index, value } => {
                write!(f, "invalid {what} {value} in entry {index}")
            }
            Error::ShapeMismatch { layer, what } => {
                write!(f, "layer {layer}: shape mismatch: {what}")
            }
            Error::PlanConflict { layer, tensor } => write!(
                f,
                "memory plan: layer {layer} overwrites tensor {tensor} while it is live"
            ),
            Error::StreamConflict { layer, what } => {
                write!(f, "streamed group at layer {layer}: {what}")
            }
            Error::ArenaTooSmall { needed, available } => {
                write!(f, "arena too small: needs {needed} bytes, has {available}")
            }
            Error::WrongLength {
                what,
                expected,
                actual,
            } => write!(f, "{what} has length {actual}, expected {expected}"),
            Error::NotRun => f.write_str("no image has been run yet"),
            Error::Capacity {
                what,
                needed,
                capacity,
            } => write!(f, "{what}: needs {needed}, capacity is {capacity}"),
            Error::Unsupported { what } => write!(f, "unsupported: {what}"),
            Error::Storage { operation } => write!(f, "flash {operation} failed"),
        }
    }
}

impl core::error::Error for Error {}
